-- The participant's IANA time zone from the LIMS consent/enrolment event (issue 11), beside the credentials
-- (cred_<site>): it is an attribute of the participant at the site, keyed by the participant id, never copied into
-- the feature store. The gateway joins it into its device-credential look-up; a change announces the key id of every
-- active device of the participant on 'clinstream_credentials', so each gateway drops its cached copy at once.
-- occurred_at/event_id of the event that set it: the latest event wins, whatever order the events arrive in.
DO $migration$
DECLARE
    cred text := 'cred_' || substr(current_schema(), 6);
BEGIN
    EXECUTE format('CREATE TABLE IF NOT EXISTS %I.participant_time_zones ('
                   ' participant_id text PRIMARY KEY,'
                   ' time_zone text NOT NULL,'
                   ' occurred_at timestamptz NOT NULL,'
                   ' event_id uuid NOT NULL,'
                   ' updated_at timestamptz NOT NULL DEFAULT now())', cred);
    EXECUTE format('REVOKE ALL ON %I.participant_time_zones FROM PUBLIC', cred);
    EXECUTE format($fn$
        CREATE OR REPLACE FUNCTION %I.announce_participant_time_zone() RETURNS trigger LANGUAGE plpgsql AS $body$
        BEGIN
            PERFORM pg_notify('clinstream_credentials', d.key_id) FROM %I.device_credentials d
             WHERE d.participant_id = COALESCE(NEW.participant_id, OLD.participant_id) AND d.revoked_at IS NULL;
            RETURN NULL;
        END $body$ $fn$, cred, cred);
    EXECUTE format('DROP TRIGGER IF EXISTS participant_time_zone_changed ON %I.participant_time_zones', cred);
    EXECUTE format('CREATE TRIGGER participant_time_zone_changed AFTER INSERT OR UPDATE OF time_zone OR DELETE'
                   ' ON %I.participant_time_zones FOR EACH ROW EXECUTE FUNCTION %I.announce_participant_time_zone()',
                   cred, cred);
END
$migration$;
