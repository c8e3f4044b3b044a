"""At most one report per day (wpbackup/fleet/daily.py): locally through daily_emails and a
lock two `doit report` processes share; with D1, two servers racing for the same date through
the D1 imitation (tests/d1server.py) where exactly one wins, a released or stale claim passes
on, and D1 out of reach falls back to the local rule with a warning. No message shows the
D1 token."""

from __future__ import annotations

import subprocess
import sys
import threading
from contextlib import closing
from pathlib import Path

import pytest

from wpbackup.config.settings import load_settings
from wpbackup.fleet import catalog, daily
from wpbackup.fleet.d1 import D1Client

from .servers import free_port

REPO = Path(__file__).resolve().parent.parent
DATE = "2026-12-01"


@pytest.fixture(autouse=True)
def quick_d1(monkeypatch):
    """The D1 imitation answers in milliseconds: short waits between retries."""
    monkeypatch.setattr(daily, "D1_OPTIONS", {"timeout": (2.0, 2.0), "backoff": (0.01, 0.05), "budget": 10.0,
                                              "attempts": 3})


def _server(tmp_path: Path, name: str, **env: str):
    """One install (its own folder, .env and catalog) named ``name``."""
    root = tmp_path / name
    root.mkdir(exist_ok=True)
    (root / ".env").write_text("".join(f"{k}={v}\n" for k, v in {"SERVER_ID": name, **env}.items()))
    return load_settings({"WPBACKUP_ENV": str(root / ".env")})


def _sent_rows(settings) -> list[tuple]:
    with closing(catalog.connect(settings.db_path)) as conn:
        return [tuple(row) for row in conn.execute(
            "SELECT date, email_sent, backup_count, server_id FROM daily_emails ORDER BY id")]


def _uids(settings) -> list[str]:
    with closing(catalog.connect(settings.db_path)) as conn:
        return [row[0] for row in conn.execute("SELECT uid FROM daily_emails ORDER BY id")]


def _race(*servers, date: str = DATE) -> list:
    """claim() from every server at once (threads released together): their answers."""
    start = threading.Barrier(len(servers))
    answers: list = [None] * len(servers)

    def run(index: int, settings) -> None:
        start.wait()
        answers[index] = daily.claim(settings, date)

    threads = [threading.Thread(target=run, args=(i, s)) for i, s in enumerate(servers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return answers


def _no_secret(secret: str, *texts) -> None:
    for text in texts:
        assert secret not in str(text)


# -- local (D1 off) --

def test_local_claim_once_per_date_and_force(tmp_path):
    web1 = _server(tmp_path, "web-1")
    first = daily.claim(web1, DATE)
    assert isinstance(first, daily.Claim) and (first.via, first.warning) == ("local", None)
    first.sent(4)
    assert _sent_rows(web1) == [(DATE, 1, 4, "web-1")]
    assert _uids(web1)[0].startswith(f"web-1:report:{DATE}:")
    again = daily.claim(web1, DATE)
    assert again == f"the report for {DATE} was already sent by web-1 (daily_emails); --force sends it again"
    other_day = daily.claim(web1, "2026-12-02")
    assert isinstance(other_day, daily.Claim)
    other_day.release()
    forced = daily.claim(web1, DATE, force=True)
    assert isinstance(forced, daily.Claim)
    forced.sent(5)
    forced.sent(5)  # once only
    assert _sent_rows(web1) == [(DATE, 1, 4, "web-1"), (DATE, 1, 5, "web-1")]
    assert len(set(_uids(web1))) == 2


def test_release_marks_nothing_and_the_next_claim_wins(tmp_path):
    web1 = _server(tmp_path, "web-1")
    first = daily.claim(web1, DATE)
    first.release()
    assert _sent_rows(web1) == []
    second = daily.claim(web1, DATE)
    assert isinstance(second, daily.Claim)
    second.sent(1)
    assert _sent_rows(web1) == [(DATE, 1, 1, "web-1")]


def test_a_report_another_server_sent_counts(tmp_path):
    """Rows of other servers arrive through the sync; one not sent (email_sent = 0) does not count."""
    web1 = _server(tmp_path, "web-1")
    with closing(catalog.connect(web1.db_path)) as conn, conn:
        conn.executemany("INSERT INTO daily_emails (date, email_sent, backup_count, server_id, uid, change_seq) "
                         "VALUES (?, ?, 3, ?, ?, 0)", [(DATE, 0, "web-3", "a"), (DATE, 1, "web-2", "b")])
    assert daily.claim(web1, DATE) == (f"the report for {DATE} was already sent by web-2 (daily_emails); "
                                       "--force sends it again")
    assert isinstance(daily.claim(web1, "2026-11-30"), daily.Claim)


HOLDER = """
import sys
from wpbackup.config.settings import load_settings
from wpbackup.fleet import daily
claim = daily.claim(load_settings({"WPBACKUP_ENV": sys.argv[1]}), sys.argv[2])
print("claimed" if isinstance(claim, daily.Claim) else claim, flush=True)
sys.stdin.readline()
claim.sent(2)
"""


def test_two_processes_of_one_install_do_not_both_send(tmp_path):
    web1 = _server(tmp_path, "web-1")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(web1.env_path), DATE], cwd=REPO, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "claimed"
        busy = daily.claim(web1, DATE)
        assert isinstance(busy, str) and busy.startswith("another `doit report` of this install is sending")
        assert f"pid {holder.pid}" in busy
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.wait(timeout=60) == 0
    finally:
        holder.kill()
        holder.wait()
    assert daily.claim(web1, DATE) == (f"the report for {DATE} was already sent by web-1 (daily_emails); "
                                       "--force sends it again")
    assert _sent_rows(web1) == [(DATE, 1, 2, "web-1")]


def test_a_bad_date_is_refused(tmp_path):
    with pytest.raises(daily.BackupError, match="not a date"):
        daily.claim(_server(tmp_path, "web-1"), "2026-13-01")


# -- with D1 --

def test_two_servers_racing_exactly_one_wins(tmp_path, d1):
    web1, web2 = _server(tmp_path, "web-1", **d1.env()), _server(tmp_path, "web-2", **d1.env())
    for day in range(1, 6):  # a few races, so the threads meet in different orders
        date = f"2026-12-0{day}"
        before = len(d1.seen)
        answers = _race(web1, web2, date=date)
        assert len(d1.seen) == before + 2  # one request per claim: one transaction decides
        claims = [a for a in answers if isinstance(a, daily.Claim)]
        assert len(claims) == 1 and claims[0].via == "d1" and claims[0].warning is None
        winner = "web-1" if isinstance(answers[0], daily.Claim) else "web-2"
        [refusal] = [a for a in answers if isinstance(a, str)]
        assert refusal.startswith(f"the report for {date} is being sent by {winner} (claimed at ")
        _no_secret(d1.token, refusal)
        claims[0].sent(3)
        sent = daily.claim(web2 if winner == "web-1" else web1, date)
        assert sent.startswith(f"the report for {date} was already sent by {winner} at ")
        assert sent.endswith(" UTC; --force sends it again")
        _no_secret(d1.token, sent)
    rows = d1.sql("SELECT date, sent_by, token FROM report_claims ORDER BY date")
    assert [row["date"] for row in rows] == [f"2026-12-0{d}" for d in range(1, 6)]
    assert all(row["sent_by"] in ("web-1", "web-2") and row["token"] is None for row in rows)
    # the sender's catalog has the row the sync carries to the fleet; the other's has none
    assert sum(len(_sent_rows(s)) for s in (web1, web2)) == 5


def test_a_released_claim_goes_to_the_other_server(tmp_path, d1):
    web1, web2 = _server(tmp_path, "web-1", **d1.env()), _server(tmp_path, "web-2", **d1.env())
    first = daily.claim(web1, DATE)
    assert isinstance(first, daily.Claim) and first.via == "d1"
    assert daily.claim(web2, DATE).startswith(f"the report for {DATE} is being sent by web-1")
    first.release()
    assert first.warning is None
    second = daily.claim(web2, DATE)
    assert isinstance(second, daily.Claim) and second.via == "d1"
    second.sent(2)
    assert _sent_rows(web1) == [] and _sent_rows(web2) == [(DATE, 1, 2, "web-2")]
    assert daily.claim(web1, DATE).startswith(f"the report for {DATE} was already sent by web-2 at ")


def test_a_stale_claim_is_taken_over(tmp_path, d1):
    """A holder that died between claiming and sending: after the lease, another server takes
    over, and the dead holder's token frees nothing."""
    web1, web2 = _server(tmp_path, "web-1", **d1.env()), _server(tmp_path, "web-2", **d1.env())
    dead = daily.claim(web1, DATE)
    assert isinstance(dead, daily.Claim)
    assert isinstance(daily.claim(web2, DATE), str)
    client = D1Client(d1.account, d1.database, d1.token, d1.url)
    try:
        client.batch([("UPDATE report_claims SET claimed_at = datetime('now', ?) WHERE date = ?",
                       [f"-{daily.LEASE_MINUTES + 1} minutes", DATE])])
    finally:
        client.close()
    taker = daily.claim(web2, DATE)
    assert isinstance(taker, daily.Claim) and taker.via == "d1"
    dead.release()  # its token no longer holds the claim
    assert daily.claim(web1, DATE).startswith(f"the report for {DATE} is being sent by web-2")
    taker.sent(1)
    [row] = d1.sql("SELECT sent_by, sent_at FROM report_claims WHERE date = ?", (DATE,))
    assert row["sent_by"] == "web-2" and row["sent_at"]


def test_force_takes_a_sent_report_and_a_failed_resend_keeps_it_sent(tmp_path, d1):
    web1, web2 = _server(tmp_path, "web-1", **d1.env()), _server(tmp_path, "web-2", **d1.env())
    daily.claim(web1, DATE).sent(2)
    resend = daily.claim(web2, DATE, force=True)
    assert isinstance(resend, daily.Claim) and resend.via == "d1"
    resend.release()  # the resend failed: the report of the morning still counts as sent
    assert daily.claim(web2, DATE).startswith(f"the report for {DATE} was already sent by web-1 at ")
    again = daily.claim(web2, DATE, force=True)
    again.sent(3)
    assert daily.claim(web1, DATE) == (f"the report for {DATE} was already sent by web-1 (daily_emails); "
                                       "--force sends it again")  # its own row, before asking D1
    [row] = d1.sql("SELECT sent_by FROM report_claims WHERE date = ?", (DATE,))
    assert row["sent_by"] == "web-2"


def test_d1_out_of_reach_falls_back_to_the_local_rule_with_a_warning(tmp_path, d1):
    env = {**d1.env(), "D1_API_BASE": f"http://127.0.0.1:{free_port()}/client/v4"}  # nothing listens there
    web1 = _server(tmp_path, "web-1", **env)
    fallback = daily.claim(web1, DATE)
    assert isinstance(fallback, daily.Claim) and fallback.via == "local"
    assert fallback.warning.startswith("could not claim the report in D1 (connection to D1 failed")
    assert fallback.warning.endswith(f"claimed locally only, another server may send the report for {DATE} too")
    _no_secret(d1.token, fallback.warning)
    fallback.sent(2)
    assert _sent_rows(web1) == [(DATE, 1, 2, "web-1")]
    assert daily.claim(web1, DATE).startswith(f"the report for {DATE} was already sent by web-1")


def test_a_refused_token_falls_back_too_and_is_never_shown(tmp_path, d1):
    wrong = "d1tok-this-one-is-wrong-but-still-secret"
    web1 = _server(tmp_path, "web-1", **d1.env(token=wrong))
    fallback = daily.claim(web1, DATE)
    assert fallback.via == "local" and "D1 refused the API token" in fallback.warning
    _no_secret(wrong, fallback.warning, repr(fallback))
    fallback.release()


def test_d1_lost_while_marking_sent_is_a_warning_and_the_local_row_stays(tmp_path, d1):
    web1, web2 = _server(tmp_path, "web-1", **d1.env()), _server(tmp_path, "web-2", **d1.env())
    winner = daily.claim(web1, DATE)
    assert winner.via == "d1"
    d1.inject("internal", times=daily.D1_OPTIONS["attempts"])
    winner.sent(2)
    assert winner.warning.startswith("the report was sent, but D1 could not record it")
    _no_secret(d1.token, winner.warning)
    assert _sent_rows(web1) == [(DATE, 1, 2, "web-1")]
    assert daily.claim(web1, DATE).startswith(f"the report for {DATE} was already sent by web-1")
    assert daily.claim(web2, DATE).startswith(f"the report for {DATE} is being sent by web-1")
