"""The attack contract over every registered attack, and attack strength on a trained model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench.attacks import ATTACKS, ThreatModelViolation, check_threat_model
from bench.threat import Norm
from bench.contracts import Attack, Capabilities
from bench.errors import BenchError
from bench.threat import UnsupportedNorm
from bench.evaluate import accuracy

EPS = {"linf": 0.1, "l2": 1.0}


def _make(name, norm):
    try:
        return ATTACKS[name](norm=norm, eps=EPS[norm])
    except UnsupportedNorm as err:  # an attack defined for some norms only (e.g. C&W is L2)
        assert norm in str(err)
        pytest.skip(f"{name} does not support {norm}: {err}")


@pytest.mark.parametrize("norm", [n.value for n in Norm])
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_contract(name, norm, trained_digits):
    logits_fn, params, x, y = trained_digits
    calls = []

    def counting_logits_fn(p, xb):
        calls.append(1)  # runs only while tracing
        return logits_fn(p, xb)

    x, y = jnp.asarray(x[:32]), jnp.asarray(y[:32])
    attack = _make(name, norm)
    x_adv = attack(counting_logits_fn, params, x, y, jax.random.key(0))
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    check_threat_model(x, x_adv, norm, EPS[norm])  # inside the ball and [0, 1]
    traced = len(calls)
    assert traced > 0
    x_again = attack(counting_logits_fn, params, x, y, jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(x_adv), np.asarray(x_again))  # same key, same output
    assert len(calls) == traced, "a second call with the same shapes retraced"
    # Another epsilon of the same attack reuses the compiled loop too.
    other = ATTACKS[name](norm=norm, eps=EPS[norm] / 2)
    check_threat_model(x, other(counting_logits_fn, params, x, y, jax.random.key(1)), norm, EPS[norm] / 2)


def test_check_threat_model_rejects_violations():
    x = np.full((2, 4, 4, 1), 0.5, np.float32)
    with pytest.raises(ThreatModelViolation, match="beyond eps"):
        check_threat_model(x, x + 0.2, "linf", 0.1)
    with pytest.raises(ThreatModelViolation, match=r"\[0, 1\]"):
        check_threat_model(x, x + 0.6, "linf", 1.0)
    with pytest.raises(ThreatModelViolation, match="beyond eps"):
        check_threat_model(x, x + 0.1, "l2", 0.1)  # L2 norm of a 16-pixel 0.1 shift is 0.4
    check_threat_model(x, x + 0.1, "linf", 0.1)


def test_pgd_drives_standard_model_to_zero_at_large_eps(trained_digits):
    logits_fn, params, x, y = trained_digits
    clean = accuracy(logits_fn, params, x, y)
    assert clean > 0.9
    x_adv = ATTACKS["pgd"](norm="linf", eps=0.5, steps=20)(logits_fn, params, jnp.asarray(x), jnp.asarray(y),
                                                          jax.random.key(0))
    assert accuracy(logits_fn, params, np.asarray(x_adv), y) < 0.02


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0)])
def test_pgd_at_least_as_strong_as_fgsm(trained_digits, norm, eps):
    logits_fn, params, x, y = trained_digits
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    key = jax.random.key(0)
    fgsm_adv = ATTACKS["fgsm"](norm=norm, eps=eps)(logits_fn, params, xj, yj, key)
    pgd_adv = ATTACKS["pgd"](norm=norm, eps=eps, steps=20)(logits_fn, params, xj, yj, key)
    fgsm_acc = accuracy(logits_fn, params, np.asarray(fgsm_adv), y)
    pgd_acc = accuracy(logits_fn, params, np.asarray(pgd_adv), y)
    assert pgd_acc <= fgsm_acc
    assert pgd_acc < accuracy(logits_fn, params, x, y) - 0.1  # the attack does something at this eps


def test_restarts_never_hurt(trained_digits):
    """The per-example best is kept across restarts: more restarts cannot raise robust accuracy."""
    logits_fn, params, x, y = trained_digits
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    accs = []
    for restarts in (1, 3):
        x_adv = ATTACKS["pgd"](norm="linf", eps=0.05, steps=5, restarts=restarts)(logits_fn, params, xj, yj,
                                                                                 jax.random.key(0))
        accs.append(accuracy(logits_fn, params, np.asarray(x_adv), y))
    assert accs[1] <= accs[0]


@pytest.mark.parametrize("kwargs,message", [
    (dict(norm="linf", eps=-0.1), "epsilon must be"),
    (dict(norm="linf", eps=1.5), "exceeds 1"),
    (dict(norm="l7", eps=0.1), "unknown norm"),
    (dict(norm="linf", eps=0.1, steps=0), "steps >= 1"),
    (dict(norm="linf", eps=0.1, loss="hinge"), "unknown attack loss"),
])
def test_bad_hyper_parameters_are_clear_errors(kwargs, message):
    with pytest.raises(BenchError, match=message):
        ATTACKS["pgd"](**kwargs)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_states_its_capabilities_and_handles_a_stochastic_model(name, trained_digits):
    """Capabilities are typed data; a randomised model (logits_fn.stochastic, taking a key) is attacked through
    its draws and the result stays in the threat model."""
    logits_fn, params, x, y = trained_digits
    import inspect

    accepted = inspect.signature(ATTACKS[name]).parameters
    cheap = {k: v for k, v in dict(steps=5, n_queries=50, binary_steps=2, n_targets=2).items() if k in accepted}
    built = {}
    for norm in EPS:
        try:
            built[norm] = ATTACKS[name](norm=norm, eps=EPS[norm], **cheap)
        except UnsupportedNorm:
            pass
    assert built, f"{name} supports no norm"
    keys_seen = []

    def noisy(p, xb, key):
        keys_seen.append(1)
        return logits_fn(p, xb) + 0.1 * jax.random.normal(key, (xb.shape[0], 10))

    noisy.stochastic = True
    x, y = jnp.asarray(x[:16]), jnp.asarray(y[:16])
    for norm, attack in built.items():
        assert isinstance(attack, Attack) and isinstance(attack.capabilities, Capabilities)
        stronger = attack.capabilities.stronger
        if stronger is not None:
            assert isinstance(stronger(), Attack) and "steps" in attack.capabilities.stronger_label
    norm, attack = next(iter(built.items()))  # one norm is enough to show the draws reach the model (compiles once)
    check_threat_model(x, attack(noisy, params, x, y, jax.random.key(0)), norm, EPS[norm])
    assert keys_seen  # the model was called with a key



def test_dlr_losses_equal_the_papers_formulas():
    """DLR and targeted DLR (Croce & Hein 2020) against the formulas written with a full sort: values on random
    logits and on rows with tied top logits, and input gradients (rows without ties, where the gradient is unique)."""
    from bench.threat import dlr, dlr_targeted

    z = jax.random.normal(jax.random.key(0), (64, 10))
    tied = z.at[:8, :4].set(1.5)
    y, t = jnp.arange(64) % 10, (jnp.arange(64) + 3) % 10
    rows = jnp.arange(64)

    def sorted_dlr(v):
        s = jnp.sort(v, axis=1)
        other = jnp.max(jnp.where(jnp.arange(10) == y[:, None], -jnp.inf, v), axis=1)
        return -(v[rows, y] - other) / (s[:, -1] - s[:, -3] + 1e-12)

    def sorted_dlr_targeted(v):
        s = jnp.sort(v, axis=1)
        return -(v[rows, y] - v[rows, t]) / (s[:, -1] - 0.5 * (s[:, -3] + s[:, -4]) + 1e-12)

    for v in (z, tied):
        np.testing.assert_allclose(dlr(v, y), sorted_dlr(v), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(dlr_targeted(v, y, t), sorted_dlr_targeted(v), rtol=1e-5, atol=1e-6)
    for ours, reference in ((lambda v: dlr(v, y), sorted_dlr), (lambda v: dlr_targeted(v, y, t), sorted_dlr_targeted)):
        np.testing.assert_allclose(jax.grad(lambda v: jnp.sum(jnp.sin(ours(v))))(z),
                                   jax.grad(lambda v: jnp.sum(jnp.sin(reference(v))))(z), rtol=1e-5, atol=1e-6)
