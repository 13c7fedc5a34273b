"""The SCDM train step: loss, gradient (optionally accumulated), AdamW, EMA, finite guard.

`make_train_step` returns the pure `train_step(state, batch) -> (state, metrics)`;
`compile_train_step` jits it with the state's and the batch's `NamedSharding`s (state
donated) and compiles it ahead of the loop for the global batch shape. The batch holds
class ids (`label` (B, S, S) int32, -1 = unknown); the loss one-hots them on the device.
There is no program cache here: a repeated compile in one process, or a new process on
the same program, is served by jax's persistent compilation cache when it is configured
(`jax_compilation_cache_dir`), which keys on the program itself.
"""

from __future__ import annotations

import contextlib
import time

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from scdm_jax import compile_options
from scdm_jax import sharding
from scdm_jax import state as state_lib
from scdm_jax.diffusion import label_diffusion
from scdm_jax.diffusion import losses
from scdm_jax.diffusion.gaussian import GaussianDiffusion
from scdm_jax.io import host_memory
from scdm_jax.models import conv
from scdm_jax.training import accumulate


def make_train_step(config: ml_collections.ConfigDict, graphs: state_lib.Graphs,
                    diffusion: GaussianDiffusion,
                    label_schedule: label_diffusion.LabelSchedule, mesh):
  """Returns `train_step(state, batch) -> (state, metrics)` (not yet jitted)."""
  accum = int(config.train.grad_accum)
  decay = float(config.optim.ema_decay)
  ema_warmup = bool(config.optim.get("ema_warmup", False))
  drop_rate = float(config.diffusion.drop_rate)
  dropout = float(config.model.dropout)
  lr_fn = state_lib.lr_schedule(config.optim)
  k = int(config.data.num_classes)
  batch_sh = sharding.batch_sharding(mesh)

  # At few classes the one-hot lookup's backward (a scatter-add) costs more than the dense
  # conv's, so the step differentiates the dense conv (docs/performance.md); same result.
  lookup = None if k > int(config.model.get("dense_train_max_classes", 0)) else False
  conv_grad = _conv_grad_choice(config.train.get("conv_weight_grad", "auto"))

  def loss_fn(params, batch, key):
    with conv_grad:  # a trace-time choice of the convolutions' backward
      return _loss(params, batch, key)

  def _loss(params, batch, key):
    model = nnx.merge(graphs.model, params)
    drop_key, loss_key = jax.random.split(key)
    if dropout > 0:
      rngs = nnx.Rngs(dropout=drop_key)
      apply = lambda x, t, c: model(x, t, c, deterministic=False, rngs=rngs,
                                    onehot_lookup=lookup)
    else:
      apply = lambda x, t, c: model(x, t, c, onehot_lookup=lookup)
    loss, aux = losses.scdm_loss(apply, diffusion, label_schedule, batch, loss_key,
                                 drop_rate=drop_rate, num_label_channels=k)
    terms = {"loss": loss, "mse": jnp.mean(aux["mse"]), "vb": jnp.mean(aux["vb"])}
    return loss, terms

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  _terms_and_grads = lambda out: (out[0][1], out[1])  # ((loss, terms), grads)

  def train_step(st: state_lib.TrainState, batch):
    step = state_lib.step_of(st)
    key = jax.random.fold_in(jax.random.wrap_key_data(st.rng), step)
    grad_of = lambda mb, key_: _terms_and_grads(grad_fn(st.params, mb, key_))
    terms, grads = accumulate.mean_over_micro_batches(grad_of, batch, key, accum, batch_sh)

    grad_norm = optax.tree.norm(grads)
    model = nnx.merge(graphs.model, st.params)
    opt = nnx.merge(graphs.opt, st.opt)
    opt.update(model, grads)
    _, new_params = nnx.split(model, nnx.Param)
    _, new_opt = nnx.split(opt)
    new_ema = state_lib.ema_update(st.ema, new_params,
                                   state_lib.ema_decay_at(step, decay, ema_warmup))
    param_norm = optax.tree.norm(new_params)
    # Refuse the update if the loss, the gradient or the updated params are not finite.
    finite = jnp.isfinite(terms["loss"]) & jnp.isfinite(grad_norm) & jnp.isfinite(param_norm)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = state_lib.TrainState(
        params=keep(new_params, st.params), opt=keep(new_opt, st.opt),
        ema=keep(new_ema, st.ema), rng=st.rng)
    metrics = dict(terms, grad_norm=grad_norm, param_norm=param_norm, lr=lr_fn(step),
                   finite=finite.astype(jnp.float32))
    return new_state, metrics

  return train_step


CONV_WEIGHT_GRADS = ("auto", "xla", "taps")


def _conv_grad_choice(name: str):
  if name not in CONV_WEIGHT_GRADS:
    raise ValueError(f"train.conv_weight_grad={name!r} is unknown; use one of "
                     f"{', '.join(CONV_WEIGHT_GRADS)}")
  return contextlib.nullcontext() if name == "auto" else conv.use_im2col_grad(name == "taps")


def compile_train_step(config, graphs, diffusion, label_schedule, mesh, shardings,
                        abstract_state, per_process_batch: int):
  step_fn = make_train_step(config, graphs, diffusion, label_schedule, mesh)
  s = int(config.data.image_size)
  b = per_process_batch * jax.process_count()
  bsh = sharding.batch_sharding(mesh)
  batch = {"image": jax.ShapeDtypeStruct((b, s, s, 3), jnp.float32, sharding=bsh),
           # Class ids (-1 = unknown); the loss one-hots them on the device.
           "label": jax.ShapeDtypeStruct((b, s, s), jnp.int32, sharding=bsh)}
  if config.data.use_instance:
    batch["edge"] = jax.ShapeDtypeStruct((b, s, s, 1), jnp.float32, sharding=bsh)
  jitted = jax.jit(step_fn, in_shardings=(shardings, bsh),
                   out_shardings=(shardings, sharding.replicated(mesh)),
                   donate_argnums=(0,))
  t0 = time.time()
  compiled = jitted.lower(
      state_lib.abstract_with_shardings(abstract_state, shardings), batch).compile(
          compile_options.compiler_options())
  logging.info("Compiled the train step in %.1f s (global batch %d, grad_accum %d).",
               time.time() - t0, b, int(config.train.grad_accum))
  logging.info("%s", memory_note(compiled))
  host_memory.release_freed()  # the compiler's freed host memory
  return compiled, batch


def memory_note(compiled) -> str:
  """XLA's per-device buffer estimate of a compiled program, as one line."""
  try:
    m = compiled.memory_analysis()
    gib = lambda n: n / 2**30
    return (f"XLA's per-device estimate for the train step: "
            f"{gib(m.argument_size_in_bytes):.2f} GiB arguments (state + batch), "
            f"{gib(m.temp_size_in_bytes):.2f} GiB temporaries (activations for the "
            f"backward), {gib(m.output_size_in_bytes - m.alias_size_in_bytes):.2f} GiB of "
            "outputs beyond the donated state.")
  except Exception:  # pylint: disable=broad-except  (not every backend reports it)
    return "XLA gave no memory estimate for the train step on this backend."

