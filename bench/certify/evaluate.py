"""Certified evaluation, and the soundness check that ties certificates to attacks.

`evaluate_certified` runs every bound certifier at every epsilon and returns
flat result rows (evaluator, norm, eps, metric="certified_accuracy", value, n,
seconds) plus per-example masks keyed (eps, name), as `bench.evaluate`'s
`run_suite` does for attacks; "certified_any" is the suite figure (an
example certified by any certifier). `soundness_check` then fails the run when
an example certified at eps is broken by an attack at the same eps (ARCHITECTURE.md
invariant). `evaluate_smoothing` reports randomized smoothing at a list of L2
radii; its certificates are for the smoothed classifier, so they are reported
but not checked against attacks on the base network.

`python -m bench.certify RUN_DIR` re-evaluates a finished run's params with
these functions (see bench/certify/__main__.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bench import records, sharding
from bench.threat import check_eps, parse_norm
from bench.certify.network import as_network
from bench.certify.smoothing import ABSTAIN
from bench.errors import BenchError

ANY = "certified_any"


class SoundnessFailure(BenchError):
    """An example certified by a certifier and broken by an attack: the bound code (or an attack's check) is wrong."""

    def __init__(self, message: str, failures: list[dict]):
        super().__init__(message)
        self.failures = failures


def certified_mask(margin_lower) -> np.ndarray:
    """An example is certified when every margin bound is > 0 (the true class carries +inf)."""
    return np.asarray(jnp.all(margin_lower > 0, axis=-1))


def evaluate_certified(network, params, x: np.ndarray, y: np.ndarray, certifiers: Mapping[str, Callable],
                       norm: str, eps_list: Sequence[float], batch_size: int = 100):
    """Certified accuracy of every certifier factory at every epsilon.

    Args:
      network: a `bench.models.ConvNet` or a layer list (bench.certify.network).
      certifiers: {name: factory}; each factory is called with `norm=` and `eps=` and returns
        `(network, params, x, y) -> margin_lower` (bench.contracts.Certifier).
      batch_size: examples per bound computation (CROWN's memory grows with it).
    Returns (results, per_example): flat result dicts and {(eps, name): bool mask},
    "certified_any" included.
    """
    norm = parse_norm(norm)
    if int(batch_size) < 1:
        raise BenchError(f"certify batch_size must be >= 1, got {batch_size}")
    if len(eps_list) == 0:
        raise BenchError("no epsilon to certify at; give a non-empty list")
    network = as_network(network)
    n = len(y)
    results, per_example = [], {}
    for eps in eps_list:
        eps = check_eps(norm, eps)
        any_certified = np.zeros(n, bool)
        for name, factory in certifiers.items():
            try:
                certify = factory(norm=norm.value, eps=eps)
            except TypeError as err:  # a configured key the factory does not take
                raise BenchError(f"suite.certifiers.{name}: {err}; check its keys against the certifier's "
                                 "parameters (bench/certify/)") from None
            started = time.perf_counter()
            mask = np.zeros(n, bool)
            for start in range(0, n, batch_size):
                s = slice(start, min(start + batch_size, n))
                mask[s] = certified_mask(certify(network, params, *sharding.shard_batch(x[s], y[s])))
            seconds = time.perf_counter() - started
            per_example[(eps, name)] = mask
            any_certified |= mask
            results.append(records.row(name, "certified_accuracy", mask.mean(), n, norm=norm, eps=eps, seconds=seconds))
        per_example[(eps, ANY)] = any_certified
        results.append(records.row(ANY, "certified_accuracy", any_certified.mean(), n, norm=norm, eps=eps))
    return results, per_example


def soundness_check(certified_masks: Mapping[tuple[float, str], np.ndarray],
                    robust_masks: Mapping[tuple[float, str], np.ndarray]) -> None:
    """Raise SoundnessFailure if an example certified at eps by any certifier is broken by any attack at eps.

    Both mappings are keyed (eps, name) with boolean masks over the same examples
    and the same norm: certified_masks from `evaluate_certified`, robust_masks the
    per_example masks of `bench.evaluate.run_suite` (True = still correct).
    A certificate at eps > 0 also claims the clean prediction, so the clean mask
    (key (0.0, "clean")) is checked against every certificate too.
    """
    failures = []
    clean = robust_masks.get((0.0, "clean"))
    for (eps, certifier), certified in certified_masks.items():
        if certifier == ANY:
            continue
        certified = np.asarray(certified, bool)
        attacks = [(name, mask) for (e, name), mask in robust_masks.items() if np.isclose(e, eps)]
        if clean is not None:
            attacks.append(("clean", clean))
        for attack, robust in attacks:
            broken = np.flatnonzero(certified & ~np.asarray(robust, bool))
            if broken.size:
                failures.append(dict(eps=float(eps), certifier=certifier, attack=attack,
                                     examples=broken[:20].tolist(), count=int(broken.size)))
    if failures:
        lines = "; ".join(f"eps={f['eps']:g}: {f['count']} examples certified by {f['certifier']} but broken by "
                          f"{f['attack']} (e.g. {f['examples'][:5]})" for f in failures)
        raise SoundnessFailure(f"soundness failure: {lines}", failures)


def evaluate_smoothing(logits_fn, params, x: np.ndarray, y: np.ndarray, certify: Callable, radii: Sequence[float],
                       key: jax.Array, max_images: int = 4096, batch_size: int | None = None):
    """Randomized-smoothing certified accuracy at each L2 radius (correct, not abstaining, radius >= r).

    `certify` comes from `bench.certify.randomized_smoothing`. Examples go through
    in groups sized so that one round holds at most `max_images` noisy images
    (batch_size: that certifier's copies per example per round, for the sizing).
    Returns (results, per_example) like `evaluate_certified`, evaluator "smoothing",
    norm "l2", eps = radius; plus a "seconds_per_example" row.
    """
    n = len(y)
    per_call = max(1, int(max_images) // int(batch_size or 1000))
    predictions, radius = np.full(n, ABSTAIN), np.zeros(n)
    started = time.perf_counter()
    for i, start in enumerate(range(0, n, per_call)):
        s = slice(start, min(start + per_call, n))
        out = certify(logits_fn, params, jnp.asarray(x[s]), jax.random.fold_in(key, i))
        predictions[s], radius[s] = out.prediction, out.radius
    seconds = time.perf_counter() - started
    correct = predictions == np.asarray(y)
    results, per_example = [], {}
    for r in radii:
        mask = correct & (radius >= float(r))
        per_example[(float(r), "smoothing")] = mask
        results.append(records.row("smoothing", "certified_accuracy", mask.mean(), n, norm="l2", eps=r, seconds=seconds))
    results.append(records.row("smoothing", "abstain_rate", np.mean(predictions == ABSTAIN), n, norm="l2",
                               seconds=seconds))
    results.append(records.row("smoothing", "seconds_per_example", seconds / max(n, 1), n, norm="l2",
                               seconds=seconds))
    return results, per_example


def sandwich_table(results: list[dict]):
    """Per eps: clean >= worst-case empirical robust >= certified accuracy (%), from result rows."""
    import pandas as pd

    frame = pd.DataFrame(results)
    clean = frame[(frame.evaluator == "clean") & (frame.metric == "accuracy")].value.mean()
    rows = []
    bounds = frame[frame.metric.isin(["robust_accuracy", "certified_accuracy"]) & (frame.evaluator != "smoothing")]
    for eps in sorted(bounds.eps.unique()):
        at = frame[np.isclose(frame.eps, eps) & (frame.evaluator != "smoothing")]
        row = {"eps": f"{eps:g}", "clean": 100 * clean}
        for _, r in at[at.metric == "robust_accuracy"].iterrows():
            row[r.evaluator] = 100 * r.value
        for _, r in at[at.metric == "certified_accuracy"].iterrows():
            row[f"certified {r.evaluator}" if r.evaluator != ANY else "certified (any)"] = 100 * r.value
        rows.append(row)
    return pd.DataFrame(rows)
