"""train.lock on gs:// workdirs (through fileio's local stand-in, as in test_fileio.py), and
the single-process preemption flag."""

import json
import os
import signal
import socket
import threading
import time

import pytest

from scdm_jax.io import atomic
from scdm_jax.io import fileio
from scdm_jax.training import preemption
from scdm_jax.training import workdir_lock

URL = "gs://bucket/run"


@pytest.fixture
def fake_gcs(fake_gcs, tmp_path, monkeypatch):  # conftest's stand-in; returns URL's folder
  monkeypatch.setattr(workdir_lock, "_SETTLE_S", 0.05)
  monkeypatch.chdir(tmp_path)
  return fake_gcs / "bucket" / "run"


def test_url_lock_refuses_a_second_trainer_and_is_removed(fake_gcs):
  with workdir_lock.WorkdirLock(URL):
    holder = json.loads((fake_gcs / "train.lock").read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    with pytest.raises(ValueError, match=r"gs://bucket/run/train.lock: another trainer "
                                         rf"\(pid {os.getpid()} on host") as err:
      workdir_lock.WorkdirLock(URL).acquire()
    assert "\n" not in str(err.value) and "lock_stale_minutes" in str(err.value)
  assert not (fake_gcs / "train.lock").exists()


def test_url_lock_breaks_only_a_stale_lock(fake_gcs):
  old = {"pid": 1, "host": "gone-host", "time": time.time() - 3600, "nonce": "x"}
  atomic.write_json(f"{URL}/train.lock", old)
  with pytest.raises(ValueError, match="gone-host"):
    workdir_lock.WorkdirLock(URL, stale_minutes=120).acquire()  # 1 h old: still fresh
  lock = workdir_lock.WorkdirLock(URL, stale_minutes=30).acquire()  # 1 h old: stale
  assert json.loads((fake_gcs / "train.lock").read_text())["pid"] == os.getpid()
  lock.release()


def test_url_lock_heartbeat_and_takeover(fake_gcs):
  lock = workdir_lock.WorkdirLock(URL, stale_minutes=0.01)  # heartbeat every 0.15 s
  lock.acquire()
  t0 = json.loads((fake_gcs / "train.lock").read_text())["time"]
  time.sleep(0.6)
  assert json.loads((fake_gcs / "train.lock").read_text())["time"] > t0
  # Another start broke it (e.g. after a long store outage): ours must not delete theirs.
  atomic.write_json(f"{URL}/train.lock", {"pid": 2, "host": "other", "time": time.time(),
                                          "nonce": "theirs"})
  lock.release()
  assert json.loads((fake_gcs / "train.lock").read_text())["nonce"] == "theirs"


def test_url_lock_race_inside_the_settle_window_is_refused(fake_gcs, monkeypatch):
  monkeypatch.setattr(workdir_lock, "_SETTLE_S", 0.5)
  rival = {"pid": 3, "host": "rival", "time": time.time(), "nonce": "rival"}
  writer = threading.Timer(0.2, atomic.write_json, (f"{URL}/train.lock", rival))
  writer.start()
  with pytest.raises(ValueError, match="pid 3 on host rival"):
    workdir_lock.WorkdirLock(URL).acquire()
  writer.join()


def test_local_lock_unchanged(tmp_path):
  with workdir_lock.WorkdirLock(str(tmp_path)):
    with pytest.raises(ValueError, match="delete it"):
      workdir_lock.WorkdirLock(str(tmp_path)).acquire()
  assert not (tmp_path / "train.lock").exists()


def test_shared_workdir_check_is_a_no_op_on_one_process(tmp_path):
  workdir_lock.check_shared_workdir(str(tmp_path))
  assert os.listdir(tmp_path) == []


def test_single_process_preemption_flag_every_step():
  p = preemption.Preemption(check_every=10).install()
  try:
    assert p.method == preemption.SINGLE and not p.reached(1)
    os.kill(os.getpid(), signal.SIGTERM)
    deadline = time.time() + 5
    while not p.flag.is_set() and time.time() < deadline:
      time.sleep(0.01)
    assert p.reached(3)  # not a multiple of check_every: one process checks every step
  finally:
    p.uninstall()
  assert signal.getsignal(signal.SIGTERM) is not p._handler


def test_preemption_check_every_must_be_positive():
  with pytest.raises(ValueError, match="preemption_check_every=0"):
    preemption.Preemption(check_every=0)
