"""A real three-node Apache Kafka cluster (KRaft) from Maven Central's jars.

``kafka/fetch`` resolves the broker and its dependencies into a cache
(``~/.cache/tillflow/kafka-<version>/libs``); this module formats one storage
directory per node and runs each node as ``java kafka.Kafka`` on loopback. Every
node is both broker and controller, as in the compose stack, so a cluster of
three keeps working with one node down.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

from devstack.proc import ServiceError, pid_alive, signal_and_wait, spawn, wait_for_port

REPO = Path(__file__).resolve().parent.parent
KAFKA_VERSION = "4.1.1"
LOG4J_CONFIG = Path(__file__).with_name("log4j2.yaml")
BROKER_ENV = REPO / "kafka" / "broker.env"
# Variables of Kafka's start scripts, not broker properties.
_NOT_PROPERTIES = {"KAFKA_HEAP_OPTS", "KAFKA_JVM_PERFORMANCE_OPTS", "KAFKA_OPTS", "KAFKA_LOG4J_OPTS",
                   "KAFKA_JMX_OPTS", "KAFKA_GC_LOG_OPTS"}


def broker_env(path: Path = BROKER_ENV) -> dict[str, str]:
    """kafka/broker.env: the settings every Tillflow broker shares, as variables."""
    found = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            found[name] = value
    return found


def broker_properties(env: dict[str, str]) -> dict[str, str]:
    """The broker properties of KAFKA_* variables, by the image's rule: KAFKA_ dropped,
    lower case, ``___`` a dash, ``__`` an underscore, ``_`` a dot."""
    properties = {}
    for name, value in env.items():
        if name.startswith("KAFKA_") and name not in _NOT_PROPERTIES:
            key = name[len("KAFKA_"):].lower().replace("___", "-").replace("__", "\0").replace("_", ".")
            properties[key.replace("\0", "_")] = value
    return properties


JVM_PERFORMANCE_OPTS = broker_env()["KAFKA_JVM_PERFORMANCE_OPTS"]


def cache_dir() -> Path:
    root = os.environ.get("TILLFLOW_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "tillflow")
    return Path(root) / f"kafka-{KAFKA_VERSION}"


def ensure_jars() -> Path:
    """The directory of the broker's jars, fetched from Maven Central when missing."""
    libs = cache_dir() / "libs"
    if not (libs / f"kafka_2.13-{KAFKA_VERSION}.jar").exists():
        fetch = REPO / "kafka" / "fetch"
        done = subprocess.run(["bash", str(fetch)], capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ServiceError(f"could not fetch Kafka {KAFKA_VERSION} from Maven Central: {tail[0]}")
    return libs


def java() -> str:
    home = os.environ.get("JAVA_HOME")
    candidate = Path(home) / "bin" / "java" if home else None
    if candidate and candidate.exists():
        return str(candidate)
    found = shutil.which("java")
    if not found:
        raise ServiceError("Java is missing: Kafka needs a Java 17+ runtime (apt-get install openjdk-17-jre-headless)")
    return found


class KafkaNode:
    """One KRaft node (broker and controller) of a ``KafkaCluster``."""

    def __init__(self, cluster: KafkaCluster, node_id: int, port: int, controller_port: int) -> None:
        self.cluster = cluster
        self.node_id = node_id
        self.port = port
        self.controller_port = controller_port
        self.dir = cluster.base_dir / f"node-{node_id}"
        self.data_dir = self.dir / "data"
        self.config = self.dir / "server.properties"
        self.log_path = cluster.log_dir / f"kafka-{node_id}.log"
        self._proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def write_config(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        settings = {
            **broker_properties(broker_env()),
            "node.id": self.node_id,
            "controller.quorum.voters": self.cluster.voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": self.data_dir,
            "num.partitions": 3,  # as etl.topics.PARTITIONS
            "group.initial.rebalance.delay.ms": 0,
            # Small segments keep restart recovery quick on a laptop-sized box.
            "log.segment.bytes": 64 * 1024 * 1024,
            "log.retention.hours": 168,
        }
        self.config.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))

    def formatted(self) -> bool:
        return (self.data_dir / "meta.properties").exists()

    def format(self) -> None:
        self.write_config()
        done = subprocess.run(
            [java(), "-cp", self.cluster.classpath, f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
             "kafka.tools.StorageTool", "format", f"--cluster-id={self.cluster.cluster_id}", "-c", str(self.config),
             "--ignore-formatted"],
            capture_output=True, text=True,
        )
        if done.returncode != 0:
            raise ServiceError(f"formatting Kafka node {self.node_id} failed: {done.stderr.strip() or done.stdout.strip()}")

    def start(self) -> None:
        if self.running():
            return
        if not self.formatted():
            self.format()
        self.write_config()
        env = dict(os.environ)
        self._proc = spawn(
            [java(), *self.cluster.jvm_options, f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
             "-cp", self.cluster.classpath, "kafka.Kafka", str(self.config)],
            log_path=self.log_path, attached=self.cluster.attached, env=env,
        )
        (self.dir / "pid").write_text(str(self._proc.pid))

    def wait_listening(self, timeout: float = 90) -> None:
        wait_for_port(self.port, timeout, self._proc, what=f"Kafka node {self.node_id}")

    def pid(self) -> int | None:
        if self._proc is not None:
            return self._proc.pid if self._proc.poll() is None else None
        pidfile = self.dir / "pid"
        if pidfile.exists():
            pid = int(pidfile.read_text())
            return pid if pid_alive(pid) else None
        return None

    def running(self) -> bool:
        return self.pid() is not None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
        """Stop the node: SIGTERM is a controlled shutdown, SIGKILL a crash."""
        pid = self.pid()
        if pid is not None and not signal_and_wait(pid, sig, timeout):
            signal_and_wait(pid, signal.SIGKILL, 10)
        if self._proc is not None:
            self._proc.wait(timeout=10)
            self._proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


class KafkaCluster:
    """Three KRaft nodes on loopback sharing one cluster id."""

    def __init__(
        self,
        base_dir: Path,
        ports: list[int],
        controller_ports: list[int],
        *,
        attached: bool = True,
        log_dir: Path | None = None,
        heap: str = "-Xms256m -Xmx512m",
    ) -> None:
        if len(ports) != len(controller_ports):
            raise ValueError("one controller port per broker port")
        self.base_dir = Path(base_dir)
        self.log_dir = log_dir or self.base_dir / "logs"
        self.attached = attached
        self.classpath = str(ensure_jars()) + "/*"
        self.jvm_options = [*heap.split(), *JVM_PERFORMANCE_OPTS.split()]
        self.nodes = [KafkaNode(self, i + 1, p, c) for i, (p, c) in enumerate(zip(ports, controller_ports))]
        self.voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        id_file = self.base_dir / "cluster.id"
        if id_file.exists():
            self.cluster_id = id_file.read_text().strip()
        else:
            self.base_dir.mkdir(parents=True, exist_ok=True)
            self.cluster_id = _kraft_cluster_id()
            id_file.write_text(self.cluster_id)

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(n.address for n in self.nodes)

    def start(self, timeout: float = 120) -> None:
        for node in self.nodes:
            if not node.formatted():
                node.format()
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            node.wait_listening(timeout)
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 120, brokers: int | None = None) -> None:
        """Wait until the cluster's metadata lists ``brokers`` live brokers (all by default)."""
        from tillflow.errors import PublishError
        from tillflow.kafka_admin import admin_client, cluster_health

        want = len(self.nodes) if brokers is None else brokers
        deadline = time.monotonic() + timeout
        seen = 0
        admin = admin_client(self.bootstrap_servers.split(","), client_id="devstack", timeout=5.0)
        while time.monotonic() < deadline:
            try:
                seen = cluster_health(admin, [], timeout=5.0).brokers
                if seen >= want:
                    return
            except PublishError:
                pass
            time.sleep(0.5)
        raise ServiceError(f"Kafka cluster reported {seen} of {want} brokers after {timeout:.0f}s (logs: {self.log_dir})")

    def stop(self, timeout: float = 30) -> None:
        """Stop every node at once: stopped one by one, the last ones lose their
        quorum and wait out their controlled-shutdown timeout."""
        pids = [(node, node.pid()) for node in self.nodes]
        for _, pid in pids:
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for node, pid in pids:
            if pid is not None:
                node.stop(signal.SIGTERM, max(1.0, deadline - time.monotonic()))

    def running(self) -> list[KafkaNode]:
        return [n for n in self.nodes if n.running()]


def _kraft_cluster_id() -> str:
    """A cluster id as Kafka makes them: a UUID in url-safe base64 without padding."""
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
