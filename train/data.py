"""Where training batches come from: sources for pre-training, datasets for fine-tuning.

The step loop (``train/loop.py``) never knows where batches come from. It asks ``make_source`` for a
*source* and only ever uses the interface below, so the streaming path (this module) and the GPU-resident
path (``train/resident.py``, issue 5) are interchangeable.

Source interface (``Source`` protocol below)
--------------------------------------------
- ``num_classes: int``: classes of the dataset (from ``_info.json`` for fracgen shards).
- ``micro_batch: int``: images per yielded batch on this rank,
  ``cfg.train.batch_size // (world_size * cfg.train.accum_steps)`` (see ``micro_batch_size``).
- ``__len__() -> int``: micro-batches per epoch on this rank; identical on every rank so no rank hangs.
  One epoch is ``ceil(num_samples / global batch)`` optimizer steps, i.e. ``len == steps * accum_steps``.
- ``batches(epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]``: yields micro-batches
  ``start .. len-1`` of ``epoch``, each ``(images, targets)`` already on the source's device:
  ``images`` float32 (B, 3, H, W), per-sample augmented (RandomResizedCrop, flips, RandAugment, random
  erasing as configured in ``cfg.aug``) and normalised with ``cfg.aug.mean`` / ``cfg.aug.std``;
  ``targets`` int64 (B,) hard labels in ``[0, num_classes)``. Deterministic given
  ``(cfg.train.seed, epoch, rank)``: that is what makes ``--resume`` exact (the loop resumes with
  ``batches(epoch, start=micro_batches_done)``). Different ranks draw different samples/augmentations.
- ``close() -> None``: release workers / device memory (may do nothing).

Mixup/cutmix and label smoothing are *not* the source's job: the loop applies timm's ``Mixup`` on the
device to every source's batches (``train.augment.make_mixup``), so both paths share it.

Choosing a source: ``cfg.data.source`` is ``auto | stream | resident``. ``make_source`` imports
``train.resident`` if it exists and calls::

    train.resident.make_resident_source(cfg, device, rank, world_size) -> Source

which raises ``train.errors.DoesNotFit`` when the data exceed its memory budget (``auto`` then logs the
message and streams; ``resident`` lets it propagate) and ``train.errors.TrainError`` for other bad input.
``auto`` streams when ``train.resident`` does not exist yet. The resident path may read its own options from
``cfg.data.resident`` (a free-form dict in the YAML, e.g. ``{memory_budget_gb: 20}``). Useful helpers here
for it: ``read_info`` (validated ``_info.json``), ``shard_urls``, ``micro_batch_size``, ``iter_samples``
(decoded ``(uint8 grey HxW array, label)`` pairs of a list of shards).
"""
