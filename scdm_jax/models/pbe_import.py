"""Loads diffusers/transformers Paint-by-Example weights into the NNX modules; counts params.

No torch import: a state dict is a flat `{name: np.ndarray}` in PyTorch names and
layouts (what `scdm_jax.io.weights.read_tensors` returns for one weight file). Layouts:
conv (O, I, kh, kw) -> (kh, kw, I, O); linear (O, I) -> (I, O); a 1x1 conv stored as a
linear (O, I, 1, 1) -> (I, O); everything else unchanged. Missing tensors, unexpected
tensors and tensors whose shape does not fit the config are refused with a one-line
ValueError naming them.

Name variants accepted:
  - image_encoder: transformers 5 flat CLIP names (`model.embeddings.*`, ...) and
    transformers 4 nested ones (`model.vision_model.embeddings.*`, ...); the
    `position_ids` buffer some transformers-4 files carry is skipped.
  - vae: the pre-0.14 diffusers attention names (`query`, `key`, `value`, `proj_attn`),
    as diffusers itself converts them on load.

Usage:
  unet = unet_from_state_dict(read_tensors(".../unet/diffusion_pytorch_model.safetensors"),
                              SDUNetConfig.from_diffusers(unet_config))
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scdm_jax.models import sd_unet as sd
from scdm_jax.models.autoencoder_kl import AutoencoderKL, VAEConfig
from scdm_jax.models.clip_vision import CLIPVisionConfig
from scdm_jax.models.pbe_encoder import PaintByExampleImageEncoder
from scdm_jax.models.sd_unet import SDUNet, SDUNetConfig

_SHOW = 5  # names listed in an error message

# ------------------------------------------------------------------- released configs

# The released Paint-by-Example (Fantasy-Studio/Paint-by-Example) architecture, as the
# diffusers/transformers config dicts of its unet/, vae/ and image_encoder/ folders.
RELEASED_PBE_CONFIGS: dict[str, dict[str, Any]] = {
    "unet": {
        "in_channels": 9, "out_channels": 4,
        "block_out_channels": [320, 640, 1280, 1280],
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        "layers_per_block": 2, "attention_head_dim": 8, "cross_attention_dim": 768,
        "norm_num_groups": 32, "norm_eps": 1e-5, "flip_sin_to_cos": True, "freq_shift": 0,
        "use_linear_projection": False, "sample_size": 64,
    },
    "vae": {
        "in_channels": 3, "out_channels": 3, "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "layers_per_block": 2, "latent_channels": 4, "norm_num_groups": 32,
        "scaling_factor": 0.18215, "sample_size": 512,
    },
    "image_encoder": {
        "model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096,
        "num_hidden_layers": 24, "num_attention_heads": 16, "image_size": 224,
        "patch_size": 14, "num_channels": 3, "layer_norm_eps": 1e-5,
        "hidden_act": "quick_gelu", "projection_dim": 768,
    },
}


# ----------------------------------------------------------------------------- loading

def _torch_shape(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
  """The PyTorch shape of a parameter of JAX shape `shape`."""
  if layout == sd.CONV2D:
    return (shape[3], shape[2], shape[0], shape[1])
  if layout == sd.LINEAR:
    return (shape[1], shape[0])
  if layout == sd.CONV1X1:
    return (shape[1], shape[0], 1, 1)
  return tuple(shape)


def _to_jax_layout(value: np.ndarray, layout: str) -> np.ndarray:
  if layout == sd.CONV2D:
    return value.transpose(2, 3, 1, 0)
  if layout == sd.LINEAR:
    return value.T
  if layout == sd.CONV1X1:
    return value[:, :, 0, 0].T
  return value


def _names(names: list[str]) -> str:
  more = f" (+{len(names) - _SHOW} more)" if len(names) > _SHOW else ""
  return ", ".join(names[:_SHOW]) + more


def load_torch_params(state_dict: Mapping[str, Any], module: nnx.Module, *,
                      source: str) -> nnx.Module:
  """Writes a PyTorch-named state dict into `module` (in place) and returns it.

  `module` may be abstract (from `nnx.eval_shape`): every parameter is replaced by the
  converted tensor, so nothing is initialised at random.

  Args:
    state_dict: `{torch name: array}` (already renamed to the module's names).
    module: a module with `torch_params()`.
    source: how to name the weights in error messages.

  Raises:
    ValueError: missing/unexpected tensors, or a shape that does not fit the config.
  """
  entries = module.torch_params()
  expected = [name for name, _, _ in entries]
  missing = [n for n in expected if n not in state_dict]
  unexpected = sorted(set(state_dict) - set(expected))
  if missing or unexpected:
    parts = []
    if missing:
      parts.append(f"{len(missing)} missing tensor(s): {_names(missing)}")
    if unexpected:
      parts.append(f"{len(unexpected)} unexpected tensor(s): {_names(unexpected)}")
    raise ValueError(f"{source}: the weights do not match the config: {'; '.join(parts)}")
  for name, var, layout in entries:
    value = np.asarray(state_dict[name])
    want = _torch_shape(tuple(var.shape), layout)
    if tuple(value.shape) != want:
      raise ValueError(f"{source}: tensor {name} has shape {tuple(value.shape)}, the config "
                       f"needs {want}")
    value = np.ascontiguousarray(_to_jax_layout(value, layout))
    var.set_value(jnp.asarray(value, dtype=var.dtype))
  return module


def _vae_names(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Renames pre-0.14 diffusers VAE attention tensors (query/key/value/proj_attn)."""
  old = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
  pat = re.compile(r"^(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$")
  out = {}
  for k, v in state_dict.items():
    m = pat.match(k)
    out[f"{m.group(1)}.{old[m.group(2)]}.{m.group(3)}" if m else k] = v
  return out


def _image_encoder_names(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """transformers-4 `model.vision_model.*` -> transformers-5 `model.*`; drops position_ids."""
  out = {}
  for k, v in state_dict.items():
    if k.startswith("model.vision_model."):
      k = "model." + k[len("model.vision_model."):]
    if k == "model.embeddings.position_ids":
      continue  # a non-learned buffer (arange)
    out[k] = v
  return out


def load_unet(state_dict: Mapping[str, Any], module: SDUNet, *,
              source: str = "unet") -> SDUNet:
  """Loads a diffusers unet/ state dict into `module` (in place); returns it."""
  return load_torch_params(state_dict, module, source=source)


def load_vae(state_dict: Mapping[str, Any], module: AutoencoderKL, *,
             source: str = "vae") -> AutoencoderKL:
  """Loads a diffusers vae/ state dict into `module` (in place); returns it."""
  return load_torch_params(_vae_names(state_dict), module, source=source)


def load_image_encoder(state_dict: Mapping[str, Any], module: PaintByExampleImageEncoder, *,
                       source: str = "image_encoder") -> PaintByExampleImageEncoder:
  """Loads a Paint-by-Example image_encoder/ state dict into `module`; returns it."""
  return load_torch_params(_image_encoder_names(state_dict), module, source=source)


def unet_from_state_dict(state_dict: Mapping[str, Any], config: SDUNetConfig, *,
                         source: str = "unet", **kwargs) -> SDUNet:
  """A concrete SDUNet holding the weights (built abstractly: no random init).

  `kwargs` go to SDUNet (dtype, param_dtype, remat, attention_implementation).
  """
  module = nnx.eval_shape(lambda: SDUNet(config, rngs=nnx.Rngs(0), **kwargs))
  return load_unet(state_dict, module, source=source)


def vae_from_state_dict(state_dict: Mapping[str, Any], config: VAEConfig, *,
                        source: str = "vae", **kwargs) -> AutoencoderKL:
  """A concrete AutoencoderKL holding the weights (no random init)."""
  module = nnx.eval_shape(lambda: AutoencoderKL(config, rngs=nnx.Rngs(0), **kwargs))
  return load_vae(state_dict, module, source=source)


def image_encoder_from_state_dict(state_dict: Mapping[str, Any], config: CLIPVisionConfig,
                                  *, source: str = "image_encoder",
                                  **kwargs) -> PaintByExampleImageEncoder:
  """A concrete PaintByExampleImageEncoder holding the weights (no random init)."""
  module = nnx.eval_shape(
      lambda: PaintByExampleImageEncoder(config, rngs=nnx.Rngs(0), **kwargs))
  return load_image_encoder(state_dict, module, source=source)


# ---------------------------------------------------------------------------- counting

def _count(module: nnx.Module) -> int:
  state = nnx.state(module, nnx.Param)
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(state)))


def param_counts(unet_cfg: SDUNetConfig, vae_cfg: VAEConfig,
                 clip_cfg: CLIPVisionConfig) -> dict[str, int]:
  """Parameter counts of the three models, from abstract modules (nothing allocated).

  Returns:
    {"unet", "vae", "image_encoder", "clip_tower", "mapper_and_head", "total"}: the
    image encoder is the CLIP tower plus mapper, final LayerNorm, proj_out and
    uncond_vector.
  """
  unet = nnx.eval_shape(lambda: SDUNet(unet_cfg, rngs=nnx.Rngs(0)))
  vae = nnx.eval_shape(lambda: AutoencoderKL(vae_cfg, rngs=nnx.Rngs(0)))
  enc = nnx.eval_shape(lambda: PaintByExampleImageEncoder(clip_cfg, rngs=nnx.Rngs(0)))
  counts = {"unet": _count(unet), "vae": _count(vae), "image_encoder": _count(enc),
            "clip_tower": _count(enc.model)}
  counts["mapper_and_head"] = counts["image_encoder"] - counts["clip_tower"]
  counts["total"] = counts["unet"] + counts["vae"] + counts["image_encoder"]
  return counts


def released_configs() -> tuple[SDUNetConfig, VAEConfig, CLIPVisionConfig]:
  """The released Paint-by-Example configs as this package's config objects."""
  c = RELEASED_PBE_CONFIGS
  return (SDUNetConfig.from_diffusers(c["unet"]), VAEConfig.from_diffusers(c["vae"]),
          CLIPVisionConfig.from_transformers(c["image_encoder"]))


def released_param_report() -> dict[str, Any]:
  """A JSON-able report: the released configs and their parameter counts."""
  return {"configs": RELEASED_PBE_CONFIGS, "param_counts": param_counts(*released_configs())}
