"""`--mode paint`: Paint by Example, an exemplar painted into the masked region of a photo.

Inputs from `config.paint` (configs/default.py, docs/paint_by_example.md): `source` is an
image or a folder; `mask` and `exemplar` are one file (used for every source) or a folder
holding a file with each source's base name. `weights` is a diffusers Paint-by-Example
folder, the original `model.ckpt`, or an export written by `python -m
scdm_jax.tools.convert_pbe` (the fastest to load). Outputs: `<output_dir>/sample_<j>/<name>.png`
and `<output_dir>/grid.png` (source | mask | exemplar | samples, one row per source).
"""

from __future__ import annotations

import os
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from scdm_jax import sharding
from scdm_jax.inference.paint import PaintPipeline
from scdm_jax.io import fileio
from scdm_jax.io import images as image_io
from scdm_jax.io import progress as progress_lib

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _match(sources: list[str], path: str, what: str) -> list[str]:
  """The `what` file of each source: one file for all, or a folder's file of the same name."""
  if not path:
    raise ValueError(f"--mode paint needs --config.paint.{what}=<image or folder>")
  return fileio.match_by_name(sources, path, f"config.paint.{what}", "source")


def _read_rgb(path: str, what: str) -> np.ndarray:
  """An image file -> (H, W, 3) uint8, or a one-line error naming the file."""
  try:
    with image_io.open_image(path) as im:
      return np.asarray(im.convert("RGB"), np.uint8)
  except FileNotFoundError:
    raise
  except (OSError, SyntaxError, ValueError) as e:  # PIL's errors for non-images
    raise ValueError(f"{what} {path} is not a readable image ({type(e).__name__}); give a "
                     "PNG or JPEG file") from None


def _read_mask(path: str, shape: tuple[int, int]) -> np.ndarray:
  """A mask PNG -> (H, W) uint8 with 255 = repaint; refuses other sizes and grey levels."""
  rgb = _read_rgb(path, "mask")
  if rgb.shape[:2] != shape:
    raise ValueError(f"mask {path} is {rgb.shape[0]}x{rgb.shape[1]} but its source image is "
                     f"{shape[0]}x{shape[1]}; give a mask of the source's size")
  if not (rgb == rgb[..., :1]).all():
    raise ValueError(f"mask {path} has coloured pixels; give a black and white mask "
                     "(white = the region to repaint)")
  m = rgb[..., 0]
  bad = np.setdiff1d(np.unique(m), [0, 255])
  if bad.size:
    raise ValueError(f"mask {path} has grey values {bad[:5].tolist()} besides 0 and 255; "
                     "binarise it (white 255 = repaint, black 0 = keep)")
  if not (m == 255).any():
    raise ValueError(f"mask {path} is all black: nothing to repaint; paint the region "
                     "white")
  return m


def run(config: ml_collections.ConfigDict, workdir: str | None) -> dict[str, Any]:
  """Paints every source; returns a summary (count, output_dir, steps, seconds)."""
  pc = config.paint
  if not pc.weights:
    raise ValueError("--mode paint needs --config.paint.weights=<a diffusers Paint-by-Example "
                     "folder, model.ckpt, or an export from `python -m "
                     "scdm_jax.tools.convert_pbe`>")
  if not pc.source:
    raise ValueError("--mode paint needs --config.paint.source=<image or folder>")
  out_dir = pc.output_dir or os.path.join(workdir or ".", "paint")
  if jax.process_index() == 0:
    fileio.check_writable(out_dir, "config.paint.output_dir")
  if pc.dtype not in _DTYPES:
    raise ValueError(f"config.paint.dtype={pc.dtype!r}: use one of {sorted(_DTYPES)}")
  num_samples, batch_size = int(pc.num_samples), int(pc.batch_size)
  if num_samples < 1 or batch_size < 1 or int(pc.num_steps) < 1:
    raise ValueError(f"config.paint: num_samples={num_samples}, batch_size={batch_size} and "
                     f"num_steps={pc.num_steps} must all be >= 1")
  sources = fileio.list_images(str(pc.source), "config.paint.source", fileio.IMAGE_EXTENSIONS)
  masks = _match(sources, str(pc.mask), "mask")
  exemplars = _match(sources, str(pc.exemplar), "exemplar")

  mesh = sharding.make_mesh(config.mesh)
  pipe = PaintPipeline.load(str(pc.weights), config=str(pc.weights_config) or None,
                            dtype=_DTYPES[pc.dtype], mesh=mesh)
  factor = pipe.vae_config.downsample_factor

  # Read and check every input before the first (slow) program runs.
  triples, names = [], []
  for s, m, e in zip(sources, masks, exemplars):
    image = _read_rgb(s, "source image")
    if image.shape[0] % factor or image.shape[1] % factor:
      raise ValueError(f"source image {s} is {image.shape[0]}x{image.shape[1]}; the model "
                       f"needs sides divisible by {factor} (the released model works at "
                       "512x512): resize or crop it")
    triples.append((image, _read_mask(m, image.shape[:2]), _read_rgb(e, "exemplar")))
    names.append(os.path.splitext(os.path.basename(s))[0])
  sizes = {t[0].shape for t in triples}
  if len(sizes) > 1:
    raise ValueError(f"config.paint.source: the images have different sizes {sorted(sizes)}; "
                     "one run paints images of one size")

  is_main = jax.process_index() == 0
  calls = pipe.scheduler(pc.sampler, int(pc.num_steps), eta=float(pc.eta)).num_calls
  batches = [(j, i) for j in range(num_samples) for i in range(0, len(triples), batch_size)]
  bar = progress_lib.ProgressBar(len(batches) * calls, "paint", unit="steps", enabled=is_main)
  done = {"steps": 0}

  def progress(step, total):
    bar.update(done["steps"] + min(step, total))

  logging.info("Painting %d image(s) x %d sample(s) with %s (%s, %d steps, guidance %.1f).",
               len(triples), num_samples, pc.weights, pc.sampler, pc.num_steps,
               pc.guidance_scale)
  results: dict[int, list[np.ndarray]] = {j: [] for j in range(num_samples)}
  base_key = jax.random.key(int(pc.seed))
  for j, i in batches:
    chunk = triples[i:i + batch_size]
    # Keys by (sample, first index): a result does not depend on the batch size chosen
    # within a sample (the pipeline folds the example index in as well).
    key = jax.random.fold_in(jax.random.fold_in(base_key, j), i)
    out = pipe.paint(np.stack([t[0] for t in chunk]), np.stack([t[1] for t in chunk]),
                     [t[2] for t in chunk], key=key, num_steps=int(pc.num_steps),
                     guidance_scale=float(pc.guidance_scale), sampler=pc.sampler,
                     eta=float(pc.eta), paste_back=bool(pc.paste_back),
                     posterior=pc.posterior, mask_resize=pc.mask_resize,
                     exemplar_mode=pc.exemplar_resize, progress=progress)
    done["steps"] += calls
    results[j].extend(image_io.to_uint8(np.asarray(out) * 2.0 - 1.0))
  bar.close()

  if is_main:
    for j, imgs in results.items():
      for name, img in zip(names, imgs):
        image_io.save_png(fileio.join(fileio.join(out_dir, f"sample_{j}"), name + ".png"),
                          img)
    image_io.save_png(fileio.join(out_dir, "grid.png"), _grid(triples, results))
  logging.info("Wrote %d painted image(s) to %s (grid.png: source | mask | exemplar | "
               "samples).", len(triples) * num_samples, out_dir)
  return {"count": len(triples) * num_samples, "output_dir": out_dir,
          "steps": int(pc.num_steps), "calls_per_sample": calls}


def _grid(triples, results) -> np.ndarray:
  rows = []
  for n, (image, mask, exemplar) in enumerate(triples):
    h, w = image.shape[:2]
    row = [image, np.repeat(mask[..., None], 3, -1), _fit(exemplar, h, w)]
    row += [results[j][n] for j in sorted(results)]
    rows.append(row)
  return image_io.make_grid(rows)


def _fit(image: np.ndarray, h: int, w: int) -> np.ndarray:
  return np.asarray(Image.fromarray(image).resize((w, h), Image.BICUBIC))
