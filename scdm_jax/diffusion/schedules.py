"""Beta schedules and timestep respacing, as in OpenAI's guided-diffusion (float64 NumPy).

Everything here is plain NumPy in float64: the tables are built once on the host and only
cast to float32 when a coefficient is gathered for a timestep (see `gaussian.py`). That is
what the reference does and what exact parity with it needs.
"""

from __future__ import annotations

import math
import re

import numpy as np

BETA_SCHEDULES = ("linear", "cosine")


def get_betas(name: str, num_steps: int) -> np.ndarray:
  """Returns the (num_steps,) float64 betas of a named schedule.

  Args:
    name: "linear" (Ho et al., scaled so that any `num_steps` spans the same range as
      1000 steps) or "cosine" (Nichol & Dhariwal).
    num_steps: number of diffusion steps T of the original chain.

  Raises:
    ValueError: unknown name or a non-positive number of steps.
  """
  num_steps = _positive_int(num_steps, "num_steps")
  if name == "linear":
    # guided-diffusion: the 1e-4..0.02 range is defined for 1000 steps and rescaled.
    scale = 1000 / num_steps
    return np.linspace(scale * 0.0001, scale * 0.02, num_steps, dtype=np.float64)
  if name == "cosine":
    def alpha_bar(s):
      return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
    betas = [min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), 0.999)
             for i in range(num_steps)]
    return np.array(betas, dtype=np.float64)
  raise ValueError(f"beta schedule {name!r} is unknown; use one of {BETA_SCHEDULES}")


def space_timesteps(num_steps: int, spec: str | None) -> np.ndarray:
  """Original timesteps kept by a respacing, sorted ascending (int64).

  Follows guided-diffusion's `space_timesteps`:
    - None or "" keeps all `num_steps` steps;
    - "ddimN" keeps `range(0, num_steps, stride)` for the smallest integer stride that
      gives exactly N steps;
    - "a,b,c" (or a single "N") splits the chain into equal sections (the first
      `num_steps % len(sections)` sections one step longer) and takes the given number of
      evenly spaced steps in each, rounding the fractional positions with Python's round.

  Raises:
    ValueError: a malformed spec, a "ddimN" that no integer stride gives exactly, or a
      section asked for more steps than it has.
  """
  num_steps = _positive_int(num_steps, "num_steps")
  if spec is None or (isinstance(spec, str) and spec.strip() == ""):
    return np.arange(num_steps, dtype=np.int64)
  if not isinstance(spec, str):
    raise ValueError(f"respacing must be a string such as 'ddim25' or '50,30,20', got {spec!r}")
  spec = spec.strip()
  if spec.startswith("ddim"):
    m = re.fullmatch(r"ddim(\d+)", spec)
    if m is None:
      raise ValueError(f"respacing {spec!r}: expected 'ddim' followed by a step count, e.g. 'ddim25'")
    desired = int(m.group(1))
    # guided-diffusion tries strides 1..T-1; stride T (a single step) is allowed too here,
    # which only adds "ddim1" and never changes a spec the reference accepts.
    for stride in range(1, num_steps + 1):
      if len(range(0, num_steps, stride)) == desired:
        return np.arange(0, num_steps, stride, dtype=np.int64)
    raise ValueError(
        f"respacing {spec!r}: no integer stride gives exactly {desired} steps out of "
        f"{num_steps}; choose a count N with N == ceil({num_steps} / stride) for some stride, "
        f"or use section counts such as '{desired}'")
  try:
    counts = [int(x) for x in spec.split(",")]
  except ValueError:
    raise ValueError(
        f"respacing {spec!r} is not 'ddimN' or comma-separated step counts such as '50,30,20'"
    ) from None
  if any(c < 0 for c in counts) or sum(counts) == 0:
    raise ValueError(f"respacing {spec!r}: section counts must be >= 0 and not all zero")
  size_per, extra = divmod(num_steps, len(counts))
  start = 0
  steps: list[int] = []
  for i, count in enumerate(counts):
    size = size_per + (1 if i < extra else 0)
    if size < count:
      raise ValueError(
          f"respacing {spec!r}: section {i} has {size} steps of the {num_steps} but {count} "
          f"were asked for it")
    frac_stride = 1 if count <= 1 else (size - 1) / (count - 1)
    # Accumulate the position as the reference does (not k * stride): the rounding of the
    # running float sum decides which step is kept.
    cur = 0.0
    for _ in range(count):
      steps.append(start + round(cur))
      cur += frac_stride
    start += size
  return np.array(sorted(set(steps)), dtype=np.int64)


def respace_betas(betas: np.ndarray, use_timesteps: np.ndarray) -> np.ndarray:
  """Betas of the chain that keeps only `use_timesteps` (guided-diffusion SpacedDiffusion).

  Walks the original alpha_bar; at each kept step beta' = 1 - alpha_bar_t / alpha_bar_last.
  """
  alphas_cumprod = np.cumprod(1.0 - np.asarray(betas, np.float64))
  keep = set(int(t) for t in use_timesteps)
  last = 1.0
  new_betas = []
  for i, ab in enumerate(alphas_cumprod):
    if i in keep:
      new_betas.append(1.0 - ab / last)
      last = ab
  return np.array(new_betas, dtype=np.float64)


def _positive_int(value, name: str) -> int:
  if isinstance(value, bool) or int(value) != value or int(value) <= 0:
    raise ValueError(f"{name} must be a positive integer, got {value!r}")
  return int(value)
