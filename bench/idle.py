"""What the whole compose stack costs doing nothing (``make bench-idle``).

``python -m bench.idle [--seconds 60] [--settle 45]`` brings docker-compose.yml
up from a copy of the checkout (as tests/stack does: its own .env, secrets and
inbox; Grafana only where its image exists), waits until every service is
healthy, lets it settle, then measures over SECONDS the CPU time of

* every container of the stack (cgroup ``cpuacct.usage``: the services, and
  the healthcheck processes Docker runs inside them), and
* the engine (dockerd, containerd and the containers' shims, from /proc), which
  starts each healthcheck,

as a fraction of one core, in two cases measured in the same run:

``jvm_probe``   the brokers' former healthcheck, a JVM per probe
                (``kafka-broker-api-versions.sh``; bench/idle-jvm-probe.yml)
``raw_probe``   docker-compose.yml as it is: an ApiVersions request as raw
                bytes over bash's /dev/tcp

Prints both, their ratio and the per-service breakdown, and writes
``bench/results/idle.json``. Target (issue 14): the stack under 0.15 of a core.
The stack is removed afterwards, volumes included (``--keep`` keeps it).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from support.compose import ComposeStack  # noqa: E402

RESULTS = REPO / "bench" / "results" / "idle.json"
CGROUP_CPU = Path("/sys/fs/cgroup/cpuacct/docker")
ENGINE = ("dockerd", "containerd", "containerd-shim", "containerd-shim-runc-v2")
TICKS = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"[bench.idle] {message}", file=sys.stderr, flush=True)


def container_cpu_ns(container_id: str) -> int:
    for path in (CGROUP_CPU / container_id / "cpuacct.usage",
                 Path(f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope/cpu.stat")):
        if path.exists():
            text = path.read_text()
            if path.name == "cpu.stat":  # cgroup v2: usage_usec
                return int(text.split("usage_usec")[1].split()[0]) * 1000
            return int(text)
    raise FileNotFoundError(f"no CPU accounting found for container {container_id}")


def engine_cpu_seconds() -> float:
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        if name in ENGINE or name.startswith("containerd-shim"):
            fields = stat[stat.rindex(")") + 2:].split()
            total += (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime
    return total


def measure(stack: ComposeStack, seconds: float) -> dict:
    containers = {c["ID"]: c["Service"] for c in stack.containers() if c["State"] == "running"}
    full = {stack.inspect(cid)["Id"]: service for cid, service in containers.items()}
    before = {cid: container_cpu_ns(cid) for cid in full}
    engine_before = engine_cpu_seconds()
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    per_service: dict[str, float] = {}
    for cid, service in full.items():
        used = (container_cpu_ns(cid) - before[cid]) / 1e9
        per_service[service] = per_service.get(service, 0.0) + used / elapsed
    engine = (engine_cpu_seconds() - engine_before) / elapsed
    containers_total = sum(per_service.values())
    return {
        "seconds": round(elapsed, 1),
        "containers_cores": round(containers_total, 4),
        "engine_cores": round(engine, 4),
        "stack_cores": round(containers_total + engine, 4),
        "per_service_cores": {k: round(v, 4) for k, v in sorted(per_service.items())},
    }


def bring_up(stack: ComposeStack, files: list[str], settle: float) -> None:
    stack.env["COMPOSE_FILE"] = ":".join(files)
    stack.compose("up", "-d", "--build", "--remove-orphans", timeout=1800)
    services = stack.services()
    log(f"waiting for {len(services)} services to be healthy")
    stack.wait_healthy(services, 600)
    log(f"healthy; settling {settle:.0f} s")
    time.sleep(settle)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--settle", type=float, default=45.0)
    parser.add_argument("--keep", action="store_true", help="leave the stack running afterwards")
    args = parser.parse_args(argv)

    subprocess.run(["bash", str(REPO / "scripts" / "docker-engine")], check=True)
    subprocess.run([sys.executable, str(REPO / "tests" / "images" / "build")], check=True)
    workdir = REPO / "build" / "bench-idle" / "tillflow"
    subprocess.run(["rm", "-rf", str(workdir.parent)], check=True)
    stack = ComposeStack(workdir, {"TILLFLOW_API_PORT": "18000", "GRAFANA_PORT": "13000"})
    stack.prepare()
    grafana = not stack.without_grafana
    if not grafana:
        log("WITHOUT GRAFANA: its image cannot be had here (docs/images.md); every other service is measured")
    base = ["docker-compose.yml"] + ([] if grafana else ["tests/stack/without-grafana.yml"])
    results: dict[str, dict] = {}
    try:
        stack.down()
        for case, files in (("jvm_probe", base + ["bench/idle-jvm-probe.yml"]), ("raw_probe", base)):
            log(f"{case}: up")
            bring_up(stack, files, args.settle)
            log(f"{case}: measuring {args.seconds:.0f} s")
            results[case] = measure(stack, args.seconds)
            log(f"{case}: {results[case]['stack_cores']:.3f} of a core")
    finally:
        if not args.keep:
            stack.down()

    print(f"\nIdle CPU of the whole stack over {args.seconds:.0f} s, fraction of one core "
          f"(containers + engine){'' if grafana else ', without Grafana'}:")
    services = sorted({s for r in results.values() for s in r["per_service_cores"]})
    print(f"  {'':<20}{'jvm_probe':>12}{'raw_probe':>12}")
    for service in services:
        print(f"  {service:<20}" + "".join(f"{results[c]['per_service_cores'].get(service, 0):>12.3f}"
                                          for c in results))
    for key in ("containers_cores", "engine_cores", "stack_cores"):
        print(f"  {key:<20}" + "".join(f"{results[c][key]:>12.3f}" for c in results))
    ratio = results["raw_probe"]["stack_cores"] / results["jvm_probe"]["stack_cores"]
    print(f"  raw_probe / jvm_probe = {ratio:.2f}; target: raw_probe under 0.15 of a core "
          f"({'met' if results['raw_probe']['stack_cores'] < 0.15 else 'NOT met'})")
    RESULTS.write_text(json.dumps({
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "grafana": grafana, "seconds": args.seconds, "settle": args.settle,
        "cases": results, "raw_over_jvm": round(ratio, 3),
    }, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
