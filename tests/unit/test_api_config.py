"""The API's settings in tillflow.config: defaults, parsing, and one-sentence errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from tillflow.config import Settings
from tillflow.errors import ConfigError


def test_defaults_listen_on_loopback_with_bounded_limits():
    s = Settings.from_env({})
    assert (s.api_host, s.api_port) == ("127.0.0.1", 8000)
    assert s.api_max_body_bytes == 1 << 20 and s.api_max_batch == 1000
    assert s.api_max_upload_bytes == 64 << 20 and s.api_max_frame_bytes == 64 << 10
    assert s.api_ws_max_in_flight == 1000 and s.api_publish_timeout == 10.0
    assert s.api_auth_cache_seconds == 5.0 and s.api_spool_dir is None


def test_every_api_variable_is_read():
    s = Settings.from_env({
        "API_HOST": "0.0.0.0", "API_PORT": "9000", "API_MAX_BODY_BYTES": "4096", "API_MAX_BATCH": "10",
        "API_MAX_UPLOAD_BYTES": "8192", "API_MAX_FRAME_BYTES": "2048", "API_WS_MAX_IN_FLIGHT": "8",
        "API_PUBLISH_TIMEOUT_SECONDS": "2.5", "API_AUTH_CACHE_SECONDS": "0", "API_SPOOL_DIR": "/data/spool",
    })
    assert (s.api_host, s.api_port, s.api_max_body_bytes, s.api_max_batch) == ("0.0.0.0", 9000, 4096, 10)
    assert (s.api_max_upload_bytes, s.api_max_frame_bytes, s.api_ws_max_in_flight) == (8192, 2048, 8)
    assert (s.api_publish_timeout, s.api_auth_cache_seconds, s.api_spool_dir) == (2.5, 0.0, Path("/data/spool"))


@pytest.mark.parametrize(("name", "value", "words"), [
    ("API_PORT", "0", "at least 1"), ("API_PORT", "70000", "not a TCP port"), ("API_PORT", "http", "whole number"),
    ("API_MAX_BATCH", "0", "at least 1"), ("API_MAX_BODY_BYTES", "10", "at least 1024"),
    ("API_PUBLISH_TIMEOUT_SECONDS", "0.1", "at least 0.5"), ("API_WS_MAX_IN_FLIGHT", "-1", "at least 1"),
])
def test_a_malformed_value_is_named_in_one_sentence(name, value, words):
    with pytest.raises(ConfigError) as info:
        Settings.from_env({name: value})
    assert name in str(info.value) and words in str(info.value)
