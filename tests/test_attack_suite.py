"""The AutoAttack-style suite: attack strength, gradient-free Square, C&W, cumulative mode, and the sanity checks.

Each sanity check trips on a model (or suite) built to trip it and stays silent on
the clean trained model. Small on purpose: 64 digits examples, short attacks.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench import evaluate, sanity
from bench.attacks import ATTACKS, check_threat_model
from bench.attacks.apgd import checkpoints
from bench.attacks.cw import cw_core
from bench.report import evasion_table, flags_table
from bench.records import make_rows

N = 64


@pytest.fixture(scope="module")
def small(trained_digits):
    logits_fn, params, x, y = trained_digits
    return logits_fn, params, x[:N], y[:N]


def _robust(logits_fn, params, x_adv, y):
    return float(np.mean(evaluate.predict(logits_fn, params, np.asarray(x_adv)) == y))


def _tripped(results):
    return {r["metric"] for r in results if r["evaluator"] == "sanity" and r["value"] > 0}


def _run_with_sanity(logits_fn, params, x, y, suite, sanity_examples=N, sanity_checks=True, **kwargs):
    """The suite, then the sanity checks on what it found (as the evasion scenario runs them)."""
    outcome = evaluate.run_suite(logits_fn, params, x, y, suite, "linf", jax.random.key(0), batch_size=N,
                                 progress=False, **kwargs)
    if not sanity_checks:
        return outcome.rows, outcome.per_example
    checks = sanity.sanity_checks(logits_fn, params, x, y, suite, "linf", jax.random.fold_in(jax.random.key(0), 0x5A17),
                                  outcome, batch_size=N,
                                  n_examples=sanity_examples)
    return outcome.rows + checks, outcome.per_example


def _evaluate(logits_fn, params, x, y, attacks, eps=(0.1, 0.3), **kwargs):
    suite = evaluate.build_suite(attacks, "linf", list(eps))
    return _run_with_sanity(logits_fn, params, x, y, suite, **kwargs)


# Models built to trip one check each.
def _rounding(logits_fn):
    """Quantises the input: the gradient is zero everywhere (Carlini et al. 2019's classic masking)."""
    return lambda p, x: logits_fn(p, jnp.round(x * 16) / 16)


@jax.custom_vjp
def _reverse_grad(x):
    return x


_reverse_grad.defvjp(lambda x: (x, None), lambda _, g: (-g,))


def _misleading(logits_fn):
    """Finite, non-zero gradients that point the wrong way: only the unbounded attack exposes it."""
    return lambda p, x: logits_fn(p, _reverse_grad(x))


def _softmax(logits_fn):
    return lambda p, x: jax.nn.softmax(logits_fn(p, x))


def _randomised(logits_fn):
    def noisy(p, x, key):
        return logits_fn(p, jnp.clip(x + 0.1 * jax.random.normal(key, x.shape), 0, 1))

    noisy.stochastic = True
    return noisy


CHEAP = {"apgd_ce": functools.partial(ATTACKS["apgd_ce"], steps=20),
         "square": functools.partial(ATTACKS["square"], n_queries=300)}


def test_checkpoints_follow_the_paper():
    # p: 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 -> ceil(p * 100)
    assert checkpoints(100).tolist() == [22, 41, 57, 70, 80, 87, 93, 99]


def test_apgd_at_least_as_strong_as_pgd(small):
    logits_fn, params, x, y = small
    xj, yj, key = jnp.asarray(x), jnp.asarray(y), jax.random.key(0)
    pgd_acc = _robust(logits_fn, params, ATTACKS["pgd"](norm="linf", eps=0.1, steps=100)(logits_fn, params, xj, yj,
                                                                                        key), y)
    for name in ("apgd_ce", "apgd_t"):
        extra = {"n_targets": 3} if name == "apgd_t" else {}
        x_adv = ATTACKS[name](norm="linf", eps=0.1, **extra)(logits_fn, params, xj, yj, key)
        check_threat_model(x, x_adv, "linf", 0.1)
        assert _robust(logits_fn, params, x_adv, y) <= pgd_acc + 1 / N, name


def test_square_uses_no_gradients_and_breaks_examples(small):
    logits_fn, params, x, y = small

    @jax.custom_vjp
    def no_gradient(x):
        return x

    def refuse(*_):
        raise AssertionError("Square asked for a gradient")

    no_gradient.defvjp(lambda v: (v, None), refuse)

    def guarded(p, v):
        return logits_fn(p, no_gradient(v))

    x_adv = ATTACKS["square"](norm="linf", eps=0.2, n_queries=300)(guarded, params, jnp.asarray(x), jnp.asarray(y),
                                                                    jax.random.key(0))
    check_threat_model(x, x_adv, "linf", 0.2)
    assert _robust(logits_fn, params, x_adv, y) < evaluate.accuracy(logits_fn, params, x, y) - 0.3
    x_l2 = ATTACKS["square"](norm="l2", eps=1.5, n_queries=300)(guarded, params, jnp.asarray(x), jnp.asarray(y),
                                                                 jax.random.key(0))
    check_threat_model(x, x_l2, "l2", 1.5)
    assert _robust(logits_fn, params, x_l2, y) < evaluate.accuracy(logits_fn, params, x, y) - 0.1


def test_square_rescaled_schedule_is_the_raw_one_at_10000_queries_only(small):
    """rescale_schedule counts the p schedule out of 10,000 over the budget: the same search at 10,000 queries, a
    different one (squares halved earlier) at fewer."""
    logits_fn, params, x, y = small
    xb, yb = jnp.asarray(x[:4]), jnp.asarray(y[:4])

    def run(n_queries, rescale):  # eps so small that no example is broken: the search runs its whole budget
        attack = ATTACKS["square"](norm="linf", eps=1e-3, n_queries=n_queries, rescale_schedule=rescale)
        return np.asarray(attack(logits_fn, params, xb, yb, jax.random.key(0)))

    np.testing.assert_array_equal(run(10000, True), run(10000, False))
    assert not np.array_equal(run(60, True), run(60, False))


def test_cw_needs_less_l2_than_eps_bounded_pgd(small):
    logits_fn, params, x, y = small
    xj, yj, key, eps = jnp.asarray(x), jnp.asarray(y), jax.random.key(0), 1.0
    pgd_adv = ATTACKS["pgd"](norm="l2", eps=eps, steps=50)(logits_fn, params, xj, yj, key)
    pgd_broken = evaluate.predict(logits_fn, params, np.asarray(pgd_adv)) != y
    pgd_dist = np.linalg.norm((np.asarray(pgd_adv) - x).reshape(N, -1), axis=1)
    _, cw_dist = cw_core(logits_fn, params, xj, yj, key, 0.1, 0.01, 0.0, steps=100, binary_steps=6)
    cw_dist = np.asarray(cw_dist)
    both = pgd_broken & np.isfinite(cw_dist)
    assert both.sum() >= 0.8 * pgd_broken.sum() > 0
    assert np.median(cw_dist[both]) < 0.8 * np.median(pgd_dist[both])
    with pytest.raises(Exception, match="norm"):
        ATTACKS["cw"](norm="linf", eps=0.1)


def test_cumulative_mode_logs_each_attack_and_matches_worst_case(small):
    logits_fn, params, x, y = small
    attacks = {"apgd_ce": CHEAP["apgd_ce"], "apgd_t": functools.partial(ATTACKS["apgd_t"], steps=20, n_targets=3)}
    results, per_example = _evaluate(logits_fn, params, x, y, attacks, eps=(0.1,), cumulative=True, sanity_checks=False)
    cumulative = [r for r in results if r["metric"] == "cumulative_robust_accuracy"]
    assert [r["evaluator"] for r in cumulative] == ["apgd_ce", "apgd_t"]
    assert cumulative[0]["value"] >= cumulative[1]["value"]
    worst = [r["value"] for r in results if r["evaluator"] == "worst_case"]
    assert worst == [cumulative[-1]["value"]]
    assert all(r["seconds"] > 0 for r in cumulative)
    # Later attacks only remove examples: robust after apgd_t implies robust after apgd_ce.
    assert not np.any(per_example[(0.1, "apgd_t")] & ~per_example[(0.1, "apgd_ce")])
    assert np.array_equal(per_example[(0.1, "apgd_t")], per_example[(0.1, "worst_case")])


def test_apgd_t_falls_back_to_ce_below_four_classes_and_says_so():
    w = jax.random.normal(jax.random.key(0), (16, 3))

    def three_classes(p, x):
        return x.reshape(x.shape[0], -1) @ p

    x = jax.random.uniform(jax.random.key(1), (8, 4, 4, 1))
    y = jnp.argmax(three_classes(w, x), -1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = evaluate.run_suite(three_classes, w, np.asarray(x), np.asarray(y),
                                     evaluate.build_suite({"apgd_t": ATTACKS["apgd_t"]}, "linf", [0.1]),
                                     "linf", jax.random.key(0), progress=False).rows
    assert any("cross-entropy" in str(c.message) for c in caught)
    fallback = [r for r in results if r["metric"] == "fallback_ce"]
    assert fallback and "cross-entropy" in fallback[0]["reason"]


def test_sanity_checks_silent_on_a_clean_model_and_shown_in_the_table(small):
    logits_fn, params, x, y = small
    results, _ = _evaluate(logits_fn, params, x, y, CHEAP, cumulative=True)
    checks = {r["metric"] for r in results if r["evaluator"] == "sanity"}
    assert {"zero_gradients", "nondeterministic", "probability_outputs", "black_box_beats_white_box",
            "unbounded_attack_fails", "eps_not_monotone", "not_converged"} <= checks
    assert _tripped(results) == set(), [r["reason"] for r in results if r["evaluator"] == "sanity" and r["value"]]
    context = dict(scenario="evasion", dataset="digits", model="cnn_small", defense="standard", run_id="r",
                   config_hash="h", git_rev="g", versions="{}", seed=0, data_fingerprint="f", created=1.0)
    assert "flags" not in evasion_table(make_rows(results, context)).columns  # shown only when a check trips


def test_rounding_model_trips_gradient_unbounded_and_black_box_checks(small):
    logits_fn, params, x, y = small
    results, _ = _evaluate(_rounding(logits_fn), params, x, y, CHEAP, cumulative=True)
    tripped = _tripped(results)
    assert {"zero_gradients", "unbounded_attack_fails", "black_box_beats_white_box"} <= tripped
    context = dict(scenario="evasion", dataset="digits", model="rounded", defense="standard", run_id="r",
                   config_hash="h", git_rev="g", versions="{}", seed=0, data_fingerprint="f", created=1.0)
    frame = make_rows(results, context)
    assert "zero_gradients" in evasion_table(frame)["flags"][0]
    assert flags_table(frame)["reason"].str.len().gt(0).all()


def test_misleading_gradients_trip_the_unbounded_check_only_there(small):
    logits_fn, params, x, y = small
    lying = _misleading(logits_fn)
    trip, reason = sanity.check_unbounded(lying, params, x, y, sanity.Norm.LINF, jax.random.key(0), N)
    assert trip, reason
    assert not sanity.check_gradients(lying, params, x, y, jax.random.key(0))[0]
    assert not sanity.check_unbounded(logits_fn, params, x, y, sanity.Norm.LINF, jax.random.key(0), N)[0]


def test_softmax_outputs_trip_the_probability_check(small):
    logits_fn, params, x, _ = small
    assert sanity.check_probabilities(_softmax(logits_fn), params, x, jax.random.key(0))[0]
    assert not sanity.check_probabilities(logits_fn, params, x, jax.random.key(0))[0]


def test_randomised_model_trips_determinism_check_unless_the_suite_uses_eot(small):
    logits_fn, params, x, _ = small
    noisy = _randomised(logits_fn)
    assert sanity.check_determinism(noisy, params, x, jax.random.key(0), uses_eot=False)[0]
    assert not sanity.check_determinism(noisy, params, x, jax.random.key(0), uses_eot=True)[0]
    assert not sanity.check_determinism(logits_fn, params, x, jax.random.key(0), uses_eot=False)[0]
    # EOT attacks run on it and stay in the ball.
    attack = ATTACKS["apgd_ce"](norm="linf", eps=0.1, steps=5, eot_samples=4)
    assert attack.capabilities.eot_samples == 4
    check_threat_model(x, attack(noisy, params, jnp.asarray(x), jnp.asarray(evaluate.predict(noisy, params, x)),
                                 jax.random.key(0)), "linf", 0.1)


def test_weak_attack_trips_convergence_check_and_broken_attack_trips_monotonicity(small):
    logits_fn, params, x, y = small
    weak = {"pgd": functools.partial(ATTACKS["pgd"], steps=1, step_size=0.05, random_start=False)}
    results, _ = _evaluate(logits_fn, params, x, y, weak, eps=(0.3,), cumulative=False)
    assert "not_converged" in _tripped(results)

    def no_op(norm, eps):
        return lambda logits_fn, params, x, y, key: x

    suite = {(0.1, "a"): ATTACKS["pgd"](norm="linf", eps=0.1, steps=10), (0.3, "a"): no_op("linf", 0.3)}
    results, _ = _run_with_sanity(logits_fn, params, x, y, suite)
    assert "eps_not_monotone" in _tripped(results)


def test_cumulative_subsets_run_in_batches_of_one_shape_with_little_padding():
    """An attack on a subset of m examples (cumulative suites) sees one batch shape: it compiles once, and the
    padding is a few examples per batch, not a power-of-two tail."""
    for batch_size in (1, 7, 100, 256):
        for m in range(1, 1200, 13):
            size = evaluate._even_batch(m, batch_size)
            count = -(-m // size)
            assert size <= batch_size and count == -(-m // batch_size)  # as many batches as before, none larger
            assert count * size >= m and count * size - m < count * 4  # fewer than 4 padded examples per batch
    shapes = []

    def attack(logits_fn, params, x, y, key):
        shapes.append(x.shape[0])
        return x

    x = np.random.default_rng(0).uniform(0, 1, (349, 2, 2, 1)).astype(np.float32)
    y = np.zeros(349, np.int32)
    logits_fn = lambda params, v: jnp.zeros((v.shape[0], 3)).at[:, 0].set(1.0)
    still = evaluate.attack_examples(attack, logits_fn, None, x, y, np.arange(349), "linf", 0.1, jax.random.key(0),
                                     batch_size=100, pad=True)
    assert shapes == [88] * 4 and still.shape == (349,) and still.all()


@pytest.mark.parametrize("scale", [1, 3])
def test_the_suite_runs_an_attack_at_its_batch_scale(small, scale):
    """Capabilities.batch_scale multiplies the suite's batch size for that attack (Square: 8), cumulative or not."""
    from bench.contracts import Attack, Capabilities

    logits_fn, params, x, y = small
    seen = []

    def identity(logits_fn, params, xb, yb, key):
        seen.append(xb.shape[0])
        return xb

    suite = {(0.1, "identity"): Attack(identity, Capabilities(batch_scale=scale))}
    for cumulative in (False, True):
        seen.clear()
        evaluate.run_suite(logits_fn, params, x[:48], y[:48], suite, "linf", jax.random.key(0), batch_size=8,
                           progress=False, cumulative=cumulative)
        assert seen and max(seen) == 8 * scale, (cumulative, seen)


def test_square_forward_in_halves_gives_the_same_logits(small):
    """From 256 examples on the CPU, Square scores its candidates as two halves of the batch (an odd batch in
    halves one example apart): the same logits, in order."""
    from bench.attacks.square import _logits_in_halves

    logits_fn, params, x, _ = small
    for n in (256, 257):
        xb = jnp.asarray(np.resize(x, (n, *x.shape[1:])))
        whole = logits_fn(params, xb)
        np.testing.assert_allclose(np.asarray(jax.jit(lambda v: _logits_in_halves(logits_fn, params, v, None))(xb)),
                                   np.asarray(whole), atol=1e-5, rtol=1e-5)
