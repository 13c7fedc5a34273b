"""Pure-jnp diffusion maths: schedules, image and label diffusion, losses, samplers.

Imports only numpy, jax and the standard library (no Flax, TF or clu).
"""

from scdm_jax.diffusion.gaussian import GaussianDiffusion
from scdm_jax.diffusion.label_diffusion import (
    LabelSchedule, cfg_drop, condition, diffuse_condition, diffuse_labels, load_psi, one_hot,
    psi_from_statistics, validate_label_map)
from scdm_jax.diffusion.losses import scdm_loss
from scdm_jax.diffusion.sampling import sample
from scdm_jax.diffusion.schedules import get_betas, space_timesteps

__all__ = [
    "GaussianDiffusion", "LabelSchedule", "cfg_drop", "condition", "diffuse_condition",
    "diffuse_labels", "get_betas", "load_psi", "one_hot", "psi_from_statistics", "sample",
    "scdm_loss", "space_timesteps", "validate_label_map",
]
