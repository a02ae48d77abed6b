"""etl.api.spool: a client's file name never becomes a path on the server."""
from __future__ import annotations

import pytest

from etl.api.spool import safe_name


@pytest.mark.parametrize(("given", "expected"), [
    ("retail_05_01_2026.csv", "retail_05_01_2026.csv"),
    ("C:\\exports\\retail_05_01_2026.csv", "retail_05_01_2026.csv"),
    ("../../etc/passwd", "passwd"),
    ("/etc/", "upload.csv"),
    ("..", "upload.csv"),
    ("", "upload.csv"),
    (None, "upload.csv"),
    ("ventes été.csv", "ventes_t_.csv"),
    ("a\0b.csv", "a_b.csv"),
    (".hidden.csv", "hidden.csv"),
])
def test_safe_name_keeps_the_last_component_in_safe_characters(given, expected):
    assert safe_name(given) == expected


def test_safe_name_is_bounded():
    assert len(safe_name("x" * 1000 + ".csv")) == 120
