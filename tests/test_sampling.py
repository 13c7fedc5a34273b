"""Samplers: one compiled program, CFG (§12 item 12), respacing (item 9), progress, editing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scdm_jax.diffusion import label_diffusion as ld
from scdm_jax.diffusion.gaussian import GaussianDiffusion
from scdm_jax.diffusion.sampling import guided_model_output, sample

B, H, W, K = 2, 4, 4, 3
RNG = np.random.default_rng(0)
LABEL = np.eye(K, dtype=np.float32)[RNG.integers(0, K, (B, H, W))]
EDGE = (RNG.random((B, H, W, 1)) > 0.6).astype(np.float32)
COND = np.concatenate([LABEL, EDGE], -1)
SCHED = ld.LabelSchedule.create("classwise", np.array([0.5, 30.0, 900.0]), 1000)
D5 = GaussianDiffusion.create("linear", 1000, "ddim5")


def rkey(seed):
  # "rbg" keys: threefry programs take seconds to compile on small CPUs.
  return jax.random.key(seed, impl="rbg")


def toy_model(x, t, c):
  """Depends on x, t and every conditioning channel; eps in 0..2, v in 3..5."""
  s = jnp.sum(c, -1, keepdims=True)
  eps = 0.3 * x + 0.1 * s + 0.0005 * t[:, None, None, None].astype(jnp.float32)
  v = jnp.tanh(0.5 * x - 0.2 * s)
  return jnp.concatenate([eps, v], -1)


# ---------------------------------------------------------------- the 25-step guided sampler

class TinyNet(nnx.Module):
  traces = 0

  def __init__(self, cond_channels, rngs):
    self.c1 = nnx.Conv(3 + cond_channels, 8, (3, 3), rngs=rngs)
    self.c2 = nnx.Conv(8, 6, (3, 3), rngs=rngs)

  def __call__(self, x, t, c):
    TinyNet.traces += 1  # Python side effect: runs once per trace, not per step
    h = self.c1(jnp.concatenate([x, c], -1))
    h = nnx.silu(h + t.astype(jnp.float32)[:, None, None, None] / 1000.0)
    return self.c2(h)


def test_25_step_guided_sampler_is_one_program():
  model = TinyNet(K + 1, nnx.Rngs(rkey(0)))
  graphdef, state = nnx.split(model)
  diff = GaussianDiffusion.create("linear", 1000, "ddim25")

  @jax.jit
  def run(state, cond, key):
    m = nnx.merge(graphdef, state)
    return sample(m, diff, SCHED, cond, key, guidance_scale=1.5, dynamic_threshold=0.95,
                  extrapolation=0.8, num_label_channels=K)

  TinyNet.traces = 0
  lowered = run.lower(state, COND, rkey(0))
  assert TinyNet.traces == 1  # one batched (cond + uncond) call traced once for 25 steps
  text = lowered.as_text()
  main = text[text.index("func.func public @main"):]
  main = main[:main.index("func.func", 10)]
  assert main.count("stablehlo.while") == 1  # the scan over the 25 steps (the other
  # while loops in the module are inside the PRNG's own helper functions)
  assert text.count("stablehlo.convolution") == 2  # the net's 2 convs, not 25 copies
  compiled = lowered.compile()
  x = compiled(state, COND, rkey(0))
  assert x.shape == (B, H, W, 3) and bool(jnp.all(jnp.abs(x) <= 1))
  np.testing.assert_array_equal(run(state, COND, rkey(0)), x)
  assert TinyNet.traces == 1  # the second call reuses the compiled program


# ---------------------------------------------------------------- item 12: CFG

def _count_calls(guidance_scale):
  calls = []

  def model(x, t, c):
    calls.append((x.shape[0], t.shape[0], c.shape[0]))
    return toy_model(x, t, c)

  jax.make_jaxpr(lambda c, k: sample(model, D5, SCHED, c, k, guidance_scale=guidance_scale,
                                     num_label_channels=K))(COND, rkey(0))
  return calls


def test_cfg_call_count():
  assert _count_calls(1.0) == [(B, B, B)]  # s = 1: a single call per step
  assert _count_calls(1.5) == [(2 * B, 2 * B, 2 * B)]  # s > 1: one doubled batch


def test_cfg_formula_and_variance_from_conditional_half():
  x = RNG.normal(size=(B, H, W, 3)).astype(np.float32)
  t = jnp.array([960, 960], jnp.int32)
  out = guided_model_output(toy_model, x, t, COND, 1.5, 3)
  oc, ou = toy_model(x, t, COND), toy_model(x, t, np.zeros_like(COND))
  np.testing.assert_allclose(out[..., :3], ou[..., :3] + 1.5 * (oc[..., :3] - ou[..., :3]),
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(out[..., 3:], oc[..., 3:])
  np.testing.assert_array_equal(guided_model_output(toy_model, x, t, COND, 1.0, 3), oc)


def test_a_model_with_its_own_guided_pair_is_called_through_it():
  calls = []

  class Model:
    def __call__(self, x, t, c):
      calls.append("call")
      return toy_model(x, t, c)

    def with_unconditional(self, x, t, c):
      calls.append("pair")
      return toy_model(x, t, c), toy_model(x, t, jnp.zeros_like(c))

  x = RNG.normal(size=(B, H, W, 3)).astype(np.float32)
  t = jnp.array([960, 960], jnp.int32)
  got = guided_model_output(Model(), x, t, COND, 1.5, 3)
  np.testing.assert_allclose(got, guided_model_output(toy_model, x, t, COND, 1.5, 3),
                             rtol=1e-6, atol=1e-6)
  guided_model_output(Model(), x, t, COND, 1.0, 3)  # no guidance: one plain call
  assert calls == ["pair", "call"]


# ---------------------------------------------------------------- progress and determinism

def test_progress_callback_and_determinism():
  seen = []
  f = jax.jit(lambda c, k: sample(toy_model, D5, SCHED, c, k, num_label_channels=K))
  g = jax.jit(lambda c, k: sample(toy_model, D5, SCHED, c, k, num_label_channels=K,
                                  progress=lambda s, n: seen.append((s, n))))
  a = f(COND, rkey(1))
  b = g(COND, rkey(1))
  jax.effects_barrier()
  assert sorted(seen) == [(i, 5) for i in range(1, 6)]
  # Reporting does not change the result. The callback is a side effect XLA must order, so
  # newer XLA (jax 0.12) fuses the chain differently around it: equal to float32 rounding.
  np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)
  np.testing.assert_array_equal(f(COND, rkey(1)), a)  # deterministic for a key
  assert not np.array_equal(f(COND, rkey(2)), a)


def test_ddim_eta0_is_deterministic_given_x_init():
  none = ld.LabelSchedule.create("none")
  x_init = RNG.normal(size=(B, H, W, 3)).astype(np.float32)
  f = jax.jit(lambda k, eta: sample(toy_model, D5, none, COND, k, sampler="ddim", eta=eta,
                                    num_label_channels=K, x_init=x_init), static_argnums=1)
  np.testing.assert_allclose(f(rkey(1), 0.0), f(rkey(2), 0.0), rtol=1e-6, atol=1e-6)
  assert not np.allclose(f(rkey(1), 1.0), f(rkey(2), 1.0))


# ---------------------------------------------------------------- item 9 and label modes

def _record(label_mode, guidance_scale=1.0):
  seen = []

  def model(x, t, c):
    jax.debug.callback(lambda t, c: seen.append((np.asarray(t), np.asarray(c))), t, c,
                       ordered=True)
    return toy_model(x, t, c)

  diff = GaussianDiffusion.create("linear", 1000, "ddim25")
  jax.jit(lambda c, k: sample(model, diff, SCHED, c, k, label_mode=label_mode,
                              num_label_channels=K))(COND, rkey(3))
  jax.effects_barrier()
  return seen


def test_network_sees_original_timesteps_and_label_reveal():
  fresh, coupled = _record("fresh"), _record("coupled")
  for seen in (fresh, coupled):
    ts = [int(t[0]) for t, _ in seen]
    assert ts == list(range(960, -1, -40))  # original t, 960 first (ddim25)
    np.testing.assert_array_equal(seen[-1][1], COND)  # t = 0: the exact label
    for _, c in seen:
      np.testing.assert_array_equal(c[..., K:], EDGE)  # edge never diffused
  vis = np.stack([c[..., :K].sum(-1) for _, c in coupled])
  assert np.all(vis[1:] >= vis[:-1])  # coupled: one u, monotone reveal


# ---------------------------------------------------------------- SDEdit and masked editing

def test_x_init_start_index_single_step():
  x_init = RNG.normal(size=(B, H, W, 3)).astype(np.float32)
  eps_only = lambda x, t, c: toy_model(x, t, c)[..., :3]  # noqa: E731  fixed variance
  got = jax.jit(lambda k: sample(eps_only, D5, SCHED, COND, k, num_label_channels=K,
                                 x_init=x_init, start_index=0))(rkey(0))
  t = jnp.zeros((B,), jnp.int32)
  want = D5.p_mean_variance(eps_only(x_init, t, COND), x_init, t)["mean"]
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_known_region_is_kept():
  known = np.clip(RNG.normal(size=(B, H, W, 3)), -1, 1).astype(np.float32)
  f = jax.jit(lambda m, k: sample(toy_model, D5, SCHED, COND, k, num_label_channels=K,
                                  known=known, mask=m))
  np.testing.assert_array_equal(f(np.zeros((B, H, W, 1), np.float32), rkey(0)), known)
  mask = np.zeros((B, H, W, 1), np.float32)
  mask[:, :2] = 1
  out = np.asarray(f(mask, rkey(0)))
  np.testing.assert_array_equal(out[:, 2:], known[:, 2:])
  assert not np.allclose(out[:, :2], known[:, :2])


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs,match", [
    (dict(guidance_scale=0.5), "guidance_scale must be >= 1.*0.5"),
    (dict(sampler="euler"), "'euler'"),
    (dict(label_mode="frozen"), "'frozen'"),
    (dict(start_index=5, x_init=np.zeros((B, H, W, 3))), "start_index.*0..4.*5"),
    (dict(start_index=2), "needs x_init"),
    (dict(dynamic_threshold=1.5), "1.5"),
    (dict(num_label_channels=9), "num_label_channels.*9"),
    (dict(known=np.zeros((B, H, W, 3))), "together"),
])
def test_bad_arguments(kwargs, match):
  kwargs = {"num_label_channels": K, **kwargs}
  with pytest.raises(ValueError, match=match):
    sample(toy_model, D5, SCHED, COND, rkey(0), **kwargs)


def test_loop_matches_manual_ddim_with_extrapolation():
  """Item 14 inside the loop: the stored x̂0_prev is the extrapolated, unclipped value."""
  none = ld.LabelSchedule.create("none")
  x_init = (3 * RNG.normal(size=(B, H, W, 3))).astype(np.float32)
  got = jax.jit(lambda k: sample(toy_model, D5, none, COND, k, sampler="ddim", eta=0.0,
                                 dynamic_threshold=0.9, extrapolation=0.8,
                                 num_label_channels=K, x_init=x_init, start_index=3))(rkey(0))
  x, prev = jnp.asarray(x_init), None
  acp = D5.table("alphas_cumprod_prev")
  for k in (3, 2, 1, 0):
    t = jnp.full((B,), k, jnp.int32)
    out = toy_model(x, D5.original_timesteps(t), jnp.asarray(COND))
    raw = D5.predict_xstart_from_eps(x, t, out[..., :3])
    ex = raw if prev is None else raw + 0.8 * (raw - prev)
    prev = ex
    s = jnp.maximum(jnp.quantile(jnp.abs(ex).reshape(B, -1), 0.9, axis=-1), 1.0)
    x0 = jnp.clip(ex, -s[:, None, None, None], s[:, None, None, None]) / s[:, None, None, None]
    eps = D5.predict_eps_from_xstart(x, t, x0)
    x = x0 * np.float32(np.sqrt(acp[k])) + np.float32(np.sqrt(1 - acp[k])) * eps
  np.testing.assert_allclose(got, x, rtol=1e-5, atol=1e-5)
