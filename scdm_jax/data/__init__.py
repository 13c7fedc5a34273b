"""Input pipelines, the procedural dataset, the noisy-label benchmark and label I/O.

Importing this package does not import TensorFlow: only `create_dataset` (when called) and
`scdm_jax.data.tfds_builders` do, so model/training code runs on machines without TF.
See docs/data.md.
"""

from scdm_jax.data.datasets import create_dataset
from scdm_jax.data.label_io import colorize
from scdm_jax.data.label_io import load_label_map
from scdm_jax.data.palettes import ClassTable
from scdm_jax.data.palettes import get_class_table

__all__ = ["create_dataset", "load_label_map", "colorize", "ClassTable",
           "get_class_table"]
