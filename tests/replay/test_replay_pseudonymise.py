"""`clinstream replay --stage pseudonymise --in-place` on the real broker: current key ring and consent, no leaks."""

from __future__ import annotations

from pathlib import Path

import pytest
from features_kafka import produce
from pseudonymise_factories import T0, block, consent, encode_block, encode_event
from pseudonymise_kafka import read_topic
from replay_helpers import clinstream

from clinstream.core.avro import get_codec, subject_key
from clinstream.core.config import Settings
from clinstream.core.constants import HEADER_REPLAY_RUN
from clinstream.core.topics import PSEUDO_TELEMETRY, RAW_BIOBANK, RAW_TELEMETRY, Stage, dlq
from clinstream.pseudonymise.keys import init_key_file
from clinstream.pseudonymise.pseudonyms import Pseudonymiser

pytestmark = pytest.mark.integration


def test_in_place_replay_pseudonymises_with_the_current_ring_and_dead_letters_bad_records(
        kafka_site: Settings, tmp_path: Path) -> None:
    s = kafka_site
    site = s.site_id
    ring = init_key_file(tmp_path / "keys.json")
    env = {"CLINSTREAM_PSEUDONYM_KEY_FILE": str(tmp_path / "keys.json")}
    pid = "P-000123"
    key = subject_key(site, pid)
    produce(s, RAW_BIOBANK.name(site), [(key, encode_event(consent(pid, site=site, at=T0)))])
    blocks = [block(pid, seq=i, start=T0 + i * 60_000, site=site) for i in range(5)]
    produce(s, RAW_TELEMETRY.name(site), [(key, encode_block(b)) for b in blocks] + [(key, b"garbage")])

    refused = clinstream(s, tmp_path, "replay", "--stage", "pseudonymise", "--version", "2", env=env)
    assert refused.returncode == 2 and "--in-place" in refused.stderr
    res = clinstream(s, tmp_path, "replay", "--stage", "pseudonymise", "--in-place", "--run-id", "p1", env=env)
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-3000:]

    out = read_topic(s, PSEUDO_TELEMETRY.name(site))
    pseudonym = Pseudonymiser(ring).participant(pid)
    decoded = [get_codec().decode(r.value or b"") for r in out]
    assert sorted(str(d["block_id"]) for d in decoded) == sorted(b["block_id"] for b in blocks)
    assert {d["participant_pseudonym"] for d in decoded} == {pseudonym}
    assert all(pid.encode() not in r.blob() and b"SN-SYN" not in r.blob() for r in out)
    dead = read_topic(s, dlq(Stage.PSEUDONYMISE).name(site))
    assert len(dead) == 1 and (HEADER_REPLAY_RUN, b"p1") in dead[0].headers
