"""Writes small fake datasets in the real folder layouts (for tests, demos and benchmarks).

The label maps are procedural landscapes (`procedural.py`) whose classes are mapped onto
plausible raw ids of each dataset, and a 2x2 corner patch carries the special raw values
(unlabeled and the largest id), so every raw-value rule is exercised:

  python -m scdm_jax.data.fake_layouts --dataset ade20k --root /tmp/fake_ade --num 8
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from scdm_jax.data import procedural

# procedural class (sky, mountain, grass, water, sand, tree, rock, building) -> raw id.
RAW_OF_CLASS = {
    "ade20k": (3, 17, 10, 22, 47, 5, 35, 2),
    "coco_stuff": (156, 134, 123, 154, 153, 168, 149, 95),
    "cityscapes": (23, 22, 21, 6, 8, 21, 4, 11),
    "celebamask_hq": (0, 1, 2, 3, 4, 5, 6, 7),
}
# Raw values put in the top-left corner: (first 2x1, second 2x1).
CORNER = {"ade20k": (0, 150), "coco_stuff": (255, 181), "cityscapes": (0, 33),
          "celebamask_hq": (18, 17)}


def fake_example(dataset: str, index: int, size: tuple[int, int], split: str, seed: int = 0):
  """(image uint8 (H,W,3), raw label (H,W) uint8, instance (H,W) int) for one fake example."""
  ex = procedural.generate(index, size=size, seed=seed, split=split)
  raw = np.asarray(RAW_OF_CLASS[dataset], np.uint8)[ex["label"]]
  a, b = CORNER[dataset]
  raw[:2, :1] = a
  raw[:2, 1:2] = b
  inst = ex["instance"].copy()
  if dataset == "cityscapes":  # stuff: the label id; things: id * 1000 + k
    inst = np.where(inst >= 1000, raw.astype(np.int64) * 1000 + (inst - 1000), raw)
  elif dataset == "coco_stuff":  # SPADE's inst maps: small integers per object
    inst = np.where(inst >= 1000, inst - 1000 + 1, 0)
  return ex["image"], raw, inst


def _save(arr, path: str) -> None:
  from PIL import Image  # pylint: disable=import-outside-toplevel
  os.makedirs(os.path.dirname(path), exist_ok=True)
  arr = np.asarray(arr)
  if arr.ndim == 2 and arr.max(initial=0) > 255:
    Image.fromarray(arr.astype(np.uint16)).save(path)
  elif arr.ndim == 2:
    Image.fromarray(arr.astype(np.uint8)).save(path)
  else:
    Image.fromarray(arr).save(path, quality=95) if path.endswith(".jpg") else \
        Image.fromarray(arr).save(path)


def make_fake_dataset(dataset: str, root: str, *, num_train: int = 4, num_val: int = 4,
                      size: tuple[int, int] = (48, 64), seed: int = 0) -> str:
  """Writes a fake `dataset` under `root` in its real layout; returns the data root."""
  for split, n in (("train", num_train), ("validation", num_val)):
    for i in range(n):
      img, raw, inst = fake_example(dataset, i, size, split, seed)
      stem = f"{split}_{i:05d}"
      if dataset == "ade20k":
        sub = "training" if split == "train" else "validation"
        base = os.path.join(root, "ADEChallengeData2016")
        stem = f"ADE_{'train' if split == 'train' else 'val'}_{i:08d}"
        _save(img, os.path.join(base, "images", sub, stem + ".jpg"))
        _save(raw, os.path.join(base, "annotations", sub, stem + ".png"))
      elif dataset == "coco_stuff":
        sub = "train" if split == "train" else "val"
        stem = f"{i:012d}"
        _save(img, os.path.join(root, f"{sub}_img", stem + ".jpg"))
        _save(raw, os.path.join(root, f"{sub}_label", stem + ".png"))
        _save(inst, os.path.join(root, f"{sub}_inst", stem + ".png"))
      elif dataset == "celebamask_hq":
        sub = "train" if split == "train" else "test"
        stem = str(i if split == "train" else 28000 + i)
        _save(img, os.path.join(root, sub, "images", stem + ".jpg"))
        _save(raw, os.path.join(root, sub, "labels", stem + ".png"))
      elif dataset == "cityscapes":
        sub = "train" if split == "train" else "val"
        city = ("aachen", "bochum")[i % 2] if split == "train" else "frankfurt"
        stem = f"{city}_{i:06d}_000019"
        _save(img, os.path.join(root, "leftImg8bit", sub, city, stem + "_leftImg8bit.png"))
        _save(raw, os.path.join(root, "gtFine", sub, city, stem + "_gtFine_labelIds.png"))
        _save(inst, os.path.join(root, "gtFine", sub, city, stem + "_gtFine_instanceIds.png"))
      else:
        raise ValueError(f"unknown dataset {dataset!r}")
  return root


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m scdm_jax.data.fake_layouts", description=__doc__)
  p.add_argument("--dataset", required=True, choices=tuple(RAW_OF_CLASS))
  p.add_argument("--root", required=True)
  p.add_argument("--num", type=int, default=8)
  p.add_argument("--height", type=int, default=192)
  p.add_argument("--width", type=int, default=256)
  args = p.parse_args(argv)
  make_fake_dataset(args.dataset, args.root, num_train=args.num, num_val=args.num,
                    size=(args.height, args.width))
  print(f"wrote a fake {args.dataset} to {args.root}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
