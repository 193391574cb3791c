"""Spectral signatures (Tran, Li & Madry 2018, "Spectral Signatures in Backdoor Attacks").

For each label c (as the poisoned training set labels it): centre the penultimate-layer features of its
examples, take the top right singular vector v of that matrix, score each example by its squared
projection on v, and flag the `remove_factor * eps * n_c` highest scores (the paper's 1.5 eps, eps being the
assumed poison share; default: the poison ratio the attack used, as the paper assumes it known).
"""

from __future__ import annotations

import numpy as np

from bench.errors import BenchError


def outlier_scores(features: np.ndarray) -> np.ndarray:
    """Squared projections of the centred features on their top right singular vector."""
    centred = features - features.mean(axis=0, keepdims=True)
    if len(centred) < 2:
        return np.zeros(len(centred))
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return (centred @ vt[0]) ** 2


def spectral_signatures(eps: float | None = None, remove_factor: float = 1.5):
    """The detector: a function (features, labels, rng, expected_ratio) -> sorted flagged indices."""
    if eps is not None and not 0.0 < float(eps) < 1.0:
        raise BenchError(f"spectral_signatures: eps must be in (0, 1) or null (the attack's ratio), got {eps}")
    if float(remove_factor) <= 0:
        raise BenchError(f"spectral_signatures: remove_factor must be > 0, got {remove_factor}")

    def detect(features: np.ndarray, labels: np.ndarray, rng: np.random.Generator, expected_ratio: float):
        share = float(remove_factor) * float(expected_ratio if eps is None else eps)
        flagged = []
        for c in np.unique(labels):
            members = np.flatnonzero(labels == c)
            k = min(len(members), int(np.ceil(round(share * len(members), 6))))  # 1.5 * 0.1 * 300 is 45, not 46
            if k == 0:
                continue
            scores = outlier_scores(features[members])
            flagged.append(members[np.argsort(-scores, kind="stable")[:k]])
        return np.sort(np.concatenate(flagged)) if flagged else np.zeros(0, np.int64)

    return detect
