"""Fixtures shared by every test, defined once.

Session-scoped: one real PostgreSQL server and one real three-broker Kafka
cluster per run (native processes, or containers where Docker answers; see
``support.services``). They are stopped at the end of the session, even when
tests fail; native servers also die with this process if it is killed.

Function-scoped: a fresh migrated database and fresh topics per test, so tests
are independent and clean up after themselves.
"""
from __future__ import annotations

import contextlib
import secrets
import shutil
import uuid
from dataclasses import dataclass

import psycopg2
import pytest
from psycopg2 import sql

from support import services
from support.services import create_topic

ROLES = ("owner", "writer", "reader", "backup", "monitor")


@pytest.fixture(scope="session", autouse=True)
def watchdog_dir():
    """The state directory of this session's watchdog (support.watchdog): should pytest be
    killed, it removes the session's containers and runs the undo commands registered there.
    Stopped at the end of a session that tears itself down."""
    from support import watchdog

    state_dir = services.make_root() / "watchdog"
    dog = watchdog.start(state_dir)
    yield state_dir
    # A session that gets here tore its own things down.
    dog.terminate()
    dog.wait(timeout=30)
    shutil.rmtree(state_dir.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def services_root():
    root = services.make_root()
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres(services_root):
    server = services.start_postgres(services_root)
    yield server
    server.destroy()


@pytest.fixture(scope="session")
def kafka(services_root):
    cluster = services.start_kafka(services_root)
    yield cluster
    cluster.stop()


@pytest.fixture
def running_kafka(kafka):
    """The cluster with all three brokers up, whatever an earlier fault test did."""
    for node in kafka.nodes:
        if not node.running():
            node.start()
            node.wait_listening()
    kafka.wait_ready()
    return kafka


@pytest.fixture
def running_postgres(postgres):
    """The server up, whatever an earlier fault test did."""
    if not postgres.running():
        postgres.start()
    return postgres


@pytest.fixture(scope="session")
def role_passwords() -> dict[str, str]:
    return {role: secrets.token_hex(12) for role in ROLES}


@dataclass
class MigratedDatabase:
    name: str
    server: object
    passwords: dict[str, str]

    def url(self, role: str = "writer") -> str:
        if role == "postgres":
            return self.server.url(dbname=self.name)
        return self.server.url(f"tillflow_{role}", self.passwords[role], self.name)

    def connect(self, role: str = "postgres"):
        conn = psycopg2.connect(self.url(role))
        conn.autocommit = True
        return conn


@contextlib.contextmanager
def _admin(server):
    conn = psycopg2.connect(server.url())
    conn.autocommit = True
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture(scope="session")
def migrated_template(postgres, role_passwords):
    """A database with every migration applied, once per session, that ``migrated_db`` copies:
    a copy costs a fraction of running the migrations again. Returns its name and its
    database-level properties (owner, privileges, settings), which a copy does not inherit."""
    from backup.database import properties
    from tillflow.migrate import apply_migrations

    name = f"template_{uuid.uuid4().hex[:12]}"
    with _admin(postgres) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    apply_migrations(postgres.url(dbname=name), role_passwords=role_passwords)
    with contextlib.closing(psycopg2.connect(postgres.url(dbname=name))) as conn, conn.cursor() as cur:
        props = properties(cur)
    yield name, props
    if postgres.running():
        with _admin(postgres) as conn, conn.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def copy_database(server, template: tuple, name: str) -> None:
    """``CREATE DATABASE name TEMPLATE ...``, then the template's owner, privileges and settings,
    as a restore applies them (``backup.restore``)."""
    from backup.restore import apply_properties

    template_name, props = template
    with _admin(server) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name),
                                                                     sql.Identifier(template_name)))
        apply_properties(cur, name, props)


@pytest.fixture
def migrated_db(running_postgres, role_passwords, migrated_template):
    """A fresh database with every migration applied (a copy of ``migrated_template``); dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    copy_database(running_postgres, migrated_template, name)
    db = MigratedDatabase(name, running_postgres, role_passwords)
    yield db
    if not running_postgres.running():
        running_postgres.start()
    with _admin(running_postgres) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def empty_db(running_postgres):
    """A fresh database with nothing applied: its superuser URL."""
    name = f"e_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(running_postgres.url())
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        yield running_postgres.url(dbname=name)
        with admin.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    finally:
        admin.close()


@dataclass
class Topics:
    transactions: str
    rejects: str
    group: str


@pytest.fixture
def topics(running_kafka) -> Topics:
    """Fresh transactions and rejects topics (RF 3, min ISR 2) and consumer group name."""
    suffix = uuid.uuid4().hex[:10]
    found = Topics(f"tx-{suffix}", f"rej-{suffix}", f"writer-{suffix}")
    create_topic(running_kafka.bootstrap_servers, found.transactions)
    create_topic(running_kafka.bootstrap_servers, found.rejects)
    return found


@pytest.fixture
def env(migrated_db, running_kafka, topics, tmp_path) -> dict[str, str]:
    """Environment variables for Tillflow processes wired to this test's database and topics."""
    return {
        "DATABASE_URL": migrated_db.url("writer"),
        "KAFKA_BOOTSTRAP_SERVERS": running_kafka.bootstrap_servers,
        "KAFKA_TOPIC_TRANSACTIONS": topics.transactions,
        "KAFKA_TOPIC_REJECTS": topics.rejects,
        "KAFKA_CONSUMER_GROUP": topics.group,
        "INBOX_DIR": str(tmp_path / "inbox"),
        "TILLFLOW_ENV": "test",
        "LOG_LEVEL": "INFO",
    }

