"""The run folder: ``folder`` (lock, status, the job around the loop), ``checkpoint`` (the format, resume identity)
and ``log`` (CSV rows, progress, TensorBoard, curves)."""
