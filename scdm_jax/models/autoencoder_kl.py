"""The Stable-Diffusion KL autoencoder (diffusers `AutoencoderKL`) in Flax NNX, NHWC.

Encoder: conv_in, DownEncoderBlock2Ds (ResnetBlock2Ds without time embedding, then a
stride-2 conv after an asymmetric (0, 1, 0, 1) pad), a mid block with one single-head
attention, GroupNorm, SiLU, conv_out to 2 * latent channels; quant_conv. Decoder: the
mirror (post_quant_conv, conv_in, mid block, UpDecoderBlock2Ds with one more ResnetBlock
and nearest x2 + conv upsampling, GroupNorm, SiLU, conv_out). Parameter names mirror
diffusers (`torch_params`), loaded by pbe_import.py.

An empty `block_out_channels` is the identity "autoencoder" (pixel-space diffusion, no
parameters: encode returns (x, 0), decode returns z; latent_channels must equal
in_channels), used by the small CPU Paint-by-Example demo.

Usage:
  cfg = VAEConfig.from_diffusers(json.load(open("vae/config.json")))
  vae = AutoencoderKL(cfg, rngs=nnx.Rngs(0))
  mean, std = vae.encode(x)        # x in [-1, 1], (B, H, W, 3)
  x_hat = vae.decode(mean)         # unscaled latents (divide by scaling_factor first)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from scdm_jax.models import sd_unet as sd

Array = jax.Array

# diffusers AutoencoderKL config fields this port implements only at one value.
_VAE_FIXED = {"act_fn": "silu", "latents_mean": None, "latents_std": None,
              "shift_factor": None}
_VAE_READ = {"in_channels", "out_channels", "block_out_channels", "down_block_types",
             "up_block_types", "layers_per_block", "latent_channels", "norm_num_groups",
             "scaling_factor", "mid_block_add_attention", "use_quant_conv",
             "use_post_quant_conv", "sample_size", "force_upcast"}
# The VAE's GroupNorm/ResnetBlock eps is fixed in diffusers' Encoder/Decoder.
_VAE_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  """Architecture of a diffusers AutoencoderKL.

  Attributes:
    in_channels, out_channels: image channels (3).
    block_out_channels: width per level; the downsampling factor is 2**(levels - 1).
      Empty: the identity (pixel space; see the module docstring).
    layers_per_block: ResnetBlocks per encoder level (decoder levels have one more).
    latent_channels: latent channels (4).
    norm_num_groups: GroupNorm groups.
    scaling_factor: multiply posterior samples by this before the UNet (0.18215 for SD v1).
    mid_block_add_attention: the mid blocks have their attention.
    use_quant_conv, use_post_quant_conv: the 1x1 convs around the latent exist.
  """

  in_channels: int = 3
  out_channels: int = 3
  block_out_channels: tuple[int, ...] = (64,)
  layers_per_block: int = 1
  latent_channels: int = 4
  norm_num_groups: int = 32
  scaling_factor: float = 0.18215
  mid_block_add_attention: bool = True
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True

  def __post_init__(self):
    object.__setattr__(self, "block_out_channels", tuple(self.block_out_channels))
    if self.is_identity and self.latent_channels != self.in_channels:
      raise ValueError(f"vae config: the identity autoencoder (block_out_channels=[]) needs "
                       f"latent_channels == in_channels, got {self.latent_channels} and "
                       f"{self.in_channels}")
    for c in self.block_out_channels:
      if c % self.norm_num_groups:
        raise ValueError(f"vae config: block_out_channels entry {c} is not divisible by "
                         f"norm_num_groups={self.norm_num_groups}")

  @property
  def is_identity(self) -> bool:
    return not self.block_out_channels

  @property
  def downsample_factor(self) -> int:
    return 1 if self.is_identity else 2 ** (len(self.block_out_channels) - 1)

  @classmethod
  def from_diffusers(cls, config: Mapping[str, Any]) -> "VAEConfig":
    """Reads a diffusers `vae/config.json` dict (missing fields take diffusers' defaults).

    Raises:
      ValueError: (one line) a field with a value this port does not implement, or an
        unknown field.
    """
    sd.check_fixed("vae", config, _VAE_FIXED, _VAE_READ)
    blocks = tuple(config.get("block_out_channels", (64,)))
    n = len(blocks)
    for key, want in (("down_block_types", "DownEncoderBlock2D"),
                      ("up_block_types", "UpDecoderBlock2D")):
      types = list(config.get(key, [want] * n))
      if len(types) != n or any(t != want for t in types):
        raise ValueError(f"vae config: {key}={types} is not supported (only {n} x {want!r})")
    sf = config.get("scaling_factor", 0.18215)
    return cls(
        in_channels=int(config.get("in_channels", 3)),
        out_channels=int(config.get("out_channels", 3)), block_out_channels=blocks,
        layers_per_block=int(config.get("layers_per_block", 1)),
        latent_channels=int(config.get("latent_channels", 4)),
        norm_num_groups=int(config.get("norm_num_groups", 32)),
        scaling_factor=float(0.18215 if sf is None else sf),
        mid_block_add_attention=bool(config.get("mid_block_add_attention", True)),
        use_quant_conv=bool(config.get("use_quant_conv", True)),
        use_post_quant_conv=bool(config.get("use_post_quant_conv", True)))


class SpatialAttention(nnx.Module):
  """The VAE mid-block attention: GroupNorm, single-head self-attention over pixels, residual."""

  def __init__(self, channels: int, groups: int, *, implementation: str | None, dtype: Any,
               param_dtype: Any, keys: sd.KeyGen):
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    self.group_norm = sd.GroupNorm(channels, groups, _VAE_EPS, **kw)
    self.attn = sd.Attention(channels, 1, channels, qkv_bias=True,
                             implementation=implementation, keys=keys, **kw)

  def __call__(self, x: Array) -> Array:
    b, h, w, c = x.shape
    y = self.attn(self.group_norm(x).reshape(b, h * w, c)).reshape(b, h, w, c)
    return y + x.astype(y.dtype)

  def torch_params(self, prefix: str) -> sd.TorchParams:
    return self.group_norm.torch_params(f"{prefix}.group_norm") + self.attn.torch_params(prefix)


class MidBlock(nnx.Module):
  """diffusers `UNetMidBlock2D` without time embedding: resnet, [attention], resnet."""

  def __init__(self, channels: int, groups: int, add_attention: bool, *,
               implementation: str | None, dtype: Any, param_dtype: Any, keys: sd.KeyGen):
    kw = dict(dtype=dtype, param_dtype=param_dtype, keys=keys)
    self.resnets = nnx.List([
        sd.ResnetBlock2D(channels, channels, None, groups=groups, eps=_VAE_EPS, **kw)
        for _ in range(2)])
    self.attention = (SpatialAttention(channels, groups, implementation=implementation, **kw)
                      if add_attention else None)

  def __call__(self, x: Array, remat: bool = False) -> Array:
    x = sd.run_block(self.resnets[0], x, remat=remat)
    if self.attention is not None:
      x = sd.run_block(self.attention, x, remat=remat)
    return sd.run_block(self.resnets[1], x, remat=remat)

  def torch_params(self, prefix: str) -> sd.TorchParams:
    out = self.resnets[0].torch_params(f"{prefix}.resnets.0")
    if self.attention is not None:
      out += self.attention.torch_params(f"{prefix}.attentions.0")
    return out + self.resnets[1].torch_params(f"{prefix}.resnets.1")


class _Level(nnx.Module):
  """A DownEncoderBlock2D / UpDecoderBlock2D: resnets then an optional resampler."""

  def __init__(self, resnets: list, sampler: nnx.Module | None, sampler_name: str):
    self.resnets = nnx.List(resnets)
    self.sampler = sampler
    self.sampler_name = sampler_name

  def __call__(self, x: Array, remat: bool = False) -> Array:
    for r in self.resnets:
      x = sd.run_block(r, x, remat=remat)
    return x if self.sampler is None else self.sampler(x)

  def torch_params(self, prefix: str) -> sd.TorchParams:
    out = []
    for i, r in enumerate(self.resnets):
      out += r.torch_params(f"{prefix}.resnets.{i}")
    if self.sampler is not None:
      out += self.sampler.torch_params(f"{prefix}.{self.sampler_name}.0")
    return out


class Encoder(nnx.Module):
  """diffusers `Encoder` (double_z): image -> (B, H/f, W/f, 2 * latent) moments."""

  def __init__(self, cfg: VAEConfig, *, implementation: str | None, dtype: Any,
               param_dtype: Any, keys: sd.KeyGen):
    kw = dict(dtype=dtype, param_dtype=param_dtype, keys=keys)
    g, blocks = cfg.norm_num_groups, cfg.block_out_channels
    self.conv_in = sd.Conv2d(cfg.in_channels, blocks[0], 3, **kw)
    levels, out_ch = [], blocks[0]
    for i, c in enumerate(blocks):
      in_ch, out_ch = out_ch, c
      resnets = [sd.ResnetBlock2D(in_ch if j == 0 else out_ch, out_ch, None, groups=g,
                                  eps=_VAE_EPS, **kw) for j in range(cfg.layers_per_block)]
      sampler = sd.Downsample2D(out_ch, padding=0, **kw) if i < len(blocks) - 1 else None
      levels.append(_Level(resnets, sampler, "downsamplers"))
    self.down_blocks = nnx.List(levels)
    self.mid_block = MidBlock(blocks[-1], g, cfg.mid_block_add_attention,
                              implementation=implementation, **kw)
    self.conv_norm_out = sd.GroupNorm(blocks[-1], g, _VAE_EPS, dtype=dtype,
                                      param_dtype=param_dtype)
    self.conv_out = sd.Conv2d(blocks[-1], 2 * cfg.latent_channels, 3, **kw)

  def __call__(self, x: Array, remat: bool = False) -> Array:
    h = self.conv_in(x)
    for level in self.down_blocks:
      h = level(h, remat)
    h = self.mid_block(h, remat)
    return self.conv_out(jax.nn.silu(self.conv_norm_out(h)))

  def torch_params(self, prefix: str) -> sd.TorchParams:
    out = self.conv_in.torch_params(f"{prefix}.conv_in")
    for i, level in enumerate(self.down_blocks):
      out += level.torch_params(f"{prefix}.down_blocks.{i}")
    return (out + self.mid_block.torch_params(f"{prefix}.mid_block")
            + self.conv_norm_out.torch_params(f"{prefix}.conv_norm_out")
            + self.conv_out.torch_params(f"{prefix}.conv_out"))


class Decoder(nnx.Module):
  """diffusers `Decoder`: latents -> (B, H, W, out_channels) image."""

  def __init__(self, cfg: VAEConfig, *, implementation: str | None, dtype: Any,
               param_dtype: Any, keys: sd.KeyGen):
    kw = dict(dtype=dtype, param_dtype=param_dtype, keys=keys)
    g, rev = cfg.norm_num_groups, cfg.block_out_channels[::-1]
    self.conv_in = sd.Conv2d(cfg.latent_channels, rev[0], 3, **kw)
    self.mid_block = MidBlock(rev[0], g, cfg.mid_block_add_attention,
                              implementation=implementation, **kw)
    levels, out_ch = [], rev[0]
    for i, c in enumerate(rev):
      in_ch, out_ch = out_ch, c
      resnets = [sd.ResnetBlock2D(in_ch if j == 0 else out_ch, out_ch, None, groups=g,
                                  eps=_VAE_EPS, **kw)
                 for j in range(cfg.layers_per_block + 1)]
      sampler = sd.Upsample2D(out_ch, **kw) if i < len(rev) - 1 else None
      levels.append(_Level(resnets, sampler, "upsamplers"))
    self.up_blocks = nnx.List(levels)
    self.conv_norm_out = sd.GroupNorm(rev[-1], g, _VAE_EPS, dtype=dtype,
                                      param_dtype=param_dtype)
    self.conv_out = sd.Conv2d(rev[-1], cfg.out_channels, 3, **kw)

  def __call__(self, z: Array, remat: bool = False) -> Array:
    h = self.mid_block(self.conv_in(z), remat)
    for level in self.up_blocks:
      h = level(h, remat)
    return self.conv_out(jax.nn.silu(self.conv_norm_out(h)))

  def torch_params(self, prefix: str) -> sd.TorchParams:
    out = (self.conv_in.torch_params(f"{prefix}.conv_in")
           + self.mid_block.torch_params(f"{prefix}.mid_block"))
    for i, level in enumerate(self.up_blocks):
      out += level.torch_params(f"{prefix}.up_blocks.{i}")
    return (out + self.conv_norm_out.torch_params(f"{prefix}.conv_norm_out")
            + self.conv_out.torch_params(f"{prefix}.conv_out"))


class AutoencoderKL(nnx.Module):
  """diffusers AutoencoderKL, NHWC. See the module docstring."""

  def __init__(self, config: VAEConfig, *, dtype: Any = jnp.float32,
               param_dtype: Any = jnp.float32, remat: bool = False,
               attention_implementation: str | None = None, rngs: nnx.Rngs):
    """Builds the autoencoder.

    Args:
      config: the architecture.
      dtype: compute dtype (float32 or bfloat16).
      param_dtype: parameter dtype.
      remat: rematerialise every ResnetBlock/attention in the backward pass.
      attention_implementation: None/"xla", or "cudnn" (see sd_unet.attention).
      rngs: parameter-init keys (one key is drawn).
    """
    self.config = config
    self.remat = remat
    keys = sd.KeyGen(rngs.params())
    kw = dict(implementation=attention_implementation, dtype=dtype,
              param_dtype=param_dtype, keys=keys)
    conv = dict(dtype=dtype, param_dtype=param_dtype, keys=keys)
    lat = config.latent_channels
    if config.is_identity:  # pixel space: no parameters at all
      self.encoder = self.decoder = self.quant_conv = self.post_quant_conv = None
      return
    self.encoder = Encoder(config, **kw)
    self.decoder = Decoder(config, **kw)
    self.quant_conv = (sd.Conv2d(2 * lat, 2 * lat, 1, **conv)
                       if config.use_quant_conv else None)
    self.post_quant_conv = (sd.Conv2d(lat, lat, 1, **conv)
                            if config.use_post_quant_conv else None)

  def encode(self, x: Array) -> tuple[Array, Array]:
    """The diagonal Gaussian posterior q(z | x).

    Args:
      x: (B, H, W, in_channels) image in [-1, 1]; H, W divisible by the downsampling factor.

    Returns:
      (mean, std), each (B, H/f, W/f, latent_channels) float32, with
      std = exp(0.5 * clip(logvar, -30, 20)) as diffusers' DiagonalGaussianDistribution.
      The UNet's latent is `scaling_factor * (mean + std * noise)` (or of the mean).
    """
    if self.config.is_identity:
      x = x.astype(jnp.float32)
      return x, jnp.zeros_like(x)
    moments = self.encoder(x, self.remat)
    if self.quant_conv is not None:
      moments = self.quant_conv(moments)
    moments = moments.astype(jnp.float32)
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return mean, jnp.exp(0.5 * jnp.clip(logvar, -30.0, 20.0))

  def decode(self, z: Array) -> Array:
    """Decodes unscaled latents (UNet latents divided by scaling_factor).

    Args:
      z: (B, h, w, latent_channels).

    Returns:
      (B, h*f, w*f, out_channels) float32 image, nominally in [-1, 1] (not clipped).
    """
    if self.config.is_identity:
      return z.astype(jnp.float32)
    if self.post_quant_conv is not None:
      z = self.post_quant_conv(z)
    return self.decoder(z, self.remat).astype(jnp.float32)

  def torch_params(self) -> sd.TorchParams:
    """`(diffusers name, variable, layout)` for every parameter."""
    if self.config.is_identity:
      return []
    out = self.encoder.torch_params("encoder") + self.decoder.torch_params("decoder")
    if self.quant_conv is not None:
      out += self.quant_conv.torch_params("quant_conv")
    if self.post_quant_conv is not None:
      out += self.post_quant_conv.torch_params("post_quant_conv")
    return out
