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

Every conv net takes `conv=` ("auto", "lax" or "matmul"; bench/conv.py): how its convolutions are computed.
"auto" (the default) is the patch + matmul form on the CPU, where XLA's own kernel is slow for the attacks'
input gradients, and `lax.conv_general_dilated` elsewhere. The parameters are the same either way.

With max-pooling (`PoolConvNet`; conv: filters, kernel, padding, stride 1):
- `madry_cnn`:       conv 32-5x5 SAME, max-pool 2x2, conv 64-5x5 SAME, max-pool 2x2, Dense(1024),
                     Dense(classes): the MNIST net of Madry et al. 2017 (MadryLab/mnist_challenge).
- `trades_smallcnn`: conv 32-3x3 VALID, conv 32-3x3 VALID, max-pool 2x2, conv 64-3x3 VALID,
                     conv 64-3x3 VALID, max-pool 2x2, Dense(200), Dense(200), Dense(classes): the MNIST
                     SmallCNN of Zhang et al. 2019 (TRADES), without its dropout (see `trades_smallcnn`).
The certifiers (bench/certify/network.py) read ConvNet only and reject PoolConvNet.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bench.conv import (conv_for, conv_to_space_to_depth, matmul_conv, space_to_depth_input_conv,
                        writes_space_to_depth)
from bench.window import window_forward

LogitsFn = Callable[[dict, jax.Array], jax.Array]


class Normalize(nn.Module):
    """(x - mean) / std per channel, constants fixed at construction."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, x):
        return (x - jnp.asarray(self.mean, x.dtype)) / jnp.asarray(self.std, x.dtype)


class ConvWeights(nn.Module):
    """An `nn.Conv`'s parameters (HWIO `kernel`, `bias`, its initialisers), for a layer that convolves itself."""

    features: int
    kernel: int

    @nn.compact
    def __call__(self, in_features: int):
        shape = (self.kernel, self.kernel, in_features, self.features)
        return (self.param("kernel", nn.linear.default_kernel_init, shape),
                self.param("bias", nn.initializers.zeros_init(), (self.features,)))


class ConvNet(nn.Module):
    """Normalize, then conv layers (filters, kernel, stride, padding), flatten, dense layers, logits.

    With the matmul convolution, a conv whose output feeds a space-to-depth conv (cnn_small's two) writes that
    output straight in the next conv's input layout (bench/conv.py, `conv_to_space_to_depth`); both keep
    `nn.Conv`'s parameters, so the parameter tree is the same for every `conv=`.
    """

    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    convs: Sequence[tuple[int, int, int, str | int]] = ()
    dense: Sequence[int] = ()
    conv: str = "auto"

    @nn.compact
    def __call__(self, x):
        x = Normalize(tuple(self.mean), tuple(self.std))(x)
        conv = conv_for(self.conv)
        layers = [(filters, kernel, stride, padding if isinstance(padding, str) else ((padding, padding),) * 2)
                  for filters, kernel, stride, padding in self.convs]
        s2d_out_hw = None  # set while x is already this layer's padded space-to-depth input
        for i, (filters, kernel, stride, pad) in enumerate(layers):
            following = layers[i + 1] if i + 1 < len(layers) else None
            if s2d_out_hw is not None:
                w, b = ConvWeights(filters, kernel, name=f"Conv_{i}")(layers[i - 1][0])
                x, s2d_out_hw = space_to_depth_input_conv(x, w, stride, s2d_out_hw) + b, None
            elif (conv is matmul_conv and following is not None
                  and writes_space_to_depth(kernel, stride, following[1], following[2])):
                w, b = ConvWeights(filters, kernel, name=f"Conv_{i}")(x.shape[-1])
                x, s2d_out_hw = conv_to_space_to_depth(x, w, b, stride, pad, following[1], following[2],
                                                       following[3])
            else:
                x = nn.Conv(filters, (kernel, kernel), strides=(stride, stride), padding=pad,
                            conv_general_dilated=conv, name=f"Conv_{i}")(x)
            x = nn.relu(x)
        x = x.reshape(x.shape[0], -1)
        for width in self.dense:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.num_classes)(x)


class PoolConvNet(nn.Module):
    """Normalize, then a sequence of stride-1 conv and max-pool layers, flatten, dense layers, logits.

    Each entry of `features` is ("conv", filters, kernel, padding) (followed by ReLU) or
    ("pool", window, padding) (a window x window max-pool of stride window). Padding is "SAME" or "VALID".
    """

    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    features: Sequence[tuple] = ()
    dense: Sequence[int] = ()
    conv: str = "auto"

    @nn.compact
    def __call__(self, x):
        x = Normalize(tuple(self.mean), tuple(self.std))(x)
        conv = conv_for(self.conv)
        for layer in self.features:
            kind = layer[0]
            if kind == "conv":
                _, filters, kernel, padding = layer
                x = nn.relu(nn.Conv(filters, (kernel, kernel), padding=padding, conv_general_dilated=conv)(x))
            elif kind == "pool":
                _, window, padding = layer
                x = nn.max_pool(x, (window, window), strides=(window, window), padding=padding)
            else:
                raise ValueError(f"unknown PoolConvNet layer {layer!r}; use ('conv', ...) or ('pool', ...)")
        x = x.reshape(x.shape[0], -1)
        for width in self.dense:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.num_classes)(x)


def mlp(num_classes: int, mean, std, hidden: Sequence[int] = (256, 256)) -> ConvNet:
    """A fully connected ReLU network."""
    return ConvNet(num_classes, tuple(mean), tuple(std), convs=(), dense=tuple(hidden))


def cnn_small(num_classes: int, mean, std, conv: str = "auto") -> ConvNet:
    """2 conv + 2 dense (Wong & Kolter 2018; Wong, Rice & Kolter 2020 MNIST)."""
    return ConvNet(num_classes, tuple(mean), tuple(std), convs=((16, 4, 2, 1), (32, 4, 2, 1)), dense=(100,),
                   conv=conv)


def cnn_medium(num_classes: int, mean, std, conv: str = "auto") -> ConvNet:
    """DM-medium (Gowal et al. 2018)."""
    convs = ((32, 3, 1, "SAME"), (32, 4, 2, "SAME"), (64, 3, 1, "SAME"), (64, 4, 2, "SAME"))
    return ConvNet(num_classes, tuple(mean), tuple(std), convs=convs, dense=(512, 512), conv=conv)


def cnn_large(num_classes: int, mean, std, conv: str = "auto") -> ConvNet:
    """DM-large (Gowal et al. 2018)."""
    convs = ((64, 3, 1, "SAME"), (64, 3, 1, "SAME"), (128, 3, 2, "SAME"), (128, 3, 1, "SAME"), (128, 3, 1, "SAME"))
    return ConvNet(num_classes, tuple(mean), tuple(std), convs=convs, dense=(512,), conv=conv)


def madry_cnn(num_classes: int, mean, std, conv: str = "auto") -> PoolConvNet:
    """Madry et al. 2017 MNIST CNN: conv 32-5x5, pool 2, conv 64-5x5, pool 2 (all SAME), Dense(1024).

    28x28 inputs give 7x7x64 = 3,136 features before the dense layer, as in the paper's model.
    """
    features = (("conv", 32, 5, "SAME"), ("pool", 2, "SAME"), ("conv", 64, 5, "SAME"), ("pool", 2, "SAME"))
    return PoolConvNet(num_classes, tuple(mean), tuple(std), features=features, dense=(1024,), conv=conv)


def trades_smallcnn(num_classes: int, mean, std, conv: str = "auto") -> PoolConvNet:
    """TRADES MNIST SmallCNN (Zhang et al. 2019): four unpadded 3x3 convs with two 2x2 max-pools, Dense(200) x2.

    28x28 inputs give 4x4x64 = 1,024 features before the dense layers, as in the reference model. The
    reference applies dropout 0.5 after the first dense layer during training; it is left out here because
    `logits_fn(params, x)` is a pure function with no train mode or dropout key (at test time the two nets
    compute the same function). The reference's initialisation (Kaiming-normal convs, zero last layer) is not
    reproduced either: Flax's defaults are used, as for every model here.
    """
    features = (("conv", 32, 3, "VALID"), ("conv", 32, 3, "VALID"), ("pool", 2, "VALID"),
                ("conv", 64, 3, "VALID"), ("conv", 64, 3, "VALID"), ("pool", 2, "VALID"))
    return PoolConvNet(num_classes, tuple(mean), tuple(std), features=features, dense=(200, 200), conv=conv)


# Every architecture by name (the transfer scenario's `arch:`); conf/model/<name>.yaml names the same functions.
MODELS = {"mlp": mlp, "cnn_small": cnn_small, "cnn_medium": cnn_medium, "cnn_large": cnn_large,
          "madry_cnn": madry_cnn, "trades_smallcnn": trades_smallcnn}


def init_params(model: nn.Module, key: jax.Array, image_shape: Sequence[int]) -> dict:
    """Initialise the model's parameters for images of `image_shape` (H, W, C)."""
    return model.init(key, jnp.zeros((1, *image_shape), jnp.float32))["params"]


def make_logits_fn(model: nn.Module) -> LogitsFn:
    """The pure function every attack, defense and certifier works with.

    Build it once per model and reuse it: jitted attacks treat it as a static
    argument, so the same object means no retracing. A `ConvNet` with conv layers also gets
    `logits_fn.window_forward` (bench/window.py), which the Square attack uses for its small windows.
    """

    def logits_fn(params, x):
        return model.apply({"params": params}, x)

    if isinstance(model, ConvNet) and model.convs:
        logits_fn.window_forward = window_forward(model)
    return logits_fn


def save_params(path, params, normalization: tuple[Sequence[float], Sequence[float]] | None = None) -> None:
    """Save parameters as Flax msgpack (a safe format: no pickle), atomically.

    With `normalization` (the model's per-channel mean and std), they are saved with the parameters, so that
    `load_params` rebuilds exactly the trained model whatever data it is evaluated on.
    """
    from flax import serialization

    from bench.records import atomic_write_bytes

    state = jax.device_get(params)
    if normalization is not None:
        mean, std = normalization
        state = {"params": state, "normalization": {"mean": np.asarray(mean, np.float64),
                                                    "std": np.asarray(std, np.float64)}}
    atomic_write_bytes(path, serialization.to_bytes(state))


def _read(path):
    from pathlib import Path

    from flax import serialization

    from bench.errors import BenchError

    path = Path(path)
    if not path.is_file():
        raise BenchError(f"no parameters file at {path}; pass load_params=PATH/params.msgpack from a finished run")
    try:
        return serialization.msgpack_restore(path.read_bytes())
    except Exception as err:  # msgpack raises several types for truncated files
        raise BenchError(f"{path} is corrupted or truncated ({type(err).__name__}); retrain, or pick another "
                         "params.msgpack") from None


def saved_normalization(path) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The (mean, std) saved with the parameters at `path`, or None for a file saved without them."""
    state = _read(path)
    if isinstance(state, dict) and set(state) == {"params", "normalization"}:
        norm = state["normalization"]
        return tuple(float(v) for v in norm["mean"]), tuple(float(v) for v in norm["std"])
    return None


def load_params(path, like: dict) -> dict:
    """Load parameters saved by `save_params` into the structure of `like` (with or without normalization)."""
    from flax import serialization

    from bench.errors import BenchError

    state = _read(path)
    if isinstance(state, dict) and set(state) == {"params", "normalization"}:
        state = state["params"]
    try:
        loaded = serialization.from_state_dict(like, state)
    except Exception as err:  # a state of another structure
        raise BenchError(f"{path} does not match this model ({type(err).__name__}: {str(err)[:200]}); pick the "
                         "model it was trained with") from None
    for (where, want), got in zip(jax.tree_util.tree_leaves_with_path(like), jax.tree.leaves(loaded)):
        if np.shape(want) != np.shape(got):
            raise BenchError(f"{path} does not match this model: {jax.tree_util.keystr(where)} has shape "
                             f"{np.shape(got)} there and {np.shape(want)} here; pick the model and the input shape "
                             "(dataset) it was trained with")
    return loaded
