"""Class statistics of a dataset's labels -> psi per class (class-wise schedule) + histogram.

  python -m scdm_jax.data.class_stats --dataset ade20k --root data/ADEChallengeData2016 \
      --out ade20k_psi.npy [--split train] [--limit N]

For every label map: the fraction of the image covered by each class present. Accumulates
`area_fraction_sum` (K,) and `image_count` (K,) and calls
`scdm_jax.diffusion.label_diffusion.psi_from_statistics` (psi_c = image_count_c /
area_fraction_sum_c; absent classes 0.5 = linear schedule). Writes psi (float64 .npy) and,
next to it, `<out stem>_hist.json` with the class names, pixel counts, image counts and
area-fraction sums. Maps are scanned at their stored resolution (fractions do not depend on
resizing, up to nearest-resize rounding). --dataset procedural needs no --root.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from scdm_jax.data import layouts
from scdm_jax.data import palettes
from scdm_jax.data import procedural
from scdm_jax.diffusion.label_diffusion import psi_from_statistics
from scdm_jax.io import atomic
from scdm_jax.io.progress import progress


def accumulate(label_maps, num_classes: int, total: int | None = None, quiet: bool = False
               ) -> dict[str, np.ndarray]:
  """Sums per-class statistics over an iterable of (H, W) class-id maps (-1 ignored)."""
  pixels = np.zeros(num_classes, np.int64)
  images = np.zeros(num_classes, np.int64)
  area = np.zeros(num_classes, np.float64)
  it = label_maps if quiet else progress(label_maps, total=total, desc="class stats")
  for ids in it:
    ids = np.asarray(ids).ravel()
    ids = ids[ids >= 0]
    if ids.size == 0:
      continue
    counts = np.bincount(ids, minlength=num_classes)
    if len(counts) > num_classes:
      raise ValueError(f"class id {len(counts) - 1} >= num_classes={num_classes}")
    pixels += counts
    images += counts > 0
    area += counts / ids.size
  return {"pixel_count": pixels, "image_count": images, "area_fraction_sum": area}


def _label_maps(dataset: str, root: str | None, split: str, limit: int | None):
  if dataset == "procedural":
    n = limit or procedural.DEFAULT_NUM_EXAMPLES["train" if split == "train" else "validation"]
    sp = layouts.canonical_split(split)
    return (procedural.generate(i, size=64, split=sp)["label"] for i in range(n)), n
  spec = layouts.get_spec(dataset)
  examples = layouts.list_examples(dataset, root, split, require_images=False)
  if limit:
    examples = examples[:limit]
  return (spec.raw_to_class(layouts.read_raw_label(e.label), e.label) for e in examples), \
      len(examples)


def run(dataset: str, root: str | None, out: str, *, split: str = "train",
        limit: int | None = None, absent_value: float = 0.5, quiet: bool = False) -> dict:
  """Scans the labels, writes psi (.npy) and the histogram (.json); returns both."""
  table = palettes.get_class_table(dataset)
  maps, n = _label_maps(dataset, root, split, limit)
  stats = accumulate(maps, table.num_classes, total=n, quiet=quiet)
  psi = psi_from_statistics(stats["area_fraction_sum"], stats["image_count"],
                            absent_value=absent_value)
  atomic.write_npy(out, np.asarray(psi, np.float64))
  hist_path = os.path.splitext(out)[0] + "_hist.json"
  hist = {"dataset": dataset, "split": split, "num_images": n,
          "names": list(table.names),
          "pixel_count": stats["pixel_count"].tolist(),
          "image_count": stats["image_count"].tolist(),
          "area_fraction_sum": stats["area_fraction_sum"].tolist(),
          "psi": np.asarray(psi).tolist()}
  atomic.write_json(hist_path, hist)
  return {"psi": np.asarray(psi), **stats, "hist_path": hist_path}


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m scdm_jax.data.class_stats", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--dataset", required=True, choices=layouts.DATASETS + ("procedural",))
  p.add_argument("--root", default=None)
  p.add_argument("--split", default="train")
  p.add_argument("--out", required=True, help="psi .npy path")
  p.add_argument("--limit", type=int, default=None)
  p.add_argument("--absent-value", type=float, default=0.5)
  args = p.parse_args(argv)
  if args.dataset != "procedural" and not args.root:
    p.error(f"--root is required for {args.dataset}")
  try:
    res = run(args.dataset, args.root, args.out, split=args.split, limit=args.limit,
              absent_value=args.absent_value)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  present = int((res["image_count"] > 0).sum())
  print(f"wrote psi for {len(res['psi'])} classes ({present} present) to {args.out} and the "
        f"histogram to {res['hist_path']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
