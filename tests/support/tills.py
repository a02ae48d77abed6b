"""Tills posting at a steady rate through the API, retrying as the README tells a till to.

``SteadyTills`` posts a batch of ``batch`` new transactions every ``every``
seconds (batch / every transactions a second) to one of several API addresses
(the hosts of a swarm). A request that fails (no connection, a timeout, a 5xx
such as 503 "Kafka did not acknowledge") is sent again, with the same ids, to
the next address after ``retry_pause`` seconds, until it is acknowledged (200):
the documented retry, which ids make safe. It records every id sent, every id
acknowledged, each acknowledgement's time and every failed attempt, so a test
can compare sets of ids with what PostgreSQL stored and measure the longest
time without an acknowledgement.
"""
from __future__ import annotations

import threading
import time
import uuid

import httpx

from support.api import transaction as api_transaction


def transaction() -> dict:
    return api_transaction(store_id="main", cents=100 + uuid.uuid4().int % 9000)


class SteadyTills:
    def __init__(self, urls: list[str], token: str, batch: int = 5, every: float = 0.2,
                 timeout: float = 5.0, retry_pause: float = 0.2) -> None:
        self.urls, self.token, self.batch, self.every = list(urls), token, batch, every
        self.timeout, self.retry_pause = timeout, retry_pause
        self.sent: set[str] = set()
        self.acknowledged: set[str] = set()
        self.ack_times: list[float] = []
        self.failures: list[tuple[float, str]] = []  # (time, why) of each failed attempt
        self.abandoned = 0  # batches still unacknowledged when stopped
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="tills")
        self._lock = threading.Lock()
        self._next = 0

    def __enter__(self) -> SteadyTills:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=120)
        self.stopped = time.monotonic()

    def _post(self, client: httpx.Client, items: list[dict]) -> bool:
        url = self.urls[self._next % len(self.urls)]
        try:
            answer = client.post(f"{url}/v1/transactions", json=items)
        except httpx.HTTPError as exc:
            self.failures.append((time.monotonic(), f"{url}: {type(exc).__name__}"))
            self._next += 1
            return False
        if answer.status_code == 200:
            return True
        self.failures.append((time.monotonic(), f"{url}: {answer.status_code}"))
        if answer.status_code >= 500 or answer.status_code == 429:
            self._next += 1
            return False
        raise AssertionError(f"{url} refused a valid batch: {answer.status_code} {answer.text[:300]}")

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        due = time.monotonic()
        with httpx.Client(headers=headers, timeout=self.timeout) as client:
            while not self._stop.is_set():
                items = [transaction() for _ in range(self.batch)]
                with self._lock:
                    self.sent |= {i["id"] for i in items}
                while not self._post(client, items):
                    if self._stop.wait(self.retry_pause):
                        self.abandoned += 1
                        return
                with self._lock:
                    self.acknowledged |= {i["id"] for i in items}
                    self.ack_times.append(time.monotonic())
                due += self.every
                self._stop.wait(max(0.0, due - time.monotonic()))
                due = max(due, time.monotonic() - self.every)  # behind: catch up, never burst

    # ------------------------------------------------------------ reading
    def count(self) -> int:
        with self._lock:
            return len(self.acknowledged)

    def wait_acknowledged(self, more: int, timeout: float = 120) -> float:
        """Until ``more`` further transactions are acknowledged; the seconds it took."""
        started = time.monotonic()
        target = self.count() + more
        while self.count() < target:
            if time.monotonic() - started > timeout:
                raise AssertionError(f"{more} more acknowledged: not within {timeout:.0f}s "
                                     f"(last failures: {self.failures[-3:]})")
            time.sleep(0.2)
        return time.monotonic() - started

    def longest_gap(self, since: float | None = None, until: float | None = None) -> float:
        """The longest time without an acknowledgement between ``since`` and ``until`` (monotonic)."""
        with self._lock:
            times = list(self.ack_times)
        since = times[0] if since is None else since
        until = times[-1] if until is None else until
        inside = [since] + [t for t in times if since < t < until] + [until]
        return max(b - a for a, b in zip(inside, inside[1:]))

    def failures_between(self, since: float, until: float) -> int:
        return sum(1 for t, _ in self.failures if since <= t <= until)
