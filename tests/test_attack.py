"""The bad-input table of benchmarks/attack.py, run against the command line in subprocesses: every case is a
clean refusal (issue 9: one line, exit 2, nothing written or half-written; a failed verify: its report, exit 1)."""

import importlib.util
import sys
from pathlib import Path

ATTACK = Path(__file__).resolve().parents[1] / "benchmarks" / "attack.py"


def test_every_case_is_a_clean_refusal(capsys):
    spec = importlib.util.spec_from_file_location("attack", ATTACK)
    attack = importlib.util.module_from_spec(spec)
    sys.modules["attack"] = attack  # dataclasses look their module up there
    spec.loader.exec_module(attack)
    status = attack.main(["--jobs", "4"])
    out = capsys.readouterr().out
    assert status == 0, "\n".join(line for line in out.splitlines() if not line.startswith("clean"))
    tried = int(out.split("tried ")[-1].split(",")[0])
    assert tried >= 90 and f"tried {tried}, clean {tried}" in out
