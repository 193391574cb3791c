"""Influence functions and influence-based training-set poisoning on a convex model (Koh & Liang 2017,
"Understanding Black-box Predictions via Influence Functions", sections 2-3 and 5.2).

The model is L2-regularised binary logistic regression on flattened pixels: theta = (w, b),
R(theta) = (1/n) sum_i c_i l(z_i, theta) + (lam / 2) ||w||^2, with per-example weights c_i (1 by default) and
l the logistic loss. It is fitted exactly by Newton's method, and its Hessian H of R is exact (closed form, checked
against `jax.hessian`).

- Upweighting (eq. 2 of the paper): I_up,loss(z, z_t) = -grad l(z_t)^T H^-1 grad l(z). Removing z_i is
  upweighting it by -1/n, so the test loss changes by about -I_up,loss / n (`predicted_removal_effect`, tested
  against leave-one-out retraining in tests/test_poisoning.py).
- Perturbation (eq. 4): I_pert,loss(z, z_t) = -grad l(z_t)^T H^-1 grad_x grad_theta l(z, theta): moving the
  training image x by delta changes the test loss by about I_pert,loss . delta / n.
- The attack (section 5.2): for a target test image, the `n_poisons` training images with the largest
  |I_up,loss| are moved by `steps` signed-gradient steps of I_pert,loss within an L-inf ball of `eps` around
  themselves (and [0, 1]), retraining after each step; labels are never changed (clean-label). Success: the
  target's prediction flips.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from bench.errors import BenchError
from bench.poisoning.base import PoisonedSet


def _loss(theta, x, y):
    """Logistic loss of labels y in {0, 1}: softplus(-(2y - 1)(w.x + b))."""
    margin = (2.0 * y - 1.0) * (x @ theta[:-1] + theta[-1])
    return jax.nn.softplus(-margin)


def risk(theta, X, y, lam, weights):
    return jnp.sum(weights * _loss(theta, X, y)) / X.shape[0] + 0.5 * lam * jnp.sum(theta[:-1] ** 2)


def hessian(theta, X, y, lam, weights):
    """The exact Hessian of R in closed form, (1/n) A^T diag(c s (1 - s)) A + lam [I 0; 0 0] with A = [X 1]
    and s the sigmoid of the logits: one matmul, equal to `jax.hessian(risk)` (tested) and much cheaper."""
    A = jnp.concatenate([X, jnp.ones((X.shape[0], 1), X.dtype)], axis=1)
    s = jax.nn.sigmoid(A @ theta)
    reg = jnp.diag(jnp.concatenate([jnp.full(X.shape[1], lam, X.dtype), jnp.zeros(1, X.dtype)]))
    return (A * (weights * s * (1 - s))[:, None]).T @ A / X.shape[0] + reg


@partial(jax.jit, static_argnames=("iterations",))
def fit(X, y, lam, weights=None, theta0=None, iterations: int = 30):
    """The exact minimiser of R by Newton's method (the risk is strictly convex for lam > 0)."""
    X, y = jnp.asarray(X, jnp.float64 if jax.config.jax_enable_x64 else jnp.float32), jnp.asarray(y, X.dtype)
    weights = jnp.ones(X.shape[0], X.dtype) if weights is None else jnp.asarray(weights, X.dtype)
    theta = jnp.zeros(X.shape[1] + 1, X.dtype) if theta0 is None else theta0
    grad, hess = jax.grad(risk), hessian
    # the bias is not regularised: a tiny ridge keeps H invertible on separable data
    ridge = 1e-8 * jnp.eye(X.shape[1] + 1, dtype=X.dtype)

    def step(theta, _):
        return theta - jnp.linalg.solve(hess(theta, X, y, lam, weights) + ridge, grad(theta, X, y, lam, weights)), None

    theta, _ = jax.lax.scan(step, theta, None, length=iterations)
    return theta


@jax.jit
def influence_up_loss(theta, X, y, lam, x_test, y_test):
    """I_up,loss(z_i, z_test) for every training example i (a vector of n)."""
    weights = jnp.ones(X.shape[0], X.dtype)
    H = hessian(theta, X, y, lam, weights)
    g_test = jax.grad(_loss)(theta, x_test, y_test)
    g_train = jax.vmap(jax.grad(_loss), in_axes=(None, 0, 0))(theta, X, y)
    return -g_train @ jnp.linalg.solve(H, g_test)


def predicted_removal_effect(theta, X, y, lam, x_test, y_test) -> np.ndarray:
    """The first-order change of the test loss when each training example is removed: -I_up,loss / n."""
    return -np.asarray(influence_up_loss(theta, X, y, lam, x_test, y_test)) / X.shape[0]


@jax.jit
def influence_pert_loss(theta, X, y, lam, x_test, y_test, idx):
    """I_pert,loss(z_i, z_test) for the training examples `idx`: one image-shaped gradient each (flattened)."""
    weights = jnp.ones(X.shape[0], X.dtype)
    H = hessian(theta, X, y, lam, weights)
    v = jnp.linalg.solve(H, jax.grad(_loss)(theta, x_test, y_test))
    along = lambda x, label: jax.grad(_loss)(theta, x, label) @ v
    return -jax.vmap(jax.grad(along))(X[idx], y[idx])


def test_loss(theta, x_test, y_test) -> float:
    return float(_loss(theta, jnp.asarray(x_test), jnp.asarray(y_test, jnp.asarray(x_test).dtype)))


def predict(theta, X) -> np.ndarray:
    return (np.asarray(jnp.asarray(X) @ theta[:-1] + theta[-1]) > 0).astype(np.int32)


def influence_attack(n_poisons: int = 1, eps: float = 0.2, steps: int = 50, step_size: float | None = None,
                     lam: float = 0.01):
    """The attack: `(X, y, x_target, y_target) -> (PoisonedSet, flipped)` on binary logistic regression.

    X: flattened training images in [0, 1], y in {0, 1}; the target keeps its true label y_target and the
    attack tries to make the retrained model predict 1 - y_target. Returns the poisoned set (the perturbed
    images at `indices`, labels unchanged) and whether the target's prediction flipped.
    """
    if int(n_poisons) < 1:
        raise BenchError(f"influence: n_poisons must be >= 1, got {n_poisons}")
    if not 0.0 < float(eps) <= 1.0:
        raise BenchError(f"influence: eps (L-inf budget in pixels) must be in (0, 1], got {eps}")
    alpha = float(step_size) if step_size is not None else 2.5 * float(eps) / int(steps)

    def attack(X, y, x_target, y_target):
        X = jnp.asarray(X, jnp.float32)
        yf = jnp.asarray(y, jnp.float32)
        theta = fit(X, yf, lam)
        scores = np.asarray(influence_up_loss(theta, X, yf, lam, jnp.asarray(x_target), float(y_target)))
        idx = np.sort(np.argsort(-np.abs(scores), kind="stable")[: int(n_poisons)])
        x0 = np.asarray(X)[idx]
        Xp = X
        flipped = predict(theta, x_target[None])[0] != y_target
        for _ in range(int(steps)):
            if flipped:
                break
            g = np.asarray(influence_pert_loss(theta, Xp, yf, lam, jnp.asarray(x_target), float(y_target), idx))
            moved = np.clip(np.clip(np.asarray(Xp)[idx] + alpha * np.sign(g), x0 - eps, x0 + eps), 0.0, 1.0)
            Xp = Xp.at[idx].set(moved)
            theta = fit(Xp, yf, lam, theta0=theta, iterations=5)  # warm-started retraining
            flipped = bool(predict(theta, x_target[None])[0] != y_target)
        theta = fit(Xp, yf, lam)  # success is judged on the model retrained from scratch on the poisoned set
        flipped = bool(predict(theta, x_target[None])[0] != y_target)
        Xp = np.asarray(Xp)
        changed = idx[(Xp[idx] != np.asarray(X)[idx]).any(axis=1)]
        return (PoisonedSet(Xp, np.asarray(y).copy(), changed, f"influence({int(n_poisons)})",
                            target=int(1 - y_target), info={"eps": float(eps), "chosen": idx}), bool(flipped))

    return attack
