"""Keyed pseudonyms: the MAC input format, determinism, domain separation and key versions."""

from __future__ import annotations

import hashlib
import hmac

from hypothesis import given
from hypothesis import strategies as st

from clinstream.pseudonymise.keys import KeyRing
from clinstream.pseudonymise.pseudonyms import Domain, Pseudonymiser

K1 = bytes(range(32))
K2 = bytes(range(1, 33))
RING = KeyRing(2, {1: K1, 2: K2})
P = Pseudonymiser(RING)
identifiers = st.text(min_size=0, max_size=40)


def test_known_answer_fixes_the_mac_input_format() -> None:
    expected = hmac.new(K2, b"clinstream.pseudonym.v1\x00participant\x00P-000123", hashlib.sha256).hexdigest()
    assert P.participant("P-000123") == expected
    expected_v1 = hmac.new(K1, b"clinstream.pseudonym.v1\x00sample\x00BC-1", hashlib.sha256).hexdigest()
    assert P.sample("BC-1", version=1) == expected_v1


@given(identifiers)
def test_deterministic_hex_of_full_length(identifier: str) -> None:
    a = P.participant(identifier)
    assert a == Pseudonymiser(RING).participant(identifier)
    assert len(a) == 64 and int(a, 16) >= 0 and a == a.lower()


@given(identifiers)
def test_domains_give_unrelated_pseudonyms(identifier: str) -> None:
    values = {domain: P.pseudonym(domain, identifier) for domain in Domain}
    assert len(set(values.values())) == len(Domain)


@given(identifiers)
def test_versions_give_unrelated_pseudonyms_and_active_is_default(identifier: str) -> None:
    assert P.device(identifier) == P.device(identifier, version=2)
    assert P.device(identifier, version=1) != P.device(identifier, version=2)
    assert P.key_version == 2


@given(identifiers, identifiers)
def test_distinct_identifiers_give_distinct_pseudonyms(a: str, b: str) -> None:
    if a != b:
        assert P.participant(a) != P.participant(b)


def test_domain_label_cannot_be_forged_by_the_identifier() -> None:
    # "participant" + NUL + "x" vs "participantx": the separator keeps domains apart.
    assert P.pseudonym(Domain.DEVICE, "x") != P.pseudonym(Domain.PARTICIPANT, "\x00device\x00x")


def _mac(key: bytes, domain: str, identifier: str) -> str:
    return hmac.new(key, b"clinstream.pseudonym.v1\x00" + domain.encode() + b"\x00" + identifier.encode(),
                    hashlib.sha256).hexdigest()


@given(st.lists(st.tuples(st.sampled_from(list(Domain)), st.sampled_from([1, 2]), st.sampled_from(["a", "b", ""])),
                max_size=30))
def test_remembered_pseudonyms_are_those_of_their_domain_and_version(asks: list[tuple[Domain, int, str]]) -> None:
    """The in-memory cache answers per (version, domain, identifier): a pseudonym asked for again, after the same
    identifier was asked for in other domains and versions, is still the MAC of its own."""
    p = Pseudonymiser(RING)
    for domain, version, identifier in asks + asks:
        assert p.pseudonym(domain, identifier, version) == _mac({1: K1, 2: K2}[version], domain.value, identifier)


def test_the_cache_is_bounded_and_answers_stay_right_after_it_is_emptied(monkeypatch: object) -> None:
    import clinstream.pseudonymise.pseudonyms as module

    p = Pseudonymiser(RING)
    for i in range(module.CACHE_SIZE + 10):
        p.device(f"D-{i}")
    assert len(p._cache) <= module.CACHE_SIZE
    assert p.device("D-3") == _mac(K2, "device", "D-3")
