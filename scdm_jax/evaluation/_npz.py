"""Strict npz loading for user-given weight and statistics files.

Every file a user hands to the evaluation library goes through here, so a wrong or corrupt file
fails early with a message that names the file, the offending key and the expected shape,
instead of a shape error deep inside a jitted network.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
from typing import Mapping

import numpy as np


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
  """Hex sha256 of a file's bytes (recorded in evaluation reports)."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(chunk_size), b""):
      h.update(chunk)
  return h.hexdigest()


def load_npz(path: str | os.PathLike, what: str) -> dict[str, np.ndarray]:
  """Reads every array of an npz archive (no pickles).

  Raises:
    FileNotFoundError: ``path`` does not exist.
    ValueError: ``path`` is not a readable npz archive.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{what} file not found: {path}")
  try:
    data = np.load(path, allow_pickle=False)
  except Exception as e:  # BadZipFile, pickle refusal, truncated file, ...
    raise ValueError(f"{what} file {path} is not a readable npz archive "
                     f"({type(e).__name__}: {e}).") from e
  if not isinstance(data, np.lib.npyio.NpzFile):
    raise ValueError(f"{what} file {path} is a single .npy array, not an npz archive of named "
                     "arrays.")
  try:
    with data:
      return {k: np.asarray(data[k]) for k in data.files}
  except Exception as e:  # A member that is corrupt or needs pickle.
    raise ValueError(f"{what} file {path} has an unreadable member "
                     f"({type(e).__name__}: {e}).") from e


def check_arrays(arrays: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]],
                 path: str | os.PathLike, what: str, hint: str) -> None:
  """Refuses missing keys, unexpected keys, wrong shapes and non-finite values."""
  missing = [k for k in expected if k not in arrays]
  if missing:
    raise ValueError(
        f"{what} file {path} is missing {len(missing)} of {len(expected)} expected key(s), "
        f"first: {missing[:4]} (expected shape {tuple(expected[missing[0]])}). {hint}")
  unexpected = sorted(k for k in arrays if k not in expected)
  if unexpected:
    raise ValueError(f"{what} file {path} has {len(unexpected)} unexpected key(s), first: "
                     f"{unexpected[:4]}; is this the right network? {hint}")
  for k, shape in expected.items():
    a = arrays[k]
    if tuple(a.shape) != tuple(shape):
      raise ValueError(f"{what} file {path}: key '{k}' has shape {tuple(a.shape)}; expected "
                       f"{tuple(shape)}. {hint}")
    if not np.issubdtype(a.dtype, np.floating):
      raise ValueError(f"{what} file {path}: key '{k}' has dtype {a.dtype}; expected floats.")
    if not np.all(np.isfinite(a)):
      raise ValueError(f"{what} file {path}: key '{k}' contains NaN or Inf values.")
