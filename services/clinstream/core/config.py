"""Validated settings, read from CLINSTREAM_* environment variables or a .env file."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from clinstream.core import constants as c

_SITE_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")


class Settings(BaseSettings):
    """Everything a clinstream process needs to find its broker, database and site."""

    model_config = SettingsConfigDict(
        env_prefix=c.ENV_PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    site_id: str = Field(default=c.DEFAULT_SITE_ID, description="Site identifier; prefixes topics and DB schema.")
    kafka_bootstrap: str = Field(default=f"127.0.0.1:{c.KAFKA_BROKER_PORT}", description="Kafka bootstrap servers.")
    kafka_controller_port: int = Field(default=c.KAFKA_CONTROLLER_PORT, ge=1024, le=65535)
    database_url: str = Field(
        default=f"postgresql://{c.DEFAULT_DB_USER}@127.0.0.1:{c.POSTGRES_PORT}/{c.DEFAULT_DATABASE}",
        description="libpq connection URL of the feature store.",
    )
    postgres_port: int = Field(default=c.POSTGRES_PORT, ge=1024, le=65535)
    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(default=c.GATEWAY_PORT, ge=1024, le=65535)
    data_dir: Path = Field(default=Path(__file__).resolve().parents[3] / ".clinstream",
                           description="Local state: Kafka log dirs, PG cluster, worker tables.")
    cache_dir: Path = Field(default=Path.home() / ".cache" / "clinstream",
                            description="Downloads and builds outside the repo (Kafka jars, TimescaleDB source).")
    topic_partitions: int = Field(default=4, ge=1, le=256)
    kafka_brokers: int = Field(default=1, ge=1, le=c.KAFKA_MAX_LOCAL_BROKERS,
                               description="Brokers in the site's Kafka cluster; the local stack starts this many.")
    replication_factor: int = Field(default=1, ge=1, le=5,
                                    description="Replicas per topic; default 3 on a cluster of 3+, else the brokers.")
    min_insync_replicas: int = Field(default=1, ge=1, le=5,
                                     description="Replicas that must hold a record before acks=all returns; "
                                                 "default 2 with 3+ replicas, else 1.")
    broker_failover_s: float = Field(default=0.0, ge=0, le=60,
                                     description="How long the cluster takes to fence a dead broker and move its "
                                                 "partitions; producers that answer clients (the gateway) wait "
                                                 "this long beyond their deadline. Default: the local cluster's "
                                                 "broker session timeout on a cluster, 0 on one broker.")
    pseudonym_key_file: Path | None = Field(default=None, description="File holding the site's pseudonym key ring.")
    pseudonym_key: SecretStr | None = Field(default=None, description="Pseudonym secret, if not given as a file.")
    produce_timeout_s: float = Field(default=10.0, gt=0, description="Deadline for broker acknowledgement.")

    @field_validator("site_id")
    @classmethod
    def _site_id_shape(cls, value: str) -> str:
        if not _SITE_RE.match(value):
            raise ValueError("site_id must be lower-case letters, digits and '-', starting with a letter (max 31)")
        return value

    @model_validator(mode="after")
    def _replication_defaults(self) -> Settings:
        """Derive unset replication settings from the cluster size, then check that they fit together."""
        if "replication_factor" not in self.model_fields_set:
            self.replication_factor = min(self.kafka_brokers, c.CLUSTER_REPLICATION_FACTOR)
        if "min_insync_replicas" not in self.model_fields_set:
            self.min_insync_replicas = default_min_insync_replicas(self.replication_factor)
        if "broker_failover_s" not in self.model_fields_set and self.replication_factor > 1:
            self.broker_failover_s = c.KAFKA_BROKER_SESSION_TIMEOUT_MS / 1000
        if self.replication_factor > self.kafka_brokers:
            raise ValueError(f"replication_factor {self.replication_factor} exceeds kafka_brokers "
                             f"{self.kafka_brokers}: a topic cannot have more replicas than the cluster has brokers")
        if self.min_insync_replicas > self.replication_factor:
            raise ValueError(f"min_insync_replicas {self.min_insync_replicas} exceeds replication_factor "
                             f"{self.replication_factor}: every acks=all write would fail")
        return self

    @property
    def db_schema(self) -> str:
        """The PostgreSQL schema that holds this site's feature store."""
        return "site_" + self.site_id.replace("-", "_")

    @property
    def kafka_dir(self) -> Path:
        """Directory of the local Kafka broker's logs and config."""
        return self.data_dir.resolve() / "kafka"

    @property
    def postgres_dir(self) -> Path:
        """Directory of the local PostgreSQL cluster."""
        return self.data_dir.resolve() / "postgres"

    @property
    def state_dir(self) -> Path:
        """Directory for local worker and replay state (crash-point marks, replay checkpoints) of this site."""
        return self.data_dir.resolve() / "state" / self.site_id


def default_min_insync_replicas(replication_factor: int) -> int:
    """Min ISR that survives one replica down while still writing every record twice: 2 with 3+ replicas, else 1."""
    return max(1, min(c.CLUSTER_MIN_INSYNC_REPLICAS, replication_factor - 1))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings of this process, read once."""
    return Settings()
