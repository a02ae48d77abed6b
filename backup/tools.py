"""The PostgreSQL client programs (pg_dump, pg_dumpall, pg_restore, psql), run as children.

A password never travels in argv, which every user of the host can read in
``ps``: the libpq URL is split into a conninfo string without it and
``PGPASSWORD`` in the child's environment. That environment is built here, not
inherited, so a stray ``PGHOST`` or ``PGOPTIONS`` of the caller cannot redirect
a dump. Every failure becomes a ``BackupError`` naming the program, its exit
status and the first error line it printed; SIGTERM (``stop``) terminates the
child and raises ``Cancelled``.
"""
from __future__ import annotations

import glob
import shutil
import signal
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
from psycopg2.extensions import make_dsn, parse_dsn

from backup.errors import BackupError, Cancelled
from tillflow import pg
from tillflow.errors import TillflowError

PROGRAMS = ("pg_dump", "pg_dumpall", "pg_restore", "psql")
_POLL_SECONDS = 0.5


def find_bindir(configured: Path | None = None) -> Path:
    """Where the client programs are: ``PG_BINDIR``, else the newest Debian
    ``/usr/lib/postgresql/*/bin``, else the directory of ``pg_dump`` on PATH."""
    if configured is not None:
        missing = [p for p in PROGRAMS if not (configured / p).is_file()]
        if missing:
            raise BackupError(f"PG_BINDIR={configured} holds no {', '.join(missing)}")
        return configured
    # Debian's /usr/bin/pg_dump is a wrapper choosing a version; prefer the real thing.
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
    for candidate in map(Path, debian):
        if all((candidate / p).is_file() for p in PROGRAMS):
            return candidate
    found = shutil.which("pg_dump")
    if found:
        return Path(found).resolve().parent
    raise BackupError(
        "pg_dump not found: install the PostgreSQL client (postgresql-client-15) or set PG_BINDIR"
    )


@dataclass(frozen=True)
class Server:
    """One PostgreSQL server and role, from a libpq URL; ``dbname`` is the URL's database."""

    params: dict[str, str] = field(hash=False)
    password: str | None = None

    @classmethod
    def from_url(cls, url: str) -> Server:
        try:
            params = parse_dsn(url)
        except psycopg2.ProgrammingError as exc:
            raise BackupError(f"DATABASE_URL is not a libpq URL: {exc}") from exc
        password = params.pop("password", None)
        params.setdefault("connect_timeout", "10")
        return cls(params, password)

    @property
    def dbname(self) -> str:
        return self.params.get("dbname") or self.params.get("user") or "postgres"

    @property
    def user(self) -> str:
        return self.params.get("user", "")

    def conninfo(self, dbname: str | None = None, *, application: str = "tillflow-backup") -> str:
        """A conninfo string without the password (safe in argv and in messages)."""
        return make_dsn(**{**self.params, "dbname": dbname or self.dbname, "application_name": application})

    def connect(self, dbname: str | None = None, *, application: str = "tillflow-backup", purpose: str = "",
                error: type[TillflowError] = BackupError):
        """A psycopg2 connection to ``dbname`` (default: the URL's), or ``error`` saying where and why not."""
        extra = {"password": self.password} if self.password else {}
        return pg.connect(self.conninfo(dbname, application=application), application, error=error,
                          purpose=purpose, timeout=None, **extra)

    def where(self, dbname: str | None = None) -> str:
        """host:port/dbname as user, for messages."""
        return pg.where(self.conninfo(dbname))

    def child_env(self) -> dict[str, str]:
        env = {"LC_ALL": "C.UTF-8", "PGCLIENTENCODING": "UTF8"}
        if self.password:
            env["PGPASSWORD"] = self.password
        return env


@dataclass(frozen=True)
class Tools:
    """The client programs of one bindir, run against one server."""

    bindir: Path
    stop: threading.Event = field(default_factory=threading.Event, compare=False)

    def path(self, program: str) -> str:
        return str(self.bindir / program)

    def version(self, program: str = "pg_dump") -> str:
        done = subprocess.run([self.path(program), "--version"], capture_output=True, text=True, check=False,
                              env={"LC_ALL": "C.UTF-8"})
        return done.stdout.strip() or f"{program} (unknown version)"

    def run(
        self,
        program: str,
        args: Sequence[str],
        *,
        what: str,
        server: Server | None = None,
        input_text: str | None = None,
        capture: bool = False,
        pass_fds: Sequence[int] = (),
    ) -> str:
        """Run ``program args``; return its stdout when ``capture``, else ""."""
        if self.stop.is_set():
            raise Cancelled(f"{what}: stopped before it started")
        try:
            proc = subprocess.Popen(
                [self.path(program), *args],
                stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=server.child_env() if server else {"LC_ALL": "C.UTF-8"},
                text=True,
                pass_fds=tuple(pass_fds),
            )
        except OSError as exc:
            raise BackupError(f"{what}: cannot start {self.path(program)}: {exc.strerror}") from exc
        pending = input_text
        while True:
            try:
                out, err = proc.communicate(pending, timeout=_POLL_SECONDS)
                break
            except subprocess.TimeoutExpired:
                pending = None  # sent once; a retry must not send it again
                if self.stop.is_set():
                    proc.terminate()
                    try:
                        proc.communicate(timeout=10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.communicate()
                    raise Cancelled(f"{what}: stopped (SIGTERM) while {program} ran") from None
        if proc.returncode != 0:
            raise BackupError(f"{what} failed: {program} {_status(proc.returncode)}: {first_error(err)}")
        return out or ""


def _status(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def first_error(stderr: str | None) -> str:
    """The line of a client program's stderr that says what went wrong."""
    lines = [line.strip() for line in (stderr or "").splitlines() if line.strip()]
    for marker in ("error:", "FATAL:", "ERROR:"):
        for line in lines:
            if marker in line:
                return line
    return lines[-1] if lines else "no message"
