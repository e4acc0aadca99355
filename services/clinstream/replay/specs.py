"""The stage specs the tools work through: each stage package's `SPEC`, by stage name."""

from __future__ import annotations

from clinstream import features, ingest, pseudonymise, store
from clinstream.core.stage_spec import StageSpec, by_stage
from clinstream.core.topics import Stage

SPECS = by_stage([ingest.SPEC, pseudonymise.SPEC, features.SPEC, store.SPEC])
SINK = store.SPEC  # where replayed feature records are written: the store stage's own sink


def spec_of(stage: Stage | str) -> StageSpec:
    """The spec of a stage (LookupError if there is none)."""
    name = stage.value if isinstance(stage, Stage) else stage
    if name not in SPECS:
        raise LookupError(f"no stage spec for {name}")
    return SPECS[name]


def live_feature_version() -> int:
    """The feature version the live features stage writes now."""
    live = features.SPEC.live_version
    assert live is not None
    return live()
