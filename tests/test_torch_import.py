"""PyTorch checkpoint import: the convert CLI end to end, and clear refusals."""

import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

from scdm_jax.models import torch_import
from scdm_jax.models.unet import UNetConfig

torch = pytest.importorskip("torch")


def _fixture(fixtures_dir):
  with np.load(fixtures_dir / "unet.npz") as npz:
    return {k: npz[k] for k in npz.files}


def _state_dict(data):
  return {k[len("param/"):]: v for k, v in data.items() if k.startswith("param/")}


def _write_config(tmp_path, ref_cfg: UNetConfig, num_classes: int):
  model = ref_cfg.to_dict()
  path = tmp_path / "tiny_config.py"
  path.write_text(textwrap.dedent(f"""
      import ml_collections

      def get_config():
        c = ml_collections.ConfigDict()
        c.model = ml_collections.ConfigDict({model!r})
        c.data = ml_collections.ConfigDict(dict(num_classes={num_classes}, use_instance=False))
        return c
      """))
  return path


def test_convert_cli_end_to_end(tmp_path, fixtures_dir):
  from scdm_jax import checkpointing
  from scdm_jax.tools import convert

  data = _fixture(fixtures_dir)
  cfg = UNetConfig.from_reference_kwargs(str(data["config"]))
  # An EMA-style file nested under "state_dict", float16 as in the fixture.
  sd = {k: torch.from_numpy(v) for k, v in _state_dict(data).items()}
  pt = tmp_path / "ema_0.9999_000000.pt"
  torch.save({"state_dict": sd}, pt)
  cfg_file = _write_config(tmp_path, cfg, cfg.num_classes)
  out = tmp_path / "export"
  assert convert.main(["--torch_checkpoint", str(pt), "--config", str(cfg_file),
                       "--out", str(out)]) == 0
  params, meta = checkpointing.load_export(out)
  assert meta["num_classes"] == cfg.num_classes and "source" in meta
  loaded_cfg = UNetConfig(**meta["model"])
  assert loaded_cfg == cfg
  model = torch_import.unet_from_params(loaded_cfg, params)
  got = model(jnp.asarray(data["x"]), jnp.asarray(data["t"]), jnp.asarray(data["y"]))
  assert np.abs(np.asarray(got) - data["out"]).max() <= 2e-4


def test_convert_model_kwargs_and_wrong_class_count(tmp_path, fixtures_dir, capsys):
  from scdm_jax import convert

  data = _fixture(fixtures_dir)
  pt = tmp_path / "model.pt"
  torch.save({k: torch.from_numpy(v) for k, v in _state_dict(data).items()}, pt)
  kwargs = str(data["config"]).replace("'num_classes': 5", "'num_classes': 7")
  status = convert.main(["--torch_checkpoint", str(pt), "--model_kwargs", kwargs,
                         "--out", str(tmp_path / "bad")])
  assert status == 1
  err = capsys.readouterr().err
  assert "the checkpoint has 5 label channels" in err
  assert "num_classes=7" in err
  assert not (tmp_path / "bad").exists()


def test_shape_mismatch_names_tensor_and_shapes(fixtures_dir):
  data = _fixture(fixtures_dir)
  cfg = UNetConfig.from_reference_kwargs(str(data["config"]))
  sd = _state_dict(data)
  sd["input_blocks.1.0.in_layers.2.weight"] = np.zeros((32, 32, 1, 1), np.float16)
  with pytest.raises(ValueError, match=r"input_blocks\.1\.0\.in_layers\.2\.weight has shape "
                     r"\(32, 32, 1, 1\), the config needs \(32, 32, 3, 3\)"):
    torch_import.torch_to_params(sd, cfg)


def test_missing_and_unexpected_keys(fixtures_dir):
  data = _fixture(fixtures_dir)
  cfg = UNetConfig.from_reference_kwargs(str(data["config"]))
  sd = _state_dict(data)
  del sd["out.2.bias"]
  sd["module.extra.weight"] = np.zeros(3, np.float16)  # "module." prefix is stripped
  with pytest.raises(ValueError, match=r"missing tensor\(s\): \['out.2.bias'\].*"
                     r"unexpected tensor\(s\): \['extra.weight'\]"):
    torch_import.torch_to_params(sd, cfg)


def test_round_trip_names_and_layouts(fixtures_dir):
  data = _fixture(fixtures_dir)
  cfg = UNetConfig.from_reference_kwargs(str(data["config"]))
  sd = _state_dict(data)
  back = torch_import.params_to_torch(torch_import.torch_to_params(sd, cfg), cfg)
  assert set(back) == set(sd)
  for k, v in sd.items():
    np.testing.assert_array_equal(back[k], v.astype(np.float32), err_msg=k)


# --- P1: no code runs from a crafted .pt -------------------------------------------------


class _Payload:
  """Unpickling this runs a shell command (what a crafted .pt does)."""

  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    import os  # pylint: disable=import-outside-toplevel
    return (os.system, (f"touch {self.marker}",))


def _kwargs(fixtures_dir):
  return str(_fixture(fixtures_dir)["config"])


@pytest.mark.parametrize("legacy", [False, True])
def test_convert_refuses_malicious_pickle(tmp_path, fixtures_dir, capsys, legacy):
  from scdm_jax.tools import convert

  marker = tmp_path / "pwned"
  data = _fixture(fixtures_dir)
  sd = {k: torch.from_numpy(v) for k, v in _state_dict(data).items()}
  sd["evil"] = _Payload(marker)
  pt = tmp_path / "model.pt"
  # legacy: the pre-1.6 (non-zip) format, which torch.load also still reads.
  torch.save(sd, pt, _use_new_zipfile_serialization=not legacy)
  status = convert.main(["--torch_checkpoint", str(pt), "--model_kwargs",
                         _kwargs(fixtures_dir), "--out", str(tmp_path / "out")])
  err = capsys.readouterr().err
  assert status == 1
  assert not marker.exists(), "the pickle's code ran"
  assert str(pt) in err and len(err.strip().splitlines()) == 1, err
  assert "--unsafe_allow_pickle" in err
  assert not (tmp_path / "out").exists()


def test_convert_unsafe_flag_is_explicit_and_documented(tmp_path, fixtures_dir, capsys):
  from scdm_jax.tools import convert

  # A trusted legacy file: refused by default, read with the opt-in flag (and a warning).
  data = _fixture(fixtures_dir)
  pt = tmp_path / "legacy.pt"
  torch.save({k: torch.from_numpy(v) for k, v in _state_dict(data).items()}, pt,
             _use_new_zipfile_serialization=False)
  args = ["--torch_checkpoint", str(pt), "--model_kwargs", _kwargs(fixtures_dir)]
  assert convert.main(args + ["--out", str(tmp_path / "a")]) == 1
  capsys.readouterr()
  assert convert.main(args + ["--out", str(tmp_path / "b"), "--unsafe_allow_pickle"]) == 0
  assert "weights_only=False" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    convert.main(["--help"])
  help_text = " ".join(capsys.readouterr().out.split())
  assert "--unsafe_allow_pickle" in help_text and "run any code" in help_text


@pytest.mark.parametrize("content", [b"", b"garbage" * 10, "truncated"],
                         ids=["empty", "garbage", "truncated"])
def test_convert_truncated_or_garbage_is_one_line(tmp_path, fixtures_dir, capsys, content):
  from scdm_jax.tools import convert

  pt = tmp_path / "model.pt"
  if content == "truncated":
    data = _fixture(fixtures_dir)
    torch.save({k: torch.from_numpy(v) for k, v in _state_dict(data).items()}, pt)
    pt.write_bytes(pt.read_bytes()[: pt.stat().st_size // 2])
  else:
    pt.write_bytes(content)
  status = convert.main(["--torch_checkpoint", str(pt), "--model_kwargs",
                         _kwargs(fixtures_dir), "--out", str(tmp_path / "out")])
  err = capsys.readouterr().err
  assert status == 1 and str(pt) in err and len(err.strip().splitlines()) == 1, err


def test_no_unrestricted_unpickling_in_the_package():
  """Only io/weights.py unpickles (restricted); torch.load only with weights_only=True.

  The one exception is the opt-in `_unsafe_torch_load` of tools/convert.py.
  """
  import ast  # pylint: disable=import-outside-toplevel
  import pathlib  # pylint: disable=import-outside-toplevel

  import scdm_jax  # pylint: disable=import-outside-toplevel

  root = pathlib.Path(scdm_jax.__file__).parent
  allowed = {("tools/convert.py", "_unsafe_torch_load")}
  bad = []
  for f in sorted(root.rglob("*.py")):
    rel = f.relative_to(root).as_posix()
    tree = ast.parse(f.read_text())
    skip = {id(n) for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef)
            and (rel, fn.name) in allowed for n in ast.walk(fn)}
    for node in ast.walk(tree):
      if id(node) in skip:
        continue
      if True:  # pylint: disable=using-constant-test
        if isinstance(node, (ast.Import, ast.ImportFrom)):
          names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
          if any(n.split(".")[0] in ("pickle", "dill", "cloudpickle", "joblib", "shelve",
                                     "marshal") for n in names) and rel != "io/weights.py":
            bad.append(f"{rel}:{node.lineno}: imports {names}")
        if not isinstance(node, ast.Call):
          continue
        name = ast.unparse(node.func)
        kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
        if name == "torch.load" and kw.get("weights_only") != "True":
          bad.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
        if name.endswith(("np.load", "numpy.load")) and kw.get("allow_pickle",
                                                                "False") != "False":
          bad.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
        if name.split(".")[-1] in ("loads", "load", "Unpickler") and name.startswith(
            ("pickle", "yaml", "dill", "marshal")):
          bad.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
  assert not bad, bad
