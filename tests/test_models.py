"""The patch + matmul convolution (bench/conv.py) computes what `lax.conv_general_dilated` computes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from bench.conv import (conv_for, conv_to_space_to_depth, matmul_conv, space_to_depth_input_conv,
                        writes_space_to_depth)
from bench.models import MODELS, init_params, make_logits_fn


CONV_ARCHS = sorted(a for a in MODELS if a != "mlp")


# cnn_small (the suite's workhorse) at MNIST's shape and at an odd colour one; every other net at one small odd shape
# (trades_smallcnn's unpadded convs need 20 pixels), which keeps compilation short.
CASES = [("cnn_small", (28, 28, 1)), ("cnn_small", (21, 19, 3))] + [(a, (21, 21, 1)) for a in CONV_ARCHS if a != "cnn_small"]


@pytest.mark.parametrize("arch,shape", CASES)
def test_every_conv_model_same_outputs_and_gradients_with_either_conv(arch, shape):
    """The same parameters give the same logits, input gradients and parameter gradients (float32 tolerance)."""
    mean, std = (0.5,) * shape[2], (0.25,) * shape[2]
    ref, new = MODELS[arch](10, mean, std, conv="lax"), MODELS[arch](10, mean, std, conv="matmul")
    params = init_params(ref, jax.random.key(0), shape)
    assert jax.tree.structure(init_params(new, jax.random.key(0), shape)) == jax.tree.structure(params)
    x = jax.random.uniform(jax.random.key(1), (3, *shape))
    y = jnp.arange(3)

    def results(fn):
        def loss(p, x):
            return -jnp.mean(jax.nn.log_softmax(fn(p, x))[jnp.arange(3), y])
        return jax.jit(lambda p, x: (fn(p, x), *jax.grad(loss, argnums=(0, 1))(p, x)))(params, x)

    (la, gpa, gxa), (lm, gpm, gxm) = results(make_logits_fn(ref)), results(make_logits_fn(new))
    np.testing.assert_allclose(lm, la, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gxm, gxa, rtol=1e-3, atol=1e-6)
    for a, m in zip(jax.tree.leaves(gpa), jax.tree.leaves(gpm)):
        np.testing.assert_allclose(m, a, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("kernel,stride,padding", [(4, 2, ((1, 1), (1, 1))), (3, 1, "SAME"), (4, 2, "SAME"),
                                                   (3, 1, "VALID"), (5, 3, ((2, 0), (1, 2))),
                                                   (6, 3, ((2, 1), (0, 2))), (4, 4, "VALID")])
def test_matmul_conv_equals_lax_conv(kernel, stride, padding):
    """Odd sizes, asymmetric padding, strides that do not divide the input, space-to-depth (stride divides
    kernel) and plain patches: every output pixel agrees."""
    x = jax.random.normal(jax.random.key(0), (3, 11, 9, 2))
    w = jax.random.normal(jax.random.key(1), (kernel, kernel, 2, 4))
    dn = ("NHWC", "HWIO", "NHWC")
    want = lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=dn)
    got = matmul_conv(x, w, (stride, stride), padding, dimension_numbers=dn)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("first,second", [((4, 2, ((1, 1), (1, 1))), (4, 2, ((1, 1), (1, 1)))),
                                          ((3, 2, "SAME"), (4, 2, "SAME")), ((2, 1, "VALID"), (4, 2, ((2, 0), (1, 2)))),
                                          ((5, 3, ((2, 1), (0, 2))), (6, 3, "VALID")), ((3, 3, "SAME"), (2, 2, "SAME"))])
def test_conv_written_as_the_next_convs_space_to_depth_input_equals_two_lax_convs(first, second):
    """Two convs with a ReLU between them, the first written straight in the second's space-to-depth layout
    (odd sizes, asymmetric and SAME padding, windows that fill or do not fill a block): the output, the input
    gradient and both kernel gradients agree with XLA's convolutions."""
    (k1, s1, p1), (k2, s2, p2) = first, second
    assert writes_space_to_depth(k1, s1, k2, s2)
    x = jax.random.normal(jax.random.key(0), (2, 13, 11, 2))
    w1, b1 = jax.random.normal(jax.random.key(1), (k1, k1, 2, 3)), jax.random.normal(jax.random.key(2), (3,))
    w2 = jax.random.normal(jax.random.key(3), (k2, k2, 3, 4))
    dn = ("NHWC", "HWIO", "NHWC")

    def reference(x, w1, w2):
        h = jax.nn.relu(lax.conv_general_dilated(x, w1, (s1, s1), p1, dimension_numbers=dn) + b1)
        return lax.conv_general_dilated(h, w2, (s2, s2), p2, dimension_numbers=dn)

    def fused(x, w1, w2):
        z, out_hw = conv_to_space_to_depth(x, w1, b1, s1, p1, k2, s2, p2)
        return space_to_depth_input_conv(jax.nn.relu(z), w2, s2, out_hw)

    cot = jax.random.normal(jax.random.key(4), reference(x, w1, w2).shape)
    for f in (reference, fused):
        assert f(x, w1, w2).shape == cot.shape
    got, want = (jax.jit(lambda: (f(x, w1, w2), *jax.grad(lambda *a: jnp.sum(cot * f(*a)), argnums=(0, 1, 2))(x, w1, w2)))()
                 for f in (fused, reference))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_a_window_wider_than_a_block_is_not_written_as_space_to_depth():
    """cnn_medium's 3x3 stride-1 conv before a 4x4 stride-2 one reads 3 rows per pixel, more than a block of 2."""
    assert not writes_space_to_depth(3, 1, 4, 2) and not writes_space_to_depth(4, 2, 3, 2)
    with pytest.raises(ValueError, match="at most stride \\* next_stride"):
        conv_to_space_to_depth(jnp.zeros((1, 8, 8, 1)), jnp.zeros((3, 3, 1, 2)), jnp.zeros(2), 1, "SAME", 4, 2, "SAME")


@pytest.mark.parametrize("kernel,stride,padding,cin,cout", [(3, 1, "SAME", 4, 2), (4, 2, ((1, 1), (1, 1)), 16, 32),
                                                            (2, 1, "VALID", 3, 3)])
def test_shift_add_conv_values_and_gradients_equal_lax_conv(kernel, stride, padding, cin, cout):
    """The shift-add form (unit stride after space-to-depth, cout <= cin: cnn_small's second conv is the middle
    case) and its patch-form VJP: outputs, input gradient and kernel gradient agree with XLA's convolution."""
    x = jax.random.normal(jax.random.key(0), (3, 14, 12, cin))
    w = jax.random.normal(jax.random.key(1), (kernel, kernel, cin, cout))
    dn = ("NHWC", "HWIO", "NHWC")
    cot = jax.random.normal(jax.random.key(2), lax.conv_general_dilated(x, w, (stride, stride), padding,
                                                                        dimension_numbers=dn).shape)

    def outputs_and_grads(conv):
        def f(x, w):
            return jnp.sum(cot * conv(x, w, (stride, stride), padding, dimension_numbers=dn))
        return (conv(x, w, (stride, stride), padding, dimension_numbers=dn), *jax.grad(f, argnums=(0, 1))(x, w))

    for got, want in zip(jax.jit(lambda: outputs_and_grads(matmul_conv))(),
                         jax.jit(lambda: outputs_and_grads(lax.conv_general_dilated))()):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_conv_for_rejects_unknown_and_resolves_auto():
    with pytest.raises(ValueError, match="unknown conv implementation 'fast'"):
        conv_for("fast")
    expected = matmul_conv if jax.default_backend() == "cpu" else lax.conv_general_dilated
    assert conv_for("auto") is expected
