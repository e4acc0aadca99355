"""`clinstream features`: the feature catalogue, version promotion and exports (a tool above the stages)."""

from __future__ import annotations

from typing import Any

import typer

from clinstream.core.cli_output import OUTPUT_OPTION, Column, OutputFormat, emit
from clinstream.export.cli import export_command
from clinstream.features.catalogue import CATALOGUE, FeatureDef
from clinstream.replay.promote import promote_command

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                  help="The feature catalogue, promotion of a feature version and exports of the feature store.")

CATALOGUE_COLUMNS = (
    Column("feature_set", "set", key_column=True), Column("name", "name", key_column=True),
    Column("unit", "unit", empty="(no unit)"), Column("windows", "windows", empty="(per sample)"),
    Column("version", "version", right=True),
    Column("loinc", "LOINC", empty="(no LOINC code)"), Column("definition", "definition"),
    Column("citation", "citation", empty="(no citation)"),
)


def feature_row(d: FeatureDef) -> dict[str, Any]:
    """One catalogue feature as a listing row; windows is a list (empty: one value per sample)."""
    return {"feature_set": d.feature_set, "name": d.name, "unit": d.unit, "windows": [w.value for w in d.windows],
            "version": d.version, "loinc": d.loinc, "definition": d.definition, "citation": d.citation or None}


@app.command("catalogue")
def catalogue(output: OutputFormat = OUTPUT_OPTION) -> None:
    """Print every feature with its unit, windows, version, LOINC code, definition and citation."""
    emit([feature_row(d) for d in CATALOGUE], CATALOGUE_COLUMNS, output, title="Feature catalogue")


app.command("promote")(promote_command)
app.command("export")(export_command)
