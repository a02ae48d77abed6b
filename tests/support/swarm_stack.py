"""The Swarm stack under test: deploy/swarm.py driven in a copy of the checkout, on the engines of
support.swarm, and what the tests read from it (tasks per host, stored ids, Kafka's in-sync replicas)."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from support import swarm

STACK = "tillflow"
DEPLOY_WITHIN = 600  # seconds for the stack to converge, healthy


@dataclass
class SwarmStack:
    dir: Path
    nodes: list
    env: dict
    api_port: int
    services: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    checkout: object = None  # the ComposeStack that prepared dir: a git work tree with origin beside it

    @property
    def manager(self) -> swarm.Node:
        return self.nodes[0]

    def urls(self) -> list[str]:
        return [f"http://{node.address}:{self.api_port}" for node in self.nodes]

    def swarm_py(self, *args: str, timeout: float = DEPLOY_WITHIN + 60, check: bool = True,
                 env: dict | None = None) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "deploy/swarm.py", *args], cwd=self.dir,
                              env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"deploy/swarm.py {' '.join(args)} exited {done.returncode}:\n"
                                 f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
        return done

    def docker(self, *args: str, node: swarm.Node | None = None, check: bool = True,
               timeout: float = 120) -> subprocess.CompletedProcess:
        done = subprocess.run(["docker", *args], env=(node or self.manager).env(), capture_output=True, text=True,
                              timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} exited {done.returncode}: {done.stderr[-2000:]}")
        return done

    def tasks_on(self, node: swarm.Node) -> list[str]:
        """The stack's containers running on one node: [service name, ...]."""
        out = self.docker("ps", "--format", "{{.Label \"com.docker.swarm.service.name\"}}", node=node,
                          check=False).stdout
        return sorted(line for line in out.split() if line.startswith(f"{STACK}_"))

    def container(self, service: str) -> tuple[swarm.Node, str]:
        """The node and id of the one running container of ``service``."""
        for node in self.nodes:
            if not node.answers():
                continue
            found = self.docker("ps", "-q", "--filter", f"label=com.docker.swarm.service.name={STACK}_{service}",
                                node=node, check=False).stdout.split()
            if found:
                return node, found[0]
        raise AssertionError(f"no running container of {service}")

    def exec(self, service: str, *argv: str, timeout: float = 120) -> str:
        node, cid = self.container(service)
        return self.docker("exec", cid, *argv, node=node, timeout=timeout).stdout

    def psql(self, sql: str) -> list[tuple[str, ...]]:
        out = self.exec("postgres", "psql", "-U", "postgres", "-d", "tillflow", "-v", "ON_ERROR_STOP=1", "-AtF",
                        "\t", "-c", sql)
        return [tuple(line.split("\t")) for line in out.splitlines() if line]

    def stored(self, ids: set[str]) -> tuple[set[str], int]:
        """(the ids of ``ids`` stored, how many rows they are)."""
        found: set[str] = set()
        rows = 0
        chunk = sorted(ids)
        for start in range(0, len(chunk), 2000):
            part = ",".join(f"'{i}'" for i in chunk[start:start + 2000])
            got = [r[0] for r in self.psql(f"SELECT id FROM sales.transactions WHERE id IN ({part})")]
            rows += len(got)
            found |= set(got)
        return found, rows

    def in_sync(self, topic: str = "tillflow.transactions") -> dict[int, list[int]]:
        """Partition -> its in-sync replicas, as the cluster reports them to librdkafka's admin client,
        asked from an API container (a Kafka CLI would start a JVM beside a broker in its memory limit)."""
        code = ("import json; from confluent_kafka import TopicCollection; "
                "from confluent_kafka.admin import AdminClient; "
                "a = AdminClient({'bootstrap.servers': 'kafka-1:9092,kafka-2:9092,kafka-3:9092'}); "
                f"d = a.describe_topics(TopicCollection([{topic!r}]))[{topic!r}].result(timeout=20); "
                "print(json.dumps({p.id: sorted(n.id for n in p.isr) for p in d.partitions}))")
        try:
            out = self.exec("api", "python", "-c", code, timeout=60)
        except AssertionError:
            return {}
        return {int(k): v for k, v in json.loads(out.strip().splitlines()[-1]).items()}
