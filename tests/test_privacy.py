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
from bench.defenses import dp_sgd, standard
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


def test_clipping_sensitivity_on_neighbouring_batches():
    """Removing one example moves the clipped sum by at most C; replacing one by at most 2C (and nearly 2C)."""
    logits_fn, params = _tiny_model()
    clip = 0.05
    value_and_grad = jax.jit(dp_sgd.clipped_value_and_grad(clip)(standard(logits_fn)))
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


def test_poisson_sampler_pads_and_counts_steps():
    s = dp_sgd.PoissonSampler(1000, 0.05, steps=30, steps_per_epoch=20, pad_multiple=16)
    rng = np.random.default_rng(0)
    first, second = s(0, rng), s(1, rng)
    assert len(first) == 20 and len(second) == 10 and s.steps_taken == 30
    sizes = []
    for idx in first + second:
        assert idx.size % 16 == 0 and idx.size > 0
        real = idx[idx >= 0]
        assert np.all(idx[len(real):] == -1) and len(np.unique(real)) == len(real) and real.max() < 1000
        sizes.append(len(real))
    assert 35 < np.mean(sizes) < 65  # expected 50
