"""Image diffusion: tables, q/p, variance, thresholding (§12 item 13), extrapolation (14)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from scdm_jax.diffusion import gaussian
from scdm_jax.diffusion.gaussian import GaussianDiffusion, dynamic_threshold_x0

DIFF = GaussianDiffusion.create("linear", 1000, "ddim25")
RNG = np.random.default_rng(0)
X0 = np.clip(RNG.normal(size=(3, 6, 6, 3)), -1, 1).astype(np.float32)
NOISE = RNG.normal(size=(3, 6, 6, 3)).astype(np.float32)
OUT = RNG.normal(size=(3, 6, 6, 6)).astype(np.float32)
T = np.array([0, 5, 24])


def test_tables_and_maps():
  assert DIFF.num_timesteps == 25 and DIFF.num_original_steps == 1000
  np.testing.assert_array_equal(DIFF.timestep_map, np.arange(0, 1000, 40))
  np.testing.assert_array_equal(DIFF.original_timesteps(jnp.array([24, 0])), [960, 0])
  assert DIFF.original_timesteps(jnp.array([3])).dtype == jnp.int32
  pv = DIFF.table("posterior_variance")
  np.testing.assert_allclose(DIFF.table("posterior_log_variance_clipped")[0], np.log(pv[1]))


def test_q_sample_formula():
  x_t = np.asarray(DIFF.q_sample(X0, T, NOISE))
  ac = DIFF.table("alphas_cumprod")[T].reshape(-1, 1, 1, 1)
  np.testing.assert_allclose(x_t, np.sqrt(ac) * X0 + np.sqrt(1 - ac) * NOISE, rtol=1e-5,
                             atol=1e-6)


def test_posterior_at_zero_is_x0():
  x_t = DIFF.q_sample(X0, np.zeros(3, int), NOISE)
  mean, _, _ = DIFF.q_posterior_mean_variance(X0, x_t, np.zeros(3, int))
  np.testing.assert_allclose(mean, X0, atol=1e-6)


def test_learned_range_endpoints_and_fixed_variance():
  x_t = DIFF.q_sample(X0, T, NOISE)
  ones = np.ones_like(X0)
  lv_max = DIFF.model_log_variance(np.concatenate([NOISE, ones], -1), x_t, T)
  lv_min = DIFF.model_log_variance(np.concatenate([NOISE, -ones], -1), x_t, T)
  np.testing.assert_allclose(lv_max[:, 0, 0, 0], np.log(DIFF.betas[T]), rtol=1e-6)
  np.testing.assert_allclose(lv_min[:, 0, 0, 0],
                             DIFF.table("posterior_log_variance_clipped")[T], rtol=1e-6)
  lv_fixed = DIFF.model_log_variance(NOISE, x_t, T)  # 3 channels: fixed "large"
  np.testing.assert_allclose(lv_fixed[:, 0, 0, 0], DIFF.table("fixed_large_log_variance")[T],
                             rtol=1e-6)
  with pytest.raises(ValueError, match="5 channels"):
    DIFF.model_log_variance(OUT[..., :5], x_t, T)


# ---------------------------------------------------------------- item 13

@settings(max_examples=20, deadline=None)
@given(hnp.arrays(np.float32, (2, 4, 4, 3), elements=st.floats(-5, 5, width=32, allow_subnormal=False)),
       st.sampled_from([0.5, 0.9, 0.95, 0.995]))
def test_dynamic_threshold_range(x, p):
  y = np.asarray(dynamic_threshold_x0(jnp.asarray(x), p))
  assert np.all(np.abs(y) <= 1.0)


@settings(max_examples=10, deadline=None)
@given(hnp.arrays(np.float32, (2, 4, 4, 3), elements=st.floats(-1, 1, width=32, allow_subnormal=False)))
def test_dynamic_threshold_identity_inside(x):
  np.testing.assert_array_equal(dynamic_threshold_x0(jnp.asarray(x), 0.95), x)


def test_dynamic_threshold_scales_by_quantile():
  x = np.linspace(-3, 3, 48, dtype=np.float32).reshape(1, 4, 4, 3)
  s = np.quantile(np.abs(x), 0.95)
  np.testing.assert_allclose(dynamic_threshold_x0(jnp.asarray(x), 0.95),
                             np.clip(x, -s, s) / s, rtol=1e-6)


# ---------------------------------------------------------------- item 14

def test_extrapolation():
  x_t = DIFF.q_sample(X0, T, NOISE)
  base = DIFF.p_mean_variance(OUT, x_t, T, extrapolation=0.8)
  none = DIFF.p_mean_variance(OUT, x_t, T)
  np.testing.assert_array_equal(base["pred_xstart"], none["pred_xstart"])  # no prev: unchanged
  prev = RNG.normal(size=X0.shape).astype(np.float32)
  first = DIFF.p_mean_variance(OUT, x_t, T, extrapolation=0.8, prev_pred_xstart=prev,
                               has_prev=jnp.array(False))
  np.testing.assert_array_equal(first["pred_xstart"], none["pred_xstart"])
  ex = DIFF.p_mean_variance(OUT, x_t, T, extrapolation=0.8, prev_pred_xstart=prev)
  raw = none["pred_xstart_unclipped"]
  want = raw + 0.8 * (raw - prev)
  np.testing.assert_allclose(ex["pred_xstart_unclipped"], want, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(ex["pred_xstart"], np.clip(want, -1, 1), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- loss

def test_losses_and_stop_gradient():
  x_t = DIFF.q_sample(X0, T, NOISE)
  terms = jax.jit(DIFF.training_losses)(OUT, X0, x_t, T, NOISE)
  assert all(terms[k].shape == (3,) for k in ("mse", "vb", "loss"))
  np.testing.assert_allclose(terms["mse"], ((NOISE - OUT[..., :3]) ** 2).mean((1, 2, 3)),
                             rtol=1e-5)
  assert np.all(np.asarray(terms["vb"]) >= 0)
  g = jax.jit(jax.grad(lambda o: DIFF.training_losses(o, X0, x_t, T, NOISE)["vb"].sum()))(OUT)
  assert float(jnp.abs(g[..., :3]).max()) == 0.0  # VB does not train epsilon
  assert float(jnp.abs(g[..., 3:]).max()) > 0.0
  eps_only = DIFF.training_losses(OUT[..., :3], X0, x_t, T, NOISE)
  np.testing.assert_array_equal(eps_only["vb"], 0.0)


def test_bad_fixed_variance():
  with pytest.raises(ValueError, match="'medium'"):
    GaussianDiffusion.create(fixed_variance="medium")


def _float64_log_likelihood(x, means, log_scales):
  """guided-diffusion's discretized likelihood in float64, with exact tail complements."""
  x, means, log_scales = (np.asarray(v, np.float64) for v in (x, means, log_scales))
  inv = np.exp(-log_scales)

  def a(v):  # 0.5 * (1 + tanh(a)) = sigmoid(2a)
    return 2.0 * np.sqrt(2.0 / np.pi) * (v + 0.044715 * v ** 3)

  def cdf(v):
    return 1.0 / (1.0 + np.exp(-a(v)))

  def survival(v):
    return 1.0 / (1.0 + np.exp(a(v)))

  plus, minus = inv * (x - means + 1 / 255), inv * (x - means - 1 / 255)
  mass = np.where(x > means, survival(minus) - survival(plus), cdf(plus) - cdf(minus))
  log = lambda v: np.log(np.maximum(v, 1e-12))
  return np.where(x < -0.999, log(cdf(plus)),
                  np.where(x > 0.999, log(survival(minus)), log(mass)))


def test_discretized_likelihood_is_accurate_in_the_tails():
  # Pixels many standard deviations from the predicted mean: in float32 the tanh form
  # rounded the CDF to 1 and sent these to the log(1e-12) floor (-27.6).
  rng = np.random.default_rng(0)
  n = 4096
  x = np.clip(np.round(rng.uniform(-1, 1, n) * 127.5) / 127.5, -1, 1).astype(np.float32)
  x[:4] = [-1.0, 1.0, 0.5, -0.5]
  means = rng.uniform(-1.5, 1.5, n).astype(np.float32)
  means[:4] = [-0.945, 0.945, 0.445, -0.445]  # tanh argument near 7.9 at the bin edge
  log_scales = rng.uniform(-6.0, 0.0, n).astype(np.float32)
  log_scales[:4] = np.log(0.0105)
  with np.errstate(over="ignore"):
    want = _float64_log_likelihood(x, means, log_scales)
  got = np.asarray(gaussian.discretized_gaussian_log_likelihood(
      jnp.asarray(x), means=jnp.asarray(means), log_scales=jnp.asarray(log_scales)))
  assert np.all(want[:4] > -27.0), want[:4]  # the probe pixels are above the floor
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
