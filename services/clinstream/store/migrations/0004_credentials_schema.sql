-- Credentials in a schema of their own (issue 12 item 6): the site schema (site_<id>) keeps pseudonymised feature
-- data and ingest bookkeeping; device and LIMS credentials, which hold device serials and participant ids, move to
-- cred_<id>. Only the owner role (the gateway's and the admin commands' role) may use it: no grant to PUBLIC, and
-- the federated reader role (fl_reader_<id>) gets none. A change of a credential is announced on the channel
-- 'clinstream_credentials' (payload: the key id) so that every gateway process drops its cached copy at once.
DO $migration$
DECLARE
    site  text := current_schema();
    cred  text;
BEGIN
    IF site IS NULL OR left(site, 5) <> 'site_' THEN
        RAISE EXCEPTION 'the credentials migration runs in a site schema (site_<id>), not in %', site;
    END IF;
    cred := 'cred_' || substr(site, 6);
    EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I', cred);
    EXECUTE format('REVOKE ALL ON SCHEMA %I FROM PUBLIC', cred);
    EXECUTE format('ALTER TABLE %I.device_credentials SET SCHEMA %I', site, cred);
    EXECUTE format('ALTER TABLE %I.lims_credentials SET SCHEMA %I', site, cred);
    EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM PUBLIC', cred);
    EXECUTE format($fn$
        CREATE OR REPLACE FUNCTION %I.announce_credential_change() RETURNS trigger LANGUAGE plpgsql AS $body$
        BEGIN
            PERFORM pg_notify('clinstream_credentials', COALESCE(NEW.key_id, OLD.key_id));
            RETURN NULL;
        END $body$ $fn$, cred);
    EXECUTE format('CREATE TRIGGER device_credentials_changed AFTER UPDATE OR DELETE ON %I.device_credentials'
                   ' FOR EACH ROW EXECUTE FUNCTION %I.announce_credential_change()', cred, cred);
    EXECUTE format('CREATE TRIGGER lims_credentials_changed AFTER UPDATE OR DELETE ON %I.lims_credentials'
                   ' FOR EACH ROW EXECUTE FUNCTION %I.announce_credential_change()', cred, cred);
END
$migration$;
