"""The sanity guard: a step counts as good only if its numbers are finite AND sane.

A non-finite loss is caught by the train step itself; a run that diverges slowly (a huge
learning rate, a bad batch) can stay finite while its parameters blow up. The guard keeps
a running history of the gradient norm and compares each drained step with it:

* grad norm > `grad_factor` (1e3) x the median of the last `window` sane steps, or
* param norm (after the update) > `param_factor` (100) x the previous sane step's (the
  first step compares with the params the run started from).

The training loops stop without saving when the guard trips, so every checkpoint on disk
passed it: the next start resumes from the last sane step, never from a poisoned one.
`drain` is what the SCDM and Paint-by-Example loops call on each finished step.
"""

from __future__ import annotations

import collections
import math
from typing import Any

import jax


class SanityGuard:
  """Running history of sane steps; `check` says why a step is not sane (or None)."""

  def __init__(self, initial_param_norm: float, *, grad_factor: float = 1e3,
               param_factor: float = 100.0, window: int = 100, min_history: int = 5):
    self.grad_factor, self.param_factor = grad_factor, param_factor
    self.min_history = min_history
    self._grads: collections.deque[float] = collections.deque(maxlen=window)
    self._param_norm = float(initial_param_norm)

  def check(self, host: dict[str, float]) -> str | None:
    """Returns why the step's metrics are not sane, else records them and returns None."""
    loss, g, p = host["loss"], host["grad_norm"], host["param_norm"]
    if not all(math.isfinite(x) for x in (loss, g, p)):
      return f"non-finite metrics (loss={loss}, grad_norm={g}, param_norm={p})"
    if self._param_norm > 0 and p > self.param_factor * self._param_norm:
      return (f"the param norm jumped {p / self._param_norm:.3g}x in one step "
              f"({self._param_norm:.4g} -> {p:.4g}; limit {self.param_factor:g}x)")
    if len(self._grads) >= self.min_history:
      median = sorted(self._grads)[len(self._grads) // 2]
      if median > 0 and g > self.grad_factor * median:
        return (f"the grad norm {g:.4g} is {g / median:.3g}x the running median "
                f"{median:.4g} (limit {self.grad_factor:g}x)")
    self._grads.append(g)
    self._param_norm = p
    return None


def drain(pending: tuple[int, Any], ckpt, sanity: SanityGuard | None = None
          ) -> tuple[int, dict[str, float]]:
  """`(step, device metrics)` -> `(step, host floats)`, refusing a bad step.

  The step itself refuses a non-finite update (`finite` = 0); the loop then stops without
  writing a checkpoint, so the last good one is kept.

  Raises:
    FloatingPointError: the step's loss, gradient norm or updated params were not finite,
      or (with `sanity`) finite but insane.
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
  reason = sanity.check(host) if sanity is not None else None
  if reason is not None:
    steps = ckpt.all_steps()
    last = (f"step {steps[-1]}, which the next start resumes from" if steps else
            "none yet: the next start begins from scratch")
    raise FloatingPointError(
        f"Sanity guard tripped at step {s}: {reason}. Stopping without saving this state; "
        f"the last sane checkpoint in {ckpt.directory} is {last}. Lower optim.lr or set "
        "optim.grad_clip.")
  return s, host
