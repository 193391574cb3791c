"""Certifiers: pinned bounds on hand-built nets, soundness on sampled points, tightness against an LP and
an exact solver, randomized smoothing against its closed form, certified-training objectives."""

from __future__ import annotations

import itertools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import optimize, stats

from bench import models
from bench import train as train_mod
from bench.threat import Norm
from bench.certify import CERTIFIERS, SoundnessFailure, evaluate_certified, randomized_smoothing, soundness_check
from bench.certify.crown import Intermediate, crown_margin_lower, crown_preactivation_bounds
from bench.certify.ibp import ibp_margin_lower
from bench.certify.network import Dense, Flatten, Normalize, ReLU, conv_transpose, forward, network_from_model
from bench.certify.smoothing import ABSTAIN, certify_from_counts, predict_from_counts
from bench.defenses.certified import crown_ibp_training, exp_chord, fused_robust_loss, ibp_training, worst_case_logits
from bench.defenses.gaussian import gaussian_augmentation
from bench.errors import BenchError

# The hand-built net: x in [0,1]^2 (as a 1x1 image with 2 channels), normalised by (x - 0.5) / 0.5,
# h = relu(z1 + z2 + 0.1, z1 - z2), logits = (2 h1 - h2 + 0.5, h1 + h2).
HAND_NET = (Normalize((0.5, 0.5), (0.5, 0.5)), Flatten(), Dense("d0"), ReLU(), Dense("d1"))
HAND_PARAMS = {
    "d0": {"kernel": jnp.array([[1.0, 1.0], [1.0, -1.0]]), "bias": jnp.array([0.1, 0.0])},
    "d1": {"kernel": jnp.array([[2.0, 1.0], [-1.0, 1.0]]), "bias": jnp.array([0.5, 0.0])},
}


_forward = jax.jit(forward, static_argnums=0)


def _init_params(model, key, shape):
    """models.init_params under jit (eager Flax init compiles every op one by one)."""
    return jax.jit(lambda k: model.init(k, jnp.zeros((1, *shape), jnp.float32))["params"])(key)


def hand_x(a, b):
    return jnp.array([[[[a, b]]]], jnp.float32)


def test_hand_net_pinned_bounds():
    # x = (0.5, 0.5), eps = 0.1: z in [-0.2, 0.2]^2, so h1 in [-0.3, 0.5] and h2 in [-0.4, 0.4].
    # margin_0 - logit_1 = relu(h1) - 2 relu(h2) + 0.5.
    x, y = hand_x(0.5, 0.5), jnp.array([0])
    # IBP with the last layer folded in: relu(h1) >= 0, relu(h2) <= 0.4: 0 - 0.8 + 0.5 = -0.3
    # (subtracting logit intervals would give 0.1 - 0.9 = -0.8).
    assert float(ibp_margin_lower(HAND_NET, HAND_PARAMS, x, y, 0.1)[0, 1]) == pytest.approx(-0.3, abs=1e-6)
    # CROWN: both neurons unstable with u >= -l, so lower slope 1 for h1; upper line of h2 is 0.5 h2 + 0.2:
    # margin >= h1 - h2 - 0.4 + 0.5 = 2 z2 + 0.2 >= -0.2, which is the exact minimum (z = (0.2, -0.2)).
    assert float(crown_margin_lower(HAND_NET, HAND_PARAMS, x, y, 0.1)[0, 1]) == pytest.approx(-0.2, abs=1e-6)
    assert float(ibp_margin_lower(HAND_NET, HAND_PARAMS, x, y, 0.1)[0, 0]) == np.inf
    # Clipping to [0, 1]: x = (0.02, 0.5), eps = 0.1 gives x1 in [0, 0.12], z1 in [-1, -0.76], z2 in [-0.2, 0.2]:
    # h1 in [-1.1, -0.46] (dead), h2 in [-0.96, -0.36] (dead): every margin is exactly 0.5.
    x = hand_x(0.02, 0.5)
    assert float(ibp_margin_lower(HAND_NET, HAND_PARAMS, x, y, 0.1)[0, 1]) == pytest.approx(0.5, abs=1e-6)
    assert float(crown_margin_lower(HAND_NET, HAND_PARAMS, x, y, 0.1)[0, 1]) == pytest.approx(0.5, abs=1e-6)


def test_linear_l2_bound_is_the_dual_norm():
    # One affine block: margin = (w0 - w1) . x + (b0 - b1) with w0 - w1 = (3, -4): the L2 bound is
    # value - eps * 5, and the L-inf bound value - eps * 7 (both balls inside [0, 1]).
    net = (Flatten(), Dense("d"))
    params = {"d": {"kernel": jnp.array([[3.0, 0.0], [-4.0, 0.0]]), "bias": jnp.array([1.0, 0.0])}}
    x, y = jnp.array([[0.5, 0.5]]), jnp.array([0])
    value = 3 * 0.5 - 4 * 0.5 + 1.0
    for margin_fn in (ibp_margin_lower, crown_margin_lower):
        assert float(margin_fn(net, params, x, y, 0.1, norm=Norm.L2)[0, 1]) == pytest.approx(value - 0.5, abs=1e-6)
        assert float(margin_fn(net, params, x, y, 0.1, norm=Norm.LINF)[0, 1]) == pytest.approx(value - 0.7, abs=1e-6)
    # A large L2 ball is cut by [0, 1]: the box bound (value over [0,1]^2 = 3*0 - 4*1 + 1 = -3) wins.
    assert float(ibp_margin_lower(net, params, x, y, 2.0, norm=Norm.L2)[0, 1]) == pytest.approx(-3.0, abs=1e-6)


def test_forward_matches_model_and_unsupported_models_fail():
    key = jax.random.key(0)
    for model, shape in [(models.mlp(10, (0.3,), (0.2,), hidden=(16,)), (8, 8, 1)),
                         (models.ConvNet(5, (0.1, 0.2), (0.3, 0.4), dense=(7,),
                                         convs=((3, 3, 1, "SAME"), (4, 4, 2, 1), (2, 3, 1, "VALID"))), (9, 9, 2))]:
        params = _init_params(model, key, shape)
        x = jax.random.uniform(key, (3, *shape))
        np.testing.assert_allclose(_forward(network_from_model(model), params, x),
                                   jax.jit(model.apply)({"params": params}, x), atol=1e-5)
    with pytest.raises(BenchError, match="ConvNet"):
        network_from_model(object())
    with pytest.raises(BenchError, match="unsupported layer"):
        CERTIFIERS["ibp"](eps=0.1)(("not a layer",), {}, jnp.zeros((1, 2)), jnp.zeros(1, int))


@pytest.mark.parametrize("kernel,stride,padding,size", [(4, 2, ((1, 1), (1, 1)), 8), (3, 2, "SAME", 7),
                                                         (4, 2, "SAME", 9), (3, 1, "VALID", 6), (2, 2, "VALID", 5)])
def test_conv_transpose_and_its_vjp_match_autodiff(kernel, stride, padding, size):
    """The hand-written conv transpose (space-to-depth where the kernel tiles the stride) and its VJP."""
    keys = jax.random.split(jax.random.key(3), 4)
    k = jax.random.normal(keys[0], (kernel, kernel, 3, 4))
    conv = lambda v, k: jax.lax.conv_general_dilated(v, k, (stride, stride), padding,
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    in_spec = jax.ShapeDtypeStruct((5, size, size, 3), jnp.float32)
    a = jax.random.normal(keys[1], jax.eval_shape(conv, in_spec, k).shape)
    reference = lambda k, a: jax.linear_transpose(lambda v: conv(v, k), in_spec)(a)[0]
    ours = lambda k, a: conv_transpose(k, a, stride, padding, (size, size, 3))
    np.testing.assert_allclose(ours(k, a), reference(k, a), rtol=1e-5, atol=1e-5)
    g = jax.random.normal(keys[2], in_spec.shape)
    loss = lambda f: lambda k, a: jnp.sum(g * jnp.tanh(f(k, a)))
    for got, want in zip(jax.grad(loss(ours), (0, 1))(k, a), jax.grad(loss(reference), (0, 1))(k, a)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_unsupported_model_classes_are_rejected():
    """Any Flax module other than ConvNet (e.g. one with max-pooling) is a BenchError, never a wrong bound."""
    import flax.linen as nn

    class Pooled(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(nn.max_pool(x, (2, 2)).reshape(x.shape[0], -1))

    with pytest.raises(BenchError, match="ConvNet"):
        network_from_model(Pooled())
    with pytest.raises(BenchError, match="ConvNet"):
        CERTIFIERS["crown"](eps=0.1)(Pooled(), {}, jnp.zeros((1, 4, 4, 1)), jnp.zeros(1, int))


def _random_net(kind, seed):
    if kind == "mlp":
        model, shape = models.mlp(3, (0.4,), (0.3,), hidden=(8, 8)), (3, 3, 1)
    else:
        model = models.ConvNet(3, (0.4, 0.5), (0.3, 0.2), convs=((3, 3, 2, 1), (4, 3, 1, "SAME")), dense=(6,))
        shape = (6, 6, 2)
    params = _init_params(model, jax.random.key(seed), shape)
    params = jax.tree.map(lambda w: 2.0 * w, params)  # larger weights: more unstable neurons
    return model, params, shape


def _sample_in_set(key, x, eps, norm, count):
    """Points in the eps-ball ∩ [0, 1]: for L-inf a quarter are corners of the clipped box."""
    n = count
    if norm == "linf":
        lo, hi = jnp.clip(x - eps, 0, 1), jnp.clip(x + eps, 0, 1)
        k1, k2 = jax.random.split(key)
        inside = lo + (hi - lo) * jax.random.uniform(k1, (n - n // 4, *x.shape))
        corners = jnp.where(jax.random.bernoulli(k2, 0.5, (n // 4, *x.shape)), hi, lo)
        return jnp.concatenate([inside, corners])
    k1, k2 = jax.random.split(key)
    direction = jax.random.normal(k1, (n, *x.shape))
    direction = direction / jnp.sqrt(jnp.sum(direction ** 2, axis=tuple(range(1, direction.ndim)), keepdims=True))
    radius = eps * jnp.where(jnp.arange(n) % 2 == 0, 1.0, jax.random.uniform(k2, (n,)))
    radius = radius.reshape((n,) + (1,) * x.ndim)
    return jnp.clip(x + radius * direction, 0.0, 1.0)  # clipping towards x stays in the ball


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.5)])
def test_every_certifier_contains_sampled_margins(kind, norm, eps):
    model, params, shape = _random_net(kind, seed=1)
    network = network_from_model(model)
    key = jax.random.key(2)
    x = jax.random.uniform(key, (3, *shape))
    y = jnp.array([0, 1, 2])
    bounds = {f"{name}": factory(norm=norm, eps=eps)(model, params, x, y) for name, factory in CERTIFIERS.items()}
    bounds["crown_ibp"] = CERTIFIERS["crown"](norm=norm, eps=eps, intermediate="ibp")(model, params, x, y)
    if kind == "conv" and norm == "linf":  # alpha-CROWN is also checked against the LP on every tiny net
        bounds["alpha_crown"] = CERTIFIERS["crown"](norm=norm, eps=eps, alpha_steps=5)(model, params, x, y)
        assert np.all(np.asarray(bounds["alpha_crown"]) >= np.asarray(bounds["crown"]) - 1e-6)
    pre = crown_preactivation_bounds(network, params, x, jnp.float32(eps), norm=Norm(norm))
    sample = jax.jit(_sample_in_set, static_argnums=(3, 4))
    for i in range(len(y)):
        points = sample(jax.random.fold_in(key, i), x[i], eps, norm, 4000)
        logits, hidden = _forward_with_preactivations(network, params, points)
        margins = np.asarray(logits[:, y[i]][:, None] - logits)
        for name, bound in bounds.items():
            finite = np.where(np.isinf(bound[i]), -1e9, bound[i])
            assert np.all(margins >= finite - 1e-4), name
        for (lower, upper), h in zip(pre, hidden):  # the intermediate bounds contain the pre-activations too
            assert np.all(np.asarray(h) >= np.asarray(lower[i]) - 1e-4)
            assert np.all(np.asarray(h) <= np.asarray(upper[i]) + 1e-4)


@partial(jax.jit, static_argnums=0)
def _forward_with_preactivations(network, params, x):
    hidden = []
    for layer in network:
        if isinstance(layer, ReLU):
            hidden.append(x)
            x = jax.nn.relu(x)
        else:
            x = layer.linear(params, x) + layer.offset(params)
    return x, hidden


def _tiny_net(seed, widths):
    rng = np.random.default_rng(seed)
    dims = [2, *widths, 3]
    params = {f"d{k}": {"kernel": jnp.asarray(rng.normal(size=(dims[k], dims[k + 1])), jnp.float32),
                        "bias": jnp.asarray(rng.normal(size=dims[k + 1]) * 0.3, jnp.float32)}
              for k in range(len(dims) - 1)}
    network = (Flatten(),)
    for k in range(len(widths)):
        network += (Dense(f"d{k}"), ReLU())
    return network + (Dense(f"d{len(widths)}"),), params


def _lp_min(weights, c, lo, hi, pre, pattern=None):
    """min c . logits over the box, with the triangle relaxation (pattern None) or a fixed activation pattern."""
    dims = [len(lo)] + [w.shape[1] for w, _ in weights]
    sizes = [dims[0]] + [2 * d for d in dims[1:-1]]  # x, then (z_k, a_k) per hidden layer
    offsets = np.cumsum([0] + sizes)
    nvar = offsets[-1]
    a_eq, b_eq, a_ub, b_ub = [], [], [], []
    bounds = [(lo[i], hi[i]) for i in range(dims[0])] + [(None, None)] * (nvar - dims[0])
    prev = (offsets[0], dims[0])
    flat_pattern = iter(pattern) if pattern is not None else None
    for k, (w, b) in enumerate(weights[:-1]):
        width = w.shape[1]
        z0, a0 = offsets[k + 1], offsets[k + 1] + width
        for j in range(width):
            row = np.zeros(nvar)
            row[prev[0]:prev[0] + prev[1]] = -w[:, j]
            row[z0 + j] = 1.0
            a_eq.append(row), b_eq.append(b[j])
            l, u = float(pre[k][0][j]), float(pre[k][1][j])
            za, aa = z0 + j, a0 + j

            def eq(coef):
                r = np.zeros(nvar)
                for idx, v in coef:
                    r[idx] += v
                return r

            if pattern is not None:
                on = next(flat_pattern)
                a_eq.append(eq([(aa, 1.0), (za, -1.0)] if on else [(aa, 1.0)])), b_eq.append(0.0)
                a_ub.append(eq([(za, -1.0)] if on else [(za, 1.0)])), b_ub.append(0.0)
            elif l >= 0:
                a_eq.append(eq([(aa, 1.0), (za, -1.0)])), b_eq.append(0.0)
            elif u <= 0:
                a_eq.append(eq([(aa, 1.0)])), b_eq.append(0.0)
            else:
                bounds[za] = (l, u)
                a_ub.append(eq([(aa, -1.0)])), b_ub.append(0.0)
                a_ub.append(eq([(za, 1.0), (aa, -1.0)])), b_ub.append(0.0)
                s = u / (u - l)
                a_ub.append(eq([(aa, 1.0), (za, -s)])), b_ub.append(-s * l)
        prev = (a0, width)
    w, b = weights[-1]
    cost = np.zeros(nvar)
    cost[prev[0]:prev[0] + prev[1]] = w @ c
    res = optimize.linprog(cost, A_ub=np.array(a_ub) if a_ub else None, b_ub=b_ub or None, A_eq=np.array(a_eq),
                           b_eq=b_eq, bounds=bounds, method="highs")
    return res.fun + float(b @ c) if res.status == 0 else np.inf


@pytest.mark.parametrize("widths", [(4,), (2, 2)])
def test_crown_below_lp_below_exact(widths):
    y = jnp.array([0])
    for seed in range(4):
        network, params = _tiny_net(seed, widths)
        weights = [(np.asarray(params[f"d{k}"]["kernel"], np.float64), np.asarray(params[f"d{k}"]["bias"], np.float64))
                   for k in range(len(widths) + 1)]
        x = jnp.array([[0.5, 0.4]])
        eps = 0.3
        lo, hi = np.clip(np.asarray(x[0]) - eps, 0, 1), np.clip(np.asarray(x[0]) + eps, 0, 1)
        pre = [(np.asarray(l[0], np.float64), np.asarray(u[0], np.float64))
               for l, u in crown_preactivation_bounds(network, params, x, jnp.float32(eps))]
        crown = np.asarray(crown_margin_lower(network, params, x, y, eps)[0])
        alpha_crown = np.asarray(crown_margin_lower(network, params, x, y, eps, alpha_steps=20)[0])
        ibp = np.asarray(ibp_margin_lower(network, params, x, y, eps)[0])
        neurons = sum(widths)
        for j in (1, 2):
            c = np.eye(3)[0] - np.eye(3)[j]
            lp = _lp_min(weights, c, lo, hi, pre)
            exact = min(_lp_min(weights, c, lo, hi, pre, p) for p in itertools.product((0, 1), repeat=neurons))
            assert crown[j] <= alpha_crown[j] + 1e-6 and alpha_crown[j] <= lp + 1e-4, (seed, j)
            assert lp <= exact + 1e-6, (seed, j)
            assert ibp[j] <= exact + 1e-4, (seed, j)


def test_crown_tighter_than_ibp_where_expected():
    model, params, shape = _random_net("conv", seed=3)
    x = jax.random.uniform(jax.random.key(4), (8, *shape))
    y = jnp.arange(8) % 3
    # Tiny eps: every neuron is stable, CROWN is exact on the linear region and IBP can only be looser.
    ibp = CERTIFIERS["ibp"](eps=1e-4)(model, params, x, y)
    crown = CERTIFIERS["crown"](eps=1e-4)(model, params, x, y)
    finite = ~np.isinf(np.asarray(ibp))
    assert np.all(np.asarray(crown)[finite] >= np.asarray(ibp)[finite] - 1e-5)
    # Moderate eps on an untrained net: CROWN's linear relaxation beats intervals by a wide margin on average.
    ibp = np.asarray(CERTIFIERS["ibp"](eps=0.05)(model, params, x, y))[finite]
    crown = np.asarray(CERTIFIERS["crown"](eps=0.05)(model, params, x, y))[finite]
    assert np.mean(crown - ibp) > 0 and np.mean(crown >= ibp - 1e-5) > 0.9


def test_soundness_check_and_evaluate_certified():
    model, params, shape = _random_net("mlp", seed=5)
    x = np.asarray(jax.random.uniform(jax.random.key(6), (6, *shape)))
    y = np.asarray(jnp.argmax(model.apply({"params": params}, x), -1))  # the model's own labels: clean-correct
    results, masks = evaluate_certified(model, params, x, y, CERTIFIERS, "linf", [0.0, 0.01], batch_size=4)
    assert masks[(0.0, "ibp")].all()  # eps 0: bounds equal the logits; every correct example is certified
    assert {r["evaluator"] for r in results} == {"ibp", "crown", "certified_any"}
    assert np.all(masks[(0.01, "certified_any")] >= masks[(0.01, "ibp")])
    robust = {(0.0, "clean"): np.ones(6, bool), (0.01, "pgd"): np.ones(6, bool)}
    soundness_check(masks, robust)  # nothing broken: passes
    certified = {(0.01, "crown"): np.array([True, False, False, False, False, False])}
    with pytest.raises(SoundnessFailure, match="crown but broken by pgd") as err:
        soundness_check(certified, {(0.01, "pgd"): np.array([False, True, True, True, True, True])})
    assert err.value.failures[0]["examples"] == [0]
    assert isinstance(err.value, BenchError)


def test_smoothing_closed_form_and_abstain():
    # All n draws in the top class: pA_lower = alpha ** (1 / n) (Clopper-Pearson), radius sigma * Phi^-1 of it.
    res = certify_from_counts(np.array([[0, 100]]), np.array([[0, 1000]]), sigma=0.5, alpha=0.001)
    assert res.prediction[0] == 1
    assert res.radius[0] == pytest.approx(0.5 * stats.norm.ppf(0.001 ** (1 / 1000)), rel=1e-6)
    # Too close to call: abstain with radius 0.
    res = certify_from_counts(np.array([[60, 40]]), np.array([[520, 480]]), sigma=0.5, alpha=0.001)
    assert res.prediction[0] == ABSTAIN and res.radius[0] == 0.0
    assert predict_from_counts(np.array([[50, 50, 0], [100, 0, 3]]), alpha=0.001).tolist() == [ABSTAIN, 0]


def test_smoothing_linear_classifier_matches_distance_to_boundary():
    # f(x) = class 1 iff w . x + b > 0; under N(0, sigma^2 I) pA = Phi(d / sigma) with d the distance to the
    # boundary, so the exact certified radius is d; CERTIFY with n draws gives a slightly smaller one.
    w = np.array([3.0, -4.0, 0.0, 0.0]) / 5.0
    distances = np.array([0.3, 0.15, 0.0])
    x = np.tile(np.array([0.5, 0.5, 0.5, 0.5]), (3, 1))
    b = distances - x @ w

    def logits_fn(params, v):
        score = v.reshape(v.shape[0], -1) @ params["w"]
        score = score + params["b"][jnp.arange(v.shape[0]) % 3]  # one bias per example (rows stay in order)
        return jnp.stack([-score, score], -1)

    params = {"w": jnp.asarray(w, jnp.float32), "b": jnp.asarray(b, jnp.float32)}
    certify = randomized_smoothing(sigma=0.25, n0=100, n=20_000, alpha=0.001, batch_size=1)
    res = certify(logits_fn, params, jnp.asarray(x, jnp.float32), jax.random.key(0))
    assert res.prediction[:2].tolist() == [1, 1]
    assert np.all(res.radius[:2] <= distances[:2]) and np.all(res.radius[:2] >= distances[:2] - 0.03)
    assert res.prediction[2] == ABSTAIN


def _naive_ibp_margins(params, x, y, eps):
    """Interval arithmetic by hand in NumPy for a Flatten-Dense-ReLU-Dense net, last layer folded into the margin."""
    w0, b0 = (np.asarray(params["d0"][k], np.float64) for k in ("kernel", "bias"))
    w1, b1 = (np.asarray(params["d1"][k], np.float64) for k in ("kernel", "bias"))
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    lo, hi = np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1)
    zl = lo @ np.maximum(w0, 0) + hi @ np.minimum(w0, 0) + b0
    zu = hi @ np.maximum(w0, 0) + lo @ np.minimum(w0, 0) + b0
    al, au = np.maximum(zl, 0), np.maximum(zu, 0)
    out = np.zeros((len(x), w1.shape[1]))
    for i in range(len(x)):
        cw = w1[:, y[i]][:, None] - w1  # (hidden, classes)
        out[i] = al[i] @ np.maximum(cw, 0) + au[i] @ np.minimum(cw, 0) + b1[y[i]] - b1
    return out


def test_certified_training_objectives_match_direct_computation():
    network, params = _tiny_net(7, (5,))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(size=(6, 2)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, 6), jnp.int32)

    def logits_fn(p, v):
        return forward(network, p, v)

    def jitted(objective):
        return jax.jit(objective)

    ce = lambda z: float(optax.softmax_cross_entropy_with_integer_labels(jnp.asarray(z, jnp.float32), y).mean())
    clean = ce(logits_fn(params, x))
    objective = jitted(ibp_training(logits_fn, model=network, eps=0.2, warmup_steps=10, ramp_steps=20))
    key = jax.random.key(0)
    assert float(objective(params, (x, y), key, jnp.int32(0))[0]) == pytest.approx(clean, rel=1e-5)  # warm-up
    margins = _naive_ibp_margins(params, x, np.asarray(y), 0.2)
    worst = np.where(np.eye(3)[np.asarray(y)] > 0, 0.0, -margins)
    loss, aux = objective(params, (x, y), key, jnp.int32(30))  # end of ramp: kappa 0.5, eps 0.2
    assert float(loss) == pytest.approx(0.5 * clean + 0.5 * ce(worst), rel=1e-4)
    assert float(aux["eps"]) == pytest.approx(0.2) and float(aux["kappa"]) == pytest.approx(0.5)
    # halfway through the ramp: eps 0.1, kappa 0.75
    margins = _naive_ibp_margins(params, x, np.asarray(y), 0.1)
    worst = np.where(np.eye(3)[np.asarray(y)] > 0, 0.0, -margins)
    assert float(objective(params, (x, y), key, jnp.int32(20))[0]) == pytest.approx(0.75 * clean + 0.25 * ce(worst),
                                                                                     rel=1e-4)
    # CROWN-IBP halfway: beta 0.5 mixes the CROWN-IBP and IBP bounds; kappa 1 -> 0 gives 0.5.
    objective = jitted(crown_ibp_training(logits_fn, model=network, eps=0.2, warmup_steps=10, ramp_steps=20))
    mixed = 0.5 * np.asarray(crown_margin_lower(network, params, x, y, 0.1, intermediate=Intermediate.IBP)) \
        + 0.5 * np.asarray(ibp_margin_lower(network, params, x, y, 0.1))
    worst = np.where(np.eye(3)[np.asarray(y)] > 0, 0.0, -mixed)
    loss, aux = objective(params, (x, y), key, jnp.int32(20))
    assert float(aux["beta"]) == pytest.approx(0.5)
    assert float(loss) == pytest.approx(0.5 * clean + 0.5 * ce(worst), rel=1e-4)
    grads = jax.grad(lambda p: objective(p, (x, y), key, jnp.int32(20))[0])(params)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    with pytest.raises(BenchError, match="model="):
        ibp_training(logits_fn, eps=0.1)


def test_exp_chord_lies_above_exp_on_its_interval():
    lower = jnp.array([-30.0, -5.0, -1.0, -1e-7, -2.0, 0.0])
    upper = jnp.array([0.0, -4.0, -1.0 + 1e-8, 0.0, -2.0, 0.0])
    slope, intercept = exp_chord(lower, upper)
    t = lower[:, None] + (upper - lower)[:, None] * jnp.linspace(0.0, 1.0, 101)[None]
    assert np.all(np.asarray(slope[:, None] * t + intercept[:, None] - jnp.exp(t)) >= -1e-6)
    assert np.all(np.isfinite(np.asarray(slope)))


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.5)])
def test_loss_fusion_bounds_the_worst_sampled_loss_and_is_ibps_at_beta_0(norm, eps):
    """The fused bound is above CE at every sampled point of the ball for any beta, equals IBP's
    CE(worst-case logits) at beta 0, and closes on the clean CE as eps goes to 0."""
    model, params, shape = _random_net("conv", seed=3)
    network = network_from_model(model)
    x = jax.random.uniform(jax.random.key(4), (3, *shape))
    y = jnp.array([2, 0, 1])
    fused = jax.jit(lambda e, beta: fused_robust_loss(network, params, x, y, e, norm=Norm(norm), beta=beta)[0])
    sample = jax.jit(_sample_in_set, static_argnums=(3, 4))
    bounds = {beta: np.asarray(fused(jnp.float32(eps), beta)) for beta in (0.0, 0.5, 1.0)}
    for i in range(len(y)):
        points = sample(jax.random.fold_in(jax.random.key(5), i), x[i], eps, norm, 4000)
        ce = optax.softmax_cross_entropy_with_integer_labels(_forward(network, params, points),
                                                             jnp.full(len(points), y[i]))
        for beta, bound in bounds.items():
            assert bound[i] >= float(jnp.max(ce)) - 1e-4, beta
    ibp = np.asarray(ibp_margin_lower(network, params, x, y, jnp.float32(eps), norm=Norm(norm)))
    ibp_ce = optax.softmax_cross_entropy_with_integer_labels(worst_case_logits(jnp.asarray(ibp), y), y)
    np.testing.assert_allclose(bounds[0.0], np.asarray(ibp_ce), rtol=1e-5)
    clean = optax.softmax_cross_entropy_with_integer_labels(_forward(network, params, x), y)
    np.testing.assert_allclose(np.asarray(fused(jnp.float32(1e-5), 1.0)), np.asarray(clean), atol=1e-3)


def test_crown_ibp_loss_fusion_objective_mixes_the_fused_bound():
    """Mid-ramp the fused objective is kappa * clean CE + (1 - kappa) * the fused bound at that eps and
    beta; its gradients are finite; warm-up and after-the-ramp phases are the IBP-only ones."""
    network, params = _tiny_net(7, (5,))
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.uniform(size=(6, 2)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, 6), jnp.int32)
    logits_fn = lambda p, v: forward(network, p, v)  # noqa: E731
    objective = crown_ibp_training(logits_fn, model=network, eps=0.2, warmup_steps=10, ramp_steps=20,
                                   loss_fusion=True)
    assert [first for first, _ in objective.phases] == [0, 11, 30]
    key = jax.random.key(0)
    loss, aux = jax.jit(objective)(params, (x, y), key, jnp.int32(20))  # eps 0.1, beta 0.5, kappa 0.5
    clean = optax.softmax_cross_entropy_with_integer_labels(logits_fn(params, x), y).mean()
    bound = fused_robust_loss(network, params, x, y, jnp.float32(0.1), norm=Norm.LINF, beta=0.5)[0].mean()
    assert float(loss) == pytest.approx(float(0.5 * clean + 0.5 * bound), rel=1e-5)
    plain = crown_ibp_training(logits_fn, model=network, eps=0.2, warmup_steps=10, ramp_steps=20)
    assert float(loss) != pytest.approx(float(plain(params, (x, y), key, jnp.int32(20))[0]), rel=1e-6)
    grads = jax.grad(lambda p: objective(p, (x, y), key, jnp.int32(20))[0])(params)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    for step in (30, 45):  # beta 0: the fused bound is IBP's, so the IBP-only phase gives the same loss
        want = objective(params, (x, y), key, jnp.int32(step))[0]
        assert float(objective.phases[2][1](params, (x, y), key, jnp.int32(step))[0]) == pytest.approx(float(want),
                                                                                                      rel=1e-5)


def test_crown_ibp_phases_skip_crown_only_where_its_weight_is_zero():
    """Warm-up (kappa 1) and the steps after the ramp (beta 0) train without the CROWN pass: the phase's
    objective gives the same loss and gradients as the full one there; mid-ramp the full one runs."""
    network, params = _tiny_net(7, (5,))
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.uniform(size=(6, 2)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, 6), jnp.int32)
    objective = crown_ibp_training(lambda p, v: forward(network, p, v), model=network, eps=0.2, warmup_steps=10,
                                   ramp_steps=20)
    assert [first for first, _ in objective.phases] == [0, 11, 30]
    assert objective.phases[1][1] is objective
    key = jax.random.key(0)
    for step, phase in [(0, 0), (10, 0), (30, 2), (45, 2)]:
        cheap = objective.phases[phase][1]
        (want, _), want_g = jax.value_and_grad(objective, has_aux=True)(params, (x, y), key, jnp.int32(step))
        (got, _), got_g = jax.value_and_grad(cheap, has_aux=True)(params, (x, y), key, jnp.int32(step))
        assert float(got) == pytest.approx(float(want), rel=1e-6)
        for a, b in zip(jax.tree.leaves(got_g), jax.tree.leaves(want_g)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # mid-ramp the IBP-only objective is a different (looser) loss: the phase boundary matters
    (mid_cheap, _) = objective.phases[2][1](params, (x, y), key, jnp.int32(20))
    (mid_full, _) = objective(params, (x, y), key, jnp.int32(20))
    assert float(mid_cheap) != pytest.approx(float(mid_full), rel=1e-6)
    # beta ending above 0 keeps CROWN to the end; kappa starting below 1 needs it from step 0
    kept = crown_ibp_training(lambda p, v: forward(network, p, v), model=network, eps=0.2, warmup_steps=10,
                              ramp_steps=20, beta_end=0.5, kappa_start=0.9)
    assert kept.phases == ((0, kept),)


def test_train_runs_each_phase_from_its_first_step():
    """bench.train picks the phase's step function by step number, on the host."""
    def constant(value):
        def objective(params, batch, key, step):
            return jnp.sum(params["w"]) * 0.0 + value, {"phase": jnp.float32(value)}
        return objective

    objective = constant(0.0)
    objective.phases = ((0, objective), (3, constant(1.0)), (7, constant(2.0)))
    x, y = np.zeros((10, 1), np.float32), np.zeros(10, np.int32)
    _, history = train_mod.train(objective, {"w": jnp.zeros(2)}, optax.sgd(0.1), x, y, epochs=2, batch_size=2,
                                 key=jax.random.key(0), progress=False)
    # 5 steps per epoch: epoch 1 has steps 0-4 (phases 0,0,0,1,1), epoch 2 steps 5-9 (1,1,2,2,2)
    assert [row["phase"] for row in history] == pytest.approx([0.4, 1.6])
    objective.phases = ((1, objective),)
    with pytest.raises(BenchError, match="phases must start at step 0"):
        train_mod.train(objective, {"w": jnp.zeros(2)}, optax.sgd(0.1), x, y, epochs=1, batch_size=2,
                        key=jax.random.key(0), progress=False)


def test_gaussian_augmentation_is_cross_entropy_on_noisy_inputs():
    network, params = _tiny_net(8, (4,))
    x = jnp.full((5, 2), 0.5)
    y = jnp.arange(5) % 3
    logits_fn = lambda p, v: forward(network, p, v)
    key = jax.random.key(3)
    loss, _ = jax.jit(gaussian_augmentation(logits_fn, sigma=0.25))(params, (x, y), key, 0)
    noisy = x + 0.25 * jax.random.normal(key, x.shape)
    expected = optax.softmax_cross_entropy_with_integer_labels(logits_fn(params, noisy), y).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
