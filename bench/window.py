"""A conv net's forward pass for an image that changed in one small square window (the Square attack's queries).

A query of the Square attack (bench/attacks/square.py) changes one window of `side` x `side` pixels; late in its
schedule `side` is 1 to 4 pixels on MNIST. In a conv net that window reaches only a block of each conv layer's
output, so the last conv layer's output of the current image can be kept, and only that block recomputed, from the
input pixels it reads, before the dense layers run on the whole map. On cnn_small at 28x28 with a window of 4
pixels the block is 4x4 of the 7x7 map, read from 22x22 input pixels: about half the multiply-adds of a full pass.

`window_forward(model)` builds it for a `ConvNet` (bench/models.py); `make_logits_fn` attaches it to the model's
`logits_fn` as `logits_fn.window_forward`, which an attack may use and nothing else needs. A model without one (an
MLP, a net with pooling, a wrapped or user-supplied logits_fn) is simply run whole.

The block's geometry, along one axis, for conv layers (kernel k, stride s, padding lo before): a change in rows
[t, t + side) of a layer's input reaches the output rows from ceil((t + lo - k + 1) / s), at most
(side + k - 2) // s + 1 of them; the output rows [b, b + r) read the input rows [s*b - lo, s*b - lo + s*(r-1) + k).
Rows of an intermediate block that fall outside its layer's output are the next layer's zero padding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from bench.conv import conv_for, pad_for


class WindowForward(NamedTuple):
    """A model's forward pass split for images that change in one window.

    features(params, x): the last conv layer's output (N, H', W', F), after its ReLU.
    update(params, x_new, features, top, left, side): the features of x_new, given the features of an image that
      x_new equals outside the rows [top, top + side) and columns [left, left + side) (top, left: (N,) integers;
      side: a static int).
    head(params, features): the logits.
    block(image_hw, side): the (rows, columns) of the features that `update` recomputes, to judge the saving.
    """

    features: Callable
    update: Callable
    head: Callable
    block: Callable


def _ceil_div(a, b: int):
    return -((-a) // b)


def _clip(v, lo: int, hi: int):
    return jnp.clip(v, lo, hi) if isinstance(v, jax.Array) else min(max(v, lo), hi)


class _Axis(NamedTuple):
    """The block's geometry along one image axis for a stack of conv layers (kernel, stride, pad before, after)."""

    sizes: tuple[int, ...]  # the input's size, then each layer's output size
    spans: tuple[int, ...]  # the block's size in the input, then in each layer's output
    layers: tuple[tuple[int, int, int, int], ...]
    side: int

    @classmethod
    def plan(cls, size: int, layers, side: int) -> _Axis:
        side = min(side, size)
        sizes, reach = [size], side
        for k, s, lo, hi in layers:
            sizes.append((sizes[-1] + lo + hi - k) // s + 1)
            reach = (reach + k - 2) // s + 1
        spans = [min(reach, sizes[-1])]
        for k, s, _, _ in reversed(layers):
            spans.insert(0, s * (spans[0] - 1) + k)
        return cls(tuple(sizes), tuple(spans), tuple(layers), side)

    def starts(self, t):
        """The first row of the block in the input and in each layer's output, for a window starting at row t."""
        a = _clip(t, 0, self.sizes[0] - self.side)
        for k, s, lo, _ in self.layers:
            a = _ceil_div(a + lo - k + 1, s)
        starts = [_clip(a, 0, self.sizes[-1] - self.spans[-1])]
        for k, s, lo, _ in reversed(self.layers):
            starts.insert(0, s * starts[0] - lo)
        return starts

    def input_padding(self) -> tuple[int, int]:
        """Zero rows to add before and after the input so that every block lies inside it."""
        first = self.starts(0)[0]
        last = self.starts(self.sizes[0] - self.side)[0] + self.spans[0]
        return max(0, -first), max(0, last - self.sizes[0])


def window_forward(model) -> WindowForward:
    """The WindowForward of a `ConvNet` with at least one conv layer (its parameters as `model.init` makes them)."""
    conv = conv_for(model.conv)
    mean = jnp.asarray(model.mean, jnp.float32)
    std = jnp.asarray(model.std, jnp.float32)
    dn = ("NHWC", "HWIO", "NHWC")

    def conv_layers(image_hw):
        """(kernel, stride, ((top, bottom), (left, right))) of each conv layer for images of image_hw."""
        out, hw = [], tuple(image_hw)
        for _, kernel, stride, padding in model.convs:
            pads = pad_for(hw, (kernel, kernel), (stride, stride),
                           padding if isinstance(padding, str) else ((padding, padding),) * 2)
            out.append((kernel, stride, pads))
            hw = tuple((n + sum(p) - kernel) // stride + 1 for n, p in zip(hw, pads))
        return out

    def axes(image_hw, side):
        layers = conv_layers(image_hw)
        return tuple(_Axis.plan(image_hw[d], [(k, s, pads[d][0], pads[d][1]) for k, s, pads in layers], side)
                     for d in (0, 1))

    def apply_conv(params, i, h, stride, padding):
        p = params[f"Conv_{i}"]
        return jax.nn.relu(conv(h, p["kernel"], (stride, stride), padding, dimension_numbers=dn) + p["bias"])

    def features(params, x):
        h = (x - mean) / std
        for i, (_, stride, pads) in enumerate(conv_layers(x.shape[1:3])):
            h = apply_conv(params, i, h, stride, pads)
        return h

    def update(params, x_new, feats, top, left, side: int):
        rows, cols = axes(x_new.shape[1:3], side)
        r, c = rows.starts(top), cols.starts(left)
        (r_lo, r_hi), (c_lo, c_hi) = rows.input_padding(), cols.input_padding()
        h = jnp.pad((x_new - mean) / std, ((0, 0), (r_lo, r_hi), (c_lo, c_hi), (0, 0)))
        size = (rows.spans[0], cols.spans[0], h.shape[-1])
        h = jax.vmap(lambda im, i, j: lax.dynamic_slice(im, (i, j, 0), size))(h, r[0] + r_lo, c[0] + c_lo)
        layers = conv_layers(x_new.shape[1:3])
        for i, (_, stride, _) in enumerate(layers):
            h = apply_conv(params, i, h, stride, "VALID")
            if i + 1 < len(layers):  # rows and columns outside this layer's output are the next one's zero padding
                at_r = r[i + 1][:, None] + jnp.arange(rows.spans[i + 1])
                at_c = c[i + 1][:, None] + jnp.arange(cols.spans[i + 1])
                inside_r = (at_r >= 0) & (at_r < rows.sizes[i + 1])
                inside_c = (at_c >= 0) & (at_c < cols.sizes[i + 1])
                h = jnp.where(inside_r[:, :, None, None] & inside_c[:, None, :, None], h, 0.0)
        return jax.vmap(lambda f, b, i, j: lax.dynamic_update_slice(f, b, (i, j, 0)))(feats, h, r[-1], c[-1])

    def head(params, feats):
        h = feats.reshape(feats.shape[0], -1)
        for j in range(len(model.dense)):
            p = params[f"Dense_{j}"]
            h = jax.nn.relu(h @ p["kernel"] + p["bias"])
        p = params[f"Dense_{len(model.dense)}"]
        return h @ p["kernel"] + p["bias"]

    def block(image_hw, side: int):
        rows, cols = axes(tuple(image_hw), side)
        return (rows.spans[-1], rows.sizes[-1]), (cols.spans[-1], cols.sizes[-1])

    return WindowForward(features, update, head, block)
