"""Checks and locates a telemetry block's measurement bytes (Avro binary) without decoding readings into Python objects.

The pseudonymiser copies a block's measurement bytes unchanged and only has to know that they are one well-formed
measurement record, read exactly to their end, with arrays of equal length (and how many readings they hold).
fastavro answers that by building a Python number per reading, which was most of the stage's CPU; here an
array of varints is matched by one compiled regular expression (in C) and a fixed-width array is skipped by its
length. Branches with fields other than arrays of int/long/float/double and enums (sleep episodes) are left to the
caller (`scan` returns None).

`scan` also says where each array's items lie, so a reader can turn a whole batch's arrays into numpy columns at
once (`zigzag_varints` for ints and longs, `numpy.frombuffer` for floats and doubles) instead of making one Python
object per reading.

It is at least as strict as fastavro: whatever it accepts, fastavro decodes to the end with the same array
lengths; it also refuses varints longer than their type allows (more than 5 bytes for an int, 10 for a long) and
ints or longs outside their range, which fastavro would read as bigger numbers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

_MAX_BYTES = {"int": 5, "long": 10}
_WIDTH = {"float": 4, "double": 8}
_ENUM = "enum"
NUMPY_DTYPE = {"float": "<f4", "double": "<f8"}  # the little-endian IEEE 754 items of Avro float and double arrays


class MeasurementError(ValueError):
    """Measurement bytes that are not one well-formed measurement record."""


Layout = tuple[tuple[str, str, int], ...]  # per field: (name, array item type or "enum", enum symbol count or 0)


class ArraySpan(NamedTuple):
    """One array field: its item type, item count and, if written as one Avro block, its items' bytes [start, end)."""

    kind: str  # int, long, float or double
    items: int
    start: int  # -1 if the array was written in several blocks
    end: int


class Scan(NamedTuple):
    """A well-formed measurement record: its union branch's full name, its readings and its arrays by field name."""

    name: str
    readings: int
    arrays: dict[str, ArraySpan]
    contiguous: bool  # every array's items lie in one run of bytes


def _layout(record: Any) -> Layout | None:
    """The checkable layout of a measurement record schema, or None if a field is of another type."""
    fields: list[tuple[str, str, int]] = []
    for field in record["fields"]:
        ftype = field["type"]
        items = ftype.get("items") if isinstance(ftype, dict) and ftype.get("type") == "array" else None
        if isinstance(items, str) and (items in _MAX_BYTES or items in _WIDTH):
            fields.append((field["name"], items, 0))
        elif isinstance(ftype, dict) and ftype.get("type") == _ENUM:
            fields.append((field["name"], _ENUM, len(ftype["symbols"])))
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
        self._names = [str(branch["name"]) for branch in union]

    def readings(self, data: bytes) -> int | None:
        """Readings (the common array length) of well-formed measurement bytes; None if their branch is not
        checkable here; MeasurementError if they are not one measurement record read exactly to the end."""
        scan = self.scan(data)
        return None if scan is None else scan.readings

    def scan(self, data: bytes, pos: int = 0) -> Scan | None:
        """Check the measurement record from `pos` to the end of `data`; None if its branch is not checkable here;
        MeasurementError if the bytes are not one well-formed measurement record read exactly to their end."""
        branch, pos = _varint(data, pos, _MAX_BYTES["long"])
        if not 0 <= branch < len(self._layouts):
            raise MeasurementError("unknown measurement type")
        layout = self._layouts[branch]
        if layout is None:
            return None
        if layout and layout[0][1] != _ENUM:  # the usual shape: one Avro block per array, all of the first's count
            count, _ = _varint(data, pos, _MAX_BYTES["long"])
            if 0 < count <= len(data) - pos:  # every item takes a byte at least
                match = _record_pattern(layout, count).fullmatch(data, pos)
                if match is not None:
                    return Scan(self._names[branch], count, {
                        name: ArraySpan(kind, count, *match.span(name))
                        for name, kind, _ in layout if kind != _ENUM}, contiguous=True)
        return self._scan_fields(branch, layout, data, pos)

    def _scan_fields(self, branch: int, layout: Layout, data: bytes, pos: int) -> Scan:
        """`scan` field by field: any array block structure, and the precise reason for bytes it refuses."""
        arrays: dict[str, ArraySpan] = {}
        for name, kind, symbols in layout:
            if kind == _ENUM:
                index, pos = _varint(data, pos, _MAX_BYTES["int"])
                if not 0 <= index < symbols:
                    raise MeasurementError("enum symbol out of range")
            else:
                arrays[name], pos = _array(data, pos, kind)
        if pos != len(data):
            raise MeasurementError("trailing bytes after the measurement")
        lengths = {span.items for span in arrays.values()}
        if len(lengths) > 1:
            raise MeasurementError("measurement arrays differ in length")
        return Scan(self._names[branch], lengths.pop() if lengths else 0, arrays,
                    contiguous=all(span.start >= 0 for span in arrays.values()))


def _array(data: bytes, pos: int, kind: str) -> tuple[ArraySpan, int]:
    """The array at `pos` (every block of it) and the position after its end marker."""
    total = blocks = 0
    start = end = pos
    while True:
        count, pos = _varint(data, pos, _MAX_BYTES["long"])
        if count == 0:
            return ArraySpan(kind, total, start if blocks <= 1 else -1, end), pos
        if count < 0:  # a block with its size in bytes
            count = -count
            _, pos = _varint(data, pos, _MAX_BYTES["long"])
        start = pos
        width = _WIDTH.get(kind)
        if width is not None:
            pos += count * width
            if pos > len(data):
                raise MeasurementError("measurement bytes end inside an array")
        else:
            pos = _skip_varints(data, pos, count, kind)
        end = pos
        total += count
        blocks += 1


def zigzag_varints(data: bytes) -> npt.NDArray[np.int64]:
    """The numbers of a run of zigzag varints (ints or longs as `scan` accepts them), decoded at once in numpy."""
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size == 0:
        return np.empty(0, dtype=np.int64)
    if raw[-1] >= 0x80:
        raise ValueError("the bytes end inside a number")
    ends = np.flatnonzero(raw < 0x80)  # the last byte of each number
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    byte_in_number = np.arange(raw.size) - np.repeat(starts, ends - starts + 1)
    parts = (raw & 0x7F).astype(np.uint64) << (byte_in_number.astype(np.uint64) * np.uint64(7))
    unsigned = np.add.reduceat(parts, starts)  # the parts' bits do not overlap: their sum is their union
    return (unsigned >> np.uint64(1)).astype(np.int64) ^ -(unsigned & np.uint64(1)).astype(np.int64)


# One varint of each type, strictly: up to 4 (int) or 9 (long) continuation bytes (high bit set), then a last byte
# that carries only bits of the type. Continuation and last bytes are told apart by the high bit, so a run of
# varints splits into items one way only and a repeated match never backtracks far.
_VARINT = {"int": rb"(?:[\x80-\xff]{0,3}[\x00-\x7f]|[\x80-\xff]{4}[\x00-\x0f])",
           "long": rb"(?:[\x80-\xff]{0,8}[\x00-\x7f]|[\x80-\xff]{9}[\x00\x01])"}


@lru_cache(maxsize=1024)
def _record_pattern(layout: Layout, count: int) -> re.Pattern[bytes]:
    """A pattern matching a whole measurement record whose arrays each hold `count` items in one Avro block
    (a named group per array's items), compiled once per layout and count in use. Bytes it does not match are
    scanned field by field, which accepts every other valid form and names the reason for a refusal."""
    header = re.escape(zigzag(count))
    parts: list[bytes] = []
    for name, kind, symbols in layout:
        if kind == _ENUM:  # an index below `symbols`: one byte each while the zigzag code stays below 0x80
            codes = [zigzag(i) for i in range(symbols)]
            parts.append(b"(?:" + b"|".join(re.escape(c) for c in codes) + b")")
        elif kind in _WIDTH:
            parts.append(header + b"(?P<%s>[\x00-\xff]{%d})\x00" % (name.encode(), count * _WIDTH[kind]))
        else:
            parts.append(header + b"(?P<%s>%s{%d})\x00" % (name.encode(), _VARINT[kind], count))
    return re.compile(b"".join(parts), re.DOTALL)


def zigzag(number: int) -> bytes:
    """The Avro (zigzag varint) encoding of an int or long."""
    code = (number << 1) ^ (number >> 63)
    out = bytearray()
    while code >= 0x80:
        out.append((code & 0x7F) | 0x80)
        code >>= 7
    out.append(code)
    return bytes(out)


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
