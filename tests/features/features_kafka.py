"""Real-broker helpers for the features integration tests: worker subprocess, producing, topic reads, waits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

from clinstream.core.config import Settings
from clinstream.core.kafka import producer_config
from clinstream.core.records import OutRecord

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
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "clinstream-test-reader",
                  "enable.auto.commit": False})
    try:
        md = c.list_topics(topic, timeout=10).topics[topic]
        ends: dict[int, int] = {}
        for p in md.partitions:
            deadline = time.monotonic() + 15
            while True:
                try:
                    lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=5)
                    break
                except KafkaException:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            if hi > lo:
                ends[p] = hi
        if not ends:
            return []
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        out: list[OutRecord] = []
        done: set[int] = set()
        deadline = time.monotonic() + timeout_s
        while len(done) < len(ends):
            if time.monotonic() > deadline:
                raise TimeoutError("reading a topic timed out")
            for m in c.consume(10_000, 0.5):
                if m.error():
                    continue
                out.append(OutRecord(m.topic(), m.key(), m.value()))
                if m.offset() + 1 >= ends[m.partition()]:
                    done.add(m.partition())
        return out
    finally:
        c.close()


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = 60.0, every_s: float = 0.5) -> Any:
    """Poll `check` until it returns something truthy, or fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


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
