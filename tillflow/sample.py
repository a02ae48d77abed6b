"""Generated transaction data: deterministic for a seed, valid by construction,
with exact Decimal amounts. ``tillflow sample`` writes a file to try Tillflow
with; the tests and benchmarks generate their data here too.

Writers produce the real input formats: CSV files as the tills export them and
the legacy SQLite table with float amounts.
"""
from __future__ import annotations

import csv
import datetime
import random
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

PRODUCTS = [
    "Apples", "Bananas", "Bread", "Butter", "Cheese", "Coffee", "Eggs", "Flour", "Milk", "Olive oil",
    "Pasta", "Rice", "Salt", "Sugar", "Tea", "Tomatoes", "Water 1.5L", "Yoghurt", 'Wine "Reserva", red',
    "Chocolate, dark 70%",
]
CENT = Decimal("0.01")
HEADER = ["id", "category", "description", "quantity", "amount_excl_tax", "amount_inc_tax"]


@dataclass(frozen=True)
class Row:
    id: str
    transaction_date: datetime.date
    category: str
    name: str
    quantity: int
    amount_excl_tax: Decimal
    amount_inc_tax: Decimal

    def csv_fields(self) -> list[str]:
        return [self.id, self.category, self.name, str(self.quantity), str(self.amount_excl_tax),
                str(self.amount_inc_tax)]


def inc_tax(excl: Decimal, rate: Decimal = Decimal("0.20")) -> Decimal:
    return (excl * (1 + rate)).quantize(CENT, rounding=ROUND_HALF_UP)


def rows(n: int, *, seed: int = 1, start: datetime.date = datetime.date(2026, 1, 1), days: int = 30,
         products: list[str] | None = None) -> Iterator[Row]:
    rng = random.Random(seed)
    names = products or PRODUCTS
    for _ in range(n):
        excl = Decimal(rng.randint(1, 500_000)) / 100
        yield Row(
            id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            transaction_date=start + datetime.timedelta(days=rng.randrange(days)),
            category=rng.choice(("SELL", "SELL", "BUY")),
            name=rng.choice(names),
            quantity=rng.randint(1, 50),
            amount_excl_tax=excl,
            amount_inc_tax=inc_tax(excl),
        )


def write_csv(path: Path, items, *, newline: str = "\n") -> Path:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator=newline)
        writer.writerow(HEADER)
        for row in items:
            writer.writerow(row.csv_fields())
    return path


def write_sqlite(path: Path, items) -> Path:
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE transactions (id TEXT, transaction_date TEXT, category TEXT, name TEXT,"
        " quantity BIGINT, amount_excl_tax FLOAT, amount_inc_tax FLOAT)"
    )
    conn.executemany(
        "INSERT INTO transactions VALUES (?, ?, ?, ?, ?, ?, ?)",
        ((r.id, r.transaction_date.isoformat(), r.category, r.name, r.quantity,
          float(r.amount_excl_tax), float(r.amount_inc_tax)) for r in items),
    )
    conn.commit()
    conn.close()
    return path


def csv_name(day: datetime.date) -> str:
    return f"retail_{day:%d_%m_%Y}.csv"


# Rows a till's export might hold by mistake: what the validator rejects, each for one reason.
_INVALID = (
    ("quantity is 0", ["SELL", "Milk", "0", "1.00", "1.20"]),
    ("amount_inc_tax is not amount_excl_tax plus 20 % tax", ["BUY", "Flour", "3", "10.00", "11.00"]),
    ("category is neither SELL nor BUY", ["GIFT", "Tea", "1", "2.50", "3.00"]),
)


def write_sample(directory: Path, day: datetime.date, *, rows_count: int = 20, invalid: int = 2,
                 seed: int = 26) -> Path:
    """``retail_DD_MM_YYYY.csv`` in ``directory``: ``rows_count`` valid rows of ``day``, then ``invalid``
    rows the validator rejects (at most three). Refuses to overwrite a file."""
    path = Path(directory) / csv_name(day)
    items = list(rows(rows_count, seed=seed, start=day, days=1))
    with open(path, "x", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(HEADER)
        for row in items:
            writer.writerow(row.csv_fields())
        for n, (_, fields) in enumerate(_INVALID[:invalid]):
            rng = random.Random(f"{seed}-invalid-{n}")
            writer.writerow([str(uuid.UUID(int=rng.getrandbits(128), version=4)), *fields])
    return path
