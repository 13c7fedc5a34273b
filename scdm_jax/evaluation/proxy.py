r"""Offline PROXY metrics: a segmenter and a feature network trained here on procedural data.

No third-party segmenter or Inception weights can be downloaded in this project, so the
small-scale experiments use networks this project trains itself on the procedural dataset
(`scdm_jax.data.procedural`):

* **proxy mIoU**: a small fully-convolutional U-Net segmenter (`ProxySegNet`) predicts class
  ids from an image; the mIoU library (`miou.py`) compares them with the *clean* label.
  Registered as the segmenter ``"proxy_procedural"`` (``miou.get_segmenter``).
* **proxy FD**: the Fréchet distance (`fid.frechet_distance`) between the segmenter's pooled
  multi-scale encoder features (global means of its three encoder stages, ``7 * width``
  dims) of generated and of real images.

Both are **proxies**: their values depend on this project's little network and on the
procedural data. They are meant to *rank* models and conditions inside one experiment and
are never comparable to published FID / mIoU numbers (metric keys ``proxy_miou``,
``proxy_fd``; the report's ``implementation`` says so).

Train (a minute or two on a laptop CPU at 32 px):

  python -m scdm_jax.evaluation.proxy --out /tmp/proxy --steps 600 --image_size 32

writes ``/tmp/proxy/proxy_procedural.npz`` (weights + a ``meta_json`` entry naming the
architecture) and ``proxy_procedural.json`` (training settings and held-out mIoU / pixel
accuracy on the procedural validation split).

Weights file (npz): the network's parameters under dotted keys (``enc1a.kernel`` (3, 3, 3,
w), ...) plus ``meta_json``, a 0-d string array ``{"format": "scdm_jax.proxy_procedural",
"version": 1, "image_size", "num_classes", "width", ...}``. A file without that entry, with
another format, or with missing / unexpected / misshapen / non-finite arrays is refused with a
message naming the file (the same rules as the Inception and LPIPS loaders).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scdm_jax.data import procedural
from scdm_jax.evaluation import _npz
from scdm_jax.evaluation import miou
from scdm_jax.evaluation import report
from scdm_jax.io import atomic

__all__ = ["ProxySegNet", "init_proxy", "ProxySegmenter", "save_proxy", "load_proxy", "train_proxy",
           "procedural_arrays", "evaluate_on_procedural", "proxy_weight_shapes",
           "FORMAT", "IMPLEMENTATION"]

FORMAT = "scdm_jax.proxy_procedural"
VERSION = 1
IMPLEMENTATION = ("PROXY: scdm_jax.evaluation.proxy (U-Net segmenter trained by this project "
                  "on the procedural dataset; proxy FD = Frechet distance of its pooled "
                  "encoder features). Not comparable to published FID/mIoU.")
_HINT = ("Train proxy weights with `python -m scdm_jax.evaluation.proxy --out DIR "
         "--steps N` (writes DIR/proxy_procedural.npz).")


class ProxySegNet(nnx.Module):
  """A 3-level fully-convolutional U-Net: images (B, S, S, 3) in [-1, 1] -> logits (B,S,S,K)."""

  def __init__(self, num_classes: int, width: int = 16, *, rngs: nnx.Rngs):
    w = width
    conv = lambda cin, cout, k=3, s=1: nnx.Conv(cin, cout, (k, k), strides=(s, s),
                                                 padding="SAME", rngs=rngs)
    self.enc1a, self.enc1b = conv(3, w), conv(w, w)
    self.down1, self.enc2 = conv(w, 2 * w, s=2), conv(2 * w, 2 * w)
    self.down2, self.enc3 = conv(2 * w, 4 * w, s=2), conv(4 * w, 4 * w)
    self.dec2 = conv(6 * w, 2 * w)
    self.dec1 = conv(3 * w, w)
    self.head = conv(w, num_classes, k=1)

  def encode(self, x):
    h1 = jax.nn.relu(self.enc1b(jax.nn.relu(self.enc1a(x))))
    h2 = jax.nn.relu(self.enc2(jax.nn.relu(self.down1(h1))))
    h3 = jax.nn.relu(self.enc3(jax.nn.relu(self.down2(h2))))
    return h1, h2, h3

  def features(self, x):
    """(B, 7 * width) global means of the three encoder stages (the proxy-FD features)."""
    return jnp.concatenate([h.mean(axis=(1, 2)) for h in self.encode(x)], axis=-1)

  def __call__(self, x):
    h1, h2, h3 = self.encode(x)
    up = lambda h, ref: jax.image.resize(h, ref.shape[:3] + h.shape[3:], "nearest")
    d2 = jax.nn.relu(self.dec2(jnp.concatenate([up(h3, h2), h2], -1)))
    d1 = jax.nn.relu(self.dec1(jnp.concatenate([up(d2, h1), h1], -1)))
    return self.head(d1)


# ---------------------------------------------------------------------------
# Weights files
# ---------------------------------------------------------------------------


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in tree.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = v
  return out


def _unflatten(flat: dict[str, Any]) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for key, v in flat.items():
    node = out
    parts = key.split(".")
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    node[parts[-1]] = v
  return out


def _abstract(num_classes: int, width: int) -> ProxySegNet:
  return nnx.eval_shape(lambda: ProxySegNet(num_classes, width, rngs=nnx.Rngs(0)))


def init_proxy(num_classes: int, width: int = 16, seed: int = 0) -> ProxySegNet:
  """A freshly initialised network: He-normal kernels, zero biases, drawn with numpy.

  (Initialising with jax.random compiles a threefry program per parameter shape, which
  takes about a minute on a busy CPU; numpy takes milliseconds.)
  """
  rng = np.random.default_rng(seed)
  flat = {}
  for key, shape in proxy_weight_shapes(num_classes, width).items():
    if key.endswith("kernel"):
      fan_in = int(np.prod(shape[:-1]))
      flat[key] = jnp.asarray(rng.standard_normal(shape) * np.sqrt(2.0 / fan_in), jnp.float32)
    else:
      flat[key] = jnp.zeros(shape, jnp.float32)
  graphdef, state = nnx.split(_abstract(num_classes, width))
  nnx.replace_by_pure_dict(state, _unflatten(flat))
  return nnx.merge(graphdef, state)


def proxy_weight_shapes(num_classes: int, width: int) -> dict[str, tuple[int, ...]]:
  """Every array key of a proxy weights npz with its shape."""
  pure = nnx.to_pure_dict(nnx.state(_abstract(num_classes, width), nnx.Param))
  return {k: tuple(v.shape) for k, v in _flatten(pure).items()}


def save_proxy(path: str | os.PathLike, model: ProxySegNet, meta: dict[str, Any]) -> str:
  """Writes the weights npz atomically; returns its sha256."""
  meta = dict(meta, format=FORMAT, version=VERSION)
  for k in ("image_size", "num_classes", "width"):
    if k not in meta:
      raise ValueError(f"save_proxy: meta needs {k!r}.")
  pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  arrays = {k: np.asarray(v, np.float32) for k, v in _flatten(pure).items()}
  arrays["meta_json"] = np.array(json.dumps(meta, sort_keys=True))
  atomic.write_npz(path, arrays)
  return _npz.sha256_file(path)


def load_proxy(path: str | os.PathLike) -> tuple[ProxySegNet, dict[str, Any]]:
  """Builds the proxy network from its npz; refuses missing, foreign or corrupt files.

  Raises:
    FileNotFoundError: the file does not exist.
    ValueError: not an npz, no/invalid ``meta_json``, another format, or bad arrays.
  """
  what = "Proxy segmenter weights"
  arrays = _npz.load_npz(path, what)
  if "meta_json" not in arrays:
    raise ValueError(f"{what} file {path} has no 'meta_json' entry: it is not a proxy weights "
                     f"file (keys: {sorted(arrays)[:4]}...). {_HINT}")
  try:
    meta = json.loads(str(arrays.pop("meta_json")))
  except (json.JSONDecodeError, TypeError) as e:
    raise ValueError(f"{what} file {path}: 'meta_json' is not valid JSON ({e}). {_HINT}") from e
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    fmt = meta.get("format") if isinstance(meta, dict) else None
    raise ValueError(f"{what} file {path} has format {fmt!r}; expected {FORMAT!r}. {_HINT}")
  if int(meta.get("version", -1)) != VERSION:
    raise ValueError(f"{what} file {path} has version {meta.get('version')!r}; this code "
                     f"reads version {VERSION}. {_HINT}")
  try:
    k, w = int(meta["num_classes"]), int(meta["width"])
    int(meta["image_size"])
  except (KeyError, TypeError, ValueError) as e:
    raise ValueError(f"{what} file {path}: meta_json lacks a valid {e}. {_HINT}") from e
  _npz.check_arrays(arrays, proxy_weight_shapes(k, w), path, what, _HINT)
  model = _abstract(k, w)
  graphdef, state = nnx.split(model)
  nnx.replace_by_pure_dict(state, _unflatten({n: jnp.asarray(a, jnp.float32)
                                              for n, a in arrays.items()}))
  return nnx.merge(graphdef, state), meta


class ProxySegmenter:
  """Callable segmenter + feature extractor around a `ProxySegNet`.

  ``__call__(images (B, H, W, 3) in [-1, 1]) -> logits (B, H, W, K)`` (numpy), usable with
  `miou.evaluate_segmenter`. Images of another size are resized (bilinear, antialiased) to
  the training size and the logits resized back (bilinear), so the network always sees the
  scale it was trained at. ``features(images) -> (B, 7 * width)`` float64.
  """

  def __init__(self, model: ProxySegNet, meta: dict[str, Any], *, batch_size: int = 64):
    self.meta = meta
    self.image_size = int(meta["image_size"])
    self.num_classes = int(meta["num_classes"])
    self.batch_size = batch_size
    graphdef, state = nnx.split(model)
    s = self.image_size

    def prep(x):
      if x.shape[1:3] != (s, s):
        x = jax.image.resize(x, (x.shape[0], s, s, 3), "linear", antialias=True)
      return x

    @jax.jit
    def logits(state, x):
      out = nnx.merge(graphdef, state)(prep(x))
      if out.shape[1:3] != x.shape[1:3]:
        out = jax.image.resize(out, x.shape[:3] + out.shape[3:], "linear")
      return out

    @jax.jit
    def feats(state, x):
      return nnx.merge(graphdef, state).features(prep(x))

    self._logits = lambda x: logits(state, x)
    self._feats = lambda x: feats(state, x)

  def _batched(self, fn, images):
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"images must be (B, H, W, 3) in [-1, 1]; got {images.shape}.")
    out = []
    for i in range(0, images.shape[0], self.batch_size):
      chunk = images[i:i + self.batch_size]
      real = chunk.shape[0]
      if real < self.batch_size and images.shape[0] > self.batch_size:
        chunk = np.concatenate([chunk, np.zeros((self.batch_size - real,) + chunk.shape[1:],
                                                np.float32)])
      out.append(np.asarray(fn(jnp.asarray(chunk)))[:real])
    return np.concatenate(out)

  def __call__(self, images) -> np.ndarray:
    return self._batched(self._logits, images)

  def features(self, images) -> np.ndarray:
    return self._batched(self._feats, images).astype(np.float64)


def _factory(weights_path, num_classes: int, **kwargs) -> ProxySegmenter:
  model, meta = load_proxy(weights_path)
  if int(meta["num_classes"]) != int(num_classes):
    raise ValueError(f"Proxy segmenter {weights_path} predicts {meta['num_classes']} classes; "
                     f"the evaluation has num_classes={num_classes}.")
  return ProxySegmenter(model, meta, **kwargs)


# Guarded: `python -m scdm_jax.evaluation.proxy` runs this file as __main__ and a later
# `import scdm_jax.evaluation.proxy` would otherwise register a second, equal factory.
if "proxy_procedural" not in miou.available_segmenters():
  miou.register_segmenter("proxy_procedural")(_factory)


def load_segmenter(path: str | os.PathLike, **kwargs) -> ProxySegmenter:
  model, meta = load_proxy(path)
  return ProxySegmenter(model, meta, **kwargs)


# ---------------------------------------------------------------------------
# Data and training
# ---------------------------------------------------------------------------


def procedural_arrays(n: int, *, image_size: int, split: str, seed: int = 0
                      ) -> tuple[np.ndarray, np.ndarray]:
  """``n`` procedural examples: images (n, S, S, 3) float32 in [-1, 1], ids (n, S, S) int32.

  The same content as the dataset pipeline's procedural split of that name at
  ``data.image_size = S`` (example i is a pure function of (seed, split, i, S)).
  """
  images = np.empty((n, image_size, image_size, 3), np.float32)
  ids = np.empty((n, image_size, image_size), np.int32)
  for i in range(n):
    ex = procedural.generate(i, size=image_size, seed=seed, split=split)
    images[i] = ex["image"].astype(np.float32) / 127.5 - 1.0
    ids[i] = ex["label"]
  return images, ids


def _augment(rng: np.random.Generator, x: np.ndarray, y: np.ndarray):
  """Flips, brightness/contrast jitter and pixel noise: generated images are not perfect."""
  flip = rng.random(x.shape[0]) < 0.5
  x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
  y = np.where(flip[:, None, None], y[:, :, ::-1], y)
  b = x.shape[0]
  contrast = rng.uniform(0.8, 1.2, (b, 1, 1, 1)).astype(np.float32)
  bright = rng.uniform(-0.1, 0.1, (b, 1, 1, 1)).astype(np.float32)
  sigma = rng.uniform(0.0, 0.15, (b, 1, 1, 1)).astype(np.float32)
  x = x * contrast + bright + sigma * rng.standard_normal(x.shape).astype(np.float32)
  return np.clip(x, -1.0, 1.0), y


def evaluate_on_procedural(segmenter, *, image_size: int, num_classes: int, n: int = 128,
                           split: str = "validation", seed: int = 0) -> dict[str, Any]:
  """Held-out mIoU / pixel accuracy on real procedural images, with the majority-class
  baseline (what "chance" means here)."""
  images, ids = procedural_arrays(n, image_size=image_size, split=split, seed=seed)
  r = miou.evaluate_segmenter(segmenter, [(images, ids)], num_classes)
  counts = np.bincount(ids.reshape(-1), minlength=num_classes)
  majority = np.full_like(ids, int(counts.argmax()))
  base = miou.mean_iou(majority, ids, num_classes)
  return {"miou": r["miou"], "pixel_accuracy": r["pixel_accuracy"],
          "per_class_iou": r["per_class_iou"], "majority_miou": base["miou"],
          "majority_pixel_accuracy": base["pixel_accuracy"], "num_images": n, "split": split}


def train_proxy(out_dir: str | os.PathLike, *, steps: int = 600, image_size: int = 32,
                num_classes: int = 9, width: int = 16, batch_size: int = 32,
                num_train: int = 2048, lr: float = 3e-3, seed: int = 0,
                eval_images: int = 128, log_every: int = 100, verbose: bool = True
                ) -> dict[str, Any]:
  """Trains the proxy segmenter on the procedural data; writes the npz and a JSON summary.

  Training images come from the procedural split ``"proxy_train"`` (disjoint from the
  ``train`` split the diffusion models see and from the ``validation`` split used as the
  evaluation reference), held-out numbers from ``validation``.

  Returns:
    the summary dict (also written to ``<out_dir>/proxy_procedural.json``), with
    ``weights`` (the npz path) and ``sha256``.
  """
  import optax  # pylint: disable=g-import-not-at-top
  if num_classes != procedural.NUM_CLASSES:
    raise ValueError(f"The procedural dataset has {procedural.NUM_CLASSES} classes; got "
                     f"num_classes={num_classes}.")
  if steps < 1 or batch_size < 1 or num_train < 1:
    raise ValueError(f"steps, batch_size and num_train must be >= 1; got {steps}, "
                     f"{batch_size}, {num_train}.")
  t0 = time.time()
  images, ids = procedural_arrays(num_train, image_size=image_size, split="proxy_train",
                                  seed=0)
  model = init_proxy(num_classes, width, seed)
  graphdef, params = nnx.split(model, nnx.Param)
  schedule = optax.cosine_decay_schedule(lr, steps, alpha=0.05)
  tx = optax.adam(schedule)
  opt_state = tx.init(params)

  @jax.jit
  def step_fn(params, opt_state, x, y):
    def loss_fn(p):
      logits = nnx.merge(graphdef, p)(x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(seed)
  losses = []
  for step in range(1, steps + 1):
    idx = rng.integers(0, num_train, batch_size)
    x, y = _augment(rng, images[idx], ids[idx])
    params, opt_state, loss = step_fn(params, opt_state, jnp.asarray(x), jnp.asarray(y))
    if step % log_every == 0 or step == steps:
      losses.append((step, float(loss)))
      if verbose:
        print(f"proxy step {step}/{steps} loss {float(loss):.4f} ({time.time() - t0:.0f} s)",
              flush=True)
  model = nnx.merge(graphdef, params)
  meta = {"image_size": image_size, "num_classes": num_classes, "width": width,
          "steps": steps, "batch_size": batch_size, "num_train": num_train, "lr": lr,
          "seed": seed, "train_split": "proxy_train"}
  out_dir = pathlib.Path(out_dir)
  weights = out_dir / "proxy_procedural.npz"
  sha = save_proxy(weights, model, meta)
  held_out = evaluate_on_procedural(ProxySegmenter(model, dict(meta)), image_size=image_size,
                                    num_classes=num_classes, n=eval_images)
  summary = {"weights": str(weights), "sha256": sha, "meta": meta, "losses": losses,
             "held_out": held_out, "train_seconds": time.time() - t0,
             "note": "PROXY segmenter: numbers from it are not comparable to published mIoU."}
  text = json.dumps(report._jsonable(summary), indent=2) + "\n"  # pylint: disable=protected-access
  (out_dir / "proxy_procedural.json").write_text(text)
  if verbose:
    print(f"held-out {held_out['split']}: proxy mIoU {held_out['miou']:.3f} (majority class "
          f"{held_out['majority_miou']:.3f}), pixel accuracy {held_out['pixel_accuracy']:.3f} "
          f"(majority {held_out['majority_pixel_accuracy']:.3f}); wrote {weights}", flush=True)
  return summary


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(
      prog="python -m scdm_jax.evaluation.proxy",
      description="Train the PROXY segmenter / feature network on the procedural dataset.")
  p.add_argument("--out", required=True, help="output folder (proxy_procedural.npz/.json)")
  p.add_argument("--steps", type=int, default=600)
  p.add_argument("--image_size", type=int, default=32)
  p.add_argument("--width", type=int, default=16)
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--num_train", type=int, default=2048)
  p.add_argument("--lr", type=float, default=3e-3)
  p.add_argument("--seed", type=int, default=0)
  a = p.parse_args(argv)
  train_proxy(a.out, steps=a.steps, image_size=a.image_size, width=a.width,
              batch_size=a.batch_size, num_train=a.num_train, lr=a.lr, seed=a.seed)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
