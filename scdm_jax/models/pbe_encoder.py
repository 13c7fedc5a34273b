"""Paint by Example's exemplar encoder (diffusers `PaintByExampleImageEncoder`) in Flax NNX.

CLIP vision tower -> pooler_output (the class token after post_layernorm) as a length-1
sequence -> mapper of (num_hidden_layers + 1) // 5 single-head transformer blocks
(self-attention with biased q/k/v, exact-GELU MLP; no cross-attention) ->
final_layer_norm -> proj_out (hidden -> projection_dim). The learned `uncond_vector`
(1, 1, projection_dim) is the classifier-free-guidance null context.

`context_tokens="all"` feeds every token of the tower (class token and patches, after
post_layernorm) through the mapper instead of the pooled one: the paper's naive baseline
without the one-token bottleneck, kept for the ablation of the small CPU demo. The
choice is stored in an export's image_encoder config as `pbe_context_tokens`.

Usage:
  enc = PaintByExampleImageEncoder(CLIPVisionConfig.from_transformers(cfg), rngs=...)
  c = enc(pixel_values)             # (B, 1, projection_dim)
  v = enc.uncond_embeddings(B)      # (B, 1, projection_dim)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from scdm_jax.models import sd_unet as sd
from scdm_jax.models.clip_vision import CLIPVisionConfig, CLIPVisionTower

Array = jax.Array


CONTEXT_TOKENS = ("pooled", "all")


def context_tokens_of(config_dict) -> str:
  """The `pbe_context_tokens` entry of an image_encoder config dict ("pooled" if absent)."""
  value = config_dict.get("pbe_context_tokens", "pooled")
  if value not in CONTEXT_TOKENS:
    raise ValueError(f"image_encoder config: pbe_context_tokens={value!r}: use one of "
                     f"{CONTEXT_TOKENS}")
  return value


def mapper_layers(config: CLIPVisionConfig) -> int:
  """Number of mapper blocks, as diffusers' PaintByExampleMapper."""
  return (config.num_hidden_layers + 1) // 5


class PaintByExampleImageEncoder(nnx.Module):
  """The exemplar encoder; parameter names as diffusers' image_encoder/ (`torch_params`)."""

  def __init__(self, config: CLIPVisionConfig, *, dtype: Any = jnp.float32,
               param_dtype: Any = jnp.float32, remat: bool = False,
               attention_implementation: str | None = None, context_tokens: str = "pooled",
               rngs: nnx.Rngs):
    """Builds the encoder.

    Args:
      config: the CLIP vision config (image_encoder/config.json); its projection_dim is
        the output width.
      dtype: compute dtype (float32 or bfloat16).
      param_dtype: parameter dtype.
      remat: rematerialise each CLIP layer in the backward pass.
      attention_implementation: None/"xla", or "cudnn" (see sd_unet.attention).
      context_tokens: "pooled" (the released model: one token) or "all" (see above).
      rngs: parameter-init keys (one key is drawn).
    """
    if context_tokens not in CONTEXT_TOKENS:
      raise ValueError(f"context_tokens={context_tokens!r}: use one of {CONTEXT_TOKENS}")
    self.config = config
    self.context_tokens = context_tokens
    keys = sd.KeyGen(rngs.params())
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    d, p = config.hidden_size, config.projection_dim
    self.model = CLIPVisionTower(config, remat=remat,
                                 attention_implementation=attention_implementation,
                                 keys=keys, **kw)
    self.mapper = nnx.List([
        sd.BasicTransformerBlock(d, 1, d, context_dim=None, activation="gelu",
                                 attention_bias=True, implementation=attention_implementation,
                                 keys=keys, **kw)
        for _ in range(mapper_layers(config))])
    self.final_layer_norm = sd.LayerNorm(d, 1e-5, **kw)
    self.proj_out = sd.Linear(d, p, keys=keys, **kw)
    self.uncond_vector = nnx.Param(jax.random.normal(keys(), (1, 1, p), param_dtype))

  def __call__(self, pixel_values: Array) -> Array:
    """Encodes exemplars.

    Args:
      pixel_values: (B, image_size, image_size, 3), CLIP-normalised (NHWC).

    Returns:
      (B, T, projection_dim) float32 context tokens for the UNet's cross-attention (T = 1,
      or 1 + patches with context_tokens="all").
    """
    hidden, pooled = self.model(pixel_values)
    if self.context_tokens == "all":
      x = self.model.post_layernorm(hidden).astype(self.final_layer_norm.dtype)
    else:
      x = pooled[:, None, :].astype(self.final_layer_norm.dtype)
    for block in self.mapper:
      x = block(x)
    return self.proj_out(self.final_layer_norm(x)).astype(jnp.float32)

  def uncond_embeddings(self, batch_size: int = 1) -> Array:
    """The learned null context broadcast to (batch_size, 1, projection_dim), float32."""
    v = self.uncond_vector[...].astype(jnp.float32)
    return jnp.broadcast_to(v, (batch_size,) + v.shape[1:])

  def torch_params(self) -> sd.TorchParams:
    """`(diffusers/transformers-5 name, variable, layout)` for every parameter."""
    out = self.model.torch_params("model")
    for i, block in enumerate(self.mapper):
      out += block.torch_params(f"mapper.blocks.{i}")
    return (out + self.final_layer_norm.torch_params("final_layer_norm")
            + self.proj_out.torch_params("proj_out")
            + [("uncond_vector", self.uncond_vector, sd.VECTOR)])
