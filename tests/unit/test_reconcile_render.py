"""``tillflow reconcile`` without a database: how a result reads (text and JSON),
its verdict, the command line's refusals and the RECONCILE_SCHEDULE setting.
The checks themselves run against PostgreSQL in tests/integration/test_reconcile.py."""
from __future__ import annotations

import datetime
import json
from decimal import Decimal

import pytest

from tillflow import cli, reconcile
from tillflow.config import Settings
from tillflow.errors import ConfigError, InputError
from tillflow.reconcile import FileCheck, FileDifference, PendingFile, Result, RollupCheck, RollupDifference

UTC = datetime.timezone.utc
DAY = datetime.date(2026, 1, 5)
AT = datetime.datetime(2026, 1, 6, 12, 0, tzinfo=UTC)


def result(*, store_differences: int = 2, file_differences: int = 1, pending: int = 1) -> Result:
    stores = RollupCheck("sales.daily_store_totals", "store_id", 12, store_differences, (
        RollupDifference("sales.daily_store_totals", DAY, "store_id", "main", "sell_amount_inc_tax",
                         Decimal("121.00"), Decimal("120.00")),
        RollupDifference("sales.daily_store_totals", DAY, "store_id", "ghost", "buy_transactions", 2, None),
    )[:store_differences])
    products = RollupCheck("sales.daily_product_totals", "name", 30, 0, ())
    files = FileCheck(4, file_differences, (
        FileDifference("csv", "retail_05_01_2026.csv", "rows", 24, 23, "equal",
                       {"stored": 9, "duplicates": 8, "conflicts": 2, "rejects": 4}),
    )[:file_differences], pending, (
        PendingFile("upload", "retail 'x'.csv", None, AT),
    )[:pending])
    return Result(AT, DAY, None, 600.0, (stores, products), files)


def test_the_verdict_counts_every_difference_of_both_checks():
    found = result()
    assert (found.differences("rollups"), found.differences("files"), found.total, found.ok) == (2, 1, 3, False)
    clean = result(store_differences=0, file_differences=0, pending=0)
    assert clean.ok and clean.total == 0
    assert Result(AT, None, None, 0.0, (), None).differences("files") == 0
    with pytest.raises(ValueError):
        found.differences("everything")


def test_text_names_each_key_column_and_both_values():
    text = reconcile.render(result(), "text")
    assert text.splitlines() == [
        "reconcile: snapshot 2026-01-06T12:00:00Z, dates 2026-01-05 to last",
        "rollups sales.daily_store_totals: 12 keys compared, 2 differences",
        "  sales.daily_store_totals 2026-01-05 store_id='main' sell_amount_inc_tax: rollup 121.00, recomputed 120.00",
        "  sales.daily_store_totals 2026-01-05 store_id='ghost' buy_transactions: rollup 2, recomputed absent",
        "rollups sales.daily_product_totals: 30 keys compared, 0 differences",
        "files: 4 checked, 1 pending (a load finished less than 600 s ago, or still running), 1 difference",
        "  file csv 'retail_05_01_2026.csv' rows: uploads 24, found 23 "
        "(stored 9, duplicates 8, conflicts 2, rejects 4)",
        "  pending upload \"retail 'x'.csv\": last load finished 2026-01-06T12:00:00Z",
        "3 differences found",
    ]
    clean = reconcile.render(result(store_differences=0, file_differences=0, pending=0), "text")
    assert clean.splitlines()[-1] == "all totals agree"


def test_text_is_bounded_and_says_how_many_more_there_are():
    bounded = result(store_differences=2)
    stores = bounded.rollups[0]
    many = Result(AT, None, None, 600.0, (
        RollupCheck(stores.table, stores.key_column, 5000, 4000, stores.shown), bounded.rollups[1]),
        FileCheck(9, 60, bounded.files.shown, 31, bounded.files.pending_shown))
    text = reconcile.render(many, "text")
    assert "  ... and 3998 more differences (2 shown)" in text
    assert "  ... and 59 more differences (1 shown)" in text
    assert "  ... and 30 more pending files (1 shown)" in text
    assert text.splitlines()[0].endswith(", all dates")
    assert text.splitlines()[-1] == "4060 differences found"


def test_json_parses_with_exact_amounts_counts_as_numbers_and_absent_as_null():
    doc = json.loads(reconcile.render(result(), "json"))
    assert (doc["ok"], doc["differences"], doc["snapshot_at"], doc["from"], doc["to"]) == (
        False, 3, "2026-01-06T12:00:00Z", "2026-01-05", None)
    stores, products = doc["rollups"]["tables"]
    assert stores["shown"] == [
        {"transaction_date": "2026-01-05", "store_id": "main", "column": "sell_amount_inc_tax",
         "rollup": "121.00", "recomputed": "120.00"},
        {"transaction_date": "2026-01-05", "store_id": "ghost", "column": "buy_transactions",
         "rollup": 2, "recomputed": None},
    ]
    assert (products["table"], products["keys"], products["differences"]) == ("sales.daily_product_totals", 30, 0)
    assert doc["files"]["shown"] == [{
        "source": "csv", "file_name": "retail_05_01_2026.csv", "column": "rows", "expected": 24, "found": 23,
        "comparison": "equal", "found_in": {"stored": 9, "duplicates": 8, "conflicts": 2, "rejects": 4}}]
    assert doc["files"]["pending_shown"] == [{"source": "upload", "file_name": "retail 'x'.csv",
                                              "loading_since": None, "last_finished_at": "2026-01-06T12:00:00Z"}]
    assert json.loads(reconcile.render(Result(AT, None, None, 0.0, (), None), "json"))["files"] is None


@pytest.mark.parametrize("comparison, expected", [("at least", "uploads at least 10.00"),
                                                  ("at most", "uploads at most 10.00")])
def test_a_file_held_to_a_bound_says_which(comparison, expected):
    bound = FileDifference("csv", "f.csv", "amount_excl_tax", Decimal("10.00"), Decimal("9.99"), comparison,
                           {"stored": Decimal("9.99"), "duplicates": 0, "conflicts": 0, "rejects": 0})
    assert reconcile.describe(bound) == (f"file csv 'f.csv' amount_excl_tax: {expected}, found 9.99 "
                                         "(stored 9.99, duplicates 0, conflicts 0, rejects 0)")


def test_an_unknown_format_is_refused():
    with pytest.raises(ValueError, match="unknown format 'xml'"):
        reconcile.render(result(), "xml")


@pytest.mark.parametrize("args, message", [
    (["--from", "2026-01-06", "--to", "2026-01-05"], "--from 2026-01-06 is after --to 2026-01-05"),
    (["--from", "5 Jan"], "'5 Jan' is not a date in the form YYYY-MM-DD"),
    (["--settle", "-1"], "must be 0 seconds or more"),
    (["--settle", "nan"], "must be 0 seconds or more"),
    (["--format", "csv"], "invalid choice: 'csv'"),
])
def test_bad_arguments_are_usage_errors(args, message, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["reconcile", *args])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_without_database_url_it_says_so_in_one_line(monkeypatch, capsys):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert cli.main(["reconcile"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tillflow reconcile: DATABASE_URL is not set") and len(err.splitlines()) == 1


def test_the_run_refuses_an_impossible_range_and_a_negative_settle_before_reading():
    with pytest.raises(InputError, match="after --to"):
        reconcile.run(None, date_from=DAY, date_to=DAY - datetime.timedelta(days=1))
    with pytest.raises(InputError, match="cannot be negative"):
        reconcile.run(None, settle_seconds=-1)


def test_the_reconcile_schedule_has_a_default_and_is_checked():
    assert Settings.from_env({}).reconcile_schedule == "15 2 * * *"
    assert Settings.from_env({"RECONCILE_SCHEDULE": " */10  * * * * "}).reconcile_schedule == "*/10 * * * *"
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"RECONCILE_SCHEDULE": "hourly"})
    assert str(caught.value).startswith("RECONCILE_SCHEDULE=")
