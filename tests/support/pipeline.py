"""Helpers for tests that drive Tillflow end to end: run the ``tillflow``
command, drain Kafka into PostgreSQL, and read what was stored."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import psycopg2
from kafka import KafkaConsumer, TopicPartition

TILLFLOW = str(Path(sys.executable).with_name("tillflow"))


def tillflow(env: dict, *args: str, timeout: float = 180, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``tillflow ARGS`` with ``env`` over the process environment."""
    done = subprocess.run([TILLFLOW, *args], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"tillflow {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def consume_until_idle(env: dict, idle: float = 3) -> subprocess.CompletedProcess:
    """Drain both topics into PostgreSQL with a real consumer process."""
    return tillflow(env, "consume", "--until-idle", str(idle), timeout=600)


def start_consumer(env: dict, log_path: Path) -> subprocess.Popen:
    log = open(log_path, "ab")
    try:
        return subprocess.Popen([TILLFLOW, "consume"], env={**os.environ, **env}, stdout=log, stderr=log)
    finally:
        log.close()


def query(db, sql: str, params: tuple = ()) -> list[tuple]:
    """Run a query as the superuser on the test's database."""
    conn = psycopg2.connect(db.url("postgres"))
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.close()


def stored(db) -> dict[str, tuple]:
    """Stored transactions by id: (date, category, name, quantity, excl, inc)."""
    rows = query(db, "SELECT id::text, transaction_date, category, name, quantity, amount_excl_tax, amount_inc_tax"
                     " FROM sales.transactions")
    return {r[0]: r[1:] for r in rows}


def stored_ids(db) -> set[str]:
    return {row[0] for row in query(db, "SELECT id::text FROM sales.transactions")}


def expected(items) -> dict[str, tuple]:
    """The ``stored()`` view of generated rows (``devstack.sample.Row``)."""
    return {r.id: (r.transaction_date, r.category, r.name, r.quantity, r.amount_excl_tax, r.amount_inc_tax)
            for r in items}


def topic_size(bootstrap: str, topic: str) -> int:
    """Records ever written to a topic (sum of its partitions' end offsets)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        return sum(consumer.end_offsets(partitions).values())
    finally:
        consumer.close()


def wait_for(predicate, timeout: float = 20, what: str = "the condition", every: float = 0.25):
    """The first truthy value of ``predicate()`` within ``timeout`` seconds, else AssertionError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# The rollups' columns after their key, in table order (postgres/migrations/0009_rollups.sql).
ROLLUP_COLUMNS = ("sell_transactions", "sell_quantity", "sell_amount_excl_tax", "sell_amount_inc_tax",
                  "buy_transactions", "buy_quantity", "buy_amount_excl_tax", "buy_amount_inc_tax")


def rollups(db) -> dict[str, dict[tuple, tuple]]:
    """The rollup tables as stored: table -> key -> aggregates."""
    found = {}
    for table, key in (("daily_store_totals", "store_id"), ("daily_product_totals", "name")):
        rows = query(db, f"SELECT transaction_date, {key}, {', '.join(ROLLUP_COLUMNS)} FROM sales.{table}")
        found[table] = {(r[0], r[1]): tuple(r[2:]) for r in rows}
    found["products"] = {(name,): () for (name,) in query(db, "SELECT name FROM sales.products")}
    return found


def rollups_from_raw(db) -> dict[str, dict[tuple, tuple]]:
    """The rollups computed here, in Python with Decimal, from the stored rows."""
    synthetic = {s for (s,) in query(db, "SELECT store_id FROM sales.synthetic_stores")}
    zero = Decimal("0.00")
    stores: dict[tuple, list] = defaultdict(lambda: [0, 0, zero, zero, 0, 0, zero, zero])
    products: dict[tuple, list] = defaultdict(lambda: [0, 0, zero, zero, 0, 0, zero, zero])
    for day, store, name, category, quantity, excl, inc in query(
            db, "SELECT transaction_date, store_id, name, category, quantity, amount_excl_tax, amount_inc_tax"
                " FROM sales.transactions"):
        at = 0 if category == "SELL" else 4
        targets = [stores[(day, store)]] + ([] if store in synthetic else [products[(day, name)]])
        for totals in targets:
            totals[at] += 1
            totals[at + 1] += quantity
            totals[at + 2] += excl
            totals[at + 3] += inc
    return {"daily_store_totals": {k: tuple(v) for k, v in stores.items()},
            "daily_product_totals": {k: tuple(v) for k, v in products.items()},
            "products": {(name,): () for _day, name in products}}


def assert_rollups_match(db) -> None:
    """Both rollups hold exactly the aggregates of the stored rows: no key missing or extra, every sum exact."""
    want, got = rollups_from_raw(db), rollups(db)
    for table in want:
        missing = sorted(set(want[table]) - set(got[table]), key=repr)
        extra = sorted(set(got[table]) - set(want[table]), key=repr)
        wrong = {k: (got[table][k], want[table][k]) for k in want[table].keys() & got[table].keys()
                 if got[table][k] != want[table][k]}
        assert not (missing or extra or wrong), (
            f"sales.{table} differs from its rows: missing {missing[:5]}, extra {extra[:5]},"
            f" wrong (stored, computed) {list(wrong.items())[:5]}")
