"""Gaussian image diffusion as in guided-diffusion: tables, q/p, learned-range variance, loss.

`GaussianDiffusion` holds float64 NumPy tables for one (possibly respaced) chain. Its
methods are pure jnp functions of *respaced* indices `t` (B,) int: each coefficient is cast
to float32 when gathered and the image arithmetic runs in float32, which is what the
reference does (`_extract_into_tensor(...).float()`), and what exact parity needs.

Do not pass the object through `jax.jit` as an argument: close over it (its tables become
compile-time constants) or mark it static (it hashes by identity).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from scdm_jax.diffusion import schedules

_TABLES = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2", "log_betas", "fixed_large_log_variance")


@dataclasses.dataclass(frozen=True, eq=False)
class GaussianDiffusion:
  """Float64 tables of one diffusion chain (respaced or not).

  Attributes:
    betas: (N,) betas of this chain (for a respaced chain, beta'_k of guided-diffusion).
    timestep_map: (N,) int64, respaced index -> original timestep.
    num_original_steps: T of the original chain.
    beta_schedule: name of the original beta schedule.
    respacing: the respacing spec this chain was built with (None: all steps).
    fixed_variance: "large" or "small": the variance used when the model outputs only
      epsilon (3 channels); ignored for 6-channel (learned-range) outputs.
  """

  betas: np.ndarray
  timestep_map: np.ndarray
  num_original_steps: int
  beta_schedule: str = "linear"
  respacing: str | None = None
  fixed_variance: str = "large"

  @classmethod
  def create(cls, beta_schedule: str = "linear", num_steps: int = 1000,
             respacing: str | None = None, *, fixed_variance: str = "large"
             ) -> "GaussianDiffusion":
    """Builds the chain: `num_steps` original steps, optionally respaced.

    Args:
      beta_schedule: "linear" or "cosine".
      num_steps: T of the original (training) chain.
      respacing: None, "ddimN", "N" or section counts "a,b,c" (see `space_timesteps`).
      fixed_variance: "large" (betas, guided-diffusion FIXED_LARGE) or "small" (posterior
        variance) for models without a learned variance.
    """
    if fixed_variance not in ("large", "small"):
      raise ValueError(f"fixed_variance must be 'large' or 'small', got {fixed_variance!r}")
    base = schedules.get_betas(beta_schedule, num_steps)
    use = schedules.space_timesteps(num_steps, respacing)
    betas = schedules.respace_betas(base, use)
    return cls(betas=betas, timestep_map=use, num_original_steps=int(num_steps),
               beta_schedule=beta_schedule, respacing=respacing,
               fixed_variance=fixed_variance)

  def __post_init__(self):
    betas = np.asarray(self.betas, dtype=np.float64)
    if betas.ndim != 1 or betas.size == 0 or not np.all((betas > 0) & (betas <= 1)):
      raise ValueError(f"betas must be a non-empty 1-D array in (0, 1], got shape {betas.shape}")
    tmap = np.asarray(self.timestep_map, dtype=np.int64)
    if tmap.shape != betas.shape:
      raise ValueError(f"timestep_map shape {tmap.shape} != betas shape {betas.shape}")
    object.__setattr__(self, "betas", betas)
    object.__setattr__(self, "timestep_map", tmap)
    # Same formulas, same order, as guided-diffusion's GaussianDiffusion.__init__.
    alphas = 1.0 - betas
    ac = np.cumprod(alphas, axis=0)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    # The posterior variance is 0 at index 0: use the value at index 1 there (one-step
    # chains have nothing better than beta itself).
    post_var_1 = post_var[1] if len(post_var) > 1 else betas[0]
    tables = dict(
        alphas_cumprod=ac,
        alphas_cumprod_prev=ac_prev,
        sqrt_alphas_cumprod=np.sqrt(ac),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - ac),
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / ac),
        sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / ac - 1),
        posterior_variance=post_var,
        posterior_log_variance_clipped=np.log(np.append(post_var_1, post_var[1:])),
        posterior_mean_coef1=betas * np.sqrt(ac_prev) / (1.0 - ac),
        posterior_mean_coef2=(1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
        log_betas=np.log(betas),
        fixed_large_log_variance=np.log(np.append(post_var_1, betas[1:])),
    )
    object.__setattr__(self, "_tables", tables)

  # ---------------------------------------------------------------- tables

  @property
  def num_timesteps(self) -> int:
    """Length N of this (respaced) chain."""
    return int(self.betas.shape[0])

  def table(self, name: str) -> np.ndarray:
    """A float64 table of this chain by name (e.g. "alphas_cumprod")."""
    if name == "betas":
      return self.betas
    return self._tables[name]

  def _gather(self, name: str, t, ndim: int = 4) -> jax.Array:
    # Cast in NumPy first, then gather: identical to torch's `arr[t].float()`.
    tab = jnp.asarray(self.table(name).astype(np.float32))
    v = tab[jnp.asarray(t)]
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))

  def original_timesteps(self, t) -> jax.Array:
    """Respaced indices (B,) -> original timesteps (B,) int32 (what the network sees)."""
    return jnp.asarray(self.timestep_map.astype(np.int32))[jnp.asarray(t)]

  # ---------------------------------------------------------------- forward process

  def q_sample(self, x0, t, noise) -> jax.Array:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise at respaced indices t."""
    x0 = jnp.asarray(x0, jnp.float32)
    return (self._gather("sqrt_alphas_cumprod", t, x0.ndim) * x0
            + self._gather("sqrt_one_minus_alphas_cumprod", t, x0.ndim)
            * jnp.asarray(noise, jnp.float32))

  def q_posterior_mean_variance(self, x0, x_t, t):
    """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x0)."""
    nd = x_t.ndim
    mean = (self._gather("posterior_mean_coef1", t, nd) * x0
            + self._gather("posterior_mean_coef2", t, nd) * x_t)
    var = jnp.broadcast_to(self._gather("posterior_variance", t, nd), x_t.shape)
    log_var = jnp.broadcast_to(self._gather("posterior_log_variance_clipped", t, nd), x_t.shape)
    return mean, var, log_var

  def predict_xstart_from_eps(self, x_t, t, eps) -> jax.Array:
    nd = x_t.ndim
    return (self._gather("sqrt_recip_alphas_cumprod", t, nd) * x_t
            - self._gather("sqrt_recipm1_alphas_cumprod", t, nd) * eps)

  def predict_eps_from_xstart(self, x_t, t, pred_xstart) -> jax.Array:
    nd = x_t.ndim
    return ((self._gather("sqrt_recip_alphas_cumprod", t, nd) * x_t - pred_xstart)
            / self._gather("sqrt_recipm1_alphas_cumprod", t, nd))

  # ---------------------------------------------------------------- reverse process

  def model_log_variance(self, model_output, x_t, t) -> jax.Array:
    """Log variance of p(x_{t-1} | x_t): learned range (6 channels) or fixed (3)."""
    c = x_t.shape[-1]
    nd = x_t.ndim
    if model_output.shape[-1] == 2 * c:
      v = model_output[..., c:]
      min_log = self._gather("posterior_log_variance_clipped", t, nd)
      max_log = self._gather("log_betas", t, nd)
      frac = (v + 1) / 2
      return frac * max_log + (1 - frac) * min_log
    if model_output.shape[-1] == c:
      name = ("fixed_large_log_variance" if self.fixed_variance == "large"
              else "posterior_log_variance_clipped")
      return jnp.broadcast_to(self._gather(name, t, nd), x_t.shape)
    raise ValueError(
        f"model output has {model_output.shape[-1]} channels; expected {c} (epsilon) or "
        f"{2 * c} (epsilon and learned-range variance)")

  def p_mean_variance(self, model_output, x_t, t, *, clip: bool = True,
                      dynamic_threshold: float = 0.0, extrapolation: float = 0.0,
                      prev_pred_xstart=None, has_prev=None) -> dict[str, jax.Array]:
    """p(x_{t-1} | x_t) from a network output, SCDM's `p_mean_variance`.

    Order (scdm-method.md §5.1 steps 4-7): x̂0 from epsilon; extrapolation
    x̂0 += λ (x̂0 - prev) when a previous x̂0 exists; the extrapolated, *unclipped* x̂0 is
    returned as `pred_xstart_unclipped` (the caller stores it as the next `prev`); then
    dynamic thresholding (p > 0) or static clipping to [-1, 1] (when `clip`); then the
    posterior mean.

    Args:
      model_output: (B, H, W, 2C) epsilon and variance value v, or (B, H, W, C) epsilon.
      x_t: (B, H, W, C) float32.
      t: (B,) respaced indices.
      clip: clip x̂0 (statically, or by dynamic thresholding when `dynamic_threshold` > 0).
      dynamic_threshold: quantile p of |x̂0| per sample; 0 disables it.
      extrapolation: λ; 0 disables it.
      prev_pred_xstart: the previous step's extrapolated, unclipped x̂0 (or None).
      has_prev: optional bool scalar: whether `prev_pred_xstart` is valid (inside a loop,
        False at the first step). Defaults to True when `prev_pred_xstart` is given.

    Returns:
      dict with mean, variance, log_variance, pred_xstart (clipped), pred_xstart_unclipped
      and eps (the epsilon channels used).
    """
    c = x_t.shape[-1]
    eps = model_output[..., :c]
    log_var = self.model_log_variance(model_output, x_t, t)
    pred = self.predict_xstart_from_eps(x_t, t, eps)
    if extrapolation and prev_pred_xstart is not None:
      extrapolated = pred + extrapolation * (pred - prev_pred_xstart)
      pred = extrapolated if has_prev is None else jnp.where(has_prev, extrapolated, pred)
    unclipped = pred
    if clip:
      pred = dynamic_threshold_x0(pred, dynamic_threshold) if dynamic_threshold > 0 else (
          jnp.clip(pred, -1.0, 1.0))
    mean, _, _ = self.q_posterior_mean_variance(pred, x_t, t)
    return dict(mean=mean, variance=jnp.exp(log_var), log_variance=log_var,
                pred_xstart=pred, pred_xstart_unclipped=unclipped, eps=eps)

  # ---------------------------------------------------------------- loss

  def training_losses(self, model_output, x0, x_t, t, noise) -> dict[str, jax.Array]:
    """guided-diffusion's hybrid loss, per example (B,).

    mse: mean over pixels of (noise - eps)^2. vb: KL(q(x_{t-1}|x_t,x0) || p) in bits per
    dimension with the model mean held fixed (stop-gradient on epsilon, so this term only
    trains v) and no clipping of x̂0; the discretized-Gaussian decoder NLL at t == 0.
    loss = mse + vb. With a 3-channel (epsilon-only) output, vb is 0.
    """
    c = x_t.shape[-1]
    eps = model_output[..., :c]
    mse = _mean_flat((noise - eps) ** 2)
    if model_output.shape[-1] == 2 * c:
      frozen = jnp.concatenate([jax.lax.stop_gradient(eps), model_output[..., c:]], axis=-1)
      vb = self.vb_terms_bpd(frozen, x0, x_t, t)
    else:
      vb = jnp.zeros_like(mse)
    return dict(mse=mse, vb=vb, loss=mse + vb)

  def vb_terms_bpd(self, model_output, x0, x_t, t) -> jax.Array:
    """Per-example variational bound term in bits/dim (KL for t > 0, decoder NLL at t = 0)."""
    true_mean, _, true_log_var = self.q_posterior_mean_variance(x0, x_t, t)
    out = self.p_mean_variance(model_output, x_t, t, clip=False)
    kl = normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])
    kl = _mean_flat(kl) / np.float32(math.log(2.0))
    nll = -discretized_gaussian_log_likelihood(
        x0, means=out["mean"], log_scales=0.5 * out["log_variance"])
    nll = _mean_flat(nll) / np.float32(math.log(2.0))
    return jnp.where(jnp.asarray(t) == 0, nll, kl)


def dynamic_threshold_x0(x0, p: float) -> jax.Array:
  """Per sample s = max(1, quantile_p |x0|) over all values; returns clip(x0, -s, s) / s."""
  b = x0.shape[0]
  s = jnp.quantile(jnp.abs(x0).reshape(b, -1), p, axis=-1)
  s = jnp.maximum(s, 1.0).reshape((b,) + (1,) * (x0.ndim - 1)).astype(x0.dtype)
  return jnp.clip(x0, -s, s) / s


def normal_kl(mean1, logvar1, mean2, logvar2) -> jax.Array:
  """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
  return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                + ((mean1 - mean2) ** 2) * jnp.exp(-logvar2))


def approx_standard_normal_cdf(x) -> jax.Array:
  """The tanh approximation of the standard normal CDF used by guided-diffusion."""
  return 0.5 * (1.0 + jnp.tanh(_tanh_cdf_argument(x)))


def _tanh_cdf_argument(x) -> jax.Array:
  return np.float32(math.sqrt(2.0 / math.pi)) * (x + 0.044715 * x ** 3)


def discretized_gaussian_log_likelihood(x, *, means, log_scales) -> jax.Array:
  """Log-likelihood of images in [-1, 1] discretized to 8 bits (bins of width 2/255).

  The same function as guided-diffusion's (the tanh CDF approximation, bins of +-1/255,
  log terms clamped at 1e-12, the edge bins below -0.999 and above 0.999), evaluated so
  that float32 stays accurate in the tails. 0.5 * (1 + tanh(a)) equals sigmoid(2a), so
  log CDF = log_sigmoid(2a) and log(1 - CDF) = log_sigmoid(-2a); the bin mass is a
  difference of sigmoids taken on the side of the tail where both are small. Written
  with tanh, float32 rounds the CDF to exactly 1 from a of about 7.9 on XLA's CPU, and a
  pixel whose probability is below about 1e-6 dropped to the log(1e-12) floor.
  """
  centered = x - means
  inv_stdv = jnp.exp(-log_scales)
  a_plus = 2.0 * _tanh_cdf_argument(inv_stdv * (centered + 1.0 / 255.0))
  a_min = 2.0 * _tanh_cdf_argument(inv_stdv * (centered - 1.0 / 255.0))
  floor = np.float32(math.log(1e-12))
  log_cdf_plus = jnp.maximum(jax.nn.log_sigmoid(a_plus), floor)
  log_one_minus_cdf_min = jnp.maximum(jax.nn.log_sigmoid(-a_min), floor)
  # cdf_plus - cdf_min; in the upper tail as (1 - cdf_min) - (1 - cdf_plus), where both
  # terms are small and exact, instead of a difference of two numbers near 1.
  upper = (a_plus + a_min) > 0
  delta = jnp.where(upper, jax.nn.sigmoid(-a_min) - jax.nn.sigmoid(-a_plus),
                    jax.nn.sigmoid(a_plus) - jax.nn.sigmoid(a_min))
  log_delta = jnp.log(jnp.maximum(delta, 1e-12))
  return jnp.where(x < -0.999, log_cdf_plus,
                   jnp.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def _mean_flat(x) -> jax.Array:
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))
