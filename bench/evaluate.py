"""Evaluation: clean accuracy and, per epsilon, each attack's robust accuracy and the per-example worst case.

An example counts as robust at eps only if it is classified correctly clean and
survives every attack of the suite (as AutoAttack does). Every adversarial batch
is checked against its threat model; a violation raises, it never becomes a number.

Two modes:
- independent (`cumulative=False`, the default of `run_suite` and of the
  fgsm_pgd/pgd suites): every attack runs on every example, so each attack's own
  robust accuracy is recorded (metric "robust_accuracy") next to the worst case.
- cumulative (`cumulative=True`, the autoattack suites): attacks run in suite
  order, each only on the examples still robust, as AutoAttack does. Records give
  the robust accuracy after each attack (metric "cumulative_robust_accuracy") and
  its time, then the worst case. Same worst case, a fraction of the time.

The gradient-masking sanity checks that read these results are in bench/sanity.py.
`attack_examples` is the seam for transfer: it crafts on one (logits_fn, params)
and scores on another (`score_on`), with the threat-model check kept.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from bench import records, sharding
from bench.contracts import capabilities
from bench.threat import apply_logits, check_eps, check_threat_model, cross_entropy, parse_norm
from bench.errors import BenchError
from bench.records import atomic_write_bytes

_PREDICT_KEY = 0x5EED  # stochastic models are predicted with fixed draws, so a run stays reproducible


@partial(jax.jit, static_argnames=("logits_fn",))
def _logits_batch(logits_fn, params, x, key):
    return apply_logits(logits_fn, params, x, key)


@partial(jax.jit, static_argnames=("logits_fn",))
def _predict_batch(logits_fn, params, x, key):
    return jnp.argmax(apply_logits(logits_fn, params, x, key), axis=-1)


@partial(jax.jit, static_argnames=("logits_fn",))
def _input_gradients(logits_fn, params, x, y, key):
    return jax.grad(lambda v: cross_entropy(apply_logits(logits_fn, params, v, key), y).sum())(x)


def _batches(n: int, batch_size: int):
    if int(batch_size) < 1:
        raise BenchError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def _even_batch(m: int, batch_size: int, multiple: int = 4) -> int:
    """The one batch size for m examples in ceil(m / batch_size) batches of near-equal size (rounded up to a
    multiple of `multiple`, at most batch_size): every batch, the last one padded, has that shape, so an attack
    compiles once for the subset (a full-size batch plus a smaller last one compiled twice: about 2-3 s per
    attack on the CPU) and pads at most a few examples per batch."""
    if m <= 0:
        return 1
    per = -(-m // -(-m // batch_size))
    return min(batch_size, -(-per // multiple) * multiple)


def predict(logits_fn, params, x: np.ndarray, batch_size: int = 1000, key: jax.Array | None = None) -> np.ndarray:
    """Predicted labels, computed in batches (a stochastic model draws with `key`, default a fixed one)."""
    key = jax.random.key(_PREDICT_KEY) if key is None else key
    return np.concatenate([np.asarray(_predict_batch(logits_fn, params, x[s], jax.random.fold_in(key, b)))
                           for b, s in enumerate(_batches(len(x), batch_size))])


def logits(logits_fn, params, x: np.ndarray, batch_size: int = 1000, key: jax.Array | None = None) -> np.ndarray:
    """The model's logits, computed in batches (a stochastic model draws with `key`, default a fixed one)."""
    key = jax.random.key(_PREDICT_KEY) if key is None else key
    return np.concatenate([np.asarray(_logits_batch(logits_fn, params, x[s], jax.random.fold_in(key, b)))
                           for b, s in enumerate(_batches(len(x), batch_size))])


def accuracy(logits_fn, params, x, y, batch_size: int = 1000) -> float:
    """Fraction of examples classified correctly."""
    return float(np.mean(predict(logits_fn, params, x, batch_size) == y))


def build_suite(attacks: Mapping[str, Callable], norm: str, eps_list: Sequence[float]) -> dict:
    """Instantiate every attack factory at every epsilon: {(eps, name): attack}. Validates before any work.

    Insertion order is suite order (eps, then attacks as listed), which the cumulative mode follows.
    """
    norm = parse_norm(norm)
    if len(eps_list) == 0:
        raise BenchError("suite.eps is empty; give at least one epsilon, e.g. suite.eps=[0.1,0.3]")
    suite = {}
    for eps in eps_list:
        eps = check_eps(norm, eps)
        for name, factory in attacks.items():
            try:
                suite[(eps, name)] = factory(norm=norm.value, eps=eps)
            except TypeError as err:  # a configured key the factory does not take
                raise BenchError(f"suite.attacks.{name}: {err}; check its keys against the attack's parameters "
                                 f"(bench/attacks/)") from None
    return suite


def attack_examples(attack, logits_fn, params, x, y, idx, norm, eps, key, batch_size: int = 1000, *,
                    pad: bool = False, cache: Path | None = None, score_on: tuple[Callable, object] | None = None):
    """Attack x[idx] crafted on (logits_fn, params); a boolean per index: still classified correctly.

    Args:
      score_on: (logits_fn, params) of the model the adversarial examples are scored on (transfer, ensembles);
        default the model they are crafted on (white-box). The threat-model check applies either way.
      pad: split idx into near-equal batches of one shape (`_even_batch`), the last padded: one compilation per
        subset, little padding (the cumulative suites, where each attack sees a subset of its own size).
      cache: a file the result is saved to after every batch; a rerun (same suite, same parameters, e.g.
        after a kill) skips the batches done.
    """
    target_fn, target_params = (logits_fn, params) if score_on is None else score_on
    still = np.zeros(len(idx), bool)
    done = 0
    batch = _even_batch(len(idx), batch_size) if pad else batch_size
    if cache is not None and cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as saved:
                # `done` counts batches: trusted only for the same examples in batches of the same size
                if np.array_equal(saved["idx"], idx) and int(saved["batch"]) == batch:
                    still, done = saved["still"].copy(), int(saved["done"])
        except (OSError, ValueError, KeyError):  # a damaged or older cache is recomputed, never trusted
            done = 0
    for b, s in enumerate(_batches(len(idx), batch)):
        if b < done:
            continue
        sel = idx[s]
        xb, yb = x[sel], y[sel]
        m = len(sel)
        size = batch if pad else m
        if size > m:  # repeat the first example; the padding is discarded
            xb = np.concatenate([xb, np.repeat(xb[:1], size - m, axis=0)])
            yb = np.concatenate([yb, np.repeat(yb[:1], size - m, axis=0)])
        k = jax.random.fold_in(key, b)
        x_dev, y_dev = sharding.shard_batch(xb, yb)
        x_adv = attack(logits_fn, params, x_dev, y_dev, k)
        check_threat_model(xb, x_adv, norm, eps)
        pred = np.asarray(_predict_batch(target_fn, target_params, x_adv, jax.random.fold_in(k, _PREDICT_KEY)))
        still[s] = (pred == yb)[:m]
        if cache is not None:
            buffer = io.BytesIO()
            np.savez(buffer, idx=idx, still=still, done=b + 1, batch=batch)
            atomic_write_bytes(cache, buffer.getvalue())
    return still


def craft(attack, logits_fn, params, x: np.ndarray, y: np.ndarray, norm, eps, key, batch_size: int = 1000,
          progress: bool = False, desc: str = "craft") -> np.ndarray:
    """Adversarial examples for all of x crafted on (logits_fn, params), batch by batch, each batch checked against
    the threat model; score them on any number of models afterwards (transfer, ensembles, the physical world).
    `y` is what the attack takes: the true labels, or target classes for a targeted attack."""
    out = np.empty_like(x)
    for b, s in enumerate(tqdm(list(_batches(len(x), batch_size)), desc=desc, disable=not progress, leave=False)):
        x_dev, y_dev = sharding.shard_batch(x[s], y[s])
        x_adv = attack(logits_fn, params, x_dev, y_dev, jax.random.fold_in(key, b))
        check_threat_model(x[s], x_adv, norm, eps)
        out[s] = np.asarray(x_adv)
    return out


class SuiteOutcome(NamedTuple):
    """What `run_suite` found: result rows and per-example outcomes (what the sanity checks read).

    rows: flat dicts (evaluator, norm, eps, metric, value, n, seconds[, reason]).
    per_example: (eps, evaluator) -> boolean array, still classified correctly ("clean" and "worst_case"
      included; in cumulative mode, robust after that attack and every one before it).
    broken_by: (eps, attack) -> boolean array, the attack ran on the example and broke it.
    ran_on: (eps, attack) -> boolean array, the attack ran on the (clean-correct) example.
    """

    rows: list[dict]
    per_example: dict
    broken_by: dict
    ran_on: dict


def run_suite(logits_fn, params, x: np.ndarray, y: np.ndarray, suite: Mapping[tuple[float, str], Callable],
              norm: str, key: jax.Array, batch_size: int = 1000, progress: bool = True, *,
              cumulative: bool = False, cache_dir: str | Path | None = None) -> SuiteOutcome:
    """Run every attack of `suite` on (x, y): clean accuracy, each attack's robust accuracy, the worst case.

    Args:
      suite: {(eps, name): attack} from `build_suite`; order matters in cumulative mode.
      cumulative: attacks run in order on the examples still robust (AutoAttack); else each on all examples.
      cache_dir: keep per-example results of every (epsilon, attack) there as batches finish; a rerun with
        the same suite and parameters skips what is done (the caller keys the folder on both).
    """
    norm = parse_norm(norm)
    n = len(y)
    t0 = time.perf_counter()
    clean = predict(logits_fn, params, x, batch_size) == y
    results = [records.row("clean", "accuracy", clean.mean(), n, seconds=time.perf_counter() - t0)]
    per_example = {(0.0, "clean"): clean}
    num_classes = int(jax.eval_shape(lambda v: apply_logits(logits_fn, params, v, jax.random.key(0)),
                                     jnp.asarray(x[:1])).shape[-1]) if n else 0
    eps_values = sorted({eps for eps, _ in suite})
    attacks_by_eps = {eps: [(name, a) for (e, name), a in suite.items() if e == eps] for eps in eps_values}
    broken_by = {}  # (eps, name) -> boolean: the attack ran on the example and broke it
    ran_on = {}
    bar = tqdm(total=len(suite), desc="attacks", disable=None if progress else True, leave=False)
    for i, eps in enumerate(eps_values):
        worst = clean.copy()
        for j, (name, attack) in enumerate(attacks_by_eps[eps]):
            bar.set_postfix_str(f"{name} eps={eps:g}")
            t0 = time.perf_counter()
            idx = np.flatnonzero(worst) if cumulative else np.arange(n)
            cache = Path(cache_dir) / f"{i}-{j}-{name}.npz" if cache_dir is not None else None
            still = attack_examples(attack, logits_fn, params, x, y, idx, norm, eps,
                                    jax.random.fold_in(jax.random.fold_in(key, i), j),
                                    batch_size * capabilities(attack).batch_scale, pad=cumulative,
                                    cache=cache)
            robust = np.zeros(n, bool)
            robust[idx] = still
            robust &= clean  # a misclassified clean example is not robust
            ran_on[(eps, name)] = np.isin(np.arange(n), idx) & clean
            broken_by[(eps, name)] = ran_on[(eps, name)] & ~robust
            worst &= robust
            seconds = time.perf_counter() - t0
            if cumulative:
                per_example[(eps, name)] = worst.copy()
                results.append(records.row(name, "cumulative_robust_accuracy", worst.mean(), n, norm=norm, eps=eps,
                                           seconds=seconds))
            else:
                per_example[(eps, name)] = robust
                results.append(records.row(name, "robust_accuracy", robust.mean(), n, norm=norm, eps=eps,
                                           seconds=seconds))
            needs = capabilities(attack).min_classes
            if num_classes < needs:
                results.append(records.row(name, "fallback_ce", 1.0, n, norm=norm, eps=eps,
                                           reason=f"{name} needs {needs} classes for its DLR loss, the model "
                                                  f"has {num_classes}: it ran with cross-entropy"))
            bar.update(1)
        per_example[(eps, "worst_case")] = worst
        results.append(records.row("worst_case", "robust_accuracy", worst.mean(), n, norm=norm, eps=eps))
    bar.close()
    return SuiteOutcome(results, per_example, broken_by, ran_on)
