"""Checks a telemetry block's measurement bytes (Avro binary) without decoding its readings into Python objects.

The pseudonymiser copies a block's measurement bytes unchanged and only has to know that they are one well-formed
measurement record, read exactly to their end, with arrays of equal length (and how many readings they hold).
fastavro answers that by building a Python number per reading, which was most of the stage's CPU; here an
array of varints is matched by one compiled regular expression (in C) and a fixed-width array is skipped by its
length. Branches with fields other than
arrays of int/long/float/double and enums (sleep episodes) are left to the caller (`readings` returns None).

It is at least as strict as fastavro: whatever it accepts, fastavro decodes to the end with the same array
lengths; it also refuses varints longer than their type allows (more than 5 bytes for an int, 10 for a long) and
ints or longs outside their range, which fastavro would read as bigger numbers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

_MAX_BYTES = {"int": 5, "long": 10}
_WIDTH = {"float": 4, "double": 8}
_ENUM = "enum"


class MeasurementError(ValueError):
    """Measurement bytes that are not one well-formed measurement record."""


Layout = tuple[tuple[str, int], ...]  # per field: (array item type, or "enum"; enum symbol count, else 0)


def _layout(record: Any) -> Layout | None:
    """The checkable layout of a measurement record schema, or None if a field is of another type."""
    fields: list[tuple[str, int]] = []
    for field in record["fields"]:
        ftype = field["type"]
        items = ftype.get("items") if isinstance(ftype, dict) and ftype.get("type") == "array" else None
        if isinstance(items, str) and (items in _MAX_BYTES or items in _WIDTH):
            fields.append((items, 0))
        elif isinstance(ftype, dict) and ftype.get("type") == _ENUM:
            fields.append((_ENUM, len(ftype["symbols"])))
        else:
            return None
    return tuple(fields)


def _varint(buf: bytes, pos: int, max_bytes: int) -> tuple[int, int]:
    """The zigzag-decoded varint at `pos` and the position after it."""
    shift = value = 0
    for i in range(max_bytes):
        if pos + i >= len(buf):
            raise MeasurementError("measurement bytes end inside a number")
        byte = buf[pos + i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (value >> 1) ^ -(value & 1), pos + i + 1
        shift += 7
    raise MeasurementError("a number is longer than its type allows")


class MeasurementChecker:
    """Checks measurement bytes against one measurement union (the last field of the telemetry block schemas)."""

    def __init__(self, union: Sequence[Any]) -> None:
        self._layouts = [_layout(branch) for branch in union]

    def readings(self, data: bytes) -> int | None:
        """Readings (the common array length) of well-formed measurement bytes; None if their branch is not
        checkable here; MeasurementError if they are not one measurement record read exactly to the end."""
        branch, pos = _varint(data, 0, _MAX_BYTES["long"])
        if not 0 <= branch < len(self._layouts):
            raise MeasurementError("unknown measurement type")
        layout = self._layouts[branch]
        if layout is None:
            return None
        lengths: set[int] = set()
        for kind, symbols in layout:
            if kind == _ENUM:
                index, pos = _varint(data, pos, _MAX_BYTES["int"])
                if not 0 <= index < symbols:
                    raise MeasurementError("enum symbol out of range")
                continue
            n, pos = self._array(data, pos, kind)
            lengths.add(n)
        if pos != len(data):
            raise MeasurementError("trailing bytes after the measurement")
        if len(lengths) > 1:
            raise MeasurementError("measurement arrays differ in length")
        return lengths.pop() if lengths else 0

    @staticmethod
    def _array(data: bytes, pos: int, kind: str) -> tuple[int, int]:
        """Items of the array at `pos` (every block of it) and the position after its end marker."""
        total = 0
        while True:
            count, pos = _varint(data, pos, _MAX_BYTES["long"])
            if count == 0:
                return total, pos
            if count < 0:  # a block with its size in bytes
                count = -count
                _, pos = _varint(data, pos, _MAX_BYTES["long"])
            width = _WIDTH.get(kind)
            if width is not None:
                pos += count * width
                if pos > len(data):
                    raise MeasurementError("measurement bytes end inside an array")
            else:
                pos = _skip_varints(data, pos, count, kind)
            total += count


# One varint of each type, strictly: up to 4 (int) or 9 (long) continuation bytes (high bit set), then a last byte
# that carries only bits of the type. Continuation and last bytes are told apart by the high bit, so a run of
# varints splits into items one way only and a repeated match never backtracks far.
_VARINT = {"int": rb"(?:[\x80-\xff]{0,3}[\x00-\x7f]|[\x80-\xff]{4}[\x00-\x0f])",
           "long": rb"(?:[\x80-\xff]{0,8}[\x00-\x7f]|[\x80-\xff]{9}[\x00\x01])"}


@lru_cache(maxsize=512)
def _varints(kind: str, count: int) -> re.Pattern[bytes]:
    """A pattern matching exactly `count` varints of `kind` (compiled once per array length in use)."""
    return re.compile(_VARINT[kind] + b"{%d}" % count)


def _skip_varints(data: bytes, pos: int, count: int, kind: str) -> int:
    """The position after `count` varints of `kind` (int or long) starting at `pos`, each checked for its type."""
    if count > len(data) - pos:  # each takes a byte at least (and a pattern's repeat count is bounded)
        raise MeasurementError("measurement bytes end inside an array")
    match = _varints(kind, count).match(data, pos)
    if match is None:
        raise MeasurementError("an array's numbers are cut short, too long or out of their type's range")
    return match.end()
