"""``tillflow smoke`` against a real running stack: PostgreSQL, three Kafka
brokers, ``tillflow serve``, a ``tillflow consume`` with its metrics endpoint,
a backup taken by ``tillflow backup run``, and Debian's Alertmanager.

The invariants: a whole stack passes and its canary is in sales.transactions,
exactly once, in the smoke store, with the run's token revoked afterwards; a
broken part fails the run with that part's check named on stderr.
"""
from __future__ import annotations

import os
import signal
import subprocess
import uuid

import pytest
from support.alerts import Alertmanager
from support.api import TILLFLOW, ApiServer, query, tillflow

from devstack.proc import free_port


@pytest.fixture
def stack(env, migrated_db, tmp_path):
    """The API, a consumer with metrics, one backup, and Alertmanager with the configuration
    `tillflow alertmanager-config` renders without a receiver; yields the smoke check's environment."""
    config = tmp_path / "alertmanager.yml"
    tillflow({}, "alertmanager-config", "--output", str(config))
    alertmanager = Alertmanager(config, tmp_path / "alertmanager").start()
    api = ApiServer(env, tmp_path / "api.log").start()
    metrics_port = free_port()
    with open(tmp_path / "consumer.log", "ab") as log:
        consumer = subprocess.Popen([TILLFLOW, "consume"], env={**os.environ, **env, "METRICS_PORT": str(metrics_port)},
                                    stdout=log, stderr=log)
    backups = tmp_path / "backups"
    tillflow({"DATABASE_URL": migrated_db.url("backup"), "BACKUP_DIR": str(backups)}, "backup", "run")
    try:
        api.wait_ready()
        yield {
            **env,
            "DATABASE_URL": migrated_db.url("owner"),
            "TILLFLOW_API_URL": api.url,
            "SMOKE_METRICS_URLS": f"consumer=http://localhost:{metrics_port}/metrics",
            "BACKUP_DIR": str(backups),
            "SMOKE_TIMEOUT_SECONDS": "90",
            "ALERTMANAGER_URL": alertmanager.url,
        }
    finally:
        consumer.send_signal(signal.SIGTERM)
        consumer.wait(timeout=60)
        api.stop()
        alertmanager.stop()


def canaries(db) -> list[tuple]:
    return query(db, "SELECT id::text, store_id, category, name FROM sales.transactions WHERE name = %s",
                 ("tillflow smoke canary",))


def test_a_whole_stack_passes_and_its_canary_reaches_postgresql(stack, migrated_db):
    done = tillflow(stack, "smoke", check=False)

    assert done.returncode == 0, done.stdout + done.stderr
    for check in ("postgres", "kafka", "api", "alertmanager", "consumer", "backup", "canary"):
        assert any(line.startswith("ok") and f" {check} " in f"{line} " for line in done.stdout.splitlines()), (
            f"{check} did not pass:\n{done.stdout}")
    [alerts] = [line for line in done.stdout.splitlines() if " alertmanager " in line]
    assert "no receiver configured: alerts reach nobody" in alerts, "the admin is told that alerts go nowhere"
    [(canary_id, store, category, _)] = canaries(migrated_db)
    assert (store, category) == ("smoke", "BUY")
    assert canary_id in done.stdout
    tokens = query(migrated_db, "SELECT store_id, revoked_at IS NOT NULL FROM api.tokens")
    assert tokens == [("smoke", True)], "the run's token was revoked after it"


def test_a_broken_part_fails_the_run_and_is_named(stack, migrated_db, tmp_path):
    stack = {**stack,
             "SMOKE_METRICS_URLS": stack["SMOKE_METRICS_URLS"] + f",watcher=http://127.0.0.1:{free_port()}/metrics",
             "BACKUP_DIR": str(tmp_path / "no-backups"), "SMOKE_TIMEOUT_SECONDS": "3",
             "ALERTMANAGER_URL": f"http://127.0.0.1:{free_port()}"}

    done = tillflow(stack, "smoke", check=False)

    assert done.returncode == 1
    [summary] = done.stderr.strip().splitlines()[-1:]
    assert summary.startswith("tillflow smoke: failed: watcher: ")
    assert "backup: no backup in BACKUP_DIR" in summary
    assert "alertmanager: http://127.0.0.1:" in summary and "/-/ready does not answer" in summary
    assert "consumer" not in summary and "canary" not in summary, "the parts that work still pass"
    assert len(canaries(migrated_db)) == 1


def test_a_token_that_the_api_refuses_fails_the_canary(stack):
    stack = {**stack, "SMOKE_TOKEN": f"tillflow_{uuid.uuid4().hex[:12]}_{'x' * 43}", "SMOKE_TIMEOUT_SECONDS": "3"}

    done = tillflow(stack, "smoke", check=False)

    assert done.returncode == 1
    assert "canary: POST /v1/transactions answered 401" in done.stderr
