"""The inbox watcher against the real Kafka and PostgreSQL: it takes only
complete files, archives or fails them with a reason, and after a crash never
publishes a file twice nor loses one."""
from __future__ import annotations

import datetime
import os

import pytest

from tillflow import sample
from etl.load import Loader
from etl.producer import Publisher
from etl.uploads import UploadLedger
from etl.watch import Watcher
from tillflow.config import Settings
from support.pipeline import consume_until_idle, expected, stored, topic_size

DAY = datetime.date(2026, 2, 3)


@pytest.fixture
def watcher(env, tmp_path):
    settings = Settings.from_env(env | {"WATCH_SETTLE_SECONDS": "0.3", "WATCH_INTERVAL_SECONDS": "0.1"},
                                 need_kafka=True, need_database=True, need_inbox=True)
    publisher = Publisher(settings.kafka_bootstrap_servers)
    ledger = UploadLedger(settings.database_url)
    made = Watcher(settings, Loader(settings, publisher, ledger), ledger)
    yield made
    publisher.close()
    ledger.close()


def settle(w: Watcher) -> int:
    """Run two scans across the settle time, as the loop would."""
    w.run_once()
    w.stopping.wait(0.4)
    return w.run_once()


def test_a_file_still_being_written_is_not_taken(watcher, env, migrated_db):
    items = list(sample.rows(200, seed=31, start=DAY, days=1))
    path = watcher.inbox / sample.csv_name(DAY)
    full = sample.write_csv(watcher.inbox.parent / "full.csv", items).read_bytes()
    with open(path, "wb") as handle:
        handle.write(full[: len(full) // 2])
        handle.flush()
        assert watcher.run_once() == 0
        watcher.stopping.wait(0.1)
        assert watcher.run_once() == 0, "a growing file must wait for its settle time"
        handle.write(full[len(full) // 2:])
    os.utime(path)
    assert settle(watcher) == 1
    assert not path.exists()
    archived = list(watcher.archive.rglob("*.csv"))
    assert [p.name for p in archived] == [path.name]
    consume_until_idle(env)
    assert stored(migrated_db) == expected(items)


def test_partial_names_are_ignored(watcher):
    (watcher.inbox / "retail_01_01_2026.csv.part").write_text("id\n")
    (watcher.inbox / ".hidden.csv").write_text("id\n")
    assert settle(watcher) == 0
    assert (watcher.inbox / "retail_01_01_2026.csv.part").exists()


def test_an_unreadable_file_goes_to_failed_with_its_reason(watcher):
    bad = watcher.inbox / sample.csv_name(DAY)
    bad.write_text("id,kind,description\n1,2,3\n")
    no_date = watcher.inbox / "export.csv"
    sample.write_csv(no_date, sample.rows(3, seed=1))
    assert settle(watcher) == 2
    reasons = {p.name: p.read_text() for p in watcher.failed.glob("*.reason.txt")}
    assert set(reasons) == {f"{bad.name}.reason.txt", "export.csv.reason.txt"}
    assert "header" in reasons[f"{bad.name}.reason.txt"]
    assert "date" in reasons["export.csv.reason.txt"]
    assert (watcher.failed / bad.name).exists() and not bad.exists()


def test_after_a_crash_a_taken_file_is_loaded_once(watcher, env, migrated_db, running_kafka, topics):
    items = list(sample.rows(100, seed=32, start=DAY, days=1))
    # Crash after taking, before loading: the file waits in .processing.
    sample.write_csv(watcher.processing / sample.csv_name(DAY), items)
    assert watcher.run_once() == 1
    size = topic_size(running_kafka.bootstrap_servers, topics.transactions)
    assert size == 100
    # Crash after publishing, before archiving: the same file is back in .processing.
    sample.write_csv(watcher.processing / sample.csv_name(DAY), items)
    assert watcher.run_once() == 1
    # The same content dropped again later: archived, not published again.
    sample.write_csv(watcher.inbox / sample.csv_name(DAY), items)
    assert settle(watcher) == 1
    assert topic_size(running_kafka.bootstrap_servers, topics.transactions) == size
    assert len(list(watcher.archive.rglob("*.csv"))) == 3
    consume_until_idle(env)
    assert stored(migrated_db) == expected(items)


def test_postgres_down_keeps_the_file_and_retries(watcher, env, migrated_db, running_postgres):
    items = list(sample.rows(50, seed=33, start=DAY, days=1))
    sample.write_csv(watcher.inbox / sample.csv_name(DAY), items)
    running_postgres.stop("fast")
    try:
        assert settle(watcher) == 0
        assert [p.name for p in watcher.processing.iterdir()] == [sample.csv_name(DAY)]
    finally:
        running_postgres.start()
    watcher._retry_at = 0  # skip the backoff wait
    assert watcher.run_once() == 1
    assert not list(watcher.processing.iterdir())
    consume_until_idle(env)
    assert stored(migrated_db) == expected(items)
