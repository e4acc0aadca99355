"""Settings base of the plausible ranges of wearable readings (heart rate, RR, SpO2, skin temperature)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Self

from pydantic import model_validator
from pydantic_settings import BaseSettings


class PlausibleRanges(BaseSettings):
    """A min and a max per reading kind, each min below its max; a subclass names its defaults.

    The gateway and the features stage judge the same readings against their own bands (the gateway refuses a
    block, features leave a reading out), so the fields and their check are written once, the defaults twice.
    """

    plausible_defaults: ClassVar[Mapping[str, float]] = {}

    hr_min_bpm: float
    hr_max_bpm: float
    rr_min_ms: float
    rr_max_ms: float
    spo2_min_percent: float
    spo2_max_percent: float
    skin_min_c: float
    skin_max_c: float

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {**cls.plausible_defaults, **data}
        return data

    @model_validator(mode="after")
    def _ranges(self) -> Self:
        for lo, hi in ((self.hr_min_bpm, self.hr_max_bpm), (self.rr_min_ms, self.rr_max_ms),
                       (self.spo2_min_percent, self.spo2_max_percent), (self.skin_min_c, self.skin_max_c)):
            if lo >= hi:
                raise ValueError("every plausible range needs min < max")
        return self
