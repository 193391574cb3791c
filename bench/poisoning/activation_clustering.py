"""Activation clustering (Chen, Carvalho, Baracaldo, Ludwig, Edwards, Lee, Molloy & Srivastava 2018,
"Detecting Backdoor Attacks on Deep Neural Networks by Activation Clustering").

For each label c: reduce the penultimate-layer features of its examples to `components` dimensions, split
them into two clusters with k-means, and judge the class poisoned when the split is clean and lopsided: the
silhouette score is at least `silhouette_threshold` and the smaller cluster holds at most `size_threshold` of
the class (the paper's relative-size and silhouette analyses); its smaller cluster is then flagged.
Differences from the paper, stated: the reduction is PCA (the paper uses ICA), and k-means is Lloyd's
algorithm with `restarts` k-means++ starts drawn from the defense's random stream.
A limit of the relative-size rule, visible in the measurements: when the poisons are as many as the clean images
of their class (all-to-one at a 10% ratio over 10 balanced classes puts about half of the target class's images
there), neither cluster is smaller and the flagged one is a coin toss: TPR near 0 or near 1 depending on the seed.
"""

from __future__ import annotations

import numpy as np

from bench.errors import BenchError


def pca(features: np.ndarray, components: int) -> np.ndarray:
    centred = features - features.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:components].T


def two_means(points: np.ndarray, rng: np.random.Generator, restarts: int = 5, iterations: int = 100):
    """Labels in {0, 1} of the lowest-inertia 2-means clustering over `restarts` k-means++ starts."""
    best, best_inertia = np.zeros(len(points), np.int64), np.inf
    for _ in range(restarts):
        first = points[rng.integers(len(points))]
        d = ((points - first) ** 2).sum(1)
        second = points[rng.choice(len(points), p=d / d.sum())] if d.sum() > 0 else first
        centres = np.stack([first, second])
        for _ in range(iterations):
            labels = ((points[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
            new = np.stack([points[labels == j].mean(0) if (labels == j).any() else centres[j] for j in (0, 1)])
            if np.allclose(new, centres):
                break
            centres = new
        inertia = ((points - centres[labels]) ** 2).sum()
        if inertia < best_inertia:
            best, best_inertia = labels, inertia
    return best


def silhouette(points: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette coefficient of a two-cluster labelling (0 when a cluster is empty)."""
    if len(np.unique(labels)) < 2:
        return 0.0
    from sklearn.metrics import silhouette_score

    return float(silhouette_score(points, labels))


def activation_clustering(components: int = 10, size_threshold: float = 0.35, silhouette_threshold: float = 0.15,
                          restarts: int = 5):
    """The detector: a function (features, labels, rng, expected_ratio) -> sorted flagged indices.

    `expected_ratio` is not read (the method does not assume a poison share); it is there for one signature.
    """
    if not 0.0 < float(size_threshold) <= 0.5:
        raise BenchError(f"activation_clustering: size_threshold must be in (0, 0.5], got {size_threshold}")
    if int(components) < 1:
        raise BenchError(f"activation_clustering: components must be >= 1, got {components}")

    def detect(features: np.ndarray, labels: np.ndarray, rng: np.random.Generator, expected_ratio: float):
        flagged = []
        for c in np.unique(labels):
            members = np.flatnonzero(labels == c)
            if len(members) < 4:
                continue
            points = pca(features[members], min(int(components), features.shape[1], len(members)))
            clusters = two_means(points, rng, int(restarts))
            small = int(np.bincount(clusters, minlength=2).argmin())
            share = float(np.mean(clusters == small))
            if share <= float(size_threshold) and silhouette(points, clusters) >= float(silhouette_threshold):
                flagged.append(members[clusters == small])
        return np.sort(np.concatenate(flagged)) if flagged else np.zeros(0, np.int64)

    return detect
