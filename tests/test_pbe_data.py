"""Paint-by-Example training triplets: box sources, masks, augmentations, the pipeline."""

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import data_config
from scdm_jax.data import fake_layouts
from scdm_jax.data import pbe_augment as aug
from scdm_jax.data import pbe_boxes as pb
from scdm_jax.data import pbe_masks as pm
from scdm_jax.data import pbe_preview
from scdm_jax.data import pbe_triplets as pt
from scdm_jax.data import procedural

OI_COLS = ["ImageID", "Source", "LabelName", "Confidence", "XMin", "XMax", "YMin", "YMax"]


def _png(path, w, h):
  Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(path)


def _oi_csv(path, rows):
  with open(path, "w", newline="") as f:
    wr = csv.writer(f)
    wr.writerow(OI_COLS)
    for r in rows:
      wr.writerow(r)


# ------------------------------------------------------------------------------ box sources

@pytest.fixture()
def oi_folder(tmp_path):
  img = tmp_path / "images"
  img.mkdir()
  _png(img / "a.jpg", 40, 20)
  _png(img / "b.jpg", 10, 10)
  return tmp_path, str(img)


def test_open_images_boxes_in_pixels_sorted(oi_folder):
  tmp, img = oi_folder
  _oi_csv(tmp / "boxes.csv", [["b", "x", "/m/cat", 1, 0.0, 1.0, 0.5, 1.0],
                              ["a", "x", "/m/dog", 1, 0.25, 0.5, 0.1, 0.6]])
  bs = pb.open_images_boxes(str(tmp / "boxes.csv"), img)
  assert bs.skipped == []
  assert [(os.path.basename(r.image), r.box, r.label, r.size) for r in bs.records] == [
      ("a.jpg", (10, 2, 20, 12), "/m/dog", (20, 40)), ("b.jpg", (0, 5, 10, 10), "/m/cat", (10, 10))]


def test_open_images_bad_rows_stop_or_skip(oi_folder):
  tmp, img = oi_folder
  path = str(tmp / "boxes.csv")
  _oi_csv(path, [["a", "x", "/m/dog", 1, 0.1, 0.5, 0.1, 0.5],
                 ["missing", "x", "/m/dog", 1, 0.1, 0.5, 0.1, 0.5],
                 ["a", "x", "/m/dog", 1, 0.5, 1.3, 0.1, 0.5],
                 ["b", "x", "/m/dog", 1, 0.5, 0.5, 0.1, 0.5]])
  with pytest.raises(ValueError, match=rf"^{path}:3: image .*missing.jpg does not exist$"):
    pb.open_images_boxes(path, img)
  bs = pb.open_images_boxes(path, img, on_bad_record="skip")
  assert len(bs.records) == 1 and len(bs.skipped) == 3
  assert bs.skipped[0].startswith(f"{path}:3: image")
  assert bs.skipped[1].startswith(f"{path}:4: box") and "outside the 40x20 image" in bs.skipped[1]
  assert bs.skipped[2].startswith(f"{path}:5: box") and "zero size" in bs.skipped[2]
  assert all("\n" not in s for s in bs.skipped)
  with pytest.raises(ValueError, match="on_bad_record"):
    pb.open_images_boxes(path, img, on_bad_record="ignore")


def test_open_images_folder_without_boxes(oi_folder):
  tmp, img = oi_folder
  _oi_csv(tmp / "empty.csv", [])
  with pytest.raises(ValueError, match=r"empty.csv over .*images: no usable boxes$"):
    pb.open_images_boxes(str(tmp / "empty.csv"), img)
  _oi_csv(tmp / "gone.csv", [["zz", "x", "/m/dog", 1, 0.1, 0.5, 0.1, 0.5]])
  with pytest.raises(ValueError, match=r"no usable boxes \(1 bad records skipped; first: .*:2: "):
    pb.open_images_boxes(str(tmp / "gone.csv"), img, on_bad_record="skip")


def test_coco_json_boxes_and_bad_annotations(oi_folder):
  tmp, img = oi_folder
  data = {"images": [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 20},
                     {"id": 2, "file_name": "nope.jpg", "width": 40, "height": 20}],
          "categories": [{"id": 7, "name": "dog"}],
          "annotations": [{"id": 10, "image_id": 1, "bbox": [2.5, 3, 10, 5], "category_id": 7},
                          {"id": 11, "image_id": 1, "bbox": [0, 0, 40, 20], "category_id": 7,
                           "iscrowd": 1},
                          {"id": 12, "image_id": 9, "bbox": [0, 0, 4, 4], "category_id": 7},
                          {"id": 13, "image_id": 2, "bbox": [0, 0, 4, 4], "category_id": 7},
                          {"id": 14, "image_id": 1, "bbox": [35, 0, 10, 4], "category_id": 7},
                          {"id": 15, "image_id": 1, "bbox": [3, 3, 0, 4], "category_id": 7}]}
  path = str(tmp / "inst.json")
  with open(path, "w") as f:
    json.dump(data, f)
  with pytest.raises(ValueError, match=r"annotation 2 \(id 12\): image_id 9 is not in"):
    pb.coco_boxes(path, img)
  bs = pb.coco_boxes(path, img, on_bad_record="skip")
  assert [(r.box, r.label) for r in bs.records] == [((2, 3, 13, 8), "dog")]
  assert [s.split(": ")[1] for s in bs.skipped] == [
      "annotation 2 (id 12)", "annotation 3 (id 13)", "annotation 4 (id 14)",
      "annotation 5 (id 15)"]
  assert "does not exist" in bs.skipped[1] and "outside" in bs.skipped[2]
  assert "zero size" in bs.skipped[3]
  assert len(pb.coco_boxes(path, img, on_bad_record="skip", include_crowd=True).records) == 2


def test_component_boxes_size_band_stuff_and_instances():
  lab = np.zeros((40, 40), np.int32)  # class 0 = stuff background
  lab[2:12, 2:12] = 1  # 6.25%: kept
  lab[30:32, 30:32] = 1  # 0.25%: too small
  lab[20:30, 2:12] = 2  # kept
  lab[20:30, 12:22] = 2  # touches the one above: one component without instances
  boxes = pb.component_boxes(lab, stuff_ids=[0])
  assert sorted(boxes) == [((2, 2, 12, 12), 1), ((2, 20, 22, 30), 2)]
  inst = np.zeros_like(lab)
  inst[20:30, 12:22] = 5
  boxes = pb.component_boxes(lab, inst, stuff_ids=[0])
  assert sorted(boxes) == [((2, 2, 12, 12), 1), ((2, 20, 12, 30), 2), ((12, 20, 22, 30), 2)]
  # Without the stuff list the background (83% of the image) is still too big.
  assert len(pb.component_boxes(lab, inst)) == 3
  assert pb.component_boxes(lab, inst, stuff_ids=[0], min_frac=0.07) == []
  with pytest.raises(ValueError, match=r"\['skyy'\] are not class names"):
    pb.stuff_ids_for(["sky", "tree"], ["skyy"])


def test_procedural_boxes_are_objects_in_the_band():
  bs = pb.procedural_boxes(data_config(), 12, size=48, seed=3)
  assert len(bs.records) >= 6
  for r in bs.records:
    assert r.label in ("tree", "rock", "building") and r.image == "" and r.size == (48, 48)
    ex = procedural.generate(r.index, size=48, seed=3)
    x0, y0, x1, y1 = r.box
    assert 0 <= x0 < x1 <= 48 and 0 <= y0 < y1 <= 48
    inside = ex["label"][y0:y1, x0:x1] == [n for n, _ in procedural.CLASSES].index(r.label)
    assert 0.02 * 48 * 48 <= inside.sum() <= 0.5 * 48 * 48
  assert bs.records == pb.procedural_boxes(data_config(), 12, size=48, seed=3).records


# ------------------------------------------------------------------------------------ masks

def _contains(outer, inner):
  return (outer[0] <= inner[0] and outer[1] <= inner[1] and outer[2] >= inner[2]
          and outer[3] >= inner[3])


def test_extend_box_within_free_space():
  for s in range(200):
    rng = np.random.default_rng(s)
    h, w = 50 + s % 7, 80
    x0, y0 = int(rng.integers(0, 60)), int(rng.integers(0, 40))
    box = (x0, y0, x0 + int(rng.integers(1, w - x0 + 1)), y0 + int(rng.integers(1, h - y0 + 1)))
    e = pm.extend_box(box, (h, w), rng)
    assert _contains(e, box) and _contains((0, 0, w, h), e)
    assert box[0] - e[0] <= 0.4 * box[0] and e[2] - box[2] <= 0.4 * (w - box[2])
    assert box[1] - e[1] <= 0.4 * box[1] and e[3] - box[3] <= 0.4 * (h - box[3])


def test_bezier_points_follow_the_official_curve():
  box, ext = (10, 20, 50, 40), (4, 12, 60, 48)
  pts = pm.bezier_points(box, ext)
  assert pts.shape == (72, 2)
  u = pm.BEZIER_U
  np.testing.assert_allclose(u[[0, -1]], [0.05, 0.90])
  # Top edge: x linear from x0 to x1; y bulges up to the extended box's top at u = 0.5.
  np.testing.assert_allclose(pts[:18, 0], 10 + 40 * u)
  np.testing.assert_allclose(pts[:18, 1], 20 - 8 * 2 * u * (1 - u))
  assert pts[18:36, 0].max() <= 60 and pts[18:36, 0].min() >= 50  # right edge bulges right
  hole = pm.polygon_hole(pts, 64)
  assert hole[24:36, 14:46].all()  # the box shrunk by 10% per side
  assert not hole[:12].any() and not hole[:, 61:].any()
  cfg = pm.MaskConfig()  # +-5 px at 512, scaled, at least 1 px
  assert [pm.jitter_px(cfg, s) for s in (64, 256, 512, 1024)] == [1, 2, 5, 10]


def _check_geometry(g, cfg, s):
  hole = g["hole"]
  assert hole.shape == (s, s) and hole.dtype == bool and hole.any()
  assert _contains(g["crop"], g["ext"]) and _contains(g["ext"], g["box_in"])
  bx0, by0, bx1, by1 = g["box_out"]
  j = pm.jitter_px(cfg, s) + 1
  ex0, ey0, ex1, ey1 = g["ext_out"]
  ys, xs = np.nonzero(hole)
  assert xs.min() >= ex0 - j and xs.max() < ex1 + j and ys.min() >= ey0 - j and ys.max() < ey1 + j
  if not g["bezier"] or cfg.bezier_covers_box:
    assert hole[by0:by1, bx0:bx1].all()
  else:  # the polygon cuts the corners: it covers the box shrunk by 10% (+ jitter)
    mx, my = int(np.ceil(0.1 * (bx1 - bx0))) + j, int(np.ceil(0.1 * (by1 - by0))) + j
    assert hole[by0 + my:by1 - my, bx0 + mx:bx1 - mx].all()


@pytest.mark.parametrize("covers", [False, True])
def test_mask_covers_box_within_ext_and_crop(covers):
  cfg = pm.MaskConfig(bezier_covers_box=covers)
  counts = {"bezier": 0, "square": 0}
  for s in range(300):
    rng = np.random.default_rng([s, 1])
    h, w = (120, 90) if s % 2 else (64, 150)
    bw, bh = int(rng.integers(8, 60)), int(rng.integers(8, 60))
    x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
    box = (x0, y0, x0 + bw, y0 + bh)
    g = pm.make_mask(box, (h, w), 64, rng, cfg)
    g["box_in"] = box
    _check_geometry(g, cfg, 64)
    c = g["crop"]
    counts["bezier"] += g["bezier"]
    e = g["ext"]
    fits = max(e[2] - e[0], e[3] - e[1]) <= min(h, w)
    # A square unless no square fits the extended box: then the whole image, as the code.
    assert ((c[2] - c[0]) == (c[3] - c[1]) <= min(h, w)) if fits else c == (0, 0, w, h)
    counts["square"] += fits
    assert _contains((0, 0, w, h), c)
  assert 120 <= counts["bezier"] <= 180  # p = 0.5
  assert counts["square"] >= 200


def test_scene_crop_full_image_when_no_square_fits():
  rng = np.random.default_rng(0)
  assert pm.scene_crop((0, 10, 90, 20), (40, 100), rng) == (0, 0, 100, 40)
  c = pm.scene_crop((30, 10, 60, 20), (40, 100), rng)
  assert c[2] - c[0] == c[3] - c[1] <= 40 and _contains(c, (30, 10, 60, 20))


def test_min_mask_px_grows_tiny_holes():
  cfg = pm.MaskConfig(min_mask_px=12, bezier_prob=0.0)
  for s in range(50):
    g = pm.make_mask((100, 100, 102, 103), (200, 200), 64, np.random.default_rng(s), cfg)
    ys, xs = np.nonzero(g["hole"])
    assert xs.max() - xs.min() + 1 >= 12 and ys.max() - ys.min() + 1 >= 12
  cfg = pm.MaskConfig(min_mask_px=12, bezier_prob=1.0)
  g = pm.make_mask((100, 100, 102, 103), (200, 200), 64, np.random.default_rng(0), cfg)
  ys, xs = np.nonzero(g["hole"])
  assert xs.max() - xs.min() + 1 >= 10 and ys.max() - ys.min() + 1 >= 10


def test_small_mask_share_rate():
  rng0 = np.random.default_rng(7)
  boxes = []
  for _ in range(400):
    # <= 15 px: each can be made < 3% of a 64 px scene cut from the 120 px square.
    bw, bh = int(rng0.integers(6, 16)), int(rng0.integers(6, 16))
    x0, y0 = int(rng0.integers(0, 160 - bw)), int(rng0.integers(0, 120 - bh))
    boxes.append((x0, y0, x0 + bw, y0 + bh))

  def rate(share):
    cfg = pm.MaskConfig(small_mask_share=share, small_mask_frac=0.03)
    fr = [pm.make_mask(b, (120, 160), 64, np.random.default_rng([i, 2]), cfg)["hole"].mean()
          for i, b in enumerate(boxes)]
    return np.mean(np.array(fr) < 0.03)

  base = rate(0.0)
  assert base < 0.5
  assert rate(1.0) == 1.0
  expect = 0.4 + 0.6 * base
  assert abs(rate(0.4) - expect) < 0.08
  # A box too big for any crop keeps its share of the largest square (no padding).
  cfg = pm.MaskConfig(small_mask_share=1.0, small_mask_frac=0.03)
  g = pm.make_mask((10, 10, 70, 70), (120, 160), 64, np.random.default_rng(0), cfg)
  assert g["small"] and g["crop"][2] - g["crop"][0] == 120 and g["hole"].mean() > 0.03


def test_mask_config_validation():
  with pytest.raises(ValueError, match="bezier_prob=1.5"):
    pm.MaskConfig(bezier_prob=1.5)
  with pytest.raises(ValueError, match="small_mask_frac"):
    pm.MaskConfig(small_mask_frac=0.0)


# ---------------------------------------------------------------------------- augmentations

def _img(seed=0, h=12, w=10):
  return np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)


def test_augment_identity_at_zero_strength():
  x = _img()
  out, applied = aug.augment(x, np.random.default_rng(0), aug.NONE)
  np.testing.assert_array_equal(out, x)
  assert not any(applied.values())
  np.testing.assert_array_equal(aug.rotate(x, 0.0), x)
  np.testing.assert_array_equal(aug.box_blur(x, 1), x)
  z = np.zeros(x.shape[:2])
  np.testing.assert_allclose(aug.elastic(x, z, z), x, atol=1e-7)
  always_weak = aug.AugmentConfig(0, 1, 0, 1, max_rotate_deg=0.0, elastic_alpha=0.0)
  np.testing.assert_allclose(aug.augment(x, np.random.default_rng(1), always_weak)[0], x,
                             atol=1e-6)


def test_augment_ops_do_what_they_say():
  x = _img()
  np.testing.assert_array_equal(aug.hflip(x), x[:, ::-1])
  b = aug.box_blur(x, 3)
  np.testing.assert_allclose(b[5, 5], x[4:7, 4:7].mean((0, 1)), rtol=1e-5)
  sq = _img(h=11, w=11)
  np.testing.assert_allclose(aug.rotate(sq, 90.0), np.rot90(sq, 1, axes=(0, 1)), atol=1e-5)
  dy, dx = aug.elastic_field((40, 40), np.random.default_rng(0), 0.05, 0.1)
  assert np.isclose(max(np.abs(dy).max(), np.abs(dx).max()), 2.0)


def test_augment_shape_range_determinism():
  x = _img(h=16, w=16)
  full = aug.AugmentConfig(1, 1, 1, 1)
  a, applied = aug.augment(x, np.random.default_rng(3), full)
  assert all(applied.values())
  assert a.shape == x.shape and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
  assert not np.allclose(a, x)
  b, _ = aug.augment(x, np.random.default_rng(3), full)
  c, _ = aug.augment(x, np.random.default_rng(4), full)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_augment_probabilities():
  x = _img(h=6, w=6)
  n = 600
  hits = {"flip": 0, "rotate": 0, "blur": 0, "elastic": 0}
  for s in range(n):
    _, applied = aug.augment(x, np.random.default_rng(s))
    for k, v in applied.items():
      hits[k] += v
  for k, p in (("flip", 0.5), ("rotate", 0.5), ("blur", 0.3), ("elastic", 0.3)):
    assert abs(hits[k] / n - p) < 0.07, (k, hits[k] / n)


# ---------------------------------------------------------------------------------- triplets

@pytest.fixture(scope="module")
def proc_records():
  return pb.procedural_boxes(data_config(), 8, size=48, seed=1).records


def test_make_triplet_contents(proc_records):
  r = proc_records[0]
  t = pt.make_triplet(r, np.random.default_rng(5), image_size=32, encoder_size=16,
                      augment=aug.NONE)
  assert t["image"].shape == (32, 32, 3) and t["reference"].shape == (16, 16, 3)
  assert t["keep_mask"].shape == (32, 32, 1) and set(np.unique(t["keep_mask"])) == {0.0, 1.0}
  assert -1 <= t["image"].min() and t["image"].max() <= 1
  np.testing.assert_array_equal(t["masked_image"], t["image"] * t["keep_mask"])
  assert (t["masked_image"][t["keep_mask"][..., 0] == 0] == 0).all()
  # Scene = the crop of make_mask (same rng stream), resized; reference = the padded box crop.
  img = procedural.generate(r.index, size=48, seed=1)["image"]
  g = pm.make_mask(r.box, (48, 48), 32, np.random.default_rng(5))
  c = g["crop"]
  np.testing.assert_allclose(t["image"], pt._resize(img[c[1]:c[3], c[0]:c[2]], 32) * 2 - 1,
                             atol=1e-6)
  np.testing.assert_array_equal(t["keep_mask"][..., 0], ~g["hole"])
  ref = t["reference"] * np.array(pt.CLIP_STD) + np.array(pt.CLIP_MEAN)
  p = round(10 * 48 / 512)
  x0, y0, x1, y1 = r.box
  want = pt._resize(img[max(0, y0 - p):y1 + p, max(0, x0 - p):x1 + p], 16)
  np.testing.assert_allclose(ref, want, atol=1e-5)


def test_missing_image_message():
  r = pb.BoxRecord("/nonexistent/x.png", (0, 0, 4, 4), "dog", size=(8, 8))
  with pytest.raises(ValueError, match=r"^/nonexistent/x.png: cannot read the image of box"):
    pt.make_triplet(r, np.random.default_rng(0), image_size=8, encoder_size=8)


def _take(it, n):
  with it:
    return [next(it) for _ in range(n)]


def test_pipeline_deterministic_with_exact_resume(proc_records):
  kw = dict(image_size=16, encoder_size=8, batch_size=3, seed=11)
  n = len(proc_records)
  nb = -(-n // 3) + 2  # crosses into epoch 1
  full = _take(pt.create_triplet_dataset(proc_records, **kw), nb)
  again = _take(pt.create_triplet_dataset(proc_records, **kw), nb)
  resumed = _take(pt.create_triplet_dataset(proc_records, start_step=3, **kw), nb - 3)
  assert full[0]["image"].shape == (3, 16, 16, 3) and full[0]["reference"].shape == (3, 8, 8, 3)
  assert full[0]["keep_mask"].shape == (3, 16, 16, 1) and full[0]["box"].shape == (3, 4)
  for a, b in zip(full, again):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  for a, b in zip(full[3:], resumed):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  ids = np.concatenate([b["record"] for b in full])
  assert sorted(ids[:n]) == list(range(n))  # epoch 0 is a permutation of the records
  other = _take(pt.create_triplet_dataset(proc_records, **{**kw, "seed": 12}), 1)
  assert not np.array_equal(other[0]["record"], full[0]["record"]) or not np.array_equal(
      other[0]["image"], full[0]["image"])


def test_pipeline_host_shards_disjoint_and_cover(proc_records):
  seen = []
  for p in range(2):
    it = pt.create_triplet_dataset(proc_records, image_size=8, encoder_size=8, batch_size=4,
                                   seed=0, train=False, process_index=p, process_count=2)
    with it:
      seen.append(np.concatenate([b["record"] for b in it]))
  assert set(seen[0]) == set(range(0, len(proc_records), 2))
  assert set(seen[1]) == set(range(1, len(proc_records), 2))


def test_pipeline_bad_record_stop_or_skip(proc_records):
  bad = pb.BoxRecord("/nonexistent/x.png", (0, 0, 4, 4), "dog", size=(8, 8))
  records = [bad] + list(proc_records[:3])
  kw = dict(image_size=8, encoder_size=8, batch_size=4, seed=0, train=False)
  with pytest.raises(ValueError, match="/nonexistent/x.png: cannot read"):
    _take(pt.create_triplet_dataset(records, **kw), 1)
  it = pt.create_triplet_dataset(records, on_bad_record="skip", **kw)
  (b,) = _take(it, 1)
  assert b["image"].shape[0] == 4 and 0 not in b["record"]
  assert len(it.skipped) == 1 and "record 0 (/nonexistent/x.png" in it.skipped[0]


def test_preview_grid(tmp_path):
  path = str(tmp_path / "grid.png")
  grid = pbe_preview.procedural_preview(path, data_config(), n=2, image_size=16, source_size=48,
                                        encoder_size=16)
  assert grid.shape == (2 * 16 + 2, 4 * 16 + 6, 3)
  np.testing.assert_array_equal(np.asarray(Image.open(path)), grid)


def test_dataset_boxes_over_fake_layouts(tmp_path):
  ade = fake_layouts.make_fake_dataset("ade20k", str(tmp_path / "ade"), num_train=3, num_val=1)
  bs = pb.dataset_boxes(data_config(name="ade20k", root=ade, image_size=32,
                                   num_classes=0), "train")
  # The fake maps its trees to ADE's "tree"; its rocks and buildings are ADE stuff.
  assert bs.records and {r.label for r in bs.records} == {"tree"}
  assert all(os.path.isfile(r.image) and r.size == (48, 64) for r in bs.records)
  t = pt.make_triplet(bs.records[0], np.random.default_rng(0), image_size=16, encoder_size=8)
  assert t["image"].shape == (16, 16, 3)
  coco = fake_layouts.make_fake_dataset("coco_stuff", str(tmp_path / "coco"), num_train=2,
                                        num_val=1)
  cfg = data_config(name="coco_stuff", root=coco, image_size=32, num_classes=0)
  with pytest.raises(ValueError, match=r"^coco_stuff train \(2 label maps\): no usable boxes"):
    pb.dataset_boxes(cfg, "train")  # every fake class is COCO stuff
  bs = pb.dataset_boxes(cfg, "train", stuff=("unlabeled", "sky-other"))
  assert "tree" in {r.label for r in bs.records}
