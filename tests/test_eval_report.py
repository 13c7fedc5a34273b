"""Evaluation report JSON."""

import json

import numpy as np
import pytest

from scdm_jax.evaluation import report


def test_write_report(tmp_path):
  w = tmp_path / "inception.npz"
  w.write_bytes(b"abc")
  hashes = report.weights_hashes({"inception": w})
  assert hashes["inception"] == (
      "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")  # sha256("abc")
  out = tmp_path / "eval" / "run.json"
  r = report.write_report(out, {"fid": np.float64(12.5), "kid_mean": np.float32(0.25),
                                "per_class": np.array([1.0, np.nan]), "miou": float("nan")},
                          implementation="scdm_jax.evaluation test", weights_hash=hashes,
                          resize_mode="299 bilinear", num_samples=np.int64(2000), seed=3,
                          config="demo", step=100)
  on_disk = json.loads(out.read_text())
  assert on_disk == r
  assert on_disk["metrics"] == {"fid": 12.5, "kid_mean": 0.25, "per_class": [1.0, None],
                                "miou": None}
  for key in ("implementation", "weights_sha256", "resize_mode", "num_samples", "seed",
              "created_utc", "schema_version"):
    assert key in on_disk
  assert on_disk["num_samples"] == 2000 and on_disk["step"] == 100
  assert [p.name for p in out.parent.iterdir()] == ["run.json"]


def test_report_refusals(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.npz"):
    report.weights_hashes([tmp_path / "nope.npz"])
  with pytest.raises(ValueError, match="overwrite"):
    report.write_report(tmp_path / "r.json", {}, implementation="x", weights_hash=None,
                        resize_mode="none", num_samples=1, seed=0, created_utc="x")
  with pytest.raises(TypeError):
    report.write_report(tmp_path / "r.json", {"x": object()}, implementation="x",
                        weights_hash=None, resize_mode="none", num_samples=1, seed=0)
  assert not (tmp_path / "r.json").exists()
