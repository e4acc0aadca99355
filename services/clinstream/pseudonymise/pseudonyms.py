"""Keyed pseudonyms: HMAC-SHA-256 over a domain label and the identifier, as lower-case hex.

MAC input = ``b"clinstream.pseudonym.v1\\x00" + domain + b"\\x00" + identifier (UTF-8)``, so the same
identifier gives unrelated pseudonyms in the participant, device and sample domains, and a different key
version gives unrelated pseudonyms too. The keyed HMAC state after the domain prefix is computed once per
(version, domain) and copied per identifier; the pseudonyms of the identifiers seen most recently are kept in
memory (at most `CACHE_SIZE`, never written anywhere), since a site's devices send block after block.
"""

from __future__ import annotations

import hashlib
import hmac
from enum import StrEnum

from clinstream.pseudonymise.keys import KeyRing

_LABEL = b"clinstream.pseudonym.v1\x00"
CACHE_SIZE = 65_536


class Domain(StrEnum):
    """Pseudonym domains: one per kind of identifier."""

    PARTICIPANT = "participant"
    DEVICE = "device"
    SAMPLE = "sample"


class Pseudonymiser:
    """Pseudonyms of one key ring; `version` defaults to the ring's active version."""

    __slots__ = ("_cache", "_macs", "key_version", "versions")

    def __init__(self, ring: KeyRing) -> None:
        self.key_version = ring.active
        self.versions = ring.versions
        self._macs = {
            (version, domain): hmac.new(ring.secret(version), _LABEL + domain.value.encode() + b"\x00",
                                        hashlib.sha256)
            for version in ring.versions for domain in Domain
        }
        self._cache: dict[tuple[int, Domain, str], str] = {}

    def pseudonym(self, domain: Domain, identifier: str, version: int | None = None) -> str:
        """The hex pseudonym of an identifier in a domain."""
        version = self.key_version if version is None else version
        key = (version, domain, identifier)
        known = self._cache.get(key)
        if known is not None:
            return known
        mac = self._macs[(version, domain)].copy()
        mac.update(identifier.encode())
        if len(self._cache) >= CACHE_SIZE:
            self._cache.clear()
        known = self._cache[key] = mac.hexdigest()
        return known

    def participant(self, participant_id: str, version: int | None = None) -> str:
        """Participant-domain pseudonym."""
        return self.pseudonym(Domain.PARTICIPANT, participant_id, version)

    def device(self, device_serial: str, version: int | None = None) -> str:
        """Device-domain pseudonym."""
        return self.pseudonym(Domain.DEVICE, device_serial, version)

    def sample(self, sample_barcode: str, version: int | None = None) -> str:
        """Sample-domain pseudonym."""
        return self.pseudonym(Domain.SAMPLE, sample_barcode, version)

    def __repr__(self) -> str:
        return f"Pseudonymiser(key_version={self.key_version}, versions={list(self.versions)})"
