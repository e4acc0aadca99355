"""The credential cache's race rule, pure: a look-up is cached unless its own key id was announced, or the cache
was reset, while it was in flight."""

from __future__ import annotations

from clinstream.ingest.credential_cache import CredentialCache

ROW = ("sha", "DEV-1", "P-1")


def _listening(max_entries: int = 100) -> CredentialCache:
    cache = CredentialCache(ttl_s=300.0, max_entries=max_entries)
    cache.reset(listening=True)
    return cache


def test_a_look_up_that_raced_with_an_announcement_of_its_key_is_not_cached() -> None:
    cache = _listening()
    generation = cache.generation  # the look-up starts
    cache.evict("k1")  # a revocation of k1 is announced while it is in flight
    cache.put("device", "k1", ROW, generation)
    assert cache.get("device", "k1") is None
    cache.put("device", "k1", (), cache.generation)  # a look-up that started after the announcement
    assert cache.get("device", "k1") == ()


def test_announcements_of_other_keys_leave_a_look_up_cacheable() -> None:
    cache = _listening()
    generation = cache.generation
    for key_id in ("k2", "k3", "k4"):  # a site registering devices or updating zones meanwhile
        cache.evict(key_id)
    cache.put("device", "k1", ROW, generation)
    assert cache.get("device", "k1") == ROW


def test_a_look_up_in_flight_across_a_reset_is_not_cached() -> None:
    cache = _listening()
    generation = cache.generation
    cache.reset(listening=True)  # the listener reconnected: announcements may have been missed meanwhile
    cache.put("device", "k1", ROW, generation)
    assert cache.get("device", "k1") is None


def test_a_full_announcement_record_refuses_every_look_up_in_flight() -> None:
    cache = _listening(max_entries=3)
    generation = cache.generation
    cache.evict("k1")
    for key_id in ("k2", "k3", "k4"):  # the record of k1's announcement is dropped here
        cache.evict(key_id)
    cache.put("device", "k1", ROW, generation)
    cache.put("device", "k9", ROW, generation)
    assert cache.get("device", "k1") is None and cache.get("device", "k9") is None
