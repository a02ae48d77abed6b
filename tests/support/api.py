"""The API under test: ``tillflow serve`` as a real process, and what its tests share.

``ApiServer`` runs the console script on a free port with a test's environment
(its database and topics) and stops it with SIGTERM, checking that it exits
cleanly. The other helpers run ``tillflow`` commands, drain Kafka into
PostgreSQL and read back what was stored, always as sets of ids.
"""
from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

import httpx
import psycopg2
from kafka import KafkaConsumer, TopicPartition

from devstack.proc import free_port

TILLFLOW = str(Path(sys.executable).with_name("tillflow"))
DAY = datetime.date(2026, 1, 5)


class ApiServer:
    """``tillflow serve`` on 127.0.0.1:<free port>; ``url``, ``ws_url``, ``log``."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.env = {**os.environ, **env, "API_HOST": "127.0.0.1", "API_PORT": str(self.port)}
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/v1/stream"
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> ApiServer:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([TILLFLOW, "serve"], env=self.env, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"tillflow serve exited {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"tillflow serve did not answer /healthz within {timeout}s:\n{self.log()}")

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"/readyz did not answer 200 within {timeout}s")

    def stop(self) -> int:
        """SIGTERM, then the exit status (SIGKILL after 30 s)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError(f"tillflow serve ignored SIGTERM for 30 s:\n{self.log()}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self, token: str | None, **kwargs) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=kwargs.pop("timeout", 60), **kwargs)


def tillflow(env: dict, *args: str, timeout: float = 180, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([TILLFLOW, *args], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"tillflow {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def consume_until_idle(env: dict, idle: float = 3) -> None:
    tillflow(env, "consume", "--until-idle", str(idle), timeout=600)


def query(db, sql: str, params: tuple = ()) -> list[tuple]:
    conn = psycopg2.connect(db.url("postgres"))
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.close()


def stored_ids(db) -> set[str]:
    return {row[0] for row in query(db, "SELECT id::text FROM sales.transactions")}


def assert_each_stored_once(db) -> None:
    assert query(db, "SELECT count(*) = count(DISTINCT id) FROM sales.transactions") == [(True,)]


def topic_size(bootstrap: str, topic: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        return sum(consumer.end_offsets(partitions).values())
    finally:
        consumer.close()


def transaction(*, store_id: str | None = None, **changes) -> dict:
    """A valid transaction as a JSON-ready dict, with a fresh id."""
    excl = Decimal(changes.pop("cents", 250)) / 100
    doc = {
        "id": str(uuid.uuid4()), "transaction_date": DAY.isoformat(), "category": "SELL", "name": "Milk",
        "quantity": 2, "amount_excl_tax": str(excl), "amount_inc_tax": str((excl * Decimal("1.2")).quantize(
            Decimal("0.01"))),
    }
    if store_id is not None:
        doc["store_id"] = store_id
    doc.update(changes)
    return doc


def wait_for(predicate, timeout: float, what: str, every: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
