"""Stage doubles for the stream host's tests on the real broker."""

from __future__ import annotations

from collections.abc import Sequence

from clinstream.core.records import BatchResult, InRecord
from clinstream.core.stream_host import StageTraits


class KeepingSink:
    """A sink double that keeps what it is given (a `SinkStage` of one input topic)."""

    traits = StageTraits("pause-test", "-", "-", batch_max=100, batch_within_s=0.1)

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.seen: list[InRecord] = []

    @property
    def input_topics(self) -> Sequence[str]:
        return (self.topic,)

    def start(self) -> None:
        pass

    def process(self, records: Sequence[InRecord]) -> BatchResult:
        self.seen.extend(records)
        return BatchResult()

    def transient(self, exc: BaseException) -> bool:
        return False

    def report(self, result: BatchResult, records: int, seconds: float) -> None:
        pass

    def close(self) -> None:
        pass
