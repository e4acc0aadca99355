"""Site-configurable limits of the ingest gateway (CLINSTREAM_INGEST_* environment variables)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from clinstream.core import constants as c
from clinstream.core.plausible_ranges import PlausibleRanges
from clinstream.ingest.time_zones import is_iana_zone


class IngestSettings(PlausibleRanges):
    """Plausible ranges, clock-skew tolerance, size limits and the broker deadline of the gateway.

    A reading outside its plausible range rejects its whole block (the block goes to the ingest DLQ).
    """

    model_config = SettingsConfigDict(env_prefix=c.ENV_PREFIX + "INGEST_", extra="ignore")
    plausible_defaults = c.INGEST_PLAUSIBLE

    accel_max_m_s2: float = Field(default=160.0, gt=0, description="Absolute bound per axis (16 g).")
    max_step_rate_per_s: float = Field(default=5.0, gt=0, description="Steps per second of a counting interval.")
    max_future_skew_s: int = Field(default=c.INGEST_MAX_FUTURE_SKEW_S, ge=0)
    max_block_age_days: int = Field(default=c.INGEST_MAX_BLOCK_AGE_DAYS, ge=1)
    max_block_span_ms: int = Field(default=c.INGEST_MAX_BLOCK_SPAN_MS, ge=1000, le=2**31 - 1)
    max_block_samples: int = Field(default=c.INGEST_MAX_BLOCK_SAMPLES, ge=1, le=c.INGEST_MAX_BLOCK_SAMPLES)
    max_blocks_per_request: int = Field(default=c.INGEST_MAX_BLOCKS_PER_REQUEST, ge=1)
    max_events_per_request: int = Field(default=c.INGEST_MAX_EVENTS_PER_REQUEST, ge=1)
    max_body_bytes: int = Field(default=c.INGEST_MAX_BODY_BYTES, ge=1024)
    max_decoded_bytes: int = Field(default=c.INGEST_MAX_DECODED_BYTES, ge=1024)
    max_inflate_ratio: int = Field(default=c.INGEST_MAX_INFLATE_RATIO, ge=10, description="A gzip body may inflate "
                                   "to this many times its size (and always to 1 MiB); beyond: 413.")
    max_json_depth: int = Field(default=c.INGEST_MAX_JSON_DEPTH, ge=4, le=200,
                                description="Nesting levels of a JSON body; deeper bodies are refused (422).")
    deadline_s: float = Field(default=c.INGEST_DEADLINE_S, gt=0, le=120,
                              description="Broker acknowledgement deadline of one request; then 503.")
    retry_after_s: int = Field(default=c.INGEST_RETRY_AFTER_S, ge=1)
    refusal_delay_s: float = Field(default=c.INGEST_REFUSAL_DELAY_S, ge=0, le=10,
                                   description="401, 413 and 429 answers are held this long (a tarpit for "
                                               "clients that repeat them as fast as they can).")
    broker_probe_s: float = Field(default=c.INGEST_BROKER_PROBE_S, gt=0)
    db_pool_max: int = Field(default=c.INGEST_DB_POOL_MAX, ge=1)
    credential_cache_ttl_s: float = Field(default=c.INGEST_CREDENTIAL_CACHE_TTL_S, ge=0,
                                          description="Fallback expiry of cached credentials (0: no caching); "
                                                      "changes are evicted at once through LISTEN/NOTIFY.")
    # Per-credential limits; None (the default): no limit unless the credential has its own. A site that faces the
    # internet sets them, e.g. 1,200 requests, 600,000 readings and 60,000 LIMS events per minute.
    max_requests_per_min: int | None = Field(default=None, ge=1,
                                             description="Requests per minute of one credential (site default).")
    max_readings_per_min: int | None = Field(default=None, ge=1, description="Readings per minute of one device "
                                             "credential (site default).")
    max_events_per_min: int | None = Field(default=None, ge=1,
                                           description="LIMS events per minute of one API key (site default).")
    gateway_processes: int = Field(default=1, ge=1, description="Gateway processes serving the site; each "
                                   "enforces 1/N of every per-credential limit.")
    time_zone: str | None = Field(default=None, description="The site's default participant time zone (IANA), "
                                  "stamped on the blocks of devices that have no zone from their registration or "
                                  "the LIMS; none if unset.")
    lims_requires_client_cert: bool = Field(default=False, description="LIMS events only through a gateway that "
                                            "verifies client certificates (`clinstream gateway --client-ca`); 403 "
                                            "elsewhere.")
    client_cert_verified: bool = Field(default=False, description="Set by `clinstream gateway --client-ca`: the TLS "
                                       "layer verified every client's certificate.")
    max_in_flight: int = Field(default=c.INGEST_MAX_IN_FLIGHT, ge=1,
                               description="Intake requests processed at once; more are shed with 503.")

    @field_validator("time_zone")
    @classmethod
    def _iana(cls, value: str | None) -> str | None:
        if value is not None and not is_iana_zone(value):
            raise ValueError("CLINSTREAM_INGEST_TIME_ZONE: an IANA name such as Europe/Berlin")
        return value


@lru_cache(maxsize=1)
def get_ingest_settings() -> IngestSettings:
    """Ingest settings of this process, read once."""
    return IngestSettings()
