"""Report: the business answers, read from the ``analytics`` views only.

``build_report(conn, product)`` reads the three answers in one read-only
snapshot, so they agree with each other while the consumer keeps writing:

    {
      "product": "Apple" | None,          # the filter asked for
      "daily_transactions": [             # transactions per day, by date
        {"transaction_date": date, "transactions": int,
         "sell_amount_inc_tax": Decimal, "buy_amount_inc_tax": Decimal}, ...],
      "category_totals": [                # SELL then BUY, zeros when none
        {"category": "SELL", "transactions": int,
         "amount_excl_tax": Decimal, "amount_inc_tax": Decimal}, ...],
      "product_daily_balance": [          # by product, then date
        {"name": str, "transaction_date": date, "sell_amount_inc_tax": Decimal,
         "buy_amount_inc_tax": Decimal, "balance": Decimal,
         "cumulative_balance": Decimal}, ...],
    }

The product filter (exact name) narrows ``product_daily_balance`` only; the
daily and category answers are always shop-wide. A product with no
transactions gives an empty list, not an error.

``render(report, fmt)``:

- ``table``: one titled, aligned table per answer, and the total amount
  including tax of all SELL transactions spelled out;
- ``csv``: one section per answer (view), separated by an empty line; each
  section starts with its header row and every row's first column is the
  section's name (``daily_transactions``, ``category_totals``,
  ``product_daily_balance``), so rows stay self-describing when filtered;
- ``json``: the dict above, amounts as strings with two decimals ("123.45"),
  dates ISO 8601, counts as numbers.
"""
from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Sequence
from datetime import date
from decimal import Decimal
from typing import Any, TextIO

from psycopg2 import sql
from psycopg2.extensions import STATUS_READY

from tillflow.config import Settings
from tillflow.errors import ConfigError, SinkError
from tillflow.pg import connect, translated

FORMATS = ("table", "csv", "json")
_CENT = Decimal("0.01")

# (view, title, ORDER BY, [(column, table header)])
_SECTIONS: Sequence[tuple[str, str, str, Sequence[tuple[str, str]]]] = (
    (
        "daily_transactions",
        "Transactions per day",
        "transaction_date",
        (
            ("transaction_date", "date"),
            ("transactions", "transactions"),
            ("sell_amount_inc_tax", "SELL incl. tax"),
            ("buy_amount_inc_tax", "BUY incl. tax"),
        ),
    ),
    (
        "category_totals",
        "Totals by category",
        "CASE category WHEN 'SELL' THEN 0 ELSE 1 END",
        (
            ("category", "category"),
            ("transactions", "transactions"),
            ("amount_excl_tax", "excl. tax"),
            ("amount_inc_tax", "incl. tax"),
        ),
    ),
    (
        "product_daily_balance",
        "Balance per product and date (SELL minus BUY, incl. tax)",
        "name, transaction_date",
        (
            ("name", "product"),
            ("transaction_date", "date"),
            ("sell_amount_inc_tax", "SELL incl. tax"),
            ("buy_amount_inc_tax", "BUY incl. tax"),
            ("balance", "balance"),
            ("cumulative_balance", "cumulative"),
        ),
    ),
)


def build_report(conn, product: str | None) -> dict[str, Any]:
    """Read the answers from the analytics views (see the module docstring for the shape)."""
    product = product.strip() if product is not None else None
    report: dict[str, Any] = {"product": product}
    autocommit = conn.autocommit
    if autocommit:
        conn.autocommit = False  # the snapshot needs a transaction; restored below
    began = False
    try:
        began = _begin_snapshot(conn)
        with conn.cursor() as cur:
            for view, _title, order_by, columns in _SECTIONS:
                query = sql.SQL("SELECT {columns} FROM {view}").format(
                    columns=sql.SQL(", ").join(sql.Identifier(name) for name, _ in columns),
                    view=sql.Identifier("analytics", view),
                )
                params: tuple = ()
                if view == "product_daily_balance" and product is not None:
                    query += sql.SQL(" WHERE name = %s")  # pushed below the view's window: one product's rows
                    params = (product,)
                query += sql.SQL(" ORDER BY ") + sql.SQL(order_by)
                with translated(SinkError, f"reading analytics.{view} failed"):
                    cur.execute(query, params)
                names = [name for name, _ in columns]
                report[view] = [dict(zip(names, row)) for row in cur.fetchall()]
    finally:
        if began:
            conn.rollback()
        if autocommit:
            conn.autocommit = True
    return report


def render(report: dict[str, Any], fmt: str) -> str:
    """The report as text in ``fmt`` (``table``, ``csv`` or ``json``)."""
    if fmt == "json":
        return json.dumps(report, default=_json_value, indent=2) + "\n"
    if fmt == "csv":
        return _render_csv(report)
    if fmt == "table":
        return _render_table(report)
    raise ValueError(f"unknown report format {fmt!r}: use one of {', '.join(FORMATS)}")


def cli_report(settings: Settings, product: str | None, fmt: str, *, out: TextIO | None = None) -> int:
    """``tillflow report``: connect with DATABASE_URL (the reader role), print the report."""
    if not settings.database_url:
        raise ConfigError("DATABASE_URL is not set: give a libpq URL for the tillflow_reader role")
    conn = connect(settings.database_url, "tillflow-report", purpose="for the report", timeout=None)
    try:
        text = render(build_report(conn, product), fmt)
    finally:
        conn.close()
    (out or sys.stdout).write(text)
    return 0


# -- reading -------------------------------------------------------------------


def _begin_snapshot(conn) -> bool:
    """Start a read-only repeatable-read transaction unless the caller has one open."""
    if conn.status != STATUS_READY:
        return False  # inside the caller's transaction: read in it
    with conn.cursor() as cur, translated(SinkError, "starting the report's read-only transaction failed"):
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
    return True



# -- rendering -------------------------------------------------------------------


def _text(value: Any) -> str:
    if isinstance(value, Decimal):
        return format(value.quantize(_CENT), "f")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _json_value(value: Any) -> str:
    if isinstance(value, (Decimal, date)):
        return _text(value)
    raise TypeError(f"report value {value!r} of type {type(value).__name__} has no JSON form")


def _render_csv(report: dict[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for index, (view, _title, _order, columns) in enumerate(_SECTIONS):
        if index:
            writer.writerow([])
        writer.writerow(["section", *(name for name, _ in columns)])
        for row in report.get(view, []):
            writer.writerow([view, *(_text(row[name]) for name, _ in columns)])
    return buffer.getvalue()


def _render_table(report: dict[str, Any]) -> str:
    lines: list[str] = []
    product = report.get("product")
    for view, title, _order, columns in _SECTIONS:
        rows = report.get(view, [])
        if view == "product_daily_balance" and product is not None:
            title += f", product {product!r}"
        lines += [title, "=" * len(title)]
        if not rows:
            if view == "product_daily_balance" and product is not None:
                lines += [f"(no transactions for product {product!r})", ""]
            else:
                lines += ["(no transactions)", ""]
            continue
        cells = [[_text(row[name]) for name, _ in columns] for row in rows]
        headers = [header for _, header in columns]
        # Numbers right-aligned so decimal points line up; text left-aligned.
        numeric = [isinstance(rows[0][name], (int, Decimal)) for name, _ in columns]
        widths = [max(len(headers[i]), *(len(c[i]) for c in cells)) for i in range(len(columns))]

        def line(values: list[str]) -> str:
            return "  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric)).rstrip()

        lines += [line(headers), line(["-" * w for w in widths]), *(line(c) for c in cells)]
        if view == "category_totals":
            sell = next((r for r in rows if r["category"] == "SELL"), None)
            if sell is not None:
                lines.append(f"Total amount incl. tax of all SELL transactions: {_text(sell['amount_inc_tax'])}")
        lines.append("")
    return "\n".join(lines)
