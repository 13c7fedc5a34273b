"""Training state: the UNet, its optimizer and a float32 EMA, built straight into shardings.

The state is kept as a plain pytree (`TrainState`) of `nnx.State`s so that one `jax.jit`
program can take and return it with `NamedSharding`s and donation:

* `params`: the model's `nnx.Param`s (float32; the compute dtype is a model option). The
  UNet has no other state: `nnx.split(model, nnx.Param)` refuses a model that has some;
* `opt`: the `nnx.Optimizer` state (optax AdamW state and the step counter);
* `ema`: float32 EMA of `params`;
* `rng`: the base PRNG key (raw uint32 key data); step `s` uses `fold_in(rng, s)`, so a
  resumed run draws the same randomness as an uninterrupted one.

`graphs_and_abstract` traces the constructor with `nnx.eval_shape`, and
`sharding.state_shardings` turns the shapes into shardings. The values are built once on
the host CPU (eagerly: seconds, where one jitted initialiser took minutes to compile) and
each process places its shards of them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from scdm_jax import recipe
from scdm_jax import sharding
from scdm_jax.io import host_memory
from scdm_jax.models.unet import UNet, UNetConfig


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
  params: Any
  opt: Any
  ema: Any
  rng: Any


@dataclasses.dataclass(frozen=True)
class Graphs:
  """Static structure needed to rebuild modules from state (never passed through jit)."""
  model: Any  # nnx.GraphDef of the UNet
  opt: Any  # nnx.GraphDef of the nnx.Optimizer
  unet_config: UNetConfig


def lr_schedule(optim: ml_collections.ConfigDict) -> Callable[[Any], Any]:
  """Linear warm-up from 0 to `lr`, then constant, or with `cosine_steps` > 0 a cosine to 0."""
  warmup, cosine = int(optim.warmup_steps or 0), int(optim.get("cosine_steps", 0) or 0)
  if cosine > 0:
    return optax.warmup_cosine_decay_schedule(0.0, optim.lr, warmup, warmup + cosine)
  if warmup > 0:
    return optax.linear_schedule(0.0, optim.lr, warmup)
  return optax.constant_schedule(optim.lr)


def make_tx(optim: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW with optional linear warm-up and global-norm clipping."""
  adamw = optax.adamw(lr_schedule(optim), b1=optim.b1, b2=optim.b2, eps=optim.eps,
                      weight_decay=optim.weight_decay)
  if optim.grad_clip and optim.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(optim.grad_clip), adamw)
  return adamw


def _build(ucfg: UNetConfig, tx, key):
  model = UNet(ucfg, rngs=nnx.Rngs(params=key))
  opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
  return model, opt


def graphs_and_abstract(config: ml_collections.ConfigDict
                        ) -> tuple[Graphs, TrainState]:
  """Static graph definitions and the abstract (ShapeDtypeStruct) train state."""
  ucfg = recipe.unet_config(config)
  tx = make_tx(config.optim)
  model, opt = nnx.eval_shape(lambda: _build(ucfg, tx, jax.random.key(0)))
  model_gd, params = nnx.split(model, nnx.Param)
  opt_gd, opt_state = nnx.split(opt)
  ema = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, jnp.float32), params)
  key = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0)))
  return (Graphs(model_gd, opt_gd, ucfg),
          TrainState(params=params, opt=opt_state, ema=ema, rng=key))


def train_state_shardings(config: ml_collections.ConfigDict, mesh,
                          abstract: TrainState) -> TrainState:
  fsdp_min = int(config.mesh.fsdp_min_size)
  return TrainState(
      params=sharding.state_shardings(mesh, abstract.params, fsdp_min),
      opt=sharding.state_shardings(mesh, abstract.opt, fsdp_min),
      ema=sharding.state_shardings(mesh, abstract.ema, fsdp_min),
      rng=sharding.replicated(mesh))


def create_train_state(config: ml_collections.ConfigDict, mesh, seed: int
                       ) -> tuple[Graphs, TrainState, TrainState]:
  """Initialises the state directly into its shardings.

  Returns:
    `(graphs, state, shardings)`.
  """
  graphs, abstract = graphs_and_abstract(config)
  shardings = train_state_shardings(config, mesh, abstract)
  # Built eagerly on the host CPU, then each process places its own shards. One jitted
  # initialiser of every parameter took minutes to compile (13+ min at 50 M parameters on a
  # CPU); eagerly the parameters cost one compiled block program (models/initializers.py).
  # The values depend only on the seed, not on the backend or the mesh.
  with jax.default_device(jax.local_devices(backend="cpu")[0]):
    host = _init(config, graphs, jax.random.key(seed))
  state = sharding.device_put_tree(host, shardings)
  del host
  host_memory.release_freed()
  return graphs, state, shardings


def _init(config, graphs: Graphs, seed_key) -> TrainState:
  init_key, train_key = jax.random.split(seed_key)
  model, opt = _build(graphs.unet_config, make_tx(config.optim), init_key)
  _, params = nnx.split(model, nnx.Param)
  _, opt_state = nnx.split(opt)
  # A copy: params and EMA are donated separately, so they must not share a host buffer.
  ema = jax.tree.map(lambda p: np.array(p, dtype=np.float32), params)
  return TrainState(params=params, opt=opt_state, ema=ema,
                    rng=jax.random.key_data(train_key))


def abstract_with_shardings(abstract: Any, shardings: Any) -> Any:
  return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def step_of(state: TrainState) -> jax.Array:
  """The optimizer step counter (number of updates applied)."""
  return state.opt["step"].get_value() if hasattr(state.opt["step"], "get_value") \
      else state.opt["step"].value


# ---------------------------------------------------------------------------
# Conversion to / from the checkpoint layout (nested dicts of arrays).
# ---------------------------------------------------------------------------


def to_checkpoint(state: TrainState) -> dict[str, Any]:
  return {
      "params": nnx.to_pure_dict(state.params),
      "opt": nnx.to_pure_dict(state.opt),
      "ema": nnx.to_pure_dict(state.ema),
      "rng": state.rng,
  }


def from_checkpoint(tree: dict[str, Any], like: TrainState) -> TrainState:
  """Fills a copy of `like`'s `nnx.State`s with the restored arrays."""
  out = {}
  for name in ("params", "opt", "ema"):
    st = jax.tree.map(lambda x: x, getattr(like, name))
    nnx.replace_by_pure_dict(st, tree[name])
    out[name] = st
  return TrainState(rng=tree["rng"], **out)


def ema_decay_at(step, decay: float, warmup: bool):
  """The EMA decay used after optimizer step `step` (0-based).

  Without warmup it is the constant `decay` (the reference). With warmup it is
  min(decay, (1 + step) / (10 + step)): early in training, when the weights move fast, a
  0.9999 average over a few hundred steps is a mix of very different networks that samples
  noise; the warmup keeps the average close to recent weights until `decay` takes over.
  """
  if not warmup:
    return jnp.asarray(decay, jnp.float32)
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(jnp.float32(decay), (1.0 + step) / (10.0 + step))


def ema_update(ema: Any, params: Any, decay) -> Any:
  return jax.tree.map(lambda e, p: e * decay + p.astype(jnp.float32) * (1.0 - decay),
                      ema, params)


def params_from_pure(graphs: Graphs, pure: dict[str, Any], shardings: Any | None = None):
  """An `nnx.State` of params (for `graphs.model`) from a pure dict (e.g. an export)."""
  _, abstract_params = nnx.split(
      nnx.eval_shape(lambda: UNet(graphs.unet_config, rngs=nnx.Rngs(0))), nnx.Param)
  flat_want = {k: v.shape for k, v in jax.tree_util.tree_leaves_with_path(
      nnx.to_pure_dict(abstract_params))}
  flat_got = {k: np.shape(v) for k, v in jax.tree_util.tree_leaves_with_path(pure)}
  # Orbax returns int keys as strings; compare on strings.
  norm = lambda d: {tuple(str(getattr(e, "key", e)) for e in k): v for k, v in d.items()}
  flat_want, flat_got = norm(flat_want), norm(flat_got)
  if flat_want != flat_got:
    missing = sorted(set(flat_want) - set(flat_got))[:5]
    extra = sorted(set(flat_got) - set(flat_want))[:5]
    shape = [(k, flat_got[k], flat_want[k]) for k in flat_want
             if k in flat_got and flat_got[k] != flat_want[k]][:5]
    raise ValueError(
        "The checkpoint's parameters do not fit the configured model: "
        f"missing {missing}, unexpected {extra}, shape mismatches (name, got, want) {shape}. "
        "Check config.model against the checkpoint's meta['model'].")
  st = jax.tree.map(lambda x: x, abstract_params)
  nnx.replace_by_pure_dict(st, pure)
  if shardings is not None:
    st = sharding.device_put_tree(st, shardings)
  return st
