"""experiments/robustness.py: the two models differ only in the label schedule, the
conditions set the pipeline's noise, and the table is written from the results."""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

from scdm_jax.data import datasets

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


@pytest.mark.parametrize("size", ["micro", "cpu", "gpu"])
def test_models_differ_only_in_label_schedule(robustness, size):
  flat = {m: _flat(robustness.build_config(size, m).to_dict()) for m in robustness.MODELS}
  for m in ("scdm", "scdm_uniform"):
    assert {k for k in flat["sdm"] if flat["sdm"][k] != flat[m][k]} == \
        {"diffusion.label_schedule"}
  assert [flat[m]["diffusion.label_schedule"] for m in ("sdm", "scdm", "scdm_uniform")] == \
      ["none", "classwise", "uniform"]
  s = robustness.SIZES[size]
  assert flat["sdm"]["train.total_steps"] == s["train_steps"]
  assert flat["sdm"]["data.procedural_unlabeled_share"] == robustness.ADE20K_UNLABELED_SHARE
  if size != "micro":  # the minimums: 3 seeds, >= 128 maps, FD defined (N > 7 w)
    assert s["seeds"] >= 3 and s["n_maps"] >= 128 and s["n_maps"] > 7 * s["proxy"]["width"]


def test_conditions_and_cells(robustness):
  config = robustness.build_config("cpu", "scdm")
  for cond in robustness.CONDITIONS:
    c = robustness.condition_config(config, cond)
    assert c.data.noise == ("none" if cond == "clean" else cond)
    assert not c.data.unlabeled_to_zero  # the paper's encoding by default
    assert (c.data.ds_size, c.data.edge_radius, c.data.noise_render_size) == (64, 2, 256)
  assert config.data.noise == "none"  # the training config is left alone
  assert robustness.condition_config(config, "edge", unlabeled_to_zero=True
                                     ).data.unlabeled_to_zero
  assert [c[0] for c in robustness.cells()] == \
      ["clean", "ds", "edge-class", "edge-zero", "random-class", "random-zero"]
  assert [c[0] for c in robustness.cells(encodings=("zero",))] == \
      ["clean", "ds", "edge-zero", "random-zero"]
  # Every arm samples a trained model; sdm_ld is the SDM weights with label diffusion.
  assert robustness.ARMS["sdm_ld"] == ("sdm", "classwise", "fresh")
  assert robustness.ARMS["scdm_coupled"] == ("scdm", "classwise", "coupled")


def test_encodings_give_the_models_different_labels(robustness):
  """class: corrupted and clean-unlabeled pixels are the unlabeled class (8); zero: -1."""
  config = robustness.build_config("cpu", "sdm")
  src = datasets.make_source(config.data, "validation")
  labels = {}
  for enc in ("class", "zero"):
    c = robustness.condition_config(config, "edge", unlabeled_to_zero=(enc == "zero"))
    labels[enc] = datasets.ExampleLoader(src, c.data, train=False, seed=0)(3)["label"]
  clean = datasets.ExampleLoader(src, config.data, train=False, seed=0)(3)["label"]
  assert (clean == 8).mean() > 0.04  # the clean map has its unlabeled seams and blobs
  unknown = labels["zero"] == -1
  assert 0.1 < unknown.mean() < 0.3 and not (labels["zero"] == 8).any()
  assert np.array_equal(labels["class"] == 8, unknown)
  assert np.array_equal(labels["class"][~unknown], labels["zero"][~unknown])


def test_paired_stats(robustness):
  # Arm b beats a by 0.02 on every map of every seed, plus per-map noise.
  rng = np.random.default_rng(0)
  maps_a = rng.uniform(0.4, 0.6, (3, 50))
  maps_b = maps_a + 0.02 + rng.normal(0, 0.005, (3, 50))
  d = robustness.paired_stats(maps_a.mean(1), maps_b.mean(1), maps_a, maps_b)
  assert d["seeds"] == 3 and d["maps"] == 50 and len(d["per_seed"]) == 3
  assert abs(d["mean"] - 0.02) < 0.003 and d["std"] < 0.003
  assert d["map_t_p"] < 1e-6 and d["sign"]["positive"] == 50 and d["sign"]["p"] < 1e-6
  # No difference: nothing significant, a sign test near even.
  same = robustness.paired_stats(maps_a.mean(1), maps_a.mean(1) + np.array([1e-3, -1e-3, 0]),
                                 maps_a, maps_a + rng.normal(0, 0.01, (3, 50)))
  assert same["map_t_p"] > 0.01 and same["sign"]["p"] > 0.01


def test_fd_is_null_when_maps_do_not_exceed_the_feature_dim(robustness):
  class Seg:  # a fixed linear "segmenter": 9 logits and 6 features from the pixels
    def __call__(self, x):
      return np.repeat(x[..., :1], 9, -1) * np.arange(9)
    def features(self, x):
      return np.concatenate([x.mean((1, 2)), x.std((1, 2))], -1).astype(np.float64)
  rng = np.random.default_rng(1)
  images = rng.integers(0, 255, (5, 8, 8, 3)).astype(np.uint8)
  gt = rng.integers(0, 9, (5, 8, 8)).astype(np.int32)
  feats = rng.normal(size=(20, 6))
  r = robustness.score_images(Seg(), images, gt, feats, 9, 8)
  assert r["proxy_fd"] is None and "feature dimension 6" in r["proxy_fd_reason"]
  assert len(r["per_map_miou"]) == 5 and 0 <= r["proxy_miou"] <= 1
  more = rng.integers(0, 255, (12, 8, 8, 3)).astype(np.uint8)
  r = robustness.score_images(Seg(), more, rng.integers(0, 9, (12, 8, 8)), feats, 9, 8)
  assert r["proxy_fd"] is not None and r["proxy_fd"] > 0


@pytest.mark.slow
def test_micro_run_two_seeds_all_arms_both_encodings(robustness, tmp_path):
  out = robustness.run("micro", str(tmp_path), seeds=2, num_maps=4,
                       conditions=("clean", "edge"))
  meta, results = out["meta"], out["results"]
  assert meta["seed_list"] == [0, 1] and set(results) == set(robustness.ARMS)
  for arm in robustness.ARMS:
    for cell in ("clean", "edge-class", "edge-zero"):
      assert [r["seed"] for r in results[arm][cell]] == [0, 1]
      assert all(r["proxy_fd"] is None for r in results[arm][cell])  # N = 4 <= 56
      assert (tmp_path / "seed1" / arm / cell / "sample_0").is_dir()
  for arm in set(robustness.ARMS) - {"sdm"}:
    assert len(meta["paired"][arm]["edge-zero"]["per_seed"]) == 2
  assert (tmp_path / "grid.png").exists() and "| sdm_ld |" in out["markdown"]
  assert json.loads((tmp_path / "table.json").read_text())["meta"]["seeds"] == 2


def test_table(robustness, tmp_path):
  cell_list = robustness.cells(("clean", "edge"))
  names = [c[0] for c in cell_list]
  results = {a: {c: [{"proxy_miou": 0.5 + 0.1 * i + 0.01 * s, "proxy_fd": None, "seed": s}
                     for s in (0, 1)] for i, c in enumerate(names)} for a in ("sdm", "scdm")}
  paired = {"scdm": {c: robustness.paired_stats([0.5, 0.51], [0.52, 0.54],
                                                [[0.5, 0.6]] * 2, [[0.52, 0.61]] * 2)
                     for c in names}}
  meta = {"size": "micro", "arms": ["sdm", "scdm"], "cells": cell_list, "seeds": 2,
          "seed_list": [0, 1], "n_maps": 2, "real_images": {"num_images": 2, "miou": 0.9},
          "train_steps": 4, "batch_size": 8, "image_size": 16, "sampler": "ddpm",
          "unlabeled_share": 0.08, "noise": robustness.PAPER_NOISE, "paired": paired,
          "seconds": 12.0}
  md = robustness.write_table(str(tmp_path), results, meta)
  assert "| sdm | 50.5 +- 0.7 / n/a | 60.5 +- 0.7 / n/a | 70.5 +- 0.7 / n/a |" in md
  assert "| scdm | +2.5 +- 0.7 [0.126; 0.205; 0.500] |" in md and "PROXY" in md
  assert (tmp_path / "table.md").read_text() == md
  assert json.loads((tmp_path / "table.json").read_text())["meta"]["seeds"] == 2
