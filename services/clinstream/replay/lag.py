"""Consumer-group lag of a site (Admin API + high watermarks) and freshness of each feature set (feature store)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import OffsetSpec

from clinstream.core.config import Settings
from clinstream.core.db import connect
from clinstream.core.topic_admin import admin_client

_TIMEOUT_S = 15.0


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """Committed offset, high watermark and lag of one group on one topic-partition."""

    group: str
    state: str
    topic: str
    partition: int
    committed: int
    end: int

    @property
    def lag(self) -> int:
        """Records not yet committed by the group."""
        return max(0, self.end - max(self.committed, 0))


def group_kind(site_id: str, group: str) -> str:
    """live, replay, redrive or tool, from the group id."""
    rest = group[len(f"clinstream-{site_id}-"):]
    for kind in ("replay", "redrive"):
        if rest.startswith(kind + "-"):
            return kind
    return "tool" if rest.endswith("-reader") or rest.endswith("-planner") else "live"


def group_lags(settings: Settings) -> list[PartitionLag]:
    """Lag of every consumer group of the site (group id prefix `clinstream-<site>-`) with committed offsets."""
    admin = admin_client(settings)
    prefix = f"clinstream-{settings.site_id}-"
    listing = admin.list_consumer_groups(request_timeout=_TIMEOUT_S).result()
    groups = sorted((g.group_id, str(getattr(g.state, "name", g.state))) for g in listing.valid
                    if g.group_id.startswith(prefix))
    committed: list[tuple[str, str, TopicPartition]] = []
    for group, state in groups:
        futures = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)],
                                                    request_timeout=_TIMEOUT_S)
        for fut in futures.values():
            for tp in fut.result().topic_partitions or []:
                committed.append((group, state, tp))
    wanted = {TopicPartition(tp.topic, tp.partition) for _, _, tp in committed}
    ends: dict[tuple[str, int], int] = {}
    if wanted:
        latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        for tp, fut in admin.list_offsets({tp: latest for tp in wanted},
                                          request_timeout=_TIMEOUT_S).items():
            ends[(tp.topic, tp.partition)] = int(fut.result().offset)
    return [PartitionLag(group, state, tp.topic, tp.partition, int(tp.offset), ends.get((tp.topic, tp.partition), 0))
            for group, state, tp in sorted(committed, key=lambda c: (c[0], c[2].topic, c[2].partition))]


@dataclass(frozen=True, slots=True)
class Freshness:
    """How current one feature set of one version is in the store."""

    feature_set: str
    version: int
    rows: int
    latest_window_end: datetime | None
    latest_stored: datetime | None
    age_s: float | None  # now - latest stored_at
    active: bool


_FRESHNESS_SQL = """
SELECT feature_set, version, count(*), max(window_end), max(stored_at),
       extract(epoch FROM now() - max(stored_at))
FROM wearable_features GROUP BY feature_set, version
UNION ALL
SELECT 'sample', version, count(*), max(collected_at), max(stored_at), extract(epoch FROM now() - max(stored_at))
FROM sample_features GROUP BY version
ORDER BY 2, 1
"""


def freshness(settings: Settings) -> list[Freshness]:
    """Per feature set and version: rows, newest window end (samples: collection), now - newest stored_at."""
    with connect(settings, autocommit=True) as conn:
        rows: list[Any] = list(conn.execute(_FRESHNESS_SQL).fetchall())
        active_row = conn.execute("SELECT version FROM active_version").fetchone()
    active = int(active_row[0]) if active_row else None
    return [Freshness(str(r[0]), int(r[1]), int(r[2]), r[3], r[4], float(r[5]) if r[5] is not None else None,
                      int(r[1]) == active) for r in rows]
