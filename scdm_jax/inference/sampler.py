"""The jitted sampling program of a config: label maps (class ids) in, images out.

`make_sample_fn` returns `fn(params, labels, key) -> images` with `labels` a dict of
`label` (B, H, W) int32 class ids (-1 = unknown) and, with `data.use_instance`, `edge`
(B, H, W, 1). The one-hot conditioning is built inside the program, so the host and the
host-to-device copy carry ids only. The sampler settings come from `config.sample`.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
from flax import nnx

from scdm_jax import compile_options
from scdm_jax import recipe
from scdm_jax import sharding
from scdm_jax import state as state_lib
from scdm_jax.diffusion import label_diffusion
from scdm_jax.diffusion import sampling
from scdm_jax.diffusion.gaussian import GaussianDiffusion


def make_sample_fn(config: ml_collections.ConfigDict, graphs: state_lib.Graphs, mesh,
                   param_shardings: Any, label_schedule: label_diffusion.LabelSchedule,
                   progress=None) -> tuple[Any, GaussianDiffusion]:
  """Jitted `fn(params, labels, key) -> images` on the config's sampling chain.

  Returns:
    `(fn, diffusion)`: the program and the (respaced) chain it samples on.
  """
  sc = config.sample
  diffusion = recipe.make_diffusion(config, respacing=sc.respacing or None)
  k = int(config.data.num_classes)

  def fn(params, labels, key):
    model = nnx.merge(graphs.model, params)
    cond = label_diffusion.condition(labels["label"], k, labels.get("edge"))
    return sampling.sample(
        model, diffusion, label_schedule, cond, key, sampler=sc.sampler, eta=float(sc.eta),
        guidance_scale=float(sc.guidance_scale),
        dynamic_threshold=float(sc.dynamic_threshold),
        extrapolation=float(sc.extrapolation), label_mode=sc.label_mode,
        num_label_channels=k, progress=progress)

  bsh = sharding.batch_sharding(mesh)
  return jax.jit(fn, in_shardings=(param_shardings, bsh, sharding.replicated(mesh)),
                 out_shardings=bsh,
                 compiler_options=compile_options.compiler_options()), diffusion
