"""Preemption: on SIGTERM the training loop saves a checkpoint at a step all processes agree
on, then exits (main.py: status 75).

Three ways, chosen once per run by `Preemption.install`:

- One process: a Python SIGTERM handler sets a flag, checked after every step (no collective).
- Several processes with JAX's preemption service (on by default: `jax.distributed.initialize`
  starts it on CPU, GPU and TPU; `jax_enable_preemption_service`): JAX's own SIGTERM handler
  tells the coordination service, which picks the safe step in the background;
  `reached_preemption_sync_point(step)` is a local, non-blocking lookup. We must not install
  a Python handler then: it would replace JAX's, and no process would ever hear of the notice.
- Several processes without the service: a Python handler sets the local flag, and every
  `check_every` steps (`config.train.preemption_check_every`) all processes all-gather their
  flags and stop together if any is set. No work is lost (the save happens at the agreed
  step); the latency from SIGTERM to the save is at most `check_every` steps (plus one step
  and the save), which must fit in the scheduler's grace period.

The all-gather blocks the host until the devices finish the step in flight, so it is never
run every step on several processes (it used to be: bench/bench_preemption.py measures it).
"""

from __future__ import annotations

import signal
import threading

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

SINGLE, SERVICE, ALLGATHER = "single", "service", "allgather"


def _service_enabled() -> bool:
  return bool(jax.config.jax_enable_preemption_service)


class Preemption:
  """Tells the training loop, after each step, whether to save and stop (see module doc)."""

  def __init__(self, check_every: int = 10):
    if int(check_every) < 1:
      raise ValueError(f"config.train.preemption_check_every={check_every}: must be >= 1 "
                       "(steps between the processes' agreement on a SIGTERM).")
    self.check_every = int(check_every)
    self.flag = threading.Event()
    self.method = SINGLE
    self._old = None

  def install(self) -> "Preemption":
    if jax.process_count() == 1:
      self.method = SINGLE
    elif _service_enabled():
      self.method = SERVICE
    else:
      self.method = ALLGATHER
    if self.method != SERVICE:
      self._install_handler()
    logging.info("Preemption: %s%s.", self.method,
                 f" (flags agreed every {self.check_every} steps)"
                 if self.method == ALLGATHER else "")
    return self

  def _install_handler(self):
    if threading.current_thread() is threading.main_thread():
      self._old = signal.signal(signal.SIGTERM, self._handler)

  def _handler(self, signum, frame):
    del frame
    logging.warning("Received signal %d: will save a checkpoint and exit.", signum)
    self.flag.set()

  def reached(self, step: int) -> bool:
    """True at the step to save and stop at (the same step on every process).

    Every process must call it after every step, with the same step numbers.
    """
    if self.method == SINGLE:
      return self.flag.is_set()
    if self.method == SERVICE:
      try:
        return bool(multihost_utils.reached_preemption_sync_point(step))
      except RuntimeError as err:  # the sync manager is missing on every process alike
        logging.warning("JAX preemption sync point unavailable (%s); agreeing on SIGTERM "
                        "flags every %d steps instead.", err, self.check_every)
        self.method = ALLGATHER
        self._install_handler()
    if step % self.check_every:
      return False
    local = np.array([self.flag.is_set()], np.int32)
    return bool(multihost_utils.process_allgather(local).max())

  def uninstall(self):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)
      self._old = None
