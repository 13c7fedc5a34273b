"""Inference-export round trip and the training CheckpointManager wrapper."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scdm_jax import checkpointing


def _params():
  return {
      "conv_in": {"kernel": np.random.RandomState(0).randn(3, 3, 3, 8).astype(np.float32),
                  "bias": np.zeros((8,), np.float32)},
      "blocks": {"0": {"scale": jnp.ones((8,), jnp.bfloat16)}},
  }


def test_export_round_trip(tmp_path):
  params = _params()
  meta = {"model": {"image_size": 16, "num_classes": 4}, "num_classes": 4,
          "class_names": ["a", "b", "c", "d"], "source": "test"}
  path = checkpointing.save_export(tmp_path / "export", params, meta)
  assert os.path.isdir(path)
  got, got_meta = checkpointing.load_export(path)
  assert got_meta == meta
  flat_want = jax.tree_util.tree_leaves_with_path(params)
  flat_got = dict(jax.tree_util.tree_leaves_with_path(got))
  assert len(flat_got) == len(flat_want)
  for kp, want in flat_want:
    np.testing.assert_array_equal(np.asarray(flat_got[kp]), np.asarray(want))
    assert flat_got[kp].dtype == want.dtype
  # Overwrite in place.
  meta2 = dict(meta, source="second")
  checkpointing.save_export(path, params, meta2)
  assert checkpointing.load_export(path)[1]["source"] == "second"
  # No leftover temporary directories next to it.
  assert sorted(os.listdir(tmp_path)) == ["export"]


def test_export_missing_dir_is_clear(tmp_path):
  with pytest.raises(FileNotFoundError, match="not an inference checkpoint"):
    checkpointing.load_export(tmp_path / "nope")
  with pytest.raises(ValueError, match="'model'"):
    checkpointing.save_export(tmp_path / "x", _params(), {"num_classes": 4})


def test_train_checkpointer_retention_and_restore(tmp_path):
  ckpt = checkpointing.TrainCheckpointer(tmp_path / "ckpt", keep_last=2, keep_every=4,
                                         async_save=True)
  assert ckpt.latest_step() is None
  for step in range(1, 9):
    state = {"params": {"w": jnp.full((4,), float(step))}, "step": np.int32(step),
             "rng": np.array([step, 0], np.uint32)}
    ckpt.save(step, state, {"step": step, "config": {"a": 1}})
  ckpt.wait()
  assert ckpt.all_steps() == [4, 7, 8]
  assert ckpt.latest_step() == 8
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype),
                          state)
  got, meta = ckpt.restore(4, abstract)
  np.testing.assert_array_equal(got["params"]["w"], np.full((4,), 4.0))
  assert int(got["step"]) == 4 and meta == {"step": 4, "config": {"a": 1}}
  assert ckpt.restore_meta(8)["step"] == 8
  ckpt.close()
  # A second manager on the same directory sees the same steps (resume).
  again = checkpointing.TrainCheckpointer(tmp_path / "ckpt", keep_last=2, keep_every=4)
  assert again.latest_step() == 8
  again.close()


def test_checkpoint_with_the_old_empty_rest_entry_restores(tmp_path):
  # Checkpoints written before TrainState.rest was dropped hold an empty "rest" entry.
  ckpt = checkpointing.TrainCheckpointer(tmp_path / "old", async_save=False)
  ckpt.save(1, {"params": {"w": jnp.arange(3.0)}, "rest": {}}, {"step": 1}, wait=True)
  got, _ = ckpt.restore(1, {"params": {"w": jax.ShapeDtypeStruct((3,), jnp.float32)}})
  assert set(got) == {"params"}
  np.testing.assert_array_equal(got["params"]["w"], np.arange(3.0))
  ckpt.close()
