"""mIoU on hand-checked masks and the segmenter plumbing."""

import numpy as np
import pytest

from scdm_jax.evaluation import miou


def test_known_masks():
  gt = np.array([[0, 0, 1, 1],
                 [0, 0, 1, 1],
                 [2, 2, 255, 255]])
  pred = np.array([[0, 1, 1, 1],
                   [0, 0, 1, 2],
                   [2, 2, 0, 3]])
  # class 0: TP 3, FP 0, FN 1 -> 3/4;  class 1: TP 3, FP 1, FN 1 -> 3/5
  # class 2: TP 2, FP 1, FN 0 -> 2/3;  class 3: absent from GT and from the valid predictions
  # (its only prediction sits on an ignored pixel) -> excluded.
  r = miou.mean_iou(pred, gt, num_classes=4, ignore_index=255)
  np.testing.assert_allclose(r["per_class_iou"][:3], [3 / 4, 3 / 5, 2 / 3])
  assert np.isnan(r["per_class_iou"][3])
  assert r["miou"] == pytest.approx((3 / 4 + 3 / 5 + 2 / 3) / 3)
  assert r["num_classes_present"] == 3
  assert r["pixel_accuracy"] == pytest.approx(8 / 10)


def test_predicted_but_absent_class_counts_as_zero():
  gt = np.zeros((2, 2), int)
  pred = np.array([[0, 0], [0, 1]])
  r = miou.mean_iou(pred, gt, num_classes=3, ignore_index=None)
  np.testing.assert_allclose(r["per_class_iou"][:2], [3 / 4, 0.0])
  assert r["miou"] == pytest.approx(3 / 8)


def test_perfect_and_out_of_range_prediction():
  gt = np.array([[0, 1], [1, 0]])
  assert miou.mean_iou(gt, gt, 2)["miou"] == 1.0
  pred = np.array([[0, 1], [1, 7]])  # 7 is no class: a miss for class 0, no false positive
  r = miou.mean_iou(pred, gt, 2)
  np.testing.assert_allclose(r["per_class_iou"], [1 / 2, 1.0])


def test_accumulator_equals_whole_set_not_per_image_mean():
  rng = np.random.default_rng(0)
  gt = rng.integers(0, 5, (6, 8, 8))
  pred = np.where(rng.random((6, 8, 8)) < 0.7, gt, rng.integers(0, 5, (6, 8, 8)))
  acc = miou.MIoUAccumulator(5)
  for i in range(6):
    acc.update(pred[i], gt[i])
  assert acc.result()["miou"] == pytest.approx(miou.mean_iou(pred, gt, 5)["miou"])


def test_shape_mismatch_refused():
  with pytest.raises(ValueError, match="shape"):
    miou.mean_iou(np.zeros((2, 2)), np.zeros((2, 3)), 2)


def test_callable_segmenter_with_logits():
  gt = np.array([[[0, 1], [2, 1]]])
  images = np.zeros((1, 2, 2, 3), np.float32)

  def seg(x):
    return np.eye(3)[gt]  # (B, H, W, K) one-hot logits

  r = miou.evaluate_segmenter(seg, [(images, gt)], 3)
  assert r["miou"] == 1.0
  with pytest.raises(ValueError, match="does not match"):
    miou.segment(lambda x: np.zeros((1, 4, 4), int), images)


def test_registry(tmp_path):
  weights = tmp_path / "w.npz"
  np.savez(weights, a=np.zeros(1))

  @miou.register_segmenter("test_constant")
  def _factory(path, num_classes, value=1):
    return lambda x: np.full(np.shape(x)[:3], value)

  seg = miou.get_segmenter("test_constant", weights, 3, value=2)
  assert (miou.segment(seg, np.zeros((1, 2, 2, 3))) == 2).all()
  assert "test_constant" in miou.available_segmenters()
  with pytest.raises(ValueError, match="Unknown segmenter 'nope'"):
    miou.get_segmenter("nope", weights, 3)
  with pytest.raises(FileNotFoundError, match="missing.npz"):
    miou.get_segmenter("test_constant", tmp_path / "missing.npz", 3)
