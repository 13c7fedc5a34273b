"""experiments/robustness.py: the two models differ only in the label schedule, the
conditions set the pipeline's noise, and the table is written from the results."""

import importlib.util
import json
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def robustness():
  spec = importlib.util.spec_from_file_location("robustness_exp",
                                                REPO / "experiments" / "robustness.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _flat(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


@pytest.mark.parametrize("size", ["micro", "sanity", "gpu"])
def test_models_differ_only_in_label_schedule(robustness, size):
  sdm = _flat(robustness.build_config(size, "sdm").to_dict())
  scdm = _flat(robustness.build_config(size, "scdm").to_dict())
  assert {k for k in sdm if sdm[k] != scdm[k]} == {"diffusion.label_schedule"}
  assert (sdm["diffusion.label_schedule"], scdm["diffusion.label_schedule"]) == \
      ("none", "classwise")
  s = robustness.SIZES[size]
  assert sdm["train.total_steps"] == s["train_steps"] and sdm["data.image_size"] == \
      s["image_size"]


def test_conditions(robustness):
  config = robustness.build_config("sanity", "scdm")
  for cond in robustness.CONDITIONS:
    c = robustness.condition_config(config, cond)
    assert c.data.noise == ("none" if cond == "clean" else cond)
    assert c.data.unlabeled_to_zero and c.data.ds_size == 8 and c.data.edge_radius == 0
  assert config.data.noise == "none"  # the training config is left alone
  assert not robustness.condition_config(config, "edge",
                                         unlabeled_to_zero=False).data.unlabeled_to_zero


def test_table(robustness, tmp_path):
  results = {m: {c: {"proxy_miou": 0.5 + 0.1 * i, "proxy_fd": 2.0 + i}
                 for i, c in enumerate(robustness.CONDITIONS)} for m in ("sdm", "scdm")}
  meta = {"size": "micro", "models": ["sdm", "scdm"], "conditions": list(robustness.CONDITIONS),
          "real_images": {"num_images": 8, "miou": 0.9}, "train_steps": 4, "batch_size": 8,
          "image_size": 16, "sampler": "ddpm", "n_maps": 8, "seed": 0, "seconds": 12.0,
          "phase_seconds": {"proxy_s": 1.0}}
  md = robustness.write_table(str(tmp_path), results, meta)
  assert "| SDM | 50.0 / 2.000 | 60.0 / 3.000 | 70.0 / 4.000 | 80.0 / 5.000 |" in md
  assert "| SCDM |" in md and "PROXY" in md
  assert (tmp_path / "table.md").read_text() == md
  assert json.loads((tmp_path / "table.json").read_text())["results"]["sdm"]["ds"][
      "proxy_fd"] == 3.0
