"""Adversarial-training objectives: exact one-step values on a hand-built net, the robustness they buy, and
catastrophic-overfitting detection.

The exact tests use a two-class linear model. There the input gradient of the
cross-entropy is (1 - p_y)(w_other - w_y), whose sign never changes, and the
TRADES KL gradient keeps the sign of its starting displacement; with every image
pixel at the [0, 1] bound that blocks the descent side, every inner attack of
the suite (FGSM, FGSM from a random start at step 1.25 eps, PGD, TRADES' KL-PGD)
ends exactly at the corner x + eps * s. The tests compute that corner, the loss
and the parameter gradient directly and compare with the objectives.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bench import evaluate, models, train
from bench.attacks import pgd
from bench.data import digits
from bench.defenses import DEFENSES, fgsm_at, fgsm_rs, pgd_at, standard, trades
from bench.defenses.adversarial import warmup_scale
from bench.overfitting import detect_collapse, overfit_monitor, split_holdout
from bench.errors import BenchError

EPS = 0.2


def linear_logits(params, x):
    return x.reshape(x.shape[0], -1) @ params["w"] + params["b"]


@pytest.fixture(scope="module")
def toy():
    """Two-class linear net, and images sitting at the bound opposite to the loss-ascent direction."""
    rng = np.random.default_rng(0)
    d = 16
    w0 = rng.normal(size=d)
    w1 = w0 + rng.choice([-1.0, 1.0], size=d) * rng.uniform(0.3, 1.0, size=d)  # |w1 - w0| >= 0.3 everywhere
    params = {"w": jnp.asarray(np.stack([w0, w1], 1) * 0.5, jnp.float32), "b": jnp.asarray([0.1, -0.1], jnp.float32)}
    y = np.array([0, 1, 1, 0, 1, 0, 0, 1], np.int32)
    w = np.asarray(params["w"])
    ascent = np.sign(np.where(y[:, None] == 0, w[:, 1] - w[:, 0], w[:, 0] - w[:, 1]))  # sign(w_other - w_y)
    x = np.where(ascent > 0, 0.0, 1.0).astype(np.float32).reshape(-1, 4, 4, 1)
    corner = (x + EPS * ascent.reshape(x.shape)).astype(np.float32)
    return params, jnp.asarray(x), jnp.asarray(y), jnp.asarray(corner)


def ce(params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(linear_logits(params, x), y).mean()


def kl(params, x, x_adv):
    p = jax.nn.softmax(linear_logits(params, x))
    log_q = jax.nn.log_softmax(linear_logits(params, x_adv))
    return jnp.sum(p * (jnp.log(p) - log_q), -1).mean()


def direct_losses(corner):
    """Each defense's loss written out by hand, with the adversarial point fixed at the corner."""
    return {
        "fgsm_at": lambda p, x, y: 0.3 * ce(p, x, y) + 0.7 * ce(p, corner, y),
        "fgsm_rs": lambda p, x, y: ce(p, corner, y),
        "pgd_at": lambda p, x, y: ce(p, corner, y),
        "trades": lambda p, x, y: ce(p, x, y) + 2.5 * kl(p, x, corner),
    }


BUILT = {
    "fgsm_at": lambda: fgsm_at(linear_logits, eps=EPS, clean_weight=0.3),
    "fgsm_rs": lambda: fgsm_rs(linear_logits, eps=EPS),
    "pgd_at": lambda: pgd_at(linear_logits, eps=EPS, steps=5),
    "trades": lambda: trades(linear_logits, eps=EPS, beta=2.5, steps=5),
}


def test_every_adversarial_defense_is_registered():
    assert set(BUILT) <= set(DEFENSES)
    assert all(DEFENSES[name] is fn for name, fn in
               (("fgsm_at", fgsm_at), ("fgsm_rs", fgsm_rs), ("pgd_at", pgd_at), ("trades", trades)))


@pytest.mark.parametrize("name", sorted(BUILT))
def test_one_step_loss_and_gradient_match_direct_computation(toy, name):
    params, x, y, corner = toy
    objective = BUILT[name]()
    direct = direct_losses(corner)[name]
    for seed in range(2):  # the random starts differ; the corner does not
        key = jax.random.key(seed)
        (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(params, (x, y), key, jnp.int32(0))
        want_loss, want_grads = jax.value_and_grad(direct)(params, x, y)
        np.testing.assert_allclose(loss, want_loss, rtol=1e-5, atol=1e-6)
        for k in params:
            np.testing.assert_allclose(grads[k], want_grads[k], rtol=1e-4, atol=1e-6)
        assert float(aux["eps"]) == pytest.approx(EPS)
    assert float(loss) > float(ce(params, x, y)) or name in ("fgsm_at", "trades")  # the attack did something


def test_standard_objective_is_clean_cross_entropy(toy):
    params, x, y, _ = toy
    loss, _ = standard(linear_logits)(params, (x, y), jax.random.key(0), jnp.int32(0))
    np.testing.assert_allclose(loss, ce(params, x, y), rtol=1e-6)


def test_eps_warmup_is_linear_and_traced(toy):
    params, x, y, corner = toy
    traces = []

    def counted(params, batch, key, step):
        traces.append(1)
        return objective(params, batch, key, step)

    objective = pgd_at(linear_logits, eps=EPS, steps=5, warmup_steps=10)
    step_fn = jax.jit(jax.value_and_grad(counted, has_aux=True))
    half = x + 0.5 * (corner - x)
    for step, x_want in ((5, half), (10, corner), (400, corner), (0, x)):
        (loss, aux), _ = step_fn(params, (x, y), jax.random.key(1), jnp.int32(step))
        np.testing.assert_allclose(loss, ce(params, x_want, y), rtol=1e-5)
        assert float(aux["eps"]) == pytest.approx(EPS * min(step / 10, 1.0))
    assert len(traces) == 1  # eps follows the traced step: no recompilation
    assert float(warmup_scale(jnp.int32(3), 0)) == 1.0


def test_bad_hyper_parameters_are_clear_errors():
    with pytest.raises(BenchError, match="clean_weight"):
        fgsm_at(linear_logits, eps=0.1, clean_weight=1.5)
    with pytest.raises(BenchError, match="beta"):
        trades(linear_logits, eps=0.1, beta=-1)
    with pytest.raises(BenchError, match="warmup_steps"):
        pgd_at(linear_logits, eps=0.1, warmup_steps=-3)
    with pytest.raises(BenchError, match="epsilon"):
        fgsm_rs(linear_logits, eps=2.0)


# --- robustness actually bought -------------------------------------------------------------------

DIGITS_EPS = 0.15


@pytest.fixture(scope="module")
def digits_setup():
    data = digits()
    model = models.mlp(data.num_classes, data.mean, data.std, hidden=(64,))
    logits_fn = models.make_logits_fn(model)
    init = models.init_params(model, jax.random.key(0), data.image_shape)
    return data, logits_fn, init


def _fit(objective, init, data, epochs, key=1):
    optimizer = train.make_optimizer("adam", 3e-3, "constant")
    params, _ = train.train(objective, init, optimizer, data.x_train, data.y_train, epochs=epochs,
                                  batch_size=64, key=jax.random.key(key), progress=False)
    return params


def _pgd_accuracy(logits_fn, params, x, y, eps=DIGITS_EPS, steps=20):
    x_adv = pgd(eps=eps, steps=steps)(logits_fn, params, jnp.asarray(x), jnp.asarray(y), jax.random.key(7))
    clean = evaluate.predict(logits_fn, params, x) == y
    return float(np.mean(clean & (evaluate.predict(logits_fn, params, np.asarray(x_adv)) == y)))


@pytest.fixture(scope="module")
def trained(digits_setup):
    """A standard and a PGD-trained MLP on digits (seeded, same init and batches)."""
    data, logits_fn, init = digits_setup
    return _fit(standard(logits_fn), init, data, epochs=8), _fit(pgd_at(logits_fn, eps=DIGITS_EPS, steps=5), init,
                                                                 data, epochs=8)


def test_pgd_training_buys_robustness_on_digits(digits_setup, trained):
    data, logits_fn, _ = digits_setup
    plain, robust = trained
    acc_plain = _pgd_accuracy(logits_fn, plain, data.x_test, data.y_test)
    acc_robust = _pgd_accuracy(logits_fn, robust, data.x_test, data.y_test)
    assert evaluate.accuracy(logits_fn, robust, data.x_test, data.y_test) > 0.85
    assert acc_robust > acc_plain + 0.25, (acc_plain, acc_robust)  # measured: 0.15 vs 0.57


# --- catastrophic overfitting -------------------------------------------------------------------------

def test_detect_collapse_on_synthetic_histories():
    assert detect_collapse([]) == ""
    assert detect_collapse([0.0, 0.1, 0.4, 0.55, 0.6, 0.58]) == ""  # healthy, small dip
    assert detect_collapse([0.0, 0.0, 0.3]) == ""  # warm-up from zero is not a collapse
    assert "fell" in detect_collapse([0.2, 0.6, 0.7, 0.05])
    assert detect_collapse([0.6, 0.7, 0.55], max_drop=0.2) == ""
    assert "floor" in detect_collapse([0.6, 0.7, 0.55], max_drop=0.5, floor=0.6)
    assert detect_collapse([0.1, 0.2, 0.3], max_drop=0.5, floor=0.6) == ""  # never reached the floor
    # never PGD-robust, yet FGSM-robust: the FGSM/PGD gap catches it when asked to
    assert detect_collapse([0.0, 0.01, 0.0], fgsm_accuracy=0.8) == ""
    assert "FGSM" in detect_collapse([0.0, 0.01, 0.0], fgsm_accuracy=0.8, max_gap=0.5)
    assert detect_collapse([0.5, 0.6, 0.62], fgsm_accuracy=0.8, max_gap=0.5) == ""


def test_split_holdout_never_overlaps_training():
    x, y = np.arange(20.0).reshape(10, 2), np.arange(10)
    x_tr, y_tr, x_ho, y_ho = split_holdout(x, y, 3)
    assert list(y_tr) == list(range(7)) and list(y_ho) == [7, 8, 9]
    with pytest.raises(BenchError, match="n_examples"):
        split_holdout(x, y, 10)


def test_overfit_monitor_trips_on_collapse_and_keeps_healthy_params(digits_setup, trained):
    """The real per-epoch PGD check fed a robust model, then a non-robust one (a collapse), then the reverse."""
    data, logits_fn, _ = digits_setup
    plain, robust = trained
    x, y = data.x_test[:200], data.y_test[:200]
    quiet = overfit_monitor(logits_fn, x, y, jax.random.key(0), eps=DIGITS_EPS, steps=10)
    assert [quiet.eval_fn(p)["stop"] for p in (plain, robust, robust)] == ["", "", ""]
    assert quiet.healthy_params() is robust
    monitor = overfit_monitor(logits_fn, x, y, jax.random.key(0), eps=DIGITS_EPS, steps=10)
    first = monitor.eval_fn(robust)
    second = monitor.eval_fn(plain)
    assert first["stop"] == "" and second["holdout_pgd_accuracy"] < first["holdout_pgd_accuracy"] - 0.2
    assert "catastrophic overfitting" in second["stop"]
    assert monitor.healthy_params() is robust
    with_gap = overfit_monitor(logits_fn, x, y, jax.random.key(0), eps=DIGITS_EPS, steps=10, max_gap=0.3)
    row = with_gap.eval_fn(robust)
    assert row["stop"] == "" and row["holdout_fgsm_accuracy"] >= row["holdout_pgd_accuracy"]



# --- catastrophic overfitting on real training runs -------------------------------------------------

CO_CHECK_EPS = 0.15  # the monitor's PGD radius; the two runs below differ only in their training objective
CO_WARMUP = 95  # optimizer steps (5 epochs of 19 batches of 64 out of 1,237 digits) over which eps ramps up


def _monitored_run(objective_factory, epochs):
    """A real seeded run of bench.train.train with the per-epoch overfit check as its eval_fn (as bench/__main__.py).

    MLP(64) on digits, the last 200 training images held out for the check, Adam at 1e-2 (constant).
    """
    data = digits()
    x_train, y_train, x_hold, y_hold = split_holdout(data.x_train, data.y_train, 200)
    model = models.mlp(data.num_classes, data.mean, data.std, hidden=(64,))
    logits_fn = models.make_logits_fn(model)
    init = models.init_params(model, jax.random.key(0), data.image_shape)
    monitor = overfit_monitor(logits_fn, x_hold, y_hold, jax.random.key(0), eps=CO_CHECK_EPS, steps=10, max_drop=0.2)
    _, history = train.train(objective_factory(logits_fn), init, train.make_optimizer("adam", 1e-2, "constant"),
                             x_train, y_train, epochs=epochs, batch_size=64, key=jax.random.key(1),
                             eval_fn=monitor.eval_fn, progress=False)
    return history, monitor


def test_overfit_check_stops_a_real_fgsm_run_that_collapses():
    """FGSM training without random start, its eps ramped up to 0.5 (a radius at which every image can be turned
    uniform grey, so nothing is robust there): PGD accuracy at 0.15 first rises, then collapses once the single
    step grows large, and the monitor stops the run. Seeds 0-3 stopped at epoch 5, 6, 5, 5 of 15 when written."""
    epochs = 15
    history, monitor = _monitored_run(
        lambda f: fgsm_at(f, eps=0.5, clean_weight=0.0, warmup_steps=CO_WARMUP), epochs)
    stops = [row["stop"] for row in history]
    assert stops[-1].startswith("catastrophic overfitting"), history
    assert all(s == "" for s in stops[:-1]) and len(history) < epochs  # train.train stopped at the first trip
    assert monitor.healthy_params() is not None  # a model from before the collapse to fall back to


def test_overfit_check_stays_quiet_on_a_healthy_pgd_run():
    """The same run with PGD-5 adversarial training at the check's eps: robust accuracy grows, the monitor never trips."""
    epochs = 8
    history, _ = _monitored_run(lambda f: pgd_at(f, eps=CO_CHECK_EPS, steps=5, warmup_steps=CO_WARMUP), epochs)
    assert [row["stop"] for row in history] == [""] * epochs, history


# --- the papers' own MNIST architectures ------------------------------------------------------------

@pytest.mark.parametrize("builder", [models.madry_cnn, models.trades_smallcnn])
def test_paper_architectures_give_ten_logits_on_mnist_shapes(builder):
    model = builder(10, (0.1307,), (0.3081,))
    params = models.init_params(model, jax.random.key(0), (28, 28, 1))
    logits = models.make_logits_fn(model)(params, jnp.zeros((3, 28, 28, 1), jnp.float32))
    assert logits.shape == (3, 10) and bool(jnp.all(jnp.isfinite(logits)))
    assert isinstance(model, models.PoolConvNet) and not isinstance(model, models.ConvNet)
    # the dense layer sees the paper's feature map: 7x7x64 (Madry, SAME pools) or 4x4x64 (SmallCNN, VALID)
    assert params["Dense_0"]["kernel"].shape[0] == (7 * 7 * 64 if builder is models.madry_cnn else 4 * 4 * 64)


def test_certifiers_reject_max_pool_models_clearly():
    from bench.certify.network import network_from_model

    for builder in (models.madry_cnn, models.trades_smallcnn):
        with pytest.raises(BenchError, match="PoolConvNet"):
            network_from_model(builder(10, (0.5,), (0.25,)))
