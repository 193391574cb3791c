"""Input sets: the epsilon ball around x intersected with the pixel domain [0, 1], and their concretisation.

For L-inf the set is exactly the box [max(x - eps, 0), min(x + eps, 1)]. For L2
it is the ball intersected with that same box (the ball lies inside the L-inf
ball of equal radius); a linear function is bounded over both the box and the
ball and the larger lower bound is kept, which is sound because the set lies in
each of them.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from bench.threat import Norm


class InputSet(NamedTuple):
    lower: jax.Array  # box lower corner, in [0, 1]
    upper: jax.Array  # box upper corner, in [0, 1]
    center: jax.Array  # the clean input x
    eps: jax.Array  # the radius (scalar)


def input_set(x, eps) -> InputSet:
    """The eps-box around x clipped to [0, 1]; with the L2 norm the ball constraint is added at concretisation."""
    eps = jnp.asarray(eps, x.dtype)
    return InputSet(jnp.clip(x - eps, 0.0, 1.0), jnp.clip(x + eps, 0.0, 1.0), x, eps)


def _sum_trailing(a, ndim_keep: int):
    return jnp.sum(a, axis=tuple(range(ndim_keep, a.ndim)))


def concretize(coeffs, const, domain: InputSet, norm: Norm):
    """Lower bounds of `coeffs . x + const` over the input set; coeffs (n, S, *x_shape), const (n, S)."""
    lower, upper = domain.lower[:, None], domain.upper[:, None]
    mid, rad = (upper + lower) / 2, (upper - lower) / 2
    box = _sum_trailing(coeffs * mid, 2) - _sum_trailing(jnp.abs(coeffs) * rad, 2) + const
    if norm == Norm.LINF:
        return box
    dual = jnp.sqrt(_sum_trailing(coeffs * coeffs, 2) + 1e-30)
    ball = _sum_trailing(coeffs * domain.center[:, None], 2) - domain.eps * dual + const
    return jnp.maximum(box, ball)
