"""Penultimate-layer features of a Flax model, without touching bench/models.py.

The features of an image are the input of the model's last `Dense` layer (the logits layer): the
representation that spectral signatures (Tran et al. 2018) and activation clustering (Chen et al. 2018)
read, and that a transfer-learning victim (Shafahi et al. 2018) trains its last layer on. They are captured
with a Flax method interceptor (`flax.linen.intercept_methods`), so any model of bench/models.py whose last
layer is a Dense (all of them) works as is.
"""

from __future__ import annotations

from functools import partial

import flax.linen as nn
import jax
import numpy as np

from bench.errors import BenchError


def _last_dense(params) -> str:
    dense = [k for k in params if k.startswith("Dense_")]
    if not dense:
        raise BenchError("the model has no Dense layer to read penultimate features from; use a model of "
                         "bench/models.py")
    return max(dense, key=lambda k: int(k.split("_")[1]))


def features_fn(module: nn.Module):
    """`(params, x) -> features`: the input of the module's last Dense layer, flattened per example."""

    def features(params, x):
        last, seen = _last_dense(params), {}

        def interceptor(next_fun, args, kwargs, context):
            if (context.method_name == "__call__" and isinstance(context.module, nn.Dense)
                    and context.module.name == last):
                seen["x"] = args[0]
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(interceptor):
            module.apply({"params": params}, x)
        return seen["x"].reshape(x.shape[0], -1)

    return features


@partial(jax.jit, static_argnames=("fn",))
def _batch(fn, params, x):
    return fn(params, x)


def extract(fn, params, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Features of every image of x (float64 on the host), in batches."""
    return np.concatenate([np.asarray(_batch(fn, params, x[i:i + batch_size]), np.float64)
                           for i in range(0, len(x), batch_size)])
