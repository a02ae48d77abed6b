"""docker-compose.yml end to end, as the README tells an admin to run it.

One stack for the module (tests/stack/conftest.py): `docker compose up -d
--build` from a copy of the checkout with its own secrets and inbox. Then what
an admin and the tills do (a CSV in the inbox, a token, a POST, a WebSocket
transaction, make smoke, make backup and make restore), what Prometheus sees,
and the faults: kill -9 of each broker, PostgreSQL, the consumer and the API
while transactions are posted, and a restart of the Docker daemon. Every fault
is judged on sets of ids: each acknowledged transaction stored, none twice.

The tests run in file order and share the stack: each leaves it healthy.
"""
from __future__ import annotations

import asyncio
import datetime
import json
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from tillflow import sample
from support.api import transaction as api_transaction
from support.compose import ROOT, ComposeStack
from support.pipeline import wait_for

LONG_RUNNING = ("kafka-1", "kafka-2", "kafka-3", "postgres", "consumer", "watcher", "api", "prometheus",
                "postgres-exporter", "backup", "alertmanager")
BACK_WITHIN = 240  # seconds for a killed service to be healthy again by restart: always
DAY = datetime.date(2026, 3, 9)


def transaction() -> dict:
    return api_transaction(store_id="main", cents=100 + uuid.uuid4().int % 9000)


def stored_ids(stack: ComposeStack, ids: set[str]) -> set[str]:
    found: set[str] = set()
    chunk = sorted(ids)
    for start in range(0, len(chunk), 500):
        part = ",".join(f"'{i}'" for i in chunk[start:start + 500])
        found |= {row[0] for row in stack.psql(f"SELECT id FROM sales.transactions WHERE id IN ({part})")}
    return found


@pytest.fixture(scope="module")
def api(stack: ComposeStack) -> str:
    return f"http://127.0.0.1:{stack.settings['TILLFLOW_API_PORT']}"


@pytest.fixture(scope="module")
def token(stack: ComposeStack) -> str:
    """As the README says: docker compose run --rm smoke token create --store main."""
    done = stack.compose("run", "--rm", "-T", "smoke", "token", "create", "--store", "main", "--name", "e2e")
    made = done.stdout.strip().splitlines()[-1]
    assert made.startswith("tillflow_"), done.stdout
    return made


class Tills:
    """Posts batches of transactions through the API until stopped, retrying
    failures with new ids; records what was sent and what was acknowledged (200)."""

    def __init__(self, api: str, token: str, batch: int = 5, every: float = 0.05) -> None:
        self.api, self.token, self.batch, self.every = api, token, batch, every
        self.sent: set[str] = set()
        self.acknowledged: set[str] = set()
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Tills:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=120)

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(base_url=self.api, headers=headers, timeout=15) as client:
            while not self._stop.is_set():
                items = [transaction() for _ in range(self.batch)]
                self.sent |= {i["id"] for i in items}
                try:
                    answer = client.post("/v1/transactions", json=items)
                    if answer.status_code == 200:
                        self.acknowledged |= {i["id"] for i in items}
                    else:
                        self.failures += 1
                except httpx.HTTPError:
                    self.failures += 1
                self._stop.wait(self.every)

    def wait_acknowledged(self, more: int, timeout: float = 120) -> None:
        target = len(self.acknowledged) + more
        wait_for(lambda: len(self.acknowledged) >= target, timeout, f"{more} more acknowledged", every=0.5)


def assert_exactly_once(stack: ComposeStack, tills: Tills) -> None:
    """Every acknowledged transaction stored, nothing stored that was never sent, none twice."""
    try:
        wait_for(lambda: stored_ids(stack, tills.acknowledged) == tills.acknowledged,
                 300, "every acknowledged transaction stored", every=2.0)
    except AssertionError as exc:
        # Say what is missing and what the consumer said, for whoever reads a failed run.
        missing = sorted(tills.acknowledged - stored_ids(stack, tills.acknowledged))
        logs = stack.compose("logs", "--no-color", "--tail", "40", "consumer", check=False).stdout
        raise AssertionError(f"{exc}: {len(missing)} of {len(tills.acknowledged)} acknowledged are not stored "
                             f"(first: {missing[:3]}); the consumer's last lines:\n{logs}") from None
    stored = stored_ids(stack, tills.sent)
    assert tills.acknowledged <= stored <= tills.sent
    ids = ",".join(f"'{i}'" for i in sorted(stored))
    (total, distinct), = stack.psql(f"SELECT count(*), count(DISTINCT id) FROM sales.transactions WHERE id IN ({ids})")
    assert int(total) == int(distinct) == len(stored)


# ---------------------------------------------------------------- the first up
def test_every_service_is_healthy_and_the_one_shots_exited_0(stack: ComposeStack):
    assert not stack.unhealthy(stack.started_services)
    assert stack.first_up_seconds < 900
    for service in LONG_RUNNING:
        assert stack.inspect(stack.container(service)["ID"])["HostConfig"]["RestartPolicy"]["Name"] == "always"


def test_the_tillflow_image_was_built_once(stack: ComposeStack):
    output = stack.up_output.stdout + stack.up_output.stderr
    # One build: the classic builder says "Successfully built <id>", BuildKit "naming to <name>".
    builds = re.findall(r"Successfully built [0-9a-f]+|naming to \S*tillflow", output)
    assert len(builds) == 1, f"{len(builds)} builds:\n{output[-3000:]}"


def test_secrets_are_files_only_their_services_read(stack: ComposeStack):
    env = stack.inspect(stack.container("consumer")["ID"])["Config"]["Env"]
    assert not [e for e in env if "PASSWORD=" in e], "passwords travel as secret files, never in the environment"
    assert stack.exec("consumer", "test", "-r", "/run/secrets/tillflow_writer_password").returncode == 0
    assert stack.exec("consumer", "test", "-e", "/run/secrets/postgres_password", check=False).returncode != 0


# ---------------------------------------------------------------- what admins and tills do
def test_a_csv_in_the_inbox_is_stored_and_archived(stack: ComposeStack):
    items = list(sample.rows(300, seed=7, start=DAY, days=1))
    path = sample.write_csv(stack.dir / "inbox" / sample.csv_name(DAY), items)
    started = time.monotonic()
    ids = {str(i.id) for i in items}
    wait_for(lambda: stored_ids(stack, ids) == ids, 120, "the CSV's rows stored", every=1)
    print(f"\nCSV of {len(items)} rows stored {time.monotonic() - started:.1f} s after it was dropped")
    assert not path.exists()
    archived = stack.exec("watcher", "find", "/data/archive", "-name", path.name).stdout.split()
    assert len(archived) == 1


def test_the_readme_sample_command_feeds_the_inbox(stack: ComposeStack):
    """The Docker quick start's last command, as written in the README."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text[text.index("## Quick start with Docker"):]
    block = block[block.index("```sh\n") + 6:block.index("```", block.index("```sh\n") + 6)]
    (command,) = [line.split("  #")[0].strip() for line in block.splitlines() if "tillflow sample" in line]
    assert command.startswith("docker compose exec watcher ")
    done = stack.sh(["bash", "-c", command])
    name = Path(done.stdout.strip()).name
    assert re.fullmatch(r"retail_\d\d_\d\d_\d{4}\.csv", name), done.stdout

    def stored() -> bool:
        (count,), = stack.psql(f"SELECT count(*) FROM sales.transactions WHERE source_ref = '{name}'")
        (rejects,), = stack.psql(f"SELECT count(*) FROM ingest.rejects WHERE source_ref = '{name}'")
        return (int(count), int(rejects)) == (20, 2)

    wait_for(stored, 120, "the sample's 20 rows and 2 rejects stored", every=1)


def test_a_token_a_post_and_a_websocket_transaction_are_stored(stack: ComposeStack, api: str, token: str):
    posted = [transaction() for _ in range(3)]
    answer = httpx.post(f"{api}/v1/transactions", json=posted, headers={"Authorization": f"Bearer {token}"},
                        timeout=30)
    assert answer.status_code == 200, answer.text
    assert httpx.post(f"{api}/v1/transactions", json=posted[:1], timeout=30).status_code == 401

    streamed = transaction()

    async def till() -> dict:
        async with connect(f"ws://127.0.0.1:{stack.settings['TILLFLOW_API_PORT']}/v1/stream",
                           additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=30) as ws:
            await ws.send(json.dumps(streamed))
            return json.loads(await ws.recv())

    assert asyncio.run(till())["id"] == streamed["id"]
    ids = {i["id"] for i in posted} | {streamed["id"]}
    wait_for(lambda: stored_ids(stack, ids) == ids, 60, "the API's transactions stored", every=1)
    sources = stack.psql(f"SELECT DISTINCT source FROM sales.transactions WHERE id = '{streamed['id']}'")
    assert sources == [("ws",)]


def test_make_smoke_passes(stack: ComposeStack):
    done = stack.make("smoke", timeout=300)
    assert "ok" in done.stdout.lower() or done.returncode == 0


def test_make_backup_and_both_restores(stack: ComposeStack, api: str, token: str):
    stack.make("backup", timeout=600)
    listing = stack.exec("backup", "tillflow", "backup", "list").stdout
    newest = sorted(re.findall(r"^(\S+-\d{8}T\d{6}Z)\s", listing, re.MULTILINE))
    assert newest, listing
    (before,), = stack.psql("SELECT count(*) FROM sales.transactions")
    done = stack.make("restore", f"FILE={newest[-1]}", timeout=900)
    assert f"restored {newest[-1]}" in done.stdout + done.stderr
    # Stored after the backup: the restore over the live database replays it from Kafka.
    later = [transaction() for _ in range(3)]
    answer = httpx.post(f"{api}/v1/transactions", json=later, headers={"Authorization": f"Bearer {token}"},
                        timeout=30)
    assert answer.status_code == 200, answer.text
    ids = {t["id"] for t in later}
    wait_for(lambda: stored_ids(stack, ids) == ids, 60, "the later transactions stored", every=2.0)
    done = stack.make("restore", f"FILE={newest[-1]}", "REPLACE=1", timeout=900)
    assert f"restored {newest[-1]}" in done.stdout + done.stderr
    assert "replay: consumer group tillflow-writer reads on from the backup's positions" in done.stdout, done.stdout
    wait_for(lambda: stored_ids(stack, ids) == ids, 120, "the replay", every=2.0)
    (after,), = stack.psql("SELECT count(*) FROM sales.transactions")
    assert int(after) == int(before) + len(later)
    stack.wait_healthy(stack.started_services, BACK_WITHIN)


def prometheus_targets(stack: ComposeStack) -> list[dict]:
    done = stack.exec("prometheus", "wget", "-q", "-O", "-", "http://127.0.0.1:9090/api/v1/targets?state=active")
    return json.loads(done.stdout)["data"]["activeTargets"]


def test_every_prometheus_target_is_up(stack: ComposeStack):
    def all_up():
        targets = prometheus_targets(stack)
        jobs = {t["labels"]["job"] for t in targets}
        return targets if jobs >= {"consumer", "watcher", "api", "backup", "postgres", "prometheus",
                                   "alertmanager"} and all(
            t["health"] == "up" for t in targets) else None

    wait_for(all_up, 120, "every Prometheus target up", every=2.0)


def test_a_replaced_consumer_leaves_no_stale_target(stack: ComposeStack):
    stack.compose("up", "-d", "--no-deps", "--force-recreate", "consumer", timeout=300)
    stack.wait_healthy(["consumer"], BACK_WITHIN)

    def one_consumer():
        consumer = [t for t in prometheus_targets(stack) if t["labels"]["job"] == "consumer"]
        return len(consumer) == 1 and consumer[0]["health"] == "up"

    wait_for(one_consumer, 90, "one consumer target, up", every=2.0)
    foreign = stack.exec("prometheus", "wget", "-q", "-O", "-",
                         "http://127.0.0.1:9090/api/v1/query?query=count(%7Bjob%3D%22consumer%22%2C"
                         "__name__%3D~%22tillflow_watch_.%2A%7Ctillflow_backup_.%2A%22%7D)").stdout
    assert json.loads(foreign)["data"]["result"] == [], "the consumer job scraped another service's metrics"


# ---------------------------------------------------------------- alerts reach a person
TARGET_DOWN_FOR = 180  # prometheus/alerts.yml: TargetDown's `for`
GROUP_INTERVAL = 60  # ALERT_GROUP_INTERVAL of the test stack (tests/stack/conftest.py; production: 5m)


def alertmanager_alerts(stack: ComposeStack) -> list[dict]:
    done = stack.exec("alertmanager", "wget", "-q", "-O", "-", "http://127.0.0.1:9093/api/v2/alerts")
    return json.loads(done.stdout)


def consumer_down(notification: dict, since: str) -> list[dict]:
    """The alerts of a notification that say the consumer is down, begun at or after ``since`` (RFC 3339)."""
    return [a for a in notification["alerts"] if a["labels"].get("alertname") == "TargetDown"
            and a["labels"].get("job") == "consumer" and a["startsAt"] >= since]


@pytest.mark.timeout(TARGET_DOWN_FOR + GROUP_INTERVAL + 900)  # the two waits, and the stack's start when run alone
def test_a_stopped_consumer_reaches_the_webhook_once_firing_and_once_resolved(stack: ComposeStack):
    """The production rule and grouping (TargetDown's 3 minutes, group_wait 30 s), with
    ALERT_GROUP_INTERVAL at 1 minute (production: 5): the firing notification within `for` + 2
    minutes, the resolved one within group_interval + 2 minutes."""
    from urllib.parse import urlsplit

    from support.alerts import WebhookReceiver

    port = urlsplit(stack.settings["ALERT_WEBHOOK_URL"]).port
    wait_for(lambda: not [a for a in alertmanager_alerts(stack) if a["labels"]["alertname"] == "TargetDown"]
             or None,
             600, "no TargetDown left from earlier tests", every=5)
    with WebhookReceiver("0.0.0.0", port) as receiver:
        since = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        stopped = time.monotonic()
        stack.compose("stop", "consumer", timeout=120)
        try:
            def firing():
                return [(at, n) for at, n in receiver.notifications()
                        if n["status"] == "firing" and consumer_down(n, since)]

            [(fired_at, notification)] = wait_for(firing, TARGET_DOWN_FOR + 120,
                                                  "a firing TargetDown notification", every=2)
            print(f"\nTargetDown (consumer) reached the webhook {fired_at - stopped:.0f} s after the stop")
            (alert,) = consumer_down(notification, since)
            # "consumer is down" once no consumer target is left; while a stopped container's address
            # is still a target, with that address: "consumer (172.19.0.12:9101) is down".
            assert re.fullmatch(r"consumer( \(\S+\))? is down", alert["annotations"]["summary"]), alert
            assert "docs/runbook.md#targetdown" in alert["annotations"]["runbook"]
            assert alert["annotations"]["description"]
            assert notification["groupLabels"] == {"alertname": "TargetDown", "severity": "critical"}
        finally:
            stack.compose("start", "consumer", timeout=120)
        started = time.monotonic()
        stack.wait_healthy(["consumer"], BACK_WITHIN)

        def resolved():
            return [(at, n) for at, n in receiver.notifications()
                    if n["status"] == "resolved" and consumer_down(n, since)]

        [(resolved_at, notification)] = wait_for(resolved, GROUP_INTERVAL + 120,
                                                 "a resolved TargetDown notification", every=2)
        print(f"resolved notification {resolved_at - started:.0f} s after the consumer was started again")
        (alert,) = consumer_down(notification, since)
        assert alert["status"] == "resolved" and alert["endsAt"] > alert["startsAt"]
        assert "docs/runbook.md#targetdown" in alert["annotations"]["runbook"]
        time.sleep(10)  # nothing more arrives for this outage: exactly one of each
        assert len(firing()) == 1 and len(resolved()) == 1, receiver.notifications()


# ---------------------------------------------------------------- deploy/redeploy
def redeploy(stack: ComposeStack, *args: str, **env: str) -> subprocess.CompletedProcess:
    settings = {"DEPLOY_HEALTH_TIMEOUT": "300", "DEPLOY_POLL_INTERVAL": "2", **env}
    return stack.sh([sys.executable, "deploy/redeploy", *args], env=settings, timeout=1800, check=False)


def test_redeploy_deploys_a_good_commit_and_it_passes_smoke(stack: ComposeStack):
    good = stack.push_change("README.md", lambda text: text + "\n<!-- e2e: a harmless change -->\n",
                             "e2e: a good commit")
    done = redeploy(stack)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
    assert stack.git("rev-parse", "HEAD") == good
    stack.make("smoke", timeout=300)


def test_redeploy_rolls_back_a_commit_whose_service_fails_its_health_check(stack: ComposeStack, api: str):
    before = stack.git("rev-parse", "HEAD")
    stack.push_change("docker-compose.yml",
                      lambda text: text.replace("r.urlopen('http://127.0.0.1:8000/healthz', timeout=4)",
                                                "r.urlopen('http://127.0.0.1:8000/no-such-page', timeout=4)", 1),
                      "e2e: an API whose health check fails")
    done = redeploy(stack, DEPLOY_HEALTH_TIMEOUT="100")
    assert done.returncode == 1, done.stdout[-5000:] + done.stderr[-2000:]
    assert stack.git("rev-parse", "HEAD") == before, "the previous commit runs again"
    stack.wait_healthy(stack.started_services, BACK_WITHIN)
    assert httpx.get(f"{api}/healthz", timeout=10).status_code == 200
    stack.make("smoke", timeout=300)
    # main still points at the failing commit: the next run does not try it again
    again = redeploy(stack)
    assert again.returncode == 2 and "failed before" in again.stdout + again.stderr, again.stdout[-3000:]


def test_a_second_deploy_while_one_runs_waits_or_refuses(stack: ComposeStack):
    """The mended commit also changes the image (a comment in the package), so the first
    deploy rebuilds and replaces every Tillflow container: a minute or more under the lock."""
    def mend(text: str) -> str:
        return text.replace("r.urlopen('http://127.0.0.1:8000/no-such-page', timeout=4)",
                            "r.urlopen('http://127.0.0.1:8000/healthz', timeout=4)", 1)

    stack.push_change("docker-compose.yml", mend, "e2e: the API's health check mended")
    mended = stack.push_change("tillflow/__init__.py", lambda text: text + "# e2e: a new image\n",
                               "e2e: a change to the image")
    env = {**stack.env, "DEPLOY_HEALTH_TIMEOUT": "300", "DEPLOY_POLL_INTERVAL": "2"}
    first = subprocess.Popen([sys.executable, "deploy/redeploy"], cwd=stack.dir, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    waiting = None
    try:
        time.sleep(3)  # the first takes the lock at once
        refused = redeploy(stack, DEPLOY_LOCK_TIMEOUT="3")
        assert refused.returncode == 2, refused.stdout[-3000:]
        assert "another deploy held the lock" in refused.stdout + refused.stderr
        assert first.poll() is None, "the first deploy was still running"
        waiting = subprocess.Popen([sys.executable, "deploy/redeploy"], cwd=stack.dir, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    finally:
        out, _ = first.communicate(timeout=1800)
    assert first.returncode == 0, out[-5000:]
    later, _ = waiting.communicate(timeout=600)
    assert waiting.returncode == 0, later[-3000:]
    assert "waiting for it to finish" in later and "deployed already" in later, later[-3000:]
    assert stack.git("rev-parse", "HEAD") == mended
    stack.wait_healthy(stack.started_services, BACK_WITHIN)


# ---------------------------------------------------------------- faults
@pytest.mark.parametrize("service", ["kafka-1", "kafka-2", "kafka-3", "postgres", "consumer", "api"])
def test_kill_9_while_tills_post_loses_nothing_and_restart_always_brings_it_back(
        stack: ComposeStack, api: str, token: str, service: str):
    restarts = stack.restart_count(service)
    with Tills(api, token) as tills:
        tills.wait_acknowledged(50)
        stack.kill9(service)
        wait_for(lambda: stack.restart_count(service) > restarts, 60, f"{service} restarted by Docker", every=1)
        stack.wait_healthy([service], BACK_WITHIN)
        tills.wait_acknowledged(50, timeout=180)
    print(f"\nkill -9 {service}: sent {len(tills.sent)}, acknowledged {len(tills.acknowledged)}, "
          f"failed requests {tills.failures}")
    assert_exactly_once(stack, tills)
    stack.wait_healthy(stack.started_services, BACK_WITHIN)


def test_a_docker_daemon_restart_brings_every_service_back_and_loses_nothing(
        stack: ComposeStack, api: str, token: str):
    with Tills(api, token) as tills:
        tills.wait_acknowledged(50)
        started = time.monotonic()
        restart_docker_daemon()
        stack.wait_healthy([s for s in stack.started_services if s not in ("migrate", "kafka-init")], 420)
        back = time.monotonic() - started
        tills.wait_acknowledged(50, timeout=240)
    print(f"\ndockerd restart: every service healthy again in {back:.0f} s; sent {len(tills.sent)}, "
          f"acknowledged {len(tills.acknowledged)}")
    assert_exactly_once(stack, tills)


def restart_docker_daemon() -> None:
    """SIGTERM to dockerd (it stops every container), then start it again the way make test does."""
    pids = subprocess.run(["pidof", "dockerd"], capture_output=True, text=True).stdout.split()
    assert len(pids) == 1, f"dockerd pids: {pids}"
    subprocess.run(["kill", "-TERM", pids[0]], check=True)
    wait_for(lambda: subprocess.run(["kill", "-0", pids[0]], capture_output=True).returncode, 120,
             "dockerd to exit", every=0.5)
    # A service manager may start it again by itself; else start it as make test does.
    time.sleep(3)
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        subprocess.run(["bash", str(ROOT / "scripts" / "docker-engine")], check=True, timeout=300)
