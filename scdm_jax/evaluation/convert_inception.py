"""Converts pytorch-fid's TF-FID Inception weights to the npz that `load_inception` reads.

Usage (on any machine with torch; the .pth is pytorch-fid's public release asset
``pt_inception-2015-12-05-6726825d.pth``)::

  python -m scdm_jax.evaluation.convert_inception \\
      --torch pt_inception-2015-12-05-6726825d.pth --out inception.npz

The classifier (``fc.*``, 1008 classes) and ``*.num_batches_tracked`` are dropped; every other
tensor is kept under its state-dict key in PyTorch layout, float32. The result is checked
against `inception_weight_shapes()` and loaded once before this command reports success, and
its sha256 is printed (it goes into evaluation reports).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from scdm_jax.io import atomic
from scdm_jax.evaluation import _npz, _torch_convert, inception


def convert(torch_path: str, out_path: str) -> str:
  """Converts and verifies; returns the sha256 of the written npz."""
  sd = _torch_convert.load_torch_state_dict(torch_path, "pytorch-fid Inception weights")
  arrays = {k: v.astype(np.float32) for k, v in sd.items()
            if not k.startswith(("fc.", "AuxLogits.")) and not k.endswith("num_batches_tracked")}
  _npz.check_arrays(arrays, inception.inception_weight_shapes(), torch_path,
                    "pytorch-fid Inception weights",
                    "Expected pytorch-fid's pt_inception-2015-12-05 state dict (FID Inception, "
                    "not torchvision's ImageNet Inception).")
  atomic.write_npz(out_path, arrays)
  inception.load_inception(out_path)  # Proves the file round-trips.
  return _npz.sha256_file(out_path)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--torch", required=True, help="pytorch-fid pt_inception-2015-12-05*.pth")
  parser.add_argument("--out", required=True, help="output .npz")
  args = parser.parse_args(argv)
  digest = convert(args.torch, args.out)
  print(f"wrote {args.out} (sha256 {digest})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
