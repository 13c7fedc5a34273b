"""Safe weight readers: round trips against torch / safetensors, and refusal of bad files."""

import collections
import os
import zipfile

import ml_dtypes
import numpy as np
import pytest

from scdm_jax.io import weights

torch = pytest.importorskip("torch")


def _np(t):
  if t.dtype == torch.bfloat16:
    return t.float().numpy().astype(ml_dtypes.bfloat16)
  return t.detach().contiguous().numpy()


def _random_tensors():
  g = torch.Generator().manual_seed(0)
  base = torch.randn(6, 10, generator=g)
  return collections.OrderedDict(
      f32=torch.randn(3, 4, generator=g),
      f16=torch.randn(5, generator=g).half(),
      bf16=torch.randn(2, 3, generator=g).bfloat16(),
      f64=torch.randn(2, 2, generator=g).double(),
      i64=torch.arange(7) - 3,
      i32=torch.arange(6, dtype=torch.int32).reshape(2, 3),
      u8=torch.arange(9, dtype=torch.uint8),
      b=torch.tensor([True, False, True]),
      scalar=torch.tensor(2.5),
      empty=torch.zeros(0, 3),
      # Views into a shared storage: transposed, offset slice, strided step.
      transposed=base.t(),
      offset_slice=base[2:5, 3:7],
      stepped=base[::2, 1::3],
      param=torch.nn.Parameter(torch.randn(4, 2, generator=g)),
  )


def test_torch_zip_round_trip_dtypes_views(tmp_path):
  sd = _random_tensors()
  path = tmp_path / "pytorch_model.bin"
  torch.save(sd, path)
  got = weights.read_tensors(path)
  assert set(got) == set(sd)
  for k, t in sd.items():
    want = _np(t.detach())
    assert got[k].dtype == want.dtype, k
    assert got[k].shape == want.shape, k
    np.testing.assert_array_equal(got[k], want, err_msg=k)
    assert got[k].flags.c_contiguous


def test_ckpt_state_dict_nesting_and_nested_dicts(tmp_path):
  sd = _random_tensors()
  ckpt = {"state_dict": {"model.a": sd["f32"], "model.b": sd["stepped"]}, "epoch": 3,
          "global_step": 1000}
  path = tmp_path / "model.ckpt"
  torch.save(ckpt, path)
  got = weights.read_tensors(path)
  assert sorted(got) == ["model.a", "model.b"]
  np.testing.assert_array_equal(got["model.b"], sd["stepped"].numpy())

  nested = {"enc": {"w": sd["f16"], "layers": [sd["i64"], {"x": sd["offset_slice"]}]},
            "name": "ignored"}
  path = tmp_path / "nested.pt"
  torch.save(nested, path)
  got = weights.read_tensors(path)
  assert sorted(got) == ["enc.layers.0", "enc.layers.1.x", "enc.w"]
  np.testing.assert_array_equal(got["enc.layers.1.x"], sd["offset_slice"].numpy())
  raw = weights.load_torch_checkpoint(path)
  assert raw["name"] == "ignored"


def test_safetensors_round_trip(tmp_path):
  from safetensors.torch import save_file
  sd = {k: v.detach().contiguous() for k, v in _random_tensors().items()}
  path = tmp_path / "model.safetensors"
  save_file(sd, str(path), metadata={"format": "pt"})
  got = weights.read_tensors(path)
  assert set(got) == set(sd)
  for k, t in sd.items():
    want = _np(t)
    assert got[k].dtype == want.dtype and got[k].shape == want.shape, k
    np.testing.assert_array_equal(got[k], want, err_msg=k)


class _Evil:
  """Unpickling this runs a shell command (a stand-in for arbitrary code)."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.ckpt"])
def test_malicious_pickle_is_refused_without_running(tmp_path, name):
  marker = tmp_path / "pwned"
  path = tmp_path / name
  payload = {"state_dict": {"w": torch.zeros(2)}, "evil": _Evil(marker)}
  torch.save(payload, path)
  assert not marker.exists()
  with pytest.raises(ValueError) as e:
    weights.read_tensors(path)
  msg = str(e.value)
  assert "\n" not in msg and str(path) in msg
  assert "system" in msg and "not a plain tensor checkpoint" in msg
  assert not marker.exists()


def test_truncated_and_garbage_files(tmp_path):
  sd = {"w": torch.randn(64, 64)}
  bin_path = tmp_path / "w.bin"
  torch.save(sd, bin_path)
  from safetensors.torch import save_file
  st_path = tmp_path / "w.safetensors"
  save_file(sd, str(st_path))
  cases = []
  for src in (bin_path, st_path):
    data = src.read_bytes()
    for frac in (0.5, 0.9):
      p = tmp_path / f"trunc{frac}_{src.name}"
      p.write_bytes(data[:int(len(data) * frac)])
      cases.append(p)
  garbage = tmp_path / "garbage.bin"
  garbage.write_bytes(b"this is not a checkpoint at all" * 10)
  cases.append(garbage)
  garbage_st = tmp_path / "garbage.safetensors"
  garbage_st.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{bad}xx")
  cases.append(garbage_st)
  tiny = tmp_path / "tiny.safetensors"
  tiny.write_bytes(b"\x01")
  cases.append(tiny)
  other_zip = tmp_path / "other.bin"
  with zipfile.ZipFile(other_zip, "w") as z:
    z.writestr("hello.txt", "hi")
  cases.append(other_zip)
  for p in cases:
    with pytest.raises(ValueError) as e:
      weights.read_tensors(p)
    assert "\n" not in str(e.value) and str(p) in str(e.value), (p, str(e.value))
  with pytest.raises(FileNotFoundError, match="missing.bin"):
    weights.read_tensors(tmp_path / "missing.bin")


def test_legacy_torch_file_refused(tmp_path):
  path = tmp_path / "legacy.pt"
  torch.save({"w": torch.zeros(2)}, path, _use_new_zipfile_serialization=False)
  with pytest.raises(ValueError, match="legacy"):
    weights.read_tensors(path)


def test_pickle_cannot_set_state_on_allowed_globals(tmp_path):
  """BUILD on the OrderedDict global (which would patch the class process-wide) is refused."""
  # PROTO 2; GLOBAL collections.OrderedDict; {'evil_attr': 1}; BUILD; STOP
  payload = (b"\x80\x02ccollections\nOrderedDict\n}X\t\x00\x00\x00evil_attrK\x01sb.")
  path = tmp_path / "build.bin"
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", payload)
  with pytest.raises(ValueError, match="sets state") as e:
    weights.read_tensors(path)
  assert "\n" not in str(e.value)
  assert not hasattr(collections.OrderedDict, "evil_attr")
