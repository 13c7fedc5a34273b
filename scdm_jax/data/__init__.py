"""Input pipelines, the procedural dataset, the noisy-label benchmark and label I/O."""
