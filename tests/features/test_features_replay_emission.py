"""A processor that does not emit open windows after each batch (a replay's) emits every window once: when it turns
final, or at the end with `emit_open_windows`; and the rows a store keeps of it are those of the live processor.
A processor that keeps its feature records (a replay's, for the store's sink in process) hands over exactly what
Avro would decode of the bytes it would have encoded."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest
from features_factories import (
    decoded,
    erasure,
    feature_key,
    generate,
    in_records,
    latest,
    records_of,
)

from clinstream.core.avro import get_codec
from clinstream.core.records import InRecord, OutRecord
from clinstream.core.topics import ERASURE
from clinstream.features.config import FeatureSettings
from clinstream.features.processor import FeatureProcessor
from clinstream.features.state import parse_window_key, partition_of, window_key
from clinstream.features.windows import WindowKind

SHORT = FeatureSettings(horizon_minute_min=3, horizon_hour_min=30)  # windows turn final within the data


def _end(proc: FeatureProcessor) -> list[OutRecord]:
    """Every open window's record at the end of a run, in one chunk."""
    return [o for result in proc.emit_open_windows(10**9) for o in result.out]


def _run(records: Sequence[InRecord], batch: int, version: int, emit_open: bool) -> list[OutRecord]:
    proc = FeatureProcessor("site-t", {}, SHORT, version, emit_open=emit_open)
    out: list[OutRecord] = []
    for i in range(0, len(records), batch):
        out.extend(proc.process(records[i:i + batch]).out)
    if not emit_open:
        out.extend(_end(proc))
    return out


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("batch", [7, 500])
def test_each_window_is_emitted_once_and_the_stored_rows_are_the_live_ones(version: int, batch: int) -> None:
    data = generate(n_participants=3, hours=9, seed=23)
    records = in_records(data.blocks)
    live = _run(records, batch, version, emit_open=True)
    replayed = _run(records, batch, version, emit_open=False)
    emitted = Counter(feature_key(rec) for rec, _ in decoded(replayed))
    assert emitted and max(emitted.values()) == 1
    kept = latest(live)
    assert latest(replayed) == kept  # byte for byte
    finals = sum(rec["is_final"] for rec, _ in decoded(replayed))
    assert 0 < finals < len(kept)  # some windows turned final during the run, the others were emitted at its end
    # late blocks and dead letters are not windows: the same either way
    others = [o for o in live if not o.topic.endswith(".feature.wearable.v1")]
    assert [o for o in replayed if not o.topic.endswith(".feature.wearable.v1")] == others


def test_an_erased_participant_has_no_window_emitted_at_the_end() -> None:
    data = generate(n_participants=2, hours=3, seed=5)
    gone = data.participants[0]
    erase: list[InRecord] = records_of([(ERASURE.name("site-t"), gone, erasure(gone))])
    proc = FeatureProcessor("site-t", {}, SHORT, 2, emit_open=False)
    half = len(data.blocks) // 2
    out: list[OutRecord] = [*proc.process(in_records(data.blocks[:half])).out]
    out.extend(proc.process(erase).out)
    out.extend(proc.process(in_records(data.blocks[half:])).out)
    end = _end(proc)
    people: set[Any] = {rec["participant_pseudonym"] for rec, _ in decoded(end)}
    assert people == {data.participants[1]}


@pytest.mark.parametrize("chunk", [1, 7, 60])
def test_the_end_comes_in_chunks_of_at_most_chunk_windows_and_together_is_the_whole_end(chunk: int) -> None:
    data = generate(n_participants=3, hours=5, seed=23)
    records = [r for k, who in enumerate(data.participants)  # a partition each: chunks span partitions
               for r in in_records([b for b in data.blocks if b.participant == who], partition=k)]
    proc = FeatureProcessor("site-t", {}, SHORT, 2, emit_open=False)
    whole = FeatureProcessor("site-t", {}, SHORT, 2, emit_open=False)
    for p in (proc, whole):
        p.process(records)
    end = _end(whole)
    chunks = [result.out for result in proc.emit_open_windows(chunk)]
    assert len(end) > 60  # so that every chunk size splits it
    assert all(len(c) == chunk for c in chunks[:-1]) and 0 < len(chunks[-1]) <= chunk
    assert [o for c in chunks for o in c] == end
    assert len({o.key for o in end}) == 3  # every participant's (partition's) windows in it
    partition = {parse_window_key(k)[1]: parse_window_key(k)[0] for k in whole.state.mapping if k.startswith("w/")}
    emitted = [window_key(partition[r["participant_pseudonym"]], r["participant_pseudonym"], r["feature_set"],
                          WindowKind(r["window"]), int(r["window_start"].timestamp() * 1000)) for r, _ in decoded(end)]
    assert emitted == sorted(emitted, key=lambda k: (partition_of(k), k))  # partition by partition, in key order


@pytest.mark.parametrize("version", [1, 2])
def test_kept_records_are_what_avro_decodes_of_the_encoded_ones(version: int) -> None:
    data = generate(n_participants=3, hours=9, seed=31)  # every measurement kind, local days in three zones
    records = in_records(data.blocks)
    encoded = FeatureProcessor("site-t", {}, SHORT, version)
    kept = FeatureProcessor("site-t", {}, SHORT, version, keep_records=True)
    codec = get_codec()
    n = 0
    for i in range(0, len(records), 400):
        want, got = encoded.process(records[i:i + 400]).out, kept.process(records[i:i + 400]).out
        assert [(o.topic, o.key) for o in got] == [(o.topic, o.key) for o in want]
        for w, g in zip(want, got, strict=True):
            if g.record is None:  # late blocks, dead letters, sample features: bytes as before
                assert g == w
                continue
            n += 1
            assert g.value == b""
            decoded = codec.decode_plain(w.value)
            assert g.record == decoded
            assert {k: type(v) for k, v in g.record.items()} == {k: type(v) for k, v in decoded.items()}
            assert {type(v) for v in g.record["values"].values()} == {float}
    assert n > 1000
