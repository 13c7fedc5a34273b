"""Mean intersection-over-union of a segmenter's prediction on generated images.

Convention (documented in docs/evaluation.md):

* One ``(K, K)`` confusion matrix is accumulated over the *whole* evaluation set (rows = ground
  truth, columns = prediction), as mmseg/imaginaire do; IoU is not averaged per image.
* Pixels whose ground truth equals ``ignore_index`` (or lies outside ``[0, K)``) are skipped.
  A prediction outside ``[0, K)`` on a valid pixel counts as wrong (a false negative for the
  ground-truth class, no false positive).
* ``IoU_c = TP_c / (TP_c + FP_c + FN_c)``. A class absent from both the ground truth and the
  predictions of the whole set has a 0/0 IoU: it is excluded from the mean (reported as NaN in
  ``per_class_iou``), not counted as 0 or 1. A class predicted but never present in the ground
  truth has IoU 0 and is included.

Segmenters are pluggable: any callable ``images (B, H, W, 3) in [-1, 1] -> logits (B, H, W, K)
or class ids (B, H, W)``, or a registry name plus a weights path (``get_segmenter``). No
third-party segmenter weights ship with this project; the project's own proxy segmenter
registers itself under a name when it is imported.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable

import numpy as np

__all__ = ["confusion_matrix", "miou_from_confusion", "MIoUAccumulator", "mean_iou",
           "Segmenter", "register_segmenter", "get_segmenter", "available_segmenters",
           "segment", "evaluate_segmenter"]

Segmenter = Callable[[Any], Any]
_REGISTRY: dict[str, Callable[..., Segmenter]] = {}


def confusion_matrix(pred: Any, gt: Any, num_classes: int, *, ignore_index: int | None = 255
                     ) -> np.ndarray:
  """(K, K + 1) int64 counts: rows = ground-truth class, columns = predicted class; the extra
  last column counts valid pixels whose prediction lies outside [0, K) (missed, no FP)."""
  pred = np.asarray(pred)
  gt = np.asarray(gt)
  if pred.shape != gt.shape:
    raise ValueError(f"Prediction shape {pred.shape} differs from ground-truth shape "
                     f"{gt.shape}.")
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1; got {num_classes}.")
  gt = gt.reshape(-1).astype(np.int64)
  pred = pred.reshape(-1).astype(np.int64)
  valid = (gt >= 0) & (gt < num_classes)
  if ignore_index is not None:
    valid &= gt != ignore_index
  gt, pred = gt[valid], pred[valid]
  in_range = (pred >= 0) & (pred < num_classes)
  cm = np.bincount(gt[in_range] * num_classes + pred[in_range],
                   minlength=num_classes * num_classes).reshape(num_classes, num_classes)
  # Out-of-range predictions: missed ground truth (FN), credited to no predicted class.
  missed = np.bincount(gt[~in_range], minlength=num_classes)
  return np.concatenate([cm, missed[:, None]], axis=1).astype(np.int64)


def miou_from_confusion(cm: Any) -> dict[str, Any]:
  """mIoU from a ``confusion_matrix`` result (K x (K + 1); the last column is out-of-range
  predictions) or a plain (K, K) matrix."""
  cm = np.asarray(cm, np.int64)
  k = cm.shape[0]
  if cm.shape not in ((k, k), (k, k + 1)):
    raise ValueError(f"Confusion matrix must be (K, K) or (K, K + 1); got {cm.shape}.")
  tp = np.diag(cm[:, :k]).astype(np.float64)
  gt_count = cm.sum(axis=1).astype(np.float64)          # TP + FN (incl. out-of-range preds)
  pred_count = cm[:, :k].sum(axis=0).astype(np.float64)  # TP + FP
  union = gt_count + pred_count - tp
  with np.errstate(invalid="ignore", divide="ignore"):
    iou = np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)
  present = union > 0
  total = gt_count.sum()
  return {
      "miou": float(np.nanmean(iou)) if present.any() else float("nan"),
      "per_class_iou": iou,
      "num_classes_present": int(present.sum()),
      "pixel_accuracy": float(tp.sum() / total) if total > 0 else float("nan"),
  }


class MIoUAccumulator:
  """Streaming mIoU: ``update(pred, gt)`` per batch, then ``result()``."""

  def __init__(self, num_classes: int, *, ignore_index: int | None = 255):
    self.num_classes = num_classes
    self.ignore_index = ignore_index
    self.cm = np.zeros((num_classes, num_classes + 1), np.int64)

  def update(self, pred: Any, gt: Any) -> None:
    self.cm += confusion_matrix(pred, gt, self.num_classes, ignore_index=self.ignore_index)

  def result(self) -> dict[str, Any]:
    return miou_from_confusion(self.cm)


def mean_iou(pred: Any, gt: Any, num_classes: int, *, ignore_index: int | None = 255
             ) -> dict[str, Any]:
  """mIoU of whole arrays of predicted and ground-truth class ids (any matching shape)."""
  return miou_from_confusion(confusion_matrix(pred, gt, num_classes, ignore_index=ignore_index))


def register_segmenter(name: str):
  """Decorator registering ``factory(weights_path, num_classes, **kwargs) -> Segmenter``."""

  def wrap(factory):
    if name in _REGISTRY and _REGISTRY[name] is not factory:
      raise ValueError(f"A segmenter named {name!r} is already registered.")
    _REGISTRY[name] = factory
    return factory

  return wrap


def available_segmenters() -> list[str]:
  return sorted(_REGISTRY)


def get_segmenter(name: str, weights_path: str | os.PathLike, num_classes: int,
                  **kwargs: Any) -> Segmenter:
  """Builds a registered segmenter; unknown names and missing weight files are refused."""
  if name not in _REGISTRY:
    raise ValueError(f"Unknown segmenter {name!r}; registered: {available_segmenters()}. "
                     "Register one with scdm_jax.evaluation.miou.register_segmenter, or pass "
                     "a callable.")
  if not os.path.isfile(weights_path):
    raise FileNotFoundError(f"Segmenter weights file not found: {weights_path}")
  return _REGISTRY[name](weights_path, num_classes, **kwargs)


def segment(segmenter: Segmenter, images: Any) -> np.ndarray:
  """Class ids (B, H, W) from a segmenter that returns ids or (B, H, W, K) logits."""
  out = np.asarray(segmenter(images))
  images_shape = np.shape(images)
  if out.ndim == 4:
    out = out.argmax(axis=-1)
  if out.shape != tuple(images_shape[:3]):
    raise ValueError(f"Segmenter output {out.shape} does not match the images' (B, H, W) "
                     f"{tuple(images_shape[:3])}; resize the images or the labels to the "
                     "segmenter's resolution first.")
  return out


def evaluate_segmenter(segmenter: Segmenter, batches: Iterable[tuple[Any, Any]],
                       num_classes: int, *, ignore_index: int | None = 255) -> dict[str, Any]:
  """mIoU over ``(images, gt_ids)`` batches: images (B, H, W, 3) in [-1, 1], ids (B, H, W)."""
  acc = MIoUAccumulator(num_classes, ignore_index=ignore_index)
  for images, gt in batches:
    acc.update(segment(segmenter, images), gt)
  return acc.result()
