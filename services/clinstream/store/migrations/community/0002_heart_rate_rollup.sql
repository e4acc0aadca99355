-- Community edition only: an hourly heart-rate rollup of the minute windows as a continuous aggregate.
-- The store worker refreshes the continuous aggregates of the schema after every erasure, so that an erased
-- participant's rollup rows go with the raw rows. No retention policy: stored features are study results
-- and are kept until the study deletes them (drop_chunks works on both editions).
CREATE MATERIALIZED VIEW IF NOT EXISTS heart_rate_hourly_rollup
WITH (timescaledb.continuous, timescaledb.materialized_only = true) AS
SELECT participant_pseudonym,
       version,
       time_bucket(interval '1 hour', window_start) AS hour_start,
       count(*) AS minutes_with_data,
       sum((feature_values ->> 'count')::double precision) AS samples,
       sum((feature_values ->> 'mean')::double precision * (feature_values ->> 'count')::double precision)
           / nullif(sum((feature_values ->> 'count')::double precision), 0) AS mean_bpm,
       min((feature_values ->> 'min')::double precision) AS min_bpm,
       max((feature_values ->> 'max')::double precision) AS max_bpm,
       avg(completeness) AS mean_completeness
FROM wearable_features
WHERE feature_set = 'heart_rate' AND window_kind = 'MINUTE'
GROUP BY participant_pseudonym, version, time_bucket(interval '1 hour', window_start)
WITH NO DATA;
COMMENT ON MATERIALIZED VIEW heart_rate_hourly_rollup IS
    'Hourly heart-rate rollup of the minute windows (count-weighted mean, min, max, wear) per pseudonym.';
SELECT add_continuous_aggregate_policy('heart_rate_hourly_rollup',
                                       start_offset => interval '30 days',
                                       end_offset => interval '1 hour',
                                       schedule_interval => interval '15 minutes',
                                       if_not_exists => true);
