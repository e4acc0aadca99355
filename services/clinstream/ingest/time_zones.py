"""The participant's IANA time zone at the gateway: which names are valid, and which source wins.

A participant's zone can come from three places. The gateway stamps on each telemetry block the first of:

1. the zone given when the device was registered (`clinstream devices register --time-zone`);
2. the zone of the participant's latest LIMS consent/enrolment event that carried one (`payload.time_zone`);
3. the site default (CLINSTREAM_INGEST_TIME_ZONE);

else null (the features worker then uses its own default). The device registration wins because it is the more
specific, deliberate statement: staff set it for this one credential when they hand the device over, while the
LIMS zone is a participant-wide attribute that applies to every device registered without a zone. To let the LIMS
zone apply to a device, register it without --time-zone. The site default is applied here, at stamping time, and
never written into a registration, so a later LIMS zone still reaches devices registered without one.
"""

from __future__ import annotations

from functools import lru_cache
from zoneinfo import available_timezones

# Names the tz database ships that do not name a place: the host's own zone and the "-00" placeholder.
_NOT_A_PARTICIPANT_ZONE = frozenset({"localtime", "Factory"})


@lru_cache(maxsize=1)
def _known_zones() -> frozenset[str]:
    return frozenset(available_timezones()) - _NOT_A_PARTICIPANT_ZONE


def is_iana_zone(name: str) -> bool:
    """Whether `name` is an IANA zone of the installed tz database (a set look-up: the name never reaches a path)."""
    return name in _known_zones()


def stamped_time_zone(registered: str | None, from_lims: str | None, site_default: str | None) -> str | None:
    """The zone to stamp on a device's blocks: the registration's, else the LIMS's, else the site default."""
    return registered or from_lims or site_default
