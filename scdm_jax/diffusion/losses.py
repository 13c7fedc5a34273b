"""The SCDM training loss (scdm-method.md §4.1-4.2)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

from scdm_jax.diffusion import label_diffusion as ld
from scdm_jax.diffusion.gaussian import GaussianDiffusion


def scdm_loss(model_apply: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
              diffusion: GaussianDiffusion, label_schedule: ld.LabelSchedule,
              batch: Mapping[str, jax.Array], key, *, drop_rate: float,
              num_label_channels: int | None = None) -> tuple[jax.Array, dict]:
  """One SCDM training loss: CFG drop, t, image noise, label diffusion, hybrid loss.

  Steps (§4.2): the whole conditioning [label | edge] of a sample is zeroed with
  probability `drop_rate` *before* label diffusion; t ~ U{0..N-1} on the training chain
  `diffusion`; x_t = q_sample(x0, t, eps); the label is diffused at the *same* original
  timestep (edge untouched); the network sees (x_t, t_orig, cond_t); hybrid loss
  (eps MSE + VB in bits/dim with the mean held fixed).

  Args:
    model_apply: `(x_t, t_orig (B,) int32, cond (B,H,W,L)) -> (B,H,W,6)` (or 3 channels).
    diffusion: the training chain (normally not respaced).
    label_schedule: the label schedule.
    batch: {"image": (B,H,W,3) in [-1, 1], "label": (B,H,W,K) one-hot or all-zero, or
      (B,H,W) integer class ids with -1 for the all-zero unknown state (one-hot here, on
      the device; needs num_label_channels), optional "edge": (B,H,W,1)}.
    key: PRNG key (split into CFG drop, t, image noise and label mask streams).
    drop_rate: classifier-free-guidance drop probability per sample (0.2 in the paper).
    num_label_channels: K; defaults to batch["label"].shape[-1].

  Returns:
    (mean loss, aux) with aux = {"loss", "mse", "vb" (B,) per example, "t" (B,) respaced
    indices, "t_orig" (B,), "dropped" (B,) bool, "loss_mean", "mse_mean", "vb_mean"}.
  """
  x0 = jnp.asarray(batch["image"], jnp.float32)
  label = jnp.asarray(batch["label"])
  if jnp.issubdtype(label.dtype, jnp.integer):
    if num_label_channels is None:
      raise ValueError("batch['label'] holds class ids: pass num_label_channels (K).")
    label = ld.one_hot(label, int(num_label_channels))  # -1 -> zeros
  label = label.astype(jnp.float32)
  k = label.shape[-1] if num_label_channels is None else int(num_label_channels)
  if k != label.shape[-1]:
    raise ValueError(f"num_label_channels={k} but batch['label'] has {label.shape[-1]} channels")
  cond = label
  if batch.get("edge") is not None:
    cond = jnp.concatenate([label, jnp.asarray(batch["edge"], jnp.float32)], axis=-1)
  b = x0.shape[0]
  k_drop, k_t, k_noise, k_u = jax.random.split(key, 4)
  keep = ld.cfg_keep(k_drop, drop_rate, b)  # the same draw as ld.cfg_drop(cond, k_drop, ...)
  cond = cond * keep.astype(cond.dtype)[:, None, None, None]
  dropped = ~keep
  t = jax.random.randint(k_t, (b,), 0, diffusion.num_timesteps, dtype=jnp.int32)
  t_orig = diffusion.original_timesteps(t)
  noise = jax.random.normal(k_noise, x0.shape, jnp.float32)
  x_t = diffusion.q_sample(x0, t, noise)
  schedule = label_schedule.on_chain(diffusion.timestep_map)
  cond_t = ld.diffuse_condition(cond, t_orig, k_u, schedule, k)
  out = model_apply(x_t, t_orig, cond_t)
  terms = diffusion.training_losses(out, x0, x_t, t, noise)
  loss = jnp.mean(terms["loss"])
  aux = dict(loss=terms["loss"], mse=terms["mse"], vb=terms["vb"], t=t, t_orig=t_orig,
             dropped=dropped, loss_mean=loss, mse_mean=jnp.mean(terms["mse"]),
             vb_mean=jnp.mean(terms["vb"]))
  return loss, aux
