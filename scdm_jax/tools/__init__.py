"""Command-line tools beside the modes (`python -m scdm_jax.tools.<name>`): `strokes`
(guides and masks for editing), `convert` (official SDM/SCDM PyTorch checkpoints ->
inference checkpoints) and `convert_pbe` (Paint by Example weights -> an export)."""
