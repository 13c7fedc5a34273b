"""Paint-by-Example training triplets and their tf.data pipeline.

One record (an image and an object box, `pbe_boxes.BoxRecord`) becomes (spec B.1, B.5):
- reference: the box crop padded by 10 px (at 512 px; scaled to the image), resized to
  the encoder size, augmented (`pbe_augment`: flip, rotation, blur, elastic), normalised
  by the encoder's mean/std (CLIP's by default);
- the hole: the extended box or the Bezier polygon (`pbe_masks`), inside
- the scene: a random square crop containing the extended box, resized to S;
- target = the scene, masked input = scene x keep-mask (hole = 0, i.e. grey in [-1, 1]).

The pipeline follows `datasets.create_dataset`: the stream order is a numpy permutation
of this host's shard per epoch (`datasets.IndexMap`), every example is built in numpy
inside an order-preserving parallel `tf.data` map with its own Generator seeded by
(seed, epoch, record index), so batches are a pure function of the arguments, and
`start_step=N` resumes exactly at batch N without building the skipped examples.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from scdm_jax.data import datasets
from scdm_jax.data import exemplar
from scdm_jax.data import pbe_augment
from scdm_jax.data import pbe_boxes
from scdm_jax.data import pbe_masks
from scdm_jax.data import procedural

REF_PAD_PX = 10.0  # reference crop padding at a 512 px image
CLIP_MEAN = exemplar.OPENAI_CLIP_MEAN
CLIP_STD = exemplar.OPENAI_CLIP_STD


def load_image(record: pbe_boxes.BoxRecord) -> np.ndarray:
  """(H, W, 3) uint8 of a record's image (generated for procedural records).

  Raises:
    ValueError: the file is missing/unreadable, or its size is not the record's.
  """
  if not record.image:
    ex = procedural.generate(record.index, size=record.size, seed=record.procedural_seed,
                             split=record.procedural_split)
    return ex["image"]
  try:
    with Image.open(record.image) as im:
      img = np.asarray(im.convert("RGB"))
  except (OSError, ValueError) as e:
    raise ValueError(f"{record.image}: cannot read the image of box {record.box} ({e})") from e
  if record.size != (0, 0) and img.shape[:2] != tuple(record.size):
    raise ValueError(f"{record.image}: image is {img.shape[1]}x{img.shape[0]}, the box "
                     f"{record.box} was made for {record.size[1]}x{record.size[0]}")
  return img


def _resize(img_u8: np.ndarray, size: int) -> np.ndarray:
  """uint8 (h, w, 3) -> float32 (size, size, 3) in [0, 1], bicubic."""
  out = Image.fromarray(img_u8).resize((size, size), Image.BICUBIC)
  return np.asarray(out, np.float32) / 255.0


def reference_crop(image: np.ndarray, box: Sequence[int], pad_px: float = REF_PAD_PX
                   ) -> np.ndarray:
  """The box crop padded by pad_px at 512 px (scaled to min(H, W)), clamped to the image."""
  h, w = image.shape[:2]
  p = int(round(pad_px * min(h, w) / 512))
  x0, y0, x1, y1 = (int(v) for v in box)
  return image[max(0, y0 - p):min(h, y1 + p), max(0, x0 - p):min(w, x1 + p)]


def make_triplet(record: pbe_boxes.BoxRecord, rng: np.random.Generator, *, image_size: int,
                 encoder_size: int = 224, mask: pbe_masks.MaskConfig = pbe_masks.MaskConfig(),
                 augment: pbe_augment.AugmentConfig = pbe_augment.AugmentConfig(),
                 mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
                 image: np.ndarray | None = None) -> dict[str, Any]:
  """One training triplet.

  Args:
    record: the image and its object box.
    rng: the example's Generator (all randomness).
    image_size: scene side S.
    encoder_size: reference side E (224 for CLIP ViT-L/14).
    mask: hole and crop knobs.
    augment: reference augmentation knobs.
    mean, std: the encoder's per-channel normalisation of [0, 1] pixels.
    image: the decoded image, if already loaded ((H, W, 3) uint8).

  Returns:
    dict(image (S,S,3) f32 in [-1,1], masked_image (S,S,3) f32, keep_mask (S,S,1) f32
    1 = keep 0 = hole, reference (E,E,3) f32 normalised, box (4,) int32 the object box in
    scene pixels, small, bezier: bool).
  """
  img = load_image(record) if image is None else image
  size = img.shape[:2]
  geo = pbe_masks.make_mask(record.box, size, image_size, rng, mask)
  ref = _resize(np.ascontiguousarray(reference_crop(img, record.box)), encoder_size)
  ref, _ = pbe_augment.augment(ref, rng, augment)
  ref = (ref - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
  cx0, cy0, cx1, cy1 = geo["crop"]
  scene = _resize(np.ascontiguousarray(img[cy0:cy1, cx0:cx1]), image_size) * 2.0 - 1.0
  keep = (~geo["hole"]).astype(np.float32)[..., None]
  return {"image": scene, "masked_image": scene * keep, "keep_mask": keep,
          "reference": ref.astype(np.float32), "box": np.asarray(geo["box_out"], np.int32),
          "small": geo["small"], "bezier": geo["bezier"]}


class TripletLoader:
  """Position-free example builder: (record index, epoch, attempt) -> triplet; TF-free."""

  def __init__(self, records: Sequence[pbe_boxes.BoxRecord], *, seed: int, **kwargs):
    self.records = list(records)
    self.seed = int(seed)
    self.kwargs = kwargs

  def rng(self, epoch: int, index: int, attempt: int = 0) -> np.random.Generator:
    return np.random.default_rng([self.seed & 0xFFFFFFFF, int(epoch), int(index), int(attempt),
                                  0x9BE])

  def __call__(self, index: int, epoch: int = 0, attempt: int = 0) -> dict[str, Any]:
    return make_triplet(self.records[index], self.rng(epoch, index, attempt), **self.kwargs)


class TripletIterator(datasets.BatchIterator):
  """Numpy batches of triplets; `skipped` lists one line per bad record skipped."""

  def __init__(self, ds, load_errors: list[BaseException], skipped: list[str]):
    super().__init__(ds, load_errors)
    self.skipped = skipped


KEYS = ("image", "masked_image", "keep_mask", "reference", "box", "record")


def create_triplet_dataset(records: Sequence[pbe_boxes.BoxRecord] | pbe_boxes.BoxSet, *,
                           image_size: int, encoder_size: int = 224, batch_size: int,
                           seed: int, start_step: int = 0, process_index: int = 0,
                           process_count: int = 1, train: bool = True,
                           mask: pbe_masks.MaskConfig = pbe_masks.MaskConfig(),
                           augment: pbe_augment.AugmentConfig = pbe_augment.AugmentConfig(),
                           mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
                           on_bad_record: str = "stop", max_skip: int = 16,
                           drop_remainder: bool | None = None, num_parallel_calls: int = -1,
                           prefetch: int = 2) -> TripletIterator:
  """Batches of triplets of one host's shard of the records.

  Args:
    records: BoxRecords (or a BoxSet), in the same order on every host.
    image_size, encoder_size: scene side S and reference side E.
    batch_size: per-process batch size.
    seed: order and augmentation seed (same seed = same batches).
    start_step: skip this many batches exactly: batch k after `start_step=N` equals batch
      N + k of an uninterrupted run.
    process_index, process_count: this host's shard (jax.process_index()/count()); host
      p gets records p, p + P, ...
    train: infinite shuffled repetition (else one ordered pass).
    mask, augment, mean, std: see `make_triplet`.
    on_bad_record: a record that cannot be built (unreadable image, ...): "stop" raises
      its error; "skip" uses the next records of the stream instead (up to max_skip; the
      choice depends only on the data, so resume stays exact) and lists it in `skipped`.
    drop_remainder: defaults to `train`.
    num_parallel_calls: tf.data map parallelism (-1 = AUTOTUNE).
    prefetch: batches.

  Returns:
    TripletIterator of dict(image, masked_image (b,S,S,3) f32, keep_mask (b,S,S,1) f32,
    reference (b,E,E,3) f32, box (b,4) int32, record (b,) int32 record index).
  """
  if isinstance(records, pbe_boxes.BoxSet):
    records = records.records
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  if on_bad_record not in pbe_boxes.ON_BAD:
    raise ValueError(f"on_bad_record={on_bad_record!r}: use 'skip' or 'stop'")
  loader = TripletLoader(records, seed=seed, image_size=image_size, encoder_size=encoder_size,
                         mask=mask, augment=augment, mean=mean, std=std)
  imap = datasets.IndexMap(len(records), train=train, seed=seed, process_index=process_index,
                           process_count=process_count)
  tf = datasets.import_tf()
  s, e = int(image_size), int(encoder_size)
  start = int(start_step) * batch_size
  end = np.iinfo(np.int64).max if train else max(start, len(imap))
  ds = tf.data.Dataset.range(start, end)
  lock = threading.Lock()
  load_errors: list[BaseException] = []
  skipped: list[str] = []

  def build(k: int) -> dict[str, Any]:
    for attempt in range(max_skip + 1):
      kk = k + attempt
      if not train:
        kk %= len(imap)
      with lock:  # IndexMap caches the current epoch's permutation
        i, epoch = imap(kk)
      try:
        out = loader(i, epoch, attempt)
        out["record"] = np.int32(i)
        return out
      except Exception as err:  # pylint: disable=broad-except
        if on_bad_record == "stop":
          raise
        skipped.append(f"record {i} ({records[i].image or 'procedural'} box "
                       f"{records[i].box}): {err}")
    raise ValueError(f"{max_skip + 1} bad records in a row at stream position {k}; "
                     f"first skipped: {skipped[-max_skip - 1]}")

  def load_np(k):
    try:
      out = build(int(k))
    except Exception as err:  # kept for BatchIterator, which re-raises it unwrapped
      load_errors.append(err)
      raise
    return [out[key] for key in KEYS]

  tout = [tf.float32, tf.float32, tf.float32, tf.float32, tf.int32, tf.int32]
  shapes = [(s, s, 3), (s, s, 3), (s, s, 1), (e, e, 3), (4,), ()]

  @tf.autograph.experimental.do_not_convert  # plain graph code; no AutoGraph needed
  def load_tf(k):
    vals = tf.numpy_function(load_np, [k], tout, stateful=False)
    out = {}
    for key, val, shape in zip(KEYS, vals, shapes):
      val.set_shape(shape)
      out[key] = val
    return out

  ds = ds.map(load_tf, num_parallel_calls=tf.data.AUTOTUNE if num_parallel_calls < 0
              else num_parallel_calls, deterministic=True)
  ds = ds.batch(batch_size, drop_remainder=train if drop_remainder is None else drop_remainder)
  ds = ds.prefetch(prefetch)
  options = tf.data.Options()
  options.deterministic = True
  ds = ds.with_options(options)
  return TripletIterator(ds, load_errors, skipped)
