"""Typed constants shared by every clinstream service: ports, prefixes, pinned versions, limits."""

from __future__ import annotations

from typing import Final

ENV_PREFIX: Final = "CLINSTREAM_"

# Pinned third-party versions of the native stack.
KAFKA_VERSION: Final = "4.1.1"
SCALA_VERSION: Final = "2.13"
POSTGRES_MAJOR: Final = 15
TIMESCALEDB_VERSION: Final = "2.19.3"  # Debian trixie source package (Apache-only); same as compose.yaml

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

# Pseudonymisation (issue 4).
PSEUDONYM_MIN_KEY_BYTES: Final = 32  # HMAC-SHA-256 keys of at least the digest size
PSEUDONYM_KEY_RELOAD_S: Final = 2.0  # how often workers check the key-ring file for a rotation
AGE_TOP_CODE: Final = 90  # ages at or above this are reported as "90+"
POSTCODE_REGION_CHARS: Final = 2  # postcodes are coarsened to this many leading characters
PSEUDONYMISE_BATCH_MAX: Final = 2000  # records per worker batch
PSEUDONYMISE_BATCH_WITHIN_S: Final = 0.2  # max wait to fill a worker batch
# LIMS operator roles that may pass the pseudonymiser; any other role becomes "other" (roles are free text).
OPERATOR_ROLES: Final = frozenset({
    "technician", "nurse", "research_nurse", "phlebotomist", "physician", "clinician", "scientist",
    "pathologist", "courier", "biobank_manager", "lab_manager", "data_manager", "system",
})
# Namespace of deterministic (uuid5) ids of audit records and derived erasure requests.
PSEUDONYMISE_ID_NAMESPACE: Final = "6c1f3d0e-2b7a-4f51-9a0c-3e8d2f4b7a19"

# Feature engineering (issue 5).
FEATURES_BATCH_MAX: Final = 2000  # input records per worker batch
FEATURES_BATCH_WITHIN_S: Final = 0.5  # max wait to fill a worker batch
# Late-data horizons per window kind, in minutes after the window end (day horizons are at least 24 h).
FEATURES_HORIZON_MINUTE_MIN: Final = 120
FEATURES_HORIZON_HOUR_MIN: Final = 360
FEATURES_HORIZON_DAY_MIN: Final = 36 * 60
FEATURES_MAX_FUTURE_SKEW_S: Final = 600  # samples later than received_at + this are rejected (device clock)
FEATURES_ACTIVE_MINUTE_STEPS: Final = 60  # a minute with at least this many steps is an active minute
FEATURES_RESTING_HR_PERCENTILE: Final = 10  # resting heart rate = this percentile of the day's 1-bpm histogram
FEATURES_SPO2_LOW_PERCENT: Final = 90.0  # minutes with any SpO2 reading below this count as low
FEATURES_NN50_MS: Final = 50.0  # pNN50 threshold (Task Force)
FEATURES_RR_MIN_MS: Final = 300.0  # RR intervals outside [min, max] are not NN intervals (hrv-analysis default)
FEATURES_RR_MAX_MS: Final = 2000.0
FEATURES_SKIN_BASELINE_DAYS: Final = 7  # rolling baseline: mean of the previous N local-day means
FEATURES_SKIN_BASELINE_MIN_DAYS: Final = 3  # a baseline exists once at least this many of those days have data
# Consumer-group liveness of faust workers: a killed worker's partitions move on after this many seconds.
WORKER_SESSION_TIMEOUT_S: Final = 10.0
WORKER_HEARTBEAT_S: Final = 3.0
WORKER_REBALANCE_TIMEOUT_S: Final = 20.0

# Feature store worker (issue 5).
STORE_BATCH_MAX: Final = 5000  # records per store batch (one DB transaction, one offset commit)
STORE_BATCH_WITHIN_S: Final = 0.2  # max wait to fill a store batch
STORE_RETRY_MAX_WAIT_S: Final = 5.0  # cap of the exponential back-off while the database or broker is away
STORE_PAUSED_POLL_S: Final = 0.2  # poll interval of the paused consumer during back-off (keeps group membership)
STORE_STATS_EVERY_S: Final = 10.0  # interval of the worker's progress log line
# Namespace of deterministic (uuid5) ids of the store's ERASURE_COMPLETED audit records.
STORE_ID_NAMESPACE: Final = "9b2e7c41-5d3a-4e8f-b1c6-0a7d4e2f9c58"
