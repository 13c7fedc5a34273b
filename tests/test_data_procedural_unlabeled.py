"""Unlabeled seams and blobs of the procedural dataset, and the paper-strength corruptions."""

import numpy as np
import pytest

from scdm_jax.data import noisy
from scdm_jax.data import procedural


@pytest.mark.parametrize("size", [32, 64])
def test_share_zero_reproduces_the_maps_bit_for_bit(size):
  for i in range(4):
    old = procedural.generate(i, size=size, split="validation")
    new = procedural.generate(i, size=size, split="validation", unlabeled_share=0.0)
    for key in ("image", "label", "instance"):
      assert old[key].dtype == new[key].dtype and np.array_equal(old[key], new[key])
    assert not (old["label"] == procedural.UNLABELED).any()


@pytest.mark.parametrize("size,share", [(32, 0.08), (64, 0.08), (64, 0.03)])
def test_unlabeled_share_within_tolerance_and_images_unchanged(size, share):
  got = []
  for i in range(16):
    plain = procedural.generate(i, size=size, split="train")
    ex = procedural.generate(i, size=size, split="train", unlabeled_share=share)
    assert np.array_equal(plain["image"], ex["image"])  # the real rendered image stays
    unl = ex["label"] == procedural.UNLABELED
    assert np.array_equal(ex["label"][~unl], plain["label"][~unl])  # only unlabeled added
    got.append(unl.mean())
  assert abs(np.mean(got) - share) < 0.15 * share and min(got) >= share - 1.0 / size


def test_seams_lie_on_boundaries_and_blobs_are_small():
  rng = np.random.default_rng(3)
  label = procedural.generate(5, size=64, split="train")["label"]
  seams, blobs = procedural.unlabeled_regions(label, 0.08, rng)
  assert seams.sum() > 0 and blobs.sum() > 0
  assert not (seams & ~noisy.boundary_map(label)).any()
  assert abs((seams | blobs).mean() - 0.08) < 0.012
  # Blobs are discs of radius <= 4 % of the size + 0.5: no 7 x 7 block fully covered.
  full = np.lib.stride_tricks.sliding_window_view(blobs & ~seams, (7, 7)).all((-1, -2))
  assert not full.any()


def test_unlabeled_pixels_are_deterministic_and_depend_on_the_example():
  a = procedural.generate(7, size=32, split="validation", unlabeled_share=0.08)["label"]
  b = procedural.generate(7, size=32, split="validation", unlabeled_share=0.08)["label"]
  c = procedural.generate(8, size=32, split="validation", unlabeled_share=0.08)["label"]
  assert np.array_equal(a, b) and not np.array_equal(a == 8, c == 8)


def test_bad_share_is_refused():
  with pytest.raises(ValueError, match="procedural_unlabeled_share"):
    procedural.generate(0, size=16, unlabeled_share=1.0)


def test_via_render_needs_a_multiple_of_the_size():
  big = procedural.generate(0, size=100)
  small = procedural.generate(0, size=32)
  with pytest.raises(ValueError, match="multiple"):
    noisy.corrupt_via_render(small["label"], big["label"], "random", unlabeled=-1,
                             rng=np.random.default_rng(0))
