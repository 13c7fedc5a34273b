"""The studio: a browser painter for label maps over a local web server (`--mode serve`).

`backend` is the one seam to the sampler, editor, Paint-by-Example pipeline and loaders;
`server` is the HTTP/JSON layer; `static/` holds the page. Only `scdm_jax.modes.serve`
imports this package.
"""
