"""SCDM training loop: `train_and_evaluate(config, workdir)`.

One `jax.jit` program per step, with `NamedSharding`s over the `("data", "fsdp")` mesh of
all devices of all processes (see sharding.py); the state is built directly into its
shardings (state.py) and donated to the step. Each process feeds its own slice of the
global batch (`sharding.to_global`).

Resume: `<workdir>/checkpoints/` is an orbax CheckpointManager (checkpointing.py). On start
the newest step is restored (params, EMA, optimizer, RNG, data position) and the log says
"resumed from step N"; the input pipeline restarts exactly at the saved data position
(`create_dataset(..., start_step=...)`). SIGTERM (preemption) saves a checkpoint at the
current step and returns. A non-finite loss or gradient norm stops the run with
`FloatingPointError` without writing a checkpoint, so the last good one is kept (the step
itself also refuses non-finite updates).

The label schedule's psi: `config.diffusion.psi_path` (.npy, `load_psi`), or, when empty
and the dataset is procedural, computed from the class statistics of the procedural train
split (`psi_from_statistics`); psi is stored in every checkpoint's meta and in exports, so
sampling uses the exact schedule the model was trained with.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
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
from scdm_jax import fileio
from scdm_jax import logging_utils
from scdm_jax import sharding
from scdm_jax import state as state_lib
from scdm_jax.diffusion import label_diffusion
from scdm_jax.diffusion import losses
from scdm_jax.diffusion.gaussian import GaussianDiffusion


# ---------------------------------------------------------------------------
# Diffusion objects from the config
# ---------------------------------------------------------------------------


def procedural_psi(data_config, num_examples: int = 256) -> np.ndarray:
  """psi from the class statistics of the procedural train split (deterministic)."""
  from scdm_jax.data import procedural  # pylint: disable=g-import-not-at-top
  from scdm_jax.data import class_stats  # pylint: disable=g-import-not-at-top
  size = int(data_config.image_size)
  seed = int(data_config.get("procedural_seed", 0)) if hasattr(data_config, "get") else 0
  maps = (procedural.generate(i, size=size, seed=seed, split="train")["label"]
          for i in range(num_examples))
  stats = class_stats.accumulate(maps, int(data_config.num_classes), quiet=True)
  return label_diffusion.psi_from_statistics(stats["area_fraction_sum"],
                                             stats["image_count"])


def resolve_psi(config: ml_collections.ConfigDict) -> np.ndarray | None:
  """The per-class psi of a class-wise schedule (see module docstring), else None."""
  d = config.diffusion
  if d.label_schedule != "classwise":
    return None
  k = int(config.data.num_classes)
  if d.psi_path:
    return label_diffusion.load_psi(d.psi_path, k, force_last_linear=d.force_last_linear)
  if config.data.name == "procedural":
    psi = procedural_psi(config.data)
    if d.force_last_linear:
      psi[-1] = 0.5
    return psi
  raise ValueError(
      f"config.diffusion.label_schedule='classwise' needs config.diffusion.psi_path (a .npy "
      f"with {k} values) for dataset {config.data.name!r}: use the reference's *_psiphi.npy "
      "or compute one with `python -m scdm_jax.data.class_stats --dataset "
      f"{config.data.name} --root ... --out psi.npy`; or set "
      "--config.diffusion.label_schedule=uniform.")


def make_label_schedule(config: ml_collections.ConfigDict, psi: np.ndarray | None,
                        kind: str | None = None) -> label_diffusion.LabelSchedule:
  """The label schedule of `config.diffusion` (or of `kind`, e.g. a checkpoint's)."""
  d = config.diffusion
  return label_diffusion.LabelSchedule.create(
      kind or d.label_schedule, psi=psi, num_original_steps=int(d.num_steps),
      reference_tau_1000=bool(d.get("reference_tau_1000", False)),
      reference_uniform_off_by_one=bool(d.get("reference_uniform_off_by_one", False)))


def make_diffusion(config: ml_collections.ConfigDict, respacing: str | None = None
                   ) -> GaussianDiffusion:
  return GaussianDiffusion.create(beta_schedule=config.diffusion.beta_schedule,
                                  num_steps=int(config.diffusion.num_steps),
                                  respacing=respacing or None)


def class_table_json(config: ml_collections.ConfigDict) -> dict[str, Any] | None:
  """The dataset's class table (names, colours) as JSON, if it can be resolved."""
  from scdm_jax.data import palettes  # pylint: disable=g-import-not-at-top
  name = config.data.get("class_table", "") or config.data.name
  try:
    return palettes.get_class_table(name).to_json()
  except (ValueError, FileNotFoundError):
    return None


def run_meta(config: ml_collections.ConfigDict, psi: np.ndarray | None) -> dict[str, Any]:
  """JSON stored with every checkpoint and export: config, class table, label schedule."""
  table = class_table_json(config)
  return {
      "config": json.loads(config.to_json_best_effort()),
      "model": state_lib.unet_config(config).to_dict(),
      "num_classes": int(config.data.num_classes),
      "use_instance": bool(config.data.use_instance),
      "class_names": None if table is None else table["names"],
      "class_table": table,
      "dataset": config.data.name,
      "diffusion": {"beta_schedule": config.diffusion.beta_schedule,
                    "num_steps": int(config.diffusion.num_steps)},
      "label_schedule": {"kind": config.diffusion.label_schedule,
                         "psi": None if psi is None else [float(x) for x in psi]},
  }


# ---------------------------------------------------------------------------
# The train step
# ---------------------------------------------------------------------------


def make_train_step(config: ml_collections.ConfigDict, graphs: state_lib.Graphs,
                    diffusion: GaussianDiffusion,
                    label_schedule: label_diffusion.LabelSchedule, mesh):
  """Returns `train_step(state, batch) -> (state, metrics)` (not yet jitted)."""
  accum = int(config.train.grad_accum)
  decay = float(config.optim.ema_decay)
  ema_warmup = bool(config.optim.get("ema_warmup", False))
  drop_rate = float(config.diffusion.drop_rate)
  dropout = float(config.model.dropout)
  lr_fn = state_lib.lr_schedule(config.optim)
  k = int(config.data.num_classes)
  batch_sh = sharding.batch_sharding(mesh)

  def loss_fn(params, rest, batch, key):
    model = nnx.merge(graphs.model, params, rest)
    drop_key, loss_key = jax.random.split(key)
    if dropout > 0:
      rngs = nnx.Rngs(dropout=drop_key)
      apply = lambda x, t, c: model(x, t, c, deterministic=False, rngs=rngs)
    else:
      apply = lambda x, t, c: model(x, t, c)
    loss, aux = losses.scdm_loss(apply, diffusion, label_schedule, batch, loss_key,
                                 drop_rate=drop_rate, num_label_channels=k)
    terms = {"loss": loss, "mse": jnp.mean(aux["mse"]), "vb": jnp.mean(aux["vb"])}
    return loss, terms

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(st: state_lib.TrainState, batch):
    step = state_lib.step_of(st)
    key = jax.random.fold_in(jax.random.wrap_key_data(st.rng), step)
    if accum == 1:
      (_, terms), grads = grad_fn(st.params, st.rest, batch, key)
    else:
      # Micro-batch i takes rows i, i + accum, ...: each micro-batch stays spread over
      # every device (rows are laid out contiguously per device).
      def split(x):
        x = x.reshape((x.shape[0] // accum, accum) + x.shape[1:]).swapaxes(0, 1)
        return x
      micro = jax.tree.map(split, batch)

      def body(carry, inp):
        i, mb = inp
        mb = jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, batch_sh), mb)
        (_, t), g = grad_fn(st.params, st.rest, mb, jax.random.fold_in(key, i))
        return jax.tree.map(jnp.add, carry, (t, g)), None

      zeros = jax.tree.map(jnp.zeros_like, ({"loss": 0.0, "mse": 0.0, "vb": 0.0}, st.params))
      zeros = (jax.tree.map(lambda x: jnp.zeros((), jnp.float32), zeros[0]), zeros[1])
      (terms, grads), _ = jax.lax.scan(body, zeros, (jnp.arange(accum), micro))
      terms = jax.tree.map(lambda x: x / accum, terms)
      grads = jax.tree.map(lambda x: x / accum, grads)

    grad_norm = optax.tree.norm(grads)
    model = nnx.merge(graphs.model, st.params, st.rest)
    opt = nnx.merge(graphs.opt, st.opt)
    opt.update(model, grads)
    _, new_params, new_rest = nnx.split(model, nnx.Param, ...)
    _, new_opt = nnx.split(opt)
    new_ema = state_lib.ema_update(st.ema, new_params,
                                   state_lib.ema_decay_at(step, decay, ema_warmup))
    param_norm = optax.tree.norm(new_params)
    # Refuse the update if the loss, the gradient or the updated params are not finite.
    finite = jnp.isfinite(terms["loss"]) & jnp.isfinite(grad_norm) & jnp.isfinite(param_norm)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = state_lib.TrainState(
        params=keep(new_params, st.params), rest=keep(new_rest, st.rest),
        opt=keep(new_opt, st.opt), ema=keep(new_ema, st.ema), rng=st.rng)
    metrics = dict(terms, grad_norm=grad_norm, param_norm=param_norm, lr=lr_fn(step),
                   finite=finite.astype(jnp.float32))
    return new_state, metrics

  return train_step


# Compiled steps, keyed by everything that shapes the program, so that calling
# train_and_evaluate again in one process (resume tests, notebooks) does not recompile.
_COMPILED: dict[str, Any] = {}


def _program_key(config, mesh, per_process_batch: int, psi) -> str:
  parts = {k: config[k].to_dict() for k in ("data", "model", "diffusion", "optim", "mesh")}
  parts["train"] = {k: config.train[k] for k in ("batch_size", "grad_accum")}
  parts["mesh_devices"] = [d.id for d in mesh.devices.flat]
  parts["batch"] = per_process_batch
  parts["psi"] = None if psi is None else [float(x) for x in psi]
  return json.dumps(parts, sort_keys=True, default=str)


def compile_train_step(config, graphs, diffusion, label_schedule, mesh, shardings,
                       abstract_state, per_process_batch: int, psi=None):
  """`jax.jit` + `.lower().compile()` of the step for the global batch; logs the time."""
  key = _program_key(config, mesh, per_process_batch, psi)
  if key in _COMPILED:
    logging.info("Reusing the train step compiled earlier in this process.")
    return _COMPILED[key]
  out = _compile_train_step(config, graphs, diffusion, label_schedule, mesh, shardings,
                            abstract_state, per_process_batch)
  _COMPILED.clear()  # keep one program alive at most
  _COMPILED[key] = out
  return out


def _compile_train_step(config, graphs, diffusion, label_schedule, mesh, shardings,
                        abstract_state, per_process_batch: int):
  step_fn = make_train_step(config, graphs, diffusion, label_schedule, mesh)
  s = int(config.data.image_size)
  b = per_process_batch * jax.process_count()
  bsh = sharding.batch_sharding(mesh)
  batch = {"image": jax.ShapeDtypeStruct((b, s, s, 3), jnp.float32, sharding=bsh),
           # Class ids (-1 = unknown); the loss one-hots them on the device.
           "label": jax.ShapeDtypeStruct((b, s, s), jnp.int32, sharding=bsh)}
  if config.data.use_instance:
    batch["edge"] = jax.ShapeDtypeStruct((b, s, s, 1), jnp.float32, sharding=bsh)
  jitted = jax.jit(step_fn, in_shardings=(shardings, bsh),
                   out_shardings=(shardings, sharding.replicated(mesh)),
                   donate_argnums=(0,))
  t0 = time.time()
  compiled = jitted.lower(
      state_lib.abstract_with_shardings(abstract_state, shardings), batch).compile()
  logging.info("Compiled the train step in %.1f s (global batch %d, grad_accum %d).",
               time.time() - t0, b, int(config.train.grad_accum))
  return compiled, batch


# ---------------------------------------------------------------------------
# Preemption
# ---------------------------------------------------------------------------


class _Preemption:
  """SIGTERM -> a flag the loop checks; multi-process runs agree via jax's sync point."""

  def __init__(self):
    self.flag = threading.Event()
    self._old = None

  def install(self):
    if threading.current_thread() is threading.main_thread():
      self._old = signal.signal(signal.SIGTERM, self._handler)
    return self

  def _handler(self, signum, frame):
    del frame
    logging.warning("Received signal %d: will save a checkpoint and exit.", signum)
    self.flag.set()

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      try:
        if multihost_utils.reached_preemption_sync_point(step):
          return True
      except Exception:  # pylint: disable=broad-except
        pass  # no preemption service (e.g. CPU): fall back to the local flag
      # All processes must agree on the step at which to stop.
      local = np.array([self.flag.is_set()], np.int32)
      return bool(multihost_utils.process_allgather(local).max())
    return self.flag.is_set()

  def uninstall(self):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


# ---------------------------------------------------------------------------
# Main loop
# ---------------------------------------------------------------------------


def _memory_note(abstract: state_lib.TrainState, mesh) -> str:
  def nbytes(tree):
    return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))
  total = nbytes(abstract.params) + nbytes(abstract.opt) + nbytes(abstract.ema)
  per_dev = total / (mesh.shape["fsdp"] if mesh.shape["fsdp"] > 1 else 1)
  return (f"params+optimizer+EMA {total / 2**30:.2f} GiB in total, about "
          f"{per_dev / 2**30:.2f} GiB per device (upper bound with fsdp={mesh.shape['fsdp']}; "
          "activations come on top: lower train.batch_size per device, raise "
          "train.grad_accum, or set model.remat / model.dtype=bfloat16)")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) in `workdir`; returns a small summary (last step and metrics)."""
  from scdm_jax import sample as sample_lib  # pylint: disable=g-import-not-at-top
  from scdm_jax.data import datasets  # pylint: disable=g-import-not-at-top

  workdir = fileio.absolute(workdir)
  fileio.makedirs(workdir)
  tc = config.train
  is_main = jax.process_index() == 0
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_main)

  mesh = sharding.make_mesh(config.mesh)
  per_process_batch, _ = sharding.check_global_batch(int(tc.batch_size), mesh,
                                                     int(tc.grad_accum))
  logging.info("Mesh %s over %d devices in %d processes; global batch %d, %d per process.",
               dict(mesh.shape), jax.device_count(), jax.process_count(), tc.batch_size,
               per_process_batch)

  psi = resolve_psi(config)
  diffusion = make_diffusion(config)
  label_schedule = make_label_schedule(config, psi)
  meta = run_meta(config, psi)

  graphs, abstract = state_lib.graphs_and_abstract(config)
  shardings = state_lib.train_state_shardings(config, mesh, abstract)
  num_params = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract.params))
  logging.info("UNet: %.2f M parameters; %s.", num_params / 1e6, _memory_note(abstract, mesh))

  ckpt = checkpointing.TrainCheckpointer(
      os.path.join(workdir, "checkpoints"), keep_last=int(tc.keep_last),
      keep_every=int(tc.keep_every), async_save=bool(tc.get("async_checkpoint", True)))
  latest = ckpt.latest_step()
  data_pos = 0
  if latest is not None:
    abstract_ckpt = state_lib.abstract_with_shardings(
        state_lib.to_checkpoint(abstract), state_lib.to_checkpoint(shardings))
    abstract_ckpt["data_pos"] = np.zeros((), np.int64)  # host value, restored as numpy
    tree, old_meta = ckpt.restore(latest, abstract_ckpt)
    data_pos = int(tree.pop("data_pos"))
    st = state_lib.from_checkpoint(tree, abstract)
    if old_meta.get("label_schedule", {}).get("psi") is not None and psi is not None:
      old_psi = np.asarray(old_meta["label_schedule"]["psi"])
      if old_psi.shape != psi.shape or not np.allclose(old_psi, psi):
        logging.warning("psi differs from the one the checkpoint was trained with; "
                        "continuing with the checkpoint's psi.")
        psi = old_psi
        label_schedule = make_label_schedule(config, psi)
        meta = run_meta(config, psi)
    logging.info("resumed from step %d (data position %d) in %s", latest, data_pos,
                 ckpt.directory)
  else:
    _, st, _ = state_lib.create_train_state(config, mesh, int(tc.seed))
    if config.init_from:
      params_pure, init_meta = checkpointing.load_export(config.init_from)
      check_meta_matches(init_meta, config, what=f"config.init_from={config.init_from!r}")
      params = state_lib.params_from_pure(graphs, params_pure, shardings.params)
      st = state_lib.TrainState(params=params, rest=st.rest, opt=st.opt,
                                ema=jax.tree.map(lambda p: p.astype(jnp.float32), params),
                                rng=st.rng)
      logging.info("Initialised params and EMA from %s.", config.init_from)
    else:
      logging.info("Starting from scratch (no checkpoint in %s).", ckpt.directory)
  if is_main and latest is None:
    overview = parameter_overview.get_parameter_overview(
        nnx.to_pure_dict(abstract.params), include_stats=False)
    logging.info("Parameter overview:\n%s", overview[:20000])
    writer.write_hparams({k: v for k, v in _flat_config(config).items()})

  start_step = int(jax.device_get(state_lib.step_of(st)))
  if latest is not None and start_step != latest:
    logging.warning("Checkpoint %d holds optimizer step %d.", latest, start_step)
  compiled, _ = compile_train_step(config, graphs, diffusion, label_schedule, mesh,
                                   shardings, abstract, per_process_batch, psi)

  total = int(tc.total_steps)
  summary: dict[str, Any] = {"start_step": start_step, "step": start_step}
  if start_step >= total:
    logging.info("Nothing to do: step %d >= total_steps %d.", start_step, total)
    ckpt.close()
    writer.close()
    return summary

  it = datasets.create_dataset(
      config.data, config.data.get("train_split", "train"), batch_size=per_process_batch,
      train=True, seed=int(tc.seed), process_index=jax.process_index(),
      process_count=jax.process_count(), start_step=data_pos, label_ids=True)

  grid_fn = None
  if tc.sample_every and tc.sample_every > 0:
    grid_fn = sample_lib.TrainingGrid(config, graphs, mesh, shardings.params, label_schedule)

  def save(step_, wait=False):
    tree = state_lib.to_checkpoint(st)
    tree["data_pos"] = np.int64(data_pos)
    ckpt.save(step_, tree, dict(meta, step=step_, data_pos=data_pos), wait=wait)

  preempt = _Preemption().install()
  report = periodic_actions.ReportProgress(num_train_steps=total, writer=writer,
                                           every_steps=int(tc.log_every) or None)
  bar = logging_utils.ProgressBar(total, "train", initial=start_step, unit="steps",
                                  enabled=is_main)
  images_per_step = int(tc.batch_size)
  step = start_step
  pending = None  # (step, device metrics) of the last dispatched step
  window: list[dict[str, float]] = []
  t_window, n_window = time.time(), 0

  def drain(p):
    """Fetches a finished step's metrics; raises on non-finite values."""
    s, m = p
    host = {k: float(v) for k, v in jax.device_get(m).items()}
    if host["finite"] < 1.0 or not math.isfinite(host["loss"]):
      raise FloatingPointError(
          f"Non-finite loss, gradient or update at step {s} (loss={host['loss']}, grad_norm="
          f"{host['grad_norm']}, param_norm after the update={host['param_norm']}); the "
          "update was not applied. Stopping without saving: the last good checkpoint in "
          f"{ckpt.directory} is kept (steps {ckpt.all_steps()}). Lower optim.lr, set "
          "optim.grad_clip, or use model.dtype=float32.")
    return s, host

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
            logging_utils.save_png(os.path.join(workdir, "images", f"grid_{step:07d}.png"),
                                   grid)
            logging_utils.save_png(os.path.join(workdir, "images", "grid_latest.png"), grid)

      preempted = preempt.reached(step)
      if step % int(tc.checkpoint_every) == 0 or last or preempted:
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
    ckpt.close()
    writer.flush()
    writer.close()
  summary["step"] = step
  summary["checkpoint_steps"] = ckpt.all_steps()
  return summary


def _flat_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
  out = {}

  def rec(prefix, d):
    for k, v in d.items():
      if isinstance(v, ml_collections.ConfigDict):
        rec(f"{prefix}{k}.", v)
      elif isinstance(v, (int, float, str, bool)):
        out[f"{prefix}{k}"] = v
      else:
        out[f"{prefix}{k}"] = str(v)
  rec("", config)
  return out


def check_meta_matches(meta: dict[str, Any], config: ml_collections.ConfigDict, *,
                       what: str) -> None:
  """Refuses a checkpoint whose class count / class table does not match the config.

  Raises:
    ValueError: naming the checkpoint, both values and what to change.
  """
  want_k = int(config.data.num_classes)
  want_l = int(config.model.num_classes)
  got_k = meta.get("num_classes")
  got_l = (meta.get("model") or {}).get("num_classes")
  problems = []
  if got_l is not None and int(got_l) != want_l:
    problems.append(f"it has {got_l} conditioning channels, the config has "
                    f"config.model.num_classes={want_l}")
  if got_k is not None and int(got_k) not in (want_k, want_l) and \
      not (got_l is not None and int(got_k) == int(got_l)):
    problems.append(f"it was trained with {got_k} classes, the config has "
                    f"config.data.num_classes={want_k}")
  table = class_table_json(config)
  names = meta.get("class_names")
  if not problems and names and table is not None and list(names) != list(table["names"]):
    diff = [(i, a, b) for i, (a, b) in enumerate(zip(names, table["names"])) if a != b][:5]
    problems.append(
        f"its class table differs from {config.data.name!r} (first differences (id, "
        f"checkpoint, config): {diff}; lengths {len(names)} vs {len(table['names'])})")
  if problems:
    raise ValueError(
        f"{what}: refusing a checkpoint that does not match the config: "
        + "; ".join(problems) + ". Use the config preset the checkpoint was made for "
        f"(its dataset: {meta.get('dataset', meta.get('source', '?'))!r}), or a "
        "checkpoint trained for this dataset.")
