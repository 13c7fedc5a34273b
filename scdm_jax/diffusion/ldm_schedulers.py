"""DDIM and PNDM (PLMS) schedulers of latent diffusion, as diffusers computes them.

Configured from a diffusers `scheduler_config.json` dict (the Stable Diffusion / Paint by
Example family): `beta_schedule` ("scaled_linear", "linear", "squaredcos_cap_v2" or
`trained_betas`), `beta_start`/`beta_end`, `num_train_timesteps`, `steps_offset`,
`set_alpha_to_one`, `timestep_spacing` ("leading", "trailing", "linspace") and
`prediction_type` "epsilon" (others are refused). Missing fields take the defaults of the
diffusers class (they differ: DDIM defaults to `set_alpha_to_one=True, clip_sample=True`,
PNDM to `set_alpha_to_one=False`).

Split of the work:
* everything that depends only on the step count (the timestep list, the per-call
  coefficients) is computed in numpy on the host: the table `alphas_cumprod` exactly as
  diffusers builds it in float32 (betas cast to float32, the product accumulated in float64,
  as torch's CPU cumprod does), the coefficients from it in float64, cast to float32 once;
* the per-step update is pure jnp, takes a traced call index `i`, and carries its history
  in an explicit state, so a whole chain is one `lax.scan`:

      sched = make_scheduler(config_dict, num_steps, kind="pndm")
      def body(carry, i):
        x, state = carry
        eps = model(x, sched.timesteps_jnp[i])
        x, state = sched.step(state, i, eps, x)
        return (x, state), None
      (x, _), _ = lax.scan(body, (x_T, sched.init_state(x_T)), jnp.arange(sched.num_calls))

PNDM with `skip_prk_steps` is the PLMS sampler of the LDM / Paint by Example code. For N
steps it makes N+1 network calls: the timesteps are `t_0, t_1, t_1, t_2, ...` and the
second call (the first step repeated) restarts from x_T with the mean of the first two
network outputs (a second-order start), then Adams-Bashforth of orders 2, 3, 4.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("ddim", "pndm")
SPACINGS = ("leading", "trailing", "linspace")

# diffusers class name in scheduler_config.json -> kind here.
_CLASS_KIND = {"DDIMScheduler": "ddim", "PNDMScheduler": "pndm"}

_DEFAULTS = {
    "ddim": dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02,
                 beta_schedule="linear", trained_betas=None, clip_sample=True,
                 clip_sample_range=1.0, set_alpha_to_one=True, steps_offset=0,
                 prediction_type="epsilon", timestep_spacing="leading", skip_prk_steps=True),
    "pndm": dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02,
                 beta_schedule="linear", trained_betas=None, clip_sample=False,
                 clip_sample_range=1.0, set_alpha_to_one=False, steps_offset=0,
                 prediction_type="epsilon", timestep_spacing="leading", skip_prk_steps=False),
}


@dataclasses.dataclass(frozen=True)
class SchedulerConfig:
  """The fields of a diffusers scheduler config that DDIM / PNDM use."""

  kind: str
  num_train_timesteps: int
  beta_start: float
  beta_end: float
  beta_schedule: str
  trained_betas: tuple[float, ...] | None
  clip_sample: bool
  clip_sample_range: float
  set_alpha_to_one: bool
  steps_offset: int
  prediction_type: str
  timestep_spacing: str
  skip_prk_steps: bool

  @classmethod
  def from_dict(cls, config: Mapping[str, Any], kind: str | None = None) -> SchedulerConfig:
    """Reads a scheduler_config.json dict for `kind` ("ddim" / "pndm").

    `kind` defaults to the config's own `_class_name`; a config of one class may be used
    for the other (diffusers' `from_config`): the fields it lacks take the defaults of
    `kind`, those that only apply to the other class are ignored.

    Raises:
      ValueError: (one line) for settings this implementation does not reproduce.
    """
    if kind is None:
      name = config.get("_class_name")
      if name not in _CLASS_KIND:
        raise ValueError(f"scheduler: class {name!r} is not supported; pass kind='ddim' or "
                         f"'pndm' to run its config with one of {tuple(_CLASS_KIND)}")
      kind = _CLASS_KIND[name]
    if kind not in KINDS:
      raise ValueError(f"scheduler: kind {kind!r} is unknown; use one of {KINDS}")
    f = dict(_DEFAULTS[kind])
    f.update({k: v for k, v in config.items() if k in f})
    if f["prediction_type"] != "epsilon":
      raise ValueError(f"scheduler: prediction_type {f['prediction_type']!r} is not supported "
                       "(only 'epsilon')")
    if f["timestep_spacing"] not in SPACINGS:
      raise ValueError(f"scheduler: timestep_spacing {f['timestep_spacing']!r} is unknown; "
                       f"use one of {SPACINGS}")
    if f["trained_betas"] is None and f["beta_schedule"] not in (
        "linear", "scaled_linear", "squaredcos_cap_v2"):
      raise ValueError(f"scheduler: beta_schedule {f['beta_schedule']!r} is not supported")
    for flag in ("thresholding", "rescale_betas_zero_snr"):
      if kind == "ddim" and config.get(flag):
        raise ValueError(f"scheduler: DDIM with {flag}=True is not supported")
    if kind == "pndm" and not f["skip_prk_steps"]:
      raise ValueError("scheduler: PNDM needs skip_prk_steps=True (the PLMS sampler of "
                       "LDM / Paint by Example); the Runge-Kutta warm-up is not implemented")
    trained = f["trained_betas"]
    return cls(kind=kind, num_train_timesteps=int(f["num_train_timesteps"]),
               beta_start=float(f["beta_start"]), beta_end=float(f["beta_end"]),
               beta_schedule=str(f["beta_schedule"]),
               trained_betas=None if trained is None else tuple(float(b) for b in trained),
               clip_sample=bool(f["clip_sample"]) if kind == "ddim" else False,
               clip_sample_range=float(f["clip_sample_range"]),
               set_alpha_to_one=bool(f["set_alpha_to_one"]), steps_offset=int(f["steps_offset"]),
               prediction_type="epsilon", timestep_spacing=str(f["timestep_spacing"]),
               skip_prk_steps=bool(f["skip_prk_steps"]))


def betas(cfg: SchedulerConfig) -> np.ndarray:
  """(T,) float32 betas as diffusers builds them (torch.linspace in float32)."""
  n = cfg.num_train_timesteps
  if cfg.trained_betas is not None:
    return np.asarray(cfg.trained_betas, np.float32)
  if cfg.beta_schedule == "linear":
    return np.linspace(cfg.beta_start, cfg.beta_end, n).astype(np.float32)
  if cfg.beta_schedule == "scaled_linear":
    root = np.linspace(cfg.beta_start ** 0.5, cfg.beta_end ** 0.5, n).astype(np.float32)
    return root * root  # squared in float32, as `tensor ** 2`
  # squaredcos_cap_v2: diffusers' betas_for_alpha_bar (cosine, max beta 0.999).
  abar = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
  return np.asarray([min(1 - abar((i + 1) / n) / abar(i / n), 0.999) for i in range(n)],
                    np.float32)


def alphas_cumprod(cfg: SchedulerConfig) -> np.ndarray:
  """(T,) float32 cumulative products of 1 - beta (accumulated in float64 like torch's CPU)."""
  alphas = (np.float32(1.0) - betas(cfg)).astype(np.float32)
  return np.cumprod(alphas.astype(np.float64)).astype(np.float32)


def base_timesteps(cfg: SchedulerConfig, num_steps: int) -> np.ndarray:
  """The N inference timesteps, descending (diffusers' DDIM `set_timesteps`)."""
  num_steps = int(num_steps)
  n = cfg.num_train_timesteps
  if not 1 <= num_steps <= n:
    raise ValueError(f"num_steps must be in 1..{n}, got {num_steps}")
  if cfg.timestep_spacing == "linspace":
    ts = np.linspace(0, n - 1, num_steps).round()[::-1].astype(np.int64)
  elif cfg.timestep_spacing == "leading":
    ts = (np.arange(0, num_steps) * (n // num_steps)).round()[::-1].astype(np.int64)
    ts = ts + cfg.steps_offset
  else:  # trailing
    ts = np.round(np.arange(n, 0, -n / num_steps)).astype(np.int64) - 1
  if ts.max() >= n or ts.min() < 0:
    raise ValueError(f"scheduler: timesteps {ts.tolist()} leave 0..{n - 1} (steps_offset "
                     f"{cfg.steps_offset} with {num_steps} steps)")
  return ts.copy()


class LDMScheduler:
  """Host tables for one (config, step count) and the traceable per-call update.

  Attributes:
    config: the SchedulerConfig.
    num_steps: N, the number of inference steps.
    timesteps: (num_calls,) int64 network timesteps, one per network call, exactly
      diffusers' `scheduler.timesteps` (PNDM: N + 1 calls).
    num_calls: the number of network calls of a chain.
  """

  config: SchedulerConfig
  num_steps: int
  timesteps: np.ndarray

  @property
  def num_calls(self) -> int:
    return int(self.timesteps.shape[0])

  @property
  def timesteps_jnp(self) -> jax.Array:
    return jnp.asarray(self.timesteps.astype(np.int32))

  def init_state(self, sample: jax.Array) -> Any:
    """The per-chain state carried through the scan (history of network outputs)."""
    raise NotImplementedError

  def step(self, state, i, eps, sample, key=None, noise=None):
    """Advances `sample` by one network call.

    Args:
      state: from `init_state` or the previous call.
      i: the call index 0..num_calls-1 (a traced int is fine).
      eps: the (guided) network output at `timesteps[i]`.
      sample: the current latents.
      key: PRNG key of this call's noise (DDIM with eta > 0), or
      noise: the standard-normal noise itself (same shape as `sample`).

    Returns:
      `(prev_sample, new_state)`.
    """
    raise NotImplementedError

  def _prev(self, t: np.ndarray) -> np.ndarray:
    # diffusers steps back by T // N whatever the spacing, and uses final_alpha_cumprod
    # once that lands below 0.
    return t - self.config.num_train_timesteps // self.num_steps

  def _alpha(self, t: np.ndarray) -> np.ndarray:
    ac = alphas_cumprod(self.config).astype(np.float64)
    final = 1.0 if self.config.set_alpha_to_one else ac[0]
    return np.where(t >= 0, ac[np.clip(t, 0, None)], final)


class DDIMScheduler(LDMScheduler):
  """diffusers' DDIMScheduler.step with eta (epsilon prediction, optional x0 clipping)."""

  def __init__(self, config: SchedulerConfig, num_steps: int, eta: float = 0.0):
    eta = float(eta)
    if not eta >= 0.0:
      raise ValueError(f"eta must be >= 0, got {eta}")
    self.config, self.num_steps, self.eta = config, int(num_steps), eta
    self.timesteps = base_timesteps(config, num_steps)
    a_t = self._alpha(self.timesteps)
    a_prev = self._alpha(self._prev(self.timesteps))
    variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    std = eta * np.sqrt(variance)
    f32 = lambda v: jnp.asarray(np.asarray(v, np.float64).astype(np.float32))
    self._sqrt_a_t, self._sqrt_b_t = f32(np.sqrt(a_t)), f32(np.sqrt(1 - a_t))
    self._sqrt_a_prev, self._std = f32(np.sqrt(a_prev)), f32(std)
    self._dir = f32(np.sqrt(np.maximum(1 - a_prev - std ** 2, 0.0)))

  def init_state(self, sample):
    del sample
    return ()

  def step(self, state, i, eps, sample, key=None, noise=None):
    """One DDIM update at call `i`; `key` or `noise` is required when eta > 0."""
    i = jnp.asarray(i)
    x0 = (sample - self._sqrt_b_t[i] * eps) / self._sqrt_a_t[i]
    if self.config.clip_sample:
      r = self.config.clip_sample_range
      x0 = jnp.clip(x0, -r, r)
    prev = self._sqrt_a_prev[i] * x0 + self._dir[i] * eps
    if self.eta > 0:
      if noise is None:
        if key is None:
          raise ValueError("DDIM with eta > 0 needs a PRNG key (or the noise) per step")
        noise = jax.random.normal(key, sample.shape, sample.dtype)
      prev = prev + self._std[i] * noise
    return prev.astype(sample.dtype), state


class PNDMScheduler(LDMScheduler):
  """diffusers' PNDMScheduler with skip_prk_steps (PLMS), N + 1 network calls."""

  def __init__(self, config: SchedulerConfig, num_steps: int):
    self.config, self.num_steps = config, int(num_steps)
    base = base_timesteps(config, num_steps)[::-1]  # ascending, as diffusers' _timesteps
    plms = np.concatenate([base[:-1], base[-2:-1], base[-1:]])[::-1].astype(np.int64)
    self.timesteps = plms.copy()
    calls = np.arange(len(plms))
    # Call 1 (the repeated first timestep) redoes the first step, from t_0 to t_1.
    t_cur = np.where(calls == 1, plms + config.num_train_timesteps // self.num_steps, plms)
    t_prev = np.where(calls == 1, plms, self._prev(plms))
    a_t, a_prev = self._alpha(t_cur), self._alpha(t_prev)
    denom = a_t * np.sqrt(1 - a_prev) + np.sqrt(a_t * (1 - a_t) * a_prev)
    f32 = lambda v: jnp.asarray(np.asarray(v, np.float64).astype(np.float32))
    self._c_sample = f32(np.sqrt(a_prev / a_t))
    self._c_eps = f32((a_prev - a_t) / denom)
    # Number of stored outputs after this call's update (call 1 stores nothing).
    self._n_ets = jnp.asarray(np.where(calls == 0, 1, np.minimum(calls, 4)).astype(np.int32))

  def init_state(self, sample):
    """(ets: (4, *sample.shape), the newest first; the saved x_T for the restart)."""
    return (jnp.zeros((4,) + sample.shape, sample.dtype), jnp.zeros_like(sample))

  def step(self, state, i, eps, sample, key=None, noise=None):
    del key, noise  # PLMS is deterministic
    ets, cur_sample = state
    i = jnp.asarray(i)
    restart = i == 1
    pushed = jnp.concatenate([eps[None], ets[:3]], 0)
    new_ets = jnp.where(restart, ets, pushed)
    e = new_ets
    n = self._n_ets[i]
    # The same expressions as diffusers, selected by the history length.
    combo = jnp.select(
        [restart, n == 1, n == 2, n == 3],
        [(eps + ets[0]) / 2, e[0], (3 * e[0] - e[1]) / 2,
         (23 * e[0] - 16 * e[1] + 5 * e[2]) / 12],
        (1 / 24) * (55 * e[0] - 59 * e[1] + 37 * e[2] - 9 * e[3]))
    x = jnp.where(restart, cur_sample, sample)
    new_cur = jnp.where(i == 0, sample, cur_sample)
    prev = self._c_sample[i] * x - self._c_eps[i] * combo
    return prev.astype(sample.dtype), (new_ets, new_cur)


def make_scheduler(config: Mapping[str, Any] | SchedulerConfig, num_steps: int, *,
                   kind: str | None = None, eta: float = 0.0) -> LDMScheduler:
  """A DDIM or PNDM scheduler for `num_steps` steps from a scheduler_config.json dict.

  Args:
    config: the dict (or a SchedulerConfig); `kind` overrides its `_class_name`.
    num_steps: N inference steps.
    kind: "ddim" or "pndm" (default: the config's own class).
    eta: DDIM noise scale (PNDM refuses eta != 0).
  """
  cfg = config if isinstance(config, SchedulerConfig) else SchedulerConfig.from_dict(config, kind)
  if kind is not None and cfg.kind != kind:
    raise ValueError(f"scheduler: config is for {cfg.kind!r}, asked for {kind!r}")
  if cfg.kind == "ddim":
    return DDIMScheduler(cfg, num_steps, eta)
  if float(eta) != 0.0:
    raise ValueError(f"eta={eta} applies to DDIM only; PNDM (PLMS) is deterministic")
  return PNDMScheduler(cfg, num_steps)
