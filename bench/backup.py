"""The backup benchmark (``make bench``): backup and restore of N rows next to a bare
``pg_dump``/``pg_restore`` of the same database in the same run, and the dump's size.

``python -m bench.backup [--rows N] [--repeat K] [--jobs J]`` (default 1,000,000
rows, 2 rounds, 2 restore jobs) starts its own PostgreSQL in a temporary
directory (fsync on, as in production), migrates a database, COPYs N generated
rows (``devstack.datagen``) into ``sales.transactions``, runs VACUUM ANALYZE,
then times, in K rounds, each case after a CHECKPOINT, and keeps the best:

``pg_dump``      bare ``pg_dump -Fc -f FILE`` as tillflow_backup: the ceiling of
                 ``backup run``, which runs this same pg_dump
``backup_run``   ``tillflow backup run`` as a child process, start to exit: snapshot,
                 count and checksum, pg_dump, pg_dumpall, fsync, sha256,
                 ``pg_restore --list``, manifest, retention
``pg_restore``   bare ``CREATE DATABASE`` then ``pg_restore --jobs=J`` as the
                 superuser (owners kept): the ceiling of ``restore``
``restore``      ``tillflow backup restore NAME --target DB``: roles, database,
                 ``pg_restore --jobs=J``, privileges, checksum compared, ANALYZE
``verify_full``  ``tillflow backup verify --full NAME`` as tillflow_backup: sha256,
                 ``--list``, restore into a scratch database, checksum, drop

Prints a table and writes ``bench/results/backup.json``, with the sizes (dump,
globals, database on disk) and the peak RSS of the ``tillflow backup run``
process (VmHWM, see bench._rss). Compare ratios within one run: the machine is
shared.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg2

from backup.store import Store
from backup.tools import find_bindir
from devstack import datagen
from devstack.postgres import NativePostgres
from devstack.proc import free_port

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "backup.json"
ROLES = ("owner", "writer", "reader", "backup", "monitor")
DBNAME = "tillflow"
COLUMNS = "id, transaction_date, category, name, quantity, amount_excl_tax, amount_inc_tax"
CASES = ("pg_dump", "backup_run", "pg_restore", "restore", "verify_full")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Bench:
    def __init__(self, root: Path, rows: int, jobs: int) -> None:
        self.root, self.rows, self.jobs = root, rows, jobs
        self.passwords = {role: secrets.token_hex(12) for role in ROLES}
        self.pg = NativePostgres(root / "postgres", free_port(), secrets.token_hex(16), attached=True, durable=True)
        self.bindir = find_bindir()
        self.backups = root / "backups"
        self.work = root / "work"
        self.work.mkdir()

    def url(self, role: str = "postgres", dbname: str = DBNAME) -> str:
        if role == "postgres":
            return self.pg.url(dbname=dbname)
        return self.pg.url(f"tillflow_{role}", self.passwords[role], dbname)

    def sql(self, statement: str, dbname: str = DBNAME):
        conn = psycopg2.connect(self.url(dbname=dbname))
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
                return cur.fetchone() if cur.description else None
        finally:
            conn.close()

    def start(self) -> None:
        from tillflow.migrate import apply_migrations

        log("starting PostgreSQL (fsync on)")
        self.pg.start()
        self.sql(f"CREATE DATABASE {DBNAME}", dbname="postgres")
        apply_migrations(self.url(), role_passwords={k: v for k, v in self.passwords.items() if k != "monitor"})

    def load(self) -> None:
        log(f"loading {self.rows:,} generated rows")
        conn = psycopg2.connect(self.url())
        try:
            with conn.cursor() as cur:
                chunk = 100_000
                generated = datagen.rows(self.rows, seed=20260105)
                for start in range(0, self.rows, chunk):
                    buffer = io.StringIO()
                    for r in (next(generated) for _ in range(min(chunk, self.rows - start))):
                        buffer.write(f"{r.id}\t{r.transaction_date}\t{r.category}\t{r.name}\t{r.quantity}\t"
                                     f"{r.amount_excl_tax}\t{r.amount_inc_tax}\n")
                    buffer.seek(0)
                    cur.copy_expert(f"COPY sales.transactions ({COLUMNS}) FROM STDIN", buffer)
            conn.commit()
        finally:
            conn.close()
        self.sql("VACUUM ANALYZE")

    def env(self, role: str) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "BACKUP_", "PG", "METRICS_"))}
        return {**keep, "DATABASE_URL": self.url(role), "BACKUP_DIR": str(self.backups), "TILLFLOW_ENV": "test",
                "BACKUP_RESTORE_JOBS": str(self.jobs), "PG_BINDIR": str(self.bindir)}

    def timed(self, argv: list[str], env: dict[str, str], what: str) -> float:
        self.sql("CHECKPOINT")
        started = time.monotonic()
        done = subprocess.run(argv, env=env, capture_output=True, text=True)
        seconds = time.monotonic() - started
        if done.returncode != 0:
            raise RuntimeError(f"{what} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        return seconds

    def tillflow(self, args: list[str], role: str, rss_path: Path | None = None) -> float:
        prefix = [sys.executable, "-m", "bench._rss", str(rss_path), "-m"] if rss_path else [sys.executable, "-m"]
        return self.timed([*prefix, "tillflow", *args], self.env(role), f"tillflow {' '.join(args)}")

    def drop(self, name: str) -> None:
        self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', dbname="postgres")

    # -- the cases --------------------------------------------------------------------
    def round(self, index: int) -> dict[str, float]:
        times: dict[str, float] = {}
        bare = self.work / "bare.dump"
        pgpass = {**self.env("backup"), "PGPASSWORD": self.passwords["backup"]}
        conninfo = f"host={self.pg.host} port={self.pg.port} user=tillflow_backup dbname={DBNAME}"
        log(f"round {index}: pg_dump")
        times["pg_dump"] = self.timed([str(self.bindir / "pg_dump"), "--format=custom", f"--file={bare}",
                                       f"--dbname={conninfo}"], pgpass, "pg_dump")
        log(f"round {index}: tillflow backup run")
        times["backup_run"] = self.tillflow(["backup", "run"], "backup", self.work / f"run-{index}.rss")
        name = Store(self.backups).backups()[0].name

        log(f"round {index}: pg_restore")
        target = f"bare_{index}"
        superuser = {**self.env("postgres"), "PGPASSWORD": self.pg.password}
        self.sql("CHECKPOINT")
        started = time.monotonic()
        self.sql(f"CREATE DATABASE {target} TEMPLATE template0", dbname="postgres")
        done = subprocess.run(
            [str(self.bindir / "pg_restore"), "--exit-on-error", f"--jobs={self.jobs}",
             f"--dbname=host={self.pg.host} port={self.pg.port} user=postgres dbname={target}", str(bare)],
            env=superuser, capture_output=True, text=True,
        )
        times["pg_restore"] = time.monotonic() - started
        if done.returncode != 0:
            raise RuntimeError(f"pg_restore failed: {done.stderr.strip()[-2000:]}")
        self.drop(target)

        log(f"round {index}: tillflow backup restore")
        target = f"restored_{index}"
        times["restore"] = self.tillflow(["backup", "restore", name, "--target", target], "postgres")
        self.drop(target)

        log(f"round {index}: tillflow backup verify --full")
        times["verify_full"] = self.tillflow(["backup", "verify", "--full", name], "backup")
        return times

    def sizes(self) -> dict[str, int]:
        newest = Store(self.backups).backups()[0].manifest
        return {
            "dump_bytes": newest.dump.size_bytes,
            "bare_dump_bytes": (self.work / "bare.dump").stat().st_size,
            "globals_bytes": newest.globals.size_bytes,
            "database_bytes": self.sql("SELECT pg_database_size(current_database())")[0],
            "table_bytes": self.sql("SELECT pg_total_relation_size('sales.transactions')")[0],
        }


def machine_info(bench: Bench) -> dict:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "postgresql": bench.sql("SHOW server_version")[0],
        "load_average": os.getloadavg(),
    }


def render(report: dict) -> str:
    cases, rows = report["cases"], report["rows"]
    lines = [f"backup benchmark: {rows:,} rows, best of {report['repeat']}, restore jobs {report['jobs']}", "",
             f"{'case':<14}{'seconds':>9}{'rows/s':>12}  vs ceiling"]
    ceiling = {"backup_run": "pg_dump", "restore": "pg_restore", "verify_full": "pg_restore"}
    for name in CASES:
        seconds = cases[name]["seconds"]
        versus = ceiling.get(name)
        ratio = f"{seconds / cases[versus]['seconds']:.2f}x {versus}" if versus else "(ceiling)"
        lines.append(f"{name:<14}{seconds:>9.2f}{rows / seconds:>12,.0f}  {ratio}")
    s = report["sizes"]
    lines += ["", f"dump {s['dump_bytes'] / 1e6:.1f} MB (bare pg_dump {s['bare_dump_bytes'] / 1e6:.1f} MB), "
              f"globals {s['globals_bytes']} B, database {s['database_bytes'] / 1e6:.1f} MB "
              f"(sales.transactions {s['table_bytes'] / 1e6:.1f} MB)",
              f"peak RSS of `tillflow backup run`: {report['backup_run_peak_rss_mb']} MB"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.backup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows to generate (default 1,000,000)")
    parser.add_argument("--repeat", type=int, default=2, help="rounds; the best time of each case is kept (default 2)")
    parser.add_argument("--jobs", type=int, default=2, help="pg_restore --jobs for both restores (default 2)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file (default bench/results/backup.json)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if args.rows < 1 or args.repeat < 1 or args.jobs < 1:
        parser.error("--rows, --repeat and --jobs must be at least 1")
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    root = Path(tempfile.mkdtemp(prefix="tillflow-bench-backup-"))
    root.chmod(0o755)  # the postgres user must be able to enter it
    bench = Bench(root, args.rows, args.jobs)
    try:
        bench.start()
        bench.load()
        rounds = [bench.round(i) for i in range(1, args.repeat + 1)]
        rss = [json.loads((bench.work / f"run-{i}.rss").read_text()).get("vm_hwm_kb") for i in range(1, args.repeat + 1)]
        report = {
            "rows": args.rows,
            "repeat": args.repeat,
            "jobs": args.jobs,
            "machine": machine_info(bench),
            "cases": {name: {"seconds": round(min(r[name] for r in rounds), 3),
                             "runs": [round(r[name], 3) for r in rounds]} for name in CASES},
            "sizes": bench.sizes(),
            "backup_run_peak_rss_mb": round(max(v for v in rss if v) / 1024, 1) if any(rss) else None,
        }
        report["ratios"] = {
            "backup_run_vs_pg_dump": round(report["cases"]["backup_run"]["seconds"] / report["cases"]["pg_dump"]["seconds"], 3),
            "restore_vs_pg_restore": round(report["cases"]["restore"]["seconds"] / report["cases"]["pg_restore"]["seconds"], 3),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        partial = args.out.with_suffix(".json.tmp")
        partial.write_text(json.dumps(report, indent=2) + "\n")
        partial.replace(args.out)
        print(render(report))
        log(f"wrote {args.out}")
        return 0
    finally:
        with contextlib.suppress(Exception):
            bench.pg.stop()
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
