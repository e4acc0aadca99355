-- Community edition only: compress week-old chunks of the wearable features.
ALTER TABLE wearable_features SET (timescaledb.compress,
    timescaledb.compress_segmentby = 'participant_pseudonym, feature_set, window_kind');
SELECT add_compression_policy('wearable_features', interval '30 days', if_not_exists => true);
