"""Event-time feature engineering over the pseudonymised topics (wearable windows and biobank samples)."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from clinstream.core.stage_spec import StageSpec, lazy
from clinstream.core.topics import Stage

STATE_TABLE = "feature-state"  # the host's table of this stage (its changelog is named after it)


class _StateCodec:
    """Feature state entries: JSON through orjson (the stdlib, marked, beyond 64-bit integers); erasure by pseudonym."""

    table = STATE_TABLE

    def encode(self, entry: Any) -> bytes:
        """An entry as stored."""
        from clinstream.features.worker import dumps

        return dumps(entry)

    def decode(self, raw: bytes) -> Any:
        """Inverse of `encode`."""
        from clinstream.features.worker import loads

        return loads(raw)

    def erase(self, state: MutableMapping[str, Any], pseudonym: str) -> int:
        """Every window, sample and baseline entry of the participant (tombstones stay: they block later records)."""
        from clinstream.features.state import pseudonym_of

        gone = [k for k in state if not k.startswith("x/") and pseudonym_of(k) == pseudonym]
        for key in gone:
            del state[key]
        return len(gone)


def _live_version() -> int:
    from clinstream.features.catalogue import FEATURE_VERSION

    return FEATURE_VERSION


SPEC = StageSpec(Stage.FEATURES, processor=lazy("clinstream.features.worker:FeaturesStage"),
                 redriver=lazy("clinstream.features.redrive:FeaturesRedriver"), state=_StateCodec(),
                 replay=lazy("clinstream.features.replay_adapter:FeaturesReplay"), live_version=_live_version)
