"""PostgreSQL for the sources: a few short queries (the API runs them on worker threads).

The sources need the database only to look tokens up (the API caches them, see
``etl.api.auth``), to record uploads and to read them back (``etl.uploads``)
and to manage tokens (``etl.api.tokens``): the API keeps publishing to Kafka
for known tokens while PostgreSQL is down. This is the package's one boundary
with psycopg2: its errors become ``SinkError`` here (``tillflow.pg``). Connections are opened on first use
(the API starts even when the database does not answer) and kept open between
queries, at most one per worker thread: opening one costs a SCRAM handshake,
milliseconds of CPU on both sides, far more than the query. A connection that
fails is dropped; a query that fails on a connection kept from before (the
server restarted meanwhile) is tried once more on a fresh one, which is safe
for the sources' queries (a read, setting ``last_used_at``, or a statement
that failed before it reached the server). Every failure is a ``SinkError``
whose message holds no password.
"""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import psycopg2

from tillflow.errors import SinkError
from tillflow.pg import UNAVAILABLE, connect, translated

_MAX_CONNECTIONS = 4


class Database:
    def __init__(self, url: str, *, max_connections: int = _MAX_CONNECTIONS, application: str = "tillflow-api") -> None:
        self._url = url
        self._application = application
        self._idle: list = []  # open connections between queries; at most one per worker thread
        self._lock = threading.Lock()
        self._closed = False
        self._executor = ThreadPoolExecutor(max_workers=max_connections, thread_name_prefix="tillflow-db")

    def _connect(self):
        return connect(self._url, self._application, timeout=5, autocommit=True)

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

    def run(self, query: str, params: tuple = (), *, doing: str = "PostgreSQL refused a query",
            denied: str | None = None, missing: str | None = None) -> list[tuple]:
        """Run one statement (autocommit); its rows, or [] when it returns none.

        A failure is a ``SinkError`` saying ``doing``, then ``denied`` or
        ``missing`` for a role without the privilege or a schema not migrated.
        """
        conn, kept = self._get()
        with translated(SinkError, doing, denied=denied, missing=missing):
            try:
                return self._once(conn, query, params)
            except UNAVAILABLE:
                if not kept:
                    raise
            # The kept connection was dead (PostgreSQL restarted): once more on a fresh one.
            return self._once(self._connect(), query, params)

    def _once(self, conn, query: str, params: tuple) -> list[tuple]:
        broken = False
        try:
            with conn.cursor() as cur:
                cur.execute(query, params)
                return cur.fetchall() if cur.description else []
        except UNAVAILABLE:
            broken = True
            raise
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
