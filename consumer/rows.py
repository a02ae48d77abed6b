"""Transaction messages straight to COPY text: the consumer's hot path.

The sink COPYs a transaction as the text of its columns, so the consumer never
needs the values themselves (a UUID, a date and two Decimals per row): only the
certainty that they are valid, and their canonical text.

:func:`fast_row` gets both from the bytes of a message laid out exactly as
:func:`tillflow.messages.encode_transaction` writes it, with one regular
expression: ids, dates, amounts and quantities in canonical form are their own
COPY text. The free text (product names, stores, origins) and the dates are
asked of the record module's own per-field checks (``tillflow.record.canonical_*``,
which the sources' fast path calls too) once per distinct value, as is what each
reads as in COPY text: they repeat from row to row, so the answers are cached.

Every message it cannot vouch for (another layout or key order, a
non-canonical number, a value that breaks a rule) gets None, and goes the
reference way:
:func:`tillflow.messages.decode`, then :func:`row_of`. For every message the
fast path accepts, the reference path accepts it too and gives the same row;
a property test holds the two to that. So this module changes speed, never a
verdict or a stored byte.
"""
from __future__ import annotations

import json
import re
from typing import NamedTuple

from tillflow.messages import TransactionMessage
from tillflow.record import (
    AMOUNT_MAX_CHARS, MAX_AMOUNT, QUANTITY_MAX_DIGITS, canonical_date, canonical_name, canonical_store,
)

NULL = b"\\N"  # COPY text for NULL
# COPY text format: backslash, tab, newline and carriage return are escaped.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_COPY_UNESCAPES = re.compile(rb"\\(.)")
_UNESCAPED = {b"\\": b"\\", b"t": b"\t", b"n": b"\n", b"r": b"\r"}


class TransactionRow(NamedTuple):
    """A transaction's columns as COPY text (UTF-8, escaped; ``\\N`` for NULL), in COPY order."""

    id: bytes
    transaction_date: bytes
    category: bytes
    name: bytes
    quantity: bytes
    amount_excl_tax: bytes
    amount_inc_tax: bytes
    store_id: bytes
    source: bytes
    source_ref: bytes
    source_line: bytes

    def content(self) -> tuple[bytes, ...]:
        """The columns that make two versions of one id the same (duplicate) or not (conflict)."""
        return self[1:8]


COLUMNS = TransactionRow._fields  # the sink's COPY column list starts with these

# The layout encode_transaction writes, key for key. Free text (name, store,
# origin) is any JSON string content; what it reads as, and whether the
# record's rules take it, is worked out once per distinct value.
_JSON_TEXT = rb'([^"\\\x00-\x1f]*(?:\\.[^"\\\x00-\x1f]*)*)'
# The bounds come from the record module's constants, so that the fast path never takes
# what the rules refuse. An amount has at most as many digits as MAX_AMOUNT; one with
# exactly as many is compared with it as text (same length, so in numeric order) unless
# MAX_AMOUNT is all nines. A quantity with fewer digits than MAX_QUANTITY is within it;
# a longer one goes the reference way.
_AMOUNT_MAX = f"{MAX_AMOUNT:.2f}".encode("ascii")
_AMOUNT_CAPPED = _AMOUNT_MAX.strip(b"9") != b"."
_AMOUNT = rb'((?:0|[1-9][0-9]{0,%d})\.[0-9]{2})' % (AMOUNT_MAX_CHARS - 4)  # canonical: no leading zero, cents
_QUANTITY = rb'([1-9][0-9]{0,%d})' % (QUANTITY_MAX_DIGITS - 2)
_LAYOUT = re.compile(
    rb'\{"schema_version":1,"kind":"transaction",'
    rb'"id":"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})",'
    rb'"transaction_date":"([0-9]{4}-[0-9]{2}-[0-9]{2})",'
    rb'"category":"(SELL|BUY)",'
    rb'"name":"' + _JSON_TEXT + rb'",'
    rb'"quantity":' + _QUANTITY + rb','
    rb'"amount_excl_tax":"' + _AMOUNT + rb'",'
    rb'"amount_inc_tax":"' + _AMOUNT + rb'",'
    rb'"store_id":"' + _JSON_TEXT + rb'",'
    rb'"origin":\{"source":"' + _JSON_TEXT + rb'",'
    rb'"ref":(?:"' + _JSON_TEXT + rb'"|null),'
    rb'"line":(?:([1-9][0-9]{0,8})|null)\}\}'
)
_match = _LAYOUT.fullmatch
_new = tuple.__new__
_ZERO = b"0.00"
_BAD = b""  # cached verdict: the value breaks a rule (no valid value's COPY text is empty)

_CACHE_LIMIT = 100_000  # distinct values remembered per cache, then it starts again


def _json_text(raw: bytes) -> str | None:
    """What the contents of a JSON string read as, or None if no valid message holds them."""
    try:
        text = raw.decode("utf-8")
        if "\\" in text:
            text = json.loads(f'"{text}"')
            text.encode("utf-8")  # an escaped lone surrogate: refused by decode() too
    except ValueError:  # UnicodeError, JSONDecodeError
        return None
    return text


def _remember(cache: dict, key, value):
    """Store a verdict; a cache that reached _CACHE_LIMIT starts again (memory stays bounded)."""
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[key] = value
    return value


def _judged(valid):
    """A cache from one field's raw JSON text to its COPY text, or _BAD when ``valid``
    (the record module's check of that field) refuses what it reads as."""
    cache: dict[bytes, bytes] = {}

    def judge(raw: bytes) -> bytes:
        text = _json_text(raw)
        copy = _BAD
        if text is not None and valid(text):
            copy = copy_text(text)
        return _remember(cache, raw, copy)

    return cache, judge


_dates, _judge_date = _judged(lambda text: canonical_date(text) is not None)
_names, _judge_name = _judged(canonical_name)
_stores, _judge_store = _judged(canonical_store)
_origins: dict[tuple[bytes, bytes | None], tuple[bytes, bytes] | None] = {}


def _judge_origin(key: tuple[bytes, bytes | None]) -> tuple[bytes, bytes] | None:
    """Source and ref as COPY text (an empty ref is NULL); None unless both are valid JSON text."""
    raw_source, raw_ref = key
    source = _json_text(raw_source)
    ref = None if raw_ref is None else _json_text(raw_ref)
    copy = None
    if source and (raw_ref is None or ref is not None):  # decode() refuses an empty source
        copy = copy_text(source), copy_text(ref) if ref else NULL
    return _remember(_origins, key, copy)


def fast_row(value: bytes) -> TransactionRow | None:
    """The COPY row of a canonical, valid transaction message; None for anything else."""
    m = _match(value)
    if m is None:
        return None
    id_, day, category, name, quantity, excl, inc, store, source, ref, line = m.groups()
    if excl == _ZERO or inc == _ZERO:
        return None
    if _AMOUNT_CAPPED and ((len(excl) == len(_AMOUNT_MAX) and excl > _AMOUNT_MAX)
                           or (len(inc) == len(_AMOUNT_MAX) and inc > _AMOUNT_MAX)):
        return None
    day = _dates.get(day) or _judge_date(day)
    name = _names.get(name) or _judge_name(name)
    store = _stores.get(store) or _judge_store(store)
    if not (day and name and store):
        return None
    key = (source, ref)
    origin = _origins.get(key, False)
    if origin is False:
        origin = _judge_origin(key)
    if origin is None:
        return None
    # tuple.__new__: a NamedTuple's own constructor is a Python-level call, a visible share of
    # the consumer's profile.
    return _new(TransactionRow, (id_, day, category, name, quantity, excl, inc, store, *origin,
                                 NULL if line is None else line))


def copy_text(value: str) -> bytes:
    """A text value as COPY text."""
    return value.translate(_COPY_ESCAPES).encode("utf-8")


def plain_text(value: bytes) -> str | None:
    """The value of COPY text (None for ``\\N``): for messages and JSON, never the hot path."""
    if value == NULL:
        return None
    return _COPY_UNESCAPES.sub(lambda m: _UNESCAPED.get(m.group(1), m.group(1)), value).decode("utf-8")


def row_of(msg: TransactionMessage) -> TransactionRow:
    """The COPY row of a decoded transaction message (the reference path)."""
    tx = msg.transaction
    origin = msg.origin
    source = ref = line = NULL
    if origin is not None:
        if origin.source:
            source = copy_text(origin.source)
        if origin.ref:
            ref = copy_text(origin.ref)
        if origin.line:
            line = str(origin.line).encode("ascii")
    return TransactionRow(
        str(tx.id).encode("ascii"), tx.transaction_date.isoformat().encode("ascii"), tx.category.encode("ascii"),
        copy_text(tx.name), str(int(tx.quantity)).encode("ascii"), str(tx.amount_excl_tax).encode("ascii"),
        str(tx.amount_inc_tax).encode("ascii"), copy_text(tx.store_id), source, ref, line,
    )
