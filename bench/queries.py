"""The query benchmark (``make bench-queries``): what the dashboards and ``tillflow report``
cost at 10M rows, on the rollups (migration 0009) and on the raw table.

``python -m bench.queries [--rows N] [--products P]`` (default 10,000,000 rows,
5,000 products) starts its own PostgreSQL in a temporary directory (fsync on,
as in production; bench._postgres), migrates a database up to 0008 (the schema
before the rollups), generates the rows with one ``INSERT ... SELECT FROM
generate_series`` as the superuser (``Data`` and ``GENERATE`` below: the shape), ANALYZEs,
then applies 0009 with ``tillflow.migrate`` and times it (the upgrade in place:
the rollups are built from the stored rows), then VACUUM ANALYZE.

Then every question is timed twice in the same run, each the median of
``--runs`` (5) runs after one warm-up, on one connection as tillflow_owner
(who may read both the views and sales.transactions), fetching every row as
Grafana and the report do:

``rollup``  the SQL as it runs now: every PostgreSQL query of the Sales and
            Pipeline dashboards (panels and the product variable), expanded as
            Grafana expands it for a 30-day window ending on the data's last
            day, and ``tillflow.report.build_report``'s queries (all products,
            and one product);
``raw``     the same question with each ``analytics`` view replaced by its
            definition as of migration 0008 (a subquery on sales.transactions),
            read from the migration files and checked against the definitions
            the database held before 0009. The two views 0009 added have
            0008-style equivalents here (``NEW_VIEWS_RAW``).

Both answers must be equal (a digest of the rows is compared). Prints a table
(rollup ms, raw ms, raw/rollup, target met: under 50 ms at 10M rows, 100 ms
above) and the disk sizes, and merges the case into ``bench/results/queries.json``.
``--quick``: 200,000 rows, nothing written unless ``--out`` is given.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psycopg2

from bench._postgres import REPO, PostgresStack, log, machine_info
from tillflow import sample

RESULTS = REPO / "bench" / "results" / "queries.json"
DASHBOARDS = REPO / "grafana" / "dashboards"
POSTGRES_DATASOURCE = "tillflow-postgres"
BEFORE_ROLLUPS = 8  # the last migration before 0009_rollups.sql
WINDOW_DAYS = 30
SEED = 0.20260105
SMOKE_ROWS = 5
UTC = datetime.timezone.utc


def target_ms(rows: int) -> float:
    """The issue's target for one dashboard query: under 50 ms at 10M rows, under 100 ms at 100M."""
    return 50.0 if rows <= 10_000_000 else 100.0


# -- the questions -------------------------------------------------------------------------


@dataclass(frozen=True)
class Question:
    key: str        # stable: "<board>/<panel id>[<chosen value>]", "<board>/var/<name>", "report/<view>[...]"
    source: str     # "sales", "pipeline" (dashboards) or "report"
    title: str
    sql: str        # as it runs now: on the analytics views (which read the rollups)
    raw_sql: str    # the same question on sales.transactions (the views as of 0008, inlined)
    volatile: bool  # its answer moves with now(): not compared between the two


@dataclass(frozen=True)
class Window:
    start: datetime.datetime
    end: datetime.datetime

    @classmethod
    def ending(cls, last_day: datetime.date, days: int = WINDOW_DAYS) -> "Window":
        """The time picker set to the ``days`` whole days (UTC) ending on ``last_day``, as Grafana sends it."""
        first = last_day - datetime.timedelta(days=days - 1)
        return cls(datetime.datetime(first.year, first.month, first.day, tzinfo=UTC),
                   datetime.datetime(last_day.year, last_day.month, last_day.day, 23, 59, 59, 999000, tzinfo=UTC))


def dashboards() -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text(encoding="utf-8")) for path in sorted(DASHBOARDS.glob("*.json"))}


def panels(board: dict) -> list[dict]:
    found = []
    for panel in board["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # a collapsed row keeps its panels inside
    return found


def postgres_targets(board: dict) -> list[tuple[dict, dict]]:
    """(panel, target) for every query of the board that goes to PostgreSQL."""
    return [(panel, target) for panel in panels(board) for target in panel.get("targets", [])
            if target.get("datasource", {}).get("uid") == POSTGRES_DATASOURCE]


def postgres_variables(board: dict) -> list[dict]:
    return [v for v in board.get("templating", {}).get("list", [])
            if v.get("type") == "query" and v.get("datasource", {}).get("uid") == POSTGRES_DATASOURCE]


# Grafana's expansion, for what these dashboards use (tests/integration/test_dashboards.py
# does the same in full): templateSrv's variable syntaxes, then the PostgreSQL backend's
# time macros in UTC, RFC 3339 (Go's RFC3339Nano: trailing zeros of the fraction dropped).
_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)|\[\[(\w+)\]\]")
_MACRO = re.compile(r"\$(__\w+)\(([^)]*)\)")


def go_rfc3339nano(moment: datetime.datetime) -> str:
    text = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{moment.microsecond * 1000:09d}".rstrip("0")
    return f"{text}.{fraction}Z" if fraction else f"{text}Z"


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def expand(sql: str, board: dict, window: Window, values: dict[str, list[str]]) -> str:
    """``sql`` as PostgreSQL receives it from Grafana: a multi-value variable becomes quoted
    literals joined by commas, a single-value one its text with quotes doubled; then
    ``$__timeFilter(col)``, ``$__timeFrom()`` and ``$__timeTo()``. Anything else is an error."""
    variables = {v["name"]: v for v in board.get("templating", {}).get("list", [])}

    def variable(match: re.Match) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name.startswith("__"):
            return match.group(0)  # a macro: the backend's
        if name not in variables or name not in values:
            raise ValueError(f"variable ${name} has no value in the benchmark")
        chosen = values[name]
        if variables[name].get("multi") or variables[name].get("includeAll"):
            return ",".join(_literal(v) for v in chosen)
        return chosen[0].replace("'", "''")

    def macro(match: re.Match) -> str:
        name, args = match.group(1), [a.strip() for a in match.group(2).split(",")]
        start, end = go_rfc3339nano(window.start), go_rfc3339nano(window.end)
        if name == "__timeFilter":
            return f"{args[0]} BETWEEN '{start}' AND '{end}'"
        if name == "__timeFrom":
            return f"'{start}'"
        if name == "__timeTo":
            return f"'{end}'"
        raise ValueError(f"macro ${name}() is not expanded by the benchmark yet")

    expanded = _MACRO.sub(macro, _VARIABLE.sub(variable, sql))
    if "$" in expanded or "[[" in expanded:
        raise ValueError(f"left unexpanded:\n{expanded}")
    return expanded


# The analytics views as of 0008, from the migration files (the last definition of each wins).
_VIEW = re.compile(r"^CREATE (?:OR REPLACE )?VIEW analytics\.(\w+) AS\n(.*?);\s*$", re.S | re.M)

# The views 0009 added, as 0008 would have answered them: from sales.transactions,
# business stores only. The product list is the variable's query before 0009.
NEW_VIEWS_RAW = {
    "product_daily_totals": """SELECT name,
       transaction_date,
       count(*) AS transactions,
       coalesce(sum(amount_inc_tax) FILTER (WHERE category = 'SELL'), 0.00) AS sell_amount_inc_tax,
       coalesce(sum(amount_inc_tax) FILTER (WHERE category = 'BUY'), 0.00) AS buy_amount_inc_tax,
       coalesce(sum(amount_inc_tax) FILTER (WHERE category = 'SELL'), 0.00)
         - coalesce(sum(amount_inc_tax) FILTER (WHERE category = 'BUY'), 0.00) AS balance
FROM sales.transactions AS t
WHERE NOT EXISTS (SELECT 1 FROM sales.synthetic_stores AS s WHERE s.store_id = t.store_id)
GROUP BY name, transaction_date""",
    "products": "SELECT DISTINCT name FROM analytics.product_daily_balance",
}


def views_before_rollups(up_to: int = BEFORE_ROLLUPS) -> dict[str, str]:
    """view name -> its SELECT as the migrations up to ``up_to`` left it."""
    from tillflow.migrate import default_migrations_dir, load_migrations

    views: dict[str, str] = {}
    for migration in load_migrations(default_migrations_dir()):
        if migration.version <= up_to:
            for name, body in _VIEW.findall(migration.sql):
                views[name] = body.strip()
    return views


_VIEW_REFERENCE = re.compile(r"\banalytics\.(\w+)(?:\s+AS\s+(\w+))?", re.I)


def raw(sql: str, views: dict[str, str] | None = None) -> str:
    """``sql`` with every analytics view replaced by its pre-rollup definition, as a subquery."""
    definitions = {**(views if views is not None else views_before_rollups()), **NEW_VIEWS_RAW}

    def inline(match: re.Match) -> str:
        name, alias = match.group(1), match.group(2)
        if name not in definitions:
            raise KeyError(f"analytics.{name} has no definition before the rollups")
        body = _VIEW_REFERENCE.sub(inline, definitions[name])
        return f"({body}) AS {alias or name}"

    return _VIEW_REFERENCE.sub(inline, sql)


def report_queries(product: str) -> list[tuple[str, str, str]]:
    """(key, title, SQL) of ``tillflow.report.build_report``: its three queries, and the
    product one again for one product (``tillflow report --product``)."""
    from tillflow.report import _SECTIONS

    found = []
    for view, title, order_by, columns in _SECTIONS:
        select = ", ".join(f'"{name}"' for name, _ in columns)
        found.append((f"report/{view}", title, f"SELECT {select} FROM analytics.{view} ORDER BY {order_by}"))
        if view == "product_daily_balance":
            found.append((f"report/{view}[one product]", f"{title}, one product",
                          f"SELECT {select} FROM analytics.{view} WHERE name = {_literal(product)} ORDER BY {order_by}"))
    return found


def questions(window: Window, chosen: dict[str, str], report_product: str,
              views: dict[str, str] | None = None) -> list[Question]:
    """Every question, in order: each dashboard's PostgreSQL variables and targets (a panel
    repeated over a variable once per chosen value, as Grafana runs it), then the report's.
    ``chosen`` maps a label (shown in keys) to a product name."""
    views = views if views is not None else views_before_rollups()
    found: list[Question] = []
    values = {"product": list(chosen.values())}
    for board_name, board in dashboards().items():
        for variable in postgres_variables(board):
            sql = expand(variable["query"], board, window, values)
            found.append(Question(f"{board_name}/var/{variable['name']}", board_name,
                                  f"variable ${variable['name']}", sql, raw(sql, views), "now()" in sql))
        for panel, target in postgres_targets(board):
            repeat = panel.get("repeat")
            several = sum(1 for other, _ in postgres_targets(board) if other is panel) > 1
            suffix = f"#{target.get('refId')}" if several else ""
            for label, value in (chosen.items() if repeat else [(None, None)]):
                scoped = {**values, repeat: [value]} if repeat else values
                sql = expand(target["rawSql"], board, window, scoped)
                key = f"{board_name}/{panel['id']}{suffix}" + (f"[{label}]" if label else "")
                title = panel["title"].replace(f"${repeat}", label) if repeat else panel["title"]
                found.append(Question(key, board_name, title, sql, raw(sql, views), "now()" in sql))
    for key, title, sql in report_queries(report_product):
        found.append(Question(key, "report", title, sql, raw(sql, views), False))
    return found


# -- the data --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Data:
    """The generated shape. Rows arrive in date order, as daily loads store them."""

    rows: int
    products: int
    stores: int = 20
    days: int = 730
    last_day: datetime.date = datetime.date.today() - datetime.timedelta(days=1)
    sell_share: float = 0.8

    @property
    def first_day(self) -> datetime.date:
        return self.last_day - datetime.timedelta(days=self.days - 1)

    def product_name(self, rank: int) -> str:
        """The name of the product with popularity ``rank`` (1 is the most sold); as in GENERATE."""
        return f"{sample.PRODUCTS[rank % len(sample.PRODUCTS)]} #{rank}"


# A product's popularity rank k in 1..P is floor((P + 1) ^ u) for a uniform u: P(k) is
# about 1 / (k ln P), Zipf with s = 1 (at P = 5,000 the top product has 8 % of the rows,
# the rarest ~2 per 100,000). Its unit price is fixed by k (0.30 .. 50.29); a BUY is
# at 60 % of it. Quantities 1..20, small ones likelier; stores mildly skewed;
# amount_inc_tax = round(amount_excl_tax * 1.2, 2), the table's tax rule at 0.20.
# Each (store, day) is one CSV file; ingested_at grows with the row, the day after its date.
GENERATE = """
INSERT INTO sales.transactions (id, transaction_date, category, name, quantity, amount_excl_tax, amount_inc_tax,
                                tax_rate, store_id, ingested_at, source, source_ref, source_line,
                                kafka_partition, kafka_offset)
SELECT md5('tillflow-bench-' || i)::uuid, d, category, (%(names)s::text[])[1 + k %% %(name_count)s] || ' #' || k, quantity,
       excl, round(excl * 1.2, 2), 0.20, store_id,
       %(first_day)s::timestamptz + interval '1 day' + i * %(seconds_per_row)s * interval '1 second',
       'csv', format('retail_%%s_%%s.csv', store_id, to_char(d, 'DD_MM_YYYY')), 2 + i %% 50000,
       (i %% 3)::integer, i / 3
FROM (
    SELECT i, d, k, category, quantity, store_id,
           round((0.30 + (k * 7919 %% 5000) / 100.0) * CASE category WHEN 'BUY' THEN 0.6 ELSE 1 END * quantity, 2)
               AS excl
    FROM (
        SELECT i,
               %(first_day)s::date + ((i - 1) * %(days)s / %(rows)s)::integer AS d,
               least(%(products)s, floor(power(%(products)s + 1, random())))::bigint AS k,
               CASE WHEN random() < %(sell_share)s THEN 'SELL' ELSE 'BUY' END AS category,
               1 + floor(20 * random() ^ 2)::integer AS quantity,
               'store-' || lpad((1 + floor(%(stores)s * random() ^ 1.3))::integer::text, 2, '0') AS store_id
        FROM generate_series(1::bigint, %(rows)s) AS i
        OFFSET 0
    ) AS drawn
) AS priced
"""

# `tillflow smoke` canaries: one BUY of 0.01 per deploy in the synthetic store.
CANARIES = """
INSERT INTO sales.transactions (id, transaction_date, category, name, quantity, amount_excl_tax, amount_inc_tax,
                                store_id, ingested_at, source, source_ref)
SELECT md5('tillflow-smoke-' || j)::uuid, %(last_day)s::date - 7 * j, 'BUY', 'tillflow smoke canary', 1, 0.01, 0.01,
       'smoke', %(last_day)s::date - 7 * j + interval '12 hours', 'api', 'smoke'
FROM generate_series(0, %(canaries)s - 1) AS j
"""

# What the pipeline panels read: one upload per (store, day), rejects (0.2 % of the rows)
# and conflicts (0.02 %), spread over the period.
INGEST = """
INSERT INTO ingest.uploads (file_name, sha256, size_bytes, source, store_id, rows_read, rows_accepted, rows_rejected,
                            status, created_at, finished_at)
SELECT format('retail_%%s_%%s.csv', s, to_char(d, 'DD_MM_YYYY')), md5(s || d) || md5(d || s), 40000, 'csv', s,
       700, 699, 1, 'published', d + interval '1 day 6 hours', d + interval '1 day 6 hours 20 seconds'
FROM generate_series(%(first_day)s::date, %(last_day)s::date, interval '1 day') AS d,
     (SELECT 'store-' || lpad(n::text, 2, '0') AS s FROM generate_series(1, %(stores)s) AS n) AS stores;

INSERT INTO ingest.rejects (transaction_id, raw, reasons, source, source_ref, source_line, kafka_topic,
                            kafka_partition, kafka_offset, received_at)
SELECT CASE WHEN j %% 4 = 0 THEN 'not-a-uuid' ELSE md5('reject-' || j)::uuid::text END,
       jsonb_build_object('id', 'x', 'quantity', '1.5'),
       jsonb_build_array(jsonb_build_object('field', (ARRAY['quantity', 'amount_inc_tax', 'id'])[1 + j %% 3],
                                            'code', (ARRAY['not_integer', 'tax_mismatch', 'invalid_uuid'])[1 + j %% 3],
                                            'message', 'rejected row ' || j)),
       'csv', 'retail_' || j %% 1000 || '.csv', 2 + j, 'tillflow.transactions', 0, j,
       %(first_day)s::timestamptz + interval '1 day' + j * %(seconds_per_reject)s * interval '1 second'
FROM generate_series(1, %(rejects)s) AS j;

INSERT INTO ingest.conflicts (transaction_id, stored, incoming, source, source_ref, source_line, kafka_topic,
                              kafka_partition, kafka_offset, detected_at)
SELECT md5('tillflow-bench-' || j * 997)::uuid,
       jsonb_build_object('transaction_date', '2025-01-01', 'category', 'SELL', 'name', 'Tea #5', 'quantity', 2,
                          'amount_inc_tax', '12.00'),
       jsonb_build_object('transaction_date', '2025-01-01', 'category', 'SELL', 'name', 'Tea #5', 'quantity', 3,
                          'amount_inc_tax', '18.00'),
       'csv', 'retail_late_' || j %% 100 || '.csv', 2 + j, 'tillflow.transactions', 1, j,
       %(first_day)s::timestamptz + interval '1 day' + j * %(seconds_per_conflict)s * interval '1 second'
FROM generate_series(1, %(conflicts)s) AS j;
"""


def load(stack: PostgresStack, data: Data) -> dict:
    """The rows, as the superuser, in one transaction; sales.transactions' primary key and
    indexes are dropped first and rebuilt after with their own definitions (faster than
    maintaining them row by row; the result is the same schema). Returns timings."""
    seconds_per_row = data.days * 86400 / data.rows
    rejects, conflicts = max(10, data.rows // 500), max(10, data.rows // 5000)
    params = {
        "rows": data.rows, "products": data.products, "stores": data.stores, "days": data.days,
        "first_day": data.first_day, "last_day": data.last_day, "sell_share": data.sell_share,
        "names": list(sample.PRODUCTS), "name_count": len(sample.PRODUCTS), "seconds_per_row": seconds_per_row,
        "canaries": SMOKE_ROWS, "rejects": rejects, "conflicts": conflicts,
        "seconds_per_reject": data.days * 86400 / rejects, "seconds_per_conflict": data.days * 86400 / conflicts,
    }
    timings = {}
    conn = psycopg2.connect(stack.url("postgres"), application_name="bench-queries-load")
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SET maintenance_work_mem = '1GB'")
            cur.execute("SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
                        " WHERE conrelid = 'sales.transactions'::regclass AND contype = 'p'")
            pkey = cur.fetchone()
            cur.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'sales'"
                        " AND tablename = 'transactions' AND indexname <> %s", (pkey[0],))
            indexes = cur.fetchall()
            cur.execute(f"ALTER TABLE sales.transactions DROP CONSTRAINT {pkey[0]}")
            for name, _ in indexes:
                cur.execute(f"DROP INDEX sales.{name}")
            started = time.monotonic()
            cur.execute("SELECT setseed(%s)", (SEED,))
            cur.execute(GENERATE, params)
            if cur.rowcount != data.rows:
                raise RuntimeError(f"generated {cur.rowcount} rows, expected {data.rows}")
            cur.execute(CANARIES, params)
            cur.execute(INGEST, params)
            timings["insert_seconds"] = time.monotonic() - started
            started = time.monotonic()
            cur.execute(f"ALTER TABLE sales.transactions ADD CONSTRAINT {pkey[0]} {pkey[1]}")
            for _, definition in indexes:
                cur.execute(definition)
            timings["index_seconds"] = time.monotonic() - started
        conn.autocommit = True
        with conn.cursor() as cur:
            started = time.monotonic()
            cur.execute("ANALYZE")
            timings["analyze_seconds"] = time.monotonic() - started
    finally:
        conn.close()
    return {k: round(v, 1) for k, v in timings.items()}


def check_views(stack: PostgresStack, views: dict[str, str]) -> None:
    """The definitions read from the files are the ones the database holds before 0009."""
    with stack.admin() as cur:
        cur.execute("SELECT viewname FROM pg_views WHERE schemaname = 'analytics'")
        held = {name for (name,) in cur.fetchall()}
        if held != set(views):
            raise RuntimeError(f"analytics views before 0009: database {sorted(held)}, files {sorted(views)}")
        for name, body in views.items():
            cur.execute(f"CREATE TEMPORARY VIEW bench_{name} AS {body}")
            cur.execute("SELECT pg_get_viewdef(%s::regclass), pg_get_viewdef(%s::regclass)",
                        (f"analytics.{name}", f"pg_temp.bench_{name}"))
            stored, parsed = cur.fetchone()
            if stored != parsed:
                raise RuntimeError(f"analytics.{name}: the 0008 definition read from the files is not the stored one")


def rollup_tables(stack: PostgresStack) -> list[str]:
    """The tables 0009's trigger writes: the statements ``sales.rollup_statements`` makes."""
    with stack.admin() as cur:
        cur.execute("SELECT unnest(sales.rollup_statements('inserted'))")
        statements = [statement for (statement,) in cur.fetchall()]
    return sorted({m.group(1) for m in (re.match(r"INSERT INTO (sales\.\w+)", s) for s in statements) if m})


def sizes(stack: PostgresStack) -> dict:
    def relation(name: str) -> dict:
        with stack.admin() as cur:
            cur.execute("SELECT pg_table_size(%s::regclass), pg_indexes_size(%s::regclass),"
                        " pg_total_relation_size(%s::regclass), (SELECT count(*) FROM " + name + ")",
                        (name, name, name))
            table, indexes, total, rows = cur.fetchone()
        return {"table_bytes": table, "index_bytes": indexes, "total_bytes": total, "rows": rows}

    found = {name: relation(name) for name in ("sales.transactions", *rollup_tables(stack))}
    rollups = sum(v["total_bytes"] for k, v in found.items() if k != "sales.transactions")
    found["rollups"] = [k for k in found if k != "sales.transactions"]
    found["rollups_total_bytes"] = rollups
    found["rollups_fraction_of_transactions"] = rollups / found["sales.transactions"]["total_bytes"]
    found["database_bytes"] = stack.scalar("SELECT pg_database_size(current_database())")
    return found


# -- timing -------------------------------------------------------------------------------------


def _run(cur, sql: str) -> tuple[float, list]:
    started = time.perf_counter()
    cur.execute(sql)
    rows = cur.fetchall()
    return (time.perf_counter() - started) * 1000, rows


def _digest(rows: list) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(repr(row).encode())
    return digest.hexdigest()


def time_question(cur, question: Question, runs: int, slow_ms: float, slow_runs: int) -> dict:
    """Per variant: one warm-up, then the median of ``runs`` (``slow_runs`` when the warm-up took
    more than ``slow_ms``: a raw query of many seconds is not measured more precisely by six)."""
    result: dict = {"title": question.title, "source": question.source}
    digests = {}
    for variant, sql in (("rollup", question.sql), ("raw", question.raw_sql)):
        warm_ms, rows = _run(cur, sql)
        digests[variant] = _digest(rows)
        result[f"{variant}_rows"] = len(rows)
        del rows
        count = runs if warm_ms <= slow_ms else slow_runs
        times = [_run(cur, sql)[0] for _ in range(count)]
        result[f"{variant}_ms"] = round(statistics.median(times), 2)
        result[f"{variant}_runs_ms"] = [round(t, 2) for t in times]
        result[f"{variant}_warm_up_ms"] = round(warm_ms, 2)
    result["ratio"] = round(result["raw_ms"] / result["rollup_ms"], 1) if result["rollup_ms"] else None
    result["same_answer"] = None if question.volatile else digests["rollup"] == digests["raw"]
    return result


# -- the run ---------------------------------------------------------------------------------------


def case_name(data: Data) -> str:
    return f"rows_{data.rows}_products_{data.products}"


def run_case(stack: PostgresStack, data: Data, args: argparse.Namespace) -> dict:
    started_case = time.monotonic()
    log(f"migrating up to {BEFORE_ROLLUPS:04d}")
    stack.migrate(up_to=BEFORE_ROLLUPS)
    views = views_before_rollups()
    check_views(stack, views)
    log(f"generating {data.rows:,} rows, {data.products:,} products, {data.stores} stores, {data.days} days "
        f"ending {data.last_day}")
    load_timings = load(stack, data)
    log(f"loaded: {load_timings}")
    stack.checkpoint()
    log("applying 0009 (building the rollups from the stored rows)")
    started = time.monotonic()
    applied = stack.migrate()
    migration_seconds = time.monotonic() - started
    if [name for name in applied if name.startswith("0009_")] != ["0009_rollups.sql"]:
        raise RuntimeError(f"expected 0009_rollups.sql to be applied, got {applied}")
    log(f"0009 applied in {migration_seconds:.1f}s ({', '.join(applied)})")
    started = time.monotonic()
    with stack.admin() as cur:
        cur.execute("VACUUM ANALYZE")
    vacuum_seconds = time.monotonic() - started
    stack.checkpoint()
    disk = sizes(stack)

    window = Window.ending(data.last_day)
    chosen = {"top product": data.product_name(1), f"rank {min(1000, data.products)}":
              data.product_name(min(1000, data.products))}
    asked = questions(window, chosen, data.product_name(1), views)
    target = target_ms(data.rows)
    results = {}
    conn = psycopg2.connect(stack.url("owner"), application_name="bench-queries")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for question in asked:
                log(f"timing {question.key}")
                result = time_question(cur, question, args.runs, args.slow_ms, args.slow_runs)
                result["target_ms"] = target
                result["target_met"] = result["rollup_ms"] < target
                results[question.key] = result
    finally:
        conn.close()
    reconciled = time_reconcile(stack, data.last_day)
    settings = {}
    with stack.admin() as cur:
        for name in ("shared_buffers", "work_mem", "maintenance_work_mem", "effective_cache_size", "jit",
                     "max_parallel_workers_per_gather", "random_page_cost"):
            cur.execute(f"SHOW {name}")
            settings[name] = cur.fetchone()[0]
    return {
        "rows": data.rows,
        "data": {**{k: (v.isoformat() if isinstance(v, datetime.date) else v) for k, v in asdict(data).items()},
                 "first_day": data.first_day.isoformat(), "smoke_canaries": SMOKE_ROWS,
                 "chosen_products": chosen, "report_product": data.product_name(1)},
        "window": {"from": go_rfc3339nano(window.start), "to": go_rfc3339nano(window.end)},
        "load": load_timings,
        "migration_0009_seconds": round(migration_seconds, 1),
        "vacuum_analyze_seconds": round(vacuum_seconds, 1),
        "sizes": disk,
        "postgresql_settings": settings,
        "target_ms": target,
        "queries": results,
        "reconcile": reconciled,
        "case_seconds": round(time.monotonic() - started_case, 1),
        "date": datetime.datetime.now(UTC).isoformat(timespec="seconds"),
    }


def time_reconcile(stack: PostgresStack, last_day: datetime.date) -> dict:
    """What ``tillflow reconcile``'s rollup check costs: the whole history, and one day (the rollups were
    built by 0009 from these rows, so any difference is a bug)."""
    from tillflow import reconcile

    found = {}
    for name, day in (("all_dates", None), ("one_day", last_day)):
        log(f"reconcile, rollups, {name}")
        conn = psycopg2.connect(stack.url("postgres"), application_name="bench-reconcile")
        try:
            started = time.monotonic()
            result = reconcile.run(conn, date_from=day, date_to=day, files=False)
            found[f"{name}_seconds"] = round(time.monotonic() - started, 2)
        finally:
            conn.close()
        found[f"{name}_differences"] = result.differences("rollups")
        if result.differences("rollups"):
            raise RuntimeError(f"reconcile found {result.differences('rollups')} rollup differences ({name})")
    return found


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def render(name: str, case: dict) -> str:
    d = case["data"]
    lines = [f"Query benchmark, case {name}: {case['rows']:,} rows, {d['products']:,} products, {d['stores']} stores, "
             f"{d['days']} days to {d['last_day']}; window {case['window']['from']} .. {case['window']['to']}",
             f"load {case['load']}; 0009 applied in {case['migration_0009_seconds']} s; VACUUM ANALYZE "
             f"{case['vacuum_analyze_seconds']} s",
             "",
             f"{'question':<44}{'rollup ms':>11}{'raw ms':>11}{'raw/rollup':>12}{'rows':>10}  "
             f"{'< ' + str(int(case['target_ms'])) + ' ms':<9}{'same':<6}title",
             "-" * 140]
    for key, q in case["queries"].items():
        verdict = "met" if q["target_met"] else "NOT MET"
        same = {True: "yes", False: "NO", None: "-"}[q["same_answer"]]
        ratio = f"{q['ratio']:,.1f}x" if q["ratio"] is not None else "-"
        lines.append(f"{key:<44}{q['rollup_ms']:>11,.1f}{q['raw_ms']:>11,.1f}{ratio:>12}{q['rollup_rows']:>10,}  "
                     f"{verdict:<9}{same:<6}{q['title'][:60]}")
    s = case["sizes"]
    t = s["sales.transactions"]
    lines += ["", f"sales.transactions: {t['rows']:,} rows, table {_mb(t['table_bytes'])} + indexes "
                  f"{_mb(t['index_bytes'])} = {_mb(t['total_bytes'])}"]
    for rollup in s["rollups"]:
        r = s[rollup]
        lines.append(f"{rollup}: {r['rows']:,} rows, table {_mb(r['table_bytes'])} + indexes "
                     f"{_mb(r['index_bytes'])} = {_mb(r['total_bytes'])}")
    if "reconcile" in case:
        r = case["reconcile"]
        lines.append(f"tillflow reconcile (rollups): all dates {r['all_dates_seconds']} s, one day "
                     f"{r['one_day_seconds']} s, no difference")
    lines.append(f"rollups together: {_mb(s['rollups_total_bytes'])}, "
                 f"{100 * s['rollups_fraction_of_transactions']:.2f} % of sales.transactions with its indexes")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.queries", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows to generate (default 10,000,000)")
    parser.add_argument("--products", type=int, default=5_000, help="distinct products (default 5,000)")
    parser.add_argument("--stores", type=int, default=20, help="stores (default 20)")
    parser.add_argument("--days", type=int, default=730, help="days of data, ending yesterday (default 730)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per query after one warm-up (default 5)")
    parser.add_argument("--slow-ms", type=float, default=30_000,
                        help="a query whose warm-up took longer gets --slow-runs runs (default 30000)")
    parser.add_argument("--slow-runs", type=int, default=2, help="timed runs of such a query (default 2)")
    parser.add_argument("--quick", action="store_true", help="a 200,000-row smoke run; writes no JSON unless --out")
    parser.add_argument("--out", type=Path, default=None, help=f"JSON results file (default {RESULTS.relative_to(REPO)})")
    parser.add_argument("--workdir", type=Path, default=None, help="where the temporary cluster goes (default: TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows = 200_000
    if args.out is None and not args.quick:
        args.out = RESULTS
    if args.rows < 1000 or args.products < 1 or args.stores < 1 or args.stores > 99 or args.days < WINDOW_DAYS:
        parser.error("--rows >= 1000, --products >= 1, --stores 1..99, --days >= 30")
    if args.runs < 1 or args.slow_runs < 1:
        parser.error("--runs and --slow-runs must be at least 1")
    return args


def merge(path: Path, name: str, case: dict, machine: dict) -> dict:
    """The results file with this case put in (other cases kept: a case is one run)."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        report = {}
    report = {
        "benchmark": "queries",
        "what": ("each dashboard query and tillflow report query, median ms of warm runs, on the rollups (0009) "
                 "and on sales.transactions with the 0008 views inlined (raw); target: rollup under 50 ms at "
                 "10M rows, 100 ms at 100M"),
        "cases": {**report.get("cases", {}), name: {**case, "machine": machine}},
    }
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    root = Path(tempfile.mkdtemp(prefix="tillflow-bench-queries-", dir=args.workdir))
    root.chmod(0o755)  # the postgres user must be able to enter it
    needed = args.rows * 700  # table, indexes, rollups and WAL, with room
    free = shutil.disk_usage(root).free
    if free < needed:
        shutil.rmtree(root, ignore_errors=True)
        print(f"bench: {args.rows:,} rows need about {needed / 1e9:.0f} GB, {free / 1e9:.0f} GB free", file=sys.stderr)
        return 1
    data = Data(rows=args.rows, products=args.products, stores=args.stores, days=args.days)
    stack = PostgresStack(root)
    try:
        log("starting PostgreSQL (fsync on)")
        stack.start_postgres()
        machine = machine_info(stack.scalar)
        case = run_case(stack, data, args)
        machine["load_average_at_end"] = list(os.getloadavg())
    finally:
        stack.tear_down(args.keep)
    name = "quick" if args.quick else case_name(data)
    print(render(name, case))
    if args.out is not None:
        report = merge(args.out, name, case, machine)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        partial = args.out.with_suffix(".json.tmp")
        partial.write_text(json.dumps(report, indent=2, default=str) + "\n")
        partial.replace(args.out)
        print(f"\nwrote {args.out}")
    failed = [k for k, q in case["queries"].items() if q["same_answer"] is False]
    if failed:
        print(f"\nbench: rollup and raw answers differ for {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
