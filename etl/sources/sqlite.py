"""The legacy SQLite database: stream its ``transactions`` table into validated records.

The table (docs/architecture.md, "The legacy SQLite database") is ``transactions(id TEXT,
transaction_date TEXT 'YYYY-MM-DD', category TEXT, name TEXT, quantity BIGINT,
amount_excl_tax FLOAT, amount_inc_tax FLOAT)``. :func:`read_sqlite` opens the
file read-only (it never creates, locks for writing or changes it), reads the
rows in ``rowid`` order through one cursor, ``chunk_rows`` at a time, and yields
lists of Transaction or Rejected, each with ``Origin('sqlite', <file name>, rowid)``.

Amounts are binary floats there. Each float is read through its shortest
``repr``, which for any amount of up to 15 significant digits is exactly the
decimal the legacy application stored (14.76, not 14.7599999999999997868...);
the record rules then demand at most 2 places, so float garbage such as
0.30000000000000004 is rejected with a reason, never rounded. SQLite is
dynamically typed, so amounts stored as TEXT or INTEGER go through the same
rules as CSV text; BLOBs are rejected. Other columns of the table are ignored.

A missing or unreadable file, a file that is not SQLite, or a table that is
missing or lacks a column raises :class:`InputError` naming the file.
"""
from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

from tillflow.errors import InputError
from tillflow.record import DEFAULT_TAX_RATE, FIELDS, Origin, Rejected, Transaction, accept_canonical, validate_full

TABLE = "transactions"
COLUMNS = FIELDS[:-1]  # every record field but store_id, in record order

Result = Transaction | Rejected


def read_sqlite(
    path: str | Path,
    *,
    tax_rate: Decimal = DEFAULT_TAX_RATE,
    store_id: str = "main",
    chunk_rows: int = 10_000,
) -> Iterator[list[Result]]:
    """Stream the legacy table; see the module docstring."""
    path = Path(path)
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    if not path.exists():
        raise InputError(f"{path}: no such file: give the legacy SQLite database")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file: give the legacy SQLite database")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise InputError(f"{path}: cannot open the database read-only ({exc})") from exc
    try:
        cursor = _select(conn, path)
        at_rowid = Origin("sqlite", path.name).with_line
        while True:
            try:
                rows = cursor.fetchmany(chunk_rows)
            except sqlite3.Error as exc:
                raise InputError(f"{path}: reading table {TABLE} failed ({exc})") from exc
            if not rows:
                return
            chunk = []
            for rowid, id_, date, category, name, quantity, excl, inc in rows:
                origin = at_rowid(rowid)
                if type(excl) is float:
                    excl = _from_float(excl)
                if type(inc) is float:
                    inc = _from_float(inc)
                if type(quantity) is float:
                    quantity = _from_float(quantity)
                chunk.append(
                    accept_canonical(
                        id_, date, category, name, quantity, excl, inc, None,
                        origin=origin, tax_rate=tax_rate, default_date=None, default_store=store_id,
                    )
                    or validate_full(
                        dict(zip(COLUMNS, (id_, date, category, name, quantity, excl, inc))),
                        origin=origin, tax_rate=tax_rate, default_store=store_id,
                    )
                )
            yield chunk
    finally:
        conn.close()


def _from_float(value: float) -> str | Decimal:
    """A float as the decimal it was meant to be: its shortest repr.

    Plain ``123.45`` text takes validate()'s fast path; exponents, infinities and
    NaN become Decimals, which the rules then reject as out of range or not finite.
    """
    text = repr(value)
    if "e" in text or "n" in text:  # 1e-05, 1e+16, inf, nan
        return Decimal(text)
    return text


def _select(conn: sqlite3.Connection, path: Path) -> sqlite3.Cursor:
    """The cursor over the table, after checking it exists and has every column."""
    try:
        found = conn.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND lower(name) = ?", (TABLE,)
        ).fetchone()
        if found is None:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
            raise InputError(
                f"{path}: no table {TABLE!r} (tables: {', '.join(tables) or 'none'}): is this the legacy database?"
            )
        table = found[0]
        columns = {r[1].lower() for r in conn.execute(f'PRAGMA table_info("{table}")')}
        missing = [c for c in COLUMNS if c not in columns]
        if missing:
            raise InputError(
                f"{path}: table {table!r} lacks column(s) {', '.join(missing)}; "
                f"expected {', '.join(COLUMNS)}, found {', '.join(sorted(columns))}"
            )
        selected = ", ".join(f'"{c}"' for c in COLUMNS)
        try:
            return conn.execute(f'SELECT rowid, {selected} FROM "{table}" ORDER BY rowid')
        except sqlite3.OperationalError:
            # A WITHOUT ROWID table: number the rows in primary key order instead.
            return conn.execute(f'SELECT row_number() OVER (), {selected} FROM "{table}"')
    except sqlite3.DatabaseError as exc:
        raise InputError(f"{path}: cannot read it as an SQLite database ({exc})") from exc
