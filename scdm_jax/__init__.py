"""SCDM in JAX/Flax NNX: label diffusion, class-wise schedules and a SPADE UNet."""

__version__ = "0.1.0"
