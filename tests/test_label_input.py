"""Label input (issue 14, P5): palette PNGs through their colours, JPEG-as-PNG warned, a
per-colour snap report with the nearest classes, palette ties and stretched maps warned,
snapping exact, fast and bounded in memory."""

import tracemalloc

from absl import logging as absl_logging
from conftest import load_config
import numpy as np
from PIL import Image
import pytest

from scdm_jax.data import colour_snap
from scdm_jax.data import label_io
from scdm_jax.data import palettes
from scdm_jax.inference import label_batches


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


def test_snapping_a_million_colours_is_bounded():
  # ~1M unique colours against ADE20K's 151: the direct (U, K, 3) int64 block needed
  # ~3.6 GB; one Python tuple per colour (the old report) still took ~340 MB.
  table = palettes.get_class_table("ade20k")
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
  tracemalloc.start()
  try:
    ids, unknown = label_io.snap_to_palette(rgb, table.colors)
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert ids.shape == (1024, 1024) and len(unknown) > 5 * 10**5
  assert peak < 160 * 2**20, f"peak {peak / 2**20:.0f} MiB"
  np.testing.assert_array_equal(ids[:64, :64].ravel(),
                                _nearest_by_full_table(rgb[:64, :64], table.colors))


def _nearest_by_full_table(rgb, colors):
  """The reference: every pixel against every entry; argmin = the lowest id on ties."""
  px = rgb.reshape(-1, 3).astype(np.int64)
  d2 = ((px[:, None] - np.asarray(colors, np.int64)[None]) ** 2).sum(-1)
  return d2.argmin(-1)


def _equidistant_colours(colors, rng, n):
  """Midpoints of random pairs of entries whose sum is even: equally far from both."""
  out = []
  while len(out) < n:
    a, b = colors[rng.integers(0, len(colors), 2)].astype(np.int64)
    if ((a + b) % 2 == 0).all():
      out.append((a + b) // 2)
  return np.asarray(out, np.uint8)


@pytest.mark.parametrize("name", ["ade20k", "cityscapes", "procedural", "random", "grey"])
def test_snapping_matches_the_full_distance_table(name):
  rng = np.random.default_rng(len(name))
  if name == "random":  # a palette with repeats and near-duplicates
    colors = rng.integers(0, 256, (40, 3)).astype(np.uint8)
    colors[30:] = colors[:10]
    colors[20:25] = np.clip(colors[:5].astype(int) + 1, 0, 255)
  elif name == "grey":  # all entries on one line: many exact ties between neighbours
    colors = np.repeat(np.arange(0, 256, 16, dtype=np.uint8)[:, None], 3, 1)
  else:
    colors = palettes.get_class_table(name).colors
  pixels = np.concatenate([
      rng.integers(0, 256, (3000, 3)).astype(np.uint8),
      colors,  # exact entries
      _equidistant_colours(colors, rng, 200),
      np.clip(colors.astype(int) + rng.integers(-9, 10, colors.shape), 0, 255).astype(np.uint8),
  ])
  rgb = pixels[rng.permutation(len(pixels))][None]
  ids, unknown = label_io.snap_to_palette(rgb, colors)
  np.testing.assert_array_equal(ids[0], _nearest_by_full_table(rgb, colors))
  # The report lists exactly the colours that are not entries, with their true distance.
  entries = {tuple(c) for c in colors.tolist()}
  off = {tuple(c) for c in rgb[0].tolist()} - entries
  assert {u[0] for u in unknown} == off
  for rgb_u, _, cls, dist in list(unknown)[:50]:
    assert dist == pytest.approx(np.linalg.norm(np.subtract(rgb_u, colors[cls], dtype=float)))


def test_large_maps_take_the_counting_path_with_the_same_answer(monkeypatch):
  table = palettes.get_class_table("ade20k")
  rgb = np.random.default_rng(3).integers(0, 256, (96, 96, 3), dtype=np.uint8)
  rgb[:10] = table.colors[6]  # many pixels of one colour
  sorted_ids, sorted_snaps = label_io.snap_to_palette(rgb, table.colors)
  monkeypatch.setattr(colour_snap, "_COUNT_FROM", 1)
  counted_ids, counted_snaps = label_io.snap_to_palette(rgb, table.colors)
  np.testing.assert_array_equal(sorted_ids, counted_ids)
  assert list(sorted_snaps) == list(counted_snaps)


def _ade_map(tmp_path, name="m.png"):
  """An ADE20K colour map: wall, sky, 5230 px of an off-by-one wall, 40 px near sky."""
  table = palettes.get_class_table("ade20k")
  rgb = np.zeros((100, 100, 3), np.uint8)
  rgb[:] = table.colors[2]  # sky
  rgb.reshape(-1, 3)[:5230] = (120, 120, 121)  # wall is (120, 120, 120)
  rgb.reshape(-1, 3)[5230:6000] = table.colors[0]
  rgb.reshape(-1, 3)[6000:6040] = (6, 230, 226)  # sky is (6, 230, 230)
  path = str(tmp_path / name)
  Image.fromarray(rgb).save(path)
  return path, table


def test_snap_report_names_colours_counts_and_nearest_classes(tmp_path, monkeypatch):
  path, table = _ade_map(tmp_path)
  seen = _warnings(monkeypatch)
  ids, report = label_io.load_label_map(path, num_classes=151, palette="ade20k")
  blocks = [w for w in seen if "snapped to the nearest class" in w]
  assert len(blocks) == 1, seen  # once per file
  block = blocks[0].splitlines()
  assert len(block) <= 7 and path in block[0] and "2 colours" in block[0]
  assert block[1].strip() == "(120,120,121) x 5230 px -> nearest 'wall' (120,120,120), distance 1"
  assert block[2].strip() == "(6,230,226) x 40 px -> nearest 'sky' (6,230,230), distance 4"
  assert (ids.reshape(-1)[:6000] == 0).all() and report.snapped_pixels == 5270
  assert report.snap_report(table, max_items=1).splitlines()[-1].strip().startswith(
      "... and 1 more colours")


def test_palette_tie_is_reported_once_with_the_winner_and_the_way_out(tmp_path, monkeypatch):
  monkeypatch.setattr(label_io, "_TIES_REPORTED", set())
  table = palettes.get_class_table("ade20k")
  assert ((140, 140, 140), (6, 48)) in palettes.colour_ties(table)
  rgb = np.zeros((8, 8, 3), np.uint8)
  rgb[:] = table.colors[2]
  rgb[:4] = (140, 140, 140)  # road = skyscraper
  path = str(tmp_path / "tie.png")
  Image.fromarray(rgb).save(path)
  seen = _warnings(monkeypatch)
  ids, _ = label_io.load_label_map(path, num_classes=151, palette="ade20k")
  assert (ids[:4] == 6).all()
  ties = [w for w in seen if "the same colour" in w]
  assert len(ties) == 1, seen
  msg = ties[0]
  assert "'road'" in msg and "'skyscraper'" in msg and "(140,140,140)" in msg
  assert "become class 6 'road'" in msg and "id PNG" in msg and "48" in msg
  label_io.load_label_map(path, num_classes=151, palette="ade20k")
  assert len([w for w in seen if "the same colour" in w]) == 1  # said once
  # A map without that colour does not mention it.
  monkeypatch.setattr(label_io, "_TIES_REPORTED", set())
  label_io.load_label_map(_ade_map(tmp_path)[0], num_classes=151, palette="ade20k")
  assert len([w for w in seen if "the same colour" in w]) == 1


@pytest.mark.parametrize("shape,warned", [((10, 20), True), ((30, 16), True),
                                          ((100, 101), False), ((16, 16), False)])
def test_a_stretched_map_is_warned(tmp_path, monkeypatch, shape, warned):
  path = str(tmp_path / "ids.png")
  Image.fromarray(np.full(shape, 2, np.uint8)).save(path)
  seen = _warnings(monkeypatch)
  ids, _ = label_io.load_label_map(path, num_classes=9, size=16)
  assert ids.shape == (16, 16)
  hits = [w for w in seen if "aspect ratio" in w]
  assert bool(hits) == warned, seen
  if warned:
    assert len(hits) == 1 and path in hits[0] and "\n" not in hits[0]
    assert f"{shape[0]}x{shape[1]}" in hits[0] and "16x16" in hits[0]


def test_raw_dataset_ids_from_the_command_line(tmp_path):
  # An ADE20K annotation PNG: 0 = unlabeled, k = class k-1.
  raw = np.array([[0, 1, 2, 150]] * 4, np.uint8)
  path = str(tmp_path / "ade.png")
  Image.fromarray(raw).save(path)
  overrides = {"data.name": "ade20k", "data.num_classes": 151, "data.image_size": 4,
               "sample.source": path, "sample.max_maps": 1}
  raw_cfg = load_config("tiny", **overrides, **{"sample.label_format": "raw_ids"})
  (batch,) = label_batches.iter_label_batches(raw_cfg, 1)
  np.testing.assert_array_equal(batch.label[0], np.array([[150, 0, 1, 149]] * 4))
  ids_cfg = load_config("tiny", **overrides, **{"sample.label_format": "ids"})
  (batch,) = label_batches.iter_label_batches(ids_cfg, 1)
  np.testing.assert_array_equal(batch.label[0], raw)  # read as class ids, as before
  bad = load_config("tiny", **overrides, **{"sample.label_format": "raw"})
  with pytest.raises(ValueError, match="label_format='raw' is unknown.*raw_ids"):
    next(iter(label_batches.iter_label_batches(bad, 1)))
