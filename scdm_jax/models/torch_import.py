"""Maps a PyTorch SDM/SCDM state dict onto the NNX UNet's parameters.

No torch import here: the state dict is a mapping `{name: np.ndarray}` (the CLI in
`scdm_jax/convert.py` reads the .pt file). Layouts: conv2d (O, I, kh, kw) -> HWIO,
attention conv1d (O, I, 1) -> (I, O), linear (O, I) -> (I, O); float16 tensors are cast
to float32. Every tensor is checked against the shape the config implies; mismatches,
missing and unexpected names are refused with a ValueError that names them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from scdm_jax.models import layers
from scdm_jax.models.unet import UNet, UNetConfig, abstract_unet

# The first SPADE conv of the middle block: its input channels are the label channels.
LABEL_TENSOR = "middle_block.0.in_norm.mlp_shared.0.weight"
# Keys under which training scripts nest a state dict.
_NEST_KEYS = ("state_dict", "model", "ema", "model_ema", "ema_model", "params")


def unwrap_state_dict(obj: Any) -> dict[str, Any]:
  """Finds the state dict in a loaded checkpoint object.

  Accepts a plain `{name: tensor}` dict (official SDM/SCDM `model*.pt` and `ema_*.pt`
  files), one nested under "state_dict"/"model"/"ema"/..., and DataParallel names with a
  "module." prefix.
  """
  for _ in range(3):
    if isinstance(obj, Mapping) and not any(k.startswith(("time_embed.", "module.time_embed."))
                                            for k in obj if isinstance(k, str)):
      for key in _NEST_KEYS:
        if key in obj and isinstance(obj[key], Mapping):
          obj = obj[key]
          break
      else:
        break
  if not isinstance(obj, Mapping):
    raise ValueError(f"checkpoint: expected a state dict (name -> tensor), got "
                     f"{type(obj).__name__}")
  out = {}
  for k, v in obj.items():
    k = str(k)
    out[k[len("module."):] if k.startswith("module.") else k] = v
  return out


def _to_numpy(v: Any) -> np.ndarray:
  if hasattr(v, "detach"):  # a torch tensor (avoid importing torch here)
    v = v.detach().cpu()
    if str(v.dtype) == "torch.bfloat16":
      v = v.float()
    v = v.numpy()
  return np.asarray(v)


def _convert(name: str, value: np.ndarray, layout: str) -> np.ndarray:
  if layout == layers.CONV2D:
    if value.ndim != 4:
      raise ValueError(f"checkpoint tensor {name}: expected a conv2d weight (O, I, kh, kw), "
                       f"got shape {value.shape}")
    return value.transpose(2, 3, 1, 0)
  if layout == layers.CONV1D:
    if value.ndim != 3 or value.shape[-1] != 1:
      raise ValueError(f"checkpoint tensor {name}: expected a 1x1 conv1d weight (O, I, 1), "
                       f"got shape {value.shape}")
    return value[..., 0].T
  if layout == layers.LINEAR:
    if value.ndim != 2:
      raise ValueError(f"checkpoint tensor {name}: expected a linear weight (O, I), got "
                       f"shape {value.shape}")
    return value.T
  return value


def _torch_shape(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
  """The PyTorch shape of a parameter of JAX shape `shape` (for error messages)."""
  if layout == layers.CONV2D:
    return (shape[3], shape[2], shape[0], shape[1])
  if layout == layers.CONV1D:
    return (shape[1], shape[0], 1)
  if layout == layers.LINEAR:
    return (shape[1], shape[0])
  return tuple(shape)


def _param_paths(model: UNet) -> dict[int, tuple]:
  return {id(node): path for path, node in nnx.iter_graph(model)
          if isinstance(node, nnx.Param)}


def _set_path(tree: dict, path: tuple, value) -> None:
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def torch_to_params(state_dict: Mapping[str, Any], config: UNetConfig, *,
                    source: str = "checkpoint") -> dict:
  """Converts a PyTorch state dict to the UNet's parameters.

  Args:
    state_dict: `{name: array}` (numpy arrays or torch tensors; float16 is cast to float32).
    config: the UNetConfig the checkpoint was trained with.
    source: how to name the checkpoint in error messages (e.g. its path).

  Returns:
    A nested dict of float32 numpy arrays with the structure of
    `nnx.to_pure_dict(nnx.state(UNet(config, ...), nnx.Param))`.

  Raises:
    ValueError: a label-channel count different from `config.num_classes`, a tensor whose
      shape does not match the config (naming the tensor and both shapes), missing or
      unexpected tensors.
  """
  state_dict = unwrap_state_dict(state_dict)
  if LABEL_TENSOR in state_dict:
    shape = tuple(np.shape(state_dict[LABEL_TENSOR]))
    if len(shape) == 4 and shape[1] != config.num_classes:
      raise ValueError(
          f"{source}: the checkpoint has {shape[1]} label channels ({LABEL_TENSOR} has shape "
          f"{shape}), the config says num_classes={config.num_classes}. Use the config of "
          f"the dataset the checkpoint was trained on (label classes, plus 1 when the "
          f"instance-edge map is used).")
  model = abstract_unet(config)
  paths = _param_paths(model)
  entries = model.torch_params()
  expected = {name for name, _, _ in entries}
  missing = [name for name in (n for n, _, _ in entries) if name not in state_dict]
  unexpected = sorted(set(state_dict) - expected)
  if missing or unexpected:
    parts = []
    if missing:
      parts.append(f"{len(missing)} missing tensor(s): {missing[:10]}"
                   + (" ..." if len(missing) > 10 else ""))
    if unexpected:
      parts.append(f"{len(unexpected)} unexpected tensor(s): {unexpected[:10]}"
                   + (" ..." if len(unexpected) > 10 else ""))
    raise ValueError(f"{source}: the state dict does not match the config "
                     f"({'; '.join(parts)}). Check model_channels, channel_mult, "
                     f"num_res_blocks, attention_resolutions and resblock_updown.")
  params: dict = {}
  for name, var, layout in entries:
    value = _to_numpy(state_dict[name])
    want = tuple(var.shape)
    if value.ndim != len(_torch_shape(want, layout)) or (
        tuple(value.shape) != _torch_shape(want, layout)):
      raise ValueError(f"{source}: tensor {name} has shape {tuple(value.shape)}, the config "
                       f"needs {_torch_shape(want, layout)} (PyTorch layout)")
    value = _convert(name, value, layout).astype(np.float32)
    _set_path(params, paths[id(var)], np.ascontiguousarray(value))
  return params


def params_to_torch(params: Mapping, config: UNetConfig) -> dict[str, np.ndarray]:
  """The inverse map: UNet parameters (pure dict) -> PyTorch-named float32 numpy arrays."""
  model = abstract_unet(config)
  paths = _param_paths(model)
  out = {}
  for name, var, layout in model.torch_params():
    value = params
    for p in paths[id(var)]:
      value = value[p]
    value = np.asarray(value, dtype=np.float32)
    if layout == layers.CONV2D:
      value = value.transpose(3, 2, 0, 1)
    elif layout == layers.CONV1D:
      value = value.T[..., None]
    elif layout == layers.LINEAR:
      value = value.T
    out[name] = value
  return out


def _flatten(tree: Mapping, prefix: tuple = ()) -> dict[tuple, Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def load_params(model: UNet, params: Mapping) -> UNet:
  """Writes a pure dict of parameters into `model` (in place) and returns the model.

  `params` has the structure of `nnx.to_pure_dict(nnx.state(model, nnx.Param))` (as
  written by `torch_to_params` or `checkpointing.load_export`); shapes are checked.
  """
  state = nnx.state(model, nnx.Param)
  ours = _flatten(nnx.to_pure_dict(state))
  # Orbax may restore integer list indices as strings: normalise to the model's keys.
  theirs = {tuple(str(p) for p in k): v for k, v in _flatten(params).items()}
  ours_s = {tuple(str(p) for p in k): k for k in ours}
  if set(ours_s) != set(theirs):
    missing = sorted("/".join(k) for k in set(ours_s) - set(theirs))[:5]
    extra = sorted("/".join(k) for k in set(theirs) - set(ours_s))[:5]
    raise ValueError(f"load_params: the parameter tree does not match the model "
                     f"(missing {missing}, unexpected {extra})")
  fixed: dict = {}
  for ks, k in ours_s.items():
    value = theirs[ks]
    if tuple(np.shape(value)) != tuple(ours[k].shape):
      raise ValueError(f"load_params: {'/'.join(ks)} has shape {tuple(np.shape(value))}, "
                       f"the model needs {tuple(ours[k].shape)}")
    _set_path(fixed, k, jax.numpy.asarray(value, dtype=ours[k].dtype))
  nnx.replace_by_pure_dict(state, fixed)
  nnx.update(model, state)
  return model


def unet_from_params(config: UNetConfig, params: Mapping) -> UNet:
  """A concrete UNet holding `params` (a pure dict, e.g. from `load_export`).

  Built from the abstract model, so no random initialisation is run.
  """
  graphdef, state = nnx.split(abstract_unet(config))
  # Placeholders with the right shapes; load_params then checks and writes the values.
  state = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), state)
  model = nnx.merge(graphdef, state)
  return load_params(model, params)


def unet_from_torch(state_dict: Mapping[str, Any], config: UNetConfig, *,
                    source: str = "checkpoint") -> UNet:
  """A concrete UNet with the converted PyTorch weights."""
  return unet_from_params(config, torch_to_params(state_dict, config, source=source))
