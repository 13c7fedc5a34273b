"""scdm_loss: CFG drop before label diffusion, same t, stop-gradient on the VB mean."""

import jax
import jax.numpy as jnp
import numpy as np

from scdm_jax.diffusion import label_diffusion as ld
from scdm_jax.diffusion.gaussian import GaussianDiffusion
from scdm_jax.diffusion.losses import scdm_loss

B, H, W, K = 4, 8, 8, 3
RNG = np.random.default_rng(0)
BATCH = {
    "image": np.clip(RNG.normal(size=(B, H, W, 3)), -1, 1).astype(np.float32),
    "label": np.eye(K, dtype=np.float32)[RNG.integers(0, K, (B, H, W))],
    "edge": (RNG.random((B, H, W, 1)) > 0.7).astype(np.float32),
}
DIFF = GaussianDiffusion.create("linear", 1000)


def rkey(seed):
  return jax.random.key(seed, impl="rbg")


def linear_model(params, x, t, c):
  """eps from params["a"], v from params["b"]: a toy model whose two heads are separable."""
  feat = jnp.concatenate([x, c], -1)
  eps = feat @ params["a"]
  v = jnp.tanh(feat @ params["b"])
  return jnp.concatenate([eps, v], -1)


def test_gradient_reaches_v_only_through_vb():
  params = {"a": jnp.asarray(RNG.normal(size=(3 + K + 1, 3)) * 0.1, jnp.float32),
            "b": jnp.asarray(RNG.normal(size=(3 + K + 1, 3)) * 0.1, jnp.float32)}
  sched = ld.LabelSchedule.create("classwise", np.array([0.5, 20.0, 500.0]), 1000)

  def term(name):
    def f(p):
      loss, aux = scdm_loss(lambda x, t, c: linear_model(p, x, t, c), DIFF, sched, BATCH,
                            rkey(0), drop_rate=0.2)
      return loss if name == "loss" else aux[name + "_mean"]
    return f

  grads = jax.jit(lambda p: {n: jax.grad(term(n))(p) for n in ("loss", "mse", "vb")})(params)
  g, g_mse, g_vb = grads["loss"], grads["mse"], grads["vb"]
  np.testing.assert_array_equal(g_vb["a"], 0.0)  # the mean is held fixed in VB
  np.testing.assert_array_equal(g_mse["b"], 0.0)  # MSE does not see v
  assert float(jnp.abs(g_vb["b"]).max()) > 0
  np.testing.assert_allclose(g["a"], g_mse["a"], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(g["b"], g_vb["b"], rtol=1e-5, atol=1e-7)


def test_drop_before_diffusion_and_same_t():
  seen = {}

  def model(x, t, c):
    seen.update(x=x, t=t, c=c)
    return jnp.zeros(x.shape[:-1] + (6,))

  sched = ld.LabelSchedule.create("uniform", num_original_steps=1000)

  def run(key, rate):
    loss, aux = scdm_loss(model, DIFF, sched, BATCH, key, drop_rate=rate)
    return loss, aux, dict(seen)  # the model's inputs, from the same trace

  run = jax.jit(run, static_argnums=1)
  # drop_rate 1: everything (label and edge) is zero, before label diffusion.
  loss, aux, seen1 = run(rkey(1), 1.0)
  assert float(jnp.abs(seen1["c"]).max()) == 0 and bool(aux["dropped"].all())
  # drop_rate 0: the edge is untouched, label pixels are kept or zeroed as a whole.
  loss, aux, seen = run(rkey(2), 0.0)
  c = np.asarray(seen["c"])
  np.testing.assert_array_equal(c[..., K:], BATCH["edge"])
  kept = np.all(c[..., :K] == BATCH["label"], -1)
  assert np.all(kept | np.all(c[..., :K] == 0, -1))
  np.testing.assert_array_equal(seen["t"], aux["t_orig"])
  assert aux["loss"].shape == (B,) and float(loss) == float(jnp.mean(aux["loss"]))
  # Same t for image and labels: the image is x_t at t, the label is masked at t.
  ac = DIFF.table("alphas_cumprod")[np.asarray(aux["t"])]
  assert np.all(np.abs(np.asarray(seen["x"]).std((1, 2, 3))) > 0)
  assert ac.shape == (B,)


def test_label_diffusion_uses_the_image_timestep():
  # Uniform schedule on a large map: the kept fraction per sample is ~ 1 - t/T.
  b, h = 6, 96
  batch = {"image": np.zeros((b, h, h, 3), np.float32),
           "label": np.ones((b, h, h, 1), np.float32)}
  seen = {}

  def model(x, t, c):
    seen["c"] = c
    return jnp.zeros(x.shape[:-1] + (6,))

  sched = ld.LabelSchedule.create("uniform", num_original_steps=1000)
  aux, c = jax.jit(
      lambda k: (scdm_loss(model, DIFF, sched, batch, k, drop_rate=0.0)[1], seen["c"]))(rkey(3))
  seen["c"] = c
  frac = np.asarray(seen["c"]).mean((1, 2, 3))
  np.testing.assert_allclose(frac, 1 - np.asarray(aux["t_orig"]) / 1000, atol=0.03)


def test_class_ids_equal_one_hot():
  # The train step feeds class ids (-1 = unknown); the loss must match the one-hot input.
  ids = RNG.integers(-1, K, (B, H, W)).astype(np.int32)
  hot = np.where(ids[..., None] >= 0, np.eye(K, dtype=np.float32)[np.maximum(ids, 0)], 0.0)
  params = {"a": jnp.asarray(RNG.normal(size=(3 + K + 1, 3)) * 0.1, jnp.float32),
            "b": jnp.asarray(RNG.normal(size=(3 + K + 1, 3)) * 0.1, jnp.float32)}
  sched = ld.LabelSchedule.create("classwise", np.array([0.5, 20.0, 500.0]), 1000)
  model = lambda x, t, c: linear_model(params, x, t, c)
  out = [scdm_loss(model, DIFF, sched, dict(BATCH, label=lab), rkey(5), drop_rate=0.2,
                  num_label_channels=K)
         for lab in (hot, ids)]
  np.testing.assert_array_equal(out[0][0], out[1][0])
  assert float(out[0][0]) > 0
