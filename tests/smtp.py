"""Real SMTP servers for the report's tests (aiosmtpd, ../shared/spec/test-infra.md section 4),
on 127.0.0.1 at free ports:

- ``plain``: no TLS, no login (a local relay);
- ``starttls``: STARTTLS required before MAIL, login offered only after STARTTLS and required;
- ``implicit``: TLS from the first byte (SMTPS), login required.

Each keeps what it received in ``messages`` (mail_from, rcpt_tos, tls, authenticated and the raw
bytes); ``refuse`` holds recipients it answers 550 for. The certificate is self-signed, made
with openssl when the servers start; the ``smtp`` fixture points SSL_CERT_FILE at it (for this
process and, through the environment, every `doit` the test starts), which is how an operator
would trust a private CA, and certificate checks stay on.

The fixtures become everyone's with one line in tests/conftest.py:
``from .smtp import smtp, smtp_servers  # noqa: F401 (fixtures)``; ``smtp.starttls.env()`` gives
an install's SMTP_* keys for that server, ``smtp.environ`` the environment a `doit` needs.
"""

from __future__ import annotations

import email
import email.policy
import subprocess
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from .servers import free_port

USERNAME = "reports@example.test"
PASSWORD = "smtp-Secret-pw-4711"  # what the tests look for in every output


@dataclass
class Received:
    """One message as a server accepted it."""

    mail_from: str
    rcpt_tos: list[str]
    tls: bool
    authenticated: bool
    raw: bytes

    def parsed(self) -> EmailMessage:
        return email.message_from_bytes(self.raw, policy=email.policy.default)


class _Handler:
    """Stores every message; refuses the recipients in ``refuse``."""

    def __init__(self, server: SmtpServer):
        self.server = server

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        # the login the implicit TLS server requires (aiosmtpd's auth_required wants STARTTLS)
        if self.server.implicit and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.server.refuse:
            return "550 5.1.1 no such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.server.messages.append(Received(
            mail_from=envelope.mail_from, rcpt_tos=list(envelope.rcpt_tos),
            tls=self.server.implicit or session.ssl is not None,  # session.ssl is None with implicit TLS
            authenticated=bool(session.authenticated), raw=bytes(envelope.original_content or envelope.content)))
        return "250 2.0.0 message accepted"


def _authenticator(server, session, envelope, mechanism, auth_data) -> AuthResult:
    """The one account these servers know."""
    ok = (isinstance(auth_data, LoginPassword) and auth_data.login == USERNAME.encode()
          and auth_data.password == PASSWORD.encode())
    return AuthResult(success=ok, handled=False)


class SmtpServer:
    """One aiosmtpd Controller on 127.0.0.1; ``security`` is the SMTP_SECURITY that fits it."""

    def __init__(self, security: str, tls=None):
        self.security, self.implicit = security, security == "ssl"
        self.messages: list[Received] = []
        self.refuse: set[str] = set()
        self.port = free_port()  # port=0 does not work: the Controller connects to itself
        options: dict = {"hostname": "127.0.0.1", "port": self.port, "server_hostname": "localhost"}
        if security == "starttls":
            options.update(tls_context=tls, require_starttls=True, authenticator=_authenticator,
                           auth_require_tls=True, auth_required=True)
        elif security == "ssl":
            options.update(ssl_context=tls, authenticator=_authenticator, auth_require_tls=False)
        self.controller = Controller(_Handler(self), **options)
        self.controller.start()

    def env(self, login: bool | None = None, security: str | None = None) -> dict[str, str]:
        """An install's SMTP_* settings for this server; ``login`` defaults to whether it
        takes one."""
        login = self.security != "none" if login is None else login
        env = {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(self.port), "SMTP_SECURITY": security or self.security}
        if login:
            env.update(SMTP_USERNAME=USERNAME, SMTP_PASSWORD=PASSWORD)
        return env

    def stop(self) -> None:
        self.controller.stop()


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1: (cert.pem, key.pem)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


class SmtpServers:
    """The three servers and their certificate; ``environ`` is what a `doit` needs to trust it."""

    def __init__(self, folder: Path):
        import ssl

        self.cert, key = make_certificate(folder)
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(self.cert, key)
        self.environ = {"SSL_CERT_FILE": str(self.cert)}
        self.plain = SmtpServer("none")
        try:
            self.starttls = SmtpServer("starttls", tls)
            self.implicit = SmtpServer("ssl", tls)
        except BaseException:
            self.stop()
            raise

    @property
    def all(self) -> list[SmtpServer]:
        return [s for s in (getattr(self, n, None) for n in ("plain", "starttls", "implicit")) if s]

    def by_security(self, security: str) -> SmtpServer:
        return {"none": self.plain, "starttls": self.starttls, "ssl": self.implicit}[security]

    def messages(self) -> list[Received]:
        """Everything any of the three received."""
        return [m for s in self.all for m in s.messages]

    def reset(self) -> None:
        for server in self.all:
            server.messages.clear()
            server.refuse.clear()

    def stop(self) -> None:
        for server in self.all:
            server.stop()


@pytest.fixture(scope="session")
def smtp_servers(tmp_path_factory):
    servers = SmtpServers(tmp_path_factory.mktemp("smtp"))
    yield servers
    servers.stop()


@pytest.fixture
def smtp(smtp_servers, monkeypatch):
    """The three SMTP servers, emptied, with SSL_CERT_FILE set to their certificate for this
    test (this process and the `doit` subprocesses it starts)."""
    smtp_servers.reset()
    for name, value in smtp_servers.environ.items():
        monkeypatch.setenv(name, value)
    yield smtp_servers
    smtp_servers.reset()
