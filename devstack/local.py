"""``make local``: the whole Tillflow stack as native processes, in the background.

    python -m devstack.local up|down|destroy|status

``up`` starts PostgreSQL and three Kafka brokers (data in ``.local/data``,
logs in ``.local/logs``), applies the migrations, creates the topics, starts
the Tillflow services (consumer, watcher) and writes ``.local/env``. Running
it again while the stack is up starts nothing new. ``down`` stops everything
it started and keeps the data; ``destroy`` also deletes the data. Ports come
from ``LOCAL_*_PORT`` variables (defaults below); one already taken ends ``up``
with a one-line message naming it.
"""
from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from devstack.kafka import KafkaCluster, java
from devstack.postgres import NativePostgres
from devstack.proc import ServiceError, pid_alive, port_in_use, signal_and_wait, spawn

REPO = Path(__file__).resolve().parent.parent
# TILLFLOW_LOCAL_DIR moves the whole stack elsewhere (tests run a second one).
LOCAL = Path(os.environ.get("TILLFLOW_LOCAL_DIR") or REPO / ".local")
DATA = LOCAL / "data"
LOGS = LOCAL / "logs"
RUN = LOCAL / "run"
SECRETS = LOCAL / "secrets"
ENV_FILE = LOCAL / "env"
DATABASE = "tillflow"


def _port(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


PG_PORT = _port("LOCAL_PG_PORT", 55432)
KAFKA_PORTS = [_port(f"LOCAL_KAFKA{i}_PORT", 39092 + i - 1) for i in (1, 2, 3)]
CONTROLLER_PORTS = [_port(f"LOCAL_CONTROLLER{i}_PORT", 39192 + i - 1) for i in (1, 2, 3)]
METRICS_PORTS = {"consumer": _port("LOCAL_CONSUMER_METRICS_PORT", 39301),
                 "watcher": _port("LOCAL_WATCHER_METRICS_PORT", 39302)}
API_PORT = _port("LOCAL_API_PORT", 38000)  # the API serves its own /metrics
API_URL = f"http://127.0.0.1:{API_PORT}"

# Seconds a started service has to answer before `make local` gives up on it.
SERVICE_TIMEOUT = 60.0

# The Tillflow services `up` starts, each a `tillflow` subcommand.
SERVICES = {
    "consumer": ["consume"],
    "watcher": ["watch"],
    "api": ["serve"],
}


def _ports_env(name: str) -> dict[str, str]:
    if name == "api":
        return {"API_HOST": "127.0.0.1", "API_PORT": str(API_PORT)}
    return {"METRICS_PORT": str(METRICS_PORTS[name])}


def _secret(name: str) -> str:
    path = SECRETS / name
    if not path.exists():
        SECRETS.mkdir(parents=True, exist_ok=True)
        SECRETS.chmod(0o700)
        path.write_text(secrets.token_hex(24))
        path.chmod(0o600)
    return path.read_text().strip()


def _postgres() -> NativePostgres:
    return NativePostgres(DATA / "postgres", PG_PORT, _secret("postgres"), attached=False, durable=True,
                          log_path=LOGS / "postgres.log")


def _kafka() -> KafkaCluster:
    return KafkaCluster(DATA / "kafka", KAFKA_PORTS, CONTROLLER_PORTS, attached=False, log_dir=LOGS)


def _passwords() -> dict[str, str]:
    return {role: _secret(f"tillflow_{role}") for role in ("owner", "writer", "reader", "backup")}


def _urls(pg: NativePostgres) -> dict[str, str]:
    pw = _passwords()
    return {role: pg.url(f"tillflow_{role}", pw[role], DATABASE) for role in pw}


def _service_env(pg: NativePostgres, cluster: KafkaCluster, role: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "KAFKA_"))}
    env.update({
        "DATABASE_URL": _urls(pg)[role],
        "KAFKA_BOOTSTRAP_SERVERS": cluster.bootstrap_servers,
        "INBOX_DIR": str(LOCAL / "inbox"),
        "ARCHIVE_DIR": str(LOCAL / "archive"),
        "FAILED_DIR": str(LOCAL / "failed"),
        "TILLFLOW_ENV": "development",
        "WATCH_SETTLE_SECONDS": "1",
        "WATCH_INTERVAL_SECONDS": "1",
    })
    return env


def _tillflow() -> str:
    exe = Path(sys.executable).with_name("tillflow")
    return str(exe) if exe.exists() else "tillflow"


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _pidfile(name: str) -> Path:
    return RUN / f"{name}.pid"


def _running(name: str) -> int | None:
    path = _pidfile(name)
    if path.exists():
        pid = int(path.read_text())
        if pid_alive(pid):
            return pid
    return None


def _check_ports() -> None:
    wanted = {"PostgreSQL": [PG_PORT], "Kafka": KAFKA_PORTS + CONTROLLER_PORTS, "metrics": list(METRICS_PORTS.values()),
              "the API": [API_PORT]}
    for what, ports in wanted.items():
        for port in ports:
            if port_in_use(port):
                raise ServiceError(f"port {port} (for {what}) is already taken: free it or set LOCAL_*_PORT")


def up() -> None:
    pg, cluster = _postgres(), _kafka()
    if pg.running() or cluster.running() or any(_running(s) for s in SERVICES):
        _write_env(pg, cluster)
        print(f"the local stack is already running; `source {_shown(ENV_FILE)}`")
        return
    java()  # fails with a one-line message when Java is missing
    _check_ports()
    for directory in (LOGS, RUN, LOCAL / "inbox", LOCAL / "archive", LOCAL / "failed"):
        directory.mkdir(parents=True, exist_ok=True)
    LOCAL.chmod(0o755)
    DATA.mkdir(parents=True, exist_ok=True)
    DATA.chmod(0o755)
    print("starting PostgreSQL and three Kafka brokers...", flush=True)
    pg.start()
    _pidfile("postgres").write_text(str(pg.pid()))
    cluster.start()
    for node in cluster.nodes:
        _pidfile(f"kafka-{node.node_id}").write_text(str(node.pid()))
    _bootstrap_database(pg)
    _run_tillflow(["migrate"], _service_env(pg, cluster, "owner") | {"DATABASE_URL": pg.url(dbname=DATABASE),
                                                                      **_password_env()})
    _run_tillflow(["create-topics"], _service_env(pg, cluster, "writer"))
    started = {name: _start_service(name, pg, cluster) for name in SERVICES}
    _write_env(pg, cluster)
    print("waiting for the services to answer...", flush=True)
    _wait_answering(started)
    print(f"Tillflow runs natively. `source {_shown(ENV_FILE)}`, then e.g. `tillflow report`.")
    print(f"  inbox: {LOCAL / 'inbox'}   logs: {LOGS}")
    for name, port in METRICS_PORTS.items():
        print(f"  {name} metrics: http://127.0.0.1:{port}/metrics")
    print(f"  API: {API_URL} (docs at {API_URL}/docs; a token: tillflow token create --store main)")


def _start_service(name: str, pg: NativePostgres, cluster: KafkaCluster) -> subprocess.Popen:
    env = _service_env(pg, cluster, "writer") | _ports_env(name)
    proc = spawn([_tillflow(), *SERVICES[name]], log_path=LOGS / f"{name}.log", attached=False, env=env, cwd=REPO)
    _pidfile(name).write_text(str(proc.pid))
    return proc


def _answer_url(name: str) -> str:
    """What answers once a service is up: the API's /healthz, the others' metrics."""
    if name == "api":
        return f"{API_URL}/healthz"
    return f"http://127.0.0.1:{METRICS_PORTS[name]}/metrics"


def _wait_answering(started: dict[str, subprocess.Popen], timeout: float = SERVICE_TIMEOUT) -> None:
    """Return once every started service answers over HTTP; a service that exits or stays
    silent stops ``make local`` with its log's path."""
    deadline = time.monotonic() + timeout
    waiting = dict(started)
    while waiting:
        for name, proc in list(waiting.items()):
            if proc.poll() is not None:
                raise ServiceError(f"{name} exited with status {proc.returncode}: see {_shown(LOGS / f'{name}.log')}")
            try:
                with urllib.request.urlopen(_answer_url(name), timeout=2):
                    del waiting[name]
            except (OSError, urllib.error.HTTPError):
                pass
        if waiting and time.monotonic() > deadline:
            names = ", ".join(waiting)
            raise ServiceError(f"{names} did not answer within {timeout:.0f}s: see {_shown(LOGS)}")
        if waiting:
            time.sleep(0.2)


def _stop_service(name: str) -> bool:
    """SIGTERM (the service finishes its batch), SIGKILL after 30 s; False if it was not running."""
    pid = _running(name)
    if pid is not None:
        signal_and_wait(pid, signal.SIGTERM, 30) or signal_and_wait(pid, signal.SIGKILL, 5)
    _pidfile(name).unlink(missing_ok=True)
    return pid is not None


def stop_services(names: list[str]) -> None:
    """``make restore REPLACE=1``: stop the writers (and the consumer) around a restore."""
    stopped = [name for name in _services(names) if _stop_service(name)]
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


def start_services(names: list[str]) -> None:
    pg, cluster = _postgres(), _kafka()
    if not (pg.running() and cluster.running()):
        raise ServiceError("PostgreSQL and Kafka are not running: start the whole stack with make local")
    started = {name: _start_service(name, pg, cluster) for name in _services(names) if _running(name) is None}
    _wait_answering(started)
    print("started: " + (", ".join(started) if started else "nothing, all were running"))


def _services(names: list[str]) -> list[str]:
    unknown = [name for name in names if name not in SERVICES]
    if unknown:
        raise ServiceError(f"no service {', '.join(unknown)}: the services are {', '.join(SERVICES)}")
    return names or list(SERVICES)


def _password_env() -> dict[str, str]:
    return {f"TILLFLOW_{role.upper()}_PASSWORD": pw for role, pw in _passwords().items()}


def _bootstrap_database(pg: NativePostgres) -> None:
    import psycopg2

    conn = psycopg2.connect(pg.url())
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
            if cur.fetchone() is None:
                cur.execute(f"CREATE DATABASE {DATABASE}")
    finally:
        conn.close()


def _run_tillflow(argv: list[str], env: dict[str, str]) -> None:
    done = subprocess.run([_tillflow(), *argv], env=env, cwd=REPO, capture_output=True, text=True)
    with open(LOGS / "setup.log", "a") as log:
        log.write(done.stdout + done.stderr)
    if done.returncode != 0:
        raise ServiceError(f"tillflow {' '.join(argv)} failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")


def _write_env(pg: NativePostgres, cluster: KafkaCluster) -> None:
    urls = _urls(pg)
    lines = {
        # The admin's shell: the owner role reads the analytics views and records uploads.
        "DATABASE_URL": urls["owner"],
        "TILLFLOW_WRITER_URL": urls["writer"],
        "TILLFLOW_READER_URL": urls["reader"],
        "TILLFLOW_BACKUP_URL": urls["backup"],
        "POSTGRES_SUPERUSER_URL": pg.url(dbname=DATABASE),
        "KAFKA_BOOTSTRAP_SERVERS": cluster.bootstrap_servers,
        "INBOX_DIR": str(LOCAL / "inbox"),
        # make backup and make restore use it too; the README's native commands need it.
        "BACKUP_DIR": str(LOCAL / "backups"),
        "ARCHIVE_DIR": str(LOCAL / "archive"),
        "FAILED_DIR": str(LOCAL / "failed"),
        "TILLFLOW_ENV": "development",
        "TILLFLOW_API_URL": API_URL,
        # tillflow smoke (make smoke) checks these besides the API.
        "SMOKE_METRICS_URLS": ",".join(f"{name}=http://127.0.0.1:{port}/metrics"
                                       for name, port in METRICS_PORTS.items()),
        "PATH": f"{Path(sys.executable).parent}:$PATH",
    }
    body = "# Written by `make local`; `source .local/env` to use the native stack.\n"
    body += "".join(f"export {k}={shlex.quote(v) if k != 'PATH' else json.dumps(v)}\n" for k, v in lines.items())
    ENV_FILE.parent.mkdir(parents=True, exist_ok=True)
    ENV_FILE.write_text(body)
    ENV_FILE.chmod(0o600)


def down() -> None:
    stopped = [name for name in SERVICES if _stop_service(name)]
    cluster = _kafka() if (DATA / "kafka").exists() else None
    if cluster is not None and cluster.running():
        cluster.stop()
        stopped.append("kafka")
    pg = _postgres() if (DATA / "postgres").exists() else None
    if pg is not None and pg.running():
        pg.stop()
        stopped.append("postgres")
    for pidfile in RUN.glob("*.pid") if RUN.exists() else []:
        pidfile.unlink()
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


def destroy() -> None:
    down()
    for path in (DATA, LOGS, RUN, SECRETS, ENV_FILE):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    print("deleted the local stack's data (.local/data); inbox and archive are kept")


def status() -> None:
    names = ["postgres", "kafka-1", "kafka-2", "kafka-3", *SERVICES]
    for name in names:
        pid = _running(name)
        print(f"{name:10} {'running (pid %d)' % pid if pid else 'stopped'}")


def main(argv: list[str]) -> int:
    commands = {"up": up, "down": down, "destroy": destroy, "status": status}
    with_names = {"stop": stop_services, "start": start_services}
    if not argv or argv[0] not in {*commands, *with_names} or (argv[0] in commands and len(argv) != 1):
        print("usage: python -m devstack.local up|down|destroy|status, or stop|start [SERVICE...]", file=sys.stderr)
        return 2
    try:
        if argv[0] in with_names:
            with_names[argv[0]](argv[1:])
        else:
            commands[argv[0]]()
    except ServiceError as exc:
        print(f"make local: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
