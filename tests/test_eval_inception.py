"""TF-FID Inception-v3: parameter layout, forward shape, weights refusal, converter, and
parity of its building blocks with PyTorch's ops (when torch is installed)."""

import numpy as np
import pytest

from scdm_jax.evaluation import inception

# torchvision documents inception_v3 with 27,161,264 parameters (aux head and 1000-class fc
# included, BatchNorm running statistics excluded). The FID network has the same conv/BN
# shapes (its patches change only the pooling), no aux head and a 1008-class fc we drop:
#   AuxLogits: conv0 768*128 + 2*128 = 98,560; conv1 128*768*5*5 + 2*768 = 2,459,136;
#              fc 768*1000 + 1000 = 769,000              -> 3,326,696
#   fc:        2048*1000 + 1000                          -> 2,049,000
#   27,161,264 - 3,326,696 - 2,049,000 = 21,785,568 conv kernels + BN gamma/beta.
EXPECTED_PARAMS = 27_161_264 - 3_326_696 - 2_049_000
NUM_CONVS = 94  # 5 stem + 3*7 (A) + 4 (B) + 4*10 (C) + 6 (D) + 2*9 (E)


def _random_weights(seed=0):
  rng = np.random.default_rng(seed)
  arrays = {}
  for k, shape in inception.inception_weight_shapes().items():
    if k.endswith("conv.weight"):
      fan_in = np.prod(shape[1:])
      arrays[k] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    elif k.endswith("running_var"):
      arrays[k] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    elif k.endswith("bn.weight"):
      arrays[k] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    else:
      arrays[k] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
  return arrays


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("inception") / "inception.npz"
  np.savez(path, **_random_weights())
  return path


@pytest.fixture(scope="module")
def feature_fn(weights_file):
  return inception.make_feature_fn(inception.load_inception(weights_file))


def test_parameter_layout():
  shapes = inception.inception_weight_shapes()
  assert len(shapes) == 5 * NUM_CONVS
  n_params = sum(int(np.prod(s)) for k, s in shapes.items() if "running" not in k)
  assert n_params == EXPECTED_PARAMS
  assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
  assert shapes["Mixed_5b.branch_pool.conv.weight"] == (32, 192, 1, 1)
  assert shapes["Mixed_6e.branch7x7_2.conv.weight"] == (192, 192, 1, 7)
  assert shapes["Mixed_7a.branch3x3_2.conv.weight"] == (320, 192, 3, 3)
  assert shapes["Mixed_7c.branch_pool.conv.weight"] == (192, 2048, 1, 1)
  assert shapes["Mixed_7c.branch3x3dbl_3b.bn.running_var"] == (384,)


def test_features_shape_and_padding_batches(feature_fn):
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (3, 64, 64, 3)).astype(np.float32)
  feats = inception.extract_features(feature_fn, images, batch_size=2)
  assert feats.shape == (3, inception.FEATURE_DIM) and feats.dtype == np.float64
  assert np.all(np.isfinite(feats)) and np.all(feats >= 0)  # mean of ReLU outputs
  assert feats.std() > 0
  direct = np.asarray(feature_fn(images[:2]))
  np.testing.assert_allclose(feats[:2], direct, rtol=1e-5, atol=1e-6)
  # The zero-padded last batch gives the same features as the image computed in a full batch.
  again = np.asarray(feature_fn(images[1:3]))
  np.testing.assert_allclose(feats[2], again[1], rtol=1e-4, atol=1e-5)


def test_extract_features_sharded_over_devices():
  import jax  # pylint: disable=import-outside-toplevel
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=import-outside-toplevel
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  seen = []

  @jax.jit
  def fn(x):  # a cheap stand-in for the network: the plumbing is what is tested
    return jnp_mean(x)

  def jnp_mean(x):
    seen.append(str(jax.typeof(x)))  # e.g. float32[8@data,4,4,3]
    return x.mean(axis=(1, 2))

  images = np.random.default_rng(0).uniform(-1, 1, (11, 4, 4, 3)).astype(np.float32)
  feats = inception.extract_features(fn, images, batch_size=8,
                                     sharding=NamedSharding(mesh, P("data")))
  np.testing.assert_allclose(feats, images.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
  assert len(seen) == 1  # one compiled shape for the full and the padded batch
  assert "@data" in seen[0]  # the batch axis is split over the mesh


@pytest.mark.parametrize("case", ["missing_file", "not_npz", "npy", "missing_key",
                                  "wrong_shape", "extra_key", "nan"])
def test_bad_weights_are_refused(tmp_path, case):
  path = tmp_path / "bad.npz"
  exc, match = ValueError, "bad.npz"
  if case == "missing_file":
    exc = FileNotFoundError
  elif case == "not_npz":
    path.write_bytes(b"\x00garbage" * 100)
  elif case == "npy":
    with open(path, "wb") as f:
      np.save(f, np.zeros(3))
    match = "single .npy"
  else:
    arrays = _random_weights(1)
    if case == "missing_key":
      del arrays["Mixed_6b.branch7x7dbl_4.bn.running_mean"]
      match = "Mixed_6b.branch7x7dbl_4.bn.running_mean"
    elif case == "wrong_shape":
      arrays["Mixed_7b.branch1x1.conv.weight"] = np.zeros((320, 1280, 3, 3), np.float32)
      match = r"Mixed_7b.branch1x1.conv.weight' has shape \(320, 1280, 3, 3\); expected " \
              r"\(320, 1280, 1, 1\)"
    elif case == "extra_key":
      arrays["fc.weight"] = np.zeros((1008, 2048), np.float32)
      match = "unexpected key"
    elif case == "nan":
      arrays["Conv2d_1a_3x3.bn.bias"][0] = np.nan
      match = "NaN"
    np.savez(path, **arrays)
  with pytest.raises(exc, match=match) as info:
    inception.load_inception(path)
  assert "bad.npz" in str(info.value)


def test_convert_from_torch_state_dict(tmp_path):
  torch = pytest.importorskip("torch")
  from scdm_jax.evaluation import convert_inception  # pylint: disable=import-outside-toplevel
  arrays = _random_weights(2)
  sd = {k: torch.from_numpy(v) for k, v in arrays.items()}
  sd["fc.weight"] = torch.zeros(1008, 2048)
  sd["fc.bias"] = torch.zeros(1008)
  sd["Conv2d_1a_3x3.bn.num_batches_tracked"] = torch.tensor(0)
  pth = tmp_path / "pt_inception.pth"
  torch.save(sd, pth)
  out = tmp_path / "out" / "inception.npz"
  assert convert_inception.main(["--torch", str(pth), "--out", str(out)]) == 0
  with np.load(out) as data:
    assert set(data.files) == set(arrays)
    np.testing.assert_array_equal(data["Mixed_7c.branch_pool.conv.weight"],
                                  arrays["Mixed_7c.branch_pool.conv.weight"])
  del sd["Mixed_5b.branch1x1.conv.weight"]
  torch.save(sd, pth)
  with pytest.raises(ValueError, match="pt_inception.pth.*Mixed_5b.branch1x1.conv.weight"):
    convert_inception.convert(str(pth), str(tmp_path / "x.npz"))


class TestTorchParity:
  """The primitives whose semantics differ between frameworks, against torch's own ops."""

  @pytest.fixture(autouse=True)
  def _torch(self):
    self.torch = pytest.importorskip("torch")
    self.F = self.torch.nn.functional

  def _nchw(self, x):
    return self.torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))

  def _nhwc(self, t):
    return np.transpose(t.numpy(), (0, 2, 3, 1))

  @pytest.mark.parametrize("size", [64, 300, 512])
  def test_resize_matches_interpolate(self, size):
    import jax  # pylint: disable=import-outside-toplevel
    x = np.random.default_rng(size).uniform(-1, 1, (1, size, size, 3)).astype(np.float32)
    ours = np.asarray(jax.image.resize(x, (1, 299, 299, 3), "bilinear", antialias=False))
    ref = self._nhwc(self.F.interpolate(self._nchw(x), size=(299, 299), mode="bilinear",
                                        align_corners=False))
    np.testing.assert_allclose(ours, ref, atol=2e-5)

  def test_pools_match(self):
    x = np.random.default_rng(0).standard_normal((2, 9, 7, 4)).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(inception._avg_pool_exclude_pad(x)),
        self._nhwc(self.F.avg_pool2d(self._nchw(x), 3, 1, 1, count_include_pad=False)),
        atol=1e-6)
    np.testing.assert_allclose(np.asarray(inception._max_pool(x, 3, 1, 1)),
                               self._nhwc(self.F.max_pool2d(self._nchw(x), 3, 1, 1)))
    np.testing.assert_allclose(np.asarray(inception._max_pool(x, 3, 2, 0)),
                               self._nhwc(self.F.max_pool2d(self._nchw(x), 3, 2)))

  def test_basic_conv_matches_conv_bn_relu(self):
    from flax import nnx  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(1)
    conv = inception.BasicConv(5, 6, (1, 7), padding=(0, 3), rngs=nnx.Rngs(0))
    w = rng.standard_normal((6, 5, 1, 7)).astype(np.float32)
    g, b, m, v = (rng.uniform(0.5, 1.5, 6).astype(np.float32) for _ in range(4))
    conv.kernel[...] = np.transpose(w, (2, 3, 1, 0))
    conv.scale[...], conv.bias[...], conv.mean[...], conv.var[...] = g, b, m, v
    x = rng.standard_normal((2, 8, 9, 5)).astype(np.float32)
    t = self.torch
    ref = self.F.relu(self.F.batch_norm(
        self.F.conv2d(self._nchw(x), t.from_numpy(w), padding=(0, 3)), t.from_numpy(m),
        t.from_numpy(v), t.from_numpy(g), t.from_numpy(b), training=False, eps=1e-3))
    np.testing.assert_allclose(np.asarray(conv(x)), self._nhwc(ref), rtol=1e-5, atol=1e-5)


def _torch_fid_inception(arrays, images_pm1):
  """pytorch-fid's FID Inception forward (fid_inception_v3 + InceptionV3 block 3), written
  with torch.nn.functional from the same weights dict, as an independent reference."""
  import torch  # pylint: disable=import-outside-toplevel
  F = torch.nn.functional
  w = {k: torch.from_numpy(v) for k, v in arrays.items()}

  def conv(x, n, stride=1, padding=0):
    x = F.conv2d(x, w[f"{n}.conv.weight"], stride=stride, padding=padding)
    x = F.batch_norm(x, w[f"{n}.bn.running_mean"], w[f"{n}.bn.running_var"],
                     w[f"{n}.bn.weight"], w[f"{n}.bn.bias"], training=False, eps=1e-3)
    return F.relu(x)

  def avg(x):
    return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)

  def mixed_a(x, n):
    b1 = conv(x, f"{n}.branch1x1")
    b5 = conv(conv(x, f"{n}.branch5x5_1"), f"{n}.branch5x5_2", padding=2)
    b3 = conv(conv(conv(x, f"{n}.branch3x3dbl_1"), f"{n}.branch3x3dbl_2", padding=1),
              f"{n}.branch3x3dbl_3", padding=1)
    return torch.cat([b1, b5, b3, conv(avg(x), f"{n}.branch_pool")], 1)

  def mixed_b(x, n):
    b3 = conv(x, f"{n}.branch3x3", stride=2)
    bd = conv(conv(conv(x, f"{n}.branch3x3dbl_1"), f"{n}.branch3x3dbl_2", padding=1),
              f"{n}.branch3x3dbl_3", stride=2)
    return torch.cat([b3, bd, F.max_pool2d(x, 3, 2)], 1)

  def mixed_c(x, n):
    b1 = conv(x, f"{n}.branch1x1")
    b7 = conv(conv(conv(x, f"{n}.branch7x7_1"), f"{n}.branch7x7_2", padding=(0, 3)),
              f"{n}.branch7x7_3", padding=(3, 0))
    bd = conv(x, f"{n}.branch7x7dbl_1")
    for i, pad in zip(range(2, 6), [(3, 0), (0, 3), (3, 0), (0, 3)]):
      bd = conv(bd, f"{n}.branch7x7dbl_{i}", padding=pad)
    return torch.cat([b1, b7, bd, conv(avg(x), f"{n}.branch_pool")], 1)

  def mixed_d(x, n):
    b3 = conv(conv(x, f"{n}.branch3x3_1"), f"{n}.branch3x3_2", stride=2)
    b7 = conv(x, f"{n}.branch7x7x3_1")
    b7 = conv(b7, f"{n}.branch7x7x3_2", padding=(0, 3))
    b7 = conv(b7, f"{n}.branch7x7x3_3", padding=(3, 0))
    b7 = conv(b7, f"{n}.branch7x7x3_4", stride=2)
    return torch.cat([b3, b7, F.max_pool2d(x, 3, 2)], 1)

  def mixed_e(x, n, pool):
    b1 = conv(x, f"{n}.branch1x1")
    b3 = conv(x, f"{n}.branch3x3_1")
    b3 = torch.cat([conv(b3, f"{n}.branch3x3_2a", padding=(0, 1)),
                    conv(b3, f"{n}.branch3x3_2b", padding=(1, 0))], 1)
    bd = conv(conv(x, f"{n}.branch3x3dbl_1"), f"{n}.branch3x3dbl_2", padding=1)
    bd = torch.cat([conv(bd, f"{n}.branch3x3dbl_3a", padding=(0, 1)),
                    conv(bd, f"{n}.branch3x3dbl_3b", padding=(1, 0))], 1)
    return torch.cat([b1, b3, bd, conv(pool(x), f"{n}.branch_pool")], 1)

  with torch.no_grad():
    x01 = torch.from_numpy(np.transpose((images_pm1 + 1) / 2, (0, 3, 1, 2)).copy())
    x = F.interpolate(x01, size=(299, 299), mode="bilinear", align_corners=False)
    x = 2 * x - 1
    x = conv(x, "Conv2d_1a_3x3", stride=2)
    x = conv(x, "Conv2d_2a_3x3")
    x = F.max_pool2d(conv(x, "Conv2d_2b_3x3", padding=1), 3, 2)
    x = F.max_pool2d(conv(conv(x, "Conv2d_3b_1x1"), "Conv2d_4a_3x3"), 3, 2)
    for n in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
      x = mixed_a(x, n)
    x = mixed_b(x, "Mixed_6a")
    for n in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
      x = mixed_c(x, n)
    x = mixed_d(x, "Mixed_7a")
    x = mixed_e(x, "Mixed_7b", avg)
    x = mixed_e(x, "Mixed_7c", lambda t: F.max_pool2d(t, 3, 1, 1))
    return F.adaptive_avg_pool2d(x, 1).flatten(1).numpy()


def test_full_network_matches_torch_reference(feature_fn):
  pytest.importorskip("torch")
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
  ours = np.asarray(feature_fn(images))  # same shape as the fixture's first use: no recompile
  ref = _torch_fid_inception(_random_weights(), images)
  assert ref.shape == (2, 2048)
  np.testing.assert_allclose(ours, ref, rtol=2e-4, atol=2e-5 * np.abs(ref).max())
