"""Parity of the NNX UNet with the official PyTorch network (fixture kind "unet").

Builds the network from the file's `config` (the reference `UNetModel` constructor
arguments), loads its PyTorch-named float16 parameters (cast to float32) through the same
conversion code as `python -m scdm_jax.convert`, runs `x, t, y` and compares with `out`
(max abs error <= 2e-4, float32).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from scdm_jax.models import torch_import
from scdm_jax.models.unet import UNetConfig
from scdm_jax.parity import Comparison, compare

OUT_ABS_TOL = 2e-4


def _is_onehot_or_zero(y: np.ndarray) -> bool:
  s = y.sum(-1)
  return bool(np.all((y == 0) | (y == 1)) and np.all((s == 0) | (s == 1)))


def check(data) -> list[Comparison]:

  y = np.asarray(data["y"], np.float32)
  # The one-hot lookup is exact only for one-hot-or-zero label channels. Files with an
  # instance-edge channel (last) use the lookup for the others; anything else runs dense.
  if _is_onehot_or_zero(y):
    options = dict(onehot_lookup=True, edge_channel=False)
  elif y.shape[-1] > 1 and _is_onehot_or_zero(y[..., :-1]):
    options = dict(onehot_lookup=True, edge_channel=True)
  else:
    options = dict(onehot_lookup=False, edge_channel=False)
  cfg = UNetConfig.from_reference_kwargs(str(data["config"]), dtype="float32",
                                         remat=False, **options)
  state_dict = {k[len("param/"):]: np.asarray(v, np.float32)
                for k, v in data.items() if k.startswith("param/")}
  model = torch_import.unet_from_torch(state_dict, cfg, source="unet fixture")
  # float32 matmuls/convs at full precision (GPUs default to TF32).
  with jax.default_matmul_precision("highest"):
    out = model(jnp.asarray(data["x"], jnp.float32), jnp.asarray(data["t"]), jnp.asarray(y))
  return [compare("out", np.asarray(out), data["out"], tol=OUT_ABS_TOL, abs_tol=True)]
