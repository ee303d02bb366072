"""The run folder: ``folder`` (every write, the lock, the status, a job's start and end), ``checkpoint`` (the format,
restoring it, what ``--resume`` may change), ``safe_state`` (a training state stored without pickle) and ``log``
(CSV rows, progress, TensorBoard, curves)."""
