"""Threat models: norms, projections onto the epsilon ball, the invariant check, and attack losses.

Every attack in this package projects with `project` and is checked with
`check_threat_model`, so "the adversarial example lies in its threat model"
means one thing everywhere.
"""

from __future__ import annotations

import enum

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bench.errors import BenchError


class Norm(str, enum.Enum):
    LINF = "linf"
    L2 = "l2"


class UnsupportedNorm(BenchError):
    """An attack or certifier asked for a norm it is not defined for; the message names the norm."""


def parse_norm(norm: str | Norm) -> Norm:
    """The Norm for a config string, or a clear error."""
    try:
        return Norm(str(getattr(norm, "value", norm)).lower())
    except ValueError:
        raise BenchError(f"unknown norm '{norm}'; use one of {[n.value for n in Norm]}") from None


def check_eps(norm: Norm, eps: float) -> float:
    """Validate an epsilon for a norm on [0, 1] images."""
    eps = float(eps)
    if not np.isfinite(eps) or eps < 0:
        raise BenchError(f"epsilon must be a finite number >= 0, got {eps}")
    if norm == Norm.LINF and eps > 1:
        raise BenchError(f"L-inf epsilon {eps} exceeds 1, the whole pixel range; epsilons are in [0, 1] pixel units")
    return eps


def _flat_norm(v: jax.Array, norm: Norm) -> jax.Array:
    v = v.reshape(v.shape[0], -1)
    if norm == Norm.LINF:
        return jnp.max(jnp.abs(v), axis=1)
    return jnp.sqrt(jnp.sum(v * v, axis=1))


def broadcast_rows(scale: jax.Array, like: jax.Array) -> jax.Array:
    """One value per example, shaped to broadcast against `like` (batch first): (n,) -> (n, 1, 1, ...)."""
    return scale.reshape((-1,) + (1,) * (like.ndim - 1))


def project(x: jax.Array, x_adv: jax.Array, norm: Norm, eps) -> jax.Array:
    """Project x_adv onto the eps-ball around x, then onto [0, 1].

    Clipping to [0, 1] after the ball projection never leaves the ball, since
    x itself lies in [0, 1] and clipping moves each pixel towards it.
    """
    delta = x_adv - x
    if norm == Norm.LINF:
        delta = jnp.clip(delta, -eps, eps)
    else:
        length = _flat_norm(delta, norm)
        factor = jnp.minimum(1.0, eps / jnp.maximum(length, 1e-12))
        delta = delta * broadcast_rows(factor, delta)
    return jnp.clip(x + delta, 0.0, 1.0)


def ascent_direction(grad: jax.Array, norm: Norm) -> jax.Array:
    """The steepest-ascent direction of unit norm: sign for L-inf, normalised gradient for L2."""
    if norm == Norm.LINF:
        return jnp.sign(grad)
    length = _flat_norm(grad, norm)
    return grad / broadcast_rows(jnp.maximum(length, 1e-12), grad)


def random_in_ball(key: jax.Array, shape, norm: Norm, eps) -> jax.Array:
    """A random perturbation inside the eps-ball (uniform per pixel for L-inf; random direction and radius for L2)."""
    if norm == Norm.LINF:
        return jax.random.uniform(key, shape, minval=-1.0, maxval=1.0) * eps
    k_dir, k_rad = jax.random.split(key)
    direction = jax.random.normal(k_dir, shape)
    direction = direction / broadcast_rows(jnp.maximum(_flat_norm(direction, norm), 1e-12), direction)
    radius = jax.random.uniform(k_rad, (shape[0],)) * eps
    return direction * broadcast_rows(radius, direction)


def is_stochastic(logits_fn) -> bool:
    """A randomised model declares itself with `logits_fn.stochastic = True` and takes a key: (params, x, key)."""
    return bool(getattr(logits_fn, "stochastic", False))


def apply_logits(logits_fn, params, x, key):
    """logits_fn(params, x), passing `key` only to a stochastic model (see `is_stochastic`)."""
    if is_stochastic(logits_fn):
        return logits_fn(params, x, key)
    return logits_fn(params, x)


def flat_norm(v: jax.Array, norm: Norm) -> jax.Array:
    """Per-example norm of v, over all but the leading axis."""
    return _flat_norm(v, norm)


class ThreatModelViolation(BenchError):
    """An adversarial example outside its threat model: an error, never a number."""


def check_threat_model(x, x_adv, norm: str | Norm, eps: float, atol: float = 1e-5) -> None:
    """Raise ThreatModelViolation unless every x_adv is within eps of x (in `norm`) and in [0, 1]."""
    norm = parse_norm(norm)
    x, x_adv = np.asarray(x, np.float64), np.asarray(x_adv, np.float64)
    if x.shape != x_adv.shape:
        raise ThreatModelViolation(f"x_adv has shape {x_adv.shape}, x has {x.shape}")
    if not np.all(np.isfinite(x_adv)):
        raise ThreatModelViolation("x_adv contains NaN or inf")
    if x_adv.min() < -atol or x_adv.max() > 1 + atol:
        raise ThreatModelViolation(f"x_adv leaves [0, 1]: range [{x_adv.min():g}, {x_adv.max():g}]")
    dist = np.asarray(_flat_norm(jnp.asarray(x_adv - x), norm))
    worst = float(dist.max()) if dist.size else 0.0
    if worst > eps * (1 + atol) + atol:
        raise ThreatModelViolation(f"x_adv is {worst:.6g} from x in {norm.value}, beyond eps={eps:g}")


# Losses an attack maximises: (logits, target) -> per-example loss.
def cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def margin(logits, labels):
    """Carlini-Wagner margin: max_{j != y} z_j - z_y (positive once misclassified)."""
    num_classes = logits.shape[-1]
    onehot = jax.nn.one_hot(labels, num_classes, dtype=logits.dtype)
    correct = jnp.sum(logits * onehot, axis=-1)
    other = jnp.max(logits - 1e9 * onehot, axis=-1)
    return other - correct


def kl_to_target(logits, target_probs):
    """KL(target || softmax(logits)), the TRADES inner objective; target is a probability row."""
    log_p = jax.nn.log_softmax(logits)
    return jnp.sum(target_probs * (jnp.log(jnp.clip(target_probs, 1e-12)) - log_p), axis=-1)


def _true_logit(logits, labels):
    return jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]


def dlr(logits, labels):
    """Difference of logits ratio (Croce & Hein 2020): -(z_y - max_{j!=y} z_j) / (z_pi1 - z_pi3).

    Invariant to shifting and rescaling the logits; needs at least 3 classes.
    """
    ranked = jax.lax.top_k(logits, 3)[0]  # descending; on the CPU a full sort was about 5x slower in a loop
    return margin(logits, labels) / (ranked[:, 0] - ranked[:, 2] + 1e-12)


def dlr_targeted(logits, labels, targets):
    """Targeted DLR (Croce & Hein 2020): -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2); needs at least 4 classes."""
    ranked = jax.lax.top_k(logits, 4)[0]
    scale = ranked[:, 0] - 0.5 * (ranked[:, 2] + ranked[:, 3]) + 1e-12
    return -(_true_logit(logits, labels) - _true_logit(logits, targets)) / scale


LOSSES = {"ce": cross_entropy, "margin": margin, "kl": kl_to_target, "dlr": dlr}


def parse_loss(loss: str) -> str:
    if loss not in LOSSES:
        raise BenchError(f"unknown attack loss '{loss}'; use one of {sorted(LOSSES)}")
    return loss
