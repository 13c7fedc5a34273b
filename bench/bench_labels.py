"""Colour snapping of random-colour RGB label maps (seconds and peak RSS), written as JSON.

  python bench/bench_labels.py --out bench_labels.json [--sizes 1024 4096] [--no-before]

Each measurement runs in a fresh process, so `peak_rss_mib` is that process's own peak
(interpreter and imports included; `baseline_rss_mib` is the peak before the map is made).
A random-colour map is the worst case: a 4096^2 one has ~10.6M distinct colours, where a
painted map has a few hundred. "after" is `label_io.snap_to_palette` against ADE20K's 151
classes; "before" is the previous implementation (a chunked float32 distance matmul over
all unique colours, then one Python tuple per snapped colour), kept here for comparison only.
Seconds depend on the load of the machine; the load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

from scdm_jax.data import label_io
from scdm_jax.data import palettes
from scdm_jax.io import atomic


def _before(rgb: np.ndarray, colors: np.ndarray):
  """The snapping of commit cb0ade4, for the comparison only."""
  rgb = np.asarray(rgb)[..., :3].astype(np.int64)
  flat = rgb.reshape(-1, 3)
  codes = (flat[:, 0] << 16) | (flat[:, 1] << 8) | flat[:, 2]
  uniq, inverse, counts = np.unique(codes, return_inverse=True, return_counts=True)
  ucol = np.stack([(uniq >> 16) & 255, (uniq >> 8) & 255, uniq & 255], -1)
  pal_f = np.asarray(colors, np.float32)
  pal_sq = (pal_f ** 2).sum(-1)
  best = np.empty(len(uniq), np.int64)
  d2_best = np.empty(len(uniq), np.int64)
  chunk = 1 << 17
  for lo in range(0, len(uniq), chunk):
    u = ucol[lo:lo + chunk].astype(np.float32)
    d2 = (u ** 2).sum(-1, keepdims=True) - 2.0 * (u @ pal_f.T) + pal_sq
    b = d2.argmin(-1)
    best[lo:lo + chunk] = b
    d2_best[lo:lo + chunk] = np.rint(d2[np.arange(len(b)), b]).astype(np.int64)
  dist = np.sqrt(d2_best.astype(np.float64))
  unknown = [(tuple(int(v) for v in ucol[i]), int(counts[i]), int(best[i]), float(dist[i]))
             for i in np.nonzero(dist > 0)[0]]
  unknown.sort(key=lambda u: -u[1])
  return best[inverse].reshape(rgb.shape[:2]).astype(np.int32), unknown


def _rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(which: str, size: int) -> dict:
  """One measurement in this process."""
  colors = palettes.get_class_table("ade20k").colors
  baseline = _rss_mib()
  rgb = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
  snap = _before if which == "before" else label_io.snap_to_palette
  t = time.perf_counter()
  ids, unknown = snap(rgb, colors)
  seconds = time.perf_counter() - t
  return {"impl": which, "size": size, "seconds": round(seconds, 2),
          "peak_rss_mib": round(_rss_mib()), "baseline_rss_mib": round(baseline),
          "unique_colours_snapped": len(unknown), "ids_checksum": int(ids.sum())}


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", default="")
  parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
  parser.add_argument("--no-before", action="store_true", help="skip the old implementation")
  parser.add_argument("--one", nargs=2, metavar=("IMPL", "SIZE"), help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.one:
    print(json.dumps(measure(args.one[0], int(args.one[1]))))
    return
  runs = []
  for size in args.sizes:
    for which in ("after",) if args.no_before else ("before", "after"):
      out = subprocess.run([sys.executable, __file__, "--one", which, str(size)], check=True,
                           capture_output=True, text=True).stdout
      runs.append(json.loads(out.strip().splitlines()[-1]))
      print(json.dumps(runs[-1]), flush=True)
  report = {"runs": runs, "load_average": os.getloadavg(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "numpy": np.__version__}
  text = json.dumps(report, indent=1)
  if args.out:
    atomic.write_text(args.out, text + "\n")
  print(text)


if __name__ == "__main__":
  main()
