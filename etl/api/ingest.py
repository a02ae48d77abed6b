"""A request's JSON into per-item verdicts and the Kafka records to publish; no I/O.

Rules, shared by ``POST /v1/transactions`` and the ``/v1/stream`` WebSocket:

- The body is UTF-8 JSON. Numbers with a fraction or an exponent are read as
  exact ``Decimal`` (never binary floats), so ``12.30`` and ``"12.30"`` are the
  same amount; ``NaN`` and ``Infinity`` are refused (400).
- A body is one transaction object or an array of 1 to ``API_MAX_BATCH`` of
  them; anything else is 422, a longer array 413.
- Each item is judged by ``tillflow.record.validate`` with the API's tax rate;
  its ``store_id`` defaults to the token's store. An item that is not an object
  is rejected (``row/not_an_object``), like any invalid row.
- An item naming another store than the token's refuses the whole request
  (403) before anything is published: see :func:`foreign_item`.
- Within one request, a later item with the id of an earlier valid one is a
  ``duplicate_in_request``. Identical, it is not published. With different
  content it is published after the first, so that the consumer keeps the
  first version and records both in ``ingest.conflicts``, as for files; its
  result says ``"conflict": true``.
- Rejected items are published to the rejects topic, with every reason: kept,
  never dropped.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal

from etl.api.errors import BadRequest, PayloadTooLarge, Unprocessable
from tillflow.messages import encode_reject, key_for, transaction_record
from tillflow.record import FIELDS, Origin, Reason, Rejected, Transaction, raw_text, validate

Record = tuple[str, bytes | None, bytes]  # topic, key, value
MAX_EXTRA_KEYS = 16
MAX_KEY_CHARS = 100


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number")


_DECODER = json.JSONDecoder(parse_float=Decimal, parse_constant=_no_constant)


def parse_json(body: bytes | str) -> object:
    """The JSON document of a body; BadRequest if it is not UTF-8 JSON."""
    try:
        text = body.decode("utf-8") if isinstance(body, (bytes, bytearray)) else body
        return _DECODER.decode(text)
    except UnicodeDecodeError:
        raise BadRequest("the body is not UTF-8 text", code="invalid_json") from None
    except RecursionError:
        raise BadRequest("the body is nested too deeply to be a transaction", code="invalid_json") from None
    except ValueError as exc:  # JSONDecodeError is one
        raise BadRequest(f"the body is not valid JSON: {exc}", code="invalid_json") from None


def as_items(doc: object, max_batch: int) -> list:
    """The items of a request: one object, or an array of 1 to ``max_batch`` items."""
    if isinstance(doc, dict):
        return [doc]
    if isinstance(doc, list):
        if not doc:
            raise Unprocessable("the array is empty: send one transaction object or an array of them")
        if len(doc) > max_batch:
            raise PayloadTooLarge(f"the array has {len(doc)} items: at most {max_batch} are accepted per request;"
                                  " split it into several requests", code="batch_too_large")
        return doc
    raise Unprocessable(f"the body is a JSON {_json_type(doc)}: send a transaction object or an array of them")


def foreign_store(item: object, store_id: str) -> bool:
    """Whether ``item`` names a store other than ``store_id`` (absent, null or blank: the token's)."""
    if not isinstance(item, dict):
        return False
    value = item.get("store_id")
    if value is None or (isinstance(value, str) and not value.strip()):
        return False
    return not isinstance(value, str) or value.strip() != store_id


def foreign_item(items: list, store_id: str) -> int | None:
    """Index of the first item naming another store, or None."""
    for index, item in enumerate(items):
        if foreign_store(item, store_id):
            return index
    return None


def _bounded(item: dict) -> dict:
    """The item with at most MAX_EXTRA_KEYS keys besides the record's, each name cut
    to MAX_KEY_CHARS: a reject must fit one Kafka message whatever was sent."""
    extra = [k for k in item if k not in FIELDS]
    if len(extra) <= MAX_EXTRA_KEYS and all(len(k) <= MAX_KEY_CHARS for k in extra):
        return item
    kept = {k: v for k, v in item.items() if k in FIELDS}
    for name in extra[:MAX_EXTRA_KEYS]:
        kept[name[:MAX_KEY_CHARS]] = item[name]
    if len(extra) > MAX_EXTRA_KEYS:
        kept["..."] = f"{len(extra) - MAX_EXTRA_KEYS} more keys not kept"
    return kept


def judge(item: object, *, store_id: str, tax_rate: Decimal, origin: Origin) -> Transaction | Rejected:
    """One item's verdict: a Transaction, or a Rejected with every reason."""
    if isinstance(item, dict):
        return validate(_bounded(item), origin=origin, tax_rate=tax_rate, default_date=None, default_store=store_id)
    text = json.dumps(item, default=str, ensure_ascii=False)
    return Rejected(
        raw=raw_text({"item": text}),
        reasons=(Reason("row", "not_an_object", f"the item is a JSON {_json_type(item)}, not a transaction object"),),
        origin=origin,
    )


def record_for(verdict: Transaction | Rejected, topic_transactions: str, topic_rejects: str) -> Record:
    """The Kafka record of a verdict; a transaction's key is its canonical id (ASCII)."""
    if type(verdict) is Transaction:
        return (topic_transactions, *transaction_record(verdict))
    return topic_rejects, key_for(verdict.id), encode_reject(verdict)


def reasons_json(reasons) -> list[dict[str, str]]:
    return [{"field": r.field, "code": r.code, "message": r.message} for r in reasons]


@dataclass
class Plan:
    """What to publish for one request, and what to answer once Kafka acknowledged it."""

    records: list[Record] = field(default_factory=list)
    results: list[dict] = field(default_factory=list)
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0

    def answer(self, request_id: str) -> dict:
        return {"request_id": request_id, "accepted": self.accepted, "duplicates": self.duplicates,
                "rejected": self.rejected, "results": self.results}


def plan(items: list, *, store_id: str, tax_rate: Decimal, source: str, ref: str | None,
         topic_transactions: str, topic_rejects: str) -> Plan:
    """Judge every item (origin line = 1-based position in the request) and lay out the records."""
    out = Plan()
    first: dict[str, tuple[int, tuple]] = {}
    base = Origin(source, ref)
    for index, item in enumerate(items):
        verdict = judge(item, store_id=store_id, tax_rate=tax_rate, origin=base.with_line(index + 1))
        if type(verdict) is Transaction:
            tx_id = str(verdict.id)
            seen = first.get(tx_id)
            if seen is None:
                first[tx_id] = (index, verdict.content_key())
                out.records.append(record_for(verdict, topic_transactions, topic_rejects))
                out.results.append({"index": index, "id": tx_id, "status": "accepted"})
                out.accepted += 1
                continue
            result = {"index": index, "id": tx_id, "status": "duplicate_in_request", "duplicate_of": seen[0]}
            if seen[1] != verdict.content_key():
                result["conflict"] = True
                out.records.append(record_for(verdict, topic_transactions, topic_rejects))
            out.results.append(result)
            out.duplicates += 1
        else:
            out.records.append(record_for(verdict, topic_transactions, topic_rejects))
            out.results.append({"index": index, "id": verdict.id, "status": "rejected",
                                "reasons": reasons_json(verdict.reasons)})
            out.rejected += 1
    return out


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, Decimal, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"
