"""Who is calling: a bearer token, checked against ``api.tokens``, bound to one store.

``Authenticator.authenticate(header)`` returns the caller's :class:`Principal`
or raises ``Unauthorized``, whose answer is the same whatever was wrong (no
header, another scheme, a malformed token, an unknown id, a wrong secret, a
revoked token). The secret's digest is compared in constant time, and an
unknown id costs the same comparison against a dummy digest.

Token rows are cached for ``API_AUTH_CACHE_SECONDS`` (unknown ids too, so that
random tokens cannot make every request query PostgreSQL), in a bounded LRU:
a revocation takes effect within that time. When an entry expires, the
requests that need it meanwhile share one query (no stampede on PostgreSQL
every ``API_AUTH_CACHE_SECONDS`` under load). If a row is not cached and
PostgreSQL does not answer, the caller gets 503, not 401. ``last_used_at`` is
written at most once a minute per token, in the background.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial

from etl.api import metrics, tokens
from etl.database import Database
from etl.api.errors import Unauthorized, Unavailable
from tillflow.errors import SinkError

log = logging.getLogger("tillflow.api")

_CACHE_ENTRIES = 4096
_TOUCH_EVERY = 60.0
_DUMMY = tokens.digest("not a token")


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: its token id and the one store it may write."""

    token_id: str
    store_id: str


@dataclass(slots=True)
class _Row:
    secret_sha256: bytes | None  # None: no such token
    store_id: str
    revoked: bool
    fetched: float
    touched: float = 0.0


class Authenticator:
    def __init__(self, db: Database, cache_seconds: float) -> None:
        self._db = db
        self._ttl = cache_seconds
        self._cache: OrderedDict[str, _Row] = OrderedDict()
        self._background: set[asyncio.Task] = set()
        self._fetching: dict[str, asyncio.Task] = {}  # token id -> its lookup in progress

    async def authenticate(self, header: str | None) -> Principal:
        scheme, _, token = (header or "").partition(" ")
        parsed = tokens.parse(token.strip()) if scheme.lower() == "bearer" else None
        if parsed is None:
            metrics.AUTH_FAILURES.labels(reason="malformed" if header else "missing").inc()
            raise Unauthorized()
        token_id, secret = parsed
        row = await self._row(token_id)
        good = tokens.matches(secret, row.secret_sha256 if row.secret_sha256 is not None else _DUMMY)
        if not good or row.secret_sha256 is None or row.revoked:
            reason = "unknown" if row.secret_sha256 is None else "revoked" if good else "wrong_secret"
            metrics.AUTH_FAILURES.labels(reason=reason).inc()
            raise Unauthorized()
        self._touch(token_id, row)
        return Principal(token_id, row.store_id)

    async def _row(self, token_id: str) -> _Row:
        row = self._cache.get(token_id)
        if row is not None and time.monotonic() - row.fetched < self._ttl:
            self._cache.move_to_end(token_id)
            return row
        fetching = self._fetching.get(token_id)
        if fetching is None:
            fetching = asyncio.get_running_loop().create_task(self._fetch(token_id, row))
            self._fetching[token_id] = fetching
            fetching.add_done_callback(partial(_fetched, self._fetching, token_id))
        return await asyncio.shield(fetching)  # a caller that goes away does not cancel the others' lookup

    async def _fetch(self, token_id: str, row: _Row | None) -> _Row:
        try:
            found = await self._db.query(
                "SELECT secret_sha256, store_id, revoked_at IS NOT NULL FROM api.tokens WHERE id = %s", (token_id,))
        except SinkError as exc:
            log.warning("cannot check token %s: %s", token_id, exc)
            raise Unavailable("the token cannot be checked right now (database unavailable): try again",
                              code="database_unavailable") from exc
        now = time.monotonic()
        if found:
            digest, store_id, revoked = found[0]
            fresh = _Row(bytes(digest), store_id, revoked, now, row.touched if row else 0.0)
        else:
            fresh = _Row(None, "", True, now)
        self._cache[token_id] = fresh
        self._cache.move_to_end(token_id)
        while len(self._cache) > _CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return fresh

    def _touch(self, token_id: str, row: _Row) -> None:
        now = time.monotonic()
        if now - row.touched < _TOUCH_EVERY:
            return
        row.touched = now
        task = asyncio.get_running_loop().create_task(self._write_last_used(token_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _write_last_used(self, token_id: str) -> None:
        try:
            await self._db.query("UPDATE api.tokens SET last_used_at = now() WHERE id = %s", (token_id,))
        except SinkError as exc:  # informative only: never fails a request
            log.debug("could not record the use of token %s: %s", token_id, exc)

    async def close(self) -> None:
        for task in (*self._background, *self._fetching.values()):
            task.cancel()


def _fetched(fetching: dict[str, asyncio.Task], token_id: str, task: asyncio.Task) -> None:
    if fetching.get(token_id) is task:
        del fetching[token_id]
    if not task.cancelled():
        task.exception()  # retrieved: every caller waiting for it got it already
