r"""CPU demo: the procedural dataset and a small UNet that learns in about fifteen minutes.

  python -m scdm_jax.main --config configs/demo.py --workdir /tmp/scdm_demo
  python -m scdm_jax.main --config configs/demo.py --workdir /tmp/scdm_demo --mode sample

Training writes TensorBoard logs and a sample grid (label | samples) to
/tmp/scdm_demo/images/; `--mode sample` writes PNGs to /tmp/scdm_demo/samples/.
The label schedule's psi comes from the procedural data's class statistics.
"""

from scdm_jax.config_files import load_sibling


def _load_default():
  return load_sibling(__file__, "default")


def get_config(arg=None):
  default = _load_default()
  default.check_variants(arg, known=(), preset="demo.py")
  config = default.get_config()
  config.data.name = "procedural"
  config.data.image_size = 32
  config.data.num_classes = 9
  config.data.use_instance = False

  config.model.model_channels = 32
  config.model.channel_mult = (1, 2)
  config.model.num_res_blocks = 1
  config.model.attention_resolutions = (2,)  # 16x16 feature map
  config.model.num_head_channels = 32

  config.diffusion.num_steps = 1000
  config.diffusion.label_schedule = "classwise"
  config.diffusion.psi_path = ""  # computed from the procedural data

  config.optim.lr = 1e-3
  config.optim.warmup_steps = 100
  config.optim.grad_clip = 1.0
  config.optim.ema_decay = 0.995
  config.optim.ema_warmup = True  # a short run: keep the EMA close to recent weights

  config.train.total_steps = 400
  config.train.batch_size = 8
  config.train.log_every = 25
  config.train.sample_every = 300
  config.train.num_sample_maps = 4
  config.train.checkpoint_every = 100
  config.train.keep_last = 2
  config.train.keep_every = 0

  config.sample.respacing = "ddim25"
  config.sample.guidance_scale = 1.5
  config.sample.num_samples_per_map = 2
  config.sample.batch_size = 8
  config.sample.source = "validation"
  config.sample.max_maps = 8
  return config
