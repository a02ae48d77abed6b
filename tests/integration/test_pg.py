"""tillflow.pg, the one place psycopg2's errors become Tillflow's, against a real PostgreSQL."""
from __future__ import annotations

import contextlib

import psycopg2
import pytest

from backup.errors import BackupError
from tillflow import pg
from tillflow.errors import SinkError


class Unavailable(SinkError):
    pass


def test_a_failed_connection_says_where_and_why_and_never_the_password(migrated_db):
    url = migrated_db.url("writer").replace(migrated_db.passwords["writer"], "not-the-password")
    with pytest.raises(BackupError) as caught:
        pg.connect(url, "tillflow-test", error=BackupError, purpose="to test")
    message = str(caught.value)
    assert message.startswith(f"cannot connect to PostgreSQL at {pg.where(url)} to test: ")
    assert "password authentication failed" in message
    assert "not-the-password" not in message
    assert isinstance(caught.value.__cause__, psycopg2.OperationalError)
    assert pg.where(url).endswith(f"/{migrated_db.name} as tillflow_writer")


def test_each_kind_of_failure_gets_its_class_and_its_hint(migrated_db):
    conn = pg.connect(migrated_db.url("reader"), "tillflow-test", autocommit=True)
    try:
        with pytest.raises(SinkError) as denied, pg.translated(SinkError, "reading", denied="use the owner"), \
                conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM sales.transactions")  # the reader sees only the views
        assert str(denied.value).startswith("reading: permission denied for ")
        assert str(denied.value).endswith(": use the owner")

        with pytest.raises(SinkError) as missing, pg.translated(SinkError, "reading", missing="run migrate"), \
                conn.cursor() as cur:
            cur.execute("SELECT 1 FROM analytics.no_such_view")
        assert 'relation "analytics.no_such_view" does not exist' in str(missing.value)
        assert str(missing.value).endswith(": run migrate")

        with pytest.raises(SinkError) as other, pg.translated(SinkError, lambda: "step two"), conn.cursor() as cur:
            cur.execute("SELECT 1 / 0")
        assert str(other.value) == "step two: division by zero [SQLSTATE 22012]"
        assert type(other.value) is SinkError

        with conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            (pid,) = cur.fetchone()
        with contextlib.closing(migrated_db.connect()) as admin, admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(Unavailable) as gone, pg.translated(SinkError, "reading", unavailable=Unavailable), \
                conn.cursor() as cur:
            cur.execute("SELECT 1")
        assert str(gone.value).startswith("reading: PostgreSQL is unreachable (")
    finally:
        conn.close()
