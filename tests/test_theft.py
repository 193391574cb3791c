"""Model theft: exact equation solving, copies that improve with queries, the API's defenses, Knockoff's
adaptive selection and its query count, functionally equivalent extraction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from bench import api
from bench.experiment import prepare

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path, overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose(config_name="config", overrides=["progress=false", "checkpoint.dir=null", *overrides])
    scenario = instantiate(cfg.scenario, _convert_="object")
    exp = prepare(cfg, tmp_path, {"model": "mlp", "defense": "standard"}, scenario.streams)
    return scenario.run(exp).rows


def _get(rows, metric, budget):
    return next(r["value"] for r in rows if r["evaluator"] == "copy" and r["metric"] == metric and r["budget"] == budget)


def test_softmax_regression_on_digits_is_extracted_exactly_within_650_queries(tmp_path):
    rows = _run(tmp_path, ["+experiment=tramer2016_equations_digits", "scenario.theft_plus=false",
                           "scenario.pictures=false"])
    spent = next(r["value"] for r in rows if r["evaluator"] == "api")
    assert spent <= 650
    for budget in (65, 650):
        assert _get(rows, "agreement_test", budget) == 1.0
        assert _get(rows, "agreement_uniform", budget) == 1.0
        assert _get(rows, "max_param_error", budget) < 1e-4  # up to the softmax's shift (class 0 as reference)
        assert _get(rows, "total_variation", budget) < 1e-4


def test_a_copy_trained_on_more_queries_is_not_less_faithful(tmp_path):
    rows = _run(tmp_path, ["scenario=theft", "debug=tiny", "scenario.budgets=[30,300]", "scenario.copy.steps=300",
                           "scenario.theft_plus=false", "scenario.pictures=false"])
    assert _get(rows, "agreement_test", 300) >= _get(rows, "agreement_test", 30)
    assert _get(rows, "agreement_test", 300) > 0.7


def test_api_defenses_return_distributions():
    probs = np.random.default_rng(0).dirichlet(np.full(10, 0.3), size=64).astype(np.float32)
    rng = np.random.default_rng(1)
    for defense in (api.reverse_sigmoid(beta=1.0, gamma=0.1), api.gaussian_noise(sigma=0.2)):
        out = defense(probs, rng)
        assert out.shape == probs.shape and (out >= 0).all() and np.allclose(out.sum(1), 1, atol=1e-5)
    # reverse sigmoid flattens the scores: the top probability falls, whatever the row
    flattened = api.reverse_sigmoid(beta=1.0, gamma=0.1)(probs, rng)
    confident = probs.max(1) > 0.6
    assert (flattened.max(1)[confident] < probs.max(1)[confident]).all()


def test_functionally_equivalent_extraction_recovers_a_planted_relu_net():
    from bench.extraction import extract_relu_net, weight_error

    rng = np.random.default_rng(0)
    d, h, m = 12, 6, 3
    w1 = rng.normal(size=(h, d))
    b1 = rng.normal(size=h) * 0.5 - w1 @ np.full(d, 0.5)   # hyperplanes through the unit cube
    w2, b2 = rng.normal(size=(m + 1, h)), rng.normal(size=m + 1)
    logits = lambda x: np.maximum(x @ w1.T + b1, 0) @ w2.T + b2
    victim = api.PredictionAPI(lambda x: _softmax(logits(x)), mode="probabilities")

    def query(x):  # through the API: float32 probabilities, log-ratios to class 0
        logp = np.log(np.asarray(victim.query(x), np.float64))
        return logp[:, 1:] - logp[:, :1]

    net = extract_relu_net(query, d, np.random.default_rng(1))
    error, missing = weight_error(net, w1, b1)
    assert missing == 0 and error < 1e-3 and len(net.b1) == h
    assert net.queries == victim.queries  # every input the extraction used went through the API
    x = rng.uniform(0, 1, (2000, d))
    true = logits(x)
    assert np.abs(net(x) - (true[:, 1:] - true[:, :1])).max() < 1e-2


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_functional_method_through_the_scenario(tmp_path):
    rows = _run(tmp_path, ["+experiment=jagielski2020_functional_digits", "train.epochs=5", "scenario.theft_plus=false",
                           "scenario.pictures=false"])
    copy = [r for r in rows if r["evaluator"] == "copy"]
    spent = next(r["value"] for r in rows if r["evaluator"] == "api")
    # every input the extraction used went through the API and is what the rows report as the budget
    assert {r["budget"] for r in copy} == {spent}
    units = {r["metric"]: r["value"] for r in copy}
    # a trained victim: every hidden unit found, none spurious, and the copy computes the same function
    assert units["units_victim"] == 20 and units["units_missing"] == 0 and units["units_found"] == 20
    assert units["max_weight_error"] < 2e-2 and units["agreement_test"] >= 0.99


def test_functional_extraction_finds_every_unit_of_a_wider_planted_net_through_float32_probabilities():
    from bench.extraction import extract_relu_net, weight_error

    rng = np.random.default_rng(3)
    d, h, m = 24, 12, 5
    w1 = rng.normal(size=(h, d))
    b1 = rng.normal(size=h) * 0.3 - w1 @ np.full(d, 0.5)   # hyperplanes near the cube's centre, as trained ones
    w2, b2 = rng.normal(size=(m + 1, h)), rng.normal(size=m + 1)
    logits = lambda x: np.maximum(x @ w1.T + b1, 0) @ w2.T + b2
    victim = api.PredictionAPI(lambda x: _softmax(logits(x)), mode="probabilities")   # answers in float32

    def query(x):
        logp = np.log(np.asarray(victim.query(x), np.float64))
        return logp[:, 1:] - logp[:, :1]

    net = extract_relu_net(query, d, np.random.default_rng(4), lines=16)
    error, missing = weight_error(net, w1, b1)
    assert missing == 0 and len(net.b1) == h and error < 1e-3
    x = rng.uniform(0, 1, (2000, d))
    true = logits(x)
    assert (net(x).argmax(1) == (true[:, 1:] - true[:, :1]).argmax(1)).mean() > 0.995


def _toy_pool():
    """Three actions of 300 points: action 0's answers depend on the point (informative: diverse, and the copy
    keeps learning from them); actions 1 and 2 always get the same confident answer."""
    rng = np.random.default_rng(0)
    actions = np.repeat(np.arange(3), 300)
    x = np.concatenate([rng.normal(size=(900, 3)), np.eye(3)[actions]], axis=1).astype(np.float32)

    def victim(x):
        z = np.where(x[:, 3:4] > 0.5, 20 * x[:, :3], np.array([[20.0, 0.0, 0.0]]))
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    return x, actions, victim


def test_adaptive_policy_shifts_its_selection_toward_the_informative_action():
    import jax.numpy as jnp

    from bench import knockoff

    bandit = knockoff.GradientBandit(3, learning_rate=0.5)  # the update alone: action 1 pays, the others do not
    for _ in range(20):
        drawn = np.array([0, 1, 2, 1])
        bandit.update(drawn, (drawn == 1).astype(float))
    assert bandit.probabilities().argmax() == 1 and bandit.probabilities()[1] > 0.6

    x, actions, victim = _toy_pool()
    oracle = api.PredictionAPI(victim, mode="probabilities", budget=300)
    chosen = knockoff.adaptive_selection(
        x, actions, 300, oracle.query, num_classes=3, logits_fn=lambda p, x: x @ p["w"] + p["b"],
        params={"w": jnp.zeros((6, 3)), "b": jnp.zeros(3)}, rng=np.random.default_rng(1),
        round_size=25, online_steps=20, batch_size=32, copy_learning_rate=0.05)
    assert chosen.history[0]["policy"] == [1 / 3] * 3
    assert chosen.history[-1]["policy"][0] > 0.6
    assert np.bincount(actions[chosen.order], minlength=3)[0] > 150       # uniform selection would give about 100
    assert oracle.queries == 300 and len(set(chosen.order.tolist())) == 300 and len(chosen.answers) == 300


def test_knockoff_spends_exactly_its_budget_and_the_api_enforces_it(tmp_path):
    import jax.numpy as jnp

    from bench import knockoff

    x, actions, victim = _toy_pool()
    oracle = api.PredictionAPI(victim, mode="label", budget=100)
    try:
        knockoff.adaptive_selection(x, actions, 120, oracle.query, num_classes=3,
                                    logits_fn=lambda p, x: x @ p["w"] + p["b"],
                                    params={"w": jnp.zeros((6, 3)), "b": jnp.zeros(3)}, rng=np.random.default_rng(1),
                                    round_size=40, online_steps=2)
        raise AssertionError("the API answered past its budget")
    except api.QueryBudgetExceeded:
        assert oracle.queries == 80  # two rounds of 40 answered, the third refused whole

    rows = _run(tmp_path, ["scenario=theft", "debug=tiny", "scenario.method=knockoff", "scenario.budgets=[120]",
                           "scenario.knockoff.round_size=40", "scenario.knockoff.online_steps=5", "scenario.n_uniform=100",
                           "scenario.copy.steps=30", "scenario.theft_plus=false", "scenario.pictures=false"])
    spent = next(r for r in rows if r["evaluator"] == "api")
    assert spent["value"] == 120 and spent["n"] == 3 and spent["method"] == "knockoff_adaptive"  # 3 rounds of 40
    copies = [r for r in rows if r["evaluator"] == "copy"]
    assert {r["budget"] for r in copies} == {120} and all(r["queries"] == 120 for r in copies)
