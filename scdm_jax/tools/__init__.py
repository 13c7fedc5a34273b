"""Command-line tools (`python -m scdm_jax.tools.<name>`)."""
