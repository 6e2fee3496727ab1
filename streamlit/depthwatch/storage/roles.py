"""A read-only login role for the dashboard (`depthwatch db create-readonly-role`).

The role may read every table in the schema the depthwatch tables live in, now
and later (the writer creates a day's partitions as it goes: default
privileges cover those), and nothing else: no INSERT, UPDATE, DELETE,
TRUNCATE, no CREATE in the schema. Reading a partitioned table checks the
privilege on the parent only, so the dashboard's queries need nothing on the
partitions; the default privileges make a partition readable directly as well.

The password never travels in clear: it is hashed on this side with the
server's own method (SCRAM-SHA-256 by default) before `CREATE ROLE`, so it is
absent from the server's statement log too. The caller prints the URL; nothing
here logs it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import psycopg2
import sqlalchemy as sa
from psycopg2 import sql
from psycopg2.extensions import connection as PgConnection
from psycopg2.extensions import encrypt_password

from depthwatch.storage.db import normalise_url

MAX_IDENTIFIER_LENGTH = 63  # PostgreSQL's NAMEDATALEN - 1
ROLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class RoleError(ValueError):
    """The role cannot be created as asked; the message says why (never the password)."""


@dataclass(frozen=True)
class ReadonlyRole:
    name: str
    created: bool  # False: an existing role was updated
    schema: str
    tables: int  # tables (partitions included) it can read now
    default_owners: tuple[str, ...]  # whose future tables it will read


def validate_role_name(name: str) -> str:
    """A plain PostgreSQL identifier, or RoleError. (It is quoted anyway.)"""
    if not ROLE_NAME.fullmatch(name) or len(name) > MAX_IDENTIFIER_LENGTH:
        raise RoleError(
            f"{name!r} is not a valid role name: use letters, digits and underscores, "
            f"not starting with a digit, at most {MAX_IDENTIFIER_LENGTH} characters"
        )
    if name.lower().startswith("pg_") or name.lower() == "public":
        raise RoleError(f"{name!r} is reserved by PostgreSQL; choose another role name")
    return name


def role_url(database_url: str, name: str, password: str) -> str:
    """The database URL with the role's name and password instead of the admin's:
    what DASHBOARD_DATABASE_URL should be."""
    url = sa.make_url(normalise_url(database_url))
    url = url.set(drivername="postgresql", username=name, password=password)
    return url.render_as_string(hide_password=False)


def create_readonly_role(engine: sa.Engine, name: str, password: str) -> ReadonlyRole:
    """Create the role, or bring an existing one back to read-only with this
    password. Refuses roles that could write anyway: a superuser, the role we
    connect as, a member of other roles, an owner of tables."""
    name = validate_role_name(name)
    if not password:
        raise RoleError("the role's password is empty")
    raw = engine.raw_connection()
    try:
        conn = raw.driver_connection
        assert isinstance(conn, PgConnection)
        try:
            result = _apply(conn, name, password)
            conn.commit()
            return result
        except psycopg2.Error as exc:
            conn.rollback()
            # The server's message only: the statement (and its hashed password) stays out.
            reason = exc.diag.message_primary or str(exc).strip().splitlines()[0]
            raise RoleError(f"PostgreSQL refused: {reason}") from None
        except RoleError:
            conn.rollback()
            raise
    finally:
        raw.close()


def _apply(conn: PgConnection, name: str, password: str) -> ReadonlyRole:
    role = sql.Identifier(name)
    with conn.cursor() as cur:
        cur.execute("SELECT current_user, current_schema(), current_database()")
        me, schema_name, database = cur.fetchone()
        if name == me:
            raise RoleError(f"{name} is the role this command connects as; choose another name")
        cur.execute("SELECT oid, rolsuper FROM pg_roles WHERE rolname = %s", (name,))
        existing = cur.fetchone()
        if existing is not None:
            _refuse_powerful_role(cur, name, existing[0], existing[1])
        verifier = encrypt_password(password, name, conn)
        limits = sql.SQL(
            "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT"
        )
        verb = sql.SQL("ALTER ROLE" if existing else "CREATE ROLE")
        cur.execute(sql.SQL("{} {} WITH {} PASSWORD %s").format(verb, role, limits), (verifier,))
        schema = sql.Identifier(schema_name)
        statements = [
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(database), role),
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema, role),
            sql.SQL("REVOKE CREATE ON SCHEMA {} FROM {}").format(schema, role),
            # An updated role loses whatever it was granted before.
            sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA {} FROM {}").format(schema, role),
            sql.SQL("REVOKE ALL ON ALL SEQUENCES IN SCHEMA {} FROM {}").format(schema, role),
            sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(schema, role),
            # A second guard: its sessions start read-only (it could SET it off,
            # but has no privilege to write anyway).
            sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(role),
        ]
        for statement in statements:
            cur.execute(statement)
        owners = _table_owners(cur, schema_name) | {me}
        for owner in sorted(owners):
            cur.execute(
                sql.SQL(
                    "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} GRANT SELECT ON TABLES TO {}"
                ).format(sql.Identifier(owner), schema, role)
            )
        cur.execute(
            """SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = %s AND c.relkind IN ('r', 'p')
                 AND has_table_privilege(%s, c.oid, 'SELECT')""",
            (schema_name, name),
        )
        tables = cur.fetchone()[0]
    return ReadonlyRole(name, existing is None, schema_name, tables, tuple(sorted(owners)))


def _refuse_powerful_role(
    cur: psycopg2.extensions.cursor, name: str, oid: int, superuser: bool
) -> None:
    if superuser:
        raise RoleError(f"role {name} exists and is a superuser; refusing to reuse it")
    cur.execute(
        """SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid
           WHERE m.member = %s ORDER BY 1""",
        (oid,),
    )
    groups = [row[0] for row in cur.fetchall()]
    if groups:
        raise RoleError(
            f"role {name} exists and is a member of {', '.join(groups)}; "
            "a read-only role must belong to no other role"
        )
    cur.execute("SELECT count(*) FROM pg_class WHERE relowner = %s", (oid,))
    if cur.fetchone()[0]:
        raise RoleError(f"role {name} exists and owns tables (it could write them); refusing")


def _table_owners(cur: psycopg2.extensions.cursor, schema_name: str) -> set[str]:
    """Roles owning tables in the schema: the writer creates partitions as its
    own role, so the default privileges must be set for that role."""
    cur.execute(
        """SELECT DISTINCT pg_get_userbyid(c.relowner) FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = %s AND c.relkind IN ('r', 'p')""",
        (schema_name,),
    )
    return {row[0] for row in cur.fetchall()}
