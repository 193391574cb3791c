"""Non-differentiable learners from scikit-learn, as transfer targets (and, for the linear ones, sources).

Papernot, McDaniel & Goodfellow 2016 ("Transferability in Machine Learning: from Phenomena to Black-Box
Attacks using Adversarial Samples") measure transfer across learning techniques: deep networks, logistic
regression, linear SVMs, decision trees, k-nearest neighbours. Here each learner is fitted on the flattened
pixels of the training split and exposes
- `predict_proba(x)`: class probabilities (a linear SVM: the softmax of its decision function), columns
  for every class of the data, so any learner can sit behind `bench.api.PredictionAPI`;
- for the linear learners (logistic regression, linear SVM) also `logits_fn(params, x)` written in JAX,
  `x.reshape(n, -1) @ W.T + b` with scikit-learn's fitted coefficients, so the suite's gradient attacks craft
  on them: they are sources as well as targets.
Add a learner: one entry in LEARNERS (name -> (estimator factory, linear?)).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from bench.errors import BenchError


def _logreg(seed: int, **kw):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=kw.pop("max_iter", 200), C=kw.pop("C", 1.0), random_state=seed, **kw)


def _linear_svm(seed: int, **kw):
    from sklearn.svm import LinearSVC

    return LinearSVC(C=kw.pop("C", 0.1), max_iter=kw.pop("max_iter", 2000), random_state=seed, **kw)


def _tree(seed: int, **kw):
    from sklearn.tree import DecisionTreeClassifier

    return DecisionTreeClassifier(random_state=seed, **kw)


def _knn(seed: int, **kw):
    from sklearn.neighbors import KNeighborsClassifier

    return KNeighborsClassifier(n_neighbors=kw.pop("n_neighbors", 3), **kw)


def _forest(seed: int, **kw):
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=kw.pop("n_estimators", 100), random_state=seed, n_jobs=1, **kw)


# name -> (factory(seed, **kwargs) -> unfitted estimator, linear: has a JAX decision function)
LEARNERS: dict[str, tuple[Callable[..., Any], bool]] = {
    "logreg": (_logreg, True),
    "linear_svm": (_linear_svm, True),
    "tree": (_tree, False),
    "knn": (_knn, False),
    "forest": (_forest, False),
}


class Learner(NamedTuple):
    """A fitted learner: `predict_proba` for every one, `logits_fn` and `params` for the linear ones (else None)."""

    name: str
    estimator: Any
    predict_proba: Callable[[np.ndarray], np.ndarray]
    logits_fn: Callable | None
    params: dict | None


def linear_logits(params, x):
    """The linear learners' decision function in JAX: flattened pixels times W plus b."""
    return jnp.reshape(x, (x.shape[0], -1)) @ params["w"].T + params["b"]


def fit(kind: str, x: np.ndarray, y: np.ndarray, num_classes: int, seed: int = 0, **kwargs) -> Learner:
    """Fit learner `kind` on images x (flattened) and integer labels y."""
    if kind not in LEARNERS:
        raise BenchError(f"unknown learner '{kind}'; use one of {sorted(LEARNERS)} (bench/learners.py)")
    factory, linear = LEARNERS[kind]
    try:
        estimator = factory(seed, **dict(kwargs))
    except TypeError as err:
        raise BenchError(f"learner {kind}: {err}; check its arguments against scikit-learn's estimator") from None
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():  # the iteration caps are chosen for speed; the fit is measured, not assumed
        warnings.simplefilter("ignore", ConvergenceWarning)
        estimator.fit(x.reshape(len(x), -1), y)
    classes = np.asarray(estimator.classes_, int)

    def scores(x):
        flat = np.asarray(x).reshape(len(x), -1)
        if hasattr(estimator, "predict_proba"):
            part = estimator.predict_proba(flat)
        else:
            part = _softmax(_decision(estimator, flat))
        out = np.zeros((len(flat), num_classes), np.float32)
        out[:, classes] = part
        return out

    params = None
    if linear:
        coef, intercept = np.asarray(estimator.coef_, np.float32), np.asarray(estimator.intercept_, np.float32)
        w = np.zeros((num_classes, coef.shape[1]), np.float32)
        b = np.full((num_classes,), -1e4 if len(classes) < num_classes else 0.0, np.float32)  # unseen classes lose
        if len(classes) == 2 and coef.shape[0] == 1:  # binary: one score for the second class
            w[classes[1]], b[classes[1]], b[classes[0]] = coef[0], intercept[0], 0.0
        else:
            w[classes], b[classes] = coef, intercept
        params = {"w": jnp.asarray(w), "b": jnp.asarray(b)}
    return Learner(kind, estimator, scores, linear_logits if linear else None, params)


def _decision(estimator, flat):
    d = estimator.decision_function(flat)
    return np.stack([-d, d], axis=1) if d.ndim == 1 else d


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


__all__ = ["LEARNERS", "Learner", "fit", "linear_logits"]
