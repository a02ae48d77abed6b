"""``tillflow alertmanager-config``: Alertmanager's configuration from the settings.

Alertmanager does not expand environment variables, so its ``alertmanager.yml``
is rendered from the ``ALERT_*`` settings (``.env``): the compose one-shot
``alertmanager-config`` writes it into the volume Alertmanager reads.

Receivers, each optional:

``webhook``  ALERT_WEBHOOK_URL gets Alertmanager's standard JSON (version 4):
             every alert with its labels and annotations (summary, description,
             runbook), firing and resolved
``email``    ALERT_EMAIL_TO, from ALERT_EMAIL_FROM through ALERT_SMTP_SMARTHOST
             (ALERT_SMTP_USERNAME and ALERT_SMTP_PASSWORD when it needs a login);
             the subject names the alert, the body carries each alert's
             summary, description and runbook

With neither, the configuration is still valid and routes every alert to the
receiver ``nobody``, which sends nothing, and a warning says that alerts reach
nobody and which variables to set.

Grouping (``PRODUCTION``): alerts of the same name and severity go out
together; the first notification of a group waits ``group_wait`` for its
companions, changes to a group go out at most every ``group_interval``, and a
group still firing is sent again every ``repeat_interval``. Resolved alerts are
sent too.

Errors::

    ConfigError   an e-mail receiver is half configured; the message names what is missing
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TextIO

import yaml

from tillflow.config import Settings
from tillflow.errors import ConfigError

log = logging.getLogger(__name__)

NULL_RECEIVER = "nobody"
RECEIVER = "tillflow"
GROUP_BY = ("alertname", "severity")
NO_RECEIVER_WARNING = (
    "no alert receiver is configured, so alerts reach nobody: set ALERT_WEBHOOK_URL, or ALERT_EMAIL_TO, "
    "ALERT_EMAIL_FROM and ALERT_SMTP_SMARTHOST (with ALERT_SMTP_USERNAME and ALERT_SMTP_PASSWORD_FILE for a "
    "login), in .env"
)
EMAIL_SETTINGS = ("ALERT_EMAIL_TO", "ALERT_EMAIL_FROM", "ALERT_SMTP_SMARTHOST")

# Go templates of Alertmanager's notification data (prometheus.io/docs/alerting/latest/notifications/).
EMAIL_SUBJECT = (
    '[Tillflow {{ if eq .Status "firing" }}FIRING{{ else }}RESOLVED{{ end }}] '
    "{{ .CommonLabels.alertname }} ({{ .CommonLabels.severity }}): "
    "{{ if .CommonAnnotations.summary }}{{ .CommonAnnotations.summary }}"
    "{{ else }}{{ len .Alerts }} alerts{{ end }}"
)
EMAIL_TEXT = (
    "{{ range .Alerts }}"
    '{{ if eq .Status "firing" }}FIRING{{ else }}RESOLVED{{ end }}: {{ .Labels.alertname }}'
    " ({{ .Labels.severity }}), since {{ .StartsAt.UTC.Format \"2006-01-02 15:04:05 UTC\" }}"
    '{{ if eq .Status "resolved" }}, resolved {{ .EndsAt.UTC.Format "2006-01-02 15:04:05 UTC" }}{{ end }}\n'
    "Summary: {{ .Annotations.summary }}\n"
    "{{ if .Annotations.description }}{{ .Annotations.description }}\n{{ end }}"
    "Runbook: {{ .Annotations.runbook }}\n"
    "Labels:{{ range .Labels.SortedPairs }} {{ .Name }}={{ .Value }}{{ end }}\n"
    "\n{{ end }}"
    "Alertmanager: {{ .ExternalURL }}\n"
)


@dataclass(frozen=True)
class Timing:
    group_wait: str = "30s"
    group_interval: str = "5m"
    repeat_interval: str = "4h"


PRODUCTION = Timing()


@dataclass(frozen=True)
class Rendered:
    text: str
    receivers: tuple[str, ...]  # "webhook", "email"; empty: alerts reach nobody

    @property
    def warnings(self) -> list[str]:
        return [] if self.receivers else [NO_RECEIVER_WARNING]


def _email(settings: Settings) -> tuple[dict, dict] | None:
    """(global SMTP settings, the e-mail receiver), or None when no e-mail setting is given."""
    given = {
        "ALERT_EMAIL_TO": settings.alert_email_to,
        "ALERT_EMAIL_FROM": settings.alert_email_from,
        "ALERT_SMTP_SMARTHOST": settings.alert_smtp_smarthost,
    }
    if not any(given.values()) and not settings.alert_smtp_username:
        return None
    missing = [name for name, value in given.items() if not value]
    if missing:
        raise ConfigError(f"alert e-mail is half configured: set {', '.join(missing)} as well "
                          f"(or none of {', '.join(EMAIL_SETTINGS)})")
    smtp = {
        "smtp_smarthost": settings.alert_smtp_smarthost,
        "smtp_from": settings.alert_email_from,
        "smtp_require_tls": settings.alert_smtp_require_tls,
    }
    if settings.alert_smtp_username:
        if not settings.alert_smtp_password:
            raise ConfigError("ALERT_SMTP_USERNAME is set but no password: set ALERT_SMTP_PASSWORD_FILE "
                              "(compose: ./secrets/alert_smtp_password)")
        smtp["smtp_auth_username"] = settings.alert_smtp_username
        smtp["smtp_auth_password"] = settings.alert_smtp_password
    receiver = {
        "to": settings.alert_email_to,
        "send_resolved": True,
        "headers": {"Subject": EMAIL_SUBJECT},
        "text": EMAIL_TEXT,
        "html": "",
    }
    return smtp, receiver


def render(settings: Settings, timing: Timing | None = None) -> Rendered:
    """alertmanager.yml for these settings (``timing``: ``PRODUCTION`` with the settings' group interval)."""
    timing = timing or replace(PRODUCTION, group_interval=settings.alert_group_interval)
    receiver: dict = {"name": RECEIVER}
    used = []
    if settings.alert_webhook_url:
        receiver["webhook_configs"] = [{"url": settings.alert_webhook_url, "send_resolved": True}]
        used.append("webhook")
    global_settings: dict = {}
    email = _email(settings)
    if email is not None:
        global_settings, email_receiver = email
        receiver["email_configs"] = [email_receiver]
        used.append("email")
    receivers = [{"name": NULL_RECEIVER}] + ([receiver] if used else [])
    config = {
        "global": global_settings,
        "route": {
            "receiver": RECEIVER if used else NULL_RECEIVER,
            "group_by": list(GROUP_BY),
            "group_wait": timing.group_wait,
            "group_interval": timing.group_interval,
            "repeat_interval": timing.repeat_interval,
        },
        # A critical alert silences the warning of the same name (KafkaBrokerDown has both).
        "inhibit_rules": [{
            "source_matchers": ['severity="critical"'],
            "target_matchers": ['severity="warning"'],
            "equal": ["alertname"],
        }],
        "receivers": receivers,
    }
    header = ("# Rendered by `tillflow alertmanager-config` from the ALERT_* settings (.env.example);\n"
              "# edit those, not this file: it is rendered again on every start.\n")
    text = header + yaml.dump(config, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=4096,
                              allow_unicode=True)
    return Rendered(text, tuple(used))


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the e-mail template) as literal blocks, readable in the file."""


_Dumper.add_representer(
    str, lambda dumper, value: dumper.represent_scalar(
        "tag:yaml.org,2002:str", value, style="|" if "\n" in value else None))


def write_atomically(path: Path, text: str) -> None:
    """Readable by all (Alertmanager runs as another user), replaced in one rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".alertmanager-", suffix=".yml")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def cli_alertmanager_config(settings: Settings, output: Path | None, out: TextIO | None = None) -> int:
    """Render; write to ``output`` (else print). A missing receiver is a warning, not an error."""
    rendered = render(settings)
    for warning in rendered.warnings:
        log.warning("%s", warning)
    if output is None:
        (out or sys.stdout).write(rendered.text)
    else:
        try:
            write_atomically(output, rendered.text)
        except OSError as exc:
            raise ConfigError(f"cannot write {output} ({exc.strerror})") from exc
        log.info("wrote %s: receivers %s", output, ", ".join(rendered.receivers) or NULL_RECEIVER)
    return 0
