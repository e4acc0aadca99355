"""Searches produced records for direct identifiers in every encoding they could take (text, Avro, numbers, dates)."""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from clinstream.core.avro import Codec, DecodeError
from clinstream.core.records import OutRecord

EPOCH = date(1970, 1, 1)
_DAY_MS = 86_400_000
_MIN_BYTES = 4  # shorter byte patterns occur by chance in doubles; those values are checked decoded instead
_MIN_DIGITS = 4


def zigzag_varint(n: int) -> bytes:
    """Avro's encoding of an int or long."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        byte = z & 0x7F
        z >>= 7
        if z:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def avro_string(text: str) -> bytes:
    """Avro's encoding of a string: zig-zag length, then UTF-8."""
    raw = text.encode()
    return zigzag_varint(len(raw)) + raw


def number_encodings(n: int) -> list[bytes]:
    """An integer as Avro int/long, 32/64-bit integers and doubles in both byte orders."""
    out = [zigzag_varint(n), struct.pack("<d", float(n)), struct.pack(">d", float(n)),
           struct.pack("<q", n), struct.pack(">q", n)]
    if -(2**31) <= n < 2**31:
        out += [struct.pack("<i", n), struct.pack(">i", n)]
    return [b for b in out if len(b) >= _MIN_BYTES]


@dataclass
class Identifiers:
    """The direct identifiers of a synthetic person and their samples, and every form they could be found in."""

    texts: list[str]
    dates: list[date] = field(default_factory=list)

    def numbers(self) -> set[int]:
        """Digit runs inside the identifiers (e.g. the 7306021 of P-7306021), dates as days and as ms."""
        found = {int(run) for t in self.texts for run in re.findall(r"\d+", t) if len(run) >= _MIN_DIGITS}
        for d in self.dates:
            days = (d - EPOCH).days
            found |= {days, days * _DAY_MS, int(d.strftime("%Y%m%d"))}
        return found

    def text_forms(self) -> set[str]:
        """Lower-cased text forms: as written, without separators, digit runs, dates in common layouts."""
        forms: set[str] = set()
        for t in self.texts:
            forms |= {t.lower(), re.sub(r"[\s\-_/.]", "", t.lower())}
        forms |= {str(n) for n in self.numbers()}
        for d in self.dates:
            forms |= {d.isoformat(), d.strftime("%d.%m.%Y"), d.strftime("%d/%m/%Y"), d.strftime("%m/%d/%Y")}
        return forms

    def byte_patterns(self) -> set[bytes]:
        """Byte strings whose presence anywhere in a record (key, value, header) is a leak."""
        patterns: set[bytes] = set()
        for form in self.text_forms():
            if len(form) <= _MIN_DIGITS:
                continue  # four characters occur by chance in hex pseudonyms: checked decoded instead
            patterns |= {form.encode(), form.upper().encode(), avro_string(form), form.encode("utf-16-le")}
        for t in self.texts:
            patterns |= {t.encode(), avro_string(t)}
        for n in self.numbers():
            patterns |= set(number_encodings(n))
        return {p for p in patterns if len(p) >= _MIN_BYTES}


def _leaves(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


def _leaf_leaks(leaf: Any, ids: Identifiers, forms: set[str], numbers: set[int]) -> list[str]:
    if isinstance(leaf, str):
        low = leaf.lower()
        return [f"text {leaf!r}" for form in forms if form in low and (len(form) >= _MIN_DIGITS + 1 or form == low)]
    if isinstance(leaf, bool):
        return []
    if isinstance(leaf, int | float):
        return [f"number {leaf!r}"] if leaf in numbers else []
    if isinstance(leaf, datetime):
        return [f"timestamp {leaf!r}"] if leaf.date() in ids.dates else []
    if isinstance(leaf, date):
        return [f"date {leaf!r}"] if leaf in ids.dates else []
    return []


def find_leaks(outputs: Iterable[OutRecord], ids: Identifiers, codec: Codec) -> list[str]:
    """Every identifier found in the outputs: raw byte patterns in keys, values and headers, and decoded
    Avro values (strings, ints, longs, doubles, dates, timestamps) compared with the identifiers' forms."""
    patterns, forms, numbers = ids.byte_patterns(), ids.text_forms(), ids.numbers()
    leaks: list[str] = []
    for o in outputs:
        parts = [o.key or b"", o.value or b"", *(v for _, v in (o.headers or []) if v)]
        leaks += [f"{o.topic}: bytes {p!r}" for part in parts for p in patterns if p in part]
        for part in (o.key, o.value):
            if not part:
                continue
            try:
                decoded = codec.decode(part)
            except DecodeError:
                continue
            for leaf in _leaves(decoded):
                leaks += [f"{o.topic}: {what}" for what in _leaf_leaks(leaf, ids, forms, numbers)]
    return leaks
