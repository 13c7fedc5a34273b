"""Label I/O: id PNGs, palette PNGs (snapping report), strict errors, one-hot, colourising."""

import json

import numpy as np
import pytest
from PIL import Image

from scdm_jax.data import label_io
from scdm_jax.data import palettes


def _save(arr, path, mode=None):
  Image.fromarray(arr, mode=mode).save(path) if mode else Image.fromarray(arr).save(path)
  return str(path)


def test_builtin_tables():
  sizes = {"ade20k": 151, "coco_stuff": 183, "cityscapes": 35, "celebamask_hq": 19,
           "procedural": 9}
  for name, k in sizes.items():
    t = palettes.get_class_table(name)
    assert t.num_classes == k and t.colors.shape == (k, 3) and t.colors.dtype == np.uint8
  ade = palettes.get_class_table("ade20k")
  assert ade.names[0] == "wall" and ade.names[150] == "unlabeled" and ade.unlabeled_class == 150
  assert tuple(ade.colors[0]) == (120, 120, 120)
  coco = palettes.get_class_table("coco_stuff")
  assert coco.names[0] == "person" and coco.names[181] == "wood" and coco.unlabeled_class == 182
  assert len({tuple(c) for c in coco.colors}) == 183  # distinct colours
  cs = palettes.get_class_table("cityscapes")
  assert cs.names[7] == "road" and tuple(cs.colors[7]) == (128, 64, 128)
  assert tuple(cs.colors[26]) == (0, 0, 142)
  assert palettes.get_class_table("celebamask_hq").names[18] == "cloth"


def test_id_png_roundtrip(tmp_path):
  ids = np.random.default_rng(0).integers(0, 19, (20, 30)).astype(np.uint8)
  p = _save(ids, tmp_path / "m.png")
  got, rep = label_io.load_label_map(p, num_classes=19)
  np.testing.assert_array_equal(got, ids)
  assert got.dtype == np.int32 and rep.mode == "ids" and not rep.unknown_colors
  assert sum(rep.class_pixels.values()) == 600
  got, _ = label_io.load_label_map(p, num_classes=19, size=(10, 15))
  assert got.shape == (10, 15)


def test_out_of_range_ids_error_names_file_values_counts(tmp_path):
  ids = np.zeros((10, 10), np.uint8)
  ids[0, :3] = 200
  ids[1, :5] = 19
  p = _save(ids, tmp_path / "bad.png")
  with pytest.raises(ValueError) as e:
    label_io.load_label_map(p, num_classes=19)
  msg = str(e.value)
  assert "bad.png" in msg and "19 (5 px)" in msg and "200 (3 px)" in msg and "0..18" in msg
  # 255 as don't-care: becomes the absorbing -1.
  ids[0, :3] = 255
  ids[1, :5] = 1
  got, rep = label_io.load_label_map(p := _save(ids, tmp_path / "dc.png"), num_classes=19,
                                     unknown_value=255)
  assert (got[0, :3] == -1).all() and rep.class_pixels[-1] == 3


def test_dataset_raw_convention(tmp_path):
  raw = np.array([[0, 1, 150], [2, 3, 4]], np.uint8)
  p = _save(raw, tmp_path / "ade.png")
  got, rep = label_io.load_label_map(p, num_classes=151, dataset="ade20k")
  np.testing.assert_array_equal(got, [[150, 0, 149], [1, 2, 3]])
  assert rep.mode == "raw-ids"
  raw[0, 0] = 151
  p = _save(raw, tmp_path / "ade_bad.png")
  with pytest.raises(ValueError, match=r"ade_bad.png.*151 \(1 px\)"):
    label_io.load_label_map(p, num_classes=151, dataset="ade20k")


def test_palette_snapping_report(tmp_path):
  table = palettes.get_class_table("cityscapes")
  ids = np.full((8, 8), 7, np.int32)  # road
  ids[:, 4:] = 23  # sky
  rgb = label_io.colorize(ids, table)
  rgb[0, 0] = (126, 66, 129)  # near road (e.g. a resized/JPEG-ed edge pixel)
  rgb[1, 4:6] = (72, 128, 181)  # near sky
  p = _save(rgb, tmp_path / "rgb.png")
  got, rep = label_io.load_label_map(p, num_classes=35, palette="cityscapes")
  np.testing.assert_array_equal(got, ids)
  assert rep.mode == "palette" and rep.snapped_pixels == 3
  by_rgb = {u[0]: u for u in rep.unknown_colors}
  assert by_rgb[(72, 128, 181)][1:3] == (2, 23)
  assert by_rgb[(126, 66, 129)][1:3] == (1, 7)
  assert "snapped" in rep.summary(table.names) and "road" in rep.summary(table.names)
  # Repeated palette colours go to the lowest id (Cityscapes 0..4 are all black).
  black = _save(np.zeros((2, 2, 3), np.uint8) + np.array([0, 0, 1], np.uint8),
                tmp_path / "black.png")
  assert (label_io.load_label_map(black, num_classes=35, palette="cityscapes")[0] == 0).all()


def test_rgb_without_palette_is_refused(tmp_path):
  rgb = np.zeros((4, 4, 3), np.uint8)
  rgb[0, 0] = (255, 0, 0)
  p = _save(rgb, tmp_path / "c.png")
  with pytest.raises(ValueError, match="c.png.*no palette"):
    label_io.load_label_map(p, num_classes=19)
  grey = np.stack([np.full((4, 4), 3, np.uint8)] * 3, -1)  # grey RGB = ids
  got, _ = label_io.load_label_map(_save(grey, tmp_path / "g.png"), num_classes=19)
  assert (got == 3).all()


def test_palette_too_big_for_model(tmp_path):
  p = _save(np.full((2, 2, 3), 200, np.uint8) + np.array([0, 1, 2], np.uint8),
            tmp_path / "x.png")
  with pytest.raises(ValueError, match="183 classes.*num_classes=19"):
    label_io.load_label_map(p, num_classes=19, palette="coco_stuff")


def test_custom_json_palettes(tmp_path):
  p1 = tmp_path / "p1.json"
  p1.write_text(json.dumps({"classes": [{"name": "bg", "color": [0, 0, 0]},
                                        {"name": "cat", "color": [255, 0, 0]}]}))
  t = palettes.get_class_table(str(p1))
  assert t.names == ("bg", "cat") and t.num_classes == 2
  p2 = tmp_path / "p2.json"
  p2.write_text(json.dumps([[0, 0, 0], [0, 255, 0], [0, 0, 255]]))
  rgb = np.zeros((3, 3, 3), np.uint8)
  rgb[1] = (0, 250, 3)
  got, rep = label_io.load_label_map(_save(rgb, tmp_path / "m.png"), num_classes=3,
                                     palette=str(p2))
  assert (got[1] == 1).all() and (got[0] == 0).all() and rep.snapped_pixels == 3
  p3 = tmp_path / "p3.json"
  p3.write_text(json.dumps({"colors": [[0, 0, 300]]}))
  with pytest.raises(ValueError, match="p3.json.*0..255"):
    palettes.get_class_table(str(p3))
  p4 = tmp_path / "p4.json"
  p4.write_text("{not json")
  with pytest.raises(ValueError, match="p4.json.*not valid JSON"):
    palettes.get_class_table(str(p4))
  with pytest.raises(FileNotFoundError, match="nope.json"):
    palettes.get_class_table(str(tmp_path / "nope.json"))
  roundtrip = tmp_path / "rt.json"
  palettes.save_class_table_json(palettes.get_class_table("ade20k"), str(roundtrip))
  t2 = palettes.get_class_table(str(roundtrip))
  assert t2.names[150] == "unlabeled" and t2.unlabeled_class == 150
  np.testing.assert_array_equal(t2.colors, palettes.get_class_table("ade20k").colors)


def test_check_ids_and_colorize():
  ids = np.array([[0, 2], [-1, 1]])
  assert label_io.check_ids(ids, 3).dtype == np.int32
  with pytest.raises(ValueError, match="3 \\(1 px\\)"):
    label_io.check_ids(np.array([[3]]), 3)
  rgb = label_io.colorize(ids, "celebamask_hq")
  assert rgb.shape == (2, 2, 3) and tuple(rgb[0, 1]) == (76, 153, 0)
  assert tuple(rgb[1, 0]) == (0, 0, 0)
  with pytest.raises(TypeError, match="integer class ids"):
    label_io.colorize(ids.astype(np.float32), "celebamask_hq")


def test_the_one_one_hot():
  # label_diffusion.one_hot is the only one-hot: -1 (unknown) gives the all-zero vector.
  from scdm_jax.diffusion import label_diffusion  # pylint: disable=import-outside-toplevel
  oh = np.asarray(label_diffusion.one_hot(np.array([[0, 2], [-1, 1]]), 3))
  assert oh.shape == (2, 2, 3) and oh.dtype == np.float32
  np.testing.assert_array_equal(oh.sum(-1), [[1, 1], [0, 1]])
  np.testing.assert_array_equal(oh.argmax(-1)[0], [0, 2])


def test_save_label_png_atomic(tmp_path):
  ids = np.arange(12).reshape(3, 4)
  path = tmp_path / "sub" / "o.png"
  label_io.save_label_png(str(path), ids)
  np.testing.assert_array_equal(np.asarray(Image.open(path)), ids)
  assert [p.name for p in path.parent.iterdir()] == ["o.png"]
