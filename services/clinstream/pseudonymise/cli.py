"""`clinstream keys`: create, rotate and inspect the site's pseudonym key ring (never prints a secret)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import typer

from clinstream.core.config import get_settings
from clinstream.pseudonymise.keys import (
    KeyRing,
    KeyRingError,
    init_key_file,
    load_key_file,
    load_key_ring,
    rotate_key_file,
)

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)

_FILE_OPTION = typer.Option(None, "--file", "-f",
                            help="Key-ring file (default: CLINSTREAM_PSEUDONYM_KEY_FILE).")


def _key_file(file: Path | None) -> Path:
    path = file or get_settings().pseudonym_key_file
    if path is None:
        typer.echo("no key file: pass --file or set CLINSTREAM_PSEUDONYM_KEY_FILE", err=True)
        raise typer.Exit(2)
    return Path(path)


def _print(ring: KeyRing) -> None:
    for version in ring.versions:
        marker = "*" if version == ring.active else " "
        typer.echo(f"{marker} version {version}  fingerprint {ring.fingerprint(version)}")


def _change(file: Path | None, change: Callable[[Path], KeyRing], done: Callable[[Path, KeyRing], str]) -> None:
    """Apply a change to the key-ring file; print what happened and the versions, or the error (exit 1)."""
    path = _key_file(file)
    try:
        ring = change(path)
    except KeyRingError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(done(path, ring))
    _print(ring)


@app.command("init")
def init(file: Path | None = _FILE_OPTION) -> None:
    """Create a new key-ring file (mode 0600) with one random version-1 key."""
    _change(file, init_key_file, lambda path, _ring: f"created {path}")


@app.command("rotate")
def rotate(file: Path | None = _FILE_OPTION) -> None:
    """Add a new random key version and make it active; running workers pick it up within seconds."""
    _change(file, rotate_key_file, lambda path, ring: f"rotated {path}: version {ring.active} is active; "
                                                      "older versions are kept for erasure")


@app.command("show")
def show(file: Path | None = _FILE_OPTION) -> None:
    """Print the key versions and their fingerprints (never the keys)."""
    try:
        ring = load_key_file(file) if file is not None else load_key_ring(get_settings())
    except KeyRingError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    _print(ring)
