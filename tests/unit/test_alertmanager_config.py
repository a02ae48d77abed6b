"""Alertmanager's configuration as `tillflow alertmanager-config` renders it, and
the compose services that run it. Each rendered file is also checked by
Debian's `amtool check-config` (package prometheus-alertmanager, which
scripts/bootstrap installs). A real Alertmanager delivering what these files
say is tests/integration/test_alertmanager.py."""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tillflow.alerting import (
    EMAIL_SUBJECT,
    EMAIL_TEXT,
    NO_RECEIVER_WARNING,
    NULL_RECEIVER,
    PRODUCTION,
    RECEIVER,
    Timing,
    render,
)
from tillflow.config import Settings
from tillflow.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
TILLFLOW = str(Path(sys.executable).with_name("tillflow"))

WEBHOOK = {"ALERT_WEBHOOK_URL": "https://hooks.example.com/tillflow/"}
EMAIL = {"ALERT_EMAIL_TO": "oncall@example.com, boss@example.com", "ALERT_EMAIL_FROM": "tillflow@example.com",
         "ALERT_SMTP_SMARTHOST": "smtp.example.com:587"}
LOGIN = {"ALERT_SMTP_USERNAME": "tillflow", "ALERT_SMTP_PASSWORD": "a-real-password"}


def rendered(env: dict[str, str], timing: Timing | None = None) -> dict:
    return yaml.safe_load(render(Settings.from_env(env), timing).text)


def receiver(config: dict) -> dict:
    (found,) = [r for r in config["receivers"] if r["name"] == config["route"]["receiver"]]
    return found


def amtool_check(path: Path) -> None:
    amtool = shutil.which("amtool")
    assert amtool, "amtool is missing: `make deps` installs Debian's prometheus-alertmanager, which has it"
    done = subprocess.run([amtool, "check-config", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


# ---------------------------------------------------------------- the receivers
@pytest.mark.parametrize(("env", "kinds"), [
    (WEBHOOK, {"webhook_configs"}),
    (EMAIL, {"email_configs"}),
    ({**EMAIL, **LOGIN}, {"email_configs"}),
    ({**WEBHOOK, **EMAIL, **LOGIN}, {"webhook_configs", "email_configs"}),
    ({}, set()),
], ids=["webhook", "email", "email-login", "both", "none"])
def test_each_combination_renders_a_configuration_amtool_accepts(env, kinds, tmp_path):
    settings = Settings.from_env(env)
    result = render(settings)
    path = tmp_path / "alertmanager.yml"
    path.write_text(result.text, encoding="utf-8")
    amtool_check(path)
    config = yaml.safe_load(result.text)
    chosen = receiver(config)
    assert set(chosen) - {"name"} == kinds
    for kind in kinds:
        assert all(entry["send_resolved"] is True for entry in chosen[kind]), "resolved alerts are sent too"
    assert set(result.receivers) == {kind.removesuffix("_configs") for kind in kinds}


def test_the_webhook_gets_the_url_as_given():
    (hook,) = receiver(rendered(WEBHOOK))["webhook_configs"]
    assert hook["url"] == "https://hooks.example.com/tillflow/"


def test_email_goes_through_the_smarthost_with_the_login():
    config = rendered({**EMAIL, **LOGIN})
    assert config["global"] == {
        "smtp_smarthost": "smtp.example.com:587", "smtp_from": "tillflow@example.com", "smtp_require_tls": True,
        "smtp_auth_username": "tillflow", "smtp_auth_password": "a-real-password",
    }
    (mail,) = receiver(config)["email_configs"]
    assert mail["to"] == "oncall@example.com, boss@example.com"
    assert mail["headers"] == {"Subject": EMAIL_SUBJECT} and mail["text"] == EMAIL_TEXT
    assert "smtp_auth_password" not in rendered(EMAIL)["global"], "no login without a user"
    assert rendered({**EMAIL, "ALERT_SMTP_REQUIRE_TLS": "false"})["global"]["smtp_require_tls"] is False


def test_the_smtp_password_may_come_from_a_file(tmp_path):
    secret = tmp_path / "alert_smtp_password"
    secret.write_text("from-the-file\n")
    config = rendered({**EMAIL, "ALERT_SMTP_USERNAME": "tillflow", "ALERT_SMTP_PASSWORD_FILE": str(secret)})
    assert config["global"]["smtp_auth_password"] == "from-the-file"


def test_the_email_carries_each_alerts_summary_description_and_runbook():
    for field in (".Annotations.summary", ".Annotations.description", ".Annotations.runbook",
                  ".Labels.alertname", ".Labels.severity"):
        assert field in EMAIL_TEXT, f"the e-mail body leaves out {field}"
    assert ".CommonLabels.alertname" in EMAIL_SUBJECT and ".CommonAnnotations.summary" in EMAIL_SUBJECT
    assert "RESOLVED" in EMAIL_SUBJECT and "RESOLVED" in EMAIL_TEXT


@pytest.mark.parametrize(("env", "named"), [
    ({"ALERT_EMAIL_TO": "oncall@example.com"}, "ALERT_EMAIL_FROM, ALERT_SMTP_SMARTHOST"),
    ({**EMAIL, "ALERT_SMTP_SMARTHOST": ""}, "ALERT_SMTP_SMARTHOST"),
    ({"ALERT_SMTP_USERNAME": "tillflow"}, "ALERT_EMAIL_TO, ALERT_EMAIL_FROM, ALERT_SMTP_SMARTHOST"),
    ({**EMAIL, "ALERT_SMTP_USERNAME": "tillflow"}, "ALERT_SMTP_PASSWORD_FILE"),
])
def test_half_configured_email_is_refused_naming_what_is_missing(env, named):
    with pytest.raises(ConfigError, match=named):
        render(Settings.from_env(env))


@pytest.mark.parametrize(("env", "named"), [
    ({"ALERT_WEBHOOK_URL": "hooks.example.com/x"}, "ALERT_WEBHOOK_URL"),
    ({"ALERT_EMAIL_TO": "oncall"}, "ALERT_EMAIL_TO"),
    ({"ALERT_EMAIL_FROM": "a@example.com, b@example.com"}, "ALERT_EMAIL_FROM"),
    ({"ALERT_SMTP_SMARTHOST": "smtp.example.com"}, "ALERT_SMTP_SMARTHOST"),
    ({"ALERT_SMTP_REQUIRE_TLS": "maybe"}, "ALERT_SMTP_REQUIRE_TLS"),
    ({"ALERTMANAGER_URL": "alertmanager:9093"}, "ALERTMANAGER_URL"),
])
def test_a_malformed_alert_setting_is_named(env, named):
    with pytest.raises(ConfigError, match=named):
        Settings.from_env(env)


# ---------------------------------------------------------------- no receiver
def test_without_a_receiver_alerts_go_to_a_null_receiver_and_a_warning_says_so():
    result = render(Settings.from_env({}))
    config = yaml.safe_load(result.text)
    assert config["route"]["receiver"] == NULL_RECEIVER
    assert config["receivers"] == [{"name": NULL_RECEIVER}]
    assert result.warnings == [NO_RECEIVER_WARNING]
    assert render(Settings.from_env(WEBHOOK)).warnings == []


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    clean = {**{k: v for k, v in os.environ.items() if not k.startswith("ALERT")}, **env}
    return subprocess.run([TILLFLOW, "alertmanager-config", *args], env=clean, capture_output=True, text=True,
                          timeout=60)


def test_the_command_warns_in_one_line_and_still_writes_a_valid_file(tmp_path):
    path = tmp_path / "out" / "alertmanager.yml"
    done = run_cli({}, "--output", str(path))
    assert done.returncode == 0, done.stderr
    [warning] = [line for line in done.stderr.splitlines() if "WARNING" in line]
    assert "alerts reach nobody" in warning
    for variable in ("ALERT_WEBHOOK_URL", "ALERT_EMAIL_TO", "ALERT_EMAIL_FROM", "ALERT_SMTP_SMARTHOST"):
        assert variable in warning, f"the warning does not say to set {variable}"
    assert path.stat().st_mode & 0o777 == 0o644, "Alertmanager reads it as another user"
    amtool_check(path)


def test_the_command_prints_the_configuration_and_refuses_half_an_email_receiver():
    done = run_cli(WEBHOOK)
    assert done.returncode == 0 and "WARNING" not in done.stderr
    assert receiver(yaml.safe_load(done.stdout))["name"] == RECEIVER
    done = run_cli({"ALERT_EMAIL_TO": "oncall@example.com"})
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("tillflow alertmanager-config: alert e-mail is half")


# ---------------------------------------------------------------- grouping
def test_production_grouping_does_not_flood():
    route = rendered(WEBHOOK)["route"]
    assert route["group_by"][0] == "alertname" and "severity" in route["group_by"]
    assert (route["group_wait"], route["group_interval"], route["repeat_interval"]) == ("30s", "5m", "4h")
    assert PRODUCTION == Timing()


def test_alert_group_interval_sets_how_often_a_group_s_changes_and_its_resolution_go_out(tmp_path):
    route = rendered({**WEBHOOK, "ALERT_GROUP_INTERVAL": "1m"})["route"]
    assert (route["group_wait"], route["group_interval"], route["repeat_interval"]) == ("30s", "1m", "4h")
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(rendered({**WEBHOOK, "ALERT_GROUP_INTERVAL": "1h30m"})))
    amtool_check(path)
    for bad in ("5 minutes", "0s", "10", "-1m"):
        with pytest.raises(ConfigError, match="ALERT_GROUP_INTERVAL"):
            Settings.from_env({**WEBHOOK, "ALERT_GROUP_INTERVAL": bad})


def test_a_test_may_shorten_the_whole_timing_through_the_renderer(tmp_path):
    config = rendered(WEBHOOK, Timing("1s", "2s", "1h"))
    assert (config["route"]["group_wait"], config["route"]["group_interval"]) == ("1s", "2s")
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    amtool_check(path)


def test_a_critical_alert_holds_back_the_warning_of_the_same_name():
    (rule,) = rendered(WEBHOOK)["inhibit_rules"]
    assert rule == {"source_matchers": ['severity="critical"'], "target_matchers": ['severity="warning"'],
                    "equal": ["alertname"]}


# ---------------------------------------------------------------- compose
@functools.cache
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))


def test_alertmanager_runs_for_good_unpublished_and_checked():
    service = compose()["services"]["alertmanager"]
    assert service["image"] == "${ALERTMANAGER_IMAGE:-prom/alertmanager:v0.28.1}"
    assert (ROOT / "docker-compose.yml").read_text(encoding="utf-8").count("prom/alertmanager:") == 1, (
        "the version is written once")
    assert service["restart"] == "always"
    assert not service.get("ports"), "Alertmanager is never published"
    assert "backend" in service["networks"]
    assert service["healthcheck"]["test"] == ["CMD", "wget", "-q", "-O", "/dev/null",
                                              "http://127.0.0.1:9093/-/ready"]
    assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in service["security_opt"]
    assert "--cluster.listen-address=" in service["command"], "one instance: no gossip port"
    volumes = compose()["volumes"]
    mounts = {target: source for source, target, *_ in (m.split(":") for m in service["volumes"])}
    assert volumes[mounts["/alertmanager"]]["name"] == "tillflow-alertmanager-data"


def test_alertmanager_reads_what_the_one_shot_renders():
    services = compose()["services"]
    renderer, alertmanager = services["alertmanager-config"], services["alertmanager"]
    assert renderer["command"][:1] == ["alertmanager-config"] and renderer["restart"] == "no"
    output = Path(renderer["command"][renderer["command"].index("--output") + 1])
    assert alertmanager["depends_on"] == {"alertmanager-config": {"condition": "service_completed_successfully"}}
    written = {target: source for source, target, *_ in (m.split(":") for m in renderer["volumes"])}
    read = {target: (source, mode) for source, target, *mode in (m.split(":") for m in alertmanager["volumes"])}
    volume = written[str(output.parent)]
    (directory,) = [target for target, (source, _) in read.items() if source == volume]
    assert read[directory][1] == ["ro"], "Alertmanager only reads its configuration"
    assert f"--config.file={directory}/{output.name}" in alertmanager["command"]
    env = renderer["environment"]
    for variable in ("ALERT_WEBHOOK_URL", "ALERT_EMAIL_TO", "ALERT_EMAIL_FROM", "ALERT_SMTP_SMARTHOST",
                     "ALERT_SMTP_USERNAME", "ALERT_SMTP_REQUIRE_TLS"):
        assert env[variable] == f"${{{variable}:-}}", f"{variable} does not come from .env"
    assert env["ALERT_SMTP_PASSWORD_FILE"] == "/run/secrets/alert_smtp_password"


def test_prometheus_sends_alerts_to_alertmanager_and_scrapes_it():
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    (manager,) = config["alerting"]["alertmanagers"]
    assert manager["static_configs"] == [{"targets": ["alertmanager:9093"]}]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["alertmanager"]["static_configs"] == [{"targets": ["alertmanager:9093"]}]


def test_make_smoke_checks_alertmanager():
    assert compose()["services"]["smoke"]["environment"]["ALERTMANAGER_URL"] == "http://alertmanager:9093"
