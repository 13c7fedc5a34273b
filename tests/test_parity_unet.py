"""The parity CLI on the unet fixture: passes as shipped, fails on a perturbed copy."""

import numpy as np

from scdm_jax.parity import __main__ as parity_cli


def test_parity_unet_passes_and_detects_perturbation(tmp_path, fixtures_dir, capsys):
  # In-process (the CLI's main returns the exit status): the two runs share compiled ops.
  src = fixtures_dir / "unet.npz"
  assert parity_cli.main([str(src)]) == 0
  out = capsys.readouterr().out
  assert "out" in out and "FAIL" not in out

  with np.load(src) as npz:
    data = {k: npz[k] for k in npz.files}
  key = "param/output_blocks.0.0.out_layers.2.weight"
  data[key] = (data[key].astype(np.float32) + np.float32(0.05)).astype(np.float16)
  bad = tmp_path / "unet_perturbed.npz"
  np.savez(bad, **data)
  assert parity_cli.main([str(bad)]) != 0
  assert "FAIL" in capsys.readouterr().out
