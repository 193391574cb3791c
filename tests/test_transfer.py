"""Transfer and black-box attacks: the query-counted API, the learners, the transfer matrix, the substitute attack."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from bench import api, evaluate, learners
from bench.attacks import fgsm
from bench.data import digits as load_digits
from bench.errors import BenchError
from bench.experiment import finish, prepare
from bench.threat import ThreatModelViolation

ROOT = Path(__file__).resolve().parents[1]


def _experiment(tmp_path, overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose(config_name="config", overrides=["debug=tiny", "progress=false", *overrides])
    scenario = instantiate(cfg.scenario, _convert_="object")
    return scenario, prepare(cfg, tmp_path, {"model": "mlp", "defense": "standard"}, scenario.streams)


# ---- the prediction API -------------------------------------------------------------------------------------------

def _probs(x):
    z = np.asarray(x).reshape(len(x), -1)[:, :4] * [1.0, 2.0, 3.0, 0.5]
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_label_only_api_never_returns_scores_and_counts_every_input():
    oracle = api.PredictionAPI(_probs, mode="label")
    x = np.random.default_rng(0).random((37, 2, 2, 1), np.float32)
    sizes = [1, 5, 31]
    answers = [oracle.query(x[: n]) for n in sizes]
    assert all(a.ndim == 1 and np.issubdtype(a.dtype, np.integer) for a in answers)
    assert np.array_equal(answers[-1], _probs(x[:31]).argmax(1))
    assert oracle.queries == sum(sizes) and [e.total for e in oracle.log] == list(np.cumsum(sizes))


def test_top_k_and_rounded_outputs():
    x = np.random.default_rng(1).random((8, 2, 2, 1), np.float32)
    top2 = api.PredictionAPI(_probs, mode="top_k", k=2).query(x)
    assert ((top2 > 0).sum(1) == 2).all() and np.allclose(top2.max(1), _probs(x).max(1))
    rounded = api.PredictionAPI(_probs, mode="rounded", decimals=1).query(x)
    assert np.allclose(rounded * 10, np.round(rounded * 10))


def test_an_exceeded_budget_answers_nothing_and_names_the_fix():
    oracle = api.PredictionAPI(_probs, budget=10)
    x = np.zeros((6, 2, 2, 1), np.float32)
    oracle.query(x)
    with pytest.raises(api.QueryBudgetExceeded, match="budget of 10.*scenario.budget=12"):
        oracle.query(x)
    assert oracle.queries == 6 and len(oracle.log) == 1  # the refused query was not spent


# ---- learners -----------------------------------------------------------------------------------------------------

def test_linear_learners_decision_function_in_jax_matches_scikit_learn():
    data = load_digits()
    for kind in ("logreg", "linear_svm"):
        fitted = learners.fit(kind, data.x_train[:600], data.y_train[:600], data.num_classes, seed=0)
        z = np.asarray(fitted.logits_fn(fitted.params, jnp.asarray(data.x_test[:50])))
        reference = fitted.estimator.decision_function(data.x_test[:50].reshape(50, -1))
        assert np.allclose(z, reference, atol=1e-3), kind
        probs = fitted.predict_proba(data.x_test[:50])
        assert probs.shape == (50, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)
    with pytest.raises(BenchError, match="unknown learner"):
        learners.fit("svm_rbf", data.x_train[:10], data.y_train[:10], 10)


def test_crafted_examples_outside_their_ball_are_refused():
    x = np.full((4, 2, 2, 1), 0.5, np.float32)
    cheat = lambda logits_fn, params, x, y, key: x + 0.3  # a broken attack: outside eps 0.1
    with pytest.raises(ThreatModelViolation):
        evaluate.craft(cheat, None, None, x, np.zeros(4, np.int32), "linf", 0.1, jax.random.key(0))


# ---- the transfer matrix ------------------------------------------------------------------------------------------

SMALL_MATRIX = ["scenario=transfer", "suite=fgsm_pgd", "suite.eps=[0.1]", "suite.n_examples=128",
                "suite.attacks.fgsm.random_start=false", "suite.attacks.pgd.steps=5", "+scenario.models.a.seed=0", "+scenario.models.b.seed=1",
                "+scenario.models.b.data=half_b", "+scenario.ensembles.ab.members=[a,b]",
                "scenario.use=[a,b,logreg,tree,ab]", "scenario.targeted=true", "scenario.pictures=true"]


@pytest.mark.slow
def test_transfer_matrix_cells_diagonal_and_ensembles(tmp_path):
    scenario, exp = _experiment(tmp_path, SMALL_MATRIX)
    frame = finish(exp, scenario, scenario.run(exp))
    cells = frame[frame.evaluator == "transfer"]
    sources, targets = {"a", "b", "logreg", "ab"}, {"a", "b", "logreg", "tree"}
    assert set(cells.source) == sources and set(cells.target) == targets
    assert cells.value.between(0, 1).all() and len(cells) == len(sources) * len(targets) * 2 * 2
    # the diagonal is the white-box attack: FGSM without a random start is deterministic, so the suite's own
    # evaluator on the same model gives the same error over the examples that model gets right clean
    x, y = exp.data.x_test[:128], exp.data.y_test[:128]
    for _, cell in cells[(cells.white_box) & (cells.attack == "fgsm") & (cells.metric == "error_rate")
                         & (cells.source == "a")].iterrows():
        from bench import models

        model = exp.build_model(jax.random.fold_in(exp.key("init"), 0))
        params = models.load_params(tmp_path / "models" / "a.msgpack", model.params)
        correct = np.flatnonzero(evaluate.predict(model.logits_fn, params, x) == y)
        still = evaluate.attack_examples(fgsm(norm="linf", eps=0.1), model.logits_fn, params, x, y, correct, "linf",
                                         0.1, jax.random.key(5))
        assert cell.n == len(correct) and cell.value == pytest.approx(1 - still.mean())
    # an ensemble is scored on held-out targets too, and its members are marked as not held out
    ab = cells[cells.source == "ab"]
    assert set(ab[~ab.held_out.astype(bool)].target) == {"a", "b"}
    assert set(scenario.table(frame).columns) >= targets
    assert (tmp_path / "transfer_error_rate_pgd_eps0.1.png").stat().st_size > 0
    assert (tmp_path / "wrong_almost_everywhere_a.png").stat().st_size > 0


def test_transfer_refuses_a_tree_as_a_source(tmp_path):
    scenario, exp = _experiment(tmp_path, ["scenario=transfer", "+scenario.learners.t.kind=tree", "scenario.use=[t]"])
    with pytest.raises(BenchError, match="role=target"):
        scenario.run(exp)


# ---- the black-box substitute attack ------------------------------------------------------------------------------

BLACKBOX_DIGITS = ["scenario=blackbox", "suite=fgsm", "suite.eps=[0.2]", "scenario.seeds=100", "scenario.rounds=3",
                   "scenario.substitute.batch_size=32", "scenario.substitute.epochs=2", "scenario.pictures=false"]


@pytest.mark.slow
def test_substitute_training_is_deterministic_for_a_seed(tmp_path):
    results = []
    for run in ("one", "two"):
        (tmp_path / run).mkdir()
        scenario, exp = _experiment(tmp_path / run, BLACKBOX_DIGITS)
        results.append(scenario.run(exp).rows)
        results[-1] = [(r["evaluator"], r["metric"], r.get("round"), r["value"]) for r in results[-1]]
    assert results[0] == results[1]
    assert (tmp_path / "one" / "substitute.msgpack").read_bytes() == (tmp_path / "two" / "substitute.msgpack").read_bytes()


def test_an_exceeded_query_budget_keeps_the_rounds_done(tmp_path):
    # 100 seed labels, then 100 augmented (200 spent), then 200 more would make 400 > 300
    scenario, exp = _experiment(tmp_path, BLACKBOX_DIGITS + ["scenario.budget=300"])
    result = scenario.run(exp)
    assert isinstance(result.failure, api.QueryBudgetExceeded)
    rounds = [r["round"] for r in result.rows if r["evaluator"] == "substitute"]
    assert rounds == [1, 2]
    spent = [r["value"] for r in result.rows if r["evaluator"] == "api"]
    assert spent == [200]
    with pytest.raises(api.QueryBudgetExceeded):
        finish(exp, scenario, result)
    assert (tmp_path / "records.parquet").exists()  # written before the run failed


@pytest.mark.slow
def test_papernot_blackbox_reaches_cleverhans_thresholds_on_mnist5k(tmp_path):
    """cleverhans' test of its mnist_blackbox tutorial: oracle > 0.7, substitute > 0.7, oracle accuracy on the
    transferred FGSM examples (eps 0.3) < 0.3; here with 150 seeds and 6 rounds on mnist5k, at small scale
    (an oracle trained for 2 epochs, substitutes for 5 epochs a round, 500 attacked images)."""
    scenario, exp = _experiment(tmp_path, [
        "+experiment=papernot2017_blackbox_mnist_reduced", "train.epochs=2", "scenario.substitute.epochs=5",
        "suite.n_examples=500", "scenario.pictures=false", "checkpoint.dir=null"])
    rows = scenario.run(exp).rows
    last = max(r["round"] for r in rows if "round" in r)
    get = lambda ev, metric: next(r["value"] for r in rows if r["evaluator"] == ev and r["metric"] == metric
                                  and r.get("round", last) == last)
    oracle, substitute, transferred = get("oracle", "accuracy"), get("substitute", "accuracy"), get(
        "transfer", "oracle_accuracy")
    print(f"oracle {oracle:.3f}, substitute {substitute:.3f}, oracle on transferred {transferred:.3f}")
    assert oracle > 0.7 and substitute > 0.7 and transferred < 0.3


# ---- transfer as a sanity check of an evasion evaluation ----------------------------------------------------------

def test_transfer_check_flags_a_gradient_masked_model_and_not_an_honest_one():
    import optax

    from bench import models, sanity, train
    from bench.defenses import standard

    data = load_digits()
    module = models.mlp(10, data.mean, data.std, hidden=(64,))
    logits_fn = models.make_logits_fn(module)
    params, _ = train.train(standard(logits_fn), models.init_params(module, jax.random.key(0), data.image_shape),
                            optax.adam(3e-3), data.x_train, data.y_train, epochs=15, batch_size=64,
                            key=jax.random.key(1), progress=False)
    # the same function behind a gradient-free quantisation of its input: white-box gradients vanish
    masked = lambda p, x: logits_fn(p, jax.lax.stop_gradient(jnp.round(x * 4) / 4) + 0 * x)
    x, y = data.x_test[:200], data.y_test[:200]
    suite = evaluate.build_suite({"pgd": partial_pgd()}, "linf", [0.3])
    flags = {}
    for name, fn in (("masked", masked), ("honest", logits_fn)):
        outcome = evaluate.run_suite(fn, params, x, y, suite, "linf", jax.random.key(2), batch_size=200)
        rows = sanity.transfer_check(fn, params, x, y, suite, "linf", jax.random.key(3), outcome,
                                     (logits_fn, params), batch_size=200)
        flags[name] = next(r for r in rows if r["metric"] == "transfer_beats_white_box")
        combined = next(r for r in rows if r["evaluator"] == "transfer_check")["value"]
        white = next(r for r in outcome.rows if r["evaluator"] == "worst_case")["value"]
        assert combined <= white  # transfer can only lower the robust accuracy
    assert flags["masked"]["value"] == 1.0, flags["masked"]["reason"]
    assert flags["honest"]["value"] == 0.0, flags["honest"]["reason"]


def partial_pgd():
    from functools import partial

    from bench.attacks import pgd

    return partial(pgd, steps=20)
