r"""`--mode evaluate`: metrics of generated PNGs against a dataset split, as one JSON report.

`evaluate(config, workdir)`:

* **generated images**: ``config.eval.samples_dir`` (default ``config.sample.output_dir``,
  else ``<workdir>/samples``), the layout `--mode sample` writes:
  ``sample_<j>/<name>.png`` for the j-th sample set (a folder holding PNGs directly counts as
  one set). Set 0 is used for FID/KID/mIoU/proxies; all sets for LPIPS diversity (the
  maps present in every set). Images whose size differs from ``data.image_size`` are resized
  with Pillow BICUBIC (recorded in ``resize_mode``).
* **reference**: the split ``config.eval.split`` (default ``data.eval_split``) read by the
  data pipeline *without label noise* (``data.noise`` and ``data.label_dir`` are cleared, so
  mIoU is always against the clean label, as SCDM measures it), matched to the generated
  images by file stem. Generated images without a reference of that name are refused.
* **metrics** (``config.eval.metrics``: a comma list, or "auto" = every metric whose weights
  are configured):
  - ``fid``, ``kid``: TF-FID Inception-v3 pool3 features from ``eval.inception_weights``;
    FID reference statistics from ``eval.fid_stats`` if that npz exists (written there after
    computing them if it does not); KID from the matched reference images.
  - ``lpips``: mean pairwise AlexNet-LPIPS over the sample sets (``eval.lpips_weights``,
    ``eval.lpips_variant``); needs >= 2 sets.
  - ``miou``: ``eval.segmenter`` (a name registered with `miou.register_segmenter`) with
    ``eval.segmenter_weights``, against the clean label; the dataset's unlabeled class is
    ignored.
  - ``proxy_miou``, ``proxy_fd``: this project's PROXY segmenter / feature network
    (``eval.proxy_weights``; `scdm_jax.evaluation.proxy`). Never comparable to published
    numbers; the report says so.
* **report**: ``config.eval.output`` (default ``<workdir>/eval/report.json``) via
  `report.write_report`: metrics, implementation per metric, sha256 of every weights file,
  resize mode, N, the sampling seed, the label condition the samples were made from
  (``data.noise``), and per-metric details.

Missing or corrupt weights raise ``FileNotFoundError`` / ``ValueError`` before any image is
read; a missing sample folder raises ``FileNotFoundError`` naming it.
"""

from __future__ import annotations

import io
import os
import re
from typing import Any

from absl import logging
import ml_collections
import numpy as np

from scdm_jax import fileio

METRICS = ("fid", "kid", "lpips", "miou", "proxy_miou", "proxy_fd")

# Defaults of config.eval (also the documentation of each field).
EVAL_DEFAULTS: dict[str, Any] = {
    "metrics": "auto",  # comma list of METRICS, or "auto" (each metric whose weights are set)
    "samples_dir": "",  # "" = config.sample.output_dir, else <workdir>/samples
    "split": "",  # reference split ("" = config.data.eval_split)
    "max_images": 0,  # 0 = all generated images of set 0
    "batch_size": 50,
    "inception_weights": "",  # npz from scdm_jax.evaluation.convert_inception
    "fid_stats": "",  # optional cached reference stats npz (read if present, else written)
    "kid_subsets": 100,
    "kid_subset_size": 1000,
    "lpips_weights": "",  # npz from scdm_jax.evaluation.convert_lpips
    "lpips_variant": "lpips",  # lpips | stargan_v2
    "segmenter": "",  # registered segmenter name (scdm_jax.evaluation.miou)
    "segmenter_weights": "",
    "proxy_weights": "",  # npz from `python -m scdm_jax.evaluation.proxy`
    "output": "",  # "" = <workdir>/eval/report.json
}

_SET_RE = re.compile(r"^sample_(\d+)$")


def eval_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """``config.eval`` merged over `EVAL_DEFAULTS` (a config without an eval section works)."""
  ec = config.get("eval") if hasattr(config, "get") else None
  out = dict(EVAL_DEFAULTS)
  if ec is not None:
    for k in ec.keys():
      if k not in EVAL_DEFAULTS:
        raise ValueError(f"Unknown config.eval field {k!r}; known: {sorted(EVAL_DEFAULTS)}.")
      out[k] = ec[k]
  return out


def _selected_metrics(es: dict[str, Any]) -> list[str]:
  spec = str(es["metrics"]).strip()
  if spec == "auto":
    chosen = []
    if es["inception_weights"]:
      chosen += ["fid", "kid"]
    if es["lpips_weights"]:
      chosen.append("lpips")
    if es["segmenter"] or es["segmenter_weights"]:
      chosen.append("miou")
    if es["proxy_weights"]:
      chosen += ["proxy_miou", "proxy_fd"]
    if not chosen:
      raise ValueError(
          "config.eval.metrics='auto' but no weights are configured: set "
          "config.eval.inception_weights (FID/KID), lpips_weights, segmenter + "
          "segmenter_weights (mIoU) or proxy_weights (proxy mIoU/FD; train them with "
          "`python -m scdm_jax.evaluation.proxy --out DIR`).")
    return chosen
  chosen = [m.strip() for m in spec.split(",") if m.strip()]
  bad = [m for m in chosen if m not in METRICS]
  if bad or not chosen:
    raise ValueError(f"config.eval.metrics={spec!r}: unknown metric(s) {bad}; choose from "
                     f"{list(METRICS)} or 'auto'.")
  need = {"fid": "inception_weights", "kid": "inception_weights", "lpips": "lpips_weights",
          "miou": "segmenter_weights", "proxy_miou": "proxy_weights",
          "proxy_fd": "proxy_weights"}
  for m in chosen:
    if not es[need[m]]:
      raise ValueError(f"config.eval.metrics asks for {m!r} but config.eval.{need[m]} is "
                       "empty.")
  if "miou" in chosen and not es["segmenter"]:
    raise ValueError("config.eval.metrics asks for 'miou' but config.eval.segmenter (a "
                     "registered segmenter name) is empty.")
  return chosen


def png_names(folder: str) -> list[str]:
  """The stems of the PNG files in `folder` (a sample set), sorted."""
  return sorted(os.path.splitext(f)[0] for f in fileio.listdir(folder)
                if f.lower().endswith(".png"))


def find_sample_sets(samples_dir: str) -> list[str]:
  """The sample-set folders (``sample_0``, ``sample_1``, ... in order), or the folder itself."""
  if not fileio.isdir(samples_dir):
    raise FileNotFoundError(
        f"Sample folder not found: {samples_dir}. Write samples with --mode sample (they go "
        "to config.sample.output_dir or <workdir>/samples) or set config.eval.samples_dir.")
  sets = sorted(((int(m.group(1)), d) for d in fileio.listdir(samples_dir)
                 if (m := _SET_RE.match(d)) and fileio.isdir(os.path.join(samples_dir, d))))
  if sets:
    if sets[0][0] != 0:
      raise FileNotFoundError(f"{samples_dir} has sample sets {[d for _, d in sets]} but no "
                              "sample_0/.")
    folders = [os.path.join(samples_dir, d) for _, d in sets]
  else:
    folders = [samples_dir]
  if not png_names(folders[0]):
    raise FileNotFoundError(f"No .png files in {folders[0]} (expected generated images, e.g. "
                            "from --mode sample).")
  return folders


def load_images(folder: str, names: list[str], size: int) -> tuple[np.ndarray, bool]:
  """(N, size, size, 3) float32 in [-1, 1] from ``folder/<name>.png``; second value: whether
  any image had to be resized."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  out = np.empty((len(names), size, size, 3), np.float32)
  resized = False
  for i, name in enumerate(names):
    path = os.path.join(folder, name + ".png")
    try:
      with Image.open(io.BytesIO(fileio.read_bytes(path))) as im:
        im = im.convert("RGB")
        if im.size != (size, size):
          im = im.resize((size, size), Image.BICUBIC)
          resized = True
        out[i] = np.asarray(im, np.float32) / 127.5 - 1.0
    except FileNotFoundError:
      raise
    except Exception as e:  # Truncated or non-image file.
      raise ValueError(f"Cannot read generated image {path} ({type(e).__name__}: {e}).") from e
  return out, resized


def load_reference(config: ml_collections.ConfigDict, split: str, names: list[str],
                   ignore_index: int = 255) -> tuple[np.ndarray, np.ndarray]:
  """Clean reference images (N, S, S, 3) and label ids (N, S, S) for ``names``, in order.

  Label noise is switched off (mIoU is against the clean label); absorbing all-zero pixels
  and the dataset's unlabeled class become ``ignore_index``.
  """
  from scdm_jax.data import datasets  # pylint: disable=g-import-not-at-top
  data = ml_collections.ConfigDict(config.data.to_dict())
  data.noise = "none"
  if "label_dir" in data:
    data.label_dir = ""
  unl = None
  try:
    unl = datasets.class_table(data).unlabeled_class
  except (ValueError, FileNotFoundError, KeyError):
    pass
  want = set(names)
  found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
  it = datasets.create_dataset(data, split, batch_size=32, train=False, seed=0,
                               with_names=True, label_ids=True)
  for batch in it:
    for j, raw in enumerate(batch["name"]):
      name = raw.decode() if isinstance(raw, bytes) else str(raw)
      if name in want:
        ids = batch["label"][j].astype(np.int32)
        ids[ids < 0] = ignore_index
        if unl is not None:
          ids[ids == unl] = ignore_index
        found[name] = (batch["image"][j], ids)
    if len(found) == len(want):
      break
  missing = [n for n in names if n not in found]
  if missing:
    raise ValueError(
        f"{len(missing)} generated image(s) have no reference of the same name in split "
        f"{split!r} of {config.data.name!r} (first: {missing[:3]}). Sample from that split "
        "(config.sample.source) or set config.eval.split.")
  return (np.stack([found[n][0] for n in names]).astype(np.float32),
          np.stack([found[n][1] for n in names]))


def evaluate(config: ml_collections.ConfigDict, workdir: str | None) -> dict[str, Any]:
  """`--mode evaluate`: see the module docstring. Returns the report dict it wrote."""
  from scdm_jax.evaluation import report  # pylint: disable=g-import-not-at-top
  es = eval_settings(config)
  chosen = _selected_metrics(es)

  # Weights first: a wrong file must fail before minutes of image reading.
  weights: dict[str, str] = {}
  nets: dict[str, Any] = {}
  if {"fid", "kid"} & set(chosen):
    from scdm_jax.evaluation import inception  # pylint: disable=g-import-not-at-top
    nets["inception"] = inception.make_feature_fn(inception.load_inception(
        es["inception_weights"]))
    weights["inception"] = es["inception_weights"]
  if "lpips" in chosen:
    from scdm_jax.evaluation import lpips  # pylint: disable=g-import-not-at-top
    nets["lpips"] = lpips.load_lpips(es["lpips_weights"], variant=es["lpips_variant"])
    weights["lpips"] = es["lpips_weights"]
  k = int(config.data.num_classes)
  if "miou" in chosen:
    from scdm_jax.evaluation import miou  # pylint: disable=g-import-not-at-top
    from scdm_jax.evaluation import proxy as _proxy  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    nets["segmenter"] = miou.get_segmenter(es["segmenter"], es["segmenter_weights"], k)
    weights["segmenter"] = es["segmenter_weights"]
  if {"proxy_miou", "proxy_fd"} & set(chosen):
    from scdm_jax.evaluation import proxy  # pylint: disable=g-import-not-at-top
    nets["proxy"] = proxy.load_segmenter(es["proxy_weights"])
    if nets["proxy"].num_classes != k:
      raise ValueError(f"Proxy weights {es['proxy_weights']} predict "
                       f"{nets['proxy'].num_classes} classes; config.data.num_classes={k}.")
    weights["proxy"] = es["proxy_weights"]
  if es["fid_stats"] and os.path.exists(es["fid_stats"]) and "fid" in chosen:
    weights["fid_stats"] = es["fid_stats"]
  hashes = report.weights_hashes(weights)

  samples_dir = es["samples_dir"] or config.sample.get("output_dir", "") or \
      os.path.join(workdir or ".", "samples")
  sets = find_sample_sets(samples_dir)
  names = png_names(sets[0])
  if int(es["max_images"]):
    names = names[:int(es["max_images"])]
  size = int(config.data.image_size)
  split = es["split"] or config.data.get("eval_split", "validation")
  logging.info("Evaluating %d images of %s (%d set(s)) against %s/%s: %s.", len(names),
               samples_dir, len(sets), config.data.name, split, ", ".join(chosen))
  gen, resized = load_images(sets[0], names, size)
  ignore = 255
  ref_images, ref_ids = load_reference(config, split, names, ignore_index=ignore)

  metrics: dict[str, Any] = {}
  details: dict[str, Any] = {}
  impl: dict[str, str] = {}
  bs = int(es["batch_size"])
  if {"fid", "kid"} & set(chosen):
    from scdm_jax.evaluation import fid  # pylint: disable=g-import-not-at-top
    from scdm_jax.evaluation import inception  # pylint: disable=g-import-not-at-top
    feats = inception.extract_features(nets["inception"], gen, batch_size=bs)
    need_ref_feats = "kid" in chosen or not (es["fid_stats"] and os.path.exists(es["fid_stats"]))
    ref_feats = inception.extract_features(nets["inception"], ref_images, batch_size=bs) \
        if need_ref_feats else None
    if "fid" in chosen:
      if es["fid_stats"] and os.path.exists(es["fid_stats"]):
        ref_mu, ref_sigma = fid.load_stats(es["fid_stats"], dim=inception.FEATURE_DIM)
        details["fid_reference"] = f"cached statistics {es['fid_stats']}"
      else:
        ref_mu, ref_sigma = fid.compute_statistics(ref_feats)
        details["fid_reference"] = f"{len(names)} matched images of split {split!r}"
        if es["fid_stats"]:
          fid.save_stats(es["fid_stats"], ref_mu, ref_sigma, num_samples=len(names),
                         split=split, dataset=str(config.data.name))
      metrics["fid"] = fid.frechet_distance(*fid.compute_statistics(feats), ref_mu, ref_sigma)
      impl["fid"] = "scdm_jax.evaluation.fid (TF-FID Inception-v3 2015-12-05 pool3, JAX)"
    if "kid" in chosen:
      kid = fid.kernel_inception_distance(feats, ref_feats,
                                          num_subsets=int(es["kid_subsets"]),
                                          subset_size=int(es["kid_subset_size"]),
                                          seed=int(config.sample.seed))
      metrics["kid_mean"], metrics["kid_std"] = kid["kid_mean"], kid["kid_std"]
      details["kid"] = {"subset_size": kid["subset_size"], "num_subsets": kid["num_subsets"]}
      impl["kid"] = "scdm_jax.evaluation.fid.kernel_inception_distance (Inception pool3)"
  if "lpips" in chosen:
    from scdm_jax.evaluation import lpips  # pylint: disable=g-import-not-at-top
    in_every_set = set(names).intersection(*(png_names(s) for s in sets))
    common = [n for n in names if n in in_every_set]
    if len(sets) < 2 or not common:
      raise ValueError(f"LPIPS diversity needs >= 2 sample sets of the same maps under "
                       f"{samples_dir} (sample_0/, sample_1/, ...; set "
                       "config.sample.num_samples_per_map); found "
                       f"{len(sets)} set(s), {len(common)} common maps.")
    stack = np.stack([load_images(s, common, size)[0] for s in sets])
    r = lpips.diversity(nets["lpips"], stack)
    metrics["lpips_diversity"] = r["lpips_diversity"]
    details["lpips"] = {"num_sets": r["num_sets"], "num_pairs": r["num_pairs"],
                        "num_maps": r["num_maps"], "variant": es["lpips_variant"]}
    impl["lpips"] = f"scdm_jax.evaluation.lpips (AlexNet-LPIPS, variant {es['lpips_variant']})"
  if "miou" in chosen:
    from scdm_jax.evaluation import miou  # pylint: disable=g-import-not-at-top
    r = miou.evaluate_segmenter(nets["segmenter"], _batches(gen, ref_ids, bs), k,
                                ignore_index=ignore)
    metrics["miou"] = r["miou"]
    details["miou"] = {"pixel_accuracy": r["pixel_accuracy"],
                       "per_class_iou": r["per_class_iou"],
                       "num_classes_present": r["num_classes_present"]}
    impl["miou"] = f"segmenter {es['segmenter']!r} (scdm_jax.evaluation.miou, clean labels)"
  if "proxy_miou" in chosen:
    from scdm_jax.evaluation import miou  # pylint: disable=g-import-not-at-top
    r = miou.evaluate_segmenter(nets["proxy"], _batches(gen, ref_ids, bs), k,
                                ignore_index=ignore)
    metrics["proxy_miou"] = r["miou"]
    details["proxy_miou"] = {"pixel_accuracy": r["pixel_accuracy"],
                             "per_class_iou": r["per_class_iou"]}
  if "proxy_fd" in chosen:
    from scdm_jax.evaluation import fid  # pylint: disable=g-import-not-at-top
    metrics["proxy_fd"] = fid.fid_from_features(nets["proxy"].features(gen),
                                                nets["proxy"].features(ref_images))
    details["proxy_fd"] = {"feature_dim": 7 * int(nets["proxy"].meta["width"]),
                           "reference": f"{len(names)} matched real images of {split!r}"}
  if {"proxy_miou", "proxy_fd"} & set(chosen):
    from scdm_jax.evaluation import proxy  # pylint: disable=g-import-not-at-top
    impl["proxy_miou/proxy_fd"] = proxy.IMPLEMENTATION

  resize = f"png {size}x{size}" if not resized else \
      f"png resized to {size}x{size} (Pillow BICUBIC)"
  if {"fid", "kid"} & set(chosen):
    resize += " -> 299 bilinear (no antialias) for Inception"
  if "proxy" in nets and nets["proxy"].image_size != size:
    resize += f"; -> {nets['proxy'].image_size} bilinear (antialias) for the proxy"
  out_path = es["output"] or os.path.join(workdir or ".", "eval", "report.json")
  import jax  # pylint: disable=g-import-not-at-top
  # Every process computes the same numbers (single-host evaluation); one writes them.
  write = report.write_report if jax.process_index() == 0 else _report_dict
  rep = write(
      out_path, metrics, implementation="; ".join(f"{m}: {v}" for m, v in impl.items()),
      weights_hash=hashes, resize_mode=resize, num_samples=len(names),
      seed=int(config.sample.seed), details=details, samples_dir=os.path.abspath(samples_dir),
      num_sample_sets=len(sets), dataset=str(config.data.name), reference_split=split,
      label_condition=str(config.data.get("noise", "none")), metrics_requested=chosen,
      proxy_note=("proxy_* metrics come from networks trained by this project on the "
                  "procedural dataset; they rank runs within one experiment and are not "
                  "comparable to published numbers.") if "proxy" in nets else None)
  logging.info("Wrote %s: %s", out_path, {m: v for m, v in rep["metrics"].items()})
  return rep


def _report_dict(path, metrics, **kw):
  del path
  return {"metrics": dict(metrics), **kw}


def _batches(images: np.ndarray, ids: np.ndarray, bs: int):
  for i in range(0, images.shape[0], bs):
    yield images[i:i + bs], ids[i:i + bs]
