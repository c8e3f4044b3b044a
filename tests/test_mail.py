"""The report's transport against real SMTP servers (tests/smtp.py): each SMTP_SECURITY mode
reaches every recipient with both parts, and every way it can fail is one clear line without
the password; without SMTP_HOST the report is saved as files only the owner can read."""

from __future__ import annotations

import email
import email.policy
import os
import socket
import stat
import subprocess
import sys
from dataclasses import replace
from email.message import EmailMessage
from pathlib import Path

import pytest

from wpbackup.config.settings import load_settings
from wpbackup.errors import BackupError
from wpbackup.fleet import mail

from .servers import free_port
from .smtp import PASSWORD, USERNAME  # the fixtures smtp and smtp_servers come from conftest.py

REPO = Path(__file__).resolve().parent.parent
RECIPIENTS = ("ops@example.test", "Second Person <boss@example.test>")
ADDRESSES = ["ops@example.test", "boss@example.test"]


def _settings(tmp_path, **keys):
    """An install's settings from a .env holding these keys (and a sender and recipients)."""
    keys = {"SERVER_ID": "web-1", "REPORT_FROM": "backup@web-1.example.test", "REPORT_TO": ",".join(RECIPIENTS),
            **keys}
    env = tmp_path / ".env"
    env.write_text("".join(f"{k}={v}\n" for k, v in keys.items() if v is not None))
    return load_settings({"WPBACKUP_ENV": str(env)})


def _message(subject: str = "[OK] 2 of 2 sites backed up") -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = subject
    message.set_content("Every site is backed up.\n")
    message.add_alternative("<html><body><p style=\"color:#070\">Every site is backed up.</p></body></html>",
                            subtype="html")
    return message


def _fails(settings, *secrets: str) -> str:
    """deliver() raises a BackupError of one line that holds none of the secrets; its text."""
    with pytest.raises(BackupError) as caught:
        mail.deliver(settings, _message())
    text = str(caught.value)
    assert "\n" not in text
    for secret in (PASSWORD, *secrets):
        assert secret not in text
    return text


@pytest.mark.parametrize("security", ["none", "starttls", "ssl"])
def test_each_mode_delivers_both_parts_to_every_recipient(tmp_path, smtp, security):
    server = smtp.by_security(security)
    settings = _settings(tmp_path, **server.env())
    said = mail.deliver(settings, _message())
    assert said == (f"sent to {', '.join(ADDRESSES)} through 127.0.0.1:{server.port} ({security}"
                    + (f", logged in as {USERNAME})" if security != "none" else ")"))
    assert PASSWORD not in said
    [got] = server.messages
    assert got.rcpt_tos == ADDRESSES and got.mail_from == "backup@web-1.example.test"
    assert got.tls is (security != "none") and got.authenticated is (security != "none")
    parsed = got.parsed()
    assert parsed.get_content_type() == "multipart/alternative"
    assert [part.get_content_type() for part in parsed.iter_parts()] == ["text/plain", "text/html"]
    assert parsed.get_body(("plain",)).get_content().rstrip() == "Every site is backed up."
    assert "color:#070" in parsed.get_body(("html",)).get_content()
    assert parsed["Subject"] == "[OK] 2 of 2 sites backed up"
    assert parsed["To"] == ", ".join(RECIPIENTS) and parsed["From"] == "backup@web-1.example.test"
    assert parsed["Date"] and parsed["Message-ID"].endswith("@web-1.example.test>")
    assert PASSWORD.encode() not in got.raw


SENDER = """
import sys
from email.message import EmailMessage
from wpbackup.config.settings import load_settings
from wpbackup.fleet import mail
message = EmailMessage()
message["Subject"] = "from a fresh process"
message.set_content("text")
print(mail.deliver(load_settings({"WPBACKUP_ENV": sys.argv[1]}), message))
"""


def test_ssl_cert_file_is_how_a_process_trusts_a_private_ca(tmp_path, smtp):
    """What an operator does (Environment=SSL_CERT_FILE=... in the unit): a fresh process
    trusts the server's certificate through the variable alone."""
    settings = _settings(tmp_path, **smtp.starttls.env())
    done = subprocess.run([sys.executable, "-c", SENDER, str(settings.env_path)], cwd=REPO, capture_output=True,
                          text=True, env={"PATH": os.environ["PATH"], **smtp.environ}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("sent to ") and PASSWORD not in done.stdout + done.stderr
    assert [m.parsed()["Subject"] for m in smtp.starttls.messages] == ["from a fresh process"]
    done = subprocess.run([sys.executable, "-c", SENDER, str(settings.env_path)], cwd=REPO, capture_output=True,
                          text=True, env={"PATH": os.environ["PATH"]}, timeout=120)
    assert done.returncode != 0 and "certificate is not trusted" in done.stderr
    assert PASSWORD not in done.stdout + done.stderr


def test_login_refused_is_an_error_without_the_password(tmp_path, smtp):
    wrong = "Wrong-pass-0815"
    settings = _settings(tmp_path, **{**smtp.starttls.env(), "SMTP_PASSWORD": wrong})
    text = _fails(settings, wrong)
    assert "refused the login" in text and "535" in text and f"SMTP_USERNAME={USERNAME}" in text
    assert smtp.messages() == []


def test_a_closed_port_is_an_error(tmp_path, smtp):
    settings = _settings(tmp_path, SMTP_HOST="127.0.0.1", SMTP_PORT=str(free_port()), SMTP_SECURITY="starttls",
                         SMTP_USERNAME=USERNAME, SMTP_PASSWORD=PASSWORD)
    assert "refused the connection" in _fails(settings)


def test_a_server_that_never_answers_times_out(tmp_path, smtp, monkeypatch):
    """A port that accepts connections and never greets (a firewall's tarpit, a hung server)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        monkeypatch.setattr(mail, "TIMEOUT", 0.5)
        settings = _settings(tmp_path, SMTP_HOST="127.0.0.1", SMTP_PORT=str(silent.getsockname()[1]))
        assert "did not answer within" in _fails(settings)


def test_a_server_that_wants_starttls_refuses_a_plain_send(tmp_path, smtp):
    text = _fails(_settings(tmp_path, **smtp.starttls.env(login=False, security="none")))
    assert "530" in text and "wants TLS first, set SMTP_SECURITY=starttls" in text
    text = _fails(_settings(tmp_path, **smtp.starttls.env(login=True, security="none")))
    assert "offers no login" in text and "set SMTP_SECURITY=starttls" in text
    assert smtp.messages() == []


@pytest.mark.parametrize("security", ["starttls", "ssl"])
def test_a_server_that_wants_a_login_says_so(tmp_path, smtp, security):
    text = _fails(_settings(tmp_path, **smtp.by_security(security).env(login=False)))
    assert "530" in text and "set SMTP_USERNAME and SMTP_PASSWORD" in text
    assert smtp.messages() == []


def test_no_password_in_clear_over_a_network(tmp_path, smtp):
    settings = _settings(tmp_path, SMTP_HOST="mail.example.test", SMTP_SECURITY="none", SMTP_USERNAME=USERNAME,
                         SMTP_PASSWORD=PASSWORD)
    text = _fails(settings)
    assert "in clear text" in text and "SMTP_SECURITY=starttls" in text


def test_starttls_against_a_server_without_it_never_falls_back(tmp_path, smtp):
    text = _fails(_settings(tmp_path, **smtp.plain.env(login=True, security="starttls")))
    assert "offers no STARTTLS" in text
    assert smtp.messages() == []


def test_implicit_tls_against_a_plain_port_is_a_tls_error(tmp_path, smtp):
    text = _fails(_settings(tmp_path, **smtp.plain.env(login=True, security="ssl")))
    assert text.startswith("TLS with SMTP server") and "465 is usually ssl" in text


@pytest.mark.parametrize("security", ["starttls", "ssl"])
def test_certificates_are_verified(tmp_path, smtp, monkeypatch, security):
    """Without SSL_CERT_FILE the self-signed certificate is not trusted: verification is on."""
    monkeypatch.delenv("SSL_CERT_FILE")
    text = _fails(_settings(tmp_path, **smtp.by_security(security).env()))
    assert "certificate is not trusted" in text and "SSL_CERT_FILE" in text
    assert smtp.messages() == []


def test_a_refused_recipient_is_an_error(tmp_path, smtp):
    smtp.starttls.refuse.add("boss@example.test")
    text = _fails(_settings(tmp_path, **smtp.starttls.env()))
    assert "refused a recipient: boss@example.test (550" in text and "accepted ops@example.test" in text
    smtp.starttls.refuse.add("ops@example.test")
    assert "refused every recipient" in _fails(_settings(tmp_path, **smtp.starttls.env()))


def test_missing_settings_are_clear(tmp_path, smtp):
    assert "SMTP_HOST is not set" in _fails(_settings(tmp_path))
    settings = _settings(tmp_path, **smtp.plain.env())  # settings.py refuses SMTP_HOST without REPORT_TO too
    assert "REPORT_TO is not set" in _fails(replace(settings, values={**settings.values, "REPORT_TO": None}))
    assert "REPORT_FROM is not set" in _fails(_settings(tmp_path, **smtp.plain.env(), REPORT_FROM=None))


def test_save_writes_both_files_for_the_owner_only(tmp_path):
    settings = _settings(tmp_path)
    eml, page = mail.save(settings, _message(), "<html><body>first</body></html>", "2026-12-01")
    assert (eml, page) == (settings.backup_dir / "reports" / "report-2026-12-01.eml",
                           settings.backup_dir / "reports" / "report-2026-12-01.html")
    assert stat.S_IMODE(eml.parent.stat().st_mode) == 0o700
    assert [stat.S_IMODE(p.stat().st_mode) for p in (eml, page)] == [0o600, 0o600]
    parsed = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    assert [part.get_content_type() for part in parsed.iter_parts()] == ["text/plain", "text/html"]
    assert parsed["To"] == ", ".join(RECIPIENTS)
    mail.save(settings, _message("[FAILED] again"), "<html><body>second</body></html>", "2026-12-01")
    assert page.read_text() == "<html><body>second</body></html>" and b"[FAILED] again" in eml.read_bytes()
    assert sorted(p.name for p in eml.parent.iterdir()) == ["report-2026-12-01.eml", "report-2026-12-01.html"]
    with pytest.raises(BackupError, match="not a date"):
        mail.save(settings, _message(), "", "../../etc/x")


def test_the_port_follows_the_security_unless_it_is_set(tmp_path):
    from wpbackup.fleet.mail import smtp_port

    assert smtp_port(_settings(tmp_path, SMTP_HOST="mail.example.test")) == 587
    assert smtp_port(_settings(tmp_path, SMTP_HOST="mail.example.test", SMTP_SECURITY="ssl")) == 465
    assert smtp_port(_settings(tmp_path, SMTP_HOST="mail.example.test", SMTP_SECURITY="ssl", SMTP_PORT="2465")) == 2465
