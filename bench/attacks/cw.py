"""Carlini & Wagner L2 (2017, "Towards Evaluating the Robustness of Neural Networks", IEEE S&P).

Minimises ||x' - x||_2^2 + c * max(z_y - max_{j!=y} z_j, -kappa) over
x' = (tanh(w) + 1) / 2 (so x' stays in [0, 1]) with Adam, for each constant c
of a per-example binary search: c is lowered when the inner run found an
adversarial example, raised tenfold (or bisected once an upper bound is known)
when it did not. Everything is one jitted loop: binary steps outside, Adam
steps inside.

C&W is a minimum-norm attack; in this benchmark's eps-bounded contract the
smallest adversarial example found is returned if its L2 norm is <= eps, else
the projection of the best point onto the eps-ball (which then may or may not
be adversarial). `cw_core` gives the unbounded result and its distances.
L2 only: other norms are a BenchError.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import optax

from bench.threat import broadcast_rows, Norm, apply_logits, check_eps, margin, parse_norm, project
from bench.contracts import Attack, Capabilities
from bench.errors import BenchError
from bench.threat import UnsupportedNorm

NORMS = ("l2",)



@partial(jax.jit, static_argnames=("logits_fn", "steps", "binary_steps"))
def cw_core(logits_fn, params, x, y, key, c_init, learning_rate, kappa, *, steps: int, binary_steps: int):
    """Unbounded C&W L2: (x_best, dist) with dist = inf where no adversarial example was found."""
    n = x.shape[0]
    w0 = jnp.arctanh(jnp.clip(2.0 * x - 1.0, -1 + 1e-6, 1 - 1e-6))
    optimizer = optax.adam(learning_rate)

    def objective(w, c, k):
        x_adv = (jnp.tanh(w) + 1.0) / 2.0
        logits = apply_logits(logits_fn, params, x_adv, k)
        dist2 = jnp.sum((x_adv - x).reshape(n, -1) ** 2, axis=1)
        hinge = jnp.maximum(-margin(logits, y), -kappa)  # z_y - max_{j!=y} z_j, floored at -kappa
        return jnp.sum(dist2 + c * hinge), (x_adv, dist2, jnp.argmax(logits, -1) != y)

    grad_fn = jax.grad(objective, has_aux=True)

    def binary_step(b, carry):
        c, lower, upper, best_x, best_d = carry

        def adam_step(t, inner):
            w, opt_state, best_x, best_d, success = inner
            grad, (x_adv, dist2, is_adv) = grad_fn(w, c, jax.random.fold_in(key, b * steps + t))
            better = is_adv & (dist2 < best_d)
            best_x = jnp.where(broadcast_rows(better, x), x_adv, best_x)
            updates, opt_state = optimizer.update(grad, opt_state, w)
            return optax.apply_updates(w, updates), opt_state, best_x, jnp.where(better, dist2, best_d), success | is_adv

        inner = (w0, optimizer.init(w0), best_x, best_d, jnp.zeros((n,), bool))
        _, _, best_x, best_d, success = jax.lax.fori_loop(0, steps, adam_step, inner)
        upper = jnp.where(success, jnp.minimum(upper, c), upper)
        lower = jnp.where(success, lower, jnp.maximum(lower, c))
        c = jnp.where(upper < 1e9, (lower + upper) / 2.0, c * 10.0)
        return c, lower, upper, best_x, best_d

    start = (jnp.full((n,), c_init, x.dtype), jnp.zeros((n,), x.dtype), jnp.full((n,), 1e10, x.dtype), x,
             jnp.full((n,), jnp.inf, x.dtype))
    _, _, _, best_x, best_d = jax.lax.fori_loop(0, binary_steps, binary_step, start)
    return best_x, jnp.sqrt(best_d)


@partial(jax.jit, static_argnames=("logits_fn", "steps", "binary_steps"))
def _cw_bounded(logits_fn, params, x, y, key, eps, c_init, learning_rate, kappa, *, steps, binary_steps):
    best_x, _ = cw_core(logits_fn, params, x, y, key, c_init, learning_rate, kappa, steps=steps,
                        binary_steps=binary_steps)
    return project(x, best_x, Norm.L2, eps)


def cw(*, norm: str = "l2", eps: float, steps: int = 100, binary_steps: int = 6, c_init: float = 0.1,
       learning_rate: float = 0.01, kappa: float = 0.0):
    """C&W L2 attack `(logits_fn, params, x, y, key) -> x_adv`, projected onto the L2 eps-ball.

    Args:
      norm: must be "l2" (C&W L2 is defined for that norm only).
      eps: L2 radius of the threat model.
      steps: Adam steps per binary-search step (the paper uses up to 10,000).
      binary_steps: binary-search steps over the constant c (the paper uses 9).
      c_init: the first constant c.
      learning_rate: Adam's learning rate (0.01 in the paper).
      kappa: confidence margin: the attack wants z_y - max_{j!=y} z_j <= -kappa.
    """
    norm = parse_norm(norm)
    if norm.value not in NORMS:
        raise UnsupportedNorm(f"C&W is an L2 attack; norm '{norm.value}' is not supported (use norm=l2, or APGD for linf)")
    eps = check_eps(norm, eps)
    if int(steps) < 1 or int(binary_steps) < 1:
        raise BenchError(f"C&W needs steps >= 1 and binary_steps >= 1, got {steps} and {binary_steps}")
    if float(c_init) <= 0 or float(learning_rate) <= 0 or float(kappa) < 0:
        raise BenchError("C&W needs c_init > 0, learning_rate > 0 and kappa >= 0")
    static = dict(steps=int(steps), binary_steps=int(binary_steps))
    numbers = tuple(jnp.float32(v) for v in (eps, c_init, learning_rate, kappa))

    def attack(logits_fn, params, x, y, key):
        return _cw_bounded(logits_fn, params, x, y, key, *numbers, **static)

    stronger = lambda: cw(norm=norm.value, eps=eps, steps=2 * int(steps), binary_steps=binary_steps, c_init=c_init,
                          learning_rate=learning_rate, kappa=kappa)
    return Attack(attack, Capabilities(stronger=stronger, stronger_label=f"{2 * int(steps)} steps"))
