"""2-D convolution (NHWC/HWIO) with an optional per-tap weight gradient.

XLA's own gradient is the default everywhere. The per-tap one, for stride-1 convolutions,

  dW[dy, dx] = (x shifted by (dy, dx), as N x C) transposed @ dy (N x O)   (one product a tap)
  dx = conv(dy, W flipped and transposed)   (a plain forward convolution, as XLA's)

equals XLA's up to float rounding. It paid on the CPU while XLA ran its convolutions in
YNNPACK, whose weight gradient with 128+ input channels was 2 to 3.5 times slower than the
forward (config L's train step: 3.9 s with it against 5.1 s). With the Eigen convolutions
this project now compiles CPU programs with (`compile_options`), XLA's gradient is faster
at every size measured (S 1.27 against 1.63 s, L 3.9 against 5.1-7.2 s), and it keeps no
shifted copies.
`train.conv_weight_grad="taps"` (or `use_im2col_grad(True)` around the trace) still selects
it, e.g. for a run that puts YNNPACK's convolutions back through XLA_FLAGS.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterator

import jax
import jax.numpy as jnp

_DN = ("NHWC", "HWIO", "NHWC")
_OVERRIDE: list[bool] = []


@contextlib.contextmanager
def use_im2col_grad(enabled: bool) -> Iterator[None]:
  """Selects (or forbids) the per-tap weight gradient for convolutions traced inside."""
  _OVERRIDE.append(bool(enabled))
  try:
    yield
  finally:
    _OVERRIDE.pop()


def _wanted() -> bool:
  return bool(_OVERRIDE) and _OVERRIDE[-1]


def _xla_conv(x, w, stride: int, padding: int):
  return jax.lax.conv_general_dilated(x, w, (stride, stride), ((padding, padding),) * 2,
                                      dimension_numbers=_DN)


def conv2d(x: jax.Array, w: jax.Array, *, stride: int = 1, padding: int = 0) -> jax.Array:
  """`conv(x, w)` with symmetric zero padding; x (B, H, W, C), w (kh, kw, C, O)."""
  if stride == 1 and _wanted():
    return _conv_s1(x, w, padding)
  return _xla_conv(x, w, stride, padding)


def _weight_grad(x, g, kh: int, kw: int, padding: int):
  """dW (kh, kw, C, O) in float32: one (C x N) @ (N x O) product per tap.

  Written as `shifted.T @ g`, the form XLA's CPU backend ran fastest (a dot_general
  contracting axis 0, or a scan over the taps, was slower in the whole train step). The
  price: XLA keeps a convolution's nine shifted copies alive together (0.65 GB more
  temporaries at the S bench config), and the copies cost more than the products.
  """
  b, h, w_, o = g.shape
  c = x.shape[-1]
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  g2 = g.reshape(-1, o)
  taps = [jnp.dot(xp[:, dy:dy + h, dx:dx + w_, :].reshape(-1, c).T, g2,
                  preferred_element_type=jnp.float32)
          for dy in range(kh) for dx in range(kw)]
  return jnp.stack(taps).reshape(kh, kw, c, o)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_s1(x, w, padding):
  return _xla_conv(x, w, 1, padding)


def _conv_s1_fwd(x, w, padding):
  return _xla_conv(x, w, 1, padding), (x, w)


def _conv_s1_bwd(padding, res, g):
  x, w = res
  kh, kw, c, o = w.shape
  w_t = jnp.flip(w, (0, 1)).swapaxes(2, 3)  # (kh, kw, O, C)
  dx = jax.lax.conv_general_dilated(
      g, w_t, (1, 1), ((kh - 1 - padding, kh - 1 - padding),
                       (kw - 1 - padding, kw - 1 - padding)), dimension_numbers=_DN)
  dw = _weight_grad(x, g, kh, kw, padding)
  return dx.astype(x.dtype), dw.astype(w.dtype)


_conv_s1.defvjp(_conv_s1_fwd, _conv_s1_bwd)
