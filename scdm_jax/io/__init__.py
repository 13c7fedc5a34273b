"""Files in and out: atomic writes, local-or-URL paths, images and masks, the progress bar,
and torch-free readers of third-party weight files (`weights`: safetensors, PyTorch zips).

Depends on numpy, Pillow and the standard library only (etils for URLs). Import the modules
directly (`from scdm_jax.io import fileio`); this package re-exports nothing.
"""
