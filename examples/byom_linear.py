"""Bring your own model, the example: a scikit-learn logistic regression (not trained by bench) on the leaderboard.

    python -m bench.byom examples.byom_linear:build --name sklearn_logreg --dataset digits --suite pgd \
        suite.eps=[0.05,0.1] --out results/runs/byom/sklearn_logreg
    python -m bench.leaderboard results/runs/byom --out results/leaderboard

`build` fits scikit-learn's LogisticRegression on the training split it is handed (bench never trains it) and
returns `(logits_fn, params)`: the fitted weights as JAX arrays and a JAX function of them, so the suite's
gradient attacks differentiate the very model scikit-learn fitted. Any function with this contract works.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def build(x_train, y_train, num_classes, C: float = 1.0, max_iter: int = 500):
    """Fit the logistic regression on the flattened training images; return (logits_fn, params)."""
    from sklearn.linear_model import LogisticRegression

    flat = np.asarray(x_train, np.float64).reshape(len(x_train), -1)
    model = LogisticRegression(C=float(C), max_iter=int(max_iter)).fit(flat, np.asarray(y_train))
    if list(model.classes_) != list(range(num_classes)):
        raise ValueError(f"the training split lacks some of the {num_classes} classes")
    params = {"w": jnp.asarray(model.coef_.T, jnp.float32), "b": jnp.asarray(model.intercept_, jnp.float32)}

    def logits_fn(params, x):
        return x.reshape(x.shape[0], -1) @ params["w"] + params["b"]

    return logits_fn, params
