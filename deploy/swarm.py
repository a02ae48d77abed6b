#!/usr/bin/env python3
"""Tillflow on Docker Swarm: the stack file made from docker-compose.yml, deployed, awaited, run once.

    python3 deploy/swarm.py config [--out DIR] [--without SERVICE]   # write DIR/tillflow-stack.yml (+ rendered configs)
    python3 deploy/swarm.py deploy [--stack NAME] [--without SERVICE] # config, docker stack deploy, wait until converged
    python3 deploy/swarm.py wait [--stack NAME] [--timeout S]         # until every service converged and healthy
    python3 deploy/swarm.py run SERVICE [ARGS ...]                     # a one-off task of SERVICE's spec (smoke, migrate ...)
    python3 deploy/swarm.py image                                      # the Tillflow image the running stack uses
    python3 deploy/swarm.py build IMAGE                                # docker build, then into every SWARM_NODE_HOSTS host

The stack file is **generated, never edited, never committed**: docker-compose.yml
is the one source of images, commands, environment, healthchecks, secrets,
volumes and memory limits; deploy/swarm.yml adds only what a swarm needs beyond
it (placement by node label, replicas, update and rollback policies). Every key
of a compose service is either carried over as it is (KEPT) or turned into its
Swarm form (TRANSFORMED below); a key in neither stops the generator, so the two
files cannot drift apart silently (tests/unit/test_swarm_stack.py holds it to
that). The Swarm forms:

* ``${VAR:-default}`` is resolved here, from the environment over ``.env``, as
  Compose does (``docker stack deploy`` reads no ``.env``); ``$$`` stays ``$$``;
* ``mem_limit`` -> ``deploy.resources.limits.memory``; ``restart: always`` ->
  ``restart_policy: any``; a one-shot (``restart: "no"``) -> ``on-failure``: it
  is tried again until it succeeds (there is no ``depends_on`` in a swarm);
* ``tmpfs``, ``shm_size`` -> tmpfs mounts (``/dev/shm`` for the latter);
* ``env_file`` -> inlined into ``environment``;
* a read-only bind mount of a checkout directory (``./prometheus``,
  ``./grafana/...``) -> one Swarm config per file (Prometheus' scrape file is
  rendered for the swarm first: every job finds its targets as ``tasks.<service>``,
  i.e. each replica); a writable bind (the inbox) -> an absolute path on the host
  the service is placed on (``SWARM_INBOX``, default ``./inbox`` made absolute);
* ``secrets`` -> Swarm secrets from the same files, named with a hash of their
  content (a changed file is a new secret; Swarm secrets cannot be changed);
* ``ports`` -> the routing mesh (``mode: ingress``): Swarm publishes on every
  host's every address, so ``TILLFLOW_BIND`` has no effect: firewall the port;
* the networks become overlays; ``backend`` is not ``internal`` (deploy/swarm.yml says why);
* ``depends_on``, ``build``, ``pull_policy``, ``profiles``, ``security_opt``
  (no Swarm form: ``no-new-privileges`` is not applied to Swarm tasks) are dropped.

Environment (all but ``DOCKER_HOST`` also read from ``.env``; the environment wins):
``DOCKER_HOST`` (a manager), ``SWARM_STACK`` (default tillflow), ``SWARM_NODE_HOSTS`` (the other hosts' Docker URLs, for
``build``), ``SWARM_BUILD_HOST`` (the engine that builds, by default the manager: a build host
spares the hosts that serve the tills the build's CPU), ``SWARM_WITHOUT``,
``SWARM_ENDPOINT_MODE`` (``vip``, the default: virtual addresses and the routing mesh;
``dnsrr`` where the kernel has no IPVS: services found by DNS, the API published on
the port of each host it runs on),
``SWARM_INBOX``, ``API_REPLICAS``, ``CONSUMER_REPLICAS``, ``TILLFLOW_IMAGE`` and
every variable docker-compose.yml reads. Python 3.9+ and PyYAML (Debian: python3-yaml).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = "docker-compose.yml"
OVERRIDE_FILE = "deploy/swarm.yml"
STACK_FILE = "tillflow-stack.yml"
DEFAULT_STACK = "tillflow"
DEFAULT_OUT = ".deploy/swarm"

# Compose service keys carried over unchanged: the stack file and Swarm mean the same by them.
KEPT = frozenset({
    "image", "command", "entrypoint", "environment", "healthcheck", "logging", "networks", "user", "read_only",
    "stop_grace_period", "stop_signal", "cap_drop", "cap_add", "init", "hostname", "working_dir", "labels",
    "ulimits", "sysctls",
})
# Compose service keys with a Swarm form of their own (see the module's docstring), or none.
TRANSFORMED = frozenset({
    "mem_limit", "restart", "tmpfs", "shm_size", "env_file", "volumes", "secrets", "ports", "deploy",
    "depends_on", "build", "pull_policy", "profiles", "security_opt",
})
ONE_SHOT_RESTART = ("no", "on-failure")

INTERPOLATION = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")
SIZE = re.compile(r"^(\d+)([bkmg]?)b?$", re.IGNORECASE)


class SwarmConfigError(Exception):
    """The compose file or the override cannot be turned into a stack file; the message says why."""


class _LazyYaml:
    """PyYAML, imported when first used: deploy/ otherwise runs on the host's bare python3, and only
    the Swarm mode reads YAML (Debian: apt-get install python3-yaml)."""

    def __getattr__(self, name):
        try:
            import yaml as module
        except ImportError:
            raise SwarmConfigError("PyYAML is missing: apt-get install python3-yaml (or pip install PyYAML)") from None
        return getattr(module, name)


yaml = _LazyYaml()


# ---------------------------------------------------------------- reading
def read_env_file(path: Path) -> dict:
    """KEY=VALUE lines, as Compose reads .env and env_file (comments and blank lines skipped,
    one pair of surrounding quotes removed)."""
    values: dict = {}
    if not path.exists():
        return values
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip().removeprefix("export ").strip()] = value
    return values


def interpolate(value, env: dict):
    """``${VAR}``, ``${VAR:-d}``, ``${VAR-d}``, ``${VAR:?msg}`` in every string; ``$$`` kept as ``$$``
    (the stack file is interpolated again by ``docker stack deploy``)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match) -> str:
        if match.group(1):
            return "$$"
        name = match.group(2) or match.group(5)
        op, default = match.group(3), match.group(4) or ""
        current = env.get(name)
        if op == ":-":
            return current if current else default
        if op == "-":
            return default if current is None else current
        if op in (":?", "?"):
            if (op == ":?" and not current) or current is None:
                raise SwarmConfigError(f"{name} must be set: {default}")
            return current
        return current or ""

    return INTERPOLATION.sub(one, value)


def memory_bytes(text) -> int:
    match = SIZE.match(str(text).strip())
    if not match:
        raise SwarmConfigError(f"not a size: {text!r}")
    return int(match.group(1)) * {"": 1, "b": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}[match.group(2).lower()]


def _content_name(prefix: str, key: str, data: bytes) -> str:
    name = f"{prefix}_{key}"[:54]
    return f"{name}_{hashlib.sha256(data).hexdigest()[:8]}"


# ---------------------------------------------------------------- Prometheus for a swarm
def swarm_prometheus(text: str) -> str:
    """prometheus/prometheus.yml with every scrape job finding its targets through Swarm's
    ``tasks.<service>`` DNS name (each replica's address), not the service's virtual address."""
    config = yaml.safe_load(text)
    for job in config.get("scrape_configs") or []:
        sd = []
        for static in job.pop("static_configs", None) or []:
            for target in static.get("targets") or []:
                host, _, port = target.rpartition(":")
                if host in ("localhost", "127.0.0.1"):
                    sd = None
                    break
                sd.append({"names": [f"tasks.{host}"], "type": "A", "port": int(port), "refresh_interval": "5s"})
            if sd is None:
                break
        if sd is None:  # Prometheus itself: left as it was
            job["static_configs"] = [{"targets": ["localhost:9090"]}]
            continue
        for dns in job.get("dns_sd_configs") or []:
            dns["names"] = [n if n.startswith("tasks.") else f"tasks.{n}" for n in dns.get("names") or []]
        if sd:
            job.setdefault("dns_sd_configs", []).extend(sd)
    header = ("# Generated by deploy/swarm.py from prometheus/prometheus.yml for Docker Swarm: every job\n"
              "# finds its targets as tasks.<service> (each replica). Do not edit.\n")
    return header + yaml.safe_dump(config, sort_keys=False)


# ---------------------------------------------------------------- the stack file
class Generator:
    def __init__(self, root: Path, env: dict, out: Path, stack: str = DEFAULT_STACK,
                 without: tuple = ()) -> None:
        self.root, self.out, self.stack, self.without = root, out, stack, set(without)
        self.env = {**read_env_file(root / ".env"), **env}
        self.endpoint_mode = self.env.get("SWARM_ENDPOINT_MODE") or "vip"
        if self.endpoint_mode not in ("vip", "dnsrr"):
            raise SwarmConfigError(f"SWARM_ENDPOINT_MODE={self.endpoint_mode!r}: vip or dnsrr")
        self.secrets: dict = {}
        self.configs: dict = {}
        self.rendered: dict = {}  # file name under out -> text

    def load(self, name: str) -> dict:
        return yaml.safe_load((self.root / name).read_text(encoding="utf-8")) or {}

    def generate(self) -> dict:
        compose = self.load(COMPOSE_FILE)
        override = self.load(OVERRIDE_FILE)
        services, extra = compose.get("services") or {}, override.get("services") or {}
        unplaced = sorted(set(services) - set(extra))
        if unplaced:
            raise SwarmConfigError(f"{OVERRIDE_FILE} says nothing about {', '.join(unplaced)}: give each "
                                   "service of docker-compose.yml an entry (placement, replicas, updates)")
        stale = sorted(set(extra) - set(services))
        if stale:
            raise SwarmConfigError(f"{OVERRIDE_FILE} names services docker-compose.yml lacks: {', '.join(stale)}")
        unknown = self.without - set(services)
        if unknown:
            raise SwarmConfigError(f"--without {', '.join(sorted(unknown))}: no such service")
        out_services = {}
        for name, spec in services.items():
            if name in self.without:
                continue
            out_services[name] = self.service(name, interpolate(spec, self.env),
                                              interpolate(extra[name] or {}, self.env))
        networks = {}
        for name, spec in (compose.get("networks") or {}).items():
            spec = {**(spec or {}), **((override.get("networks") or {}).get(name) or {}), "driver": "overlay"}
            if spec.get("internal") is False:
                del spec["internal"]
            networks[name] = spec
        volumes = {name: dict(spec or {}) for name, spec in (compose.get("volumes") or {}).items()}
        used = {v.get("source") for s in out_services.values() for v in s.get("volumes", [])
                if isinstance(v, dict) and v.get("type") == "volume"}
        volumes = {name: spec for name, spec in volumes.items() if name in used}
        stack = {"version": "3.8", "services": out_services, "networks": networks, "volumes": volumes}
        self.add_secrets(compose, {s for svc in out_services.values() for s in svc.get("secrets", [])})
        if self.secrets:
            stack["secrets"] = self.secrets
        if self.configs:
            stack["configs"] = self.configs
        return stack

    # -- one service
    def service(self, name: str, spec: dict, extra: dict) -> dict:
        unknown = sorted(set(spec) - KEPT - TRANSFORMED)
        if unknown:
            raise SwarmConfigError(f"service {name}: no Swarm form known for {', '.join(unknown)} "
                                   "(add one to deploy/swarm.py, or say why it is dropped)")
        out = {key: spec[key] for key in spec if key in KEPT}
        environment = {}
        for env_file in _as_list(spec.get("env_file")):
            environment.update(read_env_file(self.root / env_file))
        environment.update(_as_dict(spec.get("environment")))
        environment.update(_as_dict(extra.get("environment")))
        if environment:
            out["environment"] = {k: _escape("" if v is None else str(v)) for k, v in environment.items()}
        if extra.get("healthcheck_tcp_port"):
            out["healthcheck"] = _probe_port(name, out.get("healthcheck") or {}, int(extra["healthcheck_tcp_port"]))
        if "healthcheck" in out:
            out["healthcheck"] = _escape(out["healthcheck"])
        if "command" in out:
            out["command"] = _escape(out["command"])

        mounts = []
        for volume in spec.get("volumes") or []:
            mounts.append(self.volume(name, volume, out))
        for tmpfs in _as_list(spec.get("tmpfs")):
            target, _, options = tmpfs.partition(":")
            mount = {"type": "tmpfs", "target": target}
            size = dict(o.split("=", 1) for o in options.split(",") if "=" in o).get("size")
            if size:
                mount["tmpfs"] = {"size": memory_bytes(size)}
            mounts.append(mount)
        if spec.get("shm_size"):
            mounts.append({"type": "tmpfs", "target": "/dev/shm", "tmpfs": {"size": memory_bytes(spec["shm_size"])}})
        mounts = [m for m in mounts if m is not None]
        if mounts:
            out["volumes"] = mounts

        secrets = []
        for secret in spec.get("secrets") or []:
            key = secret if isinstance(secret, str) else secret["source"]
            secrets.append(key)
        if secrets:
            out["secrets"] = secrets

        ports = []
        for port in spec.get("ports") or []:
            ports.append(_port(port, "host" if self.endpoint_mode == "dnsrr" else "ingress"))
        if ports:
            out["ports"] = ports

        deploy = dict(spec.get("deploy") or {})
        restart = str(spec.get("restart") or "no").split(":")[0]
        one_shot = restart in ONE_SHOT_RESTART
        deploy["restart_policy"] = ({"condition": "on-failure", "delay": "5s"} if one_shot
                                    else {"condition": "any", "delay": "5s"})
        if spec.get("profiles"):  # on demand only: run with `swarm.py run`
            deploy["restart_policy"] = {"condition": "none"}
        if spec.get("mem_limit"):
            deploy.setdefault("resources", {}).setdefault("limits", {})["memory"] = str(spec["mem_limit"])
        deploy.update(extra.get("deploy") or {})
        deploy["endpoint_mode"] = extra.get("endpoint_mode") or self.endpoint_mode
        if ports and deploy["endpoint_mode"] == "dnsrr":
            # A port published on the host it runs on: a new task cannot start beside the old one
            # on that host, so an update stops one replica, then starts its successor (the
            # others serve meanwhile).
            for key in ("update_config", "rollback_config"):
                if key in deploy:
                    deploy[key] = {**deploy[key], "order": "stop-first"}
        if "replicas" in deploy:
            deploy["replicas"] = int(deploy["replicas"])
        if one_shot and "replicas" not in deploy:
            deploy["replicas"] = 1
        if one_shot:
            # Its task ends by design: Swarm's updater would count that as a failure ("early
            # termination") and pause the update. Whether it succeeded is judged by `wait`.
            deploy.setdefault("update_config", {"parallelism": 1, "order": "stop-first", "failure_action": "continue"})
        out["deploy"] = deploy
        return out

    def volume(self, service: str, volume, out: dict):
        if isinstance(volume, dict):
            return volume
        parts = volume.split(":")
        source, target = parts[0], parts[1]
        read_only = len(parts) > 2 and "ro" in parts[2].split(",")
        if not (source.startswith(".") or source.startswith("/")):
            return {"type": "volume", "source": source, "target": target, "read_only": read_only} if read_only \
                else {"type": "volume", "source": source, "target": target}
        path = (self.root / source).resolve() if source.startswith(".") else Path(source)
        inside = path == self.root or self.root in path.parents
        if read_only and inside and path.is_dir():
            configs = out.setdefault("configs", [])
            for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
                rel = file.relative_to(path).as_posix()
                key = re.sub(r"[^A-Za-z0-9]+", "_", file.relative_to(self.root).as_posix())
                data = file.read_bytes()
                if file.relative_to(self.root).as_posix() == "prometheus/prometheus.yml":
                    text = swarm_prometheus(data.decode("utf-8"))
                    self.rendered[f"{key}.yml"] = text
                    data = text.encode("utf-8")
                    source_path = self.out / f"{key}.yml"
                else:
                    source_path = file
                self.configs[key] = {"file": str(source_path), "name": _content_name(self.stack, key, data)}
                configs.append({"source": key, "target": f"{target.rstrip('/')}/{rel}", "mode": 0o444})
            return None
        if source == self.env.get("TILLFLOW_INBOX", "./inbox") or target == "/data/inbox":
            path = Path(self.env.get("SWARM_INBOX") or path)
        return {"type": "bind", "source": str(path), "target": target, "read_only": read_only} if read_only \
            else {"type": "bind", "source": str(path), "target": target}

    def add_secrets(self, compose: dict, used: set) -> None:
        for key, spec in (compose.get("secrets") or {}).items():
            if key not in used:
                continue
            path = (self.root / spec["file"]).resolve()
            data = path.read_bytes() if path.exists() else b""
            self.secrets[key] = {"file": str(path), "name": _content_name(self.stack, key, data)}

    def write(self) -> Path:
        stack = self.generate()
        self.out.mkdir(parents=True, exist_ok=True)
        for name, text in self.rendered.items():
            (self.out / name).write_text(text, encoding="utf-8")
        path = self.out / STACK_FILE
        header = ("# Generated by deploy/swarm.py from docker-compose.yml and deploy/swarm.yml: do not edit,\n"
                  "# change those and generate it again (python3 deploy/swarm.py config).\n")
        path.write_text(header + yaml.safe_dump(stack, sort_keys=False, width=160), encoding="utf-8")
        return path


def _as_list(value) -> list:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _as_dict(value) -> dict:
    if not value:
        return {}
    if isinstance(value, dict):
        return dict(value)
    return dict(item.split("=", 1) if "=" in item else (item, None) for item in value)


def _escape(value):
    """Every lone ``$`` as ``$$``: the values are final; ``docker stack deploy`` must not expand them."""
    if isinstance(value, dict):
        return {k: _escape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_escape(v) for v in value]
    if isinstance(value, str):
        return re.sub(r"\$\$|\$", "$$", value)
    return value


def _port(port, mode: str) -> dict:
    if isinstance(port, dict):
        return {**port, "mode": mode}
    parts = str(port).split(":")
    target = parts[-1]
    published = parts[-2] if len(parts) >= 2 else target
    return {"target": int(target), "published": int(published), "protocol": "tcp", "mode": mode}


def _probe_port(service: str, healthcheck: dict, port: int) -> dict:
    """The healthcheck of docker-compose.yml, probing ``port`` instead of the port it names."""
    test = healthcheck.get("test") or []
    probes = [part for part in test if isinstance(part, str) and re.search(r"/dev/tcp/127\.0\.0\.1/\d+", part)]
    if len(probes) != 1:
        raise SwarmConfigError(f"service {service}: healthcheck_tcp_port needs a healthcheck that opens one "
                               "/dev/tcp/127.0.0.1/<port>")
    changed = [re.sub(r"(/dev/tcp/127\.0\.0\.1/)\d+", rf"\g<1>{port}", part) if part in probes else part
               for part in test]
    return {**healthcheck, "test": changed}


# ---------------------------------------------------------------- docker
def docker(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise SwarmConfigError(f"docker {' '.join(args[:3])} ... exited {done.returncode}: "
                               f"{(done.stderr or done.stdout).strip()[-1500:]}")
    return done


def stack_services(stack: str) -> list:
    done = docker("service", "ls", "--filter", f"label=com.docker.stack.namespace={stack}", "--format", "{{json .}}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def inspect_services(names: list) -> list:
    if not names:
        return []
    return json.loads(docker("service", "inspect", *names).stdout)


def tasks(service: str) -> list:
    done = docker("service", "ps", service, "--no-trunc", "--format", "{{json .}}", check=False)
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def assess(specs: list, task_lists: dict) -> tuple:
    """(waiting, failed) for the services of a stack, from ``docker service inspect`` and each one's tasks
    (newest first, as ``docker service ps`` lists them). A task counts only when it runs the image the
    service's spec names (right after ``docker stack deploy`` the old tasks still run and look converged).
    Pure: tests/unit/test_swarm_stack.py."""
    waiting, failed = [], []
    for spec in specs:
        name = spec["Spec"]["Name"]
        mode = spec["Spec"].get("Mode") or {}
        template = spec["Spec"].get("TaskTemplate") or {}
        policy = (template.get("RestartPolicy") or {}).get("Condition", "any")
        image = ((template.get("ContainerSpec") or {}).get("Image") or "").split("@")[0]
        update = (spec.get("UpdateStatus") or {}).get("State", "")
        if update in ("rollback_completed", "rollback_paused", "paused", "rollback_started"):
            failed.append(f"{name}: update {update} ({(spec.get('UpdateStatus') or {}).get('Message', '')})")
            continue
        if update == "updating":
            waiting.append(f"{name} updating")
            continue

        def current(task: dict) -> bool:
            return not image or not task.get("Image") or task["Image"].split("@")[0] == image

        listed = task_lists.get(name) or []
        want = int((mode.get("Replicated") or {}).get("Replicas", 0)) if "Replicated" in mode else None
        if want == 0:
            continue
        if policy != "any":  # a one-shot: its newest task must have completed
            newest = listed[:1]
            state = newest[0].get("CurrentState", "") if newest else "no task"
            if not (state.startswith("Complete") and current(newest[0])):
                waiting.append(f"{name} {state.split(' ')[0].lower() or 'pending'}")
            continue
        running = [t for t in listed if t.get("DesiredState") == "Running"
                   and t.get("CurrentState", "").startswith("Running") and current(t)]
        if want is not None and len(running) < want:
            waiting.append(f"{name} {len(running)}/{want}")
        elif want is None and not running:
            waiting.append(f"{name} 0 running")
    return waiting, failed


def wait(stack: str, timeout: float, every: float = 3.0, say=print) -> float:
    started = time.monotonic()
    shown = None
    while True:
        names = [s["Name"] for s in stack_services(stack)]
        if not names:
            raise SwarmConfigError(f"stack {stack} has no services")
        specs = inspect_services(names)
        waiting, failed = assess(specs, {n: tasks(n) for n in names})
        if failed:
            raise SwarmConfigError("not healthy: " + "; ".join(failed))
        if not waiting:
            return time.monotonic() - started
        if waiting != shown:
            say("waiting for: " + ", ".join(waiting))
            shown = waiting
        if time.monotonic() - started > timeout:
            raise SwarmConfigError(f"not converged after {timeout:.0f}s: " + ", ".join(waiting))
        time.sleep(every)


def deploy(stack_file: Path, stack: str) -> None:
    docker("stack", "deploy", "--prune", "--resolve-image", "never", "--detach=true", "-c", str(stack_file), stack,
           timeout=600)
    time.sleep(3)  # the managers start the update: its state is "updating" by the first look


def run_once(stack_file: Path, stack: str, service: str, args: list, timeout: float = 600) -> tuple:
    """A one-off task with SERVICE's spec (image, environment, secrets, networks, mounts, placement) and
    ARGS as its command (default the service's): (exit status, its output)."""
    doc = yaml.safe_load(stack_file.read_text(encoding="utf-8"))
    spec = doc["services"][service]
    name = f"{stack}_{service}_run_{uuid.uuid4().hex[:6]}"
    argv = ["service", "create", "--detach", "--name", name, "--restart-condition", "none",
            "--label", f"org.tillflow.run-of={stack}_{service}"]
    for network in spec.get("networks") or []:
        argv += ["--network", f"{stack}_{network}"]
    for key, value in (spec.get("environment") or {}).items():
        argv += ["--env", f"{key}={value.replace('$$', '$')}"]
    for key in spec.get("secrets") or []:
        argv += ["--secret", f"source={doc['secrets'][key]['name']},target={key}"]
    for mount in spec.get("volumes") or []:
        source = mount.get("source")
        if mount["type"] == "volume":
            source = (doc.get("volumes") or {}).get(source, {}).get("name") or f"{stack}_{source}"
        fields = [f"type={mount['type']}", f"target={mount['target']}"]
        if source:
            fields.append(f"source={source}")
        if mount.get("read_only"):
            fields.append("readonly")
        if mount["type"] == "tmpfs" and (mount.get("tmpfs") or {}).get("size"):
            fields.append(f"tmpfs-size={mount['tmpfs']['size']}")
        argv += ["--mount", ",".join(fields)]
    for constraint in ((spec.get("deploy") or {}).get("placement") or {}).get("constraints") or []:
        argv += ["--constraint", constraint]
    if spec.get("user"):
        argv += ["--user", str(spec["user"])]
    if spec.get("read_only"):
        argv += ["--read-only"]
    if spec.get("init"):
        argv += ["--init"]
    argv += ["--no-healthcheck", spec["image"], *(args or spec.get("command") or [])]
    docker(*argv)
    try:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            listed = tasks(name)
            state = listed[0].get("CurrentState", "") if listed else ""
            if state.split(" ")[0] in ("Complete", "Failed", "Rejected", "Shutdown"):
                break
            time.sleep(1)
        else:
            raise SwarmConfigError(f"{service} run did not finish within {timeout:.0f}s ({state})")
        time.sleep(1)  # the task's last lines reach the log stream
        logs = docker("service", "logs", "--raw", "--no-task-ids", name, check=False)
        output = logs.stdout + logs.stderr
        error = listed[0].get("Error", "")
        code = 0 if state.startswith("Complete") else 1
        match = re.search(r"exit \((\d+)\)", error)
        if match:
            code = int(match.group(1))
        if code and error and error not in output:
            output += f"\n{error}\n"
        return code, output
    finally:
        docker("service", "rm", name, check=False)


def build(image: str, hosts: list, builder: str = "") -> list:
    """``docker build`` of the checkout as ``image``, then the image into every host of ``hosts``
    (Docker host URLs, e.g. ssh://deploy@host2) that lacks that very image, by ``docker save | docker
    load``: no registry needed. The engine that builds is ``builder`` (a Docker host URL), by default
    this one (``DOCKER_HOST``, the manager); a separate builder hands the image to this engine too.
    The hosts it was loaded into."""
    manager = os.environ.get("DOCKER_HOST", "")
    at_builder = {**os.environ, "DOCKER_HOST": builder} if builder else dict(os.environ)
    if builder and builder != manager:
        hosts = [manager or "unix:///var/run/docker.sock", *hosts]
    done = subprocess.run(["docker", "build", "-t", image, "."], cwd=ROOT, env=at_builder, timeout=3600)
    if done.returncode != 0:
        raise SwarmConfigError(f"docker build of {image} failed (exit {done.returncode})"
                               + (f" on {builder}" if builder else ""))
    local = _image_id(image, at_builder)
    if local is None:
        raise SwarmConfigError(f"{image} was built, but its engine does not list it")
    loaded = []
    for host in dict.fromkeys(hosts):
        env = {**os.environ, "DOCKER_HOST": host}
        if host == builder or _image_id(image, env) == local:
            continue
        save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE, env=at_builder)
        load = subprocess.run(["docker", "load", "-q"], stdin=save.stdout, env=env, capture_output=True, text=True,
                              timeout=3600)
        save.stdout.close()
        if save.wait() != 0 or load.returncode != 0:
            raise SwarmConfigError(f"{image} into {host}: {load.stderr.strip()[-500:]}")
        loaded.append(host)
    return loaded


def _image_id(image: str, env: dict) -> str | None:
    """The id of ``image`` on the engine ``env`` names (DOCKER_HOST); None where it has no such image."""
    done = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", image], env=env,
                          capture_output=True, text=True, timeout=120)
    return done.stdout.strip() if done.returncode == 0 else None


def running_image(stack: str, service: str = "api") -> str:
    spec = inspect_services([f"{stack}_{service}"])[0]
    return spec["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"].split("@")[0]


# ---------------------------------------------------------------- command line
def main(argv=None) -> int:
    settings = {**read_env_file(ROOT / ".env"), **os.environ}  # the environment over .env, as Compose reads them
    parser = argparse.ArgumentParser(prog="deploy/swarm.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("config", "deploy"):
        p = sub.add_parser(name)
        p.add_argument("--out", default=settings.get("SWARM_OUT") or str(ROOT / DEFAULT_OUT))
        p.add_argument("--without", action="append", default=[], metavar="SERVICE")
        p.add_argument("--stack", default=settings.get("SWARM_STACK") or DEFAULT_STACK)
        p.add_argument("--timeout", type=float, default=600)
    p = sub.add_parser("wait")
    p.add_argument("--stack", default=settings.get("SWARM_STACK") or DEFAULT_STACK)
    p.add_argument("--timeout", type=float, default=600)
    p = sub.add_parser("run")
    p.add_argument("--stack", default=settings.get("SWARM_STACK") or DEFAULT_STACK)
    p.add_argument("--out", default=settings.get("SWARM_OUT") or str(ROOT / DEFAULT_OUT))
    p.add_argument("service")
    p.add_argument("args", nargs=argparse.REMAINDER)
    p = sub.add_parser("image")
    p.add_argument("--stack", default=settings.get("SWARM_STACK") or DEFAULT_STACK)
    p = sub.add_parser("build")
    p.add_argument("image")
    args = parser.parse_args(argv)
    without = tuple(getattr(args, "without", None) or [w for w in settings.get("SWARM_WITHOUT", "").split(",") if w])
    try:
        if args.command in ("config", "deploy"):
            path = Generator(ROOT, dict(os.environ), Path(args.out), args.stack, without).write()
            print(f"swarm: wrote {path}", file=sys.stderr)
            if args.command == "deploy":
                deploy(path, args.stack)
                took = wait(args.stack, args.timeout, say=lambda t: print(f"swarm: {t}", file=sys.stderr, flush=True))
                print(f"swarm: stack {args.stack} converged and healthy in {took:.0f}s", file=sys.stderr)
        elif args.command == "wait":
            took = wait(args.stack, args.timeout, say=lambda t: print(f"swarm: {t}", file=sys.stderr, flush=True))
            print(f"swarm: stack {args.stack} converged and healthy in {took:.0f}s", file=sys.stderr)
        elif args.command == "run":
            code, output = run_once(Path(args.out) / STACK_FILE, args.stack, args.service, args.args)
            sys.stdout.write(output)
            return code
        elif args.command == "image":
            print(running_image(args.stack))
        elif args.command == "build":
            hosts = [h for h in re.split(r"[\s,]+", settings.get("SWARM_NODE_HOSTS", "")) if h]
            loaded = build(args.image, hosts, settings.get("SWARM_BUILD_HOST", "").strip())
            print(f"swarm: built {args.image}; loaded into {', '.join(loaded) or 'no other host'}", file=sys.stderr)
    except (SwarmConfigError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"swarm: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
