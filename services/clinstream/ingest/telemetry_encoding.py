"""Encodes a request's accepted telemetry blocks as Avro TelemetryBlock values, float columns straight from numpy.

fastavro writes an array by taking one Python number at a time; Avro floats are fixed-width little-endian IEEE 754,
so a block of one value per offset (heart rate, RR, SpO2, skin temperature), whose values validation already holds
as a numpy array, has them written by one `astype(...).tobytes()`; its header and offsets (varints) are still
written by fastavro. The bytes equal fastavro's for the same record (the tests compare them); other blocks (steps,
acceleration, sleep) are written by fastavro whole.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from fastavro import parse_schema, schemaless_writer

from clinstream.core.avro import Codec, prefix_schema
from clinstream.core.constants import AVRO_SINGLE_OBJECT_MAGIC
from clinstream.core.measurement_bytes import NUMPY_DTYPE, zigzag
from clinstream.core.topics import RAW_TELEMETRY
from clinstream.ingest.telemetry_validate import AcceptedBlock

_INT_ARRAY = parse_schema({"type": "array", "items": "int"})
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_END = b"\x00"  # the end of an Avro array


class _Branch:
    """How one measurement branch of one value array (and optional enums) is written from a block's columns."""

    def __init__(self, index: int, record: dict[str, Any]) -> None:
        self.tag = zigzag(index)
        self.fields: list[tuple[str, str, dict[str, bytes]]] = []  # (name, "offsets" | "values" | "enum", symbols)
        for field in record["fields"]:
            ftype = field["type"]
            if field["name"] == "offsets_ms":
                self.fields.append((field["name"], "offsets", {}))
            elif isinstance(ftype, dict) and ftype.get("type") == "enum":
                self.fields.append((field["name"], "enum", {s: zigzag(i) for i, s in enumerate(ftype["symbols"])}))
            else:
                self.value_dtype = NUMPY_DTYPE[ftype["items"]]
                self.fields.append((field["name"], "values", {}))


class TelemetryEncoder:
    """Writes accepted blocks as single-object Avro values of the current TelemetryBlock schema."""

    def __init__(self, codec: Codec) -> None:
        cat = codec.catalogue
        name = RAW_TELEMETRY.value_schema
        self._codec = codec
        self._magic = AVRO_SINGLE_OBJECT_MAGIC + cat.fingerprint_of[name]
        self._header = prefix_schema(cat.raw[name], "clinstream.internal.RawBlockHeader")
        union = cat.parsed[name]["fields"][-1]["type"]
        self._branches: dict[str, _Branch] = {}
        for i, record in enumerate(union):
            kinds = [f["type"] for f in record["fields"]]
            arrays = [t for t in kinds if isinstance(t, dict) and t.get("type") == "array"]
            if (len(arrays) == 2 and record["fields"][0]["name"] == "offsets_ms" and arrays[0]["items"] == "int"
                    and arrays[1]["items"] in NUMPY_DTYPE
                    and all(isinstance(t, dict) and t.get("type") in ("array", "enum") for t in kinds)):
                self._branches[str(record["name"])] = _Branch(i, record)

    def encode(self, blocks: Sequence[AcceptedBlock]) -> list[bytes]:
        """The Avro values of `blocks`, in order; ValueError (or fastavro's error) for a record Avro refuses."""
        columnar = [b.columns for b in blocks
                    if b.columns is not None and b.record["measurement"][0] in self._branches]
        if columnar and np.abs(np.concatenate([c.values for c in columnar])).max(initial=0.0) > _FLOAT32_MAX:
            raise ValueError("a value beyond Avro's float")
        out: list[bytes] = []
        buf = io.BytesIO()
        for block in blocks:
            name, body = block.record["measurement"]
            branch = self._branches.get(name)
            if branch is None or block.columns is None:
                out.append(self._codec.encode_plain(RAW_TELEMETRY.value_schema, block.record))
                continue
            buf.seek(0)
            buf.truncate()
            buf.write(self._magic)
            schemaless_writer(buf, self._header, block.record)
            buf.write(branch.tag)
            for field, role, symbols in branch.fields:
                if role == "offsets":
                    schemaless_writer(buf, _INT_ARRAY, body[field])
                elif role == "values":
                    buf.write(zigzag(block.readings) if block.readings else b"")
                    buf.write(block.columns.values.astype(branch.value_dtype).tobytes())
                    buf.write(_END)
                else:
                    buf.write(symbols[body[field]])
            out.append(buf.getvalue())
        return out
