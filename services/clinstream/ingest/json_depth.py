"""The nesting depth of a JSON text, counted on its bytes with numpy (brackets inside strings do not count)."""

from __future__ import annotations

from typing import Any

import numpy as np

_QUOTE = ord('"')
_BACKSLASH = ord("\\")
_OPEN = (ord("["), ord("{"))
_CLOSE = (ord("]"), ord("}"))


def _unescaped_quotes(data: np.ndarray[Any, np.dtype[np.uint8]]) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """Mask of the quotes that open or close a string: those after an even run of backslashes."""
    quotes: np.ndarray[Any, np.dtype[np.bool_]] = data == _QUOTE
    backslash: np.ndarray[Any, np.dtype[np.bool_]] = data == _BACKSLASH
    if not backslash.any():
        return quotes
    counted = np.cumsum(backslash, dtype=np.int64)
    run_start = np.maximum.accumulate(np.where(backslash, 0, counted))
    run = counted - run_start  # backslashes ending at each position
    before = np.concatenate(([0], run[:-1]))
    unescaped: np.ndarray[Any, np.dtype[np.bool_]] = quotes & (before % 2 == 0)
    return unescaped


def json_depth(text: bytes) -> int:
    """The deepest nesting of arrays and objects in a JSON text (0 for a scalar)."""
    if not text:
        return 0
    data = np.frombuffer(text, dtype=np.uint8)
    in_string = (np.cumsum(_unescaped_quotes(data), dtype=np.int64) % 2).astype(bool)
    step = np.zeros(data.size, dtype=np.int64)
    outside = ~in_string
    step[np.isin(data, _OPEN) & outside] = 1
    step[np.isin(data, _CLOSE) & outside] = -1
    return int(np.cumsum(step).max(initial=0))


def deeper_than(text: bytes, limit: int) -> bool:
    """Whether a JSON text nests more than `limit` levels (cheap when it has few brackets at all)."""
    if text.count(b"[") + text.count(b"{") <= limit:
        return False
    return json_depth(text) > limit
