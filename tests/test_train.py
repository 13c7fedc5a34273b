"""End-to-end training tests on the tiny config (8 forced CPU devices).

A repeated compile of the same train step (resume within one process, or in the
subprocesses) is served by jax's persistent compilation cache that conftest.py configures;
there is no program cache of our own.
"""

import os
import pathlib
import re
import signal
import subprocess
import sys
import time

from conftest import load_config
from conftest import sigterm_once_training
import jax
import numpy as np
import pytest

from scdm_jax import checkpointing
from scdm_jax import recipe
from scdm_jax import sharding
from scdm_jax import state as state_lib
from scdm_jax.inference import loading
from scdm_jax.modes import train
from scdm_jax.training import step as step_lib

jax.config.update("jax_disable_most_optimizations", True)

REPO = pathlib.Path(__file__).resolve().parents[1]


def tiny_config(**overrides):
  return load_config("tiny", **overrides)


def _params(workdir, config, ema=False):
  params, meta, step = loading.load_train_params(
      config, os.path.join(workdir, "checkpoints"), use_ema=ema)
  return params, meta, step


def _assert_trees_equal(a, b):
  la = jax.tree_util.tree_leaves_with_path(a)
  lb = dict(jax.tree_util.tree_leaves_with_path(b))
  assert len(la) == len(lb)
  for kp, x in la:
    np.testing.assert_array_equal(np.asarray(x), np.asarray(lb[kp]), err_msg=str(kp))


def test_resume_equals_uninterrupted(tmp_path):
  straight = str(tmp_path / "straight")
  resumed = str(tmp_path / "resumed")
  s3 = train.run(tiny_config(), straight)
  assert s3["step"] == 3
  s2 = train.run(tiny_config(**{"train.total_steps": 2}), resumed)
  assert s2["step"] == 2
  s23 = train.run(tiny_config(), resumed)
  assert s23["start_step"] == 2 and s23["step"] == 3
  assert s23["train_loss"] == s3["train_loss"]
  cfg = tiny_config()
  p_a, meta_a, _ = _params(straight, cfg)
  p_b, meta_b, _ = _params(resumed, cfg)
  _assert_trees_equal(p_a, p_b)
  _assert_trees_equal(_params(straight, cfg, ema=True)[0], _params(resumed, cfg, ema=True)[0])
  assert meta_a["data_pos"] == meta_b["data_pos"] == 3
  # Nothing left to do: a further call returns immediately.
  assert train.run(tiny_config(), resumed)["step"] == 3


def test_one_vs_eight_devices_same_loss():
  """The same global batch on a 1-device mesh and an 8-device (data x fsdp) mesh."""
  config = tiny_config(**{"mesh.fsdp_min_size": 1024})
  psi = recipe.resolve_psi(config)
  diffusion = recipe.make_diffusion(config)
  schedule = recipe.make_label_schedule(config, psi)
  rng = np.random.default_rng(0)
  b, s, k = 8, 16, config.data.num_classes
  ids = rng.integers(0, k, (b, s, s)).astype(np.int32)
  host_batch = {"image": rng.uniform(-1, 1, (b, s, s, 3)).astype(np.float32), "label": ids}
  losses, params = [], []
  for devices, mesh_cfg in (([jax.devices()[0]], {"data": 1, "fsdp": 1}),
                            (jax.devices(), {"data": 2, "fsdp": 4})):
    mesh = sharding.make_mesh(mesh_cfg, devices=devices)
    graphs, st, shardings = state_lib.create_train_state(config, mesh, 0)
    step = step_lib.make_train_step(config, graphs, diffusion, schedule, mesh)
    bsh = sharding.batch_sharding(mesh)
    fn = jax.jit(step, in_shardings=(shardings, bsh), out_shardings=(shardings, None))
    batch = sharding.device_put_tree(host_batch, {"image": bsh, "label": bsh})
    st, metrics = fn(st, batch)
    losses.append(float(metrics["loss"]))
    params.append(jax.device_get(state_lib.to_checkpoint(st)["params"]))
  np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
  flat0 = jax.tree.leaves(params[0])
  flat1 = jax.tree.leaves(params[1])
  for x, y in zip(flat0, flat1):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


def test_label_schedule_reaches_the_model():
  """SDM ("none") and label diffusion ("uniform") give different losses from the same
  state, batch and key, while a repeated "none" run is bit-identical: the diffused label,
  not the clean one, is what the UNet sees when label diffusion is on.

  Four steps are taken: the output convolution and the last convolution of every residual
  block start at zero, so the label reaches the output only once those have moved (the
  first two losses are the same for every schedule)."""
  config = tiny_config()
  psi = recipe.resolve_psi(config)
  diffusion = recipe.make_diffusion(config)
  rng = np.random.default_rng(1)
  b, s, k = 8, 16, config.data.num_classes
  ids = rng.integers(0, k, (b, s, s)).astype(np.int32)
  host_batch = {"image": rng.uniform(-1, 1, (b, s, s, 3)).astype(np.float32), "label": ids}
  mesh = sharding.make_mesh({"data": 8, "fsdp": 1})
  bsh = sharding.batch_sharding(mesh)
  batch = sharding.device_put_tree(host_batch, {"image": bsh, "label": bsh})
  losses = {}
  for name, kind in (("none", "none"), ("none_again", "none"), ("uniform", "uniform")):
    graphs, st, shardings = state_lib.create_train_state(config, mesh, 0)
    schedule = recipe.make_label_schedule(config, psi, kind=kind)
    step = step_lib.make_train_step(config, graphs, diffusion, schedule, mesh)
    fn = jax.jit(step, in_shardings=(shardings, bsh), out_shardings=(shardings, None))
    losses[name] = []
    for _ in range(4):
      st, metrics = fn(st, batch)
      losses[name].append(float(metrics["loss"]))
  assert losses["none"] == losses["none_again"]
  assert losses["none"][-1] != losses["uniform"][-1], losses


def _main_cmd(workdir, *extra):
  return [sys.executable, "-m", "scdm_jax.main", f"--config={REPO / 'configs' / 'tiny.py'}",
          f"--workdir={workdir}", "--jax_disable_most_optimizations", *extra]


def _env(devices=8):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  return env


@pytest.mark.slow
def test_kill9_then_resume_loses_at_most_uncheckpointed_steps(tmp_path):
  workdir = tmp_path / "killed"
  ckdir = workdir / "checkpoints"
  proc = subprocess.Popen(
      _main_cmd(workdir, "--config.train.total_steps=1000", "--config.train.checkpoint_every=2",
                "--config.train.keep_last=2"),
      env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 600
    done = []
    while time.time() < deadline:
      done = ([int(p) for p in os.listdir(ckdir) if p.isdigit()]
              if ckdir.exists() else [])
      done = [d for d in done if d >= 4]
      if done:
        break
      assert proc.poll() is None, "training exited early"
      time.sleep(0.5)
    assert done, "no checkpoint within the time limit"
  finally:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
  finished = sorted(int(p) for p in os.listdir(ckdir) if p.isdigit())
  last = finished[-1]
  # Resume in this process (the persistent cache serves the compiled step).
  summary = train.run(tiny_config(**{"train.total_steps": last + 1}), str(workdir))
  assert summary["start_step"] == last  # only steps after the last checkpoint were lost
  assert summary["step"] == last + 1


@pytest.mark.slow
def test_sigterm_saves_and_exits(tmp_path):
  workdir = tmp_path / "term"
  rc, text = sigterm_once_training(
      _main_cmd(workdir, "--config.train.total_steps=100000",
                "--config.train.checkpoint_every=100000", "--config.train.log_every=1"),
      _env(1), tmp_path / "term.log")
  assert rc == 75, text[-3000:]  # EX_TEMPFAIL: the scheduler should requeue
  assert "Preempted: saved step" in text
  steps = [int(p) for p in os.listdir(workdir / "checkpoints") if p.isdigit()]
  assert steps and max(steps) >= 1


def test_non_finite_loss_stops_and_keeps_checkpoint(tmp_path):
  workdir = str(tmp_path / "nan")
  train.run(tiny_config(**{"train.total_steps": 1}), workdir)
  with pytest.raises(FloatingPointError, match="last good checkpoint"):
    train.run(tiny_config(**{"train.total_steps": 3, "optim.lr": float("nan")}), workdir)
  ck = checkpointing.TrainCheckpointer(os.path.join(workdir, "checkpoints"))
  assert ck.all_steps() == [1]
  ck.close()


def test_train_step_does_not_retrace_for_a_new_batch():
  """A changed batch with the same shapes reuses the compiled step (one trace)."""
  config = tiny_config()
  mesh = sharding.make_mesh({"data": 8, "fsdp": 1})
  graphs, st, shardings = state_lib.create_train_state(config, mesh, 0)
  step = step_lib.make_train_step(config, graphs, recipe.make_diffusion(config),
                                  recipe.make_label_schedule(config, recipe.resolve_psi(config)),
                                  mesh)
  traces = []

  def counted(state, batch):
    traces.append(1)  # runs only while tracing
    return step(state, batch)

  bsh = sharding.batch_sharding(mesh)
  fn = jax.jit(counted, in_shardings=(shardings, bsh), out_shardings=(shardings, None),
               donate_argnums=(0,))
  rng = np.random.default_rng(2)
  for _ in range(3):
    host = {"image": rng.uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32),
            "label": rng.integers(-1, 9, (8, 16, 16)).astype(np.int32)}
    st, _ = fn(st, sharding.device_put_tree(host, {"image": bsh, "label": bsh}))
  assert len(traces) == 1


def test_model_num_classes_is_derived():
  config = tiny_config()
  assert config.model.num_classes is None
  assert recipe.unet_config(config).num_classes == 9
  assert recipe.unet_config(tiny_config(**{"data.use_instance": True})).num_classes == 10
  # The old key still loads when it agrees, and is refused when it contradicts the data.
  assert recipe.unet_config(tiny_config(**{"model.num_classes": 9})).num_classes == 9
  with pytest.raises(ValueError, match="config.model.num_classes=12 contradicts"):
    recipe.unet_config(tiny_config(**{"model.num_classes": 12}))


def _steps_by_setting(key: str, values, seed: int):
  """For each value of config `key`: (the step's jaxpr text, its jitted result) on one
  8-device state and batch."""
  mesh = sharding.make_mesh({"data": 8, "fsdp": 1})
  graphs, st, _ = state_lib.create_train_state(tiny_config(), mesh, 0)
  rng = np.random.default_rng(seed)
  bsh = sharding.batch_sharding(mesh)
  host = {"image": rng.uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32),
          "label": rng.integers(-1, 9, (8, 16, 16)).astype(np.int32)}
  batch = sharding.device_put_tree(host, {"image": bsh, "label": bsh})
  out = {}
  for value in values:
    config = tiny_config(**{key: value})
    step = step_lib.make_train_step(
        config, graphs, recipe.make_diffusion(config),
        recipe.make_label_schedule(config, recipe.resolve_psi(config)), mesh)
    out[value] = (str(jax.make_jaxpr(step)(st, batch)), jax.jit(step)(st, batch))
  return out, graphs, mesh


def _same_step(a, b, loss_rtol):
  (s_a, m_a), (s_b, m_b) = a, b
  np.testing.assert_allclose(float(m_a["loss"]), float(m_b["loss"]), rtol=loss_rtol)
  np.testing.assert_allclose(float(m_a["grad_norm"]), float(m_b["grad_norm"]), rtol=1e-4)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y),
                                                       rtol=1e-4, atol=1e-6),
               s_a.params, s_b.params)


def test_dense_spade_conv_in_training_equals_the_lookup():
  """`model.dense_train_max_classes`: the step differentiates the dense SPADE conv at few
  classes (no scatter-add for the lookup's gradient) with the lookup's loss and gradient."""
  out, _, _ = _steps_by_setting("model.dense_train_max_classes", (0, 100), seed=5)
  assert out[0][0].count("scatter-add") > out[100][0].count("scatter-add")
  _same_step(out[100][1], out[0][1], loss_rtol=1e-5)


def test_conv_weight_grad_setting_switches_the_backward_with_the_same_step():
  """`train.conv_weight_grad`: "taps" takes the per-tap weight gradient for the stride-1
  convs, "auto" keeps XLA's (as "xla"); same loss and update."""
  out, graphs, mesh = _steps_by_setting("train.conv_weight_grad", ("auto", "taps"), seed=6)
  assert out["taps"][0].count("dot_general") > out["auto"][0].count("dot_general")
  _same_step(out["taps"][1], out["auto"][1], loss_rtol=1e-6)
  config = tiny_config(**{"train.conv_weight_grad": "fast"})
  with pytest.raises(ValueError, match="train.conv_weight_grad='fast' is unknown"):
    step_lib.make_train_step(config, graphs, recipe.make_diffusion(config), None, mesh)
