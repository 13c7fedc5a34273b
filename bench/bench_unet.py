"""UNet throughput: forward and forward+backward images/s, with and without the one-hot lookup.

  python bench/bench_unet.py                 # CPU-sized config (64 px, 64 ch, mult 1,2,3,4)
  python bench/bench_unet.py --small --batch 16 --num_classes 8,20,64,151
  python bench/bench_unet.py --published     # the published 256 px config (for a GPU)
  python bench/bench_unet.py --dtype bfloat16 --iters 20

`--num_classes` sweeps the label channels (the one-hot lookup pays at many classes, the
dense conv at few: `UNetConfig.onehot_lookup` is chosen by class count, docs/performance.md).

Prints one JSON object. Parameters are drawn on the host (no random-init compile); the
timed functions are jitted, compiled and warmed up first, then timed over `--iters` calls.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from scdm_jax.models import torch_import  # noqa: E402
from scdm_jax.models.unet import UNetConfig, count_params, init_params_host  # noqa: E402

CPU_CONFIG = UNetConfig(image_size=64, model_channels=64, channel_mult=(1, 2, 3, 4),
                        num_res_blocks=2, attention_resolutions=(2, 4, 8),
                        num_head_channels=64, num_classes=151)
SMALL_CONFIG = UNetConfig(image_size=32, model_channels=32, channel_mult=(1, 2, 2, 2),
                          num_res_blocks=2, attention_resolutions=(2, 4), num_head_channels=64,
                          num_classes=8)  # bench_vs_official.py's S
PUBLISHED = UNetConfig()  # 256 px, 256 ch, mult 1,1,2,2,4,4, attention 8,16,32, L=151


def _time(fn, args, iters):
  out = fn(*args)
  jax.block_until_ready(out)  # compile + warm-up
  out = fn(*args)
  jax.block_until_ready(out)
  t0 = time.perf_counter()
  for _ in range(iters):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - t0) / iters


def bench(cfg: UNetConfig, batch: int, iters: int, seed: int = 0) -> dict:
  params = init_params_host(cfg, seed)
  rng = np.random.default_rng(seed)
  # Perturb the zero-init layers so that the work is not trivially zero.
  params = jax.tree.map(lambda p: p + 0.01 * rng.standard_normal(p.shape).astype(np.float32),
                        params)
  model = torch_import.unet_from_params(cfg, params)
  graphdef, state = nnx.split(model)
  s = cfg.image_size
  x = jnp.asarray(rng.standard_normal((batch, s, s, 3)), jnp.float32)
  t = jnp.asarray(rng.integers(0, 1000, (batch,)), jnp.int32)
  idx = rng.integers(0, cfg.num_classes, (batch, s, s))
  cond = np.eye(cfg.num_classes, dtype=np.float32)[idx]
  cond[:, : s // 8] = 0  # some unknown (all-zero) pixels
  cond = jnp.asarray(cond)

  @jax.jit
  def forward(state, x, t, cond):
    return nnx.merge(graphdef, state)(x, t, cond)

  @jax.jit
  def train_step(state, x, t, cond):
    def loss(s):
      return jnp.mean(jnp.square(nnx.merge(graphdef, s)(x, t, cond)))
    return jax.value_and_grad(loss)(state)

  fwd_s = _time(forward, (state, x, t, cond), iters)
  bwd_s = _time(train_step, (state, x, t, cond), iters)
  return {"forward_images_per_s": batch / fwd_s, "forward_s_per_batch": fwd_s,
          "fwd_bwd_images_per_s": batch / bwd_s, "fwd_bwd_s_per_batch": bwd_s}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--published", action="store_true", help="256 px published config")
  parser.add_argument("--small", action="store_true", help="32 px, 32 ch (bench_vs_official S)")
  parser.add_argument("--num_classes", default="",
                      help="comma-separated label-channel counts to sweep (default: the config's)")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--iters", type=int, default=5)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--remat", action="store_true")
  args = parser.parse_args(argv)
  base = PUBLISHED if args.published else SMALL_CONFIG if args.small else CPU_CONFIG
  base = dataclasses.replace(base, dtype=args.dtype, remat=args.remat)
  counts = [int(k) for k in args.num_classes.split(",")] if args.num_classes else [base.num_classes]
  by_k = {}
  for k in counts:
    results = {}
    for lookup in (True, False):
      cfg = dataclasses.replace(base, num_classes=k, onehot_lookup=lookup)
      results["onehot_lookup" if lookup else "dense_conv"] = bench(cfg, args.batch, args.iters)
    results["speedup_forward"] = (results["onehot_lookup"]["forward_images_per_s"]
                                  / results["dense_conv"]["forward_images_per_s"])
    results["speedup_fwd_bwd"] = (results["onehot_lookup"]["fwd_bwd_images_per_s"]
                                  / results["dense_conv"]["fwd_bwd_images_per_s"])
    by_k[k] = results
    print(json.dumps({"num_classes": k, **results}), file=sys.stderr, flush=True)
  report = {
      "config": base.to_dict(),
      "params": count_params(base),
      "batch": args.batch,
      "iters": args.iters,
      "backend": jax.default_backend(),
      "device": str(jax.devices()[0].device_kind),
      "load_avg_1m": round(os.getloadavg()[0], 2),
      # speedup_* > 1: the lookup is faster than the dense conv at that class count.
      "by_num_classes": by_k,
  }
  print(json.dumps(report, indent=1))


if __name__ == "__main__":
  main()
