"""The daily report's way out: SMTP to every REPORT_TO recipient, or files when no SMTP_HOST.

    EmailMessage --deliver--> SMTP_HOST:SMTP_PORT  (SMTP_SECURITY: starttls | ssl | none)
                 --save-----> BACKUP_DIR/reports/report-DATE.eml + .html   (no SMTP_HOST)

``SMTP_SECURITY``:

- ``starttls`` (default, port 587): plain connection upgraded with STARTTLS before anything
  else; a server that offers no STARTTLS is refused (never a silent fallback to clear text).
- ``ssl`` (usually port 465): TLS from the first byte (SMTP_SSL).
- ``none``: no TLS at all, for a relay on the machine or the local network. The password is
  then only sent when SMTP_HOST is a loopback address (it would cross the network in clear
  otherwise): a username with ``none`` and a remote host is refused with a hint.

Certificates are always verified against the system's CA store. A server with a private CA
(or a self-signed certificate, as in the tests) is trusted by pointing the ``SSL_CERT_FILE``
environment variable at a PEM bundle: OpenSSL reads it when the default context loads its
roots (note: it then replaces the system store for this process).

Every failure is a BackupError with one line saying what went wrong and what to check; no
message ever contains SMTP_PASSWORD (servers' replies are scrubbed of it too).
"""

from __future__ import annotations

import ipaddress
import os
import smtplib
import socket
import ssl
from email.message import EmailMessage
from email.utils import formatdate, getaddresses, make_msgid, parseaddr
from pathlib import Path

from wpbackup.atomic import write_atomic
from wpbackup.config.settings import Settings
from wpbackup.errors import BackupError, disk_error
from wpbackup.fleet.daily import check_date

#: seconds for connecting and for each answer of the server
TIMEOUT = 30.0


class _Scrubber:
    """Removes the password from any text that might carry it (a server echoing it back)."""

    def __init__(self, password: str | None):
        self.password = password or ""

    def __call__(self, text: str) -> str:
        text = " ".join(str(text).split())  # one line, whatever the server sent
        text = text if len(text) <= 300 else text[:300] + "..."
        return text.replace(self.password, "[password]") if self.password else text


def _reply(exc: smtplib.SMTPResponseException, scrub: _Scrubber) -> str:
    """A server reply as '535 5.7.8 Authentication credentials invalid'."""
    text = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
    return scrub(f"{exc.smtp_code} {text}")


def _is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses: traffic that never leaves the machine."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _sender(settings: Settings, message: EmailMessage) -> str:
    """The envelope sender: REPORT_FROM, else the message's own From address."""
    sender = settings.value("REPORT_FROM") or parseaddr(str(message.get("From", "")))[1]
    if not sender:
        raise BackupError("REPORT_FROM is not set: set it to the address the report is sent from")
    return parseaddr(sender)[1] or sender


def complete_headers(settings: Settings, message: EmailMessage) -> None:
    """Fill the headers a mail client or spam filter expects and the caller left out (From,
    To, Date, Message-ID); what the caller set is kept."""
    if "From" not in message and settings.value("REPORT_FROM"):
        message["From"] = settings.value("REPORT_FROM")
    if "To" not in message and settings.value("REPORT_TO"):
        message["To"] = ", ".join(settings.value("REPORT_TO"))
    if "Date" not in message:
        message["Date"] = formatdate(usegmt=True)
    if "Message-ID" not in message:
        domain = parseaddr(str(message.get("From", "")))[1].rpartition("@")[2] or None
        message["Message-ID"] = make_msgid("wpbackup-report", domain=domain)


def _recipients(settings: Settings) -> list[str]:
    recipients = [address for _, address in getaddresses(list(settings.value("REPORT_TO") or ()))]
    if not recipients:
        raise BackupError("REPORT_TO is not set: set it to one or more addresses (comma-separated)")
    return recipients


def _tls_context() -> ssl.SSLContext:
    """Verification on, the system's CAs (or SSL_CERT_FILE / SSL_CERT_DIR when set)."""
    return ssl.create_default_context()


def _connect(host: str, port: int, security: str) -> smtplib.SMTP:
    """An SMTP session past EHLO, encrypted as SMTP_SECURITY asks."""
    if security == "ssl":
        server: smtplib.SMTP = smtplib.SMTP_SSL(host, port, timeout=TIMEOUT, context=_tls_context())
    else:
        server = smtplib.SMTP(host, port, timeout=TIMEOUT)
    try:
        server.ehlo()
        if security == "starttls":
            if not server.has_extn("starttls"):
                raise BackupError(f"{host}:{port} offers no STARTTLS, and SMTP_SECURITY=starttls does not "
                                  "send in clear text: use SMTP_SECURITY=ssl if this is an implicit TLS port "
                                  "(usually 465), or none for a relay without TLS")
            server.starttls(context=_tls_context())
            server.ehlo()
    except BaseException:
        server.close()
        raise
    return server


def _check_clear_login(settings: Settings, host: str, security: str) -> None:
    """Refuse (before connecting) to send a password in clear text over a network."""
    if settings.value("SMTP_USERNAME") and security == "none" and not _is_loopback(host):
        raise BackupError(f"SMTP_USERNAME is set with SMTP_SECURITY=none: the password would cross the "
                          f"network to {host} in clear text; use SMTP_SECURITY=starttls or ssl")


def _login(server: smtplib.SMTP, settings: Settings, host: str) -> None:
    """Log in when SMTP_USERNAME is set (and the server offers it on this connection)."""
    username, password = settings.value("SMTP_USERNAME"), settings.value("SMTP_PASSWORD") or ""
    if not username:
        return
    if not server.has_extn("auth"):
        hint = (": it offers STARTTLS, so set SMTP_SECURITY=starttls" if server.has_extn("starttls")
                else ": remove SMTP_USERNAME if it needs no login")
        raise BackupError(f"{host} offers no login (AUTH) on this connection{hint}")
    server.login(username, password)


def _send(server: smtplib.SMTP, message: EmailMessage, sender: str, recipients: list[str],
          where: str, scrub: _Scrubber) -> None:
    """Hand the message over; a recipient refused is an error even when others took it (a
    typo in REPORT_TO must not go unnoticed)."""
    refused = server.send_message(message, from_addr=sender, to_addrs=recipients)
    if refused:
        accepted = [r for r in recipients if r not in refused]
        took = f" (it accepted {', '.join(accepted)})" if accepted else ""
        error = PartlySent if accepted else BackupError
        raise error(f"{where} refused a recipient: {_refusals(refused, scrub)}{took}; check REPORT_TO")


def _refusals(refused: dict, scrub: _Scrubber) -> str:
    """'b@y (550 5.1.1 no such user); ...' from smtplib's {recipient: (code, reply)}."""
    return "; ".join(scrub(f"{r} ({code} {text.decode(errors='replace') if isinstance(text, bytes) else text})")
                     for r, (code, text) in refused.items())


def _sender_hint(exc: smtplib.SMTPSenderRefused, scrub: _Scrubber) -> str:
    """530 means "not like this": the server wants TLS first, or a login."""
    reply = _reply(exc, scrub).lower()
    if exc.smtp_code == 530 and "starttls" in reply:
        return ": the server wants TLS first, set SMTP_SECURITY=starttls"
    if exc.smtp_code == 530 and "auth" in reply:
        return ": the server wants a login, set SMTP_USERNAME and SMTP_PASSWORD"
    return ": check REPORT_FROM"


def _explain(exc: BaseException, settings: Settings, host: str, port: int, scrub: _Scrubber) -> str:
    """One line for the operator saying what failed and what to check."""
    where = f"SMTP server {host}:{port}"
    return _refusal(exc, settings, where, scrub) or _transport(exc, host, where, scrub)


def _refusal(exc: BaseException, settings: Settings, where: str, scrub: _Scrubber) -> str | None:
    """The server answered, and said no."""
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return (f"{where} refused the login of SMTP_USERNAME={settings.value('SMTP_USERNAME')} "
                f"({_reply(exc, scrub)}): check SMTP_USERNAME and SMTP_PASSWORD")
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return f"{where} refused every recipient: {_refusals(exc.recipients, scrub)}; check REPORT_TO"
    if isinstance(exc, smtplib.SMTPSenderRefused):
        return f"{where} refused the sender {exc.sender} ({_reply(exc, scrub)}){_sender_hint(exc, scrub)}"
    if isinstance(exc, smtplib.SMTPDataError):
        return f"{where} refused the message ({_reply(exc, scrub)})"
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return f"{where} does not support what was asked ({scrub(str(exc))})"
    return None


def _transport(exc: BaseException, host: str, where: str, scrub: _Scrubber) -> str:
    """The conversation itself failed: network, TLS, a server that went away or said nonsense."""
    if isinstance(exc, (socket.timeout, TimeoutError)) or "timed out" in str(exc):  # smtplib wraps some
        return f"{where} did not answer within {TIMEOUT:g} s: check SMTP_HOST, SMTP_PORT and the firewall"
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        hint = " (is SMTP_SECURITY right for this port? 465 is usually ssl, 587 starttls)"
        return f"{where} closed the connection unexpectedly{hint}"
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"{where} answered an error ({_reply(exc, scrub)})"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"TLS with {where} failed: its certificate is not trusted ({scrub(exc.verify_message)}); for a "
                "private CA point the SSL_CERT_FILE environment variable at its certificate")
    if isinstance(exc, ssl.SSLError):
        hint = (" (is SMTP_SECURITY right for this port? 465 is usually ssl, 587 starttls)"
                if "WRONG_VERSION_NUMBER" in str(exc) or "wrong version number" in str(exc) else "")
        return f"TLS with {where} failed ({scrub(exc.reason or str(exc))}){hint}"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve SMTP_HOST={host} ({exc.strerror}): check SMTP_HOST"
    if isinstance(exc, ConnectionRefusedError):
        return f"{where} refused the connection (nothing listens there): check SMTP_HOST and SMTP_PORT"
    if isinstance(exc, OSError):
        return f"cannot reach {where}: {scrub(exc.strerror or str(exc))}"
    return f"sending through {where} failed: {scrub(f'{type(exc).__name__}: {exc}')}"


class PartlySent(BackupError):
    """The mail server took the message for some recipients and refused others: it went out
    (so the day's report counts as sent), yet REPORT_TO needs fixing."""


def smtp_port(settings: Settings) -> int:
    """SMTP_PORT when set; else 465 for SMTP_SECURITY=ssl (implicit TLS has its own port), 587."""
    if (settings.raw.get("SMTP_PORT") or "").strip():
        return int(settings.value("SMTP_PORT"))
    return 465 if settings.value("SMTP_SECURITY") == "ssl" else 587


def deliver(settings: Settings, message: EmailMessage) -> str:
    """Send through SMTP_HOST to every REPORT_TO recipient; a one-line description of what
    happened ("sent to a@x, b@y through smtp.example.com:587 (starttls)"). Headers missing
    from ``message`` (From, To, Date, Message-ID) are filled in place. Raises BackupError
    with one line saying why (connection refused, timed out, TLS failed, login refused, a
    recipient refused...), never showing the password."""
    host = settings.value("SMTP_HOST")
    if not host:
        raise BackupError("SMTP_HOST is not set: nothing to send the report through")
    port, security = smtp_port(settings), settings.value("SMTP_SECURITY")
    scrub = _Scrubber(settings.value("SMTP_PASSWORD"))
    recipients, sender = _recipients(settings), _sender(settings, message)
    _check_clear_login(settings, host, security)
    complete_headers(settings, message)
    server = None
    try:
        server = _connect(host, port, security)
        _login(server, settings, host)
        _send(server, message, sender, recipients, f"SMTP server {host}:{port}", scrub)
    except BackupError as exc:
        raise type(exc)(scrub(str(exc))) from None
    except (smtplib.SMTPException, OSError) as exc:  # ssl.SSLError and socket errors are OSErrors
        raise BackupError(_explain(exc, settings, host, port, scrub)) from None
    finally:
        _close(server)
    login = f", logged in as {settings.value('SMTP_USERNAME')}" if settings.value("SMTP_USERNAME") else ""
    return f"sent to {', '.join(recipients)} through {host}:{port} ({security}{login})"


def try_login(settings: Settings) -> str:
    """Connect to SMTP_HOST the way ``deliver`` does and log in (when SMTP_USERNAME is set),
    then quit without sending: `doit configure` checks the mail settings before saving them.
    Where it got in ("smtp.example.com:587 (starttls, logged in as x)"), or a BackupError
    with ``deliver``'s wording of why not (never the password)."""
    host = settings.value("SMTP_HOST")
    if not host:
        raise BackupError("SMTP_HOST is not set: nothing to connect to")
    port, security = smtp_port(settings), settings.value("SMTP_SECURITY")
    scrub = _Scrubber(settings.value("SMTP_PASSWORD"))
    _check_clear_login(settings, host, security)
    server = None
    try:
        server = _connect(host, port, security)
        _login(server, settings, host)
    except BackupError as exc:
        raise type(exc)(scrub(str(exc))) from None
    except (smtplib.SMTPException, OSError) as exc:
        raise BackupError(_explain(exc, settings, host, port, scrub)) from None
    finally:
        _close(server)
    login = f", logged in as {settings.value('SMTP_USERNAME')}" if settings.value("SMTP_USERNAME") else ""
    return f"{host}:{port} ({security}{login})"


def _close(server: smtplib.SMTP | None) -> None:
    """QUIT politely; a server that already went away is no error (the message is sent or not
    by then, and that was decided above)."""
    if server is None:
        return
    try:
        server.quit()
    except (smtplib.SMTPException, OSError):
        server.close()


def save(settings: Settings, message: EmailMessage, html: str, date: str) -> tuple[Path, Path]:
    """No SMTP_HOST: the report as BACKUP_DIR/reports/report-DATE.eml (the whole message, to
    open in a mail client) and .html (to open in a browser), both 0600 in a 0700 folder
    (the report names servers, sites and buckets) and written atomically; saving the same
    date again replaces both. Returns (eml, html)."""
    check_date(date)
    folder = settings.backup_dir / "reports"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
    except OSError as exc:
        raise disk_error(folder, exc) from None
    complete_headers(settings, message)
    eml, page = folder / f"report-{date}.eml", folder / f"report-{date}.html"
    write_atomic(eml, message.as_bytes(), 0o600)
    write_atomic(page, html.encode("utf-8"), 0o600)
    return eml, page
