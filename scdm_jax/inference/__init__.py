"""Inference building blocks shared by the sample, edit, paint and train modes.

* `loading`: find and load the weights to run (export dir or training checkpoint).
* `label_batches`: batches of label maps (class ids) from a dataset split or label PNGs.
* `runner`: pad a host batch to the device count, shard it, and read the rows back.
* `sampler`: the jitted sampling program of a config (ids in, images out).
* `grid`: the periodic sample grid of a training run.
* `editor`: `Editor`, SDEdit and masked editing batched and sharded over a mesh.
* `paint`: `PaintPipeline`, Paint by Example on Stable-Diffusion weights (one program).
"""
