"""The studio's HTTP server: the static page and a small JSON API over `backend.Model`.

Endpoints (JSON in and out; errors are `{"error": "<one line>"}` with a 4xx status):

  GET  /                 the painter page (package data: studio/static/)
  GET  /static/<file>    its script and style sheet
  GET  /api/info         class table, label size, defaults, limits, compare model
  GET  /api/progress     phase (idle | compiling | sampling), step, total, elapsed seconds
  POST /api/generate     {ids, steps, guidance, seed, num_samples, corruption}
  POST /api/sdedit       {guide (PNG data URL), ids or null, t0, steps, guidance, seed, ...}
  POST /api/masked       {source (PNG data URL), mask, ids, steps, guidance, seed, dilate}
  POST /api/label        {name, data (PNG data URL)}: the strict label loader's ids + report
  POST /api/image        {name, data (PNG/JPEG data URL)}: the image loader's pixels
  POST /api/paint_source {name, data}: a photo for Paint by Example, cropped to the VAE factor
  POST /api/paint        {source, mask (PNG data URLs, same size), exemplar (data URL),
                          steps, guidance, seed, sampler, paste_back}: Paint by Example
                          (only when the studio has a `backend.Painter`)

Label maps travel as flat lists of class ids (-1 = unknown) at the model's label size, so
the brush is exact and nothing is snapped; uploaded colour PNGs go through the strict
loader, which snaps and reports. Uploads are written to a private temporary folder under a
fixed name; no path ever comes from the browser. One model request runs at a time (a
second gets 409 while one runs); progress is polled.
"""

from __future__ import annotations

import base64
import dataclasses
import http.server
import importlib.resources
import io
import json
import os
import re
import tempfile
import threading
import time
from typing import Any

import numpy as np
from PIL import Image

from scdm_jax.studio import backend

_STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".png": "image/png"}
_DATA_URL = re.compile(r"^data:image/(png|jpeg);base64,(.*)$", re.S)


@dataclasses.dataclass
class Limits:
  """Request limits: body bytes, decoded upload pixels, samples and steps per request."""

  max_body_bytes: int = 8 << 20
  max_upload_pixels: int = 4096 * 4096
  max_samples: int = 8
  max_steps: int = 1000


class UserError(ValueError):
  """A bad request; its message (one line) is shown in the page."""


class Studio:
  """The state shared by all request handlers: models, limits, the request lock."""

  def __init__(self, model: backend.Model, compare: backend.Model | None = None,
               limits: Limits | None = None, defaults: dict[str, Any] | None = None,
               painter: backend.Painter | None = None):
    self.model, self.compare, self.painter = model, compare, painter
    self.limits = limits or Limits()
    self.defaults = defaults or {}
    self.busy = threading.Lock()
    self.upload_dir = tempfile.mkdtemp(prefix="scdm_studio_")
    self.started = time.time()

  # ------------------------------------------------------------------ API

  def info(self) -> dict[str, Any]:
    m = self.model
    t = m.table
    return {
        "size": m.size, "num_classes": m.num_classes, "where": m.where,
        "classes": [{"id": i, "name": n, "color": [int(v) for v in t.colors[i]]}
                    for i, n in enumerate(t.names)],
        "unlabeled_class": t.unlabeled_class,
        "corruptions": list(backend.CORRUPTIONS),
        "defaults": self.defaults,
        "compare": None if self.compare is None else self.compare.where,
        "limits": dataclasses.asdict(self.limits),
        "compile_seconds": dict(m.compile_seconds),
        "paint": None if self.painter is None else {
            "where": self.painter.where, "factor": self.painter.factor,
            "samplers": list(backend.PAINT_SAMPLERS)},
    }

  def progress(self) -> dict[str, Any]:
    p = self.model.progress
    for other in (self.compare, self.painter):
      if other is not None and other.progress.phase != "idle":
        p = other.progress
    elapsed = time.perf_counter() - p.started if p.phase != "idle" else 0.0
    return {"phase": p.phase, "step": p.step, "total": p.total, "elapsed": round(elapsed, 2)}

  def generate(self, req: dict[str, Any]) -> dict[str, Any]:
    m = self.model
    ids = self._ids(req)
    steps, guidance, seed, n = self._settings(req)
    kind = str(req.get("corruption", "none"))
    corrupted = m.corrupt(ids, kind, seed)
    images, timing = m.generate(corrupted, steps=steps, guidance=guidance, seed=seed,
                                num_samples=n)
    out = {"images": [_png_url(x) for x in images], "timing": _timing(timing),
           "corrupted": corrupted.reshape(-1).tolist(), "corruption": kind,
           "changed_pixels": int((corrupted != ids).sum()),
           "label_png": self._label_png(corrupted),
           "label_color_png": _png_url(backend.colorize(corrupted, m))}
    if self.compare is not None and req.get("compare"):
      cimages, ctiming = self.compare.generate(corrupted, steps=steps, guidance=guidance,
                                               seed=seed, num_samples=n)
      out["compare"] = {"images": [_png_url(x) for x in cimages], "timing": _timing(ctiming),
                        "where": self.compare.where}
    return out

  def sdedit(self, req: dict[str, Any]) -> dict[str, Any]:
    m = self.model
    guide = self._image(req, "guide")
    ids = None if req.get("ids") is None else self._ids(req)
    steps, guidance, seed, n = self._settings(req)
    t0 = _number(req, "t0", float, 0.01, 1.0)
    images, timing = m.sdedit(guide, ids, t0=t0, steps=steps, guidance=guidance, seed=seed,
                              num_samples=n)
    return {"images": [_png_url(x) for x in images], "timing": _timing(timing)}

  def masked(self, req: dict[str, Any]) -> dict[str, Any]:
    m = self.model
    source = self._image(req, "source")
    ids = self._ids(req)
    mask = np.asarray(req.get("mask") or [], np.int64)
    if mask.size != m.size * m.size:
      raise UserError(f"mask: expected {m.size * m.size} values (0/1), got {mask.size}; "
                      "select a region first")
    steps, guidance, seed, n = self._settings(req)
    dilate = _number(req, "dilate", int, 0, 8, default=0)
    images, timing = m.masked(source, mask.reshape(m.size, m.size), ids, steps=steps,
                              guidance=guidance, seed=seed, num_samples=n, dilate=dilate)
    return {"images": [_png_url(x) for x in images], "timing": _timing(timing)}

  def upload_label(self, req: dict[str, Any]) -> dict[str, Any]:
    path, name = self._save_upload(req)
    try:
      ids, report = backend.load_label_upload(path, self.model)
    except (ValueError, FileNotFoundError, OSError) as err:
      raise UserError(str(err).replace(path, name)) from None
    report.path = name
    return {"ids": ids.reshape(-1).tolist(), "mode": report.mode,
            "snapped_pixels": report.snapped_pixels,
            "unknown_colors": len(report.unknown_colors),
            "summary": report.summary(self.model.table.names, max_items=5)}

  def upload_image(self, req: dict[str, Any]) -> dict[str, Any]:
    path, name = self._save_upload(req)
    try:
      img = backend.load_image_upload(path, self.model)
    except (ValueError, FileNotFoundError, OSError) as err:
      raise UserError(str(err).replace(path, name)) from None
    return {"image": _png_url(img)}

  def paint_source(self, req: dict[str, Any]) -> dict[str, Any]:
    painter = self._painter()
    raw = self._decode(req.get("data"), "photo")
    with Image.open(io.BytesIO(raw)) as im:
      image = np.asarray(im.convert("RGB"), np.uint8)
    cropped = painter.crop(image)
    return {"image": _png_url(cropped), "width": cropped.shape[1], "height": cropped.shape[0],
            "cropped": cropped.shape != image.shape}

  def paint(self, req: dict[str, Any]) -> dict[str, Any]:
    painter = self._painter()
    source = self._rgb(req, "source")
    with Image.open(io.BytesIO(self._decode(req.get("mask"), "mask"))) as im:
      mask = np.asarray(im.convert("L"), np.uint8)
    exemplar = self._rgb(req, "exemplar")
    steps = _number(req, "steps", int, 1, self.limits.max_steps)
    guidance = round(_number(req, "guidance", float, 0.0, 20.0), 3)
    seed = _number(req, "seed", int, 0, 2**31 - 1)
    sampler = str(req.get("sampler", "pndm"))
    image, timing = painter.paint(source, mask, exemplar, steps=steps, guidance=guidance,
                                  seed=seed, sampler=sampler,
                                  paste_back=bool(req.get("paste_back", False)))
    return {"image": _png_url(image), "timing": _timing(timing)}

  def _painter(self) -> backend.Painter:
    if self.painter is None:
      raise UserError("Paint by Example is off: start the studio with "
                      "--config.serve.paint_weights=<Paint-by-Example folder or export>")
    return self.painter

  # ------------------------------------------------------------------ parsing

  def _rgb(self, req: dict[str, Any], field: str) -> np.ndarray:
    """An image field of any size as (H, W, 3) uint8."""
    with Image.open(io.BytesIO(self._decode(req.get(field), field))) as im:
      return np.asarray(im.convert("RGB"), np.uint8)

  def _settings(self, req: dict[str, Any]) -> tuple[int, float, int, int]:
    lim = self.limits
    steps = _number(req, "steps", int, 1, min(lim.max_steps,
                                               int(self.model.config.diffusion.num_steps)))
    guidance = _number(req, "guidance", float, 1.0, 20.0)
    seed = _number(req, "seed", int, 0, 2**31 - 1)
    n = _number(req, "num_samples", int, 1, lim.max_samples, default=1)
    return steps, round(guidance, 3), seed, n

  def _ids(self, req: dict[str, Any]) -> np.ndarray:
    s, k = self.model.size, self.model.num_classes
    try:
      ids = np.asarray(req.get("ids"), np.int64)
    except (TypeError, ValueError):
      raise UserError("ids: expected a flat list of integer class ids") from None
    if ids.ndim != 1 or ids.size != s * s:
      raise UserError(f"ids: expected {s * s} class ids ({s}x{s}), got {ids.size}")
    if ids.min() < -1 or ids.max() >= k:
      raise UserError(f"ids: class ids must lie in -1..{k - 1}, found "
                      f"{int(ids.min())}..{int(ids.max())}")
    return ids.reshape(s, s).astype(np.int32)

  def _image(self, req: dict[str, Any], field: str) -> np.ndarray:
    raw = self._decode(req.get(field), field)
    with Image.open(io.BytesIO(raw)) as im:
      if im.size != (self.model.size, self.model.size):
        raise UserError(f"{field}: expected a {self.model.size}x{self.model.size} image, got "
                        f"{im.size[0]}x{im.size[1]}")
      return np.asarray(im.convert("RGB"), np.uint8)

  def _decode(self, url: Any, field: str) -> bytes:
    match = _DATA_URL.match(url) if isinstance(url, str) else None
    if match is None:
      raise UserError(f"{field}: expected a PNG or JPEG data URL")
    try:
      raw = base64.b64decode(match.group(2), validate=True)
    except ValueError:
      raise UserError(f"{field}: the base64 data is corrupt") from None
    self._check_pixels(raw, field)
    return raw

  def _check_pixels(self, raw: bytes, name: str) -> None:
    try:
      with Image.open(io.BytesIO(raw)) as im:  # reads the header only
        w, h = im.size
    except (OSError, ValueError):
      raise UserError(f"{name}: not a readable PNG or JPEG image") from None
    if w * h > self.limits.max_upload_pixels:
      raise UserError(f"{name}: {w}x{h} is over the limit of {self.limits.max_upload_pixels} "
                      "pixels; resize it first")

  def _save_upload(self, req: dict[str, Any]) -> tuple[str, str]:
    # The browser's file name is only shown in messages; the file goes to a fixed name.
    name = re.sub(r"[^\w.\- ]", "_", str(req.get("name") or "upload"))[:80]
    raw = self._decode(req.get("data"), name)
    path = os.path.join(self.upload_dir, f"upload_{threading.get_ident()}.png")
    with open(path, "wb") as f:
      f.write(raw)
    return path, name

  def _label_png(self, ids: np.ndarray) -> str | None:
    try:
      ids = backend.label_png_ids(ids, self.model)
    except ValueError:
      return None
    mode_ids = ids.astype(np.uint8 if ids.max(initial=0) < 256 else np.uint16)
    return _png_url(Image.fromarray(mode_ids))


def _number(req: dict[str, Any], field: str, kind: type, lo: float, hi: float,
            default: Any = None) -> Any:
  value = req.get(field, default)
  try:
    value = kind(value)
  except (TypeError, ValueError):
    raise UserError(f"{field}: expected a number in {lo}..{hi}, got {value!r}") from None
  if not lo <= value <= hi:
    raise UserError(f"{field}={value} is outside {lo}..{hi}")
  return value


def _png_url(image: Any) -> str:
  im = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, np.uint8))
  buf = io.BytesIO()
  im.save(buf, format="PNG")
  return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _timing(t: backend.Timing) -> dict[str, Any]:
  return {"seconds": round(t.seconds, 3), "compiled": t.compiled}


class Handler(http.server.BaseHTTPRequestHandler):
  """Routes requests to the `Studio` in `server.studio`."""

  server_version = "scdm-studio"
  _POST = {"/api/generate": "generate", "/api/sdedit": "sdedit", "/api/masked": "masked",
           "/api/label": "upload_label", "/api/image": "upload_image",
           "/api/paint_source": "paint_source", "/api/paint": "paint"}
  _MODEL_CALLS = ("generate", "sdedit", "masked", "paint")

  def log_message(self, fmt, *args):  # quiet: the console shows the URL and errors only
    del fmt, args

  @property
  def studio(self) -> Studio:
    return self.server.studio  # type: ignore[attr-defined]

  def do_GET(self):  # pylint: disable=invalid-name
    path = self.path.split("?", 1)[0]
    if path == "/api/info":
      return self._json(200, self.studio.info())
    if path == "/api/progress":
      return self._json(200, self.studio.progress())
    if path in ("/", "/index.html"):
      return self._static("index.html")
    if path.startswith("/static/"):
      return self._static(path[len("/static/"):])
    return self._json(404, {"error": f"no such page: {path}"})

  def do_POST(self):  # pylint: disable=invalid-name
    path = self.path.split("?", 1)[0]
    method = self._POST.get(path)
    if method is None:
      return self._json(404, {"error": f"no such endpoint: {path}"})
    length = int(self.headers.get("Content-Length") or 0)
    if length > self.studio.limits.max_body_bytes:
      self.close_connection = True
      return self._json(413, {"error": f"request of {length} bytes is over the limit of "
                                       f"{self.studio.limits.max_body_bytes} bytes"})
    try:
      req = json.loads(self.rfile.read(length) or b"{}")
      if not isinstance(req, dict):
        raise ValueError("expected a JSON object")
    except ValueError as err:
      return self._json(400, {"error": f"bad JSON request: {err}"})
    locked = method in self._MODEL_CALLS
    if locked and not self.studio.busy.acquire(blocking=False):
      return self._json(409, {"error": "another generation is running; wait for it"})
    try:
      status, out = 200, getattr(self.studio, method)(req)
    except (UserError, ValueError) as err:  # the loaders' and checks' one-line messages
      status, out = 400, {"error": str(err).splitlines()[0]}
    finally:
      # Released before the reply is sent, so the client's next request finds it free.
      if locked:
        self.studio.busy.release()
    return self._json(status, out)

  def _static(self, name: str):
    ext = os.path.splitext(name)[1]
    files = importlib.resources.files("scdm_jax.studio") / "static"
    if "/" in name or name.startswith(".") or ext not in _STATIC_TYPES:
      return self._json(404, {"error": f"no such file: {name}"})
    res = files / name
    if not res.is_file():
      return self._json(404, {"error": f"no such file: {name}"})
    body = res.read_bytes()
    self.send_response(200)
    self.send_header("Content-Type", _STATIC_TYPES[ext])
    self.send_header("Content-Length", str(len(body)))
    self.send_header("Cache-Control", "no-cache")
    self.end_headers()
    self.wfile.write(body)

  def _json(self, status: int, obj: Any):
    body = json.dumps(obj).encode()
    self.send_response(status)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    self.wfile.write(body)


def make_server(studio: Studio, host: str, port: int) -> http.server.ThreadingHTTPServer:
  """A threading server bound to (host, port) (port 0 = any free port)."""
  srv = http.server.ThreadingHTTPServer((host, port), Handler)
  srv.daemon_threads = True
  srv.studio = studio  # type: ignore[attr-defined]
  return srv
