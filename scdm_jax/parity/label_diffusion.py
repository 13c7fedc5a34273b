"""Parity checker for label_diffusion.npz (class-wise label diffusion).

Inputs read from the file: `psi` (K,), `y0` (B,H,W,K), `u` (B,H,W), `t` (B,), optionally
`gamma_t` (the timesteps at which `gamma` is tabulated) and `k` (B,) respaced indices.
Outputs recomputed with `scdm_jax.diffusion` in reference semantics (τ = t / 1000, as the
official code hard-codes): `y_t` (exact), `gamma` (float64, rel 1e-9), and for every
respacing SPEC found as `SPEC_timestep_map` / `y_k_SPEC` (e.g. `ddim25`, `250`,
`50-30-20` for "50,30,20"): the map (exact) and the labels diffused at the original
timestep `map[k]` (exact).

T (the original chain length) is 1000 unless `gamma_t` covers 0..T'-1 with another T'.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from scdm_jax.diffusion import label_diffusion as ld
from scdm_jax.diffusion import schedules
from scdm_jax.parity import Comparison, compare

TABLE_RTOL = 1e-9
_SPEC_RE = re.compile(r"^(ddim\d+|\d+(?:-\d+)*)$")


def _num_original_steps(data: Mapping[str, np.ndarray]) -> int:
  if "gamma_t" in data:
    gt = np.asarray(data["gamma_t"]).reshape(-1)
    if gt.size and np.array_equal(gt, np.arange(gt.size)):
      return int(gt.size)
  return 1000


def check(data: Mapping[str, np.ndarray]) -> list[Comparison]:
  import jax.numpy as jnp

  psi = np.asarray(data["psi"], np.float64)
  y0 = np.asarray(data["y0"])
  ld.validate_label_map(y0, "y0")
  T = _num_original_steps(data)
  t = np.asarray(data["t"]).astype(np.int64)
  top = max([T] + [int(t.max(initial=0))])
  # Reference semantics: τ = t / 1000 whatever T is.
  sched = ld.LabelSchedule.create("classwise", psi, top, reference_tau_1000=True)
  u = jnp.asarray(data["u"], jnp.float32)
  results: list[Comparison] = []

  y_t = ld.diffuse_labels(y0, jnp.asarray(t, jnp.int32), u, sched)
  results.append(compare("y_t", y_t, data["y_t"], exact=True))

  if "gamma" in data:
    gt = np.asarray(data["gamma_t"]).astype(np.int64) if "gamma_t" in data else np.arange(T)
    results.append(compare("gamma", sched.gamma_table()[gt], data["gamma"], tol=TABLE_RTOL))

  for key in sorted(data):
    if not key.endswith("_timestep_map"):
      continue
    spec = key[: -len("_timestep_map")]
    if _SPEC_RE.match(spec) is None:
      raise ValueError(f"{key}: cannot parse the respacing {spec!r} (ddimN, N or a-b-c)")
    tmap = schedules.space_timesteps(T, spec.replace("-", ","))
    results.append(compare(key, tmap, data[key], exact=True))
    out_key = f"y_k_{spec}"
    if out_key in data:
      if "k" not in data:
        raise ValueError(f"{out_key} needs the respaced indices 'k'")
      k = np.asarray(data["k"]).astype(np.int64)
      if k.min(initial=0) < 0 or k.max(initial=0) >= len(tmap):
        raise ValueError(f"k has indices outside 0..{len(tmap) - 1} of {spec}")
      y_k = ld.diffuse_labels(y0, jnp.asarray(tmap[k], jnp.int32), u, sched)
      results.append(compare(out_key, y_k, data[out_key], exact=True))
  return results
