"""Resume safety: the checkpoint's setup is checked first, unreadable steps are skipped,
and one trainer holds a workdir (issue 14, P2)."""

import glob
import os
import subprocess

from conftest import load_config
import numpy as np
import pytest

from scdm_jax import checkpointing
from scdm_jax import recipe
from scdm_jax.modes import train
from scdm_jax.training import workdir_lock


def _tiny(**overrides):
  return load_config("tiny", **overrides)


# --- meta comparison ---------------------------------------------------------------------


@pytest.mark.parametrize("key,value,needle", [
    ("model.model_channels", 16, "model.model_channels"),
    ("model.num_res_blocks", 3, "model.num_res_blocks"),
    ("data.num_classes", 7, "classes"),
    ("diffusion.num_steps", 50, "diffusion.num_steps"),
    ("diffusion.beta_schedule", "cosine", "diffusion.beta_schedule"),
    ("diffusion.label_schedule", "uniform", "diffusion.label_schedule"),
])
def test_resume_meta_mismatch_names_the_key(key, value, needle):
  base = _tiny()
  psi = np.linspace(1.0, 2.0, recipe.label_channels(base))
  meta = recipe.run_meta(base, psi)
  section, name = key.split(".")
  assert base[section][name] != value  # a real change of the tiny config
  changed = _tiny(**{key: value})
  with pytest.raises(ValueError) as e:
    recipe.check_resume_meta(meta, changed, psi, what="resuming W/3")
  msg = str(e.value)
  assert needle in msg and "\n" not in msg and "init_from" in msg and "--workdir" in msg
  recipe.check_resume_meta(meta, base, psi, what="resuming W/3")  # the same setup passes


def test_resume_meta_refuses_another_psi_and_allows_dtype():
  base = _tiny()
  psi = np.linspace(1.0, 2.0, recipe.label_channels(base))
  meta = recipe.run_meta(base, psi)
  with pytest.raises(ValueError, match="psi differs"):
    recipe.check_resume_meta(meta, base, psi * 1.5, what="resuming W/3")
  # Compute dtype / remat do not change the parameters: resuming with them is fine.
  recipe.check_resume_meta(meta, _tiny(**{"model.dtype": "bfloat16", "model.remat": True}),
                           psi, what="resuming W/3")


def test_train_refuses_a_mismatched_checkpoint_before_orbax(tmp_path):
  # The step holds a dummy state: if train.run got as far as orbax, the error would be
  # an orbax tree/shape error, not the one-line meta refusal.
  config = _tiny()
  other = _tiny(**{"model.model_channels": int(config.model.model_channels) * 2})
  ck = checkpointing.TrainCheckpointer(tmp_path / "checkpoints", async_save=False)
  ck.save(2, {"w": np.zeros((2,), np.float32)},
          dict(recipe.run_meta(other, recipe.resolve_psi(other)), step=2), wait=True)
  ck.close()
  with pytest.raises(ValueError, match=r"model\.model_channels .*init_from"):
    train.run(config, str(tmp_path))
  assert not os.path.exists(tmp_path / workdir_lock.LOCK_NAME)  # released on error


# --- unreadable newest step --------------------------------------------------------------


def _corrupt(step_dir, how):
  if how == "truncated_data":
    for f in glob.glob(f"{step_dir}/state/**/d/*", recursive=True):
      with open(f, "r+b") as fh:
        fh.truncate(os.path.getsize(f) // 2)
  elif how == "deleted_data":
    for f in glob.glob(f"{step_dir}/state/**/d/*", recursive=True):
      os.remove(f)
  elif how == "deleted_METADATA":
    os.remove(f"{step_dir}/state/_METADATA")
  elif how == "garbage_meta":
    with open(f"{step_dir}/meta/metadata", "w") as fh:
      fh.write("{not json")
  elif how == "empty_folder":
    os.makedirs(step_dir.replace("/2", "/3"))


@pytest.mark.parametrize("how", ["truncated_data", "deleted_data", "deleted_METADATA",
                                 "garbage_meta", "empty_folder"])
def test_unreadable_newest_step_falls_back(tmp_path, how, caplog):
  root = str(tmp_path / "checkpoints")
  ck = checkpointing.TrainCheckpointer(root, async_save=False)
  for s in (1, 2):
    ck.save(s, {"w": np.full((32, 32), s, np.float32)}, {"step": s}, wait=True)
  ck.close()
  _corrupt(os.path.join(root, "2"), how)
  seen = []
  ck = checkpointing.TrainCheckpointer(root, async_save=False)
  with caplog.at_level("WARNING"):
    step, state, meta = ck.restore_newest_readable(
        {"w": np.zeros((32, 32), np.float32)}, lambda s, m: seen.append(s))
  expect = 1 if how != "empty_folder" else 2
  assert step == expect and meta["step"] == expect
  np.testing.assert_array_equal(state["w"], np.full((32, 32), expect, np.float32))
  skipped = 3 if how == "empty_folder" else 2
  assert f"skipping it (step {skipped}:" in caplog.text
  # Set aside, so a later save of that step number is not silently refused.
  assert skipped not in ck.all_steps()
  assert os.listdir(root + "_unreadable")
  ck.close()


def test_no_readable_step_is_one_line(tmp_path):
  root = str(tmp_path / "checkpoints")
  os.makedirs(os.path.join(root, "1"))
  ck = checkpointing.TrainCheckpointer(root, async_save=False)
  with pytest.raises(ValueError, match="no readable checkpoint .*new --workdir"):
    ck.restore_newest_readable({"w": np.zeros((2,), np.float32)})
  ck.close()


# --- the workdir lock --------------------------------------------------------------------


def test_second_trainer_is_refused_and_stale_lock_is_broken(tmp_path, caplog):
  first = workdir_lock.WorkdirLock(str(tmp_path)).acquire()
  with pytest.raises(ValueError) as e:
    workdir_lock.WorkdirLock(str(tmp_path)).acquire()
  msg = str(e.value)
  assert str(tmp_path / "train.lock") in msg and f"pid {os.getpid()}" in msg
  assert "delete" in msg and "\n" not in msg
  with pytest.raises(ValueError, match="another trainer"):
    train.run(_tiny(), str(tmp_path))  # refused before anything is built
  first.release()
  assert not (tmp_path / "train.lock").exists()

  # A lock left by a dead process on this host is taken over.
  dead = subprocess.Popen(["true"])
  dead.wait()
  lock = workdir_lock.WorkdirLock(str(tmp_path))
  with open(lock.path, "w") as f:
    f.write('{"pid": %d, "host": "%s", "time": 0}' % (dead.pid, os.uname().nodename))
  with caplog.at_level("WARNING"):
    lock.acquire()
  assert "stale lock" in caplog.text
  lock.release()
