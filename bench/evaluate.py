"""Evaluation: clean accuracy and, per epsilon, each attack's robust accuracy and the per-example worst case.

An example counts as robust at eps only if it is classified correctly clean and
survives every attack of the suite (as AutoAttack does). Every adversarial batch
is checked against its threat model; a violation raises, it never becomes a number.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from bench.attacks.threat import check_eps, check_threat_model, parse_norm
from bench.errors import BenchError


@partial(jax.jit, static_argnames=("logits_fn",))
def _predict_batch(logits_fn, params, x):
    return jnp.argmax(logits_fn(params, x), axis=-1)


def _batches(n: int, batch_size: int):
    if int(batch_size) < 1:
        raise BenchError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def predict(logits_fn, params, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Predicted labels, computed in batches."""
    return np.concatenate([np.asarray(_predict_batch(logits_fn, params, x[s])) for s in _batches(len(x), batch_size)])


def accuracy(logits_fn, params, x, y, batch_size: int = 1000) -> float:
    """Fraction of examples classified correctly."""
    return float(np.mean(predict(logits_fn, params, x, batch_size) == y))


def build_suite(attacks: Mapping[str, Callable], norm: str, eps_list: Sequence[float]) -> dict:
    """Instantiate every attack factory at every epsilon: {(eps, name): attack}. Validates before any work."""
    norm = parse_norm(norm)
    if len(eps_list) == 0:
        raise BenchError("suite.eps is empty; give at least one epsilon, e.g. suite.eps=[0.1,0.3]")
    suite = {}
    for eps in eps_list:
        eps = check_eps(norm, eps)
        for name, factory in attacks.items():
            suite[(eps, name)] = factory(norm=norm.value, eps=eps)
    return suite


def evaluate_evasion(logits_fn, params, x: np.ndarray, y: np.ndarray, suite: Mapping[tuple[float, str], Callable],
                     norm: str, key: jax.Array, batch_size: int = 1000, progress: bool = True):
    """Run every attack of `suite` on (x, y).

    Returns (results, per_example): results are flat dicts (evaluator, norm, eps,
    metric, value, n, seconds); per_example maps (eps, evaluator) to a boolean
    array of examples still classified correctly ("clean" and "worst_case" included).
    """
    norm = parse_norm(norm)
    n = len(y)
    t0 = time.perf_counter()
    clean = predict(logits_fn, params, x, batch_size) == y
    results = [dict(evaluator="clean", norm="none", eps=0.0, metric="accuracy", value=float(clean.mean()), n=n,
                    seconds=time.perf_counter() - t0)]
    per_example = {(0.0, "clean"): clean}
    eps_values = sorted({eps for eps, _ in suite})
    bar = tqdm(total=len(suite), desc="attacks", disable=not progress, leave=False)
    for i, eps in enumerate(eps_values):
        worst = clean.copy()
        for j, (name, attack) in enumerate((name, a) for (e, name), a in suite.items() if e == eps):
            bar.set_postfix_str(f"{name} eps={eps:g}")
            t0 = time.perf_counter()
            robust = np.zeros(n, bool)
            for b, s in enumerate(_batches(n, batch_size)):
                k = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, i), j), b)
                x_adv = attack(logits_fn, params, jnp.asarray(x[s]), jnp.asarray(y[s]), k)
                check_threat_model(x[s], x_adv, norm, eps)
                robust[s] = np.asarray(_predict_batch(logits_fn, params, x_adv)) == y[s]
            robust &= clean  # a misclassified clean example is not robust
            worst &= robust
            per_example[(eps, name)] = robust
            results.append(dict(evaluator=name, norm=norm.value, eps=eps, metric="robust_accuracy",
                                value=float(robust.mean()), n=n, seconds=time.perf_counter() - t0))
            bar.update(1)
        per_example[(eps, "worst_case")] = worst
        results.append(dict(evaluator="worst_case", norm=norm.value, eps=eps, metric="robust_accuracy",
                            value=float(worst.mean()), n=n, seconds=0.0))
    bar.close()
    return results, per_example
