"""The Paint-by-Example train step: epsilon-MSE on the latents, AdamW on the trainable part.

The model is `PbEModel` (UNet, VAE, exemplar encoder). Trainable (`TRAINABLE`): the whole
UNet and, of the encoder, the mapper, final LayerNorm, proj_out and uncond_vector. Frozen:
the VAE and the CLIP tower (`image_encoder.model`). The frozen part is a separate,
non-donated input of the step: it gets no gradient and no optimizer state.

Loss (spec B.6, the released recipe): z0 = scaling_factor x VAE posterior sample of the
target, masked-image latents likewise, the keep mask (1 = keep) resized to the latents,
t ~ U{0..T-1}, z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps, context = encoder(reference),
replaced by uncond_vector with probability `uncond_prob` per example; the UNet sees
concat(z_t, masked latents, mask) and the loss is mean((eps_pred - eps)^2).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from scdm_jax import compile_options
from scdm_jax import sharding
from scdm_jax.training import accumulate

MASK_RESIZES = ("nearest", "bilinear")


class PbEModel(nnx.Module):
  """The three Paint-by-Example modules in one graph (names: unet, vae, image_encoder)."""

  def __init__(self, unet, vae, image_encoder):
    self.unet, self.vae, self.image_encoder = unet, vae, image_encoder


def _is_trainable(path, value) -> bool:
  if not isinstance(value, nnx.Param):
    return False
  top = str(path[0])
  # The encoder's CLIP tower is `image_encoder.model`; everything after it trains.
  return top == "unet" or (top == "image_encoder" and str(path[1]) != "model")


TRAINABLE = _is_trainable


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class PbETrainState:
  """Trainable params, their AdamW state, the update count and the base PRNG key data."""
  params: Any
  opt: Any
  step: Any
  rng: Any


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Static loss settings."""
  scaling_factor: float
  uncond_prob: float = 0.2
  mask_resize: str = "nearest"


def split_model(model: PbEModel):
  """(graphdef, trainable nnx.State, frozen nnx.State); refuses non-Param state."""
  graphdef, trainable, frozen = nnx.split(model, TRAINABLE, nnx.Param)
  return graphdef, trainable, frozen


def resize_mask(keep, size: tuple[int, int], method: str):
  """(B, H, W, 1) keep mask -> (B, h, w, 1) at the latent size."""
  if method not in MASK_RESIZES:
    raise ValueError(f"paint_train.mask_resize={method!r}: use one of {MASK_RESIZES}")
  b, h, w, c = keep.shape
  if method == "nearest":  # torch interpolate(mode="nearest"): floor of i * H / h
    rows = (jnp.arange(size[0]) * h) // size[0]
    cols = (jnp.arange(size[1]) * w) // size[1]
    return keep[:, rows][:, :, cols]
  return jax.image.resize(keep, (b,) + tuple(size) + (c,), "linear", antialias=False)


def loss_inputs(model: PbEModel, alphas_cumprod: np.ndarray, batch: dict, key,
                cfg: LossConfig) -> dict[str, jax.Array]:
  """The UNet's inputs and target: dict(z_t, masked_latents, mask, t, context, noise, drop)."""
  b = batch["image"].shape[0]
  k_post, k_mpost, k_t, k_noise, k_drop = jax.random.split(key, 5)
  sf = cfg.scaling_factor

  def latents(x, k):
    mean, std = model.vae.encode(x)
    return sf * (mean + std * jax.random.normal(k, mean.shape, mean.dtype))

  z0 = jax.lax.stop_gradient(latents(batch["image"], k_post))
  m_lat = jax.lax.stop_gradient(latents(batch["masked_image"], k_mpost))
  mask = resize_mask(batch["keep_mask"], z0.shape[1:3], cfg.mask_resize).astype(z0.dtype)
  abar = jnp.asarray(alphas_cumprod, jnp.float32)
  t = jax.random.randint(k_t, (b,), 0, abar.shape[0])
  noise = jax.random.normal(k_noise, z0.shape, jnp.float32)
  a = abar[t][:, None, None, None]
  z_t = jnp.sqrt(a) * z0 + jnp.sqrt(1.0 - a) * noise
  context = model.image_encoder(batch["reference"])
  drop = jax.random.uniform(k_drop, (b,)) < cfg.uncond_prob
  context = jnp.where(drop[:, None, None], model.image_encoder.uncond_embeddings(b), context)
  return {"z_t": z_t, "masked_latents": m_lat, "mask": mask, "t": t, "context": context,
          "noise": noise, "drop": drop}


def pbe_loss(model: PbEModel, alphas_cumprod: np.ndarray, batch: dict, key,
             cfg: LossConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean epsilon-MSE over the batch (see the module docstring); returns (loss, aux)."""
  x = loss_inputs(model, alphas_cumprod, batch, key, cfg)
  eps = model.unet(jnp.concatenate([x["z_t"], x["masked_latents"], x["mask"]], -1), x["t"],
                   x["context"])
  loss = jnp.mean(jnp.square(eps.astype(jnp.float32) - x["noise"]))
  return loss, {"loss": loss, "mse": loss,
                "uncond_frac": jnp.mean(x["drop"].astype(jnp.float32))}


def make_train_step(graphdef, tx: optax.GradientTransformation, lr_fn,
                    alphas_cumprod: np.ndarray, cfg: LossConfig, accum: int = 1,
                    batch_sharding=None):
  """`train_step(state, frozen, batch) -> (state, metrics)` (not yet jitted).

  `accum` > 1 averages the gradient of that many micro-batches (`training/accumulate.py`;
  `batch_sharding` keeps each one spread over the devices).
  """

  def loss_fn(params, frozen, batch, key):
    model = nnx.merge(graphdef, params, frozen)
    return pbe_loss(model, alphas_cumprod, batch, key, cfg)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  _terms_and_grads = lambda out: (out[0][1], out[1])  # ((loss, terms), grads)

  def train_step(st: PbETrainState, frozen, batch):
    key = jax.random.fold_in(jax.random.wrap_key_data(st.rng), st.step)
    grad_of = lambda mb, key_: _terms_and_grads(grad_fn(st.params, frozen, mb, key_))
    terms, grads = accumulate.mean_over_micro_batches(grad_of, batch, key, accum,
                                                      batch_sharding)
    grad_norm = optax.tree.norm(grads)
    updates, new_opt = tx.update(grads, st.opt, st.params)
    new_params = optax.apply_updates(st.params, updates)
    param_norm = optax.tree.norm(new_params)
    # Refuse the update if the loss, the gradient or the updated params are not finite.
    finite = jnp.isfinite(terms["loss"]) & jnp.isfinite(grad_norm) & jnp.isfinite(param_norm)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = PbETrainState(params=keep(new_params, st.params), opt=keep(new_opt, st.opt),
                              step=jnp.where(finite, st.step + 1, st.step), rng=st.rng)
    metrics = dict(terms, grad_norm=grad_norm, param_norm=param_norm, lr=lr_fn(st.step),
                   finite=finite.astype(jnp.float32))
    return new_state, metrics

  return train_step


def init_state(params, tx: optax.GradientTransformation, seed: int) -> PbETrainState:
  """The state at step 0 for `params` (optimizer state of the trainable params only)."""
  return PbETrainState(params=params, opt=tx.init(params), step=jnp.zeros((), jnp.int32),
                       rng=jax.random.key_data(jax.random.key(seed)))


def state_shardings(mesh, abstract: PbETrainState, fsdp_min: int) -> PbETrainState:
  return PbETrainState(params=sharding.state_shardings(mesh, abstract.params, fsdp_min),
                       opt=sharding.state_shardings(mesh, abstract.opt, fsdp_min),
                       step=sharding.replicated(mesh), rng=sharding.replicated(mesh))


def batch_spec(b: int, image_size: int, encoder_size: int, bsh) -> dict[str, Any]:
  """Abstract global batch of `pbe_triplets.create_triplet_dataset` (the keys used)."""
  s, e = image_size, encoder_size
  sds = lambda shape: jax.ShapeDtypeStruct(shape, jnp.float32, sharding=bsh)
  return {"image": sds((b, s, s, 3)), "masked_image": sds((b, s, s, 3)),
          "keep_mask": sds((b, s, s, 1)), "reference": sds((b, e, e, 3))}


def compile_train_step(step_fn, mesh, shardings: PbETrainState, frozen_shardings,
                       abstract: PbETrainState, abstract_frozen, batch: dict):
  """Jits `step_fn` (state donated) and compiles it for `batch`'s global shapes."""
  with_sh = lambda a, s: jax.tree.map(
      lambda x, y: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=y), a, s)
  bsh = sharding.batch_sharding(mesh)
  jitted = jax.jit(step_fn, in_shardings=(shardings, frozen_shardings, bsh),
                   out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=(0,))
  t0 = time.time()
  compiled = jitted.lower(with_sh(abstract, shardings), with_sh(abstract_frozen, frozen_shardings),
                          batch).compile(compile_options.compiler_options())
  logging.info("Compiled the Paint-by-Example train step in %.1f s (global batch %d).",
               time.time() - t0, batch["image"].shape[0])
  return compiled
