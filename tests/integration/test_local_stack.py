"""`make local`: a second native stack in a temporary directory, on free ports.

It writes an env file that reaches PostgreSQL and all three brokers, does not
start twice, keeps its data across down/up, names a taken port, and leaves no
process behind."""
from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg2
import pytest
from kafka import KafkaAdminClient

from tillflow import sample
from devstack.local import SERVICES
from devstack.proc import free_port, pid_alive
from support import services, watchdog

REPO = Path(__file__).resolve().parents[2]


def local(env: dict, *command: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "devstack.local", *command], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def read_env(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            values[key] = shlex.split(value)[0] if value else ""
    return values


@pytest.fixture
def stack_env(watchdog_dir):
    base = services.make_root()  # enterable by the postgres user, unlike pytest's tmp_path
    root = base / "local"
    env = {**os.environ, "TILLFLOW_LOCAL_DIR": str(root), "LOCAL_PG_PORT": str(free_port())}
    for i in (1, 2, 3):
        env[f"LOCAL_KAFKA{i}_PORT"] = str(free_port())
        env[f"LOCAL_CONTROLLER{i}_PORT"] = str(free_port())
    env["LOCAL_CONSUMER_METRICS_PORT"] = str(free_port())
    env["LOCAL_WATCHER_METRICS_PORT"] = str(free_port())
    env["LOCAL_API_PORT"] = str(free_port())
    # The stack's services are detached by design (they outlive `make local`): should
    # pytest be killed, the watchdog stops them.
    undo = watchdog.register(watchdog_dir, f"local-stack-{root.parent.name}",
                             [sys.executable, "-m", "devstack.local", "destroy"], cwd=REPO,
                             env={**os.environ, "TILLFLOW_LOCAL_DIR": str(root)})
    yield env
    local(env, "destroy")
    undo.unlink()
    shutil.rmtree(base, ignore_errors=True)


def pids(root: Path) -> list[int]:
    return [int(p.read_text()) for p in (root / "run").glob("*.pid")]


@pytest.mark.slow
def test_local_stack_up_twice_down_up_keeps_data_and_down_leaves_nothing(stack_env, tmp_path):
    root = Path(stack_env["TILLFLOW_LOCAL_DIR"])
    first = local(stack_env, "up")
    assert first.returncode == 0, first.stderr
    values = read_env(root / "env")
    assert set(values) >= {"DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "TILLFLOW_API_URL"}

    conn = psycopg2.connect(values["DATABASE_URL"])
    with conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM analytics.daily_transactions")
    conn.close()
    admin = KafkaAdminClient(bootstrap_servers=values["KAFKA_BOOTSTRAP_SERVERS"])
    try:
        assert len(admin.describe_cluster()["brokers"]) == 3
        assert {"tillflow.transactions", "tillflow.rejects"} <= set(admin.list_topics())
    finally:
        admin.close()

    # A CSV dropped into the inbox shows up in the report within seconds.
    day = sample.rows(20, seed=3)
    sample.write_csv(tmp_path / "drop.tmp", day)
    os.replace(tmp_path / "drop.tmp", root / "inbox" / "retail_05_01_2026.csv")
    report_env = {**os.environ, **values}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        out = subprocess.run([str(Path(sys.executable).with_name("tillflow")), "report", "--format", "csv"],
                             env=report_env, capture_output=True, text=True).stdout
        if "2026-01-05,20," in out:
            break
        time.sleep(0.5)
    else:
        logs = "".join(f"\n--- {name}.log (end)\n" + (root / "logs" / f"{name}.log").read_text(errors="replace")[-3000:]
                       for name in ("watcher", "consumer") if (root / "logs" / f"{name}.log").exists())
        raise AssertionError(f"the dropped file did not reach the report within 30 s:\n{out}{logs}")

    # The README's curl: a token from `tillflow token create` (printed alone), one POST to
    # TILLFLOW_API_URL, and the transaction is in the report within a second of the answer.
    tillflow = str(Path(sys.executable).with_name("tillflow"))
    created = subprocess.run([tillflow, "token", "create", "--store", "main", "--name", "readme"], env=report_env,
                             capture_output=True, text=True)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("tillflow_") and created.stdout == token + "\n"
    item = {"id": "3f2504e0-4f89-11d3-9a0c-0305e82c3301", "transaction_date": "2026-02-01", "category": "SELL",
            "name": "Milk", "quantity": 2, "amount_excl_tax": "2.50", "amount_inc_tax": "3.00"}
    posted = httpx.post(values["TILLFLOW_API_URL"] + "/v1/transactions", json=item, timeout=30,
                        headers={"Authorization": f"Bearer {token}"})
    assert posted.status_code == 200 and posted.json()["accepted"] == 1, posted.text
    answered = time.monotonic()
    conn = psycopg2.connect(values["DATABASE_URL"])
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            while True:
                cur.execute("SELECT transactions FROM analytics.daily_transactions WHERE transaction_date = '2026-02-01'")
                if cur.fetchall() == [(1,)] or time.monotonic() - answered > 10:
                    break
                time.sleep(0.02)
    finally:
        conn.close()
    stored_after = time.monotonic() - answered
    assert stored_after < 1.0, f"the posted transaction reached the report's view {stored_after:.2f} s after the answer"
    out = subprocess.run([tillflow, "report", "--format", "csv"], env=report_env, capture_output=True, text=True).stdout
    assert "2026-02-01,1," in out, out

    again = local(stack_env, "up")
    assert again.returncode == 0 and "already running" in again.stdout
    running = pids(root)
    assert len(running) == 4 + len(SERVICES)  # postgres, 3 brokers, and the Tillflow services

    # What `make restore REPLACE=1` does around a restore on the native stack.
    stopped = local(stack_env, "stop", "consumer", "api")
    assert stopped.returncode == 0 and stopped.stdout.strip() == "stopped: consumer, api", stopped.stdout
    assert len(pids(root)) == 4 + len(SERVICES) - 2
    started = local(stack_env, "start", "consumer", "api", "watcher")
    assert started.returncode == 0 and started.stdout.strip() == "started: consumer, api", started.stdout
    assert local(stack_env, "stop", "mailer").stderr.strip().endswith("no service mailer: the services are "
                                                                   "consumer, watcher, api")
    running = pids(root)
    assert len(running) == 4 + len(SERVICES)

    assert local(stack_env, "down").returncode == 0
    time.sleep(1)
    assert not [p for p in running if pid_alive(p)], "make local-down left processes behind"

    assert local(stack_env, "up").returncode == 0
    conn = psycopg2.connect(values["DATABASE_URL"])
    with conn, conn.cursor() as cur:
        cur.execute("SELECT transactions FROM analytics.daily_transactions")
        assert sorted(cur.fetchall()) == [(1,), (20,)], "data must survive down and up"
    conn.close()
    assert local(stack_env, "destroy").returncode == 0
    assert not (root / "data").exists()


def test_a_taken_port_is_named_in_one_line(stack_env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", int(stack_env["LOCAL_PG_PORT"])))
        taken.listen()
        done = local(stack_env, "up")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and stack_env["LOCAL_PG_PORT"] in lines[0] and "PostgreSQL" in lines[0]


def test_missing_java_is_named_in_one_line(stack_env):
    env = {**stack_env, "PATH": "/nonexistent", "JAVA_HOME": ""}
    done = local(env, "up")
    assert done.returncode == 1
    assert "Java is missing" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def readme_block(heading: str) -> list[str]:
    """The commands of the README's first ``sh`` block under ``heading``, without their comments."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index(f"\n## {heading}\n"):]
    block = section[section.index("```sh\n") + 6:]
    block = block[:block.index("```")]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


@pytest.mark.slow
def test_the_readme_quick_start_runs_as_written(stack_env):
    """A newcomer's first minutes: every command of "Quick start without Docker", verbatim, in a
    checkout of its own (the repository's entries linked into a directory whose .local is this
    test's stack). Only `tillflow report` is re-run until the sample file is loaded, as a person
    would; each command must exit 0."""
    commands = readme_block("Quick start without Docker")
    assert commands[0] == "make local" and commands[1] == "source .local/env" and commands[-1] == "make local-down"
    local_dir = Path(stack_env["TILLFLOW_LOCAL_DIR"])
    checkout = local_dir.parent / "checkout"
    checkout.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in (".local", ".git"):
            (checkout / entry.name).symlink_to(entry)
    (checkout / ".local").symlink_to(local_dir, target_is_directory=True)
    local_dir.mkdir(parents=True, exist_ok=True)
    today = time.strftime("%Y-%m-%d", time.gmtime())
    script = ["set -e"]
    for n, command in enumerate(commands):
        script.append(f"echo '>>> {n}'")
        if command.startswith("tillflow report"):
            # Loaded "within seconds": re-run until today's 20 valid rows show (the 2 invalid ones are rejects).
            script.append(f"for i in $(seq 60); do out=$({command} --format csv); "
                          f"case \"$out\" in *'{today},20,'*) break;; esac; sleep 0.5; done; echo \"$out\"")
        else:
            script.append(command)
    done = subprocess.run(["bash", "-c", "\n".join(script)], cwd=checkout, env=stack_env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    report = out[out.index(f">>> {commands.index('tillflow report')}"):]
    assert f"{today},20," in report, out
    assert "backup tillflow-" in out and "rows of sales.transactions" in out, out
    assert any(p.suffix == ".dump" for p in (local_dir / "backups").iterdir())
    assert "stopped:" in out
