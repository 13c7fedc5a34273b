"""A PNG grid of Paint-by-Example triplets for a human: scene | mask | masked input | reference.

  python -m scdm_jax.data.pbe_preview --out docs/images/pbe_triplets.png \
      [--config configs/default.py]

draws triplets of the procedural dataset (nothing downloaded). The object box is outlined
in red on the scene; the mask column shows the hole white.
"""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from scdm_jax.data import pbe_boxes
from scdm_jax.data import pbe_masks
from scdm_jax.data import pbe_triplets
from scdm_jax.io import images as image_io


def _u8(x: np.ndarray) -> np.ndarray:
  return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def triplet_row(t: dict, *, mean: Sequence[float] = pbe_triplets.CLIP_MEAN,
                std: Sequence[float] = pbe_triplets.CLIP_STD, gap: int = 2) -> np.ndarray:
  """One (S, 4S + 3 gap, 3) uint8 row: scene with the box | hole | masked input | reference."""
  s = t["image"].shape[0]
  scene = Image.fromarray(_u8((t["image"] + 1) / 2))
  x0, y0, x1, y1 = (int(v) for v in t["box"])
  ImageDraw.Draw(scene).rectangle([x0, y0, x1 - 1, y1 - 1], outline=(255, 0, 0))
  hole = _u8(np.repeat(1.0 - t["keep_mask"], 3, -1))
  masked = _u8((t["masked_image"] + 1) / 2)
  ref = t["reference"] * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
  ref = np.asarray(Image.fromarray(_u8(ref)).resize((s, s), Image.BICUBIC))
  white = np.full((s, gap, 3), 255, np.uint8)
  return np.concatenate([np.asarray(scene), white, hole, white, masked, white, ref], 1)


def write_grid(triplets: Sequence[dict], path: str, *, gap: int = 2, **kwargs) -> np.ndarray:
  """Writes the rows of `triplets` (make_triplet outputs) as one PNG; returns the array."""
  rows = [triplet_row(t, gap=gap, **kwargs) for t in triplets]
  white = np.full((gap, rows[0].shape[1], 3), 255, np.uint8)
  grid = np.concatenate(sum(([r, white] for r in rows), [])[:-1], 0)
  image_io.save_png(path, grid)
  return grid


def procedural_preview(path: str, data_config, *, n: int = 6, image_size: int = 128, source_size: int = 192,
                       encoder_size: int = 128, seed: int = 0,
                       mask: pbe_masks.MaskConfig = pbe_masks.MaskConfig()) -> np.ndarray:
  """Writes n triplets of procedural images (source_size px) to path."""
  boxes = pbe_boxes.procedural_boxes(data_config, max(8, 2 * n), size=source_size,
                                     seed=seed).records
  rng = np.random.default_rng(seed)
  pick = rng.choice(len(boxes), size=min(n, len(boxes)), replace=False)
  triplets = [pbe_triplets.make_triplet(boxes[int(i)], np.random.default_rng([seed, int(i)]),
                                        image_size=image_size, encoder_size=encoder_size,
                                        mask=mask) for i in sorted(pick)]
  return write_grid(triplets, path)


def main(argv: Sequence[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True)
  p.add_argument("--n", type=int, default=6)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--config", default="configs/default.py",
                 help="config file whose data section is used (the schema's defaults)")
  a = p.parse_args(argv)
  spec = importlib.util.spec_from_file_location("preview_config", a.config)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  procedural_preview(a.out, module.get_config().data, n=a.n, seed=a.seed)


if __name__ == "__main__":
  main()
