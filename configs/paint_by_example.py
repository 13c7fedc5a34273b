"""Paint by Example with the released settings (Yang et al., CVPR 2023).

  python -m scdm_jax.main --mode paint --config configs/paint_by_example.py \
      --config.paint.weights=PATH --config.paint.source=photo.png \
      --config.paint.mask=mask.png --config.paint.exemplar=object.jpg --workdir /tmp/paint

Variants: `:official` follows the official repository's script instead of diffusers'
pipeline (exemplar squashed to 224x224, mask resized bilinearly); `:fast` is 25 DDIM steps
with the kept pixels pasted back. The released model works at 512x512.
"""

from scdm_jax.config_files import load_sibling


def get_config(arg=None):
  default = load_sibling(__file__, "default")
  variants = default.check_variants(arg, known=("official", "fast"),
                                    preset="paint_by_example.py")
  config = default.get_config()
  paint = config.paint
  paint.num_steps = 50
  paint.guidance_scale = 5.0
  paint.sampler = "pndm"
  if "official" in variants:
    paint.exemplar_resize = "squash"
    paint.mask_resize = "bilinear"
  if "fast" in variants:
    paint.sampler = "ddim"
    paint.num_steps = 25
    paint.paste_back = True
  return config
