"""Poisoning and backdoors (bench/poisoning/, scenario=poisoning): properties that could fail."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest

from bench import evaluate, models, train
from bench.data import digits
from bench.defenses import standard
from bench.errors import BenchError
from bench.poisoning import ATTACKS, FILTERS, attack_inputs, metrics, modified_indices
from bench.poisoning.features import extract, features_fn

from conftest import cli_env

ROOT = Path(__file__).resolve().parents[1]
ENV = cli_env(ROOT)
CASES = [
    ("label_flip", dict(mode="random")),
    ("label_flip", dict(mode="pair", source=3)),
    ("badnets", dict(mode="all_to_one", size=2)),
    ("badnets", dict(mode="all_to_all", size=2, pattern="checkerboard")),
    ("blend", dict(alpha=0.2)),
]


@pytest.fixture(scope="module")
def data():
    return digits()


def _poison(data, attack, ratio=0.1, target=0, seed=0, **args):
    make = ATTACKS[attack](ratio=ratio, target=target, **args)
    return make(data.x_train, data.y_train, np.random.default_rng(seed), data.num_classes)


@pytest.mark.parametrize("attack,args", CASES, ids=[f"{a}-{'-'.join(map(str, v.values()))}" for a, v in CASES])
def test_a_poisoned_set_differs_from_the_clean_one_exactly_at_the_reported_indices(data, attack, args):
    p = _poison(data, attack, **args)
    n = len(data.y_train)
    np.testing.assert_array_equal(modified_indices(data.x_train, data.y_train, p.x, p.y), p.indices)
    assert len(p.indices) == round(0.1 * n) and p.ratio == pytest.approx(len(p.indices) / n)
    assert p.x.dtype == np.float32 and p.x.min() >= 0 and p.x.max() <= 1
    clean = np.setdiff1d(np.arange(n), p.indices)
    np.testing.assert_array_equal(p.x[clean], data.x_train[clean])  # nothing else moved
    np.testing.assert_array_equal(p.y[clean], data.y_train[clean])
    y0, y = data.y_train[p.indices], p.y[p.indices]
    if attack == "label_flip":
        np.testing.assert_array_equal(p.x, data.x_train)  # labels only
        assert (y != y0).all()
        if args["mode"] == "pair":
            assert (y0 == 3).all() and (y == 0).all()
    elif args.get("mode") == "all_to_all":
        np.testing.assert_array_equal(y, (y0 + 1) % data.num_classes)
    else:
        assert (y0 != 0).all() and (y == 0).all()
    # another seed draws other images; the same seed the same ones
    np.testing.assert_array_equal(_poison(data, attack, **args).indices, p.indices)
    assert not np.array_equal(_poison(data, attack, seed=1, **args).indices, p.indices)


def test_the_backdoor_test_inputs_are_the_triggered_non_target_images(data):
    p = _poison(data, "badnets", size=2)
    x, y_true, y_adv = attack_inputs(p, data.x_test, data.y_test)
    assert len(y_true) == int((data.y_test != 0).sum()) and (y_true != 0).all() and (y_adv == 0).all()
    assert np.allclose(x[:, -3:-1, -3:-1], 1.0)  # the 2x2 patch, one pixel from the bottom-right corner
    a2a = _poison(data, "badnets", mode="all_to_all", size=2)
    _, y_true, y_adv = attack_inputs(a2a, data.x_test, data.y_test)
    assert len(y_true) == len(data.y_test) and (y_adv == (y_true + 1) % 10).all()
    assert attack_inputs(_poison(data, "label_flip"), data.x_test, data.y_test) is None  # no test-time goal


def test_bad_attack_arguments_are_one_line_errors(data):
    with pytest.raises(BenchError, match="ratio"):
        ATTACKS["badnets"](ratio=1.5)
    with pytest.raises(BenchError, match="mode"):
        ATTACKS["badnets"](mode="all_to_some")
    with pytest.raises(BenchError, match="does not fit"):
        _poison(data, "badnets", size=9)
    with pytest.raises(BenchError, match="lower scenario.ratio"):
        _poison(data, "label_flip", ratio=0.5, mode="pair", source=3)  # more flips than class-3 images
    from bench.scenarios.poisoning import Poisoning

    with pytest.raises(BenchError, match="bench/poisoning/badnets.py"):
        Poisoning(attack="badnets", ratio=0.1, target=0, args={"sise": 3}).make_attack()
    with pytest.raises(BenchError, match="unknown scenario.attack"):
        Poisoning(attack="badnet", ratio=0.1, target=0).make_attack()


def test_metric_golden_values():
    pred = np.array([0, 0, 1, 2, 0, 3])
    y_true = np.array([1, 2, 1, 2, 3, 1])
    y_adv = np.zeros(6, int)
    assert metrics.clean_accuracy(pred, y_true) == pytest.approx(2 / 6)
    assert metrics.attack_success_rate(pred, y_adv) == pytest.approx(3 / 6)
    assert metrics.robust_accuracy(pred, y_true) == pytest.approx(2 / 6)  # ASR + RA = 5/6: one went to class 3
    assert metrics.targeted_success(np.array([4, 4, 1]), np.array([4, 2, 1])) == pytest.approx(2 / 3)
    found = metrics.detection(np.array([0, 1, 5, 7]), np.array([0, 1, 2]), n=10)
    assert found["tpr"] == pytest.approx(2 / 3) and found["fpr"] == pytest.approx(2 / 7)
    assert found["true_positives"] == 2 and found["false_positives"] == 2 and found["flagged"] == 4
    # DER: a perfect defense 1; nothing changes 0.5; an ASR that rises is not credited
    assert metrics.der(0.98, 1.0, 0.98, 0.0) == pytest.approx(1.0)
    assert metrics.der(0.98, 0.9, 0.98, 0.9) == pytest.approx(0.5)
    assert metrics.der(0.98, 0.5, 0.98, 0.7) == pytest.approx(0.5)
    assert metrics.der(0.90, 0.99, 0.80, 0.09) == pytest.approx((0.9 - 0.1 + 1) / 2)
    # the sign of the dCA term: a defense that only costs clean accuracy scores BELOW 0.5 (BackdoorBench's code,
    # which adds max(0, dCA), would give 0.6 here), and a CA gain is not credited
    assert metrics.der(0.95, 0.99, 0.75, 0.99) == pytest.approx(0.4)
    assert metrics.der(0.75, 0.99, 0.95, 0.99) == pytest.approx(0.5)
    with pytest.raises(BenchError, match="shares"):
        metrics.der(98.0, 99.0, 97.0, 10.0)


def _train(data, x, y, epochs=15):
    module = models.mlp(data.num_classes, data.mean, data.std, hidden=(64,))
    logits_fn = models.make_logits_fn(module)
    params = models.init_params(module, jax.random.key(0), data.image_shape)
    optimizer = train.make_optimizer("adam", 3e-3, "constant")
    params, _ = train.train(standard(logits_fn), params, optimizer, x, y, epochs=epochs, batch_size=32,
                            key=jax.random.key(1), progress=False)
    return module, logits_fn, params


def test_badnets_reaches_a_high_asr_where_the_clean_model_does_not(data):
    p = _poison(data, "badnets", size=2)
    x_trig, y_true, y_adv = attack_inputs(p, data.x_test, data.y_test)
    rates = {}
    for name, (x, y) in {"clean": (data.x_train, data.y_train), "poisoned": (p.x, p.y)}.items():
        module, logits_fn, params = _train(data, x, y)
        pred = evaluate.predict(logits_fn, params, x_trig)
        rates[name] = (metrics.attack_success_rate(pred, y_adv),
                       metrics.clean_accuracy(evaluate.predict(logits_fn, params, data.x_test), data.y_test))
        if name == "poisoned":  # the features are the last Dense layer's input: logits = features @ W + b
            feats = extract(features_fn(module), params, data.x_test[:50])
            last = params["Dense_1"]
            np.testing.assert_allclose(feats @ np.asarray(last["kernel"]) + np.asarray(last["bias"]),
                                       np.asarray(logits_fn(params, data.x_test[:50])), rtol=1e-4, atol=1e-4)
    assert rates["poisoned"][0] > 0.9, rates
    assert rates["clean"][0] < 0.2, rates
    assert rates["poisoned"][1] > 0.85 and rates["clean"][1] > 0.85, rates


def _features_with_poisons(rng, n=300, shift=12.0, share=0.2):
    """Two labels of Gaussian features; in label 0, a `share` of the examples moved along one direction."""
    feats = rng.normal(size=(2 * n, 16))
    labels = np.repeat([0, 1], n)
    poisons = np.sort(rng.choice(n, int(share * n), replace=False))
    feats[poisons, 3] += shift
    return feats, labels, poisons


def test_detectors_report_tpr_and_fpr_against_the_true_poison_indices():
    rng = np.random.default_rng(0)
    feats, labels, poisons = _features_with_poisons(rng)
    n = len(labels)
    spectral = FILTERS["spectral_signatures"](eps=None, remove_factor=1.5)
    flagged = spectral(feats, labels, np.random.default_rng(1), 0.1)  # 1.5 * 10% of each label's 300
    assert len(flagged) == 2 * 45
    found = metrics.detection(flagged, poisons, n)
    assert found["tpr"] == pytest.approx(45 / 60)  # its 45 flags in label 0 are all poisons
    assert found["fpr"] == pytest.approx(45 / (n - 60))  # the 45 of label 1 are all clean
    ac = FILTERS["activation_clustering"](components=4, size_threshold=0.35, silhouette_threshold=0.15)
    flagged = ac(feats, labels, np.random.default_rng(1), 0.1)
    found = metrics.detection(flagged, poisons, n)
    assert found["tpr"] == 1.0 and found["fpr"] == 0.0, found  # label 1 (one Gaussian) is left alone
    shuffled = np.random.default_rng(2).permutation(n)  # flags against the wrong indices: the numbers say so
    assert metrics.detection(flagged, shuffled[:60], n)["tpr"] < 0.5


def test_the_scenario_end_to_end(tmp_path):
    run = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "bench", "scenario=poisoning", "debug=tiny", "progress=false",
                          "scenario.filters=[spectral_signatures]",
                          f"hydra.run.dir={run}"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)
    assert out.returncode == 0, out.stderr[-2000:]
    frame = pd.read_parquet(run / "records.parquet")
    assert set(frame.scenario) == {"poisoning"} and set(frame.dataset) == {"digits"}
    assert frame.poison_ratio.notna().all()  # the ratio in every row
    assert set(frame[frame.evaluator == "clean_training"].poison_ratio) == {0.0}
    assert set(frame[frame.evaluator == "poisoned"].poison_ratio) == {round(0.1 * 1437) / 1437}
    got = set(zip(frame.evaluator, frame.metric))
    for evaluator in ("clean_training", "poisoned", "spectral_signatures"):
        assert {(evaluator, "clean_accuracy"), (evaluator, "attack_success_rate")} <= got
    assert {("spectral_signatures", m) for m in ("tpr", "fpr", "der")} <= got
    assert (run / "poisons.png").stat().st_size > 1000
    assert "ASR" in out.stdout and "standard+spectral_signatures" in out.stdout
    # the table aggregates seeds of one experiment: a second seed of the same config joins its row
    from bench.poisoning.report import poisoning_table

    other = frame.assign(seed=1, config_hash="x" + frame.config_hash, run_id="x" + frame.run_id,
                         value=np.where(frame.metric == "clean_accuracy", 0.5, frame.value))
    table = poisoning_table(pd.concat([frame, other]))
    row = table[table.defense == "standard"].iloc[0]
    ca = frame[(frame.evaluator == "poisoned") & (frame.metric == "clean_accuracy")].value.iloc[0]
    assert row["seeds"] == "0,1" and row["CA"] == pytest.approx(100 * (ca + 0.5) / 2)
    assert len(table) == 3


def test_influence_matches_leave_one_out_retraining_on_a_tiny_convex_problem():
    """Koh & Liang 2017: -I_up,loss / n predicts the test-loss change of removing each training example."""
    import jax.numpy as jnp

    from bench.poisoning import influence as inf

    rng = np.random.default_rng(0)
    n, d, lam = 40, 3, 0.05
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = (X @ np.array([1.5, -1.0, 0.5]) + rng.normal(size=n) > 0).astype(np.float32)
    x_t, y_t = rng.normal(size=d).astype(np.float32), 1.0
    theta = inf.fit(X, y, lam)
    ones = jnp.ones(n)
    args = (theta, jnp.asarray(X), jnp.asarray(y), lam, ones)
    np.testing.assert_allclose(jax.jit(inf.hessian)(*args), jax.jit(jax.hessian(inf.risk))(*args), atol=1e-5)
    assert np.abs(jax.jit(jax.grad(inf.risk))(*args)).max() < 1e-5  # the optimum
    predicted = inf.predicted_removal_effect(theta, X, y, lam, x_t, y_t)
    base = inf.test_loss(theta, x_t, y_t)
    # leave example i out (its 1/n weight removed, as the upweighting derivation assumes): n retrainings at once
    thetas = jax.vmap(lambda w: inf.fit(X, y, lam, w))(jnp.asarray(1.0 - np.eye(n, dtype=np.float32)))
    actual = np.asarray(jax.jit(jax.vmap(lambda th: inf._loss(th, x_t, y_t)))(thetas)) - base
    assert np.corrcoef(predicted, actual)[0, 1] > 0.99
    assert np.sign(predicted[np.argmax(np.abs(actual))]) == np.sign(actual[np.argmax(np.abs(actual))])


def test_influence_poisons_keep_their_labels_and_budget_and_raise_the_target_loss(data):
    from bench.poisoning import TARGETED
    from bench.poisoning import influence as inf

    keep = np.isin(data.y_train, [3, 8])
    X, y = data.x_train[keep].reshape(int(keep.sum()), -1), (data.y_train[keep] == 8).astype(np.float32)
    test = np.flatnonzero(np.isin(data.y_test, [3, 8]))[0]
    x_t, y_t = data.x_test[test].reshape(-1), float(data.y_test[test] == 8)
    eps = 0.3
    poisoned, _ = TARGETED["influence"](n_poisons=2, eps=eps, steps=10, lam=1e-3)(X, y, x_t, y_t)
    np.testing.assert_array_equal(poisoned.y, y)  # clean-label
    assert np.abs(poisoned.x - X).max() <= eps + 1e-6 and poisoned.x.min() >= 0 and poisoned.x.max() <= 1
    assert 1 <= len(poisoned.indices) <= 2
    np.testing.assert_array_equal(modified_indices(X, y, poisoned.x, poisoned.y), poisoned.indices)
    before = inf.test_loss(inf.fit(X, y, 1e-3), x_t, y_t)
    after = inf.test_loss(inf.fit(poisoned.x, y, 1e-3), x_t, y_t)
    assert after > 5 * before, (before, after)  # the target's loss rises (a wrong sign would lower it)


def test_feature_collision_poisons_keep_labels_and_budget_and_collide_with_the_target(data):
    from bench.poisoning import TARGETED

    module, logits_fn, params = _train(data, data.x_train, data.y_train, epochs=3)
    fn = features_fn(module)
    head = {"kernel": params["Dense_1"]["kernel"], "bias": params["Dense_1"]["bias"]}
    target = int(np.flatnonzero(data.y_test == 1)[0])
    eps = 0.2
    attack = TARGETED["feature_collision"](n_poisons=2, eps=eps, steps=50, head_steps=20)
    poisoned, _ = attack(fn, params, head, data.x_train, data.y_train, data.x_test[target], 0,
                         np.random.default_rng(0))
    np.testing.assert_array_equal(poisoned.y, data.y_train)  # clean-label: the bases keep their class 0
    assert (data.y_train[poisoned.info["bases"]] == 0).all()
    assert np.abs(poisoned.x - data.x_train).max() <= eps + 1e-6 and poisoned.x.min() >= 0 and poisoned.x.max() <= 1
    np.testing.assert_array_equal(modified_indices(data.x_train, data.y_train, poisoned.x, poisoned.y),
                                  poisoned.indices)
    f_t = extract(fn, params, data.x_test[target:target + 1])
    bases = poisoned.info["bases"]
    before = np.linalg.norm(extract(fn, params, data.x_train[bases]) - f_t, axis=1)
    after = np.linalg.norm(extract(fn, params, poisoned.x[bases]) - f_t, axis=1)
    assert (after < 0.8 * before).all(), (before, after)  # the poisons moved towards the target in feature space


def _flat_cosine(a, b):
    u, v = (np.concatenate([np.asarray(leaf, np.float64).ravel() for leaf in jax.tree.leaves(t)]) for t in (a, b))
    return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))


def test_gradient_matching_poisons_keep_labels_and_budget_and_raise_the_alignment(data):
    import jax.numpy as jnp

    from bench.poisoning import FROM_SCRATCH
    from bench.poisoning.gradient_matching import _ce, adversarial_gradient, alignment

    module = models.mlp(data.num_classes, data.mean, data.std, hidden=(64,))  # an untrained surrogate will do here
    logits_fn = models.make_logits_fn(module)
    params = models.init_params(module, jax.random.key(0), data.image_shape)
    target = int(np.flatnonzero(data.y_test == 1)[0])
    eps = 0.1
    attack = FROM_SCRATCH["gradient_matching"](ratio=0.01, eps=eps, steps=30, restarts=2)
    p = attack(logits_fn, params, data.x_train, data.y_train, data.x_test[target], 0, np.random.default_rng(0))
    np.testing.assert_array_equal(p.y, data.y_train)  # clean-label
    assert (data.y_train[p.info["bases"]] == 0).all() and len(p.info["bases"]) == round(0.01 * len(data.y_train))
    np.testing.assert_array_equal(modified_indices(data.x_train, data.y_train, p.x, p.y), p.indices)
    assert set(p.indices) <= set(p.info["bases"]) and len(p.indices) >= 1
    assert np.abs(p.x - data.x_train).max() <= eps + 1e-6 and p.x.min() >= 0 and p.x.max() <= 1
    assert p.x.dtype == np.float32
    # the objective is the cosine of the whole parameter gradient (dot products and norms summed over layers)
    bases = p.info["bases"]
    g_adv = adversarial_gradient(logits_fn, params, jnp.asarray(data.x_test[target]), 0)
    y_b = jnp.asarray(data.y_train[bases], jnp.int32)
    g_p = jax.jit(jax.grad(lambda q, x: _ce(logits_fn, q, x, y_b)))(params, jnp.asarray(p.x[bases]))
    assert float(alignment(logits_fn, params, jnp.asarray(p.x[bases]), y_b, g_adv)) == pytest.approx(
        _flat_cosine(g_p, g_adv), abs=1e-4)
    # crafting raises it: the trace climbs, and the kept poisons align better than the clean bases did
    trace = p.info["trace"]
    assert trace[-1] > trace[0] + 0.05, trace[[0, -1]]
    assert p.info["alignment"] > p.info["alignment_before"] + 0.05, (p.info["alignment_before"], p.info["alignment"])


def _scenario_run(tmp_path, overrides):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from bench.experiment import prepare

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose(config_name="config", overrides=["scenario=poisoning", "debug=tiny", "progress=false",
                                                       "scenario.filters=[]", "scenario.pictures=false", *overrides])
    scenario = instantiate(cfg.scenario, _convert_="object")
    exp = prepare(cfg, tmp_path, {"model": "mlp", "defense": "standard"}, scenario.streams)
    return scenario, scenario.run(exp).rows


def test_gradient_matching_in_the_scenario_names_its_target_and_keeps_the_budget(tmp_path):
    _, rows = _scenario_run(tmp_path, ["scenario.attack=gradient_matching", "scenario.ratio=0.02", "scenario.targets=1",
                                       "+scenario.args.steps=10", "+scenario.args.eps=0.05"])
    get = lambda ev, m: next(r for r in rows if r["evaluator"] == ev and r["metric"] == m)
    assert {r["evaluator"] for r in rows} == {"surrogate", "clean_training", "poisoned"}
    success = get("poisoned", "targeted_success")
    assert success["n"] == 1 and success["targets"].isdigit() and success["poison_eps"] == 0.05
    n = 1437  # digits' training split
    assert success["poison_ratio"] == pytest.approx(round(0.02 * n) / n)
    assert get("clean_training", "targeted_success")["poison_ratio"] == 0.0
    assert get("poisoned", "alignment")["value"] > get("poisoned", "alignment_before")["value"]
    assert all(r["dp_epsilon"] == float("inf") for r in rows)  # no DP: epsilon inf in every row


def test_dp_sgd_as_a_defense_records_the_accountants_epsilon(tmp_path):
    import dp_accounting

    from bench.privacy import accounting

    scenario, rows = _scenario_run(tmp_path, [
        "scenario.clean_reference=false", "scenario.dp.enabled=true", "scenario.dp.noise_multiplier=1.1",
        "scenario.dp.batch_size=128", "scenario.dp.epochs=1", "scenario.dp.pad_multiple=64",
        "scenario.dp.microbatch_size=null"])
    assert scenario.defense_label("standard") == "standard+dp_sgd"
    row = next(r for r in rows if r["evaluator"] == "poisoned" and r["metric"] == "attack_success_rate")
    eps, q, sigma, steps, delta = (row[k] for k in ("dp_epsilon", "dp_sampling_rate", "dp_noise_multiplier",
                                                    "dp_steps", "dp_delta"))
    assert all(r.get("dp_epsilon") == eps for r in rows) and np.isfinite(eps) and eps > 0 and sigma == 1.1
    n = 1437  # digits' training split
    assert q == pytest.approx(128 / n) and steps == int(np.ceil(1 / q)) and delta == accounting.default_delta(n)
    # the privacy scenario's accountant call and a direct dp-accounting composition give the recorded epsilon
    assert eps == accounting.epsilon(accounting.dpsgd_event(q, sigma, steps), delta, "pld")
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
    assert eps == pytest.approx(dp_accounting.pld.PLDAccountant().compose(event, int(steps)).get_epsilon(delta),
                                abs=1e-9)
    assert next(r for r in rows if r["metric"] == "epsilon")["value"] == eps
    assert row["dp_epsilon_rdp"] >= eps  # RDP is never tighter than PLD


def test_the_augmentation_translates_each_image_by_its_own_offset_with_zero_fill():
    from bench.poisoning.augment import shifted, translate

    x = np.arange(2 * 4 * 5, dtype=np.float32).reshape(2, 4, 5, 1) + 1
    out = np.asarray(translate(x, np.array([[1, -2], [0, 0]]), 2))
    expected = np.zeros_like(x[0])
    expected[1:, :3] = x[0, :3, 2:]  # down 1, left 2; what moved out is gone, what came in is 0
    np.testing.assert_array_equal(out[0], expected)
    np.testing.assert_array_equal(out[1], x[1])
    objective = lambda params, batch, key, step: (0.0, {})
    assert shifted(objective, 0) is objective
    with pytest.raises(BenchError, match="scenario.augment.shift"):
        shifted(objective, -1)


def test_bad_gradient_matching_and_dp_settings_are_one_line_errors():
    from bench.poisoning import FROM_SCRATCH
    from bench.scenarios.poisoning import Poisoning, PoisonDP

    for eps in (0.0, -0.1, 1.5):
        with pytest.raises(BenchError, match="eps .*scenario.args.eps"):
            FROM_SCRATCH["gradient_matching"](eps=eps)
    with pytest.raises(BenchError, match="scenario.ratio"):
        FROM_SCRATCH["gradient_matching"](ratio=0.0)
    with pytest.raises(BenchError, match="set scenario.ratio instead"):
        Poisoning(attack="gradient_matching", ratio=0.01, target=0, args={"ratio": 0.1}).make_attack()
    with pytest.raises(BenchError, match="bench/poisoning/gradient_matching.py"):
        Poisoning(attack="gradient_matching", ratio=0.01, target=0, args={"epsilon": 0.1}).make_attack()
    no_budget = PoisonDP(enabled=True, target_epsilon=None, noise_multiplier=None)
    with pytest.raises(BenchError, match="scenario.dp.target_epsilon"):
        Poisoning(attack="badnets", ratio=0.1, target=0, dp=no_budget).check_dp()
    with pytest.raises(BenchError, match="scenario.dp.enabled=false"):
        Poisoning(attack="badnets", ratio=0.1, target=0,
                  dp=PoisonDP(enabled=True, target_epsilon=0.0, noise_multiplier=None)).check_dp()
    Poisoning(attack="badnets", ratio=0.1, target=0, dp=PoisonDP(enabled=False)).check_dp()  # off: nothing to check
