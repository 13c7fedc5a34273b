"""Readers for third-party weight files (safetensors and PyTorch checkpoints), torch-free."""
