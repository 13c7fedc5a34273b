"""Builds the AlexNet-LPIPS npz that `load_lpips` reads from two PyTorch files.

Usage::

  python -m scdm_jax.evaluation.convert_lpips \\
      --alexnet alexnet-owt-7be5be79.pth --lin alex.pth --out lpips_alex.npz

``--alexnet`` is torchvision's ImageNet AlexNet state dict (``features.{0,3,6,8,10}.*``; the
classifier is dropped). ``--lin`` is LPIPS v0.1's ``weights/v0.1/alex.pth`` from the ``lpips``
package (``lin{0..4}.model.1.weight``). A full LPIPS module state dict (``net.sliceK.N.*`` plus
``lin*``) may be given as ``--lin`` alone. StarGAN-v2's own ``lpips_weights.ckpt`` stores the
same five heads under other names; convert it with ``--lin`` after renaming its keys.
"""

from __future__ import annotations

import argparse
import re
import sys

import numpy as np

from scdm_jax.io import atomic
from scdm_jax.evaluation import _npz, _torch_convert, lpips


def convert(alexnet_path: str | None, lin_path: str, out_path: str) -> str:
  """Converts and verifies; returns the sha256 of the written npz."""
  arrays = {}
  sources = ([(alexnet_path, "torchvision AlexNet weights")] if alexnet_path else []) + [
      (lin_path, "LPIPS linear-head weights")]
  for path, what in sources:
    for k, v in _torch_convert.load_torch_state_dict(path, what).items():
      m = re.fullmatch(r"(?:net\.slice\d\.|features\.)(\d+)\.(weight|bias)", k)
      if m:
        arrays[f"features.{m.group(1)}.{m.group(2)}"] = v.astype(np.float32)
      elif re.fullmatch(r"lin\d\.model\.1\.weight", k):
        arrays[k] = v.astype(np.float32)
  _npz.check_arrays(arrays, lpips.lpips_weight_shapes(), f"{alexnet_path} + {lin_path}",
                    "LPIPS weights", "Expected torchvision AlexNet + LPIPS v0.1 alex heads.")
  atomic.write_npz(out_path, arrays)
  lpips.load_lpips(out_path)
  return _npz.sha256_file(out_path)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--alexnet", default=None, help="torchvision alexnet state dict (.pth)")
  parser.add_argument("--lin", required=True, help="LPIPS v0.1 alex.pth (linear heads)")
  parser.add_argument("--out", required=True, help="output .npz")
  args = parser.parse_args(argv)
  digest = convert(args.alexnet, args.lin, args.out)
  print(f"wrote {args.out} (sha256 {digest})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
