"""`--mode serve`: the browser painter on a local web server (docs in README "Studio").

Loads the model once (`config.serve.checkpoint`, else the `--mode sample` search in the
workdir) and, when `config.serve.compare_checkpoint` names a second export (e.g. an SDM
model), that one too, and when `config.serve.paint_weights` names Paint-by-Example
weights, those for the exemplar tab; prints the URL and serves until interrupted. Binds to
`config.serve.host` (default 127.0.0.1: this machine only).
"""

from __future__ import annotations

from typing import Any

from absl import logging
import ml_collections

from scdm_jax.studio import backend
from scdm_jax.studio import server


def build(config: ml_collections.ConfigDict, workdir: str | None) -> server.Studio:
  """The studio for `config`: model(s) loaded, limits and page defaults from config.serve."""
  sv = config.serve
  model = backend.load_model(config, str(sv.checkpoint), workdir)
  logging.info("Serving weights from %s.", model.where)
  compare = None
  if sv.compare_checkpoint:
    compare = backend.load_model(config, str(sv.compare_checkpoint), None)
    logging.info("Comparing with %s.", compare.where)
  painter = None
  if sv.paint_weights:
    painter = backend.load_painter(config, str(sv.paint_weights))
    logging.info("Paint by Example from %s.", painter.where)
  limits = server.Limits(max_body_bytes=int(float(sv.max_upload_mb) * (1 << 20)),
                         max_upload_pixels=int(sv.max_upload_pixels))
  defaults: dict[str, Any] = {
      "steps": int(sv.steps), "guidance": float(config.sample.guidance_scale),
      "seed": int(config.sample.seed), "num_samples": int(sv.num_samples), "t0": 0.5,
      "paint": {"steps": int(config.paint.num_steps),
                "guidance": float(config.paint.guidance_scale),
                "sampler": str(config.paint.sampler), "seed": int(config.paint.seed),
                "paste_back": bool(config.paint.paste_back)}}
  return server.Studio(model, compare, limits, defaults, painter)


def run(config: ml_collections.ConfigDict, workdir: str | None) -> None:
  """Serves the painter until Ctrl-C."""
  studio = build(config, workdir)
  host, port = str(config.serve.host), int(config.serve.port)
  try:
    srv = server.make_server(studio, host, port)
  except OSError as err:
    raise ValueError(f"config.serve: cannot listen on {host}:{port} ({err.strerror}); pick "
                     "another --config.serve.port (0 = any free port)") from None
  host, port = srv.server_address[:2]
  # The one line a user (and the browser test) reads: where to point the browser.
  print(f"scdm_jax studio: serving on http://{host}:{port}/ (Ctrl-C to stop)", flush=True)
  try:
    srv.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    srv.server_close()
