"""The CLIP vision tower (transformers `CLIPVisionModel`) in Flax NNX, NHWC input.

Patch conv (no bias) -> [class token | patches] + position embeddings -> pre_layrnorm ->
pre-LN encoder layers (self-attention, MLP) -> last hidden state; post_layernorm of the
class token is the pooler output. Parameter names are transformers 5's flat
`CLIPVisionModel` names (`embeddings.*`, `pre_layrnorm.*`, `encoder.layers.N.*`,
`post_layernorm.*`); pbe_import.py also accepts transformers 4's `vision_model.` nesting.

Usage:
  cfg = CLIPVisionConfig.from_transformers(json.load(open("image_encoder/config.json")))
  tower = CLIPVisionTower(cfg, rngs=nnx.Rngs(0))
  hidden, pooled = tower(pixel_values)  # pixel_values (B, 224, 224, 3), CLIP-normalised
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

_ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
  """Architecture of a CLIP vision tower (defaults: transformers' CLIPVisionConfig).

  Attributes:
    hidden_size: token width.
    intermediate_size: MLP hidden width.
    num_hidden_layers: encoder layers.
    num_attention_heads: heads per layer.
    image_size: input side (square).
    patch_size: patch side (the patch conv's kernel and stride).
    num_channels: image channels.
    layer_norm_eps: eps of every LayerNorm of the tower.
    hidden_act: MLP activation: quick_gelu, gelu, gelu_new or gelu_pytorch_tanh.
    projection_dim: transformers' projection width; Paint by Example's proj_out width.
  """

  hidden_size: int = 768
  intermediate_size: int = 3072
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  image_size: int = 224
  patch_size: int = 32
  num_channels: int = 3
  layer_norm_eps: float = 1e-5
  hidden_act: str = "quick_gelu"
  projection_dim: int = 512

  def __post_init__(self):
    if self.hidden_act not in _ACTIVATIONS:
      raise ValueError(f"clip config: hidden_act={self.hidden_act!r} is not supported "
                       f"(use one of {sorted(_ACTIVATIONS)})")
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"clip config: hidden_size={self.hidden_size} is not divisible by "
                       f"num_attention_heads={self.num_attention_heads}")
    if self.image_size % self.patch_size:
      raise ValueError(f"clip config: image_size={self.image_size} is not divisible by "
                       f"patch_size={self.patch_size}")

  @property
  def num_positions(self) -> int:
    return (self.image_size // self.patch_size) ** 2 + 1

  @classmethod
  def from_transformers(cls, config: Mapping[str, Any]) -> "CLIPVisionConfig":
    """Reads a transformers CLIP vision config dict (image_encoder/config.json).

    A full CLIPConfig dict is accepted too (its `vision_config` is read). Fields that do
    not change the forward pass (dropout rates, initialiser settings, dtype) are ignored.

    Raises:
      ValueError: (one line) an unsupported model_type or hidden_act.
    """
    if isinstance(config.get("vision_config"), Mapping):
      config = config["vision_config"]
    mt = config.get("model_type", "clip_vision_model")
    if mt != "clip_vision_model":
      raise ValueError(f"clip config: model_type={mt!r} is not supported "
                       f"(only 'clip_vision_model')")
    kwargs = {f.name: config[f.name] for f in dataclasses.fields(cls) if f.name in config}
    return cls(**kwargs)


class CLIPAttention(sd.Attention):
  """CLIP self-attention: q/k/v/out projections with biases (transformers names)."""

  def torch_params(self, prefix: str) -> sd.TorchParams:
    return (self.to_q.torch_params(f"{prefix}.q_proj")
            + self.to_k.torch_params(f"{prefix}.k_proj")
            + self.to_v.torch_params(f"{prefix}.v_proj")
            + self.to_out.torch_params(f"{prefix}.out_proj"))


class CLIPEncoderLayer(nnx.Module):
  """Pre-LN layer: x + attn(LN1(x)), then x + fc2(act(fc1(LN2(x))))."""

  def __init__(self, cfg: CLIPVisionConfig, *, implementation: str | None, dtype: Any,
               param_dtype: Any, keys: sd.KeyGen):
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    d, heads = cfg.hidden_size, cfg.num_attention_heads
    self.layer_norm1 = sd.LayerNorm(d, cfg.layer_norm_eps, **kw)
    self.self_attn = CLIPAttention(d, heads, d // heads, qkv_bias=True,
                                   implementation=implementation, keys=keys, **kw)
    self.layer_norm2 = sd.LayerNorm(d, cfg.layer_norm_eps, **kw)
    self.fc1 = sd.Linear(d, cfg.intermediate_size, keys=keys, **kw)
    self.fc2 = sd.Linear(cfg.intermediate_size, d, keys=keys, **kw)
    self.hidden_act = cfg.hidden_act

  def __call__(self, x: Array) -> Array:
    x = x + self.self_attn(self.layer_norm1(x))
    return x + self.fc2(_ACTIVATIONS[self.hidden_act](self.fc1(self.layer_norm2(x))))

  def torch_params(self, prefix: str) -> sd.TorchParams:
    return (self.layer_norm1.torch_params(f"{prefix}.layer_norm1")
            + self.self_attn.torch_params(f"{prefix}.self_attn")
            + self.layer_norm2.torch_params(f"{prefix}.layer_norm2")
            + self.fc1.torch_params(f"{prefix}.mlp.fc1")
            + self.fc2.torch_params(f"{prefix}.mlp.fc2"))


class CLIPVisionTower(nnx.Module):
  """transformers CLIPVisionModel, NHWC input. See the module docstring."""

  def __init__(self, config: CLIPVisionConfig, *, dtype: Any = jnp.float32,
               param_dtype: Any = jnp.float32, remat: bool = False,
               attention_implementation: str | None = None,
               rngs: nnx.Rngs | None = None, keys: sd.KeyGen | None = None):
    """Builds the tower.

    Args:
      config: the architecture.
      dtype: compute dtype (float32 or bfloat16).
      param_dtype: parameter dtype.
      remat: rematerialise each encoder layer in the backward pass.
      attention_implementation: None/"xla", or "cudnn" (see sd_unet.attention).
      rngs: parameter-init keys (one key is drawn); or pass `keys` from a parent module.
    """
    cfg = self.config = config
    self.remat = remat
    keys = keys if keys is not None else sd.KeyGen(rngs.params())
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    d = cfg.hidden_size
    self.patch_embedding = sd.Conv2d(cfg.num_channels, d, cfg.patch_size,
                                     stride=cfg.patch_size, padding=0, bias=False,
                                     keys=keys, **kw)
    # transformers' init: normal(0, hidden**-0.5) for the class token, 0.02 for positions.
    self.class_embedding = nnx.Param(
        jax.random.normal(keys(), (d,), param_dtype) * d ** -0.5)
    self.position_embedding = nnx.Param(
        jax.random.normal(keys(), (cfg.num_positions, d), param_dtype) * 0.02)
    self.pre_layrnorm = sd.LayerNorm(d, cfg.layer_norm_eps, **kw)
    self.layers = nnx.List([
        CLIPEncoderLayer(cfg, implementation=attention_implementation, keys=keys, **kw)
        for _ in range(cfg.num_hidden_layers)])
    self.post_layernorm = sd.LayerNorm(d, cfg.layer_norm_eps, **kw)
    self.dtype = dtype

  def __call__(self, pixel_values: Array) -> tuple[Array, Array]:
    """Runs the tower.

    Args:
      pixel_values: (B, image_size, image_size, num_channels), CLIP-normalised.

    Returns:
      (last_hidden_state (B, 1 + patches, hidden), pooler_output (B, hidden)), float32.
    """
    b, h, w, _ = pixel_values.shape
    size = self.config.image_size
    if (h, w) != (size, size):
      raise ValueError(f"CLIPVisionTower: input is {h}x{w}, the model needs {size}x{size}")
    patches = self.patch_embedding(pixel_values)
    patches = patches.reshape(b, -1, patches.shape[-1])
    cls = jnp.broadcast_to(self.class_embedding[...].astype(patches.dtype),
                           (b, 1, patches.shape[-1]))
    x = jnp.concatenate([cls, patches], axis=1)
    x = x + self.position_embedding[...].astype(x.dtype)[None]
    x = self.pre_layrnorm(x)
    for layer in self.layers:
      x = sd.run_block(layer, x, remat=self.remat)
    pooled = self.post_layernorm(x[:, 0])
    return x.astype(jnp.float32), pooled.astype(jnp.float32)

  def torch_params(self, prefix: str = "") -> sd.TorchParams:
    """`(transformers-5 name, variable, layout)` for every parameter."""
    p = lambda n: sd.join(prefix, n)
    out = (self.patch_embedding.torch_params(p("embeddings.patch_embedding"))
           + [(p("embeddings.class_embedding"), self.class_embedding, sd.VECTOR),
              (p("embeddings.position_embedding.weight"), self.position_embedding, sd.VECTOR)]
           + self.pre_layrnorm.torch_params(p("pre_layrnorm")))
    for i, layer in enumerate(self.layers):
      out += layer.torch_params(p(f"encoder.layers.{i}"))
    return out + self.post_layernorm.torch_params(p("post_layernorm"))
