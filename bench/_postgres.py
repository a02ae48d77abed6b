"""What the benchmarks share: a native PostgreSQL of their own, and the machine they ran on.

``PostgresStack`` runs one durable PostgreSQL (fsync on, as in production; as
the ``postgres`` user when started by root, see devstack.postgres) under a
temporary directory, with a ``tillflow`` database and passwords for the
Tillflow roles. ``bench.ingest`` adds three Kafka brokers to it; ``bench.queries``
and ``bench.partitioning`` use it alone.
"""
from __future__ import annotations

import contextlib
import os
import platform
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psycopg2

from devstack.postgres import NativePostgres
from devstack.proc import free_port

REPO = Path(__file__).resolve().parent.parent
ROLES = ("owner", "writer", "reader", "backup")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class PostgresStack:
    """A durable PostgreSQL under ``root`` with an empty ``tillflow`` database (``migrate`` fills it)."""

    dbname = "tillflow"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.postgres: NativePostgres | None = None
        self.passwords = {role: secrets.token_hex(12) for role in ROLES}

    def start_postgres(self) -> None:
        self.postgres = NativePostgres(self.root / "postgres", free_port(), secrets.token_hex(16),
                                       attached=True, durable=True)
        self.postgres.start()
        with self.admin("postgres") as cur:
            cur.execute(f"CREATE DATABASE {self.dbname}")

    def migrate(self, up_to: int | None = None) -> list[str]:
        """``tillflow.migrate.apply_migrations`` as ``tillflow migrate`` runs it (the superuser);
        ``up_to`` stops after that version (an older release's schema)."""
        from tillflow.migrate import apply_migrations

        more = {} if up_to is None else {"up_to": up_to}
        return apply_migrations(self.url("postgres"), role_passwords=self.passwords, **more)

    def url(self, role: str = "postgres") -> str:
        if role == "postgres":
            return self.postgres.url(dbname=self.dbname)
        return self.postgres.url(f"tillflow_{role}", self.passwords[role], self.dbname)

    @contextlib.contextmanager
    def admin(self, dbname: str | None = None):
        conn = psycopg2.connect(self.postgres.url(dbname=dbname or self.dbname))
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                yield cur
        finally:
            conn.close()

    def scalar(self, query: str):
        with self.admin() as cur:
            cur.execute(query)
            return cur.fetchone()[0]

    def checkpoint(self) -> None:
        with self.admin() as cur:
            cur.execute("CHECKPOINT")

    def stop(self) -> None:
        if self.postgres is not None:
            with contextlib.suppress(Exception):
                self.postgres.stop()

    def tear_down(self, keep: bool) -> None:
        """Stop the services; remove their directory unless ``keep`` (``--keep``: data and logs stay)."""
        log("stopping the stack")
        self.stop()
        if keep:
            log(f"kept {self.root}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)


def machine_info(scalar) -> dict:
    """Cores, CPU, memory, load, versions and the git commit; ``scalar(sql)`` asks the benchmark's PostgreSQL."""

    def mem_total_mb() -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
        return None

    def cpu_model() -> str | None:
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
        return None

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return {
        "cores": os.cpu_count(),
        "cpu": cpu_model(),
        "memory_mb": mem_total_mb(),
        "load_average_at_start": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "postgresql": scalar("SHOW server_version"),
        "postgresql_fsync": scalar("SHOW fsync"),
        "postgresql_synchronous_commit": scalar("SHOW synchronous_commit"),
        "psycopg2": psycopg2.__version__.split()[0],
        "git_commit": commit.stdout.strip() or None,
    }
