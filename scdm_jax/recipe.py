"""The config turned into objects: the UNet config, the diffusion chains, psi, run meta.

Every mode builds its model and diffusion through here, so training, sampling, editing
and exporting agree on what a config means:

* `unet_config`: `UNetConfig` from `config.model`, with the fields that follow from the
  data (label channels, edge channel, image size) derived, not hand-set.
* `make_diffusion`, `make_label_schedule`, `resolve_psi`: the image chain and the label
  schedule. psi comes from `config.diffusion.psi_path` (.npy), or, for the procedural
  dataset, from the class statistics of its train split.
* `run_meta`, `check_meta_matches`, `check_resume_meta`, `label_schedule_for`: what a
  checkpoint records about its run, the refusal of a checkpoint that does not fit the
  config (or, on resume, was trained with another setup), and the label schedule a
  checkpoint was trained with.
"""

from __future__ import annotations

import json
from typing import Any

from absl import logging
import ml_collections
import numpy as np

from scdm_jax.data import class_stats
from scdm_jax.data import palettes
from scdm_jax.data import procedural
from scdm_jax.diffusion import label_diffusion
from scdm_jax.diffusion.gaussian import GaussianDiffusion
from scdm_jax.models.unet import UNetConfig

# config.model fields that are derived from config.data; setting them is deprecated.
DERIVED_MODEL_FIELDS = ("num_classes", "edge_channel")
# config.model fields the train step reads; they are not part of the network.
TRAIN_ONLY_MODEL_FIELDS = ("dense_train_max_classes",)


def label_channels(config: ml_collections.ConfigDict) -> int:
  """L = K classes + 1 instance-edge channel when `data.use_instance`."""
  return int(config.data.num_classes) + int(bool(config.data.use_instance))


def unet_config(config: ml_collections.ConfigDict) -> UNetConfig:
  """`UNetConfig` from `config.model`; `num_classes`, `edge_channel` come from `config.data`.

  Raises:
    ValueError: a hand-set `config.model.num_classes` / `edge_channel` (deprecated keys)
      that contradicts the data, or a model image size that differs from the data's.
  """
  model = config.model.to_dict() if hasattr(config.model, "to_dict") else dict(config.model)
  for key in TRAIN_ONLY_MODEL_FIELDS:
    model.pop(key, None)
  derived = {"num_classes": label_channels(config),
             "edge_channel": bool(config.data.use_instance)}
  for key, want in derived.items():
    got = model.get(key)
    if got is None:
      continue
    if type(want)(got) != want:
      raise ValueError(
          f"config.model.{key}={got} contradicts config.data (num_classes="
          f"{config.data.num_classes}, use_instance={config.data.use_instance}), which "
          f"gives {want}; drop config.model.{key}: it is derived from config.data now.")
  model.update(derived)
  if int(model["image_size"]) != int(config.data.image_size):
    raise ValueError(f"config.model.image_size={model['image_size']} != "
                     f"config.data.image_size={config.data.image_size}; set only "
                     "config.data.image_size (the model follows it).")
  return UNetConfig(**model)


def procedural_psi(data_config, num_examples: int = 256) -> np.ndarray:
  """psi from the class statistics of the procedural train split (deterministic)."""
  size = int(data_config.image_size)
  seed = int(data_config.procedural_seed)
  share = float(data_config.procedural_unlabeled_share)
  maps = (procedural.generate(i, size=size, seed=seed, split="train",
                              unlabeled_share=share)["label"]
          for i in range(num_examples))
  stats = class_stats.accumulate(maps, int(data_config.num_classes), quiet=True)
  return label_diffusion.psi_from_statistics(stats["area_fraction_sum"],
                                             stats["image_count"])


def resolve_psi(config: ml_collections.ConfigDict) -> np.ndarray | None:
  """The per-class psi of a class-wise schedule (see the module docstring), else None."""
  d = config.diffusion
  if d.label_schedule != "classwise":
    return None
  k = int(config.data.num_classes)
  if d.psi_path:
    return label_diffusion.load_psi(d.psi_path, k, force_last_linear=d.force_last_linear)
  if config.data.name == "procedural":
    psi = procedural_psi(config.data)
    if d.force_last_linear:
      psi[-1] = 0.5
    return psi
  raise ValueError(
      f"config.diffusion.label_schedule='classwise' needs config.diffusion.psi_path (a .npy "
      f"with {k} values) for dataset {config.data.name!r}: use the reference's *_psiphi.npy "
      "or compute one with `python -m scdm_jax.data.class_stats --dataset "
      f"{config.data.name} --root ... --out psi.npy`; or set "
      "--config.diffusion.label_schedule=uniform.")


def make_label_schedule(config: ml_collections.ConfigDict, psi: np.ndarray | None,
                        kind: str | None = None) -> label_diffusion.LabelSchedule:
  """The label schedule of `config.diffusion` (or of `kind`, e.g. a checkpoint's)."""
  d = config.diffusion
  return label_diffusion.LabelSchedule.create(
      kind or d.label_schedule, psi=psi, num_original_steps=int(d.num_steps),
      reference_tau_1000=bool(d.reference_tau_1000),
      reference_uniform_off_by_one=bool(d.reference_uniform_off_by_one))


def make_diffusion(config: ml_collections.ConfigDict, respacing: str | None = None
                   ) -> GaussianDiffusion:
  """The image chain of `config.diffusion`, optionally respaced (e.g. "ddim25")."""
  return GaussianDiffusion.create(beta_schedule=config.diffusion.beta_schedule,
                                  num_steps=int(config.diffusion.num_steps),
                                  respacing=respacing or None)


def class_table(config: ml_collections.ConfigDict) -> palettes.ClassTable | None:
  """The class table (names, colours) of `data.class_table` or `data.name`, if it resolves."""
  try:
    return palettes.get_class_table(config.data.class_table or config.data.name)
  except (ValueError, FileNotFoundError):
    return None


def class_table_json(config: ml_collections.ConfigDict) -> dict[str, Any] | None:
  """`class_table(config)` as JSON (what checkpoints store), or None."""
  table = class_table(config)
  return None if table is None else table.to_json()


def label_colors(config: ml_collections.ConfigDict) -> np.ndarray:
  """(K, 3) uint8 colours to draw label maps with (fixed random ones without a table)."""
  table = class_table(config)
  if table is None:
    k = int(config.data.num_classes)
    return np.random.default_rng(0).integers(0, 256, (k, 3)).astype(np.uint8)
  return np.asarray(table.colors, np.uint8)


def run_meta(config: ml_collections.ConfigDict, psi: np.ndarray | None) -> dict[str, Any]:
  """JSON stored with every checkpoint and export: config, class table, label schedule."""
  table = class_table_json(config)
  return {
      "config": json.loads(config.to_json_best_effort()),
      "model": unet_config(config).to_dict(),
      "num_classes": int(config.data.num_classes),
      "use_instance": bool(config.data.use_instance),
      "class_names": None if table is None else table["names"],
      "class_table": table,
      "dataset": config.data.name,
      "diffusion": {"beta_schedule": config.diffusion.beta_schedule,
                    "num_steps": int(config.diffusion.num_steps)},
      "label_schedule": {"kind": config.diffusion.label_schedule,
                         "psi": None if psi is None else [float(x) for x in psi]},
  }


def check_meta_matches(meta: dict[str, Any], config: ml_collections.ConfigDict, *,
                       what: str) -> None:
  """Refuses a checkpoint whose class count / class table does not match the config.

  Raises:
    ValueError: naming the checkpoint, both values and what to change.
  """
  want_k = int(config.data.num_classes)
  want_l = label_channels(config)
  got_k = meta.get("num_classes")
  got_l = (meta.get("model") or {}).get("num_classes")
  problems = []
  if got_l is not None and int(got_l) != want_l:
    problems.append(f"it has {got_l} conditioning channels, the config has {want_l} "
                    f"(config.data.num_classes={want_k}, use_instance="
                    f"{bool(config.data.use_instance)})")
  if got_k is not None and int(got_k) not in (want_k, want_l) and \
      not (got_l is not None and int(got_k) == int(got_l)):
    problems.append(f"it was trained with {got_k} classes, the config has "
                    f"config.data.num_classes={want_k}")
  table = class_table_json(config)
  names = meta.get("class_names")
  if not problems and names and table is not None and list(names) != list(table["names"]):
    diff = [(i, a, b) for i, (a, b) in enumerate(zip(names, table["names"])) if a != b][:5]
    problems.append(
        f"its class table differs from {config.data.name!r} (first differences (id, "
        f"checkpoint, config): {diff}; lengths {len(names)} vs {len(table['names'])})")
  if problems:
    raise ValueError(
        f"{what}: refusing a checkpoint that does not match the config: "
        + "; ".join(problems) + ". Use the config preset the checkpoint was made for "
        f"(its dataset: {meta.get('dataset', meta.get('source', '?'))!r}), or a "
        "checkpoint trained for this dataset.")


# UNetConfig fields a resumed run may change: they do not change the parameters' shapes.
RESUMABLE_MODEL_FIELDS = ("dtype", "remat", "dropout", "onehot_lookup")


def check_resume_meta(meta: dict[str, Any], config: ml_collections.ConfigDict,
                      psi: np.ndarray | None, *, what: str) -> None:
  """Refuses to resume a training checkpoint that was made with a different setup.

  Compares the model shape, the class count / table, the diffusion chain and the label
  schedule (kind and psi) of the checkpoint's meta with `config`. Called before any array
  is restored, so a mismatch is one line instead of an orbax shape error.

  Raises:
    ValueError: naming the first differing key, both values and the two ways on.
  """
  how = (" To start fresh, use a new --workdir; to fine-tune from this checkpoint, export "
         "it (--mode export) and train in a new --workdir with config.init_from=<export>; "
         "or set the config back to the checkpoint's value.")
  want_model = unet_config(config).to_dict()
  got_model = meta.get("model") or {}
  for key in sorted(want_model):
    if key in got_model and key not in RESUMABLE_MODEL_FIELDS and \
        _jsonable(got_model[key]) != _jsonable(want_model[key]):
      raise ValueError(f"{what}: refusing to resume: model.{key} is {got_model[key]!r} in "
                       f"the checkpoint but {want_model[key]!r} in the config." + how)
  try:
    check_meta_matches(meta, config, what=what)
  except ValueError as e:
    raise ValueError(f"{e}{how}") from None
  recorded = meta.get("diffusion") or {}
  for key, want in (("beta_schedule", config.diffusion.beta_schedule),
                    ("num_steps", int(config.diffusion.num_steps))):
    if key in recorded and recorded[key] != want:
      raise ValueError(f"{what}: refusing to resume: diffusion.{key} is {recorded[key]!r} "
                       f"in the checkpoint but {want!r} in the config." + how)
  schedule = meta.get("label_schedule") or {}
  kind = schedule.get("kind")
  if kind is not None and kind != config.diffusion.label_schedule:
    raise ValueError(f"{what}: refusing to resume: diffusion.label_schedule is {kind!r} in "
                     f"the checkpoint but {config.diffusion.label_schedule!r} in the "
                     "config." + how)
  old_psi = schedule.get("psi")
  if old_psi is not None and psi is not None:
    old_psi = np.asarray(old_psi, np.float64)
    if old_psi.shape != np.shape(psi) or not np.allclose(old_psi, psi, rtol=1e-6):
      n = int(np.sum(~np.isclose(old_psi, psi, rtol=1e-6))) \
          if old_psi.shape == np.shape(psi) else old_psi.size
      raise ValueError(f"{what}: refusing to resume: the label schedule's psi differs from "
                       f"the checkpoint's ({n} of {old_psi.size} classes; shapes "
                       f"{old_psi.shape} vs {np.shape(psi)}): check config.diffusion.psi_path "
                       "/ the class statistics." + how)


def _jsonable(value: Any) -> Any:
  """Tuples and lists compare equal (the meta went through JSON)."""
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  return value


def label_schedule_for(config: ml_collections.ConfigDict,
                       meta: dict[str, Any]) -> label_diffusion.LabelSchedule:
  """The label schedule a checkpoint was trained with (kind and psi from its meta).

  Checkpoints without that record (e.g. converted PyTorch weights) use the config's.
  """
  recorded = meta.get("label_schedule") or {}
  kind = recorded.get("kind", config.diffusion.label_schedule)
  if kind != config.diffusion.label_schedule:
    logging.warning("The checkpoint was trained with label schedule %r; the config says %r: "
                    "using the checkpoint's.", kind, config.diffusion.label_schedule)
  psi = None
  if kind == "classwise":
    psi = recorded.get("psi")
    psi = np.asarray(psi, np.float64) if psi is not None else resolve_psi(config)
  return make_label_schedule(config, psi, kind)


def check_counts(config: ml_collections.ConfigDict, section: str,
                 minimums: dict[str, int]) -> None:
  """Refuses counts below their minimum (e.g. `num_samples=0`) before anything compiles.

  Raises:
    ValueError: one line naming `config.<section>.<key>`, its value and the minimum.
  """
  for key, low in minimums.items():
    value = config[section][key]
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
      what = "0 = off" if low == 0 else f"at least {low}"
      raise ValueError(f"config.{section}.{key}={value!r}: must be an integer, {what} "
                       "(see configs/default.py).")


def flat_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """`{"train.batch_size": 8, ...}`: scalars as they are, anything else as its str()."""
  out = {}

  def rec(prefix, d):
    for k, v in d.items():
      if isinstance(v, ml_collections.ConfigDict):
        rec(f"{prefix}{k}.", v)
      elif isinstance(v, (int, float, str, bool)):
        out[f"{prefix}{k}"] = v
      else:
        out[f"{prefix}{k}"] = str(v)
  rec("", config)
  return out


# Keys that still load but no longer do anything of their own: key -> what to do instead.
DEPRECATED_KEYS = {
    "model.num_classes": "it is derived from data.num_classes + data.use_instance",
    "model.edge_channel": "it is derived from data.use_instance",
    "data.shuffle_buffer": "it is unused: every epoch is a full permutation of the shard",
}


def warn_deprecated(config: ml_collections.ConfigDict) -> None:
  """Logs one warning per deprecated key that is set (not None) in `config`."""
  for key, why in DEPRECATED_KEYS.items():
    section, name = key.split(".")
    if config[section].get(name) is not None:
      logging.warning("config.%s is deprecated and ignored (%s); drop it.", key, why)
