"""Helpers for tests that drive Tillflow end to end: run the ``tillflow``
command, drain Kafka into PostgreSQL, and read what was stored."""
from __future__ import annotations

import os
import subprocess
import sys
import time
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
    """The ``stored()`` view of generated rows (``devstack.datagen.Row``)."""
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


def wait_for(predicate, timeout: float, what: str, every: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
