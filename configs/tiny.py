"""Tiny config for tests: 16 px, a 32-channel one-level UNet, the 9 procedural classes, 3 steps."""

from scdm_jax.config_files import load_sibling


def _load_default():
  return load_sibling(__file__, "default")


def get_config(arg=None):
  default = _load_default()
  default.check_variants(arg, known=(), preset="tiny.py")
  config = default.get_config()
  config.data.name = "procedural"
  config.data.image_size = 16
  config.data.num_classes = 9

  config.model.model_channels = 32
  config.model.channel_mult = (1, 2)
  config.model.num_res_blocks = 1
  config.model.attention_resolutions = ()
  config.model.num_head_channels = 32

  config.diffusion.num_steps = 100
  config.diffusion.label_schedule = "classwise"
  config.diffusion.psi_path = ""

  config.optim.lr = 1e-3
  config.optim.ema_decay = 0.9

  config.train.total_steps = 3
  config.train.batch_size = 8
  config.train.log_every = 1
  config.train.sample_every = 0
  config.train.num_sample_maps = 2
  config.train.checkpoint_every = 1
  config.train.keep_last = 5
  config.train.keep_every = 0
  config.train.async_checkpoint = False

  config.sample.respacing = "4"
  config.sample.num_samples_per_map = 1
  config.sample.batch_size = 8
  config.sample.max_maps = 2
  return config
