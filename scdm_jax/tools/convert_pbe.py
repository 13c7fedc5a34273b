r"""Converts a Paint by Example model once into an inference export that the sampler loads.

  python -m scdm_jax.tools.convert_pbe path/to/Paint-by-Example OUT      # diffusers folder
  python -m scdm_jax.tools.convert_pbe model.ckpt OUT [--config FOLDER]  # original ckpt
  python -m scdm_jax.tools.convert_pbe OLD_EXPORT OUT --param_dtype bfloat16

SRC is anything `PaintPipeline.load` accepts: a diffusers folder, an original LDM-named
checkpoint (with the configs of a diffusers folder given by --config, else the released
ones) or an export. OUT is written with `PaintPipeline.save_export`
(`scdm_jax.checkpointing.save_export`) and loaded with `PaintPipeline.load(OUT)`. Prints one
JSON line: the output path, the parameter counts and dtype. No torch is needed.
"""

from __future__ import annotations

import argparse
import json
import sys

import jax
import jax.numpy as jnp

from scdm_jax import sharding
from scdm_jax.inference.paint import PaintPipeline

_DTYPES = ("float32", "bfloat16")


def convert(src: str, out: str, *, config: str | None = None,
            param_dtype: str | None = None) -> dict:
  """Converts `src` into an export at `out`; returns the printed report."""
  # One device: the weights are replicated anyway, and one copy is enough to write them.
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1}, devices=jax.local_devices()[:1])
  pipe = PaintPipeline.load(src, config=config, mesh=mesh,
                            param_dtype=None if param_dtype is None else jnp.dtype(param_dtype))
  path = pipe.save_export(out)
  dtypes = sorted({str(x.dtype) for x in jax.tree.leaves(pipe.params())})
  return {"out": path, "source": pipe.source, "param_counts": pipe.param_counts(),
          "param_dtype": dtypes[0] if len(dtypes) == 1 else dtypes}


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m scdm_jax.tools.convert_pbe",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("src", help="diffusers folder, original .ckpt/.safetensors, or export")
  parser.add_argument("out", help="output export folder (replaced if it exists)")
  parser.add_argument("--config", help="with a checkpoint file: a diffusers folder whose "
                      "configs to use (default: the released configs)")
  parser.add_argument("--param_dtype", choices=_DTYPES,
                      help="stored parameter dtype (default: the source's)")
  args = parser.parse_args(argv)
  try:
    report = convert(args.src, args.out, config=args.config, param_dtype=args.param_dtype)
  except (ValueError, FileNotFoundError) as e:
    print(f"convert_pbe: error: {e}", file=sys.stderr)
    return 1
  print(json.dumps(report))
  return 0


if __name__ == "__main__":
  sys.exit(main())
