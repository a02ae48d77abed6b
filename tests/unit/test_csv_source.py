"""etl.sources.csv: the format's edges, each a clear reason while the file's valid
rows still come out, streaming in bounded memory."""
from __future__ import annotations

import csv
import datetime
import io
import os
import tracemalloc
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etl.sources import csv as source
from support.strategies import transactions
from etl.sources.csv import date_from_filename, read_csv, read_csv_stream
from tillflow.errors import InputError
from tillflow.record import Origin, Rejected, Transaction

HEADER = "id,category,description,quantity,amount_excl_tax,amount_inc_tax"
NAME = "retail_05_01_2024.csv"
DAY = datetime.date(2024, 1, 5)


def uid(n: int) -> str:
    return str(uuid.UUID(int=n))


def good(n: int, name: str = "Baguette") -> str:
    return f"{uid(n)},SELL,{name},3,12.30,14.76"


def write(tmp_path: Path, content: str | bytes, name: str = NAME) -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def read_all(path: Path, **kwargs) -> list:
    return [result for chunk in read_csv(path, **kwargs) for result in chunk]


def rejects(results) -> dict[int, set[tuple[str, str]]]:
    """line -> {(field, code)} for every Rejected."""
    return {r.origin.line: {(x.field, x.code) for x in r.reasons} for r in results if isinstance(r, Rejected)}


def accepted(results) -> list[Transaction]:
    return [r for r in results if isinstance(r, Transaction)]


# -- the happy path ----------------------------------------------------------------


def test_valid_file(tmp_path):
    path = write(tmp_path, f"{HEADER}\n{good(1)}\n{uid(2)},buy, Pain de mie ,1,1.00,1.20\n")
    results = read_all(path, store_id="north")
    assert results == [
        Transaction(uuid.UUID(int=1), DAY, "SELL", "Baguette", 3, Decimal("12.30"), Decimal("14.76"), "north"),
        Transaction(uuid.UUID(int=2), DAY, "BUY", "Pain de mie", 1, Decimal("1.00"), Decimal("1.20"), "north"),
    ]
    assert [r.origin for r in results] == [Origin("csv", NAME, 2), Origin("csv", NAME, 3)]


def test_the_origin_names_the_source_the_load_records(tmp_path):
    """An HTTP upload's rows say 'upload', as its ingest.uploads row does: reconcile matches them."""
    path = write(tmp_path, f"{HEADER}\n{good(1)}\nnot-a-uuid,SELL,x,1,1.00,1.20\n")
    assert {r.origin for r in read_all(path, source="upload")} == {Origin("upload", NAME, 2), Origin("upload", NAME, 3)}


def test_bom_crlf_and_no_final_newline(tmp_path):
    path = write(tmp_path, b"\xef\xbb\xbf" + f"{HEADER}\r\n{good(1)}\r\n{good(2)}".encode())
    results = read_all(path)
    assert [r.origin.line for r in accepted(results)] == [2, 3]


def test_header_tolerates_case_and_spaces(tmp_path):
    path = write(tmp_path, " ID , Category,DESCRIPTION,quantity ,amount_excl_tax,amount_inc_tax\n" + good(1) + "\n")
    assert len(accepted(read_all(path))) == 1


def test_quoted_commas_quotes_and_embedded_newlines_keep_physical_lines(tmp_path):
    content = (
        f"{HEADER}\r\n"
        f'{uid(1)},SELL,"Vin rouge, 75cl ""AOC""",1,10.00,12.00\r\n'  # line 2
        f'{uid(2)},SELL,"Two\r\nlines",1,10.00,12.00\r\n'  # lines 3-4: rejected, control char
        f"{good(3)}\r\n"  # line 5
    )
    results = read_all(write(tmp_path, content))
    assert results[0].name == 'Vin rouge, 75cl "AOC"' and results[0].origin.line == 2
    assert rejects(results) == {3: {("name", "control_char")}}
    assert results[1].raw["name"] == "Two\r\nlines"
    assert results[2].origin.line == 5


def test_blank_lines_are_skipped_not_rejected(tmp_path):
    content = f"\n{HEADER}\n\n{good(1)}\n   \n\r\n\t\n{good(2)}\n\n"
    results = read_all(write(tmp_path, content))
    assert [r.origin.line for r in results] == [4, 8]
    assert all(isinstance(r, Transaction) for r in results)


def test_cr_only_line_ends(tmp_path):
    results = read_all(write(tmp_path, f"{HEADER}\r{good(1)}\r{good(2)}\r"))
    assert [r.origin.line for r in accepted(results)] == [2, 3]


def test_chunks(tmp_path):
    path = write(tmp_path, HEADER + "\n" + "".join(good(n) + "\n" for n in range(25)))
    assert [len(c) for c in read_csv(path, chunk_rows=10)] == [10, 10, 5]
    with pytest.raises(ValueError, match="chunk_rows"):
        next(read_csv(path, chunk_rows=0))


def test_header_only_yields_nothing(tmp_path):
    assert list(read_csv(write(tmp_path, HEADER + "\r\n"))) == []


def test_tax_rate_is_passed_through(tmp_path):
    path = write(tmp_path, f"{HEADER}\n{uid(1)},SELL,x,1,10.00,10.55\n")
    assert rejects(read_all(path)) == {2: {("amount_inc_tax", "tax_mismatch")}}
    assert len(accepted(read_all(path, tax_rate=Decimal("0.055")))) == 1


# -- rows that break rules: a reason each, the rest still comes out ---------------------


def test_every_bad_row_has_its_reason_and_valid_rows_still_come_out(tmp_path):
    lines = [
        HEADER,
        good(1),  # 2
        f'{uid(2)},SELL,x,"1,5",12.30,14.76',  # 3
        f"{uid(3)},SELL,x,NaN,12.30,14.76",  # 4
        f"{uid(4)},SELL,x,1e3,12.30,14.76",  # 5
        f"{uid(5)},SELL,x,,12.30,14.76",  # 6
        f"{uid(6)},SELL,x,0,12.30,14.76",  # 7
        f"{uid(7)},SELL,x,-2,12.30,14.76",  # 8
        f"{uid(8)},GIFT,x,1,12.30,14.76",  # 9
        f'{uid(9)},SELL,x,1,"1,5",1.80',  # 10
        f"{uid(10)},SELL,x,1,NaN,1.80",  # 11
        f"{uid(11)},SELL,x,1,1e3,1200.00",  # 12
        f"{uid(12)},SELL,x,1,12.30,",  # 13
        f"{uid(13)},SELL,x,1,12.30,14.76,surplus",  # 14
        f"{uid(14)},SELL,x,1,12.30",  # 15
        "not-a-uuid,SELL,,-1,-5,abc",  # 16
        good(15),  # 17
    ]
    results = read_all(write(tmp_path, "\n".join(lines) + "\n"))
    assert [str(t.id) for t in accepted(results)] == [uid(1), uid(15)]
    assert rejects(results) == {
        3: {("quantity", "not_integer")},
        4: {("quantity", "not_integer")},
        5: {("quantity", "not_integer")},
        6: {("quantity", "missing")},
        7: {("quantity", "out_of_range")},
        8: {("quantity", "out_of_range")},
        9: {("category", "unknown_category")},
        10: {("amount_excl_tax", "not_decimal")},
        11: {("amount_excl_tax", "not_decimal")},
        12: {("amount_excl_tax", "not_decimal")},
        13: {("amount_inc_tax", "missing")},
        14: {("row", "column_count")},
        15: {("row", "column_count"), ("amount_inc_tax", "missing")},
        16: {
            ("id", "invalid_uuid"), ("name", "missing"), ("quantity", "out_of_range"),
            ("amount_excl_tax", "out_of_range"), ("amount_inc_tax", "not_decimal"),
        },
    }
    assert len(results) == 16


def test_column_count_reject_keeps_the_whole_row(tmp_path):
    results = read_all(write(tmp_path, f"{HEADER}\n{good(1)},a,b\n{uid(2)},SELL\n"))
    extra, short = results
    assert extra.raw["column_7"] == "a" and extra.raw["column_8"] == "b" and extra.raw["name"] == "Baguette"
    assert extra.reasons[0].message == (
        "the row has 8 columns, expected 6: id,category,description,quantity,amount_excl_tax,amount_inc_tax"
    )
    assert short.raw["category"] == "SELL" and short.raw["name"] is None
    assert [r.code for r in short.reasons][0] == "column_count"


def test_unbalanced_quote_names_the_lines_it_swallowed(tmp_path):
    content = f'{HEADER}\n{uid(1)},SELL,"Open quote,1,1.00,1.20\n{good(2)}\n{good(3)}\n'
    (only,) = read_all(write(tmp_path, content))
    assert only.origin.line == 2
    assert "(lines 2-4)" in only.reasons[0].message


def test_200_kib_field_is_rejected_and_truncated(tmp_path):
    content = f"{HEADER}\n{good(1)}\n{uid(2)},SELL,{'x' * 204_800},1,1.00,1.20\n{good(3)}\n"
    results = read_all(write(tmp_path, content))
    assert rejects(results) == {3: {("name", "too_long")}}
    assert len(results[1].raw["name"]) < 1100
    assert len(accepted(results)) == 2


def test_nul_bytes_are_a_reason_not_a_crash(tmp_path):
    content = f"{HEADER}\n{good(1)}\n{uid(2)},SELL,Pa\x00in,1,1.00,1.20\n{uid(3)},SE\x00LL,x,1,1.00,1.20\n\x00\n{good(4)}\n"
    results = read_all(write(tmp_path, content))
    assert rejects(results) == {
        3: {("name", "nul_byte")},
        4: {("category", "nul_byte")},
        5: {("row", "column_count"), ("id", "nul_byte"), ("category", "missing"), ("name", "missing"),
            ("quantity", "missing"), ("amount_excl_tax", "missing"), ("amount_inc_tax", "missing")},
    }
    assert results[1].raw["name"] == "Pa\u2400in"
    assert len(accepted(results)) == 2


def test_invalid_utf8_rejects_its_row_with_line_and_offset(tmp_path):
    head = f"{HEADER}\n{good(1)}\n".encode()
    bad = f"{uid(2)},SELL,Caf".encode() + b"\xe9" + b",1,1.00,1.20\n"
    content = head + bad + f"{good(3)}\n".encode()
    results = read_all(write(tmp_path, content))
    assert rejects(results) == {3: {("row", "invalid_utf8"), ("name", "invalid_character")}}
    offset = len(head) + len(f"{uid(2)},SELL,Caf")
    assert results[1].reasons[0].message == (
        f"line 3 is not valid UTF-8 (byte 0xe9 at offset {offset}): save the file as UTF-8"
    )
    assert results[1].raw["name"] == "Caf\ufffd"
    assert len(accepted(results)) == 2


def test_invalid_utf8_in_a_multiline_row_is_found(tmp_path):
    content = f'{HEADER}\n{uid(1)},SELL,"a\n'.encode() + b'\xff",1,1.00,1.20\n' + f"{good(2)}\n".encode()
    results = read_all(write(tmp_path, content))
    assert ("row", "invalid_utf8") in rejects(results)[2]
    assert accepted(results)[0].origin.line == 4


# -- the file as a whole: header, date, reading ------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        "id,category,name,quantity,amount_excl_tax,amount_inc_tax",
        "id;category;description;quantity;amount_excl_tax;amount_inc_tax",
        "category,id,description,quantity,amount_excl_tax,amount_inc_tax",
        HEADER + ",",
        "id,category,description,quantity,amount_excl_tax",
        good(1),
    ],
)
def test_wrong_header_raises_before_anything_is_yielded(tmp_path, header):
    path = write(tmp_path, f"{header}\n{good(1)}\n")
    with pytest.raises(InputError) as info:
        next(read_csv(path))
    message = str(info.value)
    assert str(path) in message and "line 1" in message
    assert repr(HEADER) in message and repr(header) in message


def test_latin1_header_is_a_wrong_header(tmp_path):
    path = write(tmp_path, "d\xe9signation,cat\n".encode("latin-1"))
    with pytest.raises(InputError, match="the header is 'd\ufffdsignation,cat'.*save the file as UTF-8"):
        next(read_csv(path))


@pytest.mark.parametrize("content", [b"", b"\n\n  \n", b"\xef\xbb\xbf"])
def test_empty_file(tmp_path, content):
    with pytest.raises(InputError, match="the file is empty"):
        next(read_csv(write(tmp_path, content)))


def test_date_from_filename():
    assert date_from_filename("retail_05_01_2024.csv") == DAY
    assert date_from_filename(Path("/inbox/RETAIL_29_02_2024.CSV")) == datetime.date(2024, 2, 29)
    for other in ("retail_5_1_2024.csv", "retail_05_01_2024.csv.part", "sales.csv", "retail_05_01_2024 (1).csv"):
        assert date_from_filename(other) is None
    with pytest.raises(InputError, match="31_02_2024 in the file name is not a calendar date"):
        date_from_filename("retail_31_02_2024.csv")


def test_date_comes_from_name_unless_given(tmp_path):
    path = write(tmp_path, f"{HEADER}\n{good(1)}\n")
    assert read_all(path)[0].transaction_date == DAY
    assert read_all(path, default_date=datetime.date(2020, 6, 1))[0].transaction_date == datetime.date(2020, 6, 1)
    other = write(tmp_path, f"{HEADER}\n{good(1)}\n", name="sales.csv")
    with pytest.raises(InputError, match="sales.csv: no date .* retail_DD_MM_YYYY.csv or give --date"):
        next(read_csv(other))
    assert read_all(other, default_date=DAY)[0].origin == Origin("csv", "sales.csv", 2)


def test_unreadable_files_raise_input_error_with_the_path(tmp_path):
    with pytest.raises(InputError, match=f"{tmp_path}/missing.csv: cannot open the file"):
        next(read_csv(tmp_path / "missing.csv"))
    (tmp_path / "retail_01_01_2024.csv").mkdir()
    with pytest.raises(InputError, match="cannot open the file"):
        next(read_csv(tmp_path / "retail_01_01_2024.csv"))


def test_permission_denied(tmp_path, monkeypatch):
    path = write(tmp_path, HEADER + "\n")
    if os.geteuid() == 0:  # root reads any file: make open() answer as it would for a user

        def denied(*args, **kwargs):
            raise PermissionError(13, "Permission denied", str(path))

        monkeypatch.setattr(source, "open", denied, raising=False)
    else:
        path.chmod(0)
    with pytest.raises(InputError, match=f"{path}: cannot open the file \\(Permission denied\\)"):
        next(read_csv(path))


def test_read_error_mid_stream_is_input_error():
    class Failing(io.RawIOBase):
        def readable(self):
            return True

        def readinto(self, buffer):
            raise OSError(5, "Input/output error")

    with pytest.raises(InputError, match="upload-1: read failed near byte 0"):
        next(read_csv_stream(Failing(), "upload-1", default_date=DAY))


# -- streams, block boundaries, memory -------------------------------------------------


class Trickle(io.RawIOBase):
    """A binary stream that returns at most ``step`` bytes per read, as sockets do."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.pos, self.step = data, 0, step

    def readable(self):
        return True

    def readinto(self, buffer):
        n = min(len(buffer), self.step, len(self.data) - self.pos)
        buffer[:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        return n


def test_read_csv_stream_from_an_upload():
    data = f"{HEADER}\n{good(1)}\n".encode()
    (chunk,) = read_csv_stream(io.BytesIO(data), "retail_05_01_2024.csv")
    assert chunk[0].origin == Origin("csv", "retail_05_01_2024.csv", 2)


CAFE = "Caf\u00e9 cr\u00e8me \u20ac"


@pytest.mark.parametrize("block", [1, 2, 3, 7, 64])
def test_tiny_blocks_and_short_reads_change_nothing(monkeypatch, block):
    content = b"\xef\xbb\xbf" + (
        f"{HEADER}\r\n{good(1, CAFE)}\r\n\r\n"
        f'{uid(2)},SELL,"a, ""b""",1,1.00,1.20\r{good(3)}\n'
        f'{uid(4)},SELL,"x\r\ny",1,1.00,1.20\r\n{good(5)}'
    ).encode()
    monkeypatch.setattr(source, "BLOCK_BYTES", block)
    results = [r for c in read_csv_stream(Trickle(content, 5), NAME) for r in c]
    assert [r.origin.line for r in results] == [2, 4, 5, 6, 8]
    assert results[0].name == "Café crème €" and results[1].name == 'a, "b"'
    assert rejects(results) == {6: {("name", "control_char")}}


def test_a_giant_line_is_rejected_without_being_held(monkeypatch):
    monkeypatch.setattr(source, "BLOCK_BYTES", 4096)
    monkeypatch.setattr(source, "MAX_ROW_BYTES", 64 * 1024)
    giant = f"{uid(1)},SELL,{'x' * 5_000_000},1,1.00,1.20\r\n".encode()
    content = f"{HEADER}\n{good(0)}\n".encode() + giant + f"{good(2)}\n".encode()
    tracemalloc.start()
    try:
        results = [r for c in read_csv_stream(io.BytesIO(content), NAME) for r in c]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000  # the stream itself is outside: BytesIO holds it before tracing
    assert rejects(results) == {3: {("row", "too_large")}}
    assert "lines 3-3 were skipped" in results[1].reasons[0].message
    assert [r.origin.line for r in accepted(results)] == [2, 4]


def test_an_unterminated_quote_cannot_swallow_memory(monkeypatch):
    monkeypatch.setattr(source, "BLOCK_BYTES", 4096)
    monkeypatch.setattr(source, "MAX_ROW_BYTES", 64 * 1024)
    body = "".join(f"{good(n)}\n" for n in range(2, 20_000))
    content = f'{HEADER}\n{uid(1)},SELL,"never closed,1,1.00,1.20\n{body}'.encode()
    first, lines, valid = None, [], 0
    tracemalloc.start()
    try:
        for chunk in read_csv_stream(io.BytesIO(content), NAME, chunk_rows=500):
            first = first or chunk[0]
            lines += [r.origin.line for r in chunk]
            valid += len(accepted(chunk))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4_000_000  # 1.2 MB of rows were read
    assert first.origin.line == 2 and first.reasons[0].code == "too_large"
    assert "lines 2-" in first.reasons[0].message
    # after resynchronising on a line end the rows that follow are read normally
    assert valid > 15_000
    assert lines == sorted(lines) and len(set(lines)) == len(lines)


def test_first_line_too_large_is_not_a_csv(monkeypatch):
    monkeypatch.setattr(source, "BLOCK_BYTES", 1024)
    monkeypatch.setattr(source, "MAX_ROW_BYTES", 4096)
    with pytest.raises(InputError, match="first line is over"):
        next(read_csv_stream(io.BytesIO(b"x" * 20_000), NAME))


def test_stream_must_be_binary():
    with pytest.raises(TypeError, match="binary file object"):
        next(read_csv_stream(io.StringIO(HEADER), NAME))


def test_closing_early_closes_the_file(tmp_path):
    path = write(tmp_path, HEADER + "\n" + "".join(good(n) + "\n" for n in range(30)))
    chunks = read_csv(path, chunk_rows=10)
    next(chunks)
    chunks.close()  # no ResourceWarning (warnings are errors here)


# -- property: anything valid written by a CSV writer reads back unchanged ----------------

rows = transactions().map(lambda t: (t.id, t.category, t.name, t.quantity, t.amount_excl_tax, t.amount_inc_tax))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(rows, max_size=20), st.sampled_from(["\n", "\r\n"]), st.booleans())
def test_property_valid_rows_round_trip_through_a_csv_writer(generated, terminator, bom):
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator=terminator)
    writer.writerow(HEADER.split(","))
    writer.writerows(generated)
    data = (b"\xef\xbb\xbf" if bom else b"") + out.getvalue().encode("utf-8")
    results = [r for c in read_csv_stream(io.BytesIO(data), NAME, chunk_rows=7) for r in c]
    assert [
        (r.id, r.category, r.name, r.quantity, r.amount_excl_tax, r.amount_inc_tax) for r in results
    ] == generated
    assert all(r.transaction_date == DAY and r.store_id == "main" for r in results)
    assert [r.origin.line for r in results] == list(range(2, len(generated) + 2))


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.text(st.sampled_from('ab,"\r\n\x00 \t1.-\u00e9'), max_size=300).map(lambda s: s.encode("utf-8")),
    ),
    st.integers(1, 64),
)
def test_property_garbage_after_a_valid_header_never_crashes(body, block):
    data = f"{HEADER}\n{good(1)}\n".encode() + body + f"\n{good(2)}\n".encode()
    original = source.BLOCK_BYTES
    source.BLOCK_BYTES = block  # not monkeypatch: hypothesis reuses the function-scoped fixture
    try:
        results = [r for c in read_csv_stream(io.BytesIO(data), NAME) for r in c]
    finally:
        source.BLOCK_BYTES = original
    assert all(isinstance(r, (Transaction, Rejected)) for r in results)
    assert results[0] == accepted(results)[0] and results[0].origin.line == 2
    lines = [r.origin.line for r in results]
    assert lines == sorted(set(lines))
    for r in results:
        if isinstance(r, Rejected):
            assert r.reasons
            "".join(v or "" for v in r.raw.values()).encode("utf-8")  # raw is always valid UTF-8
