"""The `--mode`s of `python -m scdm_jax.main`: one module per mode, each `run(config, workdir)`.

Only `scdm_jax.main` imports these modules (through its table of modes); a mode imports the
layers below it (inference, training, recipe, state, diffusion, models, data, io), never
another mode. To add a mode, add a module here and one entry to `main.MODES`.
"""
