"""PostgreSQL for the API: a few short queries, run on worker threads.

The API needs the database only to look tokens up (then cached, see ``auth``),
to record uploads and to read them back: it keeps publishing to Kafka for
known tokens while PostgreSQL is down. Connections are opened on first use
(the API starts even when the database does not answer) and kept open between
queries, at most one per worker thread: opening one costs a SCRAM handshake,
milliseconds of CPU on both sides, far more than the query. A connection that
fails is dropped; a query that fails on a connection kept from before (the
server restarted meanwhile) is tried once more on a fresh one, which is safe
for the API's queries (a read, or setting ``last_used_at``). Every failure is
a ``SinkError`` whose message holds no password.
"""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import psycopg2

from tillflow.errors import SinkError, first_line

_MAX_CONNECTIONS = 4
_LOST = (psycopg2.OperationalError, psycopg2.InterfaceError)


class Database:
    def __init__(self, url: str, *, max_connections: int = _MAX_CONNECTIONS) -> None:
        self._url = url
        self._idle: list = []  # open connections between queries; at most one per worker thread
        self._lock = threading.Lock()
        self._closed = False
        self._executor = ThreadPoolExecutor(max_workers=max_connections, thread_name_prefix="tillflow-db")

    def _connect(self):
        try:
            conn = psycopg2.connect(self._url, connect_timeout=5, application_name="tillflow-api")
        except psycopg2.Error as exc:
            raise SinkError(f"PostgreSQL is unreachable: {first_line(exc)}") from exc
        conn.autocommit = True
        return conn

    def _get(self) -> tuple[object, bool]:
        """A connection, and whether it was kept from an earlier query."""
        with self._lock:
            if self._closed:
                raise SinkError("the API is shutting down")
            if self._idle:
                return self._idle.pop(), True
        return self._connect(), False

    def _put(self, conn, broken: bool) -> None:
        if not broken and not conn.closed:
            with self._lock:
                if not self._closed:
                    self._idle.append(conn)
                    return
        try:
            conn.close()
        except psycopg2.Error:
            pass

    def run(self, query: str, params: tuple = ()) -> list[tuple]:
        """Run one statement (autocommit); its rows, or [] when it returns none."""
        conn, kept = self._get()
        try:
            return self._once(conn, query, params)
        except _LOST as exc:
            if not kept:
                raise SinkError(f"PostgreSQL is unreachable: {first_line(exc)}") from exc
        try:  # the kept connection was dead (PostgreSQL restarted): once more on a fresh one
            return self._once(self._connect(), query, params)
        except _LOST as exc:
            raise SinkError(f"PostgreSQL is unreachable: {first_line(exc)}") from exc

    def _once(self, conn, query: str, params: tuple) -> list[tuple]:
        broken = False
        try:
            with conn.cursor() as cur:
                cur.execute(query, params)
                return cur.fetchall() if cur.description else []
        except _LOST:
            broken = True
            raise
        except psycopg2.Error as exc:
            raise SinkError(f"PostgreSQL refused a query: {first_line(exc)}") from exc
        finally:
            self._put(conn, broken)

    async def query(self, query: str, params: tuple = ()) -> list[tuple]:
        """``run`` on a worker thread, so that the event loop never waits for PostgreSQL."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, partial(self.run, query, params))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            try:
                conn.close()
            except psycopg2.Error:
                pass
        self._executor.shutdown(wait=False, cancel_futures=True)
