"""Parity with golden arrays from the official PyTorch SCDM.

`python -m scdm_jax.parity FILE.npz [FILE.npz ...]` recognises the kind of each file from
its keys, recomputes every output array from the inputs stored in the file (never from the
expected outputs), prints the error per array and exits non-zero when one is over tolerance.

Each kind lives in its own module with a `check(data) -> list[Comparison]` function, so
that the checker for a part of the system sits beside the team that owns that part.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Mapping

import numpy as np

# kind -> (module, keys that identify the kind)
KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "label_diffusion": ("scdm_jax.parity.label_diffusion", ("psi", "y0", "u", "t", "y_t")),
    "gaussian_diffusion": ("scdm_jax.parity.gaussian_diffusion", ("x0", "noise")),
    "unet": ("scdm_jax.parity.unet", ("config", "x", "t", "y", "out")),
    "noisy_benchmark": ("scdm_jax.parity.noisy_benchmark", ("raw_0",)),
    # A folder (pipeline/ + io.npz), not one npz.
    "paint_by_example": ("scdm_jax.parity.paint_by_example",
                         ("image_u8", "mask_u8", "example_u8", "unet_probe_eps")),
}

# Relative error (max|ours - ref| / max|ref|) allowed on float arrays, by default.
DEFAULT_RTOL = 1e-5


@dataclasses.dataclass(frozen=True)
class Comparison:
  """One recomputed array against its golden value."""

  name: str
  max_abs: float
  rel: float  # max|ours - ref| / max|ref| (normalised error)
  tol: float  # allowed `rel`, or allowed max_abs when `abs_tol` is set
  exact: bool = False  # masks and integer maps: any difference fails
  abs_tol: bool = False  # compare max_abs (not rel) against tol

  @property
  def ok(self) -> bool:
    if self.exact:
      return self.max_abs == 0
    return (self.max_abs if self.abs_tol else self.rel) <= self.tol


def compare(name: str, ours, ref, *, tol: float = DEFAULT_RTOL, exact: bool = False,
            abs_tol: bool = False) -> Comparison:
  """Compares two arrays of the same shape; a shape mismatch is a clear error."""
  ours = np.asarray(ours, dtype=np.float64)
  ref = np.asarray(ref, dtype=np.float64)
  if ours.shape != ref.shape:
    raise ValueError(f"{name}: recomputed shape {ours.shape} != reference shape {ref.shape}")
  diff = np.abs(ours - ref)
  max_abs = float(diff.max()) if diff.size else 0.0
  scale = float(np.abs(ref).max()) if ref.size else 0.0
  rel = max_abs / scale if scale > 0 else max_abs
  return Comparison(name, max_abs, rel, tol, exact, abs_tol)


def detect_kind(data: Mapping[str, np.ndarray], path: str = "<npz>") -> str:
  keys = set(data.keys())
  for kind, (_, required) in KINDS.items():
    if all(k in keys for k in required):
      return kind
  raise ValueError(
      f"{path}: cannot tell which fixture kind this is from its keys {sorted(keys)[:12]}; "
      f"expected the keys of one of: "
      + "; ".join(f"{k} ({', '.join(req)})" for k, (_, req) in KINDS.items()))


def check_file(path: str) -> tuple[str, list[Comparison]]:
  """Checks one fixture: an npz file, or a folder holding io.npz (and what it refers to)."""
  folder = path if os.path.isdir(path) else None
  npz_path = os.path.join(path, "io.npz") if folder else path
  if folder and not os.path.isfile(npz_path):
    raise ValueError(f"{path}: a fixture folder must hold io.npz")
  with np.load(npz_path, allow_pickle=False) as npz:
    data = {k: npz[k] for k in npz.files}
  kind = detect_kind(data, path)
  module = importlib.import_module(KINDS[kind][0])
  return kind, module.check(data, folder) if folder else module.check(data)


def format_report(path: str, kind: str, results: list[Comparison]) -> str:
  lines = [f"{path}: {kind}"]
  width = max((len(r.name) for r in results), default=4)
  for r in results:
    verdict = "ok" if r.ok else "FAIL"
    limit = "exact" if r.exact else (f"abs<={r.tol:.0e}" if r.abs_tol else f"rel<={r.tol:.0e}")
    lines.append(f"  {r.name:<{width}}  max_abs={r.max_abs:.3e}  rel={r.rel:.3e}  ({limit})  {verdict}")
  return "\n".join(lines)
