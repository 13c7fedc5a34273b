"""2-D convolution (NHWC/HWIO) whose backward pass is fast on XLA's CPU backend.

On the CPU, XLA lowers the weight gradient of a convolution to a convolution over the batch
and spatial axes that runs 2 to 5 times slower than the forward (measured on 3x3 convs of
the SCDM UNet's sizes), and the input gradient to a transposed convolution with layout
copies. For stride-1 convolutions this module's custom VJP computes

  dW[dy, dx] = x shifted by (dy, dx), as (N x C), transposed @ dy (N x O)   (im2col, per tap)
  dx = conv(dy, W flipped and transposed)   (a plain forward convolution)

which equal XLA's gradients up to float rounding. It is OFF by default (see
`_im2col_wanted`); `use_im2col_grad(True)` turns it on for the convolutions traced inside
(benchmarks: `bench/bench_vs_official.py --conv_grad im2col`). Strided convolutions always
keep XLA's gradient.
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
  """Forces (or forbids) the im2col weight gradient for convolutions traced inside."""
  _OVERRIDE.append(bool(enabled))
  try:
    yield
  finally:
    _OVERRIDE.pop()


def _im2col_wanted() -> bool:
  # Off unless asked for: under an 8-device FSDP mesh on the CPU, the partitioned products
  # inside the per-tap scan deadlocked XLA's in-process collectives (tests/test_train.py::
  # test_one_vs_eight_devices_same_loss), and the whole train step at config S was only
  # 4 % faster (3.51 -> 3.37 s, within this machine's noise).
  return bool(_OVERRIDE and _OVERRIDE[-1])


def _xla_conv(x, w, stride: int, padding: int):
  return jax.lax.conv_general_dilated(x, w, (stride, stride), ((padding, padding),) * 2,
                                      dimension_numbers=_DN)


def conv2d(x: jax.Array, w: jax.Array, *, stride: int = 1, padding: int = 0) -> jax.Array:
  """`conv(x, w)` with symmetric zero padding; x (B, H, W, C), w (kh, kw, C, O)."""
  if stride == 1 and _im2col_wanted():
    return _conv_s1(x, w, padding)
  return _xla_conv(x, w, stride, padding)


def _weight_grad(x, g, kh: int, kw: int, padding: int):
  """dW (kh, kw, C, O) in float32: one (C x N) @ (N x O) product per tap.

  Per tap rather than one product of the full im2col matrix: the same FLOPs, and only one
  shifted copy of x is alive at a time (the full patch matrix is kh*kw times x).
  """
  b, h, w_, o = g.shape
  c = x.shape[-1]
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  g2 = g.reshape(-1, o)

  def tap(_, i):
    shifted = jax.lax.dynamic_slice(xp, (0, i // kw, i % kw, 0), (b, h, w_, c))
    return None, jax.lax.dot_general(shifted.reshape(-1, c), g2, (((0,), (0,)), ((), ())),
                                     preferred_element_type=jnp.float32)
  # A scan, so that XLA cannot schedule all the shifted copies of x at once.
  _, taps = jax.lax.scan(tap, None, jnp.arange(kh * kw))
  return taps.reshape(kh, kw, c, o)


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
