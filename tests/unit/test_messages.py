"""tillflow.messages: the exact JSON, round trips, and strict decoding."""
from __future__ import annotations

import datetime
import json
import uuid
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tillflow.messages import (
    SCHEMA_VERSION,
    MessageError,
    RejectMessage,
    TransactionMessage,
    decode,
    encode_reject,
    encode_transaction,
    key_for,
)
from support.strategies import origins, transactions
from tillflow.record import MAX_QUANTITY, Origin, Reason, Rejected, Transaction, validate

ID = "3f2504e0-4f89-11d3-9a0c-0305e82c3301"
ORIGIN = Origin("csv", "retail_05_01_2024.csv", 12)


def tx(**overrides) -> Transaction:
    raw = {
        "id": ID, "transaction_date": "2024-01-05", "category": "SELL", "name": 'Vin "rouge" \\ Café',
        "quantity": "3", "amount_excl_tax": "12.30", "amount_inc_tax": "14.76",
    }
    raw.update(overrides)
    result = validate(raw, origin=ORIGIN)
    assert isinstance(result, Transaction), result
    return result


def valid_doc(**overrides) -> dict:
    doc = json.loads(encode_transaction(tx()))
    doc.update(overrides)
    return doc


def test_transaction_message_is_the_documented_json():
    value = encode_transaction(tx(), ORIGIN)
    assert isinstance(value, bytes)
    assert json.loads(value.decode("utf-8")) == {
        "schema_version": 1, "kind": "transaction", "id": ID, "transaction_date": "2024-01-05",
        "category": "SELL", "name": 'Vin "rouge" \\ Café', "quantity": 3,
        "amount_excl_tax": "12.30", "amount_inc_tax": "14.76", "store_id": "main",
        "origin": {"source": "csv", "ref": "retail_05_01_2024.csv", "line": 12},
    }
    assert "Café".encode() in value  # UTF-8, not \\u escapes


def test_encode_uses_the_transaction_origin_unless_given():
    other = Origin("api", "upload-9", None)
    assert json.loads(encode_transaction(tx()))["origin"]["line"] == 12
    assert json.loads(encode_transaction(tx(), other))["origin"] == {"source": "api", "ref": "upload-9", "line": None}
    bare = Transaction(uuid.UUID(ID), datetime.date(2024, 1, 5), "SELL", "x", 1, Decimal("1.00"), Decimal("1.20"), "main")
    with pytest.raises(ValueError, match="no origin"):
        encode_transaction(bare)


def test_encode_refuses_amounts_not_in_cents():
    bare = Transaction(uuid.UUID(ID), datetime.date(2024, 1, 5), "SELL", "x", 1, Decimal("1.2"), Decimal("1.44"), "main")
    with pytest.raises(ValueError, match="not quantized to cents"):
        encode_transaction(bare, ORIGIN)


def test_transaction_round_trip():
    original = tx()
    message = decode(encode_transaction(original))
    assert isinstance(message, TransactionMessage)
    assert message.transaction == original
    assert message.origin == ORIGIN and message.transaction.origin == ORIGIN
    assert message.transaction.content_key() == original.content_key()
    assert type(message.transaction.amount_excl_tax) is Decimal


def test_reject_round_trip_and_json():
    rejected = validate(
        {"id": "nope", "name": "x" * 5000, "quantity": "1,5", "amount_excl_tax": "12.30", "extra": "kept"},
        origin=ORIGIN,
    )
    value = encode_reject(rejected)
    doc = json.loads(value)
    assert doc["schema_version"] == 1 and doc["kind"] == "reject" and doc["id"] == "nope"
    assert doc["raw"]["extra"] == "kept" and len(doc["raw"]["name"]) < 1100
    assert {"field": "quantity", "code": "not_integer", "message": "quantity '1,5' is not a whole number"} in doc["reasons"]
    message = decode(value)
    assert message == RejectMessage(id="nope", raw=rejected.raw, reasons=rejected.reasons, origin=ORIGIN)


def test_reject_without_id():
    rejected = validate({}, origin=Origin("ws"))
    assert json.loads(encode_reject(rejected))["id"] is None
    assert decode(encode_reject(rejected)).id is None
    assert key_for(rejected.id) is None


def test_reject_with_nul_and_bad_bytes_is_valid_utf8_json():
    rejected = validate({"id": "a\x00b", "name": "x\udcff"}, origin=ORIGIN)
    value = encode_reject(rejected)
    value.decode("utf-8")
    assert decode(value).raw["id"] == "a\u2400b"


def test_key_for():
    assert key_for(ID) == ID.encode()
    assert key_for(str(tx().id)) == ID.encode()
    assert key_for(None) is None and key_for("") is None
    assert key_for("é") == "é".encode()


@pytest.mark.parametrize(
    "value, match",
    [
        (b"not json", "not valid JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[1, 2]", "not an object"),
        (b'"text"', "not an object"),
        (b'{"schema_version": 2, "kind": "transaction"}', "schema_version 2 is not supported"),
        (b'{"schema_version": true, "kind": "transaction"}', "schema_version True"),
        (b'{"schema_version": "1", "kind": "transaction"}', "schema_version '1'"),
        (b'{"schema_version": 1.0, "kind": "transaction"}', "schema_version Decimal"),
        (b'{"kind": "transaction"}', "schema_version None"),
        (b'{"schema_version": 1, "kind": "other", "origin": {"source": "csv"}}', "kind 'other'"),
        (b'{"schema_version": 1, "kind": "transaction"}', "origin must be an object"),
        (b'{"schema_version": 1, "kind": "reject", "origin": {"source": "csv", "line": "3"}}', "origin.line"),
        (b'{"schema_version": 1, "kind": "reject", "origin": {"source": ""}}', "origin.source"),
        (b'{"schema_version": 1, "kind": "reject", "origin": {"source": "csv", "ref": 5}}', "origin.ref"),
        (b'{"schema_version": NaN}', "NaN"),
        (b"[" * 100_000, "not valid JSON"),
        # orjson refuses these and the standard parser reads them: refused all the same.
        (b'{"schema_version": 1, "kind": "reject", "origin": {"source": "csv", "ref": "a\\ud800"}}', "lone surrogate"),
        (b'{"schema_version": 1, "kind": "reject", "raw": {"\\udc00": null}, "origin": {"source": "x"}}',
         "lone surrogate"),
    ],
)
def test_decode_rejects_malformed_envelopes(value, match):
    with pytest.raises(MessageError, match=match):
        decode(value)


def test_decode_needs_bytes():
    with pytest.raises(MessageError):
        decode(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"amount_excl_tax": 12.30}, "amount_excl_tax must be a string, got the number 12.3"),
        ({"amount_inc_tax": 14}, "amount_inc_tax must be a string, got the number 14"),
        ({"amount_excl_tax": "12.3"}, "exactly 2 decimal places"),
        ({"amount_excl_tax": "1e1"}, "not an amount"),
        ({"amount_excl_tax": "NaN"}, "not an amount"),
        ({"quantity": "3"}, "quantity must be an integer, got a string"),
        ({"quantity": True}, "quantity must be an integer, got a boolean"),
        ({"quantity": 3.0}, "quantity must be an integer, got the number 3.0"),
        ({"quantity": 0}, "at least 1"),
        ({"quantity": MAX_QUANTITY + 1}, "larger than"),
        ({"id": "not-a-uuid"}, "is not a UUID"),
        ({"id": None}, "id must be a string, got null"),
        ({"transaction_date": "2024-02-30"}, "not a calendar date"),
        ({"transaction_date": 20240105}, "transaction_date must be a string"),
        ({"category": "GIFT"}, "neither SELL nor BUY"),
        ({"name": "x" * 201}, "at most 200"),
        ({"name": "a\x00b"}, "NUL"),
        ({"store_id": ""}, "store_id is missing"),
        ({"store_id": "a b"}, "store_id 'a b'"),
        ({"amount_excl_tax": "0.00"}, "greater than 0"),
    ],
)
def test_decode_rechecks_transaction_fields(overrides, match):
    doc = valid_doc(**overrides)
    with pytest.raises(MessageError, match=match):
        decode(json.dumps(doc).encode())


def test_decode_does_not_rejudge_the_tax_rule():
    # the producer checked it under its own tax rate; the consumer's may differ.
    message = decode(json.dumps(valid_doc(amount_inc_tax="99.99")).encode())
    assert message.transaction.amount_inc_tax == Decimal("99.99")


def test_decode_ignores_unknown_keys():
    assert isinstance(decode(json.dumps(valid_doc(added_later="x")).encode()), TransactionMessage)


def test_decode_never_yields_floats():
    message = decode(encode_transaction(tx()))
    for amount in (message.transaction.amount_excl_tax, message.transaction.amount_inc_tax):
        assert type(amount) is Decimal


@pytest.mark.parametrize(
    "reasons, match",
    [([], "non-empty"), ([{"field": "x", "code": "y"}], "string field, code and message"), ("x", "non-empty")],
)
def test_decode_rechecks_reject_fields(reasons, match):
    doc = {"schema_version": 1, "kind": "reject", "id": None, "raw": {}, "reasons": reasons, "origin": {"source": "csv"}}
    with pytest.raises(MessageError, match=match):
        decode(json.dumps(doc).encode())
    doc["reasons"] = [{"field": "x", "code": "y", "message": "z"}]
    doc["raw"] = {"a": 1}
    with pytest.raises(MessageError, match="raw must be an object of strings"):
        decode(json.dumps(doc).encode())
    doc["raw"], doc["id"] = {}, 5
    with pytest.raises(MessageError, match="id must be a string or null"):
        decode(json.dumps(doc).encode())


def test_schema_version_constant():
    assert SCHEMA_VERSION == 1


# -- properties ------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(transactions(), origins)
def test_property_any_valid_transaction_round_trips_unchanged(original, origin):
    message = decode(encode_transaction(original, origin))
    assert message.transaction == original
    assert message.transaction.content_key() == original.content_key()
    assert message.origin == origin
    assert type(message.transaction.amount_excl_tax) is Decimal
    assert type(message.transaction.amount_inc_tax) is Decimal
    assert key_for(str(message.transaction.id)) == str(original.id).encode()


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.text(max_size=10), st.none() | st.text(max_size=30), max_size=5),
    st.lists(st.tuples(st.text(min_size=1), st.text(min_size=1), st.text()), min_size=1, max_size=3),
    origins,
)
def test_property_any_reject_round_trips(raw, reasons, origin):
    rejected = Rejected(raw=raw, reasons=tuple(Reason(*r) for r in reasons), origin=origin)
    if any("\ud800" <= ch <= "\udfff" for text in [*raw, *filter(None, raw.values())] for ch in text):
        return  # Rejected.raw from validate() never holds lone surrogates
    message = decode(encode_reject(rejected))
    assert message.raw == raw and message.reasons == rejected.reasons and message.origin == origin


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(["id", "transaction_date", "category", "name", "quantity", "amount_excl_tax",
                        "amount_inc_tax", "store_id", "origin", "schema_version", "kind"]), _json_values)
def test_property_fast_parser_gives_the_reference_verdict(field, value):
    """decode() parses with orjson; the verdict must be the standard parser's (Decimal numbers)."""
    from tillflow import messages

    doc = json.loads(encode_transaction(tx()))
    doc[field] = value
    raw = json.dumps(doc).encode()
    try:
        reference = messages._decode_document(messages._parse(raw))
    except MessageError as exc:
        with pytest.raises(MessageError) as caught:
            decode(raw)
        assert str(caught.value) == str(exc)
    else:
        assert decode(raw) == reference
