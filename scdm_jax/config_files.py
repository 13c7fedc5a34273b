"""Loading one config file from another.

ml_collections loads `configs/*.py` by path, not as a package, so a preset cannot
`import default`; it loads its sibling through here instead.
"""

import importlib.util
import os
from types import ModuleType


def load_sibling(this_file: str, name: str) -> ModuleType:
  """The module `<name>.py` in the folder of `this_file` (e.g. a preset's `default.py`)."""
  path = os.path.join(os.path.dirname(os.path.abspath(this_file)), f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"scdm_configs_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
