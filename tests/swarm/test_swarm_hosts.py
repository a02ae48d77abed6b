"""The Swarm stack across three "hosts": a whole host lost, and a push to main rolled out by
deploy/redeploy, under steady load.

One stack for the session (tests/swarm/conftest.py): three Docker engines on
this machine, each in a network namespace of its own, joined into one swarm,
running deploy/swarm.py's stack of docker-compose.yml. Tills post 40
transactions a second through the API (one host's address after another on a
failure, with the same ids: the documented retry). Each test is judged on sets
of ids: every acknowledged transaction stored, none stored twice, nothing stored
that was never sent. The engines share this machine's kernel, CPU and disk: a
lost host is an engine, its containers and its network namespace killed (-9),
not lost hardware.

The tests run in file order and share the stack.
"""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from support.pipeline import wait_for
from support.swarm_stack import STACK, SwarmStack
from support.tills import SteadyTills

RATE_BATCH, RATE_EVERY = 5, 0.125  # 40 transactions a second
API_GAP_LIMIT = 90.0  # seconds: the longest a lost host may keep the API from acknowledging
STORED_WITHIN = 180

# The first test also pays for the engines, the images and the deploy (the session fixture).
pytestmark = pytest.mark.timeout(1500)


def exactly_once(stack: SwarmStack, tills: SteadyTills) -> dict:
    """Wait until every acknowledged id is stored; the figures (acknowledged, stored, lost, duplicates)."""
    def all_stored():
        return stack.stored(tills.acknowledged)[0] == tills.acknowledged

    try:
        wait_for(all_stored, STORED_WITHIN, "every acknowledged transaction stored", every=3)
    except AssertionError:
        pass  # counted below, as lost
    stored, rows = stack.stored(tills.sent)
    figures = {"sent": len(tills.sent), "acknowledged": len(tills.acknowledged), "stored": len(stored),
               "lost": len(tills.acknowledged - stored), "duplicates": rows - len(stored),
               "stored_never_acknowledged": len(stored - tills.acknowledged)}
    return figures


def test_the_stack_runs_one_broker_per_host_and_postgres_on_its_host(swarm_stack: SwarmStack):
    for node in swarm_stack.nodes:
        running = swarm_stack.tasks_on(node)
        assert f"{STACK}_kafka-{node.index}" in running, (node.name, running)
        assert [s for s in running if s.startswith(f"{STACK}_kafka-")] == [f"{STACK}_kafka-{node.index}"]
    assert f"{STACK}_postgres" in swarm_stack.tasks_on(swarm_stack.nodes[0])
    print(f"\nswarm: timings {{{', '.join(f'{k}: {v:.0f} s' for k, v in swarm_stack.timings.items())}}}")
    for node in swarm_stack.nodes:
        print(f"swarm: {node.name}: {', '.join(s.removeprefix(STACK + '_') for s in swarm_stack.tasks_on(node))}")


def test_a_backup_and_the_smoke_check_pass(swarm_stack: SwarmStack):
    # As the README's set-up says: the first backup by hand (the backup service may have started
    # before migrate finished, and then waits for its schedule), then the smoke check.
    backup = swarm_stack.swarm_py("run", "backup", "backup", "run", timeout=400, check=False)
    assert backup.returncode == 0, backup.stdout[-3000:] + backup.stderr[-2000:]
    done = swarm_stack.swarm_py("run", "smoke", timeout=400, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def test_a_whole_broker_host_lost_under_load_loses_nothing_and_its_broker_rejoins(
        swarm_stack: SwarmStack, token: str):
    # The host to lose: a broker's, not PostgreSQL's (node1), preferring one that runs an API replica.
    candidates = swarm_stack.nodes[1:]
    victim = max(candidates, key=lambda n: (f"{STACK}_api" in swarm_stack.tasks_on(n),
                                            f"{STACK}_consumer" in swarm_stack.tasks_on(n)))
    on_it = swarm_stack.tasks_on(victim)
    with SteadyTills(swarm_stack.urls(), token, RATE_BATCH, RATE_EVERY) as tills:
        tills.wait_acknowledged(200)
        killed_at = time.monotonic()
        killed = victim.kill()
        took = tills.wait_acknowledged(1, timeout=API_GAP_LIMIT)
        tills.wait_acknowledged(400, timeout=180)
        gap = tills.longest_gap(since=killed_at - 5)
        failed = tills.failures_between(killed_at, time.monotonic())
        # Kafka still takes writes with two brokers; the lost broker has left the in-sync replicas.
        def isr_without_victim():
            isr = swarm_stack.in_sync()
            return isr if isr and all(victim.index not in r for r in isr.values()) else None

        def isr_whole():
            isr = swarm_stack.in_sync()
            return isr if isr and all(r == [1, 2, 3] for r in isr.values()) else None

        def replicas_elsewhere():
            others = [n for n in swarm_stack.nodes if n is not victim]
            return all(sum(f"{STACK}_{svc}" in swarm_stack.tasks_on(n) for n in others) >= (2 if svc == "api" else 1)
                       for svc in ("api", "consumer"))

        isr_down = wait_for(isr_without_victim, 120, f"kafka-{victim.index} out of the in-sync replicas", every=5)
        rescheduled = wait_for(replicas_elsewhere, 180, "the lost host's API and consumer replicas running elsewhere",
                               every=5)
        assert rescheduled
        revived_at = time.monotonic()
        victim.revive()
        isr_back = wait_for(isr_whole, 300, f"kafka-{victim.index} back in the in-sync replicas", every=5)
        rejoined = time.monotonic() - revived_at
        tills.wait_acknowledged(200, timeout=120)
    figures = exactly_once(swarm_stack, tills)
    print(f"\nhost loss: {victim.name} killed -9 with its engine ({killed} processes; it ran "
          f"{', '.join(s.removeprefix(STACK + '_') for s in on_it)}): "
          f"{figures['acknowledged']} acknowledged, {figures['stored']} stored, {figures['lost']} lost, "
          f"{figures['duplicates']} duplicates, {figures['stored_never_acknowledged']} stored but never "
          f"acknowledged (of {figures['sent']} sent); the API acknowledged again {took:.1f} s after the kill, "
          f"longest time without an acknowledgement {gap:.1f} s, {failed} failed attempts retried; "
          f"in-sync replicas while down {isr_down}; the broker back in sync {rejoined:.0f} s after the host "
          f"returned ({isr_back})", flush=True)
    assert figures["lost"] == 0 and figures["duplicates"] == 0
    assert tills.acknowledged <= tills.sent and figures["stored"] <= figures["sent"]
    assert gap < API_GAP_LIMIT
    assert tills.abandoned == 0
    wait_for(lambda: _converged(swarm_stack), 300, "every service converged again", every=5)


def _converged(stack: SwarmStack) -> bool:
    return stack.swarm_py("wait", "--timeout", "5", check=False, timeout=120).returncode == 0


def test_a_push_to_main_is_rolled_out_by_redeploy_under_load_and_loses_nothing(swarm_stack: SwarmStack, token: str):
    """Point 4 and the rolling update at once: main moves; deploy/redeploy, run on the manager as the
    post-receive hook runs it (its settings from .env, as the README's set-up writes them), builds
    tillflow:git-<commit>, hands it to the three hosts, rolls it out while the tills post, waits until
    every service converged and is healthy, and runs `make smoke`."""
    before = swarm_stack.swarm_py("image").stdout.strip()
    commit = swarm_stack.checkout.push_change(
        "tillflow/__init__.py", lambda text: text + "# a release rolled out by tests/swarm\n",
        "a release for the swarm test")
    release = f"tillflow:git-{commit[:12]}"
    try:
        with SteadyTills(swarm_stack.urls(), token, RATE_BATCH, RATE_EVERY) as tills:
            tills.wait_acknowledged(200)
            started = time.monotonic()
            done = subprocess.run([sys.executable, "deploy/redeploy"], cwd=swarm_stack.dir, env=swarm_stack.env,
                                  capture_output=True, text=True, timeout=1500)
            took = time.monotonic() - started
            tills.wait_acknowledged(200, timeout=120)
            gap = tills.longest_gap(since=started)
            failed = tills.failures_between(started, time.monotonic())
        transcript = done.stdout[-6000:] + done.stderr[-2000:]
        assert done.returncode == 0, transcript
        assert f"deployed {commit[:12]}" in done.stdout and "make --no-print-directory smoke" in done.stdout, transcript
        assert swarm_stack.swarm_py("image").stdout.strip() == release != before
        for service in ("api", "consumer", "watcher", "backup"):
            image = swarm_stack.docker("service", "inspect", "--format",
                                       "{{.Spec.TaskTemplate.ContainerSpec.Image}}", f"{STACK}_{service}").stdout
            assert image.strip().split("@")[0] == release, (service, image)
        assert swarm_stack.checkout.git("rev-parse", "HEAD") == commit
        figures = exactly_once(swarm_stack, tills)
    finally:
        subprocess.run(["docker", "image", "rm", release], capture_output=True)  # this machine's engine built it
    print(f"\nredeploy of {commit[:12]} ({before} -> {release}) in {took:.0f} s under load: "
          f"{figures['acknowledged']} acknowledged, {figures['stored']} stored, {figures['lost']} lost, "
          f"{figures['duplicates']} duplicates; longest time without an acknowledgement {gap:.1f} s; {failed} "
          f"failed attempts, each retried with the same ids and then acknowledged ({tills.abandoned} abandoned)",
          flush=True)
    assert figures["lost"] == 0 and figures["duplicates"] == 0
    assert tills.abandoned == 0
