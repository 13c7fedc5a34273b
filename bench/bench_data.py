"""Input-pipeline throughput (examples/s), written as JSON.

  python bench/bench_data.py --out bench_data.json [--image-size 256] [--batch-size 8]
  python bench/bench_data.py --tfds --out bench_tfds.json --image-size 64 --batches 16

Builds a fake ADE20K tree (JPEG images of ADE-like size, 384 x 512) and a fake COCO-Stuff tree
(with instance maps) in a temporary folder, then times `create_dataset` in train mode
(random resized crop + flip; labels are int32 class ids, one-hot only on the device) and
test mode, and the procedural dataset, after a warm-up batch. `folders_vs_tfds` times one
tiny procedural dataset read both ways: generated (data.source=folders) and prepared as TFDS
array_record (data.source=tfds, random access; `--tfds` runs only this). `host_mb_per_example` is the
size of what is handed to JAX per example. Numbers depend on the CPU count and on other load (tf.data parallel map over Pillow work);
`cpu_s_per_example` (process CPU time, all threads) is the load-independent figure.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

from scdm_jax.data import datasets
from scdm_jax.data import fake_layouts
from scdm_jax.data import layouts
from scdm_jax.data import tfds_builders

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "configs"))
import default as default_config  # noqa: E402  pylint: disable=wrong-import-position


def _data_config(**fields) -> dict:
  return dict(default_config.get_config().data.to_dict(), **fields)


def _rate(cfg, split, train, batch_size, batches) -> tuple[float, float, float]:
  it = datasets.create_dataset(cfg, split, batch_size=batch_size, train=train, seed=0)
  next(it)  # warm-up (graph building, first decodes)
  t, c = time.perf_counter(), time.process_time()
  n, nbytes = 0, 0
  for _ in range(batches):
    b = next(it)
    n += b["image"].shape[0]
    nbytes += sum(v.nbytes for v in b.values())
  wall, cpu = time.perf_counter() - t, time.process_time() - c
  # CPU seconds per example (all threads) does not depend on what else runs on the machine.
  return n / wall, cpu / n, nbytes / n / 2**20


def run(image_size: int = 256, batch_size: int = 8, batches: int = 8, num: int = 24) -> dict:
  results = {}
  with tempfile.TemporaryDirectory() as tmp:
    for name, use_inst in (("ade20k", False), ("coco_stuff", True)):
      root = fake_layouts.make_fake_dataset(name, os.path.join(tmp, name), num_train=num,
                                            num_val=num, size=(384, 512))
      cfg = _data_config(name=name, root=root, image_size=image_size,
                         num_classes=layouts.get_spec(name).num_classes,
                         use_instance=use_inst)
      results[f"{name}_train"] = _rate(cfg, "train", True, batch_size, batches)
      results[f"{name}_train_edge_noise"] = _rate(dict(cfg, noise="edge"), "train", True,
                                                   batch_size, batches)
      results[f"{name}_eval"] = _rate(cfg, "validation", False, batch_size,
                                      max(1, min(batches, num // batch_size - 1)))
    cfg = _data_config(name="procedural", image_size=image_size, use_instance=True)
    results["procedural_train"] = _rate(cfg, "train", True, batch_size, batches)
  return {"benchmark": "data_pipeline", "unit": "examples/s", "image_size": image_size,
          "batch_size": batch_size, "source_image_size": [384, 512],
          "cpu_count": os.cpu_count(), "machine": platform.machine(),
          "load_average_1min": round(os.getloadavg()[0], 2),
          "examples_per_s": {k: round(v[0], 2) for k, v in results.items()},
          "cpu_s_per_example": {k: round(v[1], 4) for k, v in results.items()},
          "host_mb_per_example": {k: round(v[2], 3) for k, v in results.items()}}


def folders_vs_tfds(image_size: int = 64, batch_size: int = 8, batches: int = 16,
                    num: int = 64) -> dict:
  """examples/s of the same procedural dataset from data.source=folders and =tfds."""
  rates = {}
  with tempfile.TemporaryDirectory() as tmp:
    t = time.perf_counter()
    tfds_builders.prepare("procedural", tmp, image_size=image_size, num_train=num)
    prepare_s = time.perf_counter() - t
    base = dict(name="procedural", image_size=image_size, num_examples=num, use_instance=True)
    for source in ("folders", "tfds"):
      cfg = _data_config(**base, source=source, tfds_data_dir=tmp)
      rates[source] = _rate(cfg, "train", True, batch_size, batches)
  return {"benchmark": "data_folders_vs_tfds", "unit": "examples/s", "dataset": "procedural",
          "image_size": image_size, "num_train": num, "batch_size": batch_size,
          "batches": batches, "prepare_s": round(prepare_s, 2),
          "cpu_count": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2),
          "examples_per_s": {k: round(v[0], 2) for k, v in rates.items()},
          "cpu_s_per_example": {k: round(v[1], 4) for k, v in rates.items()}}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python bench/bench_data.py", description=__doc__)
  p.add_argument("--out", required=True)
  p.add_argument("--image-size", type=int, default=256)
  p.add_argument("--batch-size", type=int, default=8)
  p.add_argument("--batches", type=int, default=8)
  p.add_argument("--tfds", action="store_true",
                 help="only folders vs tfds array_record on a tiny procedural dataset")
  args = p.parse_args(argv)
  if args.tfds:
    res = folders_vs_tfds(args.image_size, args.batch_size, args.batches)
  else:
    res = run(args.image_size, args.batch_size, args.batches)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w", encoding="utf-8") as f:
    json.dump(res, f, indent=1)
  print(json.dumps(res, indent=1))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
