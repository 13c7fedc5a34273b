"""`--mode evaluate` (`modes.evaluate.run`): writes its JSON; refuses bad inputs."""

import json
import pathlib

from conftest import load_config
import numpy as np
from PIL import Image
import pytest

from scdm_jax.modes import evaluate as evaluate_lib
from scdm_jax.evaluation import inception
from scdm_jax.evaluation import lpips
from scdm_jax.evaluation import proxy

SIZE = 32  # LPIPS' AlexNet needs >= 31 px
NAMES = [f"procedural_validation_{i:06d}" for i in range(4)]


def tiny_config(tmp):
  config = load_config("tiny")
  config.data.image_size = SIZE
  config.eval.output = str(tmp / "eval" / "report.json")
  return config


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("evaluate")
  # Random-weight networks of the right layouts (no real weights can be downloaded).
  proxy_path = tmp / "proxy.npz"
  proxy.save_proxy(proxy_path, proxy.init_proxy(9, 8),
                   {"image_size": SIZE, "num_classes": 9, "width": 8})
  rng = np.random.default_rng(0)
  lpips_path = tmp / "lpips.npz"
  np.savez(lpips_path, **{k: np.abs(rng.standard_normal(s)).astype(np.float32) * 0.1
                          for k, s in lpips.lpips_weight_shapes().items()})
  arrays = {}
  for k, shape in inception.inception_weight_shapes().items():
    if k.endswith("conv.weight"):
      arrays[k] = (rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
                   ).astype(np.float32)
    elif k.endswith(("running_var", "bn.weight")):
      arrays[k] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    else:
      arrays[k] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
  inception_path = tmp / "inception.npz"
  np.savez(inception_path, **arrays)
  # "Generated" images: set 0 = the real validation images (so FDs vs. the reference are
  # 0), set 1 = noise. Names match the procedural validation split.
  real, _ = proxy.procedural_arrays(len(NAMES), image_size=SIZE, split="validation")
  samples = tmp / "samples"
  for j in range(2):
    for i, name in enumerate(NAMES):
      img = real[i] if j == 0 else rng.uniform(-1, 1, real[i].shape)
      (samples / f"sample_{j}").mkdir(parents=True, exist_ok=True)
      Image.fromarray(np.rint((img + 1) * 127.5).astype(np.uint8)).save(
          samples / f"sample_{j}" / f"{name}.png")
  (samples / "labels").mkdir()  # what --mode sample also writes; must be ignored
  return {"tmp": tmp, "proxy": proxy_path, "lpips": lpips_path,
          "inception": inception_path, "samples": samples}


def _cheap_inception(monkeypatch):
  """The weights file is still loaded and checked by the real `load_inception`; only the
  299 px forward pass (a minute of CPU, tested in test_eval_inception.py) is replaced by
  64-d colour statistics (a 2048-d Frechet distance alone takes a minute on a busy 2-core
  CPU): the plumbing is what is tested here."""
  import jax.numpy as jnp

  def make_feature_fn(model, **kw):
    del model, kw
    return lambda x: jnp.tile(jnp.concatenate([x.mean((1, 2)), x.std((1, 2))], -1),
                              (1, 11))[:, :64]

  monkeypatch.setattr(inception, "make_feature_fn", make_feature_fn)


def test_evaluate_writes_json_with_all_metrics(files, monkeypatch):
  _cheap_inception(monkeypatch)
  config = tiny_config(files["tmp"])
  config.eval.samples_dir = str(files["samples"])
  config.eval.proxy_weights = str(files["proxy"])
  config.eval.lpips_weights = str(files["lpips"])
  config.eval.inception_weights = str(files["inception"])
  config.eval.segmenter = "proxy_procedural"  # any registered segmenter works for "miou"
  config.eval.segmenter_weights = str(files["proxy"])
  config.eval.kid_subsets = 5
  config.eval.fid_stats = str(files["tmp"] / "ref_stats.npz")  # written on first use
  config.eval.batch_size = 4
  rep = evaluate_lib.run(config, str(files["tmp"]))
  on_disk = json.loads(pathlib.Path(config.eval.output).read_text())
  assert on_disk["metrics"] == rep["metrics"]
  m = on_disk["metrics"]
  assert set(m) == {"fid", "kid_mean", "kid_std", "lpips_diversity", "miou", "proxy_miou",
                    "proxy_fd"}
  # Set 0 holds the reference images themselves: distances 0, both mIoUs equal.
  assert m["fid"] == pytest.approx(0.0, abs=1e-6)
  assert m["proxy_fd"] == pytest.approx(0.0, abs=1e-9)
  assert m["miou"] == pytest.approx(m["proxy_miou"])
  assert m["lpips_diversity"] > 0
  assert on_disk["num_samples"] == 4 and on_disk["num_sample_sets"] == 2
  assert on_disk["seed"] == config.sample.seed
  assert set(on_disk["weights_sha256"]) == {"inception", "lpips", "segmenter", "proxy"}
  assert all(len(h) == 64 for h in on_disk["weights_sha256"].values())
  assert "299 bilinear" in on_disk["resize_mode"]
  assert "PROXY" in on_disk["implementation"] and on_disk["proxy_note"]
  assert on_disk["label_condition"] == "none"
  assert pathlib.Path(config.eval.fid_stats).is_file()


def test_auto_metrics_proxy_only_default_workdir_layout(files, tmp_path):
  config = tiny_config(tmp_path)
  config.eval.output = ""
  config.eval.proxy_weights = str(files["proxy"])
  workdir = tmp_path / "run"
  (workdir / "samples").mkdir(parents=True)
  import shutil
  shutil.copytree(files["samples"] / "sample_1", workdir / "samples" / "sample_0")
  rep = evaluate_lib.run(config, str(workdir))
  assert set(rep["metrics"]) == {"proxy_miou", "proxy_fd"}
  assert rep["metrics"]["proxy_fd"] > 0
  assert (workdir / "eval" / "report.json").is_file()


def test_clear_errors(files, tmp_path):
  config = tiny_config(tmp_path)
  with pytest.raises(ValueError, match="no weights are configured"):
    evaluate_lib.run(config, str(tmp_path))
  config.eval.proxy_weights = str(files["proxy"])
  with pytest.raises(FileNotFoundError, match="Sample folder not found"):
    evaluate_lib.run(config, str(tmp_path / "nowhere"))
  config.eval.samples_dir = str(files["samples"])
  config.eval.proxy_weights = str(tmp_path / "missing.npz")
  with pytest.raises(FileNotFoundError, match="missing.npz"):
    evaluate_lib.run(config, str(tmp_path))
  bad = tmp_path / "corrupt.npz"
  bad.write_bytes(b"\x00" * 100)
  config.eval.proxy_weights = str(bad)
  with pytest.raises(ValueError, match="not a readable npz"):
    evaluate_lib.run(config, str(tmp_path))
  config.eval.proxy_weights = ""
  config.eval.metrics = "fid"
  config.eval.inception_weights = str(files["proxy"])  # the wrong network
  with pytest.raises(ValueError, match="Inception weights file .*proxy.npz"):
    evaluate_lib.run(config, str(tmp_path))
  config.eval.metrics = "fdi"
  with pytest.raises(ValueError, match="unknown metric"):
    evaluate_lib.run(config, str(tmp_path))
