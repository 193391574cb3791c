"""Interval bound propagation (Gowal et al. 2018, "On the Effectiveness of Interval Bound Propagation for
Training Verifiably Robust Models").

Boxes are pushed through each affine layer as centre and radius (c' = W c + b,
r' = |W| r) and through ReLU elementwise. As in the paper, the last affine
block is folded into the margin specification: the bound is taken on
(e_y - e_j)^T (W h + b) directly, which is tighter than subtracting logit
intervals. The input set is the eps-ball intersected with [0, 1]; with the L2
norm the first block also uses the exact dual-norm bound eps * ||row||_2 (valid
when that block has one mixing layer, as every `ConvNet` does) and keeps the
tighter of it and the box bound.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from bench.threat import Norm, check_eps, parse_norm
from bench.certify.domain import InputSet, concretize, input_set
from bench.certify.network import (MIXING, Network, apply_block, as_network, blocks, check_params, margin_spec,
                                   num_logits, transpose_block)


def interval_block(block, params, lower, upper):
    """Interval arithmetic through one affine block, layer by layer: (lower, upper) of its output."""
    mid, rad = (upper + lower) / 2, (upper - lower) / 2
    for layer in block:
        mid = layer.linear(params, mid) + layer.offset(params)
        rad = layer.linear(params, rad, jnp.abs)
    return mid - rad, mid + rad


def first_block_bounds(block, params, domain: InputSet, norm: Norm):
    """Bounds on the first block's output over the input set (box, and for L2 also the ball)."""
    lower, upper = interval_block(block, params, domain.lower, domain.upper)
    if norm == Norm.L2 and sum(isinstance(layer, MIXING) for layer in block) <= 1:
        # With one mixing layer the squared weights compose exactly, giving each row's squared L2 norm.
        row_sq = apply_block(block, params, jnp.ones_like(domain.center[:1]), jnp.square)
        mid = apply_block(block, params, domain.center)
        rad = domain.eps * jnp.sqrt(row_sq)
        lower, upper = jnp.maximum(lower, mid - rad), jnp.minimum(upper, mid + rad)
    return lower, upper


def interval_preactivations(net_blocks, params, domain: InputSet, norm: Norm) -> list:
    """IBP bounds (lower, upper) on the input of every ReLU, in order."""
    bounds = []
    for k, block in enumerate(net_blocks[:-1]):
        if k == 0:
            bounds.append(first_block_bounds(block, params, domain, norm))
        else:
            lower, upper = bounds[-1]
            bounds.append(interval_block(block, params, jax.nn.relu(lower), jax.nn.relu(upper)))
    return bounds


def fold_last_block(net_blocks, params, spec, domain: InputSet, norm: Norm, preactivations):
    """Lower bounds on spec . logits with the last block folded into the spec, from boxes on its input."""
    last = net_blocks[-1]
    in_shape = domain.center.shape[1:] if len(net_blocks) == 1 else preactivations[-1][0].shape[1:]
    coeffs, const = transpose_block(last, params, spec, in_shape)
    if len(net_blocks) == 1:
        return concretize(coeffs, const, domain, norm)
    lower, upper = (jax.nn.relu(b) for b in preactivations[-1])
    box = InputSet(lower, upper, (lower + upper) / 2, jnp.zeros((), lower.dtype))
    return concretize(coeffs, const, box, Norm.LINF)


def mark_true_class(margins, y):
    """+inf at the true class: its margin is not a constraint."""
    return jnp.where(jax.nn.one_hot(y, margins.shape[-1], dtype=bool), jnp.inf, margins)


@partial(jax.jit, static_argnames=("network", "norm"))
def ibp_margin_lower(network: Network, params, x, y, eps, *, norm: Norm = Norm.LINF):
    """IBP lower bounds on logit_y - logit_j over the eps-ball ∩ [0, 1]: shape (n, classes), +inf at j = y."""
    net_blocks = blocks(network)
    domain = input_set(x, eps)
    pre = interval_preactivations(net_blocks, params, domain, norm)
    spec = margin_spec(y, num_logits(network, params, x), x.dtype)
    return mark_true_class(fold_last_block(net_blocks, params, spec, domain, norm, pre), y)


def ibp(*, norm: str = "linf", eps: float):
    """IBP certifier `(network, params, x, y) -> margin_lower` (n, classes) at `eps`, +inf at the true class.

    `network` is a `bench.models.ConvNet` or a layer list (bench.certify.network);
    an example is certified at eps when every entry is > 0.
    """
    norm = parse_norm(norm)
    eps = check_eps(norm, eps)

    def certify(network, params, x, y):
        network = as_network(network)
        check_params(network, params)
        return ibp_margin_lower(network, params, jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32),
                                jnp.float32(eps), norm=norm)

    return certify
