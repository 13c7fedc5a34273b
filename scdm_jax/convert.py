"""Deprecated location, kept so old commands work: use `python -m scdm_jax.tools.convert`."""

import sys

from scdm_jax.tools.convert import *  # noqa: F401,F403  pylint: disable=wildcard-import
from scdm_jax.tools.convert import main

if __name__ == "__main__":
  print("scdm_jax: note: `python -m scdm_jax.convert` is deprecated; use "
        "`python -m scdm_jax.tools.convert` (same arguments).", file=sys.stderr)
  sys.exit(main())
