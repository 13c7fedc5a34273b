r"""Cityscapes (35 label ids, instance edges; no psi shipped by the reference): the published SCDM settings.

256 px, SDM UNet (256 ch, mult 1,1,2,2,4,4, attention at 32/16/8), lr 1e-4, global batch 40,
EMA 0.9999, drop 0.2, class-wise label schedule, bf16 compute + remat, and the 25-step
sampling recipe (ddim25 stride, guidance 1.5, dynamic threshold 0.95, extrapolation 0.8).
The reference ships no psi for this dataset: compute one with the data part's
class-statistics command and pass `--config.diffusion.psi_path=...`.

  python -m scdm_jax.main --config configs/cityscapes.py --workdir gs://bucket/cityscapes \
      --config.data.root=/data/cityscapes
Variants (comma-separated after ':'): finetune (lr 2e-5), sample1000, runlocal.
"""

from scdm_jax.config_files import load_sibling


def _load_default():
  return load_sibling(__file__, "default")


def get_config(arg=None):
  default = _load_default()
  config = default.get_config()
  default.published(config, dataset="cityscapes", num_classes=35, use_instance=True, lr=1e-4,
                    psi_path="", force_last_linear=False)
  return default.apply_variants(config, arg, preset="cityscapes.py")
