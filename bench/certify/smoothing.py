"""Randomized smoothing (Cohen, Rosenfeld & Kolter 2019, "Certified Adversarial Robustness via Randomized
Smoothing").

The smoothed classifier g(x) = argmax_c P(f(x + N(0, sigma^2 I)) = c). CERTIFY
draws n0 noisy copies to guess the top class cA, then n more to lower-bound
pA with a one-sided Clopper-Pearson interval at level 1 - alpha; if pA_lower >
1/2 it returns cA with the certified L2 radius sigma * Phi^-1(pA_lower), else it
abstains. PREDICT returns the top class of n samples unless a two-sided
binomial test of nA against nB at level alpha cannot separate them.

The guarantee concerns g, not the base network f, and holds with probability
1 - alpha per example; so smoothing certificates are reported apart from the
IBP/CROWN certificates and are not checked against attacks on f. Noise is added
without clipping to [0, 1], as in the paper; the matching training objective is
`bench.defenses.gaussian.gaussian_augmentation` with the same sigma.

Sampling is jitted and batched: `batch_size` noisy copies at a time in a
`lax.fori_loop`; the statistics are SciPy on the host.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bench.errors import BenchError

ABSTAIN = -1


class SmoothingResult(NamedTuple):
    prediction: np.ndarray  # int, ABSTAIN (-1) when abstaining
    radius: np.ndarray  # certified L2 radius; 0 when abstaining
    p_lower: np.ndarray  # the Clopper-Pearson lower bound on pA


@partial(jax.jit, static_argnames=("logits_fn", "num", "batch_size", "num_classes"))
def sample_counts(logits_fn, params, x, key, sigma, *, num: int, batch_size: int, num_classes: int):
    """Class counts of the base classifier on `num` Gaussian copies of each example: (n, num_classes) int32.

    Copies are drawn `batch_size` per example at a time; the last round keeps only what is needed.
    """
    rounds = -(-num // batch_size)

    def one_round(r, counts):
        noise = jax.random.normal(jax.random.fold_in(key, r), (x.shape[0], batch_size) + x.shape[1:], x.dtype)
        noisy = (x[:, None] + sigma * noise).reshape((-1,) + x.shape[1:])
        labels = jnp.argmax(logits_fn(params, noisy), axis=-1).reshape(x.shape[0], batch_size)
        keep = (r * batch_size + jnp.arange(batch_size)) < num
        return counts + jnp.sum(jax.nn.one_hot(labels, num_classes, dtype=jnp.int32) * keep[None, :, None], axis=1)

    return jax.lax.fori_loop(0, rounds, one_round, jnp.zeros((x.shape[0], num_classes), jnp.int32))


def clopper_pearson_lower(successes, trials, alpha: float) -> np.ndarray:
    """One-sided (1 - alpha) Clopper-Pearson lower confidence bound on a binomial proportion."""
    from scipy import stats  # here, not at the top: scipy.stats adds 0.4 s to every `python -m bench` start

    successes = np.asarray(successes, np.float64)
    lower = stats.beta.ppf(alpha, successes, trials - successes + 1)
    return np.where(successes > 0, np.nan_to_num(lower, nan=0.0), 0.0)


def certify_from_counts(counts_select, counts_estimate, sigma: float, alpha: float) -> SmoothingResult:
    """CERTIFY's decision from the selection counts (n0 draws) and estimation counts (n draws), on the host."""
    from scipy import stats

    counts_select, counts_estimate = np.asarray(counts_select), np.asarray(counts_estimate)
    top = counts_select.argmax(axis=1)
    n = counts_estimate.sum(axis=1)
    n_top = counts_estimate[np.arange(len(top)), top]
    p_lower = clopper_pearson_lower(n_top, n, alpha)
    certified = p_lower > 0.5
    radius = np.where(certified, sigma * stats.norm.ppf(np.where(certified, p_lower, 0.75)), 0.0)
    return SmoothingResult(np.where(certified, top, ABSTAIN), radius, p_lower)


def predict_from_counts(counts, alpha: float) -> np.ndarray:
    """PREDICT's decision: the top class, or ABSTAIN when a binomial test cannot tell it from the runner-up."""
    from scipy import stats

    counts = np.asarray(counts)
    order = np.argsort(-counts, axis=1, kind="stable")
    n_a = counts[np.arange(len(counts)), order[:, 0]]
    n_b = counts[np.arange(len(counts)), order[:, 1]]
    p_values = np.array([stats.binomtest(int(a), int(a + b), 0.5).pvalue if a + b > 0 else 1.0
                         for a, b in zip(n_a, n_b)])
    return np.where(p_values <= alpha, order[:, 0], ABSTAIN)


def randomized_smoothing(*, sigma: float, n0: int = 100, n: int = 100_000, alpha: float = 0.001,
                         batch_size: int = 1000, num_classes: int | None = None):
    """Randomized-smoothing certifier `(logits_fn, params, x, key) -> SmoothingResult` (Cohen et al. 2019).

    Args:
      sigma: standard deviation of the Gaussian noise, in [0, 1] pixel units.
      n0: draws used to pick the top class; n: draws used to bound its probability.
      alpha: failure probability of each certificate.
      batch_size: noisy copies per example per jitted round.
      num_classes: classes of the base classifier (default: read from one forward pass).
    The returned function also has `.predict(logits_fn, params, x, key)` (PREDICT with n draws).
    """
    sigma, alpha = float(sigma), float(alpha)
    if not sigma > 0:
        raise BenchError(f"smoothing sigma must be > 0, got {sigma}")
    if not 0 < alpha < 1:
        raise BenchError(f"smoothing alpha must lie in (0, 1), got {alpha}")
    if int(n0) < 1 or int(n) < 1 or int(batch_size) < 1:
        raise BenchError(f"smoothing needs n0, n, batch_size >= 1, got {n0}, {n}, {batch_size}")
    n0, n, batch_size = int(n0), int(n), int(batch_size)

    def classes(logits_fn, params, x):
        return num_classes or int(jax.eval_shape(logits_fn, params, x[:1]).shape[-1])

    def counts(logits_fn, params, x, key, num):
        x = jnp.asarray(x, jnp.float32)
        return np.asarray(sample_counts(logits_fn, params, x, key, jnp.float32(sigma), num=num,
                                        batch_size=min(batch_size, num), num_classes=classes(logits_fn, params, x)))

    def certify(logits_fn, params, x, key):
        key_select, key_estimate = jax.random.split(key)
        return certify_from_counts(counts(logits_fn, params, x, key_select, n0),
                                   counts(logits_fn, params, x, key_estimate, n), sigma, alpha)

    def predict(logits_fn, params, x, key):
        return predict_from_counts(counts(logits_fn, params, x, key, n), alpha)

    certify.predict = predict
    certify.sigma = sigma
    return certify
