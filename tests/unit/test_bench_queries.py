"""The query benchmark (bench/queries.py) asks every question the dashboards and the report
ask, and its raw-table baselines ask the same ones. Read as data: no PostgreSQL needed."""
from __future__ import annotations

import datetime
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # bench/ is not an installed package: run from the checkout
    sys.path.insert(0, str(ROOT))

from bench import queries  # noqa: E402

WINDOW = queries.Window.ending(datetime.date(2026, 1, 31))
CHOSEN = {"top": "Baker's loaf #1", "tail": 'Wine "Reserva", red #999'}
ROLLUPS = re.compile(r"\b(daily_store_totals|daily_product_totals)\b")


@pytest.fixture(scope="module")
def asked() -> list[queries.Question]:
    return queries.questions(WINDOW, CHOSEN, "Baker's loaf #1")


def dashboard_sql() -> list[tuple[str, str, str | None]]:
    """(board, SQL as written in the file, variable the panel repeats over) of every PostgreSQL
    query of every dashboard file: panel targets and template variables."""
    found = []
    for path in sorted((ROOT / "grafana" / "dashboards").glob("*.json")):
        board = json.loads(path.read_text(encoding="utf-8"))
        for panel in board["panels"]:
            for p in [panel, *panel.get("panels", [])]:
                for target in p.get("targets", []):
                    if target["datasource"]["uid"] == "tillflow-postgres":
                        found.append((path.stem, target["rawSql"], p.get("repeat")))
        for variable in board.get("templating", {}).get("list", []):
            if variable.get("datasource", {}).get("uid") == "tillflow-postgres":
                found.append((path.stem, variable["query"], None))
    return found


def test_every_postgres_query_of_both_dashboards_is_benchmarked(asked):
    files = dashboard_sql()
    assert {board for board, _, _ in files} == {"sales", "pipeline"}
    for board_name, sql, repeat in files:
        board = queries.dashboards()[board_name]
        benchmarked = {q.sql for q in asked if q.source == board_name}
        if repeat:  # Grafana runs a repeated panel once per chosen value
            expected = [queries.expand(sql, board, WINDOW, {repeat: [value]}) for value in CHOSEN.values()]
        else:
            expected = [queries.expand(sql, board, WINDOW, {"product": list(CHOSEN.values())})]
        for one in expected:
            assert one in benchmarked, f"not benchmarked ({board_name}):\n{one}"
    panel_count = sum(len(CHOSEN) if repeat else 1 for _, _, repeat in files)
    assert len([q for q in asked if q.source != "report"]) == panel_count


def test_a_repeated_panel_is_timed_once_per_chosen_value(asked):
    repeated = [q for q in asked if q.key.startswith("sales/7[")]
    assert sorted(q.key for q in repeated) == ["sales/7[tail]", "sales/7[top]"]
    assert "'Baker''s loaf #1'" in repeated[1].sql or "'Baker''s loaf #1'" in repeated[0].sql


def test_the_report_questions_are_build_reports(asked):
    from tillflow.report import _SECTIONS

    report = {q.key for q in asked if q.source == "report"}
    assert report == {f"report/{view}" for view, *_ in _SECTIONS} | {"report/product_daily_balance[one product]"}
    category = next(q for q in asked if q.key == "report/category_totals")
    assert "FROM analytics.category_totals" in category.sql  # 'SELL total, all time'


def test_the_expansion_is_grafanas():
    assert queries.go_rfc3339nano(WINDOW.start) == "2026-01-02T00:00:00Z"
    assert queries.go_rfc3339nano(WINDOW.end) == "2026-01-31T23:59:59.999Z"
    board = {"templating": {"list": [{"name": "product", "multi": True}]}}
    assert queries.expand("name IN ($product) AND $__timeFilter(d)", board, WINDOW, {"product": ["a'b", "c"]}) == (
        "name IN ('a''b','c') AND d BETWEEN '2026-01-02T00:00:00Z' AND '2026-01-31T23:59:59.999Z'"
    )
    with pytest.raises(ValueError):
        queries.expand("$__timeGroup(d, '1h')", board, WINDOW, {})
    with pytest.raises(ValueError):
        queries.expand("$store", board, WINDOW, {})


def test_every_question_has_a_raw_baseline_asking_the_same_on_sales_transactions(asked):
    keys = [q.key for q in asked]
    assert len(keys) == len(set(keys))
    for q in asked:
        assert "analytics." in q.sql, q.key
        assert "analytics." not in q.raw_sql, f"{q.key}: a view left in the baseline"
        assert not ROLLUPS.search(q.raw_sql), f"{q.key}: the baseline reads a rollup"
        # The same question: only the view references differ.
        outside = re.sub(r"\banalytics\.\w+", "", q.sql)
        for piece in (p for p in re.split(r"\s+", outside) if p):
            assert piece in q.raw_sql, f"{q.key}: {piece!r} of the question is not in its baseline"
        if any(view in q.sql for view in ("daily_transactions", "category_totals", "product_daily",
                                          "store_daily", "analytics.products")):
            assert "FROM sales.transactions" in q.raw_sql, q.key


def test_the_baselines_are_the_views_as_0008_left_them():
    views = queries.views_before_rollups()
    assert set(views) >= {"daily_transactions", "category_totals", "product_daily_balance",
                          "store_daily_transactions", "pipeline_freshness", "rejects", "conflicts", "uploads"}
    for name in ("daily_transactions", "category_totals", "product_daily_balance", "store_daily_transactions"):
        assert "synthetic_stores" in views[name], f"{name}: not 0008's definition"
    assert not any(ROLLUPS.search(body) for body in views.values())
    # The views 0009 added exist only as 0008-style equivalents.
    assert set(queries.NEW_VIEWS_RAW) == {"product_daily_totals", "products"}
    assert "product_daily_totals" not in views and "products" not in views


def test_the_benchmark_expands_every_query_as_the_dashboard_tests_do():
    """bench.queries keeps a small copy of Grafana's expansion; the dashboard tests have the full one.
    Both must send PostgreSQL the same SQL for every query of both boards."""
    sys.path.insert(0, str(ROOT / "tests" / "integration"))
    try:
        import test_dashboards as full
    finally:
        sys.path.remove(str(ROOT / "tests" / "integration"))
    window = queries.Window(full.FROM, full.TO)
    checked = 0
    for board in queries.dashboards().values():
        for panel, target in queries.postgres_targets(board):
            repeat = panel.get("repeat")
            for value in (full.CHOSEN if repeat else [None]):
                values = {"product": [value] if repeat else full.CHOSEN}
                assert queries.expand(target["rawSql"], board, window, values) == full.expand(
                    target["rawSql"], board, {repeat: value} if repeat else None), panel["title"]
                checked += 1
    assert checked >= 15
