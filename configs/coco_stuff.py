r"""COCO-Stuff (182 classes + unlabeled = 183, plus the instance-edge channel): the published SCDM settings.

256 px, SDM UNet (256 ch, mult 1,1,2,2,4,4, attention at 32/16/8), lr 1e-4, global batch 40,
EMA 0.9999, drop 0.2, class-wise label schedule, bf16 compute + remat, and the 25-step
sampling recipe (ddim25 stride, guidance 1.5, dynamic threshold 0.95, extrapolation 0.8).
The class-wise psi file is the reference's `coco_psiphi.npy` (mlvlab/SCDM repository root);
download it and pass its path, e.g. `--config.diffusion.psi_path=/path/to/coco_psiphi.npy`.

  python -m scdm_jax.main --config configs/coco_stuff.py --workdir gs://bucket/coco_stuff \
      --config.data.root=/data/coco_stuff
Variants (comma-separated after ':'): finetune (lr 2e-5), sample1000, runlocal.
"""

from scdm_jax.config_files import load_sibling


def _load_default():
  return load_sibling(__file__, "default")


def get_config(arg=None):
  default = _load_default()
  config = default.get_config()
  default.published(config, dataset="coco_stuff", num_classes=183, use_instance=True, lr=1e-4,
                    psi_path="coco_psiphi.npy", force_last_linear=True)
  return default.apply_variants(config, arg, preset="coco_stuff.py")
