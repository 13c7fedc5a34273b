"""Two CPU processes on localhost (real jax.distributed, gloo) on the tiny config: SIGTERM
to one process, resume, sampling, and the shared-workdir check.

Training is compared 2 processes against 2 processes: each process reads its own shard of
the examples (datasets.IndexMap), so a 1-process run sees other batches by design. Sampling
has no such shard order and is compared with 1 process.
"""

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

from conftest import load_config
import jax
import numpy as np
import pytest

from scdm_jax.inference import loading
from scdm_jax.io import images as image_io

REPO = pathlib.Path(__file__).resolve().parents[1]
EXIT_PREEMPTED = 75


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(tmp_path, name, workdirs, *flags, num_processes=2):
  """Starts `num_processes` trainers/samplers (one workdir each: normally the same one)."""
  port = _free_port()
  procs = []
  for pid in range(num_processes):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={4 // num_processes}",
               JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"))
    if num_processes > 1:
      # Only process 0 writes the persistent cache, so a later launch had process 0 load
      # its programs while process 1 compiled for minutes; gloo gives a collective 30 s for
      # all processes to arrive ("Gloo context initialization failed: DEADLINE_EXCEEDED").
      # Without the cache both compile, at about the same pace.
      env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
    dist = ([f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}",
             f"--process_id={pid}", "--jax_cpu_collectives_implementation=gloo"]
            if num_processes > 1 else [])
    log = tmp_path / f"{name}_p{pid}.log"
    with open(log, "w") as f:
      proc = subprocess.Popen(
          [sys.executable, "-m", "scdm_jax.main", f"--config={REPO / 'configs' / 'tiny.py'}",
           f"--workdir={workdirs[pid]}", "--jax_disable_most_optimizations", *dist, *flags],
          env=env, stdout=f, stderr=subprocess.STDOUT, cwd=str(tmp_path))
    proc.log = log
    procs.append(proc)
  return procs


def _wait(procs, timeout=900):
  try:
    rcs = [p.wait(timeout=timeout) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  texts = [p.log.read_text() for p in procs]
  return rcs, texts, "\n-----\n".join(t[-4000:] for t in texts)


def _train(tmp_path, name, workdir, total, *flags):
  return _wait(_start(tmp_path, name, [workdir] * 2, f"--config.train.total_steps={total}",
                      "--config.train.checkpoint_every=2", *flags))


def _assert_trees_equal(a, b):
  la = jax.tree_util.tree_leaves_with_path(a)
  lb = dict(jax.tree_util.tree_leaves_with_path(b))
  assert len(la) == len(lb)
  for kp, x in la:
    np.testing.assert_array_equal(np.asarray(x), np.asarray(lb[kp]), err_msg=str(kp))


def _pngs(folder: pathlib.Path) -> dict[str, np.ndarray]:
  return {str(p.relative_to(folder)): image_io.load_image(str(p)) for p in
          sorted(folder.rglob("*.png"))}


# Two processes agreeing on a SIGTERM that only process 1 receives, at step 25 of a loop of
# 20 ms "steps", without any training (so no compile): prints the method and the stop step.
_AGREE = """
import os, signal, sys, time
import jax
from scdm_jax.training import preemption
pid, port = int(sys.argv[1]), sys.argv[2]
jax.distributed.initialize(f"127.0.0.1:{port}", 2, pid)
p = preemption.Preemption(check_every=7).install()
print("method", p.method, "python_handler", signal.getsignal(signal.SIGTERM) == p._handler)
for step in range(1, 3000):
  time.sleep(0.02)
  if pid == 1 and step == 25:
    os.kill(os.getpid(), signal.SIGTERM)
  if p.reached(step):
    print("stop", step, flush=True)
    break
"""


@pytest.mark.parametrize("service", [True, False])
def test_sigterm_to_one_process_stops_both_at_one_step(tmp_path, service):
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
             JAX_ENABLE_PREEMPTION_SERVICE=str(service).lower())
  procs = [subprocess.Popen([sys.executable, "-c", _AGREE, str(i), str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
           for i in range(2)]
  try:
    outs = [q.communicate(timeout=300)[0] for q in procs]
  finally:
    for q in procs:
      if q.poll() is None:
        q.kill()
  assert [q.returncode for q in procs] == [0, 0], outs
  method = "service" if service else "allgather"
  # With the service, JAX's own SIGTERM handler must stay (no Python one over it).
  assert all(f"method {method} python_handler {not service}" in o for o in outs), outs
  stops = [int(o.split("stop ")[1]) for o in outs]
  assert stops[0] == stops[1] > 25, outs
  if not service:
    assert stops[0] == 28  # the first multiple of check_every after the signal


@pytest.mark.slow
def test_two_processes_sigterm_one_resume_and_sample(tmp_path):
  preempted = tmp_path / "preempted"
  # 1. SIGTERM to process 1 only, once step 2 is saved: both must stop at one step, save it
  #    and exit 75 (JAX's preemption service tells process 0).
  procs = _start(tmp_path, "sigterm", [preempted] * 2, "--config.train.total_steps=100000",
                 "--config.train.checkpoint_every=2")
  deadline = time.time() + 900
  while not (preempted / "checkpoints" / "2").is_dir() and time.time() < deadline:
    assert all(p.poll() is None for p in procs), _wait(procs)[2]
    time.sleep(0.2)
  procs[1].send_signal(signal.SIGTERM)
  rcs, texts, tail = _wait(procs)
  assert rcs == [EXIT_PREEMPTED] * 2, tail
  assert "Preemption: service" in texts[0]
  stops = [int(t.split("Preempted: saved step ")[1].split(",")[0]) for t in texts]
  assert stops[0] == stops[1] > 2, tail
  stop = stops[0]
  assert (preempted / "checkpoints" / str(stop)).is_dir()

  # 2. Resume on 2 processes for one more step == the same steps without interruption.
  rcs, texts, tail = _train(tmp_path, "resume", preempted, stop + 1)
  assert rcs == [0, 0] and f"resumed from step {stop}" in texts[0], tail
  straight = tmp_path / "straight"
  rcs, texts, tail = _train(tmp_path, "straight", straight, stop + 1)
  assert rcs == [0, 0], tail
  assert "JAX process 0 / 2" in texts[0] and "4 devices in total" in texts[0]
  assert "global batch 8, 4 per process" in texts[0]
  config = load_config("tiny")
  resumed_params, _, s1 = loading.load_train_params(
      config, str(preempted / "checkpoints"), use_ema=False)
  straight_params, _, s2 = loading.load_train_params(
      config, str(straight / "checkpoints"), use_ema=False)
  assert s1 == s2 == stop + 1
  _assert_trees_equal(resumed_params, straight_params)

  # 3. Sampling the same checkpoint on 2 processes and on 1 writes the same images.
  outs = {n: tmp_path / f"samples_{n}" for n in (1, 2)}
  for n, out in outs.items():
    rcs, _, tail = _wait(_start(tmp_path, f"sample{n}", [straight] * n, "--mode=sample",
                                f"--config.sample.output_dir={out}", num_processes=n))
    assert rcs == [0] * n, tail
  one, two = _pngs(outs[1]), _pngs(outs[2])
  assert one and sorted(one) == sorted(two)
  for name, image in one.items():
    np.testing.assert_array_equal(image, two[name], err_msg=name)


def test_workdir_not_shared_is_one_line_naming_the_process(tmp_path):
  rcs, texts, tail = _wait(_start(tmp_path, "notshared", [tmp_path / "w0", tmp_path / "w1"],
                                  "--config.train.total_steps=1"), timeout=600)
  assert rcs == [1, 1], tail
  line = [l for l in texts[0].splitlines() if l.startswith("scdm_jax: error:")]
  assert len(line) == 1, tail
  assert f"process 1 on host {socket.gethostname()} cannot see" in line[0]
  assert "must be shared storage" in line[0] and "process 0 on" not in line[0]
