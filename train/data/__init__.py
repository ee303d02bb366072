"""Where batches come from: the datasets the trainer reads and the sources that feed its step loop.

- ``source``: the contract every source keeps (``Source``), the micro-batch split, the one-line error of a worker.
- ``shards``: a fracgen dataset on disk: ``_info.json``, the shard plan and the one checked read of every shard
  (``read_split``: a build with ``fracgen verify``'s own checks), what identifies a dataset for ``--resume``.
- ``samples``: one shard's samples and one sample's checks (a build's as verify's, any other dataset's lighter).
- ``remote``: shards and ``_info.json`` over HTTP(S), every read under a time limit and a total budget.
- ``stream``: the streaming source (timm transforms in DataLoader workers).
- ``recipe``: a recipe as the data, rendered while training (by the stream's workers, or once for the resident
  source), and its fresh patch masks.
- ``resident``: the device-resident source, ``device_augment`` and ``rand_augment`` its batched augmentation.
- ``pretraining``: which source a pre-training gets, and its evaluation set.
- ``fetch``: fine-tuning data made local (torchvision's CIFAR, tarballs); ``downstream``: its splits and source.
"""
