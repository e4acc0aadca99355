"""Real-broker helpers for the pseudonymise integration tests: a worker subprocess, topic reads, bounded waits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from clinstream.core.config import Settings
from topic_read import read_messages, watermarks

CLINSTREAM = Path(sys.executable).with_name("clinstream")


@dataclass(frozen=True)
class Rec:
    """One record read back from a topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...]

    def blob(self) -> bytes:
        """Every byte of the record, for leak scans."""
        return (self.key or b"") + (self.value or b"") + b"".join(k.encode() + v for k, v in self.headers)


def _consumer(settings: Settings) -> Consumer:
    return Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "clinstream-test-reader",
                     "enable.auto.commit": False, "enable.partition.eof": False})


def list_topics(settings: Settings) -> list[str]:
    """Every topic of the broker."""
    c = _consumer(settings)
    try:
        return sorted(c.list_topics(timeout=10).topics)
    finally:
        c.close()


def read_topic(settings: Settings, topic: str, timeout_s: float = 20.0) -> list[Rec]:
    """Every record of a topic up to its current high watermarks."""
    return [Rec(m.topic(), m.partition(), m.offset(), m.key(), m.value(), m.timestamp()[1],
                tuple((k, v or b"") for k, v in (m.headers() or [])))
            for m in read_messages(settings, topic, timeout_s)]


def committed_caught_up(settings: Settings, group: str, topics: list[str]) -> bool:
    """Whether a consumer group has committed every record of the topics."""
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": group,
                  "enable.auto.commit": False})
    try:
        for topic in topics:
            md = c.list_topics(topic, timeout=10).topics[topic]
            tps = [TopicPartition(topic, p) for p in md.partitions]
            for tp in c.committed(tps, timeout=10):
                _, hi = watermarks(c, TopicPartition(topic, tp.partition))
                if hi > 0 and tp.offset < hi:
                    return False
        return True
    finally:
        c.close()



@dataclass
class WorkerSite:
    """A site whose topics exist, with a key file and a running pseudonymise worker."""

    settings: Settings
    key_file: Path
    worker: WorkerProcess


class WorkerProcess:
    """`clinstream worker pseudonymise` as a subprocess; all its output goes to one log file."""

    def __init__(self, settings: Settings, key_file: Path, data_dir: Path, log_file: Path) -> None:
        self.settings = settings
        self.log_file = log_file
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLINSTREAM_")}
        env.update({
            "CLINSTREAM_SITE_ID": settings.site_id,
            "CLINSTREAM_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "CLINSTREAM_TOPIC_PARTITIONS": str(settings.topic_partitions),
            "CLINSTREAM_PSEUDONYM_KEY_FILE": str(key_file),
            "CLINSTREAM_DATA_DIR": str(data_dir),
            "CLINSTREAM_LOG_LEVEL": "INFO",
        })
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        """Start a worker process."""
        assert self.proc is None or self.proc.poll() is not None
        log = self.log_file.open("ab")
        self.proc = subprocess.Popen([str(CLINSTREAM), "worker", "pseudonymise"], env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        self.starts += 1

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM and wait for a clean exit (SIGKILL if it does not come)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def kill9(self) -> None:
        """SIGKILL: no flush, no commit, no goodbye."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def alive(self) -> bool:
        """Whether the current process is running."""
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> bytes:
        """Everything every start of the worker wrote."""
        return self.log_file.read_bytes() if self.log_file.exists() else b""
