"""The parity CLI on the unet fixture: passes as shipped, fails on a perturbed copy."""

import subprocess
import sys

import numpy as np


def _run(path):
  return subprocess.run([sys.executable, "-m", "scdm_jax.parity", str(path)],
                        capture_output=True, text=True, check=False)


def test_parity_unet_passes_and_detects_perturbation(tmp_path, fixtures_dir):
  src = fixtures_dir / "unet.npz"
  ok = _run(src)
  assert ok.returncode == 0, ok.stdout + ok.stderr
  assert "out" in ok.stdout and "ok" in ok.stdout

  with np.load(src) as npz:
    data = {k: npz[k] for k in npz.files}
  key = "param/output_blocks.0.0.out_layers.2.weight"
  data[key] = (data[key].astype(np.float32) + np.float32(0.05)).astype(np.float16)
  bad = tmp_path / "unet_perturbed.npz"
  np.savez(bad, **data)
  fail = _run(bad)
  assert fail.returncode != 0
  assert "FAIL" in fail.stdout
