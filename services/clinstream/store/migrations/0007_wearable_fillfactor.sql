-- Every wearable row is updated at least once: an open window's row when the window becomes final, an hour or day row
-- at every batch that touches it. With half of each page kept free, PostgreSQL makes such an update in place
-- (a heap-only tuple: the row's key and the indexed columns do not change, so no new index entries), which the
-- store's upsert pays for in PostgreSQL CPU; without the room, every update writes a new tuple elsewhere plus an entry
-- in each index, and the dead versions leave the heap as large as this fill factor does.
-- Measured (scripts/bench_store.py's records, 60,000 rows, batches of 5,000): finalising the rows cost PostgreSQL
-- 46-58 us per row at the default fill factor (80 of 60,000 updates in place) and 14-23 us at 50 (all in place); the
-- chunk's heap was 33 MB either way after the update, its indexes 15 MB against 13 MB.
-- TimescaleDB passes the setting to the existing chunks (for their future inserts) and to every new chunk.
ALTER TABLE wearable_features SET (fillfactor = 50);
