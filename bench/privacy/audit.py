"""Canary auditing in one training run (Steinke, Nasr & Jagielski 2023, "Privacy Auditing with One (1) Training Run").

m canaries (mislabeled images held out of the training split) are each
included in training independently with probability 1/2; after training, the
score "minus the loss on the canary's label" guesses which were included.
`jax_privacy.auditing.CanaryScoreAuditor` turns the guesses into an epsilon
lower bound at a significance level:
- `epsilon_one_run`: the one-run bound of Steinke et al., valid for a single
  training run with randomly included canaries; the run checks it against the
  accountant (a bound above the accountant's epsilon is a privacy violation).
- `epsilon_clopper_pearson`: the Clopper-Pearson bound of Jagielski et al. 2020,
  which treats canaries as independent trials (exact for one canary per run);
  recorded for comparison, not checked.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from bench import lazy
from bench.errors import BenchError

jax_privacy = lazy.module("jax_privacy")  # imported on first use (bench/lazy.py)


class Canaries(NamedTuple):
    x: np.ndarray
    y: np.ndarray  # a wrong label for every canary
    included: np.ndarray  # bool: trained on


class PrivacyViolation(BenchError):
    """The empirical epsilon lower bound exceeds the accountant's epsilon: the DP guarantee does not hold."""


def make_canaries(x: np.ndarray, y: np.ndarray, num_classes: int, rng: np.random.Generator) -> Canaries:
    """Relabel every image with a uniformly random wrong class and include each with probability 1/2."""
    if len(y) < 2:
        raise BenchError(f"a canary audit needs at least 2 canaries, got {len(y)}")
    wrong = (np.asarray(y) + rng.integers(1, num_classes, len(y))) % num_classes
    return Canaries(np.asarray(x), wrong.astype(np.int32), rng.random(len(y)) < 0.5)


def audit(canary_losses: np.ndarray, included: np.ndarray, delta: float, significance: float = 0.05) -> dict[str, float]:
    """Epsilon lower bounds (one-run and Clopper-Pearson) and attack AUC from the canaries' losses."""
    scores = -np.asarray(canary_losses, float)
    included = np.asarray(included, bool)
    if included.all() or not included.any():
        raise BenchError("the audit needs both included and excluded canaries; use more canaries")
    auditor = jax_privacy.auditing.CanaryScoreAuditor(scores[included], scores[~included])
    return {
        "epsilon_lower_bound": float(auditor.epsilon_one_run(significance, delta)),
        "epsilon_clopper_pearson": float(auditor.epsilon_clopper_pearson(significance, delta)),
        "auc": float(auditor.attack_auroc()),
    }


def check_invariant(epsilon_lower_bound: float, epsilon_spent: float) -> None:
    """Raise PrivacyViolation when the empirical lower bound exceeds the accountant's epsilon."""
    if epsilon_lower_bound > epsilon_spent * (1 + 1e-9):
        raise PrivacyViolation(f"canary audit: empirical epsilon lower bound {epsilon_lower_bound:.4g} exceeds the "
                               f"accountant's epsilon {epsilon_spent:.4g}; the DP training is not private as claimed")
