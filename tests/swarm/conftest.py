"""The Swarm stack on three Docker engines of this machine, for tests/swarm (make test-swarm).

Three ``dockerd`` in network namespaces of their own, joined into one swarm of
three managers and labelled as the README's "Growing past one VPS" labels
three hosts (tests/support/swarm.py); the pinned images loaded into each from
the main engine (``docker save | docker load``, skipped for an image the node
already has under the same id: the engines' data roots are kept between runs);
then ``deploy/swarm.py deploy`` from a copy of the checkout with its own
secrets, as an admin deploys it. Grafana is left out where its image cannot be
had (as in tests/stack). This kernel has no IPVS, so Swarm's virtual addresses
and routing mesh cannot work here: the stack runs with
``SWARM_ENDPOINT_MODE=dnsrr`` (every service found by DNS, the API published on
the port of each host it runs on) and the tills are given every host's address.
Everything (engines, namespaces, bridge, iptables rule) is removed afterwards,
and by the session's watchdog if pytest is killed.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devstack.proc import free_port
from support import swarm
from support.compose import ROOT, ComposeStack, image_present
from support.services import compose_image
from support.swarm_stack import DEPLOY_WITHIN, STACK, SwarmStack

def _wait_for_bench_lock() -> None:
    """The other engineer's benchmarks hold /tmp/tillflow-bench.lock: heavy steps wait for it."""
    lock = Path("/tmp/tillflow-bench.lock")
    announced = False
    while lock.exists():
        if not announced:
            print("\nswarm: waiting for /tmp/tillflow-bench.lock (a benchmark runs)", flush=True)
            announced = True
        time.sleep(20)


@pytest.fixture(scope="session")
def swarm_stack(tmp_path_factory, watchdog_dir) -> SwarmStack:
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.fail("no Docker engine answers: run `make test-swarm` (scripts/docker-engine starts one)", pytrace=False)
    if os.geteuid() != 0 or not shutil.which("nsenter"):
        pytest.fail("the swarm test starts Docker engines in network namespaces: it needs root and nsenter",
                    pytrace=False)
    _wait_for_bench_lock()
    timings: dict = {}
    started = time.monotonic()
    subprocess.run([sys.executable, str(ROOT / "tests" / "images" / "build")], check=True)
    workdir = tmp_path_factory.mktemp("swarm") / "tillflow"
    api_port = free_port()
    prepared = ComposeStack(workdir, {"TILLFLOW_API_PORT": str(api_port), "SWARM_ENDPOINT_MODE": "dnsrr",
                                      "SWARM_INBOX": str(workdir / "inbox"), "WATCH_INTERVAL_SECONDS": "1"})
    prepared.prepare()
    tillflow_image = compose_image("TILLFLOW_IMAGE")
    # The Tillflow image of this checkout, built as `make up` builds it (cached layers: seconds).
    prepared.sh(["docker", "build", "-q", "-t", tillflow_image, "."], timeout=1800,
                env={"DOCKER_BUILDKIT": "0"})
    images = [tillflow_image] + [compose_image(v) for v in ("KAFKA_IMAGE", "POSTGRES_IMAGE", "PROMETHEUS_IMAGE",
                                                            "ALERTMANAGER_IMAGE", "POSTGRES_EXPORTER_IMAGE")]
    without = [] if image_present(compose_image("GRAFANA_IMAGE")) else ["grafana"]
    if without:
        print(f"\nswarm stack: WITHOUT GRAFANA: its image ({compose_image('GRAFANA_IMAGE')}) cannot be pulled here "
              "and has no stand-in (docs/images.md); every other service runs.", flush=True)
    timings["prepare"] = time.monotonic() - started

    from support import watchdog

    undo = watchdog.register(watchdog_dir, "swarm-engines",
                             [sys.executable, str(ROOT / "tests" / "support" / "swarm.py"), "down"], cwd=ROOT)
    try:
        mark = time.monotonic()
        nodes = swarm.up(3)
        timings["engines"] = time.monotonic() - mark
        mark = time.monotonic()
        loaded = swarm.load(images + [i for i in [compose_image("GRAFANA_IMAGE")] if not without], nodes)
        removed = swarm.remove_other_tags(tillflow_image.split(":")[0], [tillflow_image], nodes)
        timings["images"] = time.monotonic() - mark
        print(f"\nswarm: images loaded {loaded or 'none (cached by id)'} in {timings['images']:.0f} s"
              f"{f'; earlier runs’ releases removed: {removed}' if removed else ''}", flush=True)
        # The README's set-up on host1: the deploy settings in .env. The engines have no route out (no
        # PyPI, no Debian mirror), so the image of a release is built by this machine's engine, which
        # hands it to the three hosts (SWARM_BUILD_HOST).
        with (workdir / ".env").open("a", encoding="utf-8") as dotenv:
            dotenv.write(f"DEPLOY_MODE=swarm\nSWARM_NODE_HOSTS={' '.join(n.host for n in nodes[1:])}\n"
                         f"SWARM_BUILD_HOST={os.environ.get('DOCKER_HOST') or 'unix:///var/run/docker.sock'}\n")
        env = {**os.environ, "DOCKER_HOST": nodes[0].host, "SWARM_WITHOUT": ",".join(without),
               "SWARM": f"{sys.executable} deploy/swarm.py"}
        env.pop("COMPOSE_FILE", None)
        stack = SwarmStack(workdir, nodes, env, api_port, timings=timings, checkout=prepared)
        mark = time.monotonic()
        stack.deploy_output = stack.swarm_py("deploy", "--timeout", str(DEPLOY_WITHIN)).stderr
        timings["deploy"] = time.monotonic() - mark
        print(f"\nswarm: stack deployed, converged and healthy in {timings['deploy']:.0f} s "
              f"(services: {len(swarm_services(stack))}, {', '.join(swarm_services(stack))})", flush=True)
        yield stack
    finally:
        if os.environ.get("TILLFLOW_SWARM_KEEP") != "1":
            swarm.down()
            undo.unlink(missing_ok=True)


def swarm_services(stack: SwarmStack) -> list[str]:
    out = stack.docker("service", "ls", "--format", "{{.Name}}").stdout.split()
    return sorted(name.removeprefix(f"{STACK}_") for name in out)


@pytest.fixture(scope="session")
def token(swarm_stack: SwarmStack) -> str:
    """As the README says: a one-off task of the smoke service's spec runs `tillflow token create`."""
    done = swarm_stack.swarm_py("run", "smoke", "token", "create", "--store", "main", "--name", "swarm-e2e",
                                timeout=300)
    made = done.stdout.strip().splitlines()[-1]
    assert made.startswith("tillflow_"), done.stdout + done.stderr
    return made
