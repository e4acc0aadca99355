"""The set-up every per-partition part of the feature processor shares: context, partition, result, dead letters."""

from __future__ import annotations

from clinstream.core.records import BatchResult, InRecord
from clinstream.features.context import ProcessorContext


class PartitionWork:
    """One partition's share of one batch: the processor's context, the partition and the batch's result."""

    def __init__(self, proc: ProcessorContext, p: int, result: BatchResult) -> None:
        self.proc = proc
        self.p = p
        self.result = result
        self.state = proc.state

    def reject(self, rec: InRecord, reason: str, field_path: str | None = None) -> None:
        """Send an input record to the features dead-letter topic and count it."""
        self.result.out.append(self.proc.dead_letter(rec, reason, field_path))
        self.result.count("dlq")
