"""tillflow.errors.first_line: one line for any error, PostgreSQL's with its SQLSTATE."""
from __future__ import annotations

import psycopg2

from tillflow.errors import first_line


class _Diag:
    message_primary = 'relation "sales.nope" does not exist'
    message_detail = "some detail"


class _PgError(psycopg2.Error):
    pgcode = "42P01"

    @property
    def diag(self):
        return _Diag()


def test_first_line_of_a_plain_exception():
    assert first_line(ValueError("first\nsecond")) == "first"


def test_an_exception_without_text_gives_its_type():
    assert first_line(RuntimeError()) == "RuntimeError"
    assert first_line(OSError("  \n ")) == "OSError"


def test_postgres_error_gives_primary_message_and_sqlstate():
    exc = _PgError("ERROR: whatever\nLINE 1: ...")
    assert first_line(exc) == 'relation "sales.nope" does not exist [SQLSTATE 42P01]'
    assert first_line(exc, detail=True) == 'relation "sales.nope" does not exist (some detail) [SQLSTATE 42P01]'


def test_postgres_error_without_diagnostics_falls_back_to_its_text():
    assert first_line(psycopg2.OperationalError("connection refused\n\tIs the server running?")) == "connection refused"
