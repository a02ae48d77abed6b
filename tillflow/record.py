"""The transaction record: parse and validate one transaction from any source.

``validate(raw, origin=...)`` turns one raw row, a mapping of record field name to
``str``, ``int``, ``Decimal``, ``date`` or ``None``, into a :class:`Transaction`,
or into a :class:`Rejected` that lists every :class:`Reason` that applies (not
just the first) together with the row as text. It never raises for bad data.

Rules (docs/architecture.md, "The transaction record"); surrounding whitespace is
trimmed from every text value:

- ``id``: a UUID in any standard text form (``8-4-4-4-12``, 32 hex digits,
  ``{...}``, ``urn:uuid:...``, any case); stored as a ``uuid.UUID``.
- ``transaction_date``: ``YYYY-MM-DD`` naming a real calendar day, or a
  ``date`` (not a ``datetime``); ``default_date`` when absent or empty.
- ``category``: ``SELL`` or ``BUY``, any case; stored upper-case.
- ``name``: 1 to 200 characters after trimming, NFC-normalised; no NUL, no
  control characters, no undecodable bytes (lone surrogates).
- ``quantity``: a whole number from 1 to 2**31-1 (fits PostgreSQL ``integer``):
  digits only, optionally a leading ``-`` (which is then out of range). ``1.0``,
  ``1,5``, ``1e3``, ``NaN``, booleans and floats are rejected.
- amounts: ``-?DIGITS[.DIGITS]`` text, an ``int`` or a finite ``Decimal``; the
  value must be a whole number of cents (``12.300`` is fine, ``12.345`` is not),
  greater than 0 and below 10**10 (fits ``numeric(12,2)``); stored quantized to
  exactly 2 places. Exponents, ``NaN``, ``Infinity``, thousands separators,
  decimal commas and binary floats are rejected: money is never a float.
- tax rule: ``amount_inc_tax`` is ``amount_excl_tax * (1 + tax_rate)`` rounded
  half-up to cents, give or take 0.01 (:func:`tax_matches`).
- ``store_id``: 1 to 64 of ``[A-Za-z0-9_.-]``; ``default_store`` when absent or
  empty. Keys other than the record fields are kept in ``Rejected.raw`` but not
  checked.

Speed: this runs on every row of every source (1M-row files). Rows already in
canonical form (hyphenated UUID, plain ``12.30`` amounts, printable names...)
are accepted by a lean fast path; any row it does not accept outright is
re-checked by the complete field checkers, which define the behaviour. Both
paths build the same values (the tests compare them).
"""
from __future__ import annotations

import dataclasses
import datetime
import re
import unicodedata
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Context, Decimal

FIELDS = (
    "id", "transaction_date", "category", "name", "quantity",
    "amount_excl_tax", "amount_inc_tax", "store_id",
)
CATEGORIES = frozenset({"SELL", "BUY"})
MAX_NAME_CHARS = 200
MAX_STORE_CHARS = 64
MAX_QUANTITY = 2**31 - 1
MAX_AMOUNT = Decimal("9999999999.99")
# The bounds above as the fast checks use them (accept_canonical here, consumer.rows on the
# consumer's fast path): derived, never restated, so that lowering a constant moves every path.
MAX_AMOUNT_CENTS = int(MAX_AMOUNT * 100)
AMOUNT_MAX_CHARS = len(f"{MAX_AMOUNT:.2f}")  # the longest canonical amount, '9999999999.99'
QUANTITY_MAX_DIGITS = len(str(MAX_QUANTITY))
RAW_MAX_CHARS = 1000  # per value kept in Rejected.raw, so a 200 KiB field cannot flood Kafka
DEFAULT_TAX_RATE = Decimal("0.20")  # docs/architecture.md's; processes pass Settings.tax_rate (TAX_RATE)

CENT = Decimal("0.01")
_MINUS_CENT = -CENT
_ZERO = Decimal(0)
# Money arithmetic never depends on the caller's thread-local decimal context.
_CTX = Context(prec=60, rounding=ROUND_HALF_UP)
_STORE_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-"
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a record came from; travels with it through Kafka."""

    source: str  # 'csv' | 'sqlite' | 'api' | 'ws' | 'upload'
    ref: str | None = None  # file name, upload id, sqlite path...
    line: int | None = None  # 1-based physical line where the row starts (header is 1), or sqlite rowid

    def with_line(self, line: int | None) -> Origin:
        """This origin at another line; cheap enough to call once per row."""
        new = _OriginBuilder(self.source, self.ref, line)
        new.__class__ = Origin
        return new


@dataclass(frozen=True, slots=True)
class Reason:
    """One broken rule: which field, a stable machine code, and a sentence."""

    field: str  # a record field, or 'row' for structural problems
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Transaction:
    """A valid transaction. ``origin`` is informative: equality and hashing ignore it."""

    id: uuid.UUID
    transaction_date: datetime.date
    category: str
    name: str
    quantity: int
    amount_excl_tax: Decimal
    amount_inc_tax: Decimal
    store_id: str
    origin: Origin | None = field(default=None, compare=False)

    def content_key(self) -> tuple:
        """The fields that make two versions of one id the same (duplicate) or not (conflict)."""
        return (
            self.transaction_date, self.category, self.name, self.quantity,
            self.amount_excl_tax, self.amount_inc_tax, self.store_id,
        )


@dataclass(frozen=True, slots=True)
class Rejected:
    """An invalid row: the row as (truncated) text, every reason, and its origin."""

    raw: dict[str, str | None]
    reasons: tuple[Reason, ...]
    origin: Origin

    @property
    def id(self) -> str | None:
        """The row's id: canonical when it is a valid UUID, else the raw text; None if absent."""
        text = self.raw.get("id")
        if text is None or not text.strip():
            return None
        parsed = parse_uuid(text.strip())
        return str(parsed) if parsed is not None else text.strip()


def _mutable_twin(cls: type) -> type:
    """A plain class with exactly ``cls``'s slots, whose instances may become ``cls``.

    A frozen dataclass's ``__init__`` sets every field through ``object.__setattr__``,
    which made building a Transaction cost more than validating it. Building the
    twin with ordinary attribute stores and then assigning ``__class__`` is ~3x
    faster and yields a true, frozen ``cls`` instance.
    """
    names = [f.name for f in dataclasses.fields(cls)]
    twin = dataclasses.make_dataclass(
        f"_{cls.__name__}Builder", names, slots=True, eq=False, repr=False, match_args=False
    )
    assert twin.__slots__ == cls.__slots__
    return twin


_OriginBuilder = _mutable_twin(Origin)
_TransactionBuilder = _mutable_twin(Transaction)


def tax_matches(excl: Decimal, inc: Decimal, tax_rate: Decimal) -> bool:
    """True if ``inc`` is ``excl * (1 + tax_rate)`` rounded half-up to cents, +/- 0.01."""
    diff = _CTX.subtract(inc, expected_inc_tax(excl, tax_rate))
    return _MINUS_CENT <= diff <= CENT


def expected_inc_tax(excl: Decimal, tax_rate: Decimal) -> Decimal:
    """``excl * (1 + tax_rate)`` rounded half-up to cents."""
    # excl + excl * tax_rate in one exact step (prec 60), then one rounding.
    return _CTX.fma(excl, tax_rate, excl).quantize(CENT, context=_CTX)


def parse_uuid(text: str) -> uuid.UUID | None:
    """Parse a UUID from its standard text forms; None if it is not one.

    Stricter than ``uuid.UUID(text)``, which accepts hyphens anywhere and, through
    ``int(..., 16)``, underscores, signs and non-ASCII digits.
    """
    n = len(text)
    if n == 36 and text[8:24:5] == "----":
        hexdigits = text.replace("-", "")
    elif n == 32:
        hexdigits = text
    elif n in (34, 38) and text[0] == "{" and text[-1] == "}":
        return parse_uuid(text[1:-1])
    elif n in (41, 45) and text[:9].lower() == "urn:uuid:":
        return parse_uuid(text[9:])
    else:
        return None
    try:
        as_bytes = bytes.fromhex(hexdigits)
    except ValueError:
        return None
    if len(as_bytes) != 16:  # fromhex skips whitespace between pairs
        return None
    return _uuid_from_int(int.from_bytes(as_bytes))


_UUID = uuid.UUID
_new_uuid = uuid.UUID.__new__
_set_uuid_int = uuid.UUID.int.__set__
_set_uuid_safe = uuid.UUID.is_safe.__set__
_UUID_UNKNOWN = uuid.SafeUUID.unknown


def _uuid_from_int(value: int) -> uuid.UUID:
    # uuid.UUID.__init__ re-parses and re-checks what is already a 128-bit int.
    u = _new_uuid(_UUID)
    _set_uuid_int(u, value)
    _set_uuid_safe(u, _UUID_UNKNOWN)
    return u


def validate(
    raw: Mapping[str, object],
    *,
    origin: Origin,
    tax_rate: Decimal | None = DEFAULT_TAX_RATE,
    default_date: datetime.date | None = None,
    default_store: str = "main",
    row_reasons: Sequence[Reason] = (),
) -> Transaction | Rejected:
    """Validate one raw row; a Transaction, or a Rejected with every reason that applies.

    ``tax_rate=None`` skips the tax rule: a consumer re-checking a message must not
    judge it by a rate configured after its producer checked it.
    ``row_reasons`` are problems a source already found with the row as a whole
    (wrong column count, undecodable bytes): they are reported first, and the
    row is rejected even if its fields are valid.
    """
    if not row_reasons:
        get = raw.get
        tx = accept_canonical(
            get("id"), get("transaction_date"), get("category"), get("name"), get("quantity"),
            get("amount_excl_tax"), get("amount_inc_tax"), get("store_id"),
            origin=origin, tax_rate=tax_rate, default_date=default_date, default_store=default_store,
        )
        if tx is not None:
            return tx
    return _full(raw, origin, tax_rate, default_date, default_store, list(row_reasons))


# -- the fast checks, a field each ----------------------------------------------------------
# What a value in canonical form must be to be valid, as cheap str tests. accept_canonical
# (the CSV and SQLite sources' fast path, and the consumer's reference path) and the
# consumer's fast path (consumer.rows, once per distinct value) call these same functions;
# validate_full gives the verdict, with reasons, for everything else.


def canonical_date(text) -> datetime.date | None:
    """``YYYY-MM-DD`` as a date; None for anything else."""
    if type(text) is str and len(text) == 10 and text[4] == "-" and text[7] == "-" and text.isascii():
        try:
            return _fromisoformat(text)
        except ValueError:
            return None
    return None


def canonical_name(name) -> bool:
    """A product name as the rules take it: printable, trimmed, NFC, 1 to MAX_NAME_CHARS characters."""
    return (
        type(name) is str
        and 0 < len(name) <= MAX_NAME_CHARS
        and name.isprintable()  # rules out NUL, control chars, surrogates, odd spaces
        and name[0] != " "
        and name[-1] != " "
        and (name.isascii() or unicodedata.is_normalized("NFC", name))
    )


def canonical_store(store) -> bool:
    """A store id as the rules take it: 1 to MAX_STORE_CHARS of letters, digits, ``_ . -``."""
    return type(store) is str and 0 < len(store) <= MAX_STORE_CHARS and not store.strip(_STORE_CHARS)


def accept_canonical(
    id_, transaction_date, category, name, quantity, amount_excl_tax, amount_inc_tax, store_id, /, *,
    origin, tax_rate, default_date, default_store,
) -> Transaction | None:
    """validate()'s fast path: a Transaction if the row is valid and in canonical form,
    else None, and then validate_full() gives the verdict.

    The row's eight values come positionally, in ``FIELDS`` order (a source
    has them as a tuple, and this runs once per row); the file's context by
    name: as in ``validate``, ``tax_rate`` None means "do not check the tax".

    Canonical: a hyphenated UUID; ``YYYY-MM-DD`` or a date; ``SELL``/``BUY``; a
    printable, trimmed, NFC name; quantity as digits or an int; amounts as
    ``123.45`` text. Bulk sources (CSV, SQLite) call it first to skip building a
    dict per row. Every test is a cheap str method; the full checks must agree
    with whatever it accepts (the tests compare the two).
    """
    s = id_
    if type(s) is not str or len(s) != 36 or s[8:24:5] != "----":
        return None
    try:
        as_bytes = _fromhex(s.replace("-", ""))  # strict hex, unlike int(..., 16)
    except ValueError:
        return None
    if len(as_bytes) != 16:  # fromhex skips whitespace
        return None
    u = _new_uuid(_UUID)
    _set_uuid_int(u, _int_from_bytes(as_bytes))
    _set_uuid_safe(u, _UUID_UNKNOWN)

    d = transaction_date
    if d is None:
        d = default_date
    elif type(d) is str:
        d = canonical_date(d)
    if type(d) is not _date:
        return None

    if category != "SELL" and category != "BUY":
        return None

    if not canonical_name(name):
        return None

    q = quantity
    if type(q) is str and len(q) <= QUANTITY_MAX_DIGITS and q.isdigit() and q.isascii():
        q = int(q)
    if type(q) is not int or q < 1 or q > MAX_QUANTITY:
        return None

    # Amounts as '123.45' only; the tax rule is checked on integer cents, exact
    # whatever the thread's decimal context.
    e = amount_excl_tax
    i = amount_inc_tax
    if (
        type(e) is not str or type(i) is not str
        or not 3 < len(e) <= AMOUNT_MAX_CHARS or not 3 < len(i) <= AMOUNT_MAX_CHARS
        or e[-3] != "." or i[-3] != "."
    ):
        return None
    e_digits = e.replace(".", "", 1)  # a second dot stays and fails isdigit
    i_digits = i.replace(".", "", 1)
    if not (e_digits.isdigit() and i_digits.isdigit() and e_digits.isascii() and i_digits.isascii()):
        return None
    e_cents = int(e_digits)
    i_cents = int(i_digits)
    if not e_cents or not i_cents or e_cents > MAX_AMOUNT_CENTS or i_cents > MAX_AMOUNT_CENTS:
        return None
    if tax_rate is not None:
        rate, numerator2, denominator2 = _factor
        if rate is not tax_rate:
            rate, numerator2, denominator2 = _cache_factor(tax_rate)
        expected = (e_cents * numerator2 + (denominator2 >> 1)) // denominator2
        if not -1 <= i_cents - expected <= 1:
            return None

    store = store_id
    if store is None or store == "":
        store = default_store
    if not canonical_store(store):
        return None

    tx = _TransactionBuilder(u, d, category, name, q, _Decimal(e), _Decimal(i), store, origin)
    tx.__class__ = Transaction
    return tx


def _cache_factor(tax_rate: Decimal) -> tuple[Decimal, int, int]:
    """(tax_rate, 2n, 2d) where n/d = 1 + tax_rate: cents * 2n + d, floor-divided by 2d,
    is cents * (1 + tax_rate) rounded half-up. Kept in one tuple so threads see a
    consistent triple."""
    global _factor
    numerator, denominator = _CTX.add(1, tax_rate).as_integer_ratio()
    _factor = (tax_rate, 2 * numerator, 2 * denominator)
    return _factor


_factor = (None, 0, 1)
_fromhex = bytes.fromhex
_int_from_bytes = int.from_bytes
_fromisoformat = datetime.date.fromisoformat
_date = datetime.date
_Decimal = Decimal


# -- the full checks: every reason, with a sentence each -----------------------


def validate_full(
    raw: Mapping[str, object],
    *,
    origin: Origin,
    tax_rate: Decimal | None = DEFAULT_TAX_RATE,
    default_date: datetime.date | None = None,
    default_store: str = "main",
    row_reasons: Sequence[Reason] = (),
) -> Transaction | Rejected:
    """validate() without its fast path: for a row accept_canonical() just declined."""
    return _full(raw, origin, tax_rate, default_date, default_store, list(row_reasons))


def _full(raw, origin, tax_rate, default_date, default_store, reasons: list[Reason]):
    get = raw.get
    u = _check_id(get("id"), reasons)
    d = _check_date(get("transaction_date"), default_date, reasons)
    category = _check_category(get("category"), reasons)
    name = _check_name(get("name"), reasons)
    q = _check_quantity(get("quantity"), reasons)
    excl = _check_amount("amount_excl_tax", get("amount_excl_tax"), reasons)
    inc = _check_amount("amount_inc_tax", get("amount_inc_tax"), reasons)
    if excl is not None and inc is not None and tax_rate is not None and not tax_matches(excl, inc, tax_rate):
        expected = expected_inc_tax(excl, tax_rate)
        reasons.append(Reason(
            "amount_inc_tax", "tax_mismatch",
            f"amount_inc_tax {inc} should be {expected} (amount_excl_tax {excl} plus "
            f"{format(tax_rate, '%')} tax, give or take 0.01)",
        ))
    store = _check_store(get("store_id"), default_store, reasons)
    if reasons:
        return Rejected(raw=raw_text(raw), reasons=tuple(reasons), origin=origin)
    tx = _TransactionBuilder(u, d, category, name, q, excl, inc, store, origin)
    tx.__class__ = Transaction
    return tx


def _show(value: object, limit: int = 40) -> str:
    """A value quoted for a message, cut short so a huge field stays readable."""
    if isinstance(value, str):
        return repr(value if len(value) <= limit else value[:limit] + "...")
    text = repr(value) if isinstance(value, float) else str(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _text(field_name: str, value: object, reasons: list[Reason], what: str) -> str | None:
    """The trimmed text of a text-only field; None (with a reason if needed) otherwise."""
    if isinstance(value, str):
        s = value.strip()
        if s:
            return s
    if value is None or isinstance(value, str):
        reasons.append(Reason(field_name, "missing", f"{field_name} is missing: give {what}"))
    else:
        reasons.append(_wrong_type(field_name, value, what))
    return None


def _wrong_type(field_name: str, value: object, what: str) -> Reason:
    if isinstance(value, float):
        return Reason(
            field_name, "float_not_allowed",
            f"{field_name} {value!r} is a binary float, which is never accepted: give {what} as text",
        )
    return Reason(field_name, "wrong_type", f"{field_name} is a {type(value).__name__}: give {what}")


def _nul_or(field_name: str, s: str, code: str, message: str) -> Reason:
    """A NUL byte explains the failure better than the parse error it caused."""
    if "\x00" in s:
        return Reason(field_name, "nul_byte", f"{field_name} contains a NUL byte")
    return Reason(field_name, code, message)


def _check_id(value, reasons) -> uuid.UUID | None:
    if isinstance(value, uuid.UUID):
        return value
    s = _text("id", value, reasons, "a UUID such as 3f2504e0-4f89-11d3-9a0c-0305e82c3301")
    if s is None:
        return None
    parsed = parse_uuid(s)
    if parsed is None:
        reasons.append(_nul_or("id", s, "invalid_uuid", f"id {_show(s)} is not a UUID"))
    return parsed


def _check_date(value, default_date, reasons) -> datetime.date | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if default_date is None:
            reasons.append(Reason(
                "transaction_date", "missing", "transaction_date is missing: give a date as YYYY-MM-DD"
            ))
        return default_date
    if type(value) is datetime.date:
        return value
    s = _text("transaction_date", value, reasons, "a date as YYYY-MM-DD")
    if s is None:
        return None
    if len(s) == 10 and s[4] == "-" and s[7] == "-" and s.isascii() and s.replace("-", "").isdigit():
        try:
            return datetime.date.fromisoformat(s)
        except ValueError:
            reasons.append(Reason("transaction_date", "invalid_date", f"transaction_date {_show(s)} is not a calendar date"))
            return None
    reasons.append(_nul_or(
        "transaction_date", s, "invalid_date", f"transaction_date {_show(s)} is not a date as YYYY-MM-DD"
    ))
    return None


def _check_category(value, reasons) -> str | None:
    s = _text("category", value, reasons, "SELL or BUY")
    if s is None:
        return None
    upper = s.upper()
    if s.isascii() and upper in CATEGORIES:
        return upper
    reasons.append(_nul_or("category", s, "unknown_category", f"category {_show(s)} is neither SELL nor BUY"))
    return None


def _check_name(value, reasons) -> str | None:
    s = _text("name", value, reasons, "the product name")
    if s is None:
        return None
    ok = True
    if "\x00" in s:
        reasons.append(Reason("name", "nul_byte", "name contains a NUL byte"))
        ok = False
    elif _CONTROL.search(s):
        reasons.append(Reason("name", "control_char", f"name {_show(s)} contains a control character"))
        ok = False
    if not s.isascii():
        if _SURROGATE.search(s):
            reasons.append(Reason("name", "invalid_character", "name contains bytes that are not valid UTF-8"))
            ok = False
        else:
            s = unicodedata.normalize("NFC", s)
    if len(s) > MAX_NAME_CHARS:
        reasons.append(Reason(
            "name", "too_long", f"name is {len(s)} characters long: at most {MAX_NAME_CHARS} are allowed"
        ))
        ok = False
    return s if ok else None


def _check_quantity(value, reasons) -> int | None:
    if type(value) is int:
        q = value
    elif isinstance(value, Decimal) and value.is_finite() and value.as_tuple().exponent == 0:
        q = int(value)
    elif isinstance(value, (bool, Decimal)):
        reasons.append(Reason("quantity", "not_integer", f"quantity {_show(value)} is not a whole number"))
        return None
    else:
        s = _text("quantity", value, reasons, "a whole number such as 3")
        if s is None:
            return None
        digits = s[1:] if s[0] == "-" else s
        if not (digits.isdigit() and digits.isascii()):
            reasons.append(_nul_or("quantity", s, "not_integer", f"quantity {_show(s)} is not a whole number"))
            return None
        if len(digits.lstrip("0")) > QUANTITY_MAX_DIGITS:
            reasons.append(Reason("quantity", "out_of_range", f"quantity {_show(s)} is larger than {MAX_QUANTITY}"))
            return None
        q = int(s)
    if q < 1:
        reasons.append(Reason("quantity", "out_of_range", f"quantity {q} must be at least 1"))
        return None
    if q > MAX_QUANTITY:
        reasons.append(Reason("quantity", "out_of_range", f"quantity {q} is larger than {MAX_QUANTITY}"))
        return None
    return q


def _check_amount(name: str, value, reasons) -> Decimal | None:
    what = "an amount such as 12.30"
    if isinstance(value, Decimal):
        d = value
    elif type(value) is int:
        d = Decimal(value)
    elif isinstance(value, str) and value.strip():
        s = value.strip()
        d = _decimal_text(s)
        if d is None:
            hint = ""
            if "," in s:
                hint = ": use a dot for decimals and no thousands separators"
            elif "e" in s.lower() and not s.lower().lstrip("+-").startswith(("inf", "nan")):
                hint = ": write it without an exponent"
            reasons.append(_nul_or(name, s, "not_decimal", f"{name} {_show(s)} is not an amount{hint}"))
            return None
    else:
        _text(name, value, reasons, what)
        return None
    if not d.is_finite():
        reasons.append(Reason(name, "not_decimal", f"{name} {_show(value)} is not a finite amount"))
        return None
    if d <= _ZERO:
        reasons.append(Reason(name, "out_of_range", f"{name} {_show(value)} must be greater than 0"))
        return None
    if d > MAX_AMOUNT:
        reasons.append(Reason(name, "out_of_range", f"{name} {_show(value)} is larger than {MAX_AMOUNT}"))
        return None
    cents = d.quantize(CENT, context=_CTX)
    if cents != d:
        reasons.append(Reason(name, "too_many_decimals", f"{name} {_show(value)} has more than 2 decimal places"))
        return None
    return cents


def _decimal_text(s: str) -> Decimal | None:
    """``-?DIGITS[.DIGITS]`` as a Decimal; None for anything else (exponents, NaN, '1,5'...).

    ``Decimal(s)`` alone would also take ``1e3``, ``NaN``, ``1_000`` and non-ASCII digits.
    """
    body = s[1:] if s[0] == "-" else s
    whole, dot, frac = body.partition(".")
    if body.isascii() and whole.isdigit() and (not dot or frac.isdigit()):
        return Decimal(s)
    return None


def _check_store(value, default_store, reasons) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        value = default_store
    s = _text("store_id", value, reasons, "a store id such as main")
    if s is None:
        return None
    if len(s) > MAX_STORE_CHARS:
        reasons.append(Reason(
            "store_id", "too_long", f"store_id is {len(s)} characters long: at most {MAX_STORE_CHARS} are allowed"
        ))
        return None
    if s.strip(_STORE_CHARS):
        reasons.append(_nul_or(
            "store_id", s, "invalid_characters",
            f"store_id {_show(s)} may only contain letters, digits, '_', '.' and '-'",
        ))
        return None
    return s


def raw_text(raw: Mapping[str, object]) -> dict[str, str | None]:
    """The row as text for ``Rejected.raw``: record fields first, every value cut to
    RAW_MAX_CHARS, NUL shown as U+2400 and undecodable bytes as U+FFFD, so that it
    stays valid UTF-8 and fits a PostgreSQL text or jsonb column."""
    text: dict[str, str | None] = {}
    for key in (*(k for k in FIELDS if k in raw), *(k for k in raw if k not in FIELDS)):
        value = raw[key]
        if type(value) is str and len(value) <= RAW_MAX_CHARS and value.isascii() and "\x00" not in value:
            text[str(key)] = value  # the common case, as is
        else:
            text[str(key)] = _value_text(value)
    return text


def _value_text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        s = value
    elif isinstance(value, float):
        s = repr(value)
    elif isinstance(value, datetime.date):
        s = value.isoformat()
    elif isinstance(value, bytes):
        s = value.decode("utf-8", "replace")
    else:
        s = str(value)
    if len(s) > RAW_MAX_CHARS:
        s = f"{s[:RAW_MAX_CHARS]}... [{len(s)} characters, truncated]"
    if "\x00" in s:
        s = s.replace("\x00", "\u2400")
    if not s.isascii():
        s = _SURROGATE.sub("\ufffd", s)
    return s


def check_store_id(store_id: str) -> str | None:
    """Why ``store_id`` is not a valid store id, or None if it is (for command-line checks)."""
    reasons: list[Reason] = []
    _check_store(store_id, "", reasons)
    return reasons[0].message if reasons else None


