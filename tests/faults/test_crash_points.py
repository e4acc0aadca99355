"""Crash points: a worker stopped after its state is durable but before its input offsets are, still erases.

Each run starts the real gateway and workers with `CLINSTREAM_CRASH_POINT=after-state-before-ack`, restricted to
batches that carry a consent withdrawal (pseudonymise: `erasure_requests`) or an erasure (features: `erasures`):
the worker dies (exit 71) right after its consent or feature state is acknowledged by the broker, before it
commits its input offsets, and is restarted by the test. During a paced ingest of one heart-rate block per
MINUTE window from 20 participants, ten seeded withdrawals (each seed picks the participant and the moment) are
sent; two runs give 20 seeds. Afterwards every withdrawal has an erasure request, an ERASURE_REQUESTED audit
record, an `erasure_audit` row and no feature rows left; every other participant has exactly one stored MINUTE
row of 60 readings per acknowledged block (nothing lost, nothing counted twice).
"""

from __future__ import annotations

import random
import threading
import time
import uuid

import httpx
import pytest
from faults_harness import (
    MINUTE_MS,
    READINGS_PER_BLOCK,
    FaultSite,
    Ledger,
    Loader,
    _record,
    iso,
)
from test_faults import running

from clinstream.core.avro import get_codec
from clinstream.core.constants import CRASH_POINT_ENV, CRASH_TIMES_ENV, CRASH_WHEN_ENV, EXIT_CRASH_POINT
from clinstream.core.crash_points import CrashPoint
from clinstream.core.db import connect
from clinstream.core.topics import AUDIT, ERASURE
from clinstream.pseudonymise.keys import load_key_file
from clinstream.pseudonymise.pseudonyms import Pseudonymiser
from clinstream.replay.lag import group_lags
from clinstream_devtools.pipeline.processes import SitePipeline
from condition_wait import wait_until
from topic_read import read_values

pytestmark = [pytest.mark.faults, pytest.mark.integration]

BLOCKS = 10  # per participant, one per second
SEEDS_PER_RUN = 10
SETTLE_S = 240.0


class Supervisor:
    """Restarts a worker that stopped at its crash point; any other exit is an error."""

    def __init__(self, pipeline: SitePipeline, worker: str) -> None:
        self.pipeline, self.worker = pipeline, worker
        self.crashes = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"supervise-{worker}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for name in self.pipeline.services:
                proc = self.pipeline.procs[name].popen
                code = proc.poll()
                if code is None:
                    continue
                if name == self.worker and code == EXIT_CRASH_POINT:
                    self.crashes += 1
                    self.pipeline.start(name)
                else:
                    self.errors.append(f"{name} exited with {code}: {self.pipeline.log_text(name)[-2000:]}")
                    self._stop.set()

    def __enter__(self) -> Supervisor:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def withdraw(site: FaultSite, participant: str) -> None:
    """A consent WITHDRAW through the gateway's LIMS endpoint."""
    now = int(time.time() * 1000)
    event = {"event_id": str(uuid.uuid4()), "participant_id": participant, "occurred_at": iso(now),
             "recorded_at": iso(now), "payload": {"kind": "consent", "action": "WITHDRAW", "status": "INACTIVE",
                                                   "scope": ["DUO:0000042"]}}
    resp = httpx.post(f"{site.url}/v1/biobank/events", json={"events": [event]},
                      headers={"Authorization": f"Bearer {site.lims_token}"}, timeout=30.0)
    assert resp.status_code == 202, resp.text


def pseudonyms_on(site: FaultSite, topic: str, action: str | None = None) -> set[str]:
    codec = get_codec()
    out: set[str] = set()
    for value in read_values(site.settings, topic):
        rec = _record(codec.decode(value))
        if action is None or rec.get("action") == action:
            out.add(str(rec["participant_pseudonym"]))
    return out


def store_rows(site: FaultSite) -> dict[str, list[float]]:
    """Heart-rate MINUTE counts per pseudonym in the feature store."""
    with connect(site.settings, autocommit=True) as conn:
        rows = conn.execute("SELECT participant_pseudonym, (feature_values->>'count')::numeric FROM wearable_features"
                            " WHERE feature_set = 'heart_rate' AND window_kind = 'MINUTE' AND version = 1").fetchall()
    out: dict[str, list[float]] = {}
    for pseudonym, count in rows:
        out.setdefault(str(pseudonym), []).append(float(count))
    return out


def erasure_audits(site: FaultSite) -> set[str]:
    with connect(site.settings, autocommit=True) as conn:
        return {str(r[0]) for r in conn.execute("SELECT participant_pseudonym FROM erasure_audit").fetchall()}


def caught_up(site: FaultSite) -> bool:
    """Every live consumer group of the site has committed to the end of every input partition."""
    lags = [lag for lag in group_lags(site.settings) if lag.end > 0]
    return bool(lags) and all(lag.lag == 0 for lag in lags)


@pytest.mark.parametrize(("worker", "when", "first_seed"), [
    ("pseudonymise", "erasure_requests", 0),
    ("features", "erasures", SEEDS_PER_RUN),
])
def test_withdrawals_survive_a_stop_between_state_and_offsets(fault_site: FaultSite, worker: str, when: str,
                                                              first_seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    site = fault_site
    pseud = Pseudonymiser(load_key_file(site.key_file))
    remaining = list(site.participants)
    withdrawn: list[str] = []
    ledger = Ledger()
    first = (int(time.time() * 1000) // MINUTE_MS - 60) * MINUTE_MS  # windows within the 2 h MINUTE horizon
    loader = Loader(site, ledger, BLOCKS, 1.0, first)
    monkeypatch.setenv(CRASH_POINT_ENV, CrashPoint.AFTER_STATE_BEFORE_ACK.value)  # the site's processes inherit
    monkeypatch.setenv(CRASH_WHEN_ENV, f"{worker}:{when}")  # only that worker dies (the store counts erasures too)
    monkeypatch.setenv(CRASH_TIMES_ENV, str(SEEDS_PER_RUN))
    with running(site) as pipeline, Supervisor(pipeline, worker) as supervisor:
        loader.start()
        for seed in range(first_seed, first_seed + SEEDS_PER_RUN):
            rng = random.Random(seed)
            time.sleep(rng.uniform(0.1, 0.8))  # pacing of the test's own load, not synchronisation
            participant = remaining.pop(rng.randrange(len(remaining)))
            withdraw(site, participant)
            withdrawn.append(participant)
        loader.join(240)
        assert not loader.errors, loader.errors[:5]
        gone = {pseud.participant(p) for p in withdrawn}
        kept = {pseud.participant(p) for p in remaining}

        def settled() -> bool:
            assert not supervisor.errors, supervisor.errors[:2]
            rows = store_rows(site)
            return (not gone & rows.keys() and gone <= erasure_audits(site)
                    and all(len(rows.get(k, [])) == BLOCKS for k in kept) and caught_up(site))

        wait_until(settled, SETTLE_S, "erasures honoured, kept participants stored, every group caught up", 1.0)
    assert supervisor.crashes >= 1, "the crash point never fired"
    assert gone <= pseudonyms_on(site, ERASURE.name(site.settings.site_id))
    assert gone <= pseudonyms_on(site, AUDIT.name(site.settings.site_id), "ERASURE_REQUESTED")
    rows = store_rows(site)
    assert not gone & rows.keys()
    assert {k: rows[k] for k in kept} == {k: [float(READINGS_PER_BLOCK)] * BLOCKS for k in kept}
    print(f"{worker}: {supervisor.crashes} stops at the crash point, {len(withdrawn)} withdrawals, "
          f"{len(kept)} participants kept")
