"""Mesh construction, FSDP rule and global batches on 8 forced CPU devices."""

import jax
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from scdm_jax import sharding


def test_mesh_auto_fill():
  assert jax.device_count() == 8
  mesh = sharding.make_mesh({"data": -1, "fsdp": 1})
  assert dict(mesh.shape) == {"data": 8, "fsdp": 1}
  mesh = sharding.make_mesh({"data": 2, "fsdp": -1})
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4}
  with pytest.raises(ValueError, match="fsdp=3"):
    sharding.make_mesh({"data": -1, "fsdp": 3})
  with pytest.raises(ValueError, match="must equal"):
    sharding.make_mesh({"data": 2, "fsdp": 2})


def test_param_spec_rule():
  assert sharding.param_spec((3, 3, 64, 128), 4, 1000) == P(None, None, None, "fsdp")
  assert sharding.param_spec((3, 3, 256, 6), 4, 1000) == P(None, None, "fsdp", None)
  assert sharding.param_spec((7, 9), 4, 10) == P()  # nothing divisible
  assert sharding.param_spec((128,), 4, 1000) == P()  # below threshold
  assert sharding.param_spec((4096,), 1, 1) == P()  # no fsdp axis


def test_state_shardings_and_batch():
  mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
  tree = {"big": jax.ShapeDtypeStruct((64, 32), np.float32),
          "small": jax.ShapeDtypeStruct((8,), np.float32)}
  sh = sharding.state_shardings(mesh, tree, fsdp_min_size=1024)
  assert sh["big"].spec == P("fsdp", None) and sh["small"].spec == P()
  batch = {"image": np.arange(16 * 2, dtype=np.float32).reshape(16, 2),
           "name": np.array([b"x"] * 16)}
  g = sharding.to_global(batch, mesh)
  assert set(g) == {"image"}
  assert g["image"].shape == (16, 2)
  assert g["image"].sharding.spec == sharding.BATCH_SPEC
  np.testing.assert_array_equal(sharding.to_host(g["image"]), batch["image"])
  assert sharding.check_global_batch(16, mesh, 2) == (16, 8)
  with pytest.raises(ValueError, match="divisible by the number of devices"):
    sharding.check_global_batch(12, mesh, 1)
