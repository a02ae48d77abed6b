"""etl.sources.sqlite: the legacy table, float amounts converted exactly, read-only
streaming, and clear errors for files that are not the legacy database."""
from __future__ import annotations

import datetime
import sqlite3
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etl.sources.sqlite import read_sqlite
from tillflow.errors import InputError
from tillflow.record import Origin, Rejected, Transaction

LEGACY = (
    "CREATE TABLE transactions(id TEXT, transaction_date TEXT, category TEXT, name TEXT, "
    "quantity BIGINT, amount_excl_tax FLOAT, amount_inc_tax FLOAT)"
)
DAY = "2024-01-05"


def uid(n: int) -> str:
    return str(uuid.UUID(int=n))


def legacy_db(path: Path, rows, schema: str = LEGACY) -> Path:
    conn = sqlite3.connect(path)
    try:
        with conn:
            conn.execute(schema)
            for values in rows:
                conn.execute(f"INSERT INTO transactions VALUES ({','.join('?' * len(values))})", values)
    finally:
        conn.close()
    return path


def read_all(path: Path, **kwargs) -> list:
    return [r for chunk in read_sqlite(path, **kwargs) for r in chunk]


def test_float_amounts_convert_exactly(tmp_path):
    db = legacy_db(tmp_path / "legacy.db", [
        (uid(1), DAY, "SELL", "Baguette", 3, 12.3, 14.76),
        (uid(2), DAY, "buy", "Lait", 1, 0.1, 0.12),
        (uid(3), DAY, "SELL", "Caviar", 1, 8333333333.33, 9999999999.99),
    ])
    one, two, three = read_all(db)
    assert one == Transaction(
        uuid.UUID(int=1), datetime.date(2024, 1, 5), "SELL", "Baguette", 3, Decimal("12.30"), Decimal("14.76"), "main"
    )
    assert str(one.amount_excl_tax) == "12.30" and str(one.amount_inc_tax) == "14.76"
    assert two.category == "BUY" and two.amount_excl_tax == Decimal("0.10")
    assert three.amount_inc_tax == Decimal("9999999999.99")
    assert [r.origin for r in (one, two, three)] == [Origin("sqlite", "legacy.db", n) for n in (1, 2, 3)]


def test_float_garbage_is_rejected_not_rounded(tmp_path):
    db = legacy_db(tmp_path / "legacy.db", [(uid(1), DAY, "SELL", "x", 1, 0.1 + 0.2, 0.36)])
    (rejected,) = read_all(db)
    assert isinstance(rejected, Rejected)
    assert [(r.field, r.code) for r in rejected.reasons] == [("amount_excl_tax", "too_many_decimals")]
    assert "0.30000000000000004" in rejected.reasons[0].message
    assert rejected.raw["amount_excl_tax"] == "0.30000000000000004"
    assert rejected.origin == Origin("sqlite", "legacy.db", 1)


def test_amounts_stored_as_text_or_integer(tmp_path):
    schema = LEGACY.replace("FLOAT", "")  # no affinity: values keep the type they were given
    db = legacy_db(tmp_path / "legacy.db", [
        (uid(1), DAY, "SELL", "a", 1, "12.30", "14.76"),
        (uid(2), DAY, "SELL", "b", 1, 12, 14.4),
        (uid(3), DAY, "SELL", "c", 1, "1,5", "1.80"),
        (uid(4), DAY, "SELL", "d", 1, b"\x01", 1.2),
        (uid(5), DAY, "SELL", "e", 1, "12.3", "14.76"),
    ], schema=schema)
    results = read_all(db)
    assert [type(r) for r in results] == [Transaction, Transaction, Rejected, Rejected, Transaction]
    assert results[1].amount_excl_tax == Decimal("12.00") and results[1].amount_inc_tax == Decimal("14.40")
    assert [r.code for r in results[2].reasons] == ["not_decimal"]
    assert [r.code for r in results[3].reasons] == ["wrong_type"]
    assert results[4].amount_excl_tax == Decimal("12.30")


def test_legacy_float_affinity_stores_numeric_text_as_float(tmp_path):
    db = legacy_db(tmp_path / "legacy.db", [(uid(1), DAY, "SELL", "a", 1, "12.30", "14.76")])
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT typeof(amount_excl_tax) FROM transactions").fetchone() == ("real",)
    conn.close()
    assert read_all(db)[0].amount_excl_tax == Decimal("12.30")


@pytest.mark.parametrize(
    "value, code",
    [(1e16, "out_of_range"), (1e-05, "too_many_decimals"), (float("inf"), "not_decimal"), (-1.5, "out_of_range")],
)
def test_odd_floats_get_a_reason(tmp_path, value, code):
    db = legacy_db(tmp_path / "legacy.db", [(uid(1), DAY, "SELL", "a", 1, value, 1.2)])
    (rejected,) = read_all(db)
    assert ("amount_excl_tax", code) in {(r.field, r.code) for r in rejected.reasons}


def test_every_rule_applies_with_every_reason(tmp_path):
    db = legacy_db(tmp_path / "legacy.db", [
        ("nope", "05/01/2024", "GIFT", None, 0, -1.0, None),
        (uid(2), "2024-02-30", "SELL", "x" * 300, 1.5, 1.0, 1.2),
        (None, None, None, None, None, None, None),
    ])
    first, second, third = read_all(db)
    assert [(r.field, r.code) for r in first.reasons] == [
        ("id", "invalid_uuid"), ("transaction_date", "invalid_date"), ("category", "unknown_category"),
        ("name", "missing"), ("quantity", "out_of_range"), ("amount_excl_tax", "out_of_range"),
        ("amount_inc_tax", "missing"),
    ]
    assert [(r.field, r.code) for r in second.reasons] == [
        ("transaction_date", "invalid_date"), ("name", "too_long"), ("quantity", "not_integer"),
    ]
    assert {r.code for r in third.reasons} == {"missing"} and third.id is None
    assert third.origin.line == 3


def test_store_and_tax_rate(tmp_path):
    db = legacy_db(tmp_path / "legacy.db", [(uid(1), DAY, "SELL", "a", 1, 10.0, 10.55)])
    assert isinstance(read_all(db)[0], Rejected)
    (tx,) = read_all(db, tax_rate=Decimal("0.055"), store_id="legacy-1")
    assert tx.store_id == "legacy-1"


def test_streams_in_chunks_by_rowid(tmp_path):
    rows = [(uid(n), DAY, "SELL", f"p{n}", 1, 1.0, 1.2) for n in range(1, 8)]
    db = legacy_db(tmp_path / "legacy.db", rows)
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM transactions WHERE rowid = 3")
    conn.close()
    chunks = list(read_sqlite(db, chunk_rows=2))
    assert [len(c) for c in chunks] == [2, 2, 2]
    assert [r.origin.line for c in chunks for r in c] == [1, 2, 4, 5, 6, 7]
    with pytest.raises(ValueError, match="chunk_rows"):
        next(read_sqlite(db, chunk_rows=0))


def test_opens_read_only_and_leaves_the_file_untouched(tmp_path):
    db = legacy_db(tmp_path / "legacy.db", [(uid(1), DAY, "SELL", "a", 1, 1.0, 1.2)])
    before = db.read_bytes()
    assert len(read_all(db)) == 1
    assert db.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["legacy.db"]


def test_without_rowid_table_numbers_rows(tmp_path):
    schema = LEGACY.replace("id TEXT,", "id TEXT PRIMARY KEY,")[:-1] + ") WITHOUT ROWID"
    db = legacy_db(tmp_path / "legacy.db", [(uid(n), DAY, "SELL", "a", 1, 1.0, 1.2) for n in (1, 2)], schema=schema)
    assert [r.origin.line for r in read_all(db)] == [1, 2]


def test_extra_columns_and_case_are_tolerated(tmp_path):
    schema = (
        "CREATE TABLE Transactions(ID TEXT, note TEXT, transaction_date TEXT, category TEXT, name TEXT, "
        "quantity BIGINT, amount_excl_tax FLOAT, amount_inc_tax FLOAT)"
    )
    db = legacy_db(tmp_path / "legacy.db", [(uid(1), "n", DAY, "SELL", "a", 1, 1.0, 1.2)], schema=schema)
    assert isinstance(read_all(db)[0], Transaction)


def test_empty_table_yields_nothing(tmp_path):
    assert read_all(legacy_db(tmp_path / "legacy.db", [])) == []


# -- files that are not the legacy database ----------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=f"{tmp_path}/nope.db: no such file"):
        next(read_sqlite(tmp_path / "nope.db"))
    assert not (tmp_path / "nope.db").exists()  # read-only: nothing was created


def test_directory(tmp_path):
    with pytest.raises(InputError, match="not a regular file"):
        next(read_sqlite(tmp_path))


def test_not_an_sqlite_file(tmp_path):
    path = tmp_path / "legacy.db"
    path.write_text("id,category\n" * 100)
    with pytest.raises(InputError, match=f"{path}: cannot read it as an SQLite database"):
        next(read_sqlite(path))


def test_missing_table(tmp_path):
    path = tmp_path / "legacy.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE sales(x)")
    conn.close()
    with pytest.raises(InputError, match="no table 'transactions' \\(tables: sales\\)"):
        next(read_sqlite(path))


def test_missing_columns(tmp_path):
    schema = "CREATE TABLE transactions(id TEXT, transaction_date TEXT, category TEXT, name TEXT, qty BIGINT, amount FLOAT)"
    db = legacy_db(tmp_path / "legacy.db", [], schema=schema)
    with pytest.raises(InputError, match="lacks column\\(s\\) quantity, amount_excl_tax, amount_inc_tax") as info:
        next(read_sqlite(db))
    assert "found amount, category, id, name, qty, transaction_date" in str(info.value)


# -- property: any amount of numeric(12,2) survives a trip through a binary float ------------


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(1, 999_999_999_999), min_size=1, max_size=20))
def test_property_two_place_amounts_survive_float_storage(tmp_path, cents_list):
    path = tmp_path / f"legacy-{uuid.uuid4()}.db"
    rows = [(uid(n), DAY, "SELL", "a", 1, float(Decimal(c).scaleb(-2)), float(Decimal(c).scaleb(-2)))
            for n, c in enumerate(cents_list)]
    legacy_db(path, rows)
    results = read_all(path, tax_rate=Decimal(0))
    assert [r.amount_excl_tax for r in results] == [Decimal(c).scaleb(-2) for c in cents_list]
    assert all(type(r.amount_excl_tax) is Decimal and r.amount_excl_tax.as_tuple().exponent == -2 for r in results)
