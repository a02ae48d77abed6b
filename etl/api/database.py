"""PostgreSQL for the API: a few short queries, run on worker threads.

The API needs the database only to look tokens up (then cached, see ``auth``),
to record uploads and to read them back: it keeps publishing to Kafka for
known tokens while PostgreSQL is down. Connections come from a small pool,
opened on first use (the API starts even when the database does not answer)
and dropped when they fail, so the next query reconnects. Every failure is a
``SinkError`` whose message holds no password.
"""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import psycopg2
import psycopg2.pool

from tillflow.errors import SinkError

_MAX_CONNECTIONS = 4


class Database:
    def __init__(self, url: str, *, max_connections: int = _MAX_CONNECTIONS) -> None:
        self._url = url
        self._max = max_connections
        self._pool: psycopg2.pool.ThreadedConnectionPool | None = None
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=max_connections, thread_name_prefix="tillflow-db")

    def _get(self):
        with self._lock:
            if self._pool is None:
                try:
                    self._pool = psycopg2.pool.ThreadedConnectionPool(
                        0, self._max, self._url, connect_timeout=5, application_name="tillflow-api")
                except psycopg2.Error as exc:
                    raise SinkError(f"PostgreSQL is unreachable: {_first(exc)}") from exc
            pool = self._pool
        try:
            conn = pool.getconn()
        except psycopg2.pool.PoolError as exc:
            raise SinkError(f"no PostgreSQL connection is free: {exc}") from exc
        except psycopg2.Error as exc:
            raise SinkError(f"PostgreSQL is unreachable: {_first(exc)}") from exc
        conn.autocommit = True
        return pool, conn

    def run(self, query: str, params: tuple = ()) -> list[tuple]:
        """Run one statement (autocommit); its rows, or [] when it returns none."""
        pool, conn = self._get()
        broken = False
        try:
            with conn.cursor() as cur:
                cur.execute(query, params)
                return cur.fetchall() if cur.description else []
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            broken = True
            raise SinkError(f"PostgreSQL is unreachable: {_first(exc)}") from exc
        except psycopg2.Error as exc:
            raise SinkError(f"PostgreSQL refused a query: {_first(exc)}") from exc
        finally:
            try:
                pool.putconn(conn, close=broken or bool(conn.closed))
            except psycopg2.pool.PoolError:
                pass

    async def query(self, query: str, params: tuple = ()) -> list[tuple]:
        """``run`` on a worker thread, so that the event loop never waits for PostgreSQL."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, partial(self.run, query, params))

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.closeall()
                self._pool = None
        self._executor.shutdown(wait=False, cancel_futures=True)


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
