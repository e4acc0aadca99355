"""Helpers of the console tests: a seeded live site, simulated pipeline activity and the console as a subprocess."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import httpx
from confluent_kafka import TopicPartition

from clinstream.core.config import Settings
from clinstream.core.kafka import DurableProducer, make_consumer
from clinstream.core.topics import FEATURES, LATE_TELEMETRY, PSEUDO_TELEMETRY, Stage, dlq
from condition_wait import wait_for as wait_for
from condition_wait import wait_until
from ports import free_port as free_port

CLINSTREAM = Path(sys.executable).with_name("clinstream")
REPORTS = Path(__file__).resolve().parents[2] / "reports" / "console"


def simulate_activity(settings: Settings, records: int) -> None:
    """Records on the stages' input, DLQ and late topics, and stage groups committing part of their input."""
    site = settings.site_id
    producer = DurableProducer(settings)
    body = b"synthetic"
    for topic in (PSEUDO_TELEMETRY.name(site), FEATURES.name(site), LATE_TELEMETRY.name(site),
                  dlq(Stage.INGEST).name(site), dlq(Stage.FEATURES).name(site)):
        producer.send(topic, [(str(i).encode(), body, None) for i in range(records)], 30)
    for stage, topic in (("features", PSEUDO_TELEMETRY.name(site)), ("store", FEATURES.name(site))):
        advance_group(settings, stage, topic, records // 2)


def advance_group(settings: Settings, stage: str, topic: str, records: int) -> None:
    """Commit `records` more input of a stage's group (throughput between console samples)."""
    consumer = make_consumer(settings, f"clinstream-{settings.site_id}-{stage}")
    try:
        consumer.subscribe([topic])
        seen = 0

        def committed_enough() -> bool:
            nonlocal seen
            msg = consumer.poll(0.5)  # blocks up to 0.5 s for the next record
            if msg is not None and msg.error() is None:
                seen += 1
                consumer.commit(message=msg, asynchronous=False)
            return seen >= records

        wait_until(committed_enough, 60, f"{records} committed records of {stage}'s group", step_s=0.0)
    finally:
        consumer.close()


def committed(settings: Settings, stage: str, topic: str) -> int:
    """Offsets a stage's group has committed on a topic (all partitions)."""
    consumer = make_consumer(settings, f"clinstream-{settings.site_id}-{stage}")
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        tps = consumer.committed([TopicPartition(topic, p) for p in parts], timeout=10)
        return sum(max(tp.offset, 0) for tp in tps)
    finally:
        consumer.close()


class ConsoleProcess:
    """`clinstream console` of a site as a subprocess on a free port, with a fresh admin token."""

    def __init__(self, settings: Settings, tmp: Path, metrics_urls: list[str], sample_every: float = 1.0) -> None:
        self.port = free_port()
        self.token = secrets.token_urlsafe(32)
        token_file = tmp / "console.token"
        token_file.write_text(self.token)
        token_file.chmod(0o600)
        args = [str(CLINSTREAM), "console", "--port", str(self.port), "--token-file", str(token_file),
                "--sample-every", str(sample_every)]
        for url in metrics_urls:
            args += ["--metrics-url", url]
        env = {**os.environ, "CLINSTREAM_SITE_ID": settings.site_id}
        self.log = tmp / "console.log"
        self.proc = subprocess.Popen(args, env=env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT)
        wait_for("the console's /healthz", self._up, 60)

    @property
    def url(self) -> str:
        """Base URL."""
        return f"http://127.0.0.1:{self.port}"

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"console exited: {self.log.read_text()}")
        try:
            return httpx.get(self.url + "/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        """Terminate and reap."""
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
