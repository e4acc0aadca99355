"""Foundation round trips against the real broker: Avro blocks through Kafka, idempotent topic apply."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import TopicPartition

from clinstream.core.avro import get_codec, subject_key
from clinstream.core.config import Settings
from clinstream.core.kafka import DurableProducer, make_consumer
from clinstream.core.topic_admin import admin_client, apply_topics
from clinstream.core.topics import ALL_TOPICS, RAW_TELEMETRY, topic_configs

pytestmark = pytest.mark.integration

BLOCK = "org.clinstream.telemetry.TelemetryBlock"


def _block(seq: int) -> dict[str, object]:
    return {
        "block_id": str(uuid.uuid4()), "site_id": "x", "participant_id": "P-000001", "device_id": "SER-0001",
        "sequence": seq, "start": 1_760_000_000_000 + seq * 60_000, "utc_offset_minutes": 60,
        "received_at": 1_760_000_100_000,
        "measurement": ("org.clinstream.telemetry.RRIntervalSamples",
                        {"offsets_ms": [0, 812, 1650], "rr_ms": [812.0, 838.0, 790.5]}),
    }


def test_avro_block_round_trips_through_kafka(kafka_site: Settings) -> None:
    codec = get_codec()
    topic = RAW_TELEMETRY.name(kafka_site.site_id)
    blocks = [_block(i) for i in range(50)]
    producer = DurableProducer(kafka_site)
    producer.send(topic, [(subject_key(kafka_site.site_id, "P-000001"), v, None)
                          for v in codec.encode_many(BLOCK, blocks)], timeout_s=20)
    producer.close()

    consumer = make_consumer(kafka_site, f"test-{uuid.uuid4().hex}")
    parts = admin_client(kafka_site).list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    got: list[dict[str, object]] = []
    for _ in range(100):
        for msg in consumer.consume(500, timeout=0.5):
            assert msg.error() is None
            got.append(codec.decode(msg.value()))
        if len(got) >= len(blocks):
            break
    consumer.close()
    assert len(got) == len(blocks)
    by_seq = {int(g["sequence"]): g for g in got}  # type: ignore[call-overload]
    for b in blocks:
        g = by_seq[int(b["sequence"])]  # type: ignore[call-overload]
        assert str(g["block_id"]) == b["block_id"]
        assert g["measurement"] == b["measurement"]  # the union branch and every sample survive
        assert int(g["start"].timestamp() * 1000) == b["start"]  # type: ignore[attr-defined]
        assert g["utc_offset_minutes"] == 60


def _topic_state(settings: Settings) -> dict[str, tuple[int, dict[str, str]]]:
    from confluent_kafka.admin import ConfigResource

    admin = admin_client(settings)
    meta = admin.list_topics(timeout=10).topics
    state = {}
    for spec in ALL_TOPICS:
        name = spec.name(settings.site_id)
        res = ConfigResource(ConfigResource.Type.TOPIC, name)
        cfg = admin.describe_configs([res])[res].result(10)
        state[name] = (len(meta[name].partitions), {k: cfg[k].value for k in topic_configs(spec)})
    return state


def test_topics_apply_twice_leaves_the_same_state(kafka_site: Settings) -> None:
    first = _topic_state(kafka_site)
    changes = apply_topics(kafka_site)
    assert {c.action for c in changes} == {"unchanged"}
    assert _topic_state(kafka_site) == first
    consent = first[f"{kafka_site.site_id}.pseudo.consent.v1"]
    assert consent[1]["cleanup.policy"] == "compact"
    assert all(parts == kafka_site.topic_partitions for parts, _ in first.values())
