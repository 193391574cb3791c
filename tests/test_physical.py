"""The physical-world transformations (bench/transforms.py), EOT-PGD (bench/attacks/eot.py) and the `physical`
scenario (Kurakin et al. 2016's destruction rate): contracts, a property that could fail, and a run end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from bench import models, train, transforms
from bench.attacks import ATTACKS
from bench.attacks.eot import eot_pgd
from bench.defenses import standard
from bench.errors import BenchError
from bench.scenarios.physical import Physical, craft, predict
from bench.threat import check_threat_model

from conftest import cli_env

ROOT = Path(__file__).resolve().parents[1]
ENV = cli_env(ROOT)
RANDOM = [name for name in transforms.TRANSFORMS if name not in ("identity", "quantize")]


def _images(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).random(shape, dtype=np.float32))


@pytest.mark.parametrize("name,shape", [(name, (3, 8, 8, 1)) for name in sorted(transforms.TRANSFORMS)]
                         + [("affine", (2, 9, 12, 3)), ("jpeg", (2, 9, 12, 3))])
def test_each_transform_keeps_shape_and_range_is_deterministic_per_key_and_differentiable(name, shape):
    t = jax.jit(transforms.TRANSFORMS[name]())
    x = _images(shape)
    out = t(x, jax.random.key(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    np.testing.assert_array_equal(np.asarray(out), np.asarray(t(x, jax.random.key(0))))  # same key, same draw
    if name in RANDOM:
        assert not np.array_equal(np.asarray(out), np.asarray(t(x, jax.random.key(1))))   # another key, another
        # every image draws its own parameters: copies of one image come out different
        twins = t(jnp.broadcast_to(x[:1], x.shape), jax.random.key(2))
        assert not np.allclose(np.asarray(twins[0]), np.asarray(twins[1]))
    weights = jnp.arange(x.size, dtype=x.dtype).reshape(x.shape) / x.size
    grad = jax.jit(jax.grad(lambda v: jnp.sum(t(v, jax.random.key(0)) * weights)))(x)
    assert np.all(np.isfinite(np.asarray(grad))) and float(jnp.abs(grad).sum()) > 0


def test_quantisation_and_jpeg_rounding_pass_the_gradient_straight_through():
    x = _images((2, 8, 8, 1))
    grad = jax.jit(jax.grad(lambda v: transforms.quantize(bits=8)(v, jax.random.key(0)).sum()))(x * 0.98 + 0.01)
    np.testing.assert_allclose(np.asarray(grad), 1.0)  # round() alone has a zero gradient almost everywhere
    q = jax.jit(transforms.quantize(bits=2))(x, jax.random.key(0))
    assert len(np.unique(np.asarray(q))) <= 4
    for rounding in ("straight_through", "smooth"):
        g = jax.jit(jax.grad(lambda v: transforms.jpeg(quality=50, rounding=rounding)(v, jax.random.key(0)).sum()))(x)
        assert np.all(np.isfinite(np.asarray(g))) and float(jnp.abs(g).sum()) > 0


def test_transforms_do_what_they_say():
    x = _images((2, 16, 16, 1))
    still = jax.jit(transforms.affine(rotation=0, scale=1, translation=0))(x, jax.random.key(0))
    np.testing.assert_allclose(np.asarray(still), np.asarray(x), atol=1e-6)  # no motion: the image itself
    err = {q: float(jnp.abs(jax.jit(transforms.jpeg(quality=q))(x, jax.random.key(0)) - x).mean()) for q in (10, 95)}
    assert err[10] > err[95]  # lower quality, coarser tables, more loss
    sharp = jax.jit(transforms.gaussian_blur(sigma=0))(x, jax.random.key(0))
    np.testing.assert_allclose(np.asarray(sharp), np.asarray(x), atol=1e-5)
    blurred = jax.jit(transforms.gaussian_blur(sigma=1.0))(x, jax.random.key(0))
    assert float(jnp.var(blurred)) < float(jnp.var(x))
    flat = jnp.full((1, 8, 8, 1), 0.5)
    np.testing.assert_allclose(np.asarray(jax.jit(transforms.brightness_contrast(brightness=0, contrast=2))(flat, jax.random.key(0))), 1.0)


def test_specs_build_one_function_and_bad_specs_are_clear_errors():
    a = transforms.from_spec({"affine": {"rotation": 5, "scale": [0.9, 1.1]}, "jpeg": None})
    assert a is transforms.from_spec([{"affine": {"scale": (0.9, 1.1), "rotation": 5}}, "jpeg"])  # compiles once
    assert transforms.from_spec("blur+noise") is transforms.from_spec(["blur", "noise"])
    assert transforms.describe("blur+noise") == "blur+noise"
    for spec, message in [("sharpen", "unknown transform"), ({"blur": {"radius": 2}}, "takes no radius"),
                          ({"blur": {"sigma": [1.0, 0.5]}}, "low <= high"), ({"jpeg": {"quality": 0}}, "jpeg quality"),
                          ({"quantize": {"bits": 0}}, "bits"), ({"jpeg": {"rounding": "floor"}}, "rounding"), ([], "empty")]:
        with pytest.raises(BenchError, match=message):
            transforms.from_spec(spec)


@pytest.fixture(scope="module")
def small_model(digits_data):
    """(logits_fn, params, x, y): an MLP trained 5 epochs on digits (about 93% clean), 96 test images."""
    d = digits_data
    model = models.mlp(d.num_classes, d.mean, d.std, hidden=(64,))
    logits_fn = models.make_logits_fn(model)
    params = models.init_params(model, jax.random.key(0), d.image_shape)
    opt = train.make_optimizer("adam", 3e-3, "cosine", 5 * train.steps_per_epoch(len(d.y_train), 64))
    params, _ = train.train(standard(logits_fn), params, opt, d.x_train, d.y_train, epochs=5, batch_size=64,
                            key=jax.random.key(1), progress=False)
    return logits_fn, params, d.x_test[:96], d.y_test[:96]


def test_eot_examples_survive_the_transformations_at_least_as_often_as_pgd(small_model):
    """The property EOT exists for (Athalye et al. 2018): under fresh draws of the transformation it optimised
    for, its examples stay adversarial at least as often as plain PGD's; both lie in their threat model."""
    logits_fn, params, x, y = small_model
    spec = {"blur": {"sigma": [0.5, 1.0]}, "noise": {"std": 0.1}}
    fn = transforms.from_spec(spec)
    eps = 0.15
    pgd = ATTACKS["pgd"](norm="linf", eps=eps, steps=10)
    eot = eot_pgd(norm="linf", eps=eps, steps=10, samples=2, transform=spec)
    clean = predict(logits_fn, params, x, 96) == y
    assert clean.mean() > 0.85
    rates = {}
    for name, attack in (("pgd", pgd), ("eot", eot)):
        x_adv = craft(attack, logits_fn, params, x, y, "linf", eps, jax.random.key(3), 48)
        check_threat_model(x, x_adv, "linf", eps)
        fooled = clean & (predict(logits_fn, params, x_adv, 96) != y)
        wrong = np.stack([predict(logits_fn, params, x_adv, 96, transform=fn, key=jax.random.key(100 + d)) != y
                          for d in range(6)])  # fresh draws, the same for both attacks
        rates[name] = dict(success=float((wrong & clean).sum(1).mean() / clean.sum()),
                           survival=float((wrong & fooled).sum(1).mean() / max(fooled.sum(), 1)))
    assert rates["eot"]["success"] >= rates["pgd"]["success"], rates
    assert rates["eot"]["survival"] >= rates["pgd"]["survival"], rates
    assert rates["eot"]["success"] > 0.3, rates  # the attack does something at this eps


def test_eot_bad_hyper_parameters_are_clear_errors():
    for kwargs, message in [(dict(samples=0), "samples >= 1"), (dict(transform="sharpen"), "unknown transform"),
                            (dict(loss="kl"), "loss"), (dict(steps=0), "steps >= 1")]:
        with pytest.raises(BenchError, match=message):
            eot_pgd(norm="linf", eps=0.1, **kwargs)


def test_destruction_rate_is_kurakins_formula():
    from bench.scenarios.physical import destruction_rate

    clean = np.array([1, 1, 1, 1, 0], bool)         # the last is misclassified clean: never counted
    adversarial = np.array([0, 0, 0, 1, 0], bool)   # three adversarial examples fool the model
    transformed = np.array([[1, 0, 0, 1, 1],         # draw 1 un-fools one of the three
                            [1, 1, 0, 0, 1]], bool)  # draw 2 un-fools two; the last column is not counted
    destruction, success = destruction_rate(clean, adversarial, transformed)
    assert destruction == pytest.approx((1 / 3 + 2 / 3) / 2)
    assert success == pytest.approx((2 / 4 + 2 / 4) / 2)
    assert np.isnan(destruction_rate(clean, clean, transformed)[0])  # nothing fooled: no rate
    rng = np.random.default_rng(0)
    for _ in range(20):
        d, s = destruction_rate(rng.random(30) < 0.9, rng.random(30) < 0.3, rng.random((4, 30)) < 0.5)
        assert 0 <= d <= 1 and 0 <= s <= 1


@pytest.mark.slow
def test_the_scenario_runs_end_to_end_and_writes_records_and_the_picture(tmp_path):
    run_dir = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "bench", "scenario=physical", "debug=tiny", "progress=false", "suite.n_examples=32",
         "suite.attacks.pgd.steps=5", "scenario.draws=2", "scenario.eot.steps=4", "scenario.eot.samples=2",
         "scenario.picture_examples=3", "scenario.picture_transform=jpeg", "scenario.eot.transform=jpeg",
         *[f"~scenario.transforms.{label}" for label in ("affine", "blur", "brightness_contrast", "noise", "photo")],
         "+scenario.transforms.none={identity: null}", f"hydra.run.dir={run_dir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)
    assert out.returncode == 0, out.stderr[-3000:]
    frame = pd.read_parquet(run_dir / "records.parquet")
    assert set(frame.scenario) == {"physical"}
    destruction = frame[frame.metric == "destruction_rate"]
    assert set(destruction["attack"]) == {"pgd", "eot_pgd"}
    assert set(destruction["transform"]) == {"jpeg", "none"}
    rates = destruction.value.dropna()
    assert len(rates) and rates.between(0, 1).all()
    # a transformation that changes nothing destroys nothing (the model is deterministic)
    assert (destruction[destruction["transform"] == "none"].value.dropna() == 0).all()
    survival = frame[frame.metric == "survival_rate"].set_index(["attack", "eps", "transform"]).value
    np.testing.assert_allclose(survival.to_numpy(), 1 - destruction.set_index(["attack", "eps", "transform"])
                               .value.reindex(survival.index).to_numpy())
    clean = frame[(frame.evaluator == "clean") & (frame.metric == "transformed_accuracy")]
    assert set(clean["transform"]) == set(destruction["transform"]) and clean.value.between(0, 1).all()
    assert {"survival_gain", "success_gain"} <= set(frame.metric)
    png = (run_dir / "physical.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000
    assert "| digits" in out.stdout and "jpeg" in out.stdout  # its table, printed by the entry point
    written = Physical.write_tables(frame, tmp_path)  # what `python -m bench.report RUN_DIR` writes for it
    assert {p.name for p in written} == {"physical.md", "physical.csv"}
    table = pd.read_csv(tmp_path / "physical.csv")
    assert list(table.columns[5:7]) == ["jpeg", "none"]  # in the order of scenario.transforms
    assert "Destruction rate" in (tmp_path / "physical.md").read_text()


def test_bad_scenario_input_is_a_clear_error():
    from types import SimpleNamespace

    exp = SimpleNamespace(suite=SimpleNamespace(attacks={"fgsm": None, "pgd": None}))
    good = dict(transforms={"jpeg": {"jpeg": None}}, draws=2, attacks=None, eot=None, eot_name="eot_pgd",
                baseline="pgd", batch_size=None, picture_examples=0, picture_transform=None)
    Physical(**good)._validate(exp)
    for change, message in [(dict(attacks=["cw"]), "scenario.attacks"), (dict(draws=0), "scenario.draws"),
                            (dict(transforms={"x": {"sharpen": None}}), "scenario.transforms.x: unknown transform"),
                            (dict(picture_transform="photo"), "picture_transform"), (dict(transforms={}), "empty")]:
        with pytest.raises(BenchError, match=message):
            Physical(**{**good, **change})._validate(exp)
