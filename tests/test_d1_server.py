"""The D1 imitation keeps D1's contract (../shared/spec/d1-api.md section 3), checked with
plain HTTP requests: if it let through what D1 refuses, the sync tests would prove nothing."""

from __future__ import annotations

import json
import time

import pytest
import requests

from .d1server import D1Server


def _post(d1: D1Server, body, *, token: str | None = None, endpoint: str = "query", path: str | None = None,
          headers: dict | None = None) -> requests.Response:
    url = d1.url + (path or f"/accounts/{d1.account}/d1/database/{d1.database}/{endpoint}")
    sent = {"Content-Type": "application/json", "Authorization": f"Bearer {token or d1.token}", **(headers or {})}
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(url, data=data, headers={k: v for k, v in sent.items() if v is not None}, timeout=10)


def _error(response: requests.Response) -> tuple[int, int, str]:
    envelope = response.json()
    assert set(envelope) == {"success", "errors", "messages", "result"} and envelope["success"] is False
    return response.status_code, envelope["errors"][0]["code"], envelope["errors"][0]["message"]


def test_success_envelopes_of_query_and_raw(d1):
    created = _post(d1, {"sql": "CREATE TABLE t (a INTEGER, b TEXT, c BLOB)"}).json()
    assert created["success"] is True and created["errors"] == [] and created["messages"] == []
    inserted = _post(d1, {"sql": "INSERT INTO t VALUES (?, ?, x'0102'), (?2, ?1, NULL)",
                          "params": [9007199254740993, "x"]}).json()
    assert inserted["result"][0]["results"] == [] and inserted["result"][0]["meta"]["changes"] == 2
    assert inserted["result"][0]["meta"]["changed_db"] is True
    rows = _post(d1, {"sql": "SELECT a, b, c, b AS a FROM t ORDER BY rowid"}).json()["result"][0]["results"]
    assert rows[0] == {"a": "x", "b": "x", "c": [1, 2]}  # same-named columns: the last one wins
    raw = _post(d1, {"sql": "SELECT a, b FROM t ORDER BY rowid"}, endpoint="raw").json()["result"][0]["results"]
    # beyond 2^53 a number comes back as JSON makes it; column b is TEXT, so SQLite stored text there
    assert raw == {"columns": ["a", "b"], "rows": [[9007199254740992.0, "x"], ["x", "9007199254740993"]]}
    empty_query = _post(d1, {"sql": "SELECT a FROM t WHERE 0"}).json()["result"][0]["results"]
    empty_raw = _post(d1, {"sql": "SELECT a FROM t WHERE 0"}, endpoint="raw").json()["result"][0]["results"]
    assert empty_query == [] and empty_raw == {"columns": ["a"], "rows": []}
    several = _post(d1, {"sql": "SELECT 1 AS one; SELECT 2 AS two;"}).json()["result"]
    assert [r["results"] for r in several] == [[{"one": 1}], [{"two": 2}]]
    batch = _post(d1, {"batch": [{"sql": "SELECT ? AS v", "params": ["a"]}, {"sql": "SELECT 2 AS v"}]}).json()
    assert [r["results"] for r in batch["result"]] == [[{"v": "a"}], [{"v": 2}]]


@pytest.mark.parametrize("case, expected", [
    ("no credentials", (400, 10001)), ("malformed header", (400, 6003)), ("wrong token", (401, 10000)),
    ("other account's token", (403, 7403)), ("wrong account", (403, 7403)), ("not a uuid", (400, 7400)),
    ("unknown database", (404, 7404)), ("unknown route", (404, 7003)),
])
def test_routing_and_auth_errors(d1, case, expected):
    body = {"sql": "SELECT 1"}
    response = {
        "no credentials": lambda: _post(d1, body, headers={"Authorization": None}),
        "malformed header": lambda: _post(d1, body, headers={"Authorization": "Token abc"}),
        "wrong token": lambda: _post(d1, body, token="d1-not-the-token"),
        "other account's token": lambda: _post(d1, body, token=d1.other_account_token),
        "wrong account": lambda: _post(d1, body, path=f"/accounts/{'0' * 32}/d1/database/{d1.database}/query"),
        "not a uuid": lambda: _post(d1, body, path=f"/accounts/{d1.account}/d1/database/db-1/query"),
        "unknown database": lambda: _post(
            d1, body, path=f"/accounts/{d1.account}/d1/database/00000000-0000-4000-8000-000000000000/query"),
        "unknown route": lambda: _post(d1, body, path=f"/accounts/{d1.account}/d1/db/{d1.database}/query"),
    }[case]()
    assert _error(response)[:2] == expected
    assert response.json()["result"] in ([], None)


@pytest.mark.parametrize("body, message", [
    ({"sql": "SELECT '" + "x" * 100_000 + "'"}, "statement too long: SQLITE_TOOBIG"),
    ({"sql": "SELECT 1; SELECT '" + "x" * 99_990 + "'"}, "statement too long: SQLITE_TOOBIG"),
    ({"sql": "SELECT " + ", ".join(["?"] * 101), "params": list(range(101))}, "too many SQL variables: SQLITE_ERROR"),
    ({"sql": "SELECT ?101", "params": list(range(101))}, "too many SQL variables: SQLITE_ERROR"),
    ({"sql": "SELECT ?, ?", "params": [1]}, "Wrong number of parameter bindings for SQL query."),
    ({"sql": "SELECT ?; SELECT ?", "params": [1, 2]},
     "When executing multiple SQL statements in a single call, only the last statement can have parameters."),
    ({"sql": "SELECT :name", "params": [1]}, "named parameters are not supported: SQLITE_ERROR"),
    ({"sql": "SELECT * FROM nowhere"}, "no such table: nowhere: SQLITE_ERROR"),
])
def test_limits_and_sql_errors_answer_400_7500_with_d1s_messages(d1, body, message):
    assert _error(_post(d1, body)) == (400, 7500, message)


@pytest.mark.parametrize("sql", [
    "BEGIN", "COMMIT", "SAVEPOINT s", "ATTACH DATABASE ':memory:' AS other", "CREATE TEMP TABLE x (a)",
    "PRAGMA journal_mode = WAL", "PRAGMA page_size = 8192", "SELECT * FROM _cf_KV",
    "INSERT INTO _cf_KV VALUES ('k', 'v')", "CREATE VIRTUAL TABLE v USING rtree(id, a, b)",
])
def test_refused_statements(d1, sql):
    assert _error(_post(d1, {"sql": sql})) == (400, 7500, "not authorized: SQLITE_AUTH")


def test_allowed_pragmas_and_always_on_foreign_keys(d1):
    _post(d1, {"sql": "CREATE TABLE p (id INTEGER PRIMARY KEY); CREATE TABLE c (p INTEGER REFERENCES p(id))"})
    info = _post(d1, {"sql": "PRAGMA table_info(c)"}).json()["result"][0]["results"]
    assert [row["name"] for row in info] == ["p"]
    tables = _post(d1, {"sql": "SELECT name FROM sqlite_master WHERE type = 'table'"}).json()
    assert "_cf_KV" in {row["name"] for row in tables["result"][0]["results"]}  # listed, not readable
    refused = _post(d1, {"sql": "PRAGMA foreign_keys = off; INSERT INTO c VALUES (42)"})
    assert _error(refused) == (400, 7500, "FOREIGN KEY constraint failed: SQLITE_CONSTRAINT")
    deferred = _post(d1, {"batch": [{"sql": "PRAGMA defer_foreign_keys = on"}, {"sql": "INSERT INTO c VALUES (7)"},
                                    {"sql": "INSERT INTO p VALUES (7)"}]})
    assert deferred.json()["success"] is True


def test_one_request_is_one_transaction(d1):
    _post(d1, {"sql": "CREATE TABLE t (k TEXT PRIMARY KEY)"})
    failed = _post(d1, {"batch": [{"sql": "INSERT INTO t VALUES ('a')"}, {"sql": "INSERT INTO t VALUES ('a')"}]})
    assert _error(failed) == (400, 7500, "UNIQUE constraint failed: t.k: SQLITE_CONSTRAINT")
    assert failed.json()["result"] == []  # no partial results
    also = _post(d1, {"sql": "INSERT INTO t VALUES ('b'); INSERT INTO nowhere VALUES (1)"})
    assert _error(also)[1] == 7500
    assert d1.sql("SELECT COUNT(*) FROM t")[0][0] == 0


def test_values_and_bodies_it_refuses(d1):
    for params in ([True], [[1, 2]], [{"a": 1}]):  # undocumented over HTTP: refused here
        assert _error(_post(d1, {"sql": "SELECT ?", "params": params}))[:2] == (400, 7400)
    assert _error(_post(d1, b"{not json"))[:2] == (400, 7400)
    assert _error(_post(d1, {"query": "SELECT 1"}))[:2] == (400, 7400)


def test_a_read_only_token_may_read_but_not_write(d1):
    _post(d1, {"sql": "CREATE TABLE t (a)"})
    assert _post(d1, {"sql": "SELECT * FROM t"}, token=d1.read_only_token).json()["success"] is True
    assert _error(_post(d1, {"sql": "INSERT INTO t VALUES (1)"}, token=d1.read_only_token))[:2] == (403, 7403)
    assert _error(_post(d1, {"sql": "CREATE TABLE u (a)"}, token=d1.read_only_token))[:2] == (403, 7403)


def test_the_api_budget_blocks_everything_for_a_while(tmp_path):
    d1 = D1Server(tmp_path / "d1", api_budget=3, api_window=60.0, api_block=1.0)
    try:
        statuses = [_post(d1, {"sql": "SELECT 1"}).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        blocked = _post(d1, {"sql": "SELECT 1"})
        assert _error(blocked) == (429, 971, "Please wait and consider throttling your request speed")
        assert blocked.json()["result"] is None and blocked.headers["Retry-After"] == "1"
    finally:
        d1.stop()


def test_the_request_deadline_rolls_back(tmp_path):
    d1 = D1Server(tmp_path / "d1", deadline=0.2)
    try:
        _post(d1, {"sql": "CREATE TABLE t (a)"})
        slow = _post(d1, {"sql": "INSERT INTO t VALUES (1); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL "
                                 "SELECT i + 1 FROM n) SELECT COUNT(*) FROM n"})
        assert _error(slow)[:2] == (500, 7500)
        assert d1.sql("SELECT COUNT(*) FROM t")[0][0] == 0
    finally:
        d1.stop()


def test_fault_switches(d1):
    _post(d1, {"sql": "CREATE TABLE t (a)"})
    d1.inject("overloaded", retry_after=3)
    overloaded = _post(d1, {"sql": "SELECT 1"})
    assert overloaded.status_code == 429 and overloaded.headers["Retry-After"] == "3"
    d1.inject("internal")
    assert _error(_post(d1, {"sql": "SELECT 1"}))[:2] == (500, 7500)
    d1.inject("connection_lost")
    assert _error(_post(d1, {"sql": "SELECT 1"}))[2] == "Network connection lost."
    for kind, status in (("html502", 502), ("html504", 504)):
        d1.inject(kind)
        page = _post(d1, {"sql": "SELECT 1"})
        assert page.status_code == status and page.headers["Content-Type"] == "text/html" and "<html>" in page.text
    d1.inject("reset")
    with pytest.raises(requests.ConnectionError):
        _post(d1, {"sql": "INSERT INTO t VALUES ('reset')"})
    d1.inject("drop_after_commit")
    with pytest.raises(requests.ConnectionError):
        _post(d1, {"sql": "INSERT INTO t VALUES ('committed')"})
    d1.inject("stall", seconds=1.0)
    with pytest.raises(requests.Timeout):
        requests.post(f"{d1.url}/accounts/{d1.account}/d1/database/{d1.database}/query", timeout=0.2,
                      json={"sql": "INSERT INTO t VALUES ('stalled')"}, headers={"Authorization": f"Bearer {d1.token}"})
    deadline = time.monotonic() + 30
    while d1.seen[-1].status is None:  # the stalled request still runs when its stall ends
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert sorted(row[0] for row in d1.sql("SELECT a FROM t")) == ["committed", "stalled"]
