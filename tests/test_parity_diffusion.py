"""The parity CLI on the reference fixtures, on files of other shapes, and failing."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest

from scdm_jax.diffusion import schedules
from scdm_jax.parity import __main__ as cli
from scdm_jax.parity import gaussian_diffusion as gd_check

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_cli_passes_on_reference_fixtures(fixtures_dir):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  r = subprocess.run(
      [sys.executable, "-m", "scdm_jax.parity", str(fixtures_dir / "label_diffusion.npz"),
       str(fixtures_dir / "gaussian_diffusion.npz")],
      capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
  assert r.returncode == 0, r.stdout + r.stderr
  assert "all arrays within tolerance" in r.stdout
  assert "cosine_50-30-20/loss_vb" in r.stdout and "y_k_ddim25" in r.stdout


def _load(path):
  with np.load(path) as z:
    return {k: z[k] for k in z.files}


def test_cli_fails_on_perturbed_outputs(fixtures_dir, tmp_path, capsys):
  lab = _load(fixtures_dir / "label_diffusion.npz")
  i = np.argwhere(lab["y_t"].sum(-1) == 1)[0]
  lab["y_t"][tuple(i)] = 0  # one pixel masked that should not be
  np.savez(tmp_path / "label_bad.npz", **lab)
  gau = _load(fixtures_dir / "gaussian_diffusion.npz")
  gau["linear_ddim25/loss_vb"] = gau["linear_ddim25/loss_vb"] * np.float32(1.001)
  np.savez(tmp_path / "gauss_bad.npz", **gau)
  assert cli.main([str(tmp_path / "label_bad.npz")]) == 1
  out = capsys.readouterr().out
  assert "y_t" in out and "FAIL" in out
  assert cli.main([str(tmp_path / "gauss_bad.npz")]) == 1
  out = capsys.readouterr().out
  assert "linear_ddim25/loss_vb" in out and "FAIL" in out and "linear_ddim25/loss_mse" in out


# ---------------------------------------------------------------- files of other shapes
# The expected outputs below come from a small independent NumPy implementation written
# from the fixture README (float64), not from scdm_jax.

def _np_label_file(path):
  rng = np.random.default_rng(7)
  b, h, w, k = 3, 7, 6, 5
  psi = np.array([0.5, 1.5, 42.0, 900.0, 4000.0])
  y0 = np.eye(k, dtype=np.float32)[rng.integers(0, k, (b, h, w))]
  y0[:, 0, :2] = 0
  u = rng.random((b, h, w), dtype=np.float32)
  t = np.array([0, 333, 999])

  def gamma(ts):
    tau = (np.asarray(ts).astype(np.float32) / np.float32(1000)).astype(np.float64)[:, None]
    return 1 - np.minimum(tau, (np.exp(tau * np.log(psi)) - 1) / (psi - 1 + 1e-7))

  def diffuse(ts):
    g = np.einsum("bhwk,bk->bhw", y0.astype(np.float64), gamma(ts))
    g = g + (y0.sum(-1) == 0)
    return y0 * np.floor(g + u.astype(np.float64))[..., None]

  tmap = np.arange(0, 1000, 100)  # "ddim10"
  kk = np.array([9, 4, 0])
  np.savez(path, psi=psi, y0=y0, u=u, t=t, y_t=diffuse(t), gamma_t=np.arange(1000),
           gamma=gamma(np.arange(1000)), ddim10_timestep_map=tmap, k=kk,
           y_k_ddim10=diffuse(tmap[kk]))


def _np_chain(schedule, spec, T=1000):
  if schedule == "linear":
    s = 1000 / T
    betas = np.linspace(s * 1e-4, s * 0.02, T)
  else:
    ab = lambda x: math.cos((x + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    betas = np.array([min(1 - ab((i + 1) / T) / ab(i / T), 0.999) for i in range(T)])
  use = schedules.space_timesteps(T, spec)
  ac = np.cumprod(1 - betas)[use]
  betas = 1 - ac / np.append(1.0, ac[:-1])
  return betas, use


def _np_gauss_file(path):
  rng = np.random.default_rng(3)
  x0 = np.clip(rng.normal(size=(2, 5, 5, 3)), -1, 1).astype(np.float32)
  x0[0, 0, 0] = [-1, 1, 0.9995]  # edge bins of the decoder NLL
  noise = rng.normal(size=x0.shape).astype(np.float32)
  arrays = {"x0": x0, "noise": noise}
  f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
  for key, (schedule, spec) in {"linear_ddim10": ("linear", "ddim10"),
                                "cosine_40-20": ("cosine", "40,20")}.items():
    betas, use = _np_chain(schedule, spec)
    n = len(betas)
    ac = np.cumprod(1 - betas)
    acp = np.append(1.0, ac[:-1])
    pv = betas * (1 - acp) / (1 - ac)
    plv = np.log(np.append(pv[1], pv[1:]))
    c1, c2 = betas * np.sqrt(acp) / (1 - ac), (1 - acp) * np.sqrt(1 - betas) / (1 - ac)
    t = np.array([0, n // 2])
    g = lambda tab: tab[t].reshape(-1, 1, 1, 1)  # noqa: E731
    x_t = g(np.sqrt(ac)) * f64(x0) + g(np.sqrt(1 - ac)) * f64(noise)
    out = rng.normal(size=(2, 5, 5, 6)).astype(np.float32)
    eps, v = f64(out[..., :3]), f64(out[..., 3:])
    mean_q = g(c1) * f64(x0) + g(c2) * x_t
    logv_q = np.broadcast_to(g(plv), x_t.shape)
    frac = (v + 1) / 2
    logv = frac * g(np.log(betas)) + (1 - frac) * g(plv)
    xs = g(np.sqrt(1 / ac)) * x_t - g(np.sqrt(1 / ac - 1)) * eps
    arrays.update({f"{key}/betas": betas, f"{key}/timestep_map": use, f"{key}/t": t,
                   f"{key}/x_t": x_t.astype(np.float32), f"{key}/model_output": out,
                   f"{key}/posterior_mean": mean_q.astype(np.float32),
                   f"{key}/posterior_log_variance": logv_q.astype(np.float32)})
    for variant, p in (("static", 0), ("dyn90", 0.9)):
      if p:
        s = np.maximum(np.quantile(np.abs(xs).reshape(2, -1), p, axis=-1), 1).reshape(-1, 1, 1, 1)
        xc = np.clip(xs, -s, s) / s
      else:
        xc = np.clip(xs, -1, 1)
      arrays.update({f"{key}/{variant}/pred_xstart": xc.astype(np.float32),
                     f"{key}/{variant}/mean": (g(c1) * xc + g(c2) * x_t).astype(np.float32),
                     f"{key}/{variant}/log_variance": logv.astype(np.float32)})
    mean_p = g(c1) * xs + g(c2) * x_t
    kl = 0.5 * (-1 + logv - logv_q + np.exp(logv_q - logv) + (mean_q - mean_p) ** 2
                * np.exp(-logv))
    cdf = lambda z: 0.5 * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z ** 3)))  # noqa
    inv = np.exp(-0.5 * logv)
    cp, cm = cdf(inv * (f64(x0) - mean_p + 1 / 255)), cdf(inv * (f64(x0) - mean_p - 1 / 255))
    lp = np.where(x0 < -0.999, np.log(np.maximum(cp, 1e-12)),
                  np.where(x0 > 0.999, np.log(np.maximum(1 - cm, 1e-12)),
                           np.log(np.maximum(cp - cm, 1e-12))))
    vb = np.where(t == 0, -lp.mean((1, 2, 3)), kl.mean((1, 2, 3))) / np.log(2)
    mse = ((f64(noise) - eps) ** 2).mean((1, 2, 3))
    arrays.update({f"{key}/loss_mse": mse.astype(np.float32),
                   f"{key}/loss_vb": vb.astype(np.float32),
                   f"{key}/loss": (mse + vb).astype(np.float32)})
  np.savez(path, **arrays)


def test_cli_on_files_of_other_shapes(tmp_path, capsys):
  _np_label_file(tmp_path / "label_other.npz")
  _np_gauss_file(tmp_path / "gauss_other.npz")
  rc = cli.main([str(tmp_path / "label_other.npz"), str(tmp_path / "gauss_other.npz")])
  out = capsys.readouterr().out
  assert rc == 0, out
  for name in ("y_k_ddim10", "cosine_40-20/dyn90/pred_xstart", "linear_ddim10/loss_vb"):
    assert name in out


def test_chain_key_parsing():
  assert gd_check.parse_chain_key("linear_50-30-20") == ("linear", "50,30,20")
  assert gd_check.parse_chain_key("cosine_full") == ("cosine", None)
  assert gd_check.parse_chain_key("cosine_ddim7") == ("cosine", "ddim7")
  assert gd_check.parse_chain_key("linear_250") == ("linear", "250")
  with pytest.raises(ValueError, match="sigmoid_full"):
    gd_check.parse_chain_key("sigmoid_full")
