"""The feature catalogue: every emitted feature with its unit, windows, version, LOINC code and definition."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clinstream.features.windows import ALL_KINDS, DAY_KINDS, WindowKind

FEATURE_VERSION = 2  # 2: lineage cut per ancestor at its own split; SPREC 2.0 table (issue 11)

# Feature set names (FeatureRecord.feature_set).
HEART_RATE = "heart_rate"
HRV = "hrv"
STEPS = "steps"
SPO2 = "spo2"
SKIN_TEMPERATURE = "skin_temperature"
SLEEP = "sleep"
WEARABLE_SETS: tuple[str, ...] = (HEART_RATE, HRV, STEPS, SPO2, SKIN_TEMPERATURE, SLEEP)
SAMPLE = "sample"  # the SampleFeatureRecord columns
COMPLETENESS = "all"  # the completeness column of every wearable row

_LOCAL: tuple[WindowKind, ...] = (WindowKind.LOCAL_DAY,)


@dataclass(frozen=True)
class FeatureDef:
    """One catalogue entry."""

    feature_set: str
    name: str
    unit: str  # UCUM
    windows: tuple[WindowKind, ...]
    definition: str
    loinc: str | None = None
    version: int = FEATURE_VERSION

    def row(self) -> dict[str, Any]:
        """This entry as a row of the store's `feature_catalogue` table."""
        return {"feature_set": self.feature_set, "name": self.name, "unit": self.unit,
                "windows": [w.value for w in self.windows], "version": self.version, "loinc": self.loinc,
                "definition": self.definition}


_SAMPLE_WINDOWS: tuple[WindowKind, ...] = ()

CATALOGUE: tuple[FeatureDef, ...] = (
    FeatureDef(COMPLETENESS, "completeness", "1", ALL_KINDS,
               "Wear-time share of the window: distinct minutes with at least one plausible heart-rate sample / "
               "minutes in the window; carried by every wearable feature row."),
    FeatureDef(HEART_RATE, "mean", "/min", ALL_KINDS, "Mean of the plausible heart-rate samples in the window.",
               "8867-4"),
    FeatureDef(HEART_RATE, "min", "/min", ALL_KINDS, "Minimum heart-rate sample in the window.", "8867-4"),
    FeatureDef(HEART_RATE, "max", "/min", ALL_KINDS,
               "Maximum heart-rate sample in the window (on DAY windows this is the 24-h maximum, LOINC 8873-2).",
               "8867-4"),
    FeatureDef(HEART_RATE, "sd", "/min", ALL_KINDS, "Sample standard deviation (ddof=1) of the heart-rate samples.",
               None),
    FeatureDef(HEART_RATE, "count", "{samples}", ALL_KINDS, "Number of plausible heart-rate samples in the window.",
               None),
    FeatureDef(HEART_RATE, "resting", "/min", DAY_KINDS,
               "Resting heart rate: the 10th percentile (nearest rank, inverted CDF) of the day's heart-rate samples, "
               "each rounded half up to whole bpm (exact 1-bpm histogram).", "40443-4"),
    FeatureDef(HRV, "sdnn", "ms", ALL_KINDS,
               "SDNN: sample SD (ddof=1) of the NN intervals (RR within 300-2000 ms) ending in the window.", None),
    FeatureDef(HRV, "rmssd", "ms", ALL_KINDS,
               "RMSSD: root mean square of successive NN differences; a pair counts only if both intervals are "
               "consecutive NN intervals of one block and end in the same window.", None),
    FeatureDef(HRV, "pnn50", "%", ALL_KINDS,
               "pNN50: 100 x successive NN differences > 50 ms / all successive differences (pairs as for RMSSD; "
               "hrv-analysis' default denominator).", None),
    FeatureDef(HRV, "n_intervals", "{intervals}", ALL_KINDS, "Number of NN intervals (RR within 300-2000 ms).",
               None),
    FeatureDef(STEPS, "total", "{steps}", ALL_KINDS,
               "Sum of step counts of the intervals starting in the window (LOINC 41950-7 on DAY windows).",
               "55423-8"),
    FeatureDef(STEPS, "active_minutes", "min", ALL_KINDS,
               "Minutes of the window whose step count (intervals assigned to the minute of their start) is at "
               "least the site threshold (default 60).", None),
    FeatureDef(SPO2, "mean", "%", ALL_KINDS, "Mean SpO2 by pulse oximetry (LOINC 2708-6 for SpO2 in general).",
               "59408-5"),
    FeatureDef(SPO2, "min", "%", ALL_KINDS, "Minimum SpO2 reading in the window.", "59408-5"),
    FeatureDef(SPO2, "minutes_below_90", "min", ALL_KINDS, "Distinct minutes with any SpO2 reading below 90 %.",
               None),
    FeatureDef(SKIN_TEMPERATURE, "mean", "Cel", ALL_KINDS, "Mean skin temperature (any skin location).", "8310-5"),
    FeatureDef(SKIN_TEMPERATURE, "baseline_deviation", "Cel", _LOCAL,
               "Final local-day mean minus the mean of the local-day means of the previous 7 local days; present "
               "once at least 3 of those days have data.", None),
    FeatureDef(SLEEP, "total_sleep_time_min", "min", _LOCAL,
               "Total sleep time of the episodes ending on the participant-local date.", "93832-4"),
    FeatureDef(SLEEP, "time_in_bed_min", "min", _LOCAL,
               "Time in bed: sum of the durations (end - start) of those episodes.", None),
    FeatureDef(SLEEP, "efficiency", "1", _LOCAL, "Total sleep time / time in bed.", None),
    FeatureDef(SLEEP, "episodes", "{episodes}", _LOCAL, "Number of distinct episodes ending on that local date.",
               None),
    FeatureDef(SAMPLE, "collection_to_centrifugation_min", "min", _SAMPLE_WINDOWS,
               "Minutes from collection to the first centrifugation of the sample's lineage: its own events plus "
               "each ancestor's processing events up to the moment its own line was split off (ISBER SPREC "
               "pre-centrifugation delay, Lehmann et al. 2012, Biopreserv Biobank 10:366). Absent until both are "
               "recorded.", None),
    FeatureDef(SAMPLE, "collection_to_freezing_min", "min", _SAMPLE_WINDOWS,
               "Minutes from collection to the first freezing of the sample's lineage (lineage as above). Absent "
               "until both are recorded.", None),
    FeatureDef(SAMPLE, "sprec", "", _SAMPLE_WINDOWS,
               "SPREC 2.0 fluid code (Lehmann et al. 2012, Biopreserv Biobank 10:366, Table 1; PMC6463986), each "
               "element looked up in the table data of features/sprec_table.py from the lineage's recorded times, "
               "temperatures (RT 18-28 degC, 2-10 degC), centrifugation g-force, duration, temperature and braking, "
               "and storage container and band: type, primary container, pre-centrifugation, centrifugation, second "
               "centrifugation, post-centrifugation, long-term storage; X = unknown, Z = other, N = none. Fluid "
               "sample types only.", None),
    FeatureDef(SAMPLE, "freeze_thaw_count", "{cycles}", _SAMPLE_WINDOWS,
               "THAWED events of the lineage after its first FROZEN event; an ancestor's thaw after the split that "
               "led to the sample is not counted.", None),
    FeatureDef(SAMPLE, "temperature_excursions", "{events}", _SAMPLE_WINDOWS,
               "The sample's events, while stored, whose recorded temperature lies outside its storage band.", None),
    FeatureDef(SAMPLE, "status", "", _SAMPLE_WINDOWS,
               "available, shipped, distributed or disposed, from the latest status-changing event.", None),
    FeatureDef(SAMPLE, "assays", "", _SAMPLE_WINDOWS, "Latest assay value per LOINC code (e.g. CRP 1988-5).", None),
)


def catalogue_rows(version: int = FEATURE_VERSION) -> list[dict[str, Any]]:
    """Rows for the store's `feature_catalogue` table (feature_set, name, unit, windows, version, loinc, definition)."""
    return [d.row() for d in CATALOGUE if d.version == version]


def names_of(feature_set: str) -> tuple[str, ...]:
    """The catalogue names of one feature set, in catalogue order."""
    return tuple(d.name for d in CATALOGUE if d.feature_set == feature_set)
