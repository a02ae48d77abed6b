"""``tillflow backup restore FILE [--target NAME] [--replace --yes]``.

Runs as a superuser, the migrate job's credential: it creates roles and
databases and gives objects their owners. ``DATABASE_URL`` names the server
and the live database.

1. The backup's files are checked against its manifest: a corrupt backup is
   refused before anything changes.
2. Roles, from the globals dump, in one transaction: created when missing,
   attributes, settings and memberships as they were; the connected superuser
   is left as it is. The backup holds no passwords (``--no-role-passwords``):
   on a new server run ``tillflow migrate`` afterwards to set them.
3. A new database (``<live>_restored_<stamp>`` unless ``--target``) with the
   backup's encoding and locale; ``pg_restore --exit-on-error`` with owners and
   privileges; the database's owner, privileges and settings from the
   manifest; the row count and content checksum of ``sales.transactions``
   compared with the manifest; ANALYZE. Any failure drops the new database.
4. ``--replace`` (only with ``--yes``) first stops the writers: CONNECT on the
   live database is revoked from ``tillflow_writer`` and ``tillflow_owner``
   and their sessions are terminated (the consumer retries with backoff and
   its backlog waits in Kafka; under Docker ``make restore`` also stops the
   consumer, watcher and api). The backup is restored as in 3 under a
   temporary name, then, in one transaction, the live database is renamed
   ``<live>_pre_restore_<time>`` (kept, for whatever was written after the
   backup) and the restored one takes the live name. If anything fails before
   that, the live database gets its privileges back, unchanged.

``tillflow backup restore --replace`` then replays from Kafka what came after
the backup (``backup.recover``); this module only restores.
"""
from __future__ import annotations

import contextlib
import logging
import re
import secrets
import time
from dataclasses import dataclass

import psycopg2
import psycopg2.errors
from psycopg2 import sql

from backup import database
from backup.context import Context
from backup.errors import BackupError, RestoreError, VerifyError
from backup.manifest import DatabaseProperties
from backup.store import NAME, Backup, reading
from backup.tools import Server
from backup.verify import compare, quick
from tillflow.errors import first_line
from tillflow.pg import translated

log = logging.getLogger(__name__)

WRITERS = ("tillflow_writer", "tillflow_owner")
_DB_PRIVILEGES = {"CONNECT", "TEMPORARY", "CREATE"}
_MAX_NAME = 63
_IDENT = r'("(?:[^"]|"")+"|[a-z_][a-z0-9_$]*)'
_CREATE_ROLE = re.compile(rf"^CREATE ROLE {_IDENT};$")
_ALTER_ROLE_WITH = re.compile(rf"^ALTER ROLE {_IDENT} WITH ")


@dataclass(frozen=True)
class RestoreResult:
    database: str
    previous: str | None  # --replace: where the live database's old contents are kept
    rows: int
    checksum: str
    duration_seconds: float
    created_roles: tuple[str, ...] = ()  # new to the server: they have no password yet


def _identifier(token: str) -> str:
    return token[1:-1].replace('""', '"') if token.startswith('"') else token


def filter_globals(text: str, existing: set[str], me: str) -> tuple[str, list[str]]:
    """The globals dump minus CREATE ROLE of roles that exist and any change to ``me``,
    and the roles it creates."""
    out, created_roles = [], []
    for line in text.splitlines():
        created = _CREATE_ROLE.match(line)
        altered = _ALTER_ROLE_WITH.match(line)
        if created and _identifier(created.group(1)) in existing:
            out.append(f"-- exists already: {line}")
        elif altered and _identifier(altered.group(1)) == me:
            out.append(f"-- the restoring role is left as it is: {line}")
        else:
            if created:
                created_roles.append(_identifier(created.group(1)))
            out.append(line)
    return "\n".join(out) + "\n", created_roles


def _name(base: str, suffix: str) -> str:
    return base[: _MAX_NAME - len(suffix)] + suffix


def restore(ctx: Context, backup: Backup, *, target: str | None = None, replace: bool = False) -> RestoreResult:
    """Restore ``backup`` into a new database, or over the live one with ``replace``."""
    try:
        with translated(RestoreError, f"restoring {backup.name} failed"):
            return _restore(ctx, backup, target, replace)
    except OSError as exc:
        raise RestoreError(f"restoring {backup.name} failed: {exc.strerror or exc}") from exc


def _restore(ctx: Context, backup: Backup, target: str | None, replace: bool) -> RestoreResult:
    server = ctx.need_server()
    started = time.monotonic()
    try:
        quick(backup, ctx.tools)
    except VerifyError as exc:
        raise RestoreError(f"backup {backup.name} is damaged, nothing was changed: {exc}") from exc
    live = server.dbname
    stamp = NAME.match(backup.name).group("stamp").lower().replace("t", "_", 1).rstrip("z")
    if replace:
        target = _name(live, f"_restoring_{secrets.token_hex(3)}")
    else:
        target = target or _name(live, f"_restored_{stamp}")
    admin = _admin(server, avoid=live)
    try:
        with admin.cursor() as cur:
            _require_superuser(cur, server)
            if _exists(cur, target):
                raise RestoreError(f"database {target} exists already: choose another --target, or drop it")
            if replace and not _exists(cur, live):
                raise RestoreError(f"there is no database {live} to replace: restore without --replace")
        stopped = _stop_writers(admin, live) if replace else None
        try:
            created_roles = _restore_roles(ctx, server, admin, backup)
            found = _restore_database(ctx, server, admin, backup, target)
            previous = None
            if replace:
                previous = _name(live, f"_pre_restore_{ctx.clock():%Y%m%d_%H%M%S}")
                _swap(admin, live, target, previous)
        except BaseException:
            with contextlib.suppress(psycopg2.Error), admin.cursor() as cur:
                database.drop_database(cur, target)
            if stopped is not None:
                _resume_writers(admin, live, stopped)
            raise
        if previous is not None:
            _reopen(admin, previous)
    finally:
        admin.close()
    result = RestoreResult(live if replace else target, previous, found.rows, found.checksum,
                           time.monotonic() - started, tuple(created_roles))
    log.info("restored %s into %s (%d rows) in %.1fs", backup.name, result.database, found.rows,
             result.duration_seconds)
    return result


# -- connections and checks ---------------------------------------------------------


def _admin(server: Server, *, avoid: str):
    """An autocommit connection to a maintenance database other than ``avoid``."""
    last: BackupError | None = None
    for dbname in ("postgres", "template1"):
        if dbname == avoid:
            continue
        try:
            conn = server.connect(dbname, error=RestoreError)
        except RestoreError as exc:
            last = exc
            continue
        conn.autocommit = True
        return conn
    raise last or RestoreError("no maintenance database (postgres or template1) to connect to")


def _require_superuser(cur, server: Server) -> None:
    cur.execute("SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user")
    if not cur.fetchone()[0]:
        raise RestoreError(
            f"restore recreates roles and object owners, so it runs as a superuser; {server.user} is not one "
            "(give DATABASE_URL of the migrate job: `make restore` does)"
        )


def _exists(cur, name: str) -> bool:
    cur.execute("SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s", (name,))
    return cur.fetchone() is not None


# -- the restore proper ----------------------------------------------------------------


def _restore_roles(ctx: Context, server: Server, admin, backup: Backup) -> list[str]:
    with admin.cursor() as cur:
        cur.execute("SELECT rolname, session_user FROM pg_catalog.pg_roles")
        rows = cur.fetchall()
    existing, me = {r[0] for r in rows}, rows[0][1]
    script, created = filter_globals(backup.globals_path.read_text(encoding="utf-8"), existing, me)
    ctx.tools.run(
        "psql",
        ["--no-psqlrc", "--quiet", "--set=ON_ERROR_STOP=1", "--single-transaction",
         f"--dbname={server.conninfo(admin.info.dbname, application='tillflow-restore')}", "--file=-"],
        server=server, what=f"restoring the roles of {backup.name}", input_text=script,
    )
    return created


def _restore_database(ctx: Context, server: Server, admin, backup: Backup, target: str):
    manifest = backup.manifest
    with translated(RestoreError, f"creating database {target} failed"), admin.cursor() as cur:
        database.create_database(cur, target, manifest.database)
    with reading(backup.dump_path):
        ctx.tools.run(
            "pg_restore",
            ["--exit-on-error", f"--jobs={ctx.restore_jobs}",
             f"--dbname={server.conninfo(target, application='tillflow-restore')}", str(backup.dump_path)],
            server=server, what=f"restoring {backup.name} into database {target}",
        )
    with admin.cursor() as cur:
        apply_properties(cur, target, manifest.database)
    found = database.content_of(server, target, error=RestoreError)
    try:
        compare(manifest, found.rows, found.checksum, where=f"the restored database {target}")
    except VerifyError as exc:
        raise RestoreError(str(exc)) from exc
    conn = server.connect(target, error=RestoreError)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("ANALYZE")  # pg_restore leaves no statistics: the first queries would plan blind
    finally:
        conn.close()
    return found


def apply_properties(cur, name: str, props: DatabaseProperties) -> None:
    """The database's owner, privileges and settings, as recorded at backup time."""
    db = sql.Identifier(name)
    try:
        cur.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(db, sql.Identifier(props.owner)))
        if props.acl is not None:
            cur.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC, {}").format(db, sql.Identifier(props.owner)))
            for grantee, privilege, grantable in props.acl:
                if privilege not in _DB_PRIVILEGES:
                    raise RestoreError(f"the manifest grants {privilege!r} on the database: not a database privilege")
                cur.execute(
                    sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
                        sql.SQL(privilege), db,
                        sql.SQL("PUBLIC") if grantee == "PUBLIC" else sql.Identifier(grantee),
                        sql.SQL(" WITH GRANT OPTION") if grantable else sql.SQL(""),
                    )
                )
        for role, config in props.settings:
            for item in config:
                setting, _, value = item.partition("=")
                target = (sql.SQL("ROLE {} IN DATABASE {}").format(sql.Identifier(role), db) if role
                          else sql.SQL("DATABASE {}").format(db))
                cur.execute(sql.SQL("ALTER {} SET {} TO {}").format(target, sql.Identifier(setting), sql.Literal(value)))
    except psycopg2.Error as exc:
        raise RestoreError(f"restoring the privileges of database {name} failed: {first_line(exc)}") from exc


# -- --replace ---------------------------------------------------------------------------


@dataclass
class _Stopped:
    revoked: list[str]
    closed: bool  # ALLOW_CONNECTIONS false: the writers could connect some other way (PUBLIC)


def _stop_writers(admin, live: str) -> _Stopped:
    """Revoke the writers' CONNECT on the live database and end their sessions."""
    with admin.cursor() as cur:
        cur.execute(
            """SELECT DISTINCT r.rolname FROM pg_catalog.pg_database AS d,
                      pg_catalog.aclexplode(d.datacl) AS a
                 JOIN pg_catalog.pg_roles AS r ON r.oid = a.grantee
                WHERE d.datname = %s AND a.privilege_type = 'CONNECT' AND r.rolname = ANY(%s)""",
            (live, list(WRITERS)),
        )
        revoked = sorted(r[0] for r in cur.fetchall())
        for role in revoked:
            cur.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM {}").format(sql.Identifier(live), sql.Identifier(role)))
        cur.execute(
            """SELECT rolname FROM pg_catalog.pg_roles WHERE rolname = ANY(%s) AND pg_catalog.has_database_privilege(
                   oid, (SELECT oid FROM pg_catalog.pg_database WHERE datname = %s), 'CONNECT')""",
            (list(WRITERS), live),
        )
        closed = bool(cur.fetchall())
        if closed:
            cur.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(live)))
        cur.execute(
            "SELECT count(pg_catalog.pg_terminate_backend(pid)) FROM pg_catalog.pg_stat_activity"
            " WHERE datname = %s AND (usename = ANY(%s) OR %s) AND pid <> pg_catalog.pg_backend_pid()",
            (live, list(WRITERS), closed),
        )
        log.info("writers stopped on %s: CONNECT revoked from %s, %d sessions ended%s", live,
                 ", ".join(revoked) or "nobody", cur.fetchone()[0], ", connections closed" if closed else "")
    return _Stopped(revoked, closed)


def _resume_writers(admin, live: str, stopped: _Stopped) -> None:
    try:
        with admin.cursor() as cur:
            for role in stopped.revoked:
                cur.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(live), sql.Identifier(role)))
            cur.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(sql.Identifier(live)))
        log.info("the restore failed: %s is unchanged and open to its writers again", live)
    except psycopg2.Error as exc:
        log.error("could not give the writers of %s their CONNECT back: %s; GRANT it by hand",
                  live, first_line(exc))


def _swap(admin, live: str, restored: str, previous: str) -> None:
    """In one transaction: live -> previous, restored -> live."""
    ident = sql.Identifier
    with admin.cursor() as cur:
        cur.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(ident(live)))
    for attempt in range(1, 6):
        with admin.cursor() as cur:
            cur.execute(
                "SELECT count(pg_catalog.pg_terminate_backend(pid)) FROM pg_catalog.pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_catalog.pg_backend_pid()",
                (live,),
            )
        admin.autocommit = False
        try:
            with admin.cursor() as cur:
                cur.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(ident(live), ident(previous)))
                cur.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(ident(restored), ident(live)))
            admin.commit()
            break
        except psycopg2.errors.ObjectInUse as exc:
            admin.rollback()
            if attempt == 5:
                raise RestoreError(f"could not swap in the restored database: {first_line(exc)}") from exc
            time.sleep(0.5 * attempt)
        except psycopg2.Error as exc:
            admin.rollback()
            raise RestoreError(f"could not swap in the restored database: {first_line(exc)}") from exc
        finally:
            admin.autocommit = True


def _reopen(admin, previous: str) -> None:
    """The old contents stay readable for the admin; the writers' CONNECT stays revoked there."""
    try:
        with admin.cursor() as cur:
            cur.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(sql.Identifier(previous)))
    except psycopg2.Error as exc:
        log.error("could not reopen %s for inspection: %s", previous, first_line(exc))
