"""What a backup reads from PostgreSQL itself: a snapshot it shares with
pg_dump, the content checksum of ``sales.transactions`` and the database's
properties.

The checksum is order-independent: the first 64 bits of the md5 of every row's
text form are summed modulo 2**64, beside the row count. A table is a set of
rows with unique ids, so the sum identifies its content as well as a hash of
the rows in id order would (a changed, lost or added row moves the sum; two
changes cancelling out has odds of 2**-64), while it needs no sort and no
aggregate string (``string_agg`` of a large table hits PostgreSQL's 1 GB
limit), runs in one parallel pass, and is computed the same way in the live
database, in the dump's own snapshot, and after a restore, on any version or
platform (md5 is defined everywhere; PostgreSQL's internal hashes are not
promised to be). The text form of a row depends on a few session settings
(time zone, date style), fixed here.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from backup.errors import BackupError
from backup.manifest import Content, DatabaseProperties
from backup.tools import Server
from tillflow.pg import translated

TABLE = "sales.transactions"
POSITIONS = "ingest.kafka_positions"
ALGORITHM = "md5-sum64/v1"
_MASK = (1 << 64) - 1

_TEXT_SETTINGS = (
    "SET LOCAL TimeZone = 'UTC'",
    "SET LOCAL DateStyle = 'ISO, YMD'",
    "SET LOCAL IntervalStyle = 'postgres'",
    "SET LOCAL extra_float_digits = 1",
    "SET LOCAL bytea_output = 'hex'",
)
# One md5 per row: a second expression on the same md5 would compute it twice.
_CHECKSUM = f"""
    SELECT count(*), coalesce(sum(('x' || left(md5(t::text), 16))::bit(64)::bigint), 0)
    FROM {TABLE} AS t
"""
_PROPERTIES = """
    SELECT d.datname, pg_catalog.pg_get_userbyid(d.datdba), pg_catalog.pg_encoding_to_char(d.encoding),
           d.datlocprovider::text, d.datcollate, d.datctype, d.daticulocale,
           CASE WHEN d.datacl IS NULL THEN NULL ELSE coalesce(
               (SELECT json_agg(json_build_array(coalesce(r.rolname, 'PUBLIC'), a.privilege_type, a.is_grantable)
                                ORDER BY r.rolname NULLS FIRST, a.privilege_type)
                FROM pg_catalog.aclexplode(d.datacl) AS a
                LEFT JOIN pg_catalog.pg_roles AS r ON r.oid = a.grantee), '[]'::json) END,
           coalesce(
               (SELECT json_agg(json_build_array(r.rolname, s.setconfig) ORDER BY r.rolname NULLS FIRST)
                FROM pg_catalog.pg_db_role_setting AS s
                LEFT JOIN pg_catalog.pg_roles AS r ON r.oid = s.setrole
                WHERE s.setdatabase = d.oid), '[]'::json)
    FROM pg_catalog.pg_database AS d
    WHERE d.datname = current_database()
"""


def content(cur) -> Content:
    """Row count and content checksum of ``sales.transactions``, in the cursor's transaction."""
    for statement in _TEXT_SETTINGS:
        cur.execute(statement)
    cur.execute(_CHECKSUM)
    rows, total = cur.fetchone()
    return Content(TABLE, int(rows), f"{int(total) & _MASK:016x}", ALGORITHM)


def read_now(server: Server, dbname: str, read: Callable, what: str, *, error=BackupError):
    """``read(cursor)`` in ``dbname`` as it is now, in a read-only transaction."""
    conn = server.connect(dbname, error=error)
    try:
        with translated(error, f"{what} in {server.where(dbname)} failed"):
            conn.set_session(readonly=True)
            with conn.cursor() as cur:
                return read(cur)
    finally:
        conn.close()


def content_of(server: Server, dbname: str, *, error=BackupError) -> Content:
    """Row count and checksum of ``sales.transactions`` in ``dbname`` as it is now."""
    return read_now(server, dbname, content, f"checksumming {TABLE}", error=error)


def positions(cur) -> dict[tuple[str, int], int] | None:
    """Where the consumer had stored up to in Kafka, per topic and partition, in the
    cursor's transaction (None: a database from before migration 0010 keeps none)."""
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (POSITIONS,))
    if not cur.fetchone()[0]:
        return None
    cur.execute(f"SELECT topic, partition, next_offset FROM {POSITIONS}")
    return {(topic, partition): offset for topic, partition, offset in cur.fetchall()}


def positions_of(server: Server, dbname: str, *, error=BackupError) -> dict[tuple[str, int], int] | None:
    """``positions`` of ``dbname`` as it is now."""
    return read_now(server, dbname, positions, f"reading {POSITIONS}", error=error)


def properties(cur) -> DatabaseProperties:
    cur.execute(_PROPERTIES)
    name, owner, encoding, provider, collate, ctype, icu, acl, settings = cur.fetchone()
    return DatabaseProperties(name, owner, encoding, provider, collate, ctype, icu, acl, settings)


@dataclass(frozen=True)
class Snapshot:
    """An exported snapshot, held open by its session, and what was read in it."""

    id: str
    server_version: str
    server_version_num: int
    user: str
    database: DatabaseProperties
    positions: dict[tuple[str, int], int] | None
    connection: psycopg2.extensions.connection = field(repr=False, compare=False)

    def content(self) -> Content:
        """Count and checksum ``sales.transactions`` in the snapshot. The session is
        otherwise idle, so this runs while pg_dump dumps the same snapshot."""
        with translated(BackupError, f"checksumming {TABLE} failed"), self.connection.cursor() as cur:
            return content(cur)

    def cancel(self) -> None:
        """Stop a running ``content()`` (from another thread)."""
        with contextlib.suppress(psycopg2.Error):
            self.connection.cancel()


@contextlib.contextmanager
def snapshot(server: Server) -> Iterator[Snapshot]:
    """Export a snapshot and read the database's properties and Kafka positions in it; it
    lives until the block ends.

    pg_dump started inside the block with ``--snapshot=<id>`` dumps exactly the
    rows ``Snapshot.content()`` counts, whatever is written meanwhile.
    """
    conn = server.connect()
    try:
        with translated(BackupError, f"reading {server.where()} failed"):
            conn.set_session(isolation_level=psycopg2.extensions.ISOLATION_LEVEL_REPEATABLE_READ, readonly=True)
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT pg_catalog.pg_export_snapshot(), current_setting('server_version'),"
                    " current_setting('server_version_num')::int, current_user, to_regclass(%s) IS NOT NULL",
                    (TABLE,),
                )
                snap_id, version, version_num, user, migrated = cur.fetchone()
                if not migrated:
                    raise BackupError(f"{server.where()} has no {TABLE}: is it a migrated Tillflow database?")
                facts = Snapshot(snap_id, version, version_num, user, properties(cur), positions(cur), conn)
    except BaseException:
        conn.close()
        raise
    try:
        yield facts
    finally:
        with contextlib.suppress(psycopg2.Error):
            conn.rollback()
        conn.close()


def create_database(cur, name: str, props: DatabaseProperties) -> None:
    """``CREATE DATABASE name`` with the backed-up database's encoding and locale."""
    parts = [
        sql.SQL("CREATE DATABASE {} WITH TEMPLATE template0 ENCODING {}").format(
            sql.Identifier(name), sql.Literal(props.encoding)
        )
    ]
    if props.locale_provider == "i":  # ICU; libc is the default, and older servers know no provider
        parts.append(sql.SQL("LOCALE_PROVIDER icu ICU_LOCALE {}").format(sql.Literal(props.icu_locale)))
    parts.append(sql.SQL("LC_COLLATE {} LC_CTYPE {}").format(sql.Literal(props.collate), sql.Literal(props.ctype)))
    cur.execute(sql.SQL(" ").join(parts))


def drop_database(cur, name: str) -> None:
    cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
