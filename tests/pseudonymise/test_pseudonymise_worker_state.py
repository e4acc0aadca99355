"""The worker's consent-table adapter and batch ordering: changelog writes land in the input's partition."""

from __future__ import annotations

from pseudonymise_factories import T0, Feed, block, consent

from clinstream.core.records import InRecord
from clinstream.core.stream_host import TableState
from clinstream.pseudonymise.consent import ConsentEntry
from clinstream.pseudonymise.keys import KeyRing
from clinstream.pseudonymise.processor import PseudonymiseProcessor, order_for_processing
from clinstream.pseudonymise.worker import ConsentTableState, process_by_partition


def test_table_writes_are_queued_for_the_partition_being_processed() -> None:
    host_state = TableState()
    state = ConsentTableState(host_state)
    entry = ConsentEntry(active=True, since_ms=1, updated_at_ms=2, event_id="e", key_version=1)
    state.partition = 3
    state["abc"] = entry
    assert state["abc"] == entry and state.get("zzz") is None and list(state) == ["abc"] and len(state) == 1
    assert list(host_state.snapshot_keys()) == [b"abc"] and host_state.get(b"abc") == entry.to_bytes()
    assert host_state.pending == [(b"abc", entry.to_bytes(), 3)]


def test_an_entry_is_decoded_once_and_read_again_when_its_stored_value_changes() -> None:
    host_state = TableState()
    state = ConsentTableState(host_state)
    granted = ConsentEntry(active=True, since_ms=1, updated_at_ms=2, event_id="e1", key_version=1)
    withdrawn = ConsentEntry(active=False, since_ms=1, updated_at_ms=3, event_id="e2", key_version=1)
    state["abc"] = granted
    assert state.get("abc") is state.get("abc") == granted  # decoded once
    state["abc"] = withdrawn
    assert state["abc"] == withdrawn
    host_state.apply(0, b"abc", granted.to_bytes())  # a restore from the changelog
    assert state.get("abc") == granted
    host_state.drop([0])
    assert state.get("abc") is None and "abc" not in state


def test_each_partition_is_processed_separately_with_its_own_changelog_partition() -> None:
    host_state = TableState()
    state = ConsentTableState(host_state)
    proc = PseudonymiseProcessor("site-a", KeyRing(1, {1: b"k" * 32}), state)
    f0, f2 = Feed(partition=0), Feed(partition=2)
    recs = [f2.event(consent(pid="P-2", at=T0)), f0.event(consent(pid="P-0", at=T0)), f2.block(block(pid="P-2")),
            f0.block(block(pid="P-0"))]
    results = process_by_partition(proc, state, recs)
    assert [p for p, _ in results] == [0, 2]
    assert all(r.counters["forwarded_telemetry"] == 1 for _, r in results)
    assert sorted(p for _, _, p in host_state.pending) == [0, 2]


def test_topics_of_one_partition_are_merged_by_timestamp_keeping_offset_order() -> None:
    def rec(topic: str, offset: int, ts: int) -> InRecord:
        return InRecord(topic, 1, offset, None, b"", ts)

    tel = [rec("t", 0, 10), rec("t", 1, 30), rec("t", 2, 20)]  # a producer clock step back stays in order
    bio = [rec("b", 0, 15), rec("b", 1, 25)]
    merged = order_for_processing(tel + bio)[1]
    assert [(r.topic, r.offset) for r in merged] == [("t", 0), ("b", 0), ("b", 1), ("t", 1), ("t", 2)]
