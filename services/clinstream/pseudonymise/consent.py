"""Consent state of one participant pseudonym, its ordering rule, its byte form, and the forwarding rule.

Forwarding rule: a data record of a participant is forwarded only if the participant's consent state is
active when the record is processed (processing order per partition, so a withdrawal stops every later
record at once) AND the record entered Kafka (record timestamp) no earlier than the raw consent record that
opened the current active period. The second half keeps re-processing after a crash deterministic:
a record that was dropped because it arrived before the grant stays dropped when it is read again after
the grant was applied. Records without a timestamp (<= 0) are judged by processing order alone.

Ordering rule: consent events apply in (occurred_at, inactive-after-active, event_id) order, so at equal
times a withdrawal wins over a grant; an older event than the current state's is "stale" and does not change
the state (a late resend of an old grant never re-activates a withdrawn participant).
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson


def consent_order(occurred_at_ms: int, active: bool, event_id: str) -> tuple[int, int, str]:
    """Sort key of consent events: time, then a state-ending event after an activating one, then id."""
    return (occurred_at_ms, 0 if active else 1, event_id)


@dataclass(frozen=True, slots=True)
class ConsentEntry:
    """The latest consent state of one pseudonym (no identifiers: it lives in a changelog topic)."""

    active: bool
    since_ms: int  # record timestamp of the raw grant that opened the current active period (0: unknown)
    updated_at_ms: int  # occurred_at of the consent event that set this state
    event_id: str
    key_version: int
    scope: tuple[str, ...] = ()

    def order(self) -> tuple[int, int, str]:
        """Position of the setting event in consent order."""
        return consent_order(self.updated_at_ms, self.active, self.event_id)

    def allows(self, record_timestamp_ms: int) -> bool:
        """Whether a data record with this Kafka timestamp may be forwarded under this state."""
        if not self.active:
            return False
        return self.since_ms <= 0 or record_timestamp_ms <= 0 or record_timestamp_ms >= self.since_ms

    def to_bytes(self) -> bytes:
        """Compact JSON form for a table changelog."""
        return orjson.dumps({"a": self.active, "s": self.since_ms, "u": self.updated_at_ms, "e": self.event_id,
                             "k": self.key_version, "d": list(self.scope)})

    @classmethod
    def from_bytes(cls, data: bytes) -> ConsentEntry:
        """Inverse of `to_bytes`."""
        d = orjson.loads(data)
        return cls(active=bool(d["a"]), since_ms=int(d["s"]), updated_at_ms=int(d["u"]), event_id=str(d["e"]),
                   key_version=int(d["k"]), scope=tuple(str(x) for x in d.get("d", ())))
