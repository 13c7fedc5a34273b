"""Test setup: 8 forced host CPU devices, set before jax is imported anywhere."""

import os
import sys

_DEVICES_FLAG = "--xla_force_host_platform_device_count=8"
if _DEVICES_FLAG not in os.environ.get("XLA_FLAGS", ""):  # pytest-xdist workers inherit it
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _DEVICES_FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pathlib  # noqa: E402

# Compiling the tiny training programs dominates the end-to-end tests, and several tests run
# the same program in fresh subprocesses (resume, kill -9, SIGTERM). JAX's persistent
# compilation cache (inherited by the subprocesses through the environment) compiles each
# once. It changes no result: entries are keyed by the program, the backend and the versions.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      str(pathlib.Path(__file__).resolve().parents[1] / ".jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "2")

import pytest  # noqa: E402

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def sigterm_once_training(cmd, env, log: pathlib.Path, timeout: float = 600) -> tuple[int, str]:
  """Runs `cmd`, sends SIGTERM once its log shows a train_loss; returns (status, log text)."""
  import re
  import signal
  import subprocess
  import time
  with open(log, "w") as f:
    proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
  try:
    deadline = time.time() + timeout
    while time.time() < deadline and not re.search(r"train_loss", log.read_text()):
      assert proc.poll() is None, log.read_text()[-3000:]
      time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=300)
  finally:
    if proc.poll() is None:
      proc.kill()
  return rc, log.read_text()


@pytest.fixture
def fixtures_dir() -> pathlib.Path:
  return FIXTURES

import importlib.util  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_config(name: str = "tiny", variant: str | None = None, **overrides):
  """`configs/<name>.py:<variant>` with dotted overrides, e.g. `**{"train.total_steps": 2}`."""
  spec = importlib.util.spec_from_file_location(f"cfg_{name}", REPO / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(variant)
  for key, value in overrides.items():
    node = config
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    node[last] = value
  return config


def data_config(**fields) -> dict:
  """The default data section (configs/default.py) as a dict, with `fields` set."""
  return dict(load_config("default").data.to_dict(), **fields)


@pytest.fixture
def tiny_config():
  """Factory: `tiny_config(**{"train.total_steps": 2})` is configs/tiny.py with overrides."""
  return lambda **overrides: load_config("tiny", **overrides)


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch) -> pathlib.Path:
  """gs:// (any URL) served from a local folder, through fileio's one epath seam; returns it.

  `gs://bucket/x` is `<store>/bucket/x`. GCS cannot be reached here, and the seam is the only
  place fileio turns a URL into a path, so everything above it runs as it would on GCS.
  """
  from etils import epath  # pylint: disable=g-import-not-at-top
  from scdm_jax.io import fileio  # pylint: disable=g-import-not-at-top
  store = tmp_path / "store"
  store.mkdir()
  monkeypatch.setattr(fileio, "_epath",
                      lambda url: epath.Path(store / os.fspath(url).split("://", 1)[1]))
  return store


@pytest.fixture
def workdir(tmp_path) -> pathlib.Path:
  """An empty run folder."""
  path = tmp_path / "run"
  path.mkdir()
  return path


# The full suite once printed its summary and then hung at interpreter exit (some library
# thread, orbax's, tf.data's or a test server's, was never joined; cause not found). Exit
# at the very end with pytest's own status, so a clean run can never stall CI.
_EXIT_STATUS = [0]


def _report_live_threads():
  """Names the non-daemon threads still alive at the end: the ones that would block exit."""
  import threading  # pylint: disable=g-import-not-at-top
  import traceback  # pylint: disable=g-import-not-at-top
  frames = sys._current_frames()  # pylint: disable=protected-access
  live = [t for t in threading.enumerate()
          if t is not threading.main_thread() and not t.daemon and t.is_alive()]
  for thread in live:
    stack = "".join(traceback.format_stack(frames.get(thread.ident))[-4:]) if thread.ident in frames else ""
    sys.stderr.write(f"[conftest] non-daemon thread alive at exit: {thread.name}\n{stack}")


def pytest_sessionfinish(session, exitstatus):
  _EXIT_STATUS[0] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
  _report_live_threads()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(_EXIT_STATUS[0])
