"""Typed constants shared by every clinstream service: ports, prefixes, pinned versions, limits."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
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
FLOWER_CLIENTAPPIO_BASE_PORT: Final = 19201
# A local Kafka cluster: node i (1-based) listens on the configured broker and controller ports + STRIDE * (i - 1).
KAFKA_NODE_PORT_STRIDE: Final = 2
KAFKA_MAX_LOCAL_BROKERS: Final = 9
# A SIGKILLed broker of the local cluster is fenced (its partitions get new leaders, it leaves every ISR) after the
# session timeout. With RF 3 on 3 brokers it is in every ISR, so every acks=all write waits for the fencing: the
# timeout stays well below the gateway's acknowledgement deadline (INGEST_DEADLINE_S), else requests get 503.
KAFKA_BROKER_SESSION_TIMEOUT_MS: Final = 3000
KAFKA_BROKER_HEARTBEAT_INTERVAL_MS: Final = 500
# Raft timeouts of the local cluster's quorum, above Kafka's 2 s / 1 s so a starved JVM on a busy dev box does
# not trigger an election storm.
KAFKA_QUORUM_FETCH_TIMEOUT_MS: Final = 10_000
KAFKA_QUORUM_ELECTION_TIMEOUT_MS: Final = 5_000
KAFKA_CLUSTER_START_TIMEOUT_S: Final = 180.0
CLUSTER_REPLICATION_FACTOR: Final = 3  # replicas per topic on a cluster of 3 or more brokers
CLUSTER_MIN_INSYNC_REPLICAS: Final = 2  # with 3 replicas: every write on 2 brokers, one broker may be down
# The stream stages' state changelogs are compacted, so a restarted worker restores the live entries
# plus a bounded uncompacted head, not every write since the site started: a segment becomes compactable after
# 10 min or 16 MiB (the broker default is 7 days or 1 GiB), and the tombstones of finalised windows and erased
# entries are dropped 1 h after a compaction (far longer than a restore takes; default 24 h).
CHANGELOG_SEGMENT_MS: Final = 10 * 60 * 1000
CHANGELOG_SEGMENT_BYTES: Final = 16 * 2**20
CHANGELOG_DELETE_RETENTION_MS: Final = 3600 * 1000
CHANGELOG_MIN_CLEANABLE_DIRTY_RATIO: Final = "0.1"

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
# Max wait to fill a worker batch: a window's first record waits at most this long before its row can be stored.
# 0.5 s (as it was) put the paced p99 at 10,000 participants at 1.5-2.0 s beyond the window; 0.2 s: 1.1 s, and
# batches under saturation still fill to FEATURES_BATCH_MAX first (scripts/bench, issue 14).
FEATURES_BATCH_WITHIN_S: Final = 0.2
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
# Plausible ranges of wearable readings (field -> default). Features leave a reading outside out of every feature.
FEATURES_PLAUSIBLE: Final[Mapping[str, float]] = MappingProxyType({
    "hr_min_bpm": 20.0, "hr_max_bpm": 250.0, "rr_min_ms": FEATURES_RR_MIN_MS, "rr_max_ms": FEATURES_RR_MAX_MS,
    "spo2_min_percent": 50.0, "spo2_max_percent": 100.0, "skin_min_c": 15.0, "skin_max_c": 45.0})
# Feature version 2 (research-grade definitions; see features/catalogue.py for the sources).
FEATURES_DEFAULT_TIME_ZONE: Final = "UTC"  # IANA zone of participants whose blocks carry none
FEATURES_ECTOPIC_PERCENT: Final = 20.0  # percent-change rule (Malik et al. 1989): |RR_i - RR_i-1| > this % of RR_i-1
FEATURES_RR_CONTIGUITY_MS: Final = 20  # block n+1 continues block n when its first interval starts within this
FEATURES_HRV_MIN_NN_MIN: Final = 5.0  # Task Force short-term minimum: HRV withheld below 5 min of NN data
FEATURES_ACTIVE_CADENCE_SPM: Final = 100  # moderate-intensity cadence (Tudor-Locke et al. 2018), steps/min
FEATURES_VALID_DAY_WEAR_H: Final = 10.0  # NHANES valid day (Troiano et al. 2008): at least 10 h of wear
FEATURES_SPO2_MAX_HOLD_S: Final = 60  # a SpO2 reading stands for at most this long (until the next reading)
# Consumer-group liveness of the workers: a killed worker's partitions move on after this many seconds.
# 6 s is the broker's group.min.session.timeout.ms; heartbeats (every 2 s) come from librdkafka's own thread, so a
# busy batch does not delay them. It was 10 s: a SIGKILLed worker's partitions now move 4 s sooner.
WORKER_SESSION_TIMEOUT_S: Final = 6.0
RESTORE_TIMEOUT_S: Final = 600.0  # a stream host's read of its new partitions' changelog, start to end
GROWTH_SETTLE_S: Final = 2.0  # how long grown partitions must show in every metadata read (KRaft brokers lag)
WORKER_HEARTBEAT_S: Final = 2.0
# A worker's fetch waits for this many bytes, or this long: fewer, fuller fetches under load (bench-e2e: the
# broker's CPU per million readings), at most this much latency per stage when data trickles in.
HOST_FETCH_MIN_BYTES: Final = 65_536
HOST_FETCH_WAIT_MS: Final = 100
# CPython's cyclic collector in the long-running processes (core/collector.py): generation-0 and -1 thresholds
# as CPython's defaults, full collections after 100 generation-1 collections instead of 10. A replay's window state
# (Python objects) made full collections 15-20 % of its CPU, and every full collection also walked the start-up
# heap (imports, settings), which is frozen out of collection instead (issue 14, scripts/bench_replay.py).
GC_THRESHOLDS: Final = (700, 10, 100)
# The stream host instead freezes what each batch leaves, live and bounded (`collector.BatchCollector`), and walks
# everything (the frozen objects too) once per this many seconds, so a garbage cycle is freed within that time.
# Automatic collection walked a batch's temporaries two or three times and a replay's open windows (about 120,000
# entries per 1,000 participants: the late-data horizon keeps minute windows for hours) at every full collection: a
# fifth of a 4-hour replay's CPU (scripts/bench_replay.py), a tenth of the feature processor's in its harness
# (scripts/bench_features.py); collecting after every batch and on leaving still took 2.4 of a 6-hour replay's
# 37.5 CPU-s (0.9 now).
FULL_COLLECTION_EVERY_S: Final = 10.0

# Feature store worker (issue 5).
STORE_BATCH_MAX: Final = 5000  # records per store batch (one DB transaction, one offset commit)
STORE_BATCH_WITHIN_S: Final = 0.2  # max wait to fill a store batch
STORE_RETRY_MAX_WAIT_S: Final = 5.0  # cap of the exponential back-off while the database or broker is away
STORE_PAUSED_POLL_S: Final = 0.2  # poll interval of the paused consumer during back-off (keeps group membership)
STORE_STATS_EVERY_S: Final = 10.0  # interval of the worker's progress log line
# Namespace of deterministic (uuid5) ids of the store's ERASURE_COMPLETED audit records.
STORE_ID_NAMESPACE: Final = "9b2e7c41-5d3a-4e8f-b1c6-0a7d4e2f9c58"

# Ingest gateway (issue 3).
INGEST_MAX_BLOCK_SAMPLES: Final = 10_000  # samples per telemetry block (hard cap of the API model)
INGEST_MAX_BLOCKS_PER_REQUEST: Final = 1_000  # blocks per POST /v1/telemetry
INGEST_MAX_EVENTS_PER_REQUEST: Final = 1_000  # events per POST /v1/biobank/events
INGEST_MAX_SLEEP_EPISODES: Final = 16  # sleep episodes per block
INGEST_MAX_BODY_BYTES: Final = 16 * 1024 * 1024  # request body as sent (possibly gzip-compressed)
INGEST_MAX_DECODED_BYTES: Final = 32 * 1024 * 1024  # request body after gunzip (zip-bomb guard)
# A gzip body may inflate to at most this many times its size (but always to 1 MiB): JSON telemetry compresses
# 5-20x, a gzip bomb about 1,000x, so a bomb is refused after a tenth of the work (Apache POI's zip-bomb guard
# uses the same bound: a minimum inflate ratio of 0.01).
INGEST_MAX_INFLATE_RATIO: Final = 100
INGEST_MIN_INFLATE_ALLOWANCE_BYTES: Final = 1024 * 1024
INGEST_MAX_FUTURE_SKEW_S: Final = 300  # device clocks may run at most this far ahead (features allow 600 s)
INGEST_MAX_BLOCK_AGE_DAYS: Final = 366  # blocks that start longer ago than this are refused
INGEST_MAX_BLOCK_SPAN_MS: Final = 24 * 3600 * 1000  # last offset of a block (Avro int offsets allow ~24.8 days)
INGEST_DEADLINE_S: Final = 5.0  # broker acknowledgement deadline of one request; then 503 + Retry-After
INGEST_RETRY_AFTER_S: Final = 5  # Retry-After of 503 answers
# 401, 413 and 429 answers are held this long: a client hammering with a bad or over-limit credential (or gzip
# bombs) then costs one waiting coroutine per connection instead of the gateway's CPU.
INGEST_REFUSAL_DELAY_S: Final = 0.25
INGEST_BROKER_PROBE_S: Final = 1.0  # while the broker is down, probe its metadata this often
INGEST_DB_POOL_MAX: Final = 8  # connections of the gateway's credential/idempotency pool
INGEST_MAX_IN_FLIGHT: Final = 128  # intake requests in progress at once; beyond that: 503 (load shedding)
INGEST_TOKEN_SECRET_BYTES: Final = 32  # 256-bit random credential secrets
DEVICE_TOKEN_PREFIX: Final = "csd"  # noqa: S105 (a prefix, not a secret); device tokens look like csd_<key id>.<secret>
LIMS_TOKEN_PREFIX: Final = "csl"  # noqa: S105 (a prefix, not a secret); LIMS API keys look like csl_<key id>.<secret>
# Plausible ranges of wearable readings (field -> default): the gateway refuses a block with a reading outside.
# Wrist skin runs below core temperature: a wide band.
INGEST_PLAUSIBLE: Final[Mapping[str, float]] = MappingProxyType({
    "hr_min_bpm": 20.0, "hr_max_bpm": 250.0, "rr_min_ms": 200.0, "rr_max_ms": 3000.0,
    "spo2_min_percent": 50.0, "spo2_max_percent": 100.0, "skin_min_c": 20.0, "skin_max_c": 43.0})
# Analytes whose LOINC code and UCUM unit the gateway enforces (analyte -> (LOINC, unit)).
KNOWN_ASSAYS: Final = {"CRP": ("1988-5", "mg/L"), "HSCRP": ("30522-7", "mg/L")}
CRP_FLARE_MG_L: Final = 5.0  # CRP above this marks an inflammatory flare (simulator ground truth)

# Federated training (issue 7). flwr 1.42 serves the SuperLink's Fleet, Control and runtime (ServerAppIo) APIs on
# one HTTP port; SuperNode i serves its runtime (ClientAppIo) API on FLOWER_CLIENTAPPIO_BASE_PORT + i.
FLOWER_SUPERLINK_PORT: Final = FLOWER_FLEET_PORT
LOINC_CRP: Final = "1988-5"
FEDERATED_MIN_PARTICIPANTS: Final = 10  # a site declines a round with fewer participants (small-cell rule)
FEDERATED_LOOKBACK_DAYS: Final = 7  # wearable days before a blood sample that make one example
FEDERATED_BASELINE_DAYS: Final = 28  # earlier days that make the participant's own baseline
FEDERATED_BASELINE_MIN_DAYS: Final = 3  # a baseline needs at least this many days with data
FEDERATED_TEST_FRACTION: Final = 0.4  # share of each site's participants held out for testing
FEDERATED_SCORE_BINS: Final = 20  # score histogram bins a site reports (pooled ROC AUC at the server)
FEDERATED_READER_ROLE_PREFIX: Final = "fl_reader_"  # + site id with '_': the ClientApp's read-only DB role
FEDERATED_RUN_TIMEOUT_S: Final = 900.0  # `clinstream federated run/demo` gives up after this long
# Filling a site through its real pipeline with the simulators (federated/pipeline_fill.py).
FEDERATED_FILL_DAYS: Final = 24  # days of wearable telemetry per participant
FEDERATED_FILL_RUN_IN_DAYS: Final = 9  # wearable days before the first visit (7-day lookback + a short baseline)
FEDERATED_FILL_VISIT_EVERY_DAYS: Final = 3.0  # mean days between routine blood samples
FEDERATED_FILL_ANCHOR_DAYS: Final = 28  # the window ends on this grid, so a cohort's data changes monthly
FEDERATED_FILL_STEP_DAYS: Final = 4  # the device simulator generates this many days at a time
FEDERATED_FILL_PARALLEL: Final = 2  # sites filled at once (each runs its own gateway and workers)
FEDERATED_FILL_DAY_VARIABILITY: Final = 1.0  # the simulated cohorts' day-to-day variability
FEDERATED_FILL_FLARE_RESPONSE: Final = 0.5  # SD of the log flare-response gains between people

# Replay, dead-letter re-drive and lag tools (issue 6).
REPLAY_BATCH_MAX: Final = 5000  # input records per replay batch (one DB transaction, one checkpoint at most)
REPLAY_FINISH_CHUNK: Final = 5000  # open windows per delivery when a features replay ends (a store transaction each)
REPLAY_CHECKPOINT_EVERY_S: Final = 10.0  # a replay writes its offsets + processor state at most this often
REPLAY_POLL_S: Final = 0.5  # consumer poll timeout of replay and re-drive loops
REPLAY_WORKER_POLL_S: Final = 0.2  # how often a replay split into worker processes reports their progress
REPLAY_IDLE_CHECKS: Final = 2  # empty polls after which partitions whose position passed their end are done
REDRIVE_BATCH_MAX: Final = 500  # dead letters judged per re-drive batch (one produce, one offset commit)
REDRIVE_METADATA_MAX_CHARS: Final = 3000  # pending-offset list kept in the commit metadata (broker limit 4096)
HEADER_REPLAY_RUN: Final = "clinstream.replay-run"  # on DLQ records written by a replay: its run id
HEADER_REDRIVEN_FROM: Final = "clinstream.redriven-from"  # on re-driven records: <dlq topic>:<partition>:<offset>
# On ingest dead letters (raw zone only): what a re-drive needs to rebuild the record as the gateway would.
HEADER_INGEST_ENDPOINT: Final = "clinstream.ingest.endpoint"  # telemetry | biobank
HEADER_INGEST_RECEIVED_AT: Final = "clinstream.ingest.received-at"  # receipt of the request, epoch ms (decimal)
HEADER_INGEST_DEVICE_ID: Final = "clinstream.ingest.device-id"  # telemetry: the authenticated device (identifier)
HEADER_INGEST_PARTICIPANT_ID: Final = "clinstream.ingest.participant-id"  # telemetry: its credential's participant
HEADER_INGEST_LIMS_KEY: Final = "clinstream.ingest.lims-key-id"  # biobank: key id of the LIMS credential

# --- Researcher exports and the site console (console) ----------------------------------------------------------
EXPORT_BATCH_ROWS: Final = 50_000  # rows per server-side cursor fetch and per Parquet/CSV record batch
CONSOLE_PORT: Final = 18090
CONSOLE_HOST: Final = "127.0.0.1"  # loopback unless the operator says otherwise
CONSOLE_TOKEN_ENV: Final = "CLINSTREAM_CONSOLE_TOKEN"  # noqa: S105 - the name of the variable, not a secret
CONSOLE_MIN_TOKEN_CHARS: Final = 24
CONSOLE_DB_POOL_MAX: Final = 4
CONSOLE_STATEMENT_TIMEOUT_MS: Final = 5_000
CONSOLE_SNAPSHOT_TIMEOUT_MS: Final = 120_000  # the background cohort aggregates
CONSOLE_LAG_TTL_S: Final = 5.0  # consumer-group lag is read from the broker at most this often
CONSOLE_TIMELINE_DAYS: Final = 14  # participant timelines show this many days before the newest window

# The gateway at the edge (ingest-edge; issues 12, 14, 16, 17).
INGEST_MAX_JSON_DEPTH: Final = 32  # nesting levels of a request body (orjson.dumps stops at 254; real bodies use 5)
INGEST_CREDENTIAL_SCHEMA_PREFIX: Final = "cred_"  # + site id with '_': the schema of device and LIMS credentials
INGEST_CREDENTIAL_CHANNEL: Final = "clinstream_credentials"  # NOTIFY channel of credential changes (cache eviction)
# Fallback only: a cached credential is looked up again after this long. Changes evict at once (LISTEN/NOTIFY) and
# nothing is cached while the listening connection is down. Longer than devices' upload interval (about a minute),
# so most requests hit the cache (at 30 s none of a once-a-minute device's did).
INGEST_CREDENTIAL_CACHE_TTL_S: Final = 300.0
INGEST_BROKER_LOG_EVERY_S: Final = 30.0  # while the broker is unreachable, one summary log line this often

# Crash points of the stream host (fault tests only): enabled by these environment variables, never by settings.
CRASH_POINT_ENV: Final = "CLINSTREAM_CRASH_POINT"  # the checkpoint step after which the worker dies
CRASH_WHEN_ENV: Final = "CLINSTREAM_CRASH_WHEN"  # only in a batch whose result counts this (e.g. "withdrawals")
CRASH_TIMES_ENV: Final = "CLINSTREAM_CRASH_TIMES"  # how many times per data dir (default 1)
EXIT_CRASH_POINT: Final = 71  # exit status of a worker stopped at a crash point
EXIT_INTERRUPTED: Final = 130  # exit status of a replay asked to stop, checkpointed and resumable
# Prometheus endpoints of the stream workers (CLINSTREAM_METRICS_PORT; 0 = off): each stage serves on the base port
# plus its offset, on loopback unless CLINSTREAM_METRICS_HOST says otherwise.
METRICS_HOST: Final = "127.0.0.1"
METRICS_PORT_OFFSETS: Final[Mapping[str, int]] = MappingProxyType({"pseudonymise": 0, "features": 1, "store": 2})
# Upper bounds (s) of the stream workers' batch-latency histogram (one batch: process, produce, commit).
METRICS_BATCH_SECONDS_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
METRICS_REASON_MAX_WORDS: Final = 8  # a dead-letter reason label keeps its first plain words
