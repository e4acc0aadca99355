"""Site-configurable parameters of the feature logic (CLINSTREAM_FEATURES_* environment variables)."""

from __future__ import annotations

from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from clinstream.core import constants as c
from clinstream.core.plausible_ranges import PlausibleRanges


class FeatureSettings(PlausibleRanges):
    """Horizons, thresholds and plausible ranges of the feature processor.

    Readings outside a plausible range are left out of every feature (they are not errors of the block).
    """

    model_config = SettingsConfigDict(env_prefix=c.ENV_PREFIX + "FEATURES_", extra="ignore")
    plausible_defaults = c.FEATURES_PLAUSIBLE

    horizon_minute_min: int = Field(default=c.FEATURES_HORIZON_MINUTE_MIN, ge=0)
    horizon_hour_min: int = Field(default=c.FEATURES_HORIZON_HOUR_MIN, ge=0)
    horizon_day_min: int = Field(default=c.FEATURES_HORIZON_DAY_MIN, ge=24 * 60,
                                 description="Horizon of DAY and LOCAL_DAY windows; at least 24 h.")
    max_future_skew_s: int = Field(default=c.FEATURES_MAX_FUTURE_SKEW_S, ge=0)
    active_minute_steps: int = Field(default=c.FEATURES_ACTIVE_MINUTE_STEPS, ge=1)
    resting_hr_percentile: float = Field(default=c.FEATURES_RESTING_HR_PERCENTILE, gt=0, lt=100)
    spo2_low_percent: float = c.FEATURES_SPO2_LOW_PERCENT
    nn50_ms: float = c.FEATURES_NN50_MS
    skin_baseline_days: int = Field(default=c.FEATURES_SKIN_BASELINE_DAYS, ge=1)
    skin_baseline_min_days: int = Field(default=c.FEATURES_SKIN_BASELINE_MIN_DAYS, ge=1)
    version: int = Field(default=1, ge=1, le=2,
                         description="Feature version the live worker computes (1, or 2 after promoting it).")
    default_time_zone: str = Field(default=c.FEATURES_DEFAULT_TIME_ZONE,
                                   description="IANA zone of participants whose blocks carry no time_zone.")
    ectopic_percent: float = Field(default=c.FEATURES_ECTOPIC_PERCENT, gt=0, lt=100)
    rr_contiguity_ms: int = Field(default=c.FEATURES_RR_CONTIGUITY_MS, ge=0)
    hrv_min_nn_min: float = Field(default=c.FEATURES_HRV_MIN_NN_MIN, ge=0)
    active_cadence_spm: int = Field(default=c.FEATURES_ACTIVE_CADENCE_SPM, ge=1)
    valid_day_wear_h: float = Field(default=c.FEATURES_VALID_DAY_WEAR_H, ge=0, le=23)
    spo2_max_hold_s: int = Field(default=c.FEATURES_SPO2_MAX_HOLD_S, ge=1)

    @model_validator(mode="after")
    def _zone_and_baseline(self) -> FeatureSettings:
        try:
            ZoneInfo(self.default_time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"default_time_zone {self.default_time_zone!r} is not an IANA time zone") from None
        if self.skin_baseline_min_days > self.skin_baseline_days:
            raise ValueError("skin_baseline_min_days cannot exceed skin_baseline_days")
        return self


@lru_cache(maxsize=1)
def get_feature_settings() -> FeatureSettings:
    """Feature settings of this process, read once."""
    return FeatureSettings()
