"""Evaluation: clean accuracy and, per epsilon, each attack's robust accuracy, the per-example worst case, and
sanity checks for gradient masking.

An example counts as robust at eps only if it is classified correctly clean and
survives every attack of the suite (as AutoAttack does). Every adversarial batch
is checked against its threat model; a violation raises, it never becomes a number.

Two modes:
- independent (`cumulative=False`, the default of `evaluate_evasion` and of the
  fgsm_pgd/pgd suites): every attack runs on every example, so each attack's own
  robust accuracy is recorded (metric "robust_accuracy") next to the worst case.
- cumulative (`cumulative=True`, the autoattack suites): attacks run in suite
  order, each only on the examples still robust, as AutoAttack does. Records give
  the robust accuracy after each attack (metric "cumulative_robust_accuracy") and
  its time, then the worst case. Same worst case, a fraction of the time.

Sanity checks (Carlini et al. 2019, "On Evaluating Adversarial Robustness";
AutoAttack's own checks) run on the first `sanity_examples` examples and each
adds a row evaluator="sanity", metric=<check>, value 1.0 when tripped (else 0.0),
with a human-readable `reason` (the measurement and its tolerance, see TOLERANCE):
- zero_gradients: the input gradient of the loss is zero or non-finite for many examples;
- nondeterministic: the same input gives different logits (and no attack averages over draws, EOT);
- probability_outputs: the model returns probabilities (rows in [0, 1] summing to 1), not logits;
- black_box_beats_white_box: a gradient-free attack breaks examples every gradient attack failed on;
- unbounded_attack_fails: PGD at an epsilon that can reach any image leaves examples robust;
- eps_not_monotone: robust accuracy rises with epsilon;
- not_converged: attacks with twice the steps and a fresh restart break more examples.
"""

from __future__ import annotations

import inspect
import io
import math
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from bench.attacks.pgd import pgd
from bench.attacks.threat import Norm, apply_logits, check_eps, check_threat_model, cross_entropy, parse_norm
from bench import sharding
from bench.errors import BenchError
from bench.records import atomic_write_bytes

# What each sanity check tolerates before it trips (shares of the checked examples, or absolute accuracy).
TOLERANCE = {
    "zero_gradients": 0.10,             # share of examples whose input gradient is all zero or non-finite
    "probability_outputs": 0.90,        # trips when at least this share of rows look like probabilities
    "black_box_beats_white_box": 0.01,  # share broken only by a gradient-free attack (and at least 2 examples)
    "unbounded_attack_fails": 0.05,     # robust accuracy left at an epsilon that reaches any image
    "eps_not_monotone": 0.01,           # rise in robust accuracy from one epsilon to a larger one
    "not_converged": 0.02,              # share newly broken by twice the steps and a fresh restart
}
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


def _bucket(m: int, batch_size: int) -> int:
    """Pad a batch of m to a power of two (at most batch_size) so subsets of many sizes share few compilations."""
    return min(batch_size, 1 << max(m - 1, 0).bit_length())


def predict(logits_fn, params, x: np.ndarray, batch_size: int = 1000, key: jax.Array | None = None) -> np.ndarray:
    """Predicted labels, computed in batches (a stochastic model draws with `key`, default a fixed one)."""
    key = jax.random.key(_PREDICT_KEY) if key is None else key
    return np.concatenate([np.asarray(_predict_batch(logits_fn, params, x[s], jax.random.fold_in(key, b)))
                           for b, s in enumerate(_batches(len(x), batch_size))])


def accuracy(logits_fn, params, x, y, batch_size: int = 1000) -> float:
    """Fraction of examples classified correctly."""
    return float(np.mean(predict(logits_fn, params, x, batch_size) == y))


def build_suite(attacks: Mapping[str, Callable], norm: str, eps_list: Sequence[float]) -> dict:
    """Instantiate every attack factory at every epsilon: {(eps, name): attack}. Validates before any work.

    Insertion order is suite order (eps, then attacks as listed), which the cumulative mode follows.
    Each attack remembers its factory (`attack.factory`) so sanity checks can build a stronger one.
    """
    norm = parse_norm(norm)
    if len(eps_list) == 0:
        raise BenchError("suite.eps is empty; give at least one epsilon, e.g. suite.eps=[0.1,0.3]")
    suite = {}
    for eps in eps_list:
        eps = check_eps(norm, eps)
        for name, factory in attacks.items():
            attack = factory(norm=norm.value, eps=eps)
            try:
                attack.factory = factory
            except AttributeError:  # a callable without attributes: no stronger variant for the convergence check
                pass
            suite[(eps, name)] = attack
    return suite


def _attack_examples(attack, logits_fn, params, x, y, idx, norm, eps, key, batch_size, pad, cache: Path | None = None):
    """Attack x[idx]; a boolean per index: still classified correctly.

    With a `cache` file, the result is saved after every batch and a rerun
    (same suite, same parameters, e.g. after a kill) skips the batches done.
    """
    still = np.zeros(len(idx), bool)
    done = 0
    if cache is not None and cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as saved:
                if np.array_equal(saved["idx"], idx):
                    still, done = saved["still"].copy(), int(saved["done"])
        except (OSError, ValueError, KeyError):  # a damaged cache is recomputed, never trusted
            done = 0
    for b, s in enumerate(_batches(len(idx), batch_size)):
        if b < done:
            continue
        sel = idx[s]
        xb, yb = x[sel], y[sel]
        m = len(sel)
        size = _bucket(m, batch_size) if pad else m
        if size > m:  # repeat the first example; the padding is discarded
            xb = np.concatenate([xb, np.repeat(xb[:1], size - m, axis=0)])
            yb = np.concatenate([yb, np.repeat(yb[:1], size - m, axis=0)])
        k = jax.random.fold_in(key, b)
        x_dev, y_dev = sharding.shard_batch(xb, yb)
        x_adv = attack(logits_fn, params, x_dev, y_dev, k)
        check_threat_model(xb, x_adv, norm, eps)
        pred = np.asarray(_predict_batch(logits_fn, params, x_adv, jax.random.fold_in(k, _PREDICT_KEY)))
        still[s] = (pred == yb)[:m]
        if cache is not None:
            buffer = io.BytesIO()
            np.savez(buffer, idx=idx, still=still, done=b + 1)
            atomic_write_bytes(cache, buffer.getvalue())
    return still


def evaluate_evasion(logits_fn, params, x: np.ndarray, y: np.ndarray, suite: Mapping[tuple[float, str], Callable],
                     norm: str, key: jax.Array, batch_size: int = 1000, progress: bool = True, *,
                     cumulative: bool = False, sanity: bool = True, sanity_examples: int = 200,
                     cache_dir: str | Path | None = None):
    """Run every attack of `suite` on (x, y), then the sanity checks.

    Args:
      suite: {(eps, name): attack} from `build_suite`; order matters in cumulative mode.
      cumulative: attacks run in order on the examples still robust (AutoAttack); else each on all examples.
      sanity: run the sanity checks (module docstring) on the first `sanity_examples` examples.
      cache_dir: keep per-example results of every (epsilon, attack) there as batches finish; a rerun with
        the same suite and parameters skips what is done (the caller keys the folder on both).

    Returns (results, per_example): results are flat dicts (evaluator, norm, eps,
    metric, value, n, seconds[, reason]); per_example maps (eps, evaluator) to a
    boolean array of examples still classified correctly ("clean" and
    "worst_case" included; in cumulative mode, robust after that attack and all before it).
    """
    norm = parse_norm(norm)
    n = len(y)
    t0 = time.perf_counter()
    clean = predict(logits_fn, params, x, batch_size) == y
    results = [dict(evaluator="clean", norm="none", eps=0.0, metric="accuracy", value=float(clean.mean()), n=n,
                    seconds=time.perf_counter() - t0)]
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
            still = _attack_examples(attack, logits_fn, params, x, y, idx, norm, eps,
                                     jax.random.fold_in(jax.random.fold_in(key, i), j), batch_size, pad=cumulative,
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
                results.append(dict(evaluator=name, norm=norm.value, eps=eps, metric="cumulative_robust_accuracy",
                                    value=float(worst.mean()), n=n, seconds=seconds))
            else:
                per_example[(eps, name)] = robust
                results.append(dict(evaluator=name, norm=norm.value, eps=eps, metric="robust_accuracy",
                                    value=float(robust.mean()), n=n, seconds=seconds))
            needs = getattr(attack, "min_classes", 0)
            if num_classes < needs:
                results.append(dict(evaluator=name, norm=norm.value, eps=eps, metric="fallback_ce", value=1.0, n=n,
                                    seconds=0.0, reason=f"{name} needs {needs} classes for its DLR loss, the model "
                                                        f"has {num_classes}: it ran with cross-entropy"))
            bar.update(1)
        per_example[(eps, "worst_case")] = worst
        results.append(dict(evaluator="worst_case", norm=norm.value, eps=eps, metric="robust_accuracy",
                            value=float(worst.mean()), n=n, seconds=0.0))
    bar.close()
    if sanity and n:
        results += sanity_checks(logits_fn, params, x, y, suite, norm, jax.random.fold_in(key, 0x5A17), per_example,
                                 broken_by, ran_on, batch_size=batch_size, n_examples=sanity_examples)
    return results, per_example


def _flag(name, tripped, reason, n, seconds, norm="none", eps=0.0):
    return dict(evaluator="sanity", norm=norm, eps=float(eps), metric=name, value=float(bool(tripped)), n=int(n),
                seconds=seconds, reason=reason)


def _verdict(tripped: bool, measurement: str, advice: str) -> tuple[bool, str]:
    return bool(tripped), measurement + (f": {advice}" if tripped else "")


def check_gradients(logits_fn, params, x, y, key) -> tuple[bool, str]:
    """zero_gradients: the share of examples whose input gradient is all zero or non-finite."""
    grads = np.asarray(_input_gradients(logits_fn, params, jnp.asarray(x), jnp.asarray(y), key))
    flat = grads.reshape(len(grads), -1)
    bad = ~np.all(np.isfinite(flat), axis=1) | np.all(flat == 0, axis=1)
    share = float(bad.mean())
    tol = TOLERANCE["zero_gradients"]
    return _verdict(share > tol, f"{share:.1%} of examples have an all-zero or non-finite input gradient "
                    f"(tolerance {tol:.0%})", "gradient masking, e.g. a rounding or saturating layer; trust "
                    "gradient-free and transfer attacks over APGD here")


def check_determinism(logits_fn, params, x, key, uses_eot: bool) -> tuple[bool, str]:
    """nondeterministic: logits of the same input, twice (with different draws for a stochastic model)."""
    xj = jnp.asarray(x)
    first = np.asarray(_logits_batch(logits_fn, params, xj, jax.random.fold_in(key, 1)))
    second = np.asarray(_logits_batch(logits_fn, params, xj, jax.random.fold_in(key, 2)))
    diff = float(np.max(np.abs(first - second))) if first.size else 0.0
    differs = not diff <= 1e-5 * (1.0 + float(np.max(np.abs(first)) if first.size else 0.0))
    if not differs:
        return False, "the same input gives the same logits"
    if uses_eot:
        return False, f"outputs vary (max difference {diff:.3g}); the suite averages gradients over draws (EOT)"
    return True, (f"the same input gives logits differing by up to {diff:.3g}, and no attack of the suite uses EOT: "
                  "a randomised model; evaluate it with suite=autoattack_rand")


def check_probabilities(logits_fn, params, x, key) -> tuple[bool, str]:
    """probability_outputs: rows in [0, 1] summing to 1 are probabilities, which flatten cross-entropy gradients."""
    out = np.asarray(_logits_batch(logits_fn, params, jnp.asarray(x), key), np.float64)
    rows = np.all((out >= -1e-6) & (out <= 1 + 1e-6), axis=1) & (np.abs(out.sum(axis=1) - 1) < 1e-3)
    share = float(rows.mean()) if len(rows) else 0.0
    tol = TOLERANCE["probability_outputs"]
    return _verdict(share >= tol, f"{share:.0%} of output rows are probability vectors (trips at {tol:.0%})",
                    "the model should return logits; softmax outputs saturate and hide gradients from attacks")


def check_black_box(broken_by, ran_on, suite, eps, n_checked) -> tuple[bool | None, str]:
    """black_box_beats_white_box at one eps; None when the suite lacks either kind of attack."""
    names = [name for (e, name) in suite if e == eps]
    free = [nm for nm in names if getattr(suite[(eps, nm)], "gradient_free", False)]
    white = [nm for nm in names if nm not in free]
    if not free or not white:
        return None, "not applicable: the suite needs a gradient-free and a gradient-based attack"
    survived_white = np.logical_and.reduce([ran_on[(eps, nm)] & ~broken_by[(eps, nm)] for nm in white])
    broken_free = np.logical_or.reduce([broken_by[(eps, nm)] for nm in free])
    count = int(np.sum(survived_white & broken_free))
    n = len(survived_white)
    tol = TOLERANCE["black_box_beats_white_box"]
    tripped = count >= 2 and count > tol * n
    return _verdict(tripped, f"{'+'.join(free)} broke {count} of {n} examples that {'+'.join(white)} failed on "
                    f"(tolerance {tol:.0%})", "the gradients mislead the white-box attacks")


def check_unbounded(logits_fn, params, x, y, norm: Norm, key, batch_size) -> tuple[bool, str]:
    """unbounded_attack_fails: PGD (margin loss, from x, 100 steps) at an epsilon that can reach any image."""
    if len(y) == 0:
        return False, "no correctly classified examples to check"
    eps = 1.0 if norm == Norm.LINF else math.sqrt(float(np.prod(x.shape[1:])))
    attack = pgd(norm=norm.value, eps=eps, steps=100, random_start=False, loss="margin")
    still = _attack_examples(attack, logits_fn, params, x, y, np.arange(len(y)), norm, eps, key, batch_size, pad=True)
    acc = float(still.mean())
    tol = TOLERANCE["unbounded_attack_fails"]
    return _verdict(acc > tol, f"PGD-100 at {norm.value} eps={eps:g}, where any image is reachable, leaves "
                    f"{acc:.1%} of {len(y)} examples robust (tolerance {tol:.0%})", "its gradients lead nowhere")


def _stronger(attack, norm: Norm, eps: float):
    """The same attack with twice the steps when its factory has a `steps` parameter, else the attack itself."""
    factory = getattr(attack, "factory", None)
    if factory is None:
        return attack, "a fresh restart"
    steps = inspect.signature(factory).parameters.get("steps")
    if steps is None or not isinstance(steps.default, int):
        return attack, "a fresh restart"
    return factory(norm=norm.value, eps=eps, steps=2 * steps.default), f"{2 * steps.default} steps and a fresh restart"


def check_convergence(logits_fn, params, x, y, suite, eps, norm: Norm, robust, key, batch_size):
    """not_converged at one eps: rerun each gradient attack stronger on the examples the suite left robust."""
    idx = np.flatnonzero(robust)
    if len(idx) == 0:
        return False, "no robust examples left to check"
    names = [name for (e, name) in suite if e == eps and not getattr(suite[(e, name)], "gradient_free", False)]
    if not names:
        return False, "not applicable: no gradient-based attack in the suite"
    remaining = idx
    how = []
    for j, name in enumerate(names):
        stronger, what = _stronger(suite[(eps, name)], norm, eps)
        how.append(f"{name} with {what}")
        still = _attack_examples(stronger, logits_fn, params, x, y, remaining, norm, eps,
                                 jax.random.fold_in(key, j), batch_size, pad=True)
        remaining = remaining[still]
        if len(remaining) == 0:
            break
    newly = len(idx) - len(remaining)
    share = newly / len(robust)
    tol = TOLERANCE["not_converged"]
    return _verdict(share > tol, f"{'; '.join(how)} broke {newly} more of {len(robust)} examples ({share:.1%}, "
                    f"tolerance {tol:.0%})", "the suite's attacks had not converged; add steps or restarts")


def sanity_checks(logits_fn, params, x, y, suite, norm, key, per_example, broken_by, ran_on, *,
                  batch_size: int = 1000, n_examples: int = 200) -> list[dict]:
    """The sanity checks of the module docstring, as sanity records (value 1.0 = tripped, with a reason)."""
    norm = parse_norm(norm)
    m = min(len(y), int(n_examples))
    xs, ys = x[:m], y[:m]
    keys = jax.random.split(key, 8)
    rows = []

    def timed(name, fn, *args, norm_label="none", eps=0.0):
        t0 = time.perf_counter()
        tripped, reason = fn(*args)
        if tripped is not None:
            rows.append(_flag(name, tripped, reason, m, time.perf_counter() - t0, norm_label, eps))

    uses_eot = any(getattr(a, "eot_samples", 1) > 1 for a in suite.values())
    timed("zero_gradients", check_gradients, logits_fn, params, xs, ys, keys[0])
    timed("nondeterministic", check_determinism, logits_fn, params, xs, keys[1], uses_eot)
    timed("probability_outputs", check_probabilities, logits_fn, params, xs, keys[2])
    clean = per_example[(0.0, "clean")][:m]
    timed("unbounded_attack_fails", check_unbounded, logits_fn, params, xs[clean], ys[clean], norm, keys[3],
          batch_size, norm_label=norm.value, eps=1.0 if norm == Norm.LINF else math.sqrt(float(np.prod(x.shape[1:]))))

    eps_values = sorted({eps for eps, _ in suite})
    worst = [float(per_example[(eps, "worst_case")].mean()) for eps in eps_values]
    rises = [(a, b, wa, wb) for a, b, wa, wb in zip(eps_values, eps_values[1:], worst, worst[1:])
             if wb > wa + TOLERANCE["eps_not_monotone"]]
    reason = (f"robust accuracy rises from {rises[0][2]:.1%} at eps={rises[0][0]:g} to {rises[0][3]:.1%} at "
              f"eps={rises[0][1]:g}: the attack is failing, not the model succeeding") if rises else (
              "robust accuracy does not rise with epsilon")
    rows.append(_flag("eps_not_monotone", bool(rises), reason, len(y), 0.0, norm.value, max(eps_values)))

    sub_broken = {k: v[:m] for k, v in broken_by.items()}
    sub_ran = {k: v[:m] for k, v in ran_on.items()}
    for i, eps in enumerate(eps_values):
        timed("black_box_beats_white_box", check_black_box, sub_broken, sub_ran, suite, eps, m,
              norm_label=norm.value, eps=eps)
        timed("not_converged", check_convergence, logits_fn, params, xs, ys, suite, eps, norm,
              per_example[(eps, "worst_case")][:m], jax.random.fold_in(keys[4], i), batch_size,
              norm_label=norm.value, eps=eps)
    return rows
