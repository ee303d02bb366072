"""Jobs built on the trainer: ``repro`` (repro-small), ``sweep`` (grids of build + pre-train + fine-tune), ``bench``
(throughput, ``python -m train.experiments.bench``) and ``toy`` (a toy dataset in fracgen's format, for tests)."""
