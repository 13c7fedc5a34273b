"""create_dataset (tf.data): batch format, class ids, edges, shards, determinism, resume, noise."""

from conftest import data_config
import numpy as np
import pytest

from scdm_jax.data import datasets
from scdm_jax.data import fake_layouts
from scdm_jax.data import layouts
from scdm_jax.data import noisy

ALL = ("ade20k", "coco_stuff", "celebamask_hq", "cityscapes")


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
  base = tmp_path_factory.mktemp("pipeline")
  return {d: fake_layouts.make_fake_dataset(d, str(base / d), num_train=5, num_val=5)
          for d in ALL}


def _cfg(name, root="", **kw):
  spec_k = {"procedural": 9}.get(name) or layouts.get_spec(name).num_classes
  return data_config(**dict(dict(name=name, root=root, image_size=32, num_classes=spec_k,
                                 num_parallel_calls=2), **kw))


@pytest.mark.parametrize("dataset", ALL)
@pytest.mark.parametrize("train", [True, False])
def test_every_layout_batches(trees, dataset, train):
  use_inst = dataset != "ade20k"  # CelebA: label map gives the edges
  cfg = _cfg(dataset, trees[dataset], use_instance=use_inst)
  k = cfg["num_classes"]
  it = datasets.create_dataset(cfg, "train" if train else "validation", batch_size=2,
                               train=train, seed=0, with_names=True)
  b = next(it)
  assert b["image"].shape == (2, 32, 32, 3) and b["image"].dtype == np.float32
  assert b["label"].shape == (2, 32, 32) and b["label"].dtype == np.int32  # class ids
  assert -1.0 <= b["image"].min() and b["image"].max() <= 1.0
  assert 0 <= b["label"].min() and b["label"].max() < k  # nothing unknown
  assert b["name"].shape == (2,) and isinstance(b["name"][0], bytes)
  if use_inst:
    assert b["edge"].shape == (2, 32, 32, 1) and set(np.unique(b["edge"])) <= {0.0, 1.0}
  else:
    assert "edge" not in b
  if not train:  # test-time: the label is the nearest resize of the file, mapped
    spec = layouts.get_spec(dataset)
    ex = layouts.list_examples(dataset, trees[dataset], "validation")[0]
    assert b["name"][0].decode() == ex.name
    ids = spec.raw_to_class(layouts.read_raw_label(ex.label))
    np.testing.assert_array_equal(b["label"][0], noisy.resize_nearest(ids, 32))
    if use_inst:
      inst = ids if ex.instance is None else layouts.read_raw_label(ex.instance)
      np.testing.assert_array_equal(
          b["edge"][0, ..., 0], noisy.boundary_map(noisy.resize_nearest(inst, 32)))


def test_two_processes_split_without_overlap():
  cfg = _cfg("procedural", num_examples=11)
  seen = []
  for p in range(2):
    names = [n for b in datasets.create_dataset(cfg, "validation", batch_size=4, train=False,
                                                seed=0, process_index=p, process_count=2,
                                                with_names=True) for n in b["name"]]
    seen.append(names)
  assert set(seen[0]).isdisjoint(seen[1])
  assert len(seen[0]) + len(seen[1]) == 128  # the whole validation split, once
  # Training shards: also disjoint and covering, over one epoch of each.
  imaps = [datasets.IndexMap(11, train=True, seed=3, process_index=p, process_count=2)
           for p in range(2)]
  ep = [{imaps[p](k)[0] for k in range(len(imaps[p]))} for p in range(2)]
  assert ep[0].isdisjoint(ep[1]) and ep[0] | ep[1] == set(range(11))


def test_deterministic_for_a_seed_and_resume():
  cfg = _cfg("procedural", use_instance=True, num_examples=6)

  def take(seed, n, start=0):
    it = datasets.create_dataset(cfg, "train", batch_size=4, train=True, seed=seed,
                                 start_step=start, with_names=True)
    return [next(it) for _ in range(n)]

  a, b, c = take(0, 4), take(0, 4), take(1, 1)
  for x, y in zip(a, b):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  assert not np.array_equal(a[0]["image"], c[0]["image"])
  resumed = take(0, 1, start=3)[0]  # batch 3 spans epochs 1 and 2 (6 examples per epoch)
  for key in a[3]:
    np.testing.assert_array_equal(resumed[key], a[3][key])
  # Each epoch visits every example once.
  names = np.concatenate([x["name"] for x in a])[:12]
  assert sorted(names[:6]) == sorted(names[6:]) and len(set(names[:6])) == 6


def test_train_augmentation_varies_and_eval_is_plain(trees):
  cfg = _cfg("celebamask_hq", trees["celebamask_hq"])
  it = datasets.create_dataset(cfg, "train", batch_size=5, train=True, seed=0,
                               with_names=True)
  b1, b2 = next(it), next(it)  # two epochs of the same 5 images, different crops/flips
  by_name = {n: i for i, n in enumerate(b2["name"])}
  diffs = [np.abs(b1["image"][i] - b2["image"][by_name[n]]).max()
           for i, n in enumerate(b1["name"])]
  assert max(diffs) > 0.1
  loader = datasets.ExampleLoader(datasets.make_source(cfg, "train"), cfg, train=True, seed=0)
  for i in range(5):
    out = loader(i % 5, i)
    assert out["image"].shape == (32, 32, 3) and out["label"].shape == (32, 32)


def test_noise_in_pipeline(trees):
  root = trees["ade20k"]
  ex = layouts.list_examples("ade20k", root, "validation")[0]
  spec = layouts.get_spec("ade20k")
  raw = layouts.read_raw_label(ex.label)

  def first(**kw):
    cfg = _cfg("ade20k", root, **kw)
    return next(datasets.create_dataset(cfg, "validation", batch_size=1, train=False,
                                        seed=0))["label"][0]

  clean = first()
  # DS: the 64x64 nearest version of the raw map, resized to S (as the reference loader).
  ds = first(noise="ds")
  np.testing.assert_array_equal(
      ds, spec.raw_to_class(noisy.resize_nearest(noisy.resize_nearest(raw, 64), 32)))
  # Edge: boundaries of the label map (ADE20K has no instances) -> class 150.
  edge = first(noise="edge")
  ids = clean
  np.testing.assert_array_equal(edge, noisy.corrupt_edge(ids, 150))
  # unlabeled_to_zero: corrupted and originally-unlabeled pixels become unknown (-1).
  edge0 = first(noise="edge", unlabeled_to_zero=True)
  mask = noisy.edge_mask(ids) | (ids == 150)
  np.testing.assert_array_equal(edge0 == -1, mask)
  assert not (edge0 == 150).any()
  # Random: reproducible per seed, rate about 0.1 (of 1024 px).
  r1, r2 = first(noise="random"), first(noise="random")
  np.testing.assert_array_equal(r1, r2)
  frac = (r1 != ids).mean()
  assert 0.04 < frac < 0.16


def test_noise_needs_an_unlabeled_class(trees):
  cfg = _cfg("celebamask_hq", trees["celebamask_hq"], noise="random")
  with pytest.raises(ValueError, match="unlabeled_to_zero=True"):
    datasets.create_dataset(cfg, "validation", batch_size=1, train=False, seed=0)
  cfg["unlabeled_to_zero"] = True
  cfg["use_instance"] = True  # CelebA: edges from the label map, the *clean* one
  b = next(datasets.create_dataset(cfg, "validation", batch_size=1, train=False, seed=0))
  assert 0.03 < (b["label"] == -1).mean() < 0.2
  clean = next(datasets.create_dataset(dict(cfg, noise="none"), "validation", batch_size=1,
                                       train=False, seed=0))
  np.testing.assert_array_equal(b["edge"], clean["edge"])
  np.testing.assert_array_equal(
      clean["edge"][0, ..., 0], noisy.boundary_map(clean["label"][0]))


def test_procedural_train_batches_and_attribute_config():
  # Any attribute object works (e.g. an ml_collections ConfigDict).
  cfg = type("Cfg", (), data_config(name="procedural", image_size=24, use_instance=True))
  it = datasets.create_dataset(cfg(), "train", batch_size=3, train=True, seed=7)
  b = next(it)
  assert b["image"].shape == (3, 24, 24, 3) and b["label"].shape == (3, 24, 24)
  assert b["edge"].shape == (3, 24, 24, 1) and b["edge"].any()
  assert b["label"].min() >= 0


def test_a_missing_field_names_the_schema():
  cfg = data_config(name="procedural")
  del cfg["flip"]
  with pytest.raises(ValueError, match="no field 'flip'.*configs/default.py"):
    next(datasets.create_dataset(cfg, "train", batch_size=1, train=True, seed=0))


def test_label_dir_reads_a_corrupted_copy(trees, tmp_path):
  from scdm_jax.data import corrupt  # pylint: disable=import-outside-toplevel
  root = trees["ade20k"]
  out = tmp_path / "ds"
  corrupt.run("ade20k", root, "validation", "ds", str(out), quiet=True)

  def labels(**kw):
    cfg = _cfg("ade20k", root, **kw)
    return np.concatenate([b["label"] for b in datasets.create_dataset(
        cfg, "validation", batch_size=2, train=False, seed=0)])

  # The fixed DS copy read through label_dir == the DS transform of the pipeline.
  np.testing.assert_array_equal(labels(label_dir=str(out)), labels(noise="ds"))
  with pytest.raises(FileNotFoundError, match="label_dir .*does not exist"):
    labels(label_dir=str(tmp_path / "missing"))


def test_labels_only_folder(trees, tmp_path):
  import shutil  # pylint: disable=import-outside-toplevel
  root = tmp_path / "celeb"
  shutil.copytree(trees["celebamask_hq"], root)
  shutil.rmtree(root / "test" / "images")
  cfg = _cfg("celebamask_hq", str(root), require_images=False)
  b = next(datasets.create_dataset(cfg, "validation", batch_size=5, train=False, seed=0))
  assert (b["image"] == 0).all() and b["label"].shape == (5, 32, 32)
  with pytest.raises(FileNotFoundError, match="images"):
    datasets.create_dataset(_cfg("celebamask_hq", str(root)), "validation", batch_size=1,
                            train=False, seed=0)


_WORKER = """
import json, sys
from scdm_jax.data import datasets
cfg = json.loads(sys.argv[2])
it = datasets.create_dataset(cfg, "train", batch_size=5, train=True, seed=0,
                             process_index=int(sys.argv[1]), process_count=2, with_names=True)
print(",".join(n.decode() for n in next(it)["name"]))
"""


@pytest.mark.slow
def test_two_os_processes_read_disjoint_shards():
  import os  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  import json  # pylint: disable=import-outside-toplevel
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  cfg = json.dumps(data_config(name="procedural", image_size=8, num_examples=10))
  procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(p), cfg], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env) for p in range(2)]
  try:
    outs = [p.communicate(timeout=120)[0].strip().splitlines()[-1].split(",") for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert all(p.returncode == 0 for p in procs)
  # One epoch each (5 examples per shard): disjoint, together the whole split.
  assert set(outs[0]).isdisjoint(outs[1]) and len(set(outs[0]) | set(outs[1])) == 10


def test_bad_label_file_surfaces_as_itself(tmp_path):
  # A corrupt file met mid-stream raises our ValueError naming it, not TF's wrapped op error.
  from PIL import Image
  root = fake_layouts.make_fake_dataset("ade20k", str(tmp_path / "ade"), num_train=4,
                                        num_val=1, size=(40, 48))
  bad = layouts.list_examples("ade20k", root, "train")[2].label
  Image.fromarray(np.full((40, 48), 200, np.uint8)).save(bad)
  it = datasets.create_dataset(_cfg("ade20k", root), "train", batch_size=2, train=True, seed=0)
  with pytest.raises(ValueError) as info:
    for _ in range(4):
      next(it)
  assert bad in str(info.value) and "200" in str(info.value)
  assert "Traceback" not in str(info.value)
