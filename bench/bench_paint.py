r"""Paint by Example sampling benchmark: parameter counts, 50-step guided sample time, memory.

  python bench/bench_paint.py                    # CPU: reduced config, fp32 and bf16
  python bench/bench_paint.py --image_size 64    # quicker
  python bench/bench_paint.py                    # GPU: the released config, 512 px, bf16

Prints one JSON object:
  released: the released configuration's parameter counts, from `nnx.eval_shape`
    (`pbe_import.released_param_report()`; nothing is allocated).
  runs: one entry per (configuration, dtype), each run in a fresh subprocess so that its
    peak memory is its own:
    - GPU (`jax.default_backend() == "gpu"`): the released architecture at 512 px in
      bfloat16 (compute and parameters), random weights initialised straight on the
      device (no download); one full 50-step PNDM chain with guidance 5
      is timed (fastest of `--repeats`) after a compiling call; peak device memory from `memory_stats()`.
    - CPU: the released architecture with narrower widths (`CPU_CONFIGS`, same depths,
      blocks, heads and token counts) at `--image_size`, float32 and bfloat16 side by
      side. Two chains of `--steps` = (a, b) PNDM steps are each run 1 + `--repeats` times
      (the first call compiles; the fastest of the others counts); their difference gives
      the time of one guided UNet call
      (batch 2B), the rest is the fixed cost (CLIP encoder, VAE encode and decode), and
      the 50-step time (51 UNet calls: PLMS warm-up) is fixed + 51 x per call. Compile
      time is reported separately. Peak RSS from `resource.getrusage` (includes compiling).
  host: backend, device kind, CPU count and load average (the timings are only as quiet
    as the machine).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, REPO)

# The released architecture with every width narrowed (depths, block types, head counts,
# patch grid and token counts kept): the CPU stand-in for the 1.2 G-parameter model.
CPU_CONFIGS = {
    "unet": {"block_out_channels": [64, 128, 256, 256], "cross_attention_dim": 256},
    "vae": {"block_out_channels": [32, 64, 128, 128]},
    "image_encoder": {"hidden_size": 256, "intermediate_size": 1024, "num_attention_heads": 4,
                      "projection_dim": 256},
}


def _configs(reduced: bool, image_size: int) -> dict:
  from scdm_jax.inference import paint  # pylint: disable=g-import-not-at-top
  cfgs = paint.released_pipeline_configs()
  if reduced:
    for comp, over in CPU_CONFIGS.items():
      cfgs[comp].update(copy.deepcopy(over))
  cfgs["unet"]["sample_size"] = image_size // 8
  cfgs["vae"]["sample_size"] = image_size
  return cfgs


def _random_pipeline(configs: dict, dtype, encoder_dtype=None):
  """A PaintPipeline with random weights drawn on the device.

  Kernels are normal / sqrt(fan-in), norm scales 1, biases 0; on a GPU each leaf is drawn
  by a small jitted program straight into the replicated sharding (jitting the modules'
  own initialisers makes one XLA program with hundreds of RNG calls, whose CPU compile
  took 7 minutes here), on the CPU by numpy (the PaintPipeline places it).
  """
  import math  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from scdm_jax import sharding  # pylint: disable=g-import-not-at-top
  from scdm_jax.inference import paint  # pylint: disable=g-import-not-at-top
  unet_cfg, vae_cfg, clip_cfg, sched, pre = paint.parse_configs(configs, "bench")
  kw = dict(dtype=dtype, param_dtype=dtype)
  enc_kw = dict(kw) if encoder_dtype is None else dict(dtype=encoder_dtype,
                                                        param_dtype=encoder_dtype)
  modules = nnx.eval_shape(lambda: (
      paint.SDUNet(unet_cfg, rngs=nnx.Rngs(0), **kw),
      paint.AutoencoderKL(vae_cfg, rngs=nnx.Rngs(0), **kw),
      paint.PaintByExampleImageEncoder(clip_cfg, rngs=nnx.Rngs(0), **enc_kw)))
  state = nnx.state(modules)
  paths, treedef = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(state))

  mesh = sharding.make_mesh({"data": -1, "fsdp": 1})

  def leaf(key, i, shape, dtype, kind):
    if kind == "scale":
      return jnp.ones(shape, dtype)
    if kind == "bias":
      return jnp.zeros(shape, dtype)
    fan_in = math.prod(shape[:-1]) if len(shape) >= 2 else 1
    z = jax.random.normal(jax.random.fold_in(key, i), shape, jnp.float32)
    return (z / math.sqrt(fan_in)).astype(dtype)

  # GPU: one small program per distinct (shape, kind), each leaf drawn where it will
  # live. CPU (host == device): numpy draws, which need no compiling at all.
  on_device = jax.default_backend() != "cpu"
  leaf = jax.jit(leaf, static_argnums=(2, 3, 4), out_shardings=sharding.replicated(mesh))
  key, rng = jax.random.key(0), np.random.default_rng(0)
  out = []
  for i, (path, x) in enumerate(paths):
    name = str(path[-1].key)
    kind = name if x.ndim <= 1 and name in ("scale", "bias") else "normal"
    if on_device:
      out.append(leaf(key, i, tuple(x.shape), x.dtype, kind))
    elif kind == "normal":
      fan_in = math.prod(x.shape[:-1]) if x.ndim >= 2 else 1
      out.append((rng.standard_normal(x.shape, np.float32) / math.sqrt(fan_in))
                 .astype(x.dtype))
    else:
      out.append(np.full(x.shape, 1.0 if kind == "scale" else 0.0, x.dtype))
  params = jax.tree_util.tree_unflatten(treedef, out)
  nnx.replace_by_pure_dict(state, params)
  nnx.update(modules, state)
  return paint.PaintPipeline(*modules, unet_config=unet_cfg, vae_config=vae_cfg,
                             clip_config=clip_cfg, scheduler_config=sched, preprocess=pre,
                             mesh=mesh, configs=configs, source="random (bench)")


def _inputs(batch: int, size: int, seed: int = 0):
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
  masks = np.zeros((batch, size, size), np.uint8)
  masks[:, size // 4:3 * size // 4, size // 4:3 * size // 4] = 255
  exemplars = [rng.integers(0, 256, (size // 2, size // 3, 3), dtype=np.uint8)
               for _ in range(batch)]
  return images, masks, exemplars


def child(args) -> dict:
  """One (configuration, dtype) run, in this process."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  gpu = jax.default_backend() == "gpu"
  dtype = jnp.dtype(args.child)
  size = 512 if gpu else args.image_size
  configs = _configs(reduced=not gpu, image_size=size)
  # XLA:CPU cannot run the CLIP tower's bf16 attention (257 tokens): "Algorithm not
  # supported by the ElementalIrEmitter: ALG_DOT_BF16_BF16_F32"; there the encoder (one
  # call per sample) stays float32.
  enc_dtype = jnp.float32 if not gpu and dtype == jnp.bfloat16 else None
  t0 = time.perf_counter()
  pipe = _random_pipeline(configs, dtype, enc_dtype)
  jax.block_until_ready(pipe._state)  # pylint: disable=protected-access
  init_s = time.perf_counter() - t0
  images, masks, exemplars = _inputs(args.batch, size)
  key = jax.random.key(0)

  def call(steps):
    t = time.perf_counter()
    out = pipe.paint(images, masks, exemplars, key=key, num_steps=steps, guidance_scale=5.0,
                     sampler="pndm")
    return time.perf_counter() - t, out

  def run(steps):
    """(first call: compile + run, the fastest of `--repeats` further calls, output)."""
    first, _ = call(steps)
    times, outs = zip(*[call(steps) for _ in range(args.repeats)])
    return first, min(times), outs[-1]

  calls = lambda steps: steps + 1  # PNDM with skip_prk_steps: one extra warm-up call
  r = {"config": "released" if gpu else "released_narrow", "image_size": size,
       "batch": args.batch, "dtype": str(dtype), "sampler": "pndm", "guidance_scale": 5.0,
       "image_encoder_dtype": str(jnp.dtype(enc_dtype or dtype)),
       "param_counts": pipe.param_counts(), "init_s": round(init_s, 2)}
  if gpu:
    first, t50, out = run(50)
    r.update(measured="full 50-step chain", compile_s=round(first - t50, 2),
             sample_s=round(t50, 3), images_per_s=round(args.batch / t50, 3))
    stats = jax.local_devices()[0].memory_stats() or {}
    r["peak_device_memory_GiB"] = round(stats.get("peak_bytes_in_use", 0) / 2**30, 3)
  else:
    a, b = args.steps
    first_a, ta, _ = run(a)
    first_b, tb, out = run(b)
    per_call = (tb - ta) / (calls(b) - calls(a))
    fixed = ta - calls(a) * per_call
    t50 = fixed + calls(50) * per_call
    r.update(measured=f"chains of {a} and {b} steps, scaled to 50",
             compile_s=round((first_a - ta + first_b - tb) / 2, 2),
             per_guided_unet_call_s=round(per_call, 4), fixed_s=round(fixed, 3),
             est_sample_s=round(t50, 2), est_images_per_s=round(args.batch / t50, 4),
             peak_rss_MiB=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
  r["output_finite"] = bool(jnp.isfinite(out).all())
  return r


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--image_size", type=int, default=128, help="CPU image size (px)")
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--steps", type=int, nargs=2, default=(1, 4), help="CPU: the two chains")
  p.add_argument("--repeats", type=int, default=2,
                 help="timed calls after the compiling one (the fastest counts)")
  p.add_argument("--dtypes", default=None,
                 help="comma list (default: CPU float32,bfloat16; GPU bfloat16)")
  p.add_argument("--note", default="", help="free text put into the JSON (machine load...)")
  p.add_argument("--child", default=None, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.child:
    print(json.dumps(child(args)), flush=True)
    return
  import jax  # pylint: disable=g-import-not-at-top
  from scdm_jax.models import pbe_import  # pylint: disable=g-import-not-at-top
  gpu = jax.default_backend() == "gpu"
  dtypes = args.dtypes or ("bfloat16" if gpu else "float32,bfloat16")
  result = {
      "released": {"param_counts": pbe_import.released_param_report()["param_counts"],
                   "from": "nnx.eval_shape (nothing allocated)"},
      "host": {"backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
               "cpu_count": os.cpu_count(), "cpu_load_avg_1m_start": round(os.getloadavg()[0], 1)},
      "note": args.note,
      "runs": [],
  }
  for dt in dtypes.split(","):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", dt, "--image_size",
           str(args.image_size), "--batch", str(args.batch), "--steps", *map(str, args.steps),
           "--repeats", str(args.repeats)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
      result["runs"].append({"dtype": dt, "error": proc.stderr.strip().splitlines()[-1:]})
    else:
      result["runs"].append(json.loads(proc.stdout.strip().splitlines()[-1]))
  result["host"]["cpu_load_avg_1m_end"] = round(os.getloadavg()[0], 1)
  print(json.dumps(result))


if __name__ == "__main__":
  main()
