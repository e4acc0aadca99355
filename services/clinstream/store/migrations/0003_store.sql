-- Store worker (issue 5): erasure tombstones and the views researchers read.
-- Runs with search_path = <site schema>, public.

CREATE TABLE IF NOT EXISTS erased_participants (
    participant_pseudonym text        PRIMARY KEY,
    erased_at             timestamptz NOT NULL,
    recorded_at           timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE erased_participants IS
    'Pseudonyms whose data was erased after a withdrawal. erased_at is the latest request''s requested_at: '
    'the store never again accepts a wearable window starting, or a sample collected, before it (late copies '
    'and replays cannot resurrect erased data); data of a renewed consent after it is accepted.';

-- Researchers read the active feature version; an aliquot is a sample with a parent sample.
CREATE OR REPLACE VIEW available_aliquots AS
    SELECT participant_pseudonym,
           sample_type,
           count(*)::bigint AS available_aliquots
    FROM sample_features_current
    WHERE status = 'available' AND parent_sample_pseudonym IS NOT NULL
    GROUP BY participant_pseudonym, sample_type;
COMMENT ON VIEW available_aliquots IS
    'Available aliquots (status available, with a parent sample) per participant pseudonym and sample type, '
    'active feature version.';
