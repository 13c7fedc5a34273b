"""Converts an official SDM/SCDM PyTorch checkpoint into an inference checkpoint.

  python -m scdm_jax.tools.convert --torch_checkpoint model.pt --config configs/ade20k.py --out DIR
  python -m scdm_jax.tools.convert --torch_checkpoint model.pt \
      --model_kwargs '{"image_size": 256, "num_classes": 151, ...}' --out DIR

`--config` is an ml_collections config file (`get_config()`) whose `model` section holds
UNetConfig fields and whose `data` section gives the label classes (`recipe.unet_config`). `--model_kwargs` is an
alternative: a JSON (or Python literal) dict of the reference `UNetModel` constructor
arguments, e.g. the `config` string of the unet parity fixture. Plain state dicts
(`model*.pt`, `ema_*.pt`), state dicts nested under "state_dict"/"model"/"ema" and
"module."-prefixed names are accepted; float16 tensors are cast to float32.

The .pt file is read by `scdm_jax.io.weights` (torch-free; a restricted unpickler that
builds tensors, dicts and lists and refuses every other global), so a crafted file cannot
run code. Files it refuses (legacy pre-1.6 torch files, pickled extra objects) can be
read with `--unsafe_allow_pickle` (torch.load(weights_only=False): the file's code RUNS;
trusted files only; needs torch: `pip install torch --index-url
https://download.pytorch.org/whl/cpu`, or the project's `[torch]` extra).

The output is written with `scdm_jax.checkpointing.save_export` and is read by the
sampler.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import sys
from typing import Any

import ml_dtypes
import numpy as np

from scdm_jax import checkpointing
from scdm_jax import recipe
from scdm_jax.io import weights
from scdm_jax.models import torch_import
from scdm_jax.models.unet import UNetConfig


def _load_torch_checkpoint(path: str, *, unsafe_allow_pickle: bool = False
                           ) -> dict[str, np.ndarray]:
  """Reads the state dict of a .pt file as float32/int numpy arrays.

  By default the file goes through `scdm_jax.io.weights` (torch-free, restricted
  unpickler: tensors, dicts and lists only), so a crafted .pt cannot run code. There is
  no fallback: only `unsafe_allow_pickle=True` (the `--unsafe_allow_pickle` flag) uses
  `torch.load(weights_only=False)`, which executes whatever the pickle names.
  """
  if unsafe_allow_pickle:
    obj = _unsafe_torch_load(path)
  else:
    try:
      obj = weights.load_torch_checkpoint(path)
    except ValueError as e:
      hint = ""
      if "refused global" in str(e) or "legacy" in str(e):
        hint = ("; only if you trust the file completely, --unsafe_allow_pickle reads it "
                "with a full (code-running) unpickler")
      raise ValueError(f"--torch_checkpoint: {e}{hint}") from None
  state = torch_import.unwrap_state_dict(obj)
  out = {}
  for k, v in state.items():
    if hasattr(v, "detach"):  # only from the unsafe torch.load path
      v = v.detach().cpu()
      v = v.float().numpy() if str(v.dtype) == "torch.bfloat16" else v.numpy()
    if not isinstance(v, np.ndarray):
      continue  # non-tensor entries (e.g. a step counter)
    if v.dtype.kind == "f" or v.dtype == ml_dtypes.bfloat16:
      v = v.astype(np.float32)
    out[k] = v
  return out


def _unsafe_torch_load(path: str):
  try:
    import torch  # pylint: disable=g-import-not-at-top  # optional and heavy: only here
  except ImportError as e:
    raise SystemExit(
        "--unsafe_allow_pickle reads the file with torch.load, and PyTorch is not "
        "installed. Install the CPU build with\n  pip install torch --index-url "
        "https://download.pytorch.org/whl/cpu\n(or `pip install -e .[torch]`).") from e
  if not os.path.exists(path):
    raise FileNotFoundError(f"--torch_checkpoint {path!r}: no such file")
  print(f"convert: warning: --unsafe_allow_pickle: unpickling {path} with "
        "torch.load(weights_only=False); any code the file names runs now", file=sys.stderr)
  try:
    return torch.load(path, map_location="cpu", weights_only=False)
  except Exception as e:  # pylint: disable=broad-except  # truncated, garbage, ...
    raise ValueError(f"--torch_checkpoint {path}: not a readable PyTorch checkpoint "
                     f"({type(e).__name__}: {e})".splitlines()[0]) from None


def _load_config_file(path: str):
  if not os.path.exists(path):
    raise FileNotFoundError(f"--config {path!r}: no such file")
  spec = importlib.util.spec_from_file_location("_scdm_convert_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"--config {path!r}: the file has no get_config() function")
  return module.get_config()


def _config_from_file(path: str):
  """(UNetConfig, num_classes) from an ml_collections config file."""
  cfg = _load_config_file(path)
  if "model" not in cfg:
    raise ValueError(f"--config {path!r}: the config has no `model` section")
  model = cfg.model.to_dict() if hasattr(cfg.model, "to_dict") else dict(cfg.model)
  data = cfg.get("data", None)
  if model.get("num_classes") is None or model.get("edge_channel") is None:
    if data is None:
      raise ValueError(f"--config {path!r}: without model.num_classes the config needs a "
                       "`data` section (start from configs/default.py)")
    ucfg = recipe.unet_config(cfg)  # a project preset: label channels come from data
  else:
    for key in recipe.TRAIN_ONLY_MODEL_FIELDS:
      model.pop(key, None)
    ucfg = UNetConfig(**model)  # a config that spells the model out
  num_classes = (int(data.num_classes) if data is not None and "num_classes" in data
                 else ucfg.num_onehot)
  return ucfg, num_classes


def _config_from_kwargs(text: str):
  try:
    kwargs = json.loads(text)
  except json.JSONDecodeError:
    try:
      kwargs = ast.literal_eval(text)
    except (ValueError, SyntaxError) as e:
      raise ValueError(f"--model_kwargs: not a JSON or Python dict: {text!r}") from e
  if not isinstance(kwargs, dict):
    raise ValueError(f"--model_kwargs: expected a dict, got {type(kwargs).__name__}")
  names = {f for f in UNetConfig.__dataclass_fields__}
  # Our fields (dtype, onehot_lookup, edge_channel, ...) may be mixed in.
  ours = {k: kwargs.pop(k) for k in list(kwargs) if k in names and k not in (
      "image_size", "in_channels", "model_channels", "out_channels", "num_res_blocks",
      "attention_resolutions", "channel_mult", "num_classes", "num_head_channels",
      "num_heads", "num_heads_upsample", "use_scale_shift_norm", "resblock_updown",
      "conv_resample", "use_new_attention_order", "dropout")}
  ucfg = UNetConfig.from_reference_kwargs(kwargs, **ours)
  return ucfg, ucfg.num_onehot


def convert(torch_checkpoint: str, out: str, *, config: str | None = None,
            model_kwargs: str | None = None, unsafe_allow_pickle: bool = False) -> str:
  """Converts a checkpoint; returns the written directory.

  Args:
    torch_checkpoint: the .pt file.
    out: the export directory to write.
    config: an ml_collections config file (or give `model_kwargs`).
    model_kwargs: a JSON / Python dict of reference UNetModel arguments.
    unsafe_allow_pickle: read the file with `torch.load(weights_only=False)`, which runs
      any code the pickle names. Only for fully trusted files the safe reader refuses.
  """
  if (config is None) == (model_kwargs is None):
    raise ValueError("give exactly one of --config and --model_kwargs")
  ucfg, num_classes = (_config_from_file(config) if config is not None
                       else _config_from_kwargs(model_kwargs))
  state_dict = _load_torch_checkpoint(torch_checkpoint,
                                      unsafe_allow_pickle=unsafe_allow_pickle)
  params = torch_import.torch_to_params(state_dict, ucfg, source=torch_checkpoint)
  meta: dict[str, Any] = {
      "model": ucfg.to_dict(),
      "num_classes": int(num_classes),
      "source": f"converted from PyTorch checkpoint {os.path.abspath(torch_checkpoint)}",
  }
  return checkpointing.save_export(out, params, meta)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m scdm_jax.tools.convert",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--torch_checkpoint", required=True, help="PyTorch .pt state dict")
  parser.add_argument("--config", help="ml_collections config file with a `model` section")
  parser.add_argument("--model_kwargs", help="JSON dict of reference UNetModel arguments")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument(
      "--unsafe_allow_pickle", action="store_true",
      help="DANGEROUS: read the .pt with torch.load(weights_only=False). A pickle can run "
           "any code on this machine when it is loaded; use this only for a file from a "
           "source you trust completely, when the default safe reader (tensors, dicts and "
           "lists only) refuses it (e.g. a legacy pre-1.6 torch file or one that pickles "
           "extra Python objects). Needs torch.")
  args = parser.parse_args(argv)
  try:
    path = convert(args.torch_checkpoint, args.out, config=args.config,
                   model_kwargs=args.model_kwargs,
                   unsafe_allow_pickle=args.unsafe_allow_pickle)
  except (ValueError, FileNotFoundError) as e:
    print(f"convert: error: {e}", file=sys.stderr)
    return 1
  print(f"convert: wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
