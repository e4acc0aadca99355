"""The key ring: file and environment sources, mode check, rotation, hot reload, and secrets kept out of sight."""

from __future__ import annotations

import logging
import os
import pickle
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clinstream.core.config import Settings
from clinstream.pseudonymise.cli import app as keys_app
from clinstream.pseudonymise.keys import (
    KeyRing,
    KeyRingError,
    KeyRingSource,
    init_key_file,
    key_ring_from_secret,
    load_key_file,
    load_key_ring,
    parse_key_ring,
    rotate_key_file,
    write_key_file,
)
from clinstream.pseudonymise.pseudonyms import Pseudonymiser

SECRET_HEX = "a1" * 32


def _secret_forms(ring: KeyRing) -> list[str]:
    forms = []
    for v in ring.versions:
        key = ring.secret(v)
        forms += [key.hex(), key.hex().upper(), repr(key), str(key)]
    return forms


def test_init_creates_an_owner_only_file_with_one_version(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "site.json"
    ring = init_key_file(path)
    assert ring.active == 1 and ring.versions == (1,)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key_file(path) == ring
    with pytest.raises(KeyRingError, match="already exists"):
        init_key_file(path)


def test_rotate_adds_an_active_version_and_keeps_the_old_ones(tmp_path: Path) -> None:
    path = tmp_path / "site.json"
    first = init_key_file(path)
    second = rotate_key_file(path)
    assert second.active == 2 and second.versions == (1, 2)
    assert second.secret(1) == first.secret(1)
    assert second.secret(2) != first.secret(1)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key_file(path) == second


def test_a_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "site.json"
    ring = init_key_file(path)
    os.chmod(path, 0o644)
    with pytest.raises(KeyRingError, match="chmod 600") as err:
        load_key_file(path)
    assert all(form not in str(err.value) for form in _secret_forms(ring))


@pytest.mark.parametrize("content", [
    b'{"active": 1, "keys": {"1": "' + SECRET_HEX.encode() + b'"',  # truncated JSON
    b'{"active": 1, "keys": {"1": "' + SECRET_HEX[:-1].encode() + b'zz"}}',  # not hex
    b'{"active": 3, "keys": {"1": "' + SECRET_HEX.encode() + b'"}}',  # active missing
    b'{"active": 1, "keys": {"1": "' + SECRET_HEX[:40].encode() + b'"}}',  # too short
])
def test_bad_key_files_fail_without_echoing_the_secret(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "site.json"
    path.write_bytes(content)
    os.chmod(path, 0o600)
    with pytest.raises(KeyRingError) as err:
        load_key_file(path)
    text = str(err.value) + repr(err.value)
    assert SECRET_HEX[:40] not in text and SECRET_HEX[:40].upper() not in text
    # no chained exception (a JSONDecodeError keeps the whole document) travels with the error
    assert err.value.__cause__ is None
    assert err.value.__context__ is None or err.value.__suppress_context__


def test_environment_secret_is_version_one() -> None:
    settings = Settings(site_id="site-a", pseudonym_key=SECRET_HEX)  # type: ignore[arg-type]
    ring = load_key_ring(settings)
    assert ring.active == 1 and ring.secret(1) == bytes.fromhex(SECRET_HEX)
    assert SECRET_HEX not in repr(settings) and SECRET_HEX not in str(settings.model_dump())


def test_file_wins_over_environment_and_nothing_configured_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "site.json"
    ring = init_key_file(path)
    both = Settings(site_id="site-a", pseudonym_key=SECRET_HEX, pseudonym_key_file=path)  # type: ignore[arg-type]
    assert load_key_ring(both) == ring
    with pytest.raises(KeyRingError, match="no pseudonym key"):
        load_key_ring(Settings(site_id="site-a", pseudonym_key=None, pseudonym_key_file=None))


def test_secret_not_in_repr_str_or_pickle() -> None:
    ring = key_ring_from_secret(SECRET_HEX).rotated()
    texts = [repr(ring), str(ring), f"{ring}", repr(Pseudonymiser(ring)), repr(ring._keys)]
    for text in texts:
        for form in _secret_forms(ring):
            assert form not in text
    with pytest.raises(TypeError):
        pickle.dumps(ring)


def test_fingerprints_are_stable_short_and_not_the_key() -> None:
    ring = key_ring_from_secret(SECRET_HEX)
    fp = ring.fingerprint(1)
    assert fp == key_ring_from_secret(SECRET_HEX).fingerprint(1) and len(fp) == 16
    assert fp not in SECRET_HEX


def test_source_reloads_a_rotated_file_and_keeps_the_ring_on_a_bad_file(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "site.json"
    init_key_file(path)
    now = [0.0]
    source = KeyRingSource(Settings(site_id="site-a", pseudonym_key_file=path), check_every_s=5.0,
                           clock=lambda: now[0])
    assert source.current().active == 1
    rotated = rotate_key_file(path)
    now[0] = 1.0
    assert source.current().active == 1  # not yet time to look
    now[0] = 6.0
    with caplog.at_level(logging.DEBUG):
        assert source.current().active == 2
    assert source.reloads == 1
    # A broken rotation (wrong mode) is ignored: the worker keeps version 2 and warns.
    write_key_file(path, rotated.rotated(), overwrite=True)
    os.chmod(path, 0o640)
    now[0] = 12.0
    with caplog.at_level(logging.DEBUG):
        assert source.current().active == 2
    assert any("cannot be loaded" in r.getMessage() for r in caplog.records)
    os.chmod(path, 0o600)
    now[0] = 18.0
    assert source.current().active == 3
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for form in _secret_forms(load_key_file(path)):
        assert form not in logged


def test_keys_cli_init_show_rotate_never_print_a_secret(tmp_path: Path) -> None:
    path = tmp_path / "site.json"
    runner = CliRunner()
    out_init = runner.invoke(keys_app, ["init", "--file", str(path)])
    assert out_init.exit_code == 0, out_init.output
    out_rotate = runner.invoke(keys_app, ["rotate", "--file", str(path)])
    assert out_rotate.exit_code == 0, out_rotate.output
    out_show = runner.invoke(keys_app, ["show", "--file", str(path)])
    assert out_show.exit_code == 0, out_show.output
    ring = load_key_file(path)
    assert "* version 2" in out_show.output and "  version 1" in out_show.output
    assert ring.fingerprint(2) in out_show.output
    for output in (out_init.output, out_rotate.output, out_show.output):
        for form in _secret_forms(ring):
            assert form not in output
    again = runner.invoke(keys_app, ["init", "--file", str(path)])
    assert again.exit_code == 1 and "already exists" in again.output


def test_parse_rejects_non_integer_versions() -> None:
    with pytest.raises(KeyRingError, match="positive integers"):
        parse_key_ring(b'{"active": 1, "keys": {"one": "' + SECRET_HEX.encode() + b'"}}')
