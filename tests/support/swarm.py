"""Several Docker engines on one machine, joined into one Docker Swarm: "hosts" for tests/swarm.

    python3 tests/support/swarm.py up [N]       # N engines (default 3), a swarm of N managers, labelled
    python3 tests/support/swarm.py load IMAGE.. # the images, from the main engine into every node (by id)
    python3 tests/support/swarm.py kill NODE    # a whole "host" lost: its engine and every process of it, kill -9
    python3 tests/support/swarm.py revive NODE  # the host back: its network up, its engine started again
    python3 tests/support/swarm.py status       # the nodes, as the swarm sees them
    python3 tests/support/swarm.py dns          # (run by up) the hosts' resolver: NXDOMAIN for every name
    python3 tests/support/swarm.py down         # everything removed (engines, namespaces, bridge, iptables)
    DOCKER_HOST=$(python3 tests/support/swarm.py host node1) docker node ls

Each "host" (node1, node2, ...) is a ``dockerd`` in a network namespace of its
own (``/var/run/netns/tfsw-nodeN``) with its own ``--data-root``
(``/var/lib/tillflow-swarm/nodeN``: kept between runs, so images loaded once
stay), ``--exec-root``, ``--pidfile``, socket (``/run/tillflow-swarm/nodeN.sock``),
``--bip`` and ``--cgroup-parent``. The namespaces' veths hang on a host bridge
(``tfsw0``, 10.213.0.1/24; node N is 10.213.0.1N) with an iptables FORWARD
accept rule for it. The engine is entered with ``nsenter --net=`` (``ip netns
exec`` remounts /sys and hides the cgroup mounts dockerd needs).

The "hosts" have no route out of the bridge, and no real resolver: a
resolver on the bridge (``dns``, 10.213.0.1:53, started by ``up``) answers
every name it is asked with NXDOMAIN, at once, as a host's resolver answers a
name it does not know. Without one, Docker's embedded DNS waits out the
unreachable upstream (10 s) for every name Swarm does not know yet, such as a
broker whose task is not healthy yet, and Kafka's start and the clients'
reconnects crawl.

The engine, its containerd and every container of the node share one cgroup
(``tillflow-swarm-nodeN`` in each cgroup v1 controller; the containers' is
their ``--cgroup-parent``), so "the host dies" is: the node's veth goes down
(its peers hear nothing more, as from a dead machine), the freezer cgroup is
frozen, every process in it gets SIGKILL, and it is thawed. All the engines
share this machine's kernel, CPU and disk: a lost "host" here is a lost engine
and network namespace, not lost hardware.

Every node is a manager (three managers keep the swarm's quorum with one lost)
and carries the labels the Swarm stack places by (deploy/swarm.yml):
``tillflow.kafka=N`` on node N, ``tillflow.postgres=true`` and
``tillflow.inbox=true`` on node1 (PostgreSQL's host), ``tillflow.backup=true``
and ``tillflow.monitoring=true`` on the last node (the backups on another host
than the database). Needs root; Python standard library only.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

PREFIX = "tfsw"
BRIDGE = f"{PREFIX}0"
SUBNET = "10.213.0"
DATA = Path(os.environ.get("TILLFLOW_SWARM_DATA", "/var/lib/tillflow-swarm"))
RUN = Path("/run/tillflow-swarm")
CGROUP_ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("freezer", "pids", "memory", "cpu", "cpuacct", "blkio", "devices", "cpuset")
ADDRESS_POOL = "10.214.0.0/16"  # the swarm's overlay networks: apart from the bridge's subnet
START_WITHIN = 90


class SwarmError(RuntimeError):
    pass


def say(text: str) -> None:
    print(f"swarm: {text}", file=sys.stderr, flush=True)


def sh(argv: list[str], *, check: bool = True, timeout: float = 120, env: dict | None = None,
       input: bytes | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, timeout=timeout, env=env, input=input)
    if check and done.returncode != 0:
        raise SwarmError(f"{' '.join(argv)} exited {done.returncode}: "
                         f"{done.stderr.decode(errors='replace').strip()[-2000:]}")
    return done


# ---------------------------------------------------------------- one node
class Node:
    def __init__(self, index: int) -> None:
        self.index = index
        self.name = f"node{index}"
        self.netns = f"{PREFIX}-{self.name}"
        self.address = f"{SUBNET}.{10 + index}"
        self.host_veth = f"{PREFIX}{index}h"
        self.data_root = DATA / self.name
        self.exec_root = RUN / self.name
        self.socket = RUN / f"{self.name}.sock"
        self.host = f"unix://{self.socket}"
        self.cgroup = f"tillflow-swarm-{self.name}"
        self.log = DATA / f"{self.name}.log"

    # -- docker against this node
    def env(self) -> dict:
        return {**os.environ, "DOCKER_HOST": self.host}

    def docker(self, *args: str, check: bool = True, timeout: float = 120,
               input: bytes | None = None) -> subprocess.CompletedProcess:
        return sh(["docker", *args], check=check, timeout=timeout, env=self.env(), input=input)

    def answers(self) -> bool:
        try:
            return self.socket.exists() and self.docker("info", "--format", "{{.ID}}", check=False,
                                                        timeout=10).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    # -- network
    def plumb(self) -> None:
        if not Path(f"/var/run/netns/{self.netns}").exists():
            sh(["ip", "netns", "add", self.netns])
        if sh(["ip", "link", "show", self.host_veth], check=False).returncode != 0:
            sh(["ip", "link", "add", self.host_veth, "type", "veth", "peer", "name", f"{PREFIX}{self.index}n"])
            sh(["ip", "link", "set", f"{PREFIX}{self.index}n", "netns", self.netns])
            sh(["ip", "link", "set", self.host_veth, "master", BRIDGE])
            inside = ["ip", "netns", "exec", self.netns]  # ip only: no cgroup needed
            sh([*inside, "ip", "link", "set", f"{PREFIX}{self.index}n", "name", "eth0"])
            sh([*inside, "ip", "addr", "add", f"{self.address}/24", "dev", "eth0"])
            sh([*inside, "ip", "link", "set", "eth0", "up"])
            sh([*inside, "ip", "link", "set", "lo", "up"])
        self.link(True)

    def link(self, up: bool) -> None:
        sh(["ip", "link", "set", self.host_veth, "up" if up else "down"])

    def unplumb(self) -> None:
        sh(["ip", "link", "del", self.host_veth], check=False)
        sh(["ip", "netns", "del", self.netns], check=False)

    # -- cgroups
    def cgroup_dirs(self) -> list[Path]:
        return [CGROUP_ROOT / c / self.cgroup for c in CONTROLLERS if (CGROUP_ROOT / c).is_dir()]

    def pids(self) -> set[int]:
        found: set[int] = set()
        for top in self.cgroup_dirs():
            for procs in top.rglob("cgroup.procs"):
                try:
                    found |= {int(p) for p in procs.read_text().split()}
                except OSError:
                    pass
        return found

    # -- the engine
    def start(self) -> None:
        if self.answers():
            return
        for path in (self.data_root, self.exec_root):
            path.mkdir(parents=True, exist_ok=True)
        for top in self.cgroup_dirs():
            top.mkdir(exist_ok=True)
        # The engine itself joins the node's cgroups before it starts, so that its containerd
        # and shims are in them too; --cgroup-parent puts the containers below.
        join = "; ".join(f"echo $$ > {d}/cgroup.procs" for d in self.cgroup_dirs())
        # A configuration file of its own: the machine's /etc/docker/daemon.json is the main engine's
        # (a data-root there would clash with --data-root, and the engine would refuse to start).
        config = self.data_root.parent / f"{self.name}.json"
        config.write_text("{}\n")
        dockerd = [
            "dockerd", "--config-file", str(config),
            "--data-root", str(self.data_root), "--exec-root", str(self.exec_root),
            "--pidfile", str(self.exec_root / "dockerd.pid"), "-H", self.host,
            "--bip", f"172.30.{self.index}.1/24", "--cgroup-parent", f"/{self.cgroup}",
            "--storage-driver", "overlay2", "--log-level", "warn", "--dns", f"{SUBNET}.1",
        ]
        script = f"{join}; exec {' '.join(dockerd)}"
        # Detached (the launching shell exits at once): the engine outlives this process.
        launch = (f"nsenter --net=/var/run/netns/{self.netns} setsid sh -c {shlex.quote(script)} "
                  f"</dev/null >>{shlex.quote(str(self.log))} 2>&1 &")
        sh(["sh", "-c", launch])
        deadline = time.monotonic() + START_WITHIN
        while not self.answers():
            if time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace").splitlines()[-20:]
                raise SwarmError(f"{self.name}: dockerd did not answer within {START_WITHIN}s:\n" + "\n".join(tail))
            time.sleep(0.5)

    def kill(self) -> int:
        """The host lost: silence on the wire, then SIGKILL to every process of it at once (frozen first,
        so nothing it runs can react). The number of processes killed."""
        self.link(False)
        freezer = CGROUP_ROOT / "freezer" / self.cgroup
        frozen = freezer.is_dir()
        if frozen:
            (freezer / "freezer.state").write_text("FROZEN")
        pids = self.pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if frozen:
            (freezer / "freezer.state").write_text("THAWED")
        deadline = time.monotonic() + 30
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.2)
        # What a dead machine leaves: no socket, no pid file; the data root is its disk, kept.
        for stale in (self.socket, self.exec_root / "dockerd.pid"):
            stale.unlink(missing_ok=True)
        return len(pids)

    def revive(self) -> None:
        self.link(True)
        self.start()

    def stop(self) -> None:
        """A clean stop of the engine (SIGTERM, then what is left gets SIGKILL)."""
        pidfile = self.exec_root / "dockerd.pid"
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                pass
            deadline = time.monotonic() + 30
            while self.answers() and time.monotonic() < deadline:
                time.sleep(0.5)
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 30
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.2)
        # Mounts the engine made under its exec root and data root (netns, shm, overlay).
        for root in (self.exec_root, self.data_root):
            mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
                      if line.split()[1].startswith(str(root) + "/")]
            for mount in sorted(mounts, key=len, reverse=True):
                sh(["umount", "-l", mount], check=False)
        shutil.rmtree(self.exec_root, ignore_errors=True)
        self.socket.unlink(missing_ok=True)
        for top in self.cgroup_dirs():
            for sub in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(str(p)), reverse=True):
                try:
                    sub.rmdir()
                except OSError:
                    pass
            try:
                top.rmdir()
            except OSError:
                pass

    def forget(self) -> None:
        """What an earlier run left in the engine: its swarm, containers, volumes and networks.
        Images stay (the cache)."""
        self.docker("swarm", "leave", "--force", check=False, timeout=60)
        ids = self.docker("ps", "-aq").stdout.decode().split()
        if ids:
            self.docker("rm", "-f", "-v", *ids, check=False, timeout=300)
        self.docker("volume", "prune", "-f", check=False, timeout=120)
        volumes = self.docker("volume", "ls", "-q").stdout.decode().split()
        if volumes:
            self.docker("volume", "rm", "-f", *volumes, check=False, timeout=120)
        self.docker("network", "prune", "-f", check=False, timeout=120)


# ---------------------------------------------------------------- the cluster
def nodes(count: int = 3) -> list[Node]:
    return [Node(i) for i in range(1, count + 1)]


def existing() -> list[Node]:
    """The nodes this machine has now (namespaces or engines), whatever their count."""
    found = set()
    netns = Path("/var/run/netns")
    if netns.is_dir():
        found |= {int(p.name.removeprefix(f"{PREFIX}-node")) for p in netns.glob(f"{PREFIX}-node*")
                  if p.name.removeprefix(f"{PREFIX}-node").isdigit()}
    if RUN.is_dir():
        found |= {int(p.name.removesuffix(".sock").removeprefix("node")) for p in RUN.glob("node*.sock")
                  if p.name.removesuffix(".sock").removeprefix("node").isdigit()}
    return [Node(i) for i in sorted(found)]


def _iptables_rule() -> list[str]:
    return ["FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"]


def _bridge_up() -> None:
    if sh(["ip", "link", "show", BRIDGE], check=False).returncode != 0:
        sh(["ip", "link", "add", BRIDGE, "type", "bridge"])
        sh(["ip", "addr", "add", f"{SUBNET}.1/24", "dev", BRIDGE])
    sh(["ip", "link", "set", BRIDGE, "up"])
    if sh(["iptables", "-C", *_iptables_rule()], check=False).returncode != 0:
        sh(["iptables", "-I", *_iptables_rule()])


DNS_PIDFILE = RUN / "dns.pid"


def _dns_up() -> None:
    if DNS_PIDFILE.exists() and Path(f"/proc/{DNS_PIDFILE.read_text().strip()}").exists():
        return
    RUN.mkdir(parents=True, exist_ok=True)
    command = f"{shlex.quote(sys.executable)} {shlex.quote(str(Path(__file__).resolve()))} dns"
    done = sh(["sh", "-c", f"setsid {command} </dev/null >/dev/null 2>&1 & echo $!"])
    DNS_PIDFILE.write_text(done.stdout.decode().strip())


def _dns_down() -> None:
    if DNS_PIDFILE.exists():
        try:
            os.kill(int(DNS_PIDFILE.read_text().strip()), signal.SIGTERM)
        except (ProcessLookupError, ValueError):
            pass
        DNS_PIDFILE.unlink(missing_ok=True)


def serve_nxdomain(address: str = f"{SUBNET}.1", port: int = 53) -> None:
    """Answer every DNS query with NXDOMAIN (the question copied, no records)."""
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    while True:
        data, peer = sock.recvfrom(4096)
        if len(data) < 12:
            continue
        flags = 0x8000 | (int.from_bytes(data[2:4], "big") & 0x0100) | 0x0080 | 3  # QR, RD copied, RA, NXDOMAIN
        sock.sendto(data[:2] + flags.to_bytes(2, "big") + data[4:6] + b"\0\0\0\0\0\0" + data[12:], peer)


def up(count: int = 3) -> list[Node]:
    """``count`` engines, each in its namespace, in one swarm of managers, labelled; returns them."""
    if os.geteuid() != 0:
        raise SwarmError("the engines need root")
    _bridge_up()
    _dns_up()
    cluster = nodes(count)
    for node in cluster:
        node.plumb()
        node.start()
        node.forget()
    first = cluster[0]
    first.docker("swarm", "init", "--advertise-addr", first.address, "--default-addr-pool", ADDRESS_POOL)
    token = first.docker("swarm", "join-token", "-q", "manager").stdout.decode().strip()
    for node in cluster[1:]:
        node.docker("swarm", "join", "--token", token, f"{first.address}:2377", timeout=120)
    for node in cluster:
        labels = {"tillflow.kafka": str(node.index)}
        if node.index == 1:
            labels.update({"tillflow.postgres": "true", "tillflow.inbox": "true"})
        if node.index == len(cluster):
            labels.update({"tillflow.backup": "true", "tillflow.monitoring": "true"})
        args = [a for k, v in labels.items() for a in ("--label-add", f"{k}={v}")]
        first.docker("node", "update", *args, node_id(node))
    say(f"{count} engines in one swarm: " + ", ".join(f"{n.name} {n.address} ({n.host})" for n in cluster))
    return cluster


def node_id(node: Node) -> str:
    return node.docker("info", "--format", "{{.Swarm.NodeID}}").stdout.decode().strip()


def down() -> None:
    """Every engine stopped, every namespace, the bridge and the iptables rule removed. The data roots
    (the image cache) are kept, emptied of swarm state, containers and volumes on the next ``up``."""
    for node in existing() or nodes():
        if node.answers():
            node.forget()
        node.stop()
        # dockerd bind-mounts its data root onto itself and undoes it on a clean stop only: an engine
        # killed -9 (a lost host) leaves the mount behind, and the directory cannot be removed.
        while os.path.ismount(node.data_root):
            if sh(["umount", str(node.data_root)], check=False).returncode != 0:
                break
        node.unplumb()
    _dns_down()
    if sh(["ip", "link", "show", BRIDGE], check=False).returncode == 0:
        sh(["ip", "link", "del", BRIDGE], check=False)
    while sh(["iptables", "-C", *_iptables_rule()], check=False).returncode == 0:
        sh(["iptables", "-D", *_iptables_rule()], check=False)


def image_id(name: str, host: str | None = None) -> str | None:
    env = {**os.environ, **({"DOCKER_HOST": host} if host else {})}
    env.pop("DOCKER_HOST", None) if host is None else None
    done = sh(["docker", "image", "inspect", "--format", "{{.Id}}", name], check=False, env=env)
    return done.stdout.decode().strip() if done.returncode == 0 else None


def load(images: list[str], cluster: list[Node]) -> dict[str, list[str]]:
    """Each image, from the main engine into every node that lacks that very image (compared by id):
    ``docker save | docker load``. {node: images loaded}."""
    loaded: dict[str, list[str]] = {}
    for node in cluster:
        missing = [name for name in images if image_id(name, node.host) != image_id(name)]
        if not missing:
            continue
        save = subprocess.Popen(["docker", "save", *missing], stdout=subprocess.PIPE,
                                env={k: v for k, v in os.environ.items() if k != "DOCKER_HOST"})
        done = subprocess.run(["docker", "load", "-q"], stdin=save.stdout, capture_output=True, env=node.env(),
                              timeout=1200)
        save.stdout.close()
        if save.wait() != 0 or done.returncode != 0:
            raise SwarmError(f"{node.name}: docker save | docker load of {missing} failed: "
                             f"{done.stderr.decode(errors='replace')[-1000:]}")
        loaded[node.name] = missing
    return loaded


def remove_other_tags(repository: str, keep: list[str], cluster: list[Node]) -> list[str]:
    """Every image of ``repository`` on the nodes but those in ``keep`` removed (the releases earlier
    runs rolled out: the data roots are kept between runs, and would otherwise fill the disk). What went."""
    removed = []
    for node in cluster:
        out = node.docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}", repository, check=False)
        stale = [name for name in out.stdout.decode().split() if name not in keep and not name.endswith(":<none>")]
        if stale:
            node.docker("image", "rm", *stale, check=False)
            removed += [f"{node.name}:{name}" for name in stale]
    return removed


def status() -> list[dict]:
    for node in existing():
        if node.answers():
            out = node.docker("node", "ls", "--format", "{{json .}}", check=False).stdout.decode()
            return [json.loads(line) for line in out.splitlines() if line.strip()]
    return []


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    command, args = argv[0], argv[1:]
    try:
        if command == "up":
            up(int(args[0]) if args else 3)
        elif command == "down":
            down()
        elif command == "load":
            print(json.dumps(load(args, existing())))
        elif command == "kill":
            print(f"{Node(int(args[0].removeprefix('node'))).kill()} processes killed")
        elif command == "revive":
            Node(int(args[0].removeprefix("node"))).revive()
        elif command == "host":
            print(Node(int(args[0].removeprefix("node"))).host)
        elif command == "dns":
            serve_nxdomain()
        elif command == "status":
            for row in status():
                print(row.get("Hostname"), row.get("Status"), row.get("Availability"), row.get("ManagerStatus"))
        else:
            print(__doc__)
            return 2
    except SwarmError as exc:
        say(str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
