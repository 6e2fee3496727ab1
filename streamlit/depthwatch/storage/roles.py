"""A read-only login role for the dashboard (`depthwatch db create-readonly-role`).

The role may read every table in the schema the depthwatch tables live in, now
and later (the writer creates a day's partitions as it goes: default
privileges cover those), and nothing else: no INSERT, UPDATE, DELETE,
TRUNCATE, no CREATE in the schema. Reading a partitioned table checks the
privilege on the parent only, so the dashboard's queries need nothing on the
partitions; the default privileges make a partition readable directly as well.

Nor may it create temporary tables, views, sequences or functions (`pg_temp.f`):
every database grants TEMPORARY to PUBLIC by default, and privileges only add
up, so revoking it from the role alone would change nothing. The command takes
TEMPORARY away from PUBLIC on the depthwatch database and grants it back to the
roles that need it: the role it connects as, every owner of a table in the
schema (the writer stages each flush in per-connection temp tables) and every
other role allowed to INSERT into one (a writer that owns nothing). Superusers
and the database's owner keep it anyway. Any other login role that had it and
loses it is named in a note, not dropped silently. template1 likewise loses
CONNECT (and TEMPORARY, which initdb already takes away) for PUBLIC, so the
role cannot connect there; creating databases from it needs no CONNECT. Both
need the database's owner or a superuser: when the connecting role is neither
(as on Render, where template1 is not the user's), nothing fails, the result
carries a note saying what the role can still do. Other databases the role can
connect to (`postgres`) are reported the same way, never changed: other roles
may use them.

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
    database: str
    temp_roles: tuple[str, ...]  # granted TEMPORARY on the database, PUBLIC's taken; () if not
    template1_closed: bool  # CONNECT on template1 taken from PUBLIC (and from the role)
    notes: tuple[str, ...]  # what could not be taken away or was taken from others, a line each


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
        temp_roles, closed, notes = _restrict_databases(
            cur, name, me, database, schema_name, owners
        )
    return ReadonlyRole(
        name,
        existing is None,
        schema_name,
        tables,
        tuple(sorted(owners)),
        database,
        temp_roles,
        closed,
        notes,
    )


def _restrict_databases(
    cur: psycopg2.extensions.cursor,
    name: str,
    me: str,
    database: str,
    schema_name: str,
    owners: set[str],
) -> tuple[tuple[str, ...], bool, tuple[str, ...]]:
    """No TEMPORARY on the database, no CONNECT on template1: returns the roles
    granted TEMPORARY (empty if PUBLIC's could not be taken), whether template1
    is closed to the role, and the notes."""
    role = sql.Identifier(name)
    notes: list[str] = []
    temp_roles: tuple[str, ...] = ()
    before = _login_roles_with(cur, database, "TEMPORARY")
    may_database = _may_grant_on(cur, database)
    if may_database:
        keep = owners | _inserting_roles(cur, schema_name) | {me}
        keep.discard(name)
        temp_roles = tuple(sorted(keep))
        db = sql.Identifier(database)
        for keeper in temp_roles:
            cur.execute(
                sql.SQL("GRANT TEMPORARY ON DATABASE {} TO {}").format(db, sql.Identifier(keeper))
            )
        cur.execute(sql.SQL("REVOKE TEMPORARY ON DATABASE {} FROM PUBLIC").format(db))
        cur.execute(sql.SQL("REVOKE TEMPORARY ON DATABASE {} FROM {}").format(db, role))
    lost = sorted(before - _login_roles_with(cur, database, "TEMPORARY") - {name})
    if lost:
        notes.append(
            f"TEMPORARY on database {database} is no longer granted to PUBLIC; "
            f"these roles lose it (grant it to any that need it): {', '.join(lost)}"
        )
    if _has_on_database(cur, name, database, "TEMPORARY"):
        notes.append(
            f"could not revoke TEMPORARY on database {database} from PUBLIC "
            f"({_why_not(cur, database, may_database)}); "
            "the role can create temporary tables and functions there"
        )
    template = sql.Identifier("template1")
    may_template = _may_grant_on(cur, "template1")
    if may_template:
        for grantee in (sql.SQL("PUBLIC"), role):
            cur.execute(
                sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM {}").format(
                    template, grantee
                )
            )
    closed = not _has_on_database(cur, name, "template1", "CONNECT")
    if not closed:
        temp = _has_on_database(cur, name, "template1", "TEMPORARY")
        notes.append(
            "could not revoke CONNECT on template1 from PUBLIC "
            f"({_why_not(cur, 'template1', may_template)}); "
            "the role can connect there"
            + (" and create temporary tables" if temp else " but not create temporary tables")
        )
    cur.execute(
        """SELECT datname, has_database_privilege(%s, oid, 'TEMPORARY') FROM pg_database
           WHERE datallowconn AND datname NOT IN (%s, 'template1')
             AND has_database_privilege(%s, oid, 'CONNECT')
           ORDER BY datname""",
        (name, database, name),
    )
    others = cur.fetchall()
    if others:
        temps = [d for d, temp in others if temp]
        notes.append(
            f"the role can also connect to database(s) {', '.join(d for d, _ in others)}"
            + (f" and create temporary tables in {', '.join(temps)}" if temps else "")
            + "; left as they are, since other roles may need them"
        )
    return temp_roles, closed, tuple(notes)


def _may_grant_on(cur: psycopg2.extensions.cursor, database: str) -> bool:
    """Whether the current role may change the database's privileges for
    PUBLIC: a superuser, its owner or a role with the owner's privileges."""
    cur.execute(
        """SELECT pg_has_role(current_user, datdba, 'USAGE') FROM pg_database
           WHERE datname = %s""",
        (database,),
    )
    row = cur.fetchone()
    return bool(row and row[0])


def _why_not(cur: psycopg2.extensions.cursor, database: str, may: bool) -> str:
    if may:  # revoked, yet still held: a grant made by another grantor, or to its group
        return "it holds it through a grant this role cannot revoke"
    cur.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (database,))
    return f"needs its owner, {cur.fetchone()[0]}, or a superuser"


def _has_on_database(
    cur: psycopg2.extensions.cursor, name: str, database: str, privilege: str
) -> bool:
    cur.execute(
        """SELECT has_database_privilege(%s, oid, %s) FROM pg_database
           WHERE datname = %s""",
        (name, privilege, database),
    )
    row = cur.fetchone()
    return bool(row and row[0])


def _login_roles_with(cur: psycopg2.extensions.cursor, database: str, privilege: str) -> set[str]:
    """Login roles holding the privilege on the database, however they got it."""
    cur.execute(
        """SELECT r.rolname FROM pg_roles r, pg_database d
           WHERE d.datname = %s AND r.rolcanlogin
             AND has_database_privilege(r.oid, d.oid, %s)""",
        (database, privilege),
    )
    return {row[0] for row in cur.fetchall()}


def _inserting_roles(cur: psycopg2.extensions.cursor, schema_name: str) -> set[str]:
    """Roles granted INSERT on a table in the schema without owning it: a
    writer that does not own the tables still needs its temp staging tables."""
    cur.execute(
        """SELECT DISTINCT pg_get_userbyid(a.grantee) FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace,
                aclexplode(c.relacl) a
           WHERE n.nspname = %s AND c.relkind IN ('r', 'p')
             AND a.privilege_type = 'INSERT' AND a.grantee <> 0""",
        (schema_name,),
    )
    return {row[0] for row in cur.fetchall()}


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
