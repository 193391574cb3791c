"""Shared pieces of the adversarial-training objectives: the epsilon warm-up and the inner attack.

Every adversarial defense finds its training points with `bench.attacks.pgd.pgd_core`
(the one PGD loop of the suite) through `adversarial_examples`, so FGSM-AT,
FGSM-RS, PGD-AT and TRADES differ only in steps, step size, random start and loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from bench.attacks.pgd import pgd_core
from bench.threat import Norm, check_eps, parse_loss, parse_norm
from bench.errors import BenchError


def warmup_scale(step, warmup_steps: int) -> jax.Array:
    """Linear epsilon warm-up: step / warmup_steps, capped at 1 (1 throughout when warmup_steps is 0).

    `step` is the traced optimizer step, so the scale is traced too and a changing
    epsilon never recompiles the training step.
    """
    if warmup_steps <= 0:
        return jnp.float32(1.0)
    return jnp.minimum(jnp.asarray(step, jnp.float32) / jnp.float32(warmup_steps), 1.0)


def check_warmup(warmup_steps: int) -> int:
    """Validate a warm-up length in optimizer steps."""
    warmup_steps = int(warmup_steps)
    if warmup_steps < 0:
        raise BenchError(f"warmup_steps must be >= 0, got {warmup_steps}")
    return warmup_steps


def inner_attack(logits_fn, *, norm: str, eps: float, steps: int, step_size: float, random_start: bool,
                 loss: str = "ce", restarts: int = 1, warmup_steps: int = 0):
    """The inner maximisation `(params, x, target, key, step) -> x_adv`, gradient-free for the outer loss.

    Runs `pgd_core` at the warmed-up epsilon eps * warmup_scale(step) (step size
    scaled alike), on stopped-gradient inputs, and stops the gradient of x_adv:
    the outer gradient is taken at the adversarial point, as in Madry et al.
    """
    norm: Norm = parse_norm(norm)
    eps = check_eps(norm, eps)
    loss = parse_loss(loss)
    if int(steps) < 1:
        raise BenchError(f"inner attack needs steps >= 1, got {steps}")
    if int(restarts) < 1:
        raise BenchError(f"inner attack needs restarts >= 1, got {restarts}")
    step_size = float(step_size)
    if step_size < 0:
        raise BenchError(f"step_size must be >= 0, got {step_size}")
    warmup_steps = check_warmup(warmup_steps)
    static = dict(norm=norm, steps=int(steps), restarts=int(restarts), random_start=bool(random_start), loss=loss)

    def attack(params, x, target, key, step):
        scale = warmup_scale(step, warmup_steps)
        params, x, target = jax.lax.stop_gradient((params, x, target))
        x_adv = pgd_core(logits_fn, params, x, target, key, jnp.float32(eps) * scale,
                         jnp.float32(step_size) * scale, **static)
        return jax.lax.stop_gradient(x_adv), jnp.float32(eps) * scale

    return attack


def adversarial_ce(logits_fn, attack):
    """Objective `(params, batch, key, step) -> (loss, aux)`: cross-entropy on `attack`'s x_adv only (FGSM-RS, PGD-AT)."""

    def objective(params, batch, key, step):
        x, y = batch
        x_adv, eps_now = attack(params, x, y, key, step)
        logits_adv = logits_fn(params, x_adv)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits_adv, y).mean()
        return loss, {"adv_accuracy": jnp.mean(jnp.argmax(logits_adv, -1) == y), "eps": eps_now}

    return objective
