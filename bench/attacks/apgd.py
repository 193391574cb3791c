"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML; Algorithm 1).

PGD with momentum 0.75 and a step size that needs no tuning: it starts at 2*eps
and is halved at checkpoints w_j = ceil(p_j * N) (p_0 = 0, p_1 = 0.22,
p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)) whenever, since the previous
checkpoint, fewer than rho = 0.75 of the steps increased the loss, or the step
size was not reduced at the previous checkpoint and the best loss has not
improved since. On a halving the iterate restarts from the best point found.

`apgd_core` is the jitted loop shared by APGD-CE, APGD-DLR (this file) and
APGD-T (`apgd_t.py`). eps is traced, so one compilation serves every epsilon.
The loop stops early once every example of the batch is misclassified.
With `eot_samples > 1` every gradient and loss is the mean over that many draws
of a stochastic model (expectation over transformation, Athalye et al. 2018).
"""

from __future__ import annotations

import math
import warnings
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from bench.threat import (broadcast_rows, Norm, apply_logits, ascent_direction, check_eps, cross_entropy, dlr, dlr_targeted,
                                  parse_norm, project, random_in_ball)
from bench.contracts import Attack, Capabilities
from bench.errors import BenchError

APGD_LOSSES = ("ce", "dlr", "dlr_targeted")
# DLR divides by z_pi1 - z_pi3 (untargeted) or uses z_pi4 (targeted): fewer classes than this fall back to CE.
MIN_CLASSES = {"ce": 2, "dlr": 3, "dlr_targeted": 4}


def checkpoints(steps: int) -> np.ndarray:
    """The iterations (1-based counts of steps done) at which APGD may halve its step size."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    w = sorted({math.ceil(round(q * steps, 6)) for q in p[1:] if q <= 1})  # round: 0.57 * 100 is 57.000001
    return np.asarray([v for v in w if 0 < v <= steps], np.int32)


def _schedule(steps: int):
    """Per iteration i (0-based): whether a checkpoint falls after it, and the length of the interval it closes."""
    at = np.zeros(steps, bool)
    length = np.ones(steps, np.float32)
    previous = 0
    for w in checkpoints(steps):
        at[w - 1] = True
        length[w - 1] = w - previous
        previous = w
    return jnp.asarray(at), jnp.asarray(length)


def effective_loss(loss: str, num_classes: int) -> str:
    """The loss APGD actually uses for `num_classes` classes: DLR variants fall back to CE below MIN_CLASSES."""
    return loss if num_classes >= MIN_CLASSES[loss] else "ce"



@partial(jax.jit, static_argnames=("logits_fn", "norm", "steps", "restarts", "loss", "n_targets", "eot_samples"))
def apgd_core(logits_fn, params, x, y, key, eps, *, norm: Norm, steps: int, restarts: int = 1, loss: str = "ce",
              n_targets: int = 0, eot_samples: int = 1, rho: float = 0.75, momentum: float = 0.75):
    """The jitted APGD loop: `restarts` runs (times `n_targets` target classes for the targeted loss).

    Returns x_adv: per example, a misclassified point if any run found one, else the point of highest loss.
    """
    num_classes = jax.eval_shape(lambda p, v: apply_logits(logits_fn, p, v, key), params, x[:1]).shape[-1]
    used = effective_loss(loss, num_classes)
    if used != loss:
        warnings.warn(f"APGD: loss '{loss}' needs at least {MIN_CLASSES[loss]} classes, the model has {num_classes}; "
                      "using cross-entropy instead", stacklevel=2)
    targeted = used == "dlr_targeted"
    runs_per_restart = max(min(n_targets, num_classes - 1), 1) if targeted else 1
    check_at, check_len = _schedule(steps)
    n = x.shape[0]

    key_clean, key = jax.random.split(key)
    clean_order = jnp.argsort(apply_logits(logits_fn, params, x, key_clean), axis=-1)

    def per_example_loss(logits, target):
        if used == "ce":
            return cross_entropy(logits, y)
        if used == "dlr":
            return dlr(logits, y)
        return dlr_targeted(logits, y, target)

    def total_loss(x_adv, k, target):
        logits = apply_logits(logits_fn, params, x_adv, k)
        values = per_example_loss(logits, target)
        return values.sum(), (values, logits)

    grad_fn = jax.grad(total_loss, has_aux=True)

    def loss_and_grad(x_adv, k, target):
        if eot_samples == 1:
            grad, (values, logits) = grad_fn(x_adv, k, target)
            return values, grad, logits

        def sample(s, acc):
            grad, (values, logits) = grad_fn(x_adv, jax.random.fold_in(k, s), target)
            return acc[0] + values, acc[1] + grad, logits

        zero = (jnp.zeros((n,), x.dtype), jnp.zeros_like(x_adv), jnp.zeros((n, num_classes), x.dtype))
        values, grad, logits = jax.lax.fori_loop(0, eot_samples, sample, zero)
        return values / eot_samples, grad / eot_samples, logits

    def one_run(run, out):
        out_x, out_loss, out_found = out
        k_start, k_loop = jax.random.split(jax.random.fold_in(key, run))
        target = clean_order[:, -(run % runs_per_restart) - 2]  # the 2nd, 3rd, ... most likely class
        x0 = project(x, x + random_in_ball(k_start, x.shape, norm, eps), norm, eps)
        loss0, grad0, logits0 = loss_and_grad(x0, jax.random.fold_in(k_loop, 0), target)
        adv0 = jnp.argmax(logits0, -1) != y
        eta0 = jnp.full((n,), 2.0, x.dtype) * eps
        state = dict(i=0, x_cur=x0, x_prev=x0, grad=grad0, loss_cur=loss0, x_best=x0, loss_best=loss0, grad_best=grad0,
                     x_adv=jnp.where(broadcast_rows(adv0, x), x0, out_x), found=out_found | adv0, eta=eta0,
                     n_incr=jnp.zeros((n,), x.dtype), loss_last_check=loss0, reduced_last=jnp.zeros((n,), bool))

        def cond(s):
            return (s["i"] < steps) & ~jnp.all(s["found"])

        def body(s):
            i = s["i"]
            a = jnp.where(i == 0, 1.0, momentum).astype(x.dtype)
            x_cur = s["x_cur"]
            z = project(x, x_cur + broadcast_rows(s["eta"], x) * ascent_direction(s["grad"], norm), norm, eps)
            x_new = project(x, x_cur + a * (z - x_cur) + (1 - a) * (x_cur - s["x_prev"]), norm, eps)
            values, grad, logits = loss_and_grad(x_new, jax.random.fold_in(k_loop, i + 1), target)
            is_adv = jnp.argmax(logits, -1) != y
            x_adv = jnp.where(broadcast_rows(is_adv & ~s["found"], x), x_new, s["x_adv"])
            improved = values > s["loss_best"]
            col = broadcast_rows(improved, x)
            x_best = jnp.where(col, x_new, s["x_best"])
            grad_best = jnp.where(col, grad, s["grad_best"])
            loss_best = jnp.where(improved, values, s["loss_best"])
            n_incr = s["n_incr"] + (values > s["loss_cur"])

            # At a checkpoint: halve eta and restart from the best point where progress stalled.
            at = check_at[i]
            few_increases = n_incr < rho * check_len[i]
            no_gain = ~s["reduced_last"] & (s["loss_last_check"] >= loss_best)
            reduce = at & (few_increases | no_gain)
            rcol = broadcast_rows(reduce, x)
            return dict(
                i=i + 1,
                x_cur=jnp.where(rcol, x_best, x_new),
                x_prev=x_cur,
                grad=jnp.where(rcol, grad_best, grad),
                loss_cur=jnp.where(reduce, loss_best, values),
                x_best=x_best, loss_best=loss_best, grad_best=grad_best,
                x_adv=x_adv, found=s["found"] | is_adv,
                eta=jnp.where(reduce, s["eta"] / 2, s["eta"]),
                n_incr=jnp.where(at, 0.0, n_incr),
                loss_last_check=jnp.where(at, loss_best, s["loss_last_check"]),
                reduced_last=jnp.where(at, reduce, s["reduced_last"]),
            )

        s = jax.lax.while_loop(cond, body, state)
        # Not yet fooled anywhere: keep the highest-loss point over runs (losses of one kind compare).
        better = ~s["found"] & (s["loss_best"] > out_loss)
        x_out = jnp.where(broadcast_rows(s["found"], x), s["x_adv"], jnp.where(broadcast_rows(better, x), s["x_best"], out_x))
        return x_out, jnp.where(better, s["loss_best"], out_loss), s["found"]

    start = (x, jnp.full((n,), -jnp.inf, x.dtype), jnp.zeros((n,), bool))
    x_out, _, _ = jax.lax.fori_loop(0, restarts * runs_per_restart, one_run, start)
    return x_out


def _validate(norm, eps, steps, restarts, eot_samples):
    norm = parse_norm(norm)
    eps = check_eps(norm, eps)
    for name, value in (("steps", steps), ("restarts", restarts), ("eot_samples", eot_samples)):
        if int(value) < 1:
            raise BenchError(f"APGD needs {name} >= 1, got {value}")
    return norm, eps


def apgd(*, norm: str = "linf", eps: float, steps: int = 100, restarts: int = 1, loss: str = "ce",
         eot_samples: int = 1):
    """APGD attack `(logits_fn, params, x, y, key) -> x_adv` (Croce & Hein 2020).

    Args:
      norm: "linf" or "l2".
      eps: radius of the threat model in [0, 1] pixel units.
      steps: iterations per restart (100 in AutoAttack).
      restarts: random restarts; the per-example best is kept.
      loss: "ce" (APGD-CE) or "dlr" (APGD-DLR; cross-entropy below 3 classes, with a warning).
      eot_samples: gradient averaged over this many draws of a stochastic model (20 in AutoAttack's rand version).
    """
    norm, eps = _validate(norm, eps, steps, restarts, eot_samples)
    if loss not in ("ce", "dlr"):
        raise BenchError(f"unknown APGD loss '{loss}'; use 'ce' or 'dlr' (targeted DLR is apgd_t)")
    static = dict(norm=norm, steps=int(steps), restarts=int(restarts), loss=loss, eot_samples=int(eot_samples))

    def attack(logits_fn, params, x, y, key):
        return apgd_core(logits_fn, params, x, y, key, jnp.float32(eps), **static)

    stronger = lambda: apgd(norm=norm.value, eps=eps, steps=2 * int(steps), restarts=restarts, loss=loss,
                            eot_samples=eot_samples)
    return Attack(attack, Capabilities(min_classes=MIN_CLASSES[loss], eot_samples=int(eot_samples),
                                       stronger=stronger, stronger_label=f"{2 * int(steps)} steps"))


def apgd_ce(*, norm: str = "linf", eps: float, steps: int = 100, restarts: int = 1, eot_samples: int = 1):
    """APGD on the cross-entropy loss (AutoAttack's first attack)."""
    return apgd(norm=norm, eps=eps, steps=steps, restarts=restarts, loss="ce", eot_samples=eot_samples)


def apgd_dlr(*, norm: str = "linf", eps: float, steps: int = 100, restarts: int = 1, eot_samples: int = 1):
    """APGD on the DLR loss, which is invariant to logit scaling (falls back to CE below 3 classes)."""
    return apgd(norm=norm, eps=eps, steps=steps, restarts=restarts, loss="dlr", eot_samples=eot_samples)
