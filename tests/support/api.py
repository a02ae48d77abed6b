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
import time
import uuid
from decimal import Decimal
from pathlib import Path

import httpx

from devstack.proc import free_port
from support.pipeline import (  # noqa: F401 (re-exported for the API tests)
    TILLFLOW, consume_until_idle, query, stored_ids, tillflow, topic_size, wait_for,
)

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


def assert_each_stored_once(db) -> None:
    assert query(db, "SELECT count(*) = count(DISTINCT id) FROM sales.transactions") == [(True,)]


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
