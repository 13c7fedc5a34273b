"""experiments/sampler_sweep.py: scores and picture for a few settings of a tiny model."""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sweep_mod():
  spec = importlib.util.spec_from_file_location("sampler_sweep_exp",
                                                REPO / "experiments" / "sampler_sweep.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_flat_laplacian(sweep_mod):
  labels = np.zeros((2, 8, 8), np.int32)
  labels[:, 4:] = 2  # sky (0) on top, grass below
  flat = np.full((2, 8, 8, 3), 100, np.uint8)
  assert sweep_mod.flat_laplacian(flat, labels, 0) == 0.0
  noisy = flat.copy()
  noisy[:, 2, 3] = 140  # one bright pixel inside the sky: |lap| 160 there, 40 at 4 others
  got = sweep_mod.flat_laplacian(noisy, labels, 0)
  # interior sky pixels: rows 1-2 (3 x 3 all sky needs rows 0-3), columns 1-6: 12 pixels;
  # the bright pixel (160) and its neighbours (2,2), (2,4), (1,3) inside that set (40 each).
  assert got == pytest.approx((160 + 3 * 40) / 12)
  assert sweep_mod.flat_laplacian(flat, labels, 5) is None


def test_settings(sweep_mod):
  full = sweep_mod.settings_grid(sweep_mod.FULL)
  assert len(full) == 48 and len({sweep_mod.setting_name(s) for s in full}) == 48
  assert len(sweep_mod.settings_grid(sweep_mod.QUICK)) == 4
  assert sweep_mod.respacing_for(1000, 25) == "ddim25"
  assert sweep_mod.respacing_for(100, 3) == "3"
  with pytest.raises(ValueError, match="steps:extrapolation"):
    sweep_mod.parse_settings("25:0.8")


@pytest.mark.slow  # ~2 min on an idle 2-core CPU (compiles training and two samplers)
def test_sweep_smoke_on_a_tiny_model(sweep_mod, tmp_path):
  from scdm_jax.evaluation import proxy  # pylint: disable=import-outside-toplevel
  from scdm_jax.modes import train as train_mode  # pylint: disable=import-outside-toplevel
  config = sweep_mod._load("sweep_test_tiny", REPO / "configs" / "tiny.py").get_config()
  config.train.total_steps = 2
  train_mode.run(config, str(tmp_path / "model"))
  proxy.train_proxy(str(tmp_path / "proxy"), steps=2, image_size=16, width=4, num_train=16,
                    batch_size=8)
  settings = sweep_mod.parse_settings("2:0:0.95:1.5,3:0.8:0:1")
  out = sweep_mod.sweep(config, str(tmp_path / "model"), str(tmp_path / "sweep"),
                        str(tmp_path / "proxy" / "proxy_procedural.npz"), settings,
                        num_maps=4)
  saved = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
  assert saved["results"] == json.loads(json.dumps(out["results"]))
  names = [r["name"] for r in out["results"]]
  assert names == ["s2_x0_dt0.95_g1.5", "s3_x0.8_dt0_g1"]
  assert [r["respacing"] for r in out["results"]] == ["ddim2", "3"]
  for r in out["results"]:
    assert 0 <= r["proxy_miou"] <= 1 and r["proxy_fd"] is None  # N = 4 <= 28 features
    assert "feature dimension" in r["proxy_fd_reason"]
    assert r["flat_lap"] is None or r["flat_lap"] >= 0
  assert out["real_flat_lap"] is not None and out["real_flat_lap"] < 40
  assert (tmp_path / "sweep" / "sweep.png").exists()
  assert len(list((tmp_path / "sweep" / names[1] / "clean" / "sample_0").iterdir())) == 4
