"""Data parallelism inside a run: one `jax.sharding.Mesh` over every device, batches split along axis "data".

Training steps and attacks are ordinary jitted functions; handing them a batch
placed with `shard_batch` makes XLA run them SPMD over the mesh (parameters are
replicated, gradient means become all-reduces). One device is the degenerate
mesh, so the same code runs on a laptop, a multi-GPU node, or several hosts
after `jax.distributed.initialize()` (`distributed: true` in the config).
On CPU, `XLA_FLAGS=--xla_force_host_platform_device_count=N` simulates N devices.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "data"


@functools.cache
def mesh() -> Mesh:
    """All devices (of every process) on one data axis."""
    return Mesh(np.asarray(jax.devices()), (AXIS,))


def device_count() -> int:
    return mesh().devices.size


def batch_sharding(ndim: int) -> NamedSharding:
    """Leading axis split over the mesh, the rest whole."""
    return NamedSharding(mesh(), PartitionSpec(AXIS, *([None] * (ndim - 1))))


def replicated() -> NamedSharding:
    return NamedSharding(mesh(), PartitionSpec())


def shard_batch(*arrays):
    """Place host arrays with their leading (batch) axis split over the mesh.

    A batch whose size does not divide by the device count is replicated
    instead (correct, just not parallel). Every process passes the same global
    array and contributes the shards it holds (`make_array_from_callback`),
    which is what multi-host runs need.
    """
    n = device_count()
    out = []
    for a in arrays:
        a = np.asarray(a)
        if n == 1:
            out.append(jax.device_put(a))
            continue
        sharding = batch_sharding(a.ndim) if a.ndim and a.shape[0] % n == 0 else replicated()
        out.append(jax.make_array_from_callback(a.shape, sharding, lambda index, a=a: a[index]))
    return out[0] if len(out) == 1 else tuple(out)


def replicate(tree):
    """Parameters and optimizer state: a full copy on every device."""
    if device_count() == 1:
        return tree
    sharding = replicated()
    return jax.tree.map(lambda a: jax.make_array_from_callback(np.shape(a), sharding,
                                                               lambda index, a=np.asarray(a): a[index]),
                        jax.device_get(tree))
