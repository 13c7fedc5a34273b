"""Renames an original Paint by Example `model.ckpt` (LDM names) to diffusers names.

The official release's checkpoint is one LatentDiffusion state dict:

* `model.diffusion_model.*`: the LDM UNet (`time_embed`, `input_blocks`, `middle_block`,
  `output_blocks`, `out`) -> diffusers `UNet2DConditionModel` names;
* `first_stage_model.*`: the LDM KL autoencoder (`encoder.down.N.block.M`, `mid.attn_1`
  with 1x1-conv q/k/v/proj_out, `decoder.up.N` counted from the deepest level, ...) ->
  diffusers `AutoencoderKL` names (attention weights squeezed to linears);
* `cond_stage_model.transformer.*` (a transformers `CLIPVisionModel`: nested
  `vision_model.*` as transformers 4 saved it), `cond_stage_model.mapper.resblocks.N.*`
  (CLIP-style blocks: fused `attn.c_qkv`, `attn.c_proj`, `ln_1`, `ln_2`, `mlp.c_fc`,
  `mlp.c_proj`), `cond_stage_model.final_ln.*`, top-level `proj_out.*` and
  `learnable_vector` -> the diffusers `PaintByExampleImageEncoder` names (transformers-5
  flat CLIP names, the fused qkv split in three).

This reproduces diffusers' converters (`convert_ldm_unet_checkpoint`,
`convert_ldm_vae_checkpoint`, `convert_paint_by_example_checkpoint`), checked against them
in tests/test_pbe_ldm_keys.py. Pure renaming on numpy arrays: no torch. Every other key
(the diffusion schedule buffers `betas`, `alphas_cumprod`, ..., `model_ema.*`) is
returned in `unused`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
MAPPER_PREFIX = "cond_stage_model.mapper.resblocks."
FINAL_LN_PREFIX = "cond_stage_model.final_ln."

_UNET_FIXED = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
               "input_blocks.0.0": "conv_in", "out.0": "conv_norm_out", "out.2": "conv_out"}
_RESNET = (("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("out_layers.0", "norm2"),
           ("out_layers.3", "conv2"), ("emb_layers.1", "time_emb_proj"),
           ("skip_connection", "conv_shortcut"))
_VAE_ATTN = (("norm", "group_norm"), ("q", "to_q"), ("k", "to_k"), ("v", "to_v"),
             ("proj_out", "to_out.0"))
_MAPPER = (("attn.c_proj", "attn1.to_out.0"), ("ln_1", "norm1"), ("ln_2", "norm3"),
           ("mlp.c_fc", "ff.net.0.proj"), ("mlp.c_proj", "ff.net.2"))


@dataclasses.dataclass
class LDMSplit:
  """A LatentDiffusion checkpoint split into diffusers-named component state dicts."""

  unet: dict[str, np.ndarray]
  vae: dict[str, np.ndarray]
  image_encoder: dict[str, np.ndarray]
  unused: list[str]


def _swap(name: str, table, reverse: bool = False) -> str:
  """Renames the first dotted component group of `name` found in `table`."""
  parts = name.split(".")
  for old, new in table:
    src, dst = (new, old) if reverse else (old, new)
    n = src.count(".") + 1
    for i in range(len(parts) - n + 1):
      if ".".join(parts[i:i + n]) == src:
        return ".".join(parts[:i] + dst.split(".") + parts[i + n:])
  return name


# ---------------------------------------------------------------------------------- UNet

def unet_name(ldm: str, layers_per_block: int) -> str | None:
  """An LDM UNet parameter name (without `model.diffusion_model.`) -> diffusers, or None."""
  per = layers_per_block + 1
  for old, new in _UNET_FIXED.items():
    if ldm.startswith(old + "."):
      return new + ldm[len(old):]
  m = re.match(r"input_blocks\.(\d+)\.(\d+)\.(.+)$", ldm)
  if m:
    k, sub, rest = int(m.group(1)), int(m.group(2)), m.group(3)
    level, j = (k - 1) // per, (k - 1) % per
    if sub == 0 and rest.startswith("op."):
      return f"down_blocks.{level}.downsamplers.0.conv.{rest[3:]}"
    if sub == 0:
      return f"down_blocks.{level}.resnets.{j}.{_swap(rest, _RESNET)}"
    if sub == 1:
      return f"down_blocks.{level}.attentions.{j}.{rest}"
    return None
  m = re.match(r"middle_block\.(\d+)\.(.+)$", ldm)
  if m:
    k, rest = int(m.group(1)), m.group(2)
    if k in (0, 2):
      return f"mid_block.resnets.{k // 2}.{_swap(rest, _RESNET)}"
    return f"mid_block.attentions.0.{rest}" if k == 1 else None
  m = re.match(r"output_blocks\.(\d+)\.(\d+)\.(.+)$", ldm)
  if m:
    k, sub, rest = int(m.group(1)), int(m.group(2)), m.group(3)
    level, j = k // per, k % per
    if sub == 0:
      return f"up_blocks.{level}.resnets.{j}.{_swap(rest, _RESNET)}"
    if sub in (1, 2) and rest.startswith("conv."):
      return f"up_blocks.{level}.upsamplers.0.conv.{rest[5:]}"
    if sub == 1:
      return f"up_blocks.{level}.attentions.{j}.{rest}"
  return None


def unet_ldm_name(name: str, config: Mapping[str, Any]) -> str:
  """The inverse of `unet_name` (diffusers -> LDM, without the prefix)."""
  per = int(config.get("layers_per_block", 2)) + 1
  up_types = list(config["up_block_types"])
  for old, new in _UNET_FIXED.items():
    if name.startswith(new + "."):
      return old + name[len(new):]
  m = re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)"
               r"\.(\d+)\.(.+)$", name)
  if m:
    side, level, kind, j, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), \
        m.group(5)
    if side == "down":
      if kind == "downsamplers":
        return f"input_blocks.{1 + level * per + per - 1}.0.op.{rest[len('conv.'):]}"
      sub = 0 if kind == "resnets" else 1
      rest = _swap(rest, _RESNET, reverse=True) if kind == "resnets" else rest
      return f"input_blocks.{1 + level * per + j}.{sub}.{rest}"
    if kind == "upsamplers":
      sub = 2 if up_types[level].startswith("CrossAttn") else 1
      return f"output_blocks.{level * per + per - 1}.{sub}.{rest}"
    sub = 0 if kind == "resnets" else 1
    rest = _swap(rest, _RESNET, reverse=True) if kind == "resnets" else rest
    return f"output_blocks.{level * per + j}.{sub}.{rest}"
  m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)$", name)
  if m:
    if m.group(1) == "resnets":
      return f"middle_block.{2 * int(m.group(2))}.{_swap(m.group(3), _RESNET, reverse=True)}"
    return f"middle_block.1.{m.group(3)}"
  raise ValueError(f"ldm keys: no LDM name for UNet tensor {name}")


# ----------------------------------------------------------------------------------- VAE

def _vae_resnet(rest: str, reverse: bool = False) -> str:
  return _swap(rest, (("nin_shortcut", "conv_shortcut"),), reverse)


def vae_name(ldm: str, num_levels: int) -> str | None:
  """An LDM autoencoder name (without `first_stage_model.`) -> diffusers, or None."""
  for part in ("encoder", "decoder"):
    for a, b in (("conv_in", "conv_in"), ("conv_out", "conv_out"), ("norm_out", "conv_norm_out")):
      if ldm.startswith(f"{part}.{a}."):
        return f"{part}.{b}." + ldm[len(f"{part}.{a}."):]
  for conv in ("quant_conv", "post_quant_conv"):
    if ldm.startswith(conv + "."):
      return ldm
  m = re.match(r"(encoder|decoder)\.mid\.block_(\d)\.(.+)$", ldm)
  if m:
    return f"{m.group(1)}.mid_block.resnets.{int(m.group(2)) - 1}.{_vae_resnet(m.group(3))}"
  m = re.match(r"(encoder|decoder)\.mid\.attn_1\.(\w+)\.(weight|bias)$", ldm)
  if m:
    new = dict(_VAE_ATTN).get(m.group(2))
    return None if new is None else f"{m.group(1)}.mid_block.attentions.0.{new}.{m.group(3)}"
  m = re.match(r"encoder\.down\.(\d+)\.(block\.(\d+)|downsample)\.(.+)$", ldm)
  if m:
    i, rest = int(m.group(1)), m.group(4)
    if m.group(2) == "downsample":
      return f"encoder.down_blocks.{i}.downsamplers.0.{rest}"
    return f"encoder.down_blocks.{i}.resnets.{m.group(3)}.{_vae_resnet(rest)}"
  m = re.match(r"decoder\.up\.(\d+)\.(block\.(\d+)|upsample)\.(.+)$", ldm)
  if m:
    i, rest = num_levels - 1 - int(m.group(1)), m.group(4)
    if m.group(2) == "upsample":
      return f"decoder.up_blocks.{i}.upsamplers.0.{rest}"
    return f"decoder.up_blocks.{i}.resnets.{m.group(3)}.{_vae_resnet(rest)}"
  return None


def vae_ldm_name(name: str, num_levels: int) -> str:
  """The inverse of `vae_name`."""
  for part in ("encoder", "decoder"):
    for a, b in (("conv_in", "conv_in"), ("conv_out", "conv_out"), ("norm_out", "conv_norm_out")):
      if name.startswith(f"{part}.{b}."):
        return f"{part}.{a}." + name[len(f"{part}.{b}."):]
  if name.startswith(("quant_conv.", "post_quant_conv.")):
    return name
  m = re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.+)$", name)
  if m:
    return f"{m.group(1)}.mid.block_{int(m.group(2)) + 1}.{_vae_resnet(m.group(3), True)}"
  m = re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)$", name)
  if m:
    old = {new: old for old, new in _VAE_ATTN}[m.group(2)]
    return f"{m.group(1)}.mid.attn_1.{old}.{m.group(3)}"
  m = re.match(r"encoder\.down_blocks\.(\d+)\.(resnets\.(\d+)|downsamplers\.0)\.(.+)$", name)
  if m:
    if m.group(2).startswith("downsamplers"):
      return f"encoder.down.{m.group(1)}.downsample.{m.group(4)}"
    return f"encoder.down.{m.group(1)}.block.{m.group(3)}.{_vae_resnet(m.group(4), True)}"
  m = re.match(r"decoder\.up_blocks\.(\d+)\.(resnets\.(\d+)|upsamplers\.0)\.(.+)$", name)
  if m:
    b = num_levels - 1 - int(m.group(1))
    if m.group(2).startswith("upsamplers"):
      return f"decoder.up.{b}.upsample.{m.group(4)}"
    return f"decoder.up.{b}.block.{m.group(3)}.{_vae_resnet(m.group(4), True)}"
  raise ValueError(f"ldm keys: no LDM name for VAE tensor {name}")


def _is_vae_attn_weight(diffusers_name: str) -> bool:
  return bool(re.search(r"mid_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight$",
                        diffusers_name))


# --------------------------------------------------------------------------------- convert

def convert_ldm_checkpoint(state: Mapping[str, Any], *, unet_config: Mapping[str, Any],
                           vae_config: Mapping[str, Any]) -> LDMSplit:
  """Splits a Paint by Example LatentDiffusion state dict into diffusers state dicts.

  Args:
    state: `{LDM name: array}` (e.g. `read_tensors("model.ckpt")`).
    unet_config: the diffusers unet config dict (its `layers_per_block`).
    vae_config: the diffusers vae config dict (its number of levels).

  Returns:
    LDMSplit with the unet/, vae/ and image_encoder/ state dicts (diffusers names,
    PyTorch layouts) and the names that belong to none of them.
  """
  per = int(unet_config.get("layers_per_block", 2))
  levels = len(vae_config.get("block_out_channels", (64,)))
  unet, vae, enc, unused = {}, {}, {}, []
  for key, value in state.items():
    value = np.asarray(value)
    new = None
    if key.startswith(UNET_PREFIX):
      new = unet_name(key[len(UNET_PREFIX):], per)
      if new is not None:
        unet[new] = value
    elif key.startswith(VAE_PREFIX):
      new = vae_name(key[len(VAE_PREFIX):], levels)
      if new is not None:
        vae[new] = value[:, :, 0, 0] if _is_vae_attn_weight(new) and value.ndim == 4 else value
    elif key.startswith(CLIP_PREFIX):
      rest = key[len(CLIP_PREFIX):]
      new = "model." + (rest[len("vision_model."):] if rest.startswith("vision_model.") else rest)
      enc[new] = value
    elif key.startswith(MAPPER_PREFIX):
      m = re.match(r"(\d+)\.(.+)\.(weight|bias)$", key[len(MAPPER_PREFIX):])
      if m:
        i, mod, kind = m.groups()
        if mod == "attn.c_qkv":
          # Fused (3D, ...) -> q, k, v in that order.
          for part, chunk in zip(("to_q", "to_k", "to_v"), np.split(value, 3, axis=0)):
            enc[f"mapper.blocks.{i}.attn1.{part}.{kind}"] = chunk
          new = "qkv"
        else:
          mapped = dict(_MAPPER).get(mod)
          if mapped is not None:
            new = f"mapper.blocks.{i}.{mapped}.{kind}"
            enc[new] = value
    elif key.startswith(FINAL_LN_PREFIX):
      new = "final_layer_norm." + key[len(FINAL_LN_PREFIX):]
      enc[new] = value
    elif key.startswith("proj_out."):
      new = key
      enc[new] = value
    elif key == "learnable_vector":
      new = "uncond_vector"
      enc[new] = value
    if new is None:
      unused.append(key)
  return LDMSplit(unet=unet, vae=vae, image_encoder=enc, unused=sorted(unused))


def to_ldm_checkpoint(unet: Mapping[str, Any], vae: Mapping[str, Any],
                      image_encoder: Mapping[str, Any], *, unet_config: Mapping[str, Any],
                      vae_config: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The inverse of `convert_ldm_checkpoint`: diffusers state dicts -> one LDM state dict
  (CLIP tower under transformers-4 `vision_model.*` names, as the official checkpoint)."""
  levels = len(vae_config.get("block_out_channels", (64,)))
  out: dict[str, np.ndarray] = {}
  for k, v in unet.items():
    out[UNET_PREFIX + unet_ldm_name(k, unet_config)] = np.asarray(v)
  for k, v in vae.items():
    v = np.asarray(v)
    out[VAE_PREFIX + vae_ldm_name(k, levels)] = v[:, :, None, None] \
        if _is_vae_attn_weight(k) and v.ndim == 2 else v
  qkv: dict[tuple[str, str], dict[str, np.ndarray]] = {}
  for k, v in image_encoder.items():
    v = np.asarray(v)
    if k.startswith("model."):
      rest = k[len("model."):]
      rest = rest if rest.startswith("vision_model.") else "vision_model." + rest
      out[CLIP_PREFIX + rest] = v
    elif k.startswith("mapper.blocks."):
      m = re.match(r"mapper\.blocks\.(\d+)\.(.+)\.(weight|bias)$", k)
      i, mod, kind = m.groups()
      if mod in ("attn1.to_q", "attn1.to_k", "attn1.to_v"):
        qkv.setdefault((i, kind), {})[mod[-1]] = v
      else:
        old = {new: old for old, new in _MAPPER}[mod]
        out[f"{MAPPER_PREFIX}{i}.{old}.{kind}"] = v
    elif k.startswith("final_layer_norm."):
      out[FINAL_LN_PREFIX + k[len("final_layer_norm."):]] = v
    elif k.startswith("proj_out."):
      out[k] = v
    elif k == "uncond_vector":
      out["learnable_vector"] = v
    else:
      raise ValueError(f"ldm keys: no LDM name for image encoder tensor {k}")
  for (i, kind), parts in qkv.items():
    out[f"{MAPPER_PREFIX}{i}.attn.c_qkv.{kind}"] = np.concatenate(
        [parts["q"], parts["k"], parts["v"]], 0)
  return out
