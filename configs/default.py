r"""Default SCDM configuration: the full schema, with every field documented.

Use:
  python -m scdm_jax.main --config configs/default.py --workdir /tmp/run \
      --config.train.batch_size=8 --config.model.dtype=bfloat16

Dataset presets (ade20k.py, coco_stuff.py, celebamask_hq.py, cityscapes.py), demo.py and
tiny.py start from `get_config()` here and change a few keys. Variants are chosen with
`--config configs/ade20k.py:finetune` (the part after ':' is passed to `get_config`).

Schema (sections):
  data       input pipeline (scdm_jax.data.create_dataset): dataset, splits, label noise,
             augmentation and tf.data knobs. Every field is read; none has a default
             elsewhere.
  model      the fields of scdm_jax.models.unet.UNetConfig; num_classes (label channels +
             the edge channel) and edge_channel are derived from data (scdm_jax.recipe).
  diffusion  image diffusion (beta_schedule, num_steps), label diffusion (label_schedule,
             psi_path, force_last_linear, ...) and the classifier-free drop rate.
  optim      AdamW (lr, b1, b2, eps, weight_decay), warmup_steps, cosine_steps, grad_clip, ema_decay.
  train      total_steps, batch_size (GLOBAL, over all devices and hosts), grad_accum,
             cadences (log/sample/checkpoint), retention, seed.
  sample     sampler settings for periodic grids and `--mode sample`.
  edit, eval `--mode edit` (SDEdit, masked editing) and `--mode evaluate`.
  paint      `--mode paint`: Paint by Example (weights, source/mask/exemplar, sampler).
  task       what `--mode train` trains: scdm (default) | paint_by_example.
  paint_train  `--mode train` with task=paint_by_example: init weights, exemplar dropout,
             scene size (optim and train are shared; no EMA; data: the boxes source).
  serve      `--mode serve` (the browser painter): host, port, checkpoint(s), limits,
             the Paint-by-Example tab's weights.
  mesh       device mesh: data x fsdp (-1 = fill in), fsdp_min_size.
  init_from  optional inference checkpoint (save_export format) to start training from.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the default config; it has no variants (`default.py:x` is refused)."""
  check_variants(arg, known=(), preset="default.py")
  config = ml_collections.ConfigDict()

  # Shared values: overriding data.image_size also changes model.image_size.
  image_size = ml_collections.FieldReference(32)

  # --------------------------------------------------------------------------- data
  config.data = ml_collections.ConfigDict()
  config.data.name = "procedural"  # procedural | ade20k | coco_stuff | celebamask_hq | cityscapes
  config.data.root = ""  # dataset folder (local or gs://...); unused for procedural
  config.data.image_size = image_size
  config.data.num_classes = 9  # K semantic classes (one-hot channels), edge excluded
  config.data.use_instance = False  # add the instance-edge channel (L = K + 1)
  config.data.noise = "none"  # none | ds | edge | random (label corruption at eval/sample)
  config.data.unlabeled_to_zero = False  # reference flag: zero the last conditioning channel
  config.data.train_split = "train"
  config.data.eval_split = "validation"
  config.data.class_table = ""  # optional custom class-table JSON (names, colours)
  # Read labels from this folder instead (e.g. a `--mode corrupt` copy), matched by file name.
  config.data.label_dir = ""
  config.data.require_images = True  # False: label-only folders (the image is all-zero)
  config.data.num_examples = 0  # procedural: train-split size (0 = 1024); others: 0 = all
  config.data.procedural_seed = 0  # procedural: content seed (independent of train.seed)
  # Where examples are read from: "folders" (data.root's layout, or generated for procedural)
  # or "tfds" (array_record files written by `python -m scdm_jax.data.tfds_builders`, read by
  # random access; same order, sharding and resume as folders; docs/data.md).
  config.data.source = "folders"
  config.data.tfds_data_dir = ""  # source=tfds: the TFDS data_dir (local or gs://...)
  # source=tfds with a gs:// data_dir: each host copies the split's files here once (array_record
  # cannot open URLs); "" = ~/.cache/scdm_jax/tfds.
  config.data.tfds_cache_dir = ""
  # procedural: share of clean-map pixels left unlabeled (seams on boundaries + small blobs,
  # like ADE20K's unannotated pixels; 0 = all labelled, the maps of before this knob)
  config.data.procedural_unlabeled_share = 0.0
  # Label-noise parameters (data.noise; docs/data.md, scdm-method.md §7).
  config.data.random_rate = 0.1  # random: probability that a pixel becomes unlabeled
  config.data.ds_size = 64  # ds: the annotation is resized (nearest) to this size first
  config.data.edge_radius = 2  # edge: L1 dilation radius of the boundary band
  # procedural only: > 0 corrupts the same layout rendered at this size (the paper's 256)
  # with the settings above and carries the changed pixels down (noisy.corrupt_via_render)
  config.data.noise_render_size = 0
  config.data.flip = True  # training augmentation: random horizontal flip
  config.data.num_parallel_calls = -1  # tf.data map parallelism (-1 = AUTOTUNE)
  config.data.prefetch = 2  # batches prefetched by tf.data
  # Deprecated, unused (every epoch is a full permutation of the shard); kept so that old
  # command lines still load.
  config.data.shuffle_buffer = ml_collections.config_dict.placeholder(int)

  # -------------------------------------------------------------------------- model
  # Exactly the UNetConfig field names.
  config.model = ml_collections.ConfigDict()
  config.model.image_size = image_size
  config.model.in_channels = 3
  config.model.model_channels = 64
  config.model.out_channels = 6  # (eps, v): learned variance
  config.model.num_res_blocks = 2
  config.model.attention_resolutions = (4,)  # downsample factors, as in the reference
  config.model.channel_mult = (1, 2, 2)
  # Deprecated: derived from data.num_classes + data.use_instance (scdm_jax.recipe).
  config.model.num_classes = ml_collections.config_dict.placeholder(int)
  config.model.num_head_channels = 32
  config.model.num_heads = 1
  config.model.use_scale_shift_norm = True
  config.model.resblock_updown = True
  config.model.dropout = 0.0
  config.model.dtype = "float32"  # compute dtype: float32 | bfloat16 (params stay float32)
  config.model.remat = False  # rematerialise each block (memory for compute)
  config.model.onehot_lookup = True
  # Training at <= this many classes differentiates the dense SPADE conv instead of the
  # lookup (faster on the CPU at 8-36 classes, slower at 64+; 0 = always the lookup).
  config.model.dense_train_max_classes = 36
  config.model.num_heads_upsample = -1
  config.model.conv_resample = True
  config.model.use_new_attention_order = False
  # Deprecated: derived from data.use_instance (last label channel = instance edges).
  config.model.edge_channel = ml_collections.config_dict.placeholder(bool)
  # None = XLA attention; "cudnn" = fused cuDNN kernel on GPU (bf16 only).
  config.model.attention_implementation = ml_collections.config_dict.placeholder(str)

  # ---------------------------------------------------------------------- diffusion
  config.diffusion = ml_collections.ConfigDict()
  config.diffusion.beta_schedule = "linear"
  config.diffusion.num_steps = 1000
  # classwise | uniform | none. classwise reads psi from psi_path (.npy, one value per
  # label channel); with psi_path="" it is computed from the training data statistics
  # (procedural dataset only; for real datasets run the data part's class-statistics
  # command and point psi_path at its output).
  config.diffusion.label_schedule = "classwise"
  config.diffusion.psi_path = ""
  config.diffusion.force_last_linear = False  # ADE20K/COCO: unlabeled class -> linear
  # The reference code's label-schedule bugs, kept as options (docs/diffusion.md):
  config.diffusion.reference_tau_1000 = False  # tau = t / 1000 whatever num_steps is
  config.diffusion.reference_uniform_off_by_one = False  # uniform: 1-(k+1)/N on respaced k
  config.diffusion.drop_rate = 0.2  # classifier-free guidance: drop the whole condition

  # -------------------------------------------------------------------------- optim
  config.optim = ml_collections.ConfigDict()
  config.optim.lr = 1e-4
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.optim.eps = 1e-8
  config.optim.weight_decay = 0.0
  config.optim.warmup_steps = 0  # linear warm-up from 0 (0 = constant lr)
  config.optim.cosine_steps = 0  # > 0: after the warm-up, cosine decay to 0 over this many steps
  config.optim.grad_clip = 0.0  # global-norm clipping (0 = off)
  config.optim.ema_decay = 0.9999
  config.optim.ema_warmup = False  # True: decay min(ema_decay, (1+n)/(10+n)); not in the reference

  # -------------------------------------------------------------------------- train
  config.train = ml_collections.ConfigDict()
  config.train.total_steps = 100_000
  config.train.batch_size = 40  # GLOBAL batch over all devices and hosts
  config.train.grad_accum = 1  # micro-batches per step (memory knob)
  # The convolutions' weight gradient: "auto" or "xla" (XLA's own: the faster one with the
  # CPU's Eigen convolutions, scdm_jax/compile_options.py) or "taps" (per-tap products for
  # stride-1 convs: faster under YNNPACK convolutions, more memory; models/conv.py).
  config.train.conv_weight_grad = "auto"
  config.train.log_every = 100  # at least 1
  config.train.sample_every = 5000  # sample grid (0 = off)
  config.train.num_sample_maps = 4  # label maps in the grid
  config.train.checkpoint_every = 1000  # 0 = only at the end and on preemption
  config.train.keep_last = 3
  config.train.keep_every = 50_000  # also keep every K-th step (0 = off)
  config.train.async_checkpoint = True
  config.train.seed = 0
  # Multi-process runs without JAX's preemption service: steps between the processes'
  # agreement on a SIGTERM (the save comes at most this many steps after the signal).
  config.train.preemption_check_every = 10
  # gs:// workdirs: a train.lock whose heartbeat is older than this belongs to a run that is
  # gone and is broken (local locks are checked by pid instead).
  config.train.lock_stale_minutes = 15.0

  # ------------------------------------------------------------------------- sample
  config.sample = ml_collections.ConfigDict()
  config.sample.sampler = "ddpm"  # ddpm (ancestral, as SCDM) | ddim
  config.sample.eta = 0.0  # ddim only
  config.sample.respacing = "ddim25"  # timestep respacing ("" = all num_steps steps)
  config.sample.guidance_scale = 1.5
  config.sample.dynamic_threshold = 0.95  # 0 = static clip to [-1, 1]
  config.sample.extrapolation = 0.8
  config.sample.label_mode = "fresh"  # fresh (reference) | coupled
  config.sample.num_samples_per_map = 1
  config.sample.seed = 42
  config.sample.batch_size = 8  # global sampling batch (rounded up to the device count)
  # Labels: a dataset split name ("validation") or a label PNG / folder of PNGs.
  config.sample.source = "validation"
  # auto | ids | palette | raw_ids (for user PNGs; raw_ids = the data.name dataset's own id
  # convention, e.g. ADE20K annotation PNGs where 0 = unlabeled)
  config.sample.label_format = "auto"
  config.sample.max_maps = 0  # 0 = all maps of the source
  config.sample.checkpoint = ""  # inference checkpoint dir ("" = <workdir>/export, else latest train ckpt)
  config.sample.use_ema = True  # train checkpoints only: EMA (default) or raw params
  config.sample.output_dir = ""  # "" = <workdir>/samples

  # --------------------------------------------------------------------------- edit
  config.edit = ml_collections.ConfigDict()  # --mode edit (docs/editing.md)
  config.edit.guide = ""  # guide (SDEdit) / source (masked) image: PNG or folder
  config.edit.mask = ""  # "" = SDEdit; else mask PNG/folder, 0/1 or 0/255 (1 = regenerate)
  config.edit.label = ""  # "" = unconditional (null label); else label PNG/folder
  config.edit.strokes = ""  # masked mode: strokes pasted inside the mask
  config.edit.t0 = 0.5  # noise level on the linear-VP T=1000 scale, (0, 1]
  config.edit.alpha_bar = 0.0  # > 0: use this alpha-bar instead of t0
  config.edit.repeats = 1  # K
  config.edit.respacing = "ddim25"  # "" = the full chain
  config.edit.eta = 1.0  # DDIM only
  config.edit.dilate = 0  # mask dilation in pixels
  config.edit.num_samples = 1
  config.edit.output_dir = ""  # "" = <workdir>/edits

  # --------------------------------------------------------------------------- eval
  config.eval = ml_collections.ConfigDict()  # --mode evaluate (docs/evaluation.md)
  config.eval.metrics = "auto"  # comma list of fid,kid,lpips,miou,proxy_miou,proxy_fd | auto
  config.eval.samples_dir = ""  # "" = sample.output_dir, else <workdir>/samples
  config.eval.split = ""  # "" = data.eval_split
  config.eval.max_images = 0
  config.eval.batch_size = 50
  config.eval.inception_weights = ""  # npz from scdm_jax.evaluation.convert_inception
  config.eval.fid_stats = ""  # cached reference stats npz: read if present, else written
  config.eval.kid_subsets = 100
  config.eval.kid_subset_size = 1000
  config.eval.lpips_weights = ""
  config.eval.lpips_variant = "lpips"  # lpips | stargan_v2 (SCDM's double normalisation)
  config.eval.segmenter = ""  # registry name (e.g. proxy_procedural)
  config.eval.segmenter_weights = ""
  config.eval.proxy_weights = ""  # proxy segmenter npz (python -m scdm_jax.evaluation.proxy)
  config.eval.output = ""  # "" = <workdir>/eval/report.json

  # -------------------------------------------------------------------------- paint
  config.paint = ml_collections.ConfigDict()  # --mode paint (docs/paint_by_example.md)
  config.paint.weights = ""  # diffusers Paint-by-Example folder, model.ckpt, or an export
  config.paint.weights_config = ""  # model.ckpt only: a diffusers folder with its configs ("" = released)
  config.paint.source = ""  # source image (PNG/JPEG) or folder; sides divisible by 8
  config.paint.mask = ""  # mask PNG or folder (one per source name): 255 = repaint, 0 = keep
  config.paint.exemplar = ""  # exemplar image or folder (one per source name)
  config.paint.num_steps = 50  # PNDM makes num_steps + 1 network calls
  config.paint.guidance_scale = 5.0  # classifier-free guidance on the exemplar (<= 1: off)
  config.paint.sampler = "pndm"  # pndm (PLMS, the official sampler) | ddim
  config.paint.eta = 0.0  # ddim only
  config.paint.seed = 0
  config.paint.num_samples = 1  # samples per source
  config.paint.batch_size = 4  # sources per program call (rounded up to the device count)
  config.paint.paste_back = False  # copy the kept pixels of the source into the result
  config.paint.posterior = "sample"  # masked-image latents: sample (release) | mean
  config.paint.mask_resize = "nearest"  # mask -> latent size: nearest (diffusers) | bilinear (official code)
  config.paint.exemplar_resize = "processor"  # processor (CLIP resize + centre crop) | squash (official 224x224)
  config.paint.dtype = "float32"  # compute dtype: float32 | bfloat16 (params stay as stored)
  config.paint.output_dir = ""  # "" = <workdir>/paint

  # --------------------------------------------------------------------- paint_train
  # What `--mode train` trains: scdm | paint_by_example (the paint_train section below;
  # config.optim / config.train are shared, optim.ema_* unused: PbE keeps no EMA).
  config.task = "scdm"
  config.paint_train = ml_collections.ConfigDict()  # task=paint_by_example (docs/paint_by_example.md)
  # Paint-by-Example source for VAE, CLIP tower, encoder head and UNet: diffusers folder,
  # model.ckpt or export (PaintPipeline.load). Re-read on resume (frozen parts not checkpointed).
  config.paint_train.init = ""
  # Optional diffusers SD-v1 unet/ folder (4 input channels): replaces init's UNet, conv_in
  # widened to 9 with zero slices (step 0 = the base model). "" = init's UNet.
  config.paint_train.sd_unet = ""
  config.paint_train.uncond_prob = 0.2  # per example: context -> uncond_vector (CFG training)
  config.paint_train.mask_resize = "bilinear"  # keep mask -> latents: bilinear (official torchvision Resize) | nearest
  config.paint_train.image_size = 512  # scene side S in pixels (divisible by the VAE factor)
  config.paint_train.export_dir = ""  # trained pipeline for --mode paint ("" = <workdir>/export)
  # Build the init pipeline from scratch instead (the small CPU demo, configs/paint_by_example.py:cpu_demo):
  # tiny UNet in pixel space (identity autoencoder), CLIP-shaped tower pretrained on procedural
  # crops to predict their class histogram, then frozen; written to <workdir>/init (used on resume).
  config.paint_train.scratch = False
  config.paint_train.scratch_unet_channels = (16, 32)  # scratch UNet widths per level (cross-attention below full resolution)
  config.paint_train.scratch_encoder_width = 32  # scratch CLIP tower width (4 heads, MLP 4x)
  config.paint_train.scratch_encoder_layers = 2  # scratch CLIP tower layers (mapper: (layers + 1) // 5 blocks, 0 here)
  config.paint_train.scratch_context_dim = 32  # scratch proj_out width = UNet cross_attention_dim
  config.paint_train.encoder_size = 16  # scratch exemplar side in pixels (patch 4)
  config.paint_train.pretrain_encoder_steps = 200  # scratch: tower pretraining steps (batch 64; 0 = random tower)
  config.paint_train.pretrain_encoder_lr = 1e-3  # scratch: tower pretraining AdamW peak lr (cosine decay)
  config.paint_train.pretrain_encoder_images = 256  # scratch: procedural images the pretraining crops come from
  # Exemplar tokens given to the UNet: pooled (the recipe's one-token bottleneck) | all (the
  # naive ablation: every tower token; scratch only).
  config.paint_train.context_tokens = "pooled"
  config.paint_train.augment = True  # reference augmentation (flip, rotation, blur, elastic); False: the naive ablation
  config.paint_train.bezier_prob = 0.5  # share of Bezier-polygon holes (0 = box masks only, the naive ablation)

  # ------------------------------------------------------------------------- serve
  config.serve = ml_collections.ConfigDict()  # --mode serve: the browser painter
  config.serve.host = "127.0.0.1"  # localhost only; "0.0.0.0" exposes it to the network
  config.serve.port = 8765  # 0 = any free port (the URL is printed)
  config.serve.checkpoint = ""  # "" = as --mode sample (sample.checkpoint, <workdir>/export, ...)
  config.serve.compare_checkpoint = ""  # a second (e.g. SDM) export shown side by side
  config.serve.steps = 25  # default sampling steps in the page
  config.serve.num_samples = 2  # default samples per generation
  config.serve.max_upload_mb = 8  # request body limit
  config.serve.max_upload_pixels = 4096 * 4096  # decoded upload limit
  # A Paint-by-Example folder, model.ckpt or export (as paint.weights) for the page's
  # exemplar tab ("" = no tab); paint.{num_steps, guidance_scale, sampler, paste_back} are
  # its defaults, paint.{weights_config, dtype} apply as in --mode paint.
  config.serve.paint_weights = ""

  # -------------------------------------------------------------------------- mesh
  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1
  config.mesh.fsdp = 1
  config.mesh.fsdp_min_size = 2**18  # arrays with fewer elements are replicated

  config.init_from = ""  # inference checkpoint (EMA weights) to initialise params + EMA
  # Start-up checks (scdm_jax/accelerator.py): stop with one line when JAX finds only the CPU,
  # e.g. a GPU build that failed to load (off: the CPU is allowed).
  config.require_accelerator = False
  # model/paint dtype bfloat16 -> float32 (one warning) on the CPU and on GPUs with compute
  # capability < 8.0, where bfloat16 is emulated or slow.
  config.bf16_fallback = True
  return config


# ---------------------------------------------------------------------------------
# Helpers shared by the presets (imported by path, see `load_default` in each preset).
# ---------------------------------------------------------------------------------


def parse_variant(arg: str | None) -> dict[str, str | bool]:
  """Parses `file.py:a,b=c` variants into `{"a": True, "b": "c"}`."""
  out = {}
  for item in (arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    key, sep, value = item.partition("=")
    out[key.strip()] = value.strip() if sep else True
  return out


def check_variants(arg: str | None, *, known: tuple[str, ...], preset: str
                   ) -> dict[str, str | bool]:
  """`parse_variant(arg)`, refusing any variant not in `known` with a one-line error."""
  variants = parse_variant(arg)
  unknown = sorted(set(variants) - set(known))
  if unknown:
    hint = (f"known: {', '.join(known)} (comma-separated, e.g. configs/{preset}:{known[0]})"
            if known else f"configs/{preset} has no variants: drop the ':{arg}'")
    raise ValueError(f"Unknown config variant(s) {unknown} for configs/{preset}; {hint}.")
  return variants


def published(config: ml_collections.ConfigDict, *, dataset: str, num_classes: int,
              use_instance: bool, lr: float, psi_path: str,
              force_last_linear: bool) -> ml_collections.ConfigDict:
  """Applies the published SCDM settings (scdm-method.md §4.3, §5.1, §6.2) in place."""
  config.data.name = dataset
  config.data.image_size = 256
  config.data.num_classes = num_classes
  config.data.use_instance = use_instance

  config.model.model_channels = 256
  config.model.channel_mult = (1, 1, 2, 2, 4, 4)
  config.model.num_res_blocks = 2
  config.model.attention_resolutions = (8, 16, 32)  # feature maps 32, 16, 8 at 256 px
  config.model.num_head_channels = 64
  config.model.dropout = 0.0
  config.model.dtype = "bfloat16"  # reference: fp16 with fp32 master weights
  config.model.remat = True  # reference: use_checkpoint

  config.diffusion.beta_schedule = "linear"
  config.diffusion.num_steps = 1000
  config.diffusion.label_schedule = "classwise"
  config.diffusion.psi_path = psi_path
  config.diffusion.force_last_linear = force_last_linear
  config.diffusion.drop_rate = 0.2

  config.optim.lr = lr
  config.optim.weight_decay = 0.0
  config.optim.warmup_steps = 0
  config.optim.grad_clip = 0.0
  config.optim.ema_decay = 0.9999

  config.train.batch_size = 40
  config.train.total_steps = 200_000  # the reference never stops; choose your budget
  config.train.checkpoint_every = 1000
  config.train.sample_every = 5000
  config.train.log_every = 100

  # The 25-step recipe of scripts/sample.sh.
  config.sample.sampler = "ddpm"
  config.sample.respacing = "ddim25"
  config.sample.guidance_scale = 1.5
  config.sample.dynamic_threshold = 0.95
  config.sample.extrapolation = 0.8
  config.sample.seed = 42
  return config


def apply_variants(config: ml_collections.ConfigDict, arg: str | None,
                   finetune_lr: float = 2e-5, *, preset: str
                   ) -> ml_collections.ConfigDict:
  """Variants shared by the dataset presets.

  * `finetune`: lr 2e-5 (set `--config.init_from=<export dir>`).
  * `sample1000`: the 1000-step sampling recipe (s=1.5, static clip, no extrapolation).
  * `runlocal`: a 32 px / 32-channel model and batch 8, to smoke-test a preset on a CPU.
  """
  variants = check_variants(arg, known=("finetune", "sample1000", "runlocal"),
                            preset=preset)
  if variants.get("finetune"):
    config.optim.lr = finetune_lr
  if variants.get("sample1000"):
    config.sample.respacing = ""
    config.sample.dynamic_threshold = 0.0
    config.sample.extrapolation = 0.0
  if variants.get("runlocal"):
    config.data.image_size = 32
    config.model.model_channels = 32
    config.model.channel_mult = (1, 2)
    config.model.num_res_blocks = 1
    config.model.attention_resolutions = ()
    config.model.dtype = "float32"
    config.model.remat = False
    config.train.batch_size = 8
    config.train.total_steps = 10
    config.train.log_every = 1
    config.train.checkpoint_every = 5
    config.train.sample_every = 0
  return config
