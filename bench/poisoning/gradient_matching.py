"""Clean-label targeted poisoning by gradient matching (Geiping, Fowl, Huang, Czaja, Taylor, Moeller & Goldstein
2021, "Witches' Brew: Industrial Scale Data Poisoning via Gradient Matching", ICLR), within an L-inf budget.

The attacker wants one target test image x_t (true class c) classified as the adversarial label `adv` != c by a
victim trained FROM SCRATCH on the poisoned training set. It holds a surrogate model theta (trained on the clean
set; the victim's initialisation and data order are unknown to it) and may perturb P = round(ratio * n) training
images of class `adv` by at most eps in L-inf, keeping their labels. The poisons are chosen so that the training
gradient on them points where the adversarial gradient points:

    g_adv   = grad_theta CE(f(x_t; theta), adv)
    g_p(D)  = grad_theta (1/P) sum_i CE(f(x_i + D_i; theta), y_i)
    loss(D) = 1 - <g_p, g_adv> / (|g_p| |g_adv|)

(the cosine of the whole parameter gradient: dot products and squared norms summed over the layers, the paper's
eq. 3), minimised over D with signed Adam (Adam on sign(grad_D loss); the paper's optimiser), step size
`step_size * eps` decayed x0.1 at 3/8, 5/8 and 5/6 of the `steps`, each step projected onto |D| <= eps and
x + D in [0, 1]. With `restarts` > 1, each restart starts from its own uniform draw in the eps-ball and the one
with the lowest final loss is kept (the paper: 8 restarts). Not done here: the paper's differentiable data
augmentation and its poison selection by gradient norm (the poisons here are drawn at random from class `adv`).

Returns a PoisonedSet with the poisons' indices (those whose image changed), info: eps, the bases drawn, the
alignment (cosine) before and after, and the trace of the kept restart's alignment per step.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bench.errors import BenchError
from bench.poisoning.base import PoisonedSet, n_poisons as count_poisons


def _ce(logits_fn, params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits_fn(params, x), y).mean()


def _dot(a, b):
    return sum(jnp.vdot(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@partial(jax.jit, static_argnames=("logits_fn", "adv"))
def adversarial_gradient(logits_fn, params, x_target, adv: int):
    """g_adv: the parameter gradient of the cross-entropy of the target image(s) towards the label `adv`."""
    x_target = x_target[None] if x_target.ndim == 3 else x_target
    y = jnp.full((x_target.shape[0],), adv, jnp.int32)
    return jax.grad(lambda p: _ce(logits_fn, p, x_target, y))(params)


@partial(jax.jit, static_argnames=("logits_fn",))
def alignment(logits_fn, params, x, y, target_grad):
    """cos(g_p, g_adv): the cosine between the poisons' mean training gradient and the adversarial gradient."""
    g = jax.grad(lambda p: _ce(logits_fn, p, x, y))(params)
    return _dot(g, target_grad) / (jnp.sqrt(_dot(g, g)) * jnp.sqrt(_dot(target_grad, target_grad)) + 1e-12)


@partial(jax.jit, static_argnames=("logits_fn", "steps"))
def craft(logits_fn, params, x_base, y_base, target_grad, delta0, eps, step_size, steps: int):
    """Signed-Adam minimisation of 1 - alignment over the perturbation D (L-inf <= eps, x + D in [0, 1]).
    Returns (D, alignment per step, before the step)."""
    lr = optax.piecewise_constant_schedule(step_size * eps, {int(3 * steps / 8): 0.1, int(5 * steps / 8): 0.1,
                                                             int(5 * steps / 6): 0.1})
    optimizer = optax.adam(lr)

    def project(d):
        d = jnp.clip(d, -eps, eps)
        return jnp.clip(x_base + d, 0.0, 1.0) - x_base

    def loss(d):
        return 1.0 - alignment(logits_fn, params, x_base + d, y_base, target_grad)

    def step(carry, _):
        d, state = carry
        value, g = jax.value_and_grad(loss)(d)
        updates, state = optimizer.update(jnp.sign(g), state, d)
        return (project(optax.apply_updates(d, updates)), state), 1.0 - value

    delta0 = project(delta0)
    (delta, _), trace = jax.lax.scan(step, (delta0, optimizer.init(delta0)), None, length=steps)
    return delta, trace


def gradient_matching(ratio: float = 0.01, eps: float = 16 / 255, steps: int = 250, step_size: float = 0.1,
                      restarts: int = 1, n_poisons: int | None = None):
    """The attack: `(logits_fn, params, x_train, y_train, x_target, adv, rng) -> PoisonedSet`.

    `params` are the surrogate's; P = `n_poisons` if given, else round(ratio * n) training images of class `adv`
    (drawn with `rng`) are perturbed within `eps` (L-inf, pixels in [0, 1]); `step_size` is in units of eps.
    """
    if not 0.0 < float(eps) <= 1.0:
        raise BenchError(f"gradient_matching: eps (the L-inf budget in pixels of [0, 1]) must be in (0, 1], got {eps}; "
                         "e.g. scenario.args.eps=0.0627 (16/255)")
    if int(steps) < 1:
        raise BenchError(f"gradient_matching: steps must be >= 1, got {steps}")
    if int(restarts) < 1:
        raise BenchError(f"gradient_matching: restarts must be >= 1, got {restarts}")
    if not float(step_size) > 0:
        raise BenchError(f"gradient_matching: step_size (in units of eps) must be > 0, got {step_size}")
    if n_poisons is None and not 0.0 < float(ratio) < 1.0:
        raise BenchError(f"gradient_matching: scenario.ratio (the share of the training set poisoned) must be in "
                         f"(0, 1), got {ratio}")
    eps, step_size = float(eps), float(step_size)

    def attack(logits_fn, params, x_train, y_train, x_target, adv, rng):
        count = int(n_poisons) if n_poisons is not None else count_poisons(ratio, len(y_train))
        candidates = np.flatnonzero(y_train == int(adv))
        if not 1 <= count <= len(candidates):
            raise BenchError(f"gradient_matching: {count} poisons wanted but class {adv} has {len(candidates)} "
                             "training images (and at least one is needed); change scenario.ratio")
        idx = np.sort(rng.choice(candidates, size=count, replace=False)).astype(np.int64)
        x_base, y_base = jnp.asarray(x_train[idx]), jnp.asarray(y_train[idx], jnp.int32)
        target_grad = adversarial_gradient(logits_fn, params, jnp.asarray(x_target), int(adv))
        best = None
        for _ in range(int(restarts)):
            delta0 = jnp.asarray(rng.uniform(-eps, eps, size=x_base.shape).astype(np.float32))
            delta, trace = craft(logits_fn, params, x_base, y_base, target_grad, delta0, eps, step_size, int(steps))
            final = float(alignment(logits_fn, params, x_base + delta, y_base, target_grad))
            if best is None or final > best[0]:
                best = (final, delta, np.asarray(trace))
        final, delta, trace = best
        poisons = np.clip(np.asarray(x_base + delta, np.float32), 0.0, 1.0)
        # the budget, exactly: clip in float32 around the clean image once more (rounding of x + D - x)
        poisons = np.clip(poisons, x_train[idx] - np.float32(eps), x_train[idx] + np.float32(eps))
        x = np.array(x_train, copy=True)
        x[idx] = poisons
        changed = idx[(x[idx] != x_train[idx]).reshape(len(idx), -1).any(axis=1)]
        before = float(alignment(logits_fn, params, x_base, y_base, target_grad))
        return PoisonedSet(x, np.array(y_train, copy=True), changed, f"gradient_matching({count})", target=int(adv),
                           info={"eps": eps, "bases": idx, "alignment_before": before, "alignment": final,
                                 "trace": trace})

    return attack
