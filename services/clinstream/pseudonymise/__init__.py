"""Pseudonymisation at the source: key ring, keyed pseudonyms, minimisation, consent enforcement and its worker."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from clinstream.core.stage_spec import StageSpec, lazy
from clinstream.core.topics import Stage

CONSENT_TABLE = "consent"  # the host's table of this stage (its changelog is named after it)


class _StateCodec:
    """Consent entries (JSON bytes); a withdrawn participant's entry is the erasure's own record, so it stays."""

    table = CONSENT_TABLE

    def encode(self, entry: Any) -> bytes:
        """An entry as stored."""
        return bytes(entry.to_bytes())

    def decode(self, raw: bytes) -> Any:
        """Inverse of `encode`."""
        from clinstream.pseudonymise.consent import ConsentEntry

        return ConsentEntry.from_bytes(raw)

    def erase(self, state: MutableMapping[str, Any], pseudonym: str) -> int:
        """Nothing: the inactive consent entry is what keeps a withdrawn participant's later records out."""
        return 0


SPEC = StageSpec(Stage.PSEUDONYMISE, processor=lazy("clinstream.pseudonymise.worker:PseudonymiseStage"),
                 redriver=lazy("clinstream.pseudonymise.redrive:PseudonymiseRedriver"), state=_StateCodec(),
                 replay=lazy("clinstream.pseudonymise.replay_adapter:PseudonymiseReplay"))
