"""Evaluation metrics: FID/KID (TF-FID Inception-v3), LPIPS diversity, mIoU, run reports.

Network weights are never downloaded: Inception and AlexNet-LPIPS are loaded from npz files the
user converts once (``convert_inception``, ``convert_lpips``); segmenters are pluggable. See
docs/evaluation.md for the protocol and its conventions.

The submodules are imported lazily by the caller (``from scdm_jax.evaluation import fid``),
so importing this package pulls in neither Flax nor torch.
"""
