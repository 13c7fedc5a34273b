"""The studio's one seam to the rest of the package: load a model, run its programs.

Everything the web app needs from the sampler, the editor and the loaders goes through
`Model` (and `load_model`), so re-pointing the studio at a moved API means editing this
file only. A `Model` holds the weights on one device and a cache of compiled programs keyed
by everything that changes the program (kind, steps, guidance, batch, start index); a
program is compiled on the first request that needs it and reused afterwards.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
import time
from typing import Any, Callable

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from scdm_jax import recipe
from scdm_jax import sharding
from scdm_jax import state as state_lib
from scdm_jax.data import label_io
from scdm_jax.data import noisy
from scdm_jax.data import palettes
from scdm_jax.inference import editor as editor_lib
from scdm_jax.inference import loading
from scdm_jax.inference import paint as paint_lib
from scdm_jax.inference import runner
from scdm_jax.inference import sampler
from scdm_jax.io import images

CORRUPTIONS = ("none",) + noisy.VARIANTS
PAINT_SAMPLERS = paint_lib.SAMPLERS
_PAINT_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass
class Progress:
  """What the running request is doing; read by the progress endpoint from another thread."""

  phase: str = "idle"  # idle | compiling | sampling
  step: int = 0
  total: int = 0
  started: float = 0.0


@dataclasses.dataclass
class Timing:
  """Wall time of one request; `compiled` is True when it built a new program."""

  seconds: float
  compiled: bool


def respacing_for(config: ml_collections.ConfigDict, steps: int) -> str:
  """The chain spec for `steps` sampling steps: DDIM stride when one fits, else even sections."""
  num_steps = int(config.diffusion.num_steps)
  if steps < 1 or steps > num_steps:
    raise ValueError(f"steps={steps}: choose 1..{num_steps} (the model's diffusion steps)")
  try:
    # Building the chain is cheap (numpy tables) and makes the same check the sampler makes.
    recipe.make_diffusion(config, respacing=f"ddim{steps}")
    return f"ddim{steps}"
  except ValueError:
    return str(steps)


class Model:
  """One loaded checkpoint with its compiled sampling and editing programs.

  Args:
    config: the model's config (data, model, diffusion and sample sections are read).
    params: the model's params as a pure dict (an export's or a training checkpoint's).
    meta: the checkpoint's meta (label schedule, class table).
    where: a description of the weights, shown in the page.
  """

  def __init__(self, config: ml_collections.ConfigDict, params: dict[str, Any],
               meta: dict[str, Any], where: str):
    self.config, self.where = config, where
    self.num_classes = int(config.data.num_classes)
    self.size = int(config.data.image_size)
    self.use_instance = bool(config.data.use_instance)
    self.table = _class_table(config)
    self.label_schedule = recipe.label_schedule_for(config, meta)
    # One device: interactive requests are one small batch; no padding to a mesh.
    self.mesh = sharding.make_mesh({"data": 1, "fsdp": 1}, devices=jax.devices()[:1])
    self.graphs, abstract = state_lib.graphs_and_abstract(config)
    self.param_sh = sharding.state_shardings(self.mesh, abstract.params,
                                             int(config.mesh.fsdp_min_size))
    self.params = state_lib.params_from_pure(self.graphs, params, self.param_sh)
    # The module the Editor splits again; the sampler merges graphs.model with params itself.
    self.module = nnx.merge(self.graphs.model, self.params)
    self.progress = Progress()
    self._programs: dict[tuple, Callable] = {}
    self._editors: dict[tuple, editor_lib.Editor] = {}
    self._compiled: set[tuple] = set()
    self.compile_seconds: dict[str, float] = {}
    self._lock = threading.Lock()

  # ------------------------------------------------------------------ labels

  def corrupt(self, ids: np.ndarray, kind: str, seed: int) -> np.ndarray:
    """The map after the noisy-label benchmark's corruption `kind` (none | ds | edge | random).

    The benchmark is defined at 256 px; at the model's size DS keeps its ratio (256 -> 64:
    a quarter of the side) and Edge its dilation relative to the side (radius 2 at 256 px,
    0 below 128 px: the 2-px boundaries alone), so a 32 px map is not all edge. Edge and
    Random write the class table's "unlabeled" class when it has one, else the absorbing
    unknown (-1).
    """
    if kind not in CORRUPTIONS:
      raise ValueError(f"corruption {kind!r} is unknown; use one of {', '.join(CORRUPTIONS)}")
    ids = np.asarray(ids, np.int32)
    if kind == "none":
      return ids
    if kind == "ds":
      return noisy.corrupt_ds(ids, out_size=ids.shape, ds_size=max(1, ids.shape[0] // 4))
    unl = self.table.unlabeled_class
    target = label_io.UNKNOWN if unl is None or self.config.data.unlabeled_to_zero else unl
    if kind == "edge":
      radius = round(noisy.EDGE_RADIUS * ids.shape[0] / 256)
      return noisy.corrupt_edge(ids, target, radius=radius).astype(np.int32)
    return noisy.corrupt_random(ids, target, np.random.default_rng(seed)).astype(np.int32)

  def labels(self, ids: np.ndarray) -> dict[str, np.ndarray]:
    """(B, H, W) class ids (-1 = unknown) -> the sampler's inputs {"label"[, "edge"]}.

    Ids go to the device as they are; the one-hot is built inside the program.
    """
    out = {"label": np.asarray(ids, np.int32)}
    if self.use_instance:  # as --mode sample does for user maps: the map's own boundaries
      out["edge"] = np.stack([noisy.boundary_map(i) for i in ids]).astype(np.float32)[..., None]
    return out

  # ------------------------------------------------------------------ programs

  def _progress(self, step: int, total: int) -> None:
    p = self.progress
    p.phase, p.total = "sampling", int(total)
    p.step = max(p.step, int(step))  # a sharded program may report a step more than once

  def _begin(self, key: tuple) -> bool:
    self.progress = Progress("sampling" if key in self._compiled else "compiling", 0, 0,
                             time.perf_counter())
    return key not in self._compiled

  def _end(self, key: tuple, new: bool, t0: float) -> Timing:
    seconds = time.perf_counter() - t0
    if new:
      self._compiled.add(key)
      self.compile_seconds["/".join(map(str, key))] = seconds
    self.progress = Progress()
    return Timing(seconds, new)

  def _sample_program(self, steps: int, guidance: float) -> Callable:
    key = ("generate", steps, guidance)
    if key not in self._programs:
      cfg = copy.deepcopy(self.config)
      with cfg.unlocked():
        cfg.sample.respacing = respacing_for(cfg, steps)
        cfg.sample.guidance_scale = float(guidance)
      fn, _ = sampler.make_sample_fn(cfg, self.graphs, self.mesh, self.param_sh,
                                     self.label_schedule, progress=self._progress)
      self._programs[key] = fn
    return self._programs[key]

  def _editor(self, steps: int, guidance: float) -> editor_lib.Editor:
    key = (steps, guidance)
    if key not in self._editors:
      sc = self.config.sample
      diffusion = recipe.make_diffusion(
          self.config, respacing=respacing_for(self.config, steps))
      self._editors[key] = editor_lib.Editor(
          self.module, diffusion, self.label_schedule, num_classes=self.num_classes,
          use_instance=self.use_instance, mesh=self.mesh, params_sharding=self.param_sh,
          sampler=sc.sampler, eta=1.0, guidance_scale=float(guidance),
          dynamic_threshold=float(sc.dynamic_threshold),
          extrapolation=float(sc.extrapolation), label_mode=sc.label_mode,
          progress=self._progress)
    return self._editors[key]

  # ------------------------------------------------------------------ requests

  def generate(self, ids: np.ndarray, *, steps: int, guidance: float, seed: int,
               num_samples: int) -> tuple[np.ndarray, Timing]:
    """SCDM samples of one (H, W) id map: (num_samples, H, W, 3) uint8 and the timing."""
    ids = self._check_ids(ids)
    with self._lock:
      key = ("generate", steps, guidance, num_samples)
      new, t0 = self._begin(key), time.perf_counter()
      fn = self._sample_program(steps, guidance)
      labels, n = runner.put_padded(self.labels(np.repeat(ids[None], num_samples, 0)),
                                    self.mesh)
      out = runner.host_rows(fn(self.params, labels, jax.random.key(int(seed))), n)
      return images.to_uint8(out), self._end(key, new, t0)

  def sdedit(self, guide: np.ndarray, ids: np.ndarray | None, *, t0: float, steps: int,
             guidance: float, seed: int, num_samples: int) -> tuple[np.ndarray, Timing]:
    """SDEdit from an (H, W, 3) uint8 stroke image, with the label map or unconditional."""
    self._check_image(guide, "strokes")
    label = None if ids is None else self._check_ids(ids)
    with self._lock:
      editor = self._editor(steps, guidance)
      key = ("sdedit", steps, guidance, num_samples, editor.start_index(t0),
             label is None)
      new, start = self._begin(key), time.perf_counter()
      out = editor.sdedit(guide, label=label, t0=t0, seed=seed, num_samples=num_samples)
      return images.to_uint8(out), self._end(key, new, start)

  def masked(self, source: np.ndarray, mask: np.ndarray, ids: np.ndarray, *, steps: int,
             guidance: float, seed: int, num_samples: int,
             dilate: int = 0) -> tuple[np.ndarray, Timing]:
    """Regenerates the mask == 1 region of `source` for the label map; the rest is exact."""
    self._check_image(source, "source image")
    ids = self._check_ids(ids)
    mask = np.asarray(mask)
    if mask.shape != (self.size, self.size) or not np.isin(mask, (0, 1)).all():
      raise ValueError(f"mask: expected {self.size}x{self.size} values 0/1, got shape "
                       f"{mask.shape}; select a region first")
    if not mask.any():
      raise ValueError("mask: the selected region is empty; select or paint a region first")
    with self._lock:
      editor = self._editor(steps, guidance)
      key = ("masked", steps, guidance, num_samples)
      new, start = self._begin(key), time.perf_counter()
      out = editor.masked_edit(source, mask.astype(np.uint8), label=ids, t0=1.0,
                               dilate=dilate, seed=seed, num_samples=num_samples)
      return images.to_uint8(out), self._end(key, new, start)

  # ------------------------------------------------------------------ checks

  def _check_ids(self, ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.shape != (self.size, self.size):
      raise ValueError(f"label map: expected {self.size}x{self.size} class ids (the model's "
                       f"label resolution), got shape {ids.shape}")
    if ids.min() < label_io.UNKNOWN or ids.max() >= self.num_classes:
      raise ValueError(f"label map: ids must lie in -1..{self.num_classes - 1} (-1 = unknown), "
                       f"found {int(ids.min())}..{int(ids.max())}")
    return ids.astype(np.int32)

  def _check_image(self, image: np.ndarray, what: str) -> None:
    if image.shape != (self.size, self.size, 3) or image.dtype != np.uint8:
      raise ValueError(f"{what}: expected a {self.size}x{self.size} RGB uint8 image, got "
                       f"{image.dtype} {image.shape}")


class Painter:
  """A loaded Paint-by-Example pipeline for the studio's exemplar tab (one device).

  Args:
    pipe: the pipeline (`inference.paint.PaintPipeline`).
    where: a description of the weights, shown in the page.
  """

  def __init__(self, pipe: paint_lib.PaintPipeline, where: str):
    self.pipe, self.where = pipe, where
    self.factor = int(pipe.vae_config.downsample_factor)
    self.progress = Progress()
    self._compiled: set[tuple] = set()
    self._lock = threading.Lock()

  def _progress(self, call: int, total: int) -> None:
    p = self.progress
    p.phase, p.total, p.step = "sampling", int(total), max(p.step, int(call))

  def crop(self, image: np.ndarray) -> np.ndarray:
    """`image` cropped (bottom and right) to sides divisible by the VAE factor.

    Raises:
      ValueError: a side is shorter than the factor.
    """
    h, w = image.shape[:2]
    f = self.factor
    if h < f or w < f:
      raise ValueError(f"photo: {w}x{h} is too small; Paint by Example needs sides of at "
                       f"least {f} pixels (the released model works at 512x512)")
    return image[:h - h % f, :w - w % f]

  def paint(self, source: np.ndarray, mask: np.ndarray, exemplar: np.ndarray, *, steps: int,
            guidance: float, seed: int, sampler: str,
            paste_back: bool) -> tuple[np.ndarray, Timing]:
    """Paints `exemplar` into the mask > 127 region of `source`: (H, W, 3) uint8, timing."""
    h, w = source.shape[:2]
    if source.ndim != 3 or source.shape[2] != 3 or source.dtype != np.uint8:
      raise ValueError(f"photo: expected an RGB uint8 image, got {source.dtype} {source.shape}")
    if h % self.factor or w % self.factor:
      raise ValueError(f"photo: {w}x{h} is not divisible by {self.factor}; upload it again "
                       "(the page crops it)")
    if mask.shape != (h, w):
      raise ValueError(f"mask: expected {w}x{h} (the photo's size), got "
                       f"{mask.shape[1]}x{mask.shape[0]}")
    if not (mask > 127).any():
      raise ValueError("mask: nothing is painted; paint the region to repaint first")
    if sampler not in PAINT_SAMPLERS:
      raise ValueError(f"sampler {sampler!r} is unknown; use one of {', '.join(PAINT_SAMPLERS)}")
    with self._lock:
      # What changes the compiled program (the pipeline keeps the programs themselves).
      key = ("paint", h, w, steps, guidance > 1, sampler, paste_back)
      new = key not in self._compiled
      self.progress = Progress("compiling" if new else "sampling", 0, 0, time.perf_counter())
      t0 = time.perf_counter()
      try:
        out = self.pipe.paint(source[None], mask[None], [exemplar],
                              key=jax.random.key(int(seed)), num_steps=int(steps),
                              guidance_scale=float(guidance), sampler=sampler,
                              paste_back=bool(paste_back), progress=self._progress)
      finally:
        self.progress = Progress()
      seconds = time.perf_counter() - t0
      self._compiled.add(key)
      # The pipeline returns [0, 1]; the same conversion as --mode paint (paste-back exact).
      return images.to_uint8(np.asarray(out)[0] * 2.0 - 1.0), Timing(seconds, new)


def load_painter(config: ml_collections.ConfigDict, path: str) -> Painter:
  """Loads the Paint-by-Example weights at `path` (diffusers folder, model.ckpt or export).

  `config.paint.weights_config` and `config.paint.dtype` apply as in `--mode paint`.
  """
  pc = config.paint
  if str(pc.dtype) not in _PAINT_DTYPES:
    raise ValueError(f"config.paint.dtype={pc.dtype!r}: use one of {sorted(_PAINT_DTYPES)}")
  # One device, as for the SCDM model: one request is one image.
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1}, devices=jax.devices()[:1])
  try:
    pipe = paint_lib.PaintPipeline.load(path, config=str(pc.weights_config) or None,
                                        dtype=_PAINT_DTYPES[str(pc.dtype)], mesh=mesh)
  except FileNotFoundError as err:
    raise FileNotFoundError(f"config.serve.paint_weights={path!r}: {err}") from None
  return Painter(pipe, path)


def _class_table(config: ml_collections.ConfigDict) -> palettes.ClassTable:
  """The config's class table, or numbered classes with fixed random colours."""
  name = config.data.get("class_table", "") or config.data.name
  k = int(config.data.num_classes)
  try:
    table = palettes.get_class_table(name)
    if table.num_classes == k:
      return table
  except (ValueError, FileNotFoundError):
    pass
  colors = np.random.default_rng(0).integers(0, 256, (k, 3)).astype(np.uint8)
  return palettes.ClassTable(name, tuple(f"class {i}" for i in range(k)), colors)


def load_model(config: ml_collections.ConfigDict, checkpoint: str,
               workdir: str | None) -> Model:
  """Loads `checkpoint` (an export dir; "" = the sample mode's search: sample.checkpoint,
  then `workdir`'s export/ and checkpoints/)."""
  cfg = copy.deepcopy(config)
  if checkpoint:
    with cfg.unlocked():
      cfg.sample.checkpoint = checkpoint
  try:
    params, meta, where = loading.load_weights(cfg, workdir)
  except FileNotFoundError:
    if checkpoint or cfg.sample.checkpoint:
      raise
    raise FileNotFoundError(
        f"--mode serve: no weights: set --config.serve.checkpoint=<export dir>, or give a "
        f"--workdir containing export/ or checkpoints/ (got workdir={workdir!r})") from None
  return Model(cfg, params, meta, where)


def load_label_upload(path: str, model: Model) -> tuple[np.ndarray, label_io.LabelReport]:
  """An uploaded id or palette PNG (already on disk) -> ids at the model's size and report."""
  palette = model.config.data.get("class_table", "") or model.config.data.name
  return label_io.load_label_map(path, num_classes=model.num_classes, palette=palette,
                                 size=model.size)


def load_image_upload(path: str, model: Model) -> np.ndarray:
  """An uploaded photo (already on disk) -> (S, S, 3) uint8, centre-cropped and resized."""
  arr = images.to_uint8(images.load_image(path))
  h, w = arr.shape[:2]
  if (h, w) == (model.size, model.size):
    return arr
  s = min(h, w)
  y, x = (h - s) // 2, (w - s) // 2
  im = Image.fromarray(arr[y:y + s, x:x + s]).resize((model.size, model.size), Image.LANCZOS)
  return np.asarray(im, np.uint8)


def label_png_ids(ids: np.ndarray, model: Model) -> np.ndarray:
  """Ids for an id PNG: unknown (-1) becomes the "unlabeled" class (a PNG has no -1).

  Raises:
    ValueError: the map has unknown pixels and the class table no "unlabeled" class.
  """
  ids = np.asarray(ids, np.int32)
  if (ids < 0).any():
    unl = model.table.unlabeled_class
    if unl is None:
      raise ValueError("label PNG: the map has unknown pixels and the class table has no "
                       "'unlabeled' class to store them as; paint them with a class first")
    ids = np.where(ids < 0, unl, ids)
  return ids


def colorize(ids: np.ndarray, model: Model) -> np.ndarray:
  return label_io.colorize(ids, model.table)
