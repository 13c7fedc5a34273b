"""`--mode sample`: write samples for a dataset split or for your own label PNGs.

* weights: `inference.loading.load_weights` (`config.sample.checkpoint`, else
  `<workdir>/export`, else the newest training checkpoint); a checkpoint that does not
  match the config is refused.
* label maps: `config.sample.source`, a split name or label PNG(s)
  (`inference.label_batches`).
* outputs (PNG, written atomically): `<output_dir>/sample_<j>/<name>.png` for the j-th of
  `config.sample.num_samples_per_map` samples of each map, and `<output_dir>/labels/<name>.png`
  (the colourised input label). Point an FID tool at `sample_0/`.
* settings: `config.sample.{sampler, eta, respacing, guidance_scale, dynamic_threshold,
  extrapolation, label_mode, seed, batch_size}`. Batches are padded to a multiple of the
  device count and run as one program sharded over all devices; each process writes the
  rows it holds (no gather). Same seed and batch size give the same images.
"""

from __future__ import annotations

import os
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from scdm_jax import recipe
from scdm_jax import sharding
from scdm_jax import state as state_lib
from scdm_jax.data import label_io
from scdm_jax.inference import label_batches
from scdm_jax.inference import loading
from scdm_jax.inference import runner
from scdm_jax.inference import sampler
from scdm_jax.io import fileio
from scdm_jax.io import images as image_io
from scdm_jax.io import progress


def run(config: ml_collections.ConfigDict, workdir: str | None) -> dict[str, Any]:
  """Samples every map of the configured source; returns a summary dict."""
  sc = config.sample
  # Before any weight is read or program compiled.
  recipe.check_counts(config, "sample", {"num_samples_per_map": 1, "batch_size": 1})
  out_dir = sc.output_dir or os.path.join(workdir or ".", "samples")
  if jax.process_index() == 0:
    fileio.check_writable(out_dir, "config.sample.output_dir")
  mesh = sharding.make_mesh(config.mesh)
  params_pure, meta, where = loading.load_weights(config, workdir)
  logging.info("Sampling from %s.", where)
  label_schedule = recipe.label_schedule_for(config, meta)

  graphs, abstract = state_lib.graphs_and_abstract(config)
  param_sh = sharding.state_shardings(mesh, abstract.params, int(config.mesh.fsdp_min_size))
  params = state_lib.params_from_pure(graphs, params_pure, param_sh)

  is_main = jax.process_index() == 0
  n_per = int(sc.num_samples_per_map)
  batch = runner.round_up(max(int(sc.batch_size), 1), sharding.num_batch_shards(mesh))
  maps_per_batch = max(1, batch // n_per)
  colors = recipe.label_colors(config)

  fn, diffusion = sampler.make_sample_fn(config, graphs, mesh, param_sh, label_schedule)
  base_key = jax.random.key(int(sc.seed))
  written = 0
  bar = progress.ProgressBar(int(sc.max_maps), "sample", unit="maps", enabled=is_main)
  for bi, maps in enumerate(label_batches.iter_label_batches(config, maps_per_batch)):
    rows = {k: np.repeat(v, n_per, axis=0) for k, v in maps.arrays().items()}
    labels, n = runner.put_padded(rows, mesh)
    images = fn(params, labels, jax.random.fold_in(base_key, bi))
    for row, image in runner.local_rows(images, n):
      name, j = maps.names[row // n_per], row % n_per
      image_io.save_png(os.path.join(out_dir, f"sample_{j}", f"{name}.png"),
                        image_io.to_uint8(image))
    if is_main:
      for name, drawn in zip(maps.names, label_io.colorize(maps.label, colors)):
        image_io.save_png(os.path.join(out_dir, "labels", f"{name}.png"), drawn)
    written += len(maps)
    bar.total = max(bar.total, written)
    bar.update(written)
  bar.close()
  logging.info("Wrote %d x %d samples to %s (%d steps, sampler %s, guidance %.2f).",
               written, n_per, out_dir, diffusion.num_timesteps, sc.sampler,
               float(sc.guidance_scale))
  return {"maps": written, "samples_per_map": n_per, "output_dir": out_dir,
          "image_size": int(config.data.image_size)}
