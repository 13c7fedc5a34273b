"""`Editor`: SDEdit synthesis and masked (label-edit) regeneration, batched and sharded.

Two uses of one procedure (`scdm_jax.diffusion.sdedit`; docs/editing.md):

* **SDEdit synthesis** (`Editor.sdedit`): a guide image (colour strokes) is noised to the
  level `t0` and the reverse chain runs from there to 0, conditioned on a label map, or
  unconditionally (the classifier-free null label: the all-zero conditioning) without one.
* **Masked editing** (`Editor.masked_edit`): a source image, a mask (1 = regenerate) and
  optionally an edited label map (and strokes pasted into the mask). Outside the mask the
  source is kept exactly.

Inputs are checked on the host (sizes, value ranges, ids within the class table); the
label map goes to the devices as class ids and becomes one-hot inside the program.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scdm_jax import compile_options
from scdm_jax import sharding
from scdm_jax.data import label_io
from scdm_jax.data import noisy
from scdm_jax.diffusion import label_diffusion
from scdm_jax.diffusion.gaussian import GaussianDiffusion
from scdm_jax.diffusion.sdedit import sdedit
from scdm_jax.diffusion.sdedit import start_index_for
from scdm_jax.inference import runner
from scdm_jax.io.images import check_same_size
from scdm_jax.io.images import dilate_mask
from scdm_jax.io.images import load_mask
from scdm_jax.io.images import to_float_image


class Editor:
  """Runs SDEdit / masked editing with one model, batched and sharded over a mesh.

  Example:
    editor = Editor(unet, GaussianDiffusion.create("linear", 1000, "ddim25"), schedule,
                    num_classes=9)
    out = editor.sdedit(strokes_uint8, label=ids, t0=0.5, seed=0)   # (B, H, W, 3)
    out = editor.masked_edit(source, mask, label=edited_ids, t0=1.0, dilate=2)

  Args:
    model: an `nnx.Module` (e.g. the UNet; its state is an argument of the compiled
      program) or a plain function `(x_t, t_orig, cond) -> eps[, v]`.
    diffusion: the chain to run on (e.g. respacing "ddim25", or None for the full chain).
    label_schedule: the model's label schedule.
    num_classes: K label classes; `use_instance` adds the edge channel (L = K + 1).
    mesh: device mesh (default: all devices, data parallel); batches are padded to a
      multiple of its size and split over it.
    params_sharding: optional shardings of the model state (default replicated).
    sampler, eta, guidance_scale, dynamic_threshold, extrapolation, label_mode,
      clip_denoised: the sampler settings (`sampling.sample`); eta is used by "ddim" only.
    progress: optional host `progress(step, total)`; called every step of a run.
  """

  def __init__(self, model, diffusion: GaussianDiffusion,
               label_schedule: label_diffusion.LabelSchedule, *, num_classes: int,
               use_instance: bool = False, mesh: jax.sharding.Mesh | None = None,
               params_sharding: Any = None, sampler: str = "ddpm", eta: float = 1.0,
               guidance_scale: float = 1.0, dynamic_threshold: float = 0.0,
               extrapolation: float = 0.0, label_mode: str = "fresh",
               clip_denoised: bool = True,
               progress: Callable[[int, int], None] | None = None):
    self.diffusion, self.label_schedule = diffusion, label_schedule
    self.num_classes = int(num_classes)
    self.use_instance = bool(use_instance)
    self.cond_channels = self.num_classes + int(self.use_instance)
    self.mesh = mesh if mesh is not None else sharding.make_mesh({"data": -1, "fsdp": 1})
    self.settings = dict(sampler=sampler, eta=float(eta), guidance_scale=float(guidance_scale),
                         dynamic_threshold=float(dynamic_threshold),
                         extrapolation=float(extrapolation), label_mode=label_mode,
                         clip_denoised=bool(clip_denoised))
    self.progress = progress
    if isinstance(model, nnx.Module):
      self._graphdef, self._state = nnx.split(model)
      shard = params_sharding if params_sharding is not None else jax.tree.map(
          lambda _: sharding.replicated(self.mesh), self._state)
      self._state = jax.device_put(self._state, shard)
      self._state_sharding = shard
      self._fn_model = None
    else:
      self._graphdef, self._state = None, {}
      self._state_sharding = sharding.replicated(self.mesh)
      self._fn_model = model
    self._programs: dict[tuple, Callable] = {}

  # ------------------------------------------------------------------ public API

  def start_index(self, t0: float | None = 0.5, alpha_bar: float | None = None) -> int:
    """Respaced start index of this editor's chain for t0 (or alpha_bar)."""
    return start_index_for(self.diffusion, t0=t0, alpha_bar=alpha_bar)

  def sdedit(self, guide, *, label=None, t0: float | None = 0.5,
             alpha_bar: float | None = None, repeats: int = 1, seed: int | jax.Array = 0,
             num_samples: int = 1) -> np.ndarray:
    """SDEdit synthesis from a guide (strokes).

    Args:
      guide: (H, W, 3) or (B, H, W, 3) uint8 or float in [-1, 1].
      label: None (unconditional: the null label) or class ids (H, W) / (B, H, W) int
        (-1 = unknown); the edge channel (use_instance) is derived from them.
      t0 / alpha_bar: noise level (see `start_index_for`).
      repeats: K.
      seed: int or PRNG key; same seed, inputs and batch -> same output.
      num_samples: outputs per guide (rows b * num_samples + j).

    Returns:
      (B * num_samples, H, W, 3) float32 in [-1, 1].
    """
    guide = self._images(guide, "guide")
    labels = self._labels(label, guide.shape[:3], "label")
    return self._run(guide, labels, None, t0=t0, alpha_bar=alpha_bar, repeats=repeats,
                     seed=seed, num_samples=num_samples)

  def masked_edit(self, source, mask, *, label=None, strokes=None, t0: float | None = 1.0,
                  alpha_bar: float | None = None, repeats: int = 1, dilate: int = 0,
                  seed: int | jax.Array = 0, num_samples: int = 1) -> np.ndarray:
    """Regenerates the masked region of `source`; the rest is kept exactly.

    Args:
      source: (H, W, 3) / (B, H, W, 3) uint8 or float in [-1, 1].
      mask: (H, W) / (B, H, W) [/ ..., 1] array or PNG path, 0/1 or 0/255 (1 = regenerate).
      label: the (edited) label map (see `sdedit`); None = unconditional.
      strokes: optional image of the source's size painted into the mask (the guide
        inside the mask; default the source itself).
      t0 / alpha_bar: noise level; 1.0 (default) ignores what was inside the mask,
        0.3-0.6 keeps its colours (stroke editing).
      repeats, seed, num_samples: as for `sdedit`.
      dilate: grow the mask by this many pixels first (a blending band at the seam).

    Returns:
      (B * num_samples, H, W, 3) float32; equal to `source` (bit for bit, as float32
      [-1, 1]) wherever the (dilated) mask is 0.
    """
    source = self._images(source, "source")
    m = load_mask(mask, None)
    check_same_size([("source", source.shape[1:3]), ("mask", m.shape[-2:])])
    if m.ndim == 2:
      m = np.broadcast_to(m, source.shape[:3])
    if m.shape[0] != source.shape[0]:
      raise ValueError(f"mask batch {m.shape[0]} != source batch {source.shape[0]}")
    m = dilate_mask(m, dilate)[..., None]
    guide = source
    if strokes is not None:
      s = self._images(strokes, "strokes")
      check_same_size([("source", source.shape[1:3]), ("strokes", s.shape[1:3])])
      s = np.broadcast_to(s, source.shape)
      guide = (1.0 - m) * source + m * s
    labels = self._labels(label, source.shape[:3], "label")
    return self._run(guide, labels, m, t0=t0, alpha_bar=alpha_bar, repeats=repeats,
                     seed=seed, num_samples=num_samples)

  # ------------------------------------------------------------------ internals

  def _images(self, x, name: str) -> np.ndarray:
    x = to_float_image(x, name)
    return x[None] if x.ndim == 3 else x

  def _labels(self, label, bhw: tuple[int, int, int], name: str
              ) -> dict[str, np.ndarray] | None:
    """None (null label) or {"label": (B, H, W) int32 ids[, "edge": (B, H, W, 1)]}."""
    if label is None:
      return None
    lab = np.asarray(label)
    b, h, w = bhw
    if not np.issubdtype(lab.dtype, np.integer) or lab.ndim not in (2, 3):
      raise ValueError(f"{name}: expected class ids (H, W) or (B, H, W) int (-1 = unknown), "
                       f"got {lab.dtype} {lab.shape}")
    ids = lab[None] if lab.ndim == 2 else lab
    check_same_size([("the image", (h, w)), (name, ids.shape[-2:])])
    ids = label_io.check_ids(ids, self.num_classes, name)
    if ids.shape[0] not in (1, b):
      raise ValueError(f"{name}: batch {ids.shape[0]} != image batch {b}")
    out = {"label": np.broadcast_to(ids, (b, h, w)).copy()}
    if self.use_instance:
      edge = np.stack([noisy.boundary_map(i) for i in out["label"]]).astype(np.float32)
      out["edge"] = edge[..., None]
    return out

  def _program(self, start_index: int, repeats: int, masked: bool):
    key = (start_index, repeats, masked)
    if key in self._programs:
      return self._programs[key]
    graphdef, fn_model, k = self._graphdef, self._fn_model, self.num_classes
    settings, diffusion, schedule = self.settings, self.diffusion, self.label_schedule
    progress, channels = self.progress, self.cond_channels

    def run(state, guide, labels, mask, key):
      apply = fn_model if graphdef is None else nnx.merge(graphdef, state)
      s = dict(settings)
      if labels is None:  # unconditional: CFG would compare the null label with itself
        s["guidance_scale"] = 1.0
        cond = jnp.zeros(guide.shape[:3] + (channels,), jnp.float32)
      else:
        cond = label_diffusion.condition(labels["label"], k, labels.get("edge"))
      return sdedit(apply, diffusion, schedule, guide, cond, key, start_index=start_index,
                    num_label_channels=k, mask=mask if masked else None, repeats=repeats,
                    progress=progress, **s)

    bsh = sharding.batch_sharding(self.mesh)
    rep = sharding.replicated(self.mesh)
    fn = jax.jit(run, in_shardings=(self._state_sharding, bsh, bsh, bsh, rep),
                 out_shardings=bsh, compiler_options=compile_options.compiler_options())
    self._programs[key] = fn
    return fn

  def _run(self, guide, labels, mask, *, t0, alpha_bar, repeats, seed, num_samples):
    k0 = self.start_index(t0, alpha_bar)
    n = max(1, int(num_samples))
    inputs = {"guide": guide.astype(np.float32), "labels": labels,
              "mask": None if mask is None else np.asarray(mask, np.float32)}
    if n > 1:
      inputs = jax.tree.map(lambda a: np.repeat(a, n, 0), inputs)
    dev, rows = runner.put_padded(inputs, self.mesh)
    key = seed if isinstance(seed, jax.Array) else jax.random.key(int(seed))
    fn = self._program(k0, int(repeats), mask is not None)
    out = fn(self._state, dev["guide"], dev["labels"], dev["mask"], key)
    return runner.host_rows(out, rows)
