"""Parity checker for gaussian_diffusion.npz (image diffusion, posterior, variance, loss).

Inputs read from the file: `x0`, `noise`, and per chain KEY = `{schedule}_{respacing}`:
`KEY/t` and `KEY/model_output`. The schedule and respacing are parsed from KEY itself:
`full` = no respacing, `ddimN`, a plain number `N` (one section), or section counts
joined by `-` (`50-30-20` = "50,30,20"). Clipping variants are parsed from the group names
under KEY: `static` (clip to [-1, 1]) and `dynNN` (dynamic thresholding at quantile 0.NN).
Everything else is recomputed with `scdm_jax.diffusion` and compared.

T (the original chain length) is 1000 unless the file says otherwise: an optional scalar
`num_timesteps` key, or the length of a `{schedule}_full` chain's tables.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from scdm_jax.diffusion import schedules
from scdm_jax.diffusion.gaussian import GaussianDiffusion
from scdm_jax.parity import Comparison, compare

TABLE_RTOL = 1e-9  # float64 tables
_KEY_RE = re.compile(r"^(?P<schedule>[a-z]+)_(?P<respacing>full|ddim\d+|\d+(?:-\d+)*)$")


def parse_chain_key(key: str) -> tuple[str, str | None]:
  """"linear_50-30-20" -> ("linear", "50,30,20"); "cosine_full" -> ("cosine", None)."""
  m = _KEY_RE.match(key)
  if m is None or m.group("schedule") not in schedules.BETA_SCHEDULES:
    raise ValueError(
        f"chain key {key!r} is not '{{{','.join(schedules.BETA_SCHEDULES)}}}_"
        "{full|ddimN|N|a-b-c}'")
  r = m.group("respacing")
  return m.group("schedule"), None if r == "full" else r.replace("-", ",")


def _num_original_steps(data: Mapping[str, np.ndarray], schedule: str) -> int:
  if "num_timesteps" in data:
    return int(np.asarray(data["num_timesteps"]))
  # The full chain's length is the original T (shape metadata, not values).
  full = f"{schedule}_full/timestep_map"
  if full in data:
    return int(np.asarray(data[full]).shape[0])
  return 1000


def check(data: Mapping[str, np.ndarray]) -> list[Comparison]:
  import jax.numpy as jnp

  x0 = jnp.asarray(data["x0"], jnp.float32)
  noise = jnp.asarray(data["noise"], jnp.float32)
  chains = sorted({k.split("/", 1)[0] for k in data if "/" in k})
  if not chains:
    raise ValueError("no '<schedule>_<respacing>/...' arrays in the file")
  results: list[Comparison] = []
  for key in chains:
    schedule, respacing = parse_chain_key(key)
    diff = GaussianDiffusion.create(schedule, _num_original_steps(data, schedule), respacing)

    def have(name):
      return f"{key}/{name}" in data

    def ref(name):
      return data[f"{key}/{name}"]

    if have("betas"):
      results.append(compare(f"{key}/betas", diff.betas, ref("betas"), tol=TABLE_RTOL))
    if have("timestep_map"):
      results.append(compare(f"{key}/timestep_map", diff.timestep_map, ref("timestep_map"),
                             exact=True))
    if not have("t"):
      continue
    t = jnp.asarray(ref("t"), jnp.int32)
    if int(np.max(ref("t"))) >= diff.num_timesteps or int(np.min(ref("t"))) < 0:
      raise ValueError(f"{key}/t has indices outside 0..{diff.num_timesteps - 1}")
    x_t = diff.q_sample(x0, t, noise)
    if have("x_t"):
      results.append(compare(f"{key}/x_t", x_t, ref("x_t")))
    mean, _, log_var = diff.q_posterior_mean_variance(x0, x_t, t)
    if have("posterior_mean"):
      results.append(compare(f"{key}/posterior_mean", mean, ref("posterior_mean")))
    if have("posterior_log_variance"):
      results.append(compare(f"{key}/posterior_log_variance", log_var,
                             ref("posterior_log_variance")))
    if not have("model_output"):
      continue
    out = jnp.asarray(ref("model_output"), jnp.float32)
    variants = sorted({k.split("/")[1] for k in data
                       if k.startswith(key + "/") and k.count("/") == 2})
    for variant in variants:
      if variant == "static":
        p = 0.0
      elif re.fullmatch(r"dyn\d+", variant):
        p = float("0." + variant[3:])
      else:
        raise ValueError(f"{key}/{variant}: unknown clipping variant (expected static or dynNN)")
      pm = diff.p_mean_variance(out, x_t, t, clip=True, dynamic_threshold=p)
      for name in ("mean", "log_variance", "pred_xstart"):
        if have(f"{variant}/{name}"):
          results.append(compare(f"{key}/{variant}/{name}", pm[name], ref(f"{variant}/{name}")))
    losses = diff.training_losses(out, x0, x_t, t, noise)
    for name in ("mse", "vb", ""):
      k = f"loss_{name}" if name else "loss"
      if have(k):
        results.append(compare(f"{key}/{k}", losses[name or "loss"], ref(k)))
  return results
