r"""Small-scale reproduction of SCDM's robustness claim on the procedural dataset (PROXY metrics).

Per training seed, trains three models with the same budget, network, data order and seed,
differing only in the label schedule: SDM (``diffusion.label_schedule="none"``), SCDM
(``"classwise"``, psi from the procedural class statistics) and SCDM-uniform (``"uniform"``,
the schedule ablation). Samples five arms on the same validation maps:

  sdm            SDM as published (labels given clean to every step)
  scdm           SCDM, label_mode "fresh" (a new reveal mask every step: the reference)
  scdm_uniform   the uniform-schedule model
  sdm_ld         the SDM weights sampled *with* class-wise label diffusion (label diffusion at
                 sampling time only)
  scdm_coupled   SCDM, label_mode "coupled" (one reveal order per pixel for the whole chain)

under the cells clean, DS, Edge and Random; Edge and Random (the corruptions that write
unknown pixels) in both encodings: ``class`` (the paper's: corrupted pixels become the
dataset's unlabeled class, which both models met in training because the clean maps carry
``data.procedural_unlabeled_share`` of unlabeled seams and blobs) and ``zero`` (the
reference's --unlabeled_to_zero: every unlabeled pixel becomes the absorbing all-zero label,
which only label diffusion trains on). Corruptions have the paper's strength: the same layout
rendered at 256 px is corrupted with the paper's settings (DS to 64, Edge radius 2, Random
p = 0.1) and the changed pixels are carried down (``data.noise_render_size=256``;
experiments/corruption_shares.py measures the shares). A size may restrict the three ablation arms to
some cells (``ablation_cells``: the cpu size runs them on clean and the paper-encoding Edge and
Random only, to fit its time).

Scores, with the PROXY segmenter / features (`scdm_jax.evaluation.proxy`) against the clean
labels (unlabeled pixels ignored) and the real validation images: proxy mIoU per seed, per-map
mIoU; SCDM - SDM (and every arm - SDM) paired per seed, their mean and spread over seeds, a
t-test over the seeds' differences, and a paired t-test and sign test over the maps (each
map's difference averaged over the seeds); proxy FD only where N exceeds the feature
dimension (else null, with the reason). Writes

  <out>/table.md, <out>/table.json   the tables and every number behind them
  <out>/grid.png                     rows = cells; per map: label | each arm (seed 0)
  <out>/seed<k>/<model>/             training workdirs
  <out>/seed<k>/<arm>/<cell>/sample_0/*.png
  <out>/proxy/                       the proxy weights (trained first unless --proxy_weights)

  python experiments/robustness.py --size cpu --out /tmp/robust     # 124 min measured (shared 2-core CPU)
  python experiments/robustness.py --size gpu --out /data/robust    # <= 8 min, one H100
  python experiments/robustness.py --size micro --out /tmp/robust_micro  # smoke test
  python experiments/robustness.py --size cpu --estimate            # timing run + estimate
  python experiments/robustness.py --size cpu --out /tmp/robust --rescore  # re-score saved samples

The numbers are PROXY metrics from a network trained by this project on this dataset: they
compare the models within this experiment and are not comparable to published FID/mIoU.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import pathlib
import sys
import time
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

CONDITIONS = ("clean", "ds", "edge", "random")
ENCODINGS = ("class", "zero")  # corrupted pixels -> unlabeled class (paper) | all-zero
MODELS = {"sdm": "none", "scdm": "classwise", "scdm_uniform": "uniform"}  # -> label_schedule
# arm -> (trained model, label schedule at sampling, sample.label_mode)
ARMS = {"sdm": ("sdm", "none", "fresh"), "scdm": ("scdm", "classwise", "fresh"),
        "scdm_uniform": ("scdm_uniform", "uniform", "fresh"),
        "sdm_ld": ("sdm", "classwise", "fresh"), "scdm_coupled": ("scdm", "classwise", "coupled")}
PAPER_NOISE = dict(ds_size=64, edge_radius=2, random_rate=0.1, noise_render_size=256)
# ADE20K's share of unannotated pixels, ASSUMED: the scene-parsing benchmark's 150 classes
# cover about 92 % of the pixels (Zhou et al. 2017, from memory; not re-measured here).
ADE20K_UNLABELED_SHARE = 0.08

SIZES: dict[str, dict[str, Any]] = {
    # A smoke test of the whole pipeline; the numbers mean nothing.
    "micro": dict(base="tiny", image_size=16, train_steps=4, batch_size=8, num_steps=100,
                  respacing="4", n_maps=8, grid_maps=3, sample_batch=8, seeds=2,
                  proxy=dict(steps=30, width=8, num_train=128, batch_size=16)),
    # Measured 124 min on the shared 2-core CPU (about 80 idle; docs/reproduction.md): sampling 3 seeds
    # x 128 maps x (2 x 6 + 3 x 3) cells dominates, so 16 px and the ablation arms on three
    # cells (at 32 px the sampling alone would take ~3 h).
    "cpu": dict(base="demo", image_size=16, train_steps=240, batch_size=8,
                num_steps=1000, respacing="ddim25", n_maps=128, grid_maps=4,
                sample_batch=128, seeds=3,
                ablation_cells=("clean", "edge-class", "random-class"),
                proxy=dict(steps=400, width=16, num_train=1024, batch_size=32)),
    # <= 8 min on one H100-class GPU (estimated, not run): 32 px, demo UNet, longer training.
    "gpu": dict(base="demo", image_size=32, train_steps=1000, batch_size=64,
                num_steps=1000, respacing="ddim25", n_maps=256, grid_maps=6,
                sample_batch=256, seeds=3,
                proxy=dict(steps=1500, width=16, num_train=4096, batch_size=64)),
}


def _load_config_module(name: str):
  path = REPO / "configs" / f"{name}.py"
  spec = importlib.util.spec_from_file_location(f"robustness_cfg_{name}", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def build_config(size: str, model: str, *, seed: int = 0,
                 unlabeled_share: float = ADE20K_UNLABELED_SHARE):
  """The training config of one model at one size (the models differ only in the label
  schedule)."""
  s = SIZES[size]
  config = _load_config_module(s["base"]).get_config()
  config.data.name = "procedural"
  config.data.image_size = s["image_size"]
  config.data.num_classes = 9
  config.data.procedural_unlabeled_share = float(unlabeled_share)
  for k, v in s.get("model", {}).items():
    config.model[k] = v
  config.diffusion.num_steps = s["num_steps"]
  config.diffusion.label_schedule = MODELS[model]
  config.diffusion.psi_path = ""
  config.diffusion.force_last_linear = True  # unlabeled -> linear, as the ADE20K psi file
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


def condition_config(config, condition: str, *, unlabeled_to_zero: bool = False):
  """A copy of ``config`` whose data pipeline applies ``condition`` at the paper's strength;
  ``unlabeled_to_zero`` is the encoding (False: the paper's unlabeled class)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  c = ml_collections.ConfigDict(config.to_dict())
  c.data.noise = "none" if condition == "clean" else condition
  c.data.unlabeled_to_zero = bool(unlabeled_to_zero)
  for k, v in PAPER_NOISE.items():
    c.data[k] = v
  return c


def cells(conditions=CONDITIONS, encodings=ENCODINGS) -> list[tuple[str, str, str]]:
  """(cell name, condition, encoding). Clean and DS write no unknown pixels: one cell each,
  under the first encoding; Edge and Random once per encoding."""
  out = []
  for cond in conditions:
    for enc in (encodings if cond in ("edge", "random") else encodings[:1]):
      out.append((cond if cond in ("clean", "ds") else f"{cond}-{enc}", cond, enc))
  return out


def sample_arm(config, workdir: str, out_root: str, cell_list, *, schedule: str,
               label_mode: str, psi) -> dict[str, Any]:
  """Samples one trained model as one arm under every cell with one compiled sampler and
  the same key per batch; returns {cell: (labels (n, S, S), images (n, S, S, 3) uint8)}."""
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
  if meta["label_schedule"]["kind"] != config.diffusion.label_schedule:
    raise ValueError(f"{where} was trained with label schedule "
                     f"{meta['label_schedule']['kind']!r}, expected "
                     f"{config.diffusion.label_schedule!r}.")
  label_schedule = recipe.make_label_schedule(
      config, None if psi is None else np.asarray(psi, np.float64), kind=schedule)
  import ml_collections  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(config.to_dict())
  config.sample.label_mode = label_mode
  mesh = sharding.make_mesh(config.mesh)
  graphs, abstract = state_lib.graphs_and_abstract(config)
  param_sh = sharding.state_shardings(mesh, abstract.params, int(config.mesh.fsdp_min_size))
  params = state_lib.params_from_pure(graphs, params_pure, param_sh)
  fn, _ = sampler.make_sample_fn(config, graphs, mesh, param_sh, label_schedule)
  shards = sharding.num_batch_shards(mesh)
  batch = -(-int(config.sample.batch_size) // shards) * shards
  key = jax.random.key(int(config.sample.seed))
  got: dict[str, Any] = {}
  for name, cond, enc in cell_list:
    ccfg = condition_config(config, cond, unlabeled_to_zero=(enc == "zero"))
    labels, images = [], []
    for bi, maps in enumerate(label_batches.iter_label_batches(ccfg, batch)):
      # Padded to `batch` rows: one program for all batches.
      arrays = {k: runner.pad_rows(v, batch) for k, v in maps.arrays().items()}
      dev, _ = runner.put_padded(arrays, mesh)
      # Same key for batch bi in every cell, arm and seed's model: differences come from
      # the labels, the weights and the arm's sampling settings only.
      out = image_io.to_uint8(runner.host_rows(fn(params, dev, jax.random.fold_in(key, bi)),
                                               len(maps)))
      for row in range(len(maps)):
        image_io.save_png(os.path.join(out_root, name, "sample_0", f"{maps.names[row]}.png"),
                          out[row])
      labels.append(np.asarray(maps.label))
      images.append(out)
    got[name] = (np.concatenate(labels), np.concatenate(images))
  return got


def load_arm(config, out_root: str, cell_list) -> dict[str, Any]:
  """`sample_arm`'s result read back from its PNGs (lossless), for --rescore."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from scdm_jax.inference import label_batches  # pylint: disable=g-import-not-at-top
  got: dict[str, Any] = {}
  for name, cond, enc in cell_list:
    ccfg = condition_config(config, cond, unlabeled_to_zero=(enc == "zero"))
    labels, images = [], []
    for maps in label_batches.iter_label_batches(ccfg, int(config.sample.batch_size)):
      labels.append(np.asarray(maps.label))
      images.append(np.stack([np.asarray(Image.open(
          os.path.join(out_root, name, "sample_0", f"{n}.png")).convert("RGB"))
                              for n in maps.names]))
    got[name] = (np.concatenate(labels), np.concatenate(images))
  return got


def score_images(seg, images, gt, real_features, num_classes: int, ignore: int
                 ) -> dict[str, Any]:
  """Proxy mIoU (summed confusion), per-map mIoU, and proxy FD where N > feature dim."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from scdm_jax.evaluation import fid  # pylint: disable=g-import-not-at-top
  from scdm_jax.evaluation import miou  # pylint: disable=g-import-not-at-top
  x = images.astype(np.float32) / 127.5 - 1.0
  pred = seg(x).argmax(-1)
  cms = np.stack([miou.confusion_matrix(p, g, num_classes, ignore_index=ignore)
                  for p, g in zip(pred, gt)])
  per_map = [float(np.nan_to_num(miou.miou_from_confusion(c)["miou"])) for c in cms]
  out = {"proxy_miou": float(miou.miou_from_confusion(cms.sum(0))["miou"]),
         "per_map_miou": per_map}
  n, dim = len(images), real_features.shape[1]
  if n > dim:
    f = seg.features(x)
    out["proxy_fd"] = float(fid.frechet_distance(
        f.mean(0), np.cov(f, rowvar=False), real_features.mean(0),
        np.cov(real_features, rowvar=False)))
  else:
    out["proxy_fd"] = None
    out["proxy_fd_reason"] = (f"N = {n} maps does not exceed the proxy's feature dimension "
                              f"{dim} (singular covariances); use more maps")
  return out


def paired_stats(per_seed_a, per_seed_b, maps_a, maps_b) -> dict[str, Any]:
  """Arm b - arm a. per_seed_*: (seeds,) dataset-level mIoU; maps_*: (seeds, n) per-map
  mIoU. Returns the per-seed differences, their mean and std (ddof 1), a one-sample t-test
  over seeds, and over the maps (each map's difference averaged over seeds) a paired
  t-test and an exact two-sided sign test."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from scipy import stats  # pylint: disable=g-import-not-at-top
  d_seed = np.asarray(per_seed_b, np.float64) - np.asarray(per_seed_a, np.float64)
  d_map = (np.asarray(maps_b, np.float64) - np.asarray(maps_a, np.float64)).mean(0)
  out = {"per_seed": d_seed.tolist(), "mean": float(d_seed.mean()),
         "std": float(d_seed.std(ddof=1)) if d_seed.size > 1 else None,
         "seeds": int(d_seed.size), "maps": int(d_map.size),
         "map_mean": float(d_map.mean())}
  out["seed_t_p"] = (float(stats.ttest_1samp(d_seed, 0.0).pvalue)
                     if d_seed.size > 1 and d_seed.std() > 0 else None)
  out["map_t_p"] = (float(stats.ttest_1samp(d_map, 0.0).pvalue)
                    if d_map.size > 1 and d_map.std() > 0 else None)
  pos, neg = int((d_map > 0).sum()), int((d_map < 0).sum())
  out["sign"] = {"positive": pos, "negative": neg, "ties": int(d_map.size - pos - neg),
                 "p": (float(stats.binomtest(pos, pos + neg, 0.5).pvalue)
                       if pos + neg else None)}
  return out


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
      # An ablation arm not run on this cell: a blank tile.
      row.extend(grids[m][cond][1][i] if cond in grids[m]
                 else np.full_like(grids[models[0]][cond][1][i], 255) for m in models)
    rows.append(row)
  image_io.save_png(path, image_io.make_grid(rows))


def _fmt(x, scale=100.0, digits=1, signed=False):
  if x is None:
    return "n/a"
  return f"{scale * x:{'+' if signed else ''}.{digits}f}"


def write_table(out: str, results: dict[str, Any], meta: dict[str, Any]) -> str:
  """table.json (everything) and table.md; returns the markdown."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  arms, names = meta["arms"], [c[0] for c in meta["cells"]]
  lines = [f"# SDM vs SCDM under label noise: PROXY metrics (size {meta['size']}, "
           f"{meta['seeds']} seeds, N = {meta['n_maps']} maps)", "",
           "proxy mIoU (%, against the clean label, unlabeled pixels ignored; mean over seeds "
           "+- std) / proxy FD (mean over seeds; n/a where N <= feature dim). PROXY metrics "
           "from a segmenter trained by this project on the procedural data: not comparable "
           "to published numbers.", "",
           "| arm | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
  for a in arms:
    row = []
    for c in names:
      if not results[a][c]:  # an ablation arm not run on this cell
        row.append("-")
        continue
      m = np.array([r["proxy_miou"] for r in results[a][c]])
      fds = [r["proxy_fd"] for r in results[a][c]]
      fd = "n/a" if any(f is None for f in fds) else f"{np.mean(fds):.3f}"
      sd = f" +- {100 * m.std(ddof=1):.1f}" if m.size > 1 else ""
      row.append(f"{100 * m.mean():.1f}{sd} / {fd}")
    lines.append(f"| {a} | " + " | ".join(row) + " |")
  lines += ["", "Paired differences in proxy mIoU (points), arm - SDM: mean over seeds +- std "
            "[p: t-test over seeds; t-test over maps; sign test over maps].", "",
            "| arm - sdm | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
  for a in arms:
    if a == "sdm":
      continue
    row = []
    for c in names:
      d = meta["paired"][a].get(c)
      if d is None:
        row.append("-")
        continue
      sd = "" if d["std"] is None else f" +- {100 * d['std']:.1f}"
      row.append(f"{_fmt(d['mean'], signed=True)}{sd} "
                 f"[{_fmt(d['seed_t_p'], 1, 3)}; {_fmt(d['map_t_p'], 1, 3)}; "
                 f"{_fmt(d['sign']['p'], 1, 3)}]")
    lines.append(f"| {a} | " + " | ".join(row) + " |")
  ref = meta["real_images"]
  lines += ["", f"Real validation images (same {ref['num_images']} maps): proxy mIoU "
            f"{100 * ref['miou']:.1f} (the proxy's ceiling).",
            "Cells: clean, ds; edge/random -class (corrupted pixels = the unlabeled class, "
            "the paper's) and -zero (all-zero absorbing). Clean maps carry "
            f"{100 * meta['unlabeled_share']:.0f} % unlabeled pixels; corruptions at the "
            f"paper's strength via a {meta['noise']['noise_render_size']} px render.",
            f"Budget per model: {meta['train_steps']} steps x batch {meta['batch_size']} at "
            f"{meta['image_size']} px; sampler {meta['sampler']}; seeds {meta['seed_list']}; "
            f"wall time {meta['seconds']:.0f} s.", ""]
  md = "\n".join(lines)
  from scdm_jax.io import atomic  # pylint: disable=g-import-not-at-top
  from scdm_jax.evaluation import report  # pylint: disable=g-import-not-at-top
  atomic.write_text(os.path.join(out, "table.md"), md)
  payload = report._jsonable({"results": results, "meta": meta})  # pylint: disable=protected-access
  atomic.write_json(os.path.join(out, "table.json"), payload, indent=2)
  return md


def run(size: str, out: str, *, proxy_weights: str = "", seeds: int | None = None,
        first_seed: int = 0, num_maps: int | None = None, conditions=CONDITIONS,
        encodings=ENCODINGS, arms=tuple(ARMS),
        unlabeled_share: float = ADE20K_UNLABELED_SHARE,
        rescore: bool = False) -> dict[str, Any]:
  """The whole experiment; returns ``{"results": ..., "meta": ..., "markdown": ...}``."""
  # The experiment drives the modes directly, as main would (it is a script, not a mode).
  import numpy as np  # pylint: disable=g-import-not-at-top
  from scdm_jax import recipe  # pylint: disable=g-import-not-at-top
  from scdm_jax.data import procedural  # pylint: disable=g-import-not-at-top
  from scdm_jax.evaluation import proxy  # pylint: disable=g-import-not-at-top
  from scdm_jax.modes import train as train_mode  # pylint: disable=g-import-not-at-top

  if size not in SIZES:
    raise ValueError(f"--size {size!r}: choose one of {sorted(SIZES)}.")
  for what, got, known in (("condition", conditions, CONDITIONS), ("arm", arms, ARMS),
                           ("encoding", encodings, ENCODINGS)):
    bad = [c for c in got if c not in known]
    if bad or not got:
      raise ValueError(f"--{what}s {','.join(got)}: choose from {','.join(known)}.")
  if "sdm" not in arms:
    raise ValueError("--arms must include sdm: every difference is taken against it.")
  s = dict(SIZES[size])
  seeds = int(seeds or s["seeds"])
  s["n_maps"] = int(num_maps or s["n_maps"])
  seed_list = list(range(first_seed, first_seed + seeds))
  cell_list = cells(conditions, encodings)
  t0 = time.time()
  os.makedirs(out, exist_ok=True)
  if not proxy_weights:
    proxy_weights = os.path.join(out, "proxy", "proxy_procedural.npz")
    if not os.path.exists(proxy_weights):
      print(f"[robustness] training the proxy segmenter ({s['proxy']['steps']} steps)",
            flush=True)
      proxy.train_proxy(os.path.join(out, "proxy"), image_size=s["image_size"],
                        seed=first_seed, **s["proxy"])
  seg = proxy.load_segmenter(proxy_weights)
  real = proxy.evaluate_on_procedural(seg, image_size=s["image_size"], num_classes=9,
                                      n=s["n_maps"])
  real_images, _ = proxy.procedural_arrays(s["n_maps"], image_size=s["image_size"],
                                           split="validation")
  real_features = seg.features(real_images)
  # Clean labels with their unlabeled pixels, which the scores ignore.
  gt = np.stack([procedural.generate(i, size=s["image_size"], split="validation",
                                     unlabeled_share=unlabeled_share)["label"]
                 for i in range(s["n_maps"])]).astype(np.int32)
  phases = {"proxy_s": time.time() - t0}

  needed = [m for m in MODELS if any(ARMS[a][0] == m for a in arms)]
  psi = recipe.resolve_psi(build_config(size, "scdm", unlabeled_share=unlabeled_share))
  results: dict[str, Any] = {a: {c[0]: [] for c in cell_list} for a in arms}
  grids: dict[str, Any] = {}
  for seed in seed_list:
    for m in needed:
      config = build_config(size, m, seed=seed, unlabeled_share=unlabeled_share)
      config.sample.max_maps = s["n_maps"]
      workdir = os.path.join(out, f"seed{seed}", m)
      print(f"[robustness] seed {seed}: training {m} (label_schedule={MODELS[m]!r}, "
            f"{s['train_steps']} steps)", flush=True)
      t = time.time()
      if not rescore:
        train_mode.run(config, workdir)
      phases[f"train_s{seed}_{m}"] = time.time() - t
      for a in arms:
        model, schedule, mode = ARMS[a]
        if model != m:
          continue
        t = time.time()
        print(f"[robustness] seed {seed}: sampling {a} on {[c[0] for c in cell_list]}",
              flush=True)
        arm_cells = [c for c in cell_list if a in ("sdm", "scdm")
                     or c[0] in s.get("ablation_cells", [c[0]])]
        if rescore:  # the samples of an earlier run, read back
          got = load_arm(config, os.path.join(out, f"seed{seed}", a), arm_cells)
        else:
          got = sample_arm(config, workdir, os.path.join(out, f"seed{seed}", a), arm_cells,
                           schedule=schedule, label_mode=mode,
                           psi=psi if schedule == "classwise" else None)
        phases[f"sample_s{seed}_{a}"] = time.time() - t
        if seed == seed_list[0]:
          grids[a] = {c: (v[0][:s["grid_maps"]], v[1][:s["grid_maps"]])
                      for c, v in got.items()}
        for c, (_, images) in got.items():
          r = score_images(seg, images, gt, real_features, 9, procedural.UNLABELED)
          results[a][c].append(dict(r, seed=seed))
          print(f"[robustness] seed {seed} {a:13s} {c:13s} proxy mIoU "
                f"{r['proxy_miou']:.3f}  FD {r['proxy_fd']}", flush=True)
  names = [c[0] for c in cell_list]
  write_grid(os.path.join(out, "grid.png"), grids, names, list(arms))
  paired = {a: {c: paired_stats([r["proxy_miou"] for r in results["sdm"][c]],
                                [r["proxy_miou"] for r in results[a][c]],
                                [r["per_map_miou"] for r in results["sdm"][c]],
                                [r["per_map_miou"] for r in results[a][c]])
                for c in names if results[a][c]} for a in arms if a != "sdm"}
  cfg0 = build_config(size, "sdm")
  meta = {"size": size, "arms": list(arms), "arm_settings": {a: ARMS[a] for a in arms},
          "cells": cell_list, "seeds": seeds, "seed_list": seed_list,
          "n_maps": s["n_maps"], "train_steps": s["train_steps"],
          "batch_size": s["batch_size"], "image_size": s["image_size"],
          "unlabeled_share": unlabeled_share, "noise": PAPER_NOISE,
          "sampler": (f"{cfg0.sample.sampler} respacing={cfg0.sample.respacing} "
                      f"guidance={cfg0.sample.guidance_scale} "
                      f"dynamic_threshold={cfg0.sample.dynamic_threshold} "
                      f"extrapolation={cfg0.sample.extrapolation}"),
          "proxy_weights": proxy_weights, "proxy_implementation": proxy.IMPLEMENTATION,
          "proxy_feature_dim": int(real_features.shape[1]),
          "real_images": real, "paired": paired, "seconds": time.time() - t0,
          "phase_seconds": {k: round(v, 1) for k, v in phases.items()}}
  md = write_table(out, results, meta)
  print(md, flush=True)
  return {"results": results, "meta": meta, "markdown": md}


def estimate(size: str, out: str, *, probe_steps: tuple[int, int] = (2, 8)) -> dict:
  """Times the training step and one sampler batch of `size` and extrapolates the run."""
  from scdm_jax import recipe  # pylint: disable=g-import-not-at-top
  from scdm_jax.modes import train as train_mode  # pylint: disable=g-import-not-at-top
  s = SIZES[size]
  walls = []
  for k in probe_steps:  # two lengths: the difference is the per-step time, without compile
    config = build_config(size, "scdm")
    config.train.total_steps = k
    config.train.checkpoint_every = k
    t = time.time()
    train_mode.run(config, os.path.join(out, f"probe_{k}"))
    walls.append(time.time() - t)
  step_s = (walls[1] - walls[0]) / (probe_steps[1] - probe_steps[0])
  if step_s <= 0:  # the longer run was faster: the load changed under the probe
    raise ValueError(f"timing probe unusable: {probe_steps[0]} steps took {walls[0]:.0f} s "
                     f"and {probe_steps[1]} steps {walls[1]:.0f} s (machine load changed); "
                     "rerun --estimate on a quieter machine")
  fixed_s = walls[0] - probe_steps[0] * step_s
  config = build_config(size, "scdm")
  config.train.total_steps = probe_steps[1]
  config.sample.max_maps = s["sample_batch"]
  psi = recipe.resolve_psi(config)
  workdir = os.path.join(out, f"probe_{probe_steps[1]}")
  one = [("clean", "clean", "class")]
  t = time.time()
  sample_arm(config, workdir, os.path.join(out, "s1"), one, schedule="classwise",
             label_mode="fresh", psi=psi)
  first = time.time() - t
  t = time.time()
  sample_arm(config, workdir, os.path.join(out, "s2"), one * 2, schedule="classwise",
             label_mode="fresh", psi=psi)
  batch_s = (time.time() - t) - first
  batches = math.ceil(s["n_maps"] / s["sample_batch"])
  n_all = len(cells())
  n_abl = len(s.get("ablation_cells", [c[0] for c in cells()]))
  arm_cells = [n_all if a in ("sdm", "scdm") else n_abl for a in ARMS]
  train_total = s["seeds"] * len(MODELS) * (fixed_s + s["train_steps"] * step_s)
  sample_total = s["seeds"] * sum(first + (n * batches - 1) * batch_s for n in arm_cells)
  return {"size": size, "walls_s": walls, "train_step_s": step_s, "train_fixed_s": fixed_s,
          "sample_first_batch_s": first, "sample_batch_s": batch_s,
          "estimated_train_s": train_total, "estimated_sample_s": sample_total,
          "estimated_total_min": (train_total + sample_total) / 60.0,
          "note": "proxy training and scoring not included; shared CPU: see the load"}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--size", choices=sorted(SIZES), default="cpu")
  p.add_argument("--out", required=True)
  p.add_argument("--proxy_weights", default="",
                 help="existing proxy npz (default: train one into OUT/proxy/)")
  p.add_argument("--seeds", type=int, default=0, help="training seeds (0 = the size's)")
  p.add_argument("--first_seed", type=int, default=0)
  p.add_argument("--num_maps", type=int, default=0, help="maps per cell (0 = the size's)")
  p.add_argument("--conditions", default=",".join(CONDITIONS))
  p.add_argument("--arms", default=",".join(ARMS))
  p.add_argument("--encodings", default=",".join(ENCODINGS),
                 help="class: corrupted pixels -> the unlabeled class (the paper); zero: "
                      "the all-zero absorbing label (the first is the one of clean and ds)")
  p.add_argument("--unlabeled_as_class", action="store_true",
                 help="only the paper's encoding (same as --encodings class)")
  p.add_argument("--unlabeled_share", type=float, default=ADE20K_UNLABELED_SHARE)
  p.add_argument("--estimate", action="store_true",
                 help="time the training step and the sampler and print the estimate")
  p.add_argument("--rescore", action="store_true",
                 help="no training or sampling: score the samples an earlier run of the same "
                      "size left under --out (and write the table and grid)")
  a = p.parse_args(argv)
  split = lambda x: tuple(v for v in x.split(",") if v)
  if a.estimate:
    import json  # pylint: disable=g-import-not-at-top
    print(json.dumps(estimate(a.size, a.out), indent=2))
    return 0
  try:
    run(a.size, a.out, proxy_weights=a.proxy_weights, seeds=a.seeds or None,
        first_seed=a.first_seed, num_maps=a.num_maps or None,
        conditions=split(a.conditions), arms=split(a.arms),
        encodings=("class",) if a.unlabeled_as_class else split(a.encodings),
        unlabeled_share=a.unlabeled_share, rescore=a.rescore)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
