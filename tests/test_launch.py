"""Launch scripts: syntax, DRY_RUN output, required-variable checks, and the real execution
path against fake gcloud/srun/python executables (nothing leaves this machine)."""

import os
import pathlib
import re
import shlex
import stat
import subprocess

from conftest import load_config
import pytest

LAUNCH = pathlib.Path(__file__).resolve().parent.parent / "launch"
SCRIPTS = sorted(LAUNCH.glob("*.sh")) + sorted(LAUNCH.glob("*.sbatch"))
TPU_ENV = {"TPU_NAME": "scdm-test", "ZONE": "us-central2-b", "PROJECT": "my-proj",
           "ACCELERATOR_TYPE": "v4-32", "CONFIG": "configs/ade20k.py:runlocal",
           "WORKDIR": "gs://bucket/runs/ade20k"}


def _run(script, env, cwd=None):
  base = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
  base.update(env)
  return subprocess.run(["bash", str(LAUNCH / script)], env=base, capture_output=True,
                        text=True, timeout=60, cwd=cwd, check=False)


def _dry(script, **overrides):
  env = dict(TPU_ENV, DRY_RUN="1")
  env.update(overrides)
  r = _run(script, env)
  assert r.returncode == 0, r.stderr
  return r.stdout


def _check_command(out: str) -> None:
  """Loads the config the printed `python -m scdm_jax.main` command names (with its variant)
  and checks that every `--config.KEY=VALUE` override names a key of it."""
  # The command as printed, up to the end of the remote --command string or the line.
  command = re.search(r"python -m scdm_jax\.main[^'\n;&]*", out).group(0)
  argv = shlex.split(command)
  spec = argv[argv.index("--config") + 1]
  path, _, variant = spec.partition(":")
  config = load_config(pathlib.Path(path).stem, variant or None)
  for arg in argv:
    if arg.startswith("--config."):
      *keys, last = arg[len("--config."):].split("=")[0].split(".")
      node = config
      for k in keys:
        node = node[k]
      assert last in node, f"{arg}: no such config key"


def _executable(path, text):
  path.write_text(text)
  path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_expected_scripts_exist():
  names = {p.name for p in SCRIPTS}
  assert {"common.sh", "tpu_create.sh", "tpu_setup.sh", "tpu_train.sh", "tpu_fetch_samples.sh",
          "tpu_delete.sh", "slurm_train.sbatch"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
  r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
  assert r.returncode == 0, r.stderr


def test_create_dry_run():
  out = _dry("tpu_create.sh")
  assert out.startswith("+ gcloud compute tpus tpu-vm create scdm-test ")
  for flag in ("--zone=us-central2-b", "--project=my-proj", "--accelerator-type=v4-32",
               "--version=tpu-ubuntu2204-base"):
    assert flag in out
  out = _dry("tpu_create.sh", ACCELERATOR_TYPE="v6e-8", SPOT="1")
  assert "--version=v2-alpha-tpuv6e" in out and "--spot" in out
  assert "--version=my-rt" in _dry("tpu_create.sh", RUNTIME_VERSION="my-rt")


def test_setup_dry_run_local_copy_and_git():
  out = _dry("tpu_setup.sh")
  assert "tar --null" in out
  assert "gcloud compute tpus tpu-vm scp " in out and "scdm-test:scdm-jax-src.tar.gz" in out
  ssh = [line for line in out.splitlines() if " tpu-vm ssh " in line]
  assert len(ssh) == 1 and "--worker=all" in ssh[0]
  assert "jax[tpu]==0.10.2" in ssh[0] and "-e '\\''.[data]'\\''" in ssh[0]
  out = _dry("tpu_setup.sh", REPO_URL="https://example.com/scdm.git", REPO_REF="v1")
  assert "tpu-vm scp" not in out
  assert "git clone --quiet https://example.com/scdm.git $HOME/scdm-jax" in out
  assert "checkout --quiet v1" in out


def test_setup_dataset_step_then_train_from_tfds():
  # Prepared once on worker 0 (raw downloads copied from gs:// first), then read by all.
  out = _dry("tpu_setup.sh", DATASET="ade20k", MANUAL_DIR="gs://bucket/raw/",
             TFDS_DATA_DIR="gs://bucket/tfds")
  ssh = [line for line in out.splitlines() if " tpu-vm ssh " in line]
  assert len(ssh) == 2 and "--worker=0" in ssh[1]
  assert "gcloud storage cp -r gs://bucket/raw/* $HOME/scdm-manual/" in ssh[1]
  assert ("python -m scdm_jax.data.tfds_builders --dataset ade20k --data_dir gs://bucket/tfds "
          "--manual_dir $HOME/scdm-manual") in ssh[1]
  assert "--manual_dir" not in _dry("tpu_setup.sh", DATASET="procedural",
                                    TFDS_DATA_DIR="gs://bucket/tfds")
  for env, missing in (({"DATASET": "ade20k"}, "TFDS_DATA_DIR"),
                       ({"DATASET": "ade20k", "TFDS_DATA_DIR": "gs://b/t"}, "MANUAL_DIR")):
    r = _run("tpu_setup.sh", dict(TPU_ENV, DRY_RUN="1", **env))
    assert r.returncode == 2 and missing in r.stderr
  out = _dry("tpu_train.sh", EXTRA_ARGS="--config.data.source=tfds "
             "--config.data.tfds_data_dir=gs://bucket/tfds")
  assert "--config.data.source=tfds" in out
  _check_command(out)


def test_train_dry_run():
  out = _dry("tpu_train.sh")
  assert "gcloud compute tpus tpu-vm ssh scdm-test" in out and "--worker=all" in out
  assert "export SCDM_DISTRIBUTED=1" in out
  assert ("python -m scdm_jax.main --config configs/ade20k.py:runlocal "
          "--workdir gs://bucket/runs/ade20k --mode train") in out
  _check_command(out)
  out = _dry("tpu_train.sh", MODE="sample", EXTRA_ARGS="--config.sample.respacing=ddim50",
             DETACH="1")
  assert "--mode sample --config.sample.respacing=ddim50" in out and "nohup" in out
  _check_command(out)


def test_command_check_catches_a_wrong_command():
  # What the launch tests rely on: a made-up variant or key fails the check.
  with pytest.raises(ValueError, match="Unknown config variant"):
    _check_command("python -m scdm_jax.main --config configs/ade20k.py:tiny --mode train")
  with pytest.raises(AssertionError, match="no such config key"):
    _check_command("python -m scdm_jax.main --config configs/ade20k.py "
                   "--config.sample.num_steps=25")


def test_fetch_and_delete_dry_run():
  out = _dry("tpu_fetch_samples.sh", LOCAL_DIR="/tmp/s")
  assert "gcloud storage cp -r gs://bucket/runs/ade20k/samples /tmp/s/" in out
  out = _dry("tpu_fetch_samples.sh", WORKDIR="/home/me/run", FETCH_WORKERS="0,1")
  assert out.count("tpu-vm scp scdm-test:/home/me/run/samples") == 2 and "--worker=1" in out
  out = _dry("tpu_fetch_samples.sh", SAMPLES_DIR="/home/me/out/")
  assert "tpu-vm scp scdm-test:/home/me/out ./samples-scdm-test/worker0/" in out
  assert "gcloud storage" not in out
  out = _dry("tpu_delete.sh", YES="1")
  assert out.strip() == ("+ gcloud compute tpus tpu-vm delete scdm-test --zone=us-central2-b "
                         "--project=my-proj --quiet")


@pytest.mark.parametrize("script,missing", [
    ("tpu_create.sh", "ACCELERATOR_TYPE"), ("tpu_setup.sh", "TPU_NAME"),
    ("tpu_train.sh", "WORKDIR"), ("tpu_train.sh", "CONFIG"), ("tpu_delete.sh", "ZONE"),
    ("tpu_fetch_samples.sh", "PROJECT"), ("slurm_train.sbatch", "CONFIG")])
def test_missing_variable_is_refused(script, missing):
  env = dict(TPU_ENV, DRY_RUN="1")
  if script == "tpu_fetch_samples.sh":
    env["WORKDIR"] = "/local/run"  # a gs:// WORKDIR needs no TPU variables
  del env[missing]
  r = _run(script, env)
  assert r.returncode == 2
  assert f"error: {missing} is not set" in r.stderr
  assert "gcloud" not in r.stdout and "srun" not in r.stdout


def test_tpu_scripts_run_fake_gcloud_and_remote_command(tmp_path):
  """Not a dry run: gcloud is a stub that records argv; the --command it receives is then run
  by bash against a stub python, proving the quoting survives the real path."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  log = tmp_path / "gcloud.log"
  _executable(bin_dir / "gcloud",
              f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > {shlex.quote(str(log))}\n')
  home = tmp_path / "home"
  venv_bin = home / "scdm-jax" / ".venv" / "bin"
  venv_bin.mkdir(parents=True)
  (venv_bin / "activate").write_text(f'export PATH={shlex.quote(str(venv_bin))}:"$PATH"\n')
  _executable(venv_bin / "python",
              '#!/usr/bin/env bash\necho "SCDM_DISTRIBUTED=$SCDM_DISTRIBUTED"\n'
              'printf "<%s>" "$@"; echo\n')
  env = dict(TPU_ENV, PATH=f"{bin_dir}:{os.environ['PATH']}", HOME=str(home),
             CONFIG="configs/my config.py:tiny", EXTRA_ARGS="--config.train.batch_size=8")
  r = subprocess.run(["bash", str(LAUNCH / "tpu_create.sh")], env=env, capture_output=True,
                     text=True, timeout=60, check=False)
  assert r.returncode == 0, r.stderr
  argv = log.read_text().splitlines()
  assert argv[:5] == ["compute", "tpus", "tpu-vm", "create", "scdm-test"]
  assert "--accelerator-type=v4-32" in argv

  r = subprocess.run(["bash", str(LAUNCH / "tpu_train.sh")], env=env, capture_output=True,
                     text=True, timeout=60, check=False)
  assert r.returncode == 0, r.stderr
  argv = log.read_text().splitlines()
  assert argv[:5] == ["compute", "tpus", "tpu-vm", "ssh", "scdm-test"]
  assert "--worker=all" in argv
  remote = [a for a in argv if a.startswith("--command=")][0][len("--command="):]
  r = subprocess.run(["bash", "-c", remote], env={"PATH": os.environ["PATH"], "HOME": str(home)},
                     capture_output=True, text=True, timeout=60, check=False)
  assert r.returncode == 0, r.stderr
  assert "SCDM_DISTRIBUTED=1" in r.stdout
  assert ("<-m><scdm_jax.main><--config><configs/my config.py:tiny><--workdir>"
          "<gs://bucket/runs/ade20k><--mode><train><--config.train.batch_size=8>") in r.stdout


def test_slurm_dry_run():
  env = {"DRY_RUN": "1", "CONFIG": "configs/ade20k.py", "WORKDIR": "/shared/runs/a",
         "SLURM_JOB_ID": "12345", "SLURM_JOB_NODELIST": "gpu[017-018,020]",
         "SLURM_JOB_NUM_NODES": "3", "GPUS_PER_NODE": "4"}
  r = _run("slurm_train.sbatch", env)
  assert r.returncode == 0, r.stderr
  port = 12345 % 4096 + 61440
  assert f"JAX_COORDINATOR_ADDRESS=gpu017:{port}" in r.stdout
  assert "SCDM_DISTRIBUTED=1" in r.stdout
  assert "srun --nodes=3 --ntasks-per-node=4 --ntasks=12" in r.stdout
  assert ("python -m scdm_jax.main --config configs/ade20k.py --workdir /shared/runs/a "
          "--mode train") in r.stdout
  _check_command(r.stdout)
  r = _run("slurm_train.sbatch", dict(env, PROCS_PER="node"))
  assert "--ntasks-per-node=1 --ntasks=3" in r.stdout
  assert "JAX_LOCAL_DEVICE_IDS=0,1,2,3" in r.stdout
  r = _run("slurm_train.sbatch", dict(env, PROCS_PER="host"))
  assert r.returncode == 2 and "PROCS_PER" in r.stderr


def test_slurm_outside_allocation_is_refused():
  r = _run("slurm_train.sbatch", {"CONFIG": "c.py", "WORKDIR": "/w"})
  assert r.returncode == 2 and "not inside a SLURM allocation" in r.stderr


@pytest.mark.parametrize("visible,expected", [("", "unset"), ("5", "0"), ("0,1", "unset")])
def test_slurm_runs_fake_srun(tmp_path, visible, expected):
  """Not a dry run: srun is a stub that runs its command once, as one task would."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  # Skip srun's own --flags, then exec the task command (bash -c ...).
  _executable(bin_dir / "srun", '#!/usr/bin/env bash\nwhile [[ "$1" == --* ]]; do shift; done\n'
              'exec "$@"\n')
  venv = tmp_path / "venv"
  (venv / "bin").mkdir(parents=True)
  (venv / "bin" / "activate").write_text(f'export PATH={shlex.quote(str(venv / "bin"))}:"$PATH"\n')
  _executable(venv / "bin" / "python",
              '#!/usr/bin/env bash\necho "coord=$JAX_COORDINATOR_ADDRESS '
              'ids=${JAX_LOCAL_DEVICE_IDS:-unset} dist=$SCDM_DISTRIBUTED pwd=$PWD"\n'
              'printf "<%s>" "$@"; echo\n')
  env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path),
         "CONFIG": "configs/demo.py", "WORKDIR": str(tmp_path / "w"), "VENV": str(venv),
         "SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "n1,n2", "SLURM_JOB_NUM_NODES": "2",
         "SLURM_SUBMIT_DIR": str(LAUNCH.parent), "CUDA_VISIBLE_DEVICES": visible}
  r = subprocess.run(["bash", str(LAUNCH / "slurm_train.sbatch")], env=env, capture_output=True,
                     text=True, timeout=60, check=False)
  assert r.returncode == 0, r.stderr
  assert f"coord=n1:{7 + 61440} ids={expected} dist=1 pwd={LAUNCH.parent}" in r.stdout
  assert f"<-m><scdm_jax.main><--config><configs/demo.py><--workdir><{tmp_path / 'w'}>" in r.stdout
