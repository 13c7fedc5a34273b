r"""`--mode evaluate`: metrics of generated PNGs against a dataset split, as one JSON report.

* **generated images**: ``config.eval.samples_dir`` (default ``config.sample.output_dir``,
  else ``<workdir>/samples``), the layout `--mode sample` writes: ``sample_<j>/<name>.png``
  (a folder holding PNGs directly counts as one set). Set 0 is used for FID/KID/mIoU/proxies;
  all sets for LPIPS diversity. See `scdm_jax.evaluation.sample_sets`.
* **reference**: the split ``config.eval.split`` (default ``data.eval_split``), without
  label noise, matched to the generated images by file stem.
* **metrics** (``config.eval.metrics``: a comma list, or "auto" = every metric whose weights
  are configured): one row of `METRICS` each, naming the config fields it needs, the
  network it runs and the function that scores it:
  - ``fid``, ``kid``: TF-FID Inception-v3 pool3 features (``eval.inception_weights``); FID
    reference statistics from ``eval.fid_stats`` if that npz exists (written there if not).
  - ``lpips``: mean pairwise AlexNet-LPIPS over the sample sets; needs >= 2 sets.
  - ``miou``: ``eval.segmenter`` (registered with `miou.register_segmenter`) with
    ``eval.segmenter_weights``, against the clean label; the unlabeled class is ignored.
  - ``proxy_miou``, ``proxy_fd``: this project's PROXY networks (``eval.proxy_weights``).
    Never comparable to published numbers; the report says so.
* **report**: ``config.eval.output`` (default ``<workdir>/eval/report.json``) via
  `report.write_report`: metrics, implementation per metric, sha256 of every weights file,
  resize mode, N, the sampling seed, the label condition and per-metric details.

Missing or corrupt weights raise ``FileNotFoundError`` / ``ValueError`` before any image is
read; a missing sample folder raises ``FileNotFoundError`` naming it.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from scdm_jax.evaluation import fid
from scdm_jax.evaluation import inception
from scdm_jax.evaluation import lpips
from scdm_jax.evaluation import miou
from scdm_jax.evaluation import proxy  # also registers the proxy segmenters with miou
from scdm_jax.evaluation import report
from scdm_jax.evaluation import sample_sets
from scdm_jax.io import fileio

IGNORE_INDEX = 255


@dataclasses.dataclass
class Inputs:
  """What the metric functions read: images, references, settings, loaded networks."""
  config: ml_collections.ConfigDict
  es: ml_collections.ConfigDict  # config.eval
  nets: dict[str, Any]
  samples_dir: str
  sets: list[str]
  names: list[str]
  gen: np.ndarray
  ref_images: np.ndarray
  ref_ids: np.ndarray
  split: str

  @functools.cached_property
  def gen_inception(self) -> np.ndarray:
    return inception.extract_features(self.nets["inception"], self.gen,
                                      batch_size=int(self.es.batch_size))

  @functools.cached_property
  def ref_inception(self) -> np.ndarray:
    return inception.extract_features(self.nets["inception"], self.ref_images,
                                      batch_size=int(self.es.batch_size))

  def batches(self):
    bs = int(self.es.batch_size)
    for i in range(0, self.gen.shape[0], bs):
      yield self.gen[i:i + bs], self.ref_ids[i:i + bs]


# A metric fills `metrics`, `details` and returns its implementation note (or None).
Score = Callable[[Inputs, dict[str, Any], dict[str, Any]], str | None]


def _fid(x: Inputs, metrics, details) -> str:
  stats = x.es.fid_stats
  if stats and os.path.exists(stats):
    ref_mu, ref_sigma = fid.load_stats(stats, dim=inception.FEATURE_DIM)
    details["fid_reference"] = f"cached statistics {stats}"
  else:
    ref_mu, ref_sigma = fid.compute_statistics(x.ref_inception)
    details["fid_reference"] = f"{len(x.names)} matched images of split {x.split!r}"
    if stats:
      fid.save_stats(stats, ref_mu, ref_sigma, num_samples=len(x.names), split=x.split,
                     dataset=str(x.config.data.name))
  metrics["fid"] = fid.frechet_distance(*fid.compute_statistics(x.gen_inception), ref_mu,
                                        ref_sigma)
  return "scdm_jax.evaluation.fid (TF-FID Inception-v3 2015-12-05 pool3, JAX)"


def _kid(x: Inputs, metrics, details) -> str:
  kid = fid.kernel_inception_distance(x.gen_inception, x.ref_inception,
                                      num_subsets=int(x.es.kid_subsets),
                                      subset_size=int(x.es.kid_subset_size),
                                      seed=int(x.config.sample.seed))
  metrics["kid_mean"], metrics["kid_std"] = kid["kid_mean"], kid["kid_std"]
  details["kid"] = {"subset_size": kid["subset_size"], "num_subsets": kid["num_subsets"]}
  return "scdm_jax.evaluation.fid.kernel_inception_distance (Inception pool3)"


def _lpips(x: Inputs, metrics, details) -> str:
  in_every_set = set(x.names).intersection(*(sample_sets.png_names(s) for s in x.sets))
  common = [n for n in x.names if n in in_every_set]
  if len(x.sets) < 2 or not common:
    raise ValueError(f"LPIPS diversity needs >= 2 sample sets of the same maps under "
                     f"{x.samples_dir} (sample_0/, sample_1/, ...; set "
                     "config.sample.num_samples_per_map); found "
                     f"{len(x.sets)} set(s), {len(common)} common maps.")
  size = int(x.config.data.image_size)
  stack = np.stack([sample_sets.load_images(s, common, size)[0] for s in x.sets])
  r = lpips.diversity(x.nets["lpips"], stack)
  metrics["lpips_diversity"] = r["lpips_diversity"]
  details["lpips"] = {"num_sets": r["num_sets"], "num_pairs": r["num_pairs"],
                      "num_maps": r["num_maps"], "variant": x.es.lpips_variant}
  return f"scdm_jax.evaluation.lpips (AlexNet-LPIPS, variant {x.es.lpips_variant})"


def _miou(x: Inputs, metrics, details) -> str:
  r = miou.evaluate_segmenter(x.nets["segmenter"], x.batches(),
                              int(x.config.data.num_classes), ignore_index=IGNORE_INDEX)
  metrics["miou"] = r["miou"]
  details["miou"] = {"pixel_accuracy": r["pixel_accuracy"],
                     "per_class_iou": r["per_class_iou"],
                     "num_classes_present": r["num_classes_present"]}
  return f"segmenter {x.es.segmenter!r} (scdm_jax.evaluation.miou, clean labels)"


def _proxy_miou(x: Inputs, metrics, details) -> None:
  r = miou.evaluate_segmenter(x.nets["proxy"], x.batches(), int(x.config.data.num_classes),
                              ignore_index=IGNORE_INDEX)
  metrics["proxy_miou"] = r["miou"]
  details["proxy_miou"] = {"pixel_accuracy": r["pixel_accuracy"],
                           "per_class_iou": r["per_class_iou"]}


def _proxy_fd(x: Inputs, metrics, details) -> None:
  net = x.nets["proxy"]
  metrics["proxy_fd"] = fid.fid_from_features(net.features(x.gen), net.features(x.ref_images))
  details["proxy_fd"] = {"feature_dim": 7 * int(net.meta["width"]),
                         "reference": f"{len(x.names)} matched real images of {x.split!r}"}


def _load_inception(es, k):
  del k
  return inception.make_feature_fn(inception.load_inception(es.inception_weights))


def _load_lpips(es, k):
  del k
  return lpips.load_lpips(es.lpips_weights, variant=es.lpips_variant)


def _load_segmenter(es, k):
  return miou.get_segmenter(es.segmenter, es.segmenter_weights, k)


def _load_proxy(es, k):
  net = proxy.load_segmenter(es.proxy_weights)
  if net.num_classes != k:
    raise ValueError(f"Proxy weights {es.proxy_weights} predict {net.num_classes} classes; "
                     f"config.data.num_classes={k}.")
  return net


@dataclasses.dataclass(frozen=True)
class Network:
  weights: str  # the config.eval field holding its weights file
  load: Callable[[ml_collections.ConfigDict, int], Any]


NETWORKS = {
    "inception": Network("inception_weights", _load_inception),
    "lpips": Network("lpips_weights", _load_lpips),
    "segmenter": Network("segmenter_weights", _load_segmenter),
    "proxy": Network("proxy_weights", _load_proxy),
}


@dataclasses.dataclass(frozen=True)
class Metric:
  network: str  # key of NETWORKS
  needs: tuple[str, ...]  # config.eval fields that must be set ("auto": any of them)
  score: Score


# The metrics, in report order. A new metric is one row here plus its score function.
METRICS: dict[str, Metric] = {
    "fid": Metric("inception", ("inception_weights",), _fid),
    "kid": Metric("inception", ("inception_weights",), _kid),
    "lpips": Metric("lpips", ("lpips_weights",), _lpips),
    "miou": Metric("segmenter", ("segmenter_weights", "segmenter"), _miou),
    "proxy_miou": Metric("proxy", ("proxy_weights",), _proxy_miou),
    "proxy_fd": Metric("proxy", ("proxy_weights",), _proxy_fd),
}


def selected_metrics(es: ml_collections.ConfigDict) -> list[str]:
  """The metric names `config.eval.metrics` asks for, checked against the weights set.

  Raises:
    ValueError: an unknown metric, or a metric whose weights are not configured.
  """
  spec = str(es.metrics).strip()
  if spec == "auto":
    chosen = [m for m, row in METRICS.items() if any(es[f] for f in row.needs)]
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
  for m in chosen:
    for field in METRICS[m].needs:
      if not es[field]:
        raise ValueError(f"config.eval.metrics asks for {m!r} but config.eval.{field} is "
                         "empty.")
  return chosen


def run(config: ml_collections.ConfigDict, workdir: str | None) -> dict[str, Any]:
  """Scores the samples; returns the report dict it wrote (see the module docstring)."""
  es = config.eval
  chosen = selected_metrics(es)
  k = int(config.data.num_classes)

  out_path = es.output or os.path.join(workdir or ".", "eval", "report.json")
  if jax.process_index() == 0:  # before the networks load and the images are read
    fileio.check_writable(os.path.dirname(os.path.abspath(out_path)), "config.eval.output")
  # Weights first: a wrong file must fail before minutes of image reading.
  used = list(dict.fromkeys(METRICS[m].network for m in chosen))
  nets = {name: NETWORKS[name].load(es, k) for name in used}
  weights = {name: es[NETWORKS[name].weights] for name in used}
  if "fid" in chosen and es.fid_stats and os.path.exists(es.fid_stats):
    weights["fid_stats"] = es.fid_stats
  hashes = report.weights_hashes(weights)

  samples_dir = es.samples_dir or config.sample.output_dir or \
      os.path.join(workdir or ".", "samples")
  sets = sample_sets.find_sample_sets(samples_dir)
  names = sample_sets.png_names(sets[0])
  if int(es.max_images):
    names = names[:int(es.max_images)]
  size = int(config.data.image_size)
  split = es.split or config.data.eval_split
  logging.info("Evaluating %d images of %s (%d set(s)) against %s/%s: %s.", len(names),
               samples_dir, len(sets), config.data.name, split, ", ".join(chosen))
  gen, resized = sample_sets.load_images(sets[0], names, size)
  ref_images, ref_ids = sample_sets.load_reference(config, split, names,
                                                   ignore_index=IGNORE_INDEX)
  inputs = Inputs(config, es, nets, samples_dir, sets, names, gen, ref_images, ref_ids, split)

  metrics: dict[str, Any] = {}
  details: dict[str, Any] = {}
  impl: dict[str, str] = {}
  for m in (m for m in METRICS if m in chosen):  # report order, whatever the request's
    note = METRICS[m].score(inputs, metrics, details)
    if note:
      impl[m] = note
  if "proxy" in nets:
    impl["proxy_miou/proxy_fd"] = proxy.IMPLEMENTATION

  resize = f"png {size}x{size}" if not resized else \
      f"png resized to {size}x{size} (Pillow BICUBIC)"
  if "inception" in nets:
    resize += " -> 299 bilinear (no antialias) for Inception"
  if "proxy" in nets and nets["proxy"].image_size != size:
    resize += f"; -> {nets['proxy'].image_size} bilinear (antialias) for the proxy"
  # Every process computes the same numbers (single-host evaluation); one writes them.
  write = report.write_report if jax.process_index() == 0 else _report_dict
  rep = write(
      out_path, metrics, implementation="; ".join(f"{m}: {v}" for m, v in impl.items()),
      weights_hash=hashes, resize_mode=resize, num_samples=len(names),
      seed=int(config.sample.seed), details=details, samples_dir=os.path.abspath(samples_dir),
      num_sample_sets=len(sets), dataset=str(config.data.name), reference_split=split,
      label_condition=str(config.data.noise), metrics_requested=chosen,
      proxy_note=("proxy_* metrics come from networks trained by this project on the "
                  "procedural dataset; they rank runs within one experiment and are not "
                  "comparable to published numbers.") if "proxy" in nets else None)
  logging.info("Wrote %s: %s", out_path, {m: v for m, v in rep["metrics"].items()})
  return rep


def _report_dict(path, metrics, **kw):
  del path
  return {"metrics": dict(metrics), **kw}
