"""The SQL of one export: the feature store's rows of one feature set, filtered, feature values as columns."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import sql

from clinstream.export.tables import ExportTable, table_for, value_columns
from clinstream.features.catalogue import SAMPLE
from clinstream.features.windows import WindowKind


@dataclass(frozen=True, slots=True)
class ExportFilter:
    """What a researcher asked for: one feature set, optionally a window kind, a time range and quality bounds."""

    feature_set: str
    version: int
    window: WindowKind | None = None
    start: datetime | None = None  # inclusive, on the table's time column
    end: datetime | None = None  # exclusive
    min_completeness: float | None = None
    final_only: bool = False

    def __post_init__(self) -> None:
        table = table_for(self.feature_set)
        if not table.has_quality and (self.min_completeness is not None or self.final_only):
            raise ValueError(f"--min-completeness and --final-only apply to wearable windows, not {SAMPLE!r}")
        if self.window is not None and self.feature_set == SAMPLE:
            raise ValueError("--window applies to wearable windows; samples have none")
        if self.min_completeness is not None and not 0.0 <= self.min_completeness <= 1.0:
            raise ValueError("--min-completeness must lie in [0, 1]")
        if self.start is not None and self.end is not None and self.start >= self.end:
            raise ValueError("--start must lie before --end")

    @property
    def table(self) -> ExportTable:
        """The feature-store table this filter reads."""
        return table_for(self.feature_set)


def _select_list(f: ExportFilter) -> sql.Composed:
    table = f.table
    parts: list[sql.Composable] = [sql.Identifier(c) for c in table.columns]
    if f.feature_set == SAMPLE:
        parts.append(sql.SQL("assays::text AS assays"))
    else:
        parts.extend(sql.SQL("(feature_values ->> {})::float8 AS {}").format(sql.Literal(n), sql.Identifier(n))
                     for n in value_columns(f.feature_set, f.version))
    return sql.SQL(", ").join(parts)


def _where(f: ExportFilter) -> tuple[sql.Composed, list[Any]]:
    clauses: list[sql.Composable] = [sql.SQL("version = %s")]
    params: list[Any] = [f.version]
    time_col = sql.Identifier(f.table.time_column)
    if f.feature_set != SAMPLE:
        clauses.append(sql.SQL("feature_set = %s"))
        params.append(f.feature_set)
    if f.window is not None:
        clauses.append(sql.SQL("window_kind = %s"))
        params.append(f.window.value)
    if f.start is not None:
        clauses.append(sql.SQL("{} >= %s").format(time_col))
        params.append(f.start)
    if f.end is not None:
        clauses.append(sql.SQL("{} < %s").format(time_col))
        params.append(f.end)
    if f.min_completeness is not None:
        clauses.append(sql.SQL("completeness >= %s"))
        params.append(f.min_completeness)
    if f.final_only:
        clauses.append(sql.SQL("is_final"))
    return sql.SQL(" AND ").join(clauses), params


def export_query(f: ExportFilter) -> tuple[sql.Composed, list[Any]]:
    """SELECT of the export's rows in a stable order (time, then subject), and its parameters."""
    where, params = _where(f)
    order = (sql.SQL("window_start, participant_pseudonym, window_kind") if f.feature_set != SAMPLE
             else sql.SQL("collected_at, sample_pseudonym"))
    query = sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY {}").format(
        _select_list(f), sql.Identifier(f.table.name), where, order)
    return query, params


def count_query(f: ExportFilter) -> tuple[sql.Composed, list[Any]]:
    """SELECT count(*) of the same rows (the progress bar's total)."""
    where, params = _where(f)
    return sql.SQL("SELECT count(*) FROM {} WHERE {}").format(sql.Identifier(f.table.name), where), params


def column_names(f: ExportFilter) -> tuple[str, ...]:
    """The export's columns, in file order."""
    return (*f.table.columns, *value_columns(f.feature_set, f.version))
