"""`--mode paint` on the fixture's tiny Paint-by-Example weights: outputs and bad input."""

import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, load_config
from scdm_jax.modes import paint

PIPELINE = pathlib.Path(__file__).parent / "fixtures" / "paint_by_example" / "pipeline"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  """Two sources with masks and exemplars matched by name, from the fixture's arrays."""
  root = tmp_path_factory.mktemp("paint_inputs")
  with np.load(PIPELINE.parent / "io.npz") as z:
    image, mask, example = z["image_u8"], z["mask_u8"], z["example_u8"]
  for sub in ("src", "mask", "ex"):
    (root / sub).mkdir()
  for name, flip in (("a", False), ("b", True)):
    img = image[:, ::-1] if flip else image
    Image.fromarray(np.ascontiguousarray(img)).save(root / "src" / f"{name}.png")
    Image.fromarray(np.ascontiguousarray(mask[:, ::-1] if flip else mask)).save(
        root / "mask" / f"{name}.png")
    Image.fromarray(example).save(root / "ex" / f"{name}.jpg", quality=95)
  return root


def _config(inputs, **overrides):
  fields = {"paint.weights": str(PIPELINE), "paint.source": str(inputs / "src"),
            "paint.mask": str(inputs / "mask"), "paint.exemplar": str(inputs / "ex"),
            "paint.num_steps": 2, "paint.batch_size": 2}
  fields.update(overrides)
  return load_config("paint_by_example", **fields)


def test_paints_folders_of_triples_reproducibly(inputs, tmp_path):
  config = _config(inputs, **{"paint.num_samples": 2, "paint.paste_back": True})
  out = paint.run(config, str(tmp_path / "w"))
  assert out["count"] == 4 and out["calls_per_sample"] == 3  # PNDM: N + 1 calls
  files = sorted(p.relative_to(tmp_path / "w" / "paint").as_posix()
                 for p in (tmp_path / "w" / "paint").rglob("*.png"))
  assert files == ["grid.png", "sample_0/a.png", "sample_0/b.png", "sample_1/a.png",
                   "sample_1/b.png"]
  a0 = np.asarray(Image.open(tmp_path / "w/paint/sample_0/a.png"))
  a1 = np.asarray(Image.open(tmp_path / "w/paint/sample_1/a.png"))
  src = np.asarray(Image.open(inputs / "src" / "a.png"))
  keep = np.asarray(Image.open(inputs / "mask" / "a.png")) == 0
  assert a0.shape == src.shape
  np.testing.assert_array_equal(a0[keep], src[keep])  # paste_back keeps every kept pixel
  assert np.abs(a0.astype(int) - a1).max() > 0  # two samples differ inside the hole
  grid = np.asarray(Image.open(tmp_path / "w/paint/grid.png"))
  assert grid.shape == (2 + 2 * 66, 2 + 5 * 66, 3)  # 2 rows: source|mask|exemplar|2 samples

  # Same seed, same pictures; a batch of 1 gives the same result as a batch of 2.
  again = paint.run(_config(inputs, **{"paint.batch_size": 1, "paint.num_samples": 2,
                                       "paint.paste_back": True,
                                       "paint.output_dir": str(tmp_path / "again")}), None)
  b0 = np.asarray(Image.open(tmp_path / "again/sample_0/a.png"))
  assert again["count"] == 4
  assert np.abs(a0.astype(int) - b0).max() <= 1


@pytest.mark.parametrize("change, message", [
    (lambda d: (d / "mask" / "a.png").write_bytes(b"not a png"), "mask .*a.png is not a "
     "readable image"),
    (lambda d: Image.fromarray(np.full((64, 64), 128, np.uint8)).save(d / "mask" / "a.png"),
     "grey values \\[128\\]"),
    (lambda d: Image.fromarray(np.full((32, 64), 255, np.uint8)).save(d / "mask" / "a.png"),
     "is 32x64 but its source image is 64x64"),
    (lambda d: Image.fromarray(np.zeros((64, 64), np.uint8)).save(d / "mask" / "a.png"),
     "all black"),
    (lambda d: (d / "ex" / "a.jpg").write_text("hello"), "exemplar .*a.jpg is not a readable"),
    (lambda d: (d / "ex" / "b.jpg").unlink(), "has no b.png/.jpg for the source"),
    (lambda d: Image.fromarray(np.zeros((63, 63, 3), np.uint8)).save(d / "src" / "a.png"),
     "divisible by 2"),
])
def test_bad_inputs_are_one_line_errors(inputs, tmp_path, change, message):
  d = tmp_path / "in"
  shutil.copytree(inputs, d)
  change(d)
  with pytest.raises((ValueError, FileNotFoundError), match=message):
    paint.run(_config(d), str(tmp_path / "w"))


def test_bad_weights_and_settings(inputs, tmp_path):
  with pytest.raises(ValueError, match="paint.weights"):
    paint.run(_config(inputs, **{"paint.weights": ""}), str(tmp_path))
  with pytest.raises((ValueError, FileNotFoundError), match="nowhere"):
    paint.run(_config(inputs, **{"paint.weights": str(tmp_path / "nowhere")}), str(tmp_path))
  with pytest.raises(ValueError, match="num_samples=0"):
    paint.run(_config(inputs, **{"paint.num_samples": 0}), str(tmp_path))
  with pytest.raises(ValueError, match="sampler"):
    paint.run(_config(inputs, **{"paint.sampler": "euler"}), str(tmp_path))


@pytest.mark.slow
def test_command_line_paints_and_reports_errors_in_one_line(inputs, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("SCDM_TRACEBACK", None)
  base = [sys.executable, "-m", "scdm_jax.main", "--mode=paint",
          f"--config={REPO / 'configs' / 'paint_by_example.py'}:fast",
          f"--config.paint.weights={PIPELINE}", f"--config.paint.source={inputs / 'src' / 'a.png'}",
          f"--config.paint.mask={inputs / 'mask' / 'a.png'}",
          f"--config.paint.exemplar={inputs / 'ex' / 'a.jpg'}", "--config.paint.num_steps=2",
          f"--workdir={tmp_path / 'w'}"]
  r = subprocess.run(base, env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  assert (tmp_path / "w" / "paint" / "sample_0" / "a.png").exists()
  assert "paint [" in r.stderr  # the progress bar
  r = subprocess.run(base + [f"--config.paint.mask={inputs / 'src' / 'a.png'}"], env=env,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 1
  assert r.stderr.strip().splitlines()[-1].startswith("scdm_jax: error: mask ")
  assert "Traceback" not in r.stderr
