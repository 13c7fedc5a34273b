r"""Times the official PyTorch SCDM code (github.com/mlvlab/SCDM) on bench_vs_official.py's rows.

  python bench/official_torch.py --official_repo /tmp/SCDM               # every row
  python bench/official_torch.py --official_repo /tmp/SCDM --rows S_train,S_sample --reps 5

--official_repo is a checkout (or copy) of mlvlab/SCDM: the folder holding guided_diffusion/.
SCDM's copy lacks four files of openai/guided-diffusion that it imports (nn.py, fp16_util.py,
losses.py, resample.py): put those, unchanged, into its guided_diffusion/ as well. Nothing of
that code is kept in this repository; this script imports it. Its imports that play no part
in these rows (torchvision, the logger) are replaced by stubs here, in sys.modules only.

The rows use the settings of bench_vs_official.config_for, mapped to the official arguments:
  *_train    one TrainLoop.run_step as image_train.py runs it in fp32: one-hot labels, the
             condition dropped with probability diffusion.drop_rate (preprocess_input),
             uniform t, training_losses (hybrid loss: learn_sigma, MSE + VB, label diffusion
             cond_opt=discrete_zero_<label_schedule>), backward, MixedPrecisionTrainer.optimize
             (norms + AdamW at optim.lr), update_ema at optim.ema_decay. Not timed: its
             loss logging (log_loss_dict). Our optim.grad_clip / warmup / ema_warmup have no
             official counterpart and are left out.
  L_forward  one forward of the batch of 4 at t=500 under no_grad (clean one-hot condition).
  S_sample   image_sample.py: p_sample_loop with timestep_respacing=ddim25 (SCDM has no DDIM
             sampler: it is ancestral sampling on the respaced chain, as its 25-step recipe),
             s (guidance), dynamic_threshold and extrapolation in model_kwargs; the guidance is
             two model calls per step (condition, then all-zero condition), as theirs.
Each row runs in a fresh process (its peak RSS is its own): one warm-up, then --reps timed runs.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types

HERE = pathlib.Path(__file__).resolve().parent
ROWS = ("L_train", "L_forward", "S_train", "S_sample")
EXPECTED_PARAMS_M = {"L": 49.65, "S": 9.21}  # the rows' UNet sizes (bench_vs_official.py)


def _import_official(repo: str):
  """guided_diffusion from `repo`, with stubs for the imports these rows never use."""
  sys.path.insert(0, os.path.abspath(repo))
  sys.modules.setdefault("torchvision", types.ModuleType("torchvision"))  # imported, unused
  log = types.ModuleType("guided_diffusion.logger")  # fp16_util logs norms through it
  log.logkv_mean = log.logkv = log.log = lambda *a, **k: None
  sys.modules["guided_diffusion.logger"] = log
  from guided_diffusion import fp16_util, nn, resample, script_util  # pylint: disable=import-outside-toplevel
  return types.SimpleNamespace(fp16_util=fp16_util, nn=nn, resample=resample,
                               script_util=script_util)


def official_args(c, respacing: str = "") -> dict:
  """create_model_and_diffusion's arguments for our config `c` (float32, no checkpointing)."""
  s = int(c.data.image_size)
  assert not c.data.use_instance, "the rows have no instance-edge channel"
  schedule = c.diffusion.label_schedule
  return dict(
      image_size=s, class_cond=True, learn_sigma=int(c.model.out_channels) == 6,
      num_classes=int(c.data.num_classes), no_instance=True,
      num_channels=int(c.model.model_channels), num_res_blocks=int(c.model.num_res_blocks),
      channel_mult=",".join(str(m) for m in c.model.channel_mult),
      num_heads=int(c.model.num_heads), num_head_channels=int(c.model.num_head_channels),
      num_heads_upsample=int(c.model.num_heads_upsample),
      # Ours lists downsample factors, theirs feature-map sizes.
      attention_resolutions=",".join(str(s // d) for d in c.model.attention_resolutions),
      dropout=float(c.model.dropout), diffusion_steps=int(c.diffusion.num_steps),
      noise_schedule=c.diffusion.beta_schedule, timestep_respacing=respacing,
      use_kl=False, predict_xstart=False, rescale_timesteps=False,
      rescale_learned_sigmas=False, use_checkpoint=False,
      use_scale_shift_norm=bool(c.model.use_scale_shift_norm),
      resblock_updown=bool(c.model.resblock_updown), use_fp16=False,
      use_new_attention_order=bool(c.model.use_new_attention_order),
      cond_diffuse=schedule != "none",
      cond_opt="" if schedule == "none" else f"discrete_zero_{schedule}",
      dataset_mode=c.data.name)


def _one_hot(th, labels, k):
  """image_train/image_sample preprocess_input: [B,1,H,W] ids -> [B,K,H,W] one-hot."""
  b, _, h, w = labels.shape
  return th.zeros(b, k, h, w).scatter_(1, labels, 1.0)


def run_row(row: str, reps: int, repo: str, threads: int, label_schedule: str | None,
            batch: int | None, respacing: str | None) -> dict:
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch as th  # pylint: disable=import-outside-toplevel

  sys.path.insert(0, str(HERE))
  from bench_vs_official import OFFICIAL, config_for  # pylint: disable=import-outside-toplevel

  th.set_num_threads(threads)
  th.manual_seed(0)
  np.random.seed(0)
  gd = _import_official(repo)
  c = config_for(row)
  if label_schedule:
    c.diffusion.label_schedule = label_schedule
  s, k = int(c.data.image_size), int(c.data.num_classes)
  sampling = row.endswith("_sample")
  b = batch or int(c.sample.batch_size if sampling else c.train.batch_size)
  args = official_args(c, (respacing or c.sample.respacing) if sampling else "")

  # GaussianDiffusion reads `<dataset_mode>_psiphi.npy` from the working directory whenever
  # cond_opt is set (the uniform schedule loads it too, unused). The real file is not needed
  # for timing: a constant psi of the right length stands in.
  cwd = os.getcwd()
  with tempfile.TemporaryDirectory() as tmp:
    os.chdir(tmp)
    np.save(f"{args['dataset_mode']}_psiphi.npy", np.full(k, 0.5))
    t0 = time.perf_counter()
    model, diffusion = gd.script_util.create_model_and_diffusion(**args)
    init_s = time.perf_counter() - t0
    os.chdir(cwd)
  params_m = sum(p.numel() for p in model.parameters()) / 1e6
  expected = EXPECTED_PARAMS_M[row[0]]
  if abs(params_m - expected) > 0.01:
    print(f"official_torch.py: {row} has {params_m:.2f} M parameters, expected {expected}",
          file=sys.stderr)

  rng = np.random.default_rng(0)
  image = th.from_numpy(rng.uniform(-1, 1, (b, 3, s, s)).astype(np.float32))
  labels = th.from_numpy(rng.integers(0, k, (b, 1, s, s))).long()

  if row.endswith("_train"):
    # TrainLoop (train_util.py) with use_fp16=False, microbatch = batch, ema_rate one value.
    model.train()
    trainer = gd.fp16_util.MixedPrecisionTrainer(model=model, use_fp16=False)
    opt = th.optim.AdamW(trainer.master_params, lr=float(c.optim.lr),
                         weight_decay=float(c.optim.weight_decay))
    ema = copy.deepcopy(trainer.master_params)
    sampler = gd.resample.UniformSampler(diffusion)
    drop_rate, ema_rate = float(c.diffusion.drop_rate), float(c.optim.ema_decay)

    def call():
      y = _one_hot(th, labels, k)  # preprocess_input, with the classifier-free drop
      if drop_rate > 0.0:
        y = y * (th.rand([b, 1, 1, 1]) > drop_rate).float()
      trainer.zero_grad()
      t, weights = sampler.sample(b, image.device)
      losses = diffusion.training_losses(model, image, t, model_kwargs={"y": y})
      trainer.backward((losses["loss"] * weights).mean())
      if trainer.optimize(opt):
        gd.nn.update_ema(ema, trainer.master_params, rate=ema_rate)
  elif row.endswith("_forward"):
    model.eval()
    y = _one_hot(th, labels, k)
    t = th.full((b,), 500, dtype=th.long)

    def call():
      with th.no_grad():
        model(image, t, y=y)
  else:
    model.eval()  # image_sample.py
    y = _one_hot(th, labels, k)

    def call():
      # A fresh dict per chain: p_mean_variance keeps prev_x (extrapolation) in it.
      kw = {"y": y, "s": float(c.sample.guidance_scale),
            "dynamic_threshold": float(c.sample.dynamic_threshold),
            "extrapolation": float(c.sample.extrapolation)}
      diffusion.p_sample_loop(model, (b, 3, s, s), clip_denoised=True, model_kwargs=kw,
                              progress=False)

  call()  # warm-up
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    call()
    times.append(time.perf_counter() - t0)
  return {
      "row": row, "code": "official_torch", "median_s": round(statistics.median(times), 3),
      "min_s": round(min(times), 3), "reps": reps,
      "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
      "params_M": round(params_m, 2), "params_expected_M": expected,
      "params_match": abs(params_m - expected) <= 0.01, "batch": b, "image_size": s,
      "num_classes": k, "cond_opt": args["cond_opt"],
      "respacing": args["timestep_respacing"] or None,
      "steps": diffusion.num_timesteps if sampling else None,
      "init_s": round(init_s, 2), "torch": th.__version__, "threads": th.get_num_threads(),
      "load_avg_1m": round(os.getloadavg()[0], 2),
      "stored_official_median_s": OFFICIAL[row]["median_s"],  # bench_vs_official.OFFICIAL
  }


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--rows", default=",".join(ROWS))
  p.add_argument("--reps", type=int, default=5)
  p.add_argument("--official_repo", required=True,
                 help="folder holding the official guided_diffusion/ package")
  p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
  p.add_argument("--label_schedule", choices=("uniform", "classwise"), default=None,
                 help="cond_opt discrete_zero_<this> (default: the row's config, uniform; "
                      "the published SCDM runs use classwise)")
  p.add_argument("--one", help=argparse.SUPPRESS)  # run one row in this process
  # Smoke tests only (the JSON shows them): a smaller batch, a shorter sampling chain.
  p.add_argument("--batch", type=int, default=None, help=argparse.SUPPRESS)
  p.add_argument("--respacing", default=None, help=argparse.SUPPRESS)
  args = p.parse_args()
  if not (pathlib.Path(args.official_repo) / "guided_diffusion" / "unet.py").is_file():
    sys.exit(f"official_torch.py: no guided_diffusion/unet.py under {args.official_repo}")
  if args.one:
    print(json.dumps(run_row(args.one, args.reps, args.official_repo, args.threads,
                             args.label_schedule, args.batch, args.respacing)), flush=True)
    return
  extra = ["--official_repo", args.official_repo, "--threads", str(args.threads),
           "--reps", str(args.reps)]
  extra += ["--label_schedule", args.label_schedule] if args.label_schedule else []
  extra += ["--batch", str(args.batch)] if args.batch else []
  extra += ["--respacing", args.respacing] if args.respacing else []
  results = []
  for row in args.rows.split(","):
    if row not in ROWS:
      sys.exit(f"official_torch.py: unknown row {row!r}; use some of {','.join(ROWS)}")
    out = subprocess.run([sys.executable, __file__, "--one", row] + extra,
                         capture_output=True, text=True, check=False)
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if out.returncode or not lines:
      sys.exit(f"official_torch.py: row {row} failed:\n{out.stderr[-3000:]}")
    if out.stderr.strip():
      print(out.stderr.strip(), file=sys.stderr)
    results.append(json.loads(lines[-1]))
    print(lines[-1], flush=True)
  print(json.dumps(results, indent=1))


if __name__ == "__main__":
  main()
