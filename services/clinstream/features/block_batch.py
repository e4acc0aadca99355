"""Decodes a batch of pseudonymised telemetry blocks at once: headers by fastavro, every block's samples by numpy.

`blocks.decode_block` decodes one block with fastavro, which makes a Python number per reading, then turns the
lists into numpy columns: that was the largest cost of the features stage. Here a block written with the current
schema has its header read by a prefix schema and its measurement checked and located without decoding
(`core.measurement_bytes`); the sample bytes of the whole batch are then decoded by a few numpy calls (varints
vectorised, floats read in place) and the per-block checks run on the batch's columns. Blocks of an older writer,
sleep episodes and arrays written in several Avro blocks go through `decode_block`, which stays the reference:
for every input the outcome is the same block or the same refusal, except that this reader also refuses what
the measurement check refuses and fastavro reads (over-long numbers, trailing bytes).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastavro import schemaless_reader

from clinstream.core.avro import Codec, DecodeError, prefix_schema
from clinstream.core.constants import AVRO_SINGLE_OBJECT_MAGIC
from clinstream.core.measurement_bytes import NUMPY_DTYPE, MeasurementChecker, MeasurementError, zigzag_varints
from clinstream.core.topics import PSEUDO_TELEMETRY
from clinstream.features.blocks import (
    ACCELERATION_SAMPLES,
    NO_TIMES,
    NO_VALUES,
    RR_SAMPLES,
    STEP_SAMPLES,
    VALUE_FIELD,
    Block,
    BlockError,
    decode_block,
)
from clinstream.features.local_days import zone

_HEADER_LEN = 10
_OFFSETS = "offsets_ms"
Outcome = Block | BlockError | DecodeError


@dataclass(slots=True)
class _Pending:
    """A block whose samples are decoded with the batch: where its columns lie in the batch's arrays."""

    index: int  # in the batch
    block: Block
    at: int  # first reading in the batch's offsets
    kind: str  # the value array's item type: float or double; int for steps (durations, then steps)
    value_at: int  # first value in the batch's values of that kind


class BlockBatchReader:
    """Decodes and validates the PSEUDO_TELEMETRY values of a batch into `Block`s (or the reason each is refused)."""

    def __init__(self, codec: Codec, max_future_skew_ms: int) -> None:
        cat = codec.catalogue
        name = PSEUDO_TELEMETRY.value_schema
        self._codec = codec
        self._skew = max_future_skew_ms
        self._magic = AVRO_SINGLE_OBJECT_MAGIC + cat.fingerprint_of[name]
        self._header = prefix_schema(cat.raw[name], "clinstream.internal.FeatureBlockHeader")
        self._checker = MeasurementChecker(cat.parsed[name]["fields"][-1]["type"])

    def read(self, values: Sequence[bytes]) -> list[Outcome]:
        """Every value's block, or the error that refuses it, in input order."""
        out: list[Outcome | None] = [None] * len(values)
        pending: list[_Pending] = []
        offsets: list[bytes] = []
        ints: list[bytes] = []  # steps: durations then steps, per block
        floats: dict[str, list[bytes]] = {"float": [], "double": []}
        n_offsets = n_ints = 0
        n_floats = {"float": 0, "double": 0}
        for i, value in enumerate(values):
            if value[:_HEADER_LEN] != self._magic:
                out[i] = self._reference(value)
                continue
            try:
                buf = io.BytesIO(value)
                buf.seek(_HEADER_LEN)
                header: dict[str, Any] = schemaless_reader(buf, self._header, None)  # type: ignore[assignment]
                scan = self._checker.scan(value, buf.tell())
            except MeasurementError as err:  # the reference's reason where it refuses too; else the check's
                ref = self._reference(value)
                out[i] = ref if not isinstance(ref, Block) else BlockError(str(err), "measurement")
                continue
            except Exception:  # fastavro raises EOFError, ValueError... on a corrupt header
                out[i] = self._reference(value)
                continue
            if scan is None or not scan.contiguous:  # sleep episodes; arrays in several Avro blocks
                out[i] = self._reference(value)
                continue
            block = Block(
                block_id=header["block_id"], pseudonym=header["participant_pseudonym"],
                device=header["device_pseudonym"], sequence=header["sequence"], start_ms=header["start"],
                utc_offset_min=header["utc_offset_minutes"], received_ms=header["received_at"],
                measurement=scan.name, t_ms=NO_TIMES, values=NO_VALUES, time_zone=header["time_zone"])
            if block.time_zone is not None and zone(block.time_zone) is None:
                out[i] = BlockError("not an IANA time zone", "time_zone")
            elif not -18 * 60 <= block.utc_offset_min <= 18 * 60:
                out[i] = BlockError("utc offset outside +-18 h", "utc_offset_minutes")
            elif scan.name == ACCELERATION_SAMPLES:
                out[i] = block  # no features from acceleration: no samples kept
            elif scan.name == STEP_SAMPLES or scan.name in VALUE_FIELD:
                arrays = scan.arrays
                span = arrays[_OFFSETS]
                offsets.append(value[span.start:span.end])
                if scan.name == STEP_SAMPLES:
                    pending.append(_Pending(i, block, n_offsets, "int", n_ints))
                    for field in ("durations_s", "steps"):
                        span = arrays[field]
                        ints.append(value[span.start:span.end])
                    n_ints += 2 * scan.readings
                else:
                    span = arrays[VALUE_FIELD[scan.name]]
                    pending.append(_Pending(i, block, n_offsets, span.kind, n_floats[span.kind]))
                    floats[span.kind].append(value[span.start:span.end])
                    n_floats[span.kind] += scan.readings
                n_offsets += scan.readings
            else:
                out[i] = BlockError("unknown measurement", "measurement")
        if pending:
            self._columns(pending, offsets, ints, floats, out)
        return [o if o is not None else DecodeError("no outcome") for o in out]

    def _reference(self, value: bytes) -> Outcome:
        try:
            return decode_block(self._codec, value, self._skew)
        except (BlockError, DecodeError) as exc:
            return exc

    def _columns(self, pending: list[_Pending], offset_parts: list[bytes], int_parts: list[bytes],
                 float_parts: dict[str, list[bytes]], out: list[Outcome | None]) -> None:
        """Decode the batch's sample bytes and finish each pending block with its columns and checks."""
        offsets = zigzag_varints(b"".join(offset_parts))
        ints = zigzag_varints(b"".join(int_parts))
        values = {kind: np.frombuffer(b"".join(parts), dtype=NUMPY_DTYPE[kind]).astype(np.float64)
                  for kind, parts in float_parts.items()}
        bounds = np.fromiter((p.at for p in pending), dtype=np.int64, count=len(pending))
        sizes = np.diff(bounds, append=len(offsets))
        starts = np.fromiter((p.block.start_ms for p in pending), dtype=np.int64, count=len(pending))
        t_ms = offsets + np.repeat(starts, sizes)
        nonempty = sizes > 0
        lowest = np.zeros(len(pending), dtype=np.int64)
        highest = np.zeros(len(pending), dtype=np.int64)
        if nonempty.any():
            lowest[nonempty] = np.minimum.reduceat(offsets, bounds[nonempty])
            highest[nonempty] = np.maximum.reduceat(offsets, bounds[nonempty])
        backwards = np.zeros(len(pending), dtype=bool)  # an offset below the one before it in the same block
        falls = np.flatnonzero(np.diff(offsets) < 0) + 1  # where an offset is below the one before it
        if falls.size:
            first = np.zeros(len(offsets), dtype=bool)
            first[bounds[nonempty]] = True  # a block's first offset: the one before it is another block's
            within = falls[~first[falls]]
            backwards[np.searchsorted(bounds, within, side="right") - 1] = True
        for j, p in enumerate(pending):
            block, n, a = p.block, int(sizes[j]), p.at
            if block.measurement == STEP_SAMPLES:
                durations, steps = ints[p.value_at:p.value_at + n], ints[p.value_at + n:p.value_at + 2 * n]
                if n and ((steps < 0).any() or (durations < 0).any()):
                    out[p.index] = BlockError("negative steps or duration", "measurement.steps")
                    continue
                block.values = steps.astype(np.float64)
                block.durations_ms = durations * 1000
            else:
                if block.measurement == RR_SAMPLES and backwards[j]:
                    out[p.index] = BlockError("RR offsets not in beat order", "measurement.offsets_ms")
                    continue
                block.values = values[p.kind][p.value_at:p.value_at + n]
            block.t_ms = t_ms[a:a + n]
            if n:
                if lowest[j] < 0:
                    out[p.index] = BlockError("negative sample offset", "measurement.offsets_ms")
                    continue
                block.max_event_ms = block.start_ms + int(highest[j])
                if block.max_event_ms > block.received_ms + self._skew:
                    out[p.index] = BlockError("event time after receipt (device clock)", "measurement.offsets_ms")
                    continue
            out[p.index] = block

