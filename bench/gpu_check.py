r"""What a lent GPU machine should be checked for, in one run of a few minutes; one JSON.

  bench/gpu_check.sh [out.json]                       # on the GPU machine (<= 8 minutes)
  python bench/gpu_check.py --tiny --out check.json   # anywhere (the CPU test runs this)

Sections, each recorded as it finishes (the JSON is rewritten after each, so a timeout
keeps what was done; a section that fails records its error and the next one runs):
  env          python, jax/jaxlib/flax/optax/orbax versions, backend, devices (kind, compute
               capability), whether bfloat16 is native (scdm_jax/accelerator.py).
  train        the published SCDM UNet (configs/ade20k.py: 256 px, 256 channels, remat,
               bfloat16; label_schedule=uniform: no psi file, same cost) on a synthetic
               batch: compile time, steps/s and images/s after it, peak device memory.
  determinism  the same compiled step twice from one state and batch: bitwise-equal loss
               and parameters?
  sample       the 25-step recipe (ddim25, guidance 1.5, dynamic threshold, extrapolation)
               on the trained-for-a-few-steps EMA: compile time, images/s.
  paint        a Paint-by-Example sample (25 PNDM steps, guidance 5) at tiny random weights
               (the released block layout, every width narrowed): time and finiteness.
  imports      whether TensorFlow or torch got imported (neither is needed here; the GPU
               machine may have only jax + flax).
--tiny: configs/tiny.py, 16 px and a 64 px paint sample, so it runs on a CPU in a minute.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import pathlib
import platform
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from scdm_jax import accelerator  # noqa: E402
from scdm_jax import recipe  # noqa: E402
from scdm_jax import sharding  # noqa: E402
from scdm_jax import state as state_lib  # noqa: E402
from scdm_jax.inference import paint as paint_lib  # noqa: E402
from scdm_jax.inference import sampler  # noqa: E402
from scdm_jax.io import atomic  # noqa: E402
from scdm_jax.training import step as step_lib  # noqa: E402
import bench_paint  # noqa: E402  # its random-weight PaintPipeline builder

# The released Paint-by-Example layout (block types, depths of the encoder/decoder blocks)
# with every width at its minimum: a sample in seconds, not a quality check.
TINY_PAINT = {
    "unet": {"block_out_channels": [32, 32, 32, 32], "layers_per_block": 1,
             "cross_attention_dim": 32},
    "vae": {"block_out_channels": [32, 32, 32, 32], "layers_per_block": 1},
    "image_encoder": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                      "num_attention_heads": 2, "projection_dim": 32},
}


def _config(name: str):
  spec = importlib.util.spec_from_file_location(f"cfg_{name}", REPO / "configs" / f"{name}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(None)


def _versions() -> dict:
  out = {"python": platform.python_version()}
  for name in ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "numpy"):
    try:
      out[name] = importlib.import_module(name).__version__
    except Exception as err:  # pylint: disable=broad-except  # report, do not stop
      out[name] = f"unavailable: {err}"
  return out


def section_env(ctx) -> dict:
  devices = jax.devices()
  return {"versions": _versions(), "backend": jax.default_backend(),
          "device_count": jax.device_count(), "process_count": jax.process_count(),
          "devices": [{"kind": d.device_kind,
                       "compute_capability": getattr(d, "compute_capability", None)}
                      for d in devices[:8]],
          "bf16_not_native": accelerator.bf16_not_native(jax.default_backend(), devices),
          "cpu_count": os.cpu_count()}


def _peak_memory_gib() -> float | None:
  stats = jax.local_devices()[0].memory_stats()
  if not stats:
    return None  # the CPU backend keeps none
  return round(stats.get("peak_bytes_in_use", 0) / 2**30, 3)


def section_train(ctx) -> dict:
  a = ctx.args
  config = _config("tiny" if a.tiny else "ade20k")
  config.diffusion.label_schedule = "uniform"
  config.diffusion.psi_path = ""
  mesh = sharding.make_mesh(config.mesh)
  shards = sharding.num_batch_shards(mesh)
  b = -(-a.batch // shards) * shards
  config.train.batch_size = b
  s, k = int(config.data.image_size), int(config.data.num_classes)
  rng = np.random.default_rng(0)
  host = {"image": rng.uniform(-1, 1, (b, s, s, 3)).astype(np.float32),
          "label": rng.integers(0, k, (b, s, s)).astype(np.int32)}
  if config.data.use_instance:
    host["edge"] = np.zeros((b, s, s, 1), np.float32)
  schedule = recipe.make_label_schedule(config, recipe.resolve_psi(config))
  diffusion = recipe.make_diffusion(config)
  graphs, st, shardings = state_lib.create_train_state(config, mesh, 0)
  _, abstract = state_lib.graphs_and_abstract(config)
  t0 = time.perf_counter()
  compiled, _ = step_lib.compile_train_step(config, graphs, diffusion, schedule, mesh,
                                            shardings, abstract, b // jax.process_count())
  compile_s = time.perf_counter() - t0
  bsh = sharding.batch_sharding(mesh)
  batch = sharding.device_put_tree(host, {key: bsh for key in host})
  st, m = compiled(st, batch)
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for _ in range(a.train_steps):
    st, m = compiled(st, batch)
  jax.block_until_ready((st, m))
  dt = time.perf_counter() - t0
  ctx.train = (config, graphs, st, shardings, compiled, batch, host, mesh, schedule)
  return {"config": "tiny" if a.tiny else "ade20k", "image_size": s,
          "model_channels": int(config.model.model_channels),
          "dtype": str(config.model.dtype), "remat": bool(config.model.remat),
          "params_M": round(sum(int(np.prod(x.shape)) for x in
                                jax.tree.leaves(abstract.params)) / 1e6, 2),
          "global_batch": b, "steps_timed": a.train_steps, "compile_s": round(compile_s, 1),
          "steps_per_s": round(a.train_steps / dt, 3),
          "images_per_s": round(b * a.train_steps / dt, 2),
          "loss": float(m["loss"]), "peak_device_memory_GiB": _peak_memory_gib()}


def section_determinism(ctx) -> dict:
  config, graphs, st, shardings, compiled, batch, host, mesh, _ = ctx.train
  runs = []
  for _ in range(2):
    start = jax.tree.map(jnp.copy, st)  # the step donates its state
    out, m = compiled(start, batch)
    runs.append((jax.device_get(m["loss"]), jax.device_get(out.params)))
  same_loss = bool(np.array_equal(runs[0][0], runs[1][0]))
  diffs = [float(np.max(np.abs(np.asarray(x, np.float32) - np.asarray(y, np.float32))))
           for x, y in zip(jax.tree.leaves(runs[0][1]), jax.tree.leaves(runs[1][1]))]
  return {"loss_bitwise_equal": same_loss, "params_bitwise_equal": max(diffs) == 0.0,
          "params_max_abs_diff": max(diffs),
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def section_sample(ctx) -> dict:
  config, graphs, st, shardings, _, _, host, mesh, schedule = ctx.train
  config.sample.respacing = "ddim25"
  config.sample.guidance_scale = 1.5
  config.sample.dynamic_threshold = 0.95
  config.sample.extrapolation = 0.8
  shards = sharding.num_batch_shards(mesh)
  sb = -(-ctx.args.sample_batch // shards) * shards
  fn, _ = sampler.make_sample_fn(config, graphs, mesh, shardings.params, schedule)
  cond = {k: np.resize(v, (sb,) + v.shape[1:]) for k, v in host.items() if k != "image"}
  cond = sharding.device_put_tree(cond, {k: sharding.batch_sharding(mesh) for k in cond})
  key = jax.random.key(0)
  t0 = time.perf_counter()
  jax.block_until_ready(fn(st.ema, cond, key))
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for i in range(ctx.args.sample_batches):
    out = fn(st.ema, cond, jax.random.fold_in(key, i))
  jax.block_until_ready(out)
  dt = time.perf_counter() - t0
  return {"steps": 25, "batch": sb, "first_call_s": round(compile_s, 1),
          "images_per_s": round(sb * ctx.args.sample_batches / dt, 3),
          "finite": bool(jnp.isfinite(out).all()), "peak_device_memory_GiB": _peak_memory_gib()}


def section_paint(ctx) -> dict:
  size = 64 if ctx.args.tiny else 256
  configs = paint_lib.released_pipeline_configs()
  for comp, over in TINY_PAINT.items():
    configs[comp].update(copy.deepcopy(over))
  configs["unet"]["sample_size"] = size // 8
  configs["vae"]["sample_size"] = size
  # XLA:CPU cannot run bf16 attention in the CLIP tower (see bench_paint.py): fp32 there.
  dtype = jnp.bfloat16 if jax.default_backend() == "gpu" else jnp.float32
  pipe = bench_paint._random_pipeline(configs, dtype)  # pylint: disable=protected-access
  images, masks, exemplars = bench_paint._inputs(2, size)  # pylint: disable=protected-access
  key = jax.random.key(0)
  times = []
  for _ in range(2):  # the first call compiles
    t0 = time.perf_counter()
    out = pipe.paint(images, masks, exemplars, key=key, num_steps=25, guidance_scale=5.0,
                     sampler="pndm")
    times.append(time.perf_counter() - t0)
  out = np.asarray(out)
  return {"image_size": size, "batch": 2, "steps": 25, "dtype": str(jnp.dtype(dtype)),
          "first_call_s": round(times[0], 2), "sample_s": round(times[1], 3),
          "output_shape": list(out.shape), "finite": bool(np.isfinite(out).all()),
          "param_counts": pipe.param_counts()}


def section_imports(ctx) -> dict:
  return {"tensorflow_imported": "tensorflow" in sys.modules,
          "torch_imported": "torch" in sys.modules}


SECTIONS = (("env", section_env), ("train", section_train),
            ("determinism", section_determinism), ("sample", section_sample),
            ("paint", section_paint), ("imports", section_imports))


class _Context:
  def __init__(self, args):
    self.args = args
    self.train = None


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default="gpu_check.json")
  p.add_argument("--tiny", action="store_true", help="tiny models (a CPU runs it)")
  p.add_argument("--batch", type=int, default=8, help="global train batch")
  p.add_argument("--train_steps", type=int, default=10)
  p.add_argument("--sample_batch", type=int, default=8)
  p.add_argument("--sample_batches", type=int, default=2)
  p.add_argument("--fast_compile", action="store_true",
                 help="jax_disable_most_optimizations (tests: compile time over speed)")
  args = p.parse_args(argv)
  if args.fast_compile:
    jax.config.update("jax_disable_most_optimizations", True)
  ctx, result, t_start = _Context(args), {"tiny": args.tiny}, time.perf_counter()
  for name, fn in SECTIONS:
    t0 = time.perf_counter()
    try:
      result[name] = fn(ctx)
    except Exception as err:  # pylint: disable=broad-except  # record it, run the rest
      result[name] = {"error": f"{type(err).__name__}: {err}",
                      "traceback": traceback.format_exc()[-2000:]}
    result[name]["section_s"] = round(time.perf_counter() - t0, 1)
    result["total_s"] = round(time.perf_counter() - t_start, 1)
    atomic.write_json(args.out, result)
    print(f"gpu_check: {name} done in {result[name]['section_s']} s", flush=True)
  failed = [n for n, _ in SECTIONS if "error" in result[n]]
  print(json.dumps({k: v for k, v in result.items() if k != "env"}, default=str)[:4000])
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
