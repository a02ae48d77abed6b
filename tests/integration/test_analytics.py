"""The analytics views give exactly the answers computed independently in Python
with Decimal from a seeded random data set written the way the consumer writes
(COPY as tillflow_writer), read the way Grafana reads (as tillflow_reader)."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import random
import uuid
from collections import defaultdict
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal

import psycopg2.errors
import pytest
from psycopg2 import sql

from tillflow.report import build_report, render

CENT = Decimal("0.01")
ZERO = Decimal("0.00")
COLUMNS = ("id", "transaction_date", "category", "name", "quantity", "amount_excl_tax", "amount_inc_tax",
           "tax_rate", "store_id", "source", "source_ref", "source_line")

# The stable interface: exact columns and types, in order.
VIEW_COLUMNS = {
    "daily_transactions": [
        ("transaction_date", "date"), ("transactions", "bigint"),
        ("sell_amount_inc_tax", "numeric"), ("buy_amount_inc_tax", "numeric"),
    ],
    "category_totals": [
        ("category", "text"), ("transactions", "bigint"),
        ("amount_excl_tax", "numeric"), ("amount_inc_tax", "numeric"),
    ],
    "product_daily_balance": [
        ("name", "text"), ("transaction_date", "date"), ("sell_amount_inc_tax", "numeric"),
        ("buy_amount_inc_tax", "numeric"), ("balance", "numeric"), ("cumulative_balance", "numeric"),
    ],
}


@contextlib.contextmanager
def connected(db, role: str):
    conn = db.connect(role)
    try:
        yield conn
    finally:
        conn.close()


def generate(seed: int, count: int) -> list[dict]:
    """Transactions over 60 days for a dozen products, each product on some days only."""
    rng = random.Random(seed)
    products = ["Apple", "Banana", "Crème fraîche", "Oat milk 1L", 'Tomato "cherry", 250g', "x" * 200,
                "Bread", "Coffee beans", "Eggs (12)", "Rice", "Salt", "Zucchini"]
    start = date(2024, 2, 1)
    # Each product trades on a random subset of days, so many (product, day) pairs are empty.
    days = {p: sorted(rng.sample(range(60), rng.randint(1, 25))) for p in products}
    rows = []
    for line in range(1, count + 1):
        name = rng.choice(products)
        rate = rng.choice([Decimal("0.20")] * 5 + [Decimal("0.10")])
        excl = Decimal(rng.randint(1, 500_000)) * CENT
        inc = (excl * (1 + rate)).quantize(CENT, rounding=ROUND_HALF_UP) + rng.choice([-CENT, ZERO, ZERO, CENT])
        if inc <= 0:
            inc = (excl * (1 + rate)).quantize(CENT, rounding=ROUND_HALF_UP)
        rows.append({
            "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "transaction_date": start + timedelta(days=rng.choice(days[name])),
            "category": rng.choice(["SELL", "SELL", "BUY"]),
            "name": name,
            "quantity": rng.randint(1, 40),
            "amount_excl_tax": excl,
            "amount_inc_tax": inc,
            "tax_rate": rate,
            "store_id": rng.choice(["main", "main", "north"]),
            "source": "csv",
            "source_ref": f"retail_{line % 7}.csv",
            "source_line": line,
        })
    return rows


def copy_in(conn, rows: list[dict]) -> None:
    """COPY as the consumer does, as tillflow_writer."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    for row in rows:
        writer.writerow([row[c] for c in COLUMNS])
    buffer.seek(0)
    statement = sql.SQL("COPY sales.transactions ({}) FROM STDIN WITH (FORMAT csv)").format(
        sql.SQL(", ").join(map(sql.Identifier, COLUMNS))
    )
    with conn.cursor() as cur:
        cur.copy_expert(statement.as_string(conn), buffer)


def expected_answers(rows: list[dict]) -> dict[str, list[tuple]]:
    daily: dict[date, list] = defaultdict(lambda: [0, ZERO, ZERO])
    categories = {"SELL": [0, ZERO, ZERO], "BUY": [0, ZERO, ZERO]}
    per_product: dict[tuple[str, date], list] = defaultdict(lambda: [ZERO, ZERO])
    stores: dict[tuple[str, date], list] = defaultdict(lambda: [0, ZERO, ZERO])
    for row in rows:
        sell = row["category"] == "SELL"
        day = daily[row["transaction_date"]]
        day[0] += 1
        day[1 if sell else 2] += row["amount_inc_tax"]
        store = stores[(row["store_id"], row["transaction_date"])]
        store[0] += 1
        store[1 if sell else 2] += row["amount_inc_tax"]
        total = categories[row["category"]]
        total[0] += 1
        total[1] += row["amount_excl_tax"]
        total[2] += row["amount_inc_tax"]
        per_product[(row["name"], row["transaction_date"])][0 if sell else 1] += row["amount_inc_tax"]

    balances = []
    running: dict[str, Decimal] = defaultdict(lambda: ZERO)
    for (name, day), (sell, buy) in sorted(per_product.items()):
        running[name] += sell - buy
        balances.append((name, day, sell, buy, sell - buy, running[name]))
    return {
        "daily_transactions": [(d, *v) for d, v in sorted(daily.items())],
        "category_totals": [(c, *categories[c]) for c in ("SELL", "BUY")],
        "product_daily_balance": balances,
        "store_daily_transactions": [(s, d, *v) for (s, d), v in sorted(stores.items())],
    }


def read_view(conn, view: str, order_by: str) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT * FROM {} ORDER BY ").format(sql.Identifier("analytics", view)) + sql.SQL(order_by))
        return cur.fetchall()


def assert_money(rows: list[tuple]) -> None:
    """Every amount is an exact Decimal with two places, never a float."""
    for row in rows:
        for value in row:
            assert not isinstance(value, float)
            if isinstance(value, Decimal):
                assert value.as_tuple().exponent == -2, f"{value!r} in {row}"


@pytest.fixture
def loaded(migrated_db):
    rows = generate(seed=20240201, count=3000)
    with connected(migrated_db, "writer") as conn:
        copy_in(conn, rows)
    return migrated_db, rows


def test_views_have_the_documented_columns_and_types(migrated_db):
    with connected(migrated_db, "reader") as conn, conn.cursor() as cur:
        for view, columns in VIEW_COLUMNS.items():
            cur.execute(
                """SELECT column_name, data_type FROM information_schema.columns
                   WHERE table_schema = 'analytics' AND table_name = %s ORDER BY ordinal_position""",
                (view,),
            )
            assert cur.fetchall() == columns, view


def test_every_view_matches_the_answers_computed_in_python(loaded):
    db, rows = loaded
    expected = expected_answers(rows)
    # Sanity of the data set itself: gaps exist, so "no row for an empty date" is tested.
    traded = {(r["name"], r["transaction_date"]) for r in rows}
    products = {r["name"] for r in rows}
    dates = {r["transaction_date"] for r in rows}
    assert len(traded) < len(products) * len(dates)

    with connected(db, "reader") as conn:
        daily = read_view(conn, "daily_transactions", "transaction_date")
        totals = read_view(conn, "category_totals", "CASE category WHEN 'SELL' THEN 0 ELSE 1 END")
        # COLLATE "C": code point order, as Python sorts, whatever the database's locale.
        balance = read_view(conn, "product_daily_balance", 'name COLLATE "C", transaction_date')
        stores = read_view(conn, "store_daily_transactions", 'store_id COLLATE "C", transaction_date')
        freshness = read_view(conn, "pipeline_freshness", "1")

    assert daily == expected["daily_transactions"]
    assert totals == expected["category_totals"]
    assert balance == expected["product_daily_balance"]
    assert stores == expected["store_daily_transactions"]
    assert {(name, day) for name, day, *_ in balance} == traded, "one row per traded (product, date), none else"
    for rows_of_view in (daily, totals, balance, stores):
        assert_money(rows_of_view)

    (fresh,) = freshness
    assert fresh[1] == max(dates) and fresh[2] == len(rows)
    assert fresh[0] is not None and fresh[3] is None and fresh[4] == 0


def test_cumulative_balance_is_the_running_sum_in_date_order(loaded):
    db, _rows = loaded
    with connected(db, "reader") as conn:
        balance = read_view(conn, "product_daily_balance", "name, transaction_date")
    previous: dict[str, tuple[date, Decimal]] = {}
    for name, day, sell, buy, bal, cumulative in balance:
        assert bal == sell - buy
        last_day, last_total = previous.get(name, (date.min, ZERO))
        assert day > last_day
        assert cumulative == last_total + bal
        previous[name] = (day, cumulative)


def test_an_empty_database_answers_with_no_days_and_zero_totals(migrated_db):
    with connected(migrated_db, "reader") as conn:
        assert read_view(conn, "daily_transactions", "1") == []
        assert read_view(conn, "product_daily_balance", "1") == []
        assert read_view(conn, "category_totals", "1 DESC") == [("SELL", 0, ZERO, ZERO), ("BUY", 0, ZERO, ZERO)]


def test_report_reads_the_views_for_one_product_or_all(loaded):
    db, rows = loaded
    expected = expected_answers(rows)
    with connected(db, "reader") as conn:
        everything = build_report(conn, None)
        apple = build_report(conn, "Apple")
        unknown = build_report(conn, "No such product")
        assert conn.autocommit, "the report restores the connection's mode"

    def as_tuples(report, section):
        return [tuple(row.values()) for row in report[section]]

    assert as_tuples(everything, "daily_transactions") == expected["daily_transactions"]
    assert as_tuples(everything, "category_totals") == expected["category_totals"]
    # The report orders names by the database's collation; compare as sorted lists.
    assert sorted(as_tuples(everything, "product_daily_balance")) == expected["product_daily_balance"]
    assert as_tuples(apple, "product_daily_balance") == [r for r in expected["product_daily_balance"] if r[0] == "Apple"]
    assert apple["daily_transactions"] == everything["daily_transactions"], "the product filter is for balances only"
    assert unknown["product_daily_balance"] == []
    assert "no transactions for product 'No such product'" in render(unknown, "table")

    parsed = json.loads(render(apple, "json"))
    sell_total = expected["category_totals"][0][3]
    assert parsed["category_totals"][0] == {
        "category": "SELL", "transactions": expected["category_totals"][0][1],
        "amount_excl_tax": str(expected["category_totals"][0][2]), "amount_inc_tax": str(sell_total),
    }
    assert f"Total amount incl. tax of all SELL transactions: {sell_total}" in render(everything, "table")


def test_smoke_canaries_are_left_out_of_the_business_answers(loaded):
    """`tillflow smoke` stores a real 0.01 canary per deploy in store 'smoke': not business."""
    db, rows = loaded
    canaries = [dict(rows[i], id=str(uuid.uuid4()), store_id="smoke") for i in range(5)]
    with connected(db, "writer") as conn:
        copy_in(conn, canaries)
    expected = expected_answers(rows)
    with connected(db, "reader") as conn:
        assert read_view(conn, "daily_transactions", "transaction_date") == expected["daily_transactions"]
        assert read_view(conn, "category_totals", "CASE category WHEN 'SELL' THEN 0 ELSE 1 END") == \
            expected["category_totals"]
        assert read_view(conn, "product_daily_balance", 'name COLLATE "C", transaction_date') == \
            expected["product_daily_balance"]
        assert read_view(conn, "store_daily_transactions", 'store_id COLLATE "C", transaction_date') == \
            expected["store_daily_transactions"]
        (fresh,) = read_view(conn, "pipeline_freshness", "1")
    assert fresh[2] == len(rows) + len(canaries), "the pipeline's own view still counts them"


def test_only_the_owner_lists_synthetic_stores(migrated_db):
    with connected(migrated_db, "writer") as conn, conn.cursor() as cur:
        with pytest.raises(psycopg2.errors.InsufficientPrivilege) as refused:
            cur.execute("INSERT INTO sales.synthetic_stores VALUES ('main', 'hide the shop')")
        assert refused.value.pgcode == "42501"
