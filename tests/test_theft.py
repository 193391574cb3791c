"""Model theft: exact equation solving, copies that improve with queries, the API's defenses."""

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
