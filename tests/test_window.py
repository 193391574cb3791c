"""The window forward (bench/window.py): recomputing only what a changed window reaches gives the model's own
features and logits, and the Square attack that uses it searches as it does without it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench import models
from bench.attacks import ATTACKS, check_threat_model
from bench.attacks.square import _window_sides, square_core
from bench.threat import Norm


def _model(arch, shape, key=0, **kwargs):
    c = shape[-1]
    model = models.MODELS[arch](10, (0.3,) * c, (0.2,) * c, **kwargs)
    return models.make_logits_fn(model), models.init_params(model, jax.random.key(key), shape)


def _windows(n, h, w, side, key):
    """Random window corners, with the four image corners among them (the blocks at the borders)."""
    k_r, k_c = jax.random.split(key)
    top = jax.random.randint(k_r, (n,), 0, h - side + 1).at[:4].set(jnp.asarray([0, 0, h - side, h - side]))
    left = jax.random.randint(k_c, (n,), 0, w - side + 1).at[:4].set(jnp.asarray([0, w - side, 0, w - side]))
    return top, left


@pytest.mark.parametrize("arch,shape", [("cnn_small", (28, 28, 1)), ("cnn_small", (21, 19, 3)),
                                        ("cnn_medium", (15, 13, 1)), ("cnn_large", (17, 15, 2))])
def test_window_update_gives_the_features_of_the_changed_image(arch, shape):
    logits_fn, params = _model(arch, shape)
    forward = logits_fn.window_forward
    features, update = jax.jit(forward.features), jax.jit(forward.update, static_argnums=5)
    n, (h, w, c) = 12, shape
    x = jax.random.uniform(jax.random.key(1), (n, *shape))
    feats = features(params, x)
    np.testing.assert_allclose(jax.jit(forward.head)(params, feats), jax.jit(logits_fn)(params, x), atol=2e-5,
                               rtol=2e-5)
    rows = jnp.arange(h).reshape(1, h, 1, 1)
    cols = jnp.arange(w).reshape(1, 1, w, 1)
    for side in (3, 7):  # Square's window sides on cnn_small
        for size in sorted({1, side}):  # a window as wide as the side the block was planned for, and a smaller one
            top, left = _windows(n, h, w, size, jax.random.key(10 * side + size))
            t, l_ = top.reshape(n, 1, 1, 1), left.reshape(n, 1, 1, 1)
            inside = (rows >= t) & (rows < t + size) & (cols >= l_) & (cols < l_ + size)
            x_new = jnp.where(inside, jax.random.uniform(jax.random.key(side), x.shape), x)
            got = update(params, x_new, feats, top, left, side)
            np.testing.assert_allclose(got, features(params, x_new), atol=2e-5, rtol=2e-5,
                                       err_msg=f"{arch} {shape} side {side} window {size}")


def test_window_update_recomputes_only_the_block_the_window_reaches():
    """A change outside the window is not seen: the update keeps the cached features outside its block (so the
    previous test checks a local recomputation, not a whole forward pass)."""
    logits_fn, params = _model("cnn_small", (28, 28, 1))
    forward = logits_fn.window_forward
    x = jax.random.uniform(jax.random.key(1), (2, 28, 28, 1))
    features = jax.jit(forward.features)
    feats = features(params, x)
    x_new = x.at[:, 20:, 20:].set(1.0 - x[:, 20:, 20:])  # changed far from the window at (0, 0)
    got = jax.jit(forward.update, static_argnums=5)(params, x_new, feats, jnp.zeros(2, jnp.int32),
                                                    jnp.zeros(2, jnp.int32), 4)
    (block_h, map_h), (block_w, map_w) = forward.block((28, 28), 4)
    assert (block_h, map_h, block_w, map_w) == (4, 7, 4, 7)
    np.testing.assert_array_equal(got, feats)  # the block at (0, 0) reads only unchanged pixels
    assert not np.allclose(features(params, x_new), feats)


def test_square_uses_the_window_forward_only_where_it_saves():
    small_logits, _ = _model("cnn_small", (28, 28, 1))
    assert _window_sides(small_logits, Norm.LINF, (28, 28)) == (7, 3)  # blocks of 4x4 and 3x3 of 7x7
    assert _window_sides(small_logits, Norm.L2, (28, 28)) == ()  # the L2 step changes the whole image
    assert _window_sides(small_logits, Norm.LINF, (8, 8)) == ()  # the block would be the whole 2x2 map
    mlp_logits, _ = _model("mlp", (28, 28, 1))
    assert not hasattr(mlp_logits, "window_forward")
    assert _window_sides(lambda p, v: small_logits(p, v), Norm.LINF, (28, 28)) == ()  # a wrapped model: whole


def test_square_with_the_window_forward_searches_as_with_the_whole_model():
    """The same windows, signs and acceptances: the same adversarial examples, up to the rare acceptance that float
    rounding decides differently."""
    logits_fn, params = _model("cnn_small", (28, 28, 1), key=3)
    x = jax.random.uniform(jax.random.key(4), (48, 28, 28, 1))
    y = jnp.argmax(logits_fn(params, x), -1)
    eps = 0.03  # small enough that the search runs its budget on most examples
    runs = {flag: np.asarray(square_core(logits_fn, params, x, y, jax.random.key(5), jnp.float32(eps),
                                         jnp.float32(0.8), norm=Norm.LINF, n_queries=400, rescale_schedule=True,
                                         window_forward=flag))
            for flag in (False, True)}
    for x_adv in runs.values():
        check_threat_model(np.asarray(x), x_adv, "linf", eps)
    same = np.all(np.abs(runs[True] - runs[False]).reshape(len(x), -1) < 1e-6, axis=1)
    assert same.mean() >= 0.9, same.mean()
    assert np.all(np.any((runs[True] != np.asarray(x)).reshape(len(x), -1), axis=1))  # every example moved
    # the attack through ATTACKS uses it by default and gives the same points
    x_attack = ATTACKS["square"](norm="linf", eps=eps, n_queries=400, rescale_schedule=True)(
        logits_fn, params, x, y, jax.random.key(5))
    np.testing.assert_array_equal(np.asarray(x_attack), runs[True])
