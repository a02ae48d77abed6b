"""``tillflow reconcile``: do the totals agree with the rows they sum?

Two checks, both read in ONE repeatable-read, read-only snapshot, so that
nothing written meanwhile can make them disagree:

``rollups``  ``sales.daily_store_totals`` (per date and store, every store) and
             ``sales.daily_product_totals`` (per date and product, the stores
             in ``sales.synthetic_stores`` left out) are recomputed from
             ``sales.transactions`` and compared with the tables column by
             column, through a FULL OUTER JOIN: a key missing from a rollup,
             or present in it with no rows behind it, differs in every column
             (its absent side is ``None``). ``date_from``/``date_to`` limit both
             to those transaction dates (the primary keys and
             ``transactions_date_idx`` make a single day cheap). Over the whole
             history, ``sales.products`` is also compared, as a set, with the
             names of the stored rows of business stores.

``files``    per-file control totals. For each (source, file name) of
             ``ingest.uploads`` with a ``published`` load, every load of that
             file is added up and compared with where its rows ended:
             ``rows_read`` = rows stored (``sales.transactions``) + duplicates
             (``ingest.duplicates``) + conflicts (``ingest.conflicts``) + rejects
             (``ingest.rejects``), all matched on ``source`` and ``source_ref``
             (the file name); and, when every published load recorded them
             (0009 on), ``amount_excl_tax_accepted``/``amount_inc_tax_accepted``
             = the stored rows' amounts + each duplicate's stored row's + each
             conflict's ``incoming`` + each reject refused by PostgreSQL
             (reason code ``database_refused``, amounts in ``raw``). A file with
             a load finished less than ``settle_seconds`` ago, or still
             running, is *pending* (the consumer may not have written it all
             yet), not a difference. Two kinds of load only bound the rows:
             a ``failed`` load's rows may have reached Kafka beyond the count
             it recorded, so a file with one is held to a floor (only a
             shortfall differs); a load from before 0009 (its amounts NULL)
             had its duplicates go unrecorded, so a file with one is held to
             a ceiling (only an excess differs), and with both its rows are
             not compared. ``date_from``/``date_to`` limit the files to those
             with a published load that finished on those days (UTC).

A difference is one value: (key, column, the rollup's or the file's value,
the value recomputed from the rows). ``run`` returns the counts and the first
``limit`` differences of each check; ``render`` prints them as text or JSON.

It reads ``sales`` and ``ingest``: run it as ``tillflow_backup`` (member of
``pg_read_all_data``; the backup service runs it on ``RECONCILE_SCHEDULE`` and
after each backup, and exports the result as ``tillflow_reconcile_*``), or as
the owner or a superuser. ``tillflow_reader`` sees only the analytics views
and is refused.

Known limit: the product rollup leaves out the stores listed in
``sales.synthetic_stores`` *when a row was stored*; the recomputation leaves out
those listed now. A migration that lists a store with rows already stored must
take them out of ``sales.daily_product_totals`` in the same transaction, or they
show here as differences.

Errors::

    SinkError     PostgreSQL is unreachable, refused the role, or is not migrated (0009)
    ConfigError   DATABASE_URL is not set
    InputError    a date range that ends before it starts, a negative --settle
"""
from __future__ import annotations

import datetime
import json
import sys
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TextIO

import psycopg2
import psycopg2.extensions

from tillflow.config import Settings
from tillflow import pg
from tillflow.errors import ConfigError, InputError, SinkError
from tillflow.pg import translated

FORMATS = ("text", "json")
DEFAULT_SETTLE_SECONDS = 600.0
LIMIT = 25  # differences shown per check (and pending files); the counts are always complete
CHECKS = ("rollups", "files")
UTC = datetime.timezone.utc

MEASURES = (
    "sell_transactions", "sell_quantity", "sell_amount_excl_tax", "sell_amount_inc_tax",
    "buy_transactions", "buy_quantity", "buy_amount_excl_tax", "buy_amount_inc_tax",
)
# measure -> how it is computed from sales.transactions (as migration 0009's trigger does)
_RECOMPUTED = {
    f"{side}_{what}": expression.format(category=side.upper())
    for side in ("sell", "buy")
    for what, expression in (
        ("transactions", "count(*) FILTER (WHERE category = '{category}')::integer"),
        ("quantity", "coalesce(sum(quantity) FILTER (WHERE category = '{category}'), 0)"),
        ("amount_excl_tax", "coalesce(sum(amount_excl_tax) FILTER (WHERE category = '{category}'), 0)"),
        ("amount_inc_tax", "coalesce(sum(amount_inc_tax) FILTER (WHERE category = '{category}'), 0)"),
    )
}


@dataclass(frozen=True)
class Rollup:
    table: str
    key_column: str
    business_only: bool  # rows of sales.synthetic_stores left out


ROLLUPS = (
    Rollup("sales.daily_store_totals", "store_id", business_only=False),
    Rollup("sales.daily_product_totals", "name", business_only=True),
)
FILE_COLUMNS = ("rows", "amount_excl_tax", "amount_inc_tax")


@dataclass(frozen=True)
class RollupDifference:
    table: str
    transaction_date: datetime.date | None  # None: sales.products, which has no date
    key_column: str
    key: str
    column: str
    rollup: int | Decimal | None  # None: the key is not in the rollup
    recomputed: int | Decimal | None  # None: no stored row has this key


@dataclass(frozen=True)
class RollupCheck:
    table: str
    key_column: str
    keys: int  # keys compared: in the rollup, in the rows, or both
    differences: int
    shown: tuple[RollupDifference, ...]


@dataclass(frozen=True)
class FileDifference:
    source: str
    file_name: str
    column: str  # rows, amount_excl_tax or amount_inc_tax
    expected: int | Decimal  # what the published loads recorded
    found: int | Decimal  # stored + duplicates + conflicts + rejects
    comparison: str  # "equal"; "at least" (failed loads); "at most" (rows, a load before 0009)
    parts: dict[str, int | Decimal]  # found, by where the rows ended


@dataclass(frozen=True)
class PendingFile:
    source: str
    file_name: str
    loading_since: datetime.datetime | None  # a load has not finished (started then)
    last_finished_at: datetime.datetime | None


@dataclass(frozen=True)
class FileCheck:
    checked: int
    differences: int
    shown: tuple[FileDifference, ...]
    pending: int
    pending_shown: tuple[PendingFile, ...]


@dataclass(frozen=True)
class Result:
    snapshot_at: datetime.datetime
    date_from: datetime.date | None
    date_to: datetime.date | None
    settle_seconds: float
    rollups: tuple[RollupCheck, ...]
    files: FileCheck | None  # None: not checked (a restored backup)

    def differences(self, check: str) -> int:
        if check == "rollups":
            return sum(r.differences for r in self.rollups)
        if check == "files":
            return self.files.differences if self.files is not None else 0
        raise ValueError(f"unknown check {check!r}: use one of {', '.join(CHECKS)}")

    @property
    def total(self) -> int:
        return sum(self.differences(check) for check in CHECKS)

    @property
    def ok(self) -> bool:
        return self.total == 0


# -- reading -------------------------------------------------------------------


def _rollup_sql(rollup: Rollup, where: str) -> str:
    measures = ", ".join(MEASURES)
    recomputed = ", ".join(f"{_RECOMPUTED[m]} AS {m}" for m in MEASURES)
    sides = ", ".join(f"r.{m} AS rollup_{m}, c.{m} AS recomputed_{m}" for m in MEASURES)
    differing = " + ".join(f"(r.{m} IS DISTINCT FROM c.{m})::integer" for m in MEASURES)
    shown = [name for m in MEASURES for name in (f"rollup_{m}", f"recomputed_{m}")]
    synthetic = (" AND NOT EXISTS (SELECT 1 FROM sales.synthetic_stores AS s WHERE s.store_id = t.store_id)"
                 if rollup.business_only else "")
    key = rollup.key_column
    return f"""
        WITH recomputed AS (
            SELECT transaction_date, {key} AS key, {recomputed}
            FROM sales.transactions AS t
            WHERE true{where}{synthetic}
            GROUP BY transaction_date, {key}
        ), rollup AS (
            SELECT transaction_date, {key} AS key, {measures}
            FROM {rollup.table}
            WHERE true{where}
        ), joined AS MATERIALIZED (
            SELECT coalesce(r.transaction_date, c.transaction_date) AS transaction_date,
                   coalesce(r.key, c.key) AS key, {sides}, {differing} AS differing
            FROM rollup AS r
            FULL OUTER JOIN recomputed AS c ON c.transaction_date = r.transaction_date AND c.key = r.key
        )
        SELECT t.keys, t.differences, d.transaction_date, d.key, {", ".join(f"d.{c}" for c in shown)}
        FROM (SELECT count(*) AS keys, coalesce(sum(differing), 0) AS differences FROM joined) AS t
        LEFT JOIN LATERAL (
            SELECT transaction_date, key, {", ".join(shown)} FROM joined
            WHERE differing > 0 ORDER BY transaction_date, key LIMIT %(limit)s
        ) AS d ON true
    """


# sales.products lists every product traded in a business store: compared, as a
# set, with the names of the stored rows (whole history only: it has no date).
_PRODUCTS_SQL = """
    WITH traded AS (
        SELECT DISTINCT name FROM sales.transactions AS t
        WHERE NOT EXISTS (SELECT 1 FROM sales.synthetic_stores AS s WHERE s.store_id = t.store_id)
    ), joined AS MATERIALIZED (
        SELECT coalesce(l.name, t.name) AS name, l.name IS NOT NULL AS listed, t.name IS NOT NULL AS traded
        FROM sales.products AS l FULL OUTER JOIN traded AS t ON t.name = l.name
    )
    SELECT (SELECT count(*) FROM joined), (SELECT count(*) FROM joined WHERE listed <> traded),
           d.name, d.listed, d.traded
    FROM (SELECT 1) AS one
    LEFT JOIN LATERAL (
        SELECT name, listed, traded FROM joined WHERE listed <> traded ORDER BY name LIMIT %(limit)s
    ) AS d ON true
"""


def _products_check(rows: list[tuple]) -> RollupCheck:
    shown = tuple(
        RollupDifference("sales.products", None, "name", name, "listed", int(listed), int(traded))
        for _keys, _differences, name, listed, traded in rows if name is not None
    )
    return RollupCheck("sales.products", "name", int(rows[0][0]), int(rows[0][1]), shown)


# An amount as a jsonb document holds it (text); anything else counts as missing.
_AMOUNT = r"CASE WHEN ({v}) ~ '^-?[0-9]+(\.[0-9]+)?$' THEN ({v})::numeric END"

_FILES_CTE = """
    WITH loads AS (
        SELECT u.source, u.file_name, u.status, u.rows_read, u.amount_excl_tax_accepted,
               u.amount_inc_tax_accepted, u.created_at, u.finished_at
        FROM ingest.uploads AS u
        WHERE EXISTS (
            SELECT 1 FROM ingest.uploads AS p
            WHERE p.source = u.source AND p.file_name = u.file_name AND p.status = 'published'{finished}
        )
    ), files AS MATERIALIZED (
        SELECT source, file_name,
               count(*) FILTER (WHERE status = 'failed') AS failed_loads,
               coalesce(bool_or(amount_excl_tax_accepted IS NULL OR amount_inc_tax_accepted IS NULL)
                        FILTER (WHERE status = 'published'), false) AS before_0009,
               coalesce(sum(rows_read) FILTER (WHERE status = 'published'), 0) AS rows_expected,
               CASE WHEN bool_and(amount_excl_tax_accepted IS NOT NULL) FILTER (WHERE status = 'published')
                    THEN sum(amount_excl_tax_accepted) FILTER (WHERE status = 'published') END AS excl_expected,
               CASE WHEN bool_and(amount_inc_tax_accepted IS NOT NULL) FILTER (WHERE status = 'published')
                    THEN sum(amount_inc_tax_accepted) FILTER (WHERE status = 'published') END AS inc_expected,
               min(created_at) FILTER (WHERE status = 'started' OR finished_at IS NULL) AS loading_since,
               max(finished_at) AS last_finished_at,
               bool_or(status = 'started' OR finished_at IS NULL
                       OR finished_at > now() - make_interval(secs => %(settle)s)) AS pending
        FROM loads
        GROUP BY source, file_name
    )
"""

_FILES_SQL = _FILES_CTE + """
    , checked AS MATERIALIZED (
        SELECT * FROM files WHERE NOT pending
    ), stored AS (
        SELECT t.source, t.source_ref, count(*) AS n,
               sum(t.amount_excl_tax) AS excl, sum(t.amount_inc_tax) AS inc
        FROM checked AS f
        JOIN sales.transactions AS t ON t.source_ref = f.file_name AND t.source = f.source
        GROUP BY t.source, t.source_ref
    ), duplicates AS (
        SELECT d.source, d.source_ref, count(*) AS n,
               sum(t.amount_excl_tax) AS excl, sum(t.amount_inc_tax) AS inc
        FROM checked AS f
        JOIN ingest.duplicates AS d ON d.source_ref = f.file_name AND d.source = f.source
        LEFT JOIN sales.transactions AS t ON t.id = d.transaction_id
        GROUP BY d.source, d.source_ref
    ), conflicts AS (
        SELECT c.source, c.source_ref, count(*) AS n,
               sum({conflict_excl}) AS excl, sum({conflict_inc}) AS inc
        FROM checked AS f
        JOIN ingest.conflicts AS c ON c.source_ref = f.file_name AND c.source = f.source
        GROUP BY c.source, c.source_ref
    ), rejects AS (
        SELECT r.source, r.source_ref, count(*) AS n,
               sum({reject_excl}) FILTER (WHERE r.reasons @> %(refused)s::jsonb) AS excl,
               sum({reject_inc}) FILTER (WHERE r.reasons @> %(refused)s::jsonb) AS inc
        FROM checked AS f
        JOIN ingest.rejects AS r ON r.source_ref = f.file_name AND r.source = f.source
        GROUP BY r.source, r.source_ref
    ), found AS (
        SELECT f.source, f.file_name, f.failed_loads, f.before_0009,
               f.rows_expected, f.excl_expected, f.inc_expected,
               coalesce(s.n, 0) AS stored_rows, coalesce(d.n, 0) AS duplicate_rows,
               coalesce(c.n, 0) AS conflict_rows, coalesce(r.n, 0) AS reject_rows,
               coalesce(s.excl, 0) AS stored_excl, coalesce(d.excl, 0) AS duplicate_excl,
               coalesce(c.excl, 0) AS conflict_excl, coalesce(r.excl, 0) AS reject_excl,
               coalesce(s.inc, 0) AS stored_inc, coalesce(d.inc, 0) AS duplicate_inc,
               coalesce(c.inc, 0) AS conflict_inc, coalesce(r.inc, 0) AS reject_inc
        FROM checked AS f
        LEFT JOIN stored AS s ON s.source = f.source AND s.source_ref = f.file_name
        LEFT JOIN duplicates AS d ON d.source = f.source AND d.source_ref = f.file_name
        LEFT JOIN conflicts AS c ON c.source = f.source AND c.source_ref = f.file_name
        LEFT JOIN rejects AS r ON r.source = f.source AND r.source_ref = f.file_name
    ), totals AS (
        SELECT *,
               stored_rows + duplicate_rows + conflict_rows + reject_rows AS rows_found,
               stored_excl + duplicate_excl + conflict_excl + reject_excl AS excl_found,
               stored_inc + duplicate_inc + conflict_inc + reject_inc AS inc_found
        FROM found
    ), flagged AS MATERIALIZED (
        SELECT *,
               CASE WHEN failed_loads > 0 AND before_0009 THEN false
                    WHEN failed_loads > 0 THEN rows_found < rows_expected
                    WHEN before_0009 THEN rows_found > rows_expected
                    ELSE rows_found <> rows_expected END AS rows_differ,
               coalesce(CASE WHEN failed_loads = 0 THEN excl_found <> excl_expected
                             ELSE excl_found < excl_expected END, false) AS excl_differ,
               coalesce(CASE WHEN failed_loads = 0 THEN inc_found <> inc_expected
                             ELSE inc_found < inc_expected END, false) AS inc_differ
        FROM totals
    )
    SELECT t.checked, t.differences, p.pending, d.*
    FROM (SELECT count(*) AS checked,
                 coalesce(sum(rows_differ::integer + excl_differ::integer + inc_differ::integer), 0) AS differences
          FROM flagged) AS t
    CROSS JOIN (SELECT count(*) AS pending FROM files WHERE pending) AS p
    LEFT JOIN LATERAL (
        SELECT * FROM flagged WHERE rows_differ OR excl_differ OR inc_differ
        ORDER BY source, file_name LIMIT %(limit)s
    ) AS d ON true
""".format(
    finished="{finished}",  # filled per run
    conflict_excl=_AMOUNT.format(v="c.incoming->>'amount_excl_tax'"),
    conflict_inc=_AMOUNT.format(v="c.incoming->>'amount_inc_tax'"),
    reject_excl=_AMOUNT.format(v="r.raw->>'amount_excl_tax'"),
    reject_inc=_AMOUNT.format(v="r.raw->>'amount_inc_tax'"),
)

_PENDING_SQL = _FILES_CTE + """
    SELECT source, file_name, loading_since, last_finished_at FROM files
    WHERE pending ORDER BY source, file_name LIMIT %(limit)s
"""

_NEEDED = ("sales.daily_store_totals", "sales.daily_product_totals", "sales.products", "ingest.duplicates")


def run(
    conn,
    *,
    date_from: datetime.date | None = None,
    date_to: datetime.date | None = None,
    settle_seconds: float = DEFAULT_SETTLE_SECONDS,
    files: bool = True,
    limit: int = LIMIT,
) -> Result:
    """Reconcile in one read-only snapshot of ``conn`` (its own transaction, rolled back after).

    ``files=False`` checks the rollups only (the backup verification: a
    restored copy's rollups must agree with its rows; its files were judged
    while it was live).
    """
    if date_from is not None and date_to is not None and date_from > date_to:
        raise InputError(f"--from {date_from.isoformat()} is after --to {date_to.isoformat()}: nothing to compare")
    if settle_seconds < 0:
        raise InputError(f"--settle {settle_seconds:g}: a number of seconds cannot be negative")
    params: dict[str, Any] = {"limit": limit, "settle": float(settle_seconds),
                              "refused": json.dumps([{"code": "database_refused"}])}
    where = ""
    if date_from is not None:
        where += " AND transaction_date >= %(date_from)s"
        params["date_from"] = date_from
    if date_to is not None:
        where += " AND transaction_date <= %(date_to)s"
        params["date_to"] = date_to
    finished = ""
    if date_from is not None:
        finished += " AND p.finished_at >= %(finished_from)s"
        params["finished_from"] = datetime.datetime.combine(date_from, datetime.time(), UTC)
    if date_to is not None:
        finished += " AND p.finished_at < %(finished_before)s"
        params["finished_before"] = datetime.datetime.combine(date_to + datetime.timedelta(days=1),
                                                              datetime.time(), UTC)

    if conn.status != psycopg2.extensions.STATUS_READY:
        raise ValueError("reconcile.run needs a connection with no transaction open: it takes its own snapshot")
    autocommit = conn.autocommit
    conn.autocommit = False  # the snapshot needs a transaction; restored below
    step = "reading sales and ingest"
    denied = ("run tillflow reconcile as tillflow_backup (it reads everything) or the owner; tillflow_reader sees "
              "only the analytics views")
    try:
        with translated(SinkError, lambda: f"{step} failed", denied=denied), conn.cursor() as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            cur.execute("SELECT now(), " + ", ".join(f"to_regclass('{name}')" for name in _NEEDED))
            snapshot_at, *present = cur.fetchone()
            missing = [name for name, oid in zip(_NEEDED, present) if oid is None]
            if missing:
                raise SinkError(
                    f"the database has no {', '.join(missing)}: run `tillflow migrate` (migration 0009 adds the "
                    "rollups and ingest.duplicates)"
                )
            checks = []
            for rollup in ROLLUPS:
                step = f"recomputing {rollup.table}"
                cur.execute(_rollup_sql(rollup, where), params)
                checks.append(_rollup_check(rollup, cur.fetchall(), limit))
            if date_from is None and date_to is None:
                step = "comparing sales.products with the products traded"
                cur.execute(_PRODUCTS_SQL, params)
                checks.append(_products_check(cur.fetchall()))
            file_check = None
            if files:
                step = "adding up the files of ingest.uploads"
                cur.execute(_FILES_SQL.format(finished=finished), params)
                names = [column.name for column in cur.description]
                rows = [dict(zip(names, row)) for row in cur.fetchall()]
                cur.execute(_PENDING_SQL.format(finished=finished), params)
                pending = tuple(PendingFile(source, name, _utc(since), _utc(last))
                                for source, name, since, last in cur.fetchall())
                file_check = _file_check(rows, pending, limit)
    finally:
        if not conn.closed:
            try:
                conn.rollback()
                conn.autocommit = autocommit
            except psycopg2.Error:
                pass  # the connection is broken: the error raised above says why
    return Result(_utc(snapshot_at), date_from, date_to, float(settle_seconds), tuple(checks), file_check)


def _utc(moment: datetime.datetime | None) -> datetime.datetime | None:
    return moment.astimezone(UTC) if moment is not None else None


def _rollup_check(rollup: Rollup, rows: list[tuple], limit: int) -> RollupCheck:
    keys, differences = rows[0][0], rows[0][1]
    shown: list[RollupDifference] = []
    for row in rows:
        if row[2] is None:  # no differing key: the one summary row
            continue
        day, key, values = row[2], row[3], row[4:]
        for index, column in enumerate(MEASURES):
            value, recomputed = values[2 * index], values[2 * index + 1]
            if value != recomputed:
                shown.append(RollupDifference(rollup.table, day, rollup.key_column, key, column, value, recomputed))
    return RollupCheck(rollup.table, rollup.key_column, int(keys), int(differences), tuple(shown[:limit]))


_PARTS = (("stored", "stored"), ("duplicates", "duplicate"), ("conflicts", "conflict"), ("rejects", "reject"))


def _file_check(rows: list[dict], pending: tuple[PendingFile, ...], limit: int) -> FileCheck:
    first = rows[0]
    shown: list[FileDifference] = []
    for row in rows:
        if row["source"] is None:
            continue
        for column, prefix in zip(FILE_COLUMNS, ("rows", "excl", "inc")):
            if row[f"{prefix}_differ"]:
                parts = {where: row[f"{single}_{prefix}"] for where, single in _PARTS}
                comparison = ("at least" if row["failed_loads"] else
                              "at most" if row["before_0009"] else "equal")
                shown.append(FileDifference(
                    row["source"], row["file_name"], column, row[f"{prefix}_expected"], row[f"{prefix}_found"],
                    comparison, parts,
                ))
    return FileCheck(int(first["checked"]), int(first["differences"]), tuple(shown[:limit]),
                     int(first["pending"]), pending)


def connect(url: str):
    return pg.connect(url, "tillflow-reconcile", purpose="to reconcile")


# -- rendering -------------------------------------------------------------------


def _value(value: Any) -> Any:
    """JSON form: counts as numbers, amounts as exact strings, dates ISO 8601, absent as null."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime.datetime):
        return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    if isinstance(value, datetime.date):
        return value.isoformat()
    return value


def _text(value: Any) -> str:
    if value is None:
        return "absent"
    return str(_value(value))


def as_dict(result: Result) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "ok": result.ok,
        "differences": result.total,
        "snapshot_at": _value(result.snapshot_at),
        "from": _value(result.date_from),
        "to": _value(result.date_to),
        "settle_seconds": result.settle_seconds,
        "rollups": {
            "differences": result.differences("rollups"),
            "tables": [{
                "table": check.table,
                "keys": check.keys,
                "differences": check.differences,
                "shown": [{
                    "transaction_date": _value(d.transaction_date), d.key_column: d.key, "column": d.column,
                    "rollup": _value(d.rollup), "recomputed": _value(d.recomputed),
                } for d in check.shown],
            } for check in result.rollups],
        },
        "files": None,
    }
    if result.files is not None:
        files = result.files
        doc["files"] = {
            "checked": files.checked,
            "differences": files.differences,
            "shown": [{
                "source": d.source, "file_name": d.file_name, "column": d.column,
                "expected": _value(d.expected), "found": _value(d.found),
                "comparison": d.comparison,
                "found_in": {where: _value(n) for where, n in d.parts.items()},
            } for d in files.shown],
            "pending": files.pending,
            "pending_shown": [{
                "source": p.source, "file_name": p.file_name,
                "loading_since": _value(p.loading_since), "last_finished_at": _value(p.last_finished_at),
            } for p in files.pending_shown],
        }
    return doc


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _more(lines: list[str], shown: int, total: int, what: str) -> None:
    if total > shown:
        lines.append(f"  ... and {total - shown} more {what} ({shown} shown)")


def describe(d: RollupDifference | FileDifference) -> str:
    """One difference as one line: the key, the column, and both values."""
    if isinstance(d, RollupDifference):
        day = "" if d.transaction_date is None else f" {_text(d.transaction_date)}"
        return (f"{d.table}{day} {d.key_column}={d.key!r} {d.column}: "
                f"rollup {_text(d.rollup)}, recomputed {_text(d.recomputed)}")
    parts = ", ".join(f"{where} {_text(n)}" for where, n in d.parts.items())
    expected = _text(d.expected) if d.comparison == "equal" else f"{d.comparison} {_text(d.expected)}"
    return f"file {d.source} {d.file_name!r} {d.column}: uploads {expected}, found {_text(d.found)} ({parts})"


def render_text(result: Result) -> str:
    dates = ("all dates" if result.date_from is None and result.date_to is None else
             f"dates {_text(result.date_from) if result.date_from else 'first'} to "
             f"{_text(result.date_to) if result.date_to else 'last'}")
    lines = [f"reconcile: snapshot {_value(result.snapshot_at)}, {dates}"]
    for check in result.rollups:
        lines.append(f"rollups {check.table}: {_plural(check.keys, 'key')} compared, "
                     f"{_plural(check.differences, 'difference')}")
        lines += [f"  {describe(d)}" for d in check.shown]
        _more(lines, len(check.shown), check.differences, "differences")
    files = result.files
    if files is not None:
        lines.append(f"files: {files.checked} checked, {files.pending} pending (a load finished less than "
                     f"{result.settle_seconds:g} s ago, or still running), {_plural(files.differences, 'difference')}")
        lines += [f"  {describe(d)}" for d in files.shown]
        _more(lines, len(files.shown), files.differences, "differences")
        for p in files.pending_shown:
            state = (f"a load started {_text(p.loading_since)} has not finished" if p.loading_since else
                     f"last load finished {_text(p.last_finished_at)}")
            lines.append(f"  pending {p.source} {p.file_name!r}: {state}")
        _more(lines, len(files.pending_shown), files.pending, "pending files")
    lines.append("all totals agree" if result.ok else f"{_plural(result.total, 'difference')} found")
    return "\n".join(lines) + "\n"


def render(result: Result, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(as_dict(result), indent=2) + "\n"
    if fmt == "text":
        return render_text(result)
    raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")


def cli_reconcile(
    settings: Settings,
    *,
    date_from: datetime.date | None,
    date_to: datetime.date | None,
    settle_seconds: float,
    fmt: str,
    out: TextIO | None = None,
) -> int:
    """``tillflow reconcile``: 0 when every total agrees, 1 when any differs."""
    if not settings.database_url:
        raise ConfigError("DATABASE_URL is not set: give a libpq URL for tillflow_backup (or the owner)")
    conn = connect(settings.database_url)
    try:
        result = run(conn, date_from=date_from, date_to=date_to, settle_seconds=settle_seconds)
    finally:
        conn.close()
    (out or sys.stdout).write(render(result, fmt))
    return 0 if result.ok else 1

