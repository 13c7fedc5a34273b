"""Fuzz (issue 14, P6): the label, mask and image loaders and the palette JSON loader, fed
random bytes and odd but valid PNGs, return an array or raise a one-line ValueError /
FileNotFoundError, never anything else."""

import io
import json

from hypothesis import HealthCheck, given, settings, strategies as st
import numpy as np
from PIL import Image
import pytest

from scdm_jax.data import label_io
from scdm_jax.data import palettes
from scdm_jax.io import images

SETTINGS = settings(max_examples=50, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
MODES = ["1", "L", "P", "LA", "RGB", "RGBA", "I;16", "I", "F", "CMYK"]


def _loaders(path):
  return [
      lambda: label_io.load_label_map(path, num_classes=9),
      lambda: label_io.load_label_map(path, num_classes=9, palette="procedural"),
      lambda: images.load_mask(path),
      lambda: images.load_image(path),
  ]


def _outcome_ok(fn, path):
  try:
    out = fn()
  except (ValueError, FileNotFoundError) as e:
    msg = str(e)
    assert msg and "\n" not in msg.strip(), repr(msg)
    return
  arr = out[0] if isinstance(out, tuple) else out
  assert isinstance(arr, np.ndarray), type(arr)


@st.composite
def odd_pngs(draw):
  mode = draw(st.sampled_from(MODES))
  h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
  seed = draw(st.integers(0, 2**16))
  rng = np.random.default_rng(seed)
  small = draw(st.booleans())  # small values: plausible ids / 0-1 masks
  hi = 3 if small else 256
  if mode == "1":
    im = Image.fromarray(rng.integers(0, 2, (h, w)).astype(bool))
  elif mode in ("L", "P"):
    im = Image.fromarray(rng.integers(0, hi, (h, w)).astype(np.uint8), "L")
    if mode == "P":
      im = im.convert("P")
      im.putpalette(rng.integers(0, 256, 768).astype(np.uint8).tobytes())
  elif mode == "I;16":
    im = Image.fromarray(rng.integers(0, hi * 300, (h, w)).astype(np.uint16))
  elif mode == "I":
    im = Image.fromarray(rng.integers(-5, hi, (h, w)).astype(np.int32))
  elif mode == "F":
    im = Image.fromarray(rng.random((h, w)).astype(np.float32) * hi, "F")
  else:
    ch = {"LA": 2, "RGB": 3, "RGBA": 4, "CMYK": 4}[mode]
    im = Image.fromarray(rng.integers(0, hi, (h, w, ch)).astype(np.uint8), mode)
  buf = io.BytesIO()
  im.save(buf, format="TIFF" if mode in ("I", "F", "CMYK") else "PNG")
  return buf.getvalue()


@SETTINGS
@given(data=odd_pngs())
def test_odd_valid_pngs(tmp_path, data):
  path = str(tmp_path / "map.png")
  with open(path, "wb") as f:
    f.write(data)
  for fn in _loaders(path):
    _outcome_ok(fn, path)


@SETTINGS
@given(data=st.one_of(st.binary(max_size=200), odd_pngs().map(lambda b: b[: len(b) // 2]),
                      odd_pngs().map(lambda b: b[:8] + bytes(reversed(b[8:])))))
def test_random_and_truncated_bytes(tmp_path, data):
  path = str(tmp_path / "map.png")
  with open(path, "wb") as f:
    f.write(data)
  for fn in _loaders(path):
    _outcome_ok(fn, path)


_json = st.recursive(st.none() | st.booleans() | st.integers(-300, 300) | st.text(max_size=5),
                     lambda c: st.lists(c, max_size=4) | st.dictionaries(
                         st.sampled_from(["names", "colors", "classes", "name", "color",
                                          "unlabeled_class", "x"]), c, max_size=4),
                     max_leaves=12)


@SETTINGS
@given(obj=_json, raw=st.binary(max_size=60), use_raw=st.booleans())
def test_palette_json(tmp_path, obj, raw, use_raw):
  path = str(tmp_path / "palette.json")
  with open(path, "wb") as f:
    f.write(raw if use_raw else json.dumps(obj).encode())
  _outcome_ok(lambda: palettes.load_class_table_json(path).colors, path)


