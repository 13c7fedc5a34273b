r"""Measures the small CPU Paint-by-Example demo (configs/paint_by_example.py:cpu_demo / :naive).

On held-out procedural images (the `validation` split, never trained on; the scene a
square crop around an object, side >= 40 of 64 px, resized to 16): the hole is the
object's box (extended by 15% per side) and the exemplar is an object of ANOTHER class
cut from ANOTHER held-out image. Per model (PROXY numbers: the proxy segmenter of
`scdm_jax.evaluation.proxy`, trained by this project on this dataset):

  adherence        share of hole pixels the proxy segmenter assigns to the exemplar's class
                   (also per exemplar class, and for the unpainted source as the floor)
  outside change   mean / max |result - source| outside the hole in [0, 1], with and
                   without paste-back
  proxy FD         Frechet distance of the proxy features (7 x width) of the pasted results
                   to unedited scenes of other held-out images (only when N exceeds the
                   feature dimension)
  copying          mean |hole pixels - exemplar crop resized onto the hole box|, for the
                   model's own exemplar and for another exemplar of the same class; a model
                   that copies pixels is much closer to its own exemplar (copy gap > 0)
  same class       adherence when the exemplar is another instance of the hole's own class

  python experiments/pbe_demo_eval.py --recipe /tmp/pbe_demo/export \
      --naive /tmp/pbe_naive/export --proxy /tmp/proxy/proxy_procedural.npz \
      --out results/pbe_demo.json --picture docs/images/pbe_demo.png
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np
from PIL import Image

from scdm_jax.data import palettes
from scdm_jax.data import pbe_boxes
from scdm_jax.data import pbe_triplets
from scdm_jax.data import procedural
from scdm_jax.evaluation import fid
from scdm_jax.evaluation import proxy
from scdm_jax.inference.paint import PaintPipeline
from scdm_jax.io import atomic

DATA_SIZE, SCENE = 64, 16
OBJECTS = {procedural.TREE: "tree", procedural.ROCK: "rock", procedural.BUILDING: "building"}


def _objects(index: int, split: str = "validation"):
  ex = procedural.generate(index, size=DATA_SIZE, split=split)
  table = palettes.get_class_table("procedural")
  stuff = pbe_boxes.stuff_ids_for(table.names, pbe_boxes.DEFAULT_STUFF["procedural"])
  return ex, pbe_boxes.component_boxes(ex["label"], ex["instance"], stuff_ids=stuff)


def make_cases(n: int, *, other_class: bool, start: int = 0) -> list[dict]:
  """n (source, hole, exemplar) cases from held-out images; deterministic."""
  rng = np.random.default_rng(7 if other_class else 8)
  pool = []  # exemplar candidates: (image index, box, class)
  for j in range(start + 4000, start + 4400):
    ex, objs = _objects(j)
    pool += [(ex["image"], box, cls) for box, cls in objs]
  cases, i = [], start
  while len(cases) < n:
    ex, objs = _objects(i)
    i += 1
    if not objs:
      continue
    box, cls = objs[int(rng.integers(len(objs)))]
    want = [p for p in pool if (p[2] != cls) == other_class]
    img_e, box_e, cls_e = want[int(rng.integers(len(want)))]
    # The scene: a square crop around the box, as training sees it (the box at a similar
    # scale), side max(40, box side + 8) px of the 64 px image, then resized to SCENE.
    bx0, by0, bx1, by1 = box
    side = int(min(DATA_SIZE, max(40, bx1 - bx0 + 8, by1 - by0 + 8)))
    cx0 = int(np.clip((bx0 + bx1 - side) // 2, 0, DATA_SIZE - side))
    cy0 = int(np.clip((by0 + by1 - side) // 2, 0, DATA_SIZE - side))
    f = SCENE / side
    x0, y0, x1, y1 = ((bx0 - cx0) * f, (by0 - cy0) * f, (bx1 - cx0) * f, (by1 - cy0) * f)
    ex_w, ex_h = (x1 - x0) * 0.15, (y1 - y0) * 0.15
    hx0, hy0 = int(max(0, np.floor(x0 - ex_w))), int(max(0, np.floor(y0 - ex_h)))
    hx1, hy1 = int(min(SCENE, np.ceil(x1 + ex_w))), int(min(SCENE, np.ceil(y1 + ex_h)))
    mask = np.zeros((SCENE, SCENE), np.uint8)
    mask[hy0:hy1, hx0:hx1] = 255
    crop = np.ascontiguousarray(ex["image"][cy0:cy0 + side, cx0:cx0 + side])
    src = np.asarray(Image.fromarray(crop).resize((SCENE, SCENE), Image.BICUBIC))
    cases.append({"source": src, "mask": mask, "hole_box": (hx0, hy0, hx1, hy1),
                  "exemplar": np.ascontiguousarray(pbe_triplets.reference_crop(img_e, box_e)),
                  "exemplar_class": int(cls_e), "hole_class": int(cls)})
  return cases


def _paint(pipe: PaintPipeline, cases, paste_back: bool, seed: int = 0) -> np.ndarray:
  out = pipe.paint(np.stack([c["source"] for c in cases]), np.stack([c["mask"] for c in cases]),
                   [c["exemplar"] for c in cases], key=jax.random.key(seed), sampler="ddim",
                   num_steps=25, guidance_scale=3.0, paste_back=paste_back)
  return np.asarray(out, np.float32)  # [0, 1]


def _copy_l1(result01: np.ndarray, case: dict, exemplar: np.ndarray) -> float:
  hx0, hy0, hx1, hy1 = case["hole_box"]
  ref = np.asarray(Image.fromarray(exemplar).resize((hx1 - hx0, hy1 - hy0), Image.BICUBIC),
                   np.float32) / 255.0
  return float(np.abs(result01[hy0:hy1, hx0:hx1] - ref).mean())


def evaluate(pipe: PaintPipeline, seg, cases, same_cases, ref_feats) -> dict:
  t0 = time.time()
  # One batch for both case sets: two compiled programs per model (the paste setting).
  n = len(cases)
  raw = _paint(pipe, cases + same_cases, paste_back=False)[:n]
  pasted_all = _paint(pipe, cases + same_cases, paste_back=True)
  pasted, same_pasted = pasted_all[:n], pasted_all[n:]
  seconds = time.time() - t0
  src = np.stack([c["source"] for c in cases]).astype(np.float32) / 255.0
  hole = np.stack([c["mask"] for c in cases]) > 127
  outside = ~hole[..., None].repeat(3, -1)
  pred = np.argmax(seg(pasted * 2 - 1), -1)
  want = np.array([c["exemplar_class"] for c in cases])
  hit = [(pred[k][hole[k]] == want[k]).mean() for k in range(len(cases))]
  per_class = {OBJECTS[c]: float(np.mean([h for h, w in zip(hit, want) if w == c]))
               for c in OBJECTS if np.any(want == c)}
  own = [_copy_l1(pasted[k], c, c["exemplar"]) for k, c in enumerate(cases)]
  # Another exemplar of the same class: the next case whose exemplar has that class.
  other = []
  for k, c in enumerate(cases):
    alt = next((d for d in cases[k + 1:] + cases[:k]
                if d["exemplar_class"] == c["exemplar_class"]), None)
    if alt is not None:
      other.append(_copy_l1(pasted[k], c, alt["exemplar"]))
  feats = seg.features(pasted * 2 - 1)
  same_pred = np.argmax(seg(same_pasted * 2 - 1), -1)
  same_hole = np.stack([c["mask"] for c in same_cases]) > 127
  same_hit = [(same_pred[k][same_hole[k]] == c["exemplar_class"]).mean()
              for k, c in enumerate(same_cases)]
  out = {
      "n": len(cases), "n_same_class": len(same_cases),
      "paint_seconds_both_paste_settings": seconds,
      "adherence": float(np.mean(hit)), "adherence_per_exemplar_class": per_class,
      "outside_change_paste_back": {"mean": float(np.abs(pasted - src)[outside].mean()),
                                    "max": float(np.abs(pasted - src)[outside].max())},
      "outside_change_no_paste_back": {"mean": float(np.abs(raw - src)[outside].mean()),
                                       "max": float(np.abs(raw - src)[outside].max())},
      "hole_identical_with_and_without_paste_back": bool(
          np.array_equal(raw[hole], pasted[hole])),
      "copy_l1_own_exemplar": float(np.mean(own)),
      "copy_l1_other_same_class_exemplar": float(np.mean(other)),
      "copy_gap": float(np.mean(other) - np.mean(own)),
      "same_class_other_instance_adherence": float(np.mean(same_hit)),
  }
  if len(cases) > feats.shape[1]:
    out["proxy_fd"] = fid.fid_from_features(feats, ref_feats)
  else:
    out["proxy_fd"] = None
    out["proxy_fd_note"] = f"N={len(cases)} <= feature dim {feats.shape[1]}: not computed"
  return out, pasted


def picture(path: str, cases, results: dict[str, np.ndarray], rows: list[int]) -> None:
  """Rows of source | mask | exemplar | result per model, 4x nearest upscaling."""
  up = lambda a: np.asarray(Image.fromarray(a).resize((128, 128), Image.NEAREST))
  gap = np.full((128, 4, 3), 255, np.uint8)
  lines = []
  for k in rows:
    c = cases[k]
    cells = [up(c["source"]), up(np.repeat(c["mask"][..., None], 3, -1)),
             up(np.ascontiguousarray(c["exemplar"]))]
    cells += [up(np.round(r[k] * 255).astype(np.uint8)) for r in results.values()]
    line = []
    for cell in cells:
      line += [cell, gap]
    lines.append(np.concatenate(line[:-1], 1))
    lines.append(np.full((4, lines[-1].shape[1], 3), 255, np.uint8))
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with atomic.atomic_path(path) as tmp:
    Image.fromarray(np.concatenate(lines[:-1], 0)).save(tmp, format="PNG", optimize=True)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--recipe", required=True, help="export of the :cpu_demo run")
  p.add_argument("--naive", default="", help="export of the :naive run (optional)")
  p.add_argument("--proxy", required=True, help="proxy_procedural.npz")
  p.add_argument("--n", type=int, default=160)
  p.add_argument("--out", default="results/pbe_demo.json")
  p.add_argument("--picture", default="docs/images/pbe_demo.png")
  p.add_argument("--extra", default="", help="JSON file merged into the output (run times)")
  a = p.parse_args(argv)
  seg = proxy.load_segmenter(a.proxy)
  cases = make_cases(a.n, other_class=True)
  same_cases = make_cases(max(16, a.n // 4), other_class=False, start=2000)
  # FD reference: unedited scenes cut the same way from other held-out images.
  real = np.stack([c["source"] for c in make_cases(a.n, other_class=False, start=1000)]
                  ).astype(np.float32) / 127.5 - 1
  ref_feats = seg.features(real)
  src = np.stack([c["source"] for c in cases]).astype(np.float32) / 127.5 - 1
  hole = np.stack([c["mask"] for c in cases]) > 127
  src_pred = np.argmax(seg(src), -1)
  report = {"setup": {"split": "validation", "scene": SCENE, "data_size": DATA_SIZE,
                      "hole": "object box extended by 15% per side", "sampler": "ddim 25",
                      "guidance_scale": 3.0,
                      "exemplar": "object of another class from another held-out image"},
            "source_adherence": float(np.mean([(src_pred[k][hole[k]] == c["exemplar_class"])
                                               .mean() for k, c in enumerate(cases)])),
            "source_proxy_fd": fid.fid_from_features(seg.features(src), ref_feats)}
  shown = {}
  for name, path in (("recipe", a.recipe), ("naive", a.naive)):
    if path:
      report[name], shown[name] = evaluate(PaintPipeline.load(path), seg, cases, same_cases,
                                           ref_feats)
      print(name, json.dumps(report[name], indent=1), flush=True)
  if a.extra:
    with open(a.extra) as f:
      report["runs"] = json.load(f)
  rows, seen = [], {}
  for k, c in enumerate(cases):  # two examples per exemplar class
    if seen.get(c["exemplar_class"], 0) < 2:
      seen[c["exemplar_class"]] = seen.get(c["exemplar_class"], 0) + 1
      rows.append(k)
  picture(a.picture, cases, shown, rows)
  atomic.write_json(a.out, report, indent=2)
  print(f"wrote {a.out} and {a.picture}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
