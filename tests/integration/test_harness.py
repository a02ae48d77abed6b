"""The harness is real: replicated topics, acknowledged writes survive a broker
crash, and PostgreSQL enforces constraints and keeps data across a restart."""
from __future__ import annotations

import signal
import threading
import time
import uuid

import psycopg2
import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient
from kafka.errors import KafkaError

from support.services import create_topic


def _producer(bootstrap: str, **extra) -> KafkaProducer:
    settings = dict(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, retries=2**31 - 1,
        linger_ms=5, max_in_flight_requests_per_connection=5,
    )
    settings.update(extra)
    return KafkaProducer(**settings)


def _consume_keys(bootstrap: str, topic: str, expected: int, timeout: float = 120) -> list[bytes]:
    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=f"check-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest", enable_auto_commit=False, isolation_level="read_committed",
    )
    keys: list[bytes] = []
    deadline = time.monotonic() + timeout
    idle_since = time.monotonic()
    try:
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=1000)
            for records in batch.values():
                keys.extend(r.key for r in records)
            if batch:
                idle_since = time.monotonic()
            elif len(keys) >= expected and time.monotonic() - idle_since > 3:
                break
    finally:
        consumer.close()
    return keys


def test_create_topics_makes_them_replicated_three_times_with_min_isr_two(running_kafka):
    """`tillflow create-topics`, checked with kafka-python (the independent client): idempotent,
    3 partitions replicated on all three brokers, min ISR 2, no unclean election, 14 days."""
    import os
    import subprocess

    from support.pipeline import TILLFLOW

    name = f"replicated-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": running_kafka.bootstrap_servers, "TILLFLOW_ENV": "test",
           "KAFKA_TOPIC_TRANSACTIONS": name, "KAFKA_TOPIC_REJECTS": f"{name}-rejects"}
    for outcome in ("created", "exists"):
        done = subprocess.run([TILLFLOW, "create-topics"], env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == [f"{name}: {outcome}", f"{name}-rejects: {outcome}"]
    admin = KafkaAdminClient(bootstrap_servers=running_kafka.bootstrap_servers)
    try:
        # A new topic's metadata reaches every broker shortly after the create returns.
        deadline = time.monotonic() + 30
        while True:
            (described,) = admin.describe_topics([name])
            settled = len(described["partitions"]) == 3 and all(
                len(p["isr_nodes"]) == 3 for p in described["partitions"])
            if settled or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert len(described["partitions"]) == 3
        for partition in described["partitions"]:
            assert sorted(partition["replica_nodes"]) == [1, 2, 3]
            assert sorted(partition["isr_nodes"]) == [1, 2, 3]
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
        values = {key: entry["value"] for key, entry in configs["topic"][name].items()}
        assert values["min.insync.replicas"] == "2"
        assert values["unclean.leader.election.enable"] == "false"
        assert values["retention.ms"] == str(14 * 24 * 3600 * 1000)
    finally:
        admin.close()


@pytest.mark.slow
def test_acknowledged_messages_survive_a_broker_killed_mid_stream(running_kafka):
    """Invariant: every key Kafka acknowledged is consumed exactly once."""
    topic = f"crash-{uuid.uuid4().hex[:8]}"
    create_topic(running_kafka.bootstrap_servers, topic, partitions=6)
    producer = _producer(running_kafka.bootstrap_servers, request_timeout_ms=10000, delivery_timeout_ms=120000)
    victim = running_kafka.nodes[1]
    acked: set[bytes] = set()
    failed: set[bytes] = set()
    lock = threading.Lock()

    def on_ok(key):
        def callback(_metadata):
            with lock:
                acked.add(key)
        return callback

    def on_error(key):
        def callback(_exc):
            with lock:
                failed.add(key)
        return callback

    total = 10_000
    for i in range(total):
        key = f"key-{i:05d}".encode()
        producer.send(topic, key=key, value=b"v%d" % i).add_callback(on_ok(key)).add_errback(on_error(key))
        if i == total // 2:
            producer.flush()
            victim.stop(signal.SIGKILL)
        if i == total * 3 // 4:
            victim.start()
    producer.flush(timeout=180)
    producer.close()
    victim.wait_listening()
    running_kafka.wait_ready()

    assert len(acked) + len(failed) == total
    assert len(acked) > total // 2, "with one broker down and min ISR 2, sends must still be acknowledged"
    keys = _consume_keys(running_kafka.bootstrap_servers, topic, expected=len(acked))
    assert acked <= set(keys), f"lost {len(acked - set(keys))} acknowledged messages"
    assert len(keys) == len(set(keys)), "a message was stored twice"


@pytest.mark.slow
def test_send_is_not_acknowledged_with_two_brokers_down(running_kafka):
    topic = f"quorum-{uuid.uuid4().hex[:8]}"
    create_topic(running_kafka.bootstrap_servers, topic, partitions=1)
    admin = KafkaAdminClient(bootstrap_servers=running_kafka.bootstrap_servers)
    try:
        leader = admin.describe_topics([topic])[0]["partitions"][0]["leader_id"]
    finally:
        admin.close()
    producer = _producer(running_kafka.bootstrap_servers, request_timeout_ms=3000, delivery_timeout_ms=8000)
    producer.send(topic, key=b"warm", value=b"up").get(timeout=30)
    # Keep the partition leader up so the request reaches a broker and is refused
    # for want of in-sync replicas, rather than failing to find a leader at all.
    stopped = [n for n in running_kafka.nodes if n.node_id != leader]
    for node in stopped:
        node.stop(signal.SIGKILL)
    try:
        future = producer.send(topic, key=b"k", value=b"must not be acknowledged")
        with pytest.raises(KafkaError):
            future.get(timeout=30)
        assert future.failed() and not future.succeeded()
    finally:
        producer.close(timeout=5)
        for node in stopped:
            node.start()
        for node in stopped:
            node.wait_listening()
        running_kafka.wait_ready()
    # The leader may still hold the record and replicate it once the followers are
    # back: Kafka is at-least-once for a sender that gave up. What matters is that
    # nothing was *acknowledged* while the in-sync quorum was missing.


def _new_database(server) -> str:
    name = f"h_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(server.url())
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name}")
    finally:
        admin.close()
    return name


def test_postgres_enforces_checks_and_keeps_data_across_a_restart(running_postgres):
    dbname = _new_database(running_postgres)
    conn = psycopg2.connect(running_postgres.url(dbname=dbname))
    with conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE t (id int PRIMARY KEY, quantity int NOT NULL CHECK (quantity >= 1))")
        cur.execute("INSERT INTO t VALUES (1, 5)")
    with pytest.raises(psycopg2.errors.CheckViolation), conn, conn.cursor() as cur:
        cur.execute("INSERT INTO t VALUES (2, 0)")
    conn.close()

    running_postgres.stop("fast")
    running_postgres.start()

    conn = psycopg2.connect(running_postgres.url(dbname=dbname))
    with conn, conn.cursor() as cur:
        cur.execute("SELECT id, quantity FROM t ORDER BY id")
        assert cur.fetchall() == [(1, 5)]
    conn.close()


def test_postgres_survives_a_crash(running_postgres):
    """SIGKILL of the postmaster: committed rows are there after recovery."""
    dbname = _new_database(running_postgres)
    conn = psycopg2.connect(running_postgres.url(dbname=dbname))
    with conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE t (id int PRIMARY KEY)")
        cur.execute("INSERT INTO t SELECT generate_series(1, 1000)")
    conn.close()
    running_postgres.kill()
    running_postgres.start()
    conn = psycopg2.connect(running_postgres.url(dbname=dbname))
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM t")
        assert cur.fetchone() == (1000,)
    conn.close()


def test_a_killed_session_leaves_nothing_behind(tmp_path):
    """support.watchdog: the moment the session's process dies (SIGKILL, no teardown ran), its
    registered undo commands run and its labelled containers go."""
    import subprocess
    import sys
    from pathlib import Path

    from support import services, watchdog

    session = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    survivor = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    state = tmp_path / "watchdog"
    state.mkdir()
    watchdog.register(state, "survivor", ["kill", "-TERM", str(survivor.pid)], cwd=tmp_path)
    container = None
    if services.docker_available():
        container = subprocess.run(
            ["docker", "create", "--label", f"{watchdog.RUN_LABEL}={session.pid}",
             services.compose_image("POSTGRES_IMAGE")], capture_output=True, text=True, check=True).stdout.strip()
    dog = subprocess.Popen([sys.executable, "-m", "support.watchdog", str(session.pid), str(state)],
                           cwd=Path(watchdog.__file__).parents[1], start_new_session=True)
    try:
        time.sleep(1.5)
        assert survivor.poll() is None and dog.poll() is None, "nothing is undone while the session lives"
        session.kill()
        session.wait()
        assert dog.wait(timeout=60) == 0
        assert survivor.wait(timeout=10) == -signal.SIGTERM
        assert not state.exists()
        if container:
            listed = subprocess.run(["docker", "ps", "-aq", "--filter", f"id={container}"], capture_output=True,
                                    text=True, check=True).stdout
            assert listed.strip() == "", "the session's container is removed"
    finally:
        for proc in (session, survivor, dog):
            if proc.poll() is None:
                proc.kill()
        if container:
            subprocess.run(["docker", "rm", "-f", container], capture_output=True)
