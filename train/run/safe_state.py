"""A training state stored without pickle: every tensor in one safetensors file, the rest as JSON in its header.

``dumps(tree)`` takes nested dicts, lists and tuples of tensors, numpy arrays, numbers, strings, booleans and None
(an optimizer's, a scheduler's and a scaler's ``state_dict``, the RNG states, counters) and gives the bytes of one
safetensors file: the tensors under generated names, the tree as JSON in the metadata with each tensor replaced by
a marker. ``load(path)`` reads it back exactly (a float's JSON text is its shortest exact repr; NaN and inf are
markers), and nothing in the file can run code: safetensors parses a header and raw tensor bytes, JSON parses
data. Cost: one copy of every tensor in memory while the bytes are made.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

TREE_KEY = "tree"  # the metadata entry holding the JSON tree
FORMAT = "fracgen-train-state-1"  # the metadata's "format": a file of another layout is refused, not guessed at
_MARKS = ("__tensor__", "__tuple__", "__items__", "__float__", "__ndarray__")
_ARRAY_DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float32",
                 "float64")


class StateError(ValueError):
    """The file is not a state this module wrote (damaged, cut short, or made otherwise)."""


def dumps(tree: Any) -> bytes:
    """The bytes of one safetensors file holding ``tree``.

    Raises:
        TypeError: a value of another type (the trainer writes none).
    """
    tensors: dict[str, torch.Tensor] = {}
    encoded = _encode(tree, tensors)
    metadata = {"format": FORMAT, TREE_KEY: json.dumps(encoded, allow_nan=False, separators=(",", ":"))}
    return save(tensors, metadata=metadata)


def check(path: str | Path) -> None:
    """Read the header of ``path`` alone: a whole safetensors file of this format, or ``StateError``."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise StateError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    if meta.get("format") != FORMAT or TREE_KEY not in meta:
        raise StateError(f"not a training state of this trainer (format {meta.get('format')!r})")


def load(path: str | Path) -> Any:
    """The tree ``dumps`` wrote into ``path``, tensors on the CPU.

    Raises:
        StateError: not such a file (one line saying why).
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT or TREE_KEY not in meta:
                raise StateError(f"not a training state of this trainer (format {meta.get('format')!r})")
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - safe_open has no iteration
        return _decode(json.loads(meta[TREE_KEY]), tensors)
    except StateError:
        raise
    except (SafetensorError, OSError, ValueError, RecursionError) as e:
        raise StateError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = value.detach().to("cpu", copy=True).contiguous()  # its own storage: safetensors refuses shared
        return {"__tensor__": name}
    if isinstance(value, np.ndarray):
        if value.dtype.name not in _ARRAY_DTYPES:
            raise TypeError(f"a numpy array of {value.dtype} cannot be stored")
        return {"__ndarray__": [value.dtype.name, list(value.shape), value.ravel().tolist()]}
    if isinstance(value, np.integer | np.floating):
        return _encode(value.item(), tensors)
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in value]}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, tensors) for k, v in value.items()}
        return {"__items__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    raise TypeError(f"a {type(value).__name__} cannot be stored in a training state")


def _decode(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if node is None or isinstance(node, bool | int | float | str):
        return node
    if isinstance(node, list):
        return [_decode(v, tensors) for v in node]
    if not isinstance(node, dict):
        raise StateError(f"a {type(node).__name__} in the tree")
    marks = [k for k in node if k in _MARKS]
    if not marks:
        return {k: _decode(v, tensors) for k, v in node.items()}
    if len(node) != 1:
        raise StateError(f"a marker {marks[0]} with other keys")
    mark, body = next(iter(node.items()))
    if mark == "__tensor__":
        if not isinstance(body, str) or body not in tensors:
            raise StateError(f"the tree names tensor {body!r}, which the file does not hold")
        return tensors[body]
    if mark == "__float__":
        if body not in ("nan", "inf", "-inf"):
            raise StateError(f"a float marker of {body!r}")
        return float(body)
    if mark == "__ndarray__":
        return _array(body)
    items = body if isinstance(body, list) else None
    if items is None:
        raise StateError(f"a {mark} marker holding a {type(body).__name__}")
    if mark == "__tuple__":
        return tuple(_decode(v, tensors) for v in items)
    if not all(isinstance(kv, list) and len(kv) == 2 for kv in items):
        raise StateError("an __items__ marker whose entries are not pairs")
    pairs = [(_decode(k, tensors), _decode(v, tensors)) for k, v in items]
    if not all(isinstance(k, int | str | float | bool) or k is None for k, _ in pairs):
        raise StateError("a mapping key that is not a plain value")
    return dict(pairs)


def _array(body: Any) -> np.ndarray:
    """A numpy array from ``[dtype, shape, flat values]``, its size checked against its shape."""
    if not (isinstance(body, list) and len(body) == 3 and body[0] in _ARRAY_DTYPES and isinstance(body[1], list)
            and all(isinstance(n, int) and n >= 0 for n in body[1]) and isinstance(body[2], list)):
        raise StateError("an __ndarray__ marker that is not [dtype, shape, values]")
    dtype, shape, values = body
    if math.prod(shape) != len(values):
        raise StateError(f"an array of shape {shape} with {len(values)} values")
    try:
        return np.array(values, dtype=dtype).reshape(shape)
    except (TypeError, ValueError, OverflowError) as e:
        raise StateError(f"an array of {dtype} that does not hold its values ({e})") from None
