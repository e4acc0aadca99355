-- Ingest gateway (issue 3): device and LIMS credentials, and the LIMS event ids already accepted.
-- Ingest-zone tables: device serials and participant ids are direct identifiers here, as on the raw topics.
-- Only the gateway and the `clinstream devices|lims` commands read them; no downstream stage does.
-- Secrets are never stored: only the SHA-256 of a 256-bit random secret (brute force is hopeless, so a
-- slow password hash would add latency and nothing else).

CREATE TABLE IF NOT EXISTS device_credentials (
    key_id          text PRIMARY KEY,            -- public, random half of the token (csd_<key_id>.<secret>)
    secret_sha256   bytea NOT NULL,              -- SHA-256 of the secret, domain-separated with the key id
    device_id       text NOT NULL,               -- device serial
    participant_id  text NOT NULL,               -- the one participant this device writes for
    created_at      timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz                  -- set on revocation; the gateway refuses the token at once
);
-- A device has at most one active credential, so it is bound to exactly one participant at a time.
CREATE UNIQUE INDEX IF NOT EXISTS device_credentials_one_active
    ON device_credentials (device_id) WHERE revoked_at IS NULL;
CREATE INDEX IF NOT EXISTS device_credentials_participant ON device_credentials (participant_id);

CREATE TABLE IF NOT EXISTS lims_credentials (
    key_id          text PRIMARY KEY,            -- public, random half of the key (csl_<key_id>.<secret>)
    secret_sha256   bytea NOT NULL,
    lims_name       text NOT NULL,               -- label of the LIMS instance, e.g. 'lims-main'
    created_at      timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz
);

-- LIMS events the broker acknowledged: a resend of a known id is answered without producing again.
CREATE TABLE IF NOT EXISTS ingest_event_ids (
    event_id        uuid PRIMARY KEY,
    content_sha256  bytea NOT NULL,              -- hash of the validated event; a different event under a known id is refused
    lims_key_id     text NOT NULL,
    accepted_at     timestamptz NOT NULL DEFAULT now()
);
