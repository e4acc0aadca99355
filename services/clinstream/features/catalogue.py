"""The feature catalogue: every emitted feature with its unit, windows, version, LOINC code and definition."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from clinstream.features.windows import ALL_KINDS, DAY_KINDS, WindowKind

FEATURE_VERSION = 1  # the default live version (CLINSTREAM_FEATURES_VERSION selects another)
LATEST_VERSION = 2  # research-grade definitions: replay into it, `features promote`, then run the worker on it
VERSIONS: tuple[int, ...] = (1, 2)

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
    version: int = 1
    citation: str = ""
    minimum_data: str = ""

    def row(self) -> dict[str, Any]:
        """This entry as a row of the store's `feature_catalogue` table (source and minimum data in the text)."""
        text = self.definition
        if self.citation:
            text += f" Source: {self.citation}."
        if self.minimum_data:
            text += f" Minimum data: {self.minimum_data}."
        return {"feature_set": self.feature_set, "name": self.name, "unit": self.unit,
                "windows": [w.value for w in self.windows], "version": self.version, "loinc": self.loinc,
                "definition": text, "citation": self.citation, "minimum_data": self.minimum_data}


_SAMPLE_WINDOWS: tuple[WindowKind, ...] = ()
_SUB_DAY: tuple[WindowKind, ...] = (WindowKind.MINUTE, WindowKind.HOUR)
_HRV_WINDOWS: tuple[WindowKind, ...] = (WindowKind.HOUR, *DAY_KINDS)

TASK_FORCE = ("Task Force of the ESC and NASPE 1996, Heart rate variability: standards of measurement, "
              "Eur Heart J 17:354-381 / Circulation 93:1043-1065")
MALIK = ("percent-change rule (20 % of the previous interval): Malik M et al. 1989, Eur Heart J 10:1060-1074; "
         "Kamath MV & Fallen EL 1995, in Malik & Camm (eds) Heart Rate Variability, Futura, pp 75-85")
NHANES = "Troiano RP et al. 2008, Med Sci Sports Exerc 40:181-188 (NHANES valid day: at least 10 h of wear)"
TUDOR_LOCKE = "Tudor-Locke C et al. 2018, Br J Sports Med 52:776-788 (100 steps/min = moderate intensity)"
SPEED = ("Speed C et al. 2023, PLOS Digit Health 2:e0000236 (resting HR: lowest HR of the 24-h cycle after "
         "about 4 min of inactivity)")
IEEE_1752 = "IEEE 1752.1 / Open mHealth sleep-episode schema"
_DAY_RULE = "day windows need at least 10 h of wear (quality_ok=0 otherwise); shorter windows half of the window"

_V1: tuple[FeatureDef, ...] = (
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
               "Minutes from collection (own, else inherited from the parent) to the first centrifugation of the "
               "sample's lineage.", None),
    FeatureDef(SAMPLE, "collection_to_freezing_min", "min", _SAMPLE_WINDOWS,
               "Minutes from collection to the first freezing of the sample's lineage.", None),
    FeatureDef(SAMPLE, "sprec", "", _SAMPLE_WINDOWS,
               "SPREC fluid code derived from the events: type, container, pre-centrifugation (A-G), "
               "centrifugation and second centrifugation (N = none), post-centrifugation, storage; X = unknown, "
               "Z = other.", None),
    FeatureDef(SAMPLE, "freeze_thaw_count", "{cycles}", _SAMPLE_WINDOWS,
               "THAWED events of the lineage after its first FROZEN event.", None),
    FeatureDef(SAMPLE, "temperature_excursions", "{events}", _SAMPLE_WINDOWS,
               "The sample's events, while stored, whose recorded temperature lies outside its storage band.", None),
    FeatureDef(SAMPLE, "status", "", _SAMPLE_WINDOWS,
               "available, shipped, distributed or disposed, from the latest status-changing event.", None),
    FeatureDef(SAMPLE, "assays", "", _SAMPLE_WINDOWS, "Latest assay value per LOINC code (e.g. CRP 1988-5).", None),
)

_V2: tuple[FeatureDef, ...] = (
    FeatureDef(COMPLETENESS, "completeness", "1", ALL_KINDS,
               "Coverage: distinct minutes with at least one plausible heart-rate sample / the window's true length "
               "in minutes (LOCAL_DAY: 1380, 1440 or 1500 in the participant's IANA zone); carried by every "
               "wearable feature row.", version=2, citation=NHANES),
    FeatureDef(COMPLETENESS, "quality_ok", "1", ALL_KINDS,
               "1 when the row meets its feature set's minimum-data rule, else 0 (filter on it).", version=2,
               citation=NHANES, minimum_data=_DAY_RULE + "; HRV also at least 5 min of NN intervals"),
    FeatureDef(COMPLETENESS, "offset_mismatch_blocks", "{blocks}", _LOCAL,
               "Blocks of the local day whose UTC offset disagrees with the participant's zone at the block start "
               "(counted, not re-dated; the zone defines the day).", version=2),
    FeatureDef(HEART_RATE, "mean", "/min", ALL_KINDS, "Mean of the plausible heart-rate samples in the window.",
               "8867-4", version=2, minimum_data=_DAY_RULE),
    FeatureDef(HEART_RATE, "min", "/min", ALL_KINDS, "Minimum heart-rate sample in the window.", "8867-4",
               version=2, minimum_data=_DAY_RULE),
    FeatureDef(HEART_RATE, "max", "/min", ALL_KINDS,
               "Maximum heart-rate sample in the window (on DAY windows the 24-h maximum, LOINC 8873-2).", "8867-4",
               version=2, minimum_data=_DAY_RULE),
    FeatureDef(HEART_RATE, "sd", "/min", ALL_KINDS, "Sample standard deviation (ddof=1) of the heart-rate samples.",
               None, version=2, minimum_data="2 samples"),
    FeatureDef(HEART_RATE, "count", "{samples}", ALL_KINDS, "Number of plausible heart-rate samples in the window.",
               None, version=2),
    FeatureDef(HEART_RATE, "resting", "/min", DAY_KINDS,
               "Resting heart rate: the lowest mean heart rate of a 5-minute epoch (aligned to the window start) "
               "worn in all of its 5 minutes.", "40443-4", version=2, citation=SPEED,
               minimum_data="withheld (absent) below 10 h of wear in the day (NHANES valid day)"),
    FeatureDef(HRV, "sdnn", "ms", _HRV_WINDOWS,
               "SDNN: sample standard deviation (ddof=1, denominator n-1) of the accepted NN intervals ending in the "
               "window. NN: RR within 300-2000 ms and not rejected by the percent-change rule (an interval "
               "differing by more than 20 % from the previous interval of the device's beat series; block "
               "boundaries of contiguous blocks do not break the series).", version=2,
               citation=f"{TASK_FORCE}; artefacts: {MALIK}",
               minimum_data="withheld below 5 min of NN intervals (Task Force short-term recording); no MINUTE "
                            "windows (ultra-short-term); DAY values are 24-h values only when quality_ok=1"),
    FeatureDef(HRV, "rmssd", "ms", _HRV_WINDOWS,
               "RMSSD: square root of the mean of the squared successive differences; denominator = number of "
               "successive differences whose two intervals are both accepted (n_differences), including the "
               "difference across contiguous blocks of one device.", version=2, citation=TASK_FORCE,
               minimum_data="as sdnn"),
    FeatureDef(HRV, "pnn50", "%", _HRV_WINDOWS,
               "pNN50: 100 x successive differences with |difference| > 50 ms / n_differences (the same "
               "differences as rmssd; hrv-analysis' denominator).", version=2, citation=TASK_FORCE,
               minimum_data="as sdnn"),
    FeatureDef(HRV, "n_intervals", "{intervals}", _HRV_WINDOWS, "Number of accepted NN intervals.", version=2),
    FeatureDef(HRV, "n_differences", "{differences}", _HRV_WINDOWS,
               "Number of successive differences with both intervals accepted (the RMSSD/pNN50 denominator).",
               version=2),
    FeatureDef(HRV, "rejected_beats", "{intervals}", _HRV_WINDOWS,
               "RR intervals rejected (out of range or by the percent-change rule).", version=2, citation=MALIK),
    FeatureDef(HRV, "rejected_share", "1", _HRV_WINDOWS, "rejected_beats / all RR intervals of the window.",
               version=2),
    FeatureDef(HRV, "nn_minutes", "min", _HRV_WINDOWS, "Sum of the accepted NN intervals, in minutes.", version=2),
    FeatureDef(STEPS, "total", "{steps}", ALL_KINDS,
               "Steps in the window: each interval's count spread over its duration (durations_s) in proportion "
               "to the overlap with each minute (LOINC 41950-7 on DAY windows).", "55423-8", version=2,
               citation="Open mHealth step-count schema (steps over a time interval)", minimum_data=_DAY_RULE),
    FeatureDef(STEPS, "active_minutes", "min", ALL_KINDS,
               "Minutes of the window with a (spread) cadence of at least 100 steps/min (site setting "
               "active_cadence_spm).", version=2, citation=TUDOR_LOCKE, minimum_data=_DAY_RULE),
    FeatureDef(SPO2, "mean", "%", ALL_KINDS, "Mean SpO2 by pulse oximetry (unweighted mean of the readings).",
               "59408-5", version=2, minimum_data=_DAY_RULE),
    FeatureDef(SPO2, "min", "%", ALL_KINDS, "Minimum SpO2 reading in the window.", "59408-5", version=2),
    FeatureDef(SPO2, "time_below_90_min", "min", ALL_KINDS,
               "T90: time with SpO2 below the threshold, time-weighted: each reading stands until the next reading "
               "of its block (at most 60 s; a block's last reading for the block's median spacing). Named for the "
               "configured threshold (time_below_<threshold>_min, '.' written '_').", version=2,
               citation="T90, cumulative time with SpO2 below 90 % (sleep-oximetry convention, time-weighted)",
               minimum_data=_DAY_RULE),
    FeatureDef(SPO2, "share_below_90_percent", "%", ALL_KINDS,
               "100 x time below the threshold / time observed (named like time_below_90_min).", version=2),
    FeatureDef(SPO2, "time_observed_min", "min", ALL_KINDS, "Time covered by the readings (as above).", version=2),
    FeatureDef(SKIN_TEMPERATURE, "mean", "Cel", ALL_KINDS, "Mean skin temperature (any skin location).", "8310-5",
               version=2, minimum_data=_DAY_RULE),
    FeatureDef(SKIN_TEMPERATURE, "baseline_deviation", "Cel", _LOCAL,
               "Final local-day mean minus the mean of the local-day means of the previous 7 local dates (keyed by "
               "the participant-local date in their zone); present once at least 3 of those days have data.",
               version=2),
    FeatureDef(SLEEP, "total_sleep_time_min", "min", _LOCAL,
               "Total sleep time of the episodes ending on the local date, after revisions (a later block's "
               "overlapping episode of the same device replaces the earlier one) and merging overlaps (per merged "
               "episode the largest total sleep time, at most its union).", "93832-4", version=2,
               citation=IEEE_1752),
    FeatureDef(SLEEP, "time_in_bed_min", "min", _LOCAL, "Length of the union of those episodes.", version=2,
               citation=IEEE_1752),
    FeatureDef(SLEEP, "efficiency", "1", _LOCAL, "Total sleep time / time in bed.", version=2),
    FeatureDef(SLEEP, "episodes", "{episodes}", _LOCAL, "Number of merged episodes ending on that local date.",
               version=2),
)
SPREC_2 = ("Lehmann S et al. 2012, Standard preanalytical coding for biospecimens: review and implementation of the "
           "Sample PREanalytical Code (SPREC), Biopreserv Biobank 10:366-374, Table 1 (SPREC 2.0, fluids; PMC6463986)")
_LINEAGE = ("a derived sample's lineage: its own events plus each ancestor's processing events up to the moment its "
            "own line was split off that ancestor (ALIQUOTED, else its first own event)")
_SAMPLE_V2_CHANGED: tuple[FeatureDef, ...] = (
    FeatureDef(SAMPLE, "collection_to_centrifugation_min", "min", _SAMPLE_WINDOWS,
               f"Minutes from collection to the first centrifugation of the sample's lineage ({_LINEAGE}).",
               version=2, citation=SPREC_2, minimum_data="a collection and a centrifugation in the lineage"),
    FeatureDef(SAMPLE, "collection_to_freezing_min", "min", _SAMPLE_WINDOWS,
               "Minutes from collection to the first freezing of the sample's lineage (as above).", version=2,
               minimum_data="a collection and a freezing in the lineage"),
    FeatureDef(SAMPLE, "sprec", "", _SAMPLE_WINDOWS,
               "SPREC 2.0 fluid code of the lineage, every element looked up in the table data of "
               "features/sprec_table.py: type, primary container, pre-centrifugation (delay and temperature class, "
               "RT 18-28 degC or 2-10 degC), centrifugation and second centrifugation (from recorded temperature, "
               "duration, g-force and braking), post-centrifugation delay, long-term storage (container and band); "
               "X = unknown, Z = other, N = none.", version=2, citation=SPREC_2,
               minimum_data="a fluid sample type; an element lacking its facts is X"),
    FeatureDef(SAMPLE, "freeze_thaw_count", "{cycles}", _SAMPLE_WINDOWS,
               "THAWED events of the lineage after its first FROZEN event; an ancestor's thaw after the split "
               "that led to the sample is not counted.", version=2),
)
_SAMPLE_V2 = (*_SAMPLE_V2_CHANGED, *(replace(d, version=2) for d in _V1 if d.feature_set == SAMPLE
                                     and d.name not in {c.name for c in _SAMPLE_V2_CHANGED}))
CATALOGUE: tuple[FeatureDef, ...] = (*_V1, *_V2, *_SAMPLE_V2)


def catalogue_rows(version: int | None = None) -> list[dict[str, Any]]:
    """Rows for the store's `feature_catalogue` table (every version unless one is given)."""
    return [d.row() for d in CATALOGUE if version is None or d.version == version]


def definitions_version(version: int) -> int:
    """The definitions a stored version is computed with: the newest known version at or below it (a replay may
    write into a fresh version number, e.g. after a fix, and computes with the newest definitions)."""
    known = [v for v in VERSIONS if v <= version]
    if not known:
        raise ValueError(f"unknown feature version {version}; versions start at {VERSIONS[0]}")
    return max(known)


def names_of(feature_set: str, version: int = FEATURE_VERSION) -> tuple[str, ...]:
    """The catalogue names of one feature set in one version, in catalogue order."""
    defs = definitions_version(version)
    return tuple(d.name for d in CATALOGUE if d.feature_set == feature_set and d.version == defs)
