"""The store writer against the real TimescaleDB: the monotonic upsert, erasure, the catalogue and the views."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from store_helpers import (
    BASE_MS,
    CODEC,
    MINUTE_MS,
    decoded,
    expected_state,
    feature,
    pseudonym,
    rows,
    sample,
    wearable_state,
)

from clinstream.core.config import Settings
from clinstream.core.db import connect
from clinstream.core.timeutil import from_ms
from clinstream.core.topics import FEATURES, SAMPLE_FEATURES
from clinstream.store.catalogue_sync import catalogue_rows, sync_catalogue
from clinstream.store.writer import Erasure, StoreWriter, WriteResult, coalesce_wearable, wearable_row

pytestmark = pytest.mark.integration
_EXAMPLE = itertools.count(1)
FR = FEATURES.value_schema
SR = SAMPLE_FEATURES.value_schema


def write(settings: Settings, wearable: Sequence[dict[str, Any]] = (), samples: Sequence[dict[str, Any]] = (),
          erasures: Sequence[Erasure] = ()) -> WriteResult:
    with connect(settings, autocommit=True) as conn, conn.transaction():
        return StoreWriter(conn).write([decoded(FR, r) for r in wearable], [decoded(SR, r) for r in samples],
                                       erasures)


def test_duplicates_within_and_across_batches_leave_one_row(db_site: Settings) -> None:
    site = db_site.site_id
    recs = [feature(site, 1, m) for m in range(50)]
    first = write(db_site, recs + recs + recs)  # every record three times in one batch
    assert (first.wearable_in, first.coalesced, first.wearable_written) == (150, 100, 50)
    again = write(db_site, recs)  # a replay of the same batch
    assert again.wearable_written == 0 and again.unchanged == 50
    assert rows(db_site, "SELECT count(*) FROM wearable_features") == [(50,)]
    assert wearable_state(db_site) == expected_state(recs)


def test_stale_revision_never_overwrites_and_final_wins_at_equal_revision(db_site: Settings) -> None:
    site = db_site.site_id
    write(db_site, [feature(site, 1, 0, revision=5), feature(site, 1, 1, revision=3)])
    # Stale late copies (lower revision) in a later batch change nothing; a higher revision replaces.
    write(db_site, [feature(site, 1, 0, revision=4), feature(site, 1, 0, revision=1), feature(site, 1, 1, revision=7)])
    st_ = wearable_state(db_site)
    key = (pseudonym(1), "heart_rate", "MINUTE")
    assert st_[(*key, BASE_MS, 1)] == (5, False, 65.0)
    assert st_[(*key, BASE_MS + MINUTE_MS, 1)] == (7, False, 67.0)
    # Same revision: the final copy wins, and a non-final copy at that revision never reverts it.
    write(db_site, [feature(site, 1, 0, revision=5, is_final=True)])
    write(db_site, [feature(site, 1, 0, revision=5, is_final=False, mean=1.0)])
    assert wearable_state(db_site)[(*key, BASE_MS, 1)] == (5, True, 65.5)
    # Equal (revision, is_final) with different content: the stored row stays (first wins), also in one batch.
    write(db_site, [feature(site, 1, 2, revision=2, mean=10.0), feature(site, 1, 2, revision=2, mean=20.0)])
    write(db_site, [feature(site, 1, 2, revision=2, mean=30.0)])
    assert wearable_state(db_site)[(*key, BASE_MS + 2 * MINUTE_MS, 1)] == (2, False, 10.0)
    stored = rows(db_site, "SELECT window_end, utc_offset_minutes, completeness, feature_values FROM wearable_features"
                           " WHERE window_start = %s", (from_ms(BASE_MS),))
    assert stored == [(from_ms(BASE_MS + MINUTE_MS), 0, 1.0, {"mean": 65.5, "min": 60.5, "max": 70.5, "sd": 2.0,
                                                             "count": 12.0})]


def test_versions_coexist(db_site: Settings) -> None:
    site = db_site.site_id
    write(db_site, [feature(site, 1, 0, version=1, revision=3), feature(site, 1, 0, version=2, revision=1)])
    got = wearable_state(db_site)
    assert got[(pseudonym(1), "heart_rate", "MINUTE", BASE_MS, 1)][0] == 3
    assert got[(pseudonym(1), "heart_rate", "MINUTE", BASE_MS, 2)][0] == 1
    # Researchers read the active version only.
    assert rows(db_site, "SELECT version FROM wearable_features_current") == [(1,)]


@hsettings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_order_and_batching_gives_the_monotonic_result(db_site: Settings, data: st.DataObject) -> None:
    """Shuffled, duplicated records cut into arbitrary batches end as greatest (revision, is_final) per key."""
    site = db_site.site_id
    base = next(_EXAMPLE) * 10  # a fresh key range per example (the schema lives for the whole test)
    recs = data.draw(st.lists(st.builds(
        lambda who, minute, rev, fin, v: feature(site, who, base + minute, revision=rev, is_final=fin, version=v),
        st.integers(1, 3), st.integers(0, 5), st.integers(0, 4), st.booleans(), st.integers(1, 2)),
        min_size=1, max_size=60))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(recs)), max_size=5)))
    bounds = [0, *cuts, len(recs)]
    for lo, hi in itertools.pairwise(bounds):
        if hi > lo:
            write(db_site, recs[lo:hi])
    mine = {k: v for k, v in wearable_state(db_site).items() if base <= (k[3] - BASE_MS) // MINUTE_MS < base + 10}
    assert mine == expected_state(recs)


@pytest.mark.parametrize("as_decoded", [False, True], ids=["epoch-ms ints (the store's decode)",
                                                        "datetimes (a logical-type decode)"])
def test_every_instant_is_stored_to_the_millisecond(db_site: Settings, as_decoded: bool) -> None:
    """Instants reach the tables exactly, whichever form the record carries them in: odd milliseconds, instants
    before 1970 and far ahead, each column its own value (window_start, window_end, computed_at, collected_at)."""
    site = db_site.site_id
    instants = [BASE_MS + 123, BASE_MS + 59_999, -86_400_000 * 365 + 7, 4_102_444_800_001, 1]
    wearable = [dict(feature(site, i, 0), window_start=t, window_end=t + 60_001, computed_at=t + 3)
                for i, t in enumerate(instants)]
    samples = [dict(sample(site, i, 1, parent=None), collected_at=t, computed_at=t + 5) for i, t in enumerate(instants)]
    with connect(db_site, autocommit=True) as conn, conn.transaction():
        if as_decoded:
            StoreWriter(conn).write([decoded(FR, r) for r in wearable], [decoded(SR, r) for r in samples])
        else:
            StoreWriter(conn).write([CODEC.decode_plain(CODEC.encode(FR, r)) for r in wearable],
                                    [CODEC.decode_plain(CODEC.encode(SR, r)) for r in samples])
    ms = "(extract(epoch FROM {}) * 1000)::bigint"
    got = rows(db_site, f"SELECT {ms.format('window_start')}, {ms.format('window_end')}, {ms.format('computed_at')}"
                        " FROM wearable_features ORDER BY 1")
    assert got == sorted((t, t + 60_001, t + 3) for t in instants)
    got = rows(db_site, f"SELECT {ms.format('collected_at')}, {ms.format('computed_at')} FROM sample_features"
                        " ORDER BY 1")
    assert got == sorted((t, t + 5) for t in instants)


def test_finalising_stored_rows_updates_them_in_place(db_site: Settings) -> None:
    """Every wearable row is updated at least once (open, then final); the table's fill factor leaves room on each
    page, so each update is a heap-only tuple (no new index entries). Counted in the updating transaction itself
    (pg_stat_get_xact_*: this backend's counts before commit, no statistics delay)."""
    site = db_site.site_id
    open_rows = [feature(site, who, m) for who in range(40) for m in range(30)]
    write(db_site, open_rows)
    with connect(db_site, autocommit=True) as conn, conn.transaction():
        written = StoreWriter(conn).write([decoded(FR, dict(r, is_final=True)) for r in open_rows])
        updated, in_place = conn.execute(
            "SELECT sum(pg_stat_get_xact_tuples_updated(c)), sum(pg_stat_get_xact_tuples_hot_updated(c))"
            " FROM show_chunks('wearable_features') c").fetchone() or (None, None)
    assert written.wearable_written == len(open_rows) == updated
    assert in_place == updated


def test_coalesce_keeps_greatest_and_first_of_equals() -> None:
    recs = [feature("s", 1, 0, revision=r, is_final=f, mean=m)
            for r, f, m in [(1, False, 1.0), (3, False, 2.0), (3, True, 3.0), (3, True, 4.0), (2, True, 5.0)]]
    out = coalesce_wearable(wearable_row(decoded(FR, r)) for r in recs)
    assert len(out) == 1 and out[0][10] == 3 and out[0][9] is True and out[0][7]["mean"] == 3.0


def test_samples_upsert_by_revision(db_site: Settings) -> None:
    site = db_site.site_id
    write(db_site, [], [sample(site, 1, 1, revision=2, parent=None), sample(site, 1, 2, revision=1),
                        sample(site, 1, 2, revision=3, status="shipped"), sample(site, 1, 2, revision=2)])
    write(db_site, [], [sample(site, 1, 2, revision=1, status="available")])  # stale
    got = rows(db_site, "SELECT sample_pseudonym, revision, status, freeze_thaw_count, assays, sprec"
                        " FROM sample_features ORDER BY 1")
    assert got == [(f"s{1:08d}{1:06d}", 2, "available", 1, {"1988-5": 3.5}, "SER-SST-A-D-N-A-E"),
                   (f"s{1:08d}{2:06d}", 3, "shipped", 2, {"1988-5": 3.5}, "SER-SST-A-D-N-A-E")]


def test_available_aliquots_view(db_site: Settings) -> None:
    site = db_site.site_id
    write(db_site, [], [
        sample(site, 1, 0, parent=None),  # the parent tube itself: not an aliquot
        sample(site, 1, 1), sample(site, 1, 2), sample(site, 1, 3, status="distributed"),
        sample(site, 1, 4, sample_type="PL1"),
        sample(site, 1, 5, version=2),  # another feature version: not active
        sample(site, 2, 1),
    ])
    got = rows(db_site, "SELECT participant_pseudonym, sample_type, available_aliquots FROM available_aliquots"
                        " ORDER BY 1, 2")
    assert got == [(pseudonym(1), "PL1", 1), (pseudonym(1), "SER", 2), (pseudonym(2), "SER", 1)]


def test_erasure_deletes_everywhere_is_idempotent_and_blocks_resurrection(db_site: Settings) -> None:
    site = db_site.site_id
    with connect(db_site, autocommit=True) as conn:  # another table keyed by pseudonym is purged too
        conn.execute("CREATE TABLE other_participant_table (participant_pseudonym text, x int)")
        conn.execute("INSERT INTO other_participant_table VALUES (%s, 1), (%s, 2)", (pseudonym(1), pseudonym(2)))
    write(db_site, [feature(site, w, m) for w in (1, 2) for m in range(10)],
          [sample(site, w, n) for w in (1, 2) for n in range(3)])
    erased_at = BASE_MS + 5 * MINUTE_MS
    req = Erasure(uuid.uuid4(), pseudonym(1), from_ms(erased_at))
    res = write(db_site, erasures=[req])
    assert [(o.rows_deleted, o.first_time) for o in res.erasures] == [(10 + 3 + 1, True)]
    for table in ("wearable_features", "sample_features", "other_participant_table"):
        assert rows(db_site, f"SELECT count(*) FROM {table} WHERE participant_pseudonym = %s",
                    (pseudonym(1),)) == [(0,)]
        assert rows(db_site, f"SELECT count(*) FROM {table} WHERE participant_pseudonym = %s",
                    (pseudonym(2),)) != [(0,)]
    assert rows(db_site, "SELECT request_id, participant_pseudonym, requested_at, rows_deleted FROM erasure_audit") == [
        (req.request_id, pseudonym(1), from_ms(erased_at), 14)]
    # The same request again (a replay): nothing more happens, the audit row stays one.
    again = write(db_site, erasures=[req])
    assert [(o.rows_deleted, o.first_time) for o in again.erasures] == [(14, False)]
    assert rows(db_site, "SELECT count(*) FROM erasure_audit") == [(1,)]
    # Late copies of erased data (windows before the erasure; a higher revision too) do not come back;
    # neither does a sample collected before it. Data after the erasure (a renewed consent) is accepted.
    res = write(db_site, [feature(site, 1, m, revision=9) for m in range(5)] + [feature(site, 1, 7)],
                [sample(site, 1, 0, revision=5), sample(site, 1, 9, collected_at=None),
                 sample(site, 1, 8, collected_at=erased_at + 1)])
    assert (res.wearable_written, res.sample_written) == (1, 1)
    assert rows(db_site, "SELECT (extract(epoch FROM window_start) * 1000)::bigint FROM wearable_features"
                         " WHERE participant_pseudonym = %s", (pseudonym(1),)) == [(BASE_MS + 7 * MINUTE_MS,)]
    # A batch holding the erasure and the participant's records: the erasure applies first.
    req2 = Erasure(uuid.uuid4(), pseudonym(2), from_ms(BASE_MS + 100 * MINUTE_MS))
    write(db_site, [feature(site, 2, 50, revision=3)], [sample(site, 2, 7)], [req2])
    assert rows(db_site, "SELECT count(*) FROM wearable_features WHERE participant_pseudonym = %s",
                (pseudonym(2),)) == [(0,)]
    assert rows(db_site, "SELECT participant_pseudonym, (extract(epoch FROM erased_at) * 1000)::bigint"
                         " FROM erased_participants ORDER BY 1") == [
        (pseudonym(1), erased_at), (pseudonym(2), BASE_MS + 100 * MINUTE_MS)]


def test_catalogue_sync_is_idempotent(db_site: Settings) -> None:
    expected = catalogue_rows()
    assert expected, "the features engineer's catalogue module is present"
    with connect(db_site, autocommit=True) as conn:
        with conn.transaction():
            assert sync_catalogue(conn) == len(expected)
        with conn.transaction():
            assert sync_catalogue(conn) == 0
    got = rows(db_site, "SELECT feature_set, name, unit, windows, version, loinc, definition FROM feature_catalogue")
    assert sorted(got) == sorted((r["feature_set"], r["name"], r["unit"], r["windows"], r["version"], r["loinc"],
                                  r["definition"]) for r in expected)
