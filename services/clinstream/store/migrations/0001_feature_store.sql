-- Feature store of one site. Runs with search_path = <site schema>, public.

CREATE TABLE IF NOT EXISTS wearable_features (
    participant_pseudonym text        NOT NULL,
    feature_set           text        NOT NULL,
    window_kind           text        NOT NULL CHECK (window_kind IN ('MINUTE', 'HOUR', 'DAY', 'LOCAL_DAY')),
    window_start          timestamptz NOT NULL,
    window_end            timestamptz NOT NULL,
    utc_offset_minutes    integer     NOT NULL DEFAULT 0,
    version               integer     NOT NULL,
    feature_values        jsonb       NOT NULL,
    completeness          double precision NOT NULL CHECK (completeness >= 0 AND completeness <= 1),
    is_final              boolean     NOT NULL,
    revision              bigint      NOT NULL,
    computed_at           timestamptz NOT NULL,
    stored_at             timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (participant_pseudonym, feature_set, window_kind, window_start, version)
);
SELECT create_hypertable('wearable_features', 'window_start',
                         chunk_time_interval => interval '7 days', if_not_exists => true);
CREATE INDEX IF NOT EXISTS wearable_features_set_window
    ON wearable_features (feature_set, window_kind, version, window_start DESC);
COMMENT ON TABLE wearable_features IS
    'Windowed wearable features by participant pseudonym; one row per (pseudonym, set, window, start, version).';

CREATE TABLE IF NOT EXISTS sample_features (
    sample_pseudonym                 text        NOT NULL,
    version                          integer     NOT NULL,
    participant_pseudonym            text        NOT NULL,
    parent_sample_pseudonym          text,
    sample_type                      text        NOT NULL,
    collected_at                     timestamptz,
    collection_to_centrifugation_min double precision,
    collection_to_freezing_min       double precision,
    sprec                            text,
    freeze_thaw_count                integer     NOT NULL,
    temperature_excursions           integer     NOT NULL,
    status                           text        NOT NULL,
    assays                           jsonb       NOT NULL DEFAULT '{}'::jsonb,
    revision                         bigint      NOT NULL,
    computed_at                      timestamptz NOT NULL,
    stored_at                        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sample_pseudonym, version)
);
CREATE INDEX IF NOT EXISTS sample_features_participant ON sample_features (participant_pseudonym, version);
COMMENT ON TABLE sample_features IS 'Pre-analytical and assay features per biobank sample pseudonym.';

CREATE TABLE IF NOT EXISTS feature_catalogue (
    feature_set text    NOT NULL,
    name        text    NOT NULL,
    unit        text    NOT NULL,
    windows     text[]  NOT NULL,
    version     integer NOT NULL,
    loinc       text,
    definition  text    NOT NULL,
    PRIMARY KEY (feature_set, name, version)
);
COMMENT ON TABLE feature_catalogue IS 'What every stored feature means: unit, windows, version, LOINC, definition.';

CREATE TABLE IF NOT EXISTS active_version (
    singleton   boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    version     integer     NOT NULL,
    promoted_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO active_version (version) VALUES (1) ON CONFLICT DO NOTHING;
COMMENT ON TABLE active_version IS 'The feature version researchers and the federated layer read.';

CREATE OR REPLACE VIEW wearable_features_current AS
    SELECT f.* FROM wearable_features f JOIN active_version a ON f.version = a.version;
CREATE OR REPLACE VIEW sample_features_current AS
    SELECT s.* FROM sample_features s JOIN active_version a ON s.version = a.version;

CREATE TABLE IF NOT EXISTS erasure_audit (
    request_id            uuid        PRIMARY KEY,
    participant_pseudonym text        NOT NULL,
    requested_at          timestamptz NOT NULL,
    completed_at          timestamptz NOT NULL DEFAULT now(),
    rows_deleted          bigint      NOT NULL
);
COMMENT ON TABLE erasure_audit IS 'Erasures honoured by the store: pseudonym, times and row count only.';
