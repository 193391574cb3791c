"""PATE with the Gaussian NoisyMax aggregator (Papernot et al. 2017, arXiv:1610.05755; GNMax: Papernot et al. 2018,
"Scalable Private Learning with PATE", arXiv:1802.08908).

Teachers are trained on disjoint equal partitions of the private data (all at
once, vmapped: `bench.privacy.shadow.train_shadows`); each query of the public,
unlabeled split is answered with argmax(teacher vote histogram + N(0, sigma^2 I));
a student is trained on the answered labels. Data-independent accounting: adding
or removing one private example changes at most one teacher's vote, moving the
histogram by sqrt(2) in L2, so each answer is a Gaussian mechanism with noise
multiplier sigma / sqrt(2) (Papernot et al. 2018, Proposition 8: (lambda, lambda/sigma^2)-RDP),
composed over the answered queries with dp-accounting. The data-dependent
(smooth-sensitivity) analysis is not implemented.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from bench import lazy
from bench.errors import BenchError

dp_accounting = lazy.module("dp_accounting")


def teacher_partitions(n: int, num_teachers: int, rng: np.random.Generator) -> np.ndarray:
    """(num_teachers, n) disjoint memberships of n // num_teachers examples each (the remainder is unused)."""
    if num_teachers < 1 or n // num_teachers < 1:
        raise BenchError(f"{num_teachers} teachers need at least one example each; there are {n}")
    size = n // num_teachers
    order = rng.permutation(n)
    keep = np.zeros((num_teachers, n), bool)
    for t in range(num_teachers):
        keep[t, order[t * size:(t + 1) * size]] = True
    return keep


def teacher_votes(logits_fn, stacked_params, x: np.ndarray, num_classes: int, batch_size: int = 500) -> np.ndarray:
    """(len(x), num_classes) histogram of the teachers' predicted labels."""
    predict = jax.jit(jax.vmap(lambda p, xb: logits_fn(p, xb).argmax(-1), in_axes=(0, None)))
    votes = np.zeros((len(x), num_classes), np.int64)
    for start in range(0, len(x), batch_size):
        labels = np.asarray(predict(stacked_params, x[start:start + batch_size]))  # (teachers, batch)
        for row in labels:
            votes[start + np.arange(len(row)), row] += 1
    return votes


def gnmax(votes: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Noisy labels argmax(votes + N(0, sigma^2)) per query."""
    if not sigma > 0:
        raise BenchError(f"GNMax needs sigma > 0 for privacy, got {sigma}")
    return np.argmax(votes + rng.normal(0.0, sigma, votes.shape), axis=1).astype(np.int32)


def gnmax_event(sigma: float, num_queries: int) -> dp_accounting.DpEvent:
    """The DpEvent of `num_queries` GNMax answers with noise std `sigma` (L2 sensitivity sqrt(2))."""
    return dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(sigma / math.sqrt(2.0)), int(num_queries))
