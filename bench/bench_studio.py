"""Studio request latency: the first request (compiles) and warm ones, per request kind.

  python bench/bench_studio.py --config configs/demo.py --checkpoint /tmp/scdm_demo/export
  python bench/bench_studio.py --config configs/demo.py --checkpoint W/export --steps 25 \
      --num_samples 2 --iters 3

Runs the same `Studio` methods the HTTP endpoints call (JSON in, PNG data URLs out) on a
procedural validation map, in process: generate, generate with each corruption (same
program), masked regeneration and SDEdit. Prints one JSON object: per kind the first call's
seconds (compile included) and the median of `--iters` warm calls.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from scdm_jax.config_files import load_sibling  # noqa: E402
from scdm_jax.data import procedural  # noqa: E402
from scdm_jax.modes import serve  # noqa: E402


def _timed(fn, req, iters):
  t = time.perf_counter()
  out = fn(req)
  first = time.perf_counter() - t
  warm = []
  for i in range(iters):
    t = time.perf_counter()
    fn(dict(req, seed=req["seed"] + 1 + i))
    warm.append(time.perf_counter() - t)
  return out, {"first_s": round(first, 3), "warm_median_s": round(statistics.median(warm), 3),
               "compiled_on_first": out["timing"]["compiled"]}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", required=True, help="configs/<preset>.py of the model")
  p.add_argument("--checkpoint", required=True, help="an inference checkpoint (export)")
  p.add_argument("--steps", type=int, default=25)
  p.add_argument("--guidance", type=float, default=1.5)
  p.add_argument("--num_samples", type=int, default=2)
  p.add_argument("--iters", type=int, default=3)
  args = p.parse_args()
  config = load_sibling(os.path.abspath(args.config), os.path.splitext(
      os.path.basename(args.config))[0]).get_config()
  config.serve.checkpoint = args.checkpoint
  t = time.perf_counter()
  studio = serve.build(config, None)
  load_s = time.perf_counter() - t
  size = studio.model.size
  ids = procedural.generate(0, size=size, split="validation")["label"].astype(np.int32)
  base = {"ids": ids.reshape(-1).tolist(), "steps": args.steps, "guidance": args.guidance,
          "seed": 0, "num_samples": args.num_samples}
  report = {"config": args.config, "checkpoint": args.checkpoint, "size": size,
            "steps": args.steps, "guidance": args.guidance,
            "num_samples": args.num_samples, "load_s": round(load_s, 3)}
  out, report["generate"] = _timed(studio.generate, base, args.iters)
  for kind in ("ds", "edge", "random"):
    _, report[f"generate_{kind}"] = _timed(studio.generate, dict(base, corruption=kind), 1)
  mask = np.zeros((size, size), np.int64)
  mask[size // 4:size // 2, size // 4:3 * size // 4] = 1
  masked = dict(base, source=out["images"][0], mask=mask.reshape(-1).tolist())
  _, report["masked"] = _timed(studio.masked, masked, args.iters)
  _, report["sdedit"] = _timed(studio.sdedit, dict(base, guide=out["images"][0], t0=0.5),
                               args.iters)
  print(json.dumps(report, indent=1))


if __name__ == "__main__":
  main()
