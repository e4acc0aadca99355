"""Real-broker helpers for the features integration tests: worker subprocess, producing, topic reads, waits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

from clinstream.core.config import Settings
from clinstream.core.kafka import producer_config
from clinstream.core.records import OutRecord
from topic_read import read_messages

CLINSTREAM = Path(sys.executable).with_name("clinstream")


def produce(settings: Settings, topic: str, messages: Sequence[tuple[bytes | None, bytes]],
            partition: int | None = None) -> None:
    """Produce and wait for acks; keys are partitioned like faust and Java clients (murmur2), or to `partition`."""
    producer = Producer(producer_config(settings, partitioner="murmur2_random"))
    for k, v in messages:
        if partition is None:
            producer.produce(topic, value=v, key=k)
        else:
            producer.produce(topic, value=v, key=k, partition=partition)
        producer.poll(0)
    assert producer.flush(30) == 0, "broker did not acknowledge"


def read_topic(settings: Settings, topic: str, timeout_s: float = 30.0) -> list[OutRecord]:
    """Every record of a topic up to its current high watermarks."""
    return [OutRecord(m.topic(), m.key(), m.value()) for m in read_messages(settings, topic, timeout_s)]



def committed_total(settings: Settings, group: str, topic: str) -> int:
    """Sum of a consumer group's committed offsets on a topic (0 where nothing is committed)."""
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
        return sum(max(tp.offset, 0) for tp in c.committed(tps, timeout=10))
    finally:
        c.close()


class FeaturesWorker:
    """`clinstream worker features` as a subprocess; all its output goes to one log file."""

    def __init__(self, settings: Settings, data_dir: Path, log_file: Path) -> None:
        self.log_file = log_file
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CLINSTREAM_")}
        self.env.update({
            "CLINSTREAM_SITE_ID": settings.site_id,
            "CLINSTREAM_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "CLINSTREAM_TOPIC_PARTITIONS": str(settings.topic_partitions),
            "CLINSTREAM_DATA_DIR": str(data_dir),
            "CLINSTREAM_LOG_LEVEL": "INFO",
        })
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start a worker process."""
        assert self.proc is None or self.proc.poll() is not None
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen([str(CLINSTREAM), "worker", "features"], env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM and wait (SIGKILL if it does not exit)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def kill9(self) -> None:
        """SIGKILL: no flush, no commit."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def alive(self) -> bool:
        """Whether the current process runs."""
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        """Everything the worker wrote."""
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
