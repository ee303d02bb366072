"""The README as a script: its builder and publishing blocks run in order at toy size (scripts/readme_check.py)."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_readme_blocks_run_in_order(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "readme_check.py"), "--work", str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    ran = [line for line in proc.stdout.splitlines() if line.startswith("ok ")]
    assert len(ran) >= 10, proc.stdout  # the build, verify, preview, preset and dry-run lines all ran
    assert "0 failed" in proc.stdout.splitlines()[-1]


@pytest.mark.parametrize("line,expect", [
    ("fracgen build --sigma 3.5 --delta 0.1 --L 1000 out/a", ["--L", "8", "--size", "64", "--points", "5000"]),
    ("fracgen build --preset gaussian-noise --delta 0.1 --L 1000 out/g", ["--L", "8", "--size", "64"]),
])
def test_toy_sizes_follow_the_presets_records(line, expect):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import shlex

        from readme_check import toy
    finally:
        sys.path.pop(0)
    words = toy(shlex.split(line))
    joined = " ".join(words)
    for a, b in zip(expect[::2], expect[1::2], strict=True):
        assert f"{a} {b}" in joined, joined
    if "noise" in line:
        assert "--points" not in words  # the noise presets refuse --points
