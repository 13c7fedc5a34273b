"""Training building blocks below the train mode: the jitted step and preemption handling.

The loop itself (checkpoints, logging, sample grids) is `scdm_jax.modes.train`.
"""
