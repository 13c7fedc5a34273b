"""Label input (issue 14, P5, part): palette PNGs through their colours, JPEG-as-PNG
warned, snapping memory bounded."""

import tracemalloc

from absl import logging as absl_logging
import numpy as np
from PIL import Image

from scdm_jax.data import label_io
from scdm_jax.data import palettes


def _warnings(monkeypatch):
  seen = []
  monkeypatch.setattr(absl_logging, "warning", lambda msg, *a: seen.append(msg % a))
  return seen


def test_palette_png_is_read_through_its_colours(tmp_path, monkeypatch):
  table = palettes.get_class_table("procedural")
  ids = np.array([[0, 1, 2], [3, 4, 5]], np.uint8)
  im = Image.fromarray(ids[::-1].copy(), "P")  # indices deliberately wrong...
  pal = np.zeros((256, 3), np.uint8)
  pal[: len(ids.ravel())] = 0
  # ...but the colours of each pixel are the table's colours of `ids`.
  order = ids[::-1].ravel()
  for idx, cls in zip(order, ids.ravel()):
    pal[idx] = table.colors[cls]
  im.putpalette(pal.tobytes())
  path = str(tmp_path / "p.png")
  im.save(path)
  seen = _warnings(monkeypatch)
  got, report = label_io.load_label_map(path, num_classes=table.num_classes,
                                        palette="procedural")
  np.testing.assert_array_equal(got, ids)
  assert report.mode == "palette"
  assert any("indices disagree with its colours" in w for w in seen), seen
  # Without a palette the indices are the ids, as before.
  got, _ = label_io.load_label_map(path, num_classes=table.num_classes)
  np.testing.assert_array_equal(got, ids[::-1])


def test_jpeg_saved_as_png_is_warned(tmp_path, monkeypatch):
  path = str(tmp_path / "map.png")
  Image.fromarray(np.full((8, 8), 2, np.uint8)).save(path, format="JPEG")
  seen = _warnings(monkeypatch)
  label_io.load_label_map(path, num_classes=9)
  assert any("a JPEG file" in w for w in seen), seen


def test_snapping_random_colours_is_chunked():
  # ~1M unique colours: the direct (U, K, 3) int64 distance block needed ~3.6 GB.
  table = palettes.get_class_table("procedural")
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
  tracemalloc.start()
  try:
    ids, unknown = label_io.snap_to_palette(rgb, table.colors)
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert ids.shape == (1024, 1024) and len(unknown) > 5 * 10**5
  assert peak < 1.5 * 2**30, f"peak {peak / 2**30:.2f} GiB"
  # Same answer as the direct computation on a sample.
  sample = rgb[:64, :64].reshape(-1, 3).astype(np.int64)
  d2 = ((sample[:, None] - table.colors.astype(np.int64)[None]) ** 2).sum(-1)
  np.testing.assert_array_equal(ids[:64, :64].ravel(), d2.argmin(-1))
