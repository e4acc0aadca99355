"""The data dictionary of an export, generated from the feature catalogue: definition, unit, citation, quality."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from clinstream.export.query import ExportFilter, column_names
from clinstream.features.catalogue import CATALOGUE, COMPLETENESS, SAMPLE, FeatureDef, definitions_version

_CITATION_FIELDS = ("citation", "citations", "source", "reference")

# Row-level columns that are not catalogue features: what they mean, and which of them are quality flags.
_ROW_COLUMNS: dict[str, tuple[str, str, bool]] = {  # name: (unit, definition, is a quality flag)
    "participant_pseudonym": ("", "Site-keyed HMAC-SHA-256 pseudonym of the participant (no direct identifier).",
                              False),
    "sample_pseudonym": ("", "Site-keyed pseudonym of the biobank sample.", False),
    "parent_sample_pseudonym": ("", "Pseudonym of the sample this one was split from; empty for a primary sample.",
                                False),
    "sample_type": ("", "SPREC sample type (e.g. SER, PL1, PL2, BLD, URN).", False),
    "feature_set": ("", "The catalogue feature set of the row.", False),
    "window_kind": ("", "MINUTE, HOUR, DAY (UTC-aligned) or LOCAL_DAY (participant-local midnight to midnight).",
                    False),
    "window_start": ("s", "Start of the event-time window, UTC instant (inclusive).", False),
    "window_end": ("s", "End of the event-time window, UTC instant (exclusive).", False),
    "utc_offset_minutes": ("min", "The device's UTC offset for the window (defines the local day).", False),
    "version": ("", "Feature-definition version the row was computed with.", False),
    "collected_at": ("s", "Collection time of the sample (own, else inherited from its parent), UTC.", False),
    "is_final": ("", "Quality flag: true once the window is closed (past its grace period); a non-final row may "
                 "still be revised.", True),
    "revision": ("", "Quality flag: how many times the row was recomputed; higher replaces lower.", True),
    "computed_at": ("s", "When the features stage computed the row, UTC.", False),
}
_SAMPLE_QUALITY = frozenset({"freeze_thaw_count", "temperature_excursions", "sprec"})


@dataclass(frozen=True, slots=True)
class DictionaryEntry:
    """One column of an export."""

    column: str
    unit: str
    definition: str
    loinc: str | None
    citation: str | None
    quality_flag: bool
    windows: tuple[str, ...]
    feature_version: int | None


def _citation(d: FeatureDef) -> str | None:
    for name in _CITATION_FIELDS:
        value = getattr(d, name, None)
        if value:
            return value if isinstance(value, str) else "; ".join(str(v) for v in value)
    return None


def _from_catalogue(d: FeatureDef, column: str) -> DictionaryEntry:
    quality = d.feature_set == COMPLETENESS or (d.feature_set == SAMPLE and column in _SAMPLE_QUALITY)
    definition = ("Quality flag: " + d.definition) if quality and d.feature_set == COMPLETENESS else d.definition
    return DictionaryEntry(column, d.unit, definition, d.loinc, _citation(d), quality,
                           tuple(w.value for w in d.windows), d.version)


def data_dictionary(f: ExportFilter) -> list[DictionaryEntry]:
    """One entry per exported column, in file order; catalogue features carry their definition and citation."""
    by_name = {d.name: d for d in CATALOGUE
               if d.version == definitions_version(f.version) and d.feature_set in (f.feature_set, COMPLETENESS)}
    entries: list[DictionaryEntry] = []
    for column in column_names(f):
        if column in by_name:
            entries.append(_from_catalogue(by_name[column], column))
        elif column in _ROW_COLUMNS:
            unit, definition, quality = _ROW_COLUMNS[column]
            entries.append(DictionaryEntry(column, unit, definition, None, None, quality, (), None))
        else:
            raise KeyError(f"export column {column!r} has no catalogue entry nor row definition")
    return entries


def dictionary_document(f: ExportFilter, rows: int, data_file: str) -> dict[str, Any]:
    """The JSON document written beside the data file."""
    return {"feature_set": f.feature_set, "version": f.version, "data_file": data_file, "rows": rows,
            "filter": {"window": f.window.value if f.window else None,
                       "start": f.start.isoformat() if f.start else None,
                       "end": f.end.isoformat() if f.end else None,
                       "min_completeness": f.min_completeness, "final_only": f.final_only},
            "columns": [asdict(e) for e in data_dictionary(f)]}
