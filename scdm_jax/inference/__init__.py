"""Inference pipelines built on pretrained third-party weights (Paint by Example)."""
