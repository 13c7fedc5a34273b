"""The training loops' non-finite guard: fetch a finished step's metrics, stop on NaN/inf.

The step itself refuses a non-finite update (`finite` = 0); the loop then stops without
writing a checkpoint, so the last good one is kept.
"""

from __future__ import annotations

import math
from typing import Any

import jax


def drain(pending: tuple[int, Any], ckpt) -> tuple[int, dict[str, float]]:
  """`(step, device metrics)` -> `(step, host floats)`.

  Raises:
    FloatingPointError: the step's loss, gradient norm or updated params were not finite.
  """
  s, m = pending
  host = {k: float(v) for k, v in jax.device_get(m).items()}
  if host["finite"] < 1.0 or not math.isfinite(host["loss"]):
    raise FloatingPointError(
        f"Non-finite loss, gradient or update at step {s} (loss={host['loss']}, grad_norm="
        f"{host['grad_norm']}, param_norm after the update={host['param_norm']}); the "
        "update was not applied. Stopping without saving: the last good checkpoint in "
        f"{ckpt.directory} is kept (steps {ckpt.all_steps()}). Lower optim.lr, set "
        "optim.grad_clip, or use model.dtype=float32.")
  return s, host
