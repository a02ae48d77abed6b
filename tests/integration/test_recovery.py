"""Lose the database, lose nothing: a backup restored over a new, empty server plus a replay
from Kafka gives back every acknowledged transaction exactly once.

On real services: a PostgreSQL server of the session's kind for this test alone
(its data directory is deleted), the session's three Kafka brokers, ``tillflow
serve`` and ``tillflow consume`` as processes. Everything is compared as sets of
ids: what the API acknowledged (accepted, rejected, and conflicting versions),
what ``tillflow load`` published from a CSV written after the backup, and what
PostgreSQL holds afterwards. The figures are printed (``-s`` shows them).
"""
from __future__ import annotations

import datetime
import json
import shutil
import signal
import threading
import time
from decimal import Decimal

import httpx
import psycopg2
import pytest
from kafka import TopicPartition
from kafka.admin import KafkaAdminClient
from psycopg2 import sql

from tillflow import sample
from etl.api import tokens
from support import services
from support.api import ApiServer, transaction
from support.pipeline import (assert_rollups_match, consume_until_idle, query, start_consumer, stored, stored_ids,
                              tillflow, wait_for)
from support.services import make_root
from tillflow.migrate import apply_migrations

DAY = datetime.date(2026, 3, 2)
DATABASE = "tillflow"


class Database:
    """The ``tillflow`` database of one server, as the conftest's ``MigratedDatabase`` is used."""

    def __init__(self, server, passwords: dict[str, str]) -> None:
        self.server, self.passwords, self.name = server, passwords, DATABASE

    def url(self, role: str = "writer") -> str:
        if role == "postgres":
            return self.server.url(dbname=DATABASE)
        return self.server.url(f"tillflow_{role}", self.passwords[role], DATABASE)


def new_installation(server, passwords: dict[str, str]) -> Database:
    """What `docker compose up` does on an empty volume: the database, then every migration."""
    conn = psycopg2.connect(server.url())
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
    conn.close()
    apply_migrations(server.url(dbname=DATABASE), role_passwords=passwords)
    return Database(server, passwords)


class Tills:
    """Posts to the API at a steady rate from a thread; keeps what was acknowledged.

    Every request carries new transactions; every fifth also an invalid one (a
    reject, published to the rejects topic) and a different version of an id
    accepted earlier (a conflict: the first version must stay)."""

    def __init__(self, api: ApiServer, token: str) -> None:
        self.api, self.token = api, token
        self.accepted: dict[str, dict] = {}  # id -> the version acknowledged first
        self.rejected: set[str] = set()  # the invalid items' raw ids
        self.conflicting: set[str] = set()
        self.failed = 0  # requests not acknowledged (the database or Kafka away): not counted
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tills", daemon=True)
        self._n = 0

    def __enter__(self) -> Tills:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        with self.api.client(self.token, timeout=30) as client:
            while not self._stop.is_set():
                self._post(client)
                self._stop.wait(0.02)

    def _post(self, client: httpx.Client) -> None:
        self._n += 1
        items = [transaction(cents=100 + (self._n * 7 + i) % 900, transaction_date=DAY.isoformat())
                 for i in range(5)]
        if self._n % 5 == 0:
            items.append(transaction(id=f"bad-{self._n}", quantity=0))
            earlier = list(self.accepted.values())[len(self.conflicting):len(self.conflicting) + 1]
            items += [dict(first, quantity=first["quantity"] + 40) for first in earlier]
        try:
            answer = client.post("/v1/transactions", json=items)
        except httpx.HTTPError:
            self.failed += 1
            return
        if answer.status_code != 200:
            self.failed += 1
            return
        for item, result in zip(items, answer.json()["results"]):
            if result["status"] == "rejected":
                self.rejected.add(item["id"])
            elif item["id"] in self.accepted:
                self.conflicting.add(item["id"])
            elif result["status"] == "accepted":
                self.accepted[item["id"]] = item


def csv_with_rejects(path, seed: int) -> tuple[list, set[str]]:
    """A CSV of valid rows and three invalid ones; the valid rows and the invalid rows' ids."""
    items = list(sample.rows(400, seed=seed, start=DAY, days=1))
    sample.write_csv(path, items)
    bad = {f"bad-csv-{seed}-{i}" for i in range(3)}
    with open(path, "a", encoding="utf-8") as handle:
        for bad_id in sorted(bad):
            handle.write(f"{bad_id},SELL,Milk,0,1.00,1.20\n")
    return items, bad


def stop(procs) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        assert proc.wait(timeout=60) == 0


@pytest.mark.slow
@pytest.mark.parametrize("consumers", [1, 2])
def test_a_lost_database_is_rebuilt_from_the_backup_plus_kafka(consumers, running_kafka, topics, role_passwords,
                                                                 tmp_path):
    root = make_root()
    server = services.start_postgres(root)
    port = server.port
    replacement = None
    try:
        db = new_installation(server, role_passwords)
        env = {"DATABASE_URL": db.url("writer"), "KAFKA_BOOTSTRAP_SERVERS": running_kafka.bootstrap_servers,
               "KAFKA_TOPIC_TRANSACTIONS": topics.transactions, "KAFKA_TOPIC_REJECTS": topics.rejects,
               "KAFKA_CONSUMER_GROUP": topics.group, "TILLFLOW_ENV": "test", "CONSUMER_BATCH_SIZE": "300",
               "API_AUTH_CACHE_SECONDS": "3600"}
        token = tokens.create(db.url("owner"), "main", "recovery")  # before the backup: it survives
        api = ApiServer(env, tmp_path / "api.log").start()
        procs = [start_consumer(env, tmp_path / f"consumer-{n}.log") for n in range(consumers)]
        backups = tmp_path / "backups"
        try:
            with Tills(api, token) as tills:
                wait_for(lambda: len(tills.accepted) >= 500 and len(stored(db)) > 0, 120, "the first rows stored")
                # A backup mid-stream: the tills keep posting while pg_dump runs.
                taken = tillflow({**env, "DATABASE_URL": db.url("backup"), "BACKUP_DIR": str(backups)},
                                 "backup", "run")
                n_after = len(tills.accepted)
                wait_for(lambda: len(tills.accepted) >= n_after + 1000, 120, "more posted after the backup")
                loaded, bad_csv = csv_with_rejects(tmp_path / sample.csv_name(DAY), seed=31)
                tillflow(env, "load", str(tmp_path / sample.csv_name(DAY)))
                time.sleep(1.0)
            name = taken.stdout.split()[1].rstrip(":")
            # The disk is gone: the server dies and its data directory with it.
            server.kill()
            server.destroy()
            server = None
            lost_at = time.monotonic()
            replacement = services.start_postgres(make_root(), port=port)
            db = new_installation(replacement, role_passwords)  # `docker compose up` on a new volume
            stop(procs)  # make restore REPLACE=1 stops the writers
            admin = {**env, "DATABASE_URL": db.url("postgres"), "BACKUP_DIR": str(backups)}
            restored = tillflow(admin, "backup", "restore", name, "--replace", "--yes")
            assert "replay: consumer group" in restored.stdout, restored.stdout
            procs = [start_consumer(env, tmp_path / f"consumer-again-{n}.log") for n in range(consumers)]
            expected_ids = set(tills.accepted) | {r.id for r in loaded}
            wait_for(lambda: set(stored(db)) >= expected_ids, 300, "every acknowledged transaction")
            recovered_in = time.monotonic() - lost_at
            stop(procs)
            procs = []
            consume_until_idle(env)  # the rejects and conflicts, to the end of both topics
        finally:
            stop(procs)
            assert api.stop() == 0
        rows = stored(db)
        first_versions = {i: (DAY, t["category"], t["name"], t["quantity"], Decimal(t["amount_excl_tax"]),
                              Decimal(t["amount_inc_tax"])) for i, t in tills.accepted.items()}
        first_versions.update({r.id: (r.transaction_date, r.category, r.name, r.quantity, r.amount_excl_tax,
                                      r.amount_inc_tax) for r in loaded})
        (total, distinct), = query(db, "SELECT count(*), count(DISTINCT id) FROM sales.transactions")
        print(f"\nrecovery with {consumers} consumer(s): acknowledged {len(first_versions)} transactions "
              f"({len(tills.accepted)} posted, {len(loaded)} from a CSV after the backup), "
              f"{len(tills.rejected) + len(bad_csv)} rejects, {len(tills.conflicting)} conflicts; stored {total}, "
              f"lost {len(set(first_versions) - set(rows))}, duplicates {total - distinct}; "
              f"recovered {recovered_in:.1f}s after the loss; {restored.stdout.splitlines()[-1]}")
        assert set(rows) == set(first_versions) and total == distinct == len(first_versions)
        assert rows == first_versions, "each id holds the version acknowledged first"
        conflicts = query(db, "SELECT transaction_id::text, count(*) FROM ingest.conflicts GROUP BY 1")
        assert dict(conflicts) == {i: 1 for i in tills.conflicting}
        rejects = query(db, "SELECT transaction_id, count(*) FROM ingest.rejects GROUP BY 1")
        assert dict(rejects) == {i: 1 for i in tills.rejected | bad_csv}
        assert_rollups_match(db)
        checked = tillflow({**env, "DATABASE_URL": db.url("backup")}, "reconcile", check=False)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    finally:
        for pg in (server, replacement):
            if pg is not None:
                pg.destroy()
        shutil.rmtree(root, ignore_errors=True)


def test_a_restore_refuses_when_kafka_deleted_records_the_backup_lacks(env, migrated_db, running_kafka, topics,
                                                                      tmp_path):
    """Retention passed: the restore names each partition and offset range, changes nothing,
    and exits non-zero; with --accept-loss it restores and the replay starts at what Kafka has."""
    first = list(sample.rows(300, seed=41, start=DAY, days=1))
    tillflow(env, "load", str(sample.write_csv(tmp_path / sample.csv_name(DAY), first)))
    consume_until_idle(env)
    backups = tmp_path / "backups"
    as_backup = {**env, "DATABASE_URL": migrated_db.url("backup"), "BACKUP_DIR": str(backups)}
    name = tillflow(as_backup, "backup", "run").stdout.split()[1].rstrip(":")
    next_day = DAY + datetime.timedelta(days=1)
    later = list(sample.rows(300, seed=42, start=next_day, days=1))
    tillflow(env, "load", str(sample.write_csv(tmp_path / sample.csv_name(next_day), later)))
    consume_until_idle(env)
    positions = {(t, p): o for t, p, o in query(
        migrated_db, "SELECT topic, partition, next_offset FROM ingest.kafka_positions")}
    # As retention would: everything but the last 20 records of each partition is deleted.
    admin = KafkaAdminClient(bootstrap_servers=running_kafka.bootstrap_servers)
    try:
        admin.delete_records({TopicPartition(t, p): o - 20 for (t, p), o in positions.items() if t == topics.transactions})
    finally:
        admin.close()
    as_admin = {**env, "DATABASE_URL": migrated_db.url("postgres"), "BACKUP_DIR": str(backups)}
    try:
        refused = tillflow(as_admin, "backup", "restore", name, "--replace", "--yes", check=False)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        message = refused.stderr.strip()
        assert len(message.splitlines()) == 1 and "Nothing was changed" in message and "--accept-loss" in message
        assert stored_ids(migrated_db) == {r.id for r in first + later}, "the live database was left alone"
        manifest = json.loads((backups / f"{name}.manifest.json").read_text())
        at_backup = {(t, p): o for t, p, o in manifest["kafka_positions"]}
        deleted = {key: o - 20 for key, o in positions.items() if key[0] == topics.transactions}
        for (topic, partition), low in deleted.items():
            assert f"{topic}[{partition}] offsets {at_backup[topic, partition]}-{low - 1} " in message, message

        accepted = tillflow(as_admin, "backup", "restore", name, "--replace", "--yes", "--accept-loss")
        assert "LOST" in accepted.stdout, accepted.stdout
        consume_until_idle(env)
        got = stored_ids(migrated_db)
        assert {r.id for r in first} <= got, "what the backup held"
        # Of the later rows exactly those Kafka still had, the last 20 of each partition, came back.
        assert len(got - {r.id for r in first}) == 20 * len(deleted)
        assert got <= {r.id for r in first + later}
        assert query(migrated_db, "SELECT count(*) = count(DISTINCT id) FROM sales.transactions") == [(True,)]
    finally:
        conn = psycopg2.connect(migrated_db.server.url())
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (f"{migrated_db.name}_pre_restore%",))
            for (previous,) in cur.fetchall():
                cur.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(previous)))
        conn.close()


def test_the_backup_service_warns_of_short_retention_and_exports_what_kafka_lost_after_the_backup(
        env, migrated_db, running_kafka, topics, tmp_path):
    """A monthly BACKUP_SCHEDULE against the topics' 14-day retention: a warning at start-up and
    from `backup verify`. Records Kafka deleted before anything stored them are
    counted in tillflow_backup_replay_missing_records against the newest backup's positions."""
    import os
    import subprocess
    import urllib.request

    from devstack.proc import free_port
    from support.pipeline import TILLFLOW

    first = list(sample.rows(300, seed=51, start=DAY, days=1))
    tillflow(env, "load", str(sample.write_csv(tmp_path / sample.csv_name(DAY), first)))
    consume_until_idle(env)
    next_day = DAY + datetime.timedelta(days=1)
    unread = list(sample.rows(200, seed=52, start=next_day, days=1))
    tillflow(env, "load", str(sample.write_csv(tmp_path / sample.csv_name(next_day), unread)))
    ends = {(t, p): o for (t, p), o in kafka_ends(running_kafka.bootstrap_servers, topics.transactions).items()}
    # Retention passes over records no consumer stored yet: all of the topic is deleted.
    admin = KafkaAdminClient(bootstrap_servers=running_kafka.bootstrap_servers)
    try:
        admin.delete_records({TopicPartition(t, p): o for (t, p), o in ends.items()})
    finally:
        admin.close()
    port = free_port()
    service = {**env, "DATABASE_URL": migrated_db.url("backup"), "BACKUP_DIR": str(tmp_path / "backups"),
               "METRICS_PORT": str(port), "BACKUP_SCHEDULE": "0 1 1 * *"}
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "BACKUP_", "PG", "METRICS_"))}
    proc = subprocess.Popen([TILLFLOW, "backup", "schedule"], env={**base, **service},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def missing(kind: str) -> float | None:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        prefix = f'tillflow_backup_replay_missing_records{{topic_kind="{kind}"}} '
        return next((float(line[len(prefix):]) for line in text.splitlines() if line.startswith(prefix)), None)

    try:
        wait_for(lambda: _quietly(missing, "transactions") == len(unread), 90, "the replay gap exported")
        assert missing("rejects") == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert f"topic {topics.transactions} keeps records for 14 days, less than twice the longest gap between two " \
           "backups (31 days, BACKUP_SCHEDULE='0 1 1 * *')" in err, err
    assert f"Kafka no longer holds {len(unread)} records written after the newest backup's positions" in err, err

    verified = tillflow({**service, "METRICS_PORT": "0"}, "backup", "verify")
    assert f"warning: topic {topics.rejects} keeps records for 14 days" in verified.stderr, verified.stderr


def _quietly(read, *args):
    try:
        return read(*args)
    except OSError:
        return None


def kafka_ends(bootstrap: str, topic: str) -> dict[tuple[str, int], int]:
    """End offset of each partition, asked with kafka-python (not the client under test)."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        return {(tp.topic, tp.partition): o for tp, o in consumer.end_offsets(partitions).items()}
    finally:
        consumer.close()
