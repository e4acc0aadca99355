"""The declarative topic catalogue of one site, and its idempotent application through the Admin API."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from clinstream.core import constants as c
from clinstream.core.config import Settings

DAY_MS = 24 * 3600 * 1000


class Zone(StrEnum):
    """Privacy zone of a topic: raw topics may hold identifiers, all others never do."""

    RAW = "raw"
    PSEUDO = "pseudo"
    FEATURE = "feature"


class Stage(StrEnum):
    """Processing stages; each has its own dead-letter topic."""

    INGEST = "ingest"
    PSEUDONYMISE = "pseudonymise"
    FEATURES = "features"
    STORE = "store"


@dataclass(frozen=True)
class TopicSpec:
    """One topic: its name parts, layout, retention and the value schema it carries."""

    zone: Zone
    dataset: str
    version: int
    value_schema: str
    doc: str
    compacted: bool = False
    retention_ms: int = 30 * DAY_MS
    partitions: int | None = None  # None: the site's default

    def name(self, site_id: str) -> str:
        """Topic name: <site>.<zone>.<dataset>.v<version>."""
        return f"{site_id}.{self.zone.value}.{self.dataset}.v{self.version}"


RAW_TELEMETRY = TopicSpec(Zone.RAW, "telemetry", 1, "org.clinstream.telemetry.TelemetryBlock",
                          "Wearable blocks as accepted by the gateway, keyed by participant id.")
RAW_BIOBANK = TopicSpec(Zone.RAW, "biobank", 1, "org.clinstream.biobank.BiobankEvent",
                        "LIMS sample, assay and consent events, keyed by participant id.")
PSEUDO_TELEMETRY = TopicSpec(Zone.PSEUDO, "telemetry", 1, "org.clinstream.telemetry.PseudonymisedTelemetryBlock",
                             "Pseudonymised wearable blocks, keyed by participant pseudonym.")
PSEUDO_BIOBANK = TopicSpec(Zone.PSEUDO, "biobank", 1, "org.clinstream.biobank.PseudonymisedBiobankEvent",
                           "Pseudonymised LIMS events, keyed by participant pseudonym.")
CONSENT = TopicSpec(Zone.PSEUDO, "consent", 1, "org.clinstream.control.ConsentState",
                    "Latest consent state per participant pseudonym (compacted).", compacted=True,
                    retention_ms=-1)
ERASURE = TopicSpec(Zone.PSEUDO, "erasure", 1, "org.clinstream.control.ErasureRequest",
                    "Erasure requests after consent withdrawal, keyed by pseudonym.", retention_ms=365 * DAY_MS)
AUDIT = TopicSpec(Zone.PSEUDO, "audit", 1, "org.clinstream.control.AuditRecord",
                  "Audit trail (pseudonym, time, action); kept at least a year.", retention_ms=400 * DAY_MS)
LATE_TELEMETRY = TopicSpec(Zone.PSEUDO, "late-telemetry", 1,
                           "org.clinstream.telemetry.PseudonymisedTelemetryBlock",
                           "Blocks that arrived after their windows' horizon; replay can reprocess them.")
FEATURES = TopicSpec(Zone.FEATURE, "wearable", 1, "org.clinstream.features.FeatureRecord",
                     "Windowed wearable features, keyed by participant pseudonym.")
SAMPLE_FEATURES = TopicSpec(Zone.FEATURE, "sample", 1, "org.clinstream.features.SampleFeatureRecord",
                            "Per-sample biobank features, keyed by participant pseudonym.")

DLQ_SCHEMA = "org.clinstream.DeadLetter"
_DLQ_ZONE = {
    Stage.INGEST: Zone.RAW, Stage.PSEUDONYMISE: Zone.RAW, Stage.FEATURES: Zone.PSEUDO, Stage.STORE: Zone.FEATURE,
}


def dlq(stage: Stage) -> TopicSpec:
    """The dead-letter topic of a stage; it lives in the zone of the stage's input."""
    return TopicSpec(_DLQ_ZONE[stage], f"dlq-{stage.value}", 1, DLQ_SCHEMA,
                     f"Records the {stage.value} stage rejected, with original bytes and reason.",
                     retention_ms=90 * DAY_MS)


ALL_TOPICS: tuple[TopicSpec, ...] = (
    RAW_TELEMETRY, RAW_BIOBANK, PSEUDO_TELEMETRY, PSEUDO_BIOBANK, CONSENT, ERASURE, AUDIT,
    LATE_TELEMETRY, FEATURES, SAMPLE_FEATURES, *(dlq(s) for s in Stage),
)


def topic_configs(spec: TopicSpec, min_insync_replicas: int = 1) -> dict[str, str]:
    """Broker-side configs of a topic; `min_insync_replicas` comes from the settings (1 on a single broker)."""
    cfg = {
        "cleanup.policy": "compact" if spec.compacted else "delete",
        "retention.ms": str(spec.retention_ms),
        "min.insync.replicas": str(min_insync_replicas),
    }
    if spec.compacted:
        cfg["min.cleanable.dirty.ratio"] = "0.1"
    return cfg


# The state table of each stateful stage (the stage modules name theirs alike). Their changelogs are created with
# the site's topics (and by a worker at start if missing), so the new owner of a moved partition always finds that
# partition's state.
STATE_TABLES: dict[Stage, str] = {Stage.PSEUDONYMISE: "consent", Stage.FEATURES: "feature-state"}


def changelog_name(site_id: str, stage: Stage, table: str) -> str:
    """The changelog topic of a stage's table (`<app id>-<table>-changelog`, the name faust gave it)."""
    return f"clinstream-{site_id}-{stage.value}-{table}-changelog"


def changelog_configs(min_insync_replicas: int = 1) -> dict[str, str]:
    """Broker-side configs of a state changelog: compacted, with a short uncompacted head (bounded restore)."""
    return {
        "cleanup.policy": "compact",
        "min.insync.replicas": str(min_insync_replicas),
        "segment.ms": str(c.CHANGELOG_SEGMENT_MS),
        "segment.bytes": str(c.CHANGELOG_SEGMENT_BYTES),
        "delete.retention.ms": str(c.CHANGELOG_DELETE_RETENTION_MS),
        "min.cleanable.dirty.ratio": c.CHANGELOG_MIN_CLEANABLE_DIRTY_RATIO,
    }


def partitions_of(spec: TopicSpec, settings: Settings) -> int:
    """Partition count of a topic for a site."""
    return spec.partitions or settings.topic_partitions
