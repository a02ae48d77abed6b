"""Hypothesis strategies shared by the record, CSV, message and consumer-row tests."""
from __future__ import annotations

import unicodedata
import uuid
from decimal import Decimal

from hypothesis import strategies as st

from tillflow.record import MAX_QUANTITY, Origin, Transaction

# Any name the record accepts as it is: printable (no control characters or
# lone surrogates), trimmed, NFC, 1 to 200 characters.
names = (
    st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=200)
    .map(lambda s: unicodedata.normalize("NFC", s.strip()))
    .filter(lambda s: 0 < len(s) <= 200)
)


@st.composite
def transactions(draw) -> Transaction:
    """Any valid transaction under the default 20% tax rate."""
    excl = draw(st.integers(1, 833_333_333_000))  # so that inc stays below 10**10
    inc = (excl * 12 + 5) // 10 + draw(st.integers(-1, 1))
    return Transaction(
        id=uuid.UUID(int=draw(st.integers(0, 2**128 - 1))),
        transaction_date=draw(st.dates()),
        category=draw(st.sampled_from(["SELL", "BUY"])),
        name=draw(names),
        quantity=draw(st.integers(1, MAX_QUANTITY)),
        amount_excl_tax=Decimal(excl).scaleb(-2),
        amount_inc_tax=Decimal(max(inc, 1)).scaleb(-2),
        store_id=draw(st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True)),
    )


# Any origin a message may carry, including ones the database refuses (line 0 or negative).
origins = st.builds(
    Origin,
    st.sampled_from(["csv", "sqlite", "api", "ws", "upload"]),
    st.none() | st.text(st.characters(blacklist_categories=("Cs",)), max_size=40),
    st.none() | st.integers(-(2**63), 2**63 - 1),
)
