r"""Our train step, forward and sampler against the official PyTorch SCDM code (JSON).

  python bench/bench_vs_official.py                 # every row, each in a fresh process
  python bench/bench_vs_official.py --rows S_train,S_sample --reps 5
  python bench/bench_vs_official.py --official_repo /path/to/SCDM   # official runs beside ours
  python bench/bench_vs_official.py --xla_default   # XLA's CPU default (YNNPACK convolutions)

Rows (issue 17's table; configs with the same parameter counts as the official runs):
  L_train   64 px, 64 ch, mult 1,2,3,4, attention 32/16/8, 151 classes, batch 4 (49.65 M)
  L_forward the same UNet, one forward of the batch of 4
  S_train   32 px, 32 ch, mult 1,2,2,2, attention 16/8, 8 classes, batch 16 (9.21 M)
  S_sample  25-step guided sampling of 16 maps (ddim25, guidance 1.5, batched guidance)
The train step is the real one (label diffusion, hybrid loss, guidance drop, AdamW, EMA,
NaN guard). Each row prints one JSON object: median and min over `--reps` timed repetitions
after a warm-up, the compile time, the state-initialisation time, peak RSS of its process,
XLA's FLOP count and the achieved GFLOP/s beside `gemm_gflops` (a 2048^3 matrix product
timed in the same process: the machine's practical fp32 ceiling at that moment), and
`official_*`: the official code's figures. With `--official_repo` the official code
(bench/official_torch.py) runs just before and just after each of our rows and the ratio
uses the mean of those two medians: this VM's speed drifts by 10-30 % within minutes, so
only figures taken side by side compare. Without it, the stored OFFICIAL figures below
serve (measured on the 2-core development VM, AMD EPYC Zen 5, on 2026-12-08; torch 2.13
CPU, oneDNN, 2 threads). Absolute times hold only on the machine that measured them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]

# The official code on the development VM (2 vCPUs, AMD EPYC Zen 5), 2026-12-08: the mean
# of the two runs that bracketed ours (results/bench_vs_official_cpu.json); seconds per call
# and peak RSS in GB. Issue 17's figures, from an earlier VM, were 4.73, 1.65, 1.43, 28.0 s.
OFFICIAL = {
    "L_train": dict(median_s=3.55, peak_rss_gb=2.47),
    "L_forward": dict(median_s=1.373, peak_rss_gb=0.68),
    "S_train": dict(median_s=1.084, peak_rss_gb=1.06),
    "S_sample": dict(median_s=20.2, peak_rss_gb=0.39),
}
# --xla_default: XLA's own CPU default, YNNPACK convolutions included (compile_options.py).
XLA_DEFAULT_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type="
                     "individual_dot,reduce,individual_convolution")


def _gemm_gflops() -> float:
  """The machine's practical fp32 ceiling: a 2048^3 matrix product, best of 5."""
  import jax
  import jax.numpy as jnp
  a = jnp.ones((2048, 2048), jnp.float32)
  mm = jax.jit(lambda a: a @ a)
  jax.block_until_ready(mm(a))
  best = min(_time(lambda: jax.block_until_ready(mm(a)), 5))
  return 2 * 2048 ** 3 / best / 1e9


def _preset(name):
  spec = importlib.util.spec_from_file_location(f"bench_cfg_{name}",
                                                REPO / "configs" / f"{name}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(None)


def config_for(row: str):
  if row.startswith("L_"):
    c = _preset("ade20k")
    c.data.image_size = 64
    c.model.model_channels = 64
    c.model.channel_mult = (1, 2, 3, 4)
    c.model.attention_resolutions = (2, 4, 8)
    c.train.batch_size = 4
  else:
    c = _preset("demo")
    c.data.num_classes = 8
    c.model.channel_mult = (1, 2, 2, 2)
    c.model.num_res_blocks = 2
    c.model.attention_resolutions = (2, 4)
    c.train.batch_size = 16
    c.sample.batch_size = 16
  c.model.dtype = "float32"
  c.model.remat = False
  c.diffusion.label_schedule = "uniform"  # no psi file; costs what classwise costs
  c.sample.respacing = "ddim25"
  c.sample.guidance_scale = 1.5
  c.sample.dynamic_threshold = 0.95
  c.sample.extrapolation = 0.8
  return c


def _flops(compiled) -> float | None:
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0)) or None
  except Exception:  # pylint: disable=broad-except
    return None


def _memory(compiled) -> dict:
  """XLA's own buffer estimate of the program (GB): arguments, outputs, temporaries."""
  try:
    m = compiled.memory_analysis()
    return {"xla_argument_gb": round(m.argument_size_in_bytes / 2**30, 3),
            "xla_output_gb": round(m.output_size_in_bytes / 2**30, 3),
            "xla_temp_gb": round(m.temp_size_in_bytes / 2**30, 3)}
  except Exception:  # pylint: disable=broad-except
    return {}


def _time(fn, reps: int) -> list[float]:
  out = []
  for _ in range(reps):
    t0 = time.perf_counter()
    fn()
    out.append(time.perf_counter() - t0)
  return out


def _compile(row, config, graphs, st, shardings, abstract, schedule, batch, mesh):
  """The row's compiled program, a function that runs it once, and how many times the
  program runs its loop body (XLA's cost analysis counts a loop body once)."""
  import jax
  from flax import nnx
  from scdm_jax import compile_options
  from scdm_jax import recipe
  from scdm_jax.diffusion import label_diffusion
  from scdm_jax.inference import sampler
  from scdm_jax.training import step as step_lib

  k, b = int(config.data.num_classes), int(config.train.batch_size)
  loop_trips = 1
  if row.endswith("_train"):
    compiled, _ = step_lib.compile_train_step(config, graphs, recipe.make_diffusion(config),
                                              schedule, mesh, shardings, abstract, b)
    holder = [st]

    def call():
      holder[0], m = compiled(holder[0], batch)
      jax.block_until_ready(m)
  elif row.endswith("_forward"):
    cond = label_diffusion.condition(batch["label"], k, None)
    t = jax.numpy.full((b,), 500, jax.numpy.int32)

    def forward(params, x, cond, t):
      return nnx.merge(graphs.model, params)(x, t, cond)
    compiled = jax.jit(forward).lower(st.params, batch["image"], cond, t).compile(
        compile_options.compiler_options())

    def call():
      jax.block_until_ready(compiled(st.params, batch["image"], cond, t))
  else:
    fn, diffusion = sampler.make_sample_fn(config, graphs, mesh, shardings.params, schedule)
    loop_trips = diffusion.num_timesteps  # the chain is one scan of the network
    labels = {"label": batch["label"]}
    key = jax.random.key(0)
    compiled = fn.lower(st.ema, labels, key).compile()

    def call():
      jax.block_until_ready(compiled(st.ema, labels, key))
  return compiled, call, loop_trips


def run_row(row: str, reps: int, conv_grad: str = "auto",
            dense_train_max_classes: int | None = None) -> dict:
  import jax
  import numpy as np

  sys.path.insert(0, str(REPO))
  from scdm_jax import recipe, sharding
  from scdm_jax import state as state_lib

  config = config_for(row)
  config.train.conv_weight_grad = conv_grad
  if dense_train_max_classes is not None:
    config.model.dense_train_max_classes = dense_train_max_classes
  mesh = sharding.make_mesh(config.mesh)
  s, k = int(config.data.image_size), int(config.data.num_classes)
  b = int(config.train.batch_size)
  rng = np.random.default_rng(0)
  host = {"image": rng.uniform(-1, 1, (b, s, s, 3)).astype(np.float32),
          "label": rng.integers(0, k, (b, s, s)).astype(np.int32)}
  bsh = sharding.batch_sharding(mesh)
  batch = sharding.device_put_tree(host, {key: bsh for key in host})
  schedule = recipe.make_label_schedule(config, recipe.resolve_psi(config))

  t0 = time.perf_counter()
  graphs, st, shardings = state_lib.create_train_state(config, mesh, 0)
  jax.block_until_ready(st)
  init_s = time.perf_counter() - t0
  _, abstract = state_lib.graphs_and_abstract(config)

  t0 = time.perf_counter()
  compiled, call, loop_trips = _compile(row, config, graphs, st, shardings, abstract,
                                        schedule, batch, mesh)
  compile_s = time.perf_counter() - t0

  rss_compiled_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  call()  # warm-up
  times = _time(call, reps)
  flops = _flops(compiled)
  flops = flops * loop_trips if flops else None
  median = statistics.median(times)
  official = OFFICIAL[row]
  params_m = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params)) / 1e6
  peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  return {
      "row": row, "conv_grad": conv_grad,
      "dense_train_max_classes": int(config.model.dense_train_max_classes), "params_M": round(params_m, 2), "batch": b,
      "image_size": s, "num_classes": k, "platform": jax.devices()[0].platform,
      "devices": jax.device_count(),
      "reps": reps, "median_s": round(median, 3), "min_s": round(min(times), 3),
      "compile_s": round(compile_s, 1), "init_s": round(init_s, 1),
      "peak_rss_gb": round(peak_gb, 2), "peak_rss_after_compile_gb": round(rss_compiled_gb, 2),
      **_memory(compiled),
      "gflop": round(flops / 1e9, 1) if flops else None,
      "achieved_gflops": round(flops / median / 1e9, 1) if flops else None,
      "gemm_gflops": round(_gemm_gflops(), 1),
      "ynn_convolutions": "individual_convolution" in os.environ.get("XLA_FLAGS", ""),
      "official_median_s": official["median_s"],
      "official_peak_rss_gb": official["peak_rss_gb"],
      "speedup_vs_official": round(official["median_s"] / median, 2),
      "load_avg_1m": round(os.getloadavg()[0], 2),
  }


def _json_line(cmd, env, what: str) -> dict:
  """Runs `cmd` in a fresh process (its peak RSS is its own); its last JSON line."""
  out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
  lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
  if out.returncode or not lines:
    sys.exit(f"bench_vs_official.py: {what} failed:\n{out.stderr[-3000:]}")
  return json.loads(lines[-1])


def _with_official(ours: dict, before: dict, after: dict) -> dict:
  """Our row with the official code's runs just before and after it on this machine."""
  official_s = statistics.mean([before["median_s"], after["median_s"]])
  return dict(ours, official_median_s=round(official_s, 3),
              official_runs_s=[before["median_s"], after["median_s"]],
              official_peak_rss_gb=max(before["peak_rss_gb"], after["peak_rss_gb"]),
              official_measured="side by side (official_torch.py before and after)",
              speedup_vs_official=round(official_s / ours["median_s"], 2))


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--rows", default=",".join(OFFICIAL))
  p.add_argument("--reps", type=int, default=5)
  p.add_argument("--conv_grad", choices=("auto", "xla", "taps"), default="auto",
                 help="train.conv_weight_grad: auto (= xla, models/conv.py), xla or taps")
  p.add_argument("--dense_train_max_classes", type=int, default=None,
                 help="override model.dense_train_max_classes (0 = the lookup in training)")
  p.add_argument("--xla_default", action="store_true",
                 help="compile with XLA's CPU default (YNNPACK convolutions) instead of "
                      "scdm_jax/compile_options.py's Eigen convolutions")
  p.add_argument("--official_repo", default="",
                 help="a copy of the official code (see official_torch.py): each row then runs "
                      "it just before and after ours, and the ratio uses those runs instead "
                      "of the stored OFFICIAL figures")
  p.add_argument("--one", help=argparse.SUPPRESS)  # run one row in this process
  args = p.parse_args()
  if args.one:
    print(json.dumps(run_row(args.one, args.reps, args.conv_grad,
                             args.dense_train_max_classes)), flush=True)
    return
  env = dict(os.environ)
  if args.xla_default:
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {XLA_DEFAULT_FLAGS}".strip()
  extra = ([] if args.dense_train_max_classes is None
           else ["--dense_train_max_classes", str(args.dense_train_max_classes)])
  official = [sys.executable, str(REPO / "bench" / "official_torch.py"),
              "--official_repo", args.official_repo, "--reps", str(args.reps), "--one"]
  results = []
  for row in args.rows.split(","):
    if row not in OFFICIAL:
      sys.exit(f"bench_vs_official.py: unknown row {row!r}; use some of {','.join(OFFICIAL)}")
    # This VM's speed drifts by 10-30 % within minutes: the official runs bracket ours.
    if args.official_repo:
      before = _json_line(official + [row], os.environ, f"official row {row}")
    ours = _json_line([sys.executable, __file__, "--one", row, "--reps", str(args.reps),
                       "--conv_grad", args.conv_grad] + extra, env, f"row {row}")
    if args.official_repo:
      ours = _with_official(ours, before,
                            _json_line(official + [row], os.environ, f"official row {row}"))
    results.append(ours)
    print(json.dumps(ours), flush=True)
  print(json.dumps(results, indent=1))


if __name__ == "__main__":
  main()
