"""The ClientApp's egress guard in the database: a per-site role that can read only the feature tables and views.

`ensure_reader_role` creates (idempotently) a LOGIN role `fl_reader_<site>` with USAGE on the site schema and
SELECT on `wearable_features`, `wearable_features_current`, `sample_features` and `sample_features_current` only,
read-only by default. PostgreSQL itself refuses anything else (erasure audit, migrations, other sites' schemas).
`connect_reader` is how the ClientApp connects, and `privilege_violations` lets it check, before it reads, that
the role it got is no broader than that (a misconfigured URL pointing at the owner makes the site decline).
"""

from __future__ import annotations

import contextlib
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from clinstream.core.config import Settings
from clinstream.core.db import connect_with_retry
from clinstream.federated.config import reader_role

FEATURE_RELATIONS: tuple[str, ...] = (
    "wearable_features", "wearable_features_current", "sample_features", "sample_features_current",
)


def _schema_of(site_id: str) -> str:
    return "site_" + site_id.replace("-", "_")


def reader_url(database_url: str, site_id: str) -> str:
    """The libpq URL of the site's reader role: the owner's URL with the user replaced and no password."""
    params = conninfo_to_dict(database_url)
    params.pop("password", None)
    params["user"] = reader_role(site_id)
    return make_conninfo(**{k: str(v) for k, v in params.items() if v is not None})


def ensure_reader_role(settings: Settings) -> str:
    """Create or refresh the site's reader role and its grants (run as the schema owner); returns the role name."""
    role = reader_role(settings.site_id)
    schema = settings.db_schema
    with connect_with_retry(settings, max_wait_s=30.0, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        if exists is None:
            with contextlib.suppress(psycopg.errors.DuplicateObject):  # created concurrently
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT"
                                     " NOREPLICATION CONNECTION LIMIT 16").format(sql.Identifier(role)))
        with conn.transaction():
            conn.execute(sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(sql.Identifier(role)))
            conn.execute(sql.SQL("ALTER ROLE {} SET search_path = {}, public").format(
                sql.Identifier(role), sql.Identifier(schema)))
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema),
                                                                          sql.Identifier(role)))
            conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(
                sql.SQL(", ").join(sql.Identifier(schema, r) for r in FEATURE_RELATIONS), sql.Identifier(role)))
    return role


def drop_reader_role(settings: Settings) -> None:
    """Revoke the site's reader role's grants on its schema and drop the role (idempotent)."""
    role = reader_role(settings.site_id)
    with connect_with_retry(settings, max_wait_s=30.0, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None:
            return
        schema_exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s",
                                     (settings.db_schema,)).fetchone()
        with conn.transaction():
            if schema_exists is not None:
                ident = sql.Identifier(settings.db_schema)
                conn.execute(sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA {} FROM {}").format(ident,
                                                                                           sql.Identifier(role)))
                conn.execute(sql.SQL("REVOKE ALL ON SCHEMA {} FROM {}").format(ident, sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def connect_reader(site_id: str, database_url: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """A read-only connection of the ClientApp, search_path = the site schema (the URL names the reader role)."""
    conn = psycopg.connect(database_url, connect_timeout=5, autocommit=True, **kwargs)
    conn.execute(sql.SQL("SET search_path TO {}, public").format(sql.Identifier(_schema_of(site_id))))
    return conn


_BROADER_THAN_FEATURES = """
SELECT 'superuser or role admin' FROM pg_roles
 WHERE rolname = current_user AND (rolsuper OR rolcreaterole OR rolcreatedb OR rolbypassrls)
UNION ALL
SELECT 'reads ' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'v', 'm', 'p', 'f')
   AND c.relname <> ALL(%(allowed)s) AND has_table_privilege(c.oid, 'SELECT')
UNION ALL
SELECT 'writes ' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'v', 'm', 'p', 'f')
   AND (has_table_privilege(c.oid, 'INSERT') OR has_table_privilege(c.oid, 'UPDATE')
        OR has_table_privilege(c.oid, 'DELETE') OR has_table_privilege(c.oid, 'TRUNCATE'))
UNION ALL
SELECT 'uses another site schema' FROM pg_namespace
 WHERE nspname LIKE 'site\\_%%' AND nspname <> %(schema)s AND has_schema_privilege(oid, 'USAGE')
"""


def privilege_violations(conn: psycopg.Connection[Any], site_id: str) -> list[str]:
    """Why the connected role is broader than the site's feature relations (empty list: it is not)."""
    rows = conn.execute(_BROADER_THAN_FEATURES, {"schema": _schema_of(site_id),
                                                 "allowed": list(FEATURE_RELATIONS)}).fetchall()
    return sorted({str(r[0]) for r in rows})
