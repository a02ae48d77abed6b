"""Fixtures shared by the API tests (test_api.py, test_api_stream.py)."""
from __future__ import annotations

import pytest

from etl.api import tokens
from support.api import ApiServer


@pytest.fixture
def api_env(env) -> dict[str, str]:
    """The test's environment, for ``tillflow serve``; a test may change it before ``server``."""
    return dict(env)


@pytest.fixture
def token(migrated_db) -> str:
    return tokens.create(migrated_db.url("owner"), "main", "tests")


@pytest.fixture
def server(api_env, tmp_path):
    """``tillflow serve`` for this test; stopped cleanly, with no traceback in its log."""
    api = ApiServer(api_env, tmp_path / "api.log").start()
    yield api
    assert api.stop() == 0, api.log()
    assert "Traceback" not in api.log(), api.log()
