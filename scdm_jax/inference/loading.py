"""Finding and loading the weights to run: an inference export or a training checkpoint.

Order (`load_weights`): `config.sample.checkpoint` (written by `--mode export` or
`python -m scdm_jax.tools.convert`), else `<workdir>/export`, else the newest training
checkpoint in `<workdir>/checkpoints` (EMA weights unless `config.sample.use_ema=False`).
An export older than the newest checkpoint of the same workdir is used with a warning
(run `--mode export` again). A checkpoint whose class count or class table does not match
the config is refused (`recipe.check_meta_matches`).
"""

from __future__ import annotations

import os
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from scdm_jax import checkpointing
from scdm_jax import recipe
from scdm_jax import state as state_lib
from scdm_jax.io import fileio


def load_weights(config: ml_collections.ConfigDict, workdir: str | None
                 ) -> tuple[dict[str, Any], dict[str, Any], str]:
  """Finds and loads the weights to sample from; returns `(params_pure, meta, where)`.

  Raises:
    FileNotFoundError: no checkpoint anywhere.
    ValueError: the checkpoint does not match the config.
  """
  sc = config.sample
  if sc.checkpoint or (workdir and fileio.isdir(os.path.join(workdir, "export"))):
    path = sc.checkpoint or os.path.join(workdir, "export")
    params, meta = checkpointing.load_export(path)
    recipe.check_meta_matches(meta, config, what=f"inference checkpoint {path!r}")
    _warn_if_stale(path, meta, workdir)
    return params, meta, path
  if workdir:
    ckdir = os.path.join(workdir, "checkpoints")
    if fileio.isdir(ckdir):
      params, meta, step = load_train_params(config, ckdir, use_ema=bool(sc.use_ema))
      return params, meta, f"{ckdir} step {step} ({'EMA' if sc.use_ema else 'raw'} params)"
  raise FileNotFoundError(
      f"No weights to sample from: set --config.sample.checkpoint=<export dir>, or give a "
      f"--workdir containing export/ or checkpoints/ (got workdir={workdir!r}).")


def _warn_if_stale(path: str, meta: dict, workdir: str | None) -> None:
  """Warns when the export is older than the newest training checkpoint of `workdir`."""
  ckdir = os.path.join(workdir, "checkpoints") if workdir else None
  if meta.get("step") is None or not ckdir or not fileio.isdir(ckdir):
    return
  steps = [int(n) for n in fileio.listdir(ckdir) if n.isdigit()]
  if steps and max(steps) > int(meta["step"]):
    logging.warning("Sampling from the export %s of step %d, but %s has a newer checkpoint "
                    "(step %d): run --mode export again to sample the newest weights.",
                    path, int(meta["step"]), ckdir, max(steps))


def load_train_params(config: ml_collections.ConfigDict, ckdir: str, *,
                      use_ema: bool = True, step: int | None = None):
  """Params (EMA by default) of a training checkpoint as host numpy, its meta and step."""
  ckpt = checkpointing.TrainCheckpointer(ckdir, async_save=False)
  try:
    step = ckpt.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{ckdir} holds no finished training checkpoint.")
    meta = ckpt.restore_meta(step)
    recipe.check_meta_matches(meta, config, what=f"training checkpoint {ckdir} step {step}")
    _, abstract = state_lib.graphs_and_abstract(config)
    host = lambda t: jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), t)
    target = {k: host(v) for k, v in state_lib.to_checkpoint(abstract).items()}
    target["data_pos"] = np.zeros((), np.int64)
    tree, _ = ckpt.restore(step, target)
  finally:
    ckpt.close()
  return tree["ema" if use_ema else "params"], meta, step
