"""`--mode train`: train or resume in `workdir` (`run(config, workdir)`).

One `jax.jit` program per step, with `NamedSharding`s over the `("data", "fsdp")` mesh of
all devices of all processes (see sharding.py); the state is built directly into its
shardings (state.py) and donated to the step (training/step.py). Each process feeds its
own slice of the global batch (`sharding.to_global`).

Resume: `<workdir>/checkpoints/` is an orbax CheckpointManager (checkpointing.py). On start
the newest readable step's meta is compared with the config (`recipe.check_resume_meta`:
model shape, classes, diffusion, label schedule and psi) before any array is read, and a
mismatch is refused in one line. An unreadable step (missing files, garbage meta, a
truncated data file) is skipped with a warning and moved to `checkpoints_unreadable/`;
the next older step is used. The newest readable step is restored (params, EMA, optimizer, RNG, data position) and the log says
"resumed from step N"; the input pipeline restarts exactly at the saved data position
(`create_dataset(..., start_step=...)`). SIGTERM (preemption) saves a checkpoint at the
current step and returns. A non-finite loss or gradient norm stops the run with
`FloatingPointError` without writing a checkpoint, so the last good one is kept (the step
itself also refuses non-finite updates); so does a finite but insane step (training/guard.py:
grad norm > 1e3 x its running median, or param norm jumping > 100x), so every checkpoint
on disk is sane and the next start resumes from the last sane step.

The label schedule's psi comes from `recipe.resolve_psi`; it is stored in every
checkpoint's meta and in exports, so sampling uses the exact schedule the model was trained
with (and resuming with a different psi is refused).
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

from absl import logging
from clu import metric_writers
from clu import parameter_overview
from clu import periodic_actions
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from scdm_jax import checkpointing
from scdm_jax import recipe
from scdm_jax import sharding
from scdm_jax import state as state_lib
from scdm_jax.data import datasets
from scdm_jax.inference import grid as grid_lib
from scdm_jax.io import fileio
from scdm_jax.io import images as image_io
from scdm_jax.io import progress
from scdm_jax.training import guard
from scdm_jax.training import pbe_loop
from scdm_jax.training import preemption
from scdm_jax.training import step as step_lib
from scdm_jax.training import workdir_lock


def _memory_note(abstract: state_lib.TrainState, mesh) -> str:
  def nbytes(tree):
    return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))
  total = nbytes(abstract.params) + nbytes(abstract.opt) + nbytes(abstract.ema)
  per_dev = total / (mesh.shape["fsdp"] if mesh.shape["fsdp"] > 1 else 1)
  return (f"params+optimizer+EMA {total / 2**30:.2f} GiB in total, about "
          f"{per_dev / 2**30:.2f} GiB per device (upper bound with fsdp={mesh.shape['fsdp']}; "
          "activations come on top: lower train.batch_size per device, raise "
          "train.grad_accum, or set model.remat / model.dtype=bfloat16)")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) in `workdir`; returns a small summary (last step and metrics).

  Holds `<workdir>/train.lock` (training/workdir_lock.py) for the whole run, so a second
  trainer on the same workdir stops with a one-line error.
  """
  if not workdir:
    raise ValueError("--mode train needs --workdir (where checkpoints and logs go).")
  task = config.get("task", "scdm")
  loops = {"scdm": _train, "paint_by_example": pbe_loop.run}
  if task not in loops:
    raise ValueError(f"config.task={task!r} is unknown; use scdm or paint_by_example.")
  workdir = fileio.absolute(workdir)
  if jax.process_index() == 0:  # a read-only or full workdir: one line, before any work
    fileio.check_writable(workdir, "--workdir")
    fileio.check_writable(os.path.join(workdir, "checkpoints"), "--workdir")
  fileio.makedirs(workdir)
  workdir_lock.check_shared_workdir(workdir)
  lock = workdir_lock.WorkdirLock(workdir, float(config.train.lock_stale_minutes))
  if jax.process_index() == 0:
    lock.acquire()
  try:
    return loops[task](config, workdir)
  finally:
    lock.release()


# Minimum of each train count; checkpoint_every=0 saves only at the end and on preemption.
TRAIN_COUNTS = {"total_steps": 1, "batch_size": 1, "grad_accum": 1, "log_every": 1,
                "checkpoint_every": 0, "sample_every": 0, "num_sample_maps": 1,
                "keep_last": 0, "keep_every": 0}


def _train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  tc = config.train
  recipe.check_counts(config, "train", TRAIN_COUNTS)  # before anything is built
  is_main = jax.process_index() == 0
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_main)

  mesh = sharding.make_mesh(config.mesh)
  per_process_batch, _ = sharding.check_global_batch(int(tc.batch_size), mesh,
                                                     int(tc.grad_accum))
  logging.info("Mesh %s over %d devices in %d processes; global batch %d, %d per process.",
               dict(mesh.shape), jax.device_count(), jax.process_count(), tc.batch_size,
               per_process_batch)

  psi = recipe.resolve_psi(config)
  diffusion = recipe.make_diffusion(config)
  label_schedule = recipe.make_label_schedule(config, psi)
  meta = recipe.run_meta(config, psi)

  graphs, abstract = state_lib.graphs_and_abstract(config)
  shardings = state_lib.train_state_shardings(config, mesh, abstract)
  num_params = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract.params))
  logging.info("UNet: %.2f M parameters; %s.", num_params / 1e6, _memory_note(abstract, mesh))

  ckpt = checkpointing.TrainCheckpointer(
      os.path.join(workdir, "checkpoints"), keep_last=int(tc.keep_last),
      keep_every=int(tc.keep_every), async_save=bool(tc.async_checkpoint))
  data_pos = 0
  latest = None
  if ckpt.latest_step() is not None:
    abstract_ckpt = state_lib.abstract_with_shardings(
        state_lib.to_checkpoint(abstract), state_lib.to_checkpoint(shardings))
    abstract_ckpt["data_pos"] = np.zeros((), np.int64)  # host value, restored as numpy

    def check_meta(step_, old_meta):
      # Before orbax reads an array: a changed setup is one line, not a shape error.
      recipe.check_resume_meta(old_meta, config, psi,
                               what=f"resuming {os.path.join(ckpt.directory, str(step_))}")

    try:
      latest, tree, _ = ckpt.restore_newest_readable(abstract_ckpt, check_meta)
    except ValueError:
      ckpt.close()
      raise
    data_pos = int(tree.pop("data_pos"))
    st = state_lib.from_checkpoint(tree, abstract)
    logging.info("resumed from step %d (data position %d) in %s", latest, data_pos,
                 ckpt.directory)
  else:
    _, st, _ = state_lib.create_train_state(config, mesh, int(tc.seed))
    if config.init_from:
      params_pure, init_meta = checkpointing.load_export(config.init_from)
      recipe.check_meta_matches(init_meta, config,
                                what=f"config.init_from={config.init_from!r}")
      params = state_lib.params_from_pure(graphs, params_pure, shardings.params)
      st = state_lib.TrainState(params=params, opt=st.opt,
                                ema=jax.tree.map(lambda p: p.astype(jnp.float32), params),
                                rng=st.rng)
      logging.info("Initialised params and EMA from %s.", config.init_from)
    else:
      logging.info("Starting from scratch (no checkpoint in %s).", ckpt.directory)
  if is_main and latest is None:
    overview = parameter_overview.get_parameter_overview(
        nnx.to_pure_dict(abstract.params), include_stats=False)
    logging.info("Parameter overview:\n%s", overview[:20000])
    writer.write_hparams(recipe.flat_config(config))

  start_step = int(jax.device_get(state_lib.step_of(st)))
  if latest is not None and start_step != latest:
    logging.warning("Checkpoint %d holds optimizer step %d.", latest, start_step)
  total = int(tc.total_steps)
  summary: dict[str, Any] = {"start_step": start_step, "step": start_step}
  if start_step >= total:  # before compiling: a finished run returns at once
    logging.warning("Nothing to do: the checkpoint is at step %d and total_steps is %d; "
                    "raise --config.train.total_steps to train on.", start_step, total)
    ckpt.close()
    writer.close()
    return summary
  compiled, _ = step_lib.compile_train_step(config, graphs, diffusion, label_schedule, mesh,
                                            shardings, abstract, per_process_batch)

  it = datasets.create_dataset(
      config.data, config.data.train_split, batch_size=per_process_batch,
      train=True, seed=int(tc.seed), process_index=jax.process_index(),
      process_count=jax.process_count(), start_step=data_pos)

  grid_fn = None
  if tc.sample_every and tc.sample_every > 0:
    grid_fn = grid_lib.TrainingGrid(config, graphs, mesh, shardings.params, label_schedule)

  def save(step_, wait=False):
    tree = state_lib.to_checkpoint(st)
    tree["data_pos"] = np.int64(data_pos)
    ckpt.save(step_, tree, dict(meta, step=step_, data_pos=data_pos), wait=wait)

  preempt = preemption.Preemption(int(tc.preemption_check_every)).install()
  report = periodic_actions.ReportProgress(num_train_steps=total, writer=writer,
                                           every_steps=int(tc.log_every) or None)
  bar = progress.ProgressBar(total, "train", initial=start_step, unit="steps",
                                  enabled=is_main)
  images_per_step = int(tc.batch_size)
  step = start_step
  pending = None  # (step, device metrics) of the last dispatched step
  window: list[dict[str, float]] = []
  t_window, n_window = time.time(), 0

  sanity = guard.SanityGuard(float(jax.device_get(optax.tree.norm(st.params))))
  drain = lambda p: guard.drain(p, ckpt, sanity)

  try:
    while step < total:
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        batch = sharding.to_global(next(it), mesh)
        st, metrics = compiled(st, batch)
      data_pos += 1
      step += 1
      # Check the previous step while this one runs (keeps one step in flight).
      if pending is not None:
        _, host = drain(pending)
        window.append(host)
      pending = (step, metrics)
      n_window += 1
      report(step)
      bar.update(step, postfix=f"loss {window[-1]['loss']:.4f}" if window else "")

      last = step == total
      if step % int(tc.log_every) == 0 or last:
        _, host = drain(pending)
        pending = None
        window.append(host)
        dt = time.time() - t_window
        scalars = {f"train_{k}": float(np.mean([w[k] for w in window]))
                   for k in ("loss", "mse", "vb", "grad_norm", "param_norm")}
        scalars.update(train_lr=host["lr"], steps_per_sec=n_window / dt,
                       images_per_sec=n_window * images_per_step / dt)
        writer.write_scalars(step, scalars)
        summary.update(scalars)
        window, t_window, n_window = [], time.time(), 0

      if grid_fn is not None and (step % int(tc.sample_every) == 0 or last):
        with report.timed("sample"):
          grid = grid_fn(st.ema, step)
        if grid is not None:
          writer.write_images(step, {"samples": grid[None]})
          if is_main:
            image_io.save_png(os.path.join(workdir, "images", f"grid_{step:07d}.png"), grid)
            image_io.save_png(os.path.join(workdir, "images", "grid_latest.png"), grid)

      preempted = preempt.reached(step)
      every = int(tc.checkpoint_every)
      if (every and step % every == 0) or last or preempted:
        if pending is not None:
          drain(pending)  # never checkpoint a state that followed a non-finite step
          pending = None
        with report.timed("checkpoint"):
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
  return summary
