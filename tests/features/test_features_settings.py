"""The features stage's plausible ranges: their defaults, the site's overrides and the min < max rule."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from clinstream.core.constants import FEATURES_PLAUSIBLE, INGEST_PLAUSIBLE
from clinstream.features.config import FeatureSettings
from clinstream.ingest.config import IngestSettings


def test_each_stage_starts_from_its_own_plausible_ranges() -> None:
    features, ingest = FeatureSettings(), IngestSettings()
    assert {name: getattr(features, name) for name in FEATURES_PLAUSIBLE} == dict(FEATURES_PLAUSIBLE)
    assert {name: getattr(ingest, name) for name in INGEST_PLAUSIBLE} == dict(INGEST_PLAUSIBLE)
    assert (features.rr_min_ms, features.rr_max_ms) == (300.0, 2000.0)  # NN intervals (hrv-analysis default)
    assert (ingest.rr_min_ms, ingest.rr_max_ms) == (200.0, 3000.0)  # the gateway refuses only the impossible


def test_a_site_overrides_one_bound_from_the_environment_and_keeps_the_others(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLINSTREAM_FEATURES_HR_MAX_BPM", "210")
    s = FeatureSettings()
    assert s.hr_max_bpm == 210.0
    assert s.hr_min_bpm == FEATURES_PLAUSIBLE["hr_min_bpm"] and s.skin_max_c == FEATURES_PLAUSIBLE["skin_max_c"]
    assert FeatureSettings(skin_min_c=10.0).skin_min_c == 10.0


@pytest.mark.parametrize(("lo", "hi"), [("hr_min_bpm", "hr_max_bpm"), ("rr_min_ms", "rr_max_ms"),
                                        ("spo2_min_percent", "spo2_max_percent"), ("skin_min_c", "skin_max_c")])
def test_a_range_whose_min_is_not_below_its_max_is_refused(lo: str, hi: str) -> None:
    with pytest.raises(ValidationError, match="min < max"):
        FeatureSettings(**{lo: 50.0, hi: 50.0})
    with pytest.raises(ValidationError, match="min < max"):
        IngestSettings(**{lo: 60.0, hi: 50.0})
