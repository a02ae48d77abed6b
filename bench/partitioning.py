"""Declarative partitioning of sales.transactions by month, measured (``make bench-partitioning``).

``python -m bench.partitioning [--rows N]`` (default 10,000,000) builds the query
benchmark's data set (bench.queries: migrations up to 0008, the generated rows,
then 0009) in its own PostgreSQL, then a partitioned twin in the same database:

``bench.transactions_part``  ``LIKE sales.transactions`` (its checks and defaults),
                             ``PARTITION BY RANGE (transaction_date)``, one partition
                             per month; the same four indexes, the primary key
                             ``(id, transaction_date)`` (PostgreSQL requires the
                             partition key in it) and the same rollup trigger;
``bench.transaction_ids``    ``id PRIMARY KEY``: what keeps one row per id across
                             partitions, written by a statement trigger on the
                             twin (``ids`` in the cases below).

and measures what users would feel, in one run:

- ingest: one ``COPY`` of a 1M-row batch (the consumer's columns, dates in the last
  month, new ids) into the plain table, the partitioned twin, and the twin with the
  id table; each in a transaction rolled back after, each after a CHECKPOINT, the
  best of ``--rounds`` (2);
- the consumer's duplicate check: 10,000 stored ids looked up (``id = ANY``) in
  each; and the only dashboard query that still reads sales.transactions (the
  pipeline's freshness: max(ingested_at), max(transaction_date)); every other
  panel reads the rollups, which partitioning does not touch;
- ``pg_dump -Fc`` of the table (plain) and of the twin with its partitions;
- removing the oldest month: ``DELETE`` then ``VACUUM`` on the plain table, against
  ``DETACH PARTITION`` and ``DROP TABLE`` (and, with the id table, deleting that
  month's ids from it);
- sizes (before the batches).

Prints a table and writes ``bench/results/partitioning.json``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg2

from bench import queries
from bench._postgres import REPO, PostgresStack, log, machine_info
from consumer.sink import _COLUMNS as SINK_COLUMNS  # the columns the consumer COPYs, in its order

RESULTS = REPO / "bench" / "results" / "partitioning.json"
BATCH_ROWS = 1_000_000
LOOKUP_IDS = 10_000


def months(first: datetime.date, last: datetime.date) -> list[datetime.date]:
    """First days of the months from ``first``'s to ``last``'s, and one month beyond."""
    found, month = [], first.replace(day=1)
    while month <= last.replace(day=1) + datetime.timedelta(days=32):
        found.append(month)
        month = (month + datetime.timedelta(days=32)).replace(day=1)
    return found


def build_twin(stack: PostgresStack, data: queries.Data) -> dict:
    timings = {}
    with stack.admin() as cur:
        cur.execute("SET maintenance_work_mem = '1GB'")
        cur.execute("CREATE SCHEMA bench")
        cur.execute("CREATE TABLE bench.transactions_part (LIKE sales.transactions INCLUDING DEFAULTS"
                    " INCLUDING CONSTRAINTS) PARTITION BY RANGE (transaction_date)")
        bounds = months(data.first_day, data.last_day)
        for start, end in zip(bounds, bounds[1:]):
            cur.execute(f"CREATE TABLE bench.transactions_p{start:%Y_%m} PARTITION OF bench.transactions_part"
                        f" FOR VALUES FROM ('{start}') TO ('{end}')")
        started = time.monotonic()
        cur.execute("INSERT INTO bench.transactions_part SELECT * FROM sales.transactions")
        timings["copy_rows_seconds"] = time.monotonic() - started
        started = time.monotonic()
        cur.execute("ALTER TABLE bench.transactions_part ADD PRIMARY KEY (id, transaction_date)")
        cur.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'sales'"
                    " AND tablename = 'transactions' AND indexname <> 'transactions_pkey'")
        for name, definition in cur.fetchall():
            cur.execute(definition.replace(f"INDEX {name} ON sales.transactions", f"INDEX part_{name} ON "
                                           "bench.transactions_part").replace(" ONLY ", " "))
        timings["indexes_seconds"] = time.monotonic() - started
        started = time.monotonic()
        cur.execute("CREATE TABLE bench.transaction_ids (id uuid PRIMARY KEY)")
        cur.execute("INSERT INTO bench.transaction_ids SELECT id FROM sales.transactions")
        timings["id_table_seconds"] = time.monotonic() - started
        cur.execute("CREATE TRIGGER part_roll_up AFTER INSERT ON bench.transactions_part"
                    " REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION sales.roll_up_inserted()")
        cur.execute("""
            CREATE FUNCTION bench.record_ids() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO bench.transaction_ids SELECT id FROM inserted;
                RETURN NULL;
            END $$""")
        cur.execute("CREATE TRIGGER part_ids AFTER INSERT ON bench.transactions_part"
                    " REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION bench.record_ids()")
        cur.execute("VACUUM ANALYZE")
    timings["partitions"] = len(bounds) - 1
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in timings.items()}


def batch_file(stack: PostgresStack, data: queries.Data, path: Path) -> None:
    """1M new rows dated in the last 30 days, as the consumer's COPY text."""
    columns = ", ".join(SINK_COLUMNS)
    source = (f"SELECT {columns} FROM (SELECT md5('batch-' || i)::uuid AS id, %(last)s::date - (i %% 30)::integer"
              " AS transaction_date, CASE WHEN i %% 5 = 0 THEN 'BUY' ELSE 'SELL' END AS category,"
              " 'Tea #' || (1 + i %% 5000) AS name, 1 + (i %% 20)::integer AS quantity,"
              " round(0.5 + (i %% 997) / 10.0, 2) AS amount_excl_tax,"
              " round(round(0.5 + (i %% 997) / 10.0, 2) * 1.2, 2) AS amount_inc_tax, 0.20 AS tax_rate,"
              " 'store-' || lpad((1 + i %% 20)::text, 2, '0') AS store_id, 'csv' AS source,"
              " 'retail_batch.csv' AS source_ref, (i + 1)::integer AS source_line,"
              " (i %% 3)::integer AS kafka_partition, i / 3 AS kafka_offset"
              f" FROM generate_series(1::bigint, {BATCH_ROWS}) AS i) AS b")
    conn = psycopg2.connect(stack.url("postgres"))
    try:
        with conn.cursor() as cur, open(path, "w", encoding="utf-8") as out:
            cur.copy_expert(cur.mogrify(f"COPY ({source}) TO STDOUT", {"last": data.last_day}).decode(), out)
    finally:
        conn.close()


def time_copies(stack: PostgresStack, path: Path, rounds: int) -> dict:
    variants = {
        "plain": ("sales.transactions", None),
        "partitioned": ("bench.transactions_part", "DISABLE"),
        "partitioned_with_id_table": ("bench.transactions_part", "ENABLE"),
    }
    runs: dict[str, list[float]] = {name: [] for name in variants}
    conn = psycopg2.connect(stack.url("postgres"), application_name="bench-partitioning-copy")
    try:
        for _ in range(rounds):
            for name, (table, ids) in variants.items():
                if ids:
                    with stack.admin() as cur:
                        cur.execute(f"ALTER TABLE bench.transactions_part {ids} TRIGGER part_ids")
                stack.checkpoint()
                with open(path, "rb") as handle, conn.cursor() as cur:
                    started = time.monotonic()
                    cur.copy_expert(f"COPY {table} ({', '.join(SINK_COLUMNS)}) FROM STDIN", handle, size=1 << 20)
                    runs[name].append(time.monotonic() - started)
                conn.rollback()
    finally:
        conn.close()
    return {name: {"seconds": round(min(times), 2), "rows_per_second": round(BATCH_ROWS / min(times)),
                   "runs_seconds": [round(t, 2) for t in times]} for name, times in runs.items()}


def _median_ms(cur, sql: str, params=None, runs: int = 5) -> float:
    cur.execute(sql, params)
    cur.fetchall()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        cur.execute(sql, params)
        cur.fetchall()
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 2)


def time_reads(stack: PostgresStack) -> dict:
    with stack.admin() as cur:
        cur.execute(f"SELECT array_agg(id::text) FROM (SELECT id FROM sales.transactions TABLESAMPLE SYSTEM (1)"
                    f" REPEATABLE (7) LIMIT {LOOKUP_IDS}) AS s")
        ids = cur.fetchone()[0]
        lookup = "SELECT id FROM {} WHERE id = ANY(%s::uuid[])"
        fresh = "SELECT max(ingested_at), max(transaction_date) FROM {}"
        return {
            "duplicate_lookup_ms": {
                "plain": _median_ms(cur, lookup.format("sales.transactions"), (ids,)),
                "partitioned": _median_ms(cur, lookup.format("bench.transactions_part"), (ids,)),
                "id_table": _median_ms(cur, lookup.format("bench.transaction_ids"), (ids,)),
            },
            "freshness_panel_ms": {
                "plain": _median_ms(cur, fresh.format("sales.transactions")),
                "partitioned": _median_ms(cur, fresh.format("bench.transactions_part")),
            },
            "lookup_ids": len(ids),
        }


def time_dumps(stack: PostgresStack, workdir: Path) -> dict:
    env = {**os.environ, "PGPASSWORD": stack.postgres.password}
    conninfo = f"host={stack.postgres.host} port={stack.postgres.port} user=postgres dbname={stack.dbname}"
    found = {}
    for name, tables in (("plain", ["sales.transactions"]), ("partitioned", ["bench.transactions_p*"])):
        target = workdir / f"{name}.dump"
        stack.checkpoint()
        started = time.monotonic()
        done = subprocess.run([str(stack.postgres.bindir / "pg_dump"), "--format=custom", f"--file={target}",
                               *(f"--table={t}" for t in tables), f"--dbname={conninfo}"],
                              env=env, capture_output=True, text=True)
        seconds = time.monotonic() - started
        if done.returncode != 0:
            raise RuntimeError(f"pg_dump ({name}) failed: {done.stderr.strip()[-2000:]}")
        found[name] = {"seconds": round(seconds, 1), "bytes": target.stat().st_size}
        target.unlink()
    return found


def time_retention(stack: PostgresStack, data: queries.Data) -> dict:
    month = data.first_day.replace(day=1) if data.first_day.day == 1 else \
        (data.first_day.replace(day=1) + datetime.timedelta(days=32)).replace(day=1)  # the first whole month
    end = (month + datetime.timedelta(days=32)).replace(day=1)
    found = {"month": f"{month:%Y-%m}"}
    with stack.admin() as cur:
        cur.execute("SELECT count(*) FROM sales.transactions WHERE transaction_date >= %s AND transaction_date < %s",
                    (month, end))
        found["rows"] = cur.fetchone()[0]
        stack.checkpoint()
        started = time.monotonic()
        cur.execute("DELETE FROM sales.transactions WHERE transaction_date >= %s AND transaction_date < %s",
                    (month, end))
        found["plain_delete_seconds"] = round(time.monotonic() - started, 2)
        started = time.monotonic()
        cur.execute("VACUUM sales.transactions")
        found["plain_vacuum_seconds"] = round(time.monotonic() - started, 2)
        stack.checkpoint()
        partition = f"bench.transactions_p{month:%Y_%m}"
        started = time.monotonic()
        cur.execute(f"ALTER TABLE bench.transactions_part DETACH PARTITION {partition}")
        found["partitioned_detach_seconds"] = round(time.monotonic() - started, 3)
        started = time.monotonic()
        cur.execute(f"DELETE FROM bench.transaction_ids AS t USING {partition} AS p WHERE t.id = p.id")
        found["id_table_delete_seconds"] = round(time.monotonic() - started, 2)
        started = time.monotonic()
        cur.execute(f"DROP TABLE {partition}")
        found["partitioned_drop_seconds"] = round(time.monotonic() - started, 3)
    return found


def sizes(stack: PostgresStack) -> dict:
    with stack.admin() as cur:
        cur.execute("SELECT pg_total_relation_size('sales.transactions'),"
                    " (SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('bench.transactions_part')),"
                    " pg_total_relation_size('bench.transaction_ids')")
        plain, partitioned, ids = cur.fetchone()
    return {"plain_bytes": plain, "partitioned_bytes": int(partitioned), "id_table_bytes": ids}


def render(report: dict) -> str:
    c, r, d, ret, s = report["copy_1m_batch"], report["reads"], report["pg_dump"], report["retention"], report["sizes"]
    lines = [f"Partitioning benchmark: {report['rows']:,} rows, {report['twin']['partitions']} monthly partitions", "",
             "COPY of a 1M-row batch (best of rounds):"]
    for name, v in c.items():
        lines.append(f"  {name:<28}{v['seconds']:>8.2f} s {v['rows_per_second']:>10,} rows/s"
                     f"  ({v['rows_per_second'] / c['plain']['rows_per_second']:.2f} of plain)")
    lines += [f"duplicate check, {r['lookup_ids']:,} ids: " + ", ".join(f"{k} {v} ms" for k, v in
                                                                     r["duplicate_lookup_ms"].items()),
              "freshness panel (max ingested_at, max date): " + ", ".join(f"{k} {v} ms" for k, v in
                                                                        r["freshness_panel_ms"].items()),
              f"pg_dump -Fc: plain {d['plain']['seconds']} s ({d['plain']['bytes'] / 1e6:.0f} MB), partitioned "
              f"{d['partitioned']['seconds']} s ({d['partitioned']['bytes'] / 1e6:.0f} MB)",
              f"remove month {ret['month']} ({ret['rows']:,} rows): DELETE {ret['plain_delete_seconds']} s + VACUUM "
              f"{ret['plain_vacuum_seconds']} s; DETACH {ret['partitioned_detach_seconds']} s + DROP "
              f"{ret['partitioned_drop_seconds']} s (+ its ids from the id table {ret['id_table_delete_seconds']} s)",
              f"sizes: plain {s['plain_bytes'] / 1e6:,.0f} MB, partitioned {s['partitioned_bytes'] / 1e6:,.0f} MB, "
              f"id table {s['id_table_bytes'] / 1e6:,.0f} MB"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.partitioning", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows (default 10,000,000)")
    parser.add_argument("--products", type=int, default=5_000, help="distinct products (default 5,000)")
    parser.add_argument("--rounds", type=int, default=2, help="COPY rounds; the best is kept (default 2)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results (default bench/results/partitioning.json)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the temporary cluster goes (default: TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    root = Path(tempfile.mkdtemp(prefix="tillflow-bench-partitioning-", dir=args.workdir))
    root.chmod(0o755)  # the postgres user must be able to enter it
    data = queries.Data(rows=args.rows, products=args.products)
    stack = PostgresStack(root)
    try:
        log("starting PostgreSQL (fsync on)")
        stack.start_postgres()
        machine = machine_info(stack.scalar)
        stack.migrate(up_to=queries.BEFORE_ROLLUPS)
        log(f"generating {data.rows:,} rows")
        load = queries.load(stack, data)
        stack.migrate()
        with stack.admin() as cur:
            cur.execute("VACUUM ANALYZE")
        log("building the partitioned twin")
        twin = build_twin(stack, data)
        log(f"twin: {twin}")
        disk = sizes(stack)
        log("reads")
        reads = time_reads(stack)
        log("pg_dump")
        dumps = time_dumps(stack, root)
        batch = root / "batch.copy"
        batch_file(stack, data, batch)
        log("COPY of a 1M-row batch")
        copies = time_copies(stack, batch, args.rounds)
        with stack.admin() as cur:
            cur.execute("VACUUM")  # the rolled-back batches, so that the retention VACUUM is only the month's
        log("removing the oldest whole month")
        retention = time_retention(stack, data)
        machine["load_average_at_end"] = list(os.getloadavg())
    finally:
        stack.tear_down(args.keep)
    report = {"benchmark": "partitioning", "rows": data.rows, "products": data.products,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "load": load, "twin": twin, "copy_1m_batch": copies, "reads": reads, "pg_dump": dumps,
              "retention": retention, "sizes": disk, "machine": machine}
    print(render(report))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
