"""Flax models. Downstream code sees only `logits_fn(params, x)`.

Every model starts with `Normalize`, so inputs stay in [0, 1] pixel units and
epsilon means the same thing for every model (as in RobustBench).

Architectures (conv: filters, kernel, stride):
- `mlp`:        flatten, Dense(256), Dense(256), Dense(classes).
- `cnn_small`:  conv 16-4x4-s2 (pad 1), conv 32-4x4-s2 (pad 1), Dense(100), Dense(classes):
                the MNIST net of Wong & Kolter 2018 and Wong, Rice & Kolter 2020.
- `cnn_medium`: DM-medium of Gowal et al. 2018: conv 32-3-1, 32-4-2, 64-3-1, 64-4-2,
                Dense(512), Dense(512), Dense(classes).
- `cnn_large`:  DM-large of Gowal et al. 2018: conv 64-3-1, 64-3-1, 128-3-2, 128-3-1,
                128-3-1, Dense(512), Dense(classes).
All activations are ReLU; padding is SAME for DM-medium/large.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

LogitsFn = Callable[[dict, jax.Array], jax.Array]


class Normalize(nn.Module):
    """(x - mean) / std per channel, constants fixed at construction."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, x):
        return (x - jnp.asarray(self.mean, x.dtype)) / jnp.asarray(self.std, x.dtype)


class ConvNet(nn.Module):
    """Normalize, then conv layers (filters, kernel, stride, padding), flatten, dense layers, logits."""

    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    convs: Sequence[tuple[int, int, int, str | int]] = ()
    dense: Sequence[int] = ()

    @nn.compact
    def __call__(self, x):
        x = Normalize(tuple(self.mean), tuple(self.std))(x)
        for filters, kernel, stride, padding in self.convs:
            pad = padding if isinstance(padding, str) else ((padding, padding), (padding, padding))
            x = nn.relu(nn.Conv(filters, (kernel, kernel), strides=(stride, stride), padding=pad)(x))
        x = x.reshape(x.shape[0], -1)
        for width in self.dense:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.num_classes)(x)


def mlp(num_classes: int, mean, std, hidden: Sequence[int] = (256, 256)) -> ConvNet:
    """A fully connected ReLU network."""
    return ConvNet(num_classes, tuple(mean), tuple(std), convs=(), dense=tuple(hidden))


def cnn_small(num_classes: int, mean, std) -> ConvNet:
    """2 conv + 2 dense (Wong & Kolter 2018; Wong, Rice & Kolter 2020 MNIST)."""
    return ConvNet(num_classes, tuple(mean), tuple(std), convs=((16, 4, 2, 1), (32, 4, 2, 1)), dense=(100,))


def cnn_medium(num_classes: int, mean, std) -> ConvNet:
    """DM-medium (Gowal et al. 2018)."""
    convs = ((32, 3, 1, "SAME"), (32, 4, 2, "SAME"), (64, 3, 1, "SAME"), (64, 4, 2, "SAME"))
    return ConvNet(num_classes, tuple(mean), tuple(std), convs=convs, dense=(512, 512))


def cnn_large(num_classes: int, mean, std) -> ConvNet:
    """DM-large (Gowal et al. 2018)."""
    convs = ((64, 3, 1, "SAME"), (64, 3, 1, "SAME"), (128, 3, 2, "SAME"), (128, 3, 1, "SAME"), (128, 3, 1, "SAME"))
    return ConvNet(num_classes, tuple(mean), tuple(std), convs=convs, dense=(512,))


def init_params(model: nn.Module, key: jax.Array, image_shape: Sequence[int]) -> dict:
    """Initialise the model's parameters for images of `image_shape` (H, W, C)."""
    return model.init(key, jnp.zeros((1, *image_shape), jnp.float32))["params"]


def make_logits_fn(model: nn.Module) -> LogitsFn:
    """The pure function every attack, defense and certifier works with.

    Build it once per model and reuse it: jitted attacks treat it as a static
    argument, so the same object means no retracing.
    """

    def logits_fn(params, x):
        return model.apply({"params": params}, x)

    return logits_fn


def save_params(path, params) -> None:
    """Save parameters as Flax msgpack (a safe format: no pickle), atomically."""
    from flax import serialization

    from bench.records import atomic_write_bytes

    atomic_write_bytes(path, serialization.to_bytes(jax.device_get(params)))


def load_params(path, like: dict) -> dict:
    """Load msgpack parameters saved by `save_params` into the structure of `like`."""
    from pathlib import Path

    from flax import serialization

    from bench.errors import BenchError

    path = Path(path)
    if not path.is_file():
        raise BenchError(f"no parameters file at {path}; pass load_params=PATH/params.msgpack from a finished run")
    try:
        return serialization.from_bytes(like, path.read_bytes())
    except Exception as err:  # msgpack raises several types for truncated or mismatched files
        raise BenchError(f"{path} is corrupted or does not match this model ({type(err).__name__}); "
                         "retrain, or pick the model it was trained with") from None
