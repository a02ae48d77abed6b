"""consumer.rows: the fast path from message bytes to COPY text never changes a verdict or a byte."""
from __future__ import annotations

import dataclasses
import json
import shutil
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.strategies import origins, transactions

from consumer.rows import NULL, TransactionRow, copy_text, fast_row, plain_text, row_of
from tillflow import sample
from tillflow.messages import MessageError, TransactionMessage, decode, encode_transaction
from tillflow.record import Origin, Transaction, validate

ORIGIN = Origin("csv", "retail_05_01_2024.csv", 12)


def tx(**overrides) -> Transaction:
    raw = {"id": "3f2504e0-4f89-11d3-9a0c-0305e82c3301", "transaction_date": "2024-01-05", "category": "SELL",
           "name": "Organic Bananas 1kg", "quantity": "3", "amount_excl_tax": "12.30", "amount_inc_tax": "14.76",
           "store_id": "main"}
    raw.update(overrides)
    result = validate(raw, origin=ORIGIN)
    assert isinstance(result, Transaction), result
    return result


def compact(doc: dict) -> bytes:
    """A document in the producer's own layout (no spaces), so only the values differ."""
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")


def reference_row(value: bytes) -> TransactionRow | None:
    """The reference path: decode(), then row_of(); None when decode refuses the message."""
    try:
        msg = decode(value)
    except MessageError:
        return None
    return row_of(msg) if type(msg) is TransactionMessage else None


def assert_agrees(value: bytes) -> TransactionRow | None:
    """Whatever the fast path accepts, the reference path accepts as the very same row."""
    fast = fast_row(value)
    if fast is not None:
        assert fast == reference_row(value), value
    return fast


def test_a_message_as_the_producer_writes_it_takes_the_fast_path():
    value = encode_transaction(tx())
    row = assert_agrees(value)
    assert row == TransactionRow(
        b"3f2504e0-4f89-11d3-9a0c-0305e82c3301", b"2024-01-05", b"SELL", b"Organic Bananas 1kg", b"3", b"12.30",
        b"14.76", b"main", b"csv", b"retail_05_01_2024.csv", b"12",
    )
    assert row.content() == (b"2024-01-05", b"SELL", b"Organic Bananas 1kg", b"3", b"12.30", b"14.76", b"main")


def test_every_row_of_the_benchmark_data_takes_the_fast_path():
    for item in sample.rows(2000, seed=7):
        record = tx(id=item.id, transaction_date=item.transaction_date.isoformat(), category=item.category,
                    name=item.name, quantity=str(item.quantity), amount_excl_tax=str(item.amount_excl_tax),
                    amount_inc_tax=str(item.amount_inc_tax))
        assert assert_agrees(encode_transaction(record)) is not None, record


def test_null_origin_parts_are_copy_nulls():
    row = assert_agrees(encode_transaction(tx(), Origin("api", None, None)))
    assert (row.source, row.source_ref, row.source_line) == (b"api", NULL, NULL)
    row = assert_agrees(encode_transaction(tx(), Origin("csv", "", 5)))  # an empty ref is stored as NULL
    assert (row.source_ref, row.source_line) == (NULL, b"5")


def test_escaped_text_takes_the_fast_path_as_its_copy_text():
    row = assert_agrees(encode_transaction(tx(name='Vin "rouge" \\ Caf\u00e9'), Origin("csv", "C:\\in\\x.csv", 2)))
    assert row.name == 'Vin "rouge" \\\\ Caf\u00e9'.encode() and row.source_ref == b"C:\\\\in\\\\x.csv"
    escaped = encode_transaction(tx()).replace(b"Bananas", b"\\u0042ananas")  # JSON may escape any character
    assert assert_agrees(escaped).name == b"Organic Bananas 1kg"


@pytest.mark.parametrize("value", [
    # Valid, but not the producer's exact layout or text: the reference path canonicalises them.
    encode_transaction(tx()).replace(b"3f2504e0", b"3F2504E0"),
    encode_transaction(tx()).replace(b'"12.30"', b'"012.30"'),
    encode_transaction(tx()).replace(b'"quantity":3', b'"quantity": 3'),
    encode_transaction(tx()).replace(b'"schema_version":1,', b'"schema_version":1,"extra":true,'),
    encode_transaction(tx(), Origin("csv", "a\\b.csv", 0)),  # line 0 is stored as NULL
    encode_transaction(tx(quantity=str(10**9))),
    encode_transaction(tx()).replace(b"Organic Bananas 1kg", b"Organic Bananas 1kg "),  # trimmed on the way
    encode_transaction(tx()).replace(b"Organic Bananas 1kg", b"Cafe\xcc\x81"),  # made NFC on the way
])
def test_valid_messages_the_fast_path_leaves_to_the_reference(value):
    assert fast_row(value) is None
    assert reference_row(value) is not None


@pytest.mark.parametrize("value", [
    encode_transaction(tx()).replace(b"2024-01-05", b"2024-02-30"),
    encode_transaction(tx()).replace(b'"12.30"', b'"0.00"'),
    encode_transaction(tx()).replace(b"Organic Bananas 1kg", b"Caf\xc3\xa9 \xff"),  # not UTF-8
    encode_transaction(tx()).replace(b"retail_05", b"retail_\xff5"),
    encode_transaction(tx()).replace(b'"main"', b'"m' + b"a" * 64 + b'"'),  # store of 65 characters
    encode_transaction(tx()).replace(b'"main"', b'"ma in"'),
    encode_transaction(tx()).replace(b'"kind":"transaction"', b'"kind":"reject"'),
    encode_transaction(tx())[:-1],
    b"",
])
def test_invalid_messages_never_take_the_fast_path(value):
    assert fast_row(value) is None
    assert reference_row(value) is None


@settings(max_examples=300, deadline=None)
@given(transactions(), origins)
def test_property_any_valid_transaction_gets_the_reference_row(original, origin):
    value = encode_transaction(original, origin)
    fast = assert_agrees(value)
    if (original.quantity < 10**9 and (origin.line is None or 1 <= origin.line < 10**9)
            and original.name.isprintable()):  # the record's fast path leaves the rest to its full checks
        assert fast is not None, value  # the fast path is not a path nothing takes


_json_values = st.none() | st.booleans() | st.integers(-(10**12), 10**12) | st.text(max_size=12) | st.sampled_from(
    ["2024-02-29", "2023-02-29", "0001-01-01", "9999-12-31", "0.00", "0.01", "1.5", "01.50", "9999999999.99",
     "10000000000.00", "SELL", "BUY", "sell", " x", "x ", "\u00e9", "e\u0301", "", "a" * 201, "main", "x\\y"]
)
_fields = ["id", "transaction_date", "category", "name", "quantity", "amount_excl_tax", "amount_inc_tax",
           "store_id", "schema_version", "kind"]


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(_fields), _json_values)
def test_property_a_changed_field_gets_the_reference_verdict(field, value):
    doc = json.loads(encode_transaction(tx()))
    doc[field] = value
    assert_agrees(compact(doc))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["source", "ref", "line"]), _json_values)
def test_property_a_changed_origin_gets_the_reference_verdict(field, value):
    doc = json.loads(encode_transaction(tx()))
    doc["origin"][field] = value
    assert_agrees(compact(doc))


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_property_corrupted_bytes_get_the_reference_verdict(data):
    value = bytearray(encode_transaction(tx()))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(value) - 1))
        action = data.draw(st.sampled_from(["replace", "insert", "delete"]))
        byte = data.draw(st.integers(0, 255))
        if action == "replace":
            value[at] = byte
        elif action == "insert":
            value.insert(at, byte)
        else:
            del value[at]
    assert_agrees(bytes(value))


def test_cached_verdicts_do_not_leak_between_fields():
    # "main" is a fine store and a fine name; 2024-01-05 a date and a name; each judged in its own field.
    assert assert_agrees(encode_transaction(tx(name="main", store_id="main"))) is not None
    bad_date_as_name = encode_transaction(tx(name="2024-02-30"))
    assert assert_agrees(bad_date_as_name) is not None
    assert fast_row(encode_transaction(tx()).replace(b"2024-01-05", b"2024-02-30")) is None


@given(st.text(st.characters(blacklist_categories=("Cs",))))
def test_property_copy_text_round_trips(text):
    assert plain_text(copy_text(text)) == text
    assert b"\t" not in copy_text(text) and b"\n" not in copy_text(text) and b"\r" not in copy_text(text)


def test_copy_null_reads_as_none():
    assert plain_text(NULL) is None
    assert plain_text(copy_text("\\N")) == "\\N"


def test_row_of_writes_what_the_old_sink_wrote():
    record = dataclasses.replace(tx(), name="Tab\there")  # no source writes this; the sink still must escape it
    msg = TransactionMessage(record, Origin("csv", "a\tb.csv", 3))
    row = row_of(msg)
    assert row.name == b"Tab\\there" and row.source_ref == b"a\\tb.csv" and row.source_line == b"3"
    assert row.amount_excl_tax == b"12.30" and row.id == str(record.id).encode() and row.quantity == b"3"


_VERDICTS = """
import dataclasses, json, sys
from decimal import Decimal
from consumer.rows import fast_row, row_of
from tillflow.messages import MessageError, TransactionMessage, decode, encode_transaction
from tillflow.record import Origin, Transaction, validate

constant, values = sys.argv[1], json.loads(sys.argv[2])
base = validate({"id": "3f2504e0-4f89-11d3-9a0c-0305e82c3301", "transaction_date": "2024-01-05",
                 "category": "SELL", "name": "Milk", "quantity": "3", "amount_excl_tax": "12.30",
                 "amount_inc_tax": "14.76", "store_id": "main"}, origin=Origin("csv", "f.csv", 1))
out = []
for value in values:
    if constant == "MAX_AMOUNT":
        fields = {"amount_excl_tax": Decimal(value), "amount_inc_tax": Decimal(value)}
    else:
        fields = {"quantity": value}
    message = encode_transaction(dataclasses.replace(base, **fields), Origin("csv", "f.csv", 1))
    try:
        decoded = decode(message)
        reference = type(decoded) is TransactionMessage and row_of(decoded) or None
    except MessageError:
        reference = None
    fast = fast_row(message)
    out.append([reference is not None, fast is not None, fast is None or fast == reference])
print(json.dumps(out))
"""


@pytest.mark.parametrize("constant, bound, values", [
    ("MAX_AMOUNT", 'Decimal("500.00")', ["499.99", "500.00", "500.01", "999.99", "1000.00"]),
    ("MAX_AMOUNT", 'Decimal("99999.99")', ["99999.99", "100000.00", "9999999999.99"]),
    ("MAX_QUANTITY", "1000", [999, 1000, 1001, 99999]),
    ("MAX_QUANTITY", "99", [9, 99, 100]),
])
def test_changing_a_bound_of_the_record_moves_both_paths_alike(tmp_path, constant, bound, values):
    """The fast paths' bounds (tillflow.record.accept_canonical, consumer.rows) are derived from
    the record module's constants. With the constant edited in a copy of the source, the reference
    path refuses what is over it, and the consumer's fast path never takes what it refuses.
    The tax rule is left out (tax_rate None on the consumer side), so the amounts test the bound alone."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    for package in ("tillflow", "consumer"):
        shutil.copytree(repo / package, tmp_path / package)
    record = tmp_path / "tillflow" / "record.py"
    text, count = re.subn(rf"^{constant} = .*$", f"{constant} = {bound}", record.read_text(), flags=re.M)
    assert count == 1
    record.write_text(text)
    done = subprocess.run([sys.executable, "-c", _VERDICTS, constant, json.dumps(values)], cwd=tmp_path,
                          env={"PYTHONPATH": str(tmp_path)}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    limit = eval(bound, {"Decimal": Decimal})
    for value, (reference, fast, same) in zip(values, json.loads(done.stdout)):
        within = (Decimal(value) if constant == "MAX_AMOUNT" else value) <= limit
        assert reference == within, f"the rules on {value} with {constant} = {bound}"
        assert same and (fast <= reference), f"the fast path on {value} with {constant} = {bound}"
