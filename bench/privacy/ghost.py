"""DP-SGD's clipped gradient sum in one forward and one backward pass, from per-layer norms ("ghost" clipping).

For a layer z = a W + b (a Dense layer, or a convolution written as patches P times the reshaped kernel),
example i's gradient of its loss with respect to W is a_i^T g_i, where g_i = d loss_i / d z_i is the
gradient at the layer's output (Goodfellow 2015, "Efficient per-example gradient computations"):
- its squared norm is |a_i|^2 |g_i|^2 for a Dense layer, and |P_i^T G_i|_F^2 for a convolution (T output
  positions, K = kh*kw*C inputs, F filters), computed as sum_{t,t'} (P_i P_i^T)_{tt'} (G_i G_i^T)_{tt'} (Li et
  al. 2022, "Large language models can be strong differentially private learners") when that costs fewer
  multiply-adds, T^2 (K + F) < T K F, and otherwise from the K x F gradient P_i^T G_i itself (cnn_small's
  second conv: T = 49, K = 256, F = 32), which then also gives that layer's clipped sum as a weighted sum of
  rows; the bias adds |sum_t G_i|^2;
- the clipped sum is sum_i c_i a_i^T g_i with c_i = min(1, C / |grad_i|), one einsum per layer (Bu et al.
  2022's book-keeping: no second backward pass).
One backward pass gives every g_i at once, because the per-example losses of a model without cross-example
layers depend only on their own example: the gradient of sum_i loss_i with respect to a zero offset added to
each layer's output is exactly g_i, row by row.

It covers what this path can see: a `bench.models.ConvNet` (mlp, cnn_small/medium/large) trained with the
`standard` objective (mean cross-entropy). Anything else (max-pooling, adversarial objectives that call the
model many times) stays on jax-privacy's per-example path (`dp_sgd.clipped_value_and_grad`), which is the
reference: `tests/test_privacy.py` holds the two clipped sums equal on the same batch and checks the
sensitivity bound on neighbouring batches. scripts/dp_speed.py times both against a non-private step.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from bench.conv import conv_patches
from bench.errors import BenchError


def supports(model, defense: str) -> str | None:
    """None if the ghost path computes this model's and defense's clipped sum, else the reason it does not."""
    from bench.models import ConvNet

    if type(model) is not ConvNet:
        return f"ghost clipping reads bench.models.ConvNet only, not {type(model).__name__}"
    if defense != "standard":
        return f"ghost clipping computes the standard objective only, not {defense}"
    return None


def _forward(model, params, x, offsets=None):
    """Logits of `model` (a ConvNet) from its params, plus each affine layer's input (patches for convs).

    `offsets[l]` is added to affine layer l's output (zeros: the backward pass reads its gradient)."""
    mean = jnp.asarray(model.mean, x.dtype)
    std = jnp.asarray(model.std, x.dtype)
    a = (x - mean) / std
    inputs, l = [], 0
    for i, (_, kernel, stride, padding) in enumerate(model.convs):
        p = params[f"Conv_{i}"]
        pad = padding if isinstance(padding, str) else ((padding, padding), (padding, padding))
        patches = conv_patches(a, (kernel, kernel), (stride, stride), pad)
        inputs.append(patches)
        z = patches @ p["kernel"].reshape(-1, p["kernel"].shape[-1]) + p["bias"]
        if offsets is not None:
            z = z + offsets[l]
        a, l = jax.nn.relu(z), l + 1
    a = a.reshape(a.shape[0], -1)
    n_dense = len(model.dense) + 1
    for i in range(n_dense):
        p = params[f"Dense_{i}"]
        inputs.append(a)
        z = a @ p["kernel"] + p["bias"]
        if offsets is not None:
            z = z + offsets[l]
        a, l = (jax.nn.relu(z) if i < n_dense - 1 else z), l + 1
    return a, inputs


def _layer_names(model):
    return [f"Conv_{i}" for i in range(len(model.convs))] + [f"Dense_{i}" for i in range(len(model.dense) + 1)]


def _layer_terms(a, g):
    """Per-example squared norms of layer l's weight and bias gradients, and what the clipped sum needs from them.

    a: the layer's input (B, K) or patches (B, Ho, Wo, K); g: the gradient at its output (B, F) or (B, Ho, Wo, F).
    Returns (sq_norms (B,), per_example): per_example holds each example's (K*F) kernel gradient where forming
    it (T*K*F multiply-adds per example) is no dearer than the Gram trick (T^2*(K+F)), so the clipped sum is a
    weighted sum of rows; else None and the clipped sum is one einsum over a and g.
    The sums over examples' rows are einsums, not `jnp.sum` over axes, which XLA:CPU runs slowly.
    """
    b = a.shape[0]
    if a.ndim == 2:  # Dense: (B, K), (B, F)
        gg = jnp.einsum("bf,bf->b", g, g)
        return jnp.einsum("bk,bk->b", a, a) * gg + gg, None
    a, g = a.reshape(b, -1, a.shape[-1]), g.reshape(b, -1, g.shape[-1])  # (B, T, K), (B, T, F)
    t, k, f = a.shape[1], a.shape[2], g.shape[2]
    bias = jnp.einsum("btf->bf", g)
    bias_sq = jnp.einsum("bf,bf->b", bias, bias)
    if t * (k + f) < k * f:
        gram = jnp.einsum("btk,bsk->bts", a, a).reshape(b, -1)
        return jnp.einsum("bn,bn->b", gram, jnp.einsum("btf,bsf->bts", g, g).reshape(b, -1)) + bias_sq, None
    per_example = jnp.einsum("btk,btf->bkf", a, g).reshape(b, -1)
    return jnp.einsum("bn,bn->b", per_example, per_example) + bias_sq, per_example


def _weighted_grads(a, g, c, kernel_shape, per_example=None):
    """sum_i c_i a_i^T g_i (the kernel, reshaped to its HWIO shape) and sum_i c_i sum_t g_i (the bias)."""
    b = a.shape[0]
    a, g = a.reshape(b, -1, a.shape[-1]), g.reshape(b, -1, g.shape[-1])  # a Dense layer has T = 1
    bias = jnp.einsum("btf,b->f", g, c)
    if per_example is not None:
        return jnp.einsum("b,bn->n", c, per_example).reshape(kernel_shape), bias
    kernel = jnp.einsum("tk,tf->kf", (a * c[:, None, None]).reshape(-1, a.shape[-1]), g.reshape(-1, g.shape[-1]))
    return kernel.reshape(kernel_shape), bias


def ghost_value_and_grad(model, clip_norm: float) -> Callable[[Callable], Callable]:
    """The `grad_fn` hook of `bench.train.train` for a ConvNet and the standard objective.

    Same contract as `dp_sgd.clipped_value_and_grad`: `(params, batch, key, step, is_padding)` ->
    `((loss, aux), grad_sum)`, grad_sum the sum over real examples of each example's gradient clipped to L2
    norm `clip_norm`; loss and aux (accuracy) are means over the real examples. The objective passed in is
    ignored (it must be `standard` of this model: `supports` says so before training).
    """
    reason = supports(model, "standard")
    if reason:
        raise BenchError(reason)
    clip_norm = float(clip_norm)
    names = _layer_names(model)

    def transform(objective=None):
        def value_and_grad(params, batch, key, step, is_padding):
            x, y = batch
            real = (~is_padding).astype(x.dtype)
            shapes = jax.eval_shape(lambda: _forward(model, params, x)[1])
            offsets = [jnp.zeros((*a.shape[:-1], params[n]["kernel"].shape[-1]), x.dtype)
                       for a, n in zip(shapes, names)]

            def total(offsets):
                logits, inputs = _forward(model, params, x, offsets)
                losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
                return jnp.sum(losses * real), (losses, logits, inputs)

            outs, (losses, logits, inputs) = jax.grad(total, has_aux=True)(offsets)
            terms = [_layer_terms(a, g) for a, g in zip(inputs, outs)]
            sq = sum(t[0] for t in terms)
            c = real * jnp.minimum(1.0, clip_norm / jnp.maximum(jnp.sqrt(sq), 1e-12))
            grads = {}
            for name, a, g, (_, per_example) in zip(names, inputs, outs, terms):
                kernel, bias = _weighted_grads(a, g, c, params[name]["kernel"].shape, per_example)
                grads[name] = {"bias": bias, "kernel": kernel}
            count = jnp.maximum(real.sum(), 1.0)
            accuracy = jnp.sum((jnp.argmax(logits, -1) == y) * real) / count
            return (jnp.sum(losses * real) / count, {"accuracy": accuracy}), grads

        return value_and_grad

    return transform
