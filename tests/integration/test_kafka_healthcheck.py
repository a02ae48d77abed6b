"""The brokers' healthcheck in docker-compose.yml, run as written against real brokers.

The probe sends a Kafka ApiVersions request as raw bytes over bash's /dev/tcp
and checks the answer's correlation id and error code: no JVM per probe. Here
it runs against the test cluster's brokers (in their containers where Docker
answers, on the host for native brokers), against a stopped broker, and against
a port that answers but is not Kafka (PostgreSQL's).
"""
from __future__ import annotations

import resource
import signal
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import yaml

ROOT = Path(__file__).resolve().parents[2]


def compose_probe() -> list[str]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    test = compose["services"]["kafka-1"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    # Compose turns $$ into $ before the command runs.
    return [arg.replace("$$", "$") for arg in test[1:]]


def probe(port: int, node=None) -> int:
    """The compose probe's exit status against 127.0.0.1:port (inside node's container if it has one)."""
    argv = [arg.replace("/127.0.0.1/9092", f"/127.0.0.1/{port}") for arg in compose_probe()]
    container = getattr(node, "container", None)
    if container is not None:
        return container.get_wrapped_container().exec_run(argv).exit_code
    return subprocess.run(argv, capture_output=True, timeout=30).returncode


def test_the_probe_passes_on_every_serving_broker_and_costs_no_jvm(running_kafka):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert [probe(node.port, node) for node in running_kafka.nodes] == [0, 0, 0]
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # A JVM probe (kafka-broker-api-versions.sh) took ~1.7 CPU-seconds each.
    assert cpu < 0.5, f"three probes took {cpu:.2f} CPU-seconds"


def test_the_probe_fails_on_a_stopped_broker(running_kafka):
    victim = running_kafka.nodes[2]
    victim.stop(signal.SIGKILL)
    try:
        assert probe(victim.port) != 0  # from the host: nothing serves that port now
    finally:
        victim.start()
        victim.wait_listening()
    running_kafka.wait_ready()
    assert probe(victim.port, victim) == 0


def test_the_probe_fails_on_a_port_that_is_not_kafka(running_postgres):
    port = urlsplit(running_postgres.url()).port
    assert subprocess.run(
        [arg.replace("/127.0.0.1/9092", f"/127.0.0.1/{port}") for arg in compose_probe()],
        capture_output=True, timeout=30,
    ).returncode != 0
