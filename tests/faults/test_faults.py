"""Fault injection: SIGKILLed workers, a restarted broker, a stopped database and a restarted gateway lose nothing.

Every test runs the real gateway and workers as child processes against the shared broker and database, posts
paced heart-rate blocks (one block = one full MINUTE window of 60 readings) from 20 devices, injects its fault
during ingest, shows that the fault really happened (exit code -9, or the port refuses connections), and then
compares the ledger of readings the gateway acknowledged with 202 with the feature store: the summed heart-rate
`count` of the MINUTE rows equals the ledger total exactly, there is one row per acknowledged block, and no row
holds other than one block's 60 readings (nothing lost, nothing counted twice).
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from faults_harness import (
    MINUTE_MS,
    READINGS_PER_BLOCK,
    FaultSite,
    Ledger,
    Loader,
    consent_states,
    diagnose,
    keep_down,
    send_consent,
    settle_and_check,
    window_differences,
)

from clinstream.core.config import Settings
from clinstream_devtools.pipeline.processes import SitePipeline
from clinstream_devtools.stack.common import stack_lock
from condition_wait import wait_until
from ports import port_refuses

pytestmark = [pytest.mark.faults, pytest.mark.integration]

BLOCKS = 12  # per participant: 20 x 12 blocks x 60 readings = 14,400 readings per test
INTERVAL_S = 1.0  # between a device's blocks: ingest lasts about 12 s unless a fault stalls it
DB_STOP_S = 30.0
BROKER_DOWN_S = 5.0
SETTLE_S = 120.0


@contextmanager
def running(site: FaultSite) -> Iterator[SitePipeline]:
    """The site's gateway and workers, consent granted for every participant and visible on the consent topic."""
    pipeline = SitePipeline(site.settings)
    pipeline.start()
    try:
        pipeline.wait_ready(60)
        send_consent(site, int(time.time() * 1000) - 3 * 60 * MINUTE_MS)
        wait_until(lambda: consent_states(site.settings) >= len(site.participants), 60, "consent states")
        yield pipeline
    finally:
        pipeline.stop()


def ingest_with_fault(site: FaultSite, fault: Callable[[SitePipeline, Loader], None]) -> tuple[Ledger, float]:
    """Run the loader, inject the fault during it, wait for the store; assert the ledger and store agree."""
    ledger = Ledger()
    first = (int(time.time() * 1000) // MINUTE_MS - 60) * MINUTE_MS  # windows within the 2 h MINUTE horizon
    loader = Loader(site, ledger, BLOCKS, INTERVAL_S, first)
    with running(site) as pipeline:
        loader.start()
        t0 = time.monotonic()
        fault(pipeline, loader)
        fault_s = time.monotonic() - t0
        loader.join(240)
        assert not loader.errors, loader.errors[:5]
        expected_blocks = len(site.participants) * BLOCKS
        assert len(ledger.blocks) == expected_blocks
        counts = settle_and_check(pipeline, ledger, SETTLE_S)
        sizes = diagnose(site.settings) if counts.readings != ledger.readings else {}
        differences = window_differences(site.settings, ledger)
    lost = ledger.readings - counts.readings
    print(f"ledger={ledger.readings} readings ({len(ledger.blocks)} blocks, {ledger.reacks} re-acks), "
          f"store={counts.readings} in {counts.rows} rows, odd rows={counts.odd_rows}, statuses={loader.statuses}, "
          f"fault took {fault_s:.1f} s")
    assert lost == 0 and counts.odd_rows == 0 and counts.rows == expected_blocks, (
        f"lost={lost} (negative = counted twice), odd rows={counts.odd_rows}, rows={counts.rows}, topics={sizes}")
    assert counts.readings == expected_blocks * READINGS_PER_BLOCK
    assert differences == [], f"{len(differences)} differences from the clean reference: {differences[:10]}"
    return ledger, fault_s


@pytest.mark.parametrize("seed", [7, 1913, 20261128])
def test_sigkill_each_worker_at_random_moments(fault_site: FaultSite, seed: int) -> None:
    """Each of pseudonymise, features and store is killed with SIGKILL twice, in a seeded random order."""
    rng = random.Random(seed)

    def fault(pipeline: SitePipeline, loader: Loader) -> None:
        plan = [worker for worker in ("pseudonymise", "features", "store") for _ in range(2)]
        rng.shuffle(plan)
        for worker in plan:
            target = len(loader.ledger.blocks) + rng.randint(2, 25)  # a random moment, measured in ingest progress
            wait_until(lambda t=target: len(loader.ledger.blocks) >= t, 120, f"{target} acknowledged blocks")
            pid = pipeline.pid(worker)
            code = pipeline.kill(worker, signal.SIGKILL)
            assert code == -signal.SIGKILL, f"{worker} ended with {code}"
            pipeline.start(worker)
            assert pipeline.pid(worker) != pid

    ingest_with_fault(fault_site, fault)


def test_broker_restart_during_ingest(fault_site: FaultSite) -> None:
    from clinstream_devtools.stack.kafka import broker_address, kafka_is_up, start_kafka, stop_kafka

    base = Settings()
    host, port = broker_address(base)

    def fault(pipeline: SitePipeline, loader: Loader) -> None:
        wait_until(lambda: len(loader.ledger.blocks) >= 40, 60, "ingest under way")
        with stack_lock(base):  # other processes' `stack up` wait until the fault is over
            try:
                stop_kafka(base)
                assert port_refuses(host, port), "the broker port still accepts connections"
                assert not kafka_is_up(base, timeout_s=1.0)
                keep_down(BROKER_DOWN_S, lambda: port_refuses(host, port), "the broker")
            finally:
                start_kafka(base)
                wait_until(lambda: kafka_is_up(base), 60, "the broker to answer again")

    ingest_with_fault(fault_site, fault)


def test_postgres_stopped_30s_during_ingest(fault_site: FaultSite) -> None:
    from clinstream_devtools.stack.postgres import postgres_is_up, start_postgres, stop_postgres

    base = Settings()

    def fault(pipeline: SitePipeline, loader: Loader) -> None:
        wait_until(lambda: len(loader.ledger.blocks) >= 40, 60, "ingest under way")
        with stack_lock(base):  # other processes' `stack up` wait until the fault is over
            try:
                stop_postgres(base)
                assert port_refuses("127.0.0.1", base.postgres_port), "the database port still accepts connections"
                assert not postgres_is_up(base)
                keep_down(DB_STOP_S, lambda: port_refuses("127.0.0.1", base.postgres_port), "the database")
            finally:
                start_postgres(base)
                wait_until(lambda: postgres_is_up(base), 60, "the database to answer again")

    ingest_with_fault(fault_site, fault)


def test_gateway_restart_under_load(fault_site: FaultSite) -> None:
    def fault(pipeline: SitePipeline, loader: Loader) -> None:
        settings = pipeline.settings
        for threshold in (40, 120):

            def acked(t: int = threshold) -> bool:
                return len(loader.ledger.blocks) >= t

            wait_until(acked, 60, "ingest under way")
            code = pipeline.kill("gateway", signal.SIGKILL)
            assert code == -signal.SIGKILL, f"gateway ended with {code}"
            assert port_refuses(settings.gateway_host, settings.gateway_port), "the gateway port still accepts"
            pipeline.start("gateway")
            pipeline.wait_ready(60)

    ingest_with_fault(fault_site, fault)
