"""Paint by Example with the released settings (Yang et al., CVPR 2023).

  python -m scdm_jax.main --mode paint --config configs/paint_by_example.py \
      --config.paint.weights=PATH --config.paint.source=photo.png \
      --config.paint.mask=mask.png --config.paint.exemplar=object.jpg --workdir /tmp/paint

Variants: `:official` follows the official repository's script instead of diffusers'
pipeline (exemplar squashed to 224x224, mask resized bilinearly); `:fast` is 25 DDIM steps
with the kept pixels pasted back. The released model works at 512x512.

`:cpu_demo` is a small model that trains on a CPU from scratch (procedural data, pixel
space, tiny UNet, a CLIP-shaped tower pretrained to predict crop class histograms and then
frozen); `:naive` (implies cpu_demo) is the paper's ablation baseline: every encoder token
as context, no exemplar augmentation, box masks only (docs/paint_by_example.md):

  python -m scdm_jax.main --mode train --config configs/paint_by_example.py:cpu_demo \
      --workdir /tmp/pbe_demo

Training (`--mode train`, task paint_by_example) with the released settings: AdamW lr 1e-5
(torch's default weight decay 0.01), 10k-step linear warm-up, 4 per device (global 32 on the
released 8 GPUs: set train.batch_size to 4 x your devices), no EMA, exemplar dropout 0.2:

  python -m scdm_jax.main --mode train --config configs/paint_by_example.py \
      --config.paint_train.init=PBE_OR_EXPORT [--config.paint_train.sd_unet=SD_V1/unet] \
      --config.data.name=coco_stuff --config.data.root=DATA --workdir /tmp/pbe_train
"""

from scdm_jax.config_files import load_sibling


def get_config(arg=None):
  default = load_sibling(__file__, "default")
  variants = default.check_variants(arg, known=("official", "fast", "cpu_demo", "naive"),
                                    preset="paint_by_example.py")
  config = default.get_config()
  paint = config.paint
  paint.num_steps = 50
  paint.guidance_scale = 5.0
  paint.sampler = "pndm"
  config.task = "paint_by_example"  # --mode train trains Paint by Example
  config.optim.lr = 1e-5
  config.optim.weight_decay = 0.01
  config.optim.warmup_steps = 10_000
  config.optim.grad_clip = 0.0
  config.train.batch_size = 32
  config.train.grad_accum = 1
  config.paint_train.uncond_prob = 0.2
  config.paint_train.image_size = 512
  if "official" in variants:
    paint.exemplar_resize = "squash"
    paint.mask_resize = "bilinear"
  if "fast" in variants:
    paint.sampler = "ddim"
    paint.num_steps = 25
    paint.paste_back = True
  if "cpu_demo" in variants or "naive" in variants:
    _cpu_demo(config, naive="naive" in variants)
  return config


def _cpu_demo(config, naive: bool):
  """The small model that trains on a CPU (see the module docstring)."""
  config.paint_train.scratch = True
  config.paint_train.image_size = 16  # the CPU budget: 16 px scenes, 16 px exemplars
  config.data.name = "procedural"
  config.data.image_size = 64  # boxes and crops at 64 px, scenes resized to 16
  config.data.num_examples = 1024
  config.paint_train.scratch_unet_channels = (32, 64)  # 0.99 M: learns far faster per step than (16, 32)
  config.optim.lr = 1e-3
  config.optim.warmup_steps = 100
  config.optim.cosine_steps = 2400  # to 0 at the last step: the demo has no EMA to smooth it
  config.optim.weight_decay = 0.0
  config.optim.grad_clip = 1.0
  config.train.batch_size = 16
  config.train.total_steps = 2500
  config.train.log_every = 50
  config.train.checkpoint_every = 250
  config.paint.sampler = "ddim"
  config.paint.num_steps = 25
  config.paint.guidance_scale = 3.0
  config.paint.paste_back = True
  if naive:  # the paper's baseline: every token, no augmentation, box masks only
    config.paint_train.context_tokens = "all"
    config.paint_train.augment = False
    config.paint_train.bezier_prob = 0.0
