"""Safe, torch-free readers for weight files: `.safetensors` and PyTorch checkpoints.

`read_tensors(path)` returns a flat `{name: np.ndarray}` dict for either format:

* `.safetensors` is parsed here (8-byte little-endian header length, a JSON header with
  `dtype`, `shape` and `data_offsets` per tensor, then the raw bytes), with every offset
  checked against the file.
* PyTorch zip checkpoints (`.bin`, `.ckpt`, `.pt`, `.pth`: `<prefix>/data.pkl` plus one
  `<prefix>/data/<key>` record per storage) go through a *restricted* unpickler. Pickles
  can call any importable function, so `find_class` allows only what a tensor state dict
  needs (the tensor/parameter rebuild functions, the typed storage classes, OrderedDict),
  each mapped to a numpy stand-in defined here. torch is never imported and nothing else
  is ever called: any other global is refused with a ValueError before it is resolved.

Errors (missing, truncated, garbage, refused globals, legacy pre-zip torch files) are
one-line `ValueError` / `FileNotFoundError` messages that name the file.
"""

from __future__ import annotations

import collections
import io
import json
import math
import os
import pickle
import struct
import zipfile
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np

# safetensors dtype names -> numpy.
SAFETENSORS_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn), "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64), "I32": np.dtype(np.int32), "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8), "U64": np.dtype(np.uint64), "U32": np.dtype(np.uint32),
    "U16": np.dtype(np.uint16), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
    "C64": np.dtype(np.complex64),
}

# torch typed storage class names (as pickled by torch.save) -> numpy.
TORCH_STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype(np.float64), "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16), "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64), "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16), "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8), "BoolStorage": np.dtype(np.bool_),
    "ComplexFloatStorage": np.dtype(np.complex64),
    "ComplexDoubleStorage": np.dtype(np.complex128),
}

_NOT_PLAIN = "this file is not a plain tensor checkpoint"


def read_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads every tensor of a weight file into host numpy arrays.

  Args:
    path: a `.safetensors` file or a PyTorch zip checkpoint (`.bin`, `.ckpt`, `.pt`,
      `.pth`). The format is recognised from the content; a checkpoint that nests its
      weights under `"state_dict"` (Lightning `.ckpt`) is unwrapped, other nested dicts
      and lists are flattened with "." joined names, non-tensor leaves are dropped.

  Returns:
    `{name: np.ndarray}`, each array a contiguous copy in the file's dtype (bfloat16 as
    `ml_dtypes.bfloat16`).

  Raises:
    FileNotFoundError: if the file does not exist.
    ValueError: (one line, naming the file) if it is truncated, garbage, holds no tensors,
      or is a pickle that needs anything beyond tensors, dicts and lists.
  """
  path = os.fspath(path)
  kind = _sniff(path)
  if kind == "safetensors":
    return read_safetensors(path)
  obj = load_torch_checkpoint(path)
  if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
    obj = obj["state_dict"]
  out: dict[str, np.ndarray] = {}
  _flatten(obj, "", out)
  if not out:
    raise ValueError(f"{path}: holds no tensors")
  return out


def _sniff(path: str) -> str:
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such weight file")
  if os.path.isdir(path):
    raise ValueError(f"{path}: is a directory, not a weight file")
  with open(path, "rb") as f:
    head = f.read(8)
  if head[:4] == b"PK\x03\x04":
    return "torch_zip"
  if path.endswith(".safetensors"):
    return "safetensors"
  if head[:1] == b"\x80":
    raise ValueError(f"{path}: a legacy (pre-1.6, non-zip) PyTorch file, which this reader "
                     "does not support; re-save it with a recent torch.save or as safetensors")
  if len(head) == 8 and _plausible_safetensors(path, head):
    return "safetensors"
  raise ValueError(f"{path}: neither a safetensors file nor a PyTorch zip checkpoint")


def _plausible_safetensors(path: str, head: bytes) -> bool:
  n = struct.unpack("<Q", head)[0]
  if not 2 <= n <= os.path.getsize(path) - 8:
    return False
  with open(path, "rb") as f:
    f.seek(8)
    return f.read(1) == b"{"


# ---------------------------------------------------------------------------------------
# safetensors


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Parses a safetensors file (no safetensors / torch package needed)."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such weight file")
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    head = f.read(8)
    if len(head) < 8:
      raise ValueError(f"{path}: truncated safetensors file ({size} bytes, no header)")
    n = struct.unpack("<Q", head)[0]
    if n > size - 8:
      raise ValueError(f"{path}: truncated or not a safetensors file (header of {n} bytes "
                       f"in a file of {size})")
    try:
      header = json.loads(f.read(n).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise ValueError(f"{path}: not a safetensors file (bad JSON header: {e})") from None
  if not isinstance(header, dict):
    raise ValueError(f"{path}: not a safetensors file (header is not a JSON object)")
  data_start, data_len = 8 + n, size - 8 - n
  header.pop("__metadata__", None)
  buf = np.memmap(path, dtype=np.uint8, mode="r", offset=data_start, shape=(data_len,)) \
      if data_len else np.zeros((0,), np.uint8)
  out = {}
  for name, info in header.items():
    try:
      dtype = SAFETENSORS_DTYPES[info["dtype"]]
      shape = tuple(int(d) for d in info["shape"])
      begin, end = (int(o) for o in info["data_offsets"])
    except (KeyError, TypeError, ValueError):
      raise ValueError(f"{path}: bad safetensors entry for {name!r}: {info!r:.200}") from None
    nbytes = math.prod(shape) * dtype.itemsize
    if any(d < 0 for d in shape) or not 0 <= begin <= end or end - begin != nbytes:
      raise ValueError(f"{path}: bad safetensors entry for {name!r} (shape {shape}, "
                       f"{info['dtype']}, offsets {begin}..{end})")
    if end > data_len:
      raise ValueError(f"{path}: truncated safetensors file ({name!r} ends at byte {end} of "
                       f"a {data_len}-byte data section)")
    out[name] = np.array(buf[begin:end]).view(dtype).reshape(shape)
  del buf
  return out


# ---------------------------------------------------------------------------------------
# PyTorch zip checkpoints


class _Sealed:
  """Base of the objects `find_class` hands out: a pickle cannot BUILD (set state) on them.

  Without this, a BUILD opcode on a returned global could set attributes on it, e.g. on
  the real `collections.OrderedDict` class, for the rest of the process.
  """

  __slots__ = ()

  def __setstate__(self, state):
    raise ValueError("the pickle sets state on an allowed global")


class _StorageType(_Sealed):
  """Stand-in for a torch typed storage class (`torch.FloatStorage`, ...)."""

  __slots__ = ("name", "dtype")

  def __init__(self, name: str):
    object.__setattr__(self, "name", name)
    object.__setattr__(self, "dtype", TORCH_STORAGE_DTYPES[name])

  def __repr__(self):
    return f"torch.{self.name}"


class _TensorMarker(_Sealed):
  """Stand-in for `torch.Tensor` / `torch.nn.Parameter` passed to `_rebuild_from_type_v2`."""

  __slots__ = ("name",)

  def __init__(self, name: str):
    object.__setattr__(self, "name", name)


class _Callable(_Sealed):
  """An allowed function (or OrderedDict), callable by REDUCE but otherwise sealed."""

  __slots__ = ("fn",)

  def __init__(self, fn):
    object.__setattr__(self, "fn", fn)

  def __call__(self, *args, **kwargs):
    return self.fn(*args, **kwargs)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  del requires_grad, backward_hooks, metadata
  if not isinstance(storage, np.ndarray) or storage.ndim != 1:
    raise ValueError(f"tensor rebuild got a {type(storage).__name__}, not a storage")
  size, stride, offset = tuple(int(s) for s in size), tuple(int(s) for s in stride), \
      int(storage_offset)
  if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size + stride):
    raise ValueError(f"bad tensor layout: size {size}, stride {stride}, offset {offset}")
  if 0 in size:
    return np.zeros(size, storage.dtype)
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= storage.size:
    raise ValueError(f"tensor (size {size}, stride {stride}, offset {offset}) reaches past "
                     f"its storage of {storage.size} elements")
  item = storage.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(
      storage[offset:], shape=size, strides=tuple(s * item for s in stride), writeable=False)
  return np.array(view, order="C")  # a copy (np.ascontiguousarray would make 0-d 1-d)


def _rebuild_tensor(storage, storage_offset, size, stride):
  return _rebuild_tensor_v2(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
  del requires_grad, backward_hooks, state
  return data


def _rebuild_from_type_v2(func, new_type, args, state):
  # Only ever called with one of the rebuild functions above (find_class allows no other).
  del new_type, state
  if not isinstance(func, _Callable) or func.fn not in _REBUILDERS:
    raise ValueError(f"_rebuild_from_type_v2 with a refused function {func!r}")
  return func(*args)


def _codecs_encode(text, encoding="utf-8"):
  # Protocol-2 pickles store `bytes` as _codecs.encode(str, "latin1").
  if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
    raise ValueError("_codecs.encode outside the bytes idiom of protocol-2 pickles")
  return text.encode("latin1")


_REBUILDERS = (_rebuild_tensor_v2, _rebuild_tensor, _rebuild_parameter,
               _rebuild_parameter_with_state)

# (module, name) -> a factory of the fresh stand-in handed to the pickle (one per lookup,
# so nothing is shared between loads).
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): lambda: _Callable(_rebuild_tensor_v2),
    ("torch._utils", "_rebuild_tensor"): lambda: _Callable(_rebuild_tensor),
    ("torch._utils", "_rebuild_parameter"): lambda: _Callable(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"):
        lambda: _Callable(_rebuild_parameter_with_state),
    ("torch._tensor", "_rebuild_from_type_v2"): lambda: _Callable(_rebuild_from_type_v2),
    ("torch", "Tensor"): lambda: _TensorMarker("Tensor"),
    ("torch.nn.parameter", "Parameter"): lambda: _TensorMarker("Parameter"),
    ("collections", "OrderedDict"): lambda: _Callable(collections.OrderedDict),
    ("_codecs", "encode"): lambda: _Callable(_codecs_encode),
    **{("torch", name): (lambda n=name: _StorageType(n)) for name in TORCH_STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickles a tensor state dict and nothing else."""

  def __init__(self, file, path: str, zf: zipfile.ZipFile, prefix: str, big_endian: bool):
    super().__init__(file)
    self._path, self._zf, self._prefix, self._big = path, zf, prefix, big_endian
    self._storages: dict[str, np.ndarray] = {}

  def find_class(self, module, name):
    factory = _ALLOWED_GLOBALS.get((module, name))
    if factory is None:
      raise ValueError(f"{self._path}: refused global {module}.{name}: {_NOT_PLAIN} (only "
                       "tensors, dicts and lists are read)")
    return factory()

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)):
      raise ValueError(f"{self._path}: unexpected persistent id {pid!r:.100}: {_NOT_PLAIN}")
    _, stype, key, _, numel = pid
    key = str(key)
    if key not in self._storages:
      record = f"{self._prefix}data/{key}"
      try:
        raw = self._zf.read(record)
      except KeyError:
        raise ValueError(f"{self._path}: storage record {record} is missing") from None
      dtype = stype.dtype.newbyteorder(">") if self._big and stype.dtype.itemsize > 1 \
          else stype.dtype
      if len(raw) != int(numel) * dtype.itemsize:
        raise ValueError(f"{self._path}: storage {record} has {len(raw)} bytes, expected "
                         f"{int(numel)} x {dtype.itemsize}")
      arr = np.frombuffer(raw, dtype)
      self._storages[key] = arr.astype(stype.dtype) if self._big else arr
    return self._storages[key]


def load_torch_checkpoint(path: str | os.PathLike) -> Any:
  """Unpickles a PyTorch zip checkpoint with tensors as numpy arrays (the raw object tree).

  Raises:
    FileNotFoundError: if the file does not exist.
    ValueError: one line naming the file, for anything that is not a plain tensor checkpoint.
  """
  path = os.fspath(path)
  if _sniff(path) != "torch_zip":
    raise ValueError(f"{path}: not a PyTorch zip checkpoint")
  try:
    zf = zipfile.ZipFile(path)
  except (zipfile.BadZipFile, OSError) as e:
    raise ValueError(f"{path}: truncated or corrupt PyTorch zip checkpoint ({e})") from None
  with zf:
    pkls = [n for n in zf.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
    if len(pkls) != 1:
      raise ValueError(f"{path}: a zip file but not a PyTorch checkpoint (found "
                       f"{len(pkls)} data.pkl records)")
    prefix = pkls[0][:-len("data.pkl")]
    try:
      big = zf.read(prefix + "byteorder").strip() == b"big" \
          if prefix + "byteorder" in zf.namelist() else False
      data = zf.read(pkls[0])
      return _RestrictedUnpickler(io.BytesIO(data), path, zf, prefix, big).load()
    except ValueError as e:
      msg = str(e)
      raise ValueError(msg if msg.startswith(path) else f"{path}: {msg}") from None
    except (zipfile.BadZipFile, EOFError, OSError, pickle.UnpicklingError, TypeError,
            AttributeError, IndexError, struct.error) as e:
      raise ValueError(f"{path}: truncated or corrupt PyTorch checkpoint "
                       f"({type(e).__name__}: {e})".splitlines()[0]) from None


def _flatten(obj: Any, prefix: str, out: dict[str, np.ndarray]) -> None:
  if isinstance(obj, np.ndarray):
    out[prefix.rstrip(".")] = obj
  elif isinstance(obj, Mapping):
    for k, v in obj.items():
      _flatten(v, f"{prefix}{k}.", out)
  elif isinstance(obj, (list, tuple)):
    for i, v in enumerate(obj):
      _flatten(v, f"{prefix}{i}.", out)
