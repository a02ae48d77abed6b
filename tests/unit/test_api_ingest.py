"""etl.api.ingest: a request's JSON into per-item verdicts and Kafka records, without I/O."""
from __future__ import annotations

import json
import uuid
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etl.api.errors import BadRequest, PayloadTooLarge, Unprocessable
from etl.api.ingest import MAX_EXTRA_KEYS, as_items, foreign_item, foreign_store, parse_json, plan
from tillflow.messages import RejectMessage, TransactionMessage, decode

TOPICS = {"topic_transactions": "tx", "topic_rejects": "rej"}


def tx(**changes) -> dict:
    doc = {"id": str(uuid.uuid4()), "transaction_date": "2026-01-05", "category": "SELL", "name": "Milk",
           "quantity": 2, "amount_excl_tax": "2.50", "amount_inc_tax": "3.00"}
    doc.update(changes)
    return doc


def run(items, store="main", tax_rate=Decimal("0.20")):
    return plan(items, store_id=store, tax_rate=tax_rate, source="api", ref="req-1", **TOPICS)


# -- parsing ----------------------------------------------------------------------------
def test_fractions_are_read_as_exact_decimals_never_floats():
    doc = parse_json(b'{"a": 0.1, "b": 12.30, "c": 1e3, "d": 7}')
    assert doc == {"a": Decimal("0.1"), "b": Decimal("12.30"), "c": Decimal("1E+3"), "d": 7}
    assert all(not isinstance(v, float) for v in doc.values())


@pytest.mark.parametrize("body", [b"NaN", b'{"a": Infinity}', b'{"a": -Infinity}', b"{", b"", b"\xff\xfe{}",
                                  b'{"a": 1} x', b"[" * 100_000 + b"]" * 100_000])
def test_bodies_that_are_not_utf8_json_are_bad_requests(body):
    with pytest.raises(BadRequest) as info:
        parse_json(body)
    assert info.value.status == 400 and info.value.code == "invalid_json"


def test_one_object_or_an_array_of_bounded_length():
    assert as_items({"a": 1}, 3) == [{"a": 1}]
    assert as_items([1, 2, 3], 3) == [1, 2, 3]
    with pytest.raises(PayloadTooLarge) as too_many:
        as_items([{}] * 4, 3)
    assert too_many.value.status == 413 and "at most 3" in too_many.value.message
    for doc in ([], "text", 5, None, True):
        with pytest.raises(Unprocessable):
            as_items(doc, 3)


# -- store -------------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "foreign"), [
    (None, False), ("", False), ("  ", False), ("main", False), (" main ", False),
    ("north", True), ("Main", True), (5, True), (["main"], True), ({"id": "main"}, True),
])
def test_an_item_is_foreign_unless_it_names_the_tokens_store_or_none(value, foreign):
    item = tx() if value is None else tx(store_id=value)
    assert foreign_store(item, "main") is foreign


def test_the_first_foreign_item_is_found_and_non_objects_are_not_foreign():
    items = [tx(), 7, tx(store_id="main"), tx(store_id="north"), tx(store_id="south")]
    assert foreign_item(items, "main") == 3
    assert foreign_item(items[:3], "main") is None


# -- plan -----------------------------------------------------------------------------------
def test_valid_items_become_transaction_records_keyed_by_id():
    a, b = tx(), tx(category="buy", amount_excl_tax=Decimal("10"), amount_inc_tax=Decimal("12.00"))
    out = run([a, b])
    assert (out.accepted, out.duplicates, out.rejected) == (2, 0, 0)
    assert [r["status"] for r in out.results] == ["accepted", "accepted"]
    assert [r[0] for r in out.records] == ["tx", "tx"]
    assert [r[1] for r in out.records] == [a["id"].encode(), b["id"].encode()]
    messages = [decode(r[2]) for r in out.records]
    assert all(isinstance(m, TransactionMessage) for m in messages)
    assert messages[1].transaction.category == "BUY"
    assert messages[1].transaction.amount_excl_tax == Decimal("10.00")
    assert messages[0].transaction.store_id == "main"
    assert (messages[1].origin.source, messages[1].origin.ref, messages[1].origin.line) == ("api", "req-1", 2)


def test_the_store_defaults_to_the_tokens():
    out = run([tx()], store="north")
    assert decode(out.records[0][2]).transaction.store_id == "north"


def test_rejected_items_carry_every_reason_and_are_published_to_the_rejects_topic():
    bad = tx(id="not-a-uuid", quantity=0, amount_excl_tax=1.5, category="GIFT")
    out = run([bad, "just text", tx()])
    assert (out.accepted, out.rejected) == (1, 2)
    first, second = out.results[0], out.results[1]
    assert first["status"] == "rejected" and first["id"] == "not-a-uuid"
    assert {(r["field"], r["code"]) for r in first["reasons"]} >= {
        ("id", "invalid_uuid"), ("quantity", "out_of_range"), ("category", "unknown_category")}
    assert second == {"index": 1, "id": None, "status": "rejected", "reasons": [
        {"field": "row", "code": "not_an_object", "message": "the item is a JSON string, not a transaction object"}]}
    assert [r[0] for r in out.records] == ["rej", "rej", "tx"]
    reject = decode(out.records[0][2])
    assert isinstance(reject, RejectMessage) and len(reject.reasons) == len(first["reasons"])
    assert reject.raw["id"] == "not-a-uuid" and reject.origin.line == 1


def test_a_repeated_identical_item_is_a_duplicate_and_not_published_again():
    a = tx()
    out = run([a, dict(a), tx(), dict(a, id=a["id"].upper())])
    assert (out.accepted, out.duplicates) == (2, 2)
    assert out.results[1] == {"index": 1, "id": a["id"], "status": "duplicate_in_request", "duplicate_of": 0}
    assert out.results[3]["duplicate_of"] == 0, "ids compare in canonical form"
    assert len(out.records) == 2


def test_a_repeated_id_with_other_content_is_published_so_the_conflict_is_recorded():
    a = tx()
    changed = dict(a, quantity=3, amount_excl_tax="3.75", amount_inc_tax="4.50")
    out = run([a, changed])
    assert out.results[1] == {"index": 1, "id": a["id"], "status": "duplicate_in_request", "duplicate_of": 0,
                              "conflict": True}
    assert len(out.records) == 2
    assert [decode(r[2]).transaction.quantity for r in out.records] == [2, 3]


def test_json_numbers_and_strings_give_the_same_message():
    as_text = tx(amount_excl_tax="1234567.80", amount_inc_tax="1481481.36")
    as_number = parse_json(json.dumps(as_text).replace('"1234567.80"', "1234567.80")
                           .replace('"1481481.36"', "1481481.36"))
    assert isinstance(as_number["amount_excl_tax"], Decimal)
    assert run([as_text]).records == run([as_number]).records


def test_three_decimal_places_are_rejected_even_as_a_json_number():
    out = run([parse_json(json.dumps(tx()).replace('"2.50"', "2.505"))])
    assert out.results[0]["status"] == "rejected"
    assert {r["code"] for r in out.results[0]["reasons"]} >= {"too_many_decimals"}


def test_a_reject_stays_small_whatever_keys_were_sent():
    item = tx(id="x") | {f"extra_{i}_" + "k" * 500: "v" * 5000 for i in range(200)}
    out = run([item])
    reject = decode(out.records[0][2])
    assert len(reject.raw) <= 7 + MAX_EXTRA_KEYS + 1
    assert len(out.records[0][2]) < 100_000


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30)
    | st.decimals(allow_nan=False, allow_infinity=False, places=3),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
fieldish = st.fixed_dictionaries({}, optional={
    "id": st.uuids().map(str) | json_values, "transaction_date": st.just("2026-01-05") | json_values,
    "category": st.sampled_from(["SELL", "buy", "GIFT"]) | json_values, "name": st.text(max_size=210),
    "quantity": st.integers(-5, 5) | json_values, "amount_excl_tax": json_values, "amount_inc_tax": json_values,
})


@settings(max_examples=300, deadline=None)
@given(st.lists(fieldish | json_values, min_size=1, max_size=8))
def test_any_json_items_get_one_result_each_and_never_raise(items):
    out = run(items)
    assert [r["index"] for r in out.results] == list(range(len(items)))
    assert out.accepted + out.duplicates + out.rejected == len(items)
    published = [r for r in out.results if r["status"] != "duplicate_in_request" or r.get("conflict")]
    assert len(out.records) == len(published)
    for topic, _key, value in out.records:
        message = decode(value)
        assert isinstance(message, TransactionMessage if topic == "tx" else RejectMessage)
