"""`--mode export`: an inference checkpoint from the newest training checkpoint.

Writes `checkpointing.save_export(dir, ema_params, meta)` with meta = the run's config,
`model` (UNetConfig fields), `num_classes`, `class_names`/`class_table`, the label schedule
(incl. psi), `source` and `step`. `inference.loading.load_weights` and `config.init_from`
read it. The target is `--export_dir`, else `<workdir>/export`. With
`config.task=paint_by_example` the newest Paint-by-Example checkpoint is written as a
`--mode paint` export instead (e.g. of a preempted run; `pbe_loop.export_latest`).
"""

from __future__ import annotations

import os
from typing import Any

from absl import logging
import jax
import ml_collections

from scdm_jax import checkpointing
from scdm_jax.inference import loading
from scdm_jax.io import fileio
from scdm_jax.training import pbe_loop


def run(config: ml_collections.ConfigDict, workdir: str, export_dir: str | None = None,
        *, use_ema: bool = True, step: int | None = None) -> str:
  """Exports the newest (or `step`) training checkpoint of `workdir`; returns the path."""
  if not workdir:
    raise ValueError("--mode export needs --workdir (the training run to export).")
  if config.get("task", "scdm") == "paint_by_example":
    return pbe_loop.export_latest(config, workdir, export_dir)
  ckdir = os.path.join(workdir, "checkpoints")
  if not fileio.isdir(ckdir):
    raise FileNotFoundError(f"--mode export: {ckdir} does not exist; train first.")
  target = export_dir or os.path.join(workdir, "export")
  if jax.process_index() == 0:  # the export is written next to its target, then moved in
    fileio.check_writable(os.path.dirname(fileio.absolute(target)) or ".",
                          "--export_dir" if export_dir else "--workdir")
  params, meta, step = loading.load_train_params(config, ckdir, use_ema=use_ema, step=step)
  meta: dict[str, Any] = dict(meta)
  meta["source"] = f"scdm_jax training checkpoint {ckdir} step {step}"
  meta["step"] = int(step)
  meta["weights"] = "ema" if use_ema else "params"
  # Every process calls this: orbax coordinates a multi-process write.
  checkpointing.save_export(target, params, meta)
  logging.info("Exported step %d (%s) to %s.", step, meta["weights"], target)
  return target
