"""Samplers: ancestral DDPM (the reference's) and DDIM, each one `lax.scan` over the steps.

`sample` is a pure, traceable function: call it inside `jax.jit` (or `nnx.jit`) and the
whole reverse chain (label diffusion, the network, guidance, thresholding, the update) is
one compiled program. Every step uses the *original* timestep for the network and the
label schedule, and the respaced index for the image chain (scdm-method.md §2.4, §5.1).

RNG: `key` is split into independent streams for the initial noise, the label masks u, the
per-step image noise and the re-noising of a known region; per-step keys are
`fold_in(stream, respaced index)`, so a result depends only on `key` and the arguments.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from scdm_jax.diffusion import label_diffusion as ld
from scdm_jax.diffusion.gaussian import GaussianDiffusion

LABEL_MODES = ("fresh", "coupled")

ModelApply = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
# update(x_t, t, k, p_mean_variance output, z, nonzero) -> x_{t-1}
Update = Callable[..., jax.Array]


def _ddpm_update(diffusion: GaussianDiffusion, eta: float) -> Update:
  """Ancestral DDPM (the reference): the posterior mean plus its (learned) variance."""
  del diffusion, eta

  def update(x, t, k, pm, z, nonzero):
    del x, t, k
    return pm["mean"] + nonzero * jnp.exp(0.5 * pm["log_variance"]) * z
  return update


def _ddim_update(diffusion: GaussianDiffusion, eta: float) -> Update:
  """eta-DDIM on this chain; with a learned variance only the epsilon channels are used."""
  ac = diffusion.table("alphas_cumprod")
  ac_prev = diffusion.table("alphas_cumprod_prev")
  sigma_np = eta * np.sqrt((1 - ac_prev) / (1 - ac)) * np.sqrt(1 - ac / ac_prev)
  sigma = jnp.asarray(sigma_np.astype(np.float32))
  sqrt_ac_prev = jnp.asarray(np.sqrt(ac_prev).astype(np.float32))
  direction = jnp.asarray(np.sqrt(np.maximum(1 - ac_prev - sigma_np ** 2, 0.0)
                                  ).astype(np.float32))

  def update(x, t, k, pm, z, nonzero):
    eps = diffusion.predict_eps_from_xstart(x, t, pm["pred_xstart"])
    return pm["pred_xstart"] * sqrt_ac_prev[k] + direction[k] * eps + nonzero * sigma[k] * z
  return update


# The samplers: name -> factory of the per-step update (a new sampler is one entry here).
SAMPLER_UPDATES: dict[str, Callable[[GaussianDiffusion, float], Update]] = {
    "ddpm": _ddpm_update,
    "ddim": _ddim_update,
}
SAMPLERS = tuple(SAMPLER_UPDATES)


def guided_model_output(model_apply: ModelApply, x, t_orig, cond, guidance_scale: float,
                        image_channels: int) -> jax.Array:
  """The network output with classifier-free guidance on the epsilon channels.

  s == 1: one call on (x, t, cond). s > 1: one call on the batch doubled as
  [cond, zeros] (the unconditional branch is the all-zero conditioning: absorbed label
  and zero edge), eps = eps_u + s (eps_c - eps_u); the variance channels come from the
  conditional half. A model with a `with_unconditional(x, t, cond) -> (out_c, out_u)`
  method (the UNet) is called through it instead.
  """
  if guidance_scale == 1.0:
    return model_apply(x, t_orig, cond)
  b = x.shape[0]
  if hasattr(model_apply, "with_unconditional"):
    # The model computes both halves itself, sharing what does not see the map (the UNet).
    out_c, out_u = model_apply.with_unconditional(x, t_orig, cond)
  else:
    out = model_apply(jnp.concatenate([x, x], 0), jnp.concatenate([t_orig, t_orig], 0),
                      jnp.concatenate([cond, jnp.zeros_like(cond)], 0))
    out_c, out_u = out[:b], out[b:]
  c = image_channels
  eps = out_u[..., :c] + guidance_scale * (out_c[..., :c] - out_u[..., :c])
  return jnp.concatenate([eps, out_c[..., c:]], axis=-1)


def sample(model_apply: ModelApply, diffusion: GaussianDiffusion,
           label_schedule: ld.LabelSchedule, cond, key, *, sampler: str = "ddpm",
           eta: float = 0.0, guidance_scale: float = 1.0, dynamic_threshold: float = 0.0,
           extrapolation: float = 0.0, clip_denoised: bool = True, label_mode: str = "fresh",
           num_label_channels: int, image_channels: int = 3, x_init=None,
           start_index: int | None = None, known=None, mask=None,
           progress: Callable[[int, int], None] | None = None) -> jax.Array:
  """Generates images for a batch of conditioning maps.

  Args:
    model_apply: `(x_t (B,H,W,C), t_orig (B,) int32, cond (B,H,W,L)) -> (B,H,W,2C)` (eps
      and learned-range variance value v) or `(B,H,W,C)` (eps; fixed variance).
    diffusion: the (respaced) chain to sample on, e.g.
      `GaussianDiffusion.create("linear", 1000, "ddim25")`.
    label_schedule: the label schedule (for the reference's uniform variant it is put on
      this chain with `on_chain`).
    cond: (B, H, W, L) conditioning = concat([label (K one-hot channels), edge]).
    key: PRNG key.
    sampler: "ddpm" (ancestral, the reference) or "ddim" (eta-DDIM on this chain; with a
      learned variance only the epsilon channels are used).
    eta: DDIM noise scale (0: deterministic DDIM, 1: DDPM-like variance).
    guidance_scale: classifier-free guidance scale s >= 1 (1: no guidance, one network
      call per step; > 1: one call on a doubled batch).
    dynamic_threshold: quantile p in (0, 1) of |x̂0| for dynamic thresholding; 0 means
      static clipping to [-1, 1] (when `clip_denoised`).
    extrapolation: λ of the x̂0 extrapolation (0: off). The stored previous x̂0 is the
      extrapolated value before clipping (scdm-method.md §5.1 step 5).
    clip_denoised: clip x̂0 at all (statically or dynamically).
    label_mode: "fresh" (a new mask u every step: the reference) or "coupled" (one u per
      pixel for the whole chain: a monotone reveal).
    num_label_channels: K; channels K..L-1 of `cond` (instance edge) are never diffused.
    image_channels: C of the image (3).
    x_init: optional (B, H, W, C) noisy image to start from at respaced index
      `start_index` (SDEdit); default pure noise at the last index.
    start_index: respaced index of `x_init` (static int; default the last index N-1).
    known: optional (B, H, W, C) clean image whose region `mask == 0` is kept: every step
      that region of x is replaced by q_sample(known, t), and at the end `known` is
      pasted exactly there.
    mask: (B, H, W, 1) or (B, H, W): 1 where the image is generated, 0 where `known` is kept.
    progress: optional host function `progress(step, total)` called after every step
      (1..total) through `jax.debug.callback`; it does not change the result or the
      compilation into one program. In a program sharded over several devices it may be
      called once per device.

  Returns:
    (B, H, W, C) float32 samples x̂0 (clipped when `clip_denoised`).
  """
  if sampler not in SAMPLERS:
    raise ValueError(f"sampler {sampler!r} is unknown; use one of {SAMPLERS}")
  if label_mode not in LABEL_MODES:
    raise ValueError(f"label_mode {label_mode!r} is unknown; use one of {LABEL_MODES}")
  guidance_scale = float(guidance_scale)
  if not guidance_scale >= 1.0:
    raise ValueError(f"guidance_scale must be >= 1 (1 disables guidance), got {guidance_scale}")
  dynamic_threshold = float(dynamic_threshold)
  if not 0.0 <= dynamic_threshold <= 1.0:
    raise ValueError(f"dynamic_threshold must be a quantile in [0, 1] (0: static clip), "
                     f"got {dynamic_threshold}")
  extrapolation = float(extrapolation)
  if not extrapolation >= 0.0:
    raise ValueError(f"extrapolation must be >= 0, got {extrapolation}")
  eta = float(eta)
  if not eta >= 0.0:
    raise ValueError(f"eta must be >= 0, got {eta}")
  cond = jnp.asarray(cond, jnp.float32)
  if cond.ndim != 4:
    raise ValueError(f"cond must be (B, H, W, L), got shape {cond.shape}")
  k_labels = ld._check_num_label_channels(num_label_channels, cond.shape[-1])
  b, h, w, _ = cond.shape
  shape = (b, h, w, image_channels)
  n = diffusion.num_timesteps
  if start_index is None:
    start_index = n - 1
  if isinstance(start_index, bool) or int(start_index) != start_index \
      or not 0 <= int(start_index) < n:
    raise ValueError(f"start_index must be an int in 0..{n - 1} (respaced), got {start_index!r}")
  start_index = int(start_index)
  if start_index != n - 1 and x_init is None:
    raise ValueError("start_index needs x_init (the noisy image at that respaced index)")
  if (known is None) != (mask is None):
    raise ValueError("known and mask must be given together")
  if known is not None:
    known = jnp.asarray(known, jnp.float32)
    if known.shape != shape:
      raise ValueError(f"known must have shape {shape}, got {known.shape}")
    mask = jnp.asarray(mask, jnp.float32)
    if mask.ndim == 3:
      mask = mask[..., None]
    if mask.shape not in ((b, h, w, 1), shape):
      raise ValueError(f"mask must have shape {(b, h, w, 1)} or {(b, h, w)}, got {mask.shape}")

  schedule = label_schedule.on_chain(diffusion.timestep_map)
  k_x, k_label, k_noise, k_known = jax.random.split(key, 4)
  if x_init is None:
    x = jax.random.normal(k_x, shape, jnp.float32)
  else:
    x = jnp.asarray(x_init, jnp.float32)
    if x.shape != shape:
      raise ValueError(f"x_init must have shape {shape}, got {x.shape}")
  u_coupled = jax.random.uniform(k_label, (b, h, w), jnp.float32)

  update = SAMPLER_UPDATES[sampler](diffusion, eta)

  total = start_index + 1
  indices = jnp.arange(start_index, -1, -1, dtype=jnp.int32)

  def step(carry, inputs):
    x, prev, has_prev = carry
    i, k = inputs
    t = jnp.full((b,), k, jnp.int32)
    t_orig = diffusion.original_timesteps(t)
    if known is not None:
      z = jax.random.normal(jax.random.fold_in(k_known, k), shape, jnp.float32)
      x = mask * x + (1 - mask) * diffusion.q_sample(known, t, z)
    u = u_coupled if label_mode == "coupled" else jax.random.uniform(
        jax.random.fold_in(k_label, k), (b, h, w), jnp.float32)
    c = ld.diffuse_condition(cond, t_orig, None, schedule, k_labels, u=u)
    out = guided_model_output(model_apply, x, t_orig, c, guidance_scale, image_channels)
    pm = diffusion.p_mean_variance(
        out, x, t, clip=clip_denoised, dynamic_threshold=dynamic_threshold,
        extrapolation=extrapolation, prev_pred_xstart=prev, has_prev=has_prev)
    z = jax.random.normal(jax.random.fold_in(k_noise, k), shape, jnp.float32)
    nonzero = (k != 0).astype(jnp.float32)
    x_new = update(x, t, k, pm, z, nonzero)
    if progress is not None:
      jax.debug.callback(functools.partial(_report, progress), i + 1, total)
    return (x_new, pm["pred_xstart_unclipped"], jnp.array(True)), None

  carry0 = (x, jnp.zeros(shape, jnp.float32), jnp.array(False))
  (x, _, _), _ = jax.lax.scan(step, carry0, (jnp.arange(total, dtype=jnp.int32), indices))
  if known is not None:
    x = mask * x + (1 - mask) * known
  return x


def _report(progress, step, total):
  progress(int(step), int(total))
