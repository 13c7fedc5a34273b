"""Building blocks of the SDM/SCDM UNet in Flax NNX (NHWC).

Every block mirrors one module of the reference PyTorch code (OpenAI guided-diffusion as
modified by SDM: `ResBlock`, `SDMResBlock`, `SPADEGroupNorm`, `AttentionBlock`,
`Downsample`, `Upsample`) with the same maths, so that a PyTorch state dict maps onto it
one tensor to one parameter. Each block has a `torch_params(prefix)` method that lists
`(torch_name, variable, layout)` for that mapping; `torch_import.py` uses it, so the
mapping lives next to the layer that defines the parameter.

Precision: parameters are float32. Convolutions and linear layers compute in the block's
`dtype` (float32 or bfloat16). GroupNorm statistics and normalisation are computed in
float32 (as the reference's `GroupNorm32`), and attention logits/softmax in float32
(`softmax_attention`).

Blocks keep no references to other blocks (tree-mode safe), and constructors only create
parameters from keys derived from the UNet's `rngs` (see `KeyGen`), so `nnx.eval_shape` builds an abstract model without allocation.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from scdm_jax.models import conv as conv_ops
from scdm_jax.models import initializers

Array = jax.Array

GN_GROUPS = 32
GN_EPS = 1e-5
SPADE_HIDDEN = 128

# Layouts understood by torch_import.py.
CONV2D = "conv2d"  # torch (O, I, kh, kw) -> HWIO
CONV1D = "conv1d"  # torch (O, I, 1) -> (I, O) (the 1x1 conv1d of attention)
LINEAR = "linear"  # torch (O, I) -> (I, O)
VECTOR = "vector"  # biases, GroupNorm weight/bias: unchanged

TorchParams = list[tuple[str, nnx.Variable, str]]


# ----------------------------------------------------------------------------- helpers

class KeyGen:
  """Hands out parameter-init keys `fold_in(base, i)`, i = 1, 2, ...

  A plain Python object used only during construction (never stored on a module): the
  UNet draws one key from its `nnx.Rngs` and derives all others from it. This keeps
  `nnx.eval_shape(UNet(...))` fast (one RngStream update instead of one per parameter).
  """

  def __init__(self, base: Array):
    self._base = base
    self._count = 0

  def __call__(self) -> Array:
    self._count += 1
    return jax.random.fold_in(self._base, self._count)


class Conv2d(nnx.Module):
  """2-D conv, NHWC/HWIO, PyTorch padding `kernel // 2` on each side, PyTorch init."""

  def __init__(self, in_ch: int, out_ch: int, kernel: int, *, stride: int = 1,
               zero: bool = False, dtype: Any, keys: KeyGen):
    fan_in = in_ch * kernel * kernel
    init = nnx.initializers.zeros_init() if zero else initializers.torch_uniform(fan_in)
    self.kernel = nnx.Param(init(keys(), (kernel, kernel, in_ch, out_ch), jnp.float32))
    self.bias = nnx.Param(init(keys(), (out_ch,), jnp.float32))
    self.zero_init = zero
    self.stride = stride
    self.padding = kernel // 2
    self.dtype = dtype

  def __call__(self, x: Array) -> Array:
    p = self.padding
    y = conv_ops.conv2d(x.astype(self.dtype), self.kernel[...].astype(self.dtype),
                        stride=self.stride, padding=p)
    return y + self.bias[...].astype(self.dtype)


class Dense(nnx.Module):
  """Linear layer on the last axis, PyTorch init."""

  def __init__(self, in_f: int, out_f: int, *, zero: bool = False, dtype: Any,
               keys: KeyGen):
    init = nnx.initializers.zeros_init() if zero else initializers.torch_uniform(in_f)
    self.kernel = nnx.Param(init(keys(), (in_f, out_f), jnp.float32))
    self.bias = nnx.Param(init(keys(), (out_f,), jnp.float32))
    self.zero_init = zero
    self.dtype = dtype

  def __call__(self, x: Array) -> Array:
    return (jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
            + self.bias[...].astype(self.dtype))


def conv(in_ch: int, out_ch: int, kernel: int, *, stride: int = 1, zero: bool = False,
         dtype: Any, keys: KeyGen) -> Conv2d:
  return Conv2d(in_ch, out_ch, kernel, stride=stride, zero=zero, dtype=dtype, keys=keys)


def linear(in_f: int, out_f: int, *, zero: bool = False, dtype: Any, keys: KeyGen) -> Dense:
  return Dense(in_f, out_f, zero=zero, dtype=dtype, keys=keys)


def _conv_torch(prefix: str, m: Conv2d) -> TorchParams:
  return [(f"{prefix}.weight", m.kernel, CONV2D), (f"{prefix}.bias", m.bias, VECTOR)]


def _linear_torch(prefix: str, m: Dense, layout: str = LINEAR) -> TorchParams:
  return [(f"{prefix}.weight", m.kernel, layout), (f"{prefix}.bias", m.bias, VECTOR)]


def timestep_embedding(t: Array, dim: int, max_period: float = 10000.0) -> Array:
  """Sinusoidal embedding [cos | sin] of integer timesteps, float32, as guided-diffusion."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
  return emb


def group_norm(x: Array, scale: Array | None, bias: Array | None, *,
               groups: int = GN_GROUPS, eps: float = GN_EPS) -> Array:
  """GroupNorm over (H, W, C/groups) in float32 (two passes: mean, then centred variance).

  Returns float32. The sums run over H and W per channel first and only then over the
  channels of a group: on XLA's CPU backend that is 2 to 5 times faster than one reduction
  over a (B, H, W, G, C/G) view, forward and backward, with the same maths.
  """
  b, h, w, c = x.shape
  per_group = c // groups
  n = h * w * per_group
  xf = x.astype(jnp.float32)

  def group_mean(v):  # (B, H, W, C) -> (B, 1, 1, C): the mean of each channel's group
    sums = jnp.sum(v, axis=(1, 2)).reshape(b, groups, per_group).sum(-1) / n
    return jnp.repeat(sums, per_group, axis=1)[:, None, None, :]

  centred = xf - group_mean(xf)
  y = centred * jax.lax.rsqrt(group_mean(jnp.square(centred)) + eps)
  if scale is not None:
    y = y * scale.astype(jnp.float32) + bias.astype(jnp.float32)
  return y


def avg_pool2(x: Array) -> Array:
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4)).astype(x.dtype)


def upsample_nearest2(x: Array) -> Array:
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def dropout(x: Array, rate: float, key: Array | None) -> Array:
  """Inverted dropout; the identity when `key` is None (deterministic) or rate == 0."""
  if key is None or rate <= 0.0:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


# ------------------------------------------------------------------ label conditioning

@functools.partial(jax.tree_util.register_dataclass, data_fields=["dense", "index", "edge"],
                   meta_fields=["unconditional"])  # a static count, also under nnx.remat
@dataclasses.dataclass(frozen=True)
class LabelInput:
  """The conditioning map at one feature resolution (nearest, top-left pixel of blocks).

  Exactly one of `dense` / `index` is set:
    dense: (B, h, w, L) the conditioning map itself (dense first SPADE conv).
    index: (B, h, w) int32 class index of each pixel's one-hot label channels, or K
      (= number of one-hot channels) for an all-zero pixel (one-hot lookup).
    edge: (B, h, w, 1) the instance-edge channel when the lookup is used with an edge
      channel (it is not one-hot, so it gets a dense 1-channel conv), else None.
    unconditional: n >= 0 more rows of the features after those B, whose map is all
      zero (the unconditional half of classifier-free guidance): a SPADE norm computes
      their modulation once for all of them instead of per row.
  """

  dense: Array | None = None
  index: Array | None = None
  edge: Array | None = None
  unconditional: int = 0


def onehot_index(labels: Array) -> Array:
  """(B, H, W, K) one-hot-or-all-zero labels -> (B, H, W) int32 index, K for all-zero."""
  k = labels.shape[-1]
  valid = jnp.max(labels, axis=-1) > 0
  return jnp.where(valid, jnp.argmax(labels, axis=-1), k).astype(jnp.int32)


def onehot_conv3x3(index: Array, kernel: Array, bias: Array, num_onehot: int, *,
                   dtype: Any) -> Array:
  """The 3x3, padding-1 conv of a one-hot-or-zero map, as 9 embedding lookups.

  For each of the 9 taps the kernel row of the class at the shifted pixel is gathered
  (a zero row for all-zero pixels and for the zero padding) and the 9 rows are summed:
  O(9 * C_out) per pixel instead of O(9 * K * C_out). Equal to the dense conv of the
  one-hot map up to float rounding.

  Args:
    index: (B, h, w) int32 in [0, num_onehot]; num_onehot marks an all-zero pixel.
    kernel: (3, 3, L, C_out) HWIO kernel; only its first `num_onehot` input rows are used.
    bias: (C_out,).
    num_onehot: K, the number of one-hot channels.
    dtype: compute dtype (the kernel is rounded to it, as the dense conv would do);
      the 9 taps are summed in float32.

  Returns:
    (B, h, w, C_out) in `dtype`.
  """
  kh, kw, _, c_out = kernel.shape
  k = num_onehot
  table = kernel[:, :, :k, :].astype(dtype)
  table = jnp.concatenate([table, jnp.zeros((kh, kw, 1, c_out), dtype)], axis=2)
  table = table.reshape(kh * kw * (k + 1), c_out)
  b, h, w = index.shape
  pad = jnp.pad(index, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2)), constant_values=k)
  out = jnp.broadcast_to(bias.astype(dtype).astype(jnp.float32), (b, h, w, c_out))
  for dy in range(kh):
    for dx in range(kw):
      idx = pad[:, dy:dy + h, dx:dx + w] + (dy * kw + dx) * (k + 1)
      out = out + jnp.take(table, idx, axis=0, mode="clip").astype(jnp.float32)
  return out.astype(dtype)


# ----------------------------------------------------------------------------- blocks

class GroupNorm(nnx.Module):
  """GroupNorm(32) with affine parameters, computed in float32 (the reference GroupNorm32).

  Returns float32; callers cast to their compute dtype.
  """

  def __init__(self, channels: int):
    self.scale = nnx.Param(jnp.ones((channels,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))

  def __call__(self, x: Array) -> Array:
    return group_norm(x, self.scale[...], self.bias[...])

  def torch_params(self, prefix: str) -> TorchParams:
    return [(f"{prefix}.weight", self.scale, VECTOR), (f"{prefix}.bias", self.bias, VECTOR)]


class SPADEGroupNorm(nnx.Module):
  """GN32(h; no affine) * (1 + gamma(c)) + beta(c), SPADE style (SDM's SPADEGroupNorm)."""

  def __init__(self, channels: int, label_channels: int, *, num_onehot: int, dtype: Any,
               keys: KeyGen):
    self.dtype = dtype
    self.num_onehot = num_onehot  # K one-hot channels first, the rest (edge) dense
    self.mlp_shared = conv(label_channels, SPADE_HIDDEN, 3, dtype=dtype, keys=keys)
    self.mlp_gamma = conv(SPADE_HIDDEN, channels, 3, dtype=dtype, keys=keys)
    self.mlp_beta = conv(SPADE_HIDDEN, channels, 3, dtype=dtype, keys=keys)

  def _shared(self, seg: LabelInput) -> Array:
    if seg.dense is not None:
      return self.mlp_shared(seg.dense)
    kernel = self.mlp_shared.kernel[...]
    out = onehot_conv3x3(seg.index, kernel, self.mlp_shared.bias[...], self.num_onehot,
                         dtype=self.dtype)
    if seg.edge is not None:
      edge_kernel = kernel[:, :, self.num_onehot:, :].astype(self.dtype)
      out = out + jax.lax.conv_general_dilated(
          seg.edge.astype(self.dtype), edge_kernel, (1, 1), ((1, 1), (1, 1)),
          dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return out

  def _gamma_beta(self, actv: Array) -> tuple[Array, Array]:
    # mlp_gamma and mlp_beta read the same input: one conv with both kernels side by side
    # is one larger product instead of two (the same maths, per output channel).
    kernel = jnp.concatenate([self.mlp_gamma.kernel[...], self.mlp_beta.kernel[...]], -1)
    bias = jnp.concatenate([self.mlp_gamma.bias[...], self.mlp_beta.bias[...]])
    out = conv_ops.conv2d(actv, kernel.astype(self.dtype), padding=1) + bias.astype(self.dtype)
    return jnp.split(out, 2, axis=-1)

  def _unconditional_gamma_beta(self, h: int, w: int) -> tuple[Array, Array]:
    """gamma, beta (1, h, w, C) of the all-zero map: the first conv of zeros is its bias
    everywhere (the lookup agrees), so one row serves every unconditional row."""
    shared = self.mlp_shared.bias[...].astype(self.dtype)
    actv = jnp.broadcast_to(jax.nn.relu(shared), (1, h, w, shared.shape[-1]))
    return self._gamma_beta(actv)

  def __call__(self, x: Array, seg: LabelInput) -> Array:
    h = group_norm(x, None, None).astype(self.dtype)
    n_u = seg.unconditional
    n_c = x.shape[0] - n_u
    parts = []
    if n_c:
      gamma, beta = self._gamma_beta(jax.nn.relu(self._shared(seg)))
      parts.append(h[:n_c] * (1 + gamma) + beta)
    if n_u:
      gamma, beta = self._unconditional_gamma_beta(x.shape[1], x.shape[2])
      parts.append(h[n_c:] * (1 + gamma) + beta)
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=0)

  def torch_params(self, prefix: str) -> TorchParams:
    return (_conv_torch(f"{prefix}.mlp_shared.0", self.mlp_shared)
            + _conv_torch(f"{prefix}.mlp_gamma", self.mlp_gamma)
            + _conv_torch(f"{prefix}.mlp_beta", self.mlp_beta))


class _ResBlockBase(nnx.Module):
  """Shared forward of ResBlock (encoder) and SDMResBlock (middle/decoder)."""

  def _norm_in(self, x, seg):
    raise NotImplementedError

  def _norm_out(self, h, seg):
    raise NotImplementedError

  def __call__(self, x: Array, emb: Array, seg: LabelInput | None = None,
               seg_out: LabelInput | None = None, dropout_key: Array | None = None) -> Array:
    """Args: x (B,h,w,C); emb (B,E); seg: labels at x's resolution (SDMResBlock);
    seg_out: labels at the output resolution (differs from seg for up blocks);
    dropout_key: None = no dropout."""
    h = jax.nn.silu(self._norm_in(x, seg))
    if self.up:
      h, x = upsample_nearest2(h), upsample_nearest2(x)
    elif self.down:
      h, x = avg_pool2(h), avg_pool2(x)
    h = self.in_conv(h)
    emb_out = self.emb_proj(jax.nn.silu(emb.astype(self.dtype)))[:, None, None, :]
    if self.use_scale_shift_norm:
      scale, shift = jnp.split(emb_out, 2, axis=-1)
      h = self._norm_out(h, seg_out) * (1 + scale) + shift
    else:
      h = self._norm_out(h + emb_out, seg_out)
    h = dropout(jax.nn.silu(h), self.dropout_rate, dropout_key)
    h = self.out_conv(h)
    skip = x if self.skip is None else self.skip(x)
    return skip + h


class ResBlock(_ResBlockBase):
  """guided-diffusion ResBlock: affine GN32 norms, no label input (the encoder)."""

  def __init__(self, channels: int, emb_channels: int, out_channels: int, *,
               dropout: float, use_scale_shift_norm: bool, up: bool = False,
               down: bool = False, dtype: Any, keys: KeyGen):
    self.dtype = dtype
    self.up, self.down = up, down
    self.use_scale_shift_norm = use_scale_shift_norm
    self.dropout_rate = dropout
    self.in_norm = GroupNorm(channels)
    self.in_conv = conv(channels, out_channels, 3, dtype=dtype, keys=keys)
    self.emb_proj = linear(emb_channels, 2 * out_channels if use_scale_shift_norm
                           else out_channels, dtype=dtype, keys=keys)
    self.out_norm = GroupNorm(out_channels)
    self.out_conv = conv(out_channels, out_channels, 3, zero=True, dtype=dtype, keys=keys)
    self.skip = (None if out_channels == channels
                 else conv(channels, out_channels, 1, dtype=dtype, keys=keys))

  def _norm_in(self, x, seg):
    return self.in_norm(x).astype(self.dtype)

  def _norm_out(self, h, seg):
    return self.out_norm(h).astype(self.dtype)

  def torch_params(self, prefix: str) -> TorchParams:
    out = (self.in_norm.torch_params(f"{prefix}.in_layers.0")
           + _conv_torch(f"{prefix}.in_layers.2", self.in_conv)
           + _linear_torch(f"{prefix}.emb_layers.1", self.emb_proj)
           + self.out_norm.torch_params(f"{prefix}.out_layers.0")
           + _conv_torch(f"{prefix}.out_layers.3", self.out_conv))
    if self.skip is not None:
      out += _conv_torch(f"{prefix}.skip_connection", self.skip)
    return out


class SDMResBlock(_ResBlockBase):
  """SDM's SDMResBlock: both norms are SPADEGroupNorm driven by the label map."""

  def __init__(self, channels: int, emb_channels: int, out_channels: int, *,
               label_channels: int, num_onehot: int, dropout: float,
               use_scale_shift_norm: bool, up: bool = False, down: bool = False,
               dtype: Any, keys: KeyGen):
    self.dtype = dtype
    self.up, self.down = up, down
    self.use_scale_shift_norm = use_scale_shift_norm
    self.dropout_rate = dropout
    self.in_norm = SPADEGroupNorm(channels, label_channels, num_onehot=num_onehot,
                                  dtype=dtype, keys=keys)
    self.in_conv = conv(channels, out_channels, 3, dtype=dtype, keys=keys)
    self.emb_proj = linear(emb_channels, 2 * out_channels if use_scale_shift_norm
                           else out_channels, dtype=dtype, keys=keys)
    self.out_norm = SPADEGroupNorm(out_channels, label_channels, num_onehot=num_onehot,
                                   dtype=dtype, keys=keys)
    self.out_conv = conv(out_channels, out_channels, 3, zero=True, dtype=dtype, keys=keys)
    self.skip = (None if out_channels == channels
                 else conv(channels, out_channels, 1, dtype=dtype, keys=keys))

  def _norm_in(self, x, seg):
    return self.in_norm(x, seg)

  def _norm_out(self, h, seg):
    return self.out_norm(h, seg)

  def torch_params(self, prefix: str) -> TorchParams:
    out = (self.in_norm.torch_params(f"{prefix}.in_norm")
           + _conv_torch(f"{prefix}.in_layers.1", self.in_conv)
           + _linear_torch(f"{prefix}.emb_layers.1", self.emb_proj)
           + self.out_norm.torch_params(f"{prefix}.out_norm")
           + _conv_torch(f"{prefix}.out_layers.2", self.out_conv))
    if self.skip is not None:
      out += _conv_torch(f"{prefix}.skip_connection", self.skip)
    return out


def softmax_attention(q: Array, k: Array, v: Array,
                      implementation: str | None = None) -> Array:
  """softmax(q k^T / sqrt(d)) v over (B, L, heads, d); logits and softmax in float32.

  `implementation` None or "xla": written out as two batched matrix products in the
  (B, heads, L, d) layout, which XLA's CPU backend runs about twice as fast, forward and
  backward, as `jax.nn.dot_product_attention`'s XLA path (measured at the UNet's 32 px
  attention). Anything else ("cudnn") goes to `jax.nn.dot_product_attention`.
  """
  if implementation not in (None, "xla"):
    return jax.nn.dot_product_attention(q, k, v, implementation=implementation)
  dtype = q.dtype
  if jax.default_backend() == "cpu" and dtype != jnp.float32:
    # XLA's CPU emitter lacks some bf16 x bf16 -> f32 dots; half precision on a CPU is
    # only for checks.
    q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
  q, k, v = (x.transpose(0, 2, 1, 3) for x in (q, k, v))  # (B, heads, L, d)
  logits = jnp.matmul(q, k.swapaxes(-1, -2), preferred_element_type=jnp.float32)
  weights = jax.nn.softmax(logits * (q.shape[-1] ** -0.5), axis=-1).astype(v.dtype)
  out = jnp.matmul(weights, v, preferred_element_type=jnp.float32)
  return out.transpose(0, 2, 1, 3).astype(dtype)


class AttentionBlock(nnx.Module):
  """Self-attention over all pixels: GN32, 1x1 qkv, multi-head attention, zero-init proj.

  `legacy=True` is guided-diffusion's QKVAttentionLegacy layout (qkv channels grouped per
  head as [q, k, v]); `legacy=False` is `use_new_attention_order` ([q | k | v], then
  heads). The reference scales q and k by d^-1/4 each; that is jax's default 1/sqrt(d)
  logit scale.
  """

  def __init__(self, channels: int, num_heads: int, *, legacy: bool = True,
               implementation: str | None = None, dtype: Any, keys: KeyGen):
    if channels % num_heads:
      raise ValueError(f"attention: {channels} channels are not divisible by {num_heads} "
                       "heads; change num_head_channels/num_heads")
    self.dtype = dtype
    self.num_heads = num_heads
    self.legacy = legacy
    self.implementation = implementation
    self.norm = GroupNorm(channels)
    self.qkv = linear(channels, 3 * channels, dtype=dtype, keys=keys)
    self.proj_out = linear(channels, channels, zero=True, dtype=dtype, keys=keys)

  def __call__(self, x: Array) -> Array:
    b, h, w, c = x.shape
    heads, ch = self.num_heads, c // self.num_heads
    qkv = self.qkv(self.norm(x).astype(self.dtype).reshape(b, h * w, c))
    if self.legacy:
      q, k, v = jnp.split(qkv.reshape(b, h * w, heads, 3 * ch), 3, axis=-1)
    else:
      q, k, v = (a.reshape(b, h * w, heads, ch) for a in jnp.split(qkv, 3, axis=-1))
    a = softmax_attention(q, k, v, self.implementation)
    out = self.proj_out(a.reshape(b, h * w, c))
    return x + out.reshape(b, h, w, c).astype(x.dtype)

  def torch_params(self, prefix: str) -> TorchParams:
    return (self.norm.torch_params(f"{prefix}.norm")
            + _linear_torch(f"{prefix}.qkv", self.qkv, CONV1D)
            + _linear_torch(f"{prefix}.proj_out", self.proj_out, CONV1D))


class Downsample(nnx.Module):
  """Stride-2 3x3 conv (conv_resample) or 2x2 average pooling (resblock_updown=False)."""

  def __init__(self, channels: int, use_conv: bool, *, dtype: Any, keys: KeyGen):
    self.op = conv(channels, channels, 3, stride=2, dtype=dtype, keys=keys) if use_conv else None

  def __call__(self, x: Array) -> Array:
    return avg_pool2(x) if self.op is None else self.op(x)

  def torch_params(self, prefix: str) -> TorchParams:
    return [] if self.op is None else _conv_torch(f"{prefix}.op", self.op)


class Upsample(nnx.Module):
  """Nearest x2, then an optional 3x3 conv (resblock_updown=False)."""

  def __init__(self, channels: int, use_conv: bool, *, dtype: Any, keys: KeyGen):
    self.conv = conv(channels, channels, 3, dtype=dtype, keys=keys) if use_conv else None

  def __call__(self, x: Array) -> Array:
    x = upsample_nearest2(x)
    return x if self.conv is None else self.conv(x)

  def torch_params(self, prefix: str) -> TorchParams:
    return [] if self.conv is None else _conv_torch(f"{prefix}.conv", self.conv)
