"""The poisoning metrics, one written definition each (golden tests: tests/test_poisoning.py).

- CA, clean accuracy: share of the clean test images classified as their true class.
- ASR, attack success rate: share of the triggered test inputs whose true class is not the attacker's label
  for them (`bench.poisoning.base.attack_inputs`) classified as the attacker's label.
- RA, robust accuracy under the trigger: share of those same triggered inputs still classified as their
  true class (ASR + RA <= 1; the rest went to a third class).
- targeted success: share of the target images (one poisoning per target: feature collision, influence)
  classified as the attacker's label after training on the poisoned set.
- detection TPR / FPR of a filtering defense: share of the true poison indices it flagged / share of the
  clean training examples it flagged.
- DER, defense effectiveness rating (BackdoorBench, Wu et al. 2022): with dCA = CA_before - CA_after and
  dASR = ASR_before - ASR_after (drops caused by the defense), DER = (max(0, dASR) - max(0, dCA) + 1) / 2,
  in [0, 1]: 0.5 changes nothing; a defense that only costs clean accuracy scores below 0.5. (BackdoorBench's
  code adds the dCA term; the paper's definition subtracts it, as here.)
"""

from __future__ import annotations

import numpy as np

from bench.errors import BenchError


def _share(hits: np.ndarray) -> float:
    return float(np.mean(hits)) if len(hits) else float("nan")


def clean_accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    """CA: share of predictions equal to the true labels."""
    return _share(np.asarray(pred) == np.asarray(y))


def attack_success_rate(pred: np.ndarray, y_adv: np.ndarray) -> float:
    """ASR on the counted triggered inputs: share predicted as the attacker's label."""
    return _share(np.asarray(pred) == np.asarray(y_adv))


def robust_accuracy(pred: np.ndarray, y_true: np.ndarray) -> float:
    """RA on the counted triggered inputs: share still predicted as their true class."""
    return _share(np.asarray(pred) == np.asarray(y_true))


def targeted_success(pred: np.ndarray, y_adv: np.ndarray) -> float:
    """Share of the target images classified as the attacker's label (one entry per target image)."""
    return _share(np.asarray(pred) == np.asarray(y_adv))


def detection(flagged: np.ndarray, poison_indices: np.ndarray, n: int) -> dict:
    """TPR and FPR of a set of flagged training indices against the true poison indices of n examples."""
    flagged_mask = np.zeros(n, bool)
    flagged_mask[np.asarray(flagged, np.int64)] = True
    poison = np.zeros(n, bool)
    poison[np.asarray(poison_indices, np.int64)] = True
    tp, fp = int((flagged_mask & poison).sum()), int((flagged_mask & ~poison).sum())
    return {"tpr": tp / poison.sum() if poison.any() else float("nan"),
            "fpr": fp / (~poison).sum() if (~poison).any() else float("nan"),
            "flagged": int(flagged_mask.sum()), "true_positives": tp, "false_positives": fp}


def der(ca_before: float, asr_before: float, ca_after: float, asr_after: float) -> float:
    """DER = (max(0, ASR_before - ASR_after) - max(0, CA_before - CA_after) + 1) / 2 (shares in [0, 1])."""
    values = (ca_before, asr_before, ca_after, asr_after)
    if any(not np.isfinite(v) for v in values):
        return float("nan")
    if any(not 0.0 <= v <= 1.0 for v in values):
        raise BenchError(f"DER takes shares in [0, 1] (not percentages), got {values}")
    return (max(0.0, asr_before - asr_after) - max(0.0, ca_before - ca_after) + 1.0) / 2.0
