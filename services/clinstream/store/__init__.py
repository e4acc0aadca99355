"""The feature store: TimescaleDB hypertables fed from the feature topics."""

from __future__ import annotations

from clinstream.core.stage_spec import StageSpec, lazy
from clinstream.core.topics import Stage

SPEC = StageSpec(Stage.STORE, processor=lazy("clinstream.store.worker:StoreSink"),
                 redriver=lazy("clinstream.store.redrive:StoreRedriver"),
                 sink=lazy("clinstream.store.worker:StoreSink"))
