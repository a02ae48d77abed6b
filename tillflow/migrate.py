"""Migrations: numbered SQL files applied once, in order, to one database.

Files are ``postgres/migrations/NNNN_description.sql``. ``apply_migrations``:

- connects with the migrate job's credential (a superuser, or a CREATEROLE
  role that owns the database; no service uses it) and takes a session
  advisory lock, so a second migrator of the same database waits and then
  finds nothing left to do;
- refuses, before running anything, a history it cannot trust: an applied file
  whose bytes changed or that was renamed, an applied version missing from
  disk (this release is older than the database), or a pending file numbered
  before the last applied one;
- runs each pending file in its own transaction together with the row that
  records it in ``tillflow_meta.schema_migrations``, so a failing file leaves
  nothing behind. A file runs as ``tillflow_owner`` (``SET LOCAL ROLE``), so
  what it creates is owned by the owner, unless its first line is
  ``-- tillflow: run-as migrator`` (roles and database grants need the
  migrator's rights). A file is one transaction: no ``CREATE INDEX
  CONCURRENTLY`` or ``VACUUM`` in it;
- finally gives LOGIN and a password to each role it was given a password for
  (keys ``owner``, ``writer``, ``reader``, ``backup``, ``monitor``). The
  password is hashed here into a SCRAM verifier, so the plain text never
  reaches the server or its logs, and a role whose password already matches
  is left alone.

Every failure is a ``MigrationError`` naming the file (and line) and the
server's message, with the psycopg2 error as its cause.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TextIO, TypeVar

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import connection as Connection
from psycopg2.extensions import encrypt_password

from tillflow import pg
from tillflow.config import Settings
from tillflow.errors import ConfigError, MigrationError, first_line

ROLE_NAMES: Mapping[str, str] = {
    "owner": "tillflow_owner",
    "writer": "tillflow_writer",
    "reader": "tillflow_reader",
    "backup": "tillflow_backup",
    "monitor": "tillflow_monitor",
}
OWNER_ROLE = ROLE_NAMES["owner"]
RUN_AS_MIGRATOR = "-- tillflow: run-as migrator"

# Advisory locks are per database: "tillflow" in ASCII, as a bigint.
_LOCK_KEY = int.from_bytes(b"tillflow", "big")
_FILE_NAME = re.compile(r"^(\d{4})_[a-z0-9][a-z0-9_]*\.sql$")
# Two migrators of different databases in one cluster touch the same roles.
_RETRIES = 5

T = TypeVar("T")


@dataclass(frozen=True)
class Migration:
    """One migration file as read from disk."""

    version: int
    name: str
    sql: str
    sha256: str
    run_as_migrator: bool


def default_migrations_dir() -> Path:
    """``postgres/migrations`` beside the package (a checkout), else the image's ``/app``."""
    candidates = [Path(__file__).resolve().parent.parent / "postgres" / "migrations", Path("/app/postgres/migrations")]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise MigrationError(f"no migrations directory: looked in {' and '.join(map(str, candidates))}")


def load_migrations(directory: Path) -> list[Migration]:
    """The ``NNNN_*.sql`` files of ``directory`` in version order; other files are ignored."""
    if not directory.is_dir():
        raise MigrationError(f"migrations directory {directory} does not exist")
    migrations: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path}: a migration is named NNNN_description.sql (lower case, digits, _)")
        version = int(match.group(1))
        if version in migrations:
            raise MigrationError(f"{path}: version {version:04d} is also {migrations[version].name}")
        data = path.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MigrationError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from exc
        text = text.removeprefix("\ufeff")  # an editor's BOM is not SQL
        first_line = text.split("\n", 1)[0].strip()
        migrations[version] = Migration(
            version=version,
            name=path.name,
            sql=text,
            sha256=hashlib.sha256(data).hexdigest(),
            run_as_migrator=first_line == RUN_AS_MIGRATOR,
        )
    if not migrations:
        raise MigrationError(f"migrations directory {directory} holds no NNNN_*.sql file")
    return [migrations[v] for v in sorted(migrations)]


def apply_migrations(
    database_url: str,
    *,
    role_passwords: Mapping[str, str] | None = None,
    migrations_dir: Path | None = None,
    up_to: int | None = None,
) -> list[str]:
    """Apply the pending migrations and set role passwords; return the file names applied now.

    ``up_to`` (a version number, 8 for ``0008_*.sql``) stops after that migration: an older
    release's schema, for upgrade tests and benchmarks.
    """
    passwords = dict(role_passwords or {})
    unknown = sorted(set(passwords) - set(ROLE_NAMES))
    if unknown:
        raise MigrationError(f"no Tillflow role {', '.join(unknown)}: passwords are for {', '.join(ROLE_NAMES)}")
    migrations = load_migrations(migrations_dir or default_migrations_dir())
    conn = _connect(database_url)
    try:
        _run(conn, "taking the migration lock", lambda cur: cur.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,)))
        _run(conn, "creating tillflow_meta.schema_migrations", _create_version_table)
        applied = _run(conn, "reading tillflow_meta.schema_migrations", _read_applied)
        pending = _check_history(migrations, applied)
        if up_to is not None:
            pending = [m for m in pending if m.version <= up_to]
        done = []
        for migration in pending:
            _run(conn, f"migration {migration.name}", partial(_apply_one, migration=migration), source=migration.sql)
            done.append(migration.name)
        for key, password in sorted(passwords.items()):
            if password:
                role = ROLE_NAMES[key]
                _run(conn, f"setting the password of {role}", partial(_set_password, role=role, password=password))
        return done
    finally:
        conn.close()  # also releases the advisory lock


def status(database_url: str, *, migrations_dir: Path | None = None) -> list[tuple[str, datetime | None]]:
    """Every migration known to the files or the database, with when it was applied (None: pending)."""
    migrations = load_migrations(migrations_dir or default_migrations_dir())
    conn = _connect(database_url)
    try:
        applied = _run(conn, "reading tillflow_meta.schema_migrations", _read_applied)
    finally:
        conn.close()
    rows = {m.version: (m.name, None) for m in migrations}
    rows.update({version: (name, applied_at) for version, (name, _sha, applied_at) in applied.items()})
    return [rows[v] for v in sorted(rows)]


def cli_migrate(settings: Settings, status_only: bool = False, *, out: TextIO | None = None) -> int:
    """``tillflow migrate [--status]``: one line per migration applied (or listed); exit status."""
    out = out or sys.stdout
    if not settings.database_url:
        raise ConfigError("DATABASE_URL is not set: give the migrate job's libpq URL (a role that may create roles)")
    if status_only:
        for name, applied_at in status(settings.database_url):
            when = applied_at.isoformat(sep=" ", timespec="seconds") if applied_at else "pending"
            print(f"{name}  {when}", file=out)
        return 0
    applied = apply_migrations(settings.database_url, role_passwords=settings.role_passwords)
    for name in applied:
        print(f"applied {name}", file=out)
    if not applied:
        print("schema is up to date: nothing to apply", file=out)
    return 0


# -- the database side -------------------------------------------------------


def _connect(database_url: str) -> Connection:
    return pg.connect(database_url, "tillflow-migrate", error=MigrationError, timeout=None)


def _run(conn: Connection, what: str, step: Callable[..., T], *, source: str | None = None) -> T:
    """Run ``step(cursor)`` in one transaction; retry a lost race on a shared catalog row."""
    for attempt in range(1, _RETRIES + 1):
        try:
            with conn.cursor() as cur:
                result = step(cur)
            conn.commit()
            return result
        except psycopg2.Error as exc:
            if not conn.closed:
                conn.rollback()
            if _is_race(exc) and attempt < _RETRIES:
                time.sleep(0.05 * attempt)
                continue
            raise MigrationError(f"{what} failed{_line(exc, source)}: {first_line(exc, detail=True)}") from exc
    raise AssertionError("unreachable")  # pragma: no cover


def _create_version_table(cur) -> None:
    cur.execute("SELECT to_regclass('tillflow_meta.schema_migrations')")
    if cur.fetchone()[0] is None:
        cur.execute(
            """
            CREATE SCHEMA IF NOT EXISTS tillflow_meta;
            CREATE TABLE tillflow_meta.schema_migrations (
                version    integer     PRIMARY KEY,
                name       text        NOT NULL UNIQUE,
                sha256     text        NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now(),
                applied_by text        NOT NULL DEFAULT session_user
            );
            COMMENT ON TABLE tillflow_meta.schema_migrations IS
                'Migrations applied by tillflow migrate; written by the migrator only.';
            """
        )


def _read_applied(cur) -> dict[int, tuple[str, str, datetime]]:
    cur.execute("SELECT to_regclass('tillflow_meta.schema_migrations')")
    if cur.fetchone()[0] is None:
        return {}
    cur.execute("SELECT version, name, sha256, applied_at FROM tillflow_meta.schema_migrations ORDER BY version")
    return {version: (name, sha, applied_at) for version, name, sha, applied_at in cur.fetchall()}


def _check_history(migrations: list[Migration], applied: Mapping[int, tuple[str, str, datetime]]) -> list[Migration]:
    """The pending migrations, once the applied ones are known to be the files on disk."""
    by_version = {m.version: m for m in migrations}
    for version, (name, sha, _) in sorted(applied.items()):
        migration = by_version.get(version)
        if migration is None:
            raise MigrationError(
                f"{name} is applied to the database but is not among the migration files: "
                "this release is older than the database schema"
            )
        if migration.name != name:
            raise MigrationError(
                f"{migration.name}: version {version:04d} was applied as {name}; do not rename applied files"
            )
        if migration.sha256 != sha:
            raise MigrationError(
                f"{name} changed after it was applied (sha256 {sha[:12]}... in the database, "
                f"{migration.sha256[:12]}... on disk): restore it and put the change in a new migration"
            )
    pending = [m for m in migrations if m.version not in applied]
    last = max(applied, default=0)
    early = [m.name for m in pending if m.version < last]
    if early:
        raise MigrationError(
            f"{', '.join(early)} sorts before {applied[last][0]}, already applied: "
            "renumber it after the last applied file"
        )
    return pending


def _apply_one(cur, migration: Migration) -> None:
    if not migration.run_as_migrator:
        cur.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(OWNER_ROLE)))
    cur.execute(migration.sql)  # no parameters: psycopg2 leaves % alone
    cur.execute("RESET ROLE")
    cur.execute(
        "INSERT INTO tillflow_meta.schema_migrations (version, name, sha256) VALUES (%s, %s, %s)",
        (migration.version, migration.name, migration.sha256),
    )


def _set_password(cur, role: str, password: str) -> None:
    cur.execute("SELECT rolcanlogin FROM pg_catalog.pg_roles WHERE rolname = %s", (role,))
    row = cur.fetchone()
    if row is None:
        raise MigrationError(f"role {role} does not exist: the roles migration has not run")
    can_login = row[0]
    cur.execute("SELECT current_setting('is_superuser') = 'on'")
    superuser = cur.fetchone()[0]
    if can_login and superuser:
        # Only a superuser may read pg_authid; without it, set the password anyway.
        cur.execute("SELECT rolpassword FROM pg_catalog.pg_authid WHERE rolname = %s", (role,))
        if _scram_matches(cur.fetchone()[0], password):
            return
    verifier = encrypt_password(password, role, cur.connection, "scram-sha-256")
    cur.execute(sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD %s").format(sql.Identifier(role)), (verifier,))


def _scram_matches(verifier: str | None, password: str) -> bool:
    """Whether a stored ``SCRAM-SHA-256$iter:salt$StoredKey:ServerKey`` verifier is for ``password``."""
    match = re.fullmatch(r"SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):(.+)", verifier or "")
    if not match:
        return False
    try:
        salt, stored_key = base64.b64decode(match.group(2)), base64.b64decode(match.group(3))
    except binascii.Error:
        return False
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, int(match.group(1)))
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    return hmac.compare_digest(hashlib.sha256(client_key).digest(), stored_key)


def _is_race(exc: psycopg2.Error) -> bool:
    # Serialization failure, deadlock, or two sessions updating one pg_authid row.
    return exc.pgcode in ("40001", "40P01") or "tuple concurrently updated" in str(exc)



def _line(exc: psycopg2.Error, source: str | None) -> str:
    """`` at line N`` of the file where the server located the error, when it did."""
    diag = getattr(exc, "diag", None)
    position = diag.statement_position if diag is not None else None
    if not source or not position or not position.isdigit():
        return ""
    return f" at line {source[: int(position) - 1].count(chr(10)) + 1}"
