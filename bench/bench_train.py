r"""Throughput benchmark: train images/s and 25-step guided sampling images/s (JSON).

  python bench/bench_train.py                      # both configs
  python bench/bench_train.py --which demo --train_steps 5 --sample_batches 1

Configs:
  demo   configs/demo.py as is (32 px, 32 channels, 9 procedural classes).
  64px   the ADE20K preset shrunk to 64 px, 64 channels (mult 1,1,2,2, attention at 16 and
         8 px), 151 classes, float32, global batch 8.
Train: the real compiled step (sharded over all local devices) on a fixed synthetic batch;
the first step (compilation) is excluded. Sample: the 25-step recipe (ddim25 stride,
guidance 1.5, dynamic threshold 0.95, extrapolation 0.8), one compiled program per batch.
Prints one JSON object per line and a final JSON list.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import sys
import time

import jax
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scdm_jax import recipe  # noqa: E402
from scdm_jax import sharding  # noqa: E402
from scdm_jax import state as state_lib  # noqa: E402
from scdm_jax.inference import sampler  # noqa: E402
from scdm_jax.training import step as step_lib  # noqa: E402


def _load(name, arg=None):
  spec = importlib.util.spec_from_file_location(f"cfg_{name}", REPO / "configs" / f"{name}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def get_config(which: str):
  if which == "demo":
    return _load("demo")
  if which == "64px":
    c = _load("ade20k")
    c.data.image_size = 64
    c.model.model_channels = 64
    c.model.channel_mult = (1, 1, 2, 2)
    c.model.attention_resolutions = (4, 8)
    c.model.num_res_blocks = 2
    c.model.dtype = "float32"
    c.model.remat = False
    c.train.batch_size = 8
    c.diffusion.label_schedule = "uniform"  # no psi file needed; same cost as classwise
    c.sample.batch_size = 8
    return c
  raise ValueError(f"--which {which!r}: use demo or 64px")


def bench(which: str, train_steps: int, sample_batches: int) -> dict:
  config = get_config(which)
  mesh = sharding.make_mesh(config.mesh)
  shards = sharding.num_batch_shards(mesh)
  b = -(-int(config.train.batch_size) // shards) * shards
  config.train.batch_size = b
  s, k = int(config.data.image_size), int(config.data.num_classes)
  psi = recipe.resolve_psi(config)
  schedule = recipe.make_label_schedule(config, psi)
  diffusion = recipe.make_diffusion(config)
  rng = np.random.default_rng(0)
  ids = rng.integers(0, k, (b, s, s)).astype(np.int32)
  # The train step and the sampler take class ids, as the input pipeline yields them.
  host = {"image": rng.uniform(-1, 1, (b, s, s, 3)).astype(np.float32), "label": ids}
  if config.data.use_instance:
    host["edge"] = np.zeros((b, s, s, 1), np.float32)

  t0 = time.time()
  graphs, st, shardings = state_lib.create_train_state(config, mesh, 0)
  init_s = time.time() - t0
  _, abstract = state_lib.graphs_and_abstract(config)
  t0 = time.time()
  compiled, _ = step_lib.compile_train_step(config, graphs, diffusion, schedule, mesh,
                                            shardings, abstract, b // jax.process_count())
  compile_s = time.time() - t0
  bsh = sharding.batch_sharding(mesh)
  batch = sharding.device_put_tree(host, {key: bsh for key in host})
  st, m = compiled(st, batch)
  jax.block_until_ready(m)
  t0 = time.time()
  for _ in range(train_steps):
    st, m = compiled(st, batch)
  jax.block_until_ready((st, m))
  train_dt = time.time() - t0

  config.sample.respacing = "ddim25"
  config.sample.guidance_scale = 1.5
  config.sample.dynamic_threshold = 0.95
  config.sample.extrapolation = 0.8
  sb = -(-int(config.sample.batch_size) // shards) * shards
  fn, _ = sampler.make_sample_fn(config, graphs, mesh, shardings.params, schedule)
  cond_host = {k_: v[:sb] for k_, v in host.items() if k_ != "image"}
  cond = sharding.device_put_tree(cond_host, {k_: bsh for k_ in cond_host})
  key = jax.random.key(0)
  t0 = time.time()
  jax.block_until_ready(fn(st.ema, cond, key))
  sample_compile_s = time.time() - t0
  t0 = time.time()
  for i in range(sample_batches):
    out = fn(st.ema, cond, jax.random.fold_in(key, i))
  jax.block_until_ready(out)
  sample_dt = time.time() - t0
  return {
      "config": which, "image_size": s, "model_channels": int(config.model.model_channels),
      "num_classes": k, "params_M": round(sum(np.prod(x.shape) for x in
                                              jax.tree.leaves(abstract.params)) / 1e6, 3),
      "platform": jax.devices()[0].platform, "devices": jax.device_count(),
      "train_batch": b, "train_steps_timed": train_steps,
      "train_images_per_s": round(b * train_steps / train_dt, 3),
      "train_steps_per_s": round(train_steps / train_dt, 4),
      "sample_batch": sb, "sample_steps": 25, "guidance_scale": 1.5,
      "sample_images_per_s": round(sb * sample_batches / sample_dt, 4),
      "init_s": round(init_s, 1), "train_compile_s": round(compile_s, 1),
      "sample_compile_s": round(sample_compile_s, 1),
      "cpu_load_avg_1m": round(os.getloadavg()[0], 1),
  }


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--which", default="demo,64px")
  p.add_argument("--train_steps", type=int, default=10)
  p.add_argument("--sample_batches", type=int, default=2)
  args = p.parse_args()
  results = []
  for which in args.which.split(","):
    r = bench(which, args.train_steps, args.sample_batches)
    print(json.dumps(r), flush=True)
    results.append(r)
  print(json.dumps(results, indent=1))


if __name__ == "__main__":
  main()
