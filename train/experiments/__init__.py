"""Jobs built on the trainer: ``repro`` (repro-small), ``sweep`` (grids of build + pre-train + fine-tune), ``bench``
(throughput, ``python -m train.experiments.bench``) and ``toy`` (toy pre-training and fine-tuning data, generated
on the spot: tests and the offline quick start)."""
