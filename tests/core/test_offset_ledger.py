"""The committed frontier of a partition never passes an offset whose output was not processed."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from clinstream.core.offset_ledger import Frontier, contiguous_run, offsets_of
from clinstream.core.records import InRecord


def test_frontier_moves_only_over_contiguous_processed_offsets() -> None:
    f = Frontier(10)
    assert not f.add([12, 13])  # 10 and 11 missing: nothing to commit
    assert f.next_offset == 10
    assert f.add([10])
    assert f.next_offset == 11
    assert f.add([11, 11, 9])  # duplicates and already-committed offsets are harmless
    assert f.next_offset == 14 and not f.done


def test_skip_to_moves_past_offsets_that_no_longer_exist() -> None:
    f = Frontier(5)
    f.add([8, 9, 12])
    f.skip_to(8)
    assert f.next_offset == 10 and f.done == {12}
    f.skip_to(3)  # never backwards
    assert f.next_offset == 10


@given(start=st.integers(0, 1000), batches=st.lists(st.lists(st.integers(0, 60), max_size=20), max_size=20))
def test_frontier_is_the_first_unprocessed_offset(start: int, batches: list[list[int]]) -> None:
    f = Frontier(start)
    seen: set[int] = set()
    for batch in batches:
        offsets = [start + o - 5 for o in batch]  # some below the start, in any order, with duplicates
        f.add(offsets)
        seen.update(offsets)
        expected = start
        while expected in seen:
            expected += 1
        assert f.next_offset == expected
        assert all(o > expected for o in f.done)


def test_offsets_of_groups_by_topic_partition() -> None:
    recs = [InRecord("a", 0, 5, None, b"", 0), InRecord("a", 1, 2, None, b"", 0), InRecord("a", 0, 6, None, b"", 0)]
    assert offsets_of(recs) == {("a", 0): [5, 6], ("a", 1): [2]}


@given(st.lists(st.integers(0, 40), max_size=60), st.integers(0, 20))
def test_admitted_records_continue_the_frontier_without_a_gap(offsets: list[int], start: int) -> None:
    """Whatever faust delivers (drops, duplicates, any order), a partition is processed only in offset order."""
    records = [InRecord("t", 0, o, None, b"") for o in offsets]
    run, gap = contiguous_run(records, start)
    assert [r.offset for r in run] == list(range(start, start + len(run)))
    following = start + len(run)
    assert gap == any(o > following for o in offsets)
    assert following not in offsets


def test_a_seek_runs_in_the_consumer_thread_and_resets_faust_read_offset() -> None:
    """faust's own seek mutates aiokafka's fetch buffer from the caller's thread (a KeyError race); ours does not."""
    import asyncio
    import threading
    from typing import Any

    from clinstream.core.offset_ledger import seek_in_consumer_thread

    class ConsumerThread:
        def __init__(self) -> None:
            self.seeks: list[tuple[object, int, str]] = []

        def seek(self, tp: object, offset: int) -> None:
            self.seeks.append((tp, offset, threading.current_thread().name))

        async def call_thread(self, method: Any, *args: Any) -> Any:
            result: list[Any] = []
            worker = threading.Thread(target=lambda: result.append(method(*args)), name="consumer-thread")
            worker.start()
            await asyncio.get_running_loop().run_in_executor(None, worker.join)
            return result[0]

    class Consumer:
        def __init__(self) -> None:
            self._thread = ConsumerThread()
            self._read_offset: dict[object, int | None] = {"tp": 3}

        async def seek(self, tp: object, offset: int) -> None:
            raise AssertionError("faust's seek runs in the caller's thread")

    consumer = Consumer()
    asyncio.run(seek_in_consumer_thread(consumer, "tp", 17))
    assert consumer._thread.seeks == [("tp", 17, "consumer-thread")]
    assert consumer._read_offset == {"tp": 17}
