"""jaxpure.models.conv: the networks' convolution equals lax.conv_general_dilated in value,
input gradient, kernel gradient and forward-mode derivative, and its input gradient inside a
loop has the kernel in canonical order (the fast path of XLA's CPU backend)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxpure.models import conv as conv_lib

CASES = [  # strides, padding, rhs_dilation, feature_group_count
    ((1, 1), ((1, 1), (1, 1)), (1, 1), 1),
    ((2, 2), ((1, 0), (0, 1)), (1, 1), 1),
    ((1, 1), ((2, 2), (2, 2)), (2, 2), 1),
    ((1, 2), "SAME", (1, 1), 1),
    ((1, 1), "VALID", (1, 1), 1),
    ((1, 1), "SAME", (1, 1), 2),
]


def _inputs(dtype, groups):
  x = jax.random.normal(jax.random.key(0), (2, 9, 7, 4), dtype)
  w = jax.random.normal(jax.random.key(1), (3, 3, 4 // groups, 6), dtype)
  return x, w


def _both(strides, padding, dilation, groups):
  dn = ("NHWC", "HWIO", "NHWC")
  ref = lambda x, w: lax.conv_general_dilated(  # noqa: E731
      x, w, strides, padding, rhs_dilation=dilation, dimension_numbers=dn,
      feature_group_count=groups, precision="highest")
  ours = lambda x, w: conv_lib.conv_general_dilated(  # noqa: E731
      x, w, strides, padding, rhs_dilation=dilation,
      dimension_numbers=lax.conv_dimension_numbers((1,) * 4, (1,) * 4, dn),
      feature_group_count=groups, precision="highest")
  return ref, ours


@pytest.mark.parametrize("strides, padding, dilation, groups", CASES)
def test_values_and_derivatives_equal_lax_in_float64(strides, padding, dilation, groups):
  with jax.enable_x64():
    x, w = _inputs(jnp.float64, groups)
    ref, ours = _both(strides, padding, dilation, groups)
    loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))  # noqa: E731
    np.testing.assert_allclose(ours(x, w), ref(x, w), rtol=0, atol=1e-12)
    for a, b in zip(jax.grad(loss(ours), (0, 1))(x, w), jax.grad(loss(ref), (0, 1))(x, w)):
      np.testing.assert_allclose(a, b, rtol=0, atol=1e-11)
    dx, dw = jax.random.normal(jax.random.key(2), x.shape), jax.random.normal(
        jax.random.key(3), w.shape)
    _, t_ours = jax.jvp(ours, (x, w), (dx, dw))
    _, t_ref = jax.jvp(ref, (x, w), (dx, dw))
    np.testing.assert_allclose(t_ours, t_ref, rtol=0, atol=1e-11)


def test_input_gradient_in_a_loop_has_the_kernel_in_canonical_order():
  """The reverse pass of a loop of convolutions: autodiff's own rule leaves the reversed kernel
  in 01oi order inside the loop (XLA:CPU's slow path); ours has none."""
  x, w = _inputs(jnp.float32, 1)
  w = w[..., :4]  # [3, 3, 4, 4]: maps x to its own shape

  def hlo(f):
    step = lambda c, _: (jnp.tanh(f(c, w)), None)  # noqa: E731
    grad = jax.grad(lambda x: jnp.sum(lax.scan(step, x, None, length=3)[0]))
    return jax.jit(grad).lower(x).compile().as_text()
  ref, ours = _both((1, 1), "SAME", (1, 1), 1)
  assert "01oi" in hlo(ref)  # the pattern this module exists for (fails if XLA changes)
  assert "01oi" not in hlo(ours)


def test_flax_conv_with_it_has_the_same_parameters_and_output():
  import flax.linen as nn
  x = jax.random.normal(jax.random.key(4), (2, 8, 8, 3))
  plain, ours = nn.Conv(5, (3, 3), name="c"), conv_lib.Conv(5, (3, 3), name="c")
  v = plain.init(jax.random.key(5), x)
  assert jax.tree.structure(ours.init(jax.random.key(5), x)) == jax.tree.structure(v)
  np.testing.assert_allclose(ours.apply(v, x), plain.apply(v, x), rtol=0, atol=1e-6)
