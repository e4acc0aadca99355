-- Per-credential settings of the gateway at the edge (issues 11 and 17), next to the credentials (cred_<site>).
-- NULL means "the site's default" (CLINSTREAM_INGEST_* settings) or, for scopes, "unrestricted".
DO $migration$
DECLARE
    cred text := 'cred_' || substr(current_schema(), 6);
BEGIN
    EXECUTE format('ALTER TABLE %I.device_credentials'
                   ' ADD COLUMN IF NOT EXISTS time_zone text,'            -- IANA zone of the participant
                   ' ADD COLUMN IF NOT EXISTS max_requests_per_min integer CHECK (max_requests_per_min > 0),'
                   ' ADD COLUMN IF NOT EXISTS max_readings_per_min integer CHECK (max_readings_per_min > 0)', cred);
    EXECUTE format('ALTER TABLE %I.lims_credentials'
                   ' ADD COLUMN IF NOT EXISTS max_requests_per_min integer CHECK (max_requests_per_min > 0),'
                   ' ADD COLUMN IF NOT EXISTS max_events_per_min integer CHECK (max_events_per_min > 0),'
                   ' ADD COLUMN IF NOT EXISTS event_types text[],'          -- lifecycle | assay | consent
                   ' ADD COLUMN IF NOT EXISTS sample_prefixes text[]', cred);
END
$migration$;
