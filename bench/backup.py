"""The backup benchmark (``make bench-backup``): backup and restore of N rows next to a bare
``pg_dump``/``pg_restore`` of the same database in the same run, the dump's size, and the
recovery of a lost database (restore over it plus the Kafka replay) next to a bare ``pg_restore``.

``python -m bench.backup [--rows N] [--replay-rows R] [--repeat K] [--jobs J]``
(default 1,000,000 rows, 100,000 replay rows, 2 rounds, 2 restore jobs) starts
its own PostgreSQL in a temporary directory (fsync on, as in production),
migrates a database, COPYs N generated rows (``tillflow.sample``) into
``sales.transactions`` (the legacy history), runs VACUUM ANALYZE, then times,
in K rounds, each case after a CHECKPOINT, and keeps the best:

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

The recovery scenario (skipped with ``--replay-rows 0``) follows on the same
server. Three KRaft Kafka brokers start in the temporary directory (free ports,
warmed up as in bench.ingest) with the two topics (3 partitions each). R
generated rows of one day are written as a CSV file, published by ``tillflow
load`` and stored by the real consumer (bench._consume, the writer's consumer
group), which records its Kafka positions in ``ingest.kafka_positions``; then
``tillflow backup run`` (N + R rows, positions P1); then R more rows of the
next day through the same pipeline (positions P2, N + 2R rows). Each of K
rounds then times:

``pg_restore_backup``  the baseline: bare ``CREATE DATABASE`` + ``pg_restore
                       --jobs=J`` of that backup's .dump, as ``pg_restore`` above
``restore_replace``    after the loss (the live database dropped, a new one created
                       and migrated with the same role passwords, as ``docker
                       compose up`` does on an empty volume; not timed):
                       ``tillflow backup restore NAME --replace --yes`` as the
                       superuser with the Kafka settings, start to exit: the Kafka
                       check, roles, ``pg_restore --jobs=J``, checksum, ANALYZE,
                       the swap, the consumer group's offsets set back to P1
``replay``             right after it, no CHECKPOINT: the real consumer, from its
                       process start (group join included) until the batch holding
                       the last of the R records after the backup is committed
``recovery``           ``restore_replace`` + ``replay`` of the same round

Every round checks that the restore announced a replay of R records, that the
restored database holds N + R rows and positions P1, and that after the replay
``sales.transactions`` holds exactly N + 2R distinct rows and the positions are
P2; the run fails otherwise. Each round loses the database again before its
restore, so each replay stores the same R rows.

Prints a table and writes ``bench/results/backup.json``: the cases (best and
every run), the ratios (``backup run`` over ``pg_dump``, ``restore`` over
``pg_restore``, ``restore_replace`` and ``recovery`` over
``pg_restore_backup``, and the replay's rows per second), the sizes (dump,
globals, database on disk, before the recovery scenario), the peak RSS of the
``tillflow backup run`` process (VmHWM, see bench._rss) and the recovery's
row counts and positions. Compare ratios within one run: the machine is
shared. See bench/README.md.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
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
from bench.ingest import _LOAD_LINE
from bench.ingest import Stack as IngestStack
from tillflow import sample
from devstack.kafka import KAFKA_VERSION, KafkaCluster
from devstack.postgres import NativePostgres
from devstack.proc import free_port
from etl.topics import PARTITIONS

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "backup.json"
ROLES = ("owner", "writer", "reader", "backup", "monitor")
DBNAME = "tillflow"
COLUMNS = "id, transaction_date, category, name, quantity, amount_excl_tax, amount_inc_tax"
CASES = ("pg_dump", "backup_run", "pg_restore", "restore", "verify_full")
RECOVERY_CASES = ("pg_restore_backup", "restore_replace", "replay", "recovery")
TOPICS = ("bench.recovery.transactions", "bench.recovery.rejects")
GROUP = "bench-recovery-writer"
LIVE_DAYS = (datetime.date(2026, 2, 2), datetime.date(2026, 2, 3))  # after the history's 30 days from 1 Jan
SEED_BEFORE, SEED_AFTER = 20260202, 20260203  # the history's seed is 20260105: other ids
CONSUMER_IDLE = 120  # seconds: a consumer that got nothing for that long gives up (a safety net)
CONSUMER_TIMEOUT = 3600


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Brokers(IngestStack):
    """bench.ingest's three KRaft brokers on free ports, warmed up as there (``__consumer_offsets``
    and a producer id made before anything is timed), without its PostgreSQL: this benchmark has its own."""

    def start_kafka(self) -> None:
        self.kafka = KafkaCluster(self.root / "kafka", [free_port() for _ in range(3)],
                                  [free_port() for _ in range(3)], attached=True)
        self.kafka.start()
        self.warm_up_kafka()


class Bench:
    def __init__(self, root: Path, rows: int, jobs: int, replay_rows: int = 0) -> None:
        self.root, self.rows, self.jobs, self.replay_rows = root, rows, jobs, replay_rows
        self.brokers: Brokers | None = None
        self.child: subprocess.Popen | None = None
        self.p1: dict[tuple[str, int], int] = {}
        self.p2: dict[tuple[str, int], int] = {}
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
        apply_migrations(self.url(), role_passwords=self.role_passwords())

    def load(self) -> None:
        log(f"loading {self.rows:,} generated rows")
        conn = psycopg2.connect(self.url())
        try:
            with conn.cursor() as cur:
                chunk = 100_000
                generated = sample.rows(self.rows, seed=20260105)
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
        keep = {k: v for k, v in os.environ.items()
                if not k.startswith(("DATABASE_", "BACKUP_", "PG", "METRICS_", "KAFKA_", "CONSUMER_", "TILLFLOW_"))
                and k != "TAX_RATE"}
        return {**keep, "DATABASE_URL": self.url(role), "BACKUP_DIR": str(self.backups), "TILLFLOW_ENV": "test",
                "BACKUP_RESTORE_JOBS": str(self.jobs), "PG_BINDIR": str(self.bindir)}

    def timed(self, argv: list[str], env: dict[str, str], what: str) -> float:
        return self.run_timed(argv, env, what)[0]

    def run_timed(self, argv: list[str], env: dict[str, str], what: str,
                  checkpoint: bool = True) -> tuple[float, subprocess.CompletedProcess]:
        if checkpoint:
            self.sql("CHECKPOINT")
        started = time.monotonic()
        done = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=REPO)
        seconds = time.monotonic() - started
        if done.returncode != 0:
            raise RuntimeError(f"{what} failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-2000:]}")
        return seconds, done

    def tillflow(self, args: list[str], role: str, rss_path: Path | None = None) -> float:
        return self.run_tillflow(args, self.env(role), rss_path)[0]

    def run_tillflow(self, args: list[str], env: dict[str, str], rss_path: Path | None = None,
                     checkpoint: bool = True) -> tuple[float, subprocess.CompletedProcess]:
        prefix = [sys.executable, "-m", "bench._rss", str(rss_path), "-m"] if rss_path else [sys.executable, "-m"]
        return self.run_timed([*prefix, "tillflow", *args], env, f"tillflow {' '.join(args)}", checkpoint)

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
        times["pg_restore"] = self.bare_restore(bare, f"bare_{index}")

        log(f"round {index}: tillflow backup restore")
        target = f"restored_{index}"
        times["restore"] = self.tillflow(["backup", "restore", name, "--target", target], "postgres")
        self.drop(target)

        log(f"round {index}: tillflow backup verify --full")
        times["verify_full"] = self.tillflow(["backup", "verify", "--full", name], "backup")
        return times

    # -- the recovery scenario ------------------------------------------------------------
    def kafka_env(self, role: str) -> dict[str, str]:
        return {**self.env(role), "KAFKA_BOOTSTRAP_SERVERS": self.brokers.kafka.bootstrap_servers,
                "KAFKA_TOPIC_TRANSACTIONS": TOPICS[0], "KAFKA_TOPIC_REJECTS": TOPICS[1],
                "KAFKA_CONSUMER_GROUP": GROUP, "LOG_LEVEL": "INFO"}

    def start_kafka(self) -> None:
        log("starting 3 Kafka brokers")
        self.brokers = Brokers(self.root)
        self.brokers.start_kafka()
        self.brokers.create_topics(*TOPICS)

    def live(self, day: datetime.date, seed: int, what: str) -> None:
        """R rows of ``day`` through the real pipeline: a CSV, ``tillflow load``, the consumer."""
        csv_path = sample.write_csv(self.work / sample.csv_name(day),
                                     sample.rows(self.replay_rows, seed=seed, start=day, days=1))
        log(f"{what}: tillflow load of {self.replay_rows:,} rows ({csv_path.name})")
        _, done = self.run_tillflow(["load", str(csv_path)], self.kafka_env("writer"), checkpoint=False)
        match = _LOAD_LINE.search(done.stdout)
        if not match or int(match.group(2)) != self.replay_rows or int(match.group(3)) != 0:
            raise RuntimeError(f"tillflow load: expected {self.replay_rows} accepted and 0 rejected, got "
                               f"{done.stdout.strip()!r}")
        log(f"{what}: the consumer stores them")
        self.consume(f"live-{day:%m%d}")

    def consume(self, name: str) -> dict:
        """``bench._consume --target R`` in the writer's group: the real consumer until R records are stored.

        Returns its result with ``seconds``: from starting the process to the commit of the batch
        holding the last record (start-up and group join included)."""
        out, err = self.work / f"{name}.out", self.work / f"{name}.err"
        argv = [sys.executable, "-m", "bench._consume", "--target", str(self.replay_rows), "--idle", str(CONSUMER_IDLE)]
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            started = time.monotonic()
            self.child = subprocess.Popen(argv, env=self.kafka_env("writer"), stdout=stdout, stderr=stderr,
                                          stdin=subprocess.DEVNULL, cwd=REPO)
            try:
                status = self.child.wait(timeout=CONSUMER_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.child.kill()
                self.child.wait()
                raise RuntimeError(f"{name}: the consumer still ran after {CONSUMER_TIMEOUT}s (log {err})") from None
            finally:
                self.child = None
        lines = [ln for ln in out.read_text().splitlines() if ln.startswith("{")]
        result = json.loads(lines[-1]) if lines else {}
        if status != 0 or result.get("inserted") != self.replay_rows or result.get("duplicates") \
                or result.get("conflicts") or result.get("rejects"):
            tail = "\n".join(err.read_text(errors="replace").strip().splitlines()[-15:])
            raise RuntimeError(f"{name}: expected the consumer to store {self.replay_rows} new rows, got status "
                               f"{status}, {result or 'no result'} (log {err}):\n{tail}")
        result["seconds"] = result["t_done"] - started
        return result

    def positions(self) -> dict[tuple[str, int], int]:
        conn = psycopg2.connect(self.url())
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT topic, partition, next_offset FROM ingest.kafka_positions")
                return {(t, p): o for t, p, o in cur.fetchall()}
        finally:
            conn.close()

    def check_rows(self, expected: int, what: str) -> None:
        total, distinct = self.sql("SELECT count(*), count(DISTINCT id) FROM sales.transactions")
        if total != expected or distinct != expected:
            raise RuntimeError(f"{what}: sales.transactions holds {total} rows ({distinct} distinct ids), "
                               f"expected exactly {expected} distinct rows")

    def prepare_recovery(self) -> str:
        """The backup to recover from (N + R rows, positions P1), then R more rows (P2)."""
        n, r = self.rows, self.replay_rows
        self.start_kafka()
        self.live(LIVE_DAYS[0], SEED_BEFORE, "before the backup")
        self.check_rows(n + r, "before the backup")
        self.p1 = self.positions()
        log("tillflow backup run (the backup to recover from)")
        _, done = self.run_tillflow(["backup", "run"], self.env("backup"))
        name = done.stdout.split()[1].rstrip(":")
        manifest = Store(self.backups).find(name).manifest
        if manifest.transactions.rows != n + r or manifest.positions != self.p1:
            raise RuntimeError(f"backup {name} holds {manifest.transactions.rows} rows and positions "
                               f"{manifest.positions}, expected {n + r} and {self.p1}")
        self.live(LIVE_DAYS[1], SEED_AFTER, "after the backup")
        self.check_rows(n + 2 * r, "after the backup")
        self.p2 = self.positions()
        behind = sum(self.p2[k] - self.p1.get(k, 0) for k in self.p2)
        if behind != r:
            raise RuntimeError(f"the positions moved {behind} records past the backup's, expected {r}")
        return name

    def lose_database(self) -> None:
        """The disk is gone: the live database (and what earlier restores kept) dropped, then a new one
        made as `docker compose up` makes it on an empty volume: CREATE DATABASE + every migration."""
        from tillflow.migrate import apply_migrations

        conn = psycopg2.connect(self.url(dbname="postgres"))
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT datname FROM pg_database WHERE datname = %s OR datname LIKE %s",
                            (DBNAME, f"{DBNAME}\\_pre\\_restore\\_%"))
                doomed = [row[0] for row in cur.fetchall()]
        finally:
            conn.close()
        for name in doomed:
            self.drop(name)
        self.sql(f"CREATE DATABASE {DBNAME}", dbname="postgres")
        apply_migrations(self.url(), role_passwords=self.role_passwords())

    def role_passwords(self) -> dict[str, str]:
        return {k: v for k, v in self.passwords.items() if k != "monitor"}

    def recovery_round(self, index: int, name: str) -> dict[str, float]:
        n, r = self.rows, self.replay_rows
        times: dict[str, float] = {}
        backup = Store(self.backups).find(name)

        log(f"recovery round {index}: pg_restore of backup {name} (the baseline)")
        times["pg_restore_backup"] = self.bare_restore(backup.dump_path, f"bare_recovery_{index}")

        log(f"recovery round {index}: the live database is lost, a new one is migrated")
        self.lose_database()
        self.check_rows(0, "the new database")

        log(f"recovery round {index}: tillflow backup restore {name} --replace --yes")
        times["restore_replace"], done = self.run_tillflow(
            ["backup", "restore", name, "--replace", "--yes"], self.kafka_env("postgres"))
        if f"replay: consumer group {GROUP} reads on from the backup's positions, {r:,} records" not in done.stdout:
            raise RuntimeError(f"the restore did not set the group to replay {r:,} records:\n{done.stdout}")
        self.check_rows(n + r, "after the restore")
        if self.positions() != self.p1:
            raise RuntimeError(f"the restored positions are {self.positions()}, expected the backup's {self.p1}")

        log(f"recovery round {index}: the consumer replays the {r:,} records after the backup")
        replay = self.consume(f"replay-{index}")  # no CHECKPOINT: the replay follows the restore at once
        times["replay"] = replay["seconds"]
        times["replay_startup"] = replay["t_first_write"] - (replay["t_done"] - replay["seconds"])
        times["recovery"] = times["restore_replace"] + times["replay"]
        self.check_rows(n + 2 * r, f"recovery round {index}")
        if self.positions() != self.p2:
            raise RuntimeError(f"after the replay the positions are {self.positions()}, expected {self.p2}")
        return times

    def bare_restore(self, dump: Path, target: str) -> float:
        """CREATE DATABASE + bare ``pg_restore --jobs=J`` as the superuser (owners kept), timed."""
        superuser = {**self.env("postgres"), "PGPASSWORD": self.pg.password}
        self.sql("CHECKPOINT")
        started = time.monotonic()
        self.sql(f"CREATE DATABASE {target} TEMPLATE template0", dbname="postgres")
        done = subprocess.run(
            [str(self.bindir / "pg_restore"), "--exit-on-error", f"--jobs={self.jobs}",
             f"--dbname=host={self.pg.host} port={self.pg.port} user=postgres dbname={target}", str(dump)],
            env=superuser, capture_output=True, text=True,
        )
        seconds = time.monotonic() - started
        if done.returncode != 0:
            raise RuntimeError(f"pg_restore failed: {done.stderr.strip()[-2000:]}")
        self.drop(target)
        return seconds

    def stop(self) -> None:
        if self.child is not None and self.child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.child.kill()
            self.child.wait()
        if self.brokers is not None:
            with contextlib.suppress(Exception):
                self.brokers.stop()
        with contextlib.suppress(Exception):
            self.pg.stop()

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
    info = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "postgresql": bench.sql("SHOW server_version")[0],
        "load_average": os.getloadavg(),
    }
    if bench.replay_rows:
        info.update({"kafka": KAFKA_VERSION, "kafka_brokers": 3, "partitions": PARTITIONS})
    return info


def best(rounds: list[dict[str, float]], names) -> dict[str, dict]:
    return {name: {"seconds": round(min(r[name] for r in rounds), 3), "runs": [round(r[name], 3) for r in rounds]}
            for name in names}


def _ratio(cases: dict, over: str, under: str) -> float:
    return round(cases[over]["seconds"] / cases[under]["seconds"], 3)


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
    recovery = report.get("recovery")
    if recovery:
        n, r = recovery["history_rows"], recovery["replay_rows"]
        lines += ["", f"recovery of a lost database: backup of {n + r:,} rows ({n:,} history + {r:,} through the "
                  f"pipeline), {r:,} more stored after it; best of {report['repeat']}", "",
                  f"{'case':<19}{'seconds':>9}{'rows':>11}{'rows/s':>12}  vs ceiling"]
        counts = {"pg_restore_backup": n + r, "restore_replace": n + r, "replay": r, "recovery": n + 2 * r}
        for name in RECOVERY_CASES:
            seconds = cases[name]["seconds"]
            ratio = "(ceiling)" if name == "pg_restore_backup" else (
                "-" if name == "replay" else f"{seconds / cases['pg_restore_backup']['seconds']:.2f}x pg_restore_backup")
            lines.append(f"{name:<19}{seconds:>9.2f}{counts[name]:>11,}{counts[name] / seconds:>12,.0f}  {ratio}")
        ratios = report["ratios"]
        lines += ["", f"restore_replace / pg_restore_backup   {ratios['restore_replace_vs_pg_restore']:.3f}",
                  f"recovery (restore + replay) / pg_restore_backup   {ratios['recovery_vs_pg_restore']:.3f}",
                  f"replay rate   {ratios['replay_rows_per_second']:,} rows/s (consumer start-up and group join "
                  f"{cases['replay']['startup_seconds']:.1f}s of it)",
                  f"checked: {recovery['final_rows']:,} distinct rows in sales.transactions after each round"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.backup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="history rows, COPYed (default 1,000,000)")
    parser.add_argument("--replay-rows", type=int, default=100_000,
                        help="rows through the pipeline before the backup, and as many after it, replayed in the "
                             "recovery scenario (default 100,000; 0 leaves the scenario and Kafka out)")
    parser.add_argument("--repeat", type=int, default=2, help="rounds; the best time of each case is kept (default 2)")
    parser.add_argument("--jobs", type=int, default=2, help="pg_restore --jobs for every restore (default 2)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file (default bench/results/backup.json)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if args.rows < 1 or args.repeat < 1 or args.jobs < 1 or args.replay_rows < 0:
        parser.error("--rows, --repeat and --jobs must be at least 1, --replay-rows at least 0")
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    root = Path(tempfile.mkdtemp(prefix="tillflow-bench-backup-"))
    root.chmod(0o755)  # the postgres user must be able to enter it
    bench = Bench(root, args.rows, args.jobs, args.replay_rows)
    try:
        bench.start()
        bench.load()
        rounds = [bench.round(i) for i in range(1, args.repeat + 1)]
        rss = [json.loads((bench.work / f"run-{i}.rss").read_text()).get("vm_hwm_kb") for i in range(1, args.repeat + 1)]
        report = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "rows": args.rows,
            "repeat": args.repeat,
            "jobs": args.jobs,
            "machine": machine_info(bench),
            "cases": best(rounds, CASES),
            "sizes": bench.sizes(),
            "backup_run_peak_rss_mb": round(max(v for v in rss if v) / 1024, 1) if any(rss) else None,
        }
        cases = report["cases"]
        report["ratios"] = {
            "backup_run_vs_pg_dump": _ratio(cases, "backup_run", "pg_dump"),
            "restore_vs_pg_restore": _ratio(cases, "restore", "pg_restore"),
        }
        if args.replay_rows:
            n, r = args.rows, args.replay_rows
            name = bench.prepare_recovery()
            recovered = [bench.recovery_round(i, name) for i in range(1, args.repeat + 1)]
            cases.update(best(recovered, RECOVERY_CASES))
            fastest = min(recovered, key=lambda t: t["replay"])
            cases["replay"].update(rows_per_second=round(r / cases["replay"]["seconds"]),
                                   startup_seconds=round(fastest["replay_startup"], 3))
            report["ratios"].update({
                "restore_replace_vs_pg_restore": _ratio(cases, "restore_replace", "pg_restore_backup"),
                "recovery_vs_pg_restore": _ratio(cases, "recovery", "pg_restore_backup"),
                "replay_rows_per_second": round(r / cases["replay"]["seconds"]),
            })
            report["recovery"] = {
                "backup": name, "history_rows": n, "replay_rows": r, "backup_rows": n + r, "final_rows": n + 2 * r,
                "topics": list(TOPICS), "partitions": PARTITIONS,
                "positions_at_backup": sorted([t, p, o] for (t, p), o in bench.p1.items()),
                "positions_after": sorted([t, p, o] for (t, p), o in bench.p2.items()),
            }
        report["machine"]["load_average_at_end"] = os.getloadavg()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        partial = args.out.with_suffix(".json.tmp")
        partial.write_text(json.dumps(report, indent=2) + "\n")
        partial.replace(args.out)
        print(render(report))
        log(f"wrote {args.out}")
        return 0
    finally:
        bench.stop()
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
