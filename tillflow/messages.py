"""Kafka message values: a transaction or a reject as UTF-8 JSON, ``schema_version`` 1.

Transaction (topic ``tillflow.transactions``)::

    {"schema_version": 1, "kind": "transaction", "id": "<canonical uuid>",
     "transaction_date": "YYYY-MM-DD", "category": "SELL", "name": "...",
     "quantity": 3, "amount_excl_tax": "12.30", "amount_inc_tax": "14.76",
     "store_id": "main", "origin": {"source": "csv", "ref": "retail_....csv", "line": 12}}

Reject (topic ``tillflow.rejects``)::

    {"schema_version": 1, "kind": "reject", "id": "<raw id>" | null,
     "raw": {"field": "text" | null, ...},
     "reasons": [{"field": "...", "code": "...", "message": "..."}], "origin": {...}}

Amounts travel as decimal strings with exactly two places, never as JSON numbers.
Both kinds are keyed by id (:func:`key_for`), so every copy of one transaction lands
on one partition.

:func:`decode` is strict: it checks ``schema_version`` and ``kind``, the type of
every field, and re-validates a transaction with the record's rules (except the
tax rule, which its producer checked under the tax rate in force then). Keys it
does not know are ignored, so a later producer may add some within version 1.
Anything else raises :class:`MessageError`, whose message says what is wrong;
the consumer adds the topic, partition and offset.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from json.encoder import encode_basestring as _json_str

import orjson

from tillflow.record import Origin, Reason, Rejected, Transaction, accept_canonical, validate_full

SCHEMA_VERSION = 1


class MessageError(ValueError):
    """A message value that cannot be decoded; the message says why."""


@dataclass(frozen=True, slots=True)
class TransactionMessage:
    transaction: Transaction
    origin: Origin


@dataclass(frozen=True, slots=True)
class RejectMessage:
    id: str | None
    raw: dict
    reasons: tuple[Reason, ...]
    origin: Origin


def key_for(id_text: str | None) -> bytes | None:
    """The Kafka key for a record: its id as UTF-8, or None when a reject has no id."""
    if id_text is None or id_text == "":
        return None
    return id_text.encode("utf-8", "replace")


def _origin_json(origin: Origin | None) -> str:
    if origin is None:
        return '{"source":null,"ref":null,"line":null}'
    ref = "null" if origin.ref is None else _json_str(origin.ref)
    line = "null" if origin.line is None else str(int(origin.line))
    return f'{{"source":{_json_str(origin.source)},"ref":{ref},"line":{line}}}'


def _amount_json(value: Decimal, field: str) -> str:
    text = str(value)
    if len(text) < 4 or text[-3] != "." or not text[-2:].isdigit():
        raise ValueError(f"{field} {text} is not quantized to cents: build transactions with validate()")
    return text


def encode_transaction(tx: Transaction, origin: Origin | None = None) -> bytes:
    """The message value for a valid transaction; ``origin`` defaults to ``tx.origin``."""
    return _encode(tx, str(tx.id), origin)


def transaction_record(tx: Transaction, origin: Origin | None = None) -> tuple[bytes, bytes]:
    """The Kafka key and value for a valid transaction (its id formatted once, for both)."""
    id_text = str(tx.id)
    return id_text.encode("ascii"), _encode(tx, id_text, origin)


def _encode(tx: Transaction, id_text: str, origin: Origin | None) -> bytes:
    if origin is None:
        origin = tx.origin
        if origin is None:
            raise ValueError(f"transaction {id_text} has no origin: pass one")
    # Built by hand, faster than json.dumps on the producer's hot path. Only name,
    # store_id and origin can hold characters that need escaping. The consumer's fast
    # path (consumer.rows._LAYOUT) matches this exact layout, key for key: change
    # both together (tests/unit/test_rows.py holds them to each other).
    return (
        f'{{"schema_version":1,"kind":"transaction","id":"{id_text}",'
        f'"transaction_date":"{tx.transaction_date.isoformat()}","category":"{tx.category}",'
        f'"name":{_json_str(tx.name)},"quantity":{int(tx.quantity)},'
        f'"amount_excl_tax":"{_amount_json(tx.amount_excl_tax, "amount_excl_tax")}",'
        f'"amount_inc_tax":"{_amount_json(tx.amount_inc_tax, "amount_inc_tax")}",'
        f'"store_id":{_json_str(tx.store_id)},"origin":{_origin_json(origin)}}}'
    ).encode("utf-8", "replace")  # 'replace': an undecodable file name in origin.ref


def encode_reject(rej: Rejected) -> bytes:
    """The message value for a rejected row."""
    doc = {
        "schema_version": SCHEMA_VERSION,
        "kind": "reject",
        "id": rej.id,
        "raw": rej.raw,
        "reasons": [{"field": r.field, "code": r.code, "message": r.message} for r in rej.reasons],
        "origin": {"source": rej.origin.source, "ref": rej.origin.ref, "line": rej.origin.line},
    }
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace")


def _no_constant(name: str):
    raise MessageError(f"message contains {name}, which is not a number")


# Built once: json.loads(..., parse_float=...) would build a decoder per message.
# parse_float=Decimal so that a stray JSON number is never a binary float.
_json_decode = json.JSONDecoder(parse_float=Decimal, parse_constant=_no_constant).decode


def _parse(value: bytes) -> object:
    """The JSON document of a message; MessageError saying what is wrong with it."""
    try:
        doc = _json_decode(value.decode("utf-8"))
    except MessageError:
        raise
    except (AttributeError, UnicodeDecodeError) as exc:
        raise MessageError(f"message is not UTF-8 bytes: {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise MessageError(f"message is not valid JSON: {exc}") from None
    if _holds_lone_surrogate(doc):
        # Valid JSON, but no UTF-8 text can hold it: PostgreSQL could never store it.
        raise MessageError("message is not valid JSON text: it escapes a lone surrogate (\\udXXX)")
    return doc


def _holds_lone_surrogate(doc: object) -> bool:
    """True if a key or string anywhere in ``doc`` holds an unpaired surrogate."""
    pending = [doc]
    while pending:
        value = pending.pop()
        if type(value) is str:
            if not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    return True
        elif type(value) is dict:
            pending.extend(value)
            pending.extend(value.values())
        elif type(value) is list:
            pending.extend(value)
    return False


def decode(value: bytes) -> TransactionMessage | RejectMessage:
    """Decode and check a message value; raise MessageError if it is malformed."""
    try:
        # orjson (C, several times faster) on the consumer's hot path. It reads a
        # number with a fraction as a float where the standard parser gives a
        # Decimal; no valid message holds such a number (every field's type is
        # checked), and whatever fails is judged again from the standard parse,
        # so the verdict and its wording are the reference parser's.
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return _decode_document(_parse(value))
    try:
        return _decode_document(doc)
    except MessageError:
        return _decode_document(_parse(value))


def _decode_document(doc: object) -> TransactionMessage | RejectMessage:
    if type(doc) is not dict:
        raise MessageError(f"message is a JSON {type(doc).__name__}, not an object")
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION or type(version) is not int:
        raise MessageError(f"schema_version {version!r} is not supported: this consumer reads {SCHEMA_VERSION}")
    kind = doc.get("kind")
    origin = _origin(doc.get("origin"))
    if kind == "transaction":
        return TransactionMessage(_transaction(doc, origin), origin)
    if kind == "reject":
        return _reject(doc, origin)
    raise MessageError(f"kind {kind!r} is neither 'transaction' nor 'reject'")


_TEXT_FIELDS = ("id", "transaction_date", "category", "name", "amount_excl_tax", "amount_inc_tax", "store_id")


def _transaction(doc: dict, origin: Origin) -> Transaction:
    get = doc.get
    quantity = get("quantity")
    if type(quantity) is int:
        # What encode_transaction writes is canonical: the record's fast path takes it.
        tx = accept_canonical(
            get("id"), get("transaction_date"), get("category"), get("name"), quantity,
            get("amount_excl_tax"), get("amount_inc_tax"), get("store_id"),
            origin=origin, tax_rate=None, default_date=None, default_store="",
        )
        if tx is not None:
            return tx
    # Not canonical: find out exactly what is wrong, or accept a harmless variant.
    for name in _TEXT_FIELDS:
        if type(get(name)) is not str:
            raise MessageError(f"transaction message: {name} must be a string, got {_json_type(get(name))}")
    if type(quantity) is not int:
        raise MessageError(f"transaction message: quantity must be an integer, got {_json_type(quantity)}")
    result = validate_full(doc, origin=origin, tax_rate=None, default_store="")
    if type(result) is not Transaction:
        reasons = "; ".join(r.message for r in result.reasons)
        raise MessageError(f"transaction message {get('id')!r} breaks the record rules: {reasons}")
    if doc["amount_excl_tax"][-3:-2] != "." or doc["amount_inc_tax"][-3:-2] != ".":
        raise MessageError(f"transaction message {doc['id']!r}: amounts must have exactly 2 decimal places")
    return result


def _reject(doc: dict, origin: Origin) -> RejectMessage:
    id_ = doc.get("id")
    if id_ is not None and type(id_) is not str:
        raise MessageError(f"reject message: id must be a string or null, got {_json_type(id_)}")
    raw = doc.get("raw")
    if type(raw) is not dict or any(v is not None and type(v) is not str for v in raw.values()):
        raise MessageError("reject message: raw must be an object of strings or nulls")
    reasons = doc.get("reasons")
    if type(reasons) is not list or not reasons:
        raise MessageError("reject message: reasons must be a non-empty list")
    parsed = []
    for item in reasons:
        if type(item) is not dict or any(type(item.get(k)) is not str for k in ("field", "code", "message")):
            raise MessageError("reject message: each reason needs string field, code and message")
        parsed.append(Reason(item["field"], item["code"], item["message"]))
    return RejectMessage(id=id_, raw=raw, reasons=tuple(parsed), origin=origin)


def _origin(value: object) -> Origin:
    if type(value) is not dict:
        raise MessageError(f"origin must be an object, got {_json_type(value)}")
    source, ref, line = value.get("source"), value.get("ref"), value.get("line")
    if type(source) is not str or not source:
        raise MessageError(f"origin.source must be a non-empty string, got {_json_type(source)}")
    if ref is not None and type(ref) is not str:
        raise MessageError(f"origin.ref must be a string or null, got {_json_type(ref)}")
    if line is not None and type(line) is not int:
        raise MessageError(f"origin.line must be an integer or null, got {_json_type(line)}")
    # A file's rows share source and ref: one Origin per file, each row's at its line.
    key = (source, ref)
    base = _origins.get(key)
    if base is None:
        if len(_origins) >= _ORIGINS_KEPT:
            _origins.clear()
        base = _origins[key] = Origin(source, ref, None)
    return base.with_line(line)


_ORIGINS_KEPT = 1024
_origins: dict[tuple[str, str | None], Origin] = {}


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float, Decimal)):
        return f"the number {value}"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"
