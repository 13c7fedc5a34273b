"""The studio (`--mode serve`) driven in a real headless Chromium, plus its API's checks.

The browser test starts `python -m scdm_jax.main --mode serve` on a free localhost port with
a random-weight tiny model (configs/tiny.py: the plumbing, not the pictures), paints with
mouse events, generates, corrupts, regenerates a region and saves a screenshot (to
$SCDM_STUDIO_SCREENSHOT when set, else the test's tmp dir). `test_browser_colours_*` (marked
slow) trains the tiny model briefly first and checks that the painted classes come out in
the procedural data's colours. Needs Debian's chromium and chromium-driver (`.ci/run`
installs them) and selenium.
"""

from __future__ import annotations

import base64
import io
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from scdm_jax.data import noisy
from scdm_jax.data import procedural

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SIZE = 16  # configs/tiny.py label resolution
SAND, WATER, SKY = procedural.SAND, procedural.WATER, procedural.SKY
PBE = ROOT / "tests" / "fixtures" / "paint_by_example"  # tiny random PbE weights + inputs


def _decode(url: str) -> np.ndarray:
  assert url.startswith("data:image/png;base64,"), url[:40]
  with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as im:
    arr = np.asarray(im)
  return arr[..., :3] if arr.ndim == 3 else arr  # canvas PNGs are RGBA


def _random_export(path: pathlib.Path) -> None:
  """An inference checkpoint of configs/tiny.py with random weights made in numpy."""
  import jax  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from scdm_jax import checkpointing  # pylint: disable=import-outside-toplevel
  from scdm_jax import recipe  # pylint: disable=import-outside-toplevel
  from scdm_jax.config_files import load_sibling  # pylint: disable=import-outside-toplevel
  from scdm_jax.models.unet import UNet  # pylint: disable=import-outside-toplevel
  config = load_sibling(str(ROOT / "configs" / "tiny.py"), "tiny").get_config()
  config.diffusion.label_schedule = "uniform"  # no psi statistics to compute
  cfg = recipe.unet_config(config)  # num_classes comes from config.data
  abstract = nnx.state(nnx.eval_shape(lambda: UNet(cfg, rngs=nnx.Rngs(0))), nnx.Param)
  rng = np.random.default_rng(0)

  def fill(p, x):
    if str(getattr(p[-1], "key", p[-1])) == "scale":
      return np.ones(x.shape, np.float32)
    return (0.05 * rng.standard_normal(x.shape)).astype(np.float32)

  params = jax.tree_util.tree_map_with_path(fill, nnx.to_pure_dict(abstract))
  checkpointing.save_export(str(path), params,
                            json.loads(json.dumps(recipe.run_meta(config, None))))


def _start(export: pathlib.Path, *overrides: str):
  """Starts `--mode serve` on a free port; returns (process, base URL)."""
  env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  # One device is all the studio uses; drop the tests' 8 forced host devices.
  flags = env.pop("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", "")
  if flags.strip():  # XLA reads a lone blank as a file name
    env["XLA_FLAGS"] = flags.strip()
  proc = subprocess.Popen(
      [sys.executable, "-m", "scdm_jax.main", "--mode", "serve", "--config",
       str(ROOT / "configs" / "tiny.py"), f"--config.serve.checkpoint={export}",
       "--config.serve.port=0", "--config.serve.steps=4", "--config.serve.num_samples=2",
       *overrides],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
  url, lines, deadline = None, [], time.time() + 120
  while time.time() < deadline:
    line = proc.stdout.readline()
    if not line:
      break
    lines.append(line)
    m = re.search(r"serving on (http://127\.0\.0\.1:\d+/)", line)
    if m:
      url = m.group(1)
      break
  if url is None:
    proc.kill()
    pytest.fail("the studio did not start:\n" + "".join(lines[-30:]))
  return proc, url


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  """The studio with random tiny weights on a free port; yields its base URL."""
  export = tmp_path_factory.mktemp("studio") / "export"
  _random_export(export)
  # The same weights as the "second checkpoint": the comparison's plumbing, at no extra
  # compile (the persistent compilation cache has the program).
  proc, url = _start(export, "--config.diffusion.label_schedule=uniform",
                     f"--config.serve.compare_checkpoint={export}",
                     f"--config.serve.paint_weights={PBE / 'pipeline'}",
                     "--config.paint.num_steps=3")
  yield url
  proc.terminate()
  proc.wait(timeout=30)


def _post(url: str, body: dict) -> tuple[int, dict]:
  req = urllib.request.Request(url, json.dumps(body).encode(),
                               {"Content-Type": "application/json"})
  try:
    with urllib.request.urlopen(req, timeout=300) as resp:
      return resp.status, json.load(resp)
  except urllib.error.HTTPError as err:
    return err.code, json.load(err)


def test_api_refuses_bad_input_with_one_line(server):
  status, out = _post(server + "api/generate", {"ids": [0] * 5, "steps": 4, "guidance": 1.5,
                                                "seed": 0})
  assert status == 400 and out["error"] == "ids: expected 256 class ids (16x16), got 5"
  status, out = _post(server + "api/generate", {"ids": [9] * 256, "steps": 4, "guidance": 1,
                                                "seed": 0})
  assert status == 400 and "-1..8" in out["error"]
  status, out = _post(server + "api/generate", {"ids": [0] * 256, "steps": 0, "guidance": 1,
                                                "seed": 0})
  assert status == 400 and out["error"].startswith("steps=0")
  status, out = _post(server + "api/sdedit", {"guide": "/etc/passwd", "t0": 0.5})
  assert status == 400 and "data URL" in out["error"]
  # A label PNG with ids outside the class table: the strict loader's message, naming the
  # browser's file name (not the server's temporary path).
  buf = io.BytesIO()
  Image.fromarray(np.full((16, 16), 40, np.uint8)).save(buf, format="PNG")
  data = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
  status, out = _post(server + "api/label", {"name": "my map.png", "data": data})
  assert status == 400
  assert out["error"].startswith("my map.png: label ids outside the class table 0..8: 40")
  assert "scdm_studio_" not in out["error"]
  # Too many pixels.
  buf = io.BytesIO()
  Image.new("L", (5000, 4000)).save(buf, format="PNG")
  data = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
  status, out = _post(server + "api/label", {"name": "huge.png", "data": data})
  assert status == 400 and "over the limit" in out["error"]
  # A photo upload is centre-cropped and resized to the model's size.
  buf = io.BytesIO()
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), np.uint8)).save(
      buf, format="JPEG")
  data = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
  status, out = _post(server + "api/image", {"name": "photo.jpg", "data": data})
  assert status == 200 and _decode(out["image"]).shape == (SIZE, SIZE, 3)
  for path in ("static/../backend.py", "static/%2e%2e/server.py", "etc/passwd"):
    with pytest.raises(urllib.error.HTTPError) as err:
      urllib.request.urlopen(server + path)
    assert err.value.code == 404, path


@pytest.fixture(scope="module")
def browser(server):
  from selenium import webdriver  # pylint: disable=import-outside-toplevel
  from selenium.webdriver.chrome.service import Service  # pylint: disable=import-outside-toplevel
  opts = webdriver.ChromeOptions()
  opts.binary_location = CHROMIUM
  for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1400,900"):
    opts.add_argument(arg)
  driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
  driver.set_script_timeout(300)
  yield driver
  driver.quit()


def _wait(driver, predicate, timeout=300, what="condition"):
  deadline = time.time() + timeout
  while time.time() < deadline:
    value = predicate()
    if value:
      return value
    time.sleep(0.2)
  err = driver.find_element("id", "error").text or driver.find_element("id", "paint-error").text
  pytest.fail(f"timed out waiting for {what}; page error: {err!r}")


def _drag(driver, canvas, points):
  """Mouse down at the first label pixel, move through the others, release."""
  from selenium.webdriver.common.action_chains import ActionChains  # pylint: disable=import-outside-toplevel
  w = canvas.size["width"]
  scale = w / SIZE
  offset = lambda p: (int((p[0] + 0.5) * scale - w / 2), int((p[1] + 0.5) * scale - w / 2))
  chain = ActionChains(driver).move_to_element_with_offset(canvas, *offset(points[0]))
  chain = chain.click_and_hold()
  for p in points[1:]:
    chain = chain.move_to_element_with_offset(canvas, *offset(p))
  chain.release().perform()


def _click(driver, element_id):
  driver.find_element("id", element_id).click()


def _pick_class(driver, class_id):
  driver.find_element("css selector", f"#palette li[data-id='{class_id}']").click()


def _results(driver, kind):
  return driver.execute_script(
      f"return Array.from(document.querySelectorAll('img.{kind}')).map(i => i.src)")


def _ids(d) -> np.ndarray:
  return np.asarray(d.execute_script("return Array.from(S.ids)")).reshape(SIZE, SIZE)


def _open(d, url: str) -> None:
  d.get(url)
  _wait(d, lambda: d.execute_script("return document.body.dataset.ready === '1'"),
        60, "the page")


def _paint_water_on_sand(d) -> np.ndarray:
  """Fills the map with sand, paints a thick band of water; returns the water mask."""
  from selenium.webdriver.support.ui import Select  # pylint: disable=import-outside-toplevel
  canvas = d.find_element("id", "canvas")
  _pick_class(d, SAND)
  _click(d, "tool-fill")
  _drag(d, canvas, [(3, 3)])
  _pick_class(d, WATER)
  _click(d, "tool-brush")
  Select(d.find_element("id", "brush-size")).select_by_visible_text("8")
  for y in (10, 13):
    _drag(d, canvas, [(0, y), (5, y), (10, y), (15, y)])
  return _ids(d) == WATER


def _generate(d, count: int) -> list[np.ndarray]:
  """Clicks Generate and returns the newest `count` samples (the page prepends them)."""
  before = len(_results(d, "sample"))
  _click(d, "generate")
  urls = _wait(d, lambda: len(_results(d, "sample")) >= before + count and _results(d, "sample"),
               what="the samples")
  return [_decode(u) for u in urls[:count]]


def test_browser_paint_generate_corrupt_regenerate(server, browser, tmp_path):
  d = browser
  _open(d, server)
  names = d.execute_script("return S.info.classes.map(c => c.name)")
  assert names == [n for n, _ in procedural.CLASSES]
  # The palette search filters the class list.
  d.find_element("id", "search").send_keys("wat")
  assert d.execute_script("return document.querySelectorAll('#palette li').length") == 1
  d.find_element("id", "search").clear()
  d.execute_script("buildPalette()")

  water = _paint_water_on_sand(d)
  ids = _ids(d)
  assert set(np.unique(ids)) == {SAND, WATER}
  assert water[10:16].all() and not water[:6].any(), ids  # exact ids, no blending
  # Undo takes the last stroke back; painting it again restores the map.
  _click(d, "undo")
  assert (_ids(d) == WATER).sum() < water.sum()
  _drag(d, d.find_element("id", "canvas"), [(0, 13), (5, 13), (10, 13), (15, 13)])
  assert np.array_equal(_ids(d), ids)
  # The unknown eraser writes the absorbing state (-1), drawn as a checkerboard.
  _click(d, "tool-eraser")
  _drag(d, d.find_element("id", "canvas"), [(15, 0)])
  assert _ids(d)[0, 15] == -1
  _click(d, "undo")

  # Generate: two samples of the painted map, side by side.
  imgs = _generate(d, 2)
  first = d.find_element("id", "timing").text
  assert all(im.shape == (SIZE, SIZE, 3) for im in imgs)
  assert not np.array_equal(imgs[0], imgs[1])  # two samples, two noises
  # The id PNG download is the painted map exactly.
  label_png = d.find_element("id", "download-label").get_attribute("href")
  assert np.array_equal(_decode(label_png), ids)
  # The second checkpoint ran on the same map and seed: same weights, same pictures.
  compare = [_decode(u) for u in _results(d, "compare")]
  assert len(compare) == 2 and all(np.array_equal(a, b) for a, b in zip(compare, imgs))
  _click(d, "compare")  # off: the rest of the test runs one model

  # A corruption: Random on the same map runs the same (already compiled) program.
  _click(d, "corr-random")
  _generate(d, 2)
  assert re.search(r"random: [1-9]\d* pixels changed before sampling",
                   d.find_element("id", "message").text)
  assert d.find_element("id", "corrupted").is_displayed()
  seed = int(d.find_element("id", "seed").get_attribute("value"))
  want = noisy.corrupt_random(ids, procedural.UNLABELED, np.random.default_rng(seed))
  assert np.array_equal(np.reshape(d.execute_script("return S.corrupted"), ids.shape), want)
  second = d.find_element("id", "timing").text
  assert "includes compiling" in first and "includes compiling" not in second, (first, second)
  _click(d, "corr-none")

  # Masked regeneration: a sample is the source; select a box, relabel it as sky.
  d.execute_script("document.querySelectorAll('img.sample')[0].click()")
  source = _decode(d.execute_script("return S.source"))
  _click(d, "tool-select")
  _drag(d, d.find_element("id", "canvas"), [(2, 2), (8, 7)])
  mask = np.asarray(d.execute_script("return Array.from(S.mask)")).reshape(SIZE, SIZE) == 1
  assert mask.sum() == 7 * 6 and mask[2:8, 2:9].all()
  _pick_class(d, SKY)
  _click(d, "relabel")
  ids = _ids(d)
  assert (ids[mask] == SKY).all() and not (ids[~mask] == SKY).any()
  _click(d, "regenerate")
  urls = _wait(d, lambda: len(_results(d, "masked")) >= 2 and _results(d, "masked"),
               what="the regenerated region")
  for u in urls:
    out = _decode(u)
    assert np.array_equal(out[~mask], source[~mask])  # every other pixel kept exactly
    assert not np.array_equal(out[mask], source[mask])
  assert d.find_element("id", "error").text == ""

  # SDEdit: strokes start as the source, one stroke is painted, the map guides the result.
  _click(d, "strokes-from-source")  # decodes the source image: asynchronous
  _wait(d, lambda: np.array_equal(
      _decode(d.execute_script("return rgbToDataUrl(S.strokes)")), source), 30,
        "the strokes to become the source")
  _drag(d, d.find_element("id", "canvas"), [(0, 0), (15, 0)])
  guide = _decode(d.execute_script("return rgbToDataUrl(S.strokes)"))
  assert not np.array_equal(guide[:2], source[:2]) and np.array_equal(guide[8:], source[8:])
  _click(d, "sdedit")
  urls = _wait(d, lambda: len(_results(d, "sdedit")) >= 2 and _results(d, "sdedit"),
               what="the SDEdit results")
  assert all(_decode(u).shape == (SIZE, SIZE, 3) for u in urls)
  assert d.find_element("id", "error").text == ""

  # An upload the strict loader refuses: its one-line error is shown in the page.
  bad = tmp_path / "bad labels.png"
  Image.fromarray(np.full((16, 16), 40, np.uint8)).save(bad)
  d.find_element("id", "upload-label").send_keys(str(bad))
  err = _wait(d, lambda: d.find_element("id", "error").text, 30, "the upload error")
  assert err.startswith("bad labels.png: label ids outside the class table 0..8: 40")

  shot = pathlib.Path(os.environ.get("SCDM_STUDIO_SCREENSHOT") or tmp_path / "studio.png")
  d.save_screenshot(str(shot))
  assert shot.stat().st_size > 10_000


def test_browser_paint_by_example(server, browser, tmp_path):
  """The exemplar tab: upload a photo, paint a mask, choose an exemplar, paint it in."""
  d = browser
  _open(d, server)
  _click(d, "tab-btn-paint")
  src = np.asarray(Image.open(PBE / "inputs" / "source.png").convert("RGB"))
  h, w = src.shape[:2]
  # factor - 1 extra columns: the page's photo is cropped to sides divisible by the VAE
  # factor (2 for the fixture, 8 for the released model).
  factor = d.execute_script("return S.info.paint.factor")
  wide = np.concatenate([src, np.zeros((h, factor - 1, 3), np.uint8)], 1)
  Image.fromarray(wide).save(tmp_path / "photo.png")
  d.find_element("id", "paint-upload-source").send_keys(str(tmp_path / "photo.png"))
  _wait(d, lambda: d.execute_script("return document.body.dataset.paintSource") == f"{w}x{h}",
        60, "the photo")
  assert "cropped" in d.find_element("id", "paint-message").text

  # Without a mask or an exemplar: one-line errors in the page, no request.
  _click(d, "paint-run")
  assert d.find_element("id", "paint-error").text == (
      "paint the region to repaint on the photo first")
  from selenium.webdriver.common.action_chains import ActionChains  # pylint: disable=import-outside-toplevel
  from selenium.webdriver.support.ui import Select  # pylint: disable=import-outside-toplevel
  Select(d.find_element("id", "paint-brush")).select_by_visible_text("16")
  canvas = d.find_element("id", "paint-canvas")
  cw = canvas.size["width"]
  at = lambda x, y: (int((x + 0.5) * cw / w - cw / 2), int((y + 0.5) * cw / w - cw / 2))
  ActionChains(d).move_to_element_with_offset(canvas, *at(16, 32)).click_and_hold() \
      .move_to_element_with_offset(canvas, *at(32, 32)) \
      .move_to_element_with_offset(canvas, *at(44, 36)).release().perform()
  mask = np.asarray(d.execute_script("return Array.from(P.mask)"), bool).reshape(h, w)
  assert 100 < mask.sum() < h * w // 2
  _click(d, "paint-run")
  assert d.find_element("id", "paint-error").text == "drop an exemplar image first"

  d.find_element("id", "paint-upload-exemplar").send_keys(str(PBE / "inputs" / "exemplar.png"))
  _wait(d, lambda: d.execute_script("return document.body.dataset.paintExemplar"), 30,
        "the exemplar")
  steps = d.find_element("id", "paint-steps")
  steps.clear()
  steps.send_keys("3")
  if not d.find_element("id", "paint-paste-back").is_selected():
    _click(d, "paint-paste-back")
  _click(d, "paint-run")
  url = _wait(d, lambda: d.execute_script(
      "const i = document.querySelector('#paint-results img'); return i && i.src"),
      what="the painted image")
  out = _decode(url)
  assert out.shape == (h, w, 3)
  np.testing.assert_array_equal(out[~mask], src[~mask])  # paste-back: the rest is the photo
  assert not np.array_equal(out[mask], src[mask])
  assert d.find_element("id", "paint-error").text == ""

  # The API's one-line refusals (the page shows the same text).
  buf = io.BytesIO()
  Image.fromarray(np.zeros((h, w), np.uint8)).save(buf, format="PNG")
  empty = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
  body = {"source": url, "mask": empty, "exemplar": url, "steps": 3, "guidance": 5,
          "seed": 0, "sampler": "pndm"}
  status, res = _post(server + "api/paint", body)
  assert status == 400 and res["error"].startswith("mask: nothing is painted")
  status, res = _post(server + "api/paint", dict(body, mask=url, sampler="euler"))
  assert status == 400 and res["error"].startswith("sampler 'euler' is unknown")


@pytest.mark.slow
def test_browser_colours_after_training(browser, tmp_path):
  """After 300 training steps the painted classes come out in the data's colours.

  Trains the tiny model first: about 5 minutes on 2 busy cores (CI runs it; deselect it
  locally with `-m "not slow"`).

  Set SCDM_STUDIO_TRAINED=<workdir> to reuse a run of the same command instead of training.
  """
  workdir = pathlib.Path(os.environ.get("SCDM_STUDIO_TRAINED") or tmp_path / "run")
  tiny = ["--config", str(ROOT / "configs" / "tiny.py"), "--workdir", str(workdir)]
  if not (workdir / "export").exists():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for extra in (["--config.train.total_steps=300", "--config.train.checkpoint_every=300",
                   "--config.optim.ema_decay=0.95"], ["--mode", "export"]):
      subprocess.run([sys.executable, "-m", "scdm_jax.main", *tiny, *extra], check=True,
                     env=env, cwd=ROOT, capture_output=True)
  proc, url = _start(workdir / "export", "--config.serve.num_samples=4",
                     "--config.serve.steps=25")
  try:
    _open(browser, url)
    water = _paint_water_on_sand(browser)
    colors = procedural.class_mean_colors()
    for im in _generate(browser, 4):
      im = im.astype(np.float32)
      in_water, in_sand = im[water].mean(0), im[~water].mean(0)
      assert np.linalg.norm(in_water - colors[WATER]) < np.linalg.norm(in_water - colors[SAND])
      assert np.linalg.norm(in_sand - colors[SAND]) < np.linalg.norm(in_sand - colors[WATER])
  finally:
    proc.terminate()
    proc.wait(timeout=30)


def test_serve_without_weights_is_one_line_error(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  r = subprocess.run([sys.executable, "-m", "scdm_jax.main", "--mode", "serve", "--config",
                      str(ROOT / "configs" / "tiny.py"), "--workdir", str(tmp_path / "none")],
                     capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
  assert r.returncode == 1
  assert r.stderr.strip().splitlines()[-1].startswith(
      "scdm_jax: error: --mode serve: no weights: set --config.serve.checkpoint=")
