"""The SPREC 2.0 fluid code table (Lehmann et al. 2012, Table 1) as data: every row of every element.

Source: Lehmann S, Guadagni F, Moore H, et al. Standard preanalytical coding for biospecimens: review and
implementation of the Sample PREanalytical Code (SPREC). Biopreserv Biobank 2012;10(4):366-374,
doi:10.1089/bio.2012.0012, Table 1 "Preanalytical variables included in SPREC (7-element long SPREC), version
SPREC 2.0, applied to fluid samples" (PMC6463986).

Every row says where it was read (`source`):

- `TABLE_1`: read in Table 1 itself (sample types, primary containers, pre-centrifugation A-G);
- `IMPLEMENTATIONS`: the stored copy of Table 1 ends inside the pre-centrifugation rows, so the remaining rows were
  read in two independent encodings of the code tables that agree on every row used here: SPRECLib ("a Java
  library for the SamplePREanalyticalCode Version 2", github.com/chrmey/SPRECLib at 7a510ac, `model/*List.java`)
  and the `sprecsample_db` MySQL dump of a SPREC sample database. Where SPRECLib repeats a letter (F for the cold
  6000-10000 g spin, G for the straw with programmable freezing) the dump and the letter sequence give H and I.
  Rows those encodings add from SPREC 3.0 (Betsou et al. 2018: containers such as SED/SCK, pre-centrifugation
  35-38 degC, storage in 40-500 uL tubes, PP tubes below -135 degC, original primary container) are not SPREC 2.0
  rows and are left out; such facts are coded Z (other).

Conventions (the table's own words are in `label`): RT is 18-28 degC (the table's footnote to "RT", as encoded by
SPRECLib), cold is 2-10 degC. "a-b h" ranges are half-open [a, b); "<a" is [0, a); ">b" and "b" as the last row
are [b, inf). g-force bands are [0, 3000), [3000, 6000), [6000, 10000] and (10000, inf). "10-15 min" is closed.
X means unknown, Z means other; N means none/not applicable where the element has such a row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

TABLE_1 = "Lehmann et al. 2012, Biopreserv Biobank 10:366, Table 1 (PMC6463986)"
IMPLEMENTATIONS = "SPREC 2.0 rows as encoded by SPRECLib (chrmey/SPRECLib 7a510ac) and the sprecsample_db dump"

UNKNOWN = "X"
OTHER = "Z"
NONE = "N"
UNKNOWN_TYPE = "XXX"
OTHER_TYPE = "ZZZ"


class Temp(Enum):
    """A temperature class of the table."""

    RT = "RT"  # room temperature, 18-28 degC
    COLD = "2-10 degC"


TEMP_RANGE_C: dict[Temp, tuple[float, float]] = {Temp.RT: (18.0, 28.0), Temp.COLD: (2.0, 10.0)}


@dataclass(frozen=True)
class Span:
    """A numeric range; bounds may be open or closed, None is unbounded."""

    lo: float
    hi: float = math.inf
    lo_closed: bool = True
    hi_closed: bool = False

    def __contains__(self, value: float) -> bool:
        above = value >= self.lo if self.lo_closed else value > self.lo
        below = value <= self.hi if self.hi_closed else value < self.hi
        return above and below


@dataclass(frozen=True)
class DelayRow:
    """A pre- or post-centrifugation row: temperature class and delay in hours."""

    code: str
    temp: Temp
    hours: Span
    label: str
    source: str


@dataclass(frozen=True)
class SpinRow:
    """A centrifugation row: temperature class, duration (min), g-force band and braking."""

    code: str
    temp: Temp
    minutes: Span
    g_force: Span
    braking: bool
    label: str
    source: str


class StorageContainer(Enum):
    """Long-term storage containers of the table (values are the Avro StorageContainer symbols)."""

    PP_TUBE_0_5_TO_2ML = "PP_TUBE_0_5_TO_2ML"
    CRYOTUBE_1_TO_2ML = "CRYOTUBE_1_TO_2ML"
    PLASTIC_CRYO_STRAW = "PLASTIC_CRYO_STRAW"
    STRAW = "STRAW"
    PP_TUBE_5ML_OR_MORE = "PP_TUBE_5ML_OR_MORE"
    MICROPLATE = "MICROPLATE"
    PARAFFIN_BLOCK = "PARAFFIN_BLOCK"
    BAG = "BAG"
    DRY_TECHNOLOGY_MEDIUM = "DRY_TECHNOLOGY_MEDIUM"
    OTHER = "OTHER"


class StorageTemp(Enum):
    """Long-term storage temperatures of the table."""

    M35_TO_M18 = "(-35) to (-18) degC"
    M85_TO_M60 = "(-85) to (-60) degC"
    LIQUID_NITROGEN = "liquid nitrogen"
    LN_AFTER_M85_TO_M60 = "liquid nitrogen after temporary (-85) to (-60) degC"
    PROGRAMMABLE_BELOW_M135 = "programmable freezing to < -135 degC"
    RT = "RT"
    COLD = "2-10 degC"


@dataclass(frozen=True)
class StorageRow:
    """A long-term storage row."""

    code: str
    container: StorageContainer
    temp: StorageTemp
    source: str


# --- element 1: type of sample (Table 1; all rows) --------------------------------------------------------------
SAMPLE_TYPES: dict[str, str] = {
    "ASC": "Ascites fluid", "AMN": "Amniotic fluid", "BAL": "Bronchoalveolar lavage", "BLD": "Blood (whole)",
    "BMA": "Bone marrow aspirate", "BMK": "Breast milk", "BUC": "Buccal cells",
    "BUF": "Unficolled buffy coat, viable", "BFF": "Unficolled buffy coat, nonviable",
    "CEL": "Ficoll mononuclear cells, viable", "CEN": "Fresh cells from nonblood specimen type",
    "CLN": "Cells from nonblood specimen type (e.g., ascites, amniotic), viable", "CRD": "Cord blood",
    "CSF": "Cerebrospinal fluid", "DWB": "Dried whole blood (e.g., Guthrie cards)", "NAS": "Nasal washing",
    "PEL": "Ficoll mononuclear cells, nonviable",
    "PEN": "Cells from non blood specimen type (e.g., ascites, amniotic), nonviable", "PFL": "Pleural fluid",
    "PL1": "Plasma, single spun", "PL2": "Plasma, double spun", "RBC": "Red blood cells", "SAL": "Saliva",
    "SEM": "Semen", "SER": "Serum", "SPT": "Sputum", "STL": "Stool", "SYN": "Synovial fluid", "TER": "Tears",
    "U24": "24 h urine", "URN": "Urine, random (\"spot\")", "URM": "Urine, first morning", "URT": "Urine, timed",
    OTHER_TYPE: "Other",
}

# --- element 2: type of primary container (Table 1; all rows) ---------------------------------------------------
PRIMARY_CONTAINERS: dict[str, str] = {
    "ACD": "Acid citrate dextrose", "ADD": "Additives", "CAT": "Serum tube without clot activator",
    "CPD": "Citrate phosphate dextrose", "CPT": "Cell Preparation Tube", "EDG": "EDTA and gel",
    "HEP": "Lithium heparin", "HIR": "Hirudin", "LHG": "Lithium heparin and gel",
    "ORG": "Oragene collection container or equivalent", "PAX": "PAXgene blood RNA+", "PED": "Potassium EDTA",
    "PET": "Polyethylene tube sterile", "PI1": "S8820 protease inhibitor tablets or equivalent",
    "PIX": "Protease inhibitors", "PPS": "Polypropylene tube sterile", "PXD": "PAXgene blood DNA",
    "PXR": "PAXgene bone marrow RNA", "SCI": "Sodium citrate", "SHP": "Sodium heparin",
    "SPO": "Sodium fluoride/potassium oxalate", "SST": "Serum separator tube with clot activator",
    "TEM": "Tempus tube", "TRC": "Trace elements tube", UNKNOWN_TYPE: "Unknown", OTHER_TYPE: "Other",
}


def _delay_rows(letters: str, bounds: tuple[float, ...], labels: tuple[str, ...], first: Temp,
                sources: tuple[str, ...]) -> tuple[DelayRow, ...]:
    """Rows alternating between the two temperature classes (first, other) per delay band, in letter order."""
    second = Temp.COLD if first is Temp.RT else Temp.RT
    rows: list[DelayRow] = []
    spans = [Span(lo, hi) for lo, hi in zip(bounds, (*bounds[1:], math.inf), strict=True)]
    for i, letter in enumerate(letters):
        band, temp = divmod(i, 2)
        rows.append(DelayRow(letter, first if temp == 0 else second, spans[band],
                             f"{(first if temp == 0 else second).value} {labels[band]}", sources[i]))
    return tuple(rows)


# --- element 3: pre-centrifugation (delay between collection and processing) ------------------------------------
# A-G read in Table 1; H-N (the cold 8-12 h row and the delays over 12 h) from the implementations.
PRE_CENTRIFUGATION: tuple[DelayRow, ...] = _delay_rows(
    "ABCDEFGHIJKLMN", (0, 2, 4, 8, 12, 24, 48), ("<2 h", "2-4 h", "4-8 h", "8-12 h", "12-24 h", "24-48 h", ">48 h"),
    Temp.RT, (TABLE_1,) * 7 + (IMPLEMENTATIONS,) * 7)

# --- elements 4 and 5: centrifugation and second centrifugation ---------------------------------------------------
_TEN_TO_FIFTEEN = Span(10, 15, hi_closed=True)
_G_BANDS: dict[str, Span] = {
    "<3000 g": Span(0, 3000), "3000-6000 g": Span(3000, 6000), "6000-10000 g": Span(6000, 10000, hi_closed=True),
    ">10000 g": Span(10000, lo_closed=False),
}
# (letter, temperature, g band, braking)
_SPINS: tuple[tuple[str, Temp, str, bool], ...] = (
    ("A", Temp.RT, "<3000 g", False), ("B", Temp.RT, "<3000 g", True),
    ("C", Temp.COLD, "<3000 g", False), ("D", Temp.COLD, "<3000 g", True),
    ("E", Temp.RT, "3000-6000 g", True), ("F", Temp.COLD, "3000-6000 g", True),
    ("G", Temp.RT, "6000-10000 g", True), ("H", Temp.COLD, "6000-10000 g", True),
    ("I", Temp.RT, ">10000 g", True), ("J", Temp.COLD, ">10000 g", True),
)


def _spin(letter: str, temp: Temp, band: str, braking: bool) -> SpinRow:
    label = f"{temp.value}, 10-15 min, {band}, {'with' if braking else 'no'} braking"
    return SpinRow(letter, temp, _TEN_TO_FIFTEEN, _G_BANDS[band], braking, label, IMPLEMENTATIONS)


SECOND_CENTRIFUGATION: tuple[SpinRow, ...] = tuple(_spin(*row) for row in _SPINS)
CENTRIFUGATION: tuple[SpinRow, ...] = (
    *SECOND_CENTRIFUGATION,
    SpinRow("M", Temp.RT, Span(30, 30, hi_closed=True), Span(0, 1000), False, "RT, 30 min, <1000 g, no braking",
            IMPLEMENTATIONS),
)

# --- element 6: post-centrifugation delay -------------------------------------------------------------------------
POST_CENTRIFUGATION: tuple[DelayRow, ...] = _delay_rows(
    "ABCDEFGHIJ", (0, 1, 2, 8, 24), ("<1 h", "1-2 h", "2-8 h", "8-24 h", ">24 h"), Temp.COLD,
    (IMPLEMENTATIONS,) * 10)

# --- element 7: long-term storage ----------------------------------------------------------------------------------
_C = StorageContainer
_T = StorageTemp
LONG_TERM_STORAGE: tuple[StorageRow, ...] = tuple(StorageRow(code, c, t, IMPLEMENTATIONS) for code, c, t in (
    ("A", _C.PP_TUBE_0_5_TO_2ML, _T.M85_TO_M60), ("B", _C.PP_TUBE_0_5_TO_2ML, _T.M35_TO_M18),
    ("C", _C.CRYOTUBE_1_TO_2ML, _T.LIQUID_NITROGEN), ("D", _C.CRYOTUBE_1_TO_2ML, _T.M85_TO_M60),
    ("E", _C.CRYOTUBE_1_TO_2ML, _T.PROGRAMMABLE_BELOW_M135), ("F", _C.PLASTIC_CRYO_STRAW, _T.LIQUID_NITROGEN),
    ("G", _C.STRAW, _T.M85_TO_M60), ("H", _C.STRAW, _T.M35_TO_M18), ("I", _C.STRAW, _T.PROGRAMMABLE_BELOW_M135),
    ("J", _C.PP_TUBE_5ML_OR_MORE, _T.M85_TO_M60), ("K", _C.PP_TUBE_5ML_OR_MORE, _T.M35_TO_M18),
    ("L", _C.MICROPLATE, _T.M85_TO_M60), ("M", _C.MICROPLATE, _T.M35_TO_M18),
    ("N", _C.CRYOTUBE_1_TO_2ML, _T.LN_AFTER_M85_TO_M60), ("O", _C.PLASTIC_CRYO_STRAW, _T.LN_AFTER_M85_TO_M60),
    ("P", _C.PARAFFIN_BLOCK, _T.RT), ("P", _C.PARAFFIN_BLOCK, _T.COLD),
    ("Q", _C.BAG, _T.LIQUID_NITROGEN), ("R", _C.DRY_TECHNOLOGY_MEDIUM, _T.RT),
))


def temp_class(celsius: float) -> Temp | None:
    """The table's temperature class of a reading, None if it is in neither."""
    for temp, (lo, hi) in TEMP_RANGE_C.items():
        if lo <= celsius <= hi:
            return temp
    return None


def delay_code(rows: tuple[DelayRow, ...], temp: Temp, hours: float) -> str:
    """The letter of a delay at one temperature class; Z if no row holds it."""
    return next((r.code for r in rows if r.temp is temp and hours in r.hours), OTHER)


def spin_code(rows: tuple[SpinRow, ...], celsius: float, minutes: float, g_force: float, braking: bool) -> str:
    """The letter of one recorded centrifugation run; Z if no row holds it."""
    temp = temp_class(celsius)
    for r in rows:
        if r.temp is temp and minutes in r.minutes and g_force in r.g_force and r.braking == braking:
            return r.code
    return OTHER


def storage_code(container: StorageContainer, temp: StorageTemp) -> str:
    """The letter of a long-term storage (container, temperature); Z if no row holds it."""
    return next((r.code for r in LONG_TERM_STORAGE if r.container is container and r.temp is temp), OTHER)
