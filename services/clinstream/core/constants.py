"""Typed constants shared by every clinstream service: ports, prefixes, pinned versions, limits."""

from __future__ import annotations

from typing import Final

ENV_PREFIX: Final = "CLINSTREAM_"

# Pinned third-party versions of the native stack.
KAFKA_VERSION: Final = "4.1.1"
SCALA_VERSION: Final = "2.13"
POSTGRES_MAJOR: Final = 15

# Non-default local ports (Kafka's 9092/9093 clash with Flower's defaults).
KAFKA_BROKER_PORT: Final = 19092
KAFKA_CONTROLLER_PORT: Final = 19093
POSTGRES_PORT: Final = 15432
GATEWAY_PORT: Final = 18080
FLOWER_SERVERAPPIO_PORT: Final = 19191
FLOWER_FLEET_PORT: Final = 19192
FLOWER_CONTROL_PORT: Final = 19193
FLOWER_CLIENTAPPIO_BASE_PORT: Final = 19201

DEFAULT_SITE_ID: Final = "site-a"
DEFAULT_DATABASE: Final = "clinstream"
DEFAULT_DB_USER: Final = "clinstream"

# Avro single-object encoding marker (Avro specification, "Single-object encoding").
AVRO_SINGLE_OBJECT_MAGIC: Final = b"\xc3\x01"

# Header names carried on dead-lettered records.
DLQ_HEADER_STAGE: Final = "clinstream.stage"
DLQ_HEADER_REASON: Final = "clinstream.reason"
