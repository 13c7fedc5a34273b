"""Shared helpers of the torch -> npz converters (the only modules that import torch)."""

from __future__ import annotations

import os
import pathlib

import numpy as np


def load_torch_state_dict(path: str | os.PathLike, what: str) -> dict[str, np.ndarray]:
  """Reads a PyTorch state dict (tensors only, ``weights_only=True``) as numpy float arrays."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("Converting PyTorch weights needs torch: pip install torch (CPU is "
                      "enough), or `pip install -e .[torch]`.") from e
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{what} file not found: {path}")
  try:
    sd = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:
    raise ValueError(f"{what} file {path} is not a readable PyTorch state dict "
                     f"({type(e).__name__}: {e}).") from e
  if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
    sd = sd["state_dict"]
  if not isinstance(sd, dict):
    raise ValueError(f"{what} file {path} holds a {type(sd).__name__}, not a state dict.")
  out = {}
  for k, v in sd.items():
    if hasattr(v, "detach"):
      out[k.removeprefix("module.")] = v.detach().cpu().numpy()
  return out

