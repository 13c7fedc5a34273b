"""Paint-by-Example initialisation: widen an SD-v1 UNet's `conv_in` from 4 to 9 inputs.

PbE's `scripts/modify_checkpoints.py` copies every Stable Diffusion weight and appends
zero input slices to the first convolution, for the masked-image latent (4) and the mask
(1). With zero weights the extra channels add exactly 0 to every output of `conv_in`, so
at step 0 the widened UNet computes the base UNet's function whatever those channels
hold. The new slices go *after* the old ones: the input order is (z_t, masked latent,
mask), as in `inference/paint.py`.

Accepts an `SDUNet`, its `nnx.State`, or the nested pure dict of that state
(`nnx.to_pure_dict(state)`); returns the same kind.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
from flax import nnx

from scdm_jax.models.sd_unet import SDUNet

PBE_IN_CHANNELS = 9


def widen_kernel(kernel: Any, new_in: int = PBE_IN_CHANNELS) -> jnp.ndarray:
  """(kh, kw, I, O) HWIO kernel -> (kh, kw, new_in, O): the old slices, then zeros.

  Raises:
    ValueError: not a 4-D kernel, or it already has new_in or more input channels.
  """
  kernel = jnp.asarray(kernel)
  if kernel.ndim != 4:
    raise ValueError(f"conv_in kernel must be HWIO (kh, kw, in, out), got shape {kernel.shape}")
  old_in = kernel.shape[2]
  if old_in >= new_in:
    raise ValueError(f"conv_in already has {old_in} input channels; widening needs "
                     f"new_in > {old_in}, got {new_in}")
  pad = jnp.zeros(kernel.shape[:2] + (new_in - old_in, kernel.shape[3]), kernel.dtype)
  return jnp.concatenate([kernel, pad], axis=2)


def _widen_state(state: nnx.State, new_in: int) -> nnx.State:
  """A copy of an SDUNet state with conv_in.kernel widened (other leaves shared)."""
  if "conv_in" not in state or "kernel" not in state["conv_in"]:
    raise ValueError("state has no conv_in.kernel: not an SD-v1 UNet state")
  flat = dict(nnx.to_flat_state(state))
  var = flat[("conv_in", "kernel")]
  flat[("conv_in", "kernel")] = var.replace(widen_kernel(var[...], new_in))
  return nnx.from_flat_state(flat)


def _widen_dict(params: Mapping[str, Any], new_in: int) -> dict[str, Any]:
  """A shallow copy of a nested pure-dict state with conv_in.kernel widened."""
  if "conv_in" not in params or "kernel" not in params["conv_in"]:
    raise ValueError("params have no conv_in.kernel: not an SD-v1 UNet state dict")
  out = dict(params)
  out["conv_in"] = dict(params["conv_in"])
  out["conv_in"]["kernel"] = widen_kernel(params["conv_in"]["kernel"], new_in)
  return out


def widen_conv_in(state_or_params: Any, new_in: int = PBE_IN_CHANNELS) -> Any:
  """Widens an SD-v1 UNet's conv_in to `new_in` input channels, new slices zero.

  Args:
    state_or_params: an `SDUNet` (left unchanged; a new module is returned whose config
      says `in_channels=new_in`), its `nnx.State`, or `nnx.to_pure_dict(state)`.
    new_in: input channels after widening (9 for Paint by Example).

  Returns:
    The same kind of object, with conv_in.kernel (3, 3, new_in, C) and everything else
    equal (arrays shared, not copied).

  Raises:
    ValueError: no conv_in.kernel, or conv_in is already at least `new_in` wide.
  """
  if isinstance(state_or_params, SDUNet):
    graphdef, state = nnx.split(state_or_params)
    model = nnx.merge(graphdef, _widen_state(state, new_in))
    model.config = dataclasses.replace(model.config, in_channels=new_in)
    return model
  if isinstance(state_or_params, nnx.State):
    return _widen_state(state_or_params, new_in)
  if isinstance(state_or_params, Mapping):
    return _widen_dict(state_or_params, new_in)
  raise TypeError(f"widen_conv_in takes an SDUNet, an nnx.State or a dict, got "
                  f"{type(state_or_params).__name__}")
