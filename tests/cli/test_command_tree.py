"""The command tree: `clinstream features catalogue|promote|export` and the top-level `export`, both the same code."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from clinstream.cli import cli


@pytest.mark.parametrize("command", ["catalogue", "promote", "export"])
def test_features_group_offers_its_commands(command: str) -> None:
    result = CliRunner().invoke(cli, ["features", command, "--help"])
    assert result.exit_code == 0, result.output


def test_features_export_and_top_level_export_share_options() -> None:
    runner = CliRunner()
    nested = runner.invoke(cli, ["features", "export", "--help"], terminal_width=200)
    top = runner.invoke(cli, ["export", "--help"], terminal_width=200)
    for option in ("--feature-set", "--out", "--format", "--min-completeness", "--table"):
        assert option in nested.output and option in top.output


def test_features_export_refuses_a_table_outside_the_feature_store() -> None:
    result = CliRunner().invoke(cli, ["features", "export", "-s", "heart_rate", "-o", "out",
                                      "--table", "device_credentials"])
    assert result.exit_code == 2
    assert "device_credentials" in result.output
