r"""CelebAMask-HQ (19 parts, edge channel from the label map), lr 2e-5: the published SCDM settings.

256 px, SDM UNet (256 ch, mult 1,1,2,2,4,4, attention at 32/16/8), lr 2e-5, global batch 40,
EMA 0.9999, drop 0.2, class-wise label schedule, bf16 compute + remat, and the 25-step
sampling recipe (ddim25 stride, guidance 1.5, dynamic threshold 0.95, extrapolation 0.8).
The class-wise psi file is the reference's `celeba_psiphi.npy` (mlvlab/SCDM repository root);
download it and pass its path, e.g. `--config.diffusion.psi_path=/path/to/celeba_psiphi.npy`.

  python -m scdm_jax.main --config configs/celebamask_hq.py --workdir gs://bucket/celebamask_hq \
      --config.data.root=/data/celebamask_hq
Variants (comma-separated after ':'): finetune (lr 2e-5), sample1000, runlocal.
"""

from scdm_jax.config_files import load_sibling


def _load_default():
  return load_sibling(__file__, "default")


def get_config(arg=None):
  default = _load_default()
  config = default.get_config()
  default.published(config, dataset="celebamask_hq", num_classes=19, use_instance=True, lr=2e-5,
                    psi_path="celeba_psiphi.npy", force_last_linear=False)
  return default.apply_variants(config, arg, preset="celebamask_hq.py")
