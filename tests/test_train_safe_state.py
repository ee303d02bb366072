"""train.run.safe_state: a training state round-trips exactly without pickle, and a file of another shape is refused;
no module of train unpickles what it reads."""

import ast
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save

from train.distributed import rng_state, set_rng_state
from train.run import safe_state
from train.run.safe_state import StateError

REPO = Path(__file__).resolve().parents[1]


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def test_a_state_round_trips_exactly(tmp_path):
    tree = {"optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(4, 5)}},
                          "param_groups": [{"betas": (0.9, 0.999), "lr": 1 / 3, "params": [0], "fused": None}]},
            "scaler": {}, "floats": [float("nan"), float("inf"), -float("inf"), 0.1 + 0.2, 1e-310],
            "ints": [2**63, -1, True, False], "text": "ü \"quoted\"", "bf16": torch.ones(2, dtype=torch.bfloat16),
            "__dunder": 1, "rng": [rng_state()], "array": np.arange(6, dtype=np.uint32).reshape(2, 3)}
    (tmp_path / "s").write_bytes(safe_state.dumps(tree))
    assert _same(tree, safe_state.load(tmp_path / "s"))


def test_restored_rng_states_draw_the_same_numbers(tmp_path):
    random.seed(5)
    np.random.seed(6)
    torch.manual_seed(7)
    (tmp_path / "s").write_bytes(safe_state.dumps({"rng": rng_state()}))
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    set_rng_state(safe_state.load(tmp_path / "s")["rng"])
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


def _file(tmp_path: Path, tree_json: str, tensors=None, fmt: str = safe_state.FORMAT) -> Path:
    path = tmp_path / "state.safetensors"
    path.write_bytes(save(tensors or {"t0": torch.zeros(1)}, metadata={"format": fmt, "tree": tree_json}))
    return path


@pytest.mark.parametrize("tree, fragment", [
    ('{"a": {"__tensor__": "t9"}}', "does not hold"),
    ('{"a": {"__tensor__": "t0", "x": 1}}', "with other keys"),
    ('{"a": {"__float__": "1e400"}}', "a float marker"),
    ('{"a": {"__ndarray__": ["uint32", [2, 2], [1, 2, 3]]}}', "with 3 values"),
    ('{"a": {"__ndarray__": ["object", [1], [1]]}}', "not [dtype, shape, values]"),
    ('{"a": {"__items__": [[1, 2, 3]]}}', "not pairs"),
    ('{"a": {"__items__": [[[1], 2]]}}', "not a plain value"),
    ('{"a": {"__tuple__": 5}}', "holding a int"),
    ("[" * 100000 + "]" * 100000, "maximum recursion"),
    ("{not json", "Expecting property name"),
])
def test_a_tree_of_another_shape_is_refused(tmp_path, tree, fragment):
    with pytest.raises(StateError, match=fragment.replace("[", r"\[")):
        safe_state.load(_file(tmp_path, tree))


@pytest.mark.parametrize("content", [b"", b"\x08\x00\x00\x00\x00\x00\x00\x00{}", b"PK\x03\x04" + b"x" * 100])
def test_a_file_that_is_not_whole_is_refused(tmp_path, content):
    path = tmp_path / "state.safetensors"
    path.write_bytes(content)
    for read in (safe_state.check, safe_state.load):
        with pytest.raises(StateError):
            read(path)


def test_a_safetensors_file_of_another_format_is_refused(tmp_path):
    path = _file(tmp_path, json.dumps({"a": 1}), fmt="pt")
    with pytest.raises(StateError, match="not a training state of this trainer"):
        safe_state.check(path)


def _loads_a_pickle(node: ast.AST) -> str | None:
    """What in ``node`` reads a pickle: torch.load without weights_only=True, pickle.load(s), an Unpickler."""
    if not isinstance(node, ast.Call):
        return None
    name = ast.unparse(node.func)
    if name.endswith("torch.load"):
        weights_only = next((k.value for k in node.keywords if k.arg == "weights_only"), None)
        if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
            return name
    if name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "cPickle.load", "dill.load", "joblib.load"):
        return name
    return None


def test_no_module_of_train_unpickles_what_it_reads():
    found = []
    for path in sorted((REPO / "train").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (what := _loads_a_pickle(node)) is not None:
                found.append(f"{path.relative_to(REPO)}:{node.lineno} {what}")
        assert "import pickle" not in path.read_text(), path
    assert found == []
