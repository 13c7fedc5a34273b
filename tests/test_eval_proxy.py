"""The PROXY segmenter / feature network: learns the procedural data, strict weights files."""

import json

import numpy as np
import pytest

from scdm_jax.evaluation import miou
from scdm_jax.evaluation import proxy


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  out = tmp_path_factory.mktemp("proxy")
  summary = proxy.train_proxy(out, steps=60, image_size=16, width=8, batch_size=16,
                              num_train=128, eval_images=32, log_every=1000, verbose=False)
  return out, summary


def test_brief_training_beats_chance_on_held_out_data(trained):
  out, summary = trained
  h = summary["held_out"]
  assert h["split"] == "validation" and h["num_images"] == 32
  # Chance = always predicting the most frequent class of the held-out images.
  assert h["pixel_accuracy"] > h["majority_pixel_accuracy"] + 0.15, h
  assert h["miou"] > h["majority_miou"] + 0.15, h
  written = json.loads((out / "proxy_procedural.json").read_text())
  assert written["sha256"] == summary["sha256"]
  assert "PROXY" in written["note"]


def test_registered_segmenter_and_features(trained):
  out, summary = trained
  seg = miou.get_segmenter("proxy_procedural", out / "proxy_procedural.npz", 9)
  images, ids = proxy.procedural_arrays(4, image_size=16, split="validation")
  logits = seg(images)
  assert logits.shape == (4, 16, 16, 9)
  # Another input size: resized to the training size and back.
  big = np.repeat(np.repeat(images, 2, 1), 2, 2)
  assert seg(big).shape == (4, 32, 32, 9)
  feats = seg.features(images)
  assert feats.shape == (4, 7 * 8) and feats.dtype == np.float64
  r = miou.evaluate_segmenter(seg, [(images, ids)], 9)
  assert r["miou"] == pytest.approx(summary["held_out"]["miou"], abs=0.3)
  with pytest.raises(ValueError, match="predicts 9 classes"):
    miou.get_segmenter("proxy_procedural", out / "proxy_procedural.npz", 10)


def _arrays(path):
  with np.load(path) as d:
    return {k: d[k] for k in d.files}


@pytest.mark.parametrize("case", ["missing", "not_npz", "no_meta", "wrong_format", "drop_key",
                                  "extra_key", "bad_shape", "nan"])
def test_bad_weights_are_refused(trained, tmp_path, case):
  good = _arrays(trained[0] / "proxy_procedural.npz")
  path = tmp_path / "w.npz"
  if case == "missing":
    with pytest.raises(FileNotFoundError, match="not found"):
      proxy.load_proxy(path)
    return
  if case == "not_npz":
    path.write_bytes(b"garbage, not a zip")
    with pytest.raises(ValueError, match="not a readable npz"):
      proxy.load_proxy(path)
    return
  arrays = dict(good)
  key = next(k for k in arrays if k.endswith("kernel"))
  match = {"no_meta": "no 'meta_json'", "wrong_format": "has format", "drop_key": "missing",
           "extra_key": "unexpected key", "bad_shape": "has shape", "nan": "NaN"}[case]
  if case == "no_meta":
    del arrays["meta_json"]
  elif case == "wrong_format":
    meta = json.loads(str(arrays["meta_json"]))
    meta["format"] = "something_else"
    arrays["meta_json"] = np.array(json.dumps(meta))
  elif case == "drop_key":
    del arrays[key]
  elif case == "extra_key":
    arrays["fc.weight"] = np.zeros((3,), np.float32)
  elif case == "bad_shape":
    arrays[key] = arrays[key][..., :1]
  elif case == "nan":
    arrays[key] = np.full_like(arrays[key], np.nan)
  np.savez(path, **arrays)
  with pytest.raises(ValueError, match=match):
    proxy.load_proxy(path)
