"""deploy/redeploy, the post-receive hook and the webhook against real git repositories.

Each test builds, in a temporary folder, a bare "origin", a clone to commit
and push from, and the work tree the stack "runs" from, seeded with the real
deploy/ directory and Makefile. ``docker compose`` is replaced by
tests/support/fake_compose.py, which records every call with the commit the
work tree was at, and fails on demand: a bad release commits a
``.fake-compose`` file saying how it fails, so that going back to the previous
commit mends it, as with a real one. No Docker, PostgreSQL or Kafka involved.

The invariants: the work tree ends at the commit that runs; a failed release
is rolled back to the previous commit, which the stack brings up again; two
deploys never overlap; the webhook deploys only for a valid signature.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from support.pipeline import wait_for

ROOT = Path(__file__).resolve().parents[2]
FAKE_COMPOSE = ROOT / "tests" / "support" / "fake_compose.py"
SECRET = "a-webhook-secret-of-some-length"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "test@example.invalid",
    "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
}
LOG_LINE = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


class Site:
    """origin (bare), dev (where pushes come from) and work (the deployed work tree)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.origin, self.dev, self.work = root / "origin.git", root / "dev", root / "work"
        self.compose_log = root / "compose-calls.jsonl"
        self.base_env = {**os.environ, **GIT_ENV}
        self.git(root, "init", "--quiet", "--bare", "--initial-branch=main", str(self.origin))
        self.git(root, "clone", "--quiet", str(self.origin), str(self.dev))
        shutil.copytree(ROOT / "deploy", self.dev / "deploy", ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("Makefile", "docker-compose.yml", ".gitignore"):
            shutil.copy2(ROOT / name, self.dev / name)
        (self.dev / "RELEASE").write_text("1\n")
        self.git(self.dev, "add", "-A")
        self.git(self.dev, "commit", "--quiet", "-m", "release 1")
        self.git(self.dev, "push", "--quiet", "origin", "main")
        self.git(root, "clone", "--quiet", str(self.origin), str(self.work))
        self.first = self.head()

    def git(self, cwd: Path, *args: str) -> str:
        done = subprocess.run(["git", *args], cwd=cwd, env=self.base_env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
        return done.stdout.strip()

    def commit(self, message: str, files: dict[str, str | None]) -> str:
        for name, content in files.items():
            path = self.dev / name
            if content is None:
                path.unlink()
            else:
                path.write_text(content)
        self.git(self.dev, "add", "-A")
        self.git(self.dev, "commit", "--quiet", "--allow-empty", "-m", message)
        return self.git(self.dev, "rev-parse", "HEAD")

    def push(self, message: str, files: dict[str, str | None] | None = None) -> str:
        commit = self.commit(message, files or {"RELEASE": f"{message}\n"})
        self.git(self.dev, "push", "--quiet", "origin", "main")
        return commit

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **self.base_env,
            "COMPOSE": f"{sys.executable} -S {FAKE_COMPOSE}",
            "FAKE_COMPOSE_LOG": str(self.compose_log),
            "DEPLOY_HEALTH_TIMEOUT": "2",
            "DEPLOY_POLL_INTERVAL": "0.1",
            **extra,
        }

    def redeploy_argv(self, *args: str) -> list[str]:
        # -S: the script needs the standard library only, and starts faster without site-packages.
        return [sys.executable, "-S", str(self.work / "deploy" / "redeploy"), *args]

    def redeploy(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(self.redeploy_argv(*args), env=self.env(**env), capture_output=True, text=True,
                              timeout=120)

    def head(self, repo: Path | None = None) -> str:
        return self.git(repo or self.work, "rev-parse", "HEAD")

    def calls(self) -> list[dict]:
        if not self.compose_log.exists():
            return []
        return [json.loads(line) for line in self.compose_log.read_text().splitlines()]

    def commands(self) -> list[str]:
        return [call["command"] for call in self.calls() if call["command"] != "ps"]

    def ups(self) -> list[str]:
        return [call["commit"] for call in self.calls() if call["command"] == "up"]

    def deploys(self) -> list[dict]:
        path = self.work / ".deploy" / "deploy.log"
        if not path.exists():
            return []
        entries = []
        for line in path.read_text().splitlines():
            fields = {key: json.loads(value) if value.startswith('"') else value
                      for key, value in LOG_LINE.findall(line)}
            entries.append(fields)
        return entries


@pytest.fixture
def site(tmp_path) -> Site:
    return Site(tmp_path)


def bad_release(**flags) -> dict[str, str]:
    return {".fake-compose": json.dumps(flags)}


# ---------------------------------------------------------------- redeploy
def test_a_good_push_deploys_the_new_commit(site):
    new = site.push("release 2")

    done = site.redeploy()

    assert done.returncode == 0, done.stdout + done.stderr
    assert site.head() == new
    assert site.git(site.work, "rev-parse", "main") == new, "the local main branch follows what runs"
    assert site.commands() == ["config", "build", "up", "config", "smoke"]
    assert all(call["commit"] == new for call in site.calls()), "every compose call saw the new commit"
    up = next(call for call in site.calls() if call["command"] == "up")
    assert up["args"] == ["up", "--detach", "--remove-orphans"]
    assert any(call["args"][:2] == ["config", "--quiet"] for call in site.calls())
    [entry] = site.deploys()
    assert (entry["outcome"], entry["commit"], entry["previous"]) == ("deployed", new, site.first)
    transcripts = list((site.work / ".deploy" / "runs").glob("*.log"))
    assert len(transcripts) == 1 and "deployed" in transcripts[0].read_text()


def test_a_failing_health_check_rolls_back_and_brings_the_previous_commit_up_again(site):
    bad = site.push("release 2", bad_release(unhealthy=["api"]))

    done = site.redeploy()

    assert done.returncode == 1, done.stdout + done.stderr
    assert site.head() == site.first
    assert site.ups() == [bad, site.first], "the previous commit was brought up again after the bad one"
    assert "smoke" not in site.commands(), "an unhealthy stack is not smoke-checked"
    assert re.search(r"not healthy after 2s: .*api.* unhealthy", done.stdout)
    assert "rolled back" in done.stdout
    [entry] = site.deploys()
    assert (entry["outcome"], entry["commit"], entry["previous"]) == ("rolled-back", bad, site.first)
    assert "api" in entry["why"]


def test_a_failing_smoke_check_rolls_back(site):
    bad = site.push("release 2", bad_release(fail=["smoke"]))

    done = site.redeploy()

    assert done.returncode == 1, done.stdout
    assert site.head() == site.first
    assert site.ups() == [bad, site.first]
    assert [call["commit"] for call in site.calls() if call["command"] == "smoke"] == [bad], "smoke ran once"
    assert site.deploys()[-1]["outcome"] == "rolled-back"
    assert "smoke check failed" in site.deploys()[-1]["why"]


def test_a_one_shot_that_fails_rolls_back_without_waiting_out_the_timeout(site):
    bad = site.push("release 2", bad_release(exit={"migrate": 1}))
    started = time.monotonic()

    done = site.redeploy(DEPLOY_HEALTH_TIMEOUT="60")

    assert done.returncode == 1, done.stdout
    assert time.monotonic() - started < 30
    assert "migrate-1 exited 1" in done.stdout
    assert site.ups() == [bad, site.first] and site.head() == site.first


def test_a_release_that_does_not_build_leaves_the_running_stack_alone(site):
    site.push("release 2", bad_release(fail=["build"]))

    done = site.redeploy()

    assert done.returncode == 1, done.stdout
    assert site.head() == site.first
    assert site.ups() == [], "nothing was brought up: the stack still runs the previous commit"
    assert "the running stack was not changed" in done.stdout
    assert site.deploys()[-1]["outcome"] == "rolled-back"


def test_when_the_rollback_fails_too_the_exit_status_says_a_person_is_needed(site):
    site.push("release 2")

    done = site.redeploy(FAKE_COMPOSE_UNHEALTHY="postgres")

    assert done.returncode == 3, done.stdout
    assert "ROLLBACK FAILED" in done.stdout
    assert site.head() == site.first
    assert site.deploys()[-1]["outcome"] == "rollback-failed"


# ---------------------------------------------------------------- redeploy, swarm mode
def swarm_env(site: Site, **extra: str) -> dict[str, str]:
    return {"DEPLOY_MODE": "swarm", "SWARM": f"{sys.executable} -S {FAKE_COMPOSE}", **extra}


def test_swarm_mode_builds_the_commit_s_image_deploys_the_stack_with_it_and_runs_smoke(site):
    commit = site.push("release 2")
    done = site.redeploy(**swarm_env(site))
    assert done.returncode == 0, done.stdout + done.stderr
    assert site.commands() == ["image", "config", "build", "deploy", "smoke"]
    build, deploy = (c for c in site.calls() if c["command"] in ("build", "deploy"))
    image = f"tillflow:git-{commit[:12]}"
    assert build["args"] == ["build", image] and deploy["image"] == image and deploy["commit"] == commit
    assert site.head() == commit and site.deploys()[-1]["outcome"] == "deployed"


def test_swarm_mode_and_its_hosts_set_in_the_work_tree_s_env_file_hold_for_a_deploy_a_push_starts(site):
    # The README's swarm set-up writes DEPLOY_MODE=swarm to .env: the hook's environment has none of it.
    (site.work / ".env").write_text(f"DEPLOY_MODE=swarm\nSWARM_NODE_HOSTS='ssh://deploy@host2 ssh://deploy@host3'\n"
                                    f"SWARM={sys.executable} -S {FAKE_COMPOSE}\n")
    commit = site.push("release 2")
    done = site.redeploy()
    assert done.returncode == 0, done.stdout + done.stderr
    assert site.commands() == ["image", "config", "build", "deploy", "smoke"]
    build = next(c for c in site.calls() if c["command"] == "build")
    assert build["args"] == ["build", f"tillflow:git-{commit[:12]}"]
    assert build["node_hosts"] == "ssh://deploy@host2 ssh://deploy@host3"
    # The environment wins over .env, as with Compose.
    site.push("release 3")
    before = len(site.calls())
    assert site.redeploy(DEPLOY_MODE="compose").returncode == 0
    after = [c["command"] for c in site.calls()[before:]]
    assert "up" in after and "deploy" not in after, after


def test_swarm_mode_a_release_swarm_rolled_back_is_deployed_back_with_the_previous_image(site):
    good = site.push("release 2")
    assert site.redeploy(**swarm_env(site)).returncode == 0
    site.push("release 3", bad_release(unhealthy=["api"]))
    done = site.redeploy(**swarm_env(site))
    assert done.returncode == 1, done.stdout + done.stderr
    deploys = [c for c in site.calls() if c["command"] == "deploy"]
    # The bad release's deploy failed; the previous commit went back up with the image it ran.
    assert deploys[-1]["commit"] == good and deploys[-1]["image"] == f"tillflow:git-{good[:12]}"
    assert site.head() == good and site.deploys()[-1]["outcome"] == "rolled-back"
    assert "not healthy" in done.stdout


def test_swarm_mode_a_failing_smoke_check_rolls_back_to_the_previous_image(site):
    good = site.push("release 2")
    assert site.redeploy(**swarm_env(site)).returncode == 0
    site.push("release 3", bad_release(fail=["smoke"]))
    done = site.redeploy(**swarm_env(site))
    assert done.returncode == 1, done.stdout + done.stderr
    assert site.commands()[-2:] == ["smoke", "deploy"]
    assert site.calls()[-1]["image"] == f"tillflow:git-{good[:12]}" and site.calls()[-1]["commit"] == good
    assert site.head() == good


def test_swarm_mode_an_image_that_does_not_build_leaves_the_running_stack_alone(site):
    site.push("release 2", bad_release(fail=["build"]))
    done = site.redeploy(**swarm_env(site))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "deploy" not in site.commands()
    assert site.head() == site.first


def test_main_already_deployed_is_a_no_op_unless_forced(site):
    new = site.push("release 2")
    assert site.redeploy().returncode == 0
    calls = len(site.calls())

    again = site.redeploy()

    assert again.returncode == 0 and len(site.calls()) == calls, "nothing ran the second time"
    assert site.deploys()[-1]["outcome"] == "unchanged"
    forced = site.redeploy("--force")
    assert forced.returncode == 0 and site.ups() == [new, new]
    assert site.deploys()[-1]["outcome"] == "deployed"


def test_a_commit_that_failed_is_not_tried_again_until_main_moves_on(site):
    site.push("release 2", bad_release(unhealthy=["api"]))
    assert site.redeploy().returncode == 1
    calls = len(site.calls())

    again = site.redeploy()

    assert again.returncode == 2 and len(site.calls()) == calls
    assert site.deploys()[-1]["outcome"] == "skipped"
    fixed = site.push("release 3", {".fake-compose": None})
    assert site.redeploy().returncode == 0
    assert site.head() == fixed


def test_local_changes_to_tracked_files_stop_the_deploy_before_anything_moves(site):
    site.push("release 2")
    (site.work / "RELEASE").write_text("edited on the server\n")

    done = site.redeploy()

    assert done.returncode == 2
    assert site.head() == site.first and site.calls() == []
    assert (site.work / "RELEASE").read_text() == "edited on the server\n", "the edit is not thrown away"
    assert "RELEASE" in site.deploys()[-1]["why"]


def test_a_fetch_that_fails_changes_nothing(site):
    site.git(site.work, "remote", "set-url", "origin", str(site.root / "gone.git"))

    done = site.redeploy()

    assert done.returncode == 2 and site.calls() == []
    assert site.deploys()[-1]["outcome"] == "failed" and "git fetch failed" in site.deploys()[-1]["why"]


def test_two_pushes_at_once_deploy_one_after_the_other(site):
    second = site.push("release 2")
    env = dict(FAKE_COMPOSE_UP_SECONDS="1.5")
    first_run = subprocess.Popen(site.redeploy_argv(), env=site.env(FAKE_COMPOSE_TAG="a", **env),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: any(call["tag"] == "a" for call in site.calls()), what="the first deploy to start")
    third = site.push("release 3")
    second_run = subprocess.Popen(site.redeploy_argv(), env=site.env(FAKE_COMPOSE_TAG="b", **env),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out_a, _ = first_run.communicate(timeout=120)
    out_b, _ = second_run.communicate(timeout=120)

    assert first_run.returncode == 0, out_a
    assert second_run.returncode == 0, out_b
    calls = site.calls()
    a = [call for call in calls if call["tag"] == "a"]
    b = [call for call in calls if call["tag"] == "b"]
    assert {call["commit"] for call in a} == {second} and {call["commit"] for call in b} == {third}
    assert max(call["end"] for call in a) <= min(call["start"] for call in b), "the deploys overlapped"
    assert "another deploy is running" in out_b
    assert site.head() == third
    assert [(e["outcome"], e["commit"]) for e in site.deploys()] == [("deployed", second), ("deployed", third)]


# ---------------------------------------------------------------- post-receive
@pytest.mark.parametrize("install", ["symlink", "copy"])
def test_a_push_to_main_runs_the_hook_which_deploys_it(site, install):
    hook = site.origin / "hooks" / "post-receive"
    if install == "symlink":
        hook.symlink_to(site.work / "deploy" / "post-receive")
    else:
        shutil.copy2(site.work / "deploy" / "post-receive", hook)
        site.git(site.origin, "config", "tillflow.worktree", str(site.work))
    new = site.commit("release 2", {"RELEASE": "2\n"})

    pushed = subprocess.run(["git", "push", "origin", "main"], cwd=site.dev, env=site.env(), capture_output=True,
                            text=True, timeout=120)

    assert pushed.returncode == 0, pushed.stderr
    assert "remote: post-receive: main moved" in pushed.stderr
    assert "remote: post-receive: deploy finished" in pushed.stderr, pushed.stderr
    assert site.head() == new
    assert [(e["outcome"], e["commit"]) for e in site.deploys()] == [("deployed", new)]

    site.commit("a feature", {"FEATURE": "x\n"})
    other = subprocess.run(["git", "push", "origin", "HEAD:refs/heads/feature"], cwd=site.dev, env=site.env(),
                           capture_output=True, text=True, timeout=120)
    assert other.returncode == 0 and "post-receive" not in other.stderr
    assert len(site.deploys()) == 1 and site.head() == new, "a push to another branch deploys nothing"


def test_the_hook_reports_a_rolled_back_deploy_to_the_pusher(site):
    (site.origin / "hooks" / "post-receive").symlink_to(site.work / "deploy" / "post-receive")
    site.commit("release 2", bad_release(unhealthy=["api"]))

    pushed = subprocess.run(["git", "push", "origin", "main"], cwd=site.dev, env=site.env(), capture_output=True,
                            text=True, timeout=120)

    assert pushed.returncode == 0, "the push itself happened"
    assert "DEPLOY FAILED and was rolled back" in pushed.stderr
    assert site.head() == site.first


# ---------------------------------------------------------------- webhook
def sign(body: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def push_event(ref: str = "refs/heads/main", **extra) -> bytes:
    return json.dumps({"ref": ref, "before": "0" * 40, "after": "1" * 40, **extra}).encode()


class Webhook:
    """``python3 -m deploy.webhook`` from a work tree, on a free port."""

    def __init__(self, cwd: Path, env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-S", "-m", "deploy.webhook"], cwd=cwd,
                                         env={**env, "WEBHOOK_PORT": "0", "WEBHOOK_SECRET": SECRET},
                                         stdout=out, stderr=subprocess.STDOUT)
        match = wait_for(lambda: self.proc.poll() is None and re.search(r"listening on [\d.]+:(\d+)", self.text()),
                         what=f"the webhook to listen; its log:\n{self.text()}")
        self.url = f"http://127.0.0.1:{match.group(1)}"

    def text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def post(self, body: bytes, headers: dict[str, str], path: str = "/") -> tuple[int, dict]:
        request = urllib.request.Request(self.url + path, data=body, method="POST",
                                         headers={"Content-Type": "application/json", **headers})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def github(self, body: bytes, event: str = "push", secret: str = SECRET) -> tuple[int, dict]:
        return self.post(body, {"X-GitHub-Event": event, "X-GitHub-Delivery": "d-1",
                                "X-Hub-Signature-256": f"sha256={sign(body, secret)}"})

    def gitea(self, body: bytes, event: str = "push", secret: str = SECRET) -> tuple[int, dict]:
        return self.post(body, {"X-Gitea-Event": event, "X-Gitea-Signature": sign(body, secret)})

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture
def recorder(tmp_path):
    """A stand-in deploy command: appends a line to ``runs`` per run, and waits while ``gate`` exists."""
    script = tmp_path / "fake-deploy"
    script.write_text('#!/bin/sh\necho run >> "$RUNS"\nwhile [ -e "$GATE" ]; do sleep 0.05; done\n')
    script.chmod(0o755)
    runs, gate = tmp_path / "runs", tmp_path / "gate"
    hook = Webhook(ROOT, {**os.environ, "DEPLOY_COMMAND": str(script), "RUNS": str(runs), "GATE": str(gate)},
                   tmp_path / "webhook.log")
    hook.runs = lambda: len(runs.read_text().splitlines()) if runs.exists() else 0
    hook.gate = gate
    yield hook
    gate.unlink(missing_ok=True)
    hook.stop()


def test_a_bad_or_missing_signature_is_refused_with_401_and_triggers_nothing(recorder):
    body = push_event()
    refused = [
        recorder.github(body, secret="another-secret-of-some-length"),
        recorder.gitea(body, secret="another-secret-of-some-length"),
        recorder.post(body, {"X-GitHub-Event": "push"}),
        recorder.post(body, {"X-GitHub-Event": "push", "X-Hub-Signature-256": f"sha1={sign(body)[:40]}"}),
        recorder.post(body, {"X-GitHub-Event": "push", "X-Hub-Signature-256": f"sha256={sign(body + b' ')}"}),
        recorder.post(body, {"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=",
                             "X-Gitea-Signature": sign(body)}),
    ]

    assert [status for status, _ in refused] == [401] * len(refused)
    # A good delivery afterwards runs once, and only once: none of the refused ones queued a run.
    assert recorder.github(body) == (202, {"status": "started"})
    wait_for(lambda: recorder.runs() == 1, what="the deploy")
    time.sleep(0.5)
    assert recorder.runs() == 1
    assert "missing or bad signature" in recorder.text()


def test_a_good_gitea_signature_triggers_a_deploy(recorder):
    assert recorder.gitea(push_event()) == (202, {"status": "started"})
    wait_for(lambda: recorder.runs() == 1, what="the deploy")


def test_pings_other_events_and_other_branches_deploy_nothing(recorder):
    assert recorder.github(b'{"zen": "hi"}', event="ping") == (200, {"status": "pong"})
    assert recorder.github(push_event(), event="issues")[1]["status"] == "ignored"
    assert recorder.github(push_event("refs/heads/feature"))[1]["status"] == "ignored"
    assert recorder.github(push_event("refs/tags/v1"))[1]["status"] == "ignored"
    assert recorder.github(push_event(deleted=True))[1]["status"] == "ignored"
    assert recorder.github(b"not json")[0] == 400
    with urllib.request.urlopen(recorder.url + "/healthz", timeout=5) as response:
        assert response.status == 200
    time.sleep(0.3)
    assert recorder.runs() == 0


def test_pushes_during_a_deploy_queue_exactly_one_more_run(recorder):
    recorder.gate.touch()
    assert recorder.github(push_event())[1] == {"status": "started"}
    wait_for(lambda: recorder.runs() == 1, what="the first deploy")
    assert recorder.github(push_event())[1] == {"status": "queued"}
    assert recorder.gitea(push_event())[1] == {"status": "queued"}

    recorder.gate.unlink()

    wait_for(lambda: recorder.runs() == 2, what="the queued deploy")
    time.sleep(0.5)
    assert recorder.runs() == 2, "two pushes during a deploy make one more run, not two"
    assert recorder.github(push_event())[1] == {"status": "started"}, "idle again afterwards"


def test_a_signed_push_redeploys_the_work_tree_once(site, tmp_path):
    new = site.push("release 2")
    hook = Webhook(site.work, site.env(), tmp_path / "webhook.log")
    try:
        assert hook.github(push_event(after=new)) == (202, {"status": "started"})
        wait_for(lambda: site.deploys(), what=f"the deploy; webhook log:\n{hook.text()}")
        time.sleep(0.5)
    finally:
        hook.stop()

    assert [(e["outcome"], e["commit"]) for e in site.deploys()] == [("deployed", new)]
    assert site.head() == new
    assert "deploy finished with exit status 0" in hook.text()


def test_the_webhook_refuses_to_start_without_a_real_secret(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEBHOOK_")}
    done = subprocess.run([sys.executable, "-m", "deploy.webhook"], cwd=ROOT, env={**env, "WEBHOOK_SECRET": "short"},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "WEBHOOK_SECRET" in done.stderr

    missing = tmp_path / "nope"
    done = subprocess.run([sys.executable, "-m", "deploy.webhook"], cwd=ROOT,
                          env={**env, "WEBHOOK_SECRET_FILE": str(missing)}, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and str(missing) in done.stderr
