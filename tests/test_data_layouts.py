"""Folder layouts of the four datasets on generated trees: listing, raw mapping, errors."""

from conftest import data_config
import numpy as np
import pytest
from PIL import Image

from scdm_jax.data import datasets
from scdm_jax.data import fake_layouts
from scdm_jax.data import layouts
from scdm_jax.data import procedural

ALL = ("ade20k", "coco_stuff", "celebamask_hq", "cityscapes")


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
  base = tmp_path_factory.mktemp("layouts")
  return {d: fake_layouts.make_fake_dataset(d, str(base / d), num_train=3, num_val=2)
          for d in ALL}


@pytest.mark.parametrize("dataset", ALL)
def test_listing_and_raw_mapping(trees, dataset):
  spec = layouts.get_spec(dataset)
  train = layouts.list_examples(dataset, trees[dataset], "train")
  val = layouts.list_examples(dataset, trees[dataset], "validation")
  assert len(train) == 3 and len(val) == 2
  assert [e.name for e in train] == sorted(e.name for e in train)
  assert all(e.image is not None for e in train)
  assert all((e.instance is not None) == spec.has_instances for e in train)
  ex = train[0]
  ids = spec.raw_to_class(layouts.read_raw_label(ex.label), ex.label)
  img, raw, _ = fake_layouts.fake_example(dataset, 0, (48, 64), "train")
  assert ids.shape == raw.shape and ids.dtype == np.int32
  assert ids.min() >= 0 and ids.max() < spec.num_classes
  a, b = fake_layouts.CORNER[dataset]
  corner = {"ade20k": (150, 149), "coco_stuff": (182, 181), "cityscapes": (0, 33),
            "celebamask_hq": (18, 17)}[dataset]
  assert (ids[0, 0], ids[0, 1]) == corner
  # The rest of the map: the dataset's raw id of each procedural class (ADE20K shifted by 1).
  shift = 1 if dataset == "ade20k" else 0
  expect = np.asarray(fake_layouts.RAW_OF_CLASS[dataset])[
      procedural.generate(0, size=(48, 64), split="train")["label"]] - shift
  np.testing.assert_array_equal(ids[2:], expect[2:])


def test_mapping_rules_exact():
  ade = layouts.get_spec("ade20k")
  np.testing.assert_array_equal(ade.raw_to_class(np.array([[0, 1, 2, 150]], np.uint8)),
                                [[150, 0, 1, 149]])
  coco = layouts.get_spec("coco_stuff")
  np.testing.assert_array_equal(coco.raw_to_class(np.array([[0, 181, 255]], np.uint8)),
                                [[0, 181, 182]])
  assert ade.unlabeled_class == 150 and coco.unlabeled_class == 182
  assert layouts.get_spec("cityscapes").num_classes == 35
  assert layouts.get_spec("celebamask_hq").num_classes == 19
  assert layouts.get_spec("celebamask_hq").unlabeled_class is None


@pytest.mark.parametrize("dataset,bad", [("ade20k", 151), ("coco_stuff", 200),
                                         ("celebamask_hq", 19), ("cityscapes", 35)])
def test_bad_raw_values_name_file_values_counts(dataset, bad):
  raw = np.zeros((4, 4), np.uint8)
  raw[0, :3] = bad
  with pytest.raises(ValueError) as e:
    layouts.get_spec(dataset).raw_to_class(raw, "/x/lab.png")
  assert "/x/lab.png" in str(e.value) and f"{bad} (3 px)" in str(e.value)


def test_bad_label_file_in_pipeline_source(trees, tmp_path):
  import shutil  # pylint: disable=import-outside-toplevel
  root = tmp_path / "ade"
  shutil.copytree(trees["ade20k"], root)
  lab = root / "ADEChallengeData2016" / "annotations" / "training" / "ADE_train_00000001.png"
  Image.fromarray(np.full((48, 64), 200, np.uint8)).save(lab)
  src = datasets.make_source(data_config(name="ade20k", root=str(root), image_size=32,
                                           num_classes=151), "train")
  with pytest.raises(ValueError, match=r"ADE_train_00000001.png.*200 \(3072 px\)"):
    src.load(1)


def test_missing_folders_are_clear(tmp_path, trees):
  with pytest.raises(FileNotFoundError, match=r"does not exist.*ADEChallengeData2016"):
    layouts.list_examples("ade20k", str(tmp_path / "nothing"), "train")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match=r"train_label.*SPADE layout"):
    layouts.list_examples("coco_stuff", str(tmp_path / "empty"), "train")
  with pytest.raises(ValueError, match="data.root is empty"):
    datasets.make_source(data_config(name="ade20k", root="", image_size=32), "train")
  with pytest.raises(ValueError, match="unknown split"):
    layouts.list_examples("ade20k", trees["ade20k"], "dev")
  with pytest.raises(ValueError, match="num_classes=150 but ade20k has 151"):
    datasets.make_source(data_config(name="ade20k", root=trees["ade20k"], image_size=32,
                                     num_classes=150), "train")


def test_missing_image_is_reported(tmp_path, trees):
  import shutil  # pylint: disable=import-outside-toplevel
  root = tmp_path / "celeba"
  shutil.copytree(trees["celebamask_hq"], root)
  (root / "train" / "images" / "1.jpg").unlink()
  with pytest.raises(FileNotFoundError, match=r"1 label files.*no image.*\['1'\]"):
    layouts.list_examples("celebamask_hq", str(root), "train")
  ex = layouts.list_examples("celebamask_hq", str(root), "train", require_images=False)
  assert [e.image is None for e in ex] == [False, True, False]


def test_ade_root_may_be_the_inner_folder(trees):
  inner = trees["ade20k"] + "/ADEChallengeData2016"
  assert len(layouts.list_examples("ade20k", inner, "validation")) == 2


def test_procedural_determinism_and_classes():
  a = procedural.generate(5, size=(40, 56), seed=1)
  b = procedural.generate(5, size=(40, 56), seed=1)
  c = procedural.generate(6, size=(40, 56), seed=1)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a["label"], c["label"])
  assert a["image"].shape == (40, 56, 3) and a["label"].shape == (40, 56)
  # Colour follows class: per-class mean colours sit near the class base colour.
  labs, imgs = [], []
  for i in range(24):
    e = procedural.generate(i, size=48)
    labs.append(e["label"].ravel())
    imgs.append(e["image"].reshape(-1, 3))
  labs, imgs = np.concatenate(labs), np.concatenate(imgs).astype(np.float32)
  base = procedural.class_mean_colors()
  present = np.unique(labs)
  assert len(present) >= 7 and procedural.UNLABELED not in present
  for c in present:
    mean = imgs[labs == c].mean(0)
    nearest = np.argmin(((base[:-1] - mean) ** 2).sum(-1))
    assert nearest == c, (c, mean)
