"""Key placement of the replay tools: the partition the producers give a key."""

from __future__ import annotations

from aiokafka.partitioner import murmur2  # type: ignore[import-untyped]


def partition_of_key(key: bytes, n_partitions: int) -> int:
    """The partition the murmur2 partitioner (Java clients, faust, our producers) gives a key."""
    return int(murmur2(key) & 0x7FFFFFFF) % n_partitions
