"""tillflow.record: every rule, every reason at once, rounding edges, and the fast
path agreeing with the full checks."""
from __future__ import annotations

import dataclasses
import datetime
import json
import pickle
import uuid
from decimal import Decimal, localcontext

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from support.strategies import transactions
from tillflow import record
from tillflow.record import (
    MAX_QUANTITY,
    RAW_MAX_CHARS,
    Origin,
    Reason,
    Rejected,
    Transaction,
    accept_canonical,
    expected_inc_tax,
    parse_uuid,
    tax_matches,
    validate,
    validate_full,
)

ORIGIN = Origin("csv", "retail_05_01_2024.csv", 2)
DAY = datetime.date(2024, 1, 5)
ID = "3f2504e0-4f89-11d3-9a0c-0305e82c3301"


def row(**overrides) -> dict:
    base = {
        "id": ID, "transaction_date": "2024-01-05", "category": "SELL", "name": "Baguette",
        "quantity": "3", "amount_excl_tax": "12.30", "amount_inc_tax": "14.76",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not _ABSENT}


_ABSENT = object()


def ok(**overrides) -> Transaction:
    result = validate(row(**overrides), origin=ORIGIN)
    assert isinstance(result, Transaction), result
    return result


def codes(**overrides) -> set[tuple[str, str]]:
    result = validate(row(**overrides), origin=ORIGIN)
    assert isinstance(result, Rejected), result
    return {(r.field, r.code) for r in result.reasons}


# -- a valid row ---------------------------------------------------------------


def test_canonical_row_becomes_a_transaction_with_exact_types():
    tx = ok()
    assert tx == Transaction(
        uuid.UUID(ID), DAY, "SELL", "Baguette", 3, Decimal("12.30"), Decimal("14.76"), "main"
    )
    assert tx.origin == ORIGIN
    assert type(tx.id) is uuid.UUID and str(tx.id) == ID
    assert type(tx.quantity) is int
    for amount in (tx.amount_excl_tax, tx.amount_inc_tax):
        assert type(amount) is Decimal and amount.as_tuple().exponent == -2


def test_transaction_is_a_real_frozen_dataclass():
    tx = ok()
    with pytest.raises(dataclasses.FrozenInstanceError):
        tx.quantity = 4  # type: ignore[misc]
    assert type(tx) is Transaction
    assert dataclasses.replace(tx, quantity=4).quantity == 4
    assert pickle.loads(pickle.dumps(tx)) == tx
    assert hash(tx) == hash(Transaction(*dataclasses.astuple(tx)[:8]))


def test_origin_is_ignored_by_equality_and_content_key():
    a = ok()
    b = validate(row(), origin=Origin("api", "upload-7"))
    assert a == b and hash(a) == hash(b)
    assert a.content_key() == b.content_key()


def test_content_key_is_everything_but_id_and_origin():
    a = ok()
    other_id = ok(id=str(uuid.uuid4()))
    assert a.content_key() == other_id.content_key()
    assert a.content_key() != ok(amount_excl_tax="12.31").content_key()
    assert a.content_key() != validate(row(), origin=ORIGIN, default_store="north").content_key()
    assert a.content_key() == (DAY, "SELL", "Baguette", 3, Decimal("12.30"), Decimal("14.76"), "main")


def test_validate_full_is_validate_without_the_fast_path():
    assert validate_full(row(), origin=ORIGIN) == ok()
    assert validate_full(row(quantity="0"), origin=ORIGIN) == validate(row(quantity="0"), origin=ORIGIN)


def test_origin_with_line():
    o = Origin("csv", "f.csv").with_line(7)
    assert o == Origin("csv", "f.csv", 7) and type(o) is Origin
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.line = 8  # type: ignore[misc]


# -- id ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        ID, ID.upper(), f"{{{ID}}}", f"urn:uuid:{ID}", ID.replace("-", ""),
        f"  {ID}\t", f"URN:UUID:{ID.upper()}", f"{{{ID.replace('-', '')}}}",
    ],
)
def test_id_accepts_standard_forms_and_stores_canonical(text):
    assert str(ok(id=text).id) == ID


def test_id_accepts_a_uuid_object():
    assert ok(id=uuid.UUID(ID)).id == uuid.UUID(ID)


@pytest.mark.parametrize(
    "text, code",
    [
        (None, "missing"), ("", "missing"), ("   ", "missing"), ("not-a-uuid", "invalid_uuid"),
        ("3f2504e04-f89-11d3-9a0c-0305e82c3301", "invalid_uuid"),  # hyphen moved
        ("3f2504e0-4f89-11d3-9a0c-0305e82c330g", "invalid_uuid"),
        ("3f2504e0_4f89_11d3_9a0c_0305e82c3301", "invalid_uuid"),
        ("+f2504e04f8911d39a0c0305e82c3301", "invalid_uuid"),  # int(..., 16) would take it
        ("3f2504e0 4f8911d39a0c0305e82c33011", "invalid_uuid"),
        ("٣f2504e04f8911d39a0c0305e82c3301", "invalid_uuid"),  # non-ASCII digit
        ("3f2504e0-4f89-11d3-9a0c-0305e82c33\x001", "nul_byte"),
        (12345, "wrong_type"), (1.5, "float_not_allowed"),
    ],
)
def test_id_rejects(text, code):
    assert codes(id=text) == {("id", code)}


def test_parse_uuid_is_strict():
    assert parse_uuid(ID) == uuid.UUID(ID)
    assert parse_uuid("{" + ID) is None
    assert parse_uuid("urn:uuid:" + ID[:-1]) is None


# -- transaction_date ----------------------------------------------------------


def test_date_text_or_date_object():
    assert ok(transaction_date="2024-02-29").transaction_date == datetime.date(2024, 2, 29)
    assert ok(transaction_date=" 2024-02-29 ").transaction_date == datetime.date(2024, 2, 29)
    assert ok(transaction_date=DAY).transaction_date == DAY


@pytest.mark.parametrize("value", [None, "", "  ", _ABSENT])
def test_date_falls_back_to_default_date(value):
    result = validate(row(transaction_date=value), origin=ORIGIN, default_date=datetime.date(2023, 12, 31))
    assert result.transaction_date == datetime.date(2023, 12, 31)


def test_date_in_the_row_wins_over_default_date():
    assert validate(row(), origin=ORIGIN, default_date=datetime.date(2000, 1, 1)).transaction_date == DAY


@pytest.mark.parametrize(
    "value, code",
    [
        (None, "missing"), ("2024-02-30", "invalid_date"), ("2023-02-29", "invalid_date"),
        ("2024-13-01", "invalid_date"), ("20240105", "invalid_date"), ("2024-W01-1", "invalid_date"),
        ("05/01/2024", "invalid_date"), ("2024-1-5", "invalid_date"), ("２０２４-01-05", "invalid_date"),
        ("2024-01-05T10:00", "invalid_date"), ("2024-01-0\x00", "nul_byte"),
        (datetime.datetime(2024, 1, 5, 10, 0), "wrong_type"), (20240105, "wrong_type"),
    ],
)
def test_date_rejects(value, code):
    assert codes(transaction_date=value) == {("transaction_date", code)}


# -- category ------------------------------------------------------------------


@pytest.mark.parametrize("value, stored", [("SELL", "SELL"), ("sell", "SELL"), (" Buy\t", "BUY"), ("bUy", "BUY")])
def test_category_trimmed_case_insensitive_stored_upper(value, stored):
    assert ok(category=value).category == stored


@pytest.mark.parametrize(
    "value, code",
    [
        ("SOLD", "unknown_category"), ("S ELL", "unknown_category"), ("ſell", "unknown_category"),
        ("", "missing"), (None, "missing"), ("SELL\x00", "nul_byte"), (1, "wrong_type"),
    ],
)
def test_category_rejects(value, code):
    assert codes(category=value) == {("category", code)}


# -- name ----------------------------------------------------------------------


def test_name_is_trimmed_and_nfc_normalised():
    assert ok(name="  Café crème  ").name == "Café crème"
    decomposed = "Cafe\u0301"
    assert ok(name=decomposed).name == "Caf\u00e9"
    assert ok(name="Pain\u00a0de mie").name == "Pain\u00a0de mie"  # no-break space is text
    assert ok(name="x" * 200).name == "x" * 200
    assert ok(name='Vin "rouge", 75cl; \\ / #').name == 'Vin "rouge", 75cl; \\ / #'


@pytest.mark.parametrize(
    "value, found",
    [
        ("x" * 201, {("name", "too_long")}),
        ("x" * 204_800, {("name", "too_long")}),
        ("", {("name", "missing")}), ("   ", {("name", "missing")}), (None, {("name", "missing")}),
        ("Pain\x00", {("name", "nul_byte")}),
        ("Pain\tde mie", {("name", "control_char")}),
        ("Pain\nde mie", {("name", "control_char")}),
        ("Pa\x85in", {("name", "control_char")}), ("Pain\x7f", {("name", "control_char")}),
        ("Pain\udcff", {("name", "invalid_character")}),
        ("\x00" + "x" * 300, {("name", "nul_byte"), ("name", "too_long")}),
        (42, {("name", "wrong_type")}),
    ],
)
def test_name_rejects(value, found):
    assert codes(name=value) == found


def test_name_too_long_message_gives_length_not_content():
    result = validate(row(name="x" * 204_800), origin=ORIGIN)
    assert result.reasons[0].message == "name is 204800 characters long: at most 200 are allowed"


# -- quantity ------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, stored",
    [("1", 1), ("007", 7), (" 12 ", 12), (5, 5), (Decimal("5"), 5), (str(MAX_QUANTITY), MAX_QUANTITY)],
)
def test_quantity_accepts_whole_numbers(value, stored):
    assert ok(quantity=value).quantity == stored


@pytest.mark.parametrize(
    "value, code",
    [
        ("0", "out_of_range"), ("-1", "out_of_range"), (0, "out_of_range"), (-3, "out_of_range"),
        (str(MAX_QUANTITY + 1), "out_of_range"), ("9" * 5000, "out_of_range"), (2**40, "out_of_range"),
        ("1.0", "not_integer"), ("1,5", "not_integer"), ("1e3", "not_integer"), ("NaN", "not_integer"),
        ("+1", "not_integer"), ("１", "not_integer"), ("1_000", "not_integer"), ("-", "not_integer"),
        (" ", "missing"), ("", "missing"), (None, "missing"),
        (True, "not_integer"), (False, "not_integer"), (Decimal("1.0"), "not_integer"),
        (Decimal("NaN"), "not_integer"), (1.0, "float_not_allowed"), ("1\x00", "nul_byte"),
        ([1], "wrong_type"),
    ],
)
def test_quantity_rejects(value, code):
    assert codes(quantity=value) == {("quantity", code)}


def test_quantity_message_quotes_the_value():
    result = validate(row(quantity="1,5"), origin=ORIGIN)
    assert result.reasons[0].message == "quantity '1,5' is not a whole number"


# -- amounts -------------------------------------------------------------------


@pytest.mark.parametrize(
    "excl, inc, stored",
    [
        ("12.30", "14.76", "12.30"), ("12.3", "14.76", "12.30"), ("12", "14.40", "12.00"),
        (" 12.30 ", "14.76", "12.30"), ("12.300", "14.76", "12.30"), ("0012.30", "14.76", "12.30"),
        (12, "14.40", "12.00"), (Decimal("12.3"), "14.76", "12.30"), (Decimal("1.2E+1"), "14.40", "12.00"),
        ("0.01", "0.01", "0.01"),
    ],
)
def test_amounts_accept_exact_cents_and_store_two_places(excl, inc, stored):
    tx = ok(amount_excl_tax=excl, amount_inc_tax=inc)
    assert str(tx.amount_excl_tax) == stored
    assert tx.amount_excl_tax.as_tuple().exponent == -2


def test_amount_upper_bound_fits_numeric_12_2():
    top = validate(
        row(amount_excl_tax="9999999999.99", amount_inc_tax="9999999999.99"), origin=ORIGIN, tax_rate=Decimal(0)
    )
    assert top.amount_excl_tax == Decimal("9999999999.99")
    over = validate(
        row(amount_excl_tax="10000000000.00", amount_inc_tax="10000000000.00"), origin=ORIGIN, tax_rate=Decimal(0)
    )
    assert {(r.field, r.code) for r in over.reasons} == {
        ("amount_excl_tax", "out_of_range"), ("amount_inc_tax", "out_of_range")
    }


@pytest.mark.parametrize(
    "value, code",
    [
        ("1,5", "not_decimal"), ("NaN", "not_decimal"), ("nan", "not_decimal"), ("Infinity", "not_decimal"),
        ("-Infinity", "not_decimal"), ("1e3", "not_decimal"), ("1E3", "not_decimal"), ("1,234.50", "not_decimal"),
        ("1 234.50", "not_decimal"), ("1_000.00", "not_decimal"), (".5", "not_decimal"), ("5.", "not_decimal"),
        ("+12.30", "not_decimal"), ("0x10", "not_decimal"), ("٣.٠٠", "not_decimal"), ("12.30€", "not_decimal"),
        ("12.3\x00", "nul_byte"),
        ("", "missing"), ("  ", "missing"), (None, "missing"),
        ("-1", "out_of_range"), ("-12.30", "out_of_range"), ("0", "out_of_range"), ("0.00", "out_of_range"),
        ("-0.00", "out_of_range"), ("1" + "0" * 400, "out_of_range"),
        ("12.345", "too_many_decimals"), ("0.001", "too_many_decimals"), ("0.30000000000000004", "too_many_decimals"),
        (12.3, "float_not_allowed"), (True, "wrong_type"), (Decimal("NaN"), "not_decimal"),
        (Decimal("Infinity"), "not_decimal"), (Decimal("-5"), "out_of_range"), (Decimal("1E-100000"), "too_many_decimals"),
        (Decimal("1E+100000"), "out_of_range"),
    ],
)
def test_amount_rejects(value, code):
    # amount_excl_tax broken: the tax rule cannot be checked, so it is the only reason.
    assert codes(amount_excl_tax=value) == {("amount_excl_tax", code)}
    assert codes(amount_inc_tax=value) == {("amount_inc_tax", code)}


@pytest.mark.parametrize(
    "value, hint",
    [("1,5", "use a dot for decimals"), ("1e3", "without an exponent"), ("NaN", "not an amount")],
)
def test_amount_messages_help(value, hint):
    result = validate(row(amount_excl_tax=value), origin=ORIGIN)
    assert hint in result.reasons[0].message
    assert repr(value) in result.reasons[0].message


def test_float_amount_is_rejected_not_converted():
    result = validate(row(amount_excl_tax=12.3), origin=ORIGIN)
    assert result.reasons == (
        Reason(
            "amount_excl_tax", "float_not_allowed",
            "amount_excl_tax 12.3 is a binary float, which is never accepted: give an amount such as 12.30 as text",
        ),
    )


# -- tax rule ------------------------------------------------------------------


@pytest.mark.parametrize(
    "inc, passes",
    [("14.76", True), ("14.75", True), ("14.77", True), ("14.74", False), ("14.78", False), ("12.30", False)],
)
def test_tax_tolerance_is_one_cent_either_side(inc, passes):
    result = validate(row(amount_excl_tax="12.30", amount_inc_tax=inc), origin=ORIGIN)
    assert isinstance(result, Transaction) is passes
    assert tax_matches(Decimal("12.30"), Decimal(inc), Decimal("0.20")) is passes


def test_rounding_is_half_up_not_half_even():
    # 1.00 * 1.045 = 1.045: half-up gives 1.05 (half-even would give 1.04).
    rate = Decimal("0.045")
    assert expected_inc_tax(Decimal("1.00"), rate) == Decimal("1.05")
    assert expected_inc_tax(Decimal("1.10"), Decimal("0.05")) == Decimal("1.16")  # 1.155
    assert expected_inc_tax(Decimal("0.10"), Decimal("0.05")) == Decimal("0.11")  # 0.105
    # so 1.06 is within a cent and 1.03 is not; half-even would decide the other way.
    assert tax_matches(Decimal("1.00"), Decimal("1.06"), rate)
    assert not tax_matches(Decimal("1.00"), Decimal("1.03"), rate)
    fast = validate(row(amount_excl_tax="1.00", amount_inc_tax="1.06"), origin=ORIGIN, tax_rate=rate)
    assert isinstance(fast, Transaction)
    slow = validate(row(amount_excl_tax="1.00", amount_inc_tax="1.03"), origin=ORIGIN, tax_rate=rate)
    assert {(r.field, r.code) for r in slow.reasons} == {("amount_inc_tax", "tax_mismatch")}


def test_tax_rate_is_configurable():
    assert isinstance(validate(row(amount_inc_tax="12.98"), origin=ORIGIN, tax_rate=Decimal("0.055")), Transaction)
    assert isinstance(validate(row(amount_inc_tax="12.30"), origin=ORIGIN, tax_rate=Decimal("0")), Transaction)
    assert isinstance(validate(row(amount_inc_tax="12.30"), origin=ORIGIN), Rejected)
    # a rate that changes between calls is honoured (the fast path caches one)
    assert isinstance(validate(row(), origin=ORIGIN, tax_rate=Decimal("0.20")), Transaction)
    assert isinstance(validate(row(), origin=ORIGIN, tax_rate=Decimal("0.10")), Rejected)


def test_tax_rate_none_skips_the_tax_rule():
    assert isinstance(validate(row(amount_inc_tax="99.99"), origin=ORIGIN, tax_rate=None), Transaction)
    assert isinstance(validate(row(amount_inc_tax="99.9"), origin=ORIGIN, tax_rate=None), Transaction)


def test_tax_mismatch_message_gives_the_expected_amount():
    result = validate(row(amount_inc_tax="15.00"), origin=ORIGIN)
    assert result.reasons == (
        Reason(
            "amount_inc_tax", "tax_mismatch",
            "amount_inc_tax 15.00 should be 14.76 (amount_excl_tax 12.30 plus 20% tax, give or take 0.01)",
        ),
    )


def test_money_does_not_depend_on_the_thread_decimal_context():
    with localcontext() as ctx:
        ctx.prec = 3
        tx = ok(amount_excl_tax="123456.78", amount_inc_tax="148148.14")
        assert tx.amount_excl_tax == Decimal("123456.78")
        assert tax_matches(Decimal("123456.78"), Decimal("148148.14"), Decimal("0.20"))
        assert isinstance(
            validate(row(amount_excl_tax="123456.7", amount_inc_tax="148148.04"), origin=ORIGIN), Transaction
        )


# -- store_id ------------------------------------------------------------------


def test_store_defaults_and_explicit():
    assert ok().store_id == "main"
    assert ok(store_id="").store_id == "main"
    assert ok(store_id=None).store_id == "main"
    assert validate(row(), origin=ORIGIN, default_store="north-2").store_id == "north-2"
    assert ok(store_id=" Paris_11.b-2 ").store_id == "Paris_11.b-2"
    assert ok(store_id="s" * 64).store_id == "s" * 64


@pytest.mark.parametrize(
    "value, code",
    [
        ("s" * 65, "too_long"), ("a b", "invalid_characters"), ("café", "invalid_characters"),
        ("a/b", "invalid_characters"), ("a\x00", "nul_byte"), (7, "wrong_type"),
    ],
)
def test_store_rejects(value, code):
    assert codes(store_id=value) == {("store_id", code)}


def test_an_invalid_default_store_rejects_the_row():
    result = validate(row(), origin=ORIGIN, default_store="bad store")
    assert [(r.field, r.code) for r in result.reasons] == [("store_id", "invalid_characters")]
    assert record.check_store_id("bad store") and record.check_store_id("main") is None


# -- every reason at once; the reject itself -------------------------------------


def test_every_reason_is_reported_in_field_order():
    result = validate(
        {
            "id": "nope", "transaction_date": "2024-02-30", "category": "GIFT", "name": "",
            "quantity": "1.5", "amount_excl_tax": "1e3", "amount_inc_tax": "-2", "store_id": "a b",
        },
        origin=ORIGIN,
    )
    assert [(r.field, r.code) for r in result.reasons] == [
        ("id", "invalid_uuid"), ("transaction_date", "invalid_date"), ("category", "unknown_category"),
        ("name", "missing"), ("quantity", "not_integer"), ("amount_excl_tax", "not_decimal"),
        ("amount_inc_tax", "out_of_range"), ("store_id", "invalid_characters"),
    ]
    assert all(r.message for r in result.reasons)
    assert result.origin == ORIGIN


def test_empty_row_lists_every_missing_field():
    result = validate({}, origin=ORIGIN)
    assert [(r.field, r.code) for r in result.reasons] == [
        ("id", "missing"), ("transaction_date", "missing"), ("category", "missing"), ("name", "missing"),
        ("quantity", "missing"), ("amount_excl_tax", "missing"), ("amount_inc_tax", "missing"),
    ]
    assert result.raw == {} and result.id is None


def test_row_reasons_come_first_and_reject_a_valid_row():
    column = Reason("row", "column_count", "the row has 7 columns, expected 6")
    result = validate(row(), origin=ORIGIN, row_reasons=[column])
    assert result.reasons == (column,)
    result = validate(row(quantity="0"), origin=ORIGIN, row_reasons=[column])
    assert [(r.field, r.code) for r in result.reasons] == [("row", "column_count"), ("quantity", "out_of_range")]


def test_raw_is_text_truncated_and_safe_for_utf8_and_postgres():
    huge = "y" * 204_800
    result = validate(
        row(name=huge, quantity=1.5, transaction_date=DAY, category="SE\x00LL", extra="kept", store_id="b\udcffad"),
        origin=ORIGIN,
    )
    raw = result.raw
    assert raw["name"].startswith("y" * RAW_MAX_CHARS)
    assert raw["name"].endswith("[204800 characters, truncated]") and len(raw["name"]) < RAW_MAX_CHARS + 50
    assert raw["quantity"] == "1.5"
    assert raw["transaction_date"] == "2024-01-05"
    assert raw["category"] == "SE\u2400LL"
    assert raw["store_id"] == "b\ufffdad"
    assert raw["extra"] == "kept"
    assert list(raw)[:3] == ["id", "transaction_date", "category"]
    json.dumps(raw, ensure_ascii=False).encode("utf-8")  # no lone surrogates left


def test_rejected_id_is_canonical_when_valid_raw_otherwise():
    assert validate(row(id=ID.upper(), quantity="0"), origin=ORIGIN).id == ID
    assert validate(row(id=" nope ", quantity="0"), origin=ORIGIN).id == "nope"
    assert validate(row(id="", quantity="0"), origin=ORIGIN).id is None
    assert validate(row(id=_ABSENT, quantity="0"), origin=ORIGIN).id is None


# -- properties ------------------------------------------------------------------

def as_raw(tx: Transaction) -> dict:
    return {
        "id": str(tx.id), "transaction_date": tx.transaction_date.isoformat(), "category": tx.category,
        "name": tx.name, "quantity": str(tx.quantity), "amount_excl_tax": str(tx.amount_excl_tax),
        "amount_inc_tax": str(tx.amount_inc_tax), "store_id": tx.store_id,
    }


@settings(max_examples=300, deadline=None)
@given(transactions())
def test_property_valid_transactions_survive_validation_unchanged(tx):
    result = validate(as_raw(tx), origin=ORIGIN)
    assert result == tx
    assert type(result.amount_excl_tax) is Decimal and type(result.amount_inc_tax) is Decimal


_near = st.one_of(
    st.none(),
    st.text(st.sampled_from("0123456789.-,eE+ aSELLBUYsellbuyf\x00\t\u00e9\u0665"), max_size=14),
    st.integers(-5, 5),
    st.sampled_from([ID, ID.upper(), "12.30", "14.76", "3", "SELL", "sell", "2024-01-05", "Baguette"]),
)


@st.composite
def near_canonical_rows(draw) -> dict:
    """A valid canonical row with up to three fields replaced by near-miss values."""
    raw = row(store_id="main")
    for name in draw(st.lists(st.sampled_from(record.FIELDS), max_size=3, unique=True)):
        raw[name] = draw(_near)
    return raw


@settings(max_examples=1000, deadline=None)
@given(near_canonical_rows())
def test_property_fast_path_never_disagrees_with_the_full_checks(raw):
    fast = accept_canonical(*(raw[f] for f in record.FIELDS), origin=ORIGIN, tax_rate=Decimal("0.20"),
                            default_date=DAY, default_store="main")
    full = validate_full(raw, origin=ORIGIN, tax_rate=Decimal("0.20"), default_date=DAY)
    if fast is not None:
        assert type(full) is Transaction
        assert full == fast and full.content_key() == fast.content_key() and full.origin == fast.origin


@settings(max_examples=300, deadline=None)
@given(
    excl=st.integers(1, 10**12 - 1),
    delta=st.integers(-3, 3),
    rate=st.sampled_from([Decimal("0.20"), Decimal("0.055"), Decimal("0.045"), Decimal("0"), Decimal("0.196")]),
)
def test_property_fast_tax_check_matches_tax_matches(excl, delta, rate):
    e = Decimal(excl).scaleb(-2)
    inc = expected_inc_tax(e, rate) + Decimal(delta).scaleb(-2)
    if inc <= 0 or inc > record.MAX_AMOUNT:
        return
    fast = accept_canonical(ID, None, "SELL", "x", 1, str(e), str(inc), None,
                            origin=ORIGIN, tax_rate=rate, default_date=DAY, default_store="main")
    assert (fast is not None) is tax_matches(e, inc, rate) is (abs(delta) <= 1)


_anything = st.one_of(
    st.none(), st.text(max_size=50), st.integers(), st.floats(), st.booleans(), st.decimals(),
    st.dates(), st.binary(max_size=8), st.lists(st.integers(), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(record.FIELDS + ("other",)), _anything))
def test_property_random_input_never_crashes(raw):
    result = validate(raw, origin=ORIGIN)
    assert isinstance(result, (Transaction, Rejected))
    if isinstance(result, Rejected):
        assert result.reasons
        json.dumps(result.raw, ensure_ascii=False).encode("utf-8")
    else:
        assert type(result.amount_excl_tax) is Decimal
