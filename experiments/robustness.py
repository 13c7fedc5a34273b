r"""Small-scale reproduction of SCDM's robustness claim on the procedural dataset (PROXY metrics).

Trains an SDM baseline (no label diffusion: ``diffusion.label_schedule="none"``) and SCDM
(class-wise label diffusion, psi from the procedural class statistics) with the same budget,
seed, network and data; samples both on the same validation label maps under four label
conditions (clean, DS, Edge, Random); scores every (model, condition) with the PROXY
segmenter / feature network (`scdm_jax.evaluation.proxy`) against the *clean* labels and
the real validation images; writes

  <out>/table.md, <out>/table.json   proxy mIoU (higher = better alignment) and proxy FD
                                     (lower = closer to real images) per model and condition
  <out>/grid.png                     rows = conditions; per map: label | SDM | SCDM
  <out>/<model>/                     training workdir (checkpoints, logs)
  <out>/<model>/<condition>/         sample_0/*.png and report.json (evaluate's JSON)
  <out>/proxy/                       the proxy weights (trained first unless --proxy_weights)

  python experiments/robustness.py --size sanity --out /tmp/robust   # 17.5 min, idle 2-core CPU
  python experiments/robustness.py --size gpu --out /data/robust      # one GPU
  python experiments/robustness.py --size micro --out /tmp/robust_micro  # smoke test

Corruptions at small resolution. The paper's DS maps a 256 px annotation to 64 px (factor
4); here DS uses ``data.ds_size = image_size // 4``. The paper's Edge band (2-px boundary
dilated by radius 2 at 256 px) is ~2 % of the width; at <= 64 px we use radius 0 (the
2-px 4-neighbour boundary alone, already ~6 % of a 32 px width). Random keeps p = 0.1.
Corrupted pixels become the absorbing all-zero label (``data.unlabeled_to_zero=True``):
the procedural clean maps never contain the "unlabeled" class, so neither model has seen
it as a one-hot class (the reference's ADE20K setup maps them to class 150 unless
--unlabeled_to_zero; scdm-method.md §5.2, §7). ``--unlabeled_as_class`` keeps the class.

The numbers are PROXY metrics from a network trained by this project on this dataset: they
compare the two models within this experiment and are not comparable to published FID/mIoU.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import sys
import time
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

CONDITIONS = ("clean", "ds", "edge", "random")
MODELS = {"sdm": "none", "scdm": "classwise"}  # model name -> diffusion.label_schedule

SIZES: dict[str, dict[str, Any]] = {
    # A smoke test of the whole pipeline (minutes on a CPU); the numbers mean nothing.
    "micro": dict(base="tiny", image_size=16, train_steps=4, batch_size=8, num_steps=100,
                  respacing="4", n_maps=8, grid_maps=3, sample_batch=8,
                  proxy=dict(steps=30, width=8, num_train=128, batch_size=16)),
    # Sanity run: <= 20 minutes on an idle 2-core CPU. Measured there at 400 x 12: 21.4 min
    # (training 0.9-1.0 steps/s, 455-525 s per model with compilation; sampling 130-150 s per
    # model for 4 x 32 guided 25-step samples; proxy 22 s), hence 360 x 10.
    "sanity": dict(base="demo", image_size=32, train_steps=360, batch_size=10,
                   num_steps=1000, respacing="ddim25", n_maps=32, grid_maps=4,
                   sample_batch=32,
                   proxy=dict(steps=400, width=16, num_train=1024, batch_size=32)),
    # One GPU (H100-class): a few hours; 64 px, a deeper UNet, the whole validation split.
    "gpu": dict(base="demo", image_size=64, train_steps=30000, batch_size=64,
                num_steps=1000, respacing="ddim25", n_maps=128, grid_maps=6,
                sample_batch=128,
                model=dict(model_channels=64, channel_mult=(1, 2, 3, 4), num_res_blocks=2,
                           attention_resolutions=(4, 8), num_head_channels=32),
                proxy=dict(steps=3000, width=32, num_train=4096, batch_size=64)),
}


def _load_config_module(name: str):
  path = REPO / "configs" / f"{name}.py"
  spec = importlib.util.spec_from_file_location(f"robustness_cfg_{name}", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def build_config(size: str, model: str, *, seed: int = 0):
  """The training config of one model at one size (SDM and SCDM differ only in the label
  schedule)."""
  s = SIZES[size]
  config = _load_config_module(s["base"]).get_config()
  config.data.name = "procedural"
  config.data.image_size = s["image_size"]
  config.data.num_classes = 9
  for k, v in s.get("model", {}).items():
    config.model[k] = v
  config.diffusion.num_steps = s["num_steps"]
  config.diffusion.label_schedule = MODELS[model]
  config.diffusion.psi_path = ""
  config.train.total_steps = s["train_steps"]
  config.train.batch_size = s["batch_size"]
  config.train.seed = seed
  config.train.sample_every = 0
  config.train.checkpoint_every = s["train_steps"]
  config.train.log_every = max(1, min(50, s["train_steps"]))
  config.train.keep_last = 1
  config.train.keep_every = 0
  config.train.async_checkpoint = False
  config.sample.respacing = s["respacing"]
  config.sample.num_samples_per_map = 1
  config.sample.batch_size = s["sample_batch"]
  config.sample.source = "validation"
  config.sample.max_maps = s["n_maps"]
  config.sample.checkpoint = ""
  return config


def condition_config(config, condition: str, *, unlabeled_to_zero: bool = True):
  """A copy of ``config`` whose data pipeline applies ``condition`` to the labels."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  c = ml_collections.ConfigDict(config.to_dict())
  size = int(c.data.image_size)
  c.data.noise = "none" if condition == "clean" else condition
  c.data.unlabeled_to_zero = bool(unlabeled_to_zero)
  c.data.ds_size = max(1, size // 4)
  c.data.edge_radius = 0 if size <= 64 else max(1, round(2 * size / 256))
  return c


def sample_model(config, workdir: str, out_root: str, conditions, *, unlabeled_to_zero: bool,
                 grid_maps: int) -> dict[str, Any]:
  """Samples one trained model under every condition with one compiled sampler and the
  same key per batch; returns the first ``grid_maps`` label maps and images per condition."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from scdm_jax import recipe  # pylint: disable=g-import-not-at-top
  from scdm_jax import sharding  # pylint: disable=g-import-not-at-top
  from scdm_jax import state as state_lib  # pylint: disable=g-import-not-at-top
  from scdm_jax.inference import label_batches  # pylint: disable=g-import-not-at-top
  from scdm_jax.inference import loading  # pylint: disable=g-import-not-at-top
  from scdm_jax.inference import runner  # pylint: disable=g-import-not-at-top
  from scdm_jax.inference import sampler  # pylint: disable=g-import-not-at-top
  from scdm_jax.io import images as image_io  # pylint: disable=g-import-not-at-top

  params_pure, meta, where = loading.load_weights(config, workdir)
  kind = meta["label_schedule"]["kind"]
  psi = meta["label_schedule"]["psi"]
  if kind != config.diffusion.label_schedule:
    raise ValueError(f"{where} was trained with label schedule {kind!r}, expected "
                     f"{config.diffusion.label_schedule!r}.")
  label_schedule = recipe.make_label_schedule(
      config, None if psi is None else np.asarray(psi, np.float64))
  mesh = sharding.make_mesh(config.mesh)
  graphs, abstract = state_lib.graphs_and_abstract(config)
  param_sh = sharding.state_shardings(mesh, abstract.params, int(config.mesh.fsdp_min_size))
  params = state_lib.params_from_pure(graphs, params_pure, param_sh)
  fn, _ = sampler.make_sample_fn(config, graphs, mesh, param_sh, label_schedule)
  shards = sharding.num_batch_shards(mesh)
  batch = -(-int(config.sample.batch_size) // shards) * shards
  key = jax.random.key(int(config.sample.seed))
  grid: dict[str, Any] = {}
  for cond in conditions:
    ccfg = condition_config(config, cond, unlabeled_to_zero=unlabeled_to_zero)
    out_dir = os.path.join(out_root, cond)
    labels, images = [], []
    for bi, maps in enumerate(label_batches.iter_label_batches(ccfg, batch)):
      # Padded to `batch` rows (not just to the device count): one program for all batches.
      arrays = {k: runner.pad_rows(v, batch) for k, v in maps.arrays().items()}
      dev, _ = runner.put_padded(arrays, mesh)
      n = len(maps)
      # Same key for batch bi in every condition and model: differences come from the
      # labels and the weights only.
      out = fn(params, dev, jax.random.fold_in(key, bi))
      for row, image in runner.local_rows(out, n):
        image_io.save_png(os.path.join(out_dir, "sample_0", f"{maps.names[row]}.png"),
                          image_io.to_uint8(image))
      if len(labels) < grid_maps:
        take = grid_maps - len(labels)
        labels.extend(maps.label[:take])
        images.extend(image_io.to_uint8(runner.host_rows(out, n))[:take])
    grid[cond] = (np.stack(labels), np.stack(images))
  return grid


def paired_miou_difference(seg, config, dir_a: str, dir_b: str, *, draws: int = 2000,
                           seed: int = 0) -> dict[str, Any]:
  """Proxy mIoU of model b minus model a on the same label maps, with a paired bootstrap
  over the maps (resample maps, recompute both mIoUs from the summed confusion matrices):
  the difference, and the 5th and 95th percentiles of its bootstrap distribution."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from scdm_jax.evaluation import miou  # pylint: disable=g-import-not-at-top
  from scdm_jax.evaluation import sample_sets  # pylint: disable=g-import-not-at-top
  k, size = int(config.data.num_classes), int(config.data.image_size)
  folders = [sample_sets.find_sample_sets(d)[0] for d in (dir_a, dir_b)]
  names = sample_sets.png_names(folders[0])
  _, gt = sample_sets.load_reference(config, "validation", names)
  cms = []
  for folder in folders:
    pred = seg(sample_sets.load_images(folder, names, size)[0]).argmax(-1)
    cms.append(np.stack([miou.confusion_matrix(p, g, k) for p, g in zip(pred, gt)]))
  score = lambda cm: miou.miou_from_confusion(cm)["miou"]
  rng = np.random.default_rng(seed)
  diffs = np.empty(draws)
  for d in range(draws):
    idx = rng.integers(0, len(names), len(names))
    diffs[d] = score(cms[1][idx].sum(0)) - score(cms[0][idx].sum(0))
  return {"difference": score(cms[1].sum(0)) - score(cms[0].sum(0)),
          "p05": float(np.percentile(diffs, 5)), "p95": float(np.percentile(diffs, 95)),
          "draws": draws, "num_maps": len(names)}


def write_grid(path: str, grids: dict[str, dict[str, Any]], conditions, models) -> None:
  """Rows = conditions; per label map: coloured label (unknown = magenta) | model samples."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from scdm_jax.data import label_io  # pylint: disable=g-import-not-at-top
  from scdm_jax.data import procedural  # pylint: disable=g-import-not-at-top
  from scdm_jax.io import images as image_io  # pylint: disable=g-import-not-at-top
  table = procedural.class_table()
  rows = []
  for cond in conditions:
    labels = grids[models[0]][cond][0]
    row = []
    for i in range(labels.shape[0]):
      row.append(label_io.colorize(labels[i], table, unknown_color=(255, 0, 255)))
      row.extend(grids[m][cond][1][i] for m in models)
    rows.append(row)
  image_io.save_png(path, image_io.make_grid(rows))


def write_table(out: str, results: dict[str, Any], meta: dict[str, Any]) -> str:
  """table.json (everything) and table.md (the paper-like table); returns the markdown."""
  models, conds = meta["models"], meta["conditions"]
  lines = [f"# SDM vs SCDM under label noise: PROXY metrics (size {meta['size']})", "",
           "proxy mIoU (%, higher is better; against the clean label) / proxy FD (lower is "
           "better). PROXY metrics from a segmenter trained by this project on the "
           "procedural data: not comparable to published numbers.", "",
           "| model | " + " | ".join(f"{c} mIoU / FD" for c in conds) + " |",
           "|---|" + "---|" * len(conds)]
  for m in models:
    cells = []
    for c in conds:
      r = results[m][c]
      cells.append(f"{100 * r['proxy_miou']:.1f} / {r['proxy_fd']:.3f}")
    lines.append(f"| {m.upper()} | " + " | ".join(cells) + " |")
  if "paired" in meta:
    lines.append("| SCDM - SDM mIoU [90 % CI] | " + " | ".join(
        "{:+.1f} [{:+.1f}, {:+.1f}]".format(*(100 * meta["paired"][c][x]
                                              for x in ("difference", "p05", "p95")))
        for c in conds) + " |")
  ref = meta["real_images"]
  if "paired" in meta:
    lines += ["", "The last row: a paired bootstrap over the label maps (the maps are "
              "resampled, both models scored on the same draw); an interval that contains "
              "0 means this run cannot tell the two models apart."]
  lines += ["", f"Real validation images (same {ref['num_images']} maps): proxy mIoU "
            f"{100 * ref['miou']:.1f} (the proxy's ceiling), proxy FD 0 by construction.",
            f"Budget per model: {meta['train_steps']} steps x batch {meta['batch_size']} at "
            f"{meta['image_size']} px; sampler {meta['sampler']}; N = {meta['n_maps']} maps; "
            f"seed {meta['seed']}; wall time {meta['seconds']:.0f} s "
            f"({', '.join(f'{k} {v:.0f}' for k, v in meta['phase_seconds'].items())}).", ""]
  md = "\n".join(lines)
  from scdm_jax.io import atomic  # pylint: disable=g-import-not-at-top
  from scdm_jax.evaluation import report  # pylint: disable=g-import-not-at-top
  atomic.write_text(os.path.join(out, "table.md"), md)
  payload = report._jsonable({"results": results, "meta": meta})  # pylint: disable=protected-access
  atomic.write_json(os.path.join(out, "table.json"), payload, indent=2)
  return md


def run(size: str, out: str, *, proxy_weights: str = "", seed: int = 0,
        conditions=CONDITIONS, models=tuple(MODELS), unlabeled_to_zero: bool = True
        ) -> dict[str, Any]:
  """The whole experiment; returns ``{"results": ..., "meta": ..., "markdown": ...}``."""
  # The experiment drives the modes directly, as main would (it is a script, not a mode).
  from scdm_jax.evaluation import proxy  # pylint: disable=g-import-not-at-top
  from scdm_jax.modes import evaluate as evaluate_mode  # pylint: disable=g-import-not-at-top
  from scdm_jax.modes import train as train_mode  # pylint: disable=g-import-not-at-top

  if size not in SIZES:
    raise ValueError(f"--size {size!r}: choose one of {sorted(SIZES)}.")
  bad = [c for c in conditions if c not in CONDITIONS]
  if bad:
    raise ValueError(f"Unknown condition(s) {bad}; choose from {CONDITIONS}.")
  s = SIZES[size]
  t0 = time.time()
  os.makedirs(out, exist_ok=True)
  if not proxy_weights:
    proxy_weights = os.path.join(out, "proxy", "proxy_procedural.npz")
    if not os.path.exists(proxy_weights):
      print(f"[robustness] training the proxy segmenter ({s['proxy']['steps']} steps)",
            flush=True)
      proxy.train_proxy(os.path.join(out, "proxy"), image_size=s["image_size"], seed=seed,
                        **s["proxy"])
  phases = {"proxy_s": time.time() - t0}
  seg = proxy.load_segmenter(proxy_weights)
  if seg.image_size != s["image_size"]:
    print(f"[robustness] note: proxy trained at {seg.image_size} px, images are "
          f"{s['image_size']} px (resized for the proxy).", flush=True)
  real = proxy.evaluate_on_procedural(seg, image_size=s["image_size"], num_classes=9,
                                      n=s["n_maps"])

  grids, results = {}, {}
  for m in models:
    config = build_config(size, m, seed=seed)
    workdir = os.path.join(out, m)
    print(f"[robustness] training {m.upper()} (label_schedule={MODELS[m]!r}, "
          f"{s['train_steps']} steps)", flush=True)
    t = time.time()
    train_mode.run(config, workdir)
    phases[f"train_{m}_s"] = time.time() - t
    t = time.time()
    print(f"[robustness] sampling {m.upper()} on {list(conditions)}", flush=True)
    grids[m] = sample_model(config, workdir, workdir, conditions,
                            unlabeled_to_zero=unlabeled_to_zero, grid_maps=s["grid_maps"])
    phases[f"sample_{m}_s"] = time.time() - t
    results[m] = {}
    for c in conditions:
      ecfg = condition_config(config, c, unlabeled_to_zero=unlabeled_to_zero)
      ecfg.eval.metrics = "proxy_miou,proxy_fd"
      ecfg.eval.proxy_weights = proxy_weights
      ecfg.eval.samples_dir = os.path.join(workdir, c)
      ecfg.eval.output = os.path.join(workdir, c, "report.json")
      rep = evaluate_mode.run(ecfg, workdir)
      results[m][c] = dict(rep["metrics"], report=ecfg.eval.output)
      print(f"[robustness] {m.upper():5s} {c:7s} proxy mIoU {rep['metrics']['proxy_miou']:.3f}"
            f"  proxy FD {rep['metrics']['proxy_fd']:.4f}", flush=True)
  write_grid(os.path.join(out, "grid.png"), grids, conditions, list(models))
  paired = {}
  if set(models) == set(MODELS):
    for c in conditions:
      paired[c] = paired_miou_difference(
          seg, condition_config(build_config(size, "scdm", seed=seed), "clean"),
          os.path.join(out, "sdm", c), os.path.join(out, "scdm", c), seed=seed)
  cfg0 = build_config(size, models[0], seed=seed)
  meta = {"size": size, "models": list(models), "conditions": list(conditions),
          "label_schedules": {m: MODELS[m] for m in models}, "n_maps": s["n_maps"],
          "train_steps": s["train_steps"], "batch_size": s["batch_size"],
          "image_size": s["image_size"], "seed": seed,
          "sampler": (f"{cfg0.sample.sampler} respacing={cfg0.sample.respacing} "
                      f"guidance={cfg0.sample.guidance_scale}"),
          "unlabeled_to_zero": unlabeled_to_zero,
          "ds_size": max(1, s["image_size"] // 4),
          "edge_radius": 0 if s["image_size"] <= 64 else max(1, round(2 * s["image_size"] / 256)),
          "proxy_weights": proxy_weights, "proxy_implementation": proxy.IMPLEMENTATION,
          "real_images": real, "seconds": time.time() - t0,
          **({"paired": paired} if paired else {}),
          "phase_seconds": {k: round(v, 1) for k, v in phases.items()}}
  md = write_table(out, results, meta)
  print(md, flush=True)
  return {"results": results, "meta": meta, "markdown": md}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--size", choices=sorted(SIZES), default="sanity")
  p.add_argument("--out", required=True)
  p.add_argument("--proxy_weights", default="",
                 help="existing proxy npz (default: train one into OUT/proxy/)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--conditions", default=",".join(CONDITIONS))
  p.add_argument("--models", default=",".join(MODELS))
  p.add_argument("--unlabeled_as_class", action="store_true",
                 help="corrupted pixels keep the one-hot 'unlabeled' class instead of the "
                      "absorbing all-zero label")
  a = p.parse_args(argv)
  run(a.size, a.out, proxy_weights=a.proxy_weights, seed=a.seed,
      conditions=tuple(c for c in a.conditions.split(",") if c),
      models=tuple(m for m in a.models.split(",") if m),
      unlabeled_to_zero=not a.unlabeled_as_class)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
