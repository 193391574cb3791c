"""A query-counted prediction API over any model: what a black-box attacker or a model thief gets to see.

The black-box substitute attack (bench/scenarios/blackbox.py) and model theft both talk to a victim only
through `PredictionAPI.query`. The API wraps any `predict_proba(x) -> (n, classes)` probabilities (a Flax
model through `flax_predictor`, a scikit-learn learner through `bench.learners`), and answers in one of the
output modes

- "label": the top-1 class only, as integers (no score ever leaves the API);
- "probabilities": every class's probability;
- "top_k": the k most likely classes' probabilities, the others 0 (`k`);
- "rounded": probabilities rounded to `decimals` decimals,

after the API's defenses (`defenses`: functions (probabilities, rng) -> probabilities, applied in order
before the output mode; the theft scenario's rounding, noise and reverse-sigmoid defenses are such
functions). One query is one input: `query(x)` with n inputs costs n. A `budget` is checked before the
model is run, so an exceeded budget answers nothing and raises `QueryBudgetExceeded` (a `BenchError`
naming the budget, the queries spent and the fix); the caller keeps everything it computed before. Every
call is logged (`log`: one `QueryLog(n, total, mode)` per call).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from bench.errors import BenchError

MODES = ("label", "probabilities", "top_k", "rounded")


class QueryBudgetExceeded(BenchError):
    """A query that would spend more than the API's budget; nothing was answered."""


class QueryLog(NamedTuple):
    n: int        # inputs in this call
    total: int    # queries spent after it
    mode: str


class PredictionAPI:
    """The victim behind an API: `query(x)` answers in `mode`, counts one query per input, enforces `budget`."""

    def __init__(self, predict_proba: Callable[[np.ndarray], np.ndarray], *, mode: str = "label", k: int = 1,
                 decimals: int | None = None, defenses: Sequence[Callable] = (), budget: int | None = None,
                 seed: int = 0):
        if mode not in MODES:
            raise BenchError(f"unknown API output mode '{mode}'; use one of {list(MODES)}")
        if mode == "top_k" and int(k) < 1:
            raise BenchError(f"top_k output needs k >= 1, got {k}")
        if mode == "rounded" and (decimals is None or int(decimals) < 0):
            raise BenchError(f"rounded output needs decimals >= 0, got {decimals}")
        if budget is not None and int(budget) < 0:
            raise BenchError(f"a query budget must be >= 0 (or null for none), got {budget}")
        self._predict = predict_proba
        self.mode, self.k, self.decimals = mode, int(k), None if decimals is None else int(decimals)
        self.defenses = tuple(defenses)
        self.budget = None if budget is None else int(budget)
        self.queries = 0
        self.log: list[QueryLog] = []
        self._rng = np.random.default_rng(seed)  # the defenses' randomness (noise), its own stream

    @property
    def remaining(self) -> int | None:
        return None if self.budget is None else self.budget - self.queries

    def query(self, x: np.ndarray) -> np.ndarray:
        """Answers for the n inputs of x: (n,) int labels in "label" mode, else (n, classes) float32 scores."""
        x = np.asarray(x)
        n = len(x)
        if self.budget is not None and self.queries + n > self.budget:
            raise QueryBudgetExceeded(
                f"query budget exceeded: {n} more queries asked after {self.queries} of a budget of {self.budget}; "
                f"raise the budget (e.g. scenario.budget={self.queries + n}) or ask for fewer queries "
                "(what was computed before this query is kept)")
        probs = np.asarray(self._predict(x), np.float32) if n else np.zeros((0, 0), np.float32)
        for defense in self.defenses:
            probs = np.asarray(defense(probs, self._rng), np.float32)
        self.queries += n
        self.log.append(QueryLog(n, self.queries, self.mode))
        if self.mode == "label":
            return probs.argmax(axis=-1).astype(np.int32) if n else np.zeros((0,), np.int32)
        if self.mode == "top_k":
            keep = np.argsort(-probs, axis=-1)[:, : self.k]
            out = np.zeros_like(probs)
            np.put_along_axis(out, keep, np.take_along_axis(probs, keep, axis=-1), axis=-1)
            return out
        if self.mode == "rounded":
            return np.round(probs, self.decimals).astype(np.float32)
        return probs


def _normalised(q: np.ndarray) -> np.ndarray:
    q = np.clip(q, 0.0, None)
    total = q.sum(axis=1, keepdims=True)
    return np.where(total > 0, q / np.where(total > 0, total, 1.0), 1.0 / q.shape[1])


def gaussian_noise(sigma: float = 0.1):
    """API defense: Gaussian noise of std `sigma` on every score, clipped at 0 and renormalised."""
    if float(sigma) < 0:
        raise BenchError(f"gaussian_noise needs sigma >= 0, got {sigma}")

    def defend(probs, rng):
        return _normalised(probs + rng.normal(0.0, float(sigma), probs.shape))

    return defend


def reverse_sigmoid(beta: float = 1.0, gamma: float = 0.1):
    """API defense of Lee et al. 2019 ("Defending Against NN Model Stealing Attacks Using Deceptive
    Perturbations"): y' = alpha * (y - beta * (s(gamma * s^-1(y)) - 1/2)), s the sigmoid, alpha normalising
    the row to a distribution. It keeps scores useless to an attacker's gradient while it mostly keeps the
    top class."""
    if float(beta) < 0 or float(gamma) <= 0:
        raise BenchError(f"reverse_sigmoid needs beta >= 0 and gamma > 0, got beta={beta}, gamma={gamma}")

    def defend(probs, rng):
        p = np.clip(probs.astype(np.float64), 1e-7, 1 - 1e-7)
        inverse = np.log(p / (1 - p))
        perturbation = float(beta) * (1.0 / (1.0 + np.exp(-float(gamma) * inverse)) - 0.5)
        return _normalised(p - perturbation).astype(np.float32)

    return defend


# API defenses by name (the theft scenario's `api.defense`); each a factory of keyword parameters returning
# (probabilities, rng) -> probabilities. Rounding and top-1 are output modes (`rounded`, `top_k` with k=1).
API_DEFENSES = {"noise": gaussian_noise, "reverse_sigmoid": reverse_sigmoid}


def flax_predictor(logits_fn, params, batch_size: int = 1000) -> Callable[[np.ndarray], np.ndarray]:
    """`predict_proba` of a Flax model: softmax of its logits, batched."""
    import jax

    from bench import evaluate

    def predict_proba(x):
        logits = evaluate.logits(logits_fn, params, x, batch_size=batch_size)
        return np.asarray(jax.nn.softmax(logits, axis=-1))

    return predict_proba


__all__ = ["API_DEFENSES", "MODES", "PredictionAPI", "QueryBudgetExceeded", "QueryLog", "flax_predictor",
           "gaussian_noise", "reverse_sigmoid"]
