"""``tillflow reconcile`` against a real PostgreSQL: a data set written the way the
consumer writes it (rows COPYed as tillflow_writer, the rollups kept by the
trigger) with the files' uploads, duplicates, conflicts and rejects consistent
with it reconciles; every kind of damage, done as the superuser, is named by
key and column. The expected counts are computed here in Python, independently
of the SQL. Only PostgreSQL fixtures are requested: Kafka is not started.
"""
from __future__ import annotations

import contextlib
import csv
import datetime
import io
import itertools
import json
import os
import random
import subprocess
import sys
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import psycopg2.extensions
import pytest
from psycopg2 import sql

from tillflow import reconcile

TILLFLOW = str(Path(sys.executable).with_name("tillflow"))
UTC = datetime.timezone.utc
CENT = Decimal("0.01")
COLUMNS = ("id", "transaction_date", "category", "name", "quantity", "amount_excl_tax", "amount_inc_tax",
           "store_id", "source", "source_ref", "source_line")
D5, D6, D7 = datetime.date(2026, 1, 5), datetime.date(2026, 1, 6), datetime.date(2026, 1, 7)
PRODUCTS = ("Milk", "Bread", 'Wine "Reserva", red', "Crème fraîche")

F1 = ("csv", "retail_05_01_2026.csv")     # loaded twice: duplicates, a conflict, loader rejects
F2 = ("sqlite", "legacy.db")              # a row PostgreSQL refused (reject with raw amounts)
F3 = ("csv", "retail_06_01_2026.csv")     # holds the stored version F1's conflict collides with
F4 = ("upload", "retail_07_01_2026.csv")  # loaded before 0009: no amounts recorded
F5 = ("csv", F4[1])                       # the same file by another way: all duplicates of F4's rows


def at(day: int, hour: int) -> datetime.datetime:
    return datetime.datetime(2026, 1, day, hour, tzinfo=UTC)


@dataclass
class DataSet:
    """What is written, kept in Python to compute the expected answers."""

    rng: random.Random = field(default_factory=lambda: random.Random(20260105))
    stored: list[dict] = field(default_factory=list)
    uploads: list[dict] = field(default_factory=list)
    duplicates: list[dict] = field(default_factory=list)
    conflicts: list[dict] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)
    offsets: itertools.count = field(default_factory=itertools.count)

    def tx(self, day: datetime.date, file: tuple[str, str | None], line: int, store: str = "main") -> dict:
        excl = Decimal(self.rng.randint(1, 100_000)) * CENT
        return {
            "id": str(uuid.UUID(int=self.rng.getrandbits(128), version=4)), "transaction_date": day,
            "category": self.rng.choice(("SELL", "SELL", "BUY")), "name": self.rng.choice(PRODUCTS),
            "quantity": self.rng.randint(1, 30), "amount_excl_tax": excl,
            "amount_inc_tax": (excl * Decimal("1.20")).quantize(CENT, rounding=ROUND_HALF_UP),
            "store_id": store, "source": file[0], "source_ref": file[1], "source_line": line,
        }

    def position(self) -> tuple[str, int, int]:
        return ("tillflow.transactions", 0, next(self.offsets))

    def upload(self, file: tuple[str, str], read: int, finished: datetime.datetime | None,
               amounts: list[dict] | None, status: str = "published") -> None:
        self.uploads.append({
            "source": file[0], "file_name": file[1], "rows_read": read, "status": status, "finished_at": finished,
            "amount_excl_tax_accepted": None if amounts is None else sum(r["amount_excl_tax"] for r in amounts),
            "amount_inc_tax_accepted": None if amounts is None else sum(r["amount_inc_tax"] for r in amounts),
        })

    def duplicate(self, row: dict, file: tuple[str, str], line: int) -> None:
        self.duplicates.append({"transaction_id": row["id"], "source": file[0], "source_ref": file[1],
                                "source_line": line})

    def conflict(self, stored: dict, incoming: dict) -> None:
        self.conflicts.append({"transaction_id": stored["id"], "stored": version(stored),
                               "incoming": version(incoming), "source": incoming["source"],
                               "source_ref": incoming["source_ref"], "source_line": incoming["source_line"]})

    def reject(self, file: tuple[str, str], line: int, code: str, raw: dict) -> None:
        self.rejects.append({"transaction_id": raw.get("id"), "raw": raw,
                             "reasons": [{"field": "row", "code": code, "message": f"test: {code}"}],
                             "source": file[0], "source_ref": file[1], "source_line": line})


def version(row: dict) -> dict:
    """A transaction as ingest.conflicts keeps it (consumer.sink._content)."""
    doc = {k: str(row[k]) for k in ("id", "transaction_date", "category", "name", "amount_excl_tax",
                                   "amount_inc_tax", "store_id")}
    doc["quantity"] = row["quantity"]
    return doc


def build() -> DataSet:
    data = DataSet()
    # F3: 6 rows, two stores, stored once.
    f3 = [data.tx(D6, F3, line, store) for line, store in zip(range(2, 8), ("main", "north") * 3)]
    data.stored += f3
    data.upload(F3, 6, at(6, 18), f3)
    # F1: 10 valid rows (the last reuses an id of F3 with other content) and 2 the loader
    # rejected; loaded twice. The rejects' raw amounts must not count: PostgreSQL never saw them.
    f1 = [data.tx(D5, F1, line) for line in range(2, 11)]
    clash = {**data.tx(D5, F1, 11), "id": f3[0]["id"]}
    data.stored += f1
    refused_by_loader = [{"id": "not-a-uuid", "amount_excl_tax": "10.00", "amount_inc_tax": "12.00"},
                         {"id": None, "amount_excl_tax": "5.00", "amount_inc_tax": "x"}]
    for load, finished in enumerate((at(5, 20), at(7, 9))):
        data.upload(F1, 12, finished, [*f1, clash])
        if load:
            for row in f1:
                data.duplicate(row, F1, row["source_line"])
        data.conflict(f3[0], clash)
        for line, raw in zip((12, 13), refused_by_loader):
            data.reject(F1, line, "invalid_uuid", raw)
    # F2: 5 rows over three days, one refused by PostgreSQL (its amounts are in raw).
    f2 = [data.tx(day, F2, rowid) for rowid, day in enumerate((D5, D6, D7, D7, D6), start=1)]
    data.stored += f2[:4]
    data.reject(F2, 5, "database_refused", {k: str(v) for k, v in f2[4].items()
                                            if k in COLUMNS[:8]})
    data.upload(F2, 5, at(7, 10), f2)
    # F4: before 0009, no amounts in the ledger: its rows are counted, amounts not compared.
    f4 = [data.tx(D7, F4, line) for line in range(2, 5)]
    data.stored += f4
    data.upload(F4, 3, at(7, 11), None)
    for row in f4:
        data.duplicate(row, F5, row["source_line"])
    data.upload(F5, 3, at(7, 12), f4)
    # Rows of no file (the API) and the smoke canary (a synthetic store: no product rollup).
    data.stored += [data.tx(D6, ("api", "req-1"), None) for _ in range(4)]
    data.stored.append({**data.tx(D7, ("api", "req-2"), None), "store_id": "smoke", "category": "BUY"})
    return data


def write(db, data: DataSet) -> None:
    """As the consumer and the loader write: tillflow_writer, rows by COPY."""
    conn = db.connect("writer")
    try:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        for row in data.stored:
            writer.writerow(["" if row[c] is None else row[c] for c in COLUMNS])
        buffer.seek(0)
        with conn.cursor() as cur:
            cur.copy_expert(f"COPY sales.transactions ({', '.join(COLUMNS)}) FROM STDIN WITH (FORMAT csv)", buffer)
            for upload in data.uploads:
                insert(cur, "ingest.uploads", {**upload, "sha256": "0" * 64, "size_bytes": 100,
                                               "created_at": (upload["finished_at"] or at(8, 0))
                                               - datetime.timedelta(minutes=1)})
            for table, rows in (("ingest.duplicates", data.duplicates), ("ingest.conflicts", data.conflicts),
                                ("ingest.rejects", data.rejects)):
                for row in rows:
                    topic, partition, offset = data.position()
                    insert(cur, table, {**{k: json.dumps(v) if isinstance(v, (dict, list)) else v
                                           for k, v in row.items()},
                                        "kafka_topic": topic, "kafka_partition": partition, "kafka_offset": offset})
    finally:
        conn.close()


def insert(cur, table: str, values: dict) -> None:
    schema, name = table.split(".")
    cur.execute(sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        sql.Identifier(schema, name), sql.SQL(", ").join(map(sql.Identifier, values)),
        sql.SQL(", ").join(sql.Placeholder() * len(values))), list(values.values()))


def keys(data: DataSet, days: set[datetime.date] | None = None) -> dict[str, int]:
    """How many rollup keys there are, computed from the rows written."""
    stores = {(r["transaction_date"], r["store_id"]) for r in data.stored}
    products = {(r["transaction_date"], r["name"]) for r in data.stored if r["store_id"] != "smoke"}
    if days is not None:
        stores = {k for k in stores if k[0] in days}
        products = {k for k in products if k[0] in days}
    found = {"sales.daily_store_totals": len(stores), "sales.daily_product_totals": len(products)}
    if days is None:  # the product list has no date: compared over the whole history only
        found["sales.products"] = len({name for _day, name in products})
    return found


def rollup_row(data: DataSet, day: datetime.date, store: str) -> dict:
    totals: dict[str, object] = defaultdict(int)
    for row in data.stored:
        if (row["transaction_date"], row["store_id"]) == (day, store):
            side = row["category"].lower()
            totals[f"{side}_transactions"] += 1
            totals[f"{side}_quantity"] += row["quantity"]
            totals[f"{side}_amount_excl_tax"] += row["amount_excl_tax"]
            totals[f"{side}_amount_inc_tax"] += row["amount_inc_tax"]
    return totals


@pytest.fixture
def loaded(migrated_db):
    data = build()
    write(migrated_db, data)
    return migrated_db, data


LOSE_A_DUPLICATE_OF_F1 = ("DELETE FROM ingest.duplicates WHERE id ="
                          " (SELECT max(id) FROM ingest.duplicates WHERE source_ref = %s)")


def superuser(db, statement: str, params=()) -> None:
    with contextlib.closing(db.connect("postgres")) as conn, conn.cursor() as cur:
        cur.execute(statement, params)


def tillflow(db, *args: str, role: str = "backup", url: str | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "PG"))}
    env = {**base, "TILLFLOW_ENV": "test", "DATABASE_URL": url or db.url(role)}
    return subprocess.run([TILLFLOW, "reconcile", *args], env=env, capture_output=True, text=True, timeout=120)


def as_json(done: subprocess.CompletedProcess) -> dict:
    assert "Traceback" not in done.stderr, done.stderr
    return json.loads(done.stdout)


def run(db, **options) -> reconcile.Result:
    with contextlib.closing(db.connect("backup")) as conn:
        return reconcile.run(conn, **options)


# -- a clean data set ---------------------------------------------------------------------


def test_a_consistent_data_set_reconciles_and_exits_0(loaded):
    db, data = loaded
    done = tillflow(db)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "all totals agree"

    doc = as_json(tillflow(db, "--format", "json"))
    assert doc["ok"] is True and doc["differences"] == 0
    assert doc["from"] is None and doc["to"] is None and doc["settle_seconds"] == 600
    assert {t["table"]: t["keys"] for t in doc["rollups"]["tables"]} == keys(data)
    assert all(t["differences"] == 0 and t["shown"] == [] for t in doc["rollups"]["tables"])
    assert {k: doc["files"][k] for k in ("checked", "differences", "pending", "shown", "pending_shown")} == {
        "checked": 5, "differences": 0, "pending": 0, "shown": [], "pending_shown": []}


def test_the_owner_and_a_superuser_may_run_it_the_reader_may_not(loaded):
    db, _ = loaded
    for role in ("owner", "postgres"):
        done = tillflow(db, role=role)
        assert done.returncode == 0, (role, done.stdout, done.stderr)
    refused = tillflow(db, role="reader")
    assert refused.returncode == 1 and refused.stdout == ""
    [line] = refused.stderr.splitlines()
    assert line.startswith("tillflow reconcile: reading sales and ingest failed: permission denied for schema sales")
    assert "run tillflow reconcile as tillflow_backup" in line


def test_errors_are_one_line_and_exit_1(migrated_db):
    down = tillflow(migrated_db, url="postgresql://tillflow_backup@127.0.0.1:1/nowhere")
    assert down.returncode == 1 and down.stdout == ""
    assert down.stderr.splitlines() == [down.stderr.strip()]
    assert down.stderr.startswith("tillflow reconcile: cannot connect to PostgreSQL at 127.0.0.1:1/nowhere as "
                                  "tillflow_backup to reconcile:")

    bare = tillflow(migrated_db, url=migrated_db.server.url())  # the server's own database: not migrated
    assert bare.returncode == 1 and len(bare.stderr.splitlines()) == 1
    assert "has no sales.daily_store_totals, sales.daily_product_totals, sales.products, ingest.duplicates" in bare.stderr
    assert "Traceback" not in down.stderr + bare.stderr


# -- rollups ------------------------------------------------------------------------------


def test_a_tampered_rollup_is_named_by_key_and_column(loaded):
    db, data = loaded
    expected = rollup_row(data, D5, "main")
    superuser(db, "UPDATE sales.daily_store_totals SET sell_amount_inc_tax = sell_amount_inc_tax + 1"
                  " WHERE transaction_date = %s AND store_id = 'main'", (D5,))
    deleted = sorted({r["name"] for r in data.stored if r["transaction_date"] == D6 and r["store_id"] != "smoke"})[0]
    superuser(db, "DELETE FROM sales.daily_product_totals WHERE transaction_date = %s AND name = %s", (D6, deleted))
    superuser(db, "INSERT INTO sales.daily_store_totals (transaction_date, store_id, buy_transactions,"
                  " buy_amount_inc_tax) VALUES ('2026-01-09', 'ghost', 2, 12.00)")

    done = tillflow(db)
    assert done.returncode == 1, done.stdout + done.stderr
    changed = expected["sell_amount_inc_tax"]
    assert (f"sales.daily_store_totals 2026-01-05 store_id='main' sell_amount_inc_tax: "
            f"rollup {changed + 1}, recomputed {changed}") in done.stdout
    assert "sales.daily_store_totals 2026-01-09 store_id='ghost' buy_transactions: rollup 2, recomputed absent" \
        in done.stdout
    assert f"sales.daily_product_totals 2026-01-06 name={deleted!r} sell_transactions: rollup absent, " \
           f"recomputed " in done.stdout
    assert done.stdout.splitlines()[-1] == "17 differences found"

    doc = as_json(tillflow(db, "--format", "json"))
    stores, products, names = doc["rollups"]["tables"]
    assert (stores["differences"], products["differences"], names["differences"], doc["differences"]) == (
        9, 8, 0, 17)
    assert stores["shown"][0] == {"transaction_date": "2026-01-05", "store_id": "main",
                                  "column": "sell_amount_inc_tax", "rollup": str(changed + 1),
                                  "recomputed": str(changed)}
    assert [(d["transaction_date"], d["store_id"], d["rollup"], d["recomputed"]) for d in stores["shown"][1:3]] == [
        ("2026-01-09", "ghost", 0, None), ("2026-01-09", "ghost", 0, None)]
    assert [d["column"] for d in stores["shown"][1:]] == list(reconcile.MEASURES)
    assert [(d["name"], d["column"], d["rollup"]) for d in products["shown"]] == [
        (deleted, column, None) for column in reconcile.MEASURES]
    assert products["shown"][0]["recomputed"] == sum(
        1 for r in data.stored if (r["transaction_date"], r["name"]) == (D6, deleted)
        and r["store_id"] != "smoke" and r["category"] == "SELL")
    assert doc["files"]["differences"] == 0, "the files do not read the rollups"


def test_the_output_is_bounded_and_the_count_complete(loaded):
    db, _ = loaded
    superuser(db, "UPDATE sales.daily_product_totals SET buy_quantity = buy_quantity + 1")
    result = run(db, limit=3)
    [stores, products, names] = result.rollups
    assert stores.differences == names.differences == 0 and products.differences == products.keys > 3
    assert [d.column for d in products.shown] == ["buy_quantity"] * 3
    assert [d.rollup - d.recomputed for d in products.shown] == [1, 1, 1]
    text = reconcile.render(result, "text")
    assert f"... and {products.differences - 3} more differences (3 shown)" in text


def test_a_rollup_row_of_a_synthetic_store_product_is_a_difference(loaded):
    """The canary's product must not be in the product rollup; counted there, it differs."""
    db, data = loaded
    [canary] = [r for r in data.stored if r["store_id"] == "smoke"]
    superuser(db, "UPDATE sales.daily_product_totals SET buy_transactions = buy_transactions + 1"
                  " WHERE transaction_date = %s AND name = %s", (D7, canary["name"]))
    result = run(db)
    assert [(d.table, d.key, d.column, d.rollup - (d.recomputed or 0)) for d in result.rollups[1].shown] == [
        ("sales.daily_product_totals", canary["name"], "buy_transactions", 1)]


# -- files --------------------------------------------------------------------------------


def test_a_file_that_falls_short_is_reported(loaded):
    db, data = loaded
    superuser(db, LOSE_A_DUPLICATE_OF_F1, (F1[1],))
    superuser(db, "UPDATE ingest.uploads SET amount_inc_tax_accepted = amount_inc_tax_accepted + 0.01"
                  " WHERE source = 'sqlite'")
    done = tillflow(db)
    assert done.returncode == 1, done.stdout + done.stderr
    assert ("file csv 'retail_05_01_2026.csv' rows: uploads 24, found 23 "
            "(stored 9, duplicates 8, conflicts 2, rejects 4)") in done.stdout

    doc = as_json(tillflow(db, "--format", "json"))
    assert doc["rollups"]["differences"] == 0 and doc["files"]["differences"] == 4
    shown = {(d["source"], d["file_name"], d["column"]): d for d in doc["files"]["shown"]}
    assert sorted(shown) == [("csv", F1[1], "amount_excl_tax"), ("csv", F1[1], "amount_inc_tax"),
                             ("csv", F1[1], "rows"), ("sqlite", "legacy.db", "amount_inc_tax")]
    last = [d for d in data.duplicates if d["source_ref"] == F1[1]][-1]
    lost = next(r for r in data.stored if r["id"] == last["transaction_id"])
    f1 = shown[("csv", F1[1], "amount_excl_tax")]
    assert Decimal(f1["expected"]) - Decimal(f1["found"]) == lost["amount_excl_tax"]
    assert f1["comparison"] == "equal"
    f2 = shown[("sqlite", "legacy.db", "amount_inc_tax")]
    assert Decimal(f2["expected"]) - Decimal(f2["found"]) == CENT
    assert f2["found_in"]["rejects"] == str(data.rejects[-1]["raw"]["amount_inc_tax"]), \
        "the refused row's amounts count, from raw"


def test_a_file_with_a_load_from_before_0009_is_held_to_a_ceiling(loaded):
    """Before 0009 no duplicate was recorded and no amount: such a file's rows can only be too many."""
    db, _ = loaded
    # F4 is such a file: a shortfall is what its unrecorded duplicates would look like; an excess is wrong.
    superuser(db, "UPDATE ingest.uploads SET rows_read = rows_read + 1 WHERE source = 'upload'")
    assert run(db).ok
    superuser(db, "UPDATE ingest.uploads SET rows_read = rows_read - 2 WHERE source = 'upload'")
    [f4] = run(db).files.shown
    assert (f4.file_name, f4.column, f4.expected, f4.found, f4.comparison) == (F4[1], "rows", 2, 3, "at most")

    # F1's first load becomes one from before 0009: its amounts are no longer comparable, its rows a ceiling.
    superuser(db, "UPDATE ingest.uploads SET amount_excl_tax_accepted = NULL, amount_inc_tax_accepted = NULL"
                  " WHERE id = (SELECT id FROM ingest.uploads WHERE file_name = %s ORDER BY finished_at LIMIT 1)",
              (F1[1],))
    superuser(db, "DELETE FROM ingest.conflicts WHERE id = (SELECT max(id) FROM ingest.conflicts)")
    superuser(db, "UPDATE sales.transactions SET amount_excl_tax = amount_excl_tax + 1,"
                  " amount_inc_tax = amount_inc_tax + 1.20 WHERE source = 'csv' AND source_ref = %s", (F1[1],))
    assert [(d.file_name, d.column) for d in run(db).files.shown] == [(F4[1], "rows")]
    superuser(db, "UPDATE ingest.uploads SET rows_read = 10 WHERE file_name = %s", (F1[1],))
    assert [(d.file_name, d.column, d.expected, d.found, d.comparison) for d in run(db).files.shown] == [
        (F1[1], "rows", 20, 23, "at most"), (F4[1], "rows", 2, 3, "at most")]


def test_a_file_inside_settle_is_pending_not_a_difference(loaded):
    db, _ = loaded
    conn = db.connect("writer")
    try:
        with conn.cursor() as cur:
            # Just published, and its rows not written yet.
            insert(cur, "ingest.uploads", {"file_name": "retail_08_01_2026.csv", "source": "csv", "sha256": "1" * 64,
                                           "size_bytes": 10, "rows_read": 7, "status": "published",
                                           "finished_at": datetime.datetime.now(UTC),
                                           "amount_excl_tax_accepted": Decimal("10.00"),
                                           "amount_inc_tax_accepted": Decimal("12.00")})
            # F3 loaded again, still running: its earlier, settled load is pending too.
            insert(cur, "ingest.uploads", {"file_name": F3[1], "source": F3[0], "sha256": "2" * 64,
                                           "size_bytes": 10, "status": "started"})
    finally:
        conn.close()
    done = tillflow(db)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "files: 4 checked, 2 pending (a load finished less than 600 s ago, or still running), 0 differences" \
        in done.stdout
    assert "pending csv 'retail_08_01_2026.csv': last load finished 20" in done.stdout
    assert f"pending csv {F3[1]!r}: a load started 20" in done.stdout

    settled = as_json(tillflow(db, "--settle", "0", "--format", "json"))
    assert settled["ok"] is False and settled["files"]["pending"] == 1, "a running load is pending whatever --settle"
    assert [(d["file_name"], d["column"], d["expected"], d["found"]) for d in settled["files"]["shown"]] == [
        ("retail_08_01_2026.csv", "rows", 7, 0), ("retail_08_01_2026.csv", "amount_excl_tax", "10.00", "0"),
        ("retail_08_01_2026.csv", "amount_inc_tax", "12.00", "0")]


def test_a_file_with_a_failed_load_is_held_to_a_floor(loaded):
    """A failed load's rows may have reached Kafka, beyond what it counted: only a shortfall is a difference."""
    db, data = loaded
    name = ("csv", "retail_09_01_2026.csv")
    extra = DataSet(rng=random.Random(9))
    first = [extra.tx(datetime.date(2026, 1, 9), name, line) for line in range(2, 6)]
    extra.stored += first[:3]  # the failed load delivered 3 rows, counted 2 (its last chunk unfinished)
    extra.upload(name, 2, at(9, 8), first[:2], status="failed")
    extra.stored.append(first[3])  # the reload: 4 rows, 3 of them stored already
    for row in first[:3]:
        extra.duplicate(row, name, row["source_line"])
    extra.upload(name, 4, at(9, 9), first)
    extra.offsets = itertools.count(10_000)
    write(db, extra)
    assert run(db).ok

    superuser(db, "UPDATE ingest.uploads SET rows_read = 8, amount_excl_tax_accepted = amount_excl_tax_accepted * 2"
                  " WHERE file_name = %s AND status = 'published'", (name[1],))
    result = run(db)
    [rows, excl] = result.files.shown
    assert (rows.column, rows.expected, rows.found, rows.comparison) == ("rows", 8, 7, "at least")
    assert (excl.column, excl.comparison) == ("amount_excl_tax", "at least")
    assert "uploads at least 8, found 7" in reconcile.render(result, "text")


def test_from_and_to_limit_both_checks(loaded):
    db, data = loaded
    superuser(db, "UPDATE sales.daily_store_totals SET buy_quantity = buy_quantity + 5"
                  " WHERE transaction_date = %s AND store_id = 'main'", (D5,))
    superuser(db, LOSE_A_DUPLICATE_OF_F1, (F1[1],))

    # The 6th: its rollup keys, and the files a published load of which finished that day (UTC): F3.
    sixth = tillflow(db, "--from", "2026-01-06", "--to", "2026-01-06", "--format", "json")
    assert sixth.returncode == 0, sixth.stdout + sixth.stderr
    doc = as_json(sixth)
    assert (doc["from"], doc["to"]) == ("2026-01-06", "2026-01-06")
    assert {t["table"]: t["keys"] for t in doc["rollups"]["tables"]} == keys(data, {D6})
    assert doc["files"]["checked"] == 1

    first = tillflow(db, "--to", "2026-01-05", "--format", "json")
    assert first.returncode == 1
    doc = as_json(first)
    assert {t["table"]: t["keys"] for t in doc["rollups"]["tables"]} == keys(data, {D5})
    assert [(d["transaction_date"], d["store_id"], d["column"]) for d in doc["rollups"]["tables"][0]["shown"]] == [
        ("2026-01-05", "main", "buy_quantity")]
    # F1's first load finished on the 5th; both its loads are added up.
    assert doc["files"]["checked"] == 1
    assert {(d["file_name"], d["column"]) for d in doc["files"]["shown"]} == {
        (F1[1], "rows"), (F1[1], "amount_excl_tax"), (F1[1], "amount_inc_tax")}

    seventh = as_json(tillflow(db, "--from", "2026-01-07", "--format", "json"))
    assert {t["table"]: t["keys"] for t in seventh["rollups"]["tables"]} == keys(data, {D7})
    assert seventh["rollups"]["differences"] == 0
    assert seventh["files"]["checked"] == 4 and seventh["files"]["differences"] == 3  # F1 again, F2, F4, F5

    nothing = as_json(tillflow(db, "--from", "2026-01-10", "--format", "json"))
    assert nothing["ok"] and nothing["files"]["checked"] == 0
    assert [t["keys"] for t in nothing["rollups"]["tables"]] == [0, 0]


def test_a_date_range_that_ends_before_it_starts_is_a_usage_error(migrated_db):
    done = tillflow(migrated_db, "--from", "2026-01-06", "--to", "2026-01-05")
    assert done.returncode == 2 and "--from 2026-01-06 is after --to 2026-01-05" in done.stderr
    done = tillflow(migrated_db, "--settle", "-1")
    assert done.returncode == 2 and "must be 0 seconds or more" in done.stderr


def test_the_connection_is_left_as_it_was(loaded):
    db, _ = loaded
    with contextlib.closing(db.connect("backup")) as conn:
        assert reconcile.run(conn).ok
        assert conn.autocommit and conn.status == psycopg2.extensions.STATUS_READY
        conn.autocommit = False
        assert reconcile.run(conn, files=False).files is None
        assert not conn.autocommit and conn.status == psycopg2.extensions.STATUS_READY


def test_the_product_list_is_compared_with_the_products_traded(loaded):
    db, data = loaded
    traded = sorted({r["name"] for r in data.stored if r["store_id"] != "smoke"})
    superuser(db, "DELETE FROM sales.products WHERE name = %s", (traded[0],))
    superuser(db, "INSERT INTO sales.products VALUES ('never traded')")
    done = tillflow(db)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"sales.products name={traded[0]!r} listed: rollup 0, recomputed 1" in done.stdout
    assert "sales.products name='never traded' listed: rollup 1, recomputed 0" in done.stdout
    dated = tillflow(db, "--from", "2026-01-05")
    assert dated.returncode == 0 and "sales.products" not in dated.stdout, "no date: whole history only"
