"""Two CPU processes on localhost (jax.distributed) train 2 steps of the tiny config."""

import os
import pathlib
import socket
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_two_steps(tmp_path):
  port = _free_port()
  workdir = tmp_path / "mp"
  procs, logs = [], []
  for pid in range(2):
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    # A cache of its own: with the suite's shared persistent cache, process 1 was seen to hang
    # in the first step after other tests had filled the cache (a fresh cache passes).
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "jax_cache")
    log = open(tmp_path / f"p{pid}.log", "w")
    logs.append(log)
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "scdm_jax.main", f"--config={REPO / 'configs' / 'tiny.py'}",
         f"--workdir={workdir}", "--config.train.total_steps=2",
         "--config.train.checkpoint_every=2", "--jax_disable_most_optimizations",
         "--jax_cpu_collectives_implementation=gloo",
         f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
         f"--process_id={pid}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp_path)))
  try:
    rcs = [p.wait(timeout=900) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
    for log in logs:
      log.close()
  text0 = (tmp_path / "p0.log").read_text()
  text1 = (tmp_path / "p1.log").read_text()
  assert rcs == [0, 0], text0[-4000:] + "\n-----\n" + text1[-4000:]
  assert "JAX process 0 / 2" in text0 and "4 devices in total" in text0
  assert "global batch 8, 4 per process" in text0
  assert (workdir / "checkpoints" / "2").is_dir()
