"""Preemption: SIGTERM sets a flag the training loop checks after every step.

Multi-process runs agree on the step to stop at, through jax's preemption sync point when
the platform has one, else by an all-gather of the local flags.
"""

from __future__ import annotations

import signal
import threading

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np


class Preemption:
  """SIGTERM -> a flag the loop checks; multi-process runs agree via jax's sync point."""

  def __init__(self):
    self.flag = threading.Event()
    self._old = None

  def install(self):
    if threading.current_thread() is threading.main_thread():
      self._old = signal.signal(signal.SIGTERM, self._handler)
    return self

  def _handler(self, signum, frame):
    del frame
    logging.warning("Received signal %d: will save a checkpoint and exit.", signum)
    self.flag.set()

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      try:
        if multihost_utils.reached_preemption_sync_point(step):
          return True
      except Exception:  # pylint: disable=broad-except
        pass  # no preemption service (e.g. CPU): fall back to the local flag
      # All processes must agree on the step at which to stop.
      local = np.array([self.flag.is_set()], np.int32)
      return bool(multihost_utils.process_allgather(local).max())
    return self.flag.is_set()

  def uninstall(self):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)
