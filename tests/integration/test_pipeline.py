"""The core pipeline end to end, against the real Kafka cluster and PostgreSQL:
CSV and SQLite in, every transaction stored exactly once, rejects and conflicts
kept. Invariants are computed from sets of ids, not from counts alone."""
from __future__ import annotations

import datetime
import json
import signal
import threading
import time
from decimal import Decimal

import pytest

from tillflow import sample
from etl.topics import PARTITIONS
from support.pipeline import (
    assert_rollups_match, consume_until_idle, expected, query, start_consumer, stored, tillflow, topic_size,
    wait_for,
)

DAY = datetime.date(2026, 1, 5)


BAD_LINES = [
    "00000000-0000-4000-8000-00000000000a,SELL,Milk,1,5,1.00,1.20",   # extra column
    "00000000-0000-4000-8000-00000000000b,GIFT,Milk,1,1.00,1.20",     # unknown category
    "00000000-0000-4000-8000-00000000000c,SELL,Milk,0,1.00,1.20",     # quantity 0
    "00000000-0000-4000-8000-00000000000d,BUY,Milk,2,10.00,12.50",    # tax mismatch
    "not-a-uuid,SELL,,1e3,NaN,",                                       # everything wrong
]


def test_load_then_consume_stores_every_valid_row_once_and_keeps_rejects(env, migrated_db, tmp_path):
    good = list(sample.rows(300, seed=11, start=DAY, days=1))
    path = sample.write_csv(tmp_path / sample.csv_name(DAY), good)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("\n".join(BAD_LINES) + "\n")

    out = tillflow(env, "load", str(path)).stdout
    assert f"{path.name}: 305 rows read, 300 accepted, 5 rejected" in out
    consume_until_idle(env)

    assert stored(migrated_db) == expected(good)
    rejects = query(migrated_db, "SELECT transaction_id, reasons, source_ref, source_line FROM ingest.rejects")
    assert len(rejects) == 5
    by_line = {r[3]: r for r in rejects}
    assert set(by_line) == {302, 303, 304, 305, 306}
    codes = {line: {reason["code"] for reason in r[1]} for line, r in by_line.items()}
    assert "unknown_category" in codes[303]
    assert "tax_mismatch" in codes[305]
    assert len(by_line[306][1]) >= 4, "every reason that applies is kept"
    assert all(r[2] == path.name for r in rejects)
    uploads = query(migrated_db, "SELECT file_name, sha256, rows_read, rows_accepted, rows_rejected, status"
                                 " FROM ingest.uploads")
    assert uploads == [(path.name, uploads[0][1], 305, 300, 5, "published")]
    assert len(uploads[0][1]) == 64


def test_same_file_three_times_and_twice_concurrently_is_stored_once(env, migrated_db, tmp_path):
    items = list(sample.rows(500, seed=12, start=DAY, days=1))
    path = sample.write_csv(tmp_path / sample.csv_name(DAY), items)
    for _ in range(3):
        tillflow(env, "load", str(path))
    threads = [threading.Thread(target=tillflow, args=(env, "load", str(path))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    consume_until_idle(env)
    assert stored(migrated_db) == expected(items)
    assert query(migrated_db, "SELECT count(*) FROM ingest.conflicts") == [(0,)]
    assert query(migrated_db, "SELECT count(*) FROM ingest.uploads WHERE status = 'published'") == [(5,)]
    # Four loads' rows were duplicates of the first's: each noted once, from the file's own lines.
    assert query(migrated_db, "SELECT count(*), count(DISTINCT (kafka_partition, kafka_offset)),"
                              " count(DISTINCT transaction_id), min(source_ref) FROM ingest.duplicates") == [
        (4 * len(items), 4 * len(items), len(items), path.name)]
    assert_rollups_match(migrated_db)
    ((excl, inc),) = query(migrated_db, "SELECT DISTINCT amount_excl_tax_accepted, amount_inc_tax_accepted"
                                        " FROM ingest.uploads")
    assert (excl, inc) == (sum(r.amount_excl_tax for r in items), sum(r.amount_inc_tax for r in items))
    # Every file adds up: stored + duplicates + conflicts + rejects = rows read, amounts alike.
    tillflow(env | {"DATABASE_URL": migrated_db.url("backup")}, "reconcile", "--settle", "0")  # exit 0: all agree


def test_overlapping_file_adds_only_the_new_rows(env, migrated_db, tmp_path):
    items = list(sample.rows(400, seed=13, start=DAY, days=1))
    (tmp_path / "morning").mkdir()
    morning = sample.write_csv(tmp_path / "morning" / sample.csv_name(DAY), items[:250])
    evening = sample.write_csv(tmp_path / sample.csv_name(DAY), items[100:])
    tillflow(env, "load", str(morning))
    consume_until_idle(env)
    assert set(stored(migrated_db)) == {r.id for r in items[:250]}
    tillflow(env, "load", str(evening))
    consume_until_idle(env)
    assert stored(migrated_db) == expected(items)
    assert_rollups_match(migrated_db)
    assert {i for (i,) in query(migrated_db, "SELECT transaction_id::text FROM ingest.duplicates")} == {
        r.id for r in items[100:250]}, "the evening file's rows already stored from the morning's"
    tillflow(env | {"DATABASE_URL": migrated_db.url("backup")}, "reconcile", "--settle", "0")


def test_conflicting_duplicate_keeps_the_first_version_and_records_both(env, migrated_db, tmp_path):
    first = list(sample.rows(10, seed=14, start=DAY, days=1))
    changed = first[3].__class__(**{**first[3].__dict__, "quantity": first[3].quantity + 1})
    (tmp_path / "a").mkdir()
    a = sample.write_csv(tmp_path / "a" / sample.csv_name(DAY), first)
    b = sample.write_csv(tmp_path / sample.csv_name(DAY), [changed])
    tillflow(env, "load", str(a))
    consume_until_idle(env)
    tillflow(env, "load", str(b))
    consume_until_idle(env)
    assert stored(migrated_db) == expected(first)
    conflicts = query(migrated_db, "SELECT transaction_id::text, stored, incoming FROM ingest.conflicts")
    assert len(conflicts) == 1
    tx_id, kept, refused = conflicts[0]
    assert tx_id == first[3].id
    assert kept["quantity"] == first[3].quantity and refused["quantity"] == first[3].quantity + 1


def test_sqlite_migration_converts_float_amounts_exactly(env, migrated_db, tmp_path):
    items = list(sample.rows(1000, seed=15))
    db_path = sample.write_sqlite(tmp_path / "legacy.db", items)
    out = tillflow(env, "migrate-sqlite", str(db_path)).stdout
    assert "1000 rows read, 1000 accepted, 0 rejected" in out
    consume_until_idle(env)
    got = stored(migrated_db)
    assert got == expected(items)
    assert sum(v[5] for v in got.values()) == sum(r.amount_inc_tax for r in items)
    assert all(isinstance(v[4], Decimal) for v in got.values())


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("retail_05_01_2026.csv", "id,kind,description,quantity,amount_excl_tax,amount_inc_tax\n", "header"),
        ("sales.csv", "id,category,description,quantity,amount_excl_tax,amount_inc_tax\n", "--date"),
        ("retail_31_02_2026.csv", "id,category,description,quantity,amount_excl_tax,amount_inc_tax\n",
         "calendar date"),
    ],
)
def test_unreadable_files_are_refused_with_one_line_and_nothing_published(
        env, topics, running_kafka, tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content + "00000000-0000-4000-8000-000000000001,SELL,Milk,1,1.00,1.20\n")
    done = tillflow(env, "load", str(path), check=False)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and name in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    assert topic_size(running_kafka.bootstrap_servers, topics.transactions) == 0
    assert topic_size(running_kafka.bootstrap_servers, topics.rejects) == 0


def test_missing_file_is_refused(env, tmp_path):
    done = tillflow(env, "load", str(tmp_path / "retail_01_01_2026.csv"), check=False)
    assert done.returncode == 1 and "retail_01_01_2026.csv" in done.stderr and "Traceback" not in done.stderr


def test_sigterm_finishes_the_batch_commits_and_exits_zero(env, migrated_db, tmp_path):
    items = list(sample.rows(3000, seed=16, start=DAY, days=1))
    tillflow(env, "load", str(sample.write_csv(tmp_path / sample.csv_name(DAY), items)))
    proc = start_consumer(env, tmp_path / "consumer.log")
    wait_for(lambda: len(stored(migrated_db)) > 0, 60, "the first batch")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    consume_until_idle(env)
    assert stored(migrated_db) == expected(items)


@pytest.mark.slow
def test_postgres_down_for_30s_loses_nothing_and_doubles_nothing(env, migrated_db, running_postgres, tmp_path):
    items = list(sample.rows(30_000, seed=17, start=DAY, days=1))
    tillflow(env, "load", str(sample.write_csv(tmp_path / sample.csv_name(DAY), items)))
    proc = start_consumer(env | {"CONSUMER_BATCH_SIZE": "1000"}, tmp_path / "consumer.log")
    try:
        wait_for(lambda: len(stored(migrated_db)) > 0, 60, "the first batch")
        running_postgres.stop("fast")
        time.sleep(30)
        assert proc.poll() is None, "the consumer must wait out the outage, not exit"
        running_postgres.start()
        wait_for(lambda: len(stored(migrated_db)) == len(items), 180, "the backlog")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    assert stored(migrated_db) == expected(items)
    assert_rollups_match(migrated_db)
    log = (tmp_path / "consumer.log").read_text()
    assert log.count("PostgreSQL unavailable") == 1, "one log line per state change"
    assert log.count("PostgreSQL is back") == 1


@pytest.mark.slow
def test_consumer_sigkilled_mid_stream_and_restarted_stores_each_id_once(env, migrated_db, tmp_path):
    items = list(sample.rows(30_000, seed=18, start=DAY, days=1))
    tillflow(env, "load", str(sample.write_csv(tmp_path / sample.csv_name(DAY), items)))
    # The brokers' shortest session: a killed member's partitions move after 6 s, not 30.
    small = env | {"CONSUMER_BATCH_SIZE": "500", "CONSUMER_SESSION_TIMEOUT_MS": "6000"}
    for _ in range(2):
        proc = start_consumer(small, tmp_path / "consumer.log")
        before = len(stored(migrated_db))
        # A restarted member gets partitions only after the killed one's session times out.
        wait_for(lambda: len(stored(migrated_db)) > before, 180, "progress")
        proc.kill()
        proc.wait(timeout=30)
    consume_until_idle(env)
    assert stored(migrated_db) == expected(items)  # a dict: an id stored twice could not even be represented
    assert query(migrated_db, "SELECT count(*), count(DISTINCT id) FROM sales.transactions") == [
        (len(items), len(items))]
    assert_rollups_match(migrated_db)
    assert query(migrated_db, "SELECT count(*) FROM ingest.duplicates") == [(0,)], "replays are not duplicates"


@pytest.mark.slow
def test_two_consumers_share_the_partitions(env, migrated_db, tmp_path):
    items = list(sample.rows(20_000, seed=19, start=DAY, days=1))
    tillflow(env, "load", str(sample.write_csv(tmp_path / sample.csv_name(DAY), items)))
    small = env | {"CONSUMER_BATCH_SIZE": "500"}
    procs = [start_consumer(small, tmp_path / f"consumer-{i}.log") for i in range(2)]
    try:
        wait_for(lambda: len(stored(migrated_db)) == len(items), 180, "all rows")
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            assert proc.wait(timeout=60) == 0
    assert stored(migrated_db) == expected(items)
    partitions = query(migrated_db, "SELECT count(DISTINCT kafka_partition) FROM sales.transactions")
    assert partitions == [(PARTITIONS,)]
    assert_rollups_match(migrated_db)


def test_report_answers_equal_an_independent_computation(env, migrated_db, tmp_path):
    items = list(sample.rows(2000, seed=20, start=DAY, days=10, products=["Apples", "Bread", "Milk"]))
    tillflow(env, "load", "--date", "2026-01-05", str(sample.write_csv(tmp_path / "today.csv", items)))
    consume_until_idle(env)
    report_env = env | {"DATABASE_URL": migrated_db.url("reader")}
    doc = json.loads(tillflow(report_env, "report", "--format", "json").stdout)
    totals = {row["category"]: row for row in doc["category_totals"]}
    for category in ("SELL", "BUY"):
        mine = [r for r in items if r.category == category]
        assert totals[category]["transactions"] == len(mine)
        assert Decimal(totals[category]["amount_inc_tax"]) == sum(r.amount_inc_tax for r in mine)
        assert Decimal(totals[category]["amount_excl_tax"]) == sum(r.amount_excl_tax for r in mine)
    assert doc["daily_transactions"] == [{
        "transaction_date": "2026-01-05", "transactions": len(items),
        "sell_amount_inc_tax": totals["SELL"]["amount_inc_tax"], "buy_amount_inc_tax": totals["BUY"]["amount_inc_tax"]}]
    bread = json.loads(tillflow(report_env, "report", "--product", "Bread", "--format", "json").stdout)
    # One date (from --date): the day's balance is also the running total.
    balance = sum((r.amount_inc_tax if r.category == "SELL" else -r.amount_inc_tax)
                  for r in items if r.name == "Bread")
    (row,) = bread["product_daily_balance"]
    assert (row["name"], row["transaction_date"]) == ("Bread", "2026-01-05")
    assert Decimal(row["balance"]) == Decimal(row["cumulative_balance"]) == balance
    assert Decimal(row["sell_amount_inc_tax"]) - Decimal(row["buy_amount_inc_tax"]) == balance
