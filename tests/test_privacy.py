"""Privacy of training data: DP-SGD accounting, clipping, noise; membership inference; canary audit."""

from __future__ import annotations

import math

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from bench import models
from bench.defenses import standard
from bench.privacy import dp_sgd, ghost
from bench.errors import BenchError
from bench.privacy import accounting

# q = 256/60000, sigma 1.1, 60 epochs, delta 1e-5 (Abadi et al. 2016's MNIST setting). Pinned from
# dp-accounting 0.6.0 with its default RDP orders and PLD discretisation; the issue quotes about 2.6 / 2.38.
ABADI_RDP = 2.596655529521983
ABADI_PLD = 2.381778812581751


def _tiny_model():
    model = models.mlp(3, (0.5,), (0.25,), hidden=(8,))
    logits_fn = models.make_logits_fn(model)
    return logits_fn, models.init_params(model, jax.random.key(0), (2, 2, 1))


def test_known_test_vector_both_accountants():
    q, sigma, delta = 256 / 60000, 1.1, 1e-5
    steps = math.ceil(60 / q)
    event = accounting.dpsgd_event(q, sigma, steps)
    rdp = accounting.epsilon(event, delta, "rdp")
    pld = accounting.epsilon(event, delta, "pld")
    assert rdp == pytest.approx(ABADI_RDP, rel=1e-6) and abs(rdp - 2.6) < 0.05
    assert pld == pytest.approx(ABADI_PLD, rel=1e-6) and abs(pld - 2.38) < 0.02
    assert pld < rdp  # PLD is tighter


def test_default_delta():
    assert accounting.default_delta(4000) == 1e-5
    assert accounting.default_delta(60000) == 1e-5
    assert accounting.default_delta(500_000) == 1e-6
    assert accounting.default_delta(50) == 1e-5


def test_calibrated_sigma_meets_the_target_tightly():
    q, steps, delta = 0.05, 200, 1e-5
    for kind in ("rdp", "pld"):
        sigma = accounting.calibrate_sigma(3.0, delta, q, steps, kind)
        assert accounting.epsilon(accounting.dpsgd_event(q, sigma, steps), delta, kind) <= 3.0
        assert accounting.epsilon(accounting.dpsgd_event(q, 0.99 * sigma, steps), delta, kind) > 3.0


def test_plan_checks_its_budget():
    p = dp_sgd.plan(4000, clip_norm=1.0, batch_size=250, epochs=2, noise_multiplier=1.0)
    assert p.q == 250 / 4000 and p.steps == 32 and p.delta == 1e-5 and p.steps_per_epoch == 16 and p.epochs == 2
    with pytest.raises(BenchError):
        dp_sgd.plan(4000, clip_norm=1.0, batch_size=250, epochs=2, noise_multiplier=1.0, target_epsilon=3.0)
    with pytest.raises(BenchError):
        dp_sgd.plan(4000, clip_norm=0.0, batch_size=250, epochs=2, noise_multiplier=1.0)


@pytest.mark.parametrize("microbatch_size", [1, None, "ghost"])
def test_clipping_sensitivity_on_neighbouring_batches(microbatch_size):
    """Removing one example moves the clipped sum by at most C; replacing one by at most 2C (and nearly 2C).

    "ghost": the per-layer norm path (bench/privacy/ghost.py)."""
    logits_fn, params = _tiny_model()
    clip = 0.05
    if microbatch_size == "ghost":
        value_and_grad = jax.jit(ghost.ghost_value_and_grad(models.mlp(3, (0.5,), (0.25,), hidden=(8,)), clip)(None))
    else:
        value_and_grad = jax.jit(dp_sgd.clipped_value_and_grad(clip, microbatch_size)(standard(logits_fn)))
    rng = np.random.default_rng(0)
    worst_remove = worst_replace = 0.0
    for trial in range(20):
        x = rng.uniform(0, 1, (16, 2, 2, 1)).astype(np.float32) * (10.0 if trial % 2 else 1.0)
        y = rng.integers(0, 3, 16).astype(np.int32)
        pad = np.zeros(16, bool)
        key = jax.random.key(trial)
        _, g = value_and_grad(params, (x, y), key, 0, pad)
        removed = pad.copy()
        removed[trial % 16] = True
        _, g_removed = value_and_grad(params, (x, y), key, 0, removed)
        x2, y2 = x.copy(), y.copy()
        x2[trial % 16] = -x2[trial % 16]
        y2[trial % 16] = (y2[trial % 16] + 1) % 3
        _, g_replaced = value_and_grad(params, (x2, y2), key, 0, pad)
        worst_remove = max(worst_remove, float(optax.tree.norm(jax.tree.map(jnp.subtract, g, g_removed))))
        worst_replace = max(worst_replace, float(optax.tree.norm(jax.tree.map(jnp.subtract, g, g_replaced))))
    assert worst_remove <= clip * (1 + 1e-5)
    assert worst_replace <= 2 * clip * (1 + 1e-5)
    assert worst_remove > 0.9 * clip  # the bound is reached: gradients are being clipped


@pytest.mark.parametrize("arch,shape", [("cnn_small", (28, 28, 1)), ("mlp", (8, 8, 1)), ("cnn_small", (17, 15, 3))])
def test_ghost_clipped_sum_equals_jax_privacy(arch, shape):
    """The ghost-norm path's clipped sum, loss and accuracy are jax-privacy's on the same batch (padding included)."""
    model = models.MODELS[arch](10, (0.4,) * shape[2], (0.3,) * shape[2])
    logits_fn = models.make_logits_fn(model)
    params = models.init_params(model, jax.random.key(0), shape)
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (24, *shape)).astype(np.float32)
    y = rng.integers(0, 10, 24).astype(np.int32)
    pad = np.arange(24) >= 20
    args = (params, (x, y), jax.random.key(2), 0, pad)
    for clip in (1e-3, 1.0, 1e3):  # every example clipped, some, none
        (loss_ref, aux_ref), ref = jax.jit(dp_sgd.clipped_value_and_grad(clip, 1)(standard(logits_fn)))(*args)
        (loss, aux), got = jax.jit(ghost.ghost_value_and_grad(model, clip)(None))(*args)
        assert jax.tree.structure(got) == jax.tree.structure(ref)
        scale = max(float(jnp.max(jnp.abs(v))) for v in jax.tree.leaves(ref))
        for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got)):
            np.testing.assert_allclose(b, a, atol=2e-5 * scale, rtol=1e-4)
        np.testing.assert_allclose(loss, loss_ref, rtol=1e-5)
        np.testing.assert_allclose(aux["accuracy"], aux_ref["accuracy"])


def test_ghost_clipping_refuses_what_it_cannot_compute():
    """Max-pooling nets and other objectives are not the ghost path's: a clear reason, and per-example stays."""
    assert ghost.supports(models.madry_cnn(10, (0.5,), (0.5,)), "standard") is not None
    assert "pgd_at" in ghost.supports(models.cnn_small(10, (0.5,), (0.5,)), "pgd_at")
    assert ghost.supports(models.cnn_small(10, (0.5,), (0.5,)), "standard") is None
    with pytest.raises(BenchError, match="ConvNet"):
        ghost.ghost_value_and_grad(models.madry_cnn(10, (0.5,), (0.5,)), 1.0)


def test_noise_has_the_configured_scale():
    """Kolmogorov-Smirnov: the privatizer's noise is N(0, (sigma C)^2), not 2/3 or 3/2 of it."""
    sigma, clip = 1.3, 0.7
    opt = dp_sgd.dp_optimizer(optax.identity(), clip_norm=clip, noise_multiplier=sigma, expected_batch_size=1.0,
                              key=jax.random.key(3))
    zeros = {"w": jnp.zeros((4000,))}
    noisy, _ = opt.update(zeros, opt.init(zeros))
    noise = np.asarray(noisy["w"])
    assert stats.kstest(noise, "norm", args=(0, sigma * clip)).pvalue > 0.01
    for factor in (2 / 3, 3 / 2):
        assert stats.kstest(noise, "norm", args=(0, factor * sigma * clip)).pvalue < 1e-6


def test_microbatched_and_vmapped_clipping_agree():
    """microbatch_size=1 (a loop that stops at the last real example) and None (one vmap) give the same sum."""
    logits_fn, params = _tiny_model()
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (8, 2, 2, 1)).astype(np.float32) * 5
    y = rng.integers(0, 3, 8).astype(np.int32)
    pad = np.array([False, False, True, False, False, False, True, True])  # padding inside and at the end
    out = {mb: jax.jit(dp_sgd.clipped_value_and_grad(0.1, mb)(standard(logits_fn)))(params, (x, y), jax.random.key(0),
                                                                                   0, pad)
           for mb in (1, 2, None)}
    for mb in (1, 2):
        (loss, aux), g = out[mb]
        (loss0, aux0), g0 = out[None]
        assert float(loss) == pytest.approx(float(loss0), rel=1e-5)
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g0)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    with pytest.raises(BenchError, match="multiple of microbatch_size"):
        dp_sgd.clipped_value_and_grad(0.1, 3)(standard(logits_fn))(params, (x, y), jax.random.key(0), 0, pad)


def test_poisson_sampler_pads_and_counts_steps():
    s = dp_sgd.PoissonSampler(1000, 0.05, steps=30, steps_per_epoch=20, pad_multiple=16)
    rng = np.random.default_rng(0)
    first, second = s(0, lambda epoch: rng), s(1, lambda epoch: rng)
    assert len(first) == 20 and len(second) == 10 and s.steps_taken == 30
    sizes = []
    assert s.batch_shape % 16 == 0 and s.batch_shape > 80  # binomial(1000, 0.05) exceeds 80 with prob < 1e-6
    for idx in first + second:
        assert idx.size == s.batch_shape  # one shape: the step compiles once
        real = idx[idx >= 0]
        assert np.all(idx[len(real):] == -1) and len(np.unique(real)) == len(real) and real.max() < 1000
        sizes.append(len(real))
    assert 35 < np.mean(sizes) < 65  # expected 50


def test_poisson_sampler_without_a_fixed_shape_pads_each_batch_to_its_next_multiple():
    """The ghost path's padding: the same batches as with a fixed shape, each padded only to its next multiple."""
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    fixed = dp_sgd.PoissonSampler(1000, 0.05, steps=20, steps_per_epoch=20, pad_multiple=16)(0, lambda e: rng_a)
    tight = dp_sgd.PoissonSampler(1000, 0.05, steps=20, steps_per_epoch=20, pad_multiple=16,
                                  fixed_shape=False)(0, lambda e: rng_b)
    for a, b in zip(fixed, tight, strict=True):
        real = b[b >= 0]
        np.testing.assert_array_equal(a[a >= 0], real)  # the same examples: only the padding differs
        assert b.size % 16 == 0 and len(real) <= b.size < len(real) + 16 and np.all(b[len(real):] == -1)
    assert max(b.size for b in tight) < fixed[0].size  # less padding than the fixed shape (which is > 80)


def test_a_run_resumed_after_its_training_finished_still_counts_every_step(tmp_path):
    """The accountant composes `steps_taken`: a rerun that finds the final checkpoint trains nothing, never calls
    the sampler, and must still report all the steps, not 0 (a CI run crashed in the accountant on this)."""
    from bench import checkpoint, train

    x = np.random.default_rng(0).normal(size=(200, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    model = models.mlp(2, (0.0,), (1.0,), hidden=(8,))
    logits_fn = models.make_logits_fn(model)
    params = models.init_params(model, jax.random.key(0), x.shape[1:])
    counts = []
    for _ in range(2):  # the first run trains and saves; the second finds training finished
        sampler = dp_sgd.PoissonSampler(200, 0.1, steps=30, steps_per_epoch=10, pad_multiple=16)
        train.train(standard(logits_fn), params, optax.sgd(0.1), x, y, epochs=3, batch_size=20,
                    key=jax.random.key(1), progress=False, sampler=sampler,
                    checkpointer=checkpoint.Checkpointer(tmp_path, every_steps=7))
        counts.append(sampler.steps_taken)
    assert counts == [30, 30]


# --- membership inference and auditing ---------------------------------------------------------------------------

def _fit_mlp(x, y, epochs, key, hidden=(64,)):
    from bench import train

    model = models.mlp(10, (0.3,), (0.3,), hidden=hidden)
    logits_fn = models.make_logits_fn(model)
    params = models.init_params(model, jax.random.key(key), x.shape[1:])
    opt = train.make_optimizer("adam", 3e-3, "constant", 1)
    params, _ = train.train(standard(logits_fn), params, opt, x, y, epochs=epochs, batch_size=50,
                            key=jax.random.key(key + 1), progress=False)
    return logits_fn, params


@pytest.fixture(scope="module")
def digit_splits(digits_data):
    """Three disjoint sets of 200 digits: A (the target's training set), B (held out), C (a third party's)."""
    d = digits_data
    x, y = np.concatenate([d.x_train, d.x_test]), np.concatenate([d.y_train, d.y_test])
    order = np.random.default_rng(0).permutation(len(y))
    return [(x[order[i * 200:(i + 1) * 200]], y[order[i * 200:(i + 1) * 200]]) for i in range(3)]


def test_membership_inference_separates_an_overfit_model_and_not_an_unrelated_one(digit_splits):
    from bench.privacy import membership, shadow

    (xa, ya), (xb, yb), (xc, yc) = digit_splits
    logits_fn, overfit = _fit_mlp(xa, ya, epochs=60, key=0)
    _, unrelated = _fit_mlp(xc, yc, epochs=60, key=0)  # never saw A or B

    def loss_auc(params):
        la, _ = membership.loss_and_confidence(logits_fn, params, xa, ya)
        lb, _ = membership.loss_and_confidence(logits_fn, params, xb, yb)
        return membership.attack_metrics(membership.loss_threshold_scores(la), membership.loss_threshold_scores(lb))

    assert loss_auc(overfit)["auc"] > 0.6
    assert abs(loss_auc(unrelated)["auc"] - 0.5) < 0.08

    # LiRA with 8 shadows trained together (vmap) on random halves of A and B.
    x_pop, y_pop = np.concatenate([xa, xb]), np.concatenate([ya, yb])
    keep = membership.random_halves(8, 400, np.random.default_rng(1))
    assert np.all(keep.sum(0) == 4) and np.all(keep.sum(1) == 200)
    model = models.mlp(10, (0.3,), (0.3,), hidden=(64,))
    from bench import train

    stacked = shadow.train_shadows(standard(logits_fn), lambda k: models.init_params(model, k, xa.shape[1:]),
                                   lambda k: train.make_optimizer("adam", 3e-3, "constant", 1), x_pop, y_pop, keep,
                                   epochs=60, batch_size=50, key=jax.random.key(2))
    shadow_conf = shadow.shadow_confidences(logits_fn, stacked, x_pop, y_pop)
    is_member = np.r_[np.ones(200, bool), np.zeros(200, bool)]
    for params, overfit_model in ((overfit, True), (unrelated, False)):
        _, conf = membership.loss_and_confidence(logits_fn, params, x_pop, y_pop)
        for online in (False, True):
            for fixed in (False, True):
                s = membership.lira_scores(conf, shadow_conf, keep, online=online, fixed_variance=fixed)
                m = membership.attack_metrics(s[is_member], s[~is_member])
                if overfit_model:
                    assert m["auc"] > 0.6 and m["tpr_at_1%_fpr"] > 0.03, (online, fixed, m)
                else:
                    assert abs(m["auc"] - 0.5) < 0.1, (online, fixed, m)


def test_attack_metrics_on_known_scores():
    from bench.privacy import membership

    rng = np.random.default_rng(0)
    same = membership.attack_metrics(rng.normal(size=5000), rng.normal(size=5000))
    assert abs(same["auc"] - 0.5) < 0.03 and same["tpr_at_1%_fpr"] < 0.03
    apart = membership.attack_metrics(rng.normal(3, 1, 5000), rng.normal(size=5000))
    assert apart["auc"] == pytest.approx(stats.norm.cdf(3 / np.sqrt(2)), abs=0.01)
    assert apart["balanced_accuracy"] == pytest.approx(stats.norm.cdf(1.5), abs=0.02)
    assert apart["tpr_at_1%_fpr"] == pytest.approx(stats.norm.sf(stats.norm.isf(0.01) - 3), abs=0.05)


def test_audit_bound_and_invariant():
    from bench.privacy import audit

    rng = np.random.default_rng(0)
    included = rng.random(1000) < 0.5
    losses = np.where(included, 0.0, 5.0)  # a model that memorises every included canary
    found = audit.audit(losses, included, delta=1e-5)
    assert found["auc"] == 1.0 and found["epsilon_lower_bound"] > 2.0
    audit.check_invariant(found["epsilon_lower_bound"], 50.0)
    with pytest.raises(audit.PrivacyViolation):
        audit.check_invariant(found["epsilon_lower_bound"], 1.0)
    blind = audit.audit(rng.normal(size=1000), included, delta=1e-5)
    assert blind["epsilon_lower_bound"] < 0.5


@pytest.mark.slow
def test_privacy_run_records_the_epsilon_dp_accounting_gives(tmp_path):
    """End to end on digits: the recorded epsilons are dp-accounting's for the recorded events; audit <= epsilon."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from hydra.utils import instantiate

    from bench.experiment import finish, prepare

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        cfg = compose(config_name="config", overrides=[
            "scenario=privacy", "dataset=digits", "model=mlp", "model.hidden=[32]", "progress=false",
            "train.learning_rate=3e-3", "scenario.dp.batch_size=128", "scenario.dp.epochs=2",
            "scenario.dp.target_epsilon=2.0", "scenario.membership.lira.shadows=0", "scenario.audit.canaries=200",
            "scenario.membership.n_members=300", "checkpoint.dir=null"])
    scenario = instantiate(cfg.scenario, _convert_="object")
    experiment = prepare(cfg, tmp_path, {"model": "mlp", "defense": "standard"}, scenario.streams)
    frame = finish(experiment, scenario, scenario.run(experiment))
    assert (tmp_path / "records.parquet").exists()
    get = lambda ev, metric: float(frame[(frame.evaluator == ev) & (frame.metric == metric)].value.iloc[0])
    q, sigma, steps, delta = (get("accountant_pld", m) for m in ("sampling_rate", "noise_multiplier", "steps", "delta"))
    assert delta == 1e-5 and steps == math.ceil(2 / q)
    assert set(frame[frame.evaluator.str.startswith("accountant")].relation) == {"add_or_remove_one"}
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
    direct_pld = dp_accounting.pld.PLDAccountant().compose(event, int(steps)).get_epsilon(delta)
    direct_rdp = dp_accounting.rdp.RdpAccountant().compose(event, int(steps)).get_epsilon(delta)
    assert abs(get("accountant_pld", "epsilon") - direct_pld) < 1e-9
    assert abs(get("accountant_rdp", "epsilon") - direct_rdp) < 1e-9
    assert direct_pld <= 2.0
    assert get("canary_audit", "epsilon_lower_bound") <= direct_pld
    assert 0.0 <= get("loss_threshold", "auc") <= 1.0 and get("utility", "test_accuracy") > 0.3
    from bench.privacy.report import privacy_table

    table = privacy_table(frame)
    assert len(table) == 1 and table.epsilon.iloc[0] == round(direct_pld, 2)
    assert table.accuracy.iloc[0] == pytest.approx(100 * get("utility", "test_accuracy"))
    assert table.eps_audit_lb.iloc[0] == get("canary_audit", "epsilon_lower_bound")
    from bench.privacy.report import write_privacy_tables

    paths = write_privacy_tables(frame, tmp_path / "tables", note="Made by a test.")
    assert paths["md"].read_text().startswith("# Privacy vs utility\n\nMade by a test.\n\n")


def test_pate_partitions_aggregation_and_accounting():
    from bench.privacy import pate

    keep = pate.teacher_partitions(103, 10, np.random.default_rng(0))
    assert np.all(keep.sum(1) == 10) and keep.sum(0).max() == 1  # disjoint, equal
    votes = np.array([[0, 9, 1], [5, 0, 4], [2, 2, 6]])
    assert list(pate.gnmax(votes, 1e-3, np.random.default_rng(0))) == [1, 0, 2]
    noisy = pate.gnmax(np.tile([6, 4, 0], (4000, 1)), 2.0, np.random.default_rng(0))
    expected = stats.norm.cdf(2 / (2.0 * np.sqrt(2)))  # P(6 + N > 4 + N'), the third class never wins in practice
    assert abs(np.mean(noisy == 0) - expected) < 0.03
    # One changed vote moves the histogram by sqrt(2): a Gaussian mechanism with noise multiplier sigma / sqrt(2).
    event = pate.gnmax_event(20.0, 100)
    direct = dp_accounting.rdp.RdpAccountant().compose(dp_accounting.GaussianDpEvent(20.0 / np.sqrt(2)), 100)
    assert accounting.epsilon(event, 1e-5, "rdp") == pytest.approx(direct.get_epsilon(1e-5), abs=1e-12)


# --- resume: a DP-SGD run killed with SIGKILL ends as if never interrupted -------------------------------------

DP_RUN = ["scenario=privacy", "debug=tiny", "model.hidden=[32]", "dataset.n_train=500", "dataset.n_test=200",
          "scenario.dp.batch_size=64", "scenario.dp.epochs=2", "scenario.dp.noise_multiplier=1.0",
          "scenario.membership.lira.shadows=0",
          "scenario.audit.canaries=50", "scenario.membership.n_members=100", "progress=false",
          "checkpoint.every_steps=3"]


def _dp_run(run_dir, ckpt):
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    return [sys.executable, "-m", "bench", *DP_RUN, f"hydra.run.dir={run_dir}", f"checkpoint.dir={ckpt}"], root


def _dp_records(run_dir):
    import pandas as pd

    frame = pd.read_parquet(run_dir / "records.parquet")
    frame = frame[~frame.metric.isin(["seconds", "resumed_from_step"])].drop(columns=["run_id", "created", "seconds",
                                                                                       "git_rev"])
    return frame.sort_values(["evaluator", "metric"]).reset_index(drop=True)


@pytest.mark.slow
def test_killed_dp_run_resumes_to_the_same_params_epsilon_and_records(tmp_path):
    """The Poisson sampler's position comes back from the step, the noise key from the optimizer state."""
    import subprocess

    import pandas as pd
    from conftest import cli_env, kill_at_first_checkpoint
    from flax import serialization

    env = cli_env(tmp_path)
    args, root = _dp_run(tmp_path / "reference", tmp_path / "ckpt_reference")
    out = subprocess.run(args, cwd=root, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-2000:]

    ckpt = tmp_path / "ckpt"
    args, root = _dp_run(tmp_path / "killed", ckpt)
    kill_at_first_checkpoint(args, root, env, ckpt)
    assert not (tmp_path / "killed" / "records.parquet").exists()

    args, root = _dp_run(tmp_path / "resumed", ckpt)
    out = subprocess.run(args, cwd=root, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    resumed_at = [line for line in out.stderr.splitlines() if line.startswith("resuming from")]
    assert resumed_at, out.stderr[-2000:]
    step = int(resumed_at[0].split(" at step ")[1].split()[0])
    frame = pd.read_parquet(tmp_path / "resumed" / "records.parquet")
    steps = frame[(frame.evaluator == "accountant_pld") & (frame.metric == "steps")].value.iloc[0]
    assert 0 < step < steps  # killed in the middle of training
    assert frame[frame.metric == "resumed_from_step"].value.tolist() == [step]
    pd.testing.assert_frame_equal(_dp_records(tmp_path / "reference"), _dp_records(tmp_path / "resumed"))
    leaves = lambda d: jax.tree.leaves(serialization.msgpack_restore((d / "params.msgpack").read_bytes()))
    assert all(np.array_equal(a, b) for a, b in zip(leaves(tmp_path / "reference"), leaves(tmp_path / "resumed")))
    eps = frame[(frame.evaluator == "accountant_pld") & (frame.metric == "epsilon")].value.iloc[0]
    print(f"\nDP-SGD run killed, resumed at step {step} of {int(steps)}: parameters bit-identical, epsilon (PLD) "
          f"{eps:.4f} and {len(_dp_records(tmp_path / 'resumed'))} record rows identical to the uninterrupted run")
