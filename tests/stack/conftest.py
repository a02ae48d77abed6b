"""The compose stack for tests/stack: built and started once per run, removed afterwards.

`make test` runs these after the rest of the suite, in a pytest run of their
own: they restart the Docker daemon, which would stop the session's other
containers. They need a Docker engine (scripts/docker-engine makes one answer)
and the images docker-compose.yml names: the official ones where a registry
answers, else the stand-ins of tests/images (see docs/images.md).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from devstack.proc import free_port
from support.compose import PROJECT, ROOT, ComposeStack

# Fixed volume names (docker-compose.yml): a stack of the same names that this
# test did not make is somebody's data, never to be touched.
HEALTHY_WITHIN = 420


def _foreign_volumes() -> list[str]:
    done = subprocess.run(["docker", "volume", "ls", "--format", "{{json .}}"], capture_output=True, text=True,
                          check=True)
    foreign = []
    for line in done.stdout.splitlines():
        volume = json.loads(line)
        if volume["Name"].startswith("tillflow-") and f"com.docker.compose.project={PROJECT}" not in volume.get(
                "Labels", ""):
            foreign.append(volume["Name"])
    return foreign


def docker_host_address() -> str:
    done = subprocess.run(["docker", "network", "inspect", "bridge", "--format",
                           "{{(index .IPAM.Config 0).Gateway}}"], capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.fixture(scope="session")
def stack(tmp_path_factory, watchdog_dir) -> ComposeStack:
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.fail("no Docker engine answers: run `make test` (scripts/docker-engine starts one) "
                    "or set TILLFLOW_TEST_NATIVE=1 to leave the compose tests out", pytrace=False)
    foreign = _foreign_volumes()
    if foreign:
        pytest.fail(f"volumes {foreign} exist and were not made by these tests: an installation of Tillflow "
                    "runs on this engine; run the compose tests elsewhere", pytrace=False)
    subprocess.run([sys.executable, str(ROOT / "tests" / "images" / "build")], check=True)
    workdir = tmp_path_factory.mktemp("compose") / "tillflow"
    stack = ComposeStack(workdir, {
        "TILLFLOW_API_PORT": str(free_port()),
        "GRAFANA_PORT": str(free_port()),
        "WATCH_INTERVAL_SECONDS": "1",
        "WATCH_SETTLE_SECONDS": "1",
        # Alertmanager posts to a receiver the alert test runs on this host, at the
        # address the host has on Docker's default bridge (reachable from the
        # containers of any bridge network that may leave the host: "frontend").
        "ALERT_WEBHOOK_URL": f"http://{docker_host_address()}:{free_port()}/alerts",
        # The resolved notification goes out at the group's next flush: 1 minute instead of 5 (the
        # setting an admin has; the rule's `for` and group_wait stay the production ones).
        "ALERT_GROUP_INTERVAL": "1m",
    })
    stack.prepare()
    stack.down()  # what an interrupted earlier run left
    stack.undo_on_kill(watchdog_dir)
    services = stack.services()
    if stack.without_grafana:
        print(f"\ncompose stack: WITHOUT GRAFANA: its image ({stack.grafana_image}) cannot be pulled here and has no "
              "stand-in (docs/images.md); every other service runs.", flush=True)
    started = time.monotonic()
    stack.started_services = services
    try:
        stack.up_output = stack.make("up", timeout=1800)  # the README's command: docker compose up -d --build
        stack.wait_healthy(services, HEALTHY_WITHIN)
        stack.first_up_seconds = time.monotonic() - started
        print(f"\ncompose stack: built, started and healthy in {stack.first_up_seconds:.0f} s", flush=True)
        yield stack
    finally:
        if os.environ.get("TILLFLOW_STACK_KEEP") != "1":  # keep it to look at a failure
            stack.down()
