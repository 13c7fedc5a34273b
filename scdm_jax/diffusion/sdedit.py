"""SDEdit: start the reverse chain from a noised guide image (pure, traceable).

Spec: sdedit-paint-by-example.md A.5, C.1-C.2; usage: docs/editing.md.

`t0` is a *noise level*, not an index: t0 in (0, 1] names the alpha-bar of the linear-beta
VP schedule with T = 1000 at step t0 * T (`alpha_bar_for_t0`), and the chain starts at the
respaced index whose alpha-bar is nearest to it (`start_index_for`). So t0 = 0.5 means the
same amount of noise (alpha-bar 0.079) on a linear or a cosine schedule, on the full chain
or on a 25-step one. `alpha_bar=` may be given instead.

`sdedit` runs K repeats (the output of repeat k is the guide of repeat k + 1; masked: only
inside the mask), each one `sampling.sample` from the start index: call it under `jax.jit`
and all repeats and steps are one program (repeats unrolled, steps one `lax.scan`). The
batched, sharded front end with image/mask checks is `scdm_jax.inference.editor.Editor`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from scdm_jax.diffusion import label_diffusion
from scdm_jax.diffusion import sampling
from scdm_jax.diffusion import schedules
from scdm_jax.diffusion.gaussian import GaussianDiffusion

# The reference scale of t0: SDEdit's (and guided-diffusion's) linear-beta VP chain.
REFERENCE_SCHEDULE = ("linear", 1000)



# ---------------------------------------------------------------------------
# t0 <-> alpha-bar <-> start index
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _reference_alphas_cumprod() -> np.ndarray:
  betas = schedules.get_betas(*REFERENCE_SCHEDULE)
  return np.cumprod(1.0 - betas)


def alpha_bar_for_t0(t0: float) -> float:
  """alpha-bar of the linear-VP T=1000 chain at noise level t0 in (0, 1].

  t0 * 1000 counts noising steps: t0 = k / 1000 gives alpha_bar_{k} = prod_{s<k}(1 - beta_s)
  (guided-diffusion's table at original timestep k - 1; so t0 = 0.5 is timestep 499,
  alpha-bar 0.0786). Between grid points log alpha-bar is interpolated linearly, and
  t0 -> 0 tends to alpha-bar 1 (no noise).

  Raises:
    ValueError: t0 outside (0, 1].
  """
  t0 = float(t0)
  if not 0.0 < t0 <= 1.0:
    raise ValueError(f"t0 must be in (0, 1] (noise level on the linear-VP scale), got {t0}")
  ac = _reference_alphas_cumprod()
  log_ac = np.concatenate([[0.0], np.log(ac)])  # k = 0 (clean) .. T
  return float(np.exp(np.interp(t0 * len(ac), np.arange(len(log_ac)), log_ac)))


def start_index_for(diffusion: GaussianDiffusion, *, t0: float | None = 0.5,
                    alpha_bar: float | None = None) -> int:
  """The respaced index of `diffusion` whose alpha-bar is nearest to the target.

  The target is `alpha_bar` when given (in (0, 1)), else `alpha_bar_for_t0(t0)`.
  """
  if alpha_bar is not None and alpha_bar > 0:
    target = float(alpha_bar)
    if not 0.0 < target < 1.0:
      raise ValueError(f"alpha_bar must be in (0, 1), got {alpha_bar}")
  elif t0 is None:
    raise ValueError("give t0 (in (0, 1]) or alpha_bar (in (0, 1))")
  else:
    target = alpha_bar_for_t0(t0)
  ac = diffusion.table("alphas_cumprod")
  return int(np.argmin(np.abs(ac - target)))


def sdedit(model_apply: sampling.ModelApply, diffusion: GaussianDiffusion,
           label_schedule: label_diffusion.LabelSchedule, guide, cond, key, *,
           start_index: int, num_label_channels: int, mask=None, repeats: int = 1,
           sampler: str = "ddpm", eta: float = 1.0, guidance_scale: float = 1.0,
           dynamic_threshold: float = 0.0, extrapolation: float = 0.0,
           clip_denoised: bool = True, label_mode: str = "fresh",
           progress: Callable[[int, int], None] | None = None) -> jax.Array:
  """SDEdit (mask None) or masked SDEdit; pure and traceable (call it under `jax.jit`).

  Args:
    model_apply: `(x_t, t_orig, cond) -> eps (and v)`, as for `sampling.sample`.
    diffusion: the chain to run on (any respacing).
    label_schedule: the model's label schedule.
    guide: (B, H, W, 3) guide in [-1, 1]. Masked: its region mask == 0 is the source that
      is kept exactly; inside the mask it is the starting guide (source or strokes).
    cond: (B, H, W, L) conditioning (all zeros: unconditional).
    key: PRNG key.
    start_index: respaced index k0 to start from (static; see `start_index_for`).
    num_label_channels: K (the label channels of `cond`).
    mask: optional (B, H, W, 1) {0, 1}: 1 = generated, 0 = kept from `guide`.
    repeats: K repeats; the output of one is the guide of the next (inside the mask).
    sampler, eta, guidance_scale, dynamic_threshold, extrapolation, clip_denoised,
      label_mode: passed to `sampling.sample`.
    progress: host `progress(step, total)` over all repeats (total = repeats * (k0 + 1)).

  Returns:
    (B, H, W, 3) float32 images.
  """
  repeats = int(repeats)
  if repeats < 1:
    raise ValueError(f"repeats must be >= 1, got {repeats}")
  guide = jnp.asarray(guide, jnp.float32)
  b = guide.shape[0]
  steps = int(start_index) + 1
  x = guide
  for r in range(repeats):
    k_eps, k_run = jax.random.split(jax.random.fold_in(key, r))
    g = x if mask is None else mask * x + (1 - mask) * guide
    t = jnp.full((b,), int(start_index), jnp.int32)
    x_init = diffusion.q_sample(g, t, jax.random.normal(k_eps, g.shape, jnp.float32))
    prog = None
    if progress is not None:
      prog = functools.partial(_offset_progress, progress, r * steps, repeats * steps)
    x = sampling.sample(
        model_apply, diffusion, label_schedule, cond, k_run, sampler=sampler, eta=eta,
        guidance_scale=guidance_scale, dynamic_threshold=dynamic_threshold,
        extrapolation=extrapolation, clip_denoised=clip_denoised, label_mode=label_mode,
        num_label_channels=num_label_channels, x_init=x_init, start_index=int(start_index),
        known=None if mask is None else guide, mask=mask, progress=prog)
  return x


def _offset_progress(progress, offset, total, step, _):
  progress(offset + step, total)
