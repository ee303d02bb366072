"""The README as a script: its builder and publishing blocks run in order at toy size (scripts/readme_check.py)."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the README's blocks, each command in a process of its own

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


def _script(*args, **kwargs):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "readme_check.py"), *args], capture_output=True,
                          text=True, timeout=300, **kwargs)


def test_a_work_folder_holding_files_is_refused_and_left_alone(tmp_path):
    """`--work .` in a user's folder would overwrite their photo.jpg and `--overwrite` their out/1p-frac."""
    (tmp_path / "photo.jpg").write_bytes(b"my holiday")
    proc = _script("--work", str(tmp_path))
    assert proc.returncode == 2 and "not empty" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["photo.jpg"]
    assert (tmp_path / "photo.jpg").read_bytes() == b"my holiday"


def test_odd_readme_blocks_are_reported_not_crashed_on(tmp_path):
    """An empty python block, `--L=N` spelled with '=', `--preset` as the last word and a line that is not valid
    shell: a line each, no traceback; the '=' form is capped like the other (a full-size build would take minutes),
    the broken line fails rather than being skipped."""
    readme = tmp_path / "README.md"
    readme.write_text("```\nmake demo\n```\n\n```python\n```\n\n```\nfracgen build --L=100000 --points=100000 "
                      "out/eq\nfracgen build out/x --preset\nfracgen build 'out/unclosed\n```\n")
    work = tmp_path / "work"
    proc = _script("--readme", str(readme), "--work", str(work))
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert "ok       fracgen build --size 64 --L 8 --points 5000 out/eq" in proc.stdout, proc.stdout
    assert "FAILED   fracgen build --points 5000 --size 64 out/x --preset" in proc.stdout, proc.stdout
    assert "FAILED   fracgen build 'out/unclosed (not a valid shell line" in proc.stdout, proc.stdout
    assert "ok       fracgen verify out/1p-frac" in proc.stdout, proc.stdout  # the demo's recipe, from the Makefile
    assert proc.stdout.strip().splitlines()[-1].endswith("2 failed")
