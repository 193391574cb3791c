"""Sanity checks for gradient masking, run by the evasion scenario on what `bench.evaluate.run_suite` found.

Sanity checks (Carlini et al. 2019, "On Evaluating Adversarial Robustness";
AutoAttack's own checks) judge every evaluated example where they read the
suite's results, and the first `sanity_examples` where they attack again (see
`sanity_checks`); each adds a row evaluator="sanity", metric=<check>, value 1.0 when tripped (else 0.0),
with a human-readable `reason` (the measurement and its tolerance, see TOLERANCE):
- zero_gradients: the input gradient of the loss is zero or non-finite for many examples;
- nondeterministic: the same input gives different logits (and no attack averages over draws, EOT);
- probability_outputs: the model returns probabilities (rows in [0, 1] summing to 1), not logits;
- black_box_beats_white_box: a gradient-free attack breaks examples every gradient attack failed on;
- unbounded_attack_fails: PGD at an epsilon that can reach any image leaves examples robust;
- eps_not_monotone: robust accuracy rises with epsilon;
- not_converged: attacks with twice the steps and a fresh restart break more examples;
- transfer_beats_white_box (`transfer_check`, when the evasion scenario trains a surrogate): the suite's
  gradient attacks crafted on an independently trained surrogate and scored on the evaluated model break
  examples that every white-box attack left robust (RobustBench flagged an entry this way: 71.28% under
  AutoAttack, 64.20% under transfer APGD).
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from bench.attacks.pgd import pgd
from bench import records
from bench.contracts import capabilities
from bench.evaluate import SuiteOutcome, _input_gradients, _logits_batch, attack_examples
from bench.threat import Norm, parse_norm

# What each sanity check tolerates before it trips (shares of the checked examples, or absolute accuracy).
TOLERANCE = {
    "zero_gradients": 0.10,             # share of examples whose input gradient is all zero or non-finite
    "probability_outputs": 0.90,        # trips when at least this share of rows look like probabilities
    "black_box_beats_white_box": 0.01,  # share broken only by a gradient-free attack (and at least 2 examples)
    "unbounded_attack_fails": 0.05,     # robust accuracy left at an epsilon that reaches any image
    "eps_not_monotone": 0.01,           # rise in robust accuracy from one epsilon to a larger one
    "not_converged": 0.02,              # share newly broken by twice the steps and a fresh restart
    "transfer_beats_white_box": 0.01,   # share broken only by transfer from a surrogate (and at least 2 examples)
}


def _flag(name, tripped, reason, n, seconds, norm="none", eps=0.0):
    return records.row("sanity", name, float(bool(tripped)), n, norm=norm, eps=eps, seconds=seconds, reason=reason)


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
    free = [nm for nm in names if capabilities(suite[(eps, nm)]).gradient_free]
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
    still = attack_examples(attack, logits_fn, params, x, y, np.arange(len(y)), norm, eps, key, batch_size, pad=True)
    acc = float(still.mean())
    tol = TOLERANCE["unbounded_attack_fails"]
    return _verdict(acc > tol, f"PGD-100 at {norm.value} eps={eps:g}, where any image is reachable, leaves "
                    f"{acc:.1%} of {len(y)} examples robust (tolerance {tol:.0%})", "its gradients lead nowhere")


def _stronger(attack):
    """The attack's own stronger version (`Capabilities.stronger`: twice the steps), else the attack itself."""
    caps = capabilities(attack)
    if caps.stronger is None:
        return attack, "a fresh restart"
    return caps.stronger(), f"{caps.stronger_label} and a fresh restart"


def check_convergence(logits_fn, params, x, y, suite, eps, norm: Norm, robust, key, batch_size):
    """not_converged at one eps: rerun each gradient attack stronger on the examples the suite left robust."""
    idx = np.flatnonzero(robust)
    if len(idx) == 0:
        return False, "no robust examples left to check"
    names = [name for (e, name) in suite if e == eps and not capabilities(suite[(e, name)]).gradient_free]
    if not names:
        return False, "not applicable: no gradient-based attack in the suite"
    remaining = idx
    how = []
    for j, name in enumerate(names):
        stronger, what = _stronger(suite[(eps, name)])
        how.append(f"{name} with {what}")
        still = attack_examples(stronger, logits_fn, params, x, y, remaining, norm, eps,
                                jax.random.fold_in(key, j), batch_size, pad=True)
        remaining = remaining[still]
        if len(remaining) == 0:
            break
    newly = len(idx) - len(remaining)
    share = newly / len(robust)
    tol = TOLERANCE["not_converged"]
    return _verdict(share > tol, f"{'; '.join(how)} broke {newly} more of {len(robust)} examples ({share:.1%}, "
                    f"tolerance {tol:.0%})", "the suite's attacks had not converged; add steps or restarts")


def sanity_checks(logits_fn, params, x, y, suite, norm, key, outcome: SuiteOutcome, *,
                  batch_size: int = 1000, n_examples: int = 200, progress: bool = False) -> list[dict]:
    """The sanity checks of the module docstring, as sanity records (value 1.0 = tripped, with a reason).

    `outcome` is what `bench.evaluate.run_suite` returned for the same (x, y, suite); no examples: no rows.
    What they judge: black_box_beats_white_box and eps_not_monotone read the suite's own per-example results,
    so they cover every evaluated example; the gradient, determinism and probability checks run on up to
    max(n_examples, 1000) examples; the two that attack again (unbounded_attack_fails, not_converged) on the
    first `n_examples`. Each row's n and reason say how many examples it judged.
    """
    norm = parse_norm(norm)
    if len(y) == 0:
        return []
    per_example, broken_by, ran_on = outcome.per_example, outcome.broken_by, outcome.ran_on
    n = len(y)
    m = min(n, int(n_examples))
    cheap = min(n, max(m, 1000))
    xs, ys, xc, yc = x[:m], y[:m], x[:cheap], y[:cheap]
    sample = f" (on the first {m} of {n} evaluated examples)" if m < n else ""
    keys = jax.random.split(key, 8)
    eps_values = sorted({eps for eps, _ in suite})
    rows = []
    bar = tqdm(total=4 + 2 * len(eps_values), desc="sanity checks", disable=None if progress else True, leave=False)

    def timed(name, fn, *args, norm_label="none", eps=0.0, judged=m, note=""):
        bar.set_postfix_str(name)
        t0 = time.perf_counter()
        tripped, reason = fn(*args)
        if tripped is not None:
            rows.append(_flag(name, tripped, reason + note, judged, time.perf_counter() - t0, norm_label, eps))
        bar.update(1)

    uses_eot = any(capabilities(a).eot_samples > 1 for a in suite.values())
    timed("zero_gradients", check_gradients, logits_fn, params, xc, yc, keys[0], judged=cheap)
    timed("nondeterministic", check_determinism, logits_fn, params, xc, keys[1], uses_eot, judged=cheap)
    timed("probability_outputs", check_probabilities, logits_fn, params, xc, keys[2], judged=cheap)
    clean = per_example[(0.0, "clean")][:m]
    timed("unbounded_attack_fails", check_unbounded, logits_fn, params, xs[clean], ys[clean], norm, keys[3],
          batch_size, norm_label=norm.value, eps=1.0 if norm == Norm.LINF else math.sqrt(float(np.prod(x.shape[1:]))),
          note=sample)

    worst = [float(per_example[(eps, "worst_case")].mean()) for eps in eps_values]
    rises = [(a, b, wa, wb) for a, b, wa, wb in zip(eps_values, eps_values[1:], worst, worst[1:])
             if wb > wa + TOLERANCE["eps_not_monotone"]]
    reason = (f"robust accuracy rises from {rises[0][2]:.1%} at eps={rises[0][0]:g} to {rises[0][3]:.1%} at "
              f"eps={rises[0][1]:g}: the attack is failing, not the model succeeding") if rises else (
              "robust accuracy does not rise with epsilon")
    rows.append(_flag("eps_not_monotone", bool(rises), reason, len(y), 0.0, norm.value, max(eps_values)))

    bar.update(1)
    for i, eps in enumerate(eps_values):
        timed("black_box_beats_white_box", check_black_box, broken_by, ran_on, suite, eps, n,
              norm_label=norm.value, eps=eps, judged=n)
        timed("not_converged", check_convergence, logits_fn, params, xs, ys, suite, eps, norm,
              per_example[(eps, "worst_case")][:m], jax.random.fold_in(keys[4], i), batch_size,
              norm_label=norm.value, eps=eps, note=sample)
    bar.close()
    return rows


def transfer_check(logits_fn, params, x, y, suite, norm, key, outcome: SuiteOutcome, surrogate, *,
                   batch_size: int = 1000, progress: bool = False) -> list[dict]:
    """transfer_beats_white_box at every eps, over every evaluated example, plus the robust accuracy left
    after the white-box worst case and transfer together (evaluator `transfer_check`, metric robust_accuracy).

    surrogate: (logits_fn, params) of a model trained independently on the same task; the suite's gradient
    attacks are crafted on it only for the examples the white-box attacks left robust, and scored on the
    evaluated model (`bench.evaluate.attack_examples(score_on=...)`).
    """
    norm = parse_norm(norm)
    surrogate_fn, surrogate_params = surrogate
    rows = []
    tol = TOLERANCE["transfer_beats_white_box"]
    for e_i, eps in enumerate(sorted({e for e, _ in suite})):
        started = time.perf_counter()
        robust = np.asarray(outcome.per_example[(eps, "worst_case")], bool)
        idx = np.flatnonzero(robust)
        broken = np.zeros(len(y), bool)
        used = [nm for (e, nm), a in suite.items() if e == eps and not capabilities(a).gradient_free]
        for a_i, name in enumerate(tqdm(used, desc=f"transfer check eps {eps:g}", disable=not progress, leave=False)):
            if len(idx) == 0:
                break
            still = attack_examples(suite[(eps, name)], surrogate_fn, surrogate_params, x, y, idx, norm.value, eps,
                                    jax.random.fold_in(jax.random.fold_in(key, e_i), a_i), batch_size,
                                    score_on=(logits_fn, params))
            broken[idx[~still]] = True
        count, n = int(broken.sum()), len(y)
        tripped, reason = _verdict(count >= 2 and count > tol * n,
                                   f"{count} of {n} examples ({count / max(n, 1):.1%}) left robust by every white-box "
                                   f"attack were broken by {', '.join(used) or 'no attack'} crafted on the surrogate "
                                   f"(tolerance {tol:.0%}, at least 2)",
                                   "the white-box attacks are blocked (gradient masking): report the transfer number "
                                   "and use stronger or adaptive attacks")
        seconds = time.perf_counter() - started
        rows.append(_flag("transfer_beats_white_box", tripped, reason, n, seconds, norm=norm.value, eps=eps))
        rows.append(records.row("transfer_check", "robust_accuracy", float(np.mean(robust & ~broken)), n,
                                norm=norm.value, eps=eps, seconds=seconds))
    return rows
