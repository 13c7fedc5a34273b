r"""Sampler-settings sweep on one trained model, scored by PROXY metrics (issue 18, item 0).

For every setting (respaced steps, x0 extrapolation, dynamic threshold, guidance scale) the
model samples the same validation maps with the same key, and each setting is scored by

  proxy_miou   the proxy segmenter on the samples against the clean labels;
  proxy_fd     Frechet distance of the proxy's features to the real images, only when the
               number of maps exceeds the feature dimension (else null, with the reason);
  flat_lap     mean |Laplacian| (4-neighbour, grey levels 0-255) over the interior pixels of
               the flat class (sky: the class whose real-image Laplacian is lowest would do
               too; sky is the procedural data's smooth gradient), next to the real images'.

Writes <out>/sweep.json and <out>/sweep.png (the first map under every setting, rows of 8,
each row starting with the label), plus the PNGs under <out>/<setting>/.

  python experiments/sampler_sweep.py --workdir /tmp/scdm_demo --config configs/demo.py \
      --proxy_weights /tmp/proxy/proxy_procedural.npz --out /tmp/sweep [--quick]
  python experiments/sampler_sweep.py --workdir /tmp/robust/seed0/scdm --robustness cpu:scdm \
      --proxy_weights /tmp/robust/proxy/proxy_procedural.npz --out /tmp/sweep_scdm
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import itertools
import os
import pathlib
import sys
from typing import Any

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

FULL = dict(steps=(25, 50, 100, 250), extrapolation=(0.0, 0.8),
            dynamic_threshold=(0.95, 0.0), guidance=(1.0, 1.5, 3.0))
QUICK = dict(steps=(25, 250), extrapolation=(0.0, 0.8), dynamic_threshold=(0.95,),
             guidance=(1.5,))


def _load(name: str, path: pathlib.Path):
  spec = importlib.util.spec_from_file_location(name, path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


robustness = _load("sampler_sweep_robustness", REPO / "experiments" / "robustness.py")


def settings_grid(grid: dict[str, tuple]) -> list[dict[str, float]]:
  keys = ("steps", "extrapolation", "dynamic_threshold", "guidance")
  return [dict(zip(keys, v)) for v in itertools.product(*(grid[k] for k in keys))]


def setting_name(st: dict[str, float]) -> str:
  return (f"s{int(st['steps'])}_x{st['extrapolation']:g}_dt{st['dynamic_threshold']:g}"
          f"_g{st['guidance']:g}")


def respacing_for(num_steps: int, steps: int) -> str:
  """"ddimN" (the reference's even stride) where it divides the chain, else N sections."""
  return f"ddim{steps}" if num_steps % steps == 0 and steps < num_steps else str(steps)


def flat_laplacian(images: np.ndarray, labels: np.ndarray, flat_class: int) -> float | None:
  """Mean |4-neighbour Laplacian| of the grey image over pixels whose 3 x 3 neighbourhood
  is all `flat_class`; None when no map has such a pixel."""
  grey = images.astype(np.float64).mean(-1)
  lap = (grey[:, 1:-1, :-2] + grey[:, 1:-1, 2:] + grey[:, :-2, 1:-1] + grey[:, 2:, 1:-1]
         - 4 * grey[:, 1:-1, 1:-1])
  flat = labels == flat_class
  inner = np.ones_like(flat[:, 1:-1, 1:-1])
  for dy in (0, 1, 2):
    for dx in (0, 1, 2):
      inner &= flat[:, dy:dy + flat.shape[1] - 2, dx:dx + flat.shape[2] - 2]
  return float(np.abs(lap)[inner].mean()) if inner.any() else None


def sweep(config, workdir: str, out: str, proxy_weights: str, settings, *,
          num_maps: int) -> dict[str, Any]:
  import ml_collections  # pylint: disable=g-import-not-at-top
  from scdm_jax import recipe  # pylint: disable=g-import-not-at-top
  from scdm_jax.data import label_io  # pylint: disable=g-import-not-at-top
  from scdm_jax.data import procedural  # pylint: disable=g-import-not-at-top
  from scdm_jax.evaluation import proxy  # pylint: disable=g-import-not-at-top
  from scdm_jax.io import atomic  # pylint: disable=g-import-not-at-top
  from scdm_jax.io import images as image_io  # pylint: disable=g-import-not-at-top

  if config.data.name != "procedural":
    raise ValueError(f"the sweep scores with the procedural proxy; data.name is "
                     f"{config.data.name!r}: use a procedural model")
  size, share = int(config.data.image_size), float(config.data.procedural_unlabeled_share)
  seg = proxy.load_segmenter(proxy_weights)
  real_images, _ = proxy.procedural_arrays(num_maps, image_size=size, split="validation")
  real_features = seg.features(real_images)
  gt = np.stack([procedural.generate(i, size=size, split="validation",
                                     unlabeled_share=share)["label"]
                 for i in range(num_maps)]).astype(np.int32)
  real_u8 = np.rint((real_images + 1.0) * 127.5).astype(np.uint8)
  flat = procedural.SKY
  psi = recipe.resolve_psi(config)
  rows, first_label, results = [], None, []
  for st in settings:
    c = ml_collections.ConfigDict(config.to_dict())
    c.sample.max_maps = num_maps
    c.sample.batch_size = min(int(c.sample.batch_size), num_maps)
    c.sample.respacing = respacing_for(int(c.diffusion.num_steps), int(st["steps"]))
    c.sample.extrapolation = float(st["extrapolation"])
    c.sample.dynamic_threshold = float(st["dynamic_threshold"])
    c.sample.guidance_scale = float(st["guidance"])
    name = setting_name(st)
    got = robustness.sample_arm(c, workdir, os.path.join(out, name),
                                [("clean", "clean", "class")],
                                schedule=c.diffusion.label_schedule,
                                label_mode=c.sample.label_mode, psi=psi)
    labels, images = got["clean"]
    score = robustness.score_images(seg, images, gt, real_features,
                                    int(c.data.num_classes), procedural.UNLABELED)
    score.pop("per_map_miou")
    results.append(dict(setting=st, name=name, respacing=c.sample.respacing,
                        flat_lap=flat_laplacian(images, gt, flat), **score))
    print(f"[sweep] {name:28s} proxy mIoU {score['proxy_miou']:.3f}  FD "
          f"{score['proxy_fd']}  flat |lap| {results[-1]['flat_lap']}", flush=True)
    if first_label is None:
      first_label = labels[0]
    rows.append(images[0])
  table = procedural.class_table()
  label_img = label_io.colorize(first_label, table, unknown_color=(255, 0, 255))
  grid = [[label_img, real_u8[0]] + rows[i:i + 8] for i in range(0, len(rows), 8)]
  width = max(len(r) for r in grid)
  blank = np.zeros_like(label_img)
  grid = [r + [blank] * (width - len(r)) for r in grid]
  image_io.save_png(os.path.join(out, "sweep.png"), image_io.make_grid(grid))
  payload = {"workdir": os.path.abspath(workdir), "num_maps": num_maps,
             "proxy_weights": proxy_weights, "flat_class": "sky",
             "real_flat_lap": flat_laplacian(real_u8, gt, flat),
             "picture": "sweep.png: per row the label, the real image, then settings in "
                        "the order of `results`", "results": results}
  atomic.write_json(os.path.join(out, "sweep.json"), payload, indent=2)
  return payload


def load_config(args):
  if args.robustness:
    size, _, model = args.robustness.partition(":")
    if size not in robustness.SIZES or model not in robustness.MODELS:
      raise ValueError(f"--robustness {args.robustness!r}: use SIZE:MODEL with SIZE in "
                       f"{sorted(robustness.SIZES)} and MODEL in {sorted(robustness.MODELS)}")
    config = robustness.build_config(size, model, seed=args.seed)
  else:
    path = pathlib.Path(args.config)
    if not path.exists():
      raise FileNotFoundError(f"--config {path} does not exist: give a configs/*.py preset")
    config = _load("sampler_sweep_cfg", path).get_config()
  for item in args.set:
    key, _, value = item.partition("=")
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    try:
      node[leaf] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      node[leaf] = value
  return config


def parse_settings(text: str) -> list[dict[str, float]]:
  """'steps:extrapolation:threshold:guidance,...' -> settings."""
  out = []
  for item in text.split(","):
    parts = item.split(":")
    if len(parts) != 4:
      raise ValueError(f"--settings item {item!r}: use steps:extrapolation:threshold:guidance")
    out.append(dict(steps=int(parts[0]), extrapolation=float(parts[1]),
                    dynamic_threshold=float(parts[2]), guidance=float(parts[3])))
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True, help="the trained model's workdir")
  p.add_argument("--config", default=str(REPO / "configs" / "demo.py"))
  p.add_argument("--robustness", default="", help="SIZE:MODEL of experiments/robustness.py")
  p.add_argument("--seed", type=int, default=0, help="with --robustness: the training seed")
  p.add_argument("--set", action="append", default=[], help="config override key=value")
  p.add_argument("--proxy_weights", required=True)
  p.add_argument("--out", required=True)
  p.add_argument("--num_maps", type=int, default=128)
  p.add_argument("--quick", action="store_true", help="4 settings instead of 48")
  p.add_argument("--settings", default="", help="explicit list (overrides --quick)")
  a = p.parse_args(argv)
  try:
    settings = (parse_settings(a.settings) if a.settings else
                settings_grid(QUICK if a.quick else FULL))
    sweep(load_config(a), a.workdir, a.out, a.proxy_weights, settings, num_maps=a.num_maps)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
