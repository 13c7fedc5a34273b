r"""Entry point: `python -m scdm_jax.main --config configs/X.py[:variant] --workdir W`.

Modes:
  train     train or resume in --workdir (default).
  sample    write samples for a dataset split or for your own label PNGs (config.sample).
  export    write an inference checkpoint (EMA params, model config, class table) from the
            newest training checkpoint to <workdir>/export (or --export_dir).
  edit      SDEdit from strokes, or masked regeneration after a label edit (config.edit;
            docs/editing.md).
  evaluate  metrics of the samples against a split (config.eval; docs/evaluation.md).
  paint     Paint by Example: an exemplar painted into the masked region of a photo
            (config.paint; docs/paint_by_example.md).
  serve     the browser painter: paint a label map, generate, edit (config.serve; README).
  corrupt   the noisy-label benchmark: passes the remaining arguments after `--` to
            `python -m scdm_jax.data.corrupt`.

Overrides: `--config.train.batch_size=8 --config.model.dtype=bfloat16`.
Errors a user can cause (a bad label file, a missing folder, a checkpoint that does not match)
end in one line, `scdm_jax: error: <what, where, what to do>`, and exit status 1; set
SCDM_TRACEBACK=1 to see the Python traceback as well. A config that does not load (a missing
file or variant, an unknown `--config.<key>`: the closest valid key is suggested) ends the
same way. A training run stopped by SIGTERM saves a checkpoint and exits with status 75
(EX_TEMPFAIL, `EXIT_PREEMPTED`) so that a scheduler requeues it. A full disk or a read-only
output folder (checked before the work starts) ends in one line too; a failed checkpoint
write leaves no temporary folder and keeps the older steps.
Multi-host: `jax.distributed.initialize()` runs when --distributed is set, or when the
environment names a coordinator (JAX_COORDINATOR_ADDRESS, SLURM, or a Cloud TPU pod slice,
SCDM_DISTRIBUTED=1). Each mode is `scdm_jax.modes.<name>.run(config, workdir)`; `MODES`
maps the --mode names to those modules, and nothing else imports a mode.
"""

from __future__ import annotations

import difflib
import importlib.util
import logging as std_logging
import os
import sys
import traceback

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from scdm_jax import accelerator
from scdm_jax import recipe
from scdm_jax.io import fileio
from scdm_jax.modes import corrupt
from scdm_jax.modes import edit
from scdm_jax.modes import evaluate
from scdm_jax.modes import export
from scdm_jax.modes import paint
from scdm_jax.modes import sample
from scdm_jax.modes import serve
from scdm_jax.modes import train

# --mode name -> module with `run(config, workdir, ...)`.
MODES = {
    "train": train,
    "sample": sample,
    "edit": edit,
    "evaluate": evaluate,
    "export": export,
    "paint": paint,
    "serve": serve,
    "corrupt": corrupt,
}

FLAGS = flags.FLAGS

config_flags.DEFINE_config_file(
    "config", None, "Training configuration file (configs/*.py[:variant]).",
    lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
flags.DEFINE_enum("mode", "train", list(MODES), "What to do.")
flags.DEFINE_string("export_dir", None, "--mode export: target (default <workdir>/export).")
flags.DEFINE_bool("distributed", None,
                  "Call jax.distributed.initialize() (default: auto-detect from the "
                  "environment).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-process).")


def _want_distributed() -> bool:
  if FLAGS.distributed is not None:
    return FLAGS.distributed
  if FLAGS.coordinator_address:
    return True
  env = os.environ
  if env.get("SCDM_DISTRIBUTED", "") in ("1", "true", "True"):
    return True
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return True
  if int(env.get("SLURM_NTASKS", "1")) > 1:
    return True
  # Cloud TPU pod slices: several workers listed in the TPU environment.
  return "," in env.get("TPU_WORKER_HOSTNAMES", "")


def _initialize_distributed() -> None:
  kwargs = {}
  if FLAGS.coordinator_address:
    kwargs["coordinator_address"] = FLAGS.coordinator_address
  if FLAGS.num_processes is not None:
    kwargs["num_processes"] = FLAGS.num_processes
  if FLAGS.process_id is not None:
    kwargs["process_id"] = FLAGS.process_id
  jax.distributed.initialize(**kwargs)


class _QuietOrbax(std_logging.Filter):
  """Drops orbax's per-save INFO chatter (dozens of lines per checkpoint) and its per-thread
  tracebacks of a write failure that is reported in one line; keeps other warnings."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if "/orbax/" not in record.pathname:
      return True
    if record.levelno < std_logging.WARNING:
      return False
    # A full disk or read-only folder: each of orbax's save threads logs its traceback;
    # checkpointing reports the failure once, in one line (fileio.WriteError).
    return not fileio.is_write_failure(record.exc_info[1] if record.exc_info else None,
                                       record.getMessage())


# Exit status of a training run stopped by SIGTERM after saving its checkpoint (EX_TEMPFAIL
# of sysexits.h: "try again later"), so schedulers can requeue instead of seeing success.
EXIT_PREEMPTED = 75

# What our own checks raise for bad input; each message names the file or value and the fix.
_USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, FileExistsError,
                FloatingPointError, ImportError, fileio.WriteError)
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _raised_by_scdm_jax(err: BaseException) -> bool:
  """True when the innermost frame is this package's code, i.e. one of our own checks, not
  an error from deep inside JAX/XLA/orbax (those keep their traceback: they are bugs)."""
  frames = traceback.extract_tb(err.__traceback__)
  return bool(frames) and os.path.abspath(frames[-1].filename).startswith(_PACKAGE_DIR + os.sep)


def main(argv):
  try:
    return _dispatch(argv)
  except _USER_ERRORS as err:
    if os.environ.get("SCDM_TRACEBACK") or not _raised_by_scdm_jax(err):
      raise
    print(f"scdm_jax: error: {err}", file=sys.stderr, flush=True)
    return 1


def _dispatch(argv):
  logging.get_absl_handler().addFilter(_QuietOrbax())
  if FLAGS.mode == "corrupt":  # its own command line, after `--`; no config
    return MODES["corrupt"].run(FLAGS.config, FLAGS.workdir, argv=argv[1:])
  if len(argv) > 1:
    raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
  if FLAGS.config is None:
    raise app.UsageError("--config is required, e.g. --config configs/demo.py")

  # TensorFlow (input pipeline only) must not grab GPU/TPU memory that JAX needs.
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top  # optional and heavy
    tf.config.set_visible_devices([], "GPU")
    tf.config.set_visible_devices([], "TPU")
  except (ImportError, RuntimeError, ValueError):
    pass

  if _want_distributed():
    _initialize_distributed()
  logging.info("JAX process %d / %d, local devices %s, %d devices in total.",
               jax.process_index(), jax.process_count(), jax.local_devices(),
               jax.device_count())
  if jax.process_index() > 0:
    logging.set_verbosity(logging.WARNING)

  recipe.warn_deprecated(FLAGS.config)
  accelerator.check(FLAGS.config)
  extra = {"export_dir": FLAGS.export_dir} if FLAGS.mode == "export" else {}
  result = MODES[FLAGS.mode].run(FLAGS.config, FLAGS.workdir, **extra)
  if isinstance(result, dict) and result.get("preempted"):
    # A distinct status so a scheduler requeues the job (it resumes from the checkpoint).
    logging.warning("Exiting with status %d (preempted; run again to resume).",
                    EXIT_PREEMPTED)
    return EXIT_PREEMPTED
  return 0


def _config_arg(argv: list[str]) -> str | None:
  for i, a in enumerate(argv):
    if a == "--config" and i + 1 < len(argv):
      return argv[i + 1]
    if a.startswith("--config="):
      return a[len("--config="):]
  return None


def _flat_keys(config, prefix: str = "") -> list[str]:
  out = []
  for k, v in config.items():
    out.append(prefix + k)
    if hasattr(v, "items"):
      out += _flat_keys(v, f"{prefix}{k}.")
  return out


def _explain_flag_error(argv: list[str], err: BaseException) -> str:
  """One line for a command line that does not parse: a missing config file or variant,
  an unknown --config.<key> (with the closest valid key), or a bad value."""
  spec = _config_arg(argv)
  if spec:
    path, _, variant = spec.partition(":")
    if not os.path.isfile(path):
      folder = os.path.dirname(path) or "."
      presets = sorted(f for f in os.listdir(folder) if f.endswith(".py")) \
          if os.path.isdir(folder) else []
      close = difflib.get_close_matches(os.path.basename(path), presets, n=1)
      hint = f"did you mean {os.path.join(folder, close[0])}?" if close else \
          f"the presets in {folder}: {', '.join(presets) or 'none'}"
      return f"--config {path}: no such config file; {hint}"
    try:
      module_spec = importlib.util.spec_from_file_location("_scdm_config_check", path)
      module = importlib.util.module_from_spec(module_spec)
      module_spec.loader.exec_module(module)
      config = module.get_config(variant) if variant else module.get_config()
    except Exception as e:  # pylint: disable=broad-except  # the preset's own error
      return f"--config {spec}: {e}".splitlines()[0]
    keys = _flat_keys(config)
    for a in argv:
      if a.startswith("--config.") and "=" in a:
        key = a[len("--config."):].split("=", 1)[0]
        if key not in keys:
          close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
          hint = f"did you mean --config.{close[0]}?" if close else \
              "see configs/default.py for every key"
          return f"--config.{key}: no such config key in {path}; {hint}"
  text = str(err).strip() or type(err).__name__
  return text.splitlines()[0]


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a config that does not load ending in one line (exit 1)."""
  try:
    rest = FLAGS(argv)
    if FLAGS.config is not None:
      FLAGS.config.get("train")  # the file is loaded lazily; fail here, not in a mode
    return rest
  except Exception as err:  # pylint: disable=broad-except  # any config load failure
    if os.environ.get("SCDM_TRACEBACK"):
      raise
    print(f"scdm_jax: error: {_explain_flag_error(argv, err)}", file=sys.stderr, flush=True)
    sys.exit(1)


def run():
  # Lets --jax_* flags (e.g. --jax_disable_most_optimizations) be set on the command line.
  jax.config.config_with_absl()
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
