"""The rollups count every stored row exactly once, whatever the consumer goes through.

Hypothesis writes sequences of batches through the consumer's real sink into a
real PostgreSQL: new rows, duplicates (within a batch and of stored rows),
conflicts, rejects, replays of a batch already committed (a crash between the
database commit and the offset commit), and two sinks racing on the same ids
and keys. After every step the rollup tables must equal the aggregates of the
raw table, computed independently in Python, and the raw table must hold the
first version of each id.
"""
from __future__ import annotations

import dataclasses
import datetime
import threading
import uuid
from decimal import Decimal

import psycopg2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.rows import row_of
from consumer.sink import Batch, IsolatingSink, PostgresSink, Position
from support.pipeline import assert_rollups_match, query, rollups
from support.strategies import transactions
from tillflow.messages import RejectMessage, TransactionMessage
from tillflow.record import Origin, Reason, Transaction

TOPIC = "tillflow.transactions"
# Few keys, so that batches keep landing on the same rollup rows; 'smoke' is a
# synthetic store (migration 0008): in the store rollup, not the product one.
DATES = [datetime.date(2024, 1, 1), datetime.date(2024, 1, 2), datetime.date(2025, 12, 31)]
NAMES = ["Apple", "Baker's loaf", "Crème fraîche"]
STORES = ["main", "north", "smoke"]
POOL = 12
FILE = "retail_01_01_2024.csv"


@st.composite
def pooled(draw):
    tx = draw(transactions())
    return dataclasses.replace(
        tx, transaction_date=draw(st.sampled_from(DATES)), name=draw(st.sampled_from(NAMES)),
        store_id=draw(st.sampled_from(STORES)), quantity=draw(st.integers(1, 1000)),
    )


def altered(tx):
    """Another version of the same id: a conflict."""
    return dataclasses.replace(tx, quantity=tx.quantity + 1)


# A step: ("batch", [(pool index, altered?)], rejects) or ("replay", which committed batch).
batch_step = st.tuples(
    st.just("batch"),
    st.lists(st.tuples(st.integers(0, POOL - 1), st.booleans()), min_size=0, max_size=10),
    st.integers(0, 2),
)
replay_step = st.tuples(st.just("replay"), st.integers(0, 20))
steps = st.lists(st.one_of(batch_step, batch_step, replay_step), min_size=1, max_size=8)


class Writer:
    """Turns steps into batches at fresh Kafka positions, writes them, and models the expected rows."""

    def __init__(self, sink: PostgresSink, pool: list) -> None:
        self.sink = sink
        self.pool = pool
        self.offset = 0
        self.committed: list[Batch] = []
        self.first: dict[str, tuple] = {}  # id -> content stored (the first version written)

    def position(self) -> Position:
        self.offset += 1
        return Position(TOPIC, 0, self.offset)

    def batch(self, picks, rejects: int) -> Batch:
        batch = Batch()
        for index, change in picks:
            tx = altered(self.pool[index]) if change else self.pool[index]
            pos = self.position()
            message = TransactionMessage(tx, Origin("csv", FILE, pos.offset))
            batch.transactions.append((row_of(message), pos))
        for _ in range(rejects):
            pos = self.position()
            reject = RejectMessage(id="not-a-uuid", raw={"id": "not-a-uuid"},
                                   reasons=(Reason("id", "invalid_uuid", "id is not a UUID"),),
                                   origin=Origin("csv", FILE, pos.offset))
            batch.rejects.append((reject, pos))
        if len(batch):
            batch.positions[TOPIC, 0] = self.offset + 1
        return batch

    def write(self, batch: Batch) -> None:
        self.sink.write(batch)
        self.committed.append(batch)
        for row, _ in batch.transactions:
            self.first.setdefault(row.id.decode(), row.content())


def stored_contents(db) -> dict[str, tuple]:
    rows = query(db, "SELECT id::text, to_char(transaction_date, 'YYYY-MM-DD'), category, name, quantity::text,"
                     " amount_excl_tax::text, amount_inc_tax::text, store_id FROM sales.transactions")
    return {r[0]: tuple(v.encode() for v in r[1:]) for r in rows}


def reset(db) -> None:
    conn = psycopg2.connect(db.url("postgres"))
    try:
        with conn, conn.cursor() as cur:
            cur.execute("TRUNCATE sales.transactions, sales.daily_store_totals, sales.daily_product_totals, sales.products,"
                        " ingest.rejects, ingest.conflicts, ingest.duplicates, ingest.kafka_positions")
    finally:
        conn.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pool=st.lists(pooled(), min_size=POOL, max_size=POOL, unique_by=lambda tx: tx.id), plan=steps)
def test_after_every_batch_the_rollups_equal_the_raw_aggregates(migrated_db, pool, plan):
    reset(migrated_db)
    sink = IsolatingSink(migrated_db.url("writer"), Decimal("0.20"))
    writer = Writer(sink, pool)
    try:
        for step in plan:
            if step[0] == "batch":
                writer.write(writer.batch(step[1], step[2]))
            elif writer.committed:
                # The consumer died after the database commit, before the offset
                # commit: the same records, at the same positions, come again.
                writer.write(writer.committed[step[1] % len(writer.committed)])
            assert_rollups_match(migrated_db)
            assert stored_contents(migrated_db) == writer.first
            # The position stored is the furthest any batch reached: a replay never moves it back.
            reached = [p for b in writer.committed for p in b.positions.values()]
            assert query(migrated_db, "SELECT topic, partition, next_offset FROM ingest.kafka_positions") == (
                [(TOPIC, 0, max(reached))] if reached else [])
    finally:
        sink.close()
    duplicates = query(migrated_db, "SELECT count(*), count(DISTINCT (kafka_partition, kafka_offset))"
                                    " FROM ingest.duplicates")[0]
    assert duplicates[0] == duplicates[1], "a duplicate is noted once, however often its batch is replayed"


def test_a_replayed_batch_changes_nothing(migrated_db):
    """The crash between the database commit and the offset commit, exactly."""
    pool = [Transaction(id=uuid.uuid4(), transaction_date=DATES[0], category=("SELL", "BUY")[i % 2],
                        name=NAMES[i % 2], quantity=i + 1, amount_excl_tax=Decimal("10.00") * (i + 1),
                        amount_inc_tax=Decimal("12.00") * (i + 1), store_id="main") for i in range(6)]
    sink = PostgresSink(migrated_db.url("writer"), Decimal("0.20"))
    writer = Writer(sink, pool)
    try:
        batch = writer.batch([(i, False) for i in range(6)] + [(0, False), (1, True)], rejects=1)
        writer.write(batch)
        before = rollups(migrated_db)
        counts = query(migrated_db, "SELECT (SELECT count(*) FROM ingest.duplicates),"
                                    " (SELECT count(*) FROM ingest.conflicts), (SELECT count(*) FROM ingest.rejects)")
        for _ in range(3):
            writer.write(batch)
        assert rollups(migrated_db) == before
        assert query(migrated_db, "SELECT (SELECT count(*) FROM ingest.duplicates),"
                                  " (SELECT count(*) FROM ingest.conflicts),"
                                  " (SELECT count(*) FROM ingest.rejects)") == counts == [(1, 1, 1)]
        (day,) = [v for k, v in before["daily_store_totals"].items() if k == (DATES[0], "main")]
        assert day[0] + day[4] == 6, "six ids stored, the in-batch duplicate and the conflict not counted"
    finally:
        sink.close()
    assert_rollups_match(migrated_db)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pool=st.lists(pooled(), min_size=POOL, max_size=POOL, unique_by=lambda tx: tx.id),
       orders=st.lists(st.permutations(range(POOL)), min_size=2, max_size=2),
       same_positions=st.booleans())
def test_two_consumers_racing_on_the_same_ids_and_keys(migrated_db, pool, orders, same_positions):
    """Two sinks (replicas during a rebalance) write overlapping batches at the same moment.

    The ids come in different orders, so their COPYs wait on each other's rows
    (PostgreSQL may pick one as a deadlock victim: the sink retries it whole),
    and every batch adds to the same rollup rows. Afterwards each id is stored
    once and the rollups equal the raw aggregates: no lost update, no double count.
    """
    reset(migrated_db)
    sinks = [PostgresSink(migrated_db.url("writer"), Decimal("0.20")) for _ in range(2)]
    batches = []
    for n, order in enumerate(orders):
        writer = Writer(sinks[n], pool)
        writer.offset = 0 if same_positions else 1000 * (n + 1)
        batches.append(writer.batch([(i, False) for i in order], rejects=1))
    start = threading.Barrier(2)
    failures: list[BaseException] = []

    def run(n: int) -> None:
        start.wait()
        try:
            for _ in range(3):
                sinks[n].write(batches[n])
        except BaseException as exc:  # reported below, with the thread's own error
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for sink in sinks:
        sink.close()
    assert not failures, failures
    assert set(stored_contents(migrated_db)) == {str(tx.id) for tx in pool}
    assert_rollups_match(migrated_db)


def test_the_writer_cannot_write_the_rollups_itself(migrated_db):
    conn = migrated_db.connect("writer")
    try:
        with conn.cursor() as cur:
            for table in ("daily_store_totals", "daily_product_totals"):
                with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                    cur.execute(f"UPDATE sales.{table} SET sell_transactions = 0")
    finally:
        conn.close()


def test_the_migration_builds_the_rollups_from_rows_stored_before_it(empty_db, role_passwords):
    """An installation that upgrades in place: rows stored under 0008, then 0009 applied."""
    from tillflow import migrate

    migrate.apply_migrations(empty_db, role_passwords=role_passwords, up_to=8)
    conn = psycopg2.connect(empty_db)
    with conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO sales.transactions (id, transaction_date, category, name, quantity, amount_excl_tax,"
            " amount_inc_tax, store_id) SELECT gen_random_uuid(), date '2024-01-01' + (i % 40),"
            " CASE WHEN i % 3 = 0 THEN 'BUY' ELSE 'SELL' END, 'product ' || (i % 17), 1 + i % 9,"
            " (i % 1000 + 1) * 0.01, round((i % 1000 + 1) * 0.012, 2),"
            " (ARRAY['main', 'north', 'smoke'])[1 + i % 3] FROM generate_series(1, 5000) AS i")
    conn.close()
    assert migrate.apply_migrations(empty_db, role_passwords=role_passwords, up_to=9) == ["0009_rollups.sql"]

    class Db:
        def url(self, role):
            return empty_db

    assert_rollups_match(Db())
    assert query(Db(), "SELECT sum(sell_transactions + buy_transactions) FROM sales.daily_store_totals") == [(5000,)]
