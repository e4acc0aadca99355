"""Validated settings, read from CLINSTREAM_* environment variables or a .env file."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
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
    replication_factor: int = Field(default=1, ge=1, le=5)
    pseudonym_key_file: Path | None = Field(default=None, description="File holding the site's pseudonym key ring.")
    pseudonym_key: SecretStr | None = Field(default=None, description="Pseudonym secret, if not given as a file.")
    produce_timeout_s: float = Field(default=10.0, gt=0, description="Deadline for broker acknowledgement.")

    @field_validator("site_id")
    @classmethod
    def _site_id_shape(cls, value: str) -> str:
        if not _SITE_RE.match(value):
            raise ValueError("site_id must be lower-case letters, digits and '-', starting with a letter (max 31)")
        return value

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
        """Directory for worker state (faust tables) of this site."""
        return self.data_dir.resolve() / "state" / self.site_id


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings of this process, read once."""
    return Settings()
