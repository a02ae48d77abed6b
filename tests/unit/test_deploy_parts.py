"""The pure parts of deploy/: reading `compose ps`, judging health, the deploy
settings, and the webhook's signatures. The scripts run against real git
repositories in tests/integration/test_deploy.py (a test file of the same name
here would clash with it: pytest imports both as module test_deploy)."""
from __future__ import annotations

import hashlib
import hmac
import importlib.machinery
import importlib.util
import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load(name: str, path: Path):
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    spec = importlib.util.spec_from_loader(name, loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    loader.exec_module(module)
    return module


redeploy = load("tillflow_redeploy", ROOT / "deploy" / "redeploy")
webhook = load("tillflow_webhook", ROOT / "deploy" / "webhook.py")


# ---------------------------------------------------------------- the scripts
@pytest.mark.parametrize("name", ["redeploy", "post-receive"])
def test_the_scripts_are_executable(name):
    assert (ROOT / "deploy" / name).stat().st_mode & stat.S_IXUSR


def test_the_hook_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(ROOT / "deploy" / "post-receive")], check=False).returncode == 0


def test_the_host_side_needs_only_the_standard_library():
    """deploy/ runs with the host's python3, where Tillflow's dependencies are not installed."""
    for path in [ROOT / "deploy" / "redeploy", *sorted((ROOT / "deploy").glob("*.py"))]:
        # -S: no site-packages on the path, as with a bare python3.
        probe = f"import runpy; runpy.run_path({str(path)!r}, run_name='probe')"
        done = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True, timeout=60,
                              check=False)
        assert done.returncode == 0, f"{path.name} imports more than the standard library: {done.stderr}"


# ---------------------------------------------------------------- compose ps
ROWS = [
    {"Service": "postgres", "Name": "tillflow-postgres-1", "State": "running", "Health": "healthy", "ExitCode": 0},
    {"Service": "migrate", "Name": "tillflow-migrate-1", "State": "exited", "Health": "", "ExitCode": 0},
]


def test_ps_output_is_read_as_lines_or_as_an_array():
    lines = "\n".join(json.dumps(row) for row in ROWS) + "\n"
    assert redeploy.parse_ps(lines) == ROWS, "Compose 2.21 and later: one object per line"
    assert redeploy.parse_ps(json.dumps(ROWS)) == ROWS, "older Compose 2: one array"
    assert redeploy.parse_ps("\n") == []


def test_services_are_read_from_the_config_with_their_kind():
    config = {"services": {
        "postgres": {"restart": "always"},
        "migrate": {"restart": "no"},
        "retrying": {"restart": "on-failure:3"},
        "plain": {},
        "smoke": {"restart": "no", "profiles": ["tools"]},
    }}
    assert redeploy.services_of(json.dumps(config)) == {
        "postgres": False, "migrate": True, "retrying": True, "plain": True,
    }, "one-shots are restart no/on-failure; services in a profile run on demand and are not awaited"


def row(service: str, state: str = "running", health: str = "healthy", code: int = 0, index: int = 1) -> dict:
    return {"Service": service, "Name": f"tillflow-{service}-{index}", "State": state, "Health": health,
            "ExitCode": code}


@pytest.mark.parametrize(
    ("containers", "waiting", "failed"),
    [
        ([row("api"), row("migrate", "exited", "", 0)], [], []),
        ([row("api", health=""), row("migrate", "exited", "", 0)], [], []),  # no healthcheck: running will do
        ([row("api", health="starting"), row("migrate", "exited", "", 0)], ["tillflow-api-1 starting"], []),
        ([row("api", health="unhealthy"), row("migrate", "exited", "", 0)], ["tillflow-api-1 unhealthy"], []),
        ([row("migrate", "exited", "", 0)], ["api not created"], []),
        ([row("api", "restarting", ""), row("migrate", "exited", "", 0)], ["tillflow-api-1 restarting"], []),
        # A long-running service that exited may still be restarted; a one-shot that failed will not be.
        ([row("api", "exited", "", 1), row("migrate", "exited", "", 0)], ["tillflow-api-1 exited"], []),
        ([row("api"), row("migrate", "exited", "", 3)], [], ["tillflow-migrate-1 exited 3"]),
        ([row("api"), row("migrate", "running", "")], ["tillflow-migrate-1 running"], []),
        ([row("api", "dead", ""), row("migrate", "exited", "", 0)], [], ["tillflow-api-1 is dead"]),
    ],
)
def test_assess_tells_waiting_from_failed(containers, waiting, failed):
    assert redeploy.assess({"api": False, "migrate": True}, containers) == (waiting, failed)


def test_every_replica_must_be_healthy():
    containers = [row("consumer", index=1), row("consumer", health="unhealthy", index=2)]
    assert redeploy.assess({"consumer": False}, containers) == (["tillflow-consumer-2 unhealthy"], [])


# ---------------------------------------------------------------- settings
def test_deploy_settings_have_defaults_and_overrides(tmp_path):
    config = redeploy.Config.from_env({}, tmp_path)
    assert config.compose == ["docker", "compose"] and config.smoke == ["make", "--no-print-directory", "smoke"]
    assert (config.remote, config.branch) == ("origin", "main")
    assert config.state_dir == tmp_path / ".deploy"
    custom = redeploy.Config.from_env({"COMPOSE": "python3 '/a b/fake.py'", "DEPLOY_HEALTH_TIMEOUT": "30"}, tmp_path)
    assert custom.compose == ["python3", "/a b/fake.py"] and custom.health_timeout == 30


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"DEPLOY_HEALTH_TIMEOUT": "soon"}, "DEPLOY_HEALTH_TIMEOUT"),
        ({"DEPLOY_POLL_INTERVAL": "0"}, "DEPLOY_POLL_INTERVAL"),
        ({"COMPOSE": " "}, "COMPOSE"),
        ({"DEPLOY_SMOKE": ""}, "DEPLOY_SMOKE"),
    ],
)
def test_a_bad_deploy_setting_is_named(env, named, tmp_path):
    with pytest.raises(redeploy.DeployError, match=named):
        redeploy.Config.from_env(env, tmp_path)


def test_the_lock_is_exclusive_and_waits_no_longer_than_told(tmp_path):
    said = []
    first = redeploy.DeployLock(tmp_path / "lock", 5, said.append)
    assert first.acquire()
    second = redeploy.DeployLock(tmp_path / "lock", 0.3, said.append)
    assert not second.acquire(), "a second deploy does not get the lock while the first holds it"
    assert said and "another deploy is running" in said[0]
    first.release()
    assert second.acquire(), "released with the first deploy"
    second.release()


# ---------------------------------------------------------------- webhook signatures
SECRET = b"a-webhook-secret-of-some-length"
BODY = b'{"ref": "refs/heads/main"}'
GOOD = hmac.new(SECRET, BODY, hashlib.sha256).hexdigest()


@pytest.mark.parametrize(
    ("headers", "valid"),
    [
        ({"X-Hub-Signature-256": f"sha256={GOOD}"}, True),  # GitHub, and Gitea too
        ({"X-Gitea-Signature": GOOD}, True),
        ({"X-Hub-Signature-256": f"sha256={GOOD.upper()}"}, True),
        ({}, False),
        ({"X-Hub-Signature-256": GOOD}, False),  # no scheme
        ({"X-Hub-Signature-256": f"sha1={GOOD}"}, False),
        ({"X-Hub-Signature-256": f"sha256={GOOD[:-1]}"}, False),
        ({"X-Hub-Signature-256": f"sha256={GOOD[:-1]}0" if GOOD[-1] != "0" else f"sha256={GOOD[:-1]}1"}, False),
        ({"X-Gitea-Signature": "not hex at all"}, False),
        # A wrong GitHub header is not rescued by a right Gitea one.
        ({"X-Hub-Signature-256": "sha256=" + "0" * 64, "X-Gitea-Signature": GOOD}, False),
    ],
)
def test_signatures_are_checked_as_github_and_gitea_send_them(headers, valid):
    assert webhook.signature_valid(SECRET, BODY, headers) is valid


def test_a_signature_of_another_body_or_secret_is_refused():
    assert not webhook.signature_valid(SECRET, BODY + b" ", {"X-Gitea-Signature": GOOD})
    assert not webhook.signature_valid(b"another secret of some length", BODY, {"X-Gitea-Signature": GOOD})


def test_webhook_settings(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s" * 40 + "\n")
    settings = webhook.Settings.from_env({"WEBHOOK_SECRET_FILE": str(secret), "WEBHOOK_SECRET": "x" * 20})
    assert settings.secret == b"s" * 40, "the file wins, stripped of its newline"
    assert (settings.host, settings.port, settings.branch) == ("127.0.0.1", 9000, "main")
    assert settings.command == (str(ROOT / "deploy" / "redeploy"),)
    with pytest.raises(webhook.ConfigError, match="at least 16"):
        webhook.Settings.from_env({"WEBHOOK_SECRET": "short"})
    with pytest.raises(webhook.ConfigError, match="WEBHOOK_PORT"):
        webhook.Settings.from_env({"WEBHOOK_SECRET": "x" * 20, "WEBHOOK_PORT": "http"})


def test_a_trigger_while_a_deploy_runs_queues_one_more_run(tmp_path):
    import threading

    gate = threading.Event()
    runs = []
    runner = webhook.Runner(("true",))
    runner._run_once = lambda: (runs.append(1), gate.wait(10))

    assert runner.trigger() == "started"
    assert [runner.trigger() for _ in range(3)] == ["queued"] * 3
    gate.set()
    runner.join(10)
    assert len(runs) == 2


def test_a_deploy_lock_that_times_out_is_refused_and_releases_cleanly(tmp_path):
    """A second deploy given up on after DEPLOY_LOCK_TIMEOUT returns False and can be
    released like any other (it once closed its descriptor twice and crashed with exit 1)."""
    said: list[str] = []
    holder = redeploy.DeployLock(tmp_path / "lock", 1.0, said.append)
    assert holder.acquire()
    waiter = redeploy.DeployLock(tmp_path / "lock", 0.3, said.append)
    assert not waiter.acquire()
    waiter.release()
    assert any("waiting for it to finish" in line for line in said)
    holder.release()
    again = redeploy.DeployLock(tmp_path / "lock", 0.3, said.append)
    assert again.acquire()
    again.release()
