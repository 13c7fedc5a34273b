"""Config and run control (issue 14, P3): config errors in one line with the closest key,
counts refused before compiling, a finished run returns before compiling, preemption exits
with EX_TEMPFAIL, a stale export is warned about."""

import os
import pathlib
import subprocess
import sys
import textwrap

from absl import logging as absl_logging
from conftest import load_config
import numpy as np
import pytest

from scdm_jax import checkpointing
from scdm_jax import main as main_lib
from scdm_jax import recipe
from scdm_jax.inference import loading
from scdm_jax.modes import edit
from scdm_jax.modes import sample
from scdm_jax.modes import train
from scdm_jax.training import step as step_lib

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def in_repo(monkeypatch):
  monkeypatch.chdir(REPO)


@pytest.mark.parametrize("argv,needle", [
    (["--config", "configs/tiny.py", "--config.train.totl_steps=3"],
     "--config.train.totl_steps: no such config key in configs/tiny.py; did you mean "
     "--config.train.total_steps?"),
    (["--config=configs/tiny.py", "--config.trian.batch_size=3"],
     "did you mean --config.train.batch_size?"),
    (["--config", "configs/tny.py"], "no such config file; did you mean configs/tiny.py?"),
    (["--config", "configs/tiny.py:nosuch"], "Unknown config variant(s) ['nosuch']"),
])
def test_config_errors_are_one_line_with_the_closest_key(in_repo, argv, needle):
  msg = main_lib._explain_flag_error(["prog"] + argv, AttributeError("x"))
  assert needle in msg and "\n" not in msg


@pytest.mark.slow
def test_cli_unknown_config_key_is_one_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "scdm_jax.main", "--config", "configs/tiny.py",
       "--config.train.totl_steps=3", "--workdir", str(tmp_path / "w")],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 1, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last == ("scdm_jax: error: --config.train.totl_steps: no such config key in "
                  "configs/tiny.py; did you mean --config.train.total_steps?"), proc.stderr
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("key,value", [("train.log_every", 0), ("train.total_steps", 0),
                                       ("train.batch_size", -1),
                                       ("train.checkpoint_every", -5)])
def test_bad_train_counts_are_refused_before_anything(tmp_path, key, value, monkeypatch):
  monkeypatch.setattr(step_lib, "compile_train_step",
                      lambda *a, **k: pytest.fail("compiled despite a bad count"))
  with pytest.raises(ValueError, match=rf"config\.{key}={value}: must be an integer"):
    train.run(load_config("tiny", **{key: value}), str(tmp_path))
  assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("mode,key", [(sample, "sample.num_samples_per_map"),
                                      (sample, "sample.batch_size"),
                                      (edit, "edit.num_samples")])
def test_bad_sample_counts_are_refused(tmp_path, mode, key):
  with pytest.raises(ValueError, match=rf"config\.{key}=0: must be an integer, at least 1"):
    mode.run(load_config("tiny", **{key: 0}), str(tmp_path))


def test_finished_run_returns_before_compiling(tmp_path, monkeypatch):
  workdir = str(tmp_path / "run")
  assert train.run(load_config("tiny", **{"train.total_steps": 1}), workdir)["step"] == 1
  monkeypatch.setattr(step_lib, "compile_train_step",
                      lambda *a, **k: pytest.fail("compiled a finished run"))
  summary = train.run(load_config("tiny", **{"train.total_steps": 1}), workdir)
  assert summary["step"] == summary["start_step"] == 1


@pytest.mark.slow
def test_preempted_run_exits_75(tmp_path):
  # main with a stub train mode that reports a preemption, as modes/train.run does.
  script = tmp_path / "drive.py"
  script.write_text(textwrap.dedent("""
      import sys
      from scdm_jax import main
      class Stub:
        @staticmethod
        def run(config, workdir):
          return {"preempted": True, "step": 3}
      main.MODES["train"] = Stub
      sys.argv = ["prog", "--config", "configs/tiny.py", "--workdir", sys.argv[1]]
      main.run()
      """))
  proc = subprocess.run([sys.executable, str(script), str(tmp_path / "w")], cwd=REPO,
                        capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == main_lib.EXIT_PREEMPTED == 75, proc.stderr[-2000:]


def test_sampling_an_export_older_than_the_newest_checkpoint_warns(tmp_path, monkeypatch):
  config = load_config("tiny")
  meta = dict(recipe.run_meta(config, recipe.resolve_psi(config)), step=1)
  checkpointing.save_export(tmp_path / "export", {"w": np.zeros((2,), np.float32)}, meta)
  (tmp_path / "checkpoints" / "5").mkdir(parents=True)
  seen = []
  monkeypatch.setattr(absl_logging, "warning", lambda msg, *a: seen.append(msg % a))
  loading.load_weights(config, str(tmp_path))
  assert any("of step 1" in w and "(step 5)" in w and "--mode export" in w for w in seen), seen
