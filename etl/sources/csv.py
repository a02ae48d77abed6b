"""CSV files: stream a retail CSV file into validated records, in bounded memory.

A file (docs/architecture.md, "CSV files") is UTF-8, comma separated, with the header
``id,category,description,quantity,amount_excl_tax,amount_inc_tax``; the
``description`` column is the record's ``name``. It has no date column: the date
is ``default_date`` (``--date``) if given, else the one in a file name
``retail_DD_MM_YYYY.csv``.

:func:`read_csv` (a path) and :func:`read_csv_stream` (a binary file object, e.g.
an HTTP upload) yield lists of up to ``chunk_rows`` results, each a Transaction or
a Rejected whose ``origin`` is ``Origin('csv', <file name>, <line>)`` (``'upload'`` for a file sent over HTTP): the
1-based physical line where the row starts (the header is line 1; ``\\r\\n``,
``\\n`` and ``\\r`` each end a line; a quoted field may span lines).

Behaviour where the format is silent:

- Header: a UTF-8 BOM is skipped; names are compared after trimming whitespace and
  ignoring case, but their number and order must be exactly as above. Otherwise
  (an empty file, a header that is not valid UTF-8), or if no date can be found
  (``retail_31_02_2024.csv`` names no day), :class:`InputError` is raised before
  anything is yielded (on the first ``next()``, as these are generators).
- Blank lines (empty or whitespace only) are skipped anywhere, never rejected.
- A row with too many or too few columns is rejected with a ``row/column_count``
  reason, plus the reasons of the columns it has (the first six are read as the
  six fields; extra values are kept in ``raw`` as ``column_7``...). ``raw`` and
  reasons use record field names: ``name``, not ``description``.
- Invalid UTF-8 rejects the rows it occurs in (``row/invalid_utf8``, naming the
  line and byte offset) rather than the file: the file's other rows still count.
- NUL bytes are kept in the field, which the record rules then reject (``nul_byte``).
- A row over 10 MiB (a giant field, an unbalanced quote swallowing the file) is
  rejected as ``row/too_large`` without being held in memory: reading resumes
  after the line end that follows a single overlong line, or at the next block
  for a quoted field spanning many lines, and the reason names the lines
  skipped. Memory stays around a few times ``MAX_ROW_BYTES`` whatever the file's
  size. For this the ``csv`` module's field size limit is raised, process-wide,
  to 4 x ``MAX_ROW_BYTES``.
- A file that cannot be opened or read raises :class:`InputError` with its path.

Reading goes in 1 MiB blocks cut at line ends, decoded and split in C, feeding
one ``csv.reader``; the per-row Python work is the validation itself.
"""
from __future__ import annotations

import csv
import datetime
import io
import re
from collections import deque
from collections.abc import Iterator
from decimal import Decimal
from itertools import chain
from pathlib import Path
from typing import BinaryIO

from tillflow.errors import InputError
from tillflow.record import (
    DEFAULT_TAX_RATE, Origin, Reason, Rejected, Transaction, accept_canonical, raw_text, validate, validate_full,
)

HEADER = ("id", "category", "description", "quantity", "amount_excl_tax", "amount_inc_tax")
FIELDS = ("id", "category", "name", "quantity", "amount_excl_tax", "amount_inc_tax")  # record names, in column order
BLOCK_BYTES = 1 << 20
MAX_ROW_BYTES = 10 << 20
_BOM = b"\xef\xbb\xbf"
_SURROGATES = re.compile("[\ud800-\udfff]")
_FILE_DATE = re.compile(r"retail_([0-9]{2})_([0-9]{2})_([0-9]{4})\.csv", re.IGNORECASE)

Result = Transaction | Rejected


def date_from_filename(path: str | Path) -> datetime.date | None:
    """The date in a file name ``retail_DD_MM_YYYY.csv``; None if the name has another form.

    Raises InputError if the name has that form but no such day exists (31_02).
    """
    name = Path(path).name
    match = _FILE_DATE.fullmatch(name)
    if match is None:
        return None
    day, month, year = (int(g) for g in match.groups())
    try:
        return datetime.date(year, month, day)
    except ValueError:
        raise InputError(
            f"{name}: {match.group(1)}_{match.group(2)}_{match.group(3)} in the file name is not a calendar "
            "date (retail_DD_MM_YYYY.csv): rename the file or give the date with --date"
        ) from None


def read_csv(
    path: str | Path,
    *,
    tax_rate: Decimal = DEFAULT_TAX_RATE,
    default_date: datetime.date | None = None,
    store_id: str = "main",
    chunk_rows: int = 10_000,
    source: str = "csv",
) -> Iterator[list[Result]]:
    """Stream the CSV file at ``path``; see the module docstring. ``source`` goes in each
    Origin: ``csv`` for a file loaded here, ``upload`` for one sent over HTTP."""
    path = Path(path)
    try:
        stream = open(path, "rb")  # noqa: SIM115 - closed by the with below, also on early exit
    except OSError as exc:
        raise InputError(f"{path}: cannot open the file ({exc.strerror or exc})") from exc
    with stream:
        yield from read_csv_stream(
            stream, path.name, tax_rate=tax_rate, default_date=default_date, store_id=store_id,
            chunk_rows=chunk_rows, display_name=str(path), source=source,
        )


def read_csv_stream(
    stream: BinaryIO,
    name: str,
    *,
    tax_rate: Decimal = DEFAULT_TAX_RATE,
    default_date: datetime.date | None = None,
    store_id: str = "main",
    chunk_rows: int = 10_000,
    display_name: str | None = None,
    source: str = "csv",
) -> Iterator[list[Result]]:
    """Stream CSV rows from a binary file object; ``name`` is the file name used for
    the date and in each Origin, ``display_name`` (default ``name``) in errors."""
    shown = display_name or name
    if default_date is None:
        default_date = date_from_filename(name)
        if default_date is None:
            raise InputError(
                f"{shown}: no date for its rows: name the file retail_DD_MM_YYYY.csv or give --date YYYY-MM-DD"
            )
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    if csv.field_size_limit() < 4 * MAX_ROW_BYTES:
        # Process-wide, raised only: MAX_ROW_BYTES (checked by _Lines) is the real cap.
        csv.field_size_limit(4 * MAX_ROW_BYTES)

    lines = _Lines(stream, shown)
    reader = csv.reader(chain.from_iterable(lines.blocks()))
    base = 0  # lines consumed by earlier readers (after an oversized row)
    header_end = _check_header(reader, lines, shown)
    prev_end = header_end
    bad = lines.bad
    at_line = Origin(source, name).with_line
    out: list[Result] = []
    while True:
        try:
            for row in reader:
                end = base + reader.line_num
                start = prev_end + 1
                prev_end = lines.done = end
                if len(row) == 6 and not bad:
                    origin = at_line(start)
                    result = accept_canonical(
                        row[0], None, row[1], row[2], row[3], row[4], row[5], None,
                        origin=origin, tax_rate=tax_rate, default_date=default_date, default_store=store_id,
                    ) or validate_full(
                        dict(zip(FIELDS, row)), origin=origin, tax_rate=tax_rate,
                        default_date=default_date, default_store=store_id,
                    )
                else:
                    if not row or (len(row) == 1 and not row[0].strip()):
                        _drop_bad(bad, end)
                        continue
                    result = _irregular(row, start, end, bad, at_line(start), tax_rate, default_date, store_id)
                out.append(result)
                if len(out) >= chunk_rows:
                    yield out
                    out = []
            break
        except _RowTooLarge:
            start = prev_end + 1
            prev_end = base = lines.line
            _drop_bad(bad, prev_end)
            out.append(Rejected(
                raw={},
                reasons=(Reason(
                    "row", "too_large",
                    f"the row starting at line {start} is larger than {_mib(MAX_ROW_BYTES)} "
                    f"(an unbalanced quote?): lines {start}-{prev_end} were skipped",
                ),),
                origin=at_line(start),
            ))
            reader = csv.reader(chain.from_iterable(lines.blocks()))
        except csv.Error as exc:  # kept for safety: with the raised field limit it should not occur
            start = prev_end + 1
            prev_end = lines.done = base + reader.line_num
            _drop_bad(bad, prev_end)
            out.append(Rejected(
                raw={}, reasons=(Reason("row", "malformed", f"lines {start}-{prev_end} are not valid CSV: {exc}"),),
                origin=at_line(start),
            ))
    if out:
        yield out


def _check_header(reader, lines: _Lines, shown: str) -> int:
    """Read the header (the first non-blank row); return its last line number."""
    try:
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            undecodable = lines.bad and lines.bad[0][0] <= reader.line_num
            if undecodable or tuple(h.strip().lower() for h in row) != HEADER:
                hint = "save the file as UTF-8" if undecodable else "is this a Tillflow CSV file?"
                raise InputError(
                    f"{shown}: line {reader.line_num}: the header is {_printable(','.join(row))!r}, "
                    f"expected {','.join(HEADER)!r}: {hint}"
                )
            return reader.line_num
    except _RowTooLarge:
        raise InputError(f"{shown}: the first line is over {_mib(MAX_ROW_BYTES)}: not a Tillflow CSV file") from None
    except csv.Error as exc:
        raise InputError(f"{shown}: line {reader.line_num}: the header is not valid CSV ({exc})") from None
    raise InputError(f"{shown}: the file is empty: expected the header {','.join(HEADER)!r}")


def _irregular(row, start, end, bad, origin, tax_rate, default_date, store_id) -> Result:
    """A row with a wrong column count or undecodable bytes: every reason, still."""
    reasons = []
    while bad and bad[0][0] <= end:
        line, reason = bad.popleft()
        if line >= start:
            reasons.append(reason)
    if len(row) != 6:
        span = f"the row (lines {start}-{end})" if end > start else "the row"
        reasons.append(Reason(
            "row", "column_count", f"{span} has {len(row)} columns, expected 6: {','.join(HEADER)}"
        ))
    raw: dict[str, object] = dict(zip(FIELDS, row))
    for extra, value in enumerate(row[6:], start=7):
        raw[f"column_{extra}"] = value
    result = validate(raw, origin=origin, tax_rate=tax_rate, default_date=default_date,
                      default_store=store_id, row_reasons=reasons)
    if isinstance(result, Rejected) and len(row) != 6:
        # Put the columns that were never there in raw too, so the row reads complete.
        full = raw_text({**dict.fromkeys(FIELDS), **raw})
        result = Rejected(raw=full, reasons=result.reasons, origin=origin)
    return result


def _drop_bad(bad: deque, end: int) -> None:
    while bad and bad[0][0] <= end:
        bad.popleft()


def _mib(size: int) -> str:
    return f"{size / 2**20:g} MiB"


def _printable(text: str, limit: int = 200) -> str:
    """Text fit for a one-line error: cut short, undecodable bytes shown as U+FFFD."""
    text = text if len(text) <= limit else text[:limit] + "..."
    return _SURROGATES.sub("\ufffd", text)


class _RowTooLarge(Exception):
    """Raised through csv.reader to abandon a row over MAX_ROW_BYTES."""


class _Lines:
    """The physical lines of a binary stream, decoded as UTF-8, a block at a time.

    ``blocks()`` yields lists of lines (line ends kept, as csv.reader wants them),
    each block cut at a line end. Undecodable bytes become lone surrogates and are
    reported in ``bad`` as (line, Reason). It raises _RowTooLarge when one line, or
    the row in progress (no row finished, per ``done``, while more than
    MAX_ROW_BYTES were read), grows too large; calling ``blocks()`` again resumes.
    """

    def __init__(self, stream: BinaryIO, shown: str) -> None:
        self.stream = stream
        self.shown = shown
        self.line = 0  # lines handed out (or skipped) so far
        self.done = 0  # set by the reader: last line of the last finished row
        self.bad: deque[tuple[int, Reason]] = deque()
        self.offset = 0  # byte offset in the stream of the next block
        self.carry = b""
        self.pending: bytes | None = None  # a block read but not handed out before a _RowTooLarge
        self.eof = False
        self.first = True

    def _read(self) -> bytes:
        try:
            data = self.stream.read(BLOCK_BYTES)
        except OSError as exc:
            raise InputError(f"{self.shown}: read failed near byte {self.offset} ({exc.strerror or exc})") from exc
        if isinstance(data, str):
            raise TypeError("read_csv_stream needs a binary file object (opened with 'rb')")
        return data or b""

    def _next_block(self) -> bytes | None:
        """The next run of whole lines, or None at the end of the stream."""
        if self.pending is not None:
            block, self.pending = self.pending, None
            return block
        while not self.eof:
            data = self._read()
            if not data:
                self.eof = True
                break
            if self.first:
                self.first = False
                while len(data) < len(_BOM):  # a short first read must not split the BOM
                    more = self._read()
                    if not more:
                        break
                    data += more
                if data.startswith(_BOM):
                    data = data[len(_BOM):]
                    self.offset = len(_BOM)
                    if not data:
                        continue
            buf = self.carry + data if self.carry else data
            # Cut after the last line end; a final '\r' waits, since '\n' may follow it.
            cut = max(buf.rfind(b"\n"), buf.rfind(b"\r", 0, len(buf) - 1)) + 1
            if cut:
                self.carry = buf[cut:]
                return buf[:cut] if cut < len(buf) else buf
            self.carry = buf
            if len(buf) > MAX_ROW_BYTES:
                self._skip_long_line()
        block, self.carry = self.carry, b""
        return block or None

    def _skip_long_line(self) -> None:
        """Drop the rest of an overlong line, count it, and abandon the row."""
        skipped = len(self.carry)
        self.carry = b""
        while True:
            data = self._read()
            if not data:
                self.eof = True
                break
            ends = [i for i in (data.find(b"\n"), data.find(b"\r")) if i >= 0]
            if ends:
                cut = min(ends) + 1
                if data[cut - 1] == 13 and cut == len(data):  # '\r' last: is '\n' next?
                    data += self._read()
                if data[cut - 1 : cut + 1] == b"\r\n":
                    cut += 1
                skipped += cut
                self.carry = data[cut:]
                break
            skipped += len(data)
        self.offset += skipped
        self.line += 1
        raise _RowTooLarge

    def blocks(self) -> Iterator[list[str]]:
        stuck_bytes = 0
        done_seen = self.done
        while True:
            block = self._next_block()
            if block is None:
                return
            if self.done == done_seen:
                stuck_bytes += len(block)
                if stuck_bytes > MAX_ROW_BYTES:
                    self.pending = block
                    raise _RowTooLarge
            else:
                done_seen = self.done
                stuck_bytes = len(block)
            try:
                text = block.decode("utf-8")
            except UnicodeDecodeError:
                text = block.decode("utf-8", "surrogateescape")
                lines = io.StringIO(text, newline="").readlines()
                self._find_bad_bytes(lines)
            else:
                lines = io.StringIO(text, newline="").readlines()
            self.offset += len(block)
            self.line += len(lines)
            yield lines

    def _find_bad_bytes(self, lines: list[str]) -> None:
        offset = self.offset
        for number, line in enumerate(lines, start=self.line + 1):
            encoded = line.encode("utf-8", "surrogateescape")
            try:
                line.encode("utf-8")
            except UnicodeEncodeError as exc:
                at = offset + len(line[: exc.start].encode("utf-8", "surrogateescape"))
                byte = ord(line[exc.start]) - 0xDC00
                self.bad.append((number, Reason(
                    "row", "invalid_utf8",
                    f"line {number} is not valid UTF-8 (byte 0x{byte:02x} at offset {at}): save the file as UTF-8",
                )))
            offset += len(encoded)
