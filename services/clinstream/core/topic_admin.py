"""Creates or updates a site's topics idempotently through the Kafka Admin API."""

from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
)

from clinstream.core.config import Settings
from clinstream.core.topics import ALL_TOPICS, TopicSpec, partitions_of, topic_configs


@dataclass
class TopicChange:
    """What `apply_topics` did to one topic."""

    name: str
    action: str  # created | partitions-increased | configs-updated | unchanged


def admin_client(settings: Settings) -> AdminClient:
    """An Admin API client for the site's broker."""
    return AdminClient({"bootstrap.servers": settings.kafka_bootstrap, "socket.connection.setup.timeout.ms": 3000})


def apply_topics(settings: Settings, specs: tuple[TopicSpec, ...] = ALL_TOPICS,
                 timeout_s: float = 30.0) -> list[TopicChange]:
    """Create missing topics, grow partitions, and bring configs to the catalogue's values."""
    admin = admin_client(settings)
    existing = admin.list_topics(timeout=timeout_s).topics
    changes: list[TopicChange] = []
    to_create: list[NewTopic] = []
    for spec in specs:
        name = spec.name(settings.site_id)
        want_parts = partitions_of(spec, settings)
        if name not in existing:
            to_create.append(NewTopic(name, num_partitions=want_parts, replication_factor=settings.replication_factor,
                                      config=topic_configs(spec)))
            changes.append(TopicChange(name, "created"))
            continue
        actions: list[str] = []
        have_parts = len(existing[name].partitions)
        if have_parts < want_parts:
            admin.create_partitions([NewPartitions(name, want_parts)])[name].result(timeout_s)
            actions.append("partitions-increased")
        resource = ConfigResource(ConfigResource.Type.TOPIC, name)
        current = admin.describe_configs([resource])[resource].result(timeout_s)
        wanted = topic_configs(spec)
        diffs = {k: v for k, v in wanted.items() if k not in current or current[k].value != v}
        if diffs:
            entries = [ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in diffs.items()]
            admin.incremental_alter_configs([ConfigResource(ConfigResource.Type.TOPIC, name,
                                                            incremental_configs=entries)])[resource].result(timeout_s)
            actions.append("configs-updated")
        changes.append(TopicChange(name, ",".join(actions) or "unchanged"))
    if to_create:
        for name, fut in admin.create_topics(to_create, operation_timeout=timeout_s).items():
            try:
                fut.result(timeout_s)
            except Exception as exc:  # a concurrent creator is fine
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise
                for ch in changes:
                    if ch.name == name:
                        ch.action = "unchanged"
        _wait_until_visible(admin, [t.topic for t in to_create], timeout_s)
    return changes


def _wait_until_visible(admin: AdminClient, names: list[str], timeout_s: float) -> None:
    """Return once the broker serves metadata and configs of new topics, so callers can use them at once."""
    if not names:
        return
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            resources = [ConfigResource(ConfigResource.Type.TOPIC, n) for n in names]
            for fut in admin.describe_configs(resources).values():
                fut.result(timeout_s)
            return
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def delete_site_topics(settings: Settings, timeout_s: float = 30.0) -> None:
    """Delete every topic of a site (tests and demos only)."""
    admin = admin_client(settings)
    prefix = settings.site_id + "."
    names = [t for t in admin.list_topics(timeout=timeout_s).topics if t.startswith(prefix)]
    if names:
        for fut in admin.delete_topics(names, operation_timeout=timeout_s).values():
            fut.result(timeout_s)
