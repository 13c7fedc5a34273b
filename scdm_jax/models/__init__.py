"""The SDM/SCDM UNet in Flax NNX and the PyTorch checkpoint conversion."""
