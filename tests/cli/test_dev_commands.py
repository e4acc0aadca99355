"""Development commands reach `clinstream` through the `clinstream.commands` entry point, apart from the runtime."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from clinstream import cli as cli_module
from clinstream.cli import cli, plugin_commands


def _help(*args: str) -> str:
    result = CliRunner().invoke(cli, [*args, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return result.output


def test_development_commands_are_listed_apart_from_the_site_commands() -> None:
    site, _, development = _help().partition("Development commands")
    assert "stack" in development and "simulate" in development
    assert "stack " not in site and "simulate " not in site and "federated" in site


@pytest.mark.parametrize("command", [("stack", "up"), ("stack", "down"), ("stack", "status"),
                                     ("simulate", "devices"), ("simulate", "lims")])
def test_development_commands_keep_their_names(command: tuple[str, ...]) -> None:
    _help(*command)


def test_federated_group_gains_the_development_fill_and_demo() -> None:
    for name in ("grant", "superlink", "supernode", "run", "fill", "demo"):
        assert name in _help("federated")
    for option in ("--source", "--participants", "--days", "--seed", "--work-dir"):
        assert option in _help("federated", "fill") and option in _help("federated", "demo")


def test_without_the_plugin_the_site_cli_has_no_development_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    assert plugin_commands(), "the clinstream.commands entry point is not installed (pip install -e .)"
    monkeypatch.setattr(cli_module, "plugin_commands", lambda: ())
    assert "fill" not in _help("federated") and "Development commands" not in _help()
    result = CliRunner().invoke(cli, ["stack", "status"])
    assert result.exit_code == 2 and "clinstream.commands" in result.output
