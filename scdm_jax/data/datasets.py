"""`create_dataset`: the tf.data input pipeline of every dataset (the only TF user).

Design: the example *order* is computed in numpy (a full permutation of this host's shard per
epoch, from (seed, epoch)); each example is decoded and augmented in numpy/Pillow inside a
parallel, order-preserving `tf.data` map with its own Generator seeded by
(seed, epoch, example index). So the batches are a pure function of
(data_config, split, batch_size, seed, process_index, process_count), independent of thread
timing, and `start_step=N` resumes exactly at batch N without decoding the skipped examples.

Sharding: the sorted example list is split round-robin, host p gets examples p, p + P, ...;
shards are disjoint and cover the split.

Sources (`data.source`): "folders" reads data.root's layout (`layouts.py`, local or a URL) or
generates the procedural dataset; "tfds" reads the array_record files `tfds_builders` wrote,
by random access (`tfds_source.py`). Record i is example i of the sorted list, so the order,
shards and resume above hold unchanged: only `Source.load` reads elsewhere.
"""

from __future__ import annotations

import atexit
import dataclasses
import io
import os
import threading
import weakref
from collections.abc import Iterator

import numpy as np

from scdm_jax.data import layouts
from scdm_jax.data import noisy
from scdm_jax.data import palettes
from scdm_jax.data import procedural
from scdm_jax.data import tfds_source
from scdm_jax.data import transforms
from scdm_jax.io import fileio

def _get(cfg, name: str):
  """Field `name` of a data config (ConfigDict, dict or attribute object).

  There are no defaults here: the schema, with every default and its comment, is
  `configs/default.py` (`config.data`); build data configs from it.

  Raises:
    ValueError: the field is missing.
  """
  try:
    return cfg[name] if isinstance(cfg, dict) else getattr(cfg, name)
  except (AttributeError, KeyError):
    raise ValueError(f"the data config has no field {name!r}: start it from "
                     "configs/default.py (config.data), which lists every field") from None


def import_tf():
  """Imports TensorFlow with every accelerator hidden from it (JAX owns GPUs/TPUs)."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # no INFO spam; warnings still shown
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  for kind in ("GPU", "TPU"):
    try:
      tf.config.set_visible_devices([], kind)
    except (RuntimeError, ValueError):
      pass  # already initialised, or no such device type
  return tf


SOURCES = ("folders", "tfds")


@dataclasses.dataclass
class Source:
  """A dataset split as an indexable list of examples (numpy/Pillow only).

  Exactly one backend is set: `examples` (files of a folder layout), `records` (a prepared
  TFDS split) or neither (the procedural dataset, generated).
  """

  name: str
  names: list[str]
  num_classes: int
  unlabeled_class: int | None
  has_instances: bool
  examples: list[layouts.Example] | None = None
  spec: layouts.DatasetSpec | None = None
  procedural_size: int = 64
  procedural_seed: int = 0
  procedural_unlabeled_share: float = 0.0
  split: str = "train"
  records: tfds_source.RecordSplit | None = None
  label_files: list[str] | None = None  # records with data.label_dir: labels read from here

  def __len__(self) -> int:
    return len(self.names)

  def procedural_at(self, i: int, size: int) -> dict[str, np.ndarray]:
    """Example i of this procedural split rendered at another size (same layout)."""
    return procedural.generate(i, size=size, seed=self.procedural_seed, split=self.split,
                               unlabeled_share=self.procedural_unlabeled_share)

  def load(self, i: int, *, need_image: bool = True, need_instance: bool = True):
    """Returns (PIL image or uint8 array or None, class ids (h, w) int32, instance or None)."""
    from PIL import Image  # pylint: disable=import-outside-toplevel
    if self.records is not None:
      data, raw, inst = self.records.read(i, need_image=need_image,
                                          need_instance=need_instance and self.has_instances)
      image = None
      if data is not None:
        image = Image.open(io.BytesIO(data))
        image.load()
      where = f"{self.records.path} record {i} ({self.names[i]})"
      if self.label_files is not None:
        where = self.label_files[i]
        raw = layouts.read_raw_label(where)
      label = self.spec.raw_to_class(raw, where) if self.spec else raw.astype(np.int32)
      return image, label, None if inst is None else inst.astype(np.int32)
    if self.examples is None:
      ex = procedural.generate(i, size=self.procedural_size, seed=self.procedural_seed,
                               split=self.split,
                               unlabeled_share=self.procedural_unlabeled_share)
      return ex["image"], ex["label"].astype(np.int32), ex["instance"]
    ex = self.examples[i]
    image = None
    if need_image and ex.image is not None:
      image = Image.open(io.BytesIO(fileio.read_bytes(ex.image)))
      image.load()
    label = self.spec.raw_to_class(layouts.read_raw_label(ex.label), ex.label)
    inst = None
    if need_instance and self.has_instances:
      if ex.instance is None:
        raise FileNotFoundError(
            f"{self.name}: no instance map for {ex.name} (label {ex.label}); add the "
            "instance PNG or set data.use_instance=False")
      inst = layouts.read_raw_label(ex.instance).astype(np.int32)
    return image, label, inst


def procedural_split_size(num_examples: int, split: str) -> int:
  """Examples in a procedural split: data.num_examples for train (0 = default), else default."""
  split = layouts.canonical_split(split)
  if num_examples and split == "train":
    return int(num_examples)
  return procedural.DEFAULT_NUM_EXAMPLES["train" if split == "train" else "validation"]


def procedural_names(split: str, n: int) -> list[str]:
  return [f"procedural_{layouts.canonical_split(split)}_{i:06d}" for i in range(n)]


def make_source(data_config, split: str) -> Source:
  """Resolves data_config + split into a Source, validating num_classes."""
  name = _get(data_config, "name")
  split = layouts.canonical_split(split)
  num_examples = int(_get(data_config, "num_examples") or 0)
  kind = str(_get(data_config, "source") or "folders")
  if kind not in SOURCES:
    raise ValueError(f"data.source={kind!r}: use 'folders' or 'tfds'")
  if kind == "tfds":
    src = _tfds_source(data_config, name, split, num_examples)
  elif name == "procedural":
    table = procedural.class_table()
    n = procedural_split_size(num_examples, split)
    src = Source("procedural", procedural_names(split, n),
                 table.num_classes, table.unlabeled_class, True,
                 procedural_size=int(_get(data_config, "image_size")),
                 procedural_seed=int(_get(data_config, "procedural_seed")),
                 procedural_unlabeled_share=float(
                     _get(data_config, "procedural_unlabeled_share")), split=split)
  else:
    spec = layouts.get_spec(name)
    root = _get(data_config, "root")
    if not root:
      raise ValueError(f"data.root is empty: set it to the {name} folder (see docs/data.md)")
    require_images = bool(_get(data_config, "require_images"))
    examples = layouts.list_examples(name, root, split, require_images=require_images)
    if num_examples:
      examples = examples[:num_examples]
    label_dir = _get(data_config, "label_dir")
    if label_dir:
      labels = _relabel(label_dir, [os.path.basename(e.label) for e in examples])
      examples = [dataclasses.replace(e, label=p) for e, p in zip(examples, labels)]
    src = Source(name, [e.name for e in examples], spec.num_classes, spec.unlabeled_class,
                 spec.has_instances, examples=examples, spec=spec, split=split)
  k = int(_get(data_config, "num_classes") or src.num_classes)
  if k != src.num_classes:
    raise ValueError(f"data.num_classes={k} but {name} has {src.num_classes} classes "
                     f"(incl. unlabeled); set data.num_classes={src.num_classes}")
  return src


def _tfds_source(data_config, name: str, split: str, num_examples: int) -> Source:
  """A Source over the prepared TFDS split of dataset `name` (data.source="tfds")."""
  data_dir = str(_get(data_config, "tfds_data_dir") or "")
  if not data_dir:
    raise ValueError("data.source='tfds' needs data.tfds_data_dir (the folder or gs:// URL "
                     "the dataset was prepared into; docs/data.md, 'TFDS')")
  if name not in tfds_source.BUILDER_NAMES:
    layouts.get_spec(name)  # the one-line error for an unknown dataset name
  if not fileio.is_url(data_dir):
    data_dir = os.path.expanduser(data_dir)
  cache = str(_get(data_config, "tfds_cache_dir") or "")
  if name == "procedural":
    table = procedural.class_table()
    config_name = tfds_source.procedural_config_name(
        int(_get(data_config, "image_size")), procedural_split_size(num_examples, "train"),
        int(_get(data_config, "procedural_seed")))
    records = tfds_source.RecordSplit(data_dir, name, split, config_name=config_name,
                                      cache_dir=cache)
    return Source(name, list(records.names), table.num_classes, table.unlabeled_class, True,
                  split=split, records=records)
  spec = layouts.get_spec(name)
  records = tfds_source.RecordSplit(data_dir, name, split, cache_dir=cache)
  names = records.names[:num_examples] if num_examples else list(records.names)
  label_files = None
  label_dir = _get(data_config, "label_dir")
  if label_dir:
    label_files = _relabel(label_dir, [layouts.label_file_name(name, n) for n in names])
  return Source(name, names, spec.num_classes, spec.unlabeled_class, spec.has_instances,
                spec=spec, split=split, records=records, label_files=label_files)


def _relabel(label_dir: str, files: list[str]) -> list[str]:
  """Paths of `files` (label file names) in label_dir (e.g. a noisy copy), all required."""
  if not fileio.is_url(label_dir):
    label_dir = os.path.expanduser(label_dir)
  if not fileio.isdir(label_dir):
    raise FileNotFoundError(f"data.label_dir {label_dir} does not exist; write it with "
                            "`python -m scdm_jax.data.corrupt ... --out DIR` or unset it")
  present = set(fileio.listdir(label_dir))  # one listing, not one request per file
  missing = [f for f in files if f not in present]
  if missing:
    raise FileNotFoundError(f"data.label_dir {label_dir} lacks {len(missing)} label files of "
                            f"the split (first: {missing[:3]}); set data.num_examples to the "
                            "number of corrupted files, or corrupt the whole split")
  return [fileio.join(label_dir, f) for f in files]


class ExampleLoader:
  """Loads + preprocesses + corrupts one example; picklable and TF-free."""

  def __init__(self, source: Source, data_config, *, train: bool, seed: int):
    self.source = source
    self.train = train
    self.seed = int(seed)
    self.image_size = int(_get(data_config, "image_size"))
    self.use_instance = bool(_get(data_config, "use_instance"))
    self.noise = str(_get(data_config, "noise") or "none")
    if self.noise not in ("none",) + noisy.VARIANTS:
      raise ValueError(f"data.noise={self.noise!r}: use 'none', 'ds', 'edge' or 'random'")
    self.unlabeled_to_zero = bool(_get(data_config, "unlabeled_to_zero"))
    self.rate = float(_get(data_config, "random_rate"))
    self.ds_size = int(_get(data_config, "ds_size"))
    self.radius = int(_get(data_config, "edge_radius"))
    self.flip = bool(_get(data_config, "flip"))
    self.render_size = int(_get(data_config, "noise_render_size"))
    if self.render_size and source.examples is not None:
      raise ValueError(f"data.noise_render_size={self.render_size} works on the procedural "
                       f"dataset only ({source.name} is read from files): set it to 0")
    if self.noise != "none" and source.unlabeled_class is None and not self.unlabeled_to_zero:
      raise ValueError(f"{source.name} has no 'unlabeled' class for noise={self.noise!r} to "
                       "write: set data.unlabeled_to_zero=True (all-zero absorbing pixels)")

  def rng(self, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([self.seed & 0xFFFFFFFF, int(epoch), int(index), 0x5CD])

  def __call__(self, index: int, epoch: int = 0):
    """Returns dict(image (S,S,3) f32, label (S,S) int32 with -1 = absorbing, [edge])."""
    rng = self.rng(epoch, index)
    need_inst = self.use_instance or (self.noise == "edge")
    image, label, inst = self.source.load(int(index), need_instance=need_inst)
    unl = self.source.unlabeled_class
    via_render = self.render_size > 0 and self.noise != "none"
    if via_render:  # paper-strength corruption from the same layout at the paper's size
      big = self.source.procedural_at(int(index), self.render_size)
      target = -1 if (self.unlabeled_to_zero or unl is None) else unl
      label = noisy.corrupt_via_render(
          label, big["label"], self.noise, unlabeled=target, rng=rng,
          big_instance=big["instance"], rate=self.rate, ds_size=self.ds_size,
          radius=self.radius)
    elif self.noise == "ds":  # DS acts on the annotation at its original size (spec §7).
      label = noisy.resize_nearest(label, self.ds_size)
    img, label, inst = transforms.preprocess(image, label, inst, image_size=self.image_size,
                                             train=self.train, rng=rng, flip=self.flip)
    # Without instance maps the (uncorrupted) label map gives the edge channel.
    edge_src = inst if inst is not None else label
    if self.noise in ("edge", "random") and not via_render:
      target = -1 if (self.unlabeled_to_zero or unl is None) else unl
      label = transforms.apply_noise(label, self.noise, unlabeled=target, instance=inst,
                                     rng=rng, rate=self.rate, radius=self.radius)
    if self.unlabeled_to_zero and unl is not None:
      label = np.where(label == unl, -1, label)
    out = {"image": img if img is not None else np.zeros((self.image_size,) * 2 + (3,),
                                                           np.float32),
           "label": label.astype(np.int32)}
    if self.use_instance:
      out["edge"] = noisy.boundary_map(edge_src).astype(np.float32)[..., None]
    return out


_LIVE_ITERATORS: "weakref.WeakSet[BatchIterator]" = weakref.WeakSet()


def _close_all_iterators() -> None:
  for it in list(_LIVE_ITERATORS):
    it.close()


# tf.data runs our numpy_function loaders on its own threads. If a pipeline is still alive
# when Python finalises, those threads wait for the GIL while the interpreter waits for them:
# the process hangs at exit. Closing every live pipeline at exit (before finalisation) avoids it.
atexit.register(_close_all_iterators)


class BatchIterator:
  """Iterator of numpy batches over a tf.data pipeline; `close()` stops its threads.

  An error raised while loading an example (a bad label file, say) reaches the caller as
  itself, not wrapped in TensorFlow's op error with a Python traceback inside its message.
  """

  def __init__(self, ds, load_errors: list[BaseException] | None = None):
    self._it = iter(ds.as_numpy_iterator())
    self._load_errors = load_errors if load_errors is not None else []
    _LIVE_ITERATORS.add(self)

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._it is None:
      raise StopIteration
    try:
      return next(self._it)
    except StopIteration:
      raise
    except Exception:  # tf.errors.OpError from a numpy_function that raised
      if self._load_errors:
        raise self._load_errors[0] from None
      raise

  def close(self) -> None:
    """Releases the pipeline (its threads and prefetch buffers); idempotent."""
    it, self._it = self._it, None
    if it is not None:
      del it
      import gc  # pylint: disable=import-outside-toplevel
      gc.collect()

  def __enter__(self):
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class IndexMap:
  """Position k in this host's example stream -> (example index, epoch).

  The host's shard is examples p, p + P, ... of the sorted list; when training, epoch e
  visits it in the order of a permutation seeded by (seed, e); otherwise in order, once.
  """

  def __init__(self, n: int, *, train: bool, seed: int, process_index: int = 0,
               process_count: int = 1):
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index={process_index} not in 0..{process_count - 1}")
    self.shard = np.arange(process_index, n, process_count)
    if len(self.shard) == 0:
      raise ValueError(f"split has {n} examples, too few for {process_count} processes")
    self.train = train
    self.seed = int(seed)
    self._perm_epoch = -1
    self._perm = None

  def __len__(self) -> int:
    return len(self.shard)

  def __call__(self, k: int) -> tuple[int, int]:
    m = len(self.shard)
    if not self.train:
      return int(self.shard[k]), 0
    epoch, pos = divmod(int(k), m)
    if epoch != self._perm_epoch:
      self._perm = np.random.default_rng([self.seed & 0xFFFFFFFF, epoch, 0xE70C]).permutation(m)
      self._perm_epoch = epoch
    return int(self.shard[self._perm[pos]]), epoch


def create_dataset(data_config, split: str, *, batch_size: int, train: bool, seed: int,
                   process_index: int = 0, process_count: int = 1, start_step: int = 0,
                   drop_remainder: bool | None = None, with_names: bool = False
                   ) -> Iterator[dict[str, np.ndarray]]:
  """Batches of one host's shard as numpy dicts.

  Args:
    data_config: `config.data` (ConfigDict, dict or attribute object) with every field of
      configs/default.py's data section.
    split: "train" | "validation" (| "test").
    batch_size: per-process batch size.
    train: augmentation + infinite shuffled repetition if True; otherwise one ordered pass,
      test-time resize, and a short last batch unless `drop_remainder`.
    seed: order, augmentation and Random-noise seed (same seed = same batches).
    process_index, process_count: this host's shard (e.g. jax.process_index()/count()).
    start_step: skip this many batches exactly (resume): batch N of a fresh iterator equals
      batch 0 of `create_dataset(..., start_step=N)`.
    drop_remainder: defaults to `train`.
    with_names: also yield `name` (b,) bytes (file stems), e.g. for saving samples.
  Returns:
    iterator of dict(image (b,S,S,3) f32 in [-1,1], label (b,S,S) int32 class ids with -1 =
    the absorbing unknown state (labels stay ids up to the jitted code, which one-hots them:
    K times less host memory and host-to-device traffic than a one-hot), [edge (b,S,S,1)
    f32 if use_instance], [name (b,) bytes]).
  """
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  source = make_source(data_config, split)
  loader = ExampleLoader(source, data_config, train=train, seed=seed)
  drop = train if drop_remainder is None else drop_remainder
  tf = import_tf()
  s = loader.image_size
  names = np.array(source.names, dtype=object)

  imap = IndexMap(len(source), train=train, seed=seed, process_index=process_index,
                  process_count=process_count)
  start = int(start_step) * batch_size
  # Positions in the stream; each map call turns its position into (example, epoch). A
  # range dataset (not from_generator) keeps the pipeline free of Python generator state.
  ds = tf.data.Dataset.range(start, np.iinfo(np.int64).max if train else max(start, len(imap)))
  keys = ["image", "label"] + (["edge"] if loader.use_instance else [])
  tout = [tf.float32, tf.int32] + ([tf.float32] if loader.use_instance else [])
  shapes = [(s, s, 3), (s, s)] + ([(s, s, 1)] if loader.use_instance else [])

  lock = threading.Lock()
  load_errors: list[BaseException] = []

  def load_np(k):
    with lock:  # IndexMap caches the current epoch's permutation
      i, epoch = imap(int(k))
    try:
      out = loader(i, epoch)
    except Exception as e:  # kept for BatchIterator, which re-raises it unwrapped
      load_errors.append(e)
      raise
    return [out[key] for key in keys] + [names[i].encode()]

  @tf.autograph.experimental.do_not_convert  # plain graph code; no AutoGraph needed
  def load_tf(k):
    vals = tf.numpy_function(load_np, [k], tout + [tf.string], stateful=False)
    out = {}
    for key, val, shape in zip(keys, vals, shapes):
      val.set_shape(shape)
      out[key] = val
    if with_names:
      vals[-1].set_shape(())
      out["name"] = vals[-1]
    return out

  npc = int(_get(data_config, "num_parallel_calls"))
  ds = ds.map(load_tf, num_parallel_calls=tf.data.AUTOTUNE if npc < 0 else npc,
              deterministic=True)
  ds = ds.batch(batch_size, drop_remainder=drop)
  ds = ds.prefetch(int(_get(data_config, "prefetch")))
  options = tf.data.Options()
  options.deterministic = True
  ds = ds.with_options(options)
  return BatchIterator(ds, load_errors)


def class_table(data_config) -> palettes.ClassTable:
  """The class table of data_config.name (names, colours, unlabeled class)."""
  return palettes.get_class_table(_get(data_config, "name"))
