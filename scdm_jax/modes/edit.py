"""`--mode edit`: SDEdit from strokes, or masked regeneration after a label edit.

Inputs from `config.edit` (configs/default.py, docs/editing.md): `guide` is a PNG or a
folder; `mask`, `label` and `strokes` are a single file (used for every guide) or a folder
with the guides' file names (local or gs://). Without `mask` it is SDEdit; with one,
masked editing. Weights and sampler settings (checkpoint, sampler, guidance_scale,
dynamic_threshold, extrapolation, label_mode, seed, batch_size) come from `config.sample`,
the chain from `config.edit.respacing`. Outputs: `<output_dir>/sample_<j>/<name>.png`,
plus `<output_dir>/masks/<name>.png` (the mask used, after dilation) in masked mode.
"""

from __future__ import annotations

import os
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np
from flax import nnx

from scdm_jax import recipe
from scdm_jax import sharding
from scdm_jax import state as state_lib
from scdm_jax.data import label_io
from scdm_jax.inference import loading
from scdm_jax.inference.editor import Editor
from scdm_jax.io import fileio
from scdm_jax.io import images as image_io
from scdm_jax.io import progress as progress_lib


def _match(guides: list[str], path: str, what: str) -> list[str]:
  """The `what` file of each guide ("" for all when unset)."""
  if not path:
    return [""] * len(guides)
  return fileio.match_by_name(guides, path, f"config.edit.{what}", "guide")


def run(config: ml_collections.ConfigDict, workdir: str | None) -> dict[str, Any]:
  """Edits every guide; returns a summary (count, output_dir, start_index, steps, alpha_bar)."""
  ec, sc = config.edit, config.sample
  recipe.check_counts(config, "edit", {"num_samples": 1})  # before anything is read
  recipe.check_counts(config, "sample", {"batch_size": 1})
  out_dir = ec.output_dir or os.path.join(workdir or ".", "edits")
  if jax.process_index() == 0:
    fileio.check_writable(out_dir, "config.edit.output_dir")
  if not ec.guide:
    raise ValueError("--mode edit needs --config.edit.guide=<PNG or folder> (the strokes "
                     "for SDEdit, or the source image for masked editing)")
  guides = fileio.list_images(str(ec.guide), "config.edit.guide", fileio.IMAGE_EXTENSIONS)
  masks = _match(guides, str(ec.mask), "mask")
  labels = _match(guides, str(ec.label), "label")
  strokes = _match(guides, str(ec.strokes), "strokes")
  masked = bool(ec.mask)
  if ec.strokes and not masked:
    raise ValueError("config.edit.strokes is for masked editing (set config.edit.mask); for "
                     "SDEdit give the strokes as config.edit.guide")

  # Weights and the label schedule the model was trained with.
  params_pure, meta, where = loading.load_weights(config, workdir)
  label_schedule = recipe.label_schedule_for(config, meta)
  mesh = sharding.make_mesh(config.mesh)
  graphs, _ = state_lib.graphs_and_abstract(config)
  model = nnx.merge(graphs.model, state_lib.params_from_pure(graphs, params_pure))
  diffusion = recipe.make_diffusion(config, respacing=ec.respacing or None)

  is_main = jax.process_index() == 0
  bar = progress_lib.ProgressBar(0, "edit", unit="steps", enabled=is_main)
  done = {"steps": 0}  # steps of the batches already finished

  def progress(step, total):
    # Absolute counts: repeated calls (one per device in a sharded program) are harmless.
    bar.update(done["steps"] + min(step, total))

  k = int(config.data.num_classes)
  editor = Editor(model, diffusion, label_schedule, num_classes=k,
                  use_instance=bool(config.data.use_instance), mesh=mesh,
                  sampler=sc.sampler, eta=float(ec.eta),
                  guidance_scale=float(sc.guidance_scale),
                  dynamic_threshold=float(sc.dynamic_threshold),
                  extrapolation=float(sc.extrapolation), label_mode=sc.label_mode,
                  progress=progress)
  size = int(config.data.image_size)
  t0, alpha_bar, repeats = float(ec.t0), float(ec.alpha_bar) or None, int(ec.repeats)
  k0 = editor.start_index(t0, alpha_bar)
  palette, dataset = label_io.format_options(
      sc.label_format, config.data.class_table or config.data.name, config.data.name)
  n_per = int(ec.num_samples)
  batch = max(1, int(sc.batch_size) // n_per)
  base_key = jax.random.key(int(sc.seed))
  steps_per_batch = repeats * (k0 + 1)
  bar.total = -(-len(guides) // batch) * steps_per_batch
  logging.info("Editing %d image(s) from %s: %s, t0=%s -> start index %d of %d (alpha-bar "
               "%.4f, timestep %d), %d repeat(s).", len(guides), where,
               "masked" if masked else "SDEdit", ec.t0, k0, diffusion.num_timesteps,
               diffusion.table("alphas_cumprod")[k0], diffusion.timestep_map[k0], repeats)
  written = 0
  for bi in range(0, len(guides), batch):
    imgs, ids_list, ms, sts, names = [], [], [], [], []
    for i in range(bi, min(bi + batch, len(guides))):
      img = image_io.load_image(guides[i])
      sizes = [(f"guide {guides[i]}", img.shape[:2])]
      if labels[i]:
        ids, _ = label_io.load_label_map(labels[i], num_classes=k, palette=palette,
                                         dataset=dataset)
        sizes.append((f"label map {labels[i]}", ids.shape))
        ids_list.append(ids)
      if masked:
        m = image_io.load_mask(masks[i])
        sizes.append((f"mask {masks[i]}", m.shape))
        ms.append(m)
      if strokes[i]:
        st = image_io.load_image(strokes[i])
        sizes.append((f"strokes {strokes[i]}", st.shape[:2]))
        sts.append(st)
      image_io.check_same_size(sizes)
      if img.shape[:2] != (size, size):
        raise ValueError(f"guide {guides[i]} is {img.shape[0]}x{img.shape[1]} but the model "
                         f"works at {size}x{size} (config.data.image_size); resize the "
                         "inputs (nearest for masks and label maps)")
      imgs.append(img)
      names.append(os.path.splitext(os.path.basename(guides[i]))[0])
    guide = np.stack(imgs)
    label = np.stack(ids_list).astype(np.int32) if ids_list else None
    key = jax.random.fold_in(base_key, bi)
    if masked:
      out = editor.masked_edit(guide, np.stack(ms), label=label,
                               strokes=np.stack(sts) if sts else None, t0=t0,
                               alpha_bar=alpha_bar, repeats=repeats, dilate=int(ec.dilate),
                               seed=key, num_samples=n_per)
    else:
      out = editor.sdedit(guide, label=label, t0=t0, alpha_bar=alpha_bar, repeats=repeats,
                          seed=key, num_samples=n_per)
    if is_main:
      out8 = image_io.to_uint8(out)
      for r, name in enumerate(names):
        for j in range(n_per):
          image_io.save_png(os.path.join(out_dir, f"sample_{j}", f"{name}.png"),
                            out8[r * n_per + j])
        if masked:
          m = image_io.dilate_mask(ms[r], int(ec.dilate))
          image_io.save_png(os.path.join(out_dir, "masks", f"{name}.png"),
                            np.repeat((m * 255).astype(np.uint8)[..., None], 3, -1))
    written += len(names)
    done["steps"] += steps_per_batch
  bar.close()
  logging.info("Wrote %d x %d edited images to %s.", written, n_per, out_dir)
  return {"count": written, "samples_per_input": n_per, "output_dir": out_dir,
          "start_index": k0, "steps": steps_per_batch,
          "alpha_bar": float(diffusion.table("alphas_cumprod")[k0]), "masked": masked}
