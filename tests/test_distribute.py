"""The worker pool: workers die with their parent whatever signal ended it (else a killed build leaves workers
rendering into a folder nobody owns, holding the caller's pipes open), and a dead worker's unfinished shards are
named in one short line."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import os, sys, time
from fracgen import shard
PIDS = sys.argv[1]
def slow(*args):
    open(os.path.join(PIDS, str(os.getpid())), "w").close()
    time.sleep(600)
shard.run_shard = slow
from fracgen.cli import main
sys.argv = ["fracgen", "build", "--L", "16", "--size", "64", "--points", "2000", "--shard-size", "4",
            "--workers", "2", "--no-progress", sys.argv[2]]
main()
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workers_die_with_their_parent_and_release_its_stdout(tmp_path, sig):
    pids = tmp_path / "pids"
    pids.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT), NUMBA_CACHE_DIR=str(ROOT / ".cache" / "numba"))
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(pids), str(tmp_path / "out")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    while len(list(pids.iterdir())) < 2:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the workers never started"
        time.sleep(0.1)
    workers = [int(p.name) for p in pids.iterdir()]
    os.kill(proc.pid, sig)
    try:
        proc.communicate(timeout=30)  # EOF on stdout/stderr: nothing holds the caller's pipes any more
    except subprocess.TimeoutExpired:
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        raise
    deadline = time.monotonic() + 10
    while any(map(_alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = [p for p in workers if _alive(p)]
    for pid in survivors:  # do not leave them behind when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not survivors


def test_unfinished_shards_are_named_as_ranges():
    """A dead worker of a FractalDB-1k build leaves thousands of shards: the message stays one short line."""
    from fracgen.distribute import ranges

    assert ranges([0, 1, 2, 3, 7, 9, 10]) == "0-3, 7, 9-10"
    assert ranges(list(range(91, 10_000))) == "91-9999"
    assert ranges(list(range(0, 40, 2))) == "0, 2, 4, 6, 8, 10, ... (14 more ranges)"
