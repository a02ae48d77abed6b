"""Policy checks on the production stack: docker-compose.yml, the Dockerfile,
.env.example and scripts/make-secrets.

The files are read as data (PyYAML resolves the anchors and merge keys the way
Compose does), so nothing here needs a Docker engine. The file is also
validated by a Compose implementation: the `docker compose` plugin where it
works, else Debian's `docker-compose` package, which `make deps` installs.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
MAKE_SECRETS = ROOT / "scripts" / "make-secrets"

ONE_SHOT_COMMANDS = frozenset({"migrate", "create-topics"})
LONG_RUNNING_COMMANDS = frozenset({"consume", "watch", "serve"})

# The only services people open from outside (STYLE.md): the API and Grafana.
MAY_PUBLISH = frozenset({"api", "grafana"})
# Services that reach outside the host without being published: Alertmanager
# sends to the webhook and the mail server.
MAY_REACH_OUT = frozenset({"alertmanager"})
# Kafka's image writes its rendered config and logs inside /opt/kafka (see the
# comment in docker-compose.yml); every other service runs on a read-only root.
MAY_WRITE_ROOT = re.compile(r"^kafka-\d+$")

VPS_MEMORY_MIB = 4096
HOST_RESERVE_MIB = 256  # the kernel, Docker and sshd keep this much
KAFKA_HEAP_SHARE = 0.6  # the JVM needs the rest of the container limit

INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


# ---------------------------------------------------------------- loading
@functools.cache
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def services() -> dict[str, dict]:
    return compose()["services"]


def resolve(value: str) -> str:
    """The value Compose uses when no variable is set: each ${VAR:-default} -> default."""

    def default(match: re.Match) -> str:
        name, operator, fallback = match.groups()
        if operator not in (":-", "-"):
            raise AssertionError(f"${{{name}}} has no default: a user without .env would get nothing")
        return fallback

    return INTERPOLATION.sub(default, value).replace("$$", "$")


def image_of(service: dict) -> str:
    return resolve(service["image"])


def is_tillflow(service: dict) -> bool:
    return "build" in service or image_of(service).startswith("tillflow:")


def tillflow_services() -> dict[str, dict]:
    return {name: svc for name, svc in services().items() if is_tillflow(svc)}


def kafka_services() -> dict[str, dict]:
    return {name: svc for name, svc in services().items() if image_of(svc).startswith("apache/kafka:")}


def is_one_shot(service: dict) -> bool:
    restart = service.get("restart")
    return restart == "no" or (isinstance(restart, str) and re.fullmatch(r"on-failure(:\d+)?", restart) is not None)


def is_long_running(service: dict) -> bool:
    return service.get("restart") == "always"


def environment(service: dict) -> dict[str, str]:
    """The service's environment as Compose gives it: its env_file files, then ``environment`` over them."""
    merged: dict[str, str] = {}
    files = service.get("env_file") or []
    for path in [files] if isinstance(files, str) else files:
        for line in (ROOT / path).read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                key, _, value = line.partition("=")
                merged[key.strip()] = value
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    merged.update({key: "" if value is None else str(value) for key, value in env.items()})
    return merged


def depends_on(service: dict) -> dict:
    return service.get("depends_on") or {}


@functools.cache
def documented_variables() -> frozenset[str]:
    """Names .env.example documents, set or commented out (NAME=value or # NAME=value)."""
    text = ENV_EXAMPLE.read_text(encoding="utf-8")
    return frozenset(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", text, re.MULTILINE))


@functools.cache
def documented_values() -> dict[str, str]:
    text = ENV_EXAMPLE.read_text(encoding="utf-8")
    return dict(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*?)\s*$", text, re.MULTILINE))


def mebibytes(size: str | int) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([bkmg]?)b?", str(size).strip().lower())
    assert match, f"unreadable memory size {size!r}"
    number, unit = float(match.group(1)), match.group(2)
    return number * {"": 1 / 2**20, "b": 1 / 2**20, "k": 1 / 1024, "m": 1, "g": 1024}[unit]


def memory_limit(service: dict) -> str | None:
    deploy_limit = (((service.get("deploy") or {}).get("resources") or {}).get("limits") or {}).get("memory")
    return service.get("mem_limit") or deploy_limit


@functools.cache
def tillflow_subcommands() -> frozenset[str]:
    """Subcommands of the real CLI (`tillflow --help`)."""
    script = Path(sys.executable).with_name("tillflow")
    executable = str(script) if script.exists() else shutil.which("tillflow")
    assert executable, "no `tillflow` console script is installed (pip install -e .)"
    result = subprocess.run([executable, "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"tillflow --help failed: {result.stderr.strip()}"
    # argparse shows the choices as {a,b,...} in the usage line, or, when the
    # subparsers have a metavar, lists each one slightly indented before its help
    # (wrapped help lines are indented much further).
    choices = re.search(r"\{([a-z][a-z0-9-]*(?:,[a-z][a-z0-9-]*)+)\}", result.stdout)
    if choices:
        return frozenset(choices.group(1).split(","))
    listed = frozenset(re.findall(r"^ {2,6}([a-z][a-z0-9-]+)(?: {2,}|$)", result.stdout, re.MULTILINE))
    assert listed, f"no subcommands found in `tillflow --help`:\n{result.stdout}"
    return listed


# ---------------------------------------------------------------- validators
def _compose_validator() -> list[str] | None:
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30, check=False)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")  # Debian package docker-compose
    return [legacy] if legacy else None


def test_a_compose_implementation_accepts_the_file():
    validator = _compose_validator()
    assert validator is not None, "no Compose implementation here: make deps installs Debian's docker-compose"
    result = subprocess.run(
        [*validator, "--file", str(COMPOSE_FILE), "config", "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"{' '.join(validator)} config rejected the file:\n{result.stderr}"


# ---------------------------------------------------------------- lifecycle
def test_every_service_is_long_running_or_one_shot():
    for name, svc in services().items():
        assert is_long_running(svc) or is_one_shot(svc), (
            f'{name}: restart must be always (a service) or "no"/on-failure (a one-shot), '
            f"got {svc.get('restart')!r} (an unquoted no is YAML false)"
        )


def test_commands_run_as_the_kind_of_service_they_are():
    for name, svc in tillflow_services().items():
        command = svc["command"][0]
        if command in ONE_SHOT_COMMANDS:
            assert is_one_shot(svc), f"{name}: `tillflow {command}` ends; it must not restart always"
        if command in LONG_RUNNING_COMMANDS:
            assert is_long_running(svc), f"{name}: `tillflow {command}` is a service; restart: always"


def test_long_running_services_have_healthchecks():
    for name, svc in services().items():
        if is_long_running(svc):
            check = svc.get("healthcheck") or {}
            assert check.get("test") and not check.get("disable"), f"{name} runs for good but has no healthcheck"


def test_every_dependency_has_a_condition_that_fits_it():
    for name, svc in services().items():
        deps = depends_on(svc)
        assert isinstance(deps, dict), f"{name}: depends_on as a list waits for nothing; give conditions"
        for dep, spec in deps.items():
            assert dep in services(), f"{name} depends on unknown service {dep}"
            condition = (spec or {}).get("condition")
            expected = "service_completed_successfully" if is_one_shot(services()[dep]) else "service_healthy"
            assert condition == expected, f"{name} -> {dep}: condition {condition!r}, expected {expected}"


def test_every_one_shot_is_awaited():
    awaited = {dep for svc in services().values() for dep in depends_on(svc)}
    for name, svc in services().items():
        if is_one_shot(svc) and not svc.get("profiles"):  # a profile's tools run on demand (make smoke)
            assert name in awaited, f"one-shot {name} runs, but nothing waits for it to complete"


# ---------------------------------------------------------------- images
def test_every_image_is_pinned_with_a_default():
    for name, svc in services().items():
        assert "image" in svc, f"{name} has no image"
        image = image_of(svc)
        reference = image.split("@", 1)[0]
        repository, _, tag = reference.rpartition(":")
        assert repository and "/" not in tag, f"{name}: image {image} has no tag"
        assert tag != "latest" and re.search(r"\d", tag), f"{name}: image {image} is not pinned to a version"


def test_image_defaults_are_the_versions_env_example_shows():
    documented = documented_values()
    for name, svc in services().items():
        match = INTERPOLATION.fullmatch(svc["image"])
        if match:
            variable, _, default = match.groups()
            assert documented.get(variable) == default, (
                f"{name}: .env.example shows {variable}={documented.get(variable)}, compose pins {default}"
            )


def test_tillflow_image_is_tagged_with_the_project_version():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    for name, svc in tillflow_services().items():
        assert image_of(svc) == f"tillflow:{version}", f"{name}: image {image_of(svc)} is not tillflow:{version}"


# ---------------------------------------------------------------- exposure and secrets
def test_only_the_api_and_grafana_may_publish_ports():
    for name, svc in services().items():
        assert svc.get("network_mode") != "host", f"{name} uses the host network"
        if name not in MAY_PUBLISH:
            assert not svc.get("ports"), f"{name} publishes {svc['ports']}: it stays on the internal network"


def test_published_ports_bind_to_the_configurable_address():
    for name, svc in services().items():
        for port in svc.get("ports") or []:
            assert isinstance(port, str) and port.startswith("${TILLFLOW_BIND:-127.0.0.1}:"), (
                f"{name} publishes {port}: bind it to ${{TILLFLOW_BIND:-127.0.0.1}} (loopback unless opened)"
            )


def test_no_database_or_kafka_port_is_published():
    for name, svc in services().items():
        for port in svc.get("ports") or []:
            text = str(port.get("target") if isinstance(port, dict) else port)
            assert not re.search(r"\b(5432|9092|9093)\b", text), f"{name} publishes {port}"


def test_secrets_are_files_under_secrets_dir():
    top = compose().get("secrets") or {}
    assert top, "no secrets declared"
    for name, spec in top.items():
        assert set(spec) == {"file"}, f"secret {name} must be a file (no environment or external source)"
        assert spec["file"] == f"./secrets/{name}", f"secret {name} must be ./secrets/{name}"


def test_passwords_only_travel_as_secret_files():
    declared = set(compose().get("secrets") or {})
    for name, svc in services().items():
        mounted = {s if isinstance(s, str) else s["source"] for s in svc.get("secrets") or []}
        assert mounted <= declared, f"{name} mounts undeclared secrets {mounted - declared}"
        for key, value in environment(svc).items():
            assert key.endswith("_FILE") or not re.search(r"PASSWORD|SECRET|TOKEN", key), (
                f"{name}: {key} carries a secret in the environment; use {key}_FILE"
            )
            if key.endswith("_FILE") and value.startswith("/run/secrets/"):
                secret = value.removeprefix("/run/secrets/")
                assert secret in mounted, f"{name}: {key} reads {value} but the secret {secret} is not mounted"
        userinfo = environment(svc).get("DATABASE_URL", "").partition("://")[2].rpartition("@")[0]
        assert ":" not in userinfo, f"{name}: DATABASE_URL holds a password; use DATABASE_PASSWORD_FILE"


# ---------------------------------------------------------------- resources and hardening
def test_every_service_has_a_memory_limit_and_they_fit_the_vps():
    total = 0.0
    for name, svc in services().items():
        limit = memory_limit(svc)
        assert limit, f"{name} has no memory limit (mem_limit)"
        if is_long_running(svc):
            replicas = int(resolve(str((svc.get("deploy") or {}).get("replicas", 1))))
            total += mebibytes(limit) * replicas
    budget = VPS_MEMORY_MIB - HOST_RESERVE_MIB
    assert total <= budget, f"long-running services may use {total:.0f} MiB, more than {budget} MiB"


def test_kafka_heap_leaves_room_in_its_container():
    for name, svc in kafka_services().items():
        heap = re.search(r"-Xmx(\d+[kmg])", environment(svc).get("KAFKA_HEAP_OPTS", ""), re.IGNORECASE)
        assert heap, f"{name}: KAFKA_HEAP_OPTS sets no -Xmx (the broker would take 1 GB)"
        assert mebibytes(heap.group(1)) <= KAFKA_HEAP_SHARE * mebibytes(memory_limit(svc)), (
            f"{name}: heap {heap.group(1)} leaves too little of {memory_limit(svc)} for the JVM itself"
        )


def test_every_broker_takes_its_shared_settings_from_kafka_broker_env(tmp_path):
    """One source for what every broker shares: the compose brokers read kafka/broker.env (and
    override none of it), the native brokers render it into server.properties, and the JVM
    options the native brokers run with are its KAFKA_JVM_PERFORMANCE_OPTS."""
    from devstack.kafka import JVM_PERFORMANCE_OPTS, KafkaCluster, KafkaNode, broker_env, broker_properties

    shared = broker_env()
    assert {"KAFKA_MIN_INSYNC_REPLICAS", "KAFKA_DEFAULT_REPLICATION_FACTOR", "KAFKA_JVM_PERFORMANCE_OPTS"} <= set(shared)
    for name, svc in kafka_services().items():
        assert svc.get("env_file") == ["kafka/broker.env"], name
        own = svc.get("environment") or {}
        assert not set(own) & set(shared), f"{name} overrides kafka/broker.env: {sorted(set(own) & set(shared))}"
        assert {k: environment(svc)[k] for k in shared} == shared
    cluster = KafkaCluster.__new__(KafkaCluster)  # no jars needed to render a node's configuration
    cluster.base_dir, cluster.log_dir, cluster.voters = tmp_path, tmp_path / "logs", "1@127.0.0.1:9093"
    node = KafkaNode(cluster, 1, 9092, 9093)
    node.write_config()
    rendered = dict(line.split("=", 1) for line in node.config.read_text().splitlines())
    assert {k: rendered[k] for k in broker_properties(shared)} == broker_properties(shared)
    assert JVM_PERFORMANCE_OPTS == shared["KAFKA_JVM_PERFORMANCE_OPTS"]


def test_every_service_logs_through_the_one_capped_anchor():
    anchor = compose()["x-logging"]
    assert anchor["driver"] == "json-file"
    assert anchor["options"].get("max-size") and anchor["options"].get("max-file")
    for name, svc in services().items():
        assert svc.get("logging") == anchor, f"{name} does not use the x-logging anchor"


def test_every_service_drops_privileges():
    for name, svc in services().items():
        assert svc.get("cap_drop") == ["ALL"], f"{name}: cap_drop: [ALL]"
        assert "no-new-privileges:true" in (svc.get("security_opt") or []), f"{name}: no-new-privileges"
        assert not svc.get("privileged"), f"{name} is privileged"
        if not MAY_WRITE_ROOT.match(name):
            assert svc.get("read_only") is True, f"{name}: read_only: true (with tmpfs where it writes)"


# Images that run as an unprivileged user of their own when compose sets no `user:`.
NON_ROOT_IMAGES = {
    "apache/kafka": "appuser (uid 1000)",
    "prom/prometheus": "nobody",
    "grafana/grafana": "grafana (uid 472)",
    "prometheuscommunity/postgres-exporter": "nobody",
    "prom/alertmanager": "nobody",
}


def test_every_service_runs_as_a_non_root_user():
    for name, svc in services().items():
        user = str(svc.get("user", "")).split(":")[0]
        if user:
            assert user not in ("root", "0"), f"{name} runs as root"
        elif is_tillflow(svc):
            assert re.search(r"^USER 10001", _dockerfile(), re.MULTILINE), "the Tillflow image must set USER"
        else:
            repository = image_of(svc).rsplit(":", 1)[0]
            assert repository in NON_ROOT_IMAGES, f"{name}: set user: (its image {repository} may run as root)"


def test_one_internal_network_joins_everything():
    networks = compose().get("networks") or {}
    internal = [name for name, spec in networks.items() if (spec or {}).get("internal") is True]
    assert len(internal) == 1, f"expected one internal network, found {internal}"
    for name, svc in services().items():
        joined = list(svc.get("networks") or [])
        allowed = joined if name in MAY_PUBLISH | MAY_REACH_OUT else internal
        assert internal[0] in joined and joined == allowed, f"{name} is on {joined}, not only on {internal}"


def test_stateful_services_keep_data_on_named_volumes():
    volumes = compose().get("volumes") or {}
    backups = [(n, environment(s)["BACKUP_DIR"]) for n, s in tillflow_services().items() if s["command"][0] == "backup"]
    assert backups, "no backup service: its dumps need a named volume too"
    for name, mount_point in [("postgres", "/var/lib/postgresql/data"), ("prometheus", "/prometheus"),
                              ("grafana", "/var/lib/grafana"), ("alertmanager", "/alertmanager"), *backups] + [
        (kafka, environment(svc)["KAFKA_LOG_DIRS"]) for kafka, svc in kafka_services().items()
    ]:
        mounts = {parts[1]: parts[0] for parts in (m.split(":") for m in services()[name].get("volumes") or [])}
        assert mounts.get(mount_point) in volumes, f"{name}: {mount_point} is not on a named volume"


def test_postgres_is_checked_with_pg_isready():
    check = services()["postgres"]["healthcheck"]["test"]
    assert "pg_isready" in " ".join(check)
    assert environment(services()["postgres"]).get("POSTGRES_PASSWORD_FILE") == "/run/secrets/postgres_password"


# ---------------------------------------------------------------- Tillflow services
def test_tillflow_commands_are_subcommands():
    known = tillflow_subcommands()
    for name, svc in tillflow_services().items():
        command = svc.get("command")
        assert isinstance(command, list) and command, f'{name}: command must be a list such as ["consume"]'
        assert command[0] in known, f"{name}: `tillflow {command[0]}` is not a subcommand ({sorted(known)})"


def test_every_tillflow_command_runs_with_the_real_cli():
    """`tillflow <command> --help` parses each service's whole command line, options and all."""
    script = Path(sys.executable).with_name("tillflow")
    executable = str(script) if script.exists() else shutil.which("tillflow")
    for name, svc in tillflow_services().items():
        argv = [executable, *svc["command"], "--help"]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, f"{name}: `tillflow {' '.join(svc['command'])}` is refused: {result.stderr}"


class _ReadRecorder(dict):
    """An environment that remembers every name the settings looked up."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__(values)
        self.read: set[str] = set()

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)


def test_every_variable_a_tillflow_service_sets_is_read_by_the_settings(tmp_path):
    """A variable the settings never look up is a typo or a leftover: the service would silently ignore it."""
    from tillflow.config import Settings

    for name, svc in tillflow_services().items():
        env = {key: resolve(value) for key, value in environment(svc).items()}
        for key, value in env.items():
            if key.endswith("_FILE") and value.startswith("/run/secrets/"):
                secret = tmp_path / value.removeprefix("/run/secrets/")
                secret.write_text("a-real-secret-" + secret.name)
                env[key] = str(secret)
        recorder = _ReadRecorder(env)
        Settings.from_env(recorder)
        unread = set(env) - recorder.read
        assert not unread, f"{name} sets {sorted(unread)}, which tillflow/config.py never reads"


def test_tillflow_settings_are_documented():
    documented = documented_variables()
    for name, svc in tillflow_services().items():
        missing = set(environment(svc)) - documented
        assert not missing, f"{name} sets {sorted(missing)}, which .env.example does not document"


def test_compose_variables_are_documented():
    def strings(node):
        if isinstance(node, dict):
            for key, value in node.items():
                yield str(key)
                yield from strings(value)
        elif isinstance(node, list):
            for item in node:
                yield from strings(item)
        elif isinstance(node, str):
            yield node

    used = {m.group(1) for text in strings(compose()) for m in INTERPOLATION.finditer(text)}
    missing = used - documented_variables()
    assert not missing, f"docker-compose.yml reads {sorted(missing)} from the environment; document them"


def test_settings_read_by_config_are_documented():
    config = ROOT / "tillflow" / "config.py"
    source = config.read_text(encoding="utf-8")
    names = set(re.findall(r'(?:env\.get|_int|_float|_secret|_dir)\((?:env,\s*)?"([A-Z][A-Z0-9_]*)"', source))
    secrets = set(re.findall(r'_secret\(env,\s*"([A-Z][A-Z0-9_]*)"\)', source))
    roles = {f"TILLFLOW_{role}_PASSWORD" for role in ("OWNER", "WRITER", "READER", "BACKUP")}
    expected = names | {f"{n}_FILE" for n in secrets | roles} | roles
    missing = expected - documented_variables()
    assert names and not missing, f".env.example does not document {sorted(missing)}"


def test_the_smoke_check_covers_every_tillflow_service():
    """make smoke (and so every deploy) checks the API and each service's metrics endpoint."""
    smoke = services()["smoke"]
    assert smoke["command"] == ["smoke"] and is_one_shot(smoke) and smoke.get("profiles") == ["tools"]
    env = environment(smoke)
    assert env["TILLFLOW_API_URL"] == "http://api:8000"
    checked = dict(item.split("=", 1) for item in env["SMOKE_METRICS_URLS"].split(","))
    for name, svc in tillflow_services().items():
        port = environment(svc).get("METRICS_PORT")
        if is_long_running(svc) and port:
            assert checked.get(name) == f"http://{name}:{port}/metrics", f"make smoke does not check {name}"
    assert "backup" in checked, "make smoke checks that a backup exists through the backup service"
    assert env["DATABASE_URL"].startswith("postgresql://tillflow_owner@"), "it makes and revokes its API token"
    assert "smoke:" in (ROOT / "Makefile").read_text(encoding="utf-8")


def test_the_bootstrap_superuser_is_used_by_migrate_only():
    for name, svc in tillflow_services().items():
        user = environment(svc).get("DATABASE_URL", "").partition("://")[2].partition("@")[0]
        if user == "postgres":
            assert svc["command"][0] == "migrate", f"{name} connects as the superuser"


def test_tillflow_services_reach_every_broker():
    brokers = {f"{name}:9092" for name in kafka_services()}
    for name, svc in tillflow_services().items():
        servers = set(environment(svc).get("KAFKA_BOOTSTRAP_SERVERS", "").split(","))
        assert servers == brokers, f"{name}: KAFKA_BOOTSTRAP_SERVERS should list {sorted(brokers)}"


# ---------------------------------------------------------------- Kafka
def test_kafka_is_three_kraft_nodes_of_one_cluster():
    nodes = kafka_services()
    assert len(nodes) == 3, f"expected three Kafka nodes, found {sorted(nodes)}"
    envs = {name: environment(svc) for name, svc in nodes.items()}
    assert all("KAFKA_ZOOKEEPER_CONNECT" not in env for env in envs.values())
    assert {env["KAFKA_PROCESS_ROLES"] for env in envs.values()} == {"broker,controller"}
    cluster_ids = {env["CLUSTER_ID"] for env in envs.values()}
    assert len(cluster_ids) == 1 and re.fullmatch(r"[A-Za-z0-9_-]{22}", next(iter(cluster_ids)))
    node_ids = {name: env["KAFKA_NODE_ID"] for name, env in envs.items()}
    assert sorted(node_ids.values()) == ["1", "2", "3"]
    voters = {env["KAFKA_CONTROLLER_QUORUM_VOTERS"] for env in envs.values()}
    assert len(voters) == 1
    assert set(next(iter(voters)).split(",")) == {f"{node_ids[name]}@{name}:9093" for name in nodes}
    for name, env in envs.items():
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{name}:9092"
        assert "CONTROLLER" not in env["KAFKA_ADVERTISED_LISTENERS"]


def test_kafka_durability_settings():
    expected = {
        "KAFKA_DEFAULT_REPLICATION_FACTOR": "3",
        "KAFKA_MIN_INSYNC_REPLICAS": "2",
        "KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE": "false",
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "3",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "3",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "2",
    }
    for name, svc in kafka_services().items():
        env = environment(svc)
        actual = {key: env.get(key, "").lower() for key in expected}
        assert actual == expected, f"{name}: {actual}"


def test_kafka_volumes_are_one_per_broker():
    sources = [m.split(":", 1)[0] for svc in kafka_services().values() for m in svc.get("volumes") or []]
    assert len(sources) == 3 and len(set(sources)) == 3, f"each broker needs its own volume: {sources}"


def test_broker_healthcheck_starts_no_jvm():
    """A JVM per probe (kafka-broker-api-versions.sh) cost 1.7 CPU-seconds every 15 s
    per broker, most of an idle stack's CPU: the probe is raw bytes over bash's
    /dev/tcp. tests/integration/test_kafka_healthcheck.py runs it against real brokers."""
    for name, svc in kafka_services().items():
        test = svc["healthcheck"]["test"]
        assert test[:3] == ["CMD", "bash", "-c"], f"{name}: the probe is one bash command"
        script = test[3]
        assert "/dev/tcp/127.0.0.1/9092" in script
        assert not re.search(r"\bjava\b|kafka-[a-z-]+\.sh|kafka-run-class", script), f"{name} probes with a JVM"


def test_the_tillflow_image_is_built_by_one_service():
    """Compose without BuildKit builds a `build:` once per service that has it: one
    service builds, the others run its image and never pull a "tillflow" image."""
    builders = [name for name, svc in tillflow_services().items() if "build" in svc]
    assert builders == ["migrate"], f"services that build the Tillflow image: {builders}"
    for name, svc in tillflow_services().items():
        assert image_of(svc) == image_of(services()["migrate"]), f"{name} runs another image"
        if name != "migrate":
            assert svc.get("pull_policy") == "never", f"{name} may pull a foreign tillflow image"


def test_each_tillflow_service_serves_metrics_on_a_port_of_its_own():
    """A stale DNS-discovered consumer target (a replaced replica's old address, taken
    by another container) must never scrape another service's metrics as the consumer's."""
    ports = {name: environment(svc)["METRICS_PORT"] for name, svc in tillflow_services().items()
             if environment(svc).get("METRICS_PORT")}
    assert len(set(ports.values())) == len(ports) >= 3, f"metrics ports shared: {ports}"
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    (consumer,) = [job for job in config["scrape_configs"] if job["job_name"] == "consumer"]
    (discovery,) = consumer["dns_sd_configs"]
    assert str(discovery["port"]) == ports["consumer"]
    assert discovery["refresh_interval"] in ("5s", "10s"), "a replaced replica's address lingers until refreshed"


def test_topics_are_created_after_every_broker_is_healthy():
    creators = [svc for svc in tillflow_services().values() if svc["command"][0] == "create-topics"]
    assert len(creators) == 1
    assert set(depends_on(creators[0])) >= set(kafka_services())


# ---------------------------------------------------------------- Dockerfile
def _dockerfile() -> str:
    return DOCKERFILE.read_text(encoding="utf-8")


def test_dockerfile_base_is_a_pinned_python_311_bookworm():
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", _dockerfile(), re.MULTILINE)
    assert base and re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base.group(1))
    stages = re.findall(r"^FROM\s+(\S+)", _dockerfile(), re.MULTILINE)
    assert len(stages) >= 2 and all(stage == "${PYTHON_IMAGE}" for stage in stages)


def test_dockerfile_final_stage_is_lean_and_unprivileged():
    final = re.split(r"^FROM\s", _dockerfile(), flags=re.MULTILINE)[-1]
    assert "postgresql-client-15" in final
    assert not re.search(r"\b(gcc|g\+\+|build-essential|clang|libpq-dev|python3-dev)\b", final)
    assert re.search(r"^USER 10001(:10001)?$", final, re.MULTILINE)
    assert re.search(r'^ENTRYPOINT \["tillflow"\]$', final, re.MULTILINE)
    assert "COPY postgres/migrations /app/postgres/migrations" in final
    assert "--no-install-recommends" in final


def test_dockerfile_and_compose_probe_health_the_same_way():
    match = re.search(r"^HEALTHCHECK (?:[^\n]*\\\n)*[^\n]*?\bCMD (\[[^\n]*\])$", _dockerfile(), re.MULTILINE)
    assert match, "the Dockerfile has no HEALTHCHECK in exec form"
    image_check = json.loads(match.group(1))
    compose_check = compose()["x-tillflow"]["healthcheck"]["test"]
    assert compose_check == ["CMD", *image_check]


def test_dockerignore_keeps_secrets_out_of_the_build_context():
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", ".dockerignore should be an allow-list starting with *"
    allowed = [line[1:] for line in lines if line.startswith("!")]
    assert not [a for a in allowed if a.startswith(("secrets", ".env", ".git", ".venv"))]


# ---------------------------------------------------------------- make-secrets
def test_make_secrets_creates_every_compose_secret_once(tmp_path):
    target = tmp_path / "secrets"
    env = {**os.environ, "SECRETS_DIR": str(target)}

    def run() -> str:
        result = subprocess.run(
            ["bash", str(MAKE_SECRETS)], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    first = run()
    expected = set(compose()["secrets"])
    assert {p.name for p in target.iterdir()} == expected
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    values = {}
    for path in target.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o444
        values[path.name] = path.read_text(encoding="utf-8")
        assert re.fullmatch(r"[0-9a-f]{48}", values[path.name]), f"{path.name} is not 24 random bytes in hex"
    assert len(set(values.values())) == len(values), "two secrets share a value"
    assert all(f"created  {target / name}" in first for name in expected)

    second = run()
    assert all(f"kept     {target / name}" in second for name in expected)
    assert {p.name: p.read_text(encoding="utf-8") for p in target.iterdir()} == values, "a secret was overwritten"


def test_the_image_and_the_wheel_hold_what_production_runs_and_nothing_else():
    """The packages the wheel installs, the ones the Dockerfile copies and the ones the build
    context lets in are the same list; no test, bench or native-stack code among them; no
    production module imports a test-only or bench-only dependency."""
    import ast

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    wheel = {name.rstrip("*") for name in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = set(re.findall(r"^COPY (\w+) \./\1$", DOCKERFILE.read_text(encoding="utf-8"), re.MULTILINE))
    allowed = {line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
               if line.startswith("!") and line.endswith("/") and "/" not in line[1:-1]}
    assert wheel == copied == allowed == {"tillflow", "etl", "consumer", "backup"}

    def distribution(requirement: str) -> str:
        return re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")

    runtime = {distribution(r) for r in project["project"]["dependencies"]}
    extras = {distribution(r) for group in project["project"]["optional-dependencies"].values() for r in group}
    assert not runtime & extras, "a dependency is either runtime or an extra"
    # The import names of the extras that production code must not use.
    forbidden = {"kafka", "crc32c", "pandas", "sqlalchemy", "pytest", "hypothesis", "testcontainers", "httpx",
                 "schemathesis", "devstack", "tests", "bench", "support"}
    assert {"kafka-python", "crc32c", "pandas", "sqlalchemy"} <= extras
    for package in sorted(wheel):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                         else [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level
                         else [])
                for name in names:
                    assert name.split(".")[0] not in forbidden, f"{path.relative_to(ROOT)} imports {name}"
    locked = {distribution(line) for line in (ROOT / "requirements.lock").read_text().splitlines()
              if line and not line.startswith("#")}
    assert runtime | extras <= locked, "every dependency, extras too, is pinned in requirements.lock"


# Variables .env.example shows with an example value rather than the default (none has one).
_EXAMPLES_NOT_DEFAULTS = {
    "KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "DATABASE_PASSWORD", "INBOX_DIR", "ARCHIVE_DIR", "FAILED_DIR",
    "BACKUP_DIR", "TILLFLOW_API_URL", "TILLFLOW_OWNER_PASSWORD", "TILLFLOW_WRITER_PASSWORD",
    "TILLFLOW_READER_PASSWORD", "TILLFLOW_BACKUP_PASSWORD", "TILLFLOW_MONITOR_PASSWORD",
}


def test_every_default_env_example_shows_is_the_one_tillflow_config_applies():
    """The defaults are written once, in tillflow/config.py's Settings; .env.example repeats them
    for the admin, and this holds the two together."""
    import dataclasses

    from tillflow.config import Settings

    shown = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match and match.group(1) not in _EXAMPLES_NOT_DEFAULTS:
            shown[match.group(1)] = match.group(2).strip().strip("'")
    assert {"CONSUMER_BATCH_SIZE", "BACKUP_SCHEDULE", "API_MAX_BATCH", "TAX_RATE"} <= set(shown)
    from_example = dataclasses.asdict(Settings.from_env(shown))
    defaults = dataclasses.asdict(Settings.from_env({}))
    differ = {name: (from_example[name], defaults[name]) for name in defaults if from_example[name] != defaults[name]}
    assert differ == {}, f".env.example shows values that are not the defaults: {differ}"
