"""Writes a corrupted copy of a dataset's label folder (the fixed noisy-label benchmark).

  python -m scdm_jax.data.corrupt --dataset ade20k --root data/ADEChallengeData2016 \
      --split validation --variant ds|edge|random --out DIR [--seed 0] [--limit 2000]

Output: one PNG per label file, same file name, in the dataset's *raw* convention (corrupted
pixels get the raw "unlabeled" value: ADE20K 0, COCO-Stuff 255, Cityscapes 0), plus
`corrupt.json` (variant, seed, source, count). Evaluate on the benchmark with
`data.label_dir=DIR` (the pipeline then reads these labels instead of the clean ones).

- ds: the annotation at its original size -> 64 x 64 with Pillow's NEAREST (written at
  64 x 64; the loader resizes it back up), exactly as the reference `downsample.py`.
- edge: the annotation resized to --size (256) nearest; dilated 4-neighbour boundaries of the
  instance map (of the label map when the dataset has none) set to unlabeled.
- random: the annotation at --size; each pixel unlabeled with probability --rate (0.1), from a
  Generator seeded by (seed, file name): a file's corruption does not depend on --limit.
Files are written atomically (temporary file, then rename), so an interrupted run never
leaves a half-written PNG; rerunning overwrites.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import zlib

import numpy as np

from scdm_jax.io import atomic
from scdm_jax.data import layouts
from scdm_jax.data import noisy
from scdm_jax.io.progress import progress


def corrupt_raw(raw: np.ndarray, variant: str, *, unlabeled: int, instance=None, size: int = 256,
                seed: int = 0, name: str = "", rate: float = noisy.RANDOM_RATE,
                ds_size: int = noisy.DS_SIZE, radius: int = noisy.EDGE_RADIUS) -> np.ndarray:
  """Corrupts one raw annotation as the `corrupt` command does."""
  if variant == "ds":
    return noisy.resize_nearest(raw, ds_size)
  raw_s = noisy.resize_nearest(raw, size)
  if variant == "edge":
    inst = None if instance is None else noisy.resize_nearest(instance, size)
    return noisy.corrupt_edge(raw_s, unlabeled, inst, radius)
  if variant == "random":
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(name.encode())])
    return noisy.corrupt_random(raw_s, unlabeled, rng, rate)
  raise ValueError(f"unknown variant {variant!r}: use ds, edge or random")


def run(dataset: str, root: str, split: str, variant: str, out: str, *, seed: int = 0,
        size: int = 256, limit: int | None = None, rate: float = noisy.RANDOM_RATE,
        unlabeled_value: int | None = None, quiet: bool = False) -> int:
  """Corrupts the split's label files into `out`; returns the number written."""
  spec = layouts.get_spec(dataset)
  unl = spec.unlabeled_raw if unlabeled_value is None else unlabeled_value
  if unl is None:
    raise ValueError(f"{dataset} has no 'unlabeled' raw value to write; pass "
                     "--unlabeled-value (e.g. 0 for background)")
  examples = layouts.list_examples(dataset, root, split, require_images=False)
  if limit:
    examples = examples[:limit]
  os.makedirs(out, exist_ok=True)
  for ex in progress(examples, desc=f"corrupt {variant}",
                     stream=io.StringIO() if quiet else None):
    raw = layouts.read_raw_label(ex.label)
    spec.raw_to_class(raw, ex.label)  # refuses out-of-range values, naming the file
    inst = None
    if variant == "edge" and spec.has_instances and ex.instance is not None:
      inst = layouts.read_raw_label(ex.instance)
    res = corrupt_raw(raw, variant, unlabeled=unl, instance=inst, size=size, seed=seed,
                      name=ex.name, rate=rate)
    from PIL import Image  # pylint: disable=import-outside-toplevel
    img = Image.fromarray(res.astype(np.uint8) if res.max(initial=0) < 256 else
                          res.astype(np.uint16))
    atomic.save_image(img, os.path.join(out, os.path.basename(ex.label)))
  meta = {"dataset": dataset, "root": os.path.abspath(root), "split": split,
          "variant": variant, "seed": seed, "size": size, "rate": rate,
          "unlabeled_value": unl, "count": len(examples)}
  atomic.write_json(os.path.join(out, "corrupt.json"), meta)
  return len(examples)


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m scdm_jax.data.corrupt", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--dataset", required=True, choices=layouts.DATASETS)
  p.add_argument("--root", required=True)
  p.add_argument("--split", default="validation")
  p.add_argument("--variant", required=True, choices=noisy.VARIANTS)
  p.add_argument("--out", required=True)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--size", type=int, default=256, help="working size of edge/random")
  p.add_argument("--rate", type=float, default=noisy.RANDOM_RATE)
  p.add_argument("--limit", type=int, default=None, help="first N files (the paper: 2000)")
  p.add_argument("--unlabeled-value", type=int, default=None)
  args = p.parse_args(argv)
  try:
    n = run(args.dataset, args.root, args.split, args.variant, args.out, seed=args.seed,
            size=args.size, limit=args.limit, rate=args.rate,
            unlabeled_value=args.unlabeled_value)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {n} {args.variant}-corrupted label maps to {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
