"""The schema as migrated: applied once, history protected, rules enforced by
CHECKs, and each role holding exactly the privileges its job needs."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import uuid
from datetime import date
from decimal import Decimal
from pathlib import Path

import psycopg2
import pytest
from psycopg2 import sql

from tillflow.errors import MigrationError
from tillflow.migrate import ROLE_NAMES, apply_migrations, default_migrations_dir, load_migrations, status

MIGRATIONS = [m.name for m in load_migrations(default_migrations_dir())]
OUR_SCHEMAS = ("sales", "ingest", "analytics")


@contextlib.contextmanager
def connected(db, role: str):
    conn = db.connect(role)
    try:
        yield conn
    finally:
        conn.close()


def refused(conn, statement, params=None) -> psycopg2.Error:
    """Run ``statement`` and return the error it must raise."""
    with pytest.raises(psycopg2.Error) as info, conn.cursor() as cur:
        cur.execute(statement, params)
    return info.value


def assert_denied(conn, statement, params=None) -> None:
    error = refused(conn, statement, params)
    assert error.pgcode == "42501", f"{statement!r} failed with {error.pgcode}: {error}"


@pytest.fixture
def migrations_copy(tmp_path) -> Path:
    """A copy of the migration files a test may edit."""
    target = tmp_path / "migrations"
    shutil.copytree(default_migrations_dir(), target)
    return target


# -- applying --------------------------------------------------------------------


def test_migrations_apply_once_and_a_second_run_applies_nothing(migrated_db, role_passwords):
    assert MIGRATIONS[:4] == ["0001_roles.sql", "0002_sales.sql", "0003_ingest.sql", "0004_analytics.sql"]
    assert apply_migrations(migrated_db.url("postgres"), role_passwords=role_passwords) == []
    with connected(migrated_db, "postgres") as conn, conn.cursor() as cur:
        cur.execute("SELECT name FROM tillflow_meta.schema_migrations ORDER BY version")
        assert [name for (name,) in cur.fetchall()] == MIGRATIONS
    listed = status(migrated_db.url("postgres"))
    assert [name for name, _ in listed] == MIGRATIONS
    assert all(applied_at is not None for _, applied_at in listed)


def test_status_of_an_empty_database_lists_every_file_pending(empty_db):
    assert status(empty_db) == [(name, None) for name in MIGRATIONS]


def test_concurrent_migrators_apply_each_file_exactly_once(empty_db, role_passwords):
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def migrate():
        try:
            results.append(apply_migrations(empty_db, role_passwords=role_passwords))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=migrate) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    applied = [name for result in results for name in result]
    assert sorted(applied) == MIGRATIONS, "every file applied once, by whichever migrator got the lock first"


def test_a_changed_applied_file_is_refused_before_anything_runs(migrated_db, migrations_copy):
    changed = migrations_copy / "0002_sales.sql"
    changed.write_text(changed.read_text() + "\n-- an innocent-looking edit\n")
    (migrations_copy / "0099_later.sql").write_text("CREATE TABLE sales.later (id int);\n")
    with pytest.raises(MigrationError, match=r"0002_sales\.sql changed after it was applied"):
        apply_migrations(migrated_db.url("postgres"), migrations_dir=migrations_copy)
    with connected(migrated_db, "postgres") as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass('sales.later')")
        assert cur.fetchone() == (None,), "no pending file may run once the history is in doubt"


def test_an_applied_file_missing_from_disk_is_refused(migrated_db, migrations_copy):
    (migrations_copy / "0004_analytics.sql").unlink()
    with pytest.raises(MigrationError, match=r"0004_analytics\.sql is applied .* older than the database"):
        apply_migrations(migrated_db.url("postgres"), migrations_dir=migrations_copy)


def test_a_new_file_runs_as_the_owner_and_a_failing_one_leaves_nothing(migrated_db, migrations_copy):
    (migrations_copy / "0100_widgets.sql").write_text(
        "CREATE TABLE sales.widgets (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, label text);\n"
    )
    (migrations_copy / "0101_broken.sql").write_text(
        "-- creates a table, then fails: neither may remain\n"
        "CREATE TABLE sales.half_done (id int);\n"
        "\n"
        "SELECT no_such_column\n"
        "  FROM sales.transactions;\n"
    )
    with pytest.raises(MigrationError) as info:
        apply_migrations(migrated_db.url("postgres"), migrations_dir=migrations_copy)
    message = str(info.value)
    assert "0101_broken.sql" in message and "at line 4" in message
    assert 'column "no_such_column" does not exist' in message
    assert isinstance(info.value.__cause__, psycopg2.Error)

    with connected(migrated_db, "postgres") as conn, conn.cursor() as cur:
        cur.execute("SELECT name FROM tillflow_meta.schema_migrations WHERE version >= 100")
        assert cur.fetchall() == [("0100_widgets.sql",)]
        cur.execute("SELECT to_regclass('sales.half_done')")
        assert cur.fetchone() == (None,)
        cur.execute("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'sales.widgets'::regclass")
        assert cur.fetchone() == ("tillflow_owner",)
    # Default privileges reach tables added later: the writer may insert, not delete.
    with connected(migrated_db, "writer") as conn:
        with conn.cursor() as cur:
            cur.execute("INSERT INTO sales.widgets (label) VALUES ('a')")
        assert_denied(conn, "DELETE FROM sales.widgets")


def test_role_passwords_give_login_and_are_quoted_safely(migrated_db, role_passwords):
    for role in ROLE_NAMES:
        with connected(migrated_db, role) as conn, conn.cursor() as cur:
            cur.execute("SELECT current_user")
            assert cur.fetchone() == (ROLE_NAMES[role],)
    awkward = "it's \"quoted\"; %s -- $$ \\ DROP ROLE x"
    url = migrated_db.url("postgres")
    try:
        apply_migrations(url, role_passwords={"reader": awkward})
        server = migrated_db.server
        conn = psycopg2.connect(
            host=server.host, port=server.port, user="tillflow_reader", password=awkward, dbname=migrated_db.name
        )
        conn.close()
    finally:
        apply_migrations(url, role_passwords={"reader": role_passwords["reader"]})


def test_an_unknown_role_password_is_refused(migrated_db):
    with pytest.raises(MigrationError, match="no Tillflow role admin"):
        apply_migrations(migrated_db.url("postgres"), role_passwords={"admin": "x"})


# -- constraints -------------------------------------------------------------------


def _transaction(**overrides) -> dict:
    row = {
        "id": str(uuid.uuid4()),
        "transaction_date": date(2024, 3, 1),
        "category": "SELL",
        "name": "Apple",
        "quantity": 1,
        "amount_excl_tax": Decimal("10.00"),
        "amount_inc_tax": Decimal("12.00"),
    }
    row.update(overrides)
    return row


def _insert(cur, row: dict) -> None:
    cur.execute(
        sql.SQL("INSERT INTO sales.transactions ({}) VALUES ({})").format(
            sql.SQL(", ").join(map(sql.Identifier, row)), sql.SQL(", ").join(sql.Placeholder() * len(row))
        ),
        list(row.values()),
    )


@pytest.mark.parametrize(
    ("overrides", "constraint"),
    [
        ({"category": "sell"}, "transactions_category_check"),
        ({"category": "REFUND"}, "transactions_category_check"),
        ({"name": "   "}, "transactions_name_check"),
        ({"name": "x" * 201}, "transactions_name_check"),
        ({"quantity": 0}, "transactions_quantity_check"),
        ({"amount_excl_tax": Decimal("0.00"), "amount_inc_tax": Decimal("0.00")}, "transactions_amount_excl_tax_check"),
        ({"amount_excl_tax": Decimal("-1.00"), "amount_inc_tax": Decimal("-1.20")}, "transactions_amount_excl_tax_check"),
        ({"amount_inc_tax": Decimal("12.02")}, "transactions_tax_rule_check"),
        ({"amount_inc_tax": Decimal("11.98")}, "transactions_tax_rule_check"),
        ({"tax_rate": Decimal("1.5")}, "transactions_tax_rate_check"),
        ({"store_id": "north side!"}, "transactions_store_id_check"),
        ({"source_line": 0}, "transactions_source_line_check"),
    ],
)
def test_checks_refuse_a_row_that_breaks_a_rule(migrated_db, overrides, constraint):
    with connected(migrated_db, "writer") as conn, conn.cursor() as cur:
        with pytest.raises(psycopg2.errors.CheckViolation) as info:
            _insert(cur, _transaction(**overrides))
        assert info.value.diag.constraint_name == constraint


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"amount_inc_tax": Decimal("12.01")},
        {"amount_inc_tax": Decimal("11.99")},
        {"name": "y" * 200, "quantity": 1000, "store_id": "north-2"},
        {"tax_rate": Decimal("0.10"), "amount_excl_tax": Decimal("10.05"), "amount_inc_tax": Decimal("11.06")},
        {"amount_excl_tax": Decimal("9999999999.99"), "amount_inc_tax": Decimal("9999999999.99"),
         "tax_rate": Decimal("0")},
    ],
)
def test_checks_accept_rows_within_the_rules(migrated_db, overrides):
    with connected(migrated_db, "writer") as conn, conn.cursor() as cur:
        _insert(cur, _transaction(**overrides))


def test_missing_fields_and_a_second_row_for_one_id_are_refused(migrated_db):
    with connected(migrated_db, "writer") as conn, conn.cursor() as cur:
        row = _transaction()
        _insert(cur, row)
        with pytest.raises(psycopg2.errors.UniqueViolation):
            _insert(cur, _transaction(id=row["id"], name="Pear"))
        with pytest.raises(psycopg2.errors.NotNullViolation):
            _insert(cur, _transaction(name=None))
        cur.execute("SELECT store_id, tax_rate FROM sales.transactions WHERE id = %s", (row["id"],))
        assert cur.fetchone() == ("main", Decimal("0.2000"))


def test_rejects_and_conflicts_are_idempotent_on_their_kafka_position(migrated_db):
    with connected(migrated_db, "writer") as conn, conn.cursor() as cur:
        for _ in range(2):  # the consumer re-reading a message after a crash
            cur.execute(
                """INSERT INTO ingest.rejects (transaction_id, raw, reasons, source, kafka_topic, kafka_partition, kafka_offset)
                   VALUES ('not-a-uuid', '{"id": "not-a-uuid"}', '["id is not a UUID"]', 'csv', 'tillflow.rejects', 3, 17)
                   ON CONFLICT DO NOTHING"""
            )
            cur.execute(
                """INSERT INTO ingest.conflicts (transaction_id, stored, incoming, kafka_topic, kafka_partition, kafka_offset)
                   VALUES (%s, '{"quantity": 1}', '{"quantity": 2}', 'tillflow.transactions', 3, 17)
                   ON CONFLICT DO NOTHING""",
                (str(uuid.uuid4()),),
            )
        # Same partition and offset on the other topic is another message.
        cur.execute(
            """INSERT INTO ingest.rejects (raw, reasons, kafka_topic, kafka_partition, kafka_offset)
               VALUES ('"a raw line"', '["bad"]', 'tillflow.transactions', 3, 17) ON CONFLICT DO NOTHING"""
        )
        cur.execute("SELECT count(*) FROM ingest.rejects")
        assert cur.fetchone() == (2,)
        cur.execute("SELECT count(*) FROM ingest.conflicts")
        assert cur.fetchone() == (1,)
        # A position is all of topic, partition and offset, or none of them.
        with pytest.raises(psycopg2.errors.CheckViolation):
            cur.execute(
                "INSERT INTO ingest.rejects (raw, reasons, kafka_partition, kafka_offset) VALUES ('{}', '[]', 1, 2)"
            )


# -- privileges ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE sales.transactions SET quantity = 2",
        "DELETE FROM sales.transactions",
        "TRUNCATE sales.transactions",
        "ALTER TABLE sales.transactions ADD COLUMN note text",
        "ALTER TABLE sales.transactions DROP CONSTRAINT transactions_tax_rule_check",
        "DROP TABLE sales.transactions",
        "CREATE INDEX ON sales.transactions (quantity)",
        "CREATE TABLE sales.mine (id int)",
        "CREATE TABLE ingest.mine (id int)",
        "CREATE TABLE analytics.mine (id int)",
        "CREATE TABLE public.mine (id int)",
        "CREATE SCHEMA mine",
        "CREATE VIEW public.everything AS SELECT 1",
        "DELETE FROM ingest.rejects",
        "UPDATE ingest.conflicts SET stored = '{}'",
        "TRUNCATE ingest.uploads",
        "UPDATE ingest.uploads SET file_name = 'other.csv'",
        "DELETE FROM ingest.kafka_positions",
        "UPDATE ingest.kafka_positions SET topic = 'other'",
        "SELECT * FROM analytics.daily_transactions",
        "INSERT INTO tillflow_meta.schema_migrations VALUES (9999, '9999_x.sql', 'x')",
    ],
)
def test_writer_is_refused_everything_but_its_inserts(migrated_db, statement):
    with connected(migrated_db, "writer") as conn:
        assert_denied(conn, statement)


def test_writer_inserts_reads_back_and_completes_uploads(migrated_db):
    with connected(migrated_db, "writer") as conn, conn.cursor() as cur:
        _insert(cur, _transaction())
        cur.execute("SELECT count(*) FROM sales.transactions")
        assert cur.fetchone() == (1,)
        cur.execute(
            """INSERT INTO ingest.uploads (file_name, sha256, size_bytes, source)
               VALUES ('retail_01_03_2024.csv', %s, 120, 'csv') RETURNING id""",
            ("ab" * 32,),
        )
        (upload_id,) = cur.fetchone()
        cur.execute(
            """UPDATE ingest.uploads SET rows_read = 3, rows_accepted = 2, rows_rejected = 1,
                      status = 'published', finished_at = now() WHERE id = %s""",
            (upload_id,),
        )
        assert cur.rowcount == 1
        # The consumer may stage a batch in a temporary table.
        cur.execute("CREATE TEMPORARY TABLE batch (LIKE sales.transactions)")


def test_reader_reads_the_analytics_views_and_nothing_else(migrated_db):
    with connected(migrated_db, "postgres") as conn, conn.cursor() as cur:
        cur.execute("SELECT relname FROM pg_class WHERE relnamespace = 'analytics'::regnamespace")
        views = sorted(name for (name,) in cur.fetchall())
    assert {"daily_transactions", "category_totals", "product_daily_balance"} <= set(views)
    with connected(migrated_db, "reader") as conn:
        with conn.cursor() as cur:
            cur.execute("SHOW default_transaction_read_only")
            assert cur.fetchone() == ("on",)
            for view in views:
                cur.execute(sql.SQL("SELECT * FROM {} LIMIT 1").format(sql.Identifier("analytics", view)))
            # Read-only is a default the session may lift: the privileges must hold alone.
            cur.execute("SET default_transaction_read_only = off")
        for statement in (
            "SELECT * FROM sales.transactions",
            "SELECT * FROM ingest.rejects",
            "INSERT INTO sales.transactions (id) VALUES (gen_random_uuid())",
            "CREATE TABLE analytics.mine (id int)",
            "CREATE TABLE public.mine (id int)",
            "CREATE TEMPORARY TABLE mine (id int)",
            "CREATE SCHEMA mine",
        ):
            assert_denied(conn, statement)


def test_backup_reads_everything_pg_dump_needs_and_writes_nothing(migrated_db):
    with connected(migrated_db, "backup") as conn:
        with conn.cursor() as cur:
            cur.execute(
                """SELECT n.nspname, c.relname, c.relkind,
                          CASE WHEN c.relkind = 'S' THEN has_sequence_privilege(c.oid, 'SELECT')
                               ELSE has_table_privilege(c.oid, 'SELECT') END
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE n.nspname IN ('sales', 'ingest', 'analytics', 'tillflow_meta')
                     AND c.relkind IN ('r', 'v', 'm', 'S', 'p')"""
            )
            objects = cur.fetchall()
        assert len(objects) >= 10
        assert [o for o in objects if not o[3]] == []
        assert_denied(conn, "INSERT INTO sales.transactions (id) VALUES (gen_random_uuid())")
        assert_denied(conn, "DELETE FROM ingest.rejects")
        assert_denied(conn, "CREATE TABLE public.mine (id int)")

    pg_dump = _pg_dump()
    assert pg_dump is not None, "pg_dump is missing: make deps installs PostgreSQL"
    done = subprocess.run(
        [pg_dump, "--dbname", migrated_db.url("backup"), "--format=plain", "--no-owner"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PGCONNECT_TIMEOUT": "10"},
    )
    assert done.returncode == 0, done.stderr
    assert "CREATE TABLE sales.transactions" in done.stdout
    assert "COPY tillflow_meta.schema_migrations" in done.stdout


def _pg_dump() -> str | None:
    try:
        from devstack.postgres import find_bindir

        candidate = find_bindir() / "pg_dump"
        if candidate.exists():
            return str(candidate)
    except Exception:  # noqa: BLE001 - fall back to the PATH
        pass
    return shutil.which("pg_dump")


def test_public_can_neither_connect_nor_create(migrated_db):
    with connected(migrated_db, "postgres") as conn, conn.cursor() as cur:
        cur.execute(
            """SELECT a.privilege_type FROM pg_database d, aclexplode(d.datacl) a
               WHERE d.datname = current_database() AND a.grantee = 0"""
        )
        assert cur.fetchall() == [], "PUBLIC keeps no privilege on the database"
        cur.execute(
            """SELECT a.privilege_type FROM pg_namespace n, aclexplode(n.nspacl) a
               WHERE n.nspname = 'public' AND a.grantee = 0"""
        )
        assert "CREATE" not in {p for (p,) in cur.fetchall()}
        cur.execute(
            """SELECT n.nspname FROM pg_namespace n, aclexplode(n.nspacl) a
               WHERE n.nspname = ANY(%s) AND a.grantee = 0""",
            (list(OUR_SCHEMAS),),
        )
        assert cur.fetchall() == []


def test_the_owner_owns_every_object_and_no_role_is_privileged(migrated_db):
    with connected(migrated_db, "postgres") as conn, conn.cursor() as cur:
        cur.execute(
            """SELECT n.nspname, c.relname, pg_get_userbyid(c.relowner)
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = ANY(%s) AND pg_get_userbyid(c.relowner) <> 'tillflow_owner'""",
            (list(OUR_SCHEMAS),),
        )
        assert cur.fetchall() == []
        cur.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s) AND pg_get_userbyid(nspowner) <> 'tillflow_owner'",
            (list(OUR_SCHEMAS),),
        )
        assert cur.fetchall() == []
        # One exception: tillflow_backup creates the scratch database of its
        # restore test (migration 0007), and may do nothing else of the kind.
        cur.execute(
            """SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)
                 AND (rolsuper OR rolcreaterole OR (rolcreatedb AND rolname <> 'tillflow_backup')
                      OR rolreplication OR rolbypassrls)""",
            (list(ROLE_NAMES.values()),),
        )
        assert cur.fetchall() == []


# -- the test databases ----------------------------------------------------------------------


# The objects of the Tillflow schemas as the catalogue describes them, name by name: what a
# copy of the template must share with a migrated database (pg_dump's text also carries
# per-database details, and differs between a client and a server of other minor versions).
_CATALOGUE = [
    """SELECT n.nspname, c.relname, c.relkind, pg_get_userbyid(c.relowner), c.relacl::text,
              c.reloptions::text
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE n.nspname IN ('sales', 'ingest', 'analytics', 'api', 'tillflow_meta') ORDER BY 1, 2""",
    """SELECT table_schema, table_name, column_name, ordinal_position, data_type, numeric_precision,
              numeric_scale, is_nullable, column_default
       FROM information_schema.columns
       WHERE table_schema IN ('sales', 'ingest', 'analytics', 'api', 'tillflow_meta') ORDER BY 1, 2, 4""",
    """SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint
       WHERE connamespace::regnamespace::text IN ('sales', 'ingest', 'analytics', 'api', 'tillflow_meta')
       ORDER BY 1, 2""",
    """SELECT schemaname, indexname, indexdef FROM pg_indexes
       WHERE schemaname IN ('sales', 'ingest', 'analytics', 'api', 'tillflow_meta') ORDER BY 1, 2""",
    """SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal
       ORDER BY 1, 2""",
    """SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid), pg_get_userbyid(p.proowner), p.proacl::text
       FROM pg_proc p WHERE p.pronamespace::regnamespace::text IN ('sales', 'ingest', 'analytics', 'api',
       'tillflow_meta') ORDER BY 1""",
    """SELECT schemaname, viewname, definition FROM pg_views
       WHERE schemaname IN ('sales', 'ingest', 'analytics', 'api') ORDER BY 1, 2""",
    """SELECT nspname, pg_get_userbyid(nspowner), nspacl::text FROM pg_namespace
       WHERE nspname IN ('sales', 'ingest', 'analytics', 'api', 'tillflow_meta') ORDER BY 1""",
    """SELECT defaclrole::regrole::text, defaclnamespace::regnamespace::text, defaclobjtype, defaclacl::text
       FROM pg_default_acl ORDER BY 1, 2, 3""",
    "SELECT version, name, sha256 FROM tillflow_meta.schema_migrations ORDER BY 1",
    """SELECT coalesce(r.rolname, 'PUBLIC'), a.privilege_type FROM pg_database d, aclexplode(d.datacl) a
       LEFT JOIN pg_roles r ON r.oid = a.grantee WHERE d.datname = current_database() ORDER BY 1, 2""",
    "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()",
    """SELECT r.rolname, s.setconfig FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
       LEFT JOIN pg_roles r ON r.oid = s.setrole WHERE d.datname = current_database() ORDER BY 1""",
]


def test_a_copy_of_the_migrated_template_is_what_the_migrations_make(migrated_db, empty_db, role_passwords):
    """migrated_db copies a template (conftest): the copy must equal a database the migrations made,
    in every table, column, constraint, index, trigger, function, view and privilege, its catalogue
    of applied migrations, and its database-level privileges and settings."""
    apply_migrations(empty_db, role_passwords=role_passwords)

    def describe(url: str) -> list[list[tuple]]:
        with contextlib.closing(psycopg2.connect(url)) as conn, conn.cursor() as cur:
            described = []
            for statement in _CATALOGUE:
                cur.execute(statement)
                described.append(cur.fetchall())
            return described

    copied, made = describe(migrated_db.url("postgres")), describe(empty_db)
    for statement, theirs, ours in zip(_CATALOGUE, copied, made):
        assert theirs == ours, statement
    assert all(made[:4]) and made[10], "the descriptions are not empty: tables, columns, grants"
