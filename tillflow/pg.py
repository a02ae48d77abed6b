"""PostgreSQL through psycopg2, its errors translated here and nowhere else.

Every package that talks to PostgreSQL connects through :func:`connect` and
wraps its statements in :func:`translated`, the way httpx maps its transport's
exceptions onto its own hierarchy in one context manager: a psycopg2 error
never leaves a package, and its message always says what Tillflow was doing,
where, and what the server answered (``tillflow.errors.first_line``), with the
psycopg2 error kept as the cause.

The mapping, for a package's own error class ``error`` (``SinkError``,
``BackupError``, ``MigrationError``, ...):

================================  ==========================================
psycopg2                          raised as
================================  ==========================================
``OperationalError``,             ``unavailable`` (default ``error``): the
``InterfaceError``                server is down, restarting, or the
                                  connection broke; callers may retry
``InsufficientPrivilege``         ``error``, with the hint ``denied`` when
                                  given (which role to use instead)
``UndefinedTable``,               ``error``, with the hint ``missing`` when
``UndefinedFunction``,            given (usually: run ``tillflow migrate``)
``InvalidSchemaName``
any other ``psycopg2.Error``      ``error``
================================  ==========================================

What a caller must tell apart by SQLSTATE for its own logic (the sink's unique
violation, the migration's lost catalog race) it catches inside the block,
before the translation sees it.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import psycopg2
import psycopg2.errors
from psycopg2.extensions import connection as Connection
from psycopg2.extensions import parse_dsn

from tillflow.errors import SinkError, TillflowError, first_line

_MISSING = (psycopg2.errors.UndefinedTable, psycopg2.errors.UndefinedFunction, psycopg2.errors.InvalidSchemaName)
UNAVAILABLE = (psycopg2.OperationalError, psycopg2.InterfaceError)


def where(url: str) -> str:
    """``host:port/dbname as user`` of a connection string, never its password."""
    try:
        dsn = parse_dsn(url)
    except psycopg2.Error:
        return "an unparsable database URL"
    place = f"{dsn.get('host', 'localhost')}:{dsn.get('port', '5432')}/{dsn.get('dbname', '')}"
    return f"{place} as {dsn['user']}" if dsn.get("user") else place


@contextlib.contextmanager
def translated(error: type[TillflowError], doing: str | Callable[[], str], *, denied: str | None = None,
               missing: str | None = None, unavailable: type[TillflowError] | None = None,
               detail: bool = False) -> Iterator[None]:
    """Raise psycopg2's errors inside the block as ``error``: "<doing>: <what the server said>[: <hint>]".

    ``doing`` may be a callable, read when an error happens, for a block of
    several steps; ``denied`` and ``missing`` are the hints added for a role
    without the privilege and for a schema object that does not exist.
    """
    try:
        yield
    except psycopg2.Error as exc:
        what = doing() if callable(doing) else doing
        said = first_line(exc, detail=detail)
        if isinstance(exc, psycopg2.errors.InsufficientPrivilege) and denied:
            raise error(f"{what}: {said}: {denied}") from exc
        if isinstance(exc, _MISSING) and missing:
            raise error(f"{what}: {said}: {missing}") from exc
        if isinstance(exc, UNAVAILABLE):
            raise (unavailable or error)(f"{what}: PostgreSQL is unreachable ({said})") from exc
        raise error(f"{what}: {said}") from exc


def connect(url: str, application: str, *, error: type[TillflowError] = SinkError, purpose: str = "",
            timeout: float | None = 10, autocommit: bool = False, **options: object) -> Connection:
    """A connection, or ``error``: "cannot connect to PostgreSQL at host:port/db as user<purpose>: why"."""
    extra = {"connect_timeout": int(timeout)} if timeout else {}
    try:
        conn = psycopg2.connect(url, application_name=application, **extra, **options)
    except psycopg2.Error as exc:
        reason = first_line(exc, detail=True)
        raise error(f"cannot connect to PostgreSQL at {where(url)}{' ' + purpose if purpose else ''}: {reason}") \
            from exc
    conn.autocommit = autocommit
    return conn
