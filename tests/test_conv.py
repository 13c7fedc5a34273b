"""The convolution with the per-tap weight gradient equals XLA's convolution and gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scdm_jax.models import conv


def _xla(x, w, stride, padding):
  return jax.lax.conv_general_dilated(x, w, (stride, stride), ((padding, padding),) * 2,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("kernel,padding,shape,out", [
    (3, 1, (2, 8, 8, 5), 7), (1, 0, (2, 6, 6, 4), 3), (3, 0, (1, 9, 7, 3), 2),
    (3, 1, (3, 5, 5, 16), 16), (3, 1, (2, 4, 4, 128), 6)])
def test_values_and_gradients_equal_xla(kernel, padding, shape, out):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  w = jnp.asarray(rng.normal(size=(kernel, kernel, shape[-1], out)) * 0.3, jnp.float32)

  def loss(fn):
    return lambda x, w: jnp.sum(jnp.sin(fn(x, w)))
  with conv.use_im2col_grad(True):
    ours = jax.jit(jax.value_and_grad(loss(lambda x, w: conv.conv2d(x, w, padding=padding)),
                                      argnums=(0, 1)))(x, w)
  ref = jax.value_and_grad(loss(lambda x, w: _xla(x, w, 1, padding)), argnums=(0, 1))(x, w)
  np.testing.assert_allclose(ours[0], ref[0], rtol=1e-5)
  for a, b in zip(ours[1], ref[1]):
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(b))))


def test_bfloat16_gradients_keep_their_dtypes():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 8)), jnp.bfloat16)
  w = jnp.asarray(rng.normal(size=(3, 3, 8, 8)) * 0.2, jnp.bfloat16)
  f = lambda fn: lambda x, w: jnp.sum(fn(x, w).astype(jnp.float32) ** 2)
  with conv.use_im2col_grad(True):
    gx, gw = jax.grad(f(lambda x, w: conv.conv2d(x, w, padding=1)), argnums=(0, 1))(x, w)
  rx, rw = jax.grad(f(lambda x, w: _xla(x, w, 1, 1)), argnums=(0, 1))(x, w)
  assert gx.dtype == gw.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(gw, np.float32), np.asarray(rw, np.float32),
                             rtol=0.05, atol=0.05 * float(jnp.max(jnp.abs(rw))))
  np.testing.assert_allclose(np.asarray(gx, np.float32), np.asarray(rx, np.float32),
                             rtol=0.05, atol=0.05 * float(jnp.max(jnp.abs(rx))))


def test_strided_and_overridden_convs_use_xla():
  x = jnp.ones((1, 8, 8, 2))
  w = jnp.ones((3, 3, 2, 3))
  with conv.use_im2col_grad(True):
    strided = jax.make_jaxpr(lambda x, w: conv.conv2d(x, w, stride=2, padding=1))(x, w)
    s1 = jax.make_jaxpr(lambda x, w: conv.conv2d(x, w, padding=1))(x, w)
  with conv.use_im2col_grad(False):
    plain = jax.make_jaxpr(lambda x, w: conv.conv2d(x, w, padding=1))(x, w)
  assert "custom_vjp" not in str(strided) and "custom_vjp" not in str(plain)
  assert "custom_vjp" in str(s1)


def test_default_is_xlas_gradient_at_every_width():
  """Without an override every convolution keeps XLA's gradient (the faster one with the
  CPU's Eigen convolutions, compile_options.py), whatever its input channels."""
  jaxpr = lambda c: str(jax.make_jaxpr(lambda x, w: conv.conv2d(x, w, padding=1))(
      jnp.ones((1, 6, 6, c)), jnp.ones((3, 3, c, 4))))
  assert jax.default_backend() == "cpu"
  for c in (8, 128, 256):
    assert "custom_vjp" not in jaxpr(c)
