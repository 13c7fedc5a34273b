"""A Paint-by-Example pipeline from scratch (the small CPU demo), its exemplar tower pretrained.

With `config.paint_train.scratch`, `--mode train` builds the init pipeline itself instead of
reading one: a tiny SD-shaped UNet at pixel resolution, the identity "autoencoder"
(`VAEConfig` with no blocks: diffusion in pixel space), and a CLIP-shaped tower at tiny
width. The real recipe freezes a CLIP tower that already carries semantics; here the tower
gets them first by learning to predict the class histogram of procedural crops (object
boxes and random squares; soft-label cross-entropy through a linear head on the pooled
token). The head is dropped, the tower is frozen for Paint-by-Example training, and the
pipeline is written as an export that the training then uses as its init (re-read on
resume, like any init).
"""

from __future__ import annotations

import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from PIL import Image

from scdm_jax.data import exemplar
from scdm_jax.data import palettes
from scdm_jax.data import pbe_boxes
from scdm_jax.data import pbe_triplets
from scdm_jax.data import procedural
from scdm_jax.inference.paint import PaintPipeline, parse_configs
from scdm_jax.models import sd_unet as sd
from scdm_jax.models.autoencoder_kl import AutoencoderKL
from scdm_jax.models.clip_vision import CLIPVisionTower
from scdm_jax.models.pbe_encoder import PaintByExampleImageEncoder
from scdm_jax.models.sd_unet import SDUNet

NUM_CLASSES = procedural.NUM_CLASSES
PRETRAIN_BATCH = 64
PRETRAIN_SPLIT = "encoder_train"  # procedural split of its own (disjoint from train/validation)


def scratch_configs(pt: ml_collections.ConfigDict) -> dict[str, dict[str, Any]]:
  """The five config dicts (keyed as `paint.CONFIG_FILES`) of the scratch pipeline."""
  ch = [int(c) for c in pt.scratch_unet_channels]
  width, proj, e = int(pt.scratch_encoder_width), int(pt.scratch_context_dim), int(
      pt.encoder_size)
  # Cross-attention below full resolution only: attention over 32x32 pixels is the cost.
  down = ["DownBlock2D"] + ["CrossAttnDownBlock2D"] * (len(ch) - 1)
  unet = {"_class_name": "UNet2DConditionModel", "in_channels": 7, "out_channels": 3,
          "block_out_channels": ch, "down_block_types": down,
          "up_block_types": [b.replace("Down", "Up") for b in reversed(down)],
          "layers_per_block": 1, "attention_head_dim": 8, "cross_attention_dim": proj,
          "norm_num_groups": 16, "sample_size": int(pt.image_size)}
  vae = {"_class_name": "AutoencoderKL", "block_out_channels": [], "down_block_types": [],
         "up_block_types": [], "in_channels": 3, "out_channels": 3, "latent_channels": 3,
         "scaling_factor": 1.0}
  enc = {"model_type": "clip_vision_model", "hidden_size": width,
         "intermediate_size": 4 * width, "num_hidden_layers": int(pt.scratch_encoder_layers),
         "num_attention_heads": 4, "image_size": e, "patch_size": 4, "hidden_act": "gelu",
         "projection_dim": proj, "pbe_context_tokens": str(pt.context_tokens)}
  # Pixel-space DDPM betas (as the SCDM models here), x0 clipped to the image range.
  sched = {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_start": 1e-4,
           "beta_end": 0.02, "beta_schedule": "linear", "clip_sample": True,
           "set_alpha_to_one": False, "steps_offset": 1, "trained_betas": None,
           "skip_prk_steps": True}
  feat = {"crop_size": e, "size": e, "do_center_crop": True, "do_normalize": True,
          "do_resize": True, "resample": 3, "image_mean": list(exemplar.OPENAI_CLIP_MEAN),
          "image_std": list(exemplar.OPENAI_CLIP_STD)}
  return {"unet": unet, "vae": vae, "image_encoder": enc, "scheduler": sched,
          "feature_extractor": feat}


def crop_set(n_images: int, *, image_size: int, encoder_size: int, split: str, seed: int
             ) -> tuple[np.ndarray, np.ndarray]:
  """(pixels (N, E, E, 3) CLIP-normalised, histograms (N, K)) of procedural crops.

  Per image: every object box (the exemplars Paint by Example sees, padded as its
  reference crop) and two random squares of 20-60% of the side (scenes, mixed classes).
  """
  rng = np.random.default_rng([seed, 0xE7C])
  table = palettes.get_class_table("procedural")
  stuff = pbe_boxes.stuff_ids_for(table.names, pbe_boxes.DEFAULT_STUFF["procedural"])
  mean = np.asarray(exemplar.OPENAI_CLIP_MEAN, np.float32)
  std = np.asarray(exemplar.OPENAI_CLIP_STD, np.float32)
  pixels, hists = [], []
  for i in range(n_images):
    ex = procedural.generate(i, size=image_size, seed=seed, split=split)
    boxes = [b for b, _ in pbe_boxes.component_boxes(ex["label"], ex["instance"],
                                                     stuff_ids=stuff)]
    for _ in range(2):
      side = int(rng.integers(int(0.2 * image_size), int(0.6 * image_size) + 1))
      x0, y0 = rng.integers(0, image_size - side + 1, 2)
      boxes.append((int(x0), int(y0), int(x0) + side, int(y0) + side))
    for box in boxes:
      x0, y0, x1, y1 = box
      crop = pbe_triplets.reference_crop(ex["image"], box)
      img = Image.fromarray(np.ascontiguousarray(crop)).resize((encoder_size,) * 2,
                                                               Image.BICUBIC)
      pixels.append((np.asarray(img, np.float32) / 255.0 - mean) / std)
      lab = ex["label"][y0:y1, x0:x1]
      hists.append(np.bincount(lab.ravel(), minlength=NUM_CLASSES)[:NUM_CLASSES] / lab.size)
  return np.stack(pixels).astype(np.float32), np.stack(hists).astype(np.float32)


class _HistogramModel(nnx.Module):
  """The tower with a linear head on its pooled token: class-histogram logits."""

  def __init__(self, tower: CLIPVisionTower, *, rngs: nnx.Rngs):
    self.tower = tower
    self.head = sd.Linear(tower.config.hidden_size, NUM_CLASSES, dtype=jnp.float32,
                          param_dtype=jnp.float32, keys=sd.KeyGen(rngs.params()))

  def __call__(self, x):
    return self.head(self.tower(x)[1])


def _histogram_metrics(logits: np.ndarray, hists: np.ndarray) -> dict[str, float]:
  p = jax.nn.softmax(jnp.asarray(logits), -1)
  return {"total_variation": float(0.5 * jnp.abs(p - hists).sum(-1).mean()),
          "dominant_class_accuracy": float(
              (jnp.argmax(p, -1) == jnp.argmax(jnp.asarray(hists), -1)).mean())}


def pretrain_tower(tower: CLIPVisionTower, pt: ml_collections.ConfigDict, *, image_size: int,
                   seed: int) -> dict[str, Any]:
  """Trains `tower` in place to predict crop class histograms; returns held-out metrics."""
  steps = int(pt.pretrain_encoder_steps)
  e = tower.config.image_size
  t0 = time.time()
  x_train, h_train = crop_set(int(pt.pretrain_encoder_images), image_size=image_size,
                              encoder_size=e, split=PRETRAIN_SPLIT, seed=seed)
  x_val, h_val = crop_set(64, image_size=image_size, encoder_size=e, split="validation",
                          seed=seed)
  model = _HistogramModel(tower, rngs=nnx.Rngs(seed))
  graphdef, params = nnx.split(model, nnx.Param)
  tx = optax.adamw(optax.cosine_decay_schedule(float(pt.pretrain_encoder_lr), max(steps, 1),
                                               alpha=0.1), weight_decay=1e-4)
  opt = tx.init(params)

  @jax.jit
  def step_fn(params, opt, x, h):
    def loss_fn(p):
      logits = nnx.merge(graphdef, p)(x)
      return optax.softmax_cross_entropy(logits, h).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, loss

  predict = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))
  rng = np.random.default_rng([seed, 0x9E7])
  loss = float("nan")
  for step in range(steps):
    idx = rng.integers(0, len(x_train), PRETRAIN_BATCH)
    x = x_train[idx]
    flip = rng.random(len(idx)) < 0.5  # the histogram does not change under a flip
    x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
    params, opt, loss = step_fn(params, opt, jnp.asarray(x), jnp.asarray(h_train[idx]))
    if (step + 1) % 100 == 0:
      logging.info("encoder pretraining step %d/%d loss %.4f", step + 1, steps, float(loss))
  nnx.update(model, params)
  out = {"steps": steps, "train_crops": len(x_train), "final_loss": float(loss),
         "seconds": time.time() - t0, "held_out_crops": len(x_val),
         **_histogram_metrics(np.asarray(predict(params, jnp.asarray(x_val))), h_val)}
  # The majority baseline: the mean training histogram for every crop.
  prior = np.log(np.maximum(h_train.mean(0), 1e-6))[None].repeat(len(h_val), 0)
  out["prior_total_variation"] = _histogram_metrics(prior, h_val)["total_variation"]
  return out


def build_scratch_pipeline(config: ml_collections.ConfigDict, mesh
                           ) -> tuple[PaintPipeline, dict[str, Any]]:
  """A fresh pipeline (random UNet and encoder head, pretrained tower) and the tower's stats."""
  pt = config.paint_train
  configs = scratch_configs(pt)
  unet_cfg, vae_cfg, clip_cfg, sched, pre = parse_configs(configs, "paint_train.scratch")
  seed = int(config.train.seed)
  keys = jax.random.split(jax.random.key(seed), 3)
  unet = SDUNet(unet_cfg, rngs=nnx.Rngs(params=keys[0]))
  vae = AutoencoderKL(vae_cfg, rngs=nnx.Rngs(params=keys[1]))
  enc = PaintByExampleImageEncoder(clip_cfg, context_tokens=str(pt.context_tokens),
                                   rngs=nnx.Rngs(params=keys[2]))
  stats = {}
  if int(pt.pretrain_encoder_steps) > 0:
    stats = pretrain_tower(enc.model, pt, image_size=int(config.data.image_size), seed=seed)
    logging.info("exemplar tower pretrained: %s", stats)
  pipe = PaintPipeline(unet, vae, enc, unet_config=unet_cfg, vae_config=vae_cfg,
                       clip_config=clip_cfg, scheduler_config=sched, preprocess=pre,
                       mesh=mesh, configs=configs, source="paint_train.scratch")
  return pipe, stats
