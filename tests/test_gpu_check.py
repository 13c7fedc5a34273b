"""bench/gpu_check.py runs (--tiny, on the CPU) with TensorFlow and torch unimportable, as on
a GPU machine that has only jax + flax; and requirements-gpu.txt keeps requirements.txt's pins."""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow  # compiles a train step, a sampler and a paint chain: minutes on a busy CPU
def test_gpu_check_tiny_runs_without_tensorflow(tmp_path):
  blocked = tmp_path / "blocked"
  for name in ("tensorflow", "torch"):
    (blocked / name).mkdir(parents=True)
    (blocked / name / "__init__.py").write_text(
        f"raise ImportError('{name} is not installed on the GPU machine')\n")
  out = tmp_path / "check.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=f"{blocked}:{REPO}",
             XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"))
  proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--tiny",
                         f"--out={out}", "--batch=4", "--train_steps=2", "--sample_batch=2",
                         "--sample_batches=1", "--fast_compile"],
                        env=env, capture_output=True, text=True, timeout=1800, cwd=tmp_path)
  result = json.loads(out.read_text())
  errors = {k: v["error"] for k, v in result.items() if isinstance(v, dict) and "error" in v}
  assert proc.returncode == 0 and not errors, (errors, proc.stdout[-3000:],
                                               proc.stderr[-3000:])
  assert result["env"]["backend"] == "cpu" and result["env"]["device_count"] == 2
  assert result["env"]["bf16_not_native"] == "the CPU backend emulates it"
  assert result["train"]["steps_per_s"] > 0 and result["train"]["global_batch"] == 4
  assert result["determinism"]["loss_bitwise_equal"]
  assert result["determinism"]["params_bitwise_equal"]
  assert result["sample"]["finite"] and result["sample"]["steps"] == 25
  assert result["paint"]["finite"] and result["paint"]["output_shape"] == [2, 64, 64, 3]
  assert result["imports"] == {"tensorflow_imported": False, "torch_imported": False,
                               "section_s": result["imports"]["section_s"]}


def _pins(path: pathlib.Path) -> dict[str, str]:
  pins = {}
  for line in path.read_text().splitlines():
    m = re.match(r"^([A-Za-z0-9_.-]+)(\[[a-z0-9,]+\])?==([^\s#]+)", line)
    if m:
      pins[m.group(1).lower()] = m.group(3)
  return pins


def test_gpu_requirements_keep_the_cpu_pins_and_leave_torch_out():
  cpu = _pins(REPO / "requirements.txt")
  gpu = _pins(REPO / "requirements-gpu.txt")
  assert "torch" not in gpu and "jax" in gpu
  assert "jax[cuda12]==" in (REPO / "requirements-gpu.txt").read_text()
  assert {k: v for k, v in gpu.items()} == {k: cpu[k] for k in gpu}
