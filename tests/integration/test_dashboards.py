"""The Grafana dashboards as Grafana runs them.

Every dashboard file loads, is read-only, and names its datasources by uid only,
uids that the provisioning defines. Every SQL query, of panels and of template
variables, is expanded the way Grafana expands it (the frontend replaces
variables with ``SqlDatasource.interpolateVariable``, then the PostgreSQL
backend replaces its macros for the time range in UTC, RFC 3339), run as
tillflow_reader against a generated data set written as tillflow_writer, and
its answer compared with the one computed independently in Python.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import random
import re
import uuid
from collections import Counter, defaultdict
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from psycopg2.extras import Json

from test_analytics import copy_in, generate

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_FILES = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
UTC = datetime.timezone.utc
ZERO = Decimal("0.00")

# The dashboards' time picker set to 2024-02-10 .. 2024-02-24 (whole days, UTC).
FROM = datetime.datetime(2024, 2, 10, tzinfo=UTC)
TO = datetime.datetime(2024, 2, 24, 23, 59, 59, 999000, tzinfo=UTC)
# A product name with a quote in it, to check Grafana's escaping.
QUOTED = "Baker's loaf"
CHOSEN = [QUOTED, 'Tomato "cherry", 250g']


def dashboards() -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text(encoding="utf-8")) for path in DASHBOARD_FILES}


def provisioned() -> dict[str, str]:
    """uid -> type of the provisioned datasources."""
    path = ROOT / "grafana" / "provisioning" / "datasources" / "tillflow.yml"
    return {ds["uid"]: ds["type"] for ds in yaml.safe_load(path.read_text(encoding="utf-8"))["datasources"]}


def walk(node, path=""):
    """Every (path, key, value) of a JSON document."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, value
            yield from walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from walk(item, f"{path}[{i}]")


def panels(board: dict) -> list[dict]:
    found = []
    for panel in board["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # a collapsed row keeps its panels inside
    return found


# ---------------------------------------------------------------- Grafana's expansion
def go_rfc3339nano(moment: datetime.datetime) -> str:
    """Go's time.RFC3339Nano in UTC: trailing zeros of the fraction dropped, 'Z'."""
    text = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{moment.microsecond * 1000:09d}".rstrip("0")
    return f"{text}.{fraction}Z" if fraction else f"{text}Z"


# templateSrv's variable syntaxes: $name, [[name]], ${name}
VARIABLE = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^}]+))?(?::([^}]+))?\}")
# The backend's macro syntax (pkg/tsdb/grafana-postgresql-datasource/macros.go)
MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^)]*)\)")


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def interpolate_variables(sql: str, variables: dict[str, dict], values: dict[str, list[str]],
                          scoped: dict[str, str] | None = None) -> str:
    """SqlDatasource.interpolateVariable through templateSrv.replace: a multi-value (or
    include-all) variable becomes quoted literals joined by commas, a single-value one
    its text with quotes doubled; a repeated panel scopes the variable to one value."""

    def replace(match: re.Match) -> str:
        name = match.group(1) or match.group(2) or match.group(4)
        if name not in variables:
            return match.group(0)  # not a variable (a macro): left to the backend
        variable = variables[name]
        if scoped and name in scoped:
            value: str | list[str] = scoped[name]
        else:
            chosen = values[name]
            value = chosen if variable.get("multi") or variable.get("includeAll") else chosen[0]
        if isinstance(value, list):
            return ",".join(quote_literal(v) for v in value)
        if variable.get("multi") or variable.get("includeAll"):
            return quote_literal(value)
        return value.replace("'", "''")

    return VARIABLE.sub(replace, sql)


def expand_macros(sql: str, start: datetime.datetime, end: datetime.datetime) -> str:
    """The macros these dashboards use, as the PostgreSQL backend writes them."""

    def replace(match: re.Match) -> str:
        name, args = match.group(1), [a.strip() for a in match.group(2).split(",")]
        if name == "__timeFilter":
            return f"{args[0]} BETWEEN '{go_rfc3339nano(start)}' AND '{go_rfc3339nano(end)}'"
        if name == "__timeFrom":
            return f"'{go_rfc3339nano(start)}'"
        if name == "__timeTo":
            return f"'{go_rfc3339nano(end)}'"
        raise AssertionError(f"macro ${name}() is used but this test does not expand it like Grafana yet")

    return MACRO.sub(replace, sql)


def expand(sql: str, board: dict, scoped: dict[str, str] | None = None) -> str:
    variables = {v["name"]: v for v in board.get("templating", {}).get("list", [])}
    expanded = expand_macros(interpolate_variables(sql, variables, {"product": CHOSEN}, scoped), FROM, TO)
    assert "$" not in expanded and "[[" not in expanded, f"left unexpanded:\n{expanded}"
    return expanded


def sql_queries(board: dict) -> list[tuple[str, str, str]]:
    """(panel title, expanded SQL, scoped value) for every PostgreSQL target; a panel
    repeated over a variable runs once per chosen value."""
    found = []
    for panel in panels(board):
        for target in panel.get("targets", []):
            if target["datasource"]["uid"] != "tillflow-postgres":
                continue
            repeat = panel.get("repeat")
            for value in (CHOSEN if repeat else [None]):
                scoped = {repeat: value} if repeat else None
                found.append((panel["title"], expand(target["rawSql"], board, scoped), value))
    return found


# ---------------------------------------------------------------- structure
def test_the_example_expansion_matches_grafana():
    assert go_rfc3339nano(FROM) == "2024-02-10T00:00:00Z"
    assert go_rfc3339nano(TO) == "2024-02-24T23:59:59.999Z"
    board = {"templating": {"list": [{"name": "product", "multi": True}, {"name": "one", "multi": False}]}}
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert interpolate_variables("name IN ($product)", variables, {"product": ["a'b", "c"]}) == "name IN ('a''b','c')"
    assert interpolate_variables("name = '${one}'", variables, {"one": ["it's"]}) == "name = 'it''s'"
    assert interpolate_variables("name IN ($product)", variables, {"product": ["x"]}, {"product": "a'b"}) == (
        "name IN ('a''b')"
    )
    assert expand_macros("$__timeFilter(d) AND $__timeFrom() < x", FROM, TO) == (
        "d BETWEEN '2024-02-10T00:00:00Z' AND '2024-02-24T23:59:59.999Z' AND '2024-02-10T00:00:00Z' < x"
    )


def test_there_is_a_sales_and_a_pipeline_dashboard():
    assert set(dashboards()) == {"sales", "pipeline"}


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.stem)
def test_a_dashboard_file_is_a_read_only_provisionable_dashboard(path):
    board = json.loads(path.read_text(encoding="utf-8"))
    assert board["uid"] == f"tillflow-{path.stem}" and board["title"]
    assert board["editable"] is False, "provisioned dashboards are changed in the file, not the UI"
    assert "__inputs" not in board and "__requires" not in board, "an export for sharing, not for provisioning"
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(board):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, f"{panel['title']} is wider than the dashboard"
        if panel["type"] != "row":
            assert panel.get("targets"), f"{panel['title']} has no query"
            assert panel.get("description"), f"{panel['title']} says nothing about what it answers"


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.stem)
def test_datasources_are_named_by_provisioned_uid_only(path):
    text = path.read_text(encoding="utf-8")
    assert "${DS_" not in text, "an export placeholder: name the provisioned uid"
    known = provisioned()
    seen = 0
    for where, key, value in walk(json.loads(text)):
        if key != "datasource":
            continue
        seen += 1
        assert isinstance(value, dict) and set(value) == {"type", "uid"}, f"{where}: {value!r} is not a uid reference"
        assert known.get(value["uid"]) == value["type"], f"{where}: no provisioned datasource {value}"
    assert seen


# ---------------------------------------------------------------- the data set
def reasons_for(i: int) -> list[dict]:
    pool = [("amount_inc_tax", "tax_mismatch"), ("quantity", "not_integer"), ("row", "column_count"),
            ("id", "invalid_uuid"), ("name", "missing")]
    picked = [pool[(i + k) % len(pool)] for k in range(1 + i % 3)]
    return [{"field": f, "code": c, "message": f"{f} {c} #{i}"} for f, c in picked]


def content(row: dict, **changes) -> dict:
    stored = {"id": row["id"], "transaction_date": row["transaction_date"].isoformat(), "category": row["category"],
              "name": row["name"], "quantity": row["quantity"], "amount_excl_tax": str(row["amount_excl_tax"]),
              "amount_inc_tax": str(row["amount_inc_tax"]), "store_id": row["store_id"]}
    return {**stored, **changes}


@pytest.fixture(scope="module")
def dataset() -> dict:
    rng = random.Random(6)
    rows = generate(seed=20240210, count=3000)
    for row in rows:
        if row["name"] == "Salt":
            row["name"] = QUOTED
    rejects = [{
        "received_at": datetime.datetime(2024, 2, 5, tzinfo=UTC) + datetime.timedelta(hours=8 * i),
        "transaction_id": str(uuid.UUID(int=rng.getrandbits(128))) if i % 4 else "not-a-uuid",
        "raw": {"id": "x", "quantity": "1.5"}, "reasons": reasons_for(i),
        "source": ("csv", "api", "ws")[i % 3], "source_ref": f"retail_{i % 5}.csv", "source_line": i + 2,
    } for i in range(60)]
    conflicts = []
    for i, row in enumerate(rng.sample(rows, 55)):
        incoming = content(row, amount_inc_tax=str(row["amount_inc_tax"] + 1), quantity=row["quantity"] + 1)
        conflicts.append({
            "detected_at": datetime.datetime(2024, 2, 8, tzinfo=UTC) + datetime.timedelta(hours=6 * i),
            "transaction_id": row["id"], "stored": content(row), "incoming": incoming,
            "source": "csv", "source_ref": "retail_late.csv", "source_line": i + 2,
        })
    uploads = []
    for i in range(12):
        created = datetime.datetime(2024, 2, 8, 9, tzinfo=UTC) + datetime.timedelta(days=1.5 * i)
        status = ("published", "published", "failed", "started")[i % 4]
        read = 100 * (i + 1)
        uploads.append({
            "created_at": created, "file_name": f"retail_{i:02d}_02_2024.csv", "source": ("csv", "upload")[i % 2],
            "store_id": ("main", "north")[i % 2], "status": status,
            "finished_at": None if status == "started" else created + datetime.timedelta(seconds=7 * i + 1),
            "rows_read": read, "rows_accepted": read - i, "rows_rejected": i,
        })
    return {"rows": rows, "rejects": rejects, "conflicts": conflicts, "uploads": uploads}


@pytest.fixture
def loaded(migrated_db, dataset) -> dict:
    """The data set written as the consumer and loaders write it: as tillflow_writer."""
    conn = migrated_db.connect("writer")
    try:
        copy_in(conn, dataset["rows"])
        with conn.cursor() as cur:
            for r in dataset["rejects"]:
                cur.execute("INSERT INTO ingest.rejects (transaction_id, raw, reasons, source, source_ref, source_line,"
                            " received_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                            (r["transaction_id"], Json(r["raw"]), Json(r["reasons"]), r["source"], r["source_ref"],
                             r["source_line"], r["received_at"]))
            for c in dataset["conflicts"]:
                cur.execute("INSERT INTO ingest.conflicts (transaction_id, stored, incoming, source, source_ref,"
                            " source_line, detected_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                            (c["transaction_id"], Json(c["stored"]), Json(c["incoming"]), c["source"],
                             c["source_ref"], c["source_line"], c["detected_at"]))
            for u in dataset["uploads"]:
                cur.execute("INSERT INTO ingest.uploads (file_name, sha256, size_bytes, source, store_id, rows_read,"
                            " rows_accepted, rows_rejected, status, created_at, finished_at)"
                            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                            (u["file_name"], "0" * 64, 1000, u["source"], u["store_id"], u["rows_read"],
                             u["rows_accepted"], u["rows_rejected"], u["status"], u["created_at"], u["finished_at"]))
    finally:
        conn.close()
    return dataset


# ---------------------------------------------------------------- the answers, computed in Python
def in_period(day: datetime.date) -> bool:
    return FROM.date() <= day <= TO.date()


def at(day: datetime.date) -> datetime.datetime:
    return datetime.datetime(day.year, day.month, day.day)


def per_day(rows) -> dict[datetime.date, list]:
    days: dict[datetime.date, list] = defaultdict(lambda: [0, ZERO, ZERO])
    for row in rows:
        day = days[row["transaction_date"]]
        day[0] += 1
        day[1 if row["category"] == "SELL" else 2] += row["amount_inc_tax"]
    return days


def per_product_day(rows) -> dict[str, dict[datetime.date, Decimal]]:
    """name -> date -> SELL minus BUY, for the dates the product traded."""
    balances: dict[str, dict] = defaultdict(lambda: defaultdict(lambda: ZERO))
    for row in rows:
        sign = 1 if row["category"] == "SELL" else -1
        balances[row["name"]][row["transaction_date"]] += sign * row["amount_inc_tax"]
    return balances


def product_totals(rows, names=None) -> dict[str, list]:
    """name -> [SELL, BUY, days traded] over the period."""
    totals: dict[str, list] = {}
    days: dict[str, set] = defaultdict(set)
    for row in rows:
        if in_period(row["transaction_date"]) and (names is None or row["name"] in names):
            total = totals.setdefault(row["name"], [ZERO, ZERO])
            total[0 if row["category"] == "SELL" else 1] += row["amount_inc_tax"]
            days[row["name"]].add(row["transaction_date"])
    return {name: [sell, buy, len(days[name])] for name, (sell, buy) in totals.items()}


def summary(c: dict) -> str:
    return f"{c['transaction_date']} {c['category']} {c['name']} x{c['quantity']} {c['amount_inc_tax']}"


def expected_answers(data: dict) -> dict[tuple[str, str | None], list[tuple]]:
    rows = data["rows"]
    days = per_day(rows)
    period = sorted((d, v) for d, v in days.items() if in_period(d))
    sell = sum((v[1] for _, v in period), ZERO)
    buy = sum((v[2] for _, v in period), ZERO)
    answers: dict[tuple[str, str | None], list[tuple]] = {
        ("Transactions in the period", None): [(sum(v[0] for _, v in period),)],
        ("Amounts incl. tax in the period", None): [(sell, buy, sell - buy)],
        ("Transactions per day", None): [(at(d), v[0]) for d, v in period],
        ("SELL and BUY per day, incl. tax", None): [(at(d), v[1], v[2]) for d, v in period],
    }

    balances = per_product_day(rows)
    for name in CHOSEN:
        running, series = ZERO, []
        for day in sorted(balances[name]):
            running += balances[name][day]
            if in_period(day):
                series.append((at(day), balances[name][day], running))
        answers[("Balance of $product: SELL − BUY per day (bars) and running total (line)", name)] = series
    chosen = product_totals(rows, set(CHOSEN))
    answers[("Chosen products side by side, in the period", None)] = sorted(
        ((n, s, b, s - b) for n, (s, b, _) in chosen.items()), key=lambda r: -r[3])
    answers[("All products in the period", None)] = sorted(
        ((n, s, b, s - b, d) for n, (s, b, d) in product_totals(rows).items()), key=lambda r: -r[3])

    categories = {"SELL": [0, ZERO, ZERO], "BUY": [0, ZERO, ZERO]}
    stores: dict[str, list] = defaultdict(lambda: [0, ZERO, ZERO])
    for row in rows:
        total = categories[row["category"]]
        total[0] += 1
        total[1] += row["amount_excl_tax"]
        total[2] += row["amount_inc_tax"]
        if in_period(row["transaction_date"]):
            store = stores[row["store_id"]]
            store[0] += 1
            store[1 if row["category"] == "SELL" else 2] += row["amount_inc_tax"]
    answers[("All-time totals by category", None)] = [(c, *categories[c]) for c in ("SELL", "BUY")]
    answers[("Stores in the period", None)] = [(s, *v) for s, v in sorted(stores.items())]

    latest = sorted(data["rejects"], key=lambda r: r["received_at"], reverse=True)[:50]
    answers[("Latest rejects", None)] = [
        (r["received_at"], r["source"], r["source_ref"], r["source_line"], r["transaction_id"],
         "; ".join(reason["message"] for reason in r["reasons"])) for r in latest]
    latest = sorted(data["conflicts"], key=lambda c: c["detected_at"], reverse=True)
    answers[("Latest conflicts", None)] = [
        (c["detected_at"], c["transaction_id"], c["source"], c["source_ref"], c["source_line"],
         summary(c["stored"]), summary(c["incoming"])) for c in latest[:50]]
    answers[("Conflicts recorded in the period", None)] = [
        (c["detected_at"], c["transaction_id"], c["source"], c["source_ref"], c["source_line"])
        for c in latest if FROM <= c["detected_at"] <= TO][:100]

    reasons = Counter((reason["field"], reason["code"]) for r in data["rejects"] if FROM <= r["received_at"] <= TO
                      for reason in r["reasons"])
    answers[("Reject reasons in the period", None)] = sorted(
        ((f, c, n) for (f, c), n in reasons.items()), key=lambda r: -r[2])
    uploads = sorted((u for u in data["uploads"] if FROM <= u["created_at"] <= TO), key=lambda u: u["created_at"],
                     reverse=True)
    answers[("Uploads in the period", None)] = [
        (u["created_at"], u["file_name"], u["source"], u["store_id"], u["status"], u["rows_read"],
         u["rows_accepted"], u["rows_rejected"],
         None if u["finished_at"] is None else Decimal((u["finished_at"] - u["created_at"]).total_seconds()))
        for u in uploads[:50]]
    return answers


# Ordered by a text column, or by an aggregate that may tie: the database's
# collation decides among equals, so the rows are compared as a multiset and the
# order is checked on the numeric key alone.
# Answers that depend on the clock, checked by tests of their own below.
RELATIVE_TO_NOW = {"Since the last stored transaction"}
ORDERED_BY_NUMBER = {"Chosen products side by side, in the period": 3, "All products in the period": 3,
                     "Reject reasons in the period": 2}


@contextlib.contextmanager
def reader(db):
    conn = db.connect("reader")
    try:
        yield conn
    finally:
        conn.close()


def run(conn, sql: str) -> list[tuple]:
    """The rows, with uuid columns as text whether or not psycopg2 was told to parse them."""
    with conn.cursor() as cur:
        cur.execute(sql)
        return [tuple(str(v) if isinstance(v, uuid.UUID) else v for v in row) for row in cur.fetchall()]


def test_every_sql_panel_answers_as_computed_in_python(migrated_db, loaded):
    answers = expected_answers(loaded)
    traded = {row["transaction_date"] for row in loaded["rows"]}
    shown = {time.date() for time, _ in answers[("Transactions per day", None)]}
    assert {FROM.date(), TO.date()} <= shown < traded, "the period's first and last days count, others do not"
    assert all(answers[(title, name)] for title, name in answers if "Balance of" in title), "chosen products traded"
    checked = set()
    with reader(migrated_db) as conn:
        with conn.cursor() as cur:
            cur.execute("SHOW default_transaction_read_only")
            assert cur.fetchone() == ("on",), "Grafana's role reads only"
        for name, board in dashboards().items():
            for title, sql, scoped in sql_queries(board):
                if title in RELATIVE_TO_NOW:
                    continue
                key = (title, scoped)
                assert key in answers, f"{name}: no expected answer for the panel {title!r} ({scoped})"
                got = run(conn, sql)
                want = answers[key]
                if title in ORDERED_BY_NUMBER:
                    column = ORDERED_BY_NUMBER[title]
                    assert sorted(got, key=repr) == sorted(want, key=repr), f"{name}: {title}"
                    numbers = [row[column] for row in got]
                    assert numbers == sorted(numbers, reverse=True), f"{name}: {title} is not in order"
                else:
                    assert got == want, f"{name}: {title} ({scoped})\n{sql}"
                checked.add(key)
    unused = [key for key in answers if key not in checked]
    assert not unused, f"expected answers for panels that do not exist: {unused}"


def test_the_freshness_panel_tells_how_long_ago_the_last_row_was_stored(migrated_db, loaded):
    (board,) = [b for b in dashboards().values() if b["uid"] == "tillflow-pipeline"]
    (query,) = [sql for title, sql, _ in sql_queries(board) if title == "Since the last stored transaction"]
    with reader(migrated_db) as conn:
        ((seconds,),) = run(conn, query)
    assert 0 <= seconds < 600, seconds


def test_the_freshness_panel_says_never_on_an_empty_database(migrated_db):
    (board,) = [b for b in dashboards().values() if b["uid"] == "tillflow-pipeline"]
    (panel,) = [p for p in panels(board) if p["title"] == "Since the last stored transaction"]
    with reader(migrated_db) as conn:
        assert run(conn, expand(panel["targets"][0]["rawSql"], board)) == [(None,)]
    assert panel["fieldConfig"]["defaults"]["noValue"] == "never"


def test_the_product_variable_lists_every_product_once(migrated_db, loaded):
    board = dashboards()["sales"]
    (product,) = board["templating"]["list"]
    assert product["datasource"]["uid"] == "tillflow-postgres" and product["multi"] is True
    with reader(migrated_db) as conn:
        names = [name for (name,) in run(conn, expand(product["query"], board))]
    assert len(names) == len(set(names)) and set(names) == {r["name"] for r in loaded["rows"]}
    assert QUOTED in names


def test_every_panel_query_also_runs_on_an_empty_database(migrated_db):
    with reader(migrated_db) as conn:
        for board in dashboards().values():
            for title, sql, _ in sql_queries(board):
                rows = run(conn, sql)
                if title == "All-time totals by category":
                    assert rows == [("SELL", 0, ZERO, ZERO), ("BUY", 0, ZERO, ZERO)]
