"""The real services the integration tests run against.

Where a Docker engine answers, PostgreSQL and the three Kafka brokers run as
containers (testcontainers); elsewhere as native processes (``devstack``).
Both backends are one typed surface, ``PostgresServer`` and ``KafkaBrokers``
below, so tests never know which they have; a test holds both backends' classes
to it (tests/unit/test_services.py).
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Protocol

from devstack.kafka import KafkaCluster, broker_env
from devstack.postgres import NativePostgres
from devstack.proc import free_port
from etl.topics import PARTITIONS


class PostgresServer(Protocol):
    """A PostgreSQL server of either backend."""

    host: str
    port: int
    password: str

    def url(self, user: str = "postgres", password: str | None = None, dbname: str = "postgres") -> str: ...
    def running(self) -> bool: ...
    def stop(self, mode: str = "fast", timeout: float = 60) -> None: ...
    def kill(self) -> None: ...
    def start(self, timeout: float = 60) -> None: ...
    def destroy(self) -> None: ...


class KafkaNode(Protocol):
    """One broker of ``KafkaBrokers``."""

    node_id: int

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> None: ...
    def kill(self) -> None: ...
    def start(self) -> None: ...
    def wait_listening(self, timeout: float = 90) -> None: ...
    def running(self) -> bool: ...


class KafkaBrokers(Protocol):
    """The three brokers of either backend."""

    bootstrap_servers: str
    nodes: list

    def wait_ready(self, timeout: float = 120, brokers: int | None = None) -> None: ...
    def stop(self, timeout: float = 30) -> None: ...


def docker_available() -> bool:
    """True when a Docker engine answers (not just a client on the PATH)."""
    if os.environ.get("TILLFLOW_TEST_NATIVE") == "1" or not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def make_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="tillflow-test-"))
    root.chmod(0o755)  # the postgres user must be able to enter it
    return root


def start_postgres(root: Path, *, port: int | None = None) -> PostgresServer:
    """A new server of the session's kind; ``port``: on that host port (a server replacing a lost one)."""
    password = secrets.token_hex(16)
    if docker_available():
        return DockerPostgres(password, port=port)
    server = NativePostgres(root / "postgres", port or free_port(), password, attached=True, durable=False)
    server.start()
    return server


def start_kafka(root: Path) -> KafkaBrokers:
    if docker_available():
        return DockerKafkaCluster()
    cluster = KafkaCluster(
        root / "kafka", [free_port() for _ in range(3)], [free_port() for _ in range(3)], attached=True
    )
    cluster.start()
    return cluster


# -- Docker (testcontainers) -------------------------------------------------------
# No Ryuk reaper: its image is one more that cannot be pulled everywhere. Each
# container carries the test run's pid instead, and a later run removes the
# containers of runs that are gone (reap_orphans), so a killed run leaves none.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
from support.watchdog import RUN_LABEL  # noqa: E402 (one label, which the watchdog also reads)
COMPOSE_FILE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def compose_image(variable: str) -> str:
    """The image docker-compose.yml pins as ${VARIABLE:-default}: one source for both."""
    found = re.search(r"\$\{" + variable + r":-([^}]+)\}", COMPOSE_FILE.read_text(encoding="utf-8"))
    if not found:
        raise LookupError(f"docker-compose.yml pins no {variable}")
    return found.group(1)


def reap_orphans() -> None:
    """Remove the test containers and networks of earlier runs whose process is gone."""
    listed = subprocess.run(["docker", "ps", "-a", "--filter", f"label={RUN_LABEL}",
                             "--format", '{{.ID}} {{.Label "' + RUN_LABEL + '"}}'],
                            capture_output=True, text=True, check=True).stdout.split("\n")
    for line in filter(None, listed):
        container, pid = line.split()
        if not Path(f"/proc/{pid}").exists():
            subprocess.run(["docker", "rm", "-f", "-v", container], capture_output=True)
    subprocess.run(["docker", "network", "prune", "-f", "--filter", f"label={RUN_LABEL}"], capture_output=True)


def _labelled(container):
    return container.with_kwargs(labels={RUN_LABEL: str(os.getpid())})


class DockerPostgres:
    """PostgreSQL in a container of the image docker-compose.yml pins; stop/kill/start act on the container.

    Like the native test server it trades durability for speed (fsync off):
    these are test databases, not the production settings.
    """

    superuser = "postgres"

    def __init__(self, password: str, *, port: int | None = None) -> None:
        from testcontainers.community.postgres import PostgresContainer

        reap_orphans()
        self.password = password
        # A host port fixed up front, as the native server's: a restarted
        # container keeps its address, so clients reconnect as to a real server.
        self.host, self.port = "127.0.0.1", port or free_port()
        self._container = _labelled(PostgresContainer(
            compose_image("POSTGRES_IMAGE"), username="postgres", password=password, dbname="postgres"))
        self._container.with_bind_ports(5432, self.port)
        # The native test server's settings (devstack NativePostgres, durable=False):
        # the OS never crashes under a test server, only the server does.
        self._container.with_command("postgres -c fsync=off -c full_page_writes=off -c max_connections=300")
        self._container.start()

    def url(self, user: str = "postgres", password: str | None = None, dbname: str = "postgres") -> str:
        if user == self.superuser and password is None:
            password = self.password
        auth = user + (f":{password}" if password else "")
        return f"postgresql://{auth}@{self.host}:{self.port}/{dbname}"

    def running(self) -> bool:
        wrapped = self._container.get_wrapped_container()
        wrapped.reload()
        return wrapped.status == "running"

    def stop(self, mode: str = "fast", timeout: float = 60) -> None:
        self._container.get_wrapped_container().stop(timeout=int(timeout))

    def kill(self) -> None:
        self._container.get_wrapped_container().kill()

    def start(self, timeout: float = 60) -> None:
        wrapped = self._container.get_wrapped_container()
        wrapped.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if wrapped.exec_run(["pg_isready", "--host=127.0.0.1", "-U", "postgres"]).exit_code == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"PostgreSQL container not ready within {timeout}s")

    def destroy(self) -> None:
        """Remove the container and its data; again is harmless."""
        from docker.errors import NotFound

        try:
            self._container.stop()
        except NotFound:
            pass


# ApiVersions v0: size 12, api_key 18, version 0, correlation id 1, client id "hc"
# (the request docker-compose.yml's broker healthcheck sends).
_API_VERSIONS = bytes.fromhex("0000000c" "0012" "0000" "00000001" "0002") + b"hc"


def kafka_answers(port: int, host: str = "127.0.0.1") -> bool:
    """True when a Kafka broker on host:port answers ApiVersions with error code 0."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=3) as sock:
            sock.settimeout(3)
            sock.sendall(_API_VERSIONS)
            head = b""
            while len(head) < 10:
                chunk = sock.recv(10 - len(head))
                if not chunk:
                    return False
                head += chunk
    except OSError:
        return False
    return head[4:10] == bytes.fromhex("000000010000")


class _DockerKafkaNode:
    def __init__(self, container, node_id: int, port: int) -> None:
        self.container = container
        self.node_id = node_id
        self.port = port

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
        wrapped = self.container.get_wrapped_container()
        if sig == signal.SIGKILL:
            wrapped.kill()
        else:
            wrapped.stop(timeout=int(timeout))

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def start(self) -> None:
        self.container.get_wrapped_container().start()

    def wait_listening(self, timeout: float = 90) -> None:
        """Until the broker answers a Kafka request: Docker's port proxy accepts
        connections as soon as the container starts, long before Kafka does."""
        deadline = time.monotonic() + timeout
        while not kafka_answers(self.port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"Kafka container {self.node_id} did not answer within {timeout}s")
            time.sleep(0.3)

    def running(self) -> bool:
        wrapped = self.container.get_wrapped_container()
        wrapped.reload()
        return wrapped.status == "running"


class DockerKafkaCluster:
    """Three apache/kafka containers in KRaft mode on a private network.

    Each advertises a fixed host port chosen up front, so clients on the host
    reach every broker and a restarted container keeps its address.
    """

    def __init__(self) -> None:
        from testcontainers.core.container import DockerContainer
        from testcontainers.core.network import Network

        self.network = Network(docker_network_kw={"labels": {RUN_LABEL: str(os.getpid())}}).create()
        ports = [free_port() for _ in range(3)]
        voters = ",".join(f"{i}@kafka-{i}:9093" for i in (1, 2, 3))
        cluster_id = "tillflow-test-cluster-0"
        self.nodes = []
        for i, port in zip((1, 2, 3), ports):
            container = _labelled(
                DockerContainer(compose_image("KAFKA_IMAGE"))
                .with_network(self.network)
                .with_network_aliases(f"kafka-{i}")
                .with_bind_ports(port, port)
                .with_env("KAFKA_NODE_ID", str(i))
                .with_env("CLUSTER_ID", cluster_id)
                .with_env("KAFKA_CONTROLLER_QUORUM_VOTERS", voters)
                .with_env("KAFKA_LISTENERS", f"INTERNAL://:19092,EXTERNAL://:{port},CONTROLLER://:9093")
                .with_env("KAFKA_ADVERTISED_LISTENERS", f"INTERNAL://kafka-{i}:19092,EXTERNAL://127.0.0.1:{port}")
                .with_env("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "INTERNAL:PLAINTEXT,EXTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT")
                .with_env("KAFKA_INTER_BROKER_LISTENER_NAME", "INTERNAL")
                .with_env("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
                # The native test brokers' heap (devstack/kafka.py).
                .with_env("KAFKA_HEAP_OPTS", "-Xms256m -Xmx512m")
            )
            for name, value in broker_env().items():  # kafka/broker.env: what every broker shares
                container.with_env(name, value)
            container.start()
            self.nodes.append(_DockerKafkaNode(container, i, port))
        self.bootstrap_servers = ",".join(f"127.0.0.1:{p}" for p in ports)
        for node in self.nodes:
            node.wait_listening()
        self.wait_ready()

    def wait_ready(self, timeout: float = 120, brokers: int | None = None) -> None:
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        want = brokers or len(self.nodes)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                admin = KafkaAdminClient(bootstrap_servers=self.bootstrap_servers, request_timeout_ms=5000)
                try:
                    if len(admin.describe_cluster()["brokers"]) >= want:
                        return
                finally:
                    admin.close()
            except (KafkaError, OSError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"Kafka containers did not report {want} brokers in {timeout}s")

    def stop(self, timeout: float = 30) -> None:
        """Remove the brokers (their data goes with them) and their network."""
        for node in self.nodes:
            node.container.stop()
        self.network.remove()


def create_topic(bootstrap: str, name: str, partitions: int = PARTITIONS) -> None:
    """A topic as `tillflow create-topics` makes it (etl.topics: one source for its settings)."""
    from etl.topics import create_topics

    create_topics(bootstrap.split(","), [name], partitions=partitions)