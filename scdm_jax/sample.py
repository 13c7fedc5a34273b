"""Sampling: periodic training grids and `--mode sample`.

`--mode sample` (`run_sampling(config, workdir)`):

* weights, in this order: `config.sample.checkpoint` (an inference checkpoint written by
  `--mode export` or `python -m scdm_jax.convert`), else `<workdir>/export`, else the newest
  training checkpoint in `<workdir>/checkpoints` (EMA weights unless
  `config.sample.use_ema=False`). A checkpoint whose class count or class table does not
  match the config is refused (`train.check_meta_matches`).
* label maps: `config.sample.source` is either a dataset split name ("validation", read
  with the data pipeline, outputs named after the source files), or a label PNG / a folder
  of PNGs (class-id PNGs or palette-coloured RGB PNGs, read with
  `scdm_jax.data.label_io.load_label_map`; resized nearest to the model's image size). For
  datasets with an instance-edge channel, user maps get the edges of their label map.
* outputs (PNG, written atomically): `<output_dir>/sample_<j>/<name>.png` for the j-th of
  `config.sample.num_samples_per_map` samples of each map, and `<output_dir>/labels/<name>.png`
  (colourised input label). Point an FID tool at `sample_0/`.
* settings: `config.sample.{sampler, eta, respacing, guidance_scale, dynamic_threshold,
  extrapolation, label_mode, seed, batch_size}`. Batches are padded to a multiple of the
  device count and run as one program sharded over all devices; each process writes the
  rows it holds (no gather). Same seed and batch size give the same images.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

from absl import logging
import jax
import ml_collections
import numpy as np
from flax import nnx

from scdm_jax import checkpointing
from scdm_jax import fileio
from scdm_jax import logging_utils
from scdm_jax import sharding
from scdm_jax import state as state_lib
from scdm_jax.diffusion import label_diffusion
from scdm_jax.diffusion import sampling


def make_sample_fn(config: ml_collections.ConfigDict, graphs: state_lib.Graphs, mesh,
                   param_shardings: Any, label_schedule: label_diffusion.LabelSchedule,
                   progress=None):
  """Jitted `fn(params, cond, key) -> images` on the config's sampling chain."""
  from scdm_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  sc = config.sample
  diffusion = train_lib.make_diffusion(config, respacing=sc.respacing or None)
  k = int(config.data.num_classes)
  rest = _abstract_states(graphs)[1]
  if jax.tree.leaves(rest):
    raise NotImplementedError("The UNet has non-parameter state; sampling does not carry it.")

  def fn(params, cond, key):
    model = nnx.merge(graphs.model, params, rest)
    apply = lambda x, t, c: model(x, t, c)
    return sampling.sample(
        apply, diffusion, label_schedule, cond, key, sampler=sc.sampler, eta=float(sc.eta),
        guidance_scale=float(sc.guidance_scale),
        dynamic_threshold=float(sc.dynamic_threshold),
        extrapolation=float(sc.extrapolation), label_mode=sc.label_mode,
        num_label_channels=k, progress=progress)

  bsh = sharding.batch_sharding(mesh)
  return jax.jit(fn, in_shardings=(param_shardings, bsh, sharding.replicated(mesh)),
                 out_shardings=bsh), diffusion


def _abstract_states(graphs: state_lib.Graphs):
  from scdm_jax.models.unet import UNet  # pylint: disable=g-import-not-at-top
  model = nnx.eval_shape(lambda: UNet(graphs.unet_config, rngs=nnx.Rngs(0)))
  _, params, rest = nnx.split(model, nnx.Param, ...)
  return params, rest


def _pad_to(x: np.ndarray, n: int) -> np.ndarray:
  if x.shape[0] == n:
    return x
  pad = np.zeros((n - x.shape[0],) + x.shape[1:], x.dtype)
  return np.concatenate([x, pad])


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def colorize_cond(cond: np.ndarray, num_classes: int, table: Any) -> np.ndarray:
  from scdm_jax.data import label_io  # pylint: disable=g-import-not-at-top
  if table is None:
    rng = np.random.default_rng(0)
    colors = rng.integers(0, 256, (num_classes, 3)).astype(np.uint8)
  else:
    colors = np.asarray(table["colors"], np.uint8)
  return label_io.colorize(np.asarray(cond[..., :num_classes], np.float32), colors)


class TrainingGrid:
  """Periodic sample grid during training: each row = colourised label | samples.

  Uses the first `config.train.num_sample_maps` maps of the eval split and the config's
  sampling settings (`config.sample`), on the EMA params.
  """

  def __init__(self, config, graphs, mesh, param_shardings, label_schedule):
    from scdm_jax import train as train_lib  # pylint: disable=g-import-not-at-top
    from scdm_jax.data import datasets  # pylint: disable=g-import-not-at-top
    self.config, self.mesh = config, mesh
    self.k = int(config.data.num_classes)
    n_maps = int(config.train.num_sample_maps)
    self.n_per = max(1, int(config.sample.num_samples_per_map))
    it = datasets.create_dataset(config.data, config.data.get("eval_split", "validation"),
                                 batch_size=n_maps, train=False, seed=0)
    batch = next(it)
    cond = batch["label"]
    if "edge" in batch:
      cond = np.concatenate([cond, batch["edge"]], -1)
    self.cond_maps = cond[:n_maps]
    self.table = train_lib.class_table_json(config)
    cond = np.repeat(self.cond_maps, self.n_per, axis=0)
    self.n = cond.shape[0]
    self.cond = _pad_to(cond, _round_up(self.n, sharding.num_batch_shards(mesh)))
    self.fn, _ = make_sample_fn(config, graphs, mesh, param_shardings, label_schedule)
    self.key = jax.random.key(int(config.sample.seed))

  def __call__(self, ema_params, step: int) -> np.ndarray:
    cond = sharding.device_put_tree(self.cond, sharding.batch_sharding(self.mesh))
    images = self.fn(ema_params, cond, self.key)
    images = logging_utils.to_uint8(sharding.to_host(images)[:self.n])
    labels = colorize_cond(self.cond_maps, self.k, self.table)
    rows = []
    for i in range(len(self.cond_maps)):
      rows.append([labels[i]] + [images[i * self.n_per + j] for j in range(self.n_per)])
    return logging_utils.make_grid(rows)


# ---------------------------------------------------------------------------
# --mode sample
# ---------------------------------------------------------------------------


def load_weights(config: ml_collections.ConfigDict, workdir: str | None
                 ) -> tuple[dict[str, Any], dict[str, Any], str]:
  """Finds and loads the weights to sample from; returns `(params_pure, meta, where)`.

  Raises:
    FileNotFoundError: no checkpoint anywhere.
    ValueError: the checkpoint does not match the config.
  """
  from scdm_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  sc = config.sample
  candidates = []
  if sc.checkpoint:
    candidates.append(sc.checkpoint)
  elif workdir:
    candidates.append(os.path.join(workdir, "export"))
  for path in candidates:
    if sc.checkpoint or fileio.isdir(path):
      params, meta = checkpointing.load_export(path)
      train_lib.check_meta_matches(meta, config, what=f"inference checkpoint {path!r}")
      return params, meta, path
  if workdir:
    ckdir = os.path.join(workdir, "checkpoints")
    if fileio.isdir(ckdir):
      params, meta, step = load_train_params(config, ckdir, use_ema=bool(sc.use_ema))
      return params, meta, f"{ckdir} step {step} ({'EMA' if sc.use_ema else 'raw'} params)"
  raise FileNotFoundError(
      f"No weights to sample from: set --config.sample.checkpoint=<export dir>, or give a "
      f"--workdir containing export/ or checkpoints/ (got workdir={workdir!r}).")


def load_train_params(config, ckdir: str, *, use_ema: bool = True, step: int | None = None):
  """Params (EMA by default) of a training checkpoint as host numpy, plus its meta."""
  from scdm_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  ckpt = checkpointing.TrainCheckpointer(ckdir, async_save=False)
  try:
    step = ckpt.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{ckdir} holds no finished training checkpoint.")
    meta = ckpt.restore_meta(step)
    train_lib.check_meta_matches(meta, config, what=f"training checkpoint {ckdir} step {step}")
    _, abstract = state_lib.graphs_and_abstract(config)
    host = lambda t: jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), t)
    target = {k: host(v) for k, v in state_lib.to_checkpoint(abstract).items()}
    target["data_pos"] = np.zeros((), np.int64)
    tree, _ = ckpt.restore(step, target)
  finally:
    ckpt.close()
  return tree["ema" if use_ema else "params"], meta, step


def _user_label_files(source: str) -> list[str]:
  if os.path.isdir(source):
    files = sorted(os.path.join(source, f) for f in os.listdir(source)
                   if f.lower().endswith(".png"))
    if not files:
      raise FileNotFoundError(f"config.sample.source={source!r}: the folder has no .png files.")
    return files
  if not os.path.exists(source):
    raise FileNotFoundError(f"config.sample.source={source!r} is neither a split name nor an "
                            "existing label PNG / folder.")
  return [source]


def iter_label_maps(config: ml_collections.ConfigDict, batch_size: int
                    ) -> Iterator[tuple[list[str], np.ndarray]]:
  """Yields `(names, cond (b, S, S, L) float32)` batches from the configured source."""
  from scdm_jax.data import datasets  # pylint: disable=g-import-not-at-top
  from scdm_jax.data import label_io  # pylint: disable=g-import-not-at-top
  from scdm_jax.data import noisy  # pylint: disable=g-import-not-at-top
  sc = config.sample
  k, size = int(config.data.num_classes), int(config.data.image_size)
  max_maps = int(sc.max_maps) or None
  source = str(sc.source)
  is_path = os.sep in source or source.lower().endswith(".png") or os.path.exists(source)
  count = 0
  if not is_path:
    it = datasets.create_dataset(config.data, source, batch_size=batch_size, train=False,
                                 seed=int(sc.seed), with_names=True)
    for b in it:
      cond = b["label"]
      if "edge" in b:
        cond = np.concatenate([cond, b["edge"]], -1)
      names = [n.decode() if isinstance(n, bytes) else str(n) for n in b["name"]]
      if max_maps is not None:
        cond, names = cond[:max_maps - count], names[:max_maps - count]
      if not names:
        return
      count += len(names)
      yield names, cond.astype(np.float32)
      if max_maps is not None and count >= max_maps:
        return
    return
  files = _user_label_files(source)[:max_maps]
  fmt = sc.get("label_format", "auto")
  palette = config.data.get("class_table", "") or config.data.name
  for i in range(0, len(files), batch_size):
    chunk = files[i:i + batch_size]
    conds, names = [], []
    for path in chunk:
      ids, report = label_io.load_label_map(
          path, num_classes=k, palette=None if fmt == "ids" else palette, size=size)
      if fmt == "palette" and report.mode != "palette":
        raise ValueError(f"{path}: config.sample.label_format='palette' but the file is a "
                         "single-channel id map; use label_format=ids or auto.")
      if report.unknown_colors:
        logging.warning("%s: %d pixels had colours outside the palette (snapped).", path,
                        report.snapped_pixels)
      cond = label_io.to_one_hot(ids, k)
      if config.data.use_instance:
        cond = np.concatenate([cond, noisy.boundary_map(ids)[..., None].astype(np.float32)],
                              -1)
      conds.append(cond)
      names.append(os.path.splitext(os.path.basename(path))[0])
    yield names, np.stack(conds).astype(np.float32)


def label_schedule_for(config: ml_collections.ConfigDict,
                       meta: dict[str, Any]) -> label_diffusion.LabelSchedule:
  """The label schedule a checkpoint was trained with (kind and psi from its meta).

  Checkpoints without that record (e.g. converted PyTorch weights) use the config's.
  """
  from scdm_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  recorded = meta.get("label_schedule") or {}
  kind = recorded.get("kind", config.diffusion.label_schedule)
  if kind != config.diffusion.label_schedule:
    logging.warning("The checkpoint was trained with label schedule %r; the config says %r: "
                    "using the checkpoint's.", kind, config.diffusion.label_schedule)
  psi = None
  if kind == "classwise":
    psi = recorded.get("psi")
    psi = np.asarray(psi, np.float64) if psi is not None else train_lib.resolve_psi(config)
  return train_lib.make_label_schedule(config, psi, kind)


def run_sampling(config: ml_collections.ConfigDict, workdir: str | None) -> dict[str, Any]:
  """`--mode sample`: see the module docstring. Returns a summary dict."""
  from scdm_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  sc = config.sample
  mesh = sharding.make_mesh(config.mesh)
  params_pure, meta, where = load_weights(config, workdir)
  logging.info("Sampling from %s.", where)
  label_schedule = label_schedule_for(config, meta)

  graphs, abstract = state_lib.graphs_and_abstract(config)
  param_sh = sharding.state_shardings(mesh, abstract.params, int(config.mesh.fsdp_min_size))
  params = state_lib.params_from_pure(graphs, params_pure, param_sh)

  is_main = jax.process_index() == 0
  n_per = max(1, int(sc.num_samples_per_map))
  shards = sharding.num_batch_shards(mesh)
  batch = _round_up(max(int(sc.batch_size), 1), shards)
  maps_per_batch = max(1, batch // n_per)
  out_dir = sc.output_dir or os.path.join(workdir or ".", "samples")
  table = train_lib.class_table_json(config)
  k = int(config.data.num_classes)

  fn, diffusion = make_sample_fn(config, graphs, mesh, param_sh, label_schedule)
  base_key = jax.random.key(int(sc.seed))
  written = 0
  total_maps = None
  if int(sc.max_maps):
    total_maps = int(sc.max_maps)
  bar = logging_utils.ProgressBar(total_maps or 0, "sample", unit="maps", enabled=is_main)
  for bi, (names, cond) in enumerate(iter_label_maps(config, maps_per_batch)):
    rows = np.repeat(cond, n_per, axis=0)
    n = rows.shape[0]
    padded = _pad_to(rows, _round_up(n, shards))
    gcond = sharding.device_put_tree(padded, sharding.batch_sharding(mesh))
    images = fn(params, gcond, jax.random.fold_in(base_key, bi))
    _write_rows(images, n, n_per, names, out_dir)
    if is_main:
      labels = colorize_cond(cond, k, table)
      for name, lab in zip(names, labels):
        logging_utils.save_png(os.path.join(out_dir, "labels", f"{name}.png"), lab)
    written += len(names)
    bar.total = max(bar.total, written)
    bar.update(written)
  bar.close()
  logging.info("Wrote %d x %d samples to %s (%d steps, sampler %s, guidance %.2f).",
               written, n_per, out_dir, diffusion.num_timesteps, sc.sampler,
               float(sc.guidance_scale))
  return {"maps": written, "samples_per_map": n_per, "output_dir": out_dir,
          "image_size": int(config.data.image_size)}


def _write_rows(images: jax.Array, n: int, n_per: int, names: list[str], out_dir: str):
  """Each process writes the rows of `images` it holds (one replica only)."""
  for shard in images.addressable_shards:
    if shard.replica_id != 0:
      continue
    start = shard.index[0].start or 0
    data = logging_utils.to_uint8(np.asarray(shard.data))
    for r in range(data.shape[0]):
      row = start + r
      if row >= n:
        continue
      name, j = names[row // n_per], row % n_per
      logging_utils.save_png(os.path.join(out_dir, f"sample_{j}", f"{name}.png"), data[r])
