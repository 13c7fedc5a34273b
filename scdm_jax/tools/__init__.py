"""Command-line tools beside the modes: `strokes` (guides and masks for editing) and
`convert` (official PyTorch checkpoints -> inference checkpoints)."""
