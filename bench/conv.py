"""Convolutions as patch extraction + one matmul, for the CPU.

On XLA:CPU the input gradient of a small strided convolution, when it is traced inside a loop body
(`lax.fori_loop`, the attacks' loops), is emitted as generic loop code instead of the fast convolution
kernel; those gradients were most of PGD's time (results/speed.md). Written as strided slices (one per
kernel offset), a concatenation and a matmul, the forward pass and both gradients are slices, pads and
matmuls, which XLA:CPU runs at close to its matmul rate.

A strided convolution whose kernel the stride divides (cnn_small's 4x4 stride 2) is first rewritten as a
stride-1 convolution on the space-to-depth image (each s x s block of pixels becomes s*s*C channels, the
kernel is rearranged to match), which needs (k/s)^2 slices instead of k^2. A unit-stride convolution with no
more output than input channels (that stride-1 convolution, for cnn_small's second conv) skips the patches in
its forward pass: one matmul of every pixel with every tap's weights, then a sum of shifted slices
(`_shift_add_conv`; its backward pass is the patch form's).

`matmul_conv` has `lax.conv_general_dilated`'s signature, so Flax takes it through `nn.Conv`'s own
`conv_general_dilated=` hook: the parameter tree (`kernel` HWIO, `bias`) does not change and saved
parameters load into either form. `conv_for(impl)` picks the implementation: "lax", "matmul", or "auto"
(matmul on the CPU backend, `lax.conv_general_dilated` on GPU and TPU, where the vendor kernels win).
`tests/test_models.py` holds both forms equal on every architecture, outputs and gradients.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

CONV_IMPLS = ("auto", "lax", "matmul")


def _nhwc_hwio(dimension_numbers) -> bool:
    if dimension_numbers is None:
        return False
    lhs, rhs, out = dimension_numbers
    return tuple(lhs) == (0, 3, 1, 2) and tuple(rhs) == (3, 2, 0, 1) and tuple(out) == (0, 3, 1, 2)


def matmul_conv(lhs, rhs, window_strides: Sequence[int], padding, lhs_dilation=None, rhs_dilation=None,
                dimension_numbers=None, feature_group_count: int = 1, precision=None, **kwargs):
    """A 2-D NHWC/HWIO convolution as strided slices + concatenation + matmul.

    Anything else (other layouts, dilation, grouped convolutions, other ranks) goes to
    `lax.conv_general_dilated` unchanged, so this is a drop-in replacement.
    """
    dilated = any(d != 1 for d in (lhs_dilation or ())) or any(d != 1 for d in (rhs_dilation or ()))
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) if dimension_numbers else None
    if lhs.ndim != 4 or dilated or feature_group_count != 1 or kwargs or not _nhwc_hwio(dn):
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                        feature_group_count=feature_group_count, precision=precision, **kwargs)
    kh, kw, cin, cout = rhs.shape
    sh, sw = window_strides
    pads = pad_for(lhs.shape[1:3], (kh, kw), (sh, sw), padding)
    if sh == sw > 1 and kh % sh == 0 and kw % sw == 0:
        return _space_to_depth_conv(lhs, rhs, sh, pads, precision)
    x = jnp.pad(lhs, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
    return _patch_matmul(x, rhs, sh, sw, precision)


def pad_for(in_hw, kernel_hw, strides, padding):
    """Explicit ((top, bottom), (left, right)) padding for "SAME", "VALID" or explicit pairs."""
    if isinstance(padding, str):
        return [tuple(p) for p in lax.padtype_to_pads(in_hw, kernel_hw, strides, padding)]
    return [tuple(p) for p in padding]


def conv_patches(x, kernel_hw, strides, padding):
    """The (N, Ho, Wo, kh*kw*C) patches of NHWC `x`, in the row-major order of an HWIO kernel's first three axes.

    `conv_patches(x, ...) @ kernel.reshape(-1, F)` is the convolution; DP's per-example gradient norms
    (bench/privacy/ghost.py) use the patches too.
    """
    pads = pad_for(x.shape[1:3], kernel_hw, strides, padding)
    x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    return _patches(x, *kernel_hw, *strides)


def kernel_gradient(x, cotangent, kernel_shape, stride: int, padding):
    """The gradient of sum(cotangent * conv(x, kernel)) with respect to the HWIO kernel: one matmul.

    x (N, H, W, C), cotangent (N, Ho, Wo, F). Where the stride divides the kernel the patches come from the
    space-to-depth image ((k/s)^2 unit-stride slices instead of k^2 strided ones, which XLA:CPU copies slowly).
    """
    kh, kw, cin, cout = kernel_shape
    s = stride
    if not (s > 1 and kh % s == 0 and kw % s == 0):
        patches = conv_patches(x, (kh, kw), (s, s), padding)
        return (patches.reshape(-1, kh * kw * cin).T @ cotangent.reshape(-1, cout)).reshape(kernel_shape)
    pads = pad_for(x.shape[1:3], (kh, kw), (s, s), padding)
    h, w = x.shape[1] + sum(pads[0]), x.shape[2] + sum(pads[1])
    x = jnp.pad(x, ((0, 0), (pads[0][0], pads[0][1] + (-h) % s), (pads[1][0], pads[1][1] + (-w) % s), (0, 0)))
    n, hp, wp, c = x.shape
    x = x.reshape(n, hp // s, s, wp // s, s, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, hp // s, wp // s, s * s * c)
    ho, wo = cotangent.shape[1:3]
    patches = _patches(x[:, : ho + kh // s - 1, : wo + kw // s - 1], kh // s, kw // s, 1, 1)
    grad = patches.reshape(-1, (kh // s) * (kw // s) * s * s * cin).T @ cotangent.reshape(-1, cout)
    # rows are (p, q, a, b, c) for the kernel tap (p*s + a, q*s + b) and input channel c
    grad = grad.reshape(kh // s, kw // s, s, s, cin, cout).transpose(0, 2, 1, 3, 4, 5)
    return grad.reshape(kernel_shape)


def _patches(x, kh: int, kw: int, sh: int, sw: int):
    n, hp, wp, cin = x.shape
    ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    # One strided slice per kernel offset, concatenated on the channel axis in (i, j, c) order, which is the
    # row-major flattening of the HWIO kernel's first three axes.
    cols = [lax.slice(x, (0, i, j, 0), (n, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, cin), (1, sh, sw, 1))
            for i in range(kh) for j in range(kw)]
    return jnp.concatenate(cols, axis=-1) if len(cols) > 1 else cols[0]


def _patch_matmul(x, rhs, sh: int, sw: int, precision):
    """A VALID convolution of the padded NHWC `x` with the HWIO `rhs`: one slice per kernel offset, one matmul.

    Unit-stride kernels with several taps and no more outputs than inputs (cnn_small's second conv after
    space-to-depth: 2x2 taps, 64 -> 32 channels) take `_shift_add_conv` instead, which gives the same values.
    """
    kh, kw, cin, cout = rhs.shape
    if sh == sw == 1 and kh * kw > 1 and cout <= cin:
        return _shift_add_conv(x, rhs, precision)
    return _patches_times_kernel(x, rhs, sh, sw, precision)


def _patches_times_kernel(x, rhs, sh: int, sw: int, precision):
    kh, kw, cin, cout = rhs.shape
    patches = _patches(x, kh, kw, sh, sw)
    n, ho, wo, k = patches.shape
    out = jnp.dot(patches.reshape(n * ho * wo, k), rhs.reshape(k, cout), precision=precision)
    return out.reshape(n, ho, wo, cout)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _shift_add_conv(x, rhs, precision):
    """A unit-stride VALID convolution as one matmul of every pixel with every tap's weights, then a sum of
    kh*kw shifted slices of the result; its gradients are the patch form's.

    The patch form copies each input pixel kh*kw times before its matmul; on XLA:CPU those copies (strided
    slices and a concatenation) were about a third of PGD's and Square's time. This forward pass writes one
    (H, W, kh*kw*cout) product instead, which is smaller where cout <= cin. Its autodiff backward was slower
    than the patch form's (pads of the shifted slices, then a matmul over kh*kw*cout), so the backward pass is
    the patch form's own VJP: scripts/peer_pgd.py and scripts/peer_autoattack.py measure both attacks.
    """
    kh, kw, cin, cout = rhs.shape
    n, hp, wp, _ = x.shape
    ho, wo = hp - kh + 1, wp - kw + 1
    taps = rhs.transpose(2, 0, 1, 3).reshape(cin, kh * kw * cout)  # columns (i, j, o)
    product = jnp.dot(x.reshape(-1, cin), taps, precision=precision).reshape(n, hp, wp, kh * kw, cout)
    out = product[:, :ho, :wo, 0]
    for tap in range(1, kh * kw):
        i, j = divmod(tap, kw)
        out = out + product[:, i:i + ho, j:j + wo, tap]
    return out


def _shift_add_fwd(x, rhs, precision):
    return _shift_add_conv(x, rhs, precision), (x, rhs)


def _shift_add_bwd(precision, residuals, g):
    x, rhs = residuals
    _, vjp = jax.vjp(lambda a, b: _patches_times_kernel(a, b, 1, 1, precision), x, rhs)
    return vjp(g)


_shift_add_conv.defvjp(_shift_add_fwd, _shift_add_bwd)


def _space_to_depth_conv(lhs, rhs, s: int, pads, precision):
    """Stride s, kernel k (s divides k): a stride-1 (k/s)-kernel convolution of the space-to-depth image.

    Output pixel (y, x) sums xpad[s*y + p*s + a, s*x + q*s + b, c] * w[p*s + a, q*s + b, c] over the kernel
    offsets written as (p, a), (q, b); with X2[Y, X, (a, b, c)] = xpad[s*Y + a, s*X + b, c] that is a stride-1
    convolution of X2 with the kernel w2[p, q, (a, b, c)] = w[p*s + a, q*s + b, c].
    """
    kh, kw, cin, cout = rhs.shape
    h, w = lhs.shape[1] + sum(pads[0]), lhs.shape[2] + sum(pads[1])
    # pad to a multiple of s: the extra rows and columns meet no kernel tap of a kept output pixel
    x = jnp.pad(lhs, ((0, 0), (pads[0][0], pads[0][1] + (-h) % s), (pads[1][0], pads[1][1] + (-w) % s), (0, 0)))
    n, hp, wp, c = x.shape
    x = x.reshape(n, hp // s, s, wp // s, s, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, hp // s, wp // s, s * s * c)
    return space_to_depth_input_conv(x, rhs, s, ((h - kh) // s + 1, (w - kw) // s + 1), precision)


def space_to_depth_input_conv(x, rhs, s: int, out_hw, precision=None):
    """The stride-s convolution with the HWIO `rhs` of an image given as its padded space-to-depth form `x`.

    x is (N, Hp/s, Wp/s, s*s*C) with channels in (a, b, c) order for the pixel (s*Y + a, s*X + b, c) of the
    padded image; out_hw is the convolution's (Ho, Wo).
    """
    kh, kw, cin, cout = rhs.shape
    k = rhs.reshape(kh // s, s, kw // s, s, cin, cout).transpose(0, 2, 1, 3, 4, 5)
    out = _patch_matmul(x, k.reshape(kh // s, kw // s, s * s * cin, cout), 1, 1, precision)
    return out[:, :out_hw[0], :out_hw[1], :]


def writes_space_to_depth(kernel: int, stride: int, next_kernel: int, next_stride: int) -> bool:
    """Whether `conv_to_space_to_depth` can compute a conv (kernel, stride) straight in the layout that the next
    conv (next_kernel, next_stride) reads: the next conv takes the space-to-depth path, and each output pixel's
    input window fits in one block of stride * next_stride input pixels."""
    return next_stride > 1 and next_kernel % next_stride == 0 and kernel <= stride * next_stride


def conv_to_space_to_depth(x, rhs, bias, stride: int, padding, next_kernel: int, next_stride: int, next_padding,
                           precision=None):
    """conv(x, rhs) + bias, written as the next convolution's padded space-to-depth input.

    Where a strided convolution feeds another that takes the space-to-depth path (cnn_small's two convs), laying
    the first one's output out for the second is a padded transpose that cost about an eighth of PGD's time and
    a fifth of Square's on the CPU. This computes the first convolution directly at the pixels of the second's
    padded input, in its (Y, X, (a, b, c)) order, so that the product of patches and kernel is already that
    layout. Pixels of the second convolution's padding are zero (and stay zero through a ReLU). Returns
    (out, out_hw): `space_to_depth_input_conv(out, next_rhs, next_stride, out_hw)` is the next convolution.

    The output pixel (y, x) = (s2*Y + a - top2, ...) of the first convolution reads the input rows
    s1*y - top1 + i, i < k1, that is T*Y + s1*a + i - (s1*top2 + top1) with T = s1*s2: with the input padded
    by s1*top2 + top1 above, row block Y of the slice that starts at s1*a, cut into blocks of T rows, holds the
    window in its first k1 rows (k1 <= T; `writes_space_to_depth`).
    """
    kh, kw, cin, cout = rhs.shape
    s1, s2 = stride, next_stride
    if not (kh == kw and writes_space_to_depth(kh, s1, next_kernel, s2)):
        raise ValueError(f"conv_to_space_to_depth needs a square kernel of at most stride * next_stride pixels "
                         f"and a next stride that divides its kernel; got kernel {kh}x{kw}, stride {s1}, next "
                         f"kernel {next_kernel}, next stride {s2}")
    n, h, w, _ = x.shape
    pads = pad_for((h, w), (kh, kw), (s1, s1), padding)
    conv_hw = tuple((size + sum(p) - kh) // s1 + 1 for size, p in zip((h, w), pads))
    next_pads = pad_for(conv_hw, (next_kernel, next_kernel), (s2, s2), next_padding)
    blocks = tuple(-(-(size + sum(p)) // s2) for size, p in zip(conv_hw, next_pads))
    out_hw = tuple((size + sum(p) - next_kernel) // s2 + 1 for size, p in zip(conv_hw, next_pads))
    t = s1 * s2
    tops = [s1 * next_pads[d][0] + pads[d][0] for d in (0, 1)]
    bottoms = [max(0, s1 * (s2 - 1) + t * blocks[d] - size - tops[d]) for d, size in enumerate((h, w))]
    # Rows x (columns * channels): a single-channel image's (N, H, W, 1) pads and slices (and their transposes in
    # the backward pass) left XLA:CPU a minor dimension of 1, which it does not vectorise (a pad of an
    # elementwise update of 238 MNIST images took 416 us that way, 156 us as rows x columns, in a probe)
    xp = jnp.pad(x.reshape(n, h, w * cin), ((0, 0), (tops[0], bottoms[0]), (tops[1] * cin, bottoms[1] * cin)))
    windows = []
    for a in range(s2):
        for b in range(s2):
            part = xp[:, s1 * a:s1 * a + t * blocks[0], s1 * b * cin:(s1 * b + t * blocks[1]) * cin]
            part = part.reshape(n, blocks[0], t, blocks[1], t * cin)
            if kh < t or kw < t:
                part = part[:, :, :kh, :, :kw * cin]
            windows.append(part.transpose(0, 1, 3, 2, 4).reshape(n, blocks[0], blocks[1], kh * kw * cin))
    patches = jnp.stack(windows, axis=3)  # (N, Y, X, (a, b), (i, j, c))
    out = jnp.dot(patches.reshape(-1, kh * kw * cin), rhs.reshape(kh * kw * cin, cout), precision=precision)
    out = out.reshape(n, blocks[0], blocks[1], s2 * s2, cout) + bias
    # the first convolution's pixel (s2*Y + a - top2) is inside its output, or padding of the next one
    keep = [((s2 * np.arange(blocks[d])[:, None] + np.arange(s2)[None, :] - next_pads[d][0] >= 0)
             & (s2 * np.arange(blocks[d])[:, None] + np.arange(s2)[None, :] - next_pads[d][0] < conv_hw[d]))
            for d in (0, 1)]
    keep = (keep[0][:, None, :, None] & keep[1][None, :, None, :]).reshape(blocks[0], blocks[1], s2 * s2, 1)
    out = jnp.where(keep, out, 0.0)
    return out.reshape(n, blocks[0], blocks[1], s2 * s2 * cout), out_hw


def conv_for(impl: str = "auto"):
    """The convolution function for `impl` ("auto", "lax", "matmul"), resolved when the model is traced."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"unknown conv implementation {impl!r}; use one of {', '.join(CONV_IMPLS)}")
    if impl == "auto":
        impl = "matmul" if jax.default_backend() == "cpu" else "lax"
    return matmul_conv if impl == "matmul" else lax.conv_general_dilated
