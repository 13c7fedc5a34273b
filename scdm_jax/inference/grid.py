"""The periodic sample grid of a training run: each row = colourised label | samples."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from scdm_jax import recipe
from scdm_jax import state as state_lib
from scdm_jax.data import datasets
from scdm_jax.data import label_io
from scdm_jax.diffusion import label_diffusion
from scdm_jax.inference import runner
from scdm_jax.inference import sampler
from scdm_jax.io import images as image_io


class TrainingGrid:
  """Samples the first `config.train.num_sample_maps` maps of the eval split.

  Uses the config's sampling settings (`config.sample`) on the params it is given (the
  EMA). The maps and the key are fixed, so grids of successive steps are comparable.
  """

  def __init__(self, config: ml_collections.ConfigDict, graphs: state_lib.Graphs, mesh,
               param_shardings, label_schedule: label_diffusion.LabelSchedule):
    self.mesh = mesh
    n_maps = int(config.train.num_sample_maps)
    self.n_per = max(1, int(config.sample.num_samples_per_map))
    with datasets.create_dataset(config.data, config.data.eval_split, batch_size=n_maps,
                                 train=False, seed=0) as it:
      batch = next(it)
    self.ids = batch["label"][:n_maps].astype(np.int32)
    labels = {"label": self.ids}
    if "edge" in batch:
      labels["edge"] = batch["edge"][:n_maps]
    self.labels = {k: np.repeat(v, self.n_per, axis=0) for k, v in labels.items()}
    self.colors = recipe.label_colors(config)
    self.fn, _ = sampler.make_sample_fn(config, graphs, mesh, param_shardings,
                                        label_schedule)
    self.key = jax.random.key(int(config.sample.seed))

  def __call__(self, ema_params, step: int) -> np.ndarray:
    del step  # the same maps and noise at every step
    labels, n = runner.put_padded(self.labels, self.mesh)
    images = image_io.to_uint8(runner.host_rows(self.fn(ema_params, labels, self.key), n))
    drawn = label_io.colorize(self.ids, self.colors)
    rows = [[drawn[i]] + [images[i * self.n_per + j] for j in range(self.n_per)]
            for i in range(len(self.ids))]
    return image_io.make_grid(rows)
