"""Start-up backend checks (scdm_jax/accelerator.py) on the CPU backend this machine has."""

import pathlib
import subprocess
import sys
import types

from conftest import load_config
import jax
import pytest

from scdm_jax import accelerator

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_cpu_with_require_accelerator_is_a_one_line_error():
  assert jax.default_backend() == "cpu"
  with pytest.raises(ValueError, match=r"config.require_accelerator=True but JAX .* runs on "
                                       r"the CPU") as err:
    accelerator.check(load_config("tiny", require_accelerator=True))
  assert "\n" not in str(err.value)


def test_bf16_falls_back_to_float32_on_cpu():
  config = load_config("ade20k")
  assert config.model.dtype == "bfloat16"
  config.paint.dtype = "bfloat16"
  assert accelerator.check(config) == ["model.dtype", "paint.dtype"]
  assert config.model.dtype == config.paint.dtype == "float32"
  kept = load_config("ade20k", bf16_fallback=False)
  assert accelerator.check(kept) == [] and kept.model.dtype == "bfloat16"
  plain = load_config("tiny")
  assert accelerator.check(plain) == [] and plain.model.dtype == "float32"


def test_which_gpus_run_bf16_natively():
  # GPU devices as jaxlib describes them (no GPU here): compute_capability is a string.
  v100 = types.SimpleNamespace(compute_capability="7.0", device_kind="Tesla V100-SXM2-16GB")
  a100 = types.SimpleNamespace(compute_capability="8.0", device_kind="NVIDIA A100")
  assert "7.0 < 8.0 (Tesla V100" in accelerator.bf16_not_native("gpu", [v100])
  assert accelerator.bf16_not_native("gpu", [a100]) is None
  assert accelerator.bf16_not_native("tpu", [object()]) is None
  config = load_config("ade20k")
  assert accelerator.check(config, backend="gpu", devices=[a100]) == []
  assert config.model.dtype == "bfloat16"


def test_main_stops_in_one_line_when_an_accelerator_is_required(tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "scdm_jax.main", f"--config={REPO / 'configs' / 'tiny.py'}",
       f"--workdir={tmp_path}", "--config.require_accelerator=True"],
      capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
      env={"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)})
  assert out.returncode == 1, out.stderr[-3000:]
  errors = [l for l in out.stderr.splitlines() if l.startswith("scdm_jax: error:")]
  assert len(errors) == 1 and "require_accelerator" in errors[0], out.stderr[-3000:]
  assert not (tmp_path / "checkpoints").exists()
