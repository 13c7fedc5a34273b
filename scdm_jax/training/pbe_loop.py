"""`--mode train` with `config.task="paint_by_example"`: train or resume Paint by Example.

The weights start from `config.paint_train.init` (a diffusers folder, an original
checkpoint or an export, read by `PaintPipeline.load`); with `paint_train.sd_unet` its UNet
is replaced by a Stable Diffusion v1 UNet whose conv_in is widened 4 -> 9 with zero slices
(step 0 computes the base model). Only the trainable part (`pbe_step.TRAINABLE`) is
checkpointed with its AdamW state, update count, RNG and data position; the frozen VAE and
CLIP tower are re-read from the init source on resume (the meta records it). Sharding, the
checkpointer, preemption, the non-finite and sanity guard, logging and the progress bar
are the SCDM trainer's (`modes/train.py`). At the end the trained pipeline is written as a paint export.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any

from absl import logging
from clu import metric_writers
import jax
import ml_collections
import numpy as np
import optax
from flax import nnx

from scdm_jax import checkpointing
from scdm_jax import sharding
from scdm_jax import state as state_lib
from scdm_jax.data import pbe_augment
from scdm_jax.data import pbe_boxes
from scdm_jax.data import pbe_masks
from scdm_jax.data import pbe_triplets
from scdm_jax.diffusion import ldm_schedulers
from scdm_jax.inference.paint import PaintPipeline
from scdm_jax.io import atomic
from scdm_jax.io import fileio
from scdm_jax.io import progress
from scdm_jax.io import weights
from scdm_jax.models import pbe_import
from scdm_jax.models import pbe_init
from scdm_jax.models.sd_unet import SDUNetConfig
from scdm_jax.training import guard
from scdm_jax.training import pbe_scratch
from scdm_jax.training import pbe_step
from scdm_jax.training import preemption

_BATCH_KEYS = ("image", "masked_image", "keep_mask", "reference")
NO_AUGMENT = pbe_augment.AugmentConfig(flip_prob=0.0, rotate_prob=0.0, blur_prob=0.0,
                                       elastic_prob=0.0)


def load_sd_unet(folder: str, want: SDUNetConfig, **kwargs):
  """A diffusers SD-v1 `unet/` folder (4 input channels) widened to 9, new slices zero.

  Raises:
    FileNotFoundError / ValueError: (one line) no such folder, or an architecture other
      than the init pipeline's UNet (apart from in_channels).
  """
  cfg_path = os.path.join(folder, "config.json")
  if not os.path.isfile(cfg_path):
    raise FileNotFoundError(f"config.paint_train.sd_unet={folder!r}: no config.json (expected "
                            "a diffusers UNet2DConditionModel folder)")
  with open(cfg_path) as f:
    cfg = SDUNetConfig.from_diffusers(json.load(f))
  if cfg.in_channels != 4 or dataclasses.replace(cfg, in_channels=want.in_channels) != want:
    raise ValueError(f"config.paint_train.sd_unet={folder!r}: in_channels={cfg.in_channels} or "
                     "its architecture differs from config.paint_train.init's UNet (need a "
                     "4-channel SD-v1 UNet of the same shape)")
  names = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
  path = next((os.path.join(folder, n) for n in names
               if os.path.isfile(os.path.join(folder, n))), None)
  if path is None:
    raise FileNotFoundError(f"config.paint_train.sd_unet={folder!r}: no {' / '.join(names)}")
  base = pbe_import.unet_from_state_dict(weights.read_tensors(path), cfg, source=path, **kwargs)
  return pbe_init.widen_conv_in(base)


def init_source(config: ml_collections.ConfigDict, workdir: str, mesh) -> str:
  """The init path: `paint_train.init`, or with `scratch` <workdir>/init (built once)."""
  pt = config.paint_train
  if pt.context_tokens not in ("pooled", "all"):
    raise ValueError(f"config.paint_train.context_tokens={pt.context_tokens!r}: use pooled "
                     "or all")
  if not pt.scratch:
    if pt.context_tokens != "pooled":
      raise ValueError("config.paint_train.context_tokens=all needs paint_train.scratch=True "
                       "(a loaded encoder keeps its own token choice)")
    return pt.init
  if pt.init or pt.sd_unet:
    raise ValueError("config.paint_train.scratch=True builds its own init: leave "
                     "paint_train.init and paint_train.sd_unet empty (or set scratch=False)")
  path = os.path.join(workdir, "init")
  if not os.path.isdir(os.path.join(path, "meta")):
    pipe, stats = pbe_scratch.build_scratch_pipeline(config, mesh)
    pipe.save_export(path, source=f"paint_train.scratch (tower pretraining: "
                     f"{json.dumps(stats)})")
    atomic.write_json(os.path.join(workdir, "encoder_pretraining.json"), stats, indent=2)
  return path


# paint_train fields a resume must not change: they shape the model, its init (a scratch
# init is built once in the workdir and reused) or what the UNet was trained to see.
RESUME_FIELDS = ("image_size", "scratch", "scratch_unet_channels", "scratch_encoder_width",
                 "scratch_encoder_layers", "scratch_context_dim", "encoder_size",
                 "pretrain_encoder_steps", "pretrain_encoder_lr", "pretrain_encoder_images",
                 "context_tokens")


def resume_fields(config: ml_collections.ConfigDict) -> dict[str, Any]:
  pt = config.paint_train
  return {k: list(pt[k]) if isinstance(pt[k], (tuple, list)) else pt[k] for k in RESUME_FIELDS}


def check_resume_meta(old_meta: dict[str, Any], meta: dict[str, Any], where: str) -> None:
  """Refuses (one line) to resume a checkpoint made from another init or paint_train setup.

  The PbE counterpart of `recipe.check_resume_meta`; runs before any array is read.
  """
  how = " Resume with the checkpoint's value or use a new --workdir."
  for key in ("init", "sd_unet"):
    if old_meta.get(key, meta[key]) != meta[key]:
      raise ValueError(f"config.paint_train.{key}={meta[key]!r}, but the checkpoints in "
                       f"{where} were trained from {old_meta[key]!r};" + how)
  old = old_meta.get("paint_train") or {}
  for key, want in meta["paint_train"].items():
    if key in old and old[key] != want:
      raise ValueError(f"{where}: refusing to resume: paint_train.{key} is {old[key]!r} in "
                       f"the checkpoint but {want!r} in the config." + how)


def load_model(config: ml_collections.ConfigDict, mesh, init: str | None = None
               ) -> tuple[PaintPipeline, Any]:
  """The init pipeline and the (possibly SD-initialised) `PbEModel`."""
  pt = config.paint_train
  init = pt.init if init is None else init
  if not init:
    raise ValueError("config.task=paint_by_example needs config.paint_train.init (a Paint by "
                     "Example diffusers folder, model.ckpt or export: VAE, CLIP and configs) "
                     "or paint_train.scratch=True.")
  pipe = PaintPipeline.load(init, mesh=mesh)
  unet = pipe.unet
  if pt.sd_unet:
    unet = load_sd_unet(pt.sd_unet, pipe.unet_config)
    logging.info("UNet from %s, conv_in widened 4 -> 9 (zero slices).", pt.sd_unet)
  return pipe, pbe_step.PbEModel(unet, pipe.vae, pipe.image_encoder)


def _leaves(tree) -> dict[str, Any]:
  return {f"{i:05d}": x for i, x in enumerate(jax.tree.leaves(tree))}


def to_checkpoint(st: pbe_step.PbETrainState) -> dict[str, Any]:
  # Optimizer state is optax named tuples of nnx.States: stored as numbered leaves.
  return {"params": nnx.to_pure_dict(st.params), "opt": _leaves(st.opt), "step": st.step,
          "rng": st.rng}


def from_checkpoint(tree: dict[str, Any], like: pbe_step.PbETrainState) -> pbe_step.PbETrainState:
  params = jax.tree.map(lambda x: x, like.params)
  nnx.replace_by_pure_dict(params, tree["params"])
  opt = jax.tree.unflatten(jax.tree.structure(like.opt),
                           [tree["opt"][k] for k in sorted(tree["opt"])])
  return pbe_step.PbETrainState(params=params, opt=opt, step=tree["step"], rng=tree["rng"])


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) Paint by Example in `workdir`; returns a small summary."""
  workdir = fileio.absolute(workdir)
  fileio.makedirs(workdir)
  tc, pt = config.train, config.paint_train
  is_main = jax.process_index() == 0
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_main)
  mesh = sharding.make_mesh(config.mesh)
  accum = int(tc.grad_accum)
  per_process_batch, _ = sharding.check_global_batch(int(tc.batch_size), mesh, accum)

  init = init_source(config, workdir, mesh)
  pipe, model = load_model(config, mesh, init)
  graphdef, trainable, frozen = pbe_step.split_model(model)
  tx, lr_fn = state_lib.make_tx(config.optim), state_lib.lr_schedule(config.optim)
  fsdp_min = int(config.mesh.fsdp_min_size)
  abstract = jax.eval_shape(lambda p: pbe_step.init_state(p, tx, int(tc.seed)), trainable)
  shardings = pbe_step.state_shardings(mesh, abstract, fsdp_min)
  frozen_sh = sharding.state_shardings(mesh, frozen, fsdp_min)
  frozen = sharding.device_put_tree(frozen, frozen_sh)
  count = lambda t: sum(math.prod(x.shape) for x in jax.tree.leaves(t))
  logging.info("Paint by Example: %.2f M trainable, %.2f M frozen parameters.",
               count(trainable) / 1e6, count(frozen) / 1e6)
  meta = {"task": "paint_by_example", "init": init, "sd_unet": pt.sd_unet,
          "paint_train": resume_fields(config),
          "config": config.to_json_best_effort()}

  ckpt = checkpointing.TrainCheckpointer(
      os.path.join(workdir, "checkpoints"), keep_last=int(tc.keep_last),
      keep_every=int(tc.keep_every), async_save=bool(tc.async_checkpoint))
  latest = ckpt.latest_step()
  data_pos = 0
  if latest is not None:
    target = to_checkpoint(state_lib.abstract_with_shardings(abstract, shardings))
    target["data_pos"] = np.zeros((), np.int64)
    # The frozen parts are re-read from the init source: it must be the one trained with.
    check_resume_meta(ckpt.restore_meta(latest), meta, ckpt.directory)
    tree, _ = ckpt.restore(latest, target)
    data_pos = int(tree.pop("data_pos"))
    st = from_checkpoint(tree, abstract)
    logging.info("resumed from step %d (data position %d) in %s", latest, data_pos,
                 ckpt.directory)
  else:
    st = jax.jit(lambda p: pbe_step.init_state(p, tx, int(tc.seed)),
                 out_shardings=shardings)(trainable)
    logging.info("Starting from %s (no checkpoint in %s).", pt.sd_unet or init,
                 ckpt.directory)
  start_step = int(jax.device_get(st.step))
  sched = ldm_schedulers.SchedulerConfig.from_dict(pipe.scheduler_config, "ddim")
  loss_cfg = pbe_step.LossConfig(scaling_factor=pipe.vae_config.scaling_factor,
                                 uncond_prob=float(pt.uncond_prob),
                                 mask_resize=str(pt.mask_resize))
  pbe_step.resize_mask(np.zeros((1, 8, 8, 1), np.float32), (1, 1), loss_cfg.mask_resize)
  step_fn = pbe_step.make_train_step(graphdef, tx, lr_fn, ldm_schedulers.alphas_cumprod(sched),
                                     loss_cfg, accum, sharding.batch_sharding(mesh))
  s, e = int(pt.image_size), int(pipe.clip_config.image_size)
  batch_abs = pbe_step.batch_spec(per_process_batch * jax.process_count(), s, e,
                                  sharding.batch_sharding(mesh))
  compiled = pbe_step.compile_train_step(step_fn, mesh, shardings, frozen_sh, abstract, frozen,
                                         batch_abs)
  total = int(tc.total_steps)
  summary: dict[str, Any] = {"start_step": start_step, "step": start_step}
  if start_step >= total:
    ckpt.close()
    writer.close()
    return summary

  records = pbe_boxes.dataset_boxes(config.data, config.data.train_split)
  it = pbe_triplets.create_triplet_dataset(
      records, image_size=s, encoder_size=e, batch_size=per_process_batch, seed=int(tc.seed),
      start_step=data_pos, process_index=jax.process_index(),
      process_count=jax.process_count(), mean=pipe.preprocess.image_mean,
      std=pipe.preprocess.image_std, mask=pbe_masks.MaskConfig(bezier_prob=float(pt.bezier_prob)),
      augment=pbe_augment.AugmentConfig() if pt.augment else NO_AUGMENT)

  def save(step_, wait=False):
    tree = to_checkpoint(st)
    tree["data_pos"] = np.int64(data_pos)
    ckpt.save(step_, tree, dict(meta, step=step_, data_pos=data_pos), wait=wait)

  preempt = preemption.Preemption(int(tc.preemption_check_every)).install()
  bar = progress.ProgressBar(total, "train", initial=start_step, unit="steps", enabled=is_main)
  step, pending, window = start_step, None, []
  t_window, n_window = time.time(), 0
  sanity = guard.SanityGuard(float(jax.device_get(optax.tree.norm(st.params))))
  drain = lambda p: guard.drain(p, ckpt, sanity)
  try:
    while step < total:
      local = next(it)
      batch = sharding.to_global({k: local[k] for k in _BATCH_KEYS}, mesh)
      st, metrics = compiled(st, frozen, batch)
      data_pos += 1
      step += 1
      if pending is not None:  # check the previous step while this one runs
        window.append(drain(pending)[1])
      pending = (step, metrics)
      n_window += 1
      bar.update(step, postfix=f"loss {window[-1]['loss']:.4f}" if window else "")
      last = step == total
      if step % int(tc.log_every) == 0 or last:
        window.append(drain(pending)[1])
        pending = None
        dt = time.time() - t_window
        scalars = {f"train_{k}": float(np.mean([w[k] for w in window]))
                   for k in ("loss", "grad_norm", "param_norm", "uncond_frac")}
        scalars.update(train_lr=window[-1]["lr"], steps_per_sec=n_window / dt,
                       images_per_sec=n_window * int(tc.batch_size) / dt)
        writer.write_scalars(step, scalars)
        summary.update(scalars)
        window, t_window, n_window = [], time.time(), 0
      preempted = preempt.reached(step)
      if step % int(tc.checkpoint_every) == 0 or last or preempted:
        if pending is not None:
          drain(pending)  # never checkpoint a state that followed a non-finite step
          pending = None
        save(step, wait=preempted or last)
      if preempted:
        logging.warning("Preempted: saved step %d, exiting.", step)
        summary["preempted"] = True
        break
  finally:
    bar.close()
    preempt.uninstall()
    it.close()
    ckpt.close()
    writer.flush()
    writer.close()
  summary["step"] = step
  summary["checkpoint_steps"] = ckpt.all_steps()
  if step == total:
    summary["export"] = _export(pipe, graphdef, st.params, frozen, pt.export_dir
                                or os.path.join(workdir, "export"), step)
  return summary


def _export(pipe: PaintPipeline, graphdef, params, frozen, directory: str, step: int) -> str:
  """Writes the trained pipeline as a `--mode paint` export."""
  model = nnx.merge(graphdef, params, frozen)
  out = PaintPipeline(model.unet, model.vae, model.image_encoder,
                      unet_config=pipe.unet_config, vae_config=pipe.vae_config,
                      clip_config=pipe.clip_config, scheduler_config=pipe.scheduler_config,
                      preprocess=pipe.preprocess, mesh=pipe.mesh, configs=pipe.configs,
                      source=f"--mode train (paint_by_example) step {step}")
  return out.save_export(directory)


def export_latest(config: ml_collections.ConfigDict, workdir: str,
                  directory: str | None = None) -> str:
  """Writes the newest checkpoint of a Paint-by-Example workdir as a `--mode paint` export.

  For a run that stopped before total_steps (preempted, or cut short); a finished run
  already wrote one. Raises FileNotFoundError (one line) when there is no checkpoint.
  """
  workdir = fileio.absolute(workdir)
  ckdir = os.path.join(workdir, "checkpoints")
  if not fileio.isdir(ckdir):
    raise FileNotFoundError(f"--mode export: {ckdir} does not exist; train first.")
  mesh = sharding.make_mesh(config.mesh)
  init = init_source(config, workdir, mesh)
  pipe, model = load_model(config, mesh, init)
  graphdef, trainable, frozen = pbe_step.split_model(model)
  tx = state_lib.make_tx(config.optim)
  abstract = jax.eval_shape(lambda p: pbe_step.init_state(p, tx, 0), trainable)
  shardings = pbe_step.state_shardings(mesh, abstract, int(config.mesh.fsdp_min_size))
  ckpt = checkpointing.TrainCheckpointer(ckdir, async_save=False)
  try:
    step = ckpt.latest_step()
    if step is None:
      raise FileNotFoundError(f"--mode export: no checkpoint in {ckdir}; train first.")
    meta = {"init": init, "sd_unet": config.paint_train.sd_unet,
            "paint_train": resume_fields(config)}
    check_resume_meta(ckpt.restore_meta(step), meta, ckdir)
    target = to_checkpoint(state_lib.abstract_with_shardings(abstract, shardings))
    target["data_pos"] = np.zeros((), np.int64)
    tree, _ = ckpt.restore(step, target)
  finally:
    ckpt.close()
  tree.pop("data_pos")
  st = from_checkpoint(tree, abstract)
  frozen = sharding.device_put_tree(frozen, sharding.state_shardings(
      mesh, frozen, int(config.mesh.fsdp_min_size)))
  return _export(pipe, graphdef, st.params, frozen,
                 directory or config.paint_train.export_dir or os.path.join(workdir, "export"),
                 step)
