"""The Swarm stack (deploy/swarm.py, deploy/swarm.yml) against docker-compose.yml, without an engine.

The stack file is generated from docker-compose.yml on every deploy and never
committed, so the two cannot drift: these tests hold the generator to carrying
every service, image, command, environment variable, healthcheck, secret,
volume and memory limit over, and to placing what must be placed.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _load_swarm():
    spec = importlib.util.spec_from_file_location("deploy_swarm", ROOT / "deploy" / "swarm.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["deploy_swarm"] = module
    spec.loader.exec_module(module)
    return module


swarm = _load_swarm()


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))


def generate(tmp_path, **env) -> dict:
    gen = swarm.Generator(ROOT, {"PATH": "/usr/bin", **env}, tmp_path / "out")
    path = gen.write()
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict:
    return generate(tmp_path_factory.mktemp("swarm"))


def test_every_compose_service_is_in_the_stack_and_nothing_else(stack):
    assert set(stack["services"]) == set(compose()["services"])


def test_the_override_names_exactly_the_compose_services():
    override = yaml.safe_load((ROOT / "deploy" / "swarm.yml").read_text(encoding="utf-8"))
    assert set(override["services"]) == set(compose()["services"])


def test_every_compose_key_is_kept_or_has_a_swarm_form():
    keys = {key for spec in compose()["services"].values() for key in spec}
    assert keys <= swarm.KEPT | swarm.TRANSFORMED, keys - swarm.KEPT - swarm.TRANSFORMED


def test_an_unknown_compose_key_stops_the_generator(tmp_path):
    gen = swarm.Generator(ROOT, {}, tmp_path)
    with pytest.raises(swarm.SwarmConfigError, match="devices"):
        gen.service("x", {"image": "x", "devices": ["/dev/kvm"]}, {})


def test_images_commands_users_and_healthchecks_are_compose_s(stack):
    env = {"PATH": "/usr/bin"}
    for name, spec in compose()["services"].items():
        want = swarm.interpolate(spec, env)
        got = stack["services"][name]
        for key in ("image", "command", "user", "read_only", "stop_grace_period", "cap_drop", "init", "networks"):
            if key in want:
                assert got[key] == swarm._escape(want[key]) if key == "command" else got[key] == want[key], (name, key)
        if "healthcheck" in want and not name.startswith("kafka-"):
            assert got["healthcheck"] == swarm._escape(want["healthcheck"]), name


def test_the_kafka_probe_is_compose_s_sent_to_the_controller_port(stack):
    for name in ("kafka-1", "kafka-2", "kafka-3"):
        want = compose()["services"][name]["healthcheck"]
        got = stack["services"][name]["healthcheck"]
        assert [p.replace("/9092", "/9093") for p in want["test"]] == got["test"]
        assert {k: v for k, v in got.items() if k != "test"} == {k: v for k, v in want.items() if k != "test"}


def test_environment_is_compose_s_with_env_files_inlined(stack):
    for name, spec in compose()["services"].items():
        want = {}
        for env_file in swarm._as_list(spec.get("env_file")):
            want.update(swarm.read_env_file(ROOT / env_file))
        want.update({k: "" if v is None else str(v) for k, v in swarm.interpolate(
            swarm._as_dict(spec.get("environment")), {}).items()})
        got = stack["services"][name].get("environment", {})
        extra = set(got) - set(want)
        assert extra <= {"SMOKE_METRICS_URLS"} and (not extra or name == "smoke"), (name, extra)
        for key, value in want.items():
            if key in got and not (name == "smoke" and key == "SMOKE_METRICS_URLS"):
                assert got[key] == swarm._escape(value), (name, key)
        assert set(want) <= set(got), (name, set(want) - set(got))


def test_memory_limits_are_compose_s_in_the_swarm_form(stack):
    for name, spec in compose()["services"].items():
        if "mem_limit" in spec:
            assert stack["services"][name]["deploy"]["resources"]["limits"]["memory"] == spec["mem_limit"], name
        assert "mem_limit" not in stack["services"][name]


def test_secrets_are_swarm_secrets_from_the_same_files(stack):
    for name, spec in compose()["services"].items():
        assert stack["services"][name].get("secrets", []) == spec.get("secrets", []), name
    for key, secret in stack["secrets"].items():
        assert secret["file"] == str((ROOT / compose()["secrets"][key]["file"]).resolve())
        assert secret["name"].startswith(f"tillflow_{key}_")


def test_named_volumes_keep_their_names_and_targets(stack):
    for name, spec in compose()["services"].items():
        named = [v for v in spec.get("volumes", []) if not v.split(":")[0].startswith((".", "/", "$"))]
        got = {(m["source"], m["target"]) for m in stack["services"][name].get("volumes", []) if m["type"] == "volume"}
        assert got == {tuple(v.split(":")[:2]) for v in named}, name
    for key, volume in stack["volumes"].items():
        assert volume["name"] == compose()["volumes"][key]["name"]


def test_tmpfs_and_shm_become_tmpfs_mounts(stack):
    postgres = {m["target"]: m for m in stack["services"]["postgres"]["volumes"] if m["type"] == "tmpfs"}
    assert postgres["/dev/shm"]["tmpfs"]["size"] == 128 * 1024 ** 2
    assert postgres["/tmp"]["tmpfs"]["size"] == 64 * 1024 ** 2


def test_read_only_checkout_binds_become_configs(stack):
    prometheus = {c["target"]: c["source"] for c in stack["services"]["prometheus"]["configs"]}
    assert "/etc/prometheus/prometheus.yml" in prometheus and "/etc/prometheus/alerts.yml" in prometheus
    rendered = yaml.safe_load(Path(stack["configs"][prometheus["/etc/prometheus/prometheus.yml"]]["file"]).read_text())
    names = {n for job in rendered["scrape_configs"] for sd in job.get("dns_sd_configs", []) for n in sd["names"]}
    assert {"tasks.consumer", "tasks.api", "tasks.watcher", "tasks.backup"} <= names
    assert all(n.startswith("tasks.") for n in names)


def test_one_broker_per_host_each_with_its_own_volume(stack):
    for i in (1, 2, 3):
        spec = stack["services"][f"kafka-{i}"]
        assert spec["deploy"]["placement"]["constraints"] == [f"node.labels.tillflow.kafka == {i}"]
        assert spec["deploy"]["endpoint_mode"] == "dnsrr"
        assert [m["source"] for m in spec["volumes"] if m["type"] == "volume"] == [f"kafka-{i}-data"]


def test_stateful_services_are_pinned_by_label(stack):
    for name in ("postgres", "backup", "migrate", "watcher", "prometheus", "alertmanager", "alertmanager-config",
                 "grafana", "postgres-exporter"):
        constraints = stack["services"][name]["deploy"]["placement"]["constraints"]
        assert constraints and all(c.startswith("node.labels.tillflow.") for c in constraints), name
    # The volume Alertmanager reads is written by alertmanager-config: the same host.
    assert (stack["services"]["alertmanager"]["deploy"]["placement"]
            == stack["services"]["alertmanager-config"]["deploy"]["placement"])
    # make restore runs in migrate, on a read-only view of the backups volume.
    assert stack["services"]["migrate"]["deploy"]["placement"] == stack["services"]["backup"]["deploy"]["placement"]


def test_the_api_is_never_without_a_healthy_replica_during_an_update(stack):
    api = stack["services"]["api"]
    assert api["deploy"]["replicas"] >= 2 and api["healthcheck"]["test"]
    update = api["deploy"]["update_config"]
    assert update["parallelism"] == 1 and update["order"] == "start-first"
    assert update["failure_action"] == "rollback"


def test_without_ipvs_every_service_is_dnsrr_and_the_api_is_published_per_host(tmp_path):
    stack = generate(tmp_path, SWARM_ENDPOINT_MODE="dnsrr")
    assert {s["deploy"]["endpoint_mode"] for s in stack["services"].values()} == {"dnsrr"}
    api = stack["services"]["api"]
    assert api["ports"] == [{"target": 8000, "published": 8000, "protocol": "tcp", "mode": "host"}]
    assert api["deploy"]["update_config"]["order"] == "stop-first"
    assert api["deploy"]["replicas"] >= 2 and api["deploy"]["update_config"]["parallelism"] == 1


def test_one_shots_are_tried_again_until_they_succeed_and_smoke_runs_on_demand(stack):
    for name in ("migrate", "kafka-init", "alertmanager-config"):
        assert stack["services"][name]["deploy"]["restart_policy"]["condition"] == "on-failure", name
        assert stack["services"][name]["deploy"]["update_config"]["failure_action"] == "continue", name
    assert stack["services"]["smoke"]["deploy"]["replicas"] == 0
    assert stack["services"]["smoke"]["deploy"]["restart_policy"] == {"condition": "none"}
    for name in ("api", "consumer", "watcher", "postgres", "kafka-1", "backup"):
        assert stack["services"][name]["deploy"]["restart_policy"]["condition"] == "any", name


def test_no_key_swarm_ignores_or_refuses_is_left(stack):
    refused = {"mem_limit", "shm_size", "tmpfs", "depends_on", "build", "pull_policy", "profiles", "security_opt",
               "restart", "env_file", "container_name"}
    for name, spec in stack["services"].items():
        assert not set(spec) & refused, (name, set(spec) & refused)


def test_values_are_escaped_for_docker_stack_deploy(stack):
    # The Kafka probe's $(...) must reach the container as it is: $$ in the stack file.
    probe = stack["services"]["kafka-1"]["healthcheck"]["test"][-1]
    assert "$$(timeout" in probe and "$$$" not in probe


def test_interpolation_follows_compose(tmp_path):
    env = {"SET": "x", "EMPTY": ""}
    assert swarm.interpolate("${SET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d} ${UNSET} $$X", env) == "x d  d  $$X"
    with pytest.raises(swarm.SwarmConfigError):
        swarm.interpolate("${UNSET:?needed}", env)


def test_dot_env_is_read_and_the_environment_wins(tmp_path):
    root = tmp_path / "checkout"
    root.mkdir()
    for name in ("docker-compose.yml", "deploy/swarm.yml", "kafka/broker.env"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes((ROOT / name).read_bytes())
    for path in (ROOT / "prometheus").iterdir():
        (root / "prometheus").mkdir(exist_ok=True)
        (root / "prometheus" / path.name).write_bytes(path.read_bytes())
    (root / ".env").write_text("CONSUMER_REPLICAS=3\nTILLFLOW_IMAGE=tillflow:from-dotenv\n", encoding="utf-8")
    stack = swarm.Generator(root, {"TILLFLOW_IMAGE": "tillflow:from-env"}, tmp_path / "out").generate()
    assert stack["services"]["consumer"]["deploy"]["replicas"] == 3
    assert stack["services"]["api"]["image"] == "tillflow:from-env"


def test_a_changed_secret_file_is_a_new_secret_name(tmp_path):
    a = swarm._content_name("tillflow", "postgres_password", b"one")
    b = swarm._content_name("tillflow", "postgres_password", b"two")
    assert a != b and a.startswith("tillflow_postgres_password_") and len(a) <= 64


# ---------------------------------------------------------------- convergence (pure)
def spec(name: str, replicas: int = 1, condition: str = "any", update: str = "") -> dict:
    out = {"Spec": {"Name": name, "Mode": {"Replicated": {"Replicas": replicas}},
                    "TaskTemplate": {"RestartPolicy": {"Condition": condition}}}}
    if update:
        out["UpdateStatus"] = {"State": update, "Message": "why"}
    return out


def task(state: str, desired: str = "Running") -> dict:
    return {"Name": "x.1", "CurrentState": state, "DesiredState": desired}


def test_assess_waits_for_every_replica_running():
    waiting, failed = swarm.assess([spec("api", 2)], {"api": [task("Running 3 seconds ago"),
                                                              task("Starting 1 second ago")]})
    assert waiting == ["api 1/2"] and failed == []


def test_assess_one_shot_needs_its_newest_task_complete():
    waiting, _ = swarm.assess([spec("migrate", condition="on-failure")],
                              {"migrate": [task("Failed 1 second ago", "Ready"), task("Complete 1 minute ago", "Shutdown")]})
    assert waiting == ["migrate failed"]
    waiting, failed = swarm.assess([spec("migrate", condition="on-failure")],
                                   {"migrate": [task("Complete 1 second ago", "Shutdown")]})
    assert waiting == failed == []


def test_assess_a_rolled_back_update_has_failed():
    _, failed = swarm.assess([spec("api", 2, update="rollback_completed")], {"api": []})
    assert failed and "rollback_completed" in failed[0]


def test_assess_counts_only_tasks_of_the_spec_s_image():
    service = spec("api", 1)
    service["Spec"]["TaskTemplate"]["ContainerSpec"] = {"Image": "tillflow:2@sha256:abc"}
    old = {**task("Running 1 minute ago"), "Image": "tillflow:1"}
    assert swarm.assess([service], {"api": [old]})[0] == ["api 0/1"]
    new = {**task("Running 1 second ago"), "Image": "tillflow:2"}
    assert swarm.assess([service], {"api": [new, {**old, "DesiredState": "Shutdown"}]}) == ([], [])


def test_assess_skips_services_scaled_to_zero():
    assert swarm.assess([spec("smoke", 0, condition="none")], {"smoke": []}) == ([], [])


def test_networks_are_overlays_and_backend_is_not_internal_in_a_swarm(stack):
    assert {n["driver"] for n in stack["networks"].values()} == {"overlay"}
    assert "internal" not in stack["networks"]["backend"]
    assert not any(p.get("published") for s in stack["services"].values() if "frontend" not in s.get("networks", [])
                   for p in s.get("ports", []))
