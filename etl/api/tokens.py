"""API bearer tokens: their form, their hash, and ``tillflow token create|list|revoke``.

A token reads ``tillflow_<id>_<secret>``: ``id`` is 12 hex digits and public
(it names the token in listings, logs and revocations), ``secret`` is 32 random
bytes in base64url. Only ``sha256(secret)`` is stored, in ``api.tokens``
(postgres/migrations/0005_api_tokens.sql explains why a fast hash suffices).
The secret is shown once, by ``create``, and never again.

The commands connect with ``DATABASE_URL`` as ``tillflow_owner`` (``make
local`` writes that URL into ``.local/env``); the API itself, as
``tillflow_writer``, may only read tokens.
"""
from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import re
import secrets
import sys
from dataclasses import dataclass
from typing import TextIO

from etl.database import Database
from tillflow.errors import InputError
from tillflow.record import check_store_id

PREFIX = "tillflow_"
_ID_HEX = 12
_SECRET_BYTES = 32
_TOKEN = re.compile(r"tillflow_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_STORE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_NAME_CHARS = 200


def new_token() -> tuple[str, str, bytes]:
    """A fresh token: (token text, public id, sha256 of its secret)."""
    token_id = secrets.token_hex(_ID_HEX // 2)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(_SECRET_BYTES)).rstrip(b"=").decode("ascii")
    return f"{PREFIX}{token_id}_{secret}", token_id, digest(secret)


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


def parse(token: str) -> tuple[str, str] | None:
    """(id, secret) of a token in the right form, else None."""
    match = _TOKEN.fullmatch(token)
    return (match.group(1), match.group(2)) if match else None


def matches(secret: str, stored: bytes) -> bool:
    """Whether ``secret`` hashes to ``stored``, compared in constant time."""
    return hmac.compare_digest(digest(secret), stored)


@dataclass(frozen=True)
class TokenInfo:
    id: str
    store_id: str
    name: str
    created_at: datetime.datetime
    revoked_at: datetime.datetime | None
    last_used_at: datetime.datetime | None


def _run(url: str, query: str, params: tuple = ()) -> list[tuple]:
    db = Database(url, max_connections=1, application="tillflow-token")
    try:
        return db.run(query, params, doing="cannot manage API tokens",
                      denied="DATABASE_URL's role may not manage API tokens: connect as tillflow_owner"
                             " (with `make local`: source .local/env)",
                      missing="api.tokens does not exist: run `tillflow migrate` first")
    finally:
        db.close()


def create(url: str, store_id: str, name: str = "") -> str:
    """Create a token for ``store_id``; return the token text (shown only now)."""
    problem = check_store_id(store_id)
    if problem is None and not _STORE.fullmatch(store_id):
        problem = f"store id {store_id!r} must start with a letter or a digit"
    if problem:
        raise InputError(problem)
    if len(name) > MAX_NAME_CHARS or any(not ch.isprintable() for ch in name):
        raise InputError(f"--name must be at most {MAX_NAME_CHARS} printable characters")
    token, token_id, secret_hash = new_token()
    _run(url, "INSERT INTO api.tokens (id, secret_sha256, store_id, name) VALUES (%s, %s, %s, %s)",
         (token_id, secret_hash, store_id, name))
    return token


def list_tokens(url: str) -> list[TokenInfo]:
    rows = _run(url, "SELECT id, store_id, name, created_at, revoked_at, last_used_at FROM api.tokens"
                     " ORDER BY created_at, id")
    return [TokenInfo(*row) for row in rows]


def revoke(url: str, token_id: str) -> bool:
    """Revoke a token; False if it was already revoked. InputError if there is no such token."""
    if not re.fullmatch(r"[0-9a-f]{12}", token_id):
        raise InputError(f"{token_id!r} is not a token id (12 hex digits, as `tillflow token list` shows)")
    rows = _run(url, "WITH found AS (SELECT id, revoked_at FROM api.tokens WHERE id = %s),"
                     " done AS (UPDATE api.tokens SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL"
                     " RETURNING id) SELECT (SELECT count(*) FROM found), (SELECT count(*) FROM done)",
                (token_id, token_id))
    found, done = rows[0]
    if not found:
        raise InputError(f"no token {token_id}: see `tillflow token list`")
    return bool(done)


def _when(value: datetime.datetime | None) -> str:
    return value.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"


def cli_create(url: str, store_id: str, name: str | None, out: TextIO | None = None) -> int:
    """``tillflow token create``: the token alone on stdout, so that scripts can capture it."""
    print(create(url, store_id, name or ""), file=out or sys.stdout)
    return 0


def cli_list(url: str, out: TextIO | None = None) -> int:
    """``tillflow token list``: ids, stores and dates; never a secret."""
    out = out or sys.stdout
    rows = [("ID", "STORE", "NAME", "CREATED", "LAST USED", "REVOKED")]
    rows += [(t.id, t.store_id, t.name or "-", _when(t.created_at), _when(t.last_used_at), _when(t.revoked_at))
             for t in list_tokens(url)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip(), file=out)
    return 0


def cli_revoke(url: str, token_id: str, out: TextIO | None = None) -> int:
    """``tillflow token revoke``: the API refuses the token within API_AUTH_CACHE_SECONDS."""
    revoked = revoke(url, token_id)
    print(f"token {token_id} {'revoked' if revoked else 'was already revoked'}", file=out or sys.stdout)
    return 0
