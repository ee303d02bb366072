"""train.data.stream: the streaming source, its readers and DataLoader workers."""
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
from train_helpers import (
    REPO,
    STREAM,
    cfg_of,
)

from train.bounds import cpus
from train.data.stream import readers_per_rank
from train.errors import TrainError
from train.experiments.toy import write_toy_dataset


def test_the_stream_reads_only_labels_from_shards_checked_before_step_1(tiny_dataset):
    import torch

    from train.data.samples import shard_samples
    from train.data.stream import StreamSource

    data = StreamSource(cfg_of(tiny_dataset), torch.device("cpu"), 0, 1).data
    assert data.checked == frozenset(data.urls)  # every local shard: read_split checked each sample
    assert all(next(shard_samples(url))["__url__"] in data.checked for url in data.urls)


@pytest.mark.parametrize("seed", [0, 4_294_967_295])
def test_every_allowed_seed_streams(seed, tmp_path):
    from train_helpers import cfg_of

    from train.data.stream import StreamSource, _PrivateRng
    from train.experiments.toy import write_toy_dataset

    data = write_toy_dataset(tmp_path / "ds", num_classes=4, per_class=2, size=32)
    cfg = cfg_of(data, f"train.seed={seed}", "model.img_size=32", "data.workers=0")
    source = StreamSource(cfg, torch.device("cpu"), 0, 1)
    images, targets = next(source.batches(0))
    assert images.shape == (8, 3, 32, 32) and targets.shape == (8,)
    # a seed torch took before keeps its generator (resumed and repeated runs stay bit-identical)
    assert torch.equal(_PrivateRng(2**64 - 1).torch, torch.Generator().manual_seed(2**64 - 1).get_state())


def _pretrain(data: Path, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "train", "pretrain", "--config", "tiny", "--data", str(data), "--out", str(out),
           *[a for o in [*STREAM, "model.img_size=32"] for a in ("--set", o)], *extra]
    return subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float = 120) -> str:
    """The run's stderr once it ends; a run still going after ``timeout`` (a hang) is killed with its workers."""
    try:
        return proc.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        return f"no end in {timeout} s"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def test_readers_are_lowered_to_the_samples_they_can_have():
    assert readers_per_rank(8, 1000, 2) == 8
    assert readers_per_rank(9, 8, 1) == 8 and readers_per_rank(5, 8, 2) == 4
    assert readers_per_rank(4, 3, 2) == 0  # one sample a rank: the main process reads it
    assert readers_per_rank(8, 0, 2) == 8  # counts unknown (a remote set): as asked
    with pytest.raises(TrainError, match="3 samples, fewer than the 4 ranks"):
        readers_per_rank(2, 3, 4)


@pytest.mark.slow
def test_more_workers_than_samples_train_instead_of_spinning(tmp_path):
    """One sample a class and as many workers as there are CPUs (at most what data.workers may be), more than the
    samples: the readers without a sample scanned the shards for ever; they are lowered instead."""
    workers = cpus()
    if workers < 2:
        pytest.skip("needs 2 CPUs: data.workers may not exceed them")
    data = write_toy_dataset(tmp_path / "ds", num_classes=workers - 1 or 1, per_class=1, size=32, shard_size=2)
    proc = _pretrain(data, tmp_path / "run", "--steps", "8", "--set", f"train.batch_size={workers - 1 or 1}",
                     "--set", f"data.workers={workers}")
    err = _finish(proc)
    assert proc.returncode == 0, err[-2000:]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "complete"


@pytest.mark.slow
def test_sigterm_to_the_process_group_with_workers_stops_with_a_checkpoint(tmp_path):
    """torchrun and SLURM signal the whole group: the workers died of it and the run failed without a checkpoint.
    Now the workers leave the signal to the main process, which stops after its step with a checkpoint."""
    data = write_toy_dataset(tmp_path / "ds", num_classes=8, per_class=2, size=32, shard_size=4)
    out = tmp_path / "run"
    proc = _pretrain(data, out, "--steps", "5000", "--set", "train.batch_size=8", "--set", "data.workers=2")
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 240:
            rows = (out / "log.csv").read_text().splitlines()[1:] if (out / "log.csv").is_file() else []
            if len(rows) >= 2 or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        os.killpg(proc.pid, signal.SIGTERM)
    finally:
        err = _finish(proc)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    status = json.loads((out / "run.json").read_text())
    assert status["status"] == "stopped" and status["reason"] == "SIGTERM", status
    assert (out / "state.safetensors").is_file() and (out / "model.safetensors").is_file()


@pytest.mark.slow
def test_a_damaged_shard_met_by_a_worker_ends_the_run_in_one_line_without_hanging(tmp_path):
    """Workers ignore SIGTERM, the signal multiprocessing ends its children with at exit: a run that fails while
    its workers live must still end them (the iterator's own shutdown, then the CLI's), not wait for ever."""

    data = write_toy_dataset(tmp_path / "ds", num_classes=8, per_class=2, size=32, shard_size=4)
    for shard in sorted(data.glob("train-*.tar")):  # every shard: headers kept (checked before step 1), bodies
        raw = bytearray(shard.read_bytes())           # garbled, so only a worker's decode meets it
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".png"):
                    start = member.offset_data + 40  # past the signature and IHDR
                    raw[start:member.offset_data + member.size - 12] = b"Z" * (member.size - 52)
        shard.write_bytes(bytes(raw))
    proc = _pretrain(data, tmp_path / "run", "--steps", "4", "--set", "train.batch_size=8", "--set",
                     "data.workers=2", "--set", "data.verify=false")
    err = _finish(proc)
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2 and len(lines) == 1 and "cannot decode" in lines[0], err[-2000:]
