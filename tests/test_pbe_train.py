"""`--mode train` for Paint by Example on the tiny fixture pipeline (8 forced CPU devices)."""

import os
import pathlib
import re
import sys

from conftest import load_config
from conftest import sigterm_once_training
import jax
import numpy as np
import pytest

from scdm_jax import checkpointing
from scdm_jax.inference.paint import PaintPipeline
from scdm_jax.modes import train

jax.config.update("jax_disable_most_optimizations", True)

REPO = pathlib.Path(__file__).resolve().parent.parent
PIPE = REPO / "tests" / "fixtures" / "paint_by_example" / "pipeline"


TINY_FIELDS = {"paint_train.image_size": 32, "data.name": "procedural", "data.image_size": 64,
               "data.num_examples": 16, "optim.lr": 1e-3, "optim.warmup_steps": 0,
               "optim.weight_decay": 0.0, "train.batch_size": 8, "train.total_steps": 3,
               "train.log_every": 1, "train.checkpoint_every": 1, "train.keep_last": 5,
               "train.async_checkpoint": False}


def tiny_pbe(init, **overrides):
  fields = dict(TINY_FIELDS, **{"paint_train.init": str(init)})
  fields.update(overrides)
  return load_config("paint_by_example", **fields)


def _assert_trees_equal(a, b):
  la = jax.tree_util.tree_leaves_with_path(a)
  lb = dict(jax.tree_util.tree_leaves_with_path(b))
  assert len(la) == len(lb)
  for kp, x in la:
    np.testing.assert_array_equal(np.asarray(x), np.asarray(lb[kp]), err_msg=str(kp))


def test_resume_equals_straight_and_init_from_export(tmp_path):
  # The straight run starts from an export of the fixture, the interrupted one from the
  # diffusers folder: the same weights, so the same result bit for bit.
  init_export = PaintPipeline.from_pretrained(PIPE).save_export(tmp_path / "init_export")
  straight = tiny_pbe(init_export)
  s3 = train.run(straight, str(tmp_path / "straight"))
  assert s3["step"] == 3 and np.isfinite(s3["train_loss"])
  resumed = str(tmp_path / "resumed")
  assert train.run(tiny_pbe(PIPE, **{"train.total_steps": 2}), resumed)["step"] == 2
  s23 = train.run(tiny_pbe(PIPE), resumed)
  assert s23["start_step"] == 2 and s23["step"] == 3
  assert s23["train_loss"] == s3["train_loss"]
  a, _ = checkpointing.load_export(s3["export"])
  b, _ = checkpointing.load_export(s23["export"])
  _assert_trees_equal(a, b)
  init, _ = checkpointing.load_export(init_export)
  # Frozen parts are the init's; the UNet moved; the export paints.
  _assert_trees_equal(a["vae"], init["vae"])
  _assert_trees_equal(a["image_encoder"]["model"], init["image_encoder"]["model"])
  assert np.any(a["unet"]["conv_in"]["kernel"] != init["unet"]["conv_in"]["kernel"])
  assert PaintPipeline.load(s3["export"]).unet_config.in_channels == 9
  with pytest.raises(ValueError, match="were trained from"):
    train.run(tiny_pbe(init_export, **{"train.total_steps": 4}), resumed)


def test_missing_init_and_unknown_task_are_one_line_errors(tmp_path):
  with pytest.raises(ValueError, match="paint_train.init"):
    train.run(tiny_pbe(""), str(tmp_path / "a"))
  with pytest.raises(ValueError, match="config.task='pbe'"):
    train.run(tiny_pbe(PIPE, task="pbe"), str(tmp_path / "b"))


@pytest.mark.slow
def test_sigterm_saves_and_exits_then_resumes(tmp_path):
  # The real CLI in a subprocess, as a scheduler would run it; SIGTERM once it trains.
  workdir, log = tmp_path / "term", tmp_path / "term.log"
  fields = dict(TINY_FIELDS, **{"paint_train.init": str(PIPE), "train.total_steps": 100000,
                                "train.checkpoint_every": 100000})
  cmd = [sys.executable, "-m", "scdm_jax.main", "--mode=train",
         f"--config={REPO / 'configs' / 'paint_by_example.py'}", f"--workdir={workdir}",
         "--jax_disable_most_optimizations"] + [f"--config.{k}={v}" for k, v in fields.items()]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_PLATFORMS="cpu")
  rc, text = sigterm_once_training(cmd, env, log)
  assert rc == 75, text[-3000:]  # EX_TEMPFAIL: the scheduler should requeue
  saved = int(re.search(r"Preempted: saved step (\d+)", text).group(1))
  ck = checkpointing.TrainCheckpointer(os.path.join(workdir, "checkpoints"))
  assert ck.latest_step() == saved >= 1
  ck.close()
  # The requeued job carries on from the saved step.
  summary = train.run(tiny_pbe(PIPE, **{"train.total_steps": saved + 1}), str(workdir))
  assert summary["start_step"] == saved and summary["step"] == saved + 1
