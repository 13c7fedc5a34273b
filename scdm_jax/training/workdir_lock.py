"""`<workdir>/train.lock`: one trainer per workdir.

Two trainers on one workdir would interleave their checkpoints (each resuming from the
other's steps) and overwrite each other's logs. The lock is a small JSON file (`pid`,
`host`, `time`) created with `O_EXCL`, so exactly one of two racing starts gets it. It is
removed when the run ends (also on an exception). A lock left by a run that was killed
(`kill -9`, a crashed host) is *stale*; one whose holder is on this host and no longer
alive is taken over with a warning. A lock from another host cannot be checked from here:
the error says how to break it by hand.

Only local folders are locked (on `gs://` object stores a create-if-absent is not atomic
through this layer; multi-host runs lock from process 0 of their shared local workdir).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time

from absl import logging

from scdm_jax.io import fileio

LOCK_NAME = "train.lock"


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # it exists, under another user
  return True


class WorkdirLock:
  """Context manager holding `<workdir>/train.lock` (a no-op for URLs)."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_NAME)
    self._held = False

  def acquire(self) -> "WorkdirLock":
    """Takes the lock.

    Raises:
      ValueError: (one line) if another live trainer holds it, naming the lock file, the
        holder's pid and host and how to break a stale lock.
    """
    if fileio.is_url(self.path):
      return self
    me = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}
    for _ in range(2):  # a second try after removing a stale lock
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except OSError as e:
        if e.errno != errno.EEXIST:
          raise
        holder = self._read_holder()
        pid, host = holder.get("pid"), holder.get("host")
        if host == me["host"] and isinstance(pid, int) and not _pid_alive(pid):
          logging.warning("Removing the stale lock %s of pid %d on %s (no longer running).",
                          self.path, pid, host)
          try:
            os.remove(self.path)
          except FileNotFoundError:
            pass  # another starter removed it first
          continue
        raise ValueError(
            f"{self.path}: another trainer (pid {pid} on host {host}) holds this workdir; "
            "two trainers on one workdir would mix their checkpoints. Wait for it, use "
            f"another --workdir, or, if that process is gone (e.g. a crashed host), delete "
            f"{self.path}.") from None
      with os.fdopen(fd, "w") as f:
        json.dump(me, f)
      self._held = True
      return self
    raise ValueError(f"{self.path}: could not take the lock (it keeps reappearing); "
                     "another trainer is starting on this workdir.")

  def _read_holder(self) -> dict:
    try:
      with open(self.path) as f:
        holder = json.load(f)
      return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
      return {}  # unreadable or being written: treat as held by an unknown process

  def release(self) -> None:
    if self._held:
      self._held = False
      try:
        os.remove(self.path)
      except FileNotFoundError:
        pass

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()
