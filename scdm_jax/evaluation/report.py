"""One JSON file per evaluation run, written atomically.

The file pins everything a number depends on (users.md §1.9): the metric values, the
implementation, a sha256 of every weights/statistics file used, the resize mode, the number of
samples and the seed, plus any extra fields the caller adds (config, checkpoint step, ...).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import pathlib
from typing import Any, Iterable, Mapping

import numpy as np

from scdm_jax.io import atomic
from scdm_jax.evaluation._npz import sha256_file

__all__ = ["write_report", "read_report", "weights_hashes", "sha256_file", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1


def weights_hashes(paths: Mapping[str, str | os.PathLike] | Iterable[str | os.PathLike]
                   ) -> dict[str, str]:
  """``{name or path: sha256}`` for the weights files used (missing files are refused)."""
  items = paths.items() if isinstance(paths, Mapping) else ((str(p), p) for p in paths)
  out = {}
  for name, p in items:
    if not os.path.isfile(p):
      raise FileNotFoundError(f"Weights file not found (for its hash): {p}")
    out[str(name)] = sha256_file(p)
  return out


def _jsonable(x: Any) -> Any:
  """numpy/jax scalars and arrays -> Python; non-finite floats -> None (JSON has no NaN)."""
  if isinstance(x, Mapping):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (str, bool)) or x is None:
    return x
  if isinstance(x, pathlib.PurePath):
    return str(x)
  if hasattr(x, "__array__") and not isinstance(x, (int, float)):
    arr = np.asarray(x)
    return _jsonable(arr.item() if arr.ndim == 0 else arr.tolist())
  if isinstance(x, float):
    return x if math.isfinite(x) else None
  if isinstance(x, int):
    return x
  raise TypeError(f"Cannot write a value of type {type(x).__name__} to the report: {x!r}")


def write_report(path: str | os.PathLike, metrics: Mapping[str, Any], *, implementation: str,
                 weights_hash: Mapping[str, str] | str | None, resize_mode: str,
                 num_samples: int, seed: int, **extra: Any) -> dict[str, Any]:
  """Writes the report JSON atomically (temp file + ``os.replace``) and returns it as a dict.

  Args:
    path: output file; parent directories are created.
    metrics: e.g. ``{"fid": 31.2, "kid_mean": 0.01, "lpips_diversity": 0.53, "miou": 44.7}``.
      NaN/Inf become ``null``; arrays become lists.
    implementation: which code computed the numbers, e.g. ``"scdm_jax.evaluation
      (TF-FID Inception-v3 2015-12-05, JAX)"``; proxies must say so here.
    weights_hash: sha256 of each weights/statistics file (see `weights_hashes`), or one hash.
    resize_mode: how images reached the network, e.g. ``"256 bicubic -> 299 bilinear"``.
    num_samples: number of generated images evaluated.
    seed: sampling seed.
    **extra: further JSON-able fields (config name, checkpoint step, corruption, ...).
  """
  if not implementation:
    raise ValueError("write_report: `implementation` must name the code that computed the "
                     "metrics.")
  report = {
      "schema_version": SCHEMA_VERSION,
      "metrics": _jsonable(dict(metrics)),
      "implementation": implementation,
      "weights_sha256": _jsonable(weights_hash),
      "resize_mode": resize_mode,
      "num_samples": int(num_samples),
      "seed": int(seed),
      "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  }
  for k, v in extra.items():
    if k in report:
      raise ValueError(f"write_report: extra field {k!r} would overwrite a standard field.")
    report[k] = _jsonable(v)
  atomic.write_json(path, report, indent=2, allow_nan=False)
  return report


def read_report(path: str | os.PathLike) -> dict[str, Any]:
  with open(path) as f:
    return json.load(f)
