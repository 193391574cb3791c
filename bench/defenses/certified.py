"""Certified training: IBP (Gowal et al. 2018) and CROWN-IBP (Zhang et al. 2020).

Both minimise kappa * CE(z(x), y) + (1 - kappa) * CE(z_worst, y), where
z_worst_j = -margin_lower_j is the worst-case logit vector implied by lower
bounds on the margins logit_y - logit_j over the eps-ball ∩ [0, 1] (0 for the
true class). The training epsilon ramps linearly from 0 to `eps` over
`ramp_steps` after `warmup_steps` steps of clean training, and kappa moves
linearly from `kappa_start` to `kappa_end` over the same ramp (Gowal et al.: 1
to 0.5). CROWN-IBP uses beta * CROWN-IBP bound + (1 - beta) * IBP bound, with
beta from `beta_start` to `beta_end` over the ramp (Zhang et al.: 1 to 0). The
CROWN-IBP pass runs only where its weight (1 - kappa) * beta is not 0: the
objective's `phases` (bench/train.py) train warm-up (kappa 1) and the steps
after the ramp (beta 0) with IBP's bound alone, one compiled step per phase,
since the loss and gradients there do not depend on the CROWN term (a
`lax.cond` inside one step was tried before and made every CROWN step about
11x slower on CPU).

The CROWN-IBP bound is CROWN's backward pass from the num_classes - 1 margin
rows with IBP intermediate bounds (Zhang et al. 2020), so it costs about one
backward pass through the network per margin row; scripts/certified_speed.py
measures standard, IBP and CROWN-IBP steps side by side.

Bounds need the layer structure, so these factories take the Flax model
(`model=`, passed by the entry point) as well as `logits_fn`.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import optax

from bench.threat import check_eps, parse_norm
from bench.certify.crown import Intermediate, LowerSlope, crown_ibp_logit_lower, crown_margin_lower
from bench.certify.domain import input_set
from bench.certify.ibp import fold_last_block, ibp_margin_lower, interval_preactivations
from bench.certify.network import as_network, blocks, margin_spec_others, num_logits
from bench.errors import BenchError


def ramp(step, warmup_steps: int, ramp_steps: int):
    """Fraction of the schedule done at `step`: 0 during warm-up, then linear to 1 over `ramp_steps`."""
    done = (step - warmup_steps) / max(int(ramp_steps), 1)
    return jnp.clip(jnp.asarray(done, jnp.float32), 0.0, 1.0)


def worst_case_logits(margin_lower, y):
    """Logits -margin_lower with 0 at the true class (Gowal et al.'s z_hat)."""
    return jnp.where(jax.nn.one_hot(y, margin_lower.shape[-1], dtype=bool), 0.0, -margin_lower)


def _check(model, eps, norm, warmup_steps, ramp_steps, kappa_start, kappa_end):
    if model is None:
        raise BenchError("certified training needs the model's layer structure: pass model= (the entry point "
                         "passes it when the defense config has a `model` field)")
    norm = parse_norm(norm)
    eps = check_eps(norm, eps)
    if int(warmup_steps) < 0 or int(ramp_steps) < 0:
        raise BenchError(f"warmup_steps and ramp_steps must be >= 0, got {warmup_steps}, {ramp_steps}")
    for k in (kappa_start, kappa_end):
        if not 0.0 <= float(k) <= 1.0:
            raise BenchError(f"kappa must lie in [0, 1], got {k}")
    return as_network(model), norm, eps


def _margin_loss(margin_fn):
    """The robust term from margin lower bounds: CE(worst-case logits) and the fraction certified."""
    def robust(network, params, x, y, eps_now, frac):
        margin_lower, extra = margin_fn(network, params, x, y, eps_now, frac)
        loss = optax.softmax_cross_entropy_with_integer_labels(worst_case_logits(margin_lower, y), y).mean()
        return loss, jnp.mean(jnp.all(margin_lower > 0, -1)), extra
    return robust


def _objective(logits_fn, robust_fn, network, norm, eps, warmup_steps, ramp_steps, kappa_start, kappa_end):
    def objective(params, batch, key, step):
        x, y = batch
        frac = ramp(step, warmup_steps, ramp_steps)
        eps_now = eps * frac
        kappa = kappa_start + (kappa_end - kappa_start) * frac
        logits = logits_fn(params, x)
        robust_loss, verified, extra = robust_fn(network, params, x, y, eps_now, frac)
        clean_loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        loss = kappa * clean_loss + (1.0 - kappa) * robust_loss
        aux = {"accuracy": jnp.mean(jnp.argmax(logits, -1) == y), "verified": verified,
               "robust_loss": robust_loss, "eps": eps_now, "kappa": kappa, **extra}
        return loss, aux

    return objective


def exp_chord(lower, upper):
    """(slope, intercept) of the chord of exp over [lower, upper]: exp(t) <= slope * t + intercept there.

    exp is convex, so the chord lies above it; where the interval is (nearly) a point the slope is
    exp(upper), which still bounds exp from above on it (mean value theorem). Callers keep upper <= 0
    (shifted), so neither exponential overflows however wide the interval.
    """
    width = upper - lower
    wide = width > 1e-6
    safe = jnp.where(wide, width, 1.0)
    slope = jnp.where(wide, (jnp.exp(upper) - jnp.exp(lower)) / safe, jnp.exp(upper))
    return slope, jnp.exp(lower) - slope * lower


def fused_robust_loss(network, params, x, y, eps, *, norm, beta, lower_slope=LowerSlope.ADAPTIVE):
    """Loss fusion (Xu et al. 2020): per-example upper bounds on max over the ball of CE(z, y), and IBP margins.

    CE(z, y) = log S with S = sum_j exp(z_j - z_y), and log is increasing, so log of an upper bound on S
    bounds the worst-case loss. IBP bounds each t_j = z_j - z_y (last block folded in); S's IBP bound is
    sum_j exp(upper t_j), whose log is exactly IBP's CE(worst-case logits). The CROWN-IBP bound replaces
    each exp(t_j) by its chord over t_j's IBP interval and bounds the resulting single linear function of
    the logits with one CROWN backward pass (instead of one per margin row). The bound on S is
    beta * CROWN-IBP + (1 - beta) * IBP; all terms are shifted by c = max(0, max_j upper t_j) so no
    exponent is positive. Returns (loss (n,), IBP margin lower bounds (n, classes - 1)).
    """
    net_blocks = blocks(network)
    domain = input_set(x, eps)
    pre = interval_preactivations(net_blocks, params, domain, norm)
    spec = margin_spec_others(y, num_logits(network, params, x), x.dtype)  # rows e_y - e_j, j != y
    both = fold_last_block(net_blocks, params, jnp.concatenate([spec, -spec], axis=1), domain, norm, pre)
    margin_lower, t_lower = jnp.split(both, 2, axis=1)  # lower bounds of z_y - z_j and of z_j - z_y
    t_upper = -margin_lower
    shift = jax.lax.stop_gradient(jnp.maximum(jnp.max(t_upper, axis=1), 0.0))
    own = jnp.exp(-shift)  # the j = y term, exp(0 - c)
    ibp_sum = own + jnp.sum(jnp.exp(t_upper - shift[:, None]), axis=1)
    slope, intercept = exp_chord(t_lower - shift[:, None], t_upper - shift[:, None])
    # sum_j slope_j (t_j - c) + intercept_j, where sum_j slope_j t_j = -(sum_j slope_j spec_j) . z
    weights = jnp.einsum("nj,njk->nk", slope, spec)[:, None]
    linear_upper = -crown_ibp_logit_lower(network, params, x, weights, eps, norm=norm, lower_slope=lower_slope,
                                          preactivations=pre)[:, 0]
    crown_sum = own + linear_upper + jnp.sum(intercept - slope * shift[:, None], axis=1)
    crown_sum = jnp.maximum(crown_sum, own)  # S >= exp(-c) always: still an upper bound, and log stays finite
    return jnp.log(beta * crown_sum + (1.0 - beta) * ibp_sum) + shift, margin_lower


def ibp_training(logits_fn, *, model=None, eps: float, norm: str = "linf", warmup_steps: int = 0,
                 ramp_steps: int = 10_000, kappa_start: float = 1.0, kappa_end: float = 0.5):
    """IBP training objective `(params, batch, key, step) -> (loss, aux)` (Gowal et al. 2018).

    Args:
      logits_fn: the model's pure logits function (clean term).
      model: the Flax `ConvNet` (or a layer list) whose bounds are trained.
      eps: the training epsilon reached at the end of the ramp.
      warmup_steps, ramp_steps: clean steps, then steps of the linear eps/kappa ramp.
      kappa_start, kappa_end: weight of the clean loss (paper: 1 -> 0.5).
    """
    network, norm, eps = _check(model, eps, norm, warmup_steps, ramp_steps, kappa_start, kappa_end)

    def margin_fn(network, params, x, y, eps_now, frac):
        return ibp_margin_lower(network, params, x, y, eps_now, norm=norm), {}

    return _objective(logits_fn, _margin_loss(margin_fn), network, norm, eps, int(warmup_steps), int(ramp_steps),
                      float(kappa_start), float(kappa_end))


def crown_ibp_training(logits_fn, *, model=None, eps: float, norm: str = "linf", warmup_steps: int = 0,
                       ramp_steps: int = 10_000, kappa_start: float = 1.0, kappa_end: float = 0.0,
                       beta_start: float = 1.0, beta_end: float = 0.0, loss_fusion: bool = False):
    """CROWN-IBP training objective `(params, batch, key, step) -> (loss, aux)` (Zhang et al. 2020).

    The margin bound is beta * CROWN-IBP + (1 - beta) * IBP, beta linear from
    beta_start to beta_end over the eps ramp; other arguments as `ibp_training`.
    With `loss_fusion` the robust term is instead the log of beta * CROWN-IBP + (1 - beta) * IBP upper
    bounds on the sum of exponentials inside the cross-entropy (`fused_robust_loss`, Xu et al. 2020):
    one CROWN backward pass per example instead of one per margin row, a different (not looser by
    construction) bound, identical to IBP's loss where beta is 0. Its `verified` is IBP's.
    """
    network, norm, eps = _check(model, eps, norm, warmup_steps, ramp_steps, kappa_start, kappa_end)
    beta_start, beta_end = float(beta_start), float(beta_end)
    for b in (beta_start, beta_end):
        if not 0.0 <= b <= 1.0:
            raise BenchError(f"beta must lie in [0, 1], got {b}")

    def margin_fn(network, params, x, y, eps_now, frac, with_crown=True):
        beta = beta_start + (beta_end - beta_start) * frac
        ibp_bound = ibp_margin_lower(network, params, x, y, eps_now, norm=norm)
        finite = jnp.where(jnp.isinf(ibp_bound), 0.0, ibp_bound)
        if with_crown:
            crown_bound = crown_margin_lower(network, params, x, y, eps_now, norm=norm,
                                             intermediate=Intermediate.IBP, lower_slope=LowerSlope.ADAPTIVE)
            crown_bound = jnp.where(jnp.isinf(crown_bound), 0.0, crown_bound)
            margin = beta * crown_bound + (1.0 - beta) * finite
        else:  # IBP's bound: the same margin where beta is 0, and the exact margin at eps 0 (warm-up)
            margin = finite
        margin = jnp.where(jax.nn.one_hot(y, margin.shape[-1], dtype=bool), jnp.inf, margin)
        return margin, {"beta": beta}

    def fused_fn(network, params, x, y, eps_now, frac):
        beta = beta_start + (beta_end - beta_start) * frac
        loss, margin_lower = fused_robust_loss(network, params, x, y, eps_now, norm=norm, beta=beta)
        return loss.mean(), jnp.mean(jnp.all(margin_lower > 0, -1)), {"beta": beta}

    args = (network, norm, eps, int(warmup_steps), int(ramp_steps), float(kappa_start), float(kappa_end))
    objective = _objective(logits_fn, fused_fn if loss_fusion else _margin_loss(margin_fn), *args)
    # The CROWN pass only matters where its weight (1 - kappa) * beta is not 0: not in warm-up when kappa starts
    # at 1 (the robust term has weight 0), and not after the ramp when beta ends at 0 (the bound is IBP's).
    # There the same loss and gradients come without it (tests/test_certify.py), one compiled step per phase.
    ibp_only = _objective(logits_fn, _margin_loss(partial(margin_fn, with_crown=False)), *args)
    start = int(warmup_steps) + 1 if float(kappa_start) == 1.0 else 0
    end = int(warmup_steps) + int(ramp_steps) if beta_end == 0.0 else None
    phases = ([(0, ibp_only)] if start > 0 else []) + [(start, objective)]
    if end is not None and end > start:
        phases.append((end, ibp_only))
    objective.phases = tuple(phases)
    return objective
