"""The feature-store tables an export may read, and the refusal of every other table."""

from __future__ import annotations

from dataclasses import dataclass

from clinstream.features.catalogue import SAMPLE, WEARABLE_SETS, names_of


class NotAFeatureTable(ValueError):
    """Raised when an export names a table outside the feature store (credentials, bookkeeping, ...)."""


@dataclass(frozen=True, slots=True)
class ExportTable:
    """One exportable feature-store table: its time column and the columns written as they are."""

    name: str
    time_column: str
    columns: tuple[str, ...]
    has_quality: bool  # completeness and is_final exist (wearable windows)


WEARABLE = ExportTable(
    "wearable_features", "window_start",
    ("participant_pseudonym", "feature_set", "window_kind", "window_start", "window_end", "utc_offset_minutes",
     "version", "completeness", "is_final", "revision", "computed_at"),
    has_quality=True)
SAMPLES = ExportTable(
    "sample_features", "collected_at",
    ("sample_pseudonym", "participant_pseudonym", "parent_sample_pseudonym", "sample_type", "version",
     "collected_at", "collection_to_centrifugation_min", "collection_to_freezing_min", "sprec",
     "freeze_thaw_count", "temperature_excursions", "status", "revision", "computed_at"),
    has_quality=False)

FEATURE_STORE_TABLES: dict[str, ExportTable] = {t.name: t for t in (WEARABLE, SAMPLES)}


def table_for(feature_set: str) -> ExportTable:
    """The table that holds a catalogue feature set; anything else is refused."""
    if feature_set in WEARABLE_SETS:
        return WEARABLE
    if feature_set == SAMPLE:
        return SAMPLES
    known = ", ".join((*WEARABLE_SETS, SAMPLE))
    raise NotAFeatureTable(f"feature set {feature_set!r} is not in the catalogue (known: {known})")


def check_table(name: str) -> ExportTable:
    """The export table called `name`; a table outside the feature store raises NotAFeatureTable."""
    table = FEATURE_STORE_TABLES.get(name)
    if table is None:
        raise NotAFeatureTable(f"table {name!r} is not a feature-store table; exports read only "
                               f"{', '.join(sorted(FEATURE_STORE_TABLES))}")
    return table


def value_columns(feature_set: str, version: int) -> tuple[str, ...]:
    """The feature columns an export adds for a set in a version: its catalogue names (samples: assays as JSON)."""
    if feature_set == SAMPLE:
        return ("assays",)
    return names_of(feature_set, version)
