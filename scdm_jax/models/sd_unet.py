"""The Stable-Diffusion-v1 conditional UNet (diffusers `UNet2DConditionModel`) in Flax NNX.

NHWC throughout. The module tree mirrors the diffusers module names one to one: every
block has `torch_params(prefix)` listing `(torch_name, variable, layout)`, which
`pbe_import.py` uses to load a diffusers `unet/` state dict. The small building blocks
here (convs, linears, norms, attention, ResnetBlock2D) are shared with the VAE, the CLIP
vision tower and the Paint-by-Example mapper.

Precision: parameters are `param_dtype` (float32). Convolutions and linear layers compute
in `dtype` (float32 or bfloat16); GroupNorm/LayerNorm statistics are float32; attention
goes through `jax.nn.dot_product_attention` (attention_implementation="cudnn" asks for
the fused cuDNN kernel on GPU in bfloat16; see `attention`). The UNet output is float32.

Usage:
  cfg = SDUNetConfig.from_diffusers(json.load(open("unet/config.json")))
  unet = SDUNet(cfg, rngs=nnx.Rngs(0))
  eps = unet(sample, timesteps, context)  # (B, h, w, out_channels) float32
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scdm_jax.models import conv as conv_ops
from scdm_jax.models import initializers
from scdm_jax.models import layers

Array = jax.Array
TorchParams = layers.TorchParams
KeyGen = layers.KeyGen

# Layouts understood by pbe_import.py (the first three as in layers.py).
CONV2D = layers.CONV2D  # torch (O, I, kh, kw) -> HWIO
LINEAR = layers.LINEAR  # torch (O, I) -> (I, O)
VECTOR = layers.VECTOR  # unchanged
CONV1X1 = "conv1x1"  # torch (O, I, 1, 1) -> (I, O): a 1x1 conv stored as a linear


def join(prefix: str, name: str) -> str:
  return f"{prefix}.{name}" if prefix else name


# ----------------------------------------------------------------------------- primitives

class Conv2d(nnx.Module):
  """2-D conv, NHWC/HWIO, symmetric zero padding `padding`, optional bias."""

  def __init__(self, in_ch: int, out_ch: int, kernel: int, *, stride: int = 1,
               padding: int | None = None, bias: bool = True, dtype: Any,
               param_dtype: Any, keys: KeyGen):
    init = initializers.torch_uniform(in_ch * kernel * kernel)
    self.kernel = nnx.Param(init(keys(), (kernel, kernel, in_ch, out_ch), param_dtype))
    self.bias = nnx.Param(init(keys(), (out_ch,), param_dtype)) if bias else None
    self.stride = stride
    self.padding = kernel // 2 if padding is None else padding
    self.dtype = dtype

  def __call__(self, x: Array) -> Array:
    p = self.padding
    y = conv_ops.conv2d(x.astype(self.dtype), self.kernel[...].astype(self.dtype),
                        stride=self.stride, padding=p)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y

  def torch_params(self, prefix: str) -> TorchParams:
    out = [(f"{prefix}.weight", self.kernel, CONV2D)]
    if self.bias is not None:
      out.append((f"{prefix}.bias", self.bias, VECTOR))
    return out


class Linear(nnx.Module):
  """Linear layer on the last axis, optional bias.

  `torch_layout` CONV1X1 loads a PyTorch 1x1 conv into it (pointwise over NHWC channels).
  """

  def __init__(self, in_f: int, out_f: int, *, bias: bool = True, dtype: Any,
               param_dtype: Any, keys: KeyGen, torch_layout: str = LINEAR):
    init = initializers.torch_uniform(in_f)
    self.kernel = nnx.Param(init(keys(), (in_f, out_f), param_dtype))
    self.bias = nnx.Param(init(keys(), (out_f,), param_dtype)) if bias else None
    self.dtype = dtype
    self.torch_layout = torch_layout

  def __call__(self, x: Array) -> Array:
    y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y

  def torch_params(self, prefix: str) -> TorchParams:
    out = [(f"{prefix}.weight", self.kernel, self.torch_layout)]
    if self.bias is not None:
      out.append((f"{prefix}.bias", self.bias, VECTOR))
    return out


class GroupNorm(nnx.Module):
  """Affine GroupNorm over NHWC, statistics in float32; returns `dtype`."""

  def __init__(self, channels: int, groups: int, eps: float, *, dtype: Any,
               param_dtype: Any):
    if channels % groups:
      raise ValueError(f"GroupNorm: {channels} channels are not divisible by "
                       f"{groups} groups")
    self.scale = nnx.Param(jnp.ones((channels,), param_dtype))
    self.bias = nnx.Param(jnp.zeros((channels,), param_dtype))
    self.groups = groups
    self.eps = eps
    self.dtype = dtype

  def __call__(self, x: Array) -> Array:
    y = layers.group_norm(x, self.scale[...], self.bias[...], groups=self.groups,
                          eps=self.eps)
    return y.astype(self.dtype)

  def torch_params(self, prefix: str) -> TorchParams:
    return [(f"{prefix}.weight", self.scale, VECTOR), (f"{prefix}.bias", self.bias, VECTOR)]


class LayerNorm(nnx.Module):
  """Affine LayerNorm over the last axis, statistics in float32; returns `dtype`."""

  def __init__(self, dim: int, eps: float = 1e-5, *, dtype: Any, param_dtype: Any):
    self.scale = nnx.Param(jnp.ones((dim,), param_dtype))
    self.bias = nnx.Param(jnp.zeros((dim,), param_dtype))
    self.eps = eps
    self.dtype = dtype

  def __call__(self, x: Array) -> Array:
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
    y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
    return y.astype(self.dtype)

  def torch_params(self, prefix: str) -> TorchParams:
    return [(f"{prefix}.weight", self.scale, VECTOR), (f"{prefix}.bias", self.bias, VECTOR)]


# cuDNN's fused attention takes half-precision heads of width <= 256 (Hopper; 128 before)
# and a multiple of 8; other calls (the VAE's 512-wide head, the mapper's 1024-wide one)
# use XLA even when "cudnn" is asked for.
_CUDNN_MAX_HEAD_DIM = 256


def attention(q: Array, k: Array, v: Array, heads: int,
              implementation: str | None = None) -> Array:
  """Multi-head softmax attention, scale head_dim**-0.5 (`layers.softmax_attention`).

  Args:
    q: (B, Lq, heads * head_dim); k, v: (B, Lk, heads * head_dim).
    heads: number of heads.
    implementation: None/"xla" (XLA), or "cudnn" (the fused cuDNN kernel on GPU where its
      limits allow: bfloat16/float16 and head_dim <= 256, a multiple of 8; otherwise XLA).

  Returns:
    (B, Lq, heads * head_dim).
  """
  b, lq, inner = q.shape
  hd = inner // heads
  if implementation == "cudnn" and (hd > _CUDNN_MAX_HEAD_DIM or hd % 8
                                    or q.dtype not in (jnp.bfloat16, jnp.float16)):
    implementation = None
  dtype = q.dtype
  split = lambda x: x.reshape(x.shape[0], x.shape[1], heads, hd)  # (B, L, N, H)
  out = layers.softmax_attention(split(q), split(k), split(v), implementation)
  return out.reshape(b, lq, inner).astype(dtype)


class Attention(nnx.Module):
  """diffusers `Attention` (to_q, to_k, to_v, to_out.0): self- or cross-attention."""

  def __init__(self, query_dim: int, heads: int, head_dim: int, *,
               context_dim: int | None = None, qkv_bias: bool = False,
               implementation: str | None = None, dtype: Any, param_dtype: Any,
               keys: KeyGen):
    inner = heads * head_dim
    kv_dim = query_dim if context_dim is None else context_dim
    lin = dict(dtype=dtype, param_dtype=param_dtype, keys=keys)
    self.to_q = Linear(query_dim, inner, bias=qkv_bias, **lin)
    self.to_k = Linear(kv_dim, inner, bias=qkv_bias, **lin)
    self.to_v = Linear(kv_dim, inner, bias=qkv_bias, **lin)
    self.to_out = Linear(inner, query_dim, **lin)
    self.heads = heads
    self.implementation = implementation

  def __call__(self, x: Array, context: Array | None = None) -> Array:
    ctx = x if context is None else context
    out = attention(self.to_q(x), self.to_k(ctx), self.to_v(ctx), self.heads,
                    self.implementation)
    return self.to_out(out)

  def torch_params(self, prefix: str) -> TorchParams:
    return (self.to_q.torch_params(f"{prefix}.to_q") + self.to_k.torch_params(f"{prefix}.to_k")
            + self.to_v.torch_params(f"{prefix}.to_v")
            + self.to_out.torch_params(f"{prefix}.to_out.0"))


class FeedForward(nnx.Module):
  """diffusers `FeedForward` (mult 4): GEGLU (`geglu`) or exact-GELU (`gelu`) then a linear."""

  def __init__(self, dim: int, activation: str, *, dtype: Any, param_dtype: Any,
               keys: KeyGen):
    if activation not in ("geglu", "gelu"):
      raise ValueError(f"FeedForward: activation {activation!r} is not supported "
                       f"(use 'geglu' or 'gelu')")
    inner = 4 * dim
    lin = dict(dtype=dtype, param_dtype=param_dtype, keys=keys)
    self.proj = Linear(dim, 2 * inner if activation == "geglu" else inner, **lin)
    self.out = Linear(inner, dim, **lin)
    self.activation = activation

  def __call__(self, x: Array) -> Array:
    h = self.proj(x)
    if self.activation == "geglu":
      h, gate = jnp.split(h, 2, axis=-1)
      h = h * jax.nn.gelu(gate, approximate=False)
    else:
      h = jax.nn.gelu(h, approximate=False)
    return self.out(h)

  def torch_params(self, prefix: str) -> TorchParams:
    return (self.proj.torch_params(f"{prefix}.net.0.proj")
            + self.out.torch_params(f"{prefix}.net.2"))


class BasicTransformerBlock(nnx.Module):
  """Pre-LN transformer block: self-attn, cross-attn on `context` (if any), feed-forward.

  With `context_dim=None` there is no cross-attention (and no norm2), as in diffusers'
  block built without `cross_attention_dim` (the Paint-by-Example mapper).
  """

  def __init__(self, dim: int, heads: int, head_dim: int, *, context_dim: int | None,
               activation: str = "geglu", attention_bias: bool = False,
               norm_eps: float = 1e-5, implementation: str | None = None, dtype: Any,
               param_dtype: Any, keys: KeyGen):
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    att = dict(qkv_bias=attention_bias, implementation=implementation, keys=keys, **kw)
    self.norm1 = LayerNorm(dim, norm_eps, **kw)
    self.attn1 = Attention(dim, heads, head_dim, **att)
    if context_dim is not None:
      self.norm2 = LayerNorm(dim, norm_eps, **kw)
      self.attn2 = Attention(dim, heads, head_dim, context_dim=context_dim, **att)
    else:
      self.norm2 = self.attn2 = None
    self.norm3 = LayerNorm(dim, norm_eps, **kw)
    self.ff = FeedForward(dim, activation, keys=keys, **kw)

  def __call__(self, x: Array, context: Array | None = None) -> Array:
    x = x + self.attn1(self.norm1(x))
    if self.attn2 is not None:
      x = x + self.attn2(self.norm2(x), context)
    return x + self.ff(self.norm3(x))

  def torch_params(self, prefix: str) -> TorchParams:
    out = self.norm1.torch_params(f"{prefix}.norm1") + self.attn1.torch_params(f"{prefix}.attn1")
    if self.attn2 is not None:
      out += self.norm2.torch_params(f"{prefix}.norm2")
      out += self.attn2.torch_params(f"{prefix}.attn2")
    return out + self.norm3.torch_params(f"{prefix}.norm3") + self.ff.torch_params(f"{prefix}.ff")


class ResnetBlock2D(nnx.Module):
  """diffusers `ResnetBlock2D` ("default" time-scale-shift, output scale 1).

  GN -> SiLU -> conv3x3 (+ time projection) -> GN -> SiLU -> conv3x3, plus a 1x1-conv
  shortcut when the width changes. `temb_channels=None` gives the VAE's block.
  """

  def __init__(self, in_ch: int, out_ch: int, temb_channels: int | None, *, groups: int,
               eps: float, dtype: Any, param_dtype: Any, keys: KeyGen):
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    self.norm1 = GroupNorm(in_ch, groups, eps, **kw)
    self.conv1 = Conv2d(in_ch, out_ch, 3, keys=keys, **kw)
    self.time_emb_proj = (Linear(temb_channels, out_ch, keys=keys, **kw)
                          if temb_channels is not None else None)
    self.norm2 = GroupNorm(out_ch, groups, eps, **kw)
    self.conv2 = Conv2d(out_ch, out_ch, 3, keys=keys, **kw)
    self.conv_shortcut = (Conv2d(in_ch, out_ch, 1, keys=keys, **kw)
                          if in_ch != out_ch else None)

  def __call__(self, x: Array, temb: Array | None = None) -> Array:
    h = self.conv1(jax.nn.silu(self.norm1(x)))
    if self.time_emb_proj is not None:
      h = h + self.time_emb_proj(jax.nn.silu(temb))[:, None, None, :]
    h = self.conv2(jax.nn.silu(self.norm2(h)))
    if self.conv_shortcut is not None:
      x = self.conv_shortcut(x)
    return x.astype(h.dtype) + h

  def torch_params(self, prefix: str) -> TorchParams:
    out = self.norm1.torch_params(f"{prefix}.norm1") + self.conv1.torch_params(f"{prefix}.conv1")
    if self.time_emb_proj is not None:
      out += self.time_emb_proj.torch_params(f"{prefix}.time_emb_proj")
    out += self.norm2.torch_params(f"{prefix}.norm2") + self.conv2.torch_params(f"{prefix}.conv2")
    if self.conv_shortcut is not None:
      out += self.conv_shortcut.torch_params(f"{prefix}.conv_shortcut")
    return out


class Transformer2D(nnx.Module):
  """diffusers `Transformer2DModel` (continuous input): GN, proj_in, blocks, proj_out, residual.

  proj_in/proj_out are linears (`use_linear_projection`) or 1x1 convs in PyTorch; on NHWC
  both are the same pointwise map, so they are stored as linears either way.
  """

  def __init__(self, channels: int, heads: int, context_dim: int, *, num_layers: int,
               groups: int, use_linear_projection: bool, implementation: str | None,
               dtype: Any, param_dtype: Any, keys: KeyGen):
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    head_dim = channels // heads
    inner = heads * head_dim
    layout = LINEAR if use_linear_projection else CONV1X1
    self.norm = GroupNorm(channels, groups, 1e-6, **kw)
    self.proj_in = Linear(channels, inner, keys=keys, torch_layout=layout, **kw)
    self.transformer_blocks = nnx.List([
        BasicTransformerBlock(inner, heads, head_dim, context_dim=context_dim,
                              implementation=implementation, keys=keys, **kw)
        for _ in range(num_layers)])
    self.proj_out = Linear(inner, channels, keys=keys, torch_layout=layout, **kw)

  def __call__(self, x: Array, context: Array) -> Array:
    b, h, w, c = x.shape
    y = self.proj_in(self.norm(x)).reshape(b, h * w, -1)
    ctx = context.astype(y.dtype)
    for block in self.transformer_blocks:
      y = block(y, ctx)
    y = self.proj_out(y).reshape(b, h, w, c)
    return y + x.astype(y.dtype)

  def torch_params(self, prefix: str) -> TorchParams:
    out = self.norm.torch_params(f"{prefix}.norm") + self.proj_in.torch_params(f"{prefix}.proj_in")
    for i, block in enumerate(self.transformer_blocks):
      out += block.torch_params(f"{prefix}.transformer_blocks.{i}")
    return out + self.proj_out.torch_params(f"{prefix}.proj_out")


class Downsample2D(nnx.Module):
  """Stride-2 3x3 conv. padding=0 is the VAE's asymmetric form: pad (0,1,0,1) first."""

  def __init__(self, channels: int, *, padding: int, dtype: Any, param_dtype: Any,
               keys: KeyGen):
    self.conv = Conv2d(channels, channels, 3, stride=2, padding=padding, dtype=dtype,
                       param_dtype=param_dtype, keys=keys)
    self.asymmetric = padding == 0

  def __call__(self, x: Array) -> Array:
    if self.asymmetric:
      x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    return self.conv(x)

  def torch_params(self, prefix: str) -> TorchParams:
    return self.conv.torch_params(f"{prefix}.conv")


def resize_nearest(x: Array, size: tuple[int, int]) -> Array:
  """PyTorch `F.interpolate(mode="nearest", size=...)` on NHWC: source index floor(i*in/out)."""
  _, h, w, _ = x.shape
  oh, ow = size
  if (oh, ow) == (2 * h, 2 * w):
    return layers.upsample_nearest2(x)
  rows = np.minimum(np.floor(np.arange(oh) * np.float32(h / oh)).astype(np.int32), h - 1)
  cols = np.minimum(np.floor(np.arange(ow) * np.float32(w / ow)).astype(np.int32), w - 1)
  return x[:, rows][:, :, cols]


class Upsample2D(nnx.Module):
  """Nearest x2 (or to an explicit size) then a 3x3 conv."""

  def __init__(self, channels: int, *, dtype: Any, param_dtype: Any, keys: KeyGen):
    self.conv = Conv2d(channels, channels, 3, dtype=dtype, param_dtype=param_dtype, keys=keys)

  def __call__(self, x: Array, size: tuple[int, int] | None = None) -> Array:
    size = (2 * x.shape[1], 2 * x.shape[2]) if size is None else size
    return self.conv(resize_nearest(x, size))

  def torch_params(self, prefix: str) -> TorchParams:
    return self.conv.torch_params(f"{prefix}.conv")


def _call(block: nnx.Module, *args):
  """Runs one block (module-level so that nnx.remat can wrap it)."""
  return block(*args)


_call_remat = nnx.remat(_call)


def run_block(block: nnx.Module, *args, remat: bool = False):
  """`block(*args)`, rematerialised in the backward pass when `remat`."""
  return _call_remat(block, *args) if remat else _call(block, *args)


# ------------------------------------------------------------------------------ config

DOWN_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_TYPES = ("UpBlock2D", "CrossAttnUpBlock2D")

# diffusers UNet2DConditionModel config fields this port implements only at one value.
_UNET_FIXED = {
    "act_fn": "silu", "addition_embed_type": None, "addition_time_embed_dim": None,
    "attention_type": "default", "center_input_sample": False, "class_embed_type": None,
    "class_embeddings_concat": False, "conv_in_kernel": 3, "conv_out_kernel": 3,
    "cross_attention_norm": None, "downsample_padding": 1, "dropout": 0.0,
    "dual_cross_attention": False, "encoder_hid_dim": None, "encoder_hid_dim_type": None,
    "mid_block_only_cross_attention": None, "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn", "num_attention_heads": None,
    "num_class_embeds": None, "only_cross_attention": False,
    "projection_class_embeddings_input_dim": None, "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False, "resnet_time_scale_shift": "default",
    "reverse_transformer_layers_per_block": None, "time_cond_proj_dim": None,
    "time_embedding_act_fn": None, "time_embedding_dim": None,
    "time_embedding_type": "positional", "timestep_post_act": None,
}
# Read into SDUNetConfig, or without effect on the maths (upcast_attention: the softmax
# is float32 already; addition_embed_type_num_heads: unused without addition_embed_type).
_UNET_READ = {
    "block_out_channels", "down_block_types", "up_block_types", "layers_per_block",
    "attention_head_dim", "cross_attention_dim", "norm_num_groups", "norm_eps",
    "in_channels", "out_channels", "transformer_layers_per_block",
    "use_linear_projection", "flip_sin_to_cos", "freq_shift", "sample_size",
    "upcast_attention", "addition_embed_type_num_heads",
}


def _per_block(name: str, value: Any, n: int) -> tuple[int, ...]:
  """An int or a list of n ints (diffusers' per-down-block fields) -> tuple of n ints."""
  if isinstance(value, (list, tuple)):
    if len(value) != n or not all(isinstance(v, int) for v in value):
      raise ValueError(f"unet config: {name}={list(value)} must be an int or a list of "
                       f"{n} ints (one per down block)")
    return tuple(value)
  if not isinstance(value, int):
    raise ValueError(f"unet config: {name}={value!r} must be an int or a list of ints")
  return (value,) * n


def check_fixed(kind: str, config: Mapping[str, Any], fixed: Mapping[str, Any],
                read: set[str]) -> None:
  """Refuses config fields with unsupported values and unknown fields (one line)."""
  for key, value in config.items():
    if key.startswith("_"):
      continue
    if key in fixed:
      want = fixed[key]
      ok = (value == want) or (want is None and value in (None, False))
      if not ok:
        raise ValueError(f"{kind} config: {key}={value!r} is not supported (only {want!r})")
    elif key not in read:
      raise ValueError(f"{kind} config: unknown field {key}={value!r} is not supported")


@dataclasses.dataclass(frozen=True)
class SDUNetConfig:
  """Architecture of a diffusers UNet2DConditionModel of the SD-v1 family.

  Attributes:
    in_channels: input channels (9 for Paint by Example: z_t, masked-image latent, mask).
    out_channels: output channels (4).
    block_out_channels: width of each level.
    down_block_types: per level, "CrossAttnDownBlock2D" or "DownBlock2D".
    up_block_types: per level (deepest first), "UpBlock2D" or "CrossAttnUpBlock2D".
    layers_per_block: ResnetBlocks per down block (up blocks have one more).
    num_heads: attention heads per down level (diffusers' `attention_head_dim` when
      `num_attention_heads` is None, which is the only form it accepts for this model);
      up blocks use them reversed, the mid block the last.
    transformer_layers_per_block: transformer blocks per Transformer2D, per down level.
    cross_attention_dim: width of the context tokens.
    norm_num_groups: GroupNorm groups.
    norm_eps: GroupNorm eps of the ResnetBlocks and the output norm.
    use_linear_projection: proj_in/out are linears (else 1x1 convs).
    flip_sin_to_cos: timestep embedding order [cos | sin] (else [sin | cos]).
    freq_shift: diffusers' `downscale_freq_shift` of the timestep embedding.
  """

  in_channels: int = 4
  out_channels: int = 4
  block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
  down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
  up_block_types: tuple[str, ...] = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
  layers_per_block: int = 2
  num_heads: tuple[int, ...] = (8, 8, 8, 8)
  transformer_layers_per_block: tuple[int, ...] = (1, 1, 1, 1)
  cross_attention_dim: int = 1280
  norm_num_groups: int = 32
  norm_eps: float = 1e-5
  use_linear_projection: bool = False
  flip_sin_to_cos: bool = True
  freq_shift: float = 0.0

  def __post_init__(self):
    n = len(self.block_out_channels)
    for name in ("down_block_types", "up_block_types", "num_heads",
                 "transformer_layers_per_block"):
      object.__setattr__(self, name, tuple(getattr(self, name)))
      if len(getattr(self, name)) != n:
        raise ValueError(f"unet config: {name} has {len(getattr(self, name))} entries, "
                         f"block_out_channels has {n}")
    object.__setattr__(self, "block_out_channels", tuple(self.block_out_channels))
    for t in self.down_block_types:
      if t not in DOWN_TYPES:
        raise ValueError(f"unet config: down block type {t!r} is not supported "
                         f"(use {' or '.join(DOWN_TYPES)})")
    for t in self.up_block_types:
      if t not in UP_TYPES:
        raise ValueError(f"unet config: up block type {t!r} is not supported "
                         f"(use {' or '.join(UP_TYPES)})")
    for c in self.block_out_channels:
      if c % self.norm_num_groups:
        raise ValueError(f"unet config: block_out_channels entry {c} is not divisible by "
                         f"norm_num_groups={self.norm_num_groups}")

  @property
  def time_embed_dim(self) -> int:
    return 4 * self.block_out_channels[0]

  @classmethod
  def from_diffusers(cls, config: Mapping[str, Any]) -> "SDUNetConfig":
    """Reads a diffusers `unet/config.json` dict (missing fields take diffusers' defaults).

    Raises:
      ValueError: (one line) a field with a value this port does not implement, or an
        unknown field.
    """
    check_fixed("unet", config, _UNET_FIXED, _UNET_READ)
    g = lambda k, d: config.get(k, d) if config.get(k, d) is not None else d
    blocks = tuple(g("block_out_channels", cls.block_out_channels))
    n = len(blocks)
    layers_pb = _per_block("layers_per_block", g("layers_per_block", 2), n)
    if len(set(layers_pb)) != 1:
      raise ValueError(f"unet config: layers_per_block={list(layers_pb)} is not supported "
                       f"(only one value for all blocks)")
    cross = _per_block("cross_attention_dim", g("cross_attention_dim", 1280), n)
    if len(set(cross)) != 1:
      raise ValueError(f"unet config: cross_attention_dim={list(cross)} is not supported "
                       f"(only one value for all blocks)")
    if config.get("norm_num_groups", 32) is None:
      raise ValueError("unet config: norm_num_groups=None is not supported")
    return cls(
        in_channels=int(g("in_channels", 4)), out_channels=int(g("out_channels", 4)),
        block_out_channels=blocks,
        down_block_types=tuple(g("down_block_types", cls.down_block_types)),
        up_block_types=tuple(g("up_block_types", cls.up_block_types)),
        layers_per_block=layers_pb[0],
        num_heads=_per_block("attention_head_dim", g("attention_head_dim", 8), n),
        transformer_layers_per_block=_per_block(
            "transformer_layers_per_block", g("transformer_layers_per_block", 1), n),
        cross_attention_dim=cross[0], norm_num_groups=int(g("norm_num_groups", 32)),
        norm_eps=float(g("norm_eps", 1e-5)),
        use_linear_projection=bool(g("use_linear_projection", False)),
        flip_sin_to_cos=bool(g("flip_sin_to_cos", True)),
        freq_shift=float(g("freq_shift", 0)))


# ------------------------------------------------------------------------------ blocks

def timestep_embedding(t: Array, dim: int, *, flip_sin_to_cos: bool, freq_shift: float,
                       max_period: float = 10000.0) -> Array:
  """diffusers `get_timestep_embedding`: float32 (B, dim) sinusoids of (B,) timesteps."""
  half = dim // 2
  exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
  args = t.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None]
  sin, cos = jnp.sin(args), jnp.cos(args)
  emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


class _Level(nnx.Module):
  """One down or up block: resnets, optional Transformer2Ds, optional resampler."""

  def __init__(self, resnets: list, attentions: list | None, sampler: nnx.Module | None,
               sampler_name: str):
    self.resnets = nnx.List(resnets)
    self.attentions = nnx.List(attentions) if attentions else None
    self.sampler = sampler
    self.sampler_name = sampler_name  # "downsamplers" or "upsamplers"

  def torch_params(self, prefix: str) -> TorchParams:
    out = []
    for i, r in enumerate(self.resnets):
      out += r.torch_params(f"{prefix}.resnets.{i}")
    for i, a in enumerate(self.attentions or ()):
      out += a.torch_params(f"{prefix}.attentions.{i}")
    if self.sampler is not None:
      out += self.sampler.torch_params(f"{prefix}.{self.sampler_name}.0")
    return out


class SDUNet(nnx.Module):
  """diffusers UNet2DConditionModel (SD-v1 family), NHWC. See the module docstring."""

  def __init__(self, config: SDUNetConfig, *, dtype: Any = jnp.float32,
               param_dtype: Any = jnp.float32, remat: bool = False,
               attention_implementation: str | None = None, rngs: nnx.Rngs):
    """Builds the UNet.

    Args:
      config: the architecture.
      dtype: compute dtype (float32 or bfloat16).
      param_dtype: parameter dtype.
      remat: rematerialise every ResnetBlock and Transformer2D in the backward pass.
      attention_implementation: None/"xla", or "cudnn" (see `attention`).
      rngs: parameter-init keys (one key is drawn; see layers.KeyGen).
    """
    cfg = self.config = config
    self.remat = remat
    self.dtype = dtype
    keys = KeyGen(rngs.params())
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    ch0, temb = cfg.block_out_channels[0], cfg.time_embed_dim
    n = len(cfg.block_out_channels)

    def res(i, o):
      return ResnetBlock2D(i, o, temb, groups=cfg.norm_num_groups, eps=cfg.norm_eps,
                           keys=keys, **kw)

    def xformer(c, heads, nl):
      return Transformer2D(c, heads, cfg.cross_attention_dim, num_layers=nl,
                           groups=cfg.norm_num_groups,
                           use_linear_projection=cfg.use_linear_projection,
                           implementation=attention_implementation, keys=keys, **kw)

    # The time MLP runs in float32 (a small cost; keeps the embedding exact in bf16).
    f32 = dict(dtype=jnp.float32, param_dtype=param_dtype, keys=keys)
    self.time_linear_1 = Linear(ch0, temb, **f32)
    self.time_linear_2 = Linear(temb, temb, **f32)
    self.conv_in = Conv2d(cfg.in_channels, ch0, 3, keys=keys, **kw)

    down, out_ch = [], ch0
    for i, kind in enumerate(cfg.down_block_types):
      in_ch, out_ch = out_ch, cfg.block_out_channels[i]
      resnets = [res(in_ch if j == 0 else out_ch, out_ch) for j in range(cfg.layers_per_block)]
      attns = ([xformer(out_ch, cfg.num_heads[i], cfg.transformer_layers_per_block[i])
                for _ in range(cfg.layers_per_block)]
               if kind == "CrossAttnDownBlock2D" else None)
      sampler = (Downsample2D(out_ch, padding=1, keys=keys, **kw) if i < n - 1 else None)
      down.append(_Level(resnets, attns, sampler, "downsamplers"))
    self.down_blocks = nnx.List(down)

    c = cfg.block_out_channels[-1]
    self.mid_resnets = nnx.List([res(c, c), res(c, c)])
    self.mid_attention = xformer(c, cfg.num_heads[-1], cfg.transformer_layers_per_block[-1])

    rev = cfg.block_out_channels[::-1]
    rev_heads = cfg.num_heads[::-1]
    rev_tl = cfg.transformer_layers_per_block[::-1]
    up, out_ch = [], rev[0]
    nl = cfg.layers_per_block + 1
    for i, kind in enumerate(cfg.up_block_types):
      prev, out_ch = out_ch, rev[i]
      skip_in = rev[min(i + 1, n - 1)]
      resnets = [res((prev if j == 0 else out_ch) + (skip_in if j == nl - 1 else out_ch),
                     out_ch) for j in range(nl)]
      attns = ([xformer(out_ch, rev_heads[i], rev_tl[i]) for _ in range(nl)]
               if kind == "CrossAttnUpBlock2D" else None)
      sampler = Upsample2D(out_ch, keys=keys, **kw) if i < n - 1 else None
      up.append(_Level(resnets, attns, sampler, "upsamplers"))
    self.up_blocks = nnx.List(up)

    self.conv_norm_out = GroupNorm(ch0, cfg.norm_num_groups, cfg.norm_eps, **kw)
    self.conv_out = Conv2d(ch0, cfg.out_channels, 3, keys=keys, **kw)

  def _time_embedding(self, timesteps: Array, batch: int) -> Array:
    t = jnp.broadcast_to(jnp.asarray(timesteps), (batch,))
    emb = timestep_embedding(t, self.config.block_out_channels[0],
                             flip_sin_to_cos=self.config.flip_sin_to_cos,
                             freq_shift=self.config.freq_shift)
    return self.time_linear_2(jax.nn.silu(self.time_linear_1(emb)))

  def __call__(self, sample: Array, timesteps: Array, context: Array) -> Array:
    """Predicts the noise (or whatever the UNet was trained on).

    Args:
      sample: (B, h, w, in_channels).
      timesteps: (B,) or a scalar, int or float.
      context: (B, S, cross_attention_dim) cross-attention tokens.

    Returns:
      (B, h, w, out_channels) float32.
    """
    rm = self.remat
    temb = self._time_embedding(timesteps, sample.shape[0]).astype(self.dtype)
    context = context.astype(self.dtype)
    h = self.conv_in(sample)
    skips = [h]
    for level in self.down_blocks:
      for j, resnet in enumerate(level.resnets):
        h = run_block(resnet, h, temb, remat=rm)
        if level.attentions is not None:
          h = run_block(level.attentions[j], h, context, remat=rm)
        skips.append(h)
      if level.sampler is not None:
        h = level.sampler(h)
        skips.append(h)

    h = run_block(self.mid_resnets[0], h, temb, remat=rm)
    h = run_block(self.mid_attention, h, context, remat=rm)
    h = run_block(self.mid_resnets[1], h, temb, remat=rm)

    for level in self.up_blocks:
      for j, resnet in enumerate(level.resnets):
        h = jnp.concatenate([h, skips.pop().astype(h.dtype)], axis=-1)
        h = run_block(resnet, h, temb, remat=rm)
        if level.attentions is not None:
          h = run_block(level.attentions[j], h, context, remat=rm)
      if level.sampler is not None:
        # Upsample to the next skip's size: equals x2 unless a size was odd on the way down.
        h = level.sampler(h, skips[-1].shape[1:3])
    h = self.conv_out(jax.nn.silu(self.conv_norm_out(h)))
    return h.astype(jnp.float32)

  def torch_params(self) -> TorchParams:
    """`(diffusers name, variable, layout)` for every parameter."""
    out = (self.time_linear_1.torch_params("time_embedding.linear_1")
           + self.time_linear_2.torch_params("time_embedding.linear_2")
           + self.conv_in.torch_params("conv_in"))
    for i, level in enumerate(self.down_blocks):
      out += level.torch_params(f"down_blocks.{i}")
    out += self.mid_resnets[0].torch_params("mid_block.resnets.0")
    out += self.mid_attention.torch_params("mid_block.attentions.0")
    out += self.mid_resnets[1].torch_params("mid_block.resnets.1")
    for i, level in enumerate(self.up_blocks):
      out += level.torch_params(f"up_blocks.{i}")
    return (out + self.conv_norm_out.torch_params("conv_norm_out")
            + self.conv_out.torch_params("conv_out"))
