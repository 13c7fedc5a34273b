"""`<workdir>/train.lock`: one trainer per workdir; and the check that all processes of a
multi-process run see the same workdir.

Two trainers on one workdir would interleave their checkpoints (each resuming from the
other's steps) and overwrite each other's logs. The lock is a small JSON object (`pid`,
`host`, `time`, `nonce`), removed when the run ends (also on an exception).

Local folders: created with `O_EXCL`, so exactly one of two racing starts gets it. A lock
left by a killed run (`kill -9`, a crashed host) is *stale*; one whose holder is on this
host and no longer alive is taken over with a warning. A lock from another host cannot be
checked from here: the error says how to break it by hand.

URLs (`gs://` on TPU pods): written through `fileio`. An object store has no
create-if-absent through this layer, so the lock is best effort: a start writes its lock,
waits `_SETTLE_S` and reads it back; of two starts racing inside that window both can read
their own lock only if one wrote after the other read back (the window is about a
second). A holder rewrites its lock's `time` every `_refresh_s` (a heartbeat thread), so a
lock older than `train.lock_stale_minutes` belongs to a run that is gone and is broken with
a warning; a fresher one is refused in one line. The heartbeat also notices a lock taken
over by another start and logs an error.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import socket
import threading
import time

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

from scdm_jax.io import atomic
from scdm_jax.io import fileio

LOCK_NAME = "train.lock"
SHARED_CHECK_NAME = "shared_workdir_check.json"
_SETTLE_S = 1.0  # URL locks: wait before reading our lock back (see the module doc)
_HOST_BYTES = 64


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # it exists, under another user
  return True


class WorkdirLock:
  """Context manager holding `<workdir>/train.lock`."""

  def __init__(self, workdir: str, stale_minutes: float = 15.0):
    self.path = fileio.join(workdir, LOCK_NAME)
    if not float(stale_minutes) > 0:
      raise ValueError(f"config.train.lock_stale_minutes={stale_minutes}: must be > 0 (age "
                       "after which a gs:// lock without heartbeat is broken).")
    self.stale_s = float(stale_minutes) * 60.0
    self._refresh_s = min(60.0, self.stale_s / 4)
    self._held = False
    self._me = None
    self._stop = threading.Event()
    self._beat = None

  def acquire(self) -> "WorkdirLock":
    """Takes the lock.

    Raises:
      ValueError: (one line) if another live trainer holds it, naming the lock file, the
        holder's pid and host and how to break a stale lock.
    """
    self._me = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time(),
                "nonce": secrets.token_hex(8)}
    if fileio.is_url(self.path):
      return self._acquire_url()
    for _ in range(2):  # a second try after removing a stale lock
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except OSError as e:
        if e.errno != errno.EEXIST:
          raise
        holder = self._read_holder()
        pid, host = holder.get("pid"), holder.get("host")
        if host == self._me["host"] and isinstance(pid, int) and not _pid_alive(pid):
          logging.warning("Removing the stale lock %s of pid %d on %s (no longer running).",
                          self.path, pid, host)
          fileio.remove(self.path)
          continue
        raise self._held_error(holder, "delete it") from None
      with os.fdopen(fd, "w") as f:
        json.dump(self._me, f)
      self._held = True
      return self
    raise ValueError(f"{self.path}: could not take the lock (it keeps reappearing); "
                     "another trainer is starting on this workdir.")

  def _held_error(self, holder: dict, how: str) -> ValueError:
    return ValueError(
        f"{self.path}: another trainer (pid {holder.get('pid')} on host "
        f"{holder.get('host')}) holds this workdir; two trainers on one workdir would mix "
        f"their checkpoints. Wait for it, use another --workdir, or, if that process is gone "
        f"(e.g. a crashed host), {how} {self.path}.")

  def _acquire_url(self) -> "WorkdirLock":
    stale = f"wait until it is {self.stale_s / 60:g} minutes old (train.lock_stale_minutes) or"
    holder = self._read_holder()
    if holder:
      age = time.time() - float(holder.get("time", 0) or 0)
      if age < self.stale_s:
        raise self._held_error(holder, stale + " delete")
      logging.warning("Breaking the stale lock %s of pid %s on %s (last heartbeat %.0f s "
                      "ago, over train.lock_stale_minutes).", self.path, holder.get("pid"),
                      holder.get("host"), age)
    atomic.write_json(self.path, self._me)
    time.sleep(_SETTLE_S)
    holder = self._read_holder()
    if holder.get("nonce") != self._me["nonce"]:
      raise self._held_error(holder, stale + " delete")  # a racing start wrote after us
    self._held = True
    self._beat = threading.Thread(target=self._heartbeat, name="workdir-lock", daemon=True)
    self._beat.start()
    return self

  def _heartbeat(self) -> None:
    while not self._stop.wait(self._refresh_s):
      holder = self._read_holder()
      if holder.get("nonce") != self._me["nonce"]:
        logging.error("%s was taken over by pid %s on %s: two trainers may now share this "
                      "workdir; stop one of them.", self.path, holder.get("pid"),
                      holder.get("host"))
        return
      try:
        atomic.write_json(self.path, dict(self._me, time=time.time()))
      except OSError as err:  # a transient store error: the next beat tries again
        logging.warning("Could not refresh %s: %s", self.path, err)

  def _read_holder(self) -> dict:
    try:
      holder = json.loads(fileio.read_bytes(self.path))
      return holder if isinstance(holder, dict) else {}
    except FileNotFoundError:
      return {}
    except (OSError, ValueError):
      # Unreadable or being written: held by an unknown process (a fresh time, so a URL
      # lock is not broken on a bad read).
      return {"time": time.time()} if fileio.is_url(self.path) else {}

  def release(self) -> None:
    self._stop.set()
    if self._beat is not None:
      self._beat.join()
      self._beat = None
    if self._held:
      self._held = False
      if self._read_holder().get("nonce") == self._me["nonce"]:
        fileio.remove(self.path)

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def _host_name(padded: np.ndarray) -> str:
  return bytes(padded).rstrip(b"\0").decode(errors="replace")


def check_shared_workdir(workdir: str) -> None:
  """On a multi-process run, checks that every process sees process 0's files in `workdir`.

  Process 0 writes a random token into the workdir; after a barrier every process reads it
  back. Orbax writes each process's checkpoint shards into the workdir, so a workdir on each
  worker's own disk would scatter one checkpoint over several machines.

  Raises:
    ValueError: (one line, on every process) naming the processes and hosts that cannot see
      the token.
  """
  if jax.process_count() == 1:
    return
  path = fileio.join(workdir, SHARED_CHECK_NAME)
  nonce = np.frombuffer(secrets.token_bytes(16), np.uint8)
  nonce = np.asarray(multihost_utils.broadcast_one_to_all(nonce))  # process 0's
  if jax.process_index() == 0:
    atomic.write_json(path, {"nonce": nonce.tobytes().hex()})
  multihost_utils.sync_global_devices("scdm_jax_shared_workdir_written")
  try:
    seen = json.loads(fileio.read_bytes(path)).get("nonce") == nonce.tobytes().hex()
  except (OSError, ValueError, AttributeError):
    seen = False
  host = socket.gethostname().encode()[:_HOST_BYTES].ljust(_HOST_BYTES, b"\0")
  row = np.concatenate([[np.uint8(seen)], np.frombuffer(host, np.uint8)])
  rows = np.asarray(multihost_utils.process_allgather(row))  # also the barrier before removal
  if jax.process_index() == 0:
    fileio.remove(path)
  blind = [f"process {i} on host {_host_name(r[1:])}" for i, r in enumerate(rows) if not r[0]]
  if blind:
    raise ValueError(
        f"--workdir={workdir}: {', '.join(blind)} cannot see the file process 0 wrote "
        f"there ({SHARED_CHECK_NAME}); the workdir must be shared storage that every "
        "process reads and writes (gs://... on TPU pods, a shared filesystem on GPU "
        "clusters).")
