"""The layer list that bound propagation walks, read off a Flax `ConvNet` and its params.

A network is a tuple of hashable layer specs (so it can be a static argument of
`jit`); the weights stay in the Flax params dict and are looked up by name, so
the same network serves every set of params and gradients flow into them.

Supported layers: `Normalize` (per-channel (x - mean) / std), `Conv` (any
stride; padding SAME, VALID or explicit pairs), `Flatten`, `Dense`, `ReLU`.
`network_from_model` reads `bench.models.ConvNet`; any other model, or any other
layer type in a hand-written list, is a BenchError naming what is supported.
Every affine layer offers its linear part, its offset and the linear part with
a function applied to its weights (|W| for interval arithmetic, W*W for L2 row
norms) and the transpose of its linear part (back-substitution): `jax.linear_transpose`,
except for Conv, whose transpose has a hand-written VJP (see `conv_transpose`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from bench.conv import kernel_gradient
from bench.errors import BenchError

_CONV_DIMS = ("NHWC", "HWIO", "NHWC")


def _conv(x, kernel, stride, padding):
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding, dimension_numbers=_CONV_DIMS)


def _explicit_padding(padding, in_hw, kernel_hw, stride):
    if not isinstance(padding, str):
        return tuple(tuple(p) for p in padding)
    if padding == "VALID":
        return ((0, 0), (0, 0))
    pads = []
    for size, k in zip(in_hw, kernel_hw):
        total = max((-(-size // stride) - 1) * stride + k - size, 0)
        pads.append((total // 2, total - total // 2))
    return tuple(pads)


def _conv_space_to_depth(x, kernel, stride, padding):
    """The same conv as `_conv`, computed as a stride-1 conv on the space-to-depth input (kernel % stride == 0)."""
    n, h, w, c = x.shape
    kh, kw, _, o = kernel.shape
    s = stride
    (pt, pb), (pl, pr) = _explicit_padding(padding, (h, w), (kh, kw), s)
    ho, wo = (h + pt + pb - kh) // s + 1, (w + pl + pr - kw) // s + 1
    lh, lw = s * (ho - 1) + kh, s * (wo - 1) + kw
    x = jnp.pad(x, ((0, 0), (pt, max(lh - h - pt, 0)), (pl, max(lw - w - pl, 0)), (0, 0)))[:, :lh, :lw]
    x = x.reshape(n, lh // s, s, lw // s, s, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, lh // s, lw // s, s * s * c)
    kernel = kernel.reshape(kh // s, s, kw // s, s, c, o).transpose(0, 2, 1, 3, 4, 5).reshape(kh // s, kw // s, s * s * c, o)
    return _conv(x, kernel, 1, "VALID")


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_transpose(kernel, coeffs, stride, padding, in_shape):
    """The transpose of x -> conv(x, kernel) applied to coeffs (m, *out_shape): (m, *in_shape).

    Its own VJP keeps certified training fast: differentiating JAX's transpose rule (an input-dilated
    conv) with respect to the kernel gives a window-dilated conv that XLA's CPU backend runs about 10x
    slower than an ordinary conv (1.6 s for cnn_small's second conv at 1,000 rows). By adjointness,
    <g, conv^T(k, a)> = <conv(g, k), a>, so the cotangents are ordinary convs: conv(g, k) for coeffs and
    the kernel gradient of conv(g, .) at cotangent a for the kernel.
    """
    spec = jax.ShapeDtypeStruct((coeffs.shape[0], *in_shape), coeffs.dtype)
    # A strided conv's transpose is an input-dilated conv (mostly multiplications by zero); through the
    # space-to-depth form (a stride-1 conv) it is about 2x cheaper on CPU where the kernel tiles the stride.
    tiles = stride > 1 and kernel.shape[0] % stride == 0 and kernel.shape[1] % stride == 0
    forward = _conv_space_to_depth if tiles else _conv
    (out,) = jax.linear_transpose(lambda v: forward(v, kernel, stride, padding), spec)(coeffs)
    return out


def _conv_transpose_fwd(kernel, coeffs, stride, padding, in_shape):
    return conv_transpose(kernel, coeffs, stride, padding, in_shape), (kernel, coeffs)


def _conv_transpose_bwd(stride, padding, in_shape, residuals, g):
    kernel, coeffs = residuals
    out = _conv(g, kernel, stride, padding)
    # The kernel gradient of conv(g, .) at cotangent coeffs, as one matmul of g's patches with coeffs:
    # XLA:CPU's own kernel-gradient conv first transposes the rows to the minor axis (half of its time).
    kernel_grad = kernel_gradient(g, coeffs.astype(g.dtype), kernel.shape, stride, padding)
    return kernel_grad.astype(kernel.dtype), out.astype(coeffs.dtype)


conv_transpose.defvjp(_conv_transpose_fwd, _conv_transpose_bwd)


class Normalize(NamedTuple):
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def linear(self, params, x, weight_fn=lambda w: w):
        return x * weight_fn(1.0 / jnp.asarray(self.std, x.dtype))

    def offset(self, params):
        return -jnp.asarray(self.mean, jnp.float32) / jnp.asarray(self.std, jnp.float32)


class Conv(NamedTuple):
    name: str
    stride: int
    padding: str | tuple[tuple[int, int], tuple[int, int]]

    def linear(self, params, x, weight_fn=lambda w: w):
        return _conv(x, weight_fn(params[self.name]["kernel"]), self.stride, self.padding)

    def transpose(self, params, coeffs, in_shape):
        """The transpose of the linear part on coeffs (m, *out_shape) -> (m, *in_shape)."""
        return conv_transpose(params[self.name]["kernel"], coeffs, self.stride, self.padding, tuple(in_shape))

    def offset(self, params):
        return params[self.name]["bias"]


class Dense(NamedTuple):
    name: str

    def linear(self, params, x, weight_fn=lambda w: w):
        return x @ weight_fn(params[self.name]["kernel"])

    def offset(self, params):
        return params[self.name]["bias"]


class Flatten(NamedTuple):
    def linear(self, params, x, weight_fn=lambda w: w):
        return x.reshape(x.shape[0], -1)

    def offset(self, params):
        return jnp.zeros((), jnp.float32)


class ReLU(NamedTuple):
    pass


AFFINE = (Normalize, Conv, Dense, Flatten)
# Layers whose linear part mixes inputs (each output sums several inputs); the others are diagonal or a permutation.
MIXING = (Conv, Dense)
Network = tuple


def network_from_model(model) -> Network:
    """The layer list of a `bench.models.ConvNet` (Normalize, [Conv, ReLU]*, Flatten, [Dense, ReLU]*, Dense)."""
    from bench.models import ConvNet

    if type(model) is not ConvNet:  # not isinstance: a subclass may add layers (e.g. pooling) we cannot bound
        raise BenchError(f"certification reads bench.models.ConvNet models (Normalize, Conv, Flatten, Dense, ReLU); "
                         f"got {type(model).__name__}, which it cannot bound (max-pooling and other layers are not "
                         "supported). Use mlp or cnn_small/medium/large, or pass a layer list")
    layers: list = [Normalize(tuple(float(m) for m in model.mean), tuple(float(s) for s in model.std))]
    for i, (_, _, stride, padding) in enumerate(model.convs):
        if isinstance(padding, str):
            if padding.upper() not in ("SAME", "VALID"):
                raise BenchError(f"conv padding '{padding}' is not supported by the certifiers; "
                                 "use SAME, VALID or an int")
            pad = padding.upper()
        else:
            pad = ((int(padding), int(padding)), (int(padding), int(padding)))
        layers += [Conv(f"Conv_{i}", int(stride), pad), ReLU()]
    layers.append(Flatten())
    for i, _ in enumerate(model.dense):
        layers += [Dense(f"Dense_{i}"), ReLU()]
    layers.append(Dense(f"Dense_{len(model.dense)}"))
    return tuple(layers)


def as_network(network_or_model) -> Network:
    """A validated layer tuple from a ConvNet or from a sequence of layer specs."""
    if isinstance(network_or_model, (tuple, list)):
        layers = tuple(network_or_model)
        for layer in layers:
            if not isinstance(layer, AFFINE + (ReLU,)):
                raise BenchError(f"unsupported layer {layer!r} for certification; supported: Normalize, Conv, "
                                 "Flatten, Dense, ReLU (bench.certify.network)")
        if not layers or isinstance(layers[-1], ReLU):
            raise BenchError("a network for certification must end with an affine layer (the logits)")
        return layers
    return network_from_model(network_or_model)


def blocks(network: Network) -> tuple[tuple, ...]:
    """The affine blocks between ReLUs: block k's output is the pre-activation of ReLU k."""
    out, current = [], []
    for layer in network:
        if isinstance(layer, ReLU):
            out.append(tuple(current))
            current = []
        else:
            current.append(layer)
    out.append(tuple(current))
    return tuple(out)


def check_params(network: Network, params) -> None:
    """Raise BenchError when a layer's weights are missing from params."""
    for layer in network:
        name = getattr(layer, "name", None)
        if name is not None and name not in params:
            raise BenchError(f"params have no '{name}' (have {sorted(params)}); "
                             "the layer list does not match the model")


def apply_block(block: Sequence, params, x, weight_fn: Callable | None = None):
    """The block's affine map (weight_fn None), or its linear part with weight_fn applied to every weight."""
    for layer in block:
        if weight_fn is None:
            x = layer.linear(params, x) + layer.offset(params)
        else:
            x = layer.linear(params, x, weight_fn)
    return x


def forward(network: Network, params, x):
    """Logits of the layer list; equals the Flax model's output."""
    for layer in network:
        x = jax.nn.relu(x) if isinstance(layer, ReLU) else layer.linear(params, x) + layer.offset(params)
    return x


def num_logits(network: Network, params, x) -> int:
    """The number of outputs of the network (static)."""
    spec = jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype)
    return jax.eval_shape(lambda v: forward(network, params, v), spec).shape[-1]


def block_input_shapes(net_blocks, params, x) -> list[tuple[int, ...]]:
    """The per-example input shape of every block (static)."""
    shapes = [tuple(x.shape[1:])]
    for block in net_blocks[:-1]:
        spec = jax.ShapeDtypeStruct((1, *shapes[-1]), x.dtype)
        shapes.append(tuple(jax.eval_shape(lambda v, block=block: apply_block(block, params, v), spec).shape[1:]))
    return shapes


def _dot_offset(coeffs, offset):
    """sum over the trailing axes of coeffs * offset, (n, S): a matvec, where a broadcast product (offset
    materialised at the coefficients' full shape, then reduced) costs several passes over memory on CPU."""
    n, s = coeffs.shape[:2]
    offset = jnp.asarray(offset, coeffs.dtype)
    per_row = jnp.broadcast_to(offset, coeffs.shape[2:]).reshape(-1)  # the offset is small: tile it, not coeffs
    return (coeffs.reshape(n * s, -1) @ per_row).reshape(n, s)


def transpose_block(block: Sequence, params, coeffs, in_shape):
    """Back-substitute linear coefficients on a block's output through the block.

    coeffs: (n, S, *out_shape) coefficients of S linear functions of the block's
    output. Returns (coeffs on the block's input (n, S, *in_shape), constant (n, S)).
    """
    n, s = coeffs.shape[:2]
    const = jnp.zeros((n, s), coeffs.dtype)
    shapes = [tuple(in_shape)]
    for layer in block[:-1]:
        shapes.append(jax.eval_shape(lambda v, layer=layer: layer.linear(params, v),
                                     jax.ShapeDtypeStruct((1, *shapes[-1]), coeffs.dtype)).shape[1:])
    for layer, shape in zip(reversed(block), reversed(shapes)):
        if not isinstance(layer, Flatten):  # the one layer without an offset
            const = const + _dot_offset(coeffs, layer.offset(params))
        flat = coeffs.reshape((n * s,) + coeffs.shape[2:])
        if hasattr(layer, "transpose"):
            flat = layer.transpose(params, flat, shape)
        else:
            transpose = jax.linear_transpose(lambda v, layer=layer: layer.linear(params, v),
                                             jax.ShapeDtypeStruct((n * s, *shape), coeffs.dtype))
            (flat,) = transpose(flat)
        coeffs = flat.reshape((n, s) + tuple(shape))
    return coeffs, const


def margin_spec(y, num_classes: int, dtype=jnp.float32):
    """C with C[i, j] = e_{y_i} - e_j: the margins logit_y - logit_j as linear functions of the logits."""
    onehot_y = jax.nn.one_hot(y, num_classes, dtype=dtype)
    return onehot_y[:, None, :] - jnp.eye(num_classes, dtype=dtype)[None]


def other_classes(y, num_classes: int):
    """(n, num_classes - 1) indices of the classes other than y, in order."""
    rows = jnp.arange(num_classes - 1)[None, :]
    return rows + (rows >= y[:, None])


def margin_spec_others(y, num_classes: int, dtype=jnp.float32):
    """The num_classes - 1 rows of `margin_spec` that are constraints (j != y), as Zhang et al. 2020 use it.

    Bounds computed on these rows go back to (n, num_classes) with `scatter_margins`.
    """
    onehot_y = jax.nn.one_hot(y, num_classes, dtype=dtype)
    return onehot_y[:, None, :] - jax.nn.one_hot(other_classes(y, num_classes), num_classes, dtype=dtype)


def scatter_margins(margins, y, num_classes: int):
    """(n, num_classes - 1) margins over the other classes -> (n, num_classes) with +inf at the true class."""
    n = margins.shape[0]
    full = jnp.full((n, num_classes), jnp.inf, margins.dtype)
    return full.at[jnp.arange(n)[:, None], other_classes(y, num_classes)].set(margins)

