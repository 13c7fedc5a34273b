"""`--mode corrupt`: the noisy-label benchmark's corruption command.

`python -m scdm_jax.main --mode corrupt -- ARGS` is `python -m scdm_jax.data.corrupt ARGS`
(the arguments after `--`); it needs no config or workdir.
"""

from __future__ import annotations

from collections.abc import Sequence

from scdm_jax.data import corrupt


def run(config, workdir, argv: Sequence[str] = ()) -> int:
  del config, workdir  # everything comes from the command line after `--`
  return corrupt.main(list(argv))
