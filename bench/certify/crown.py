"""CROWN (Zhang, Weng, Chen, Hsieh & Daniel 2018, "Efficient Neural Network Robustness Certification with
General Activation Functions"), for ReLU networks.

Backward linear relaxation: the margin spec (e_y - e_j) is back-substituted
through every affine block (by the transpose of its linear part) and every ReLU
(by one linear lower and one linear upper bound per neuron), down to the input,
where the resulting linear function is bounded over the eps-ball ∩ [0, 1].
For an unstable neuron (l < 0 < u) the upper line is u (z - l) / (u - l) and
the lower line is alpha z with the adaptive slope alpha = 1 if u >= -l else 0
(the paper's choice); `lower_slope` can fix alpha to 0 or 1 instead.

The ReLU relaxation needs bounds on every pre-activation. With
`intermediate="crown"` each layer's bounds come from a full CROWN pass on that
layer (intersected with interval arithmetic from the previous layer's bounds,
which only tightens them); with `intermediate="ibp"` they come from interval
bound propagation, which is CROWN-IBP's bound (Zhang et al. 2020). Full CROWN
costs one backward pass per neuron of each hidden layer; use IBP intermediates
for large conv nets.
"""

from __future__ import annotations

import enum
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bench.threat import Norm, check_eps, parse_norm
from bench.certify.domain import InputSet, concretize, input_set
from bench.certify.ibp import first_block_bounds, interval_block
from bench.certify.network import (Network, as_network, block_input_shapes, blocks, check_params, margin_spec_others,
                                   num_logits, scatter_margins, transpose_block)
from bench.errors import BenchError


class Intermediate(str, enum.Enum):
    CROWN = "crown"
    IBP = "ibp"


class LowerSlope(str, enum.Enum):
    ADAPTIVE = "adaptive"  # 1 if u >= -l else 0 (Zhang et al. 2018)
    ZERO = "zero"
    ONE = "one"


def _parse(enum_type, value, what):
    try:
        return enum_type(str(getattr(value, "value", value)).lower())
    except ValueError:
        raise BenchError(f"unknown {what} '{value}'; use one of {[v.value for v in enum_type]}") from None


def relu_relaxation(lower, upper, lower_slope: LowerSlope = LowerSlope.ADAPTIVE, alpha=None):
    """Per-neuron linear bounds sl*z <= relu(z) <= su*z + bu on [lower, upper]: (sl, su, bu).

    `alpha` (any array in [0, 1] broadcastable to lower) overrides the lower slope of unstable neurons.
    """
    active = lower >= 0
    unstable = (lower < 0) & (upper > 0)
    width = jnp.where(unstable, upper - lower, 1.0)
    su = jnp.where(active, 1.0, jnp.where(unstable, upper / width, 0.0))
    bu = jnp.where(unstable, -su * lower, 0.0)
    if alpha is not None:
        alpha = jnp.clip(alpha, 0.0, 1.0)
    elif lower_slope == LowerSlope.ADAPTIVE:
        alpha = (upper >= -lower).astype(lower.dtype)
    else:
        alpha = jnp.full_like(lower, 1.0 if lower_slope == LowerSlope.ONE else 0.0)
    sl = jnp.where(active, 1.0, jnp.where(unstable, alpha, 0.0))
    return sl, su, bu


def backward(net_blocks, params, coeffs, k: int, preactivations, shapes, lower_slope: LowerSlope, alphas=None):
    """Back-substitute coefficients on block k's output down to the network input, for a lower bound.

    coeffs: (n or 1, S, *out_shape); alphas: optional lower slopes per ReLU, each (n, S, *shape).
    Returns (coeffs on the input, constant), both batched over n.
    """
    coeffs, const = transpose_block(net_blocks[k], params, coeffs, shapes[k])
    for j in range(k - 1, -1, -1):
        lower, upper = (b[:, None] for b in preactivations[j])
        sl, su, bu = relu_relaxation(lower, upper, lower_slope, None if alphas is None else alphas[j])
        # selects, not maximum/minimum: their gradients split ties with a division over the whole tensor
        negative = coeffs < 0
        const = const + jnp.sum(jnp.where(negative, coeffs * bu, 0.0), axis=tuple(range(2, coeffs.ndim)))
        coeffs = coeffs * jnp.where(negative, su, sl)
        coeffs, c = transpose_block(net_blocks[j], params, coeffs, shapes[j])
        const = const + c
    return coeffs, const


def preactivation_bounds(net_blocks, params, domain: InputSet, norm: Norm, intermediate: Intermediate,
                         lower_slope: LowerSlope, shapes) -> list:
    """Bounds (lower, upper) on the input of every ReLU: CROWN per layer, or IBP."""
    bounds = []
    for k, block in enumerate(net_blocks[:-1]):
        if k == 0:
            bounds.append(first_block_bounds(block, params, domain, norm))  # exact for one affine layer
            continue
        prev_lower, prev_upper = bounds[-1]
        lower, upper = interval_block(block, params, jax.nn.relu(prev_lower), jax.nn.relu(prev_upper))
        if intermediate == Intermediate.CROWN:
            out_shape = lower.shape[1:]
            size = lower[0].size
            eye = jnp.eye(size, dtype=lower.dtype).reshape((size, *out_shape))
            coeffs = jnp.concatenate([eye, -eye])[None]  # lower bounds of z and of -z
            a, const = backward(net_blocks, params, coeffs, k, bounds, shapes, lower_slope)
            both = concretize(a, const, domain, norm)
            crown_lower = both[:, :size].reshape(lower.shape)
            crown_upper = -both[:, size:].reshape(lower.shape)
            lower, upper = jnp.maximum(lower, crown_lower), jnp.minimum(upper, crown_upper)
        bounds.append((lower, upper))
    return bounds


@partial(jax.jit, static_argnames=("network", "norm", "intermediate", "lower_slope", "alpha_steps"))
def crown_margin_lower(network: Network, params, x, y, eps, *, norm: Norm = Norm.LINF,
                       intermediate: Intermediate = Intermediate.CROWN,
                       lower_slope: LowerSlope = LowerSlope.ADAPTIVE, alpha_steps: int = 0, alpha_lr: float = 0.1):
    """CROWN lower bounds on logit_y - logit_j over the eps-ball ∩ [0, 1]: (n, classes), +inf at j = y.

    With alpha_steps > 0 the lower slopes of the last back-substitution are optimised per margin by
    projected Adam (alpha-CROWN, Xu et al. 2021), starting from the adaptive slopes; intermediate bounds
    stay as computed. Every alpha in [0, 1] gives a sound bound; the best seen per margin is returned.
    """
    net_blocks = blocks(network)
    domain = input_set(x, eps)
    shapes = block_input_shapes(net_blocks, params, x)
    pre = preactivation_bounds(net_blocks, params, domain, norm, intermediate, lower_slope, shapes)
    num_classes = num_logits(network, params, x)
    spec = margin_spec_others(y, num_classes, x.dtype)  # the true class's row is 0: not back-substituted
    last = len(net_blocks) - 1

    def bound(alphas):
        coeffs, const = backward(net_blocks, params, spec, last, pre, shapes, lower_slope, alphas)
        return concretize(coeffs, const, domain, norm)

    if alpha_steps == 0:  # one relaxation per neuron, shared by every margin row
        return scatter_margins(bound(None), y, num_classes)
    start = [relu_relaxation(lo, up, lower_slope)[0][:, None] for lo, up in pre]
    start = [jnp.broadcast_to(a, (a.shape[0], spec.shape[1], *a.shape[2:])) for a in start]  # one slope per margin
    best = bound(start)
    if alpha_steps > 0:
        optimizer = optax.adam(alpha_lr)

        def step(_, carry):
            alphas, state, best = carry
            value, grads = jax.value_and_grad(lambda a: -jnp.sum(bound(a)))(alphas)
            updates, state = optimizer.update(grads, state)
            alphas = jax.tree.map(lambda a: jnp.clip(a, 0.0, 1.0), optax.apply_updates(alphas, updates))
            return alphas, state, jnp.maximum(best, bound(alphas))

        _, _, best = jax.lax.fori_loop(0, alpha_steps, step, (start, optimizer.init(start), best))
    return scatter_margins(best, y, num_classes)


def crown_ibp_logit_lower(network: Network, params, x, spec, eps, *, norm: Norm = Norm.LINF,
                          lower_slope: LowerSlope = LowerSlope.ADAPTIVE, preactivations=None):
    """CROWN-IBP lower bounds of `spec . logits` over the eps-ball ∩ [0, 1]: spec (n, S, classes) -> (n, S).

    One backward pass per row of `spec`, with IBP intermediate bounds (pass `preactivations`, as
    `bench.certify.ibp.interval_preactivations` returns them, to reuse ones already computed).
    """
    net_blocks = blocks(network)
    domain = input_set(x, eps)
    shapes = block_input_shapes(net_blocks, params, x)
    if preactivations is None:
        preactivations = preactivation_bounds(net_blocks, params, domain, norm, Intermediate.IBP, lower_slope, shapes)
    coeffs, const = backward(net_blocks, params, spec, len(net_blocks) - 1, preactivations, shapes, lower_slope)
    return concretize(coeffs, const, domain, norm)


@partial(jax.jit, static_argnames=("network", "norm", "intermediate", "lower_slope"))
def crown_preactivation_bounds(network: Network, params, x, eps, *, norm: Norm = Norm.LINF,
                               intermediate: Intermediate = Intermediate.CROWN,
                               lower_slope: LowerSlope = LowerSlope.ADAPTIVE):
    """The intermediate bounds CROWN uses: a list of (lower, upper), one per ReLU."""
    net_blocks = blocks(network)
    shapes = block_input_shapes(net_blocks, params, x)
    return preactivation_bounds(net_blocks, params, input_set(x, eps), norm, intermediate, lower_slope, shapes)


def crown(*, norm: str = "linf", eps: float, intermediate: str = "crown", lower_slope: str = "adaptive",
          alpha_steps: int = 0, alpha_lr: float = 0.1, max_coefficients: int = 2**26):
    """CROWN certifier `(network, params, x, y) -> margin_lower` (n, classes) at `eps`, +inf at the true class.

    Args:
      norm: "linf" or "l2"; the input set is the eps-ball intersected with [0, 1].
      eps: radius of the threat model in [0, 1] pixel units.
      intermediate: "crown" (full CROWN, Zhang et al. 2018) or "ibp" (CROWN-IBP, Zhang et al. 2020).
      lower_slope: "adaptive" (the paper's), "zero" or "one": the lower line of unstable ReLUs.
      alpha_steps: > 0 optimises the last pass's lower slopes per margin with that many Adam steps
        (alpha-CROWN, Xu et al. 2021, "Fast and Complete"); 0 is plain CROWN.
      alpha_lr: Adam learning rate for the slopes.
      max_coefficients: memory cap: examples are bounded in chunks whose largest back-substitution
        coefficient tensor holds at most this many float32 entries (2**26: 256 MiB);
        a network that needs more for a single example is a BenchError.
    """
    norm = parse_norm(norm)
    eps = check_eps(norm, eps)
    intermediate = _parse(Intermediate, intermediate, "intermediate bounds")
    max_coefficients = int(max_coefficients)
    alpha_steps, alpha_lr = int(alpha_steps), float(alpha_lr)
    if alpha_steps < 0:
        raise BenchError(f"alpha_steps must be >= 0, got {alpha_steps}")
    lower_slope = _parse(LowerSlope, lower_slope, "lower slope")

    def certify(network, params, x, y):
        network = as_network(network)
        check_params(network, params)
        x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)
        per_example = coefficients_per_example(network, params, x, intermediate)
        if per_example > max_coefficients:
            raise BenchError(f"CROWN with {intermediate.value} intermediate bounds needs {per_example:,} float32 "
                             f"coefficients per example ({per_example * 4 / 2**30:.1f} GiB), above max_coefficients="
                             f"{max_coefficients:,}; use intermediate=ibp (certify config crown_ibp) for this network, "
                             "or raise max_coefficients")
        chunk = max(1, int(max_coefficients) // per_example)
        static = dict(norm=norm, intermediate=intermediate, lower_slope=lower_slope, alpha_steps=alpha_steps,
                      alpha_lr=alpha_lr)
        if len(y) <= chunk:
            return crown_margin_lower(network, params, x, y, jnp.float32(eps), **static)
        # Fixed-size chunks (the last one padded) so that memory stays bounded and nothing retraces.
        pad = -len(y) % chunk
        x_pad = jnp.concatenate([x, jnp.repeat(x[:1], pad, axis=0)])
        y_pad = jnp.concatenate([y, jnp.repeat(y[:1], pad, axis=0)])
        out = [crown_margin_lower(network, params, x_pad[i:i + chunk], y_pad[i:i + chunk], jnp.float32(eps), **static)
               for i in range(0, len(y_pad), chunk)]
        return jnp.concatenate(out)[: len(y)]

    return certify


def coefficients_per_example(network: Network, params, x, intermediate: Intermediate) -> int:
    """The largest back-substitution coefficient tensor for one example (entries), which sets CROWN's memory."""
    net_blocks = blocks(network)
    shapes = block_input_shapes(net_blocks, params, x)
    sizes = [int(np.prod(s)) for s in shapes] + [num_logits(network, params, x)]
    largest = max(sizes[-1], 1) * max(sizes)
    if intermediate == Intermediate.CROWN:
        for k in range(1, len(net_blocks) - 1):
            largest = max(largest, 2 * sizes[k + 1] * max(sizes[: k + 2]))
    return largest
