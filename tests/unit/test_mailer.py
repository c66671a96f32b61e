"""The credentials e-mail (``gateway/manage/mailer.py``) against a real SMTP server.

The server is aiosmtpd's ``Controller``: a real SMTP server (RFC 5321, with
STARTTLS, implicit TLS and AUTH when asked) in a thread, on a random
loopback address.  The profile documents come from the real CLI
(``sipgw profile create --json``), so the e-mail is tested on exactly what
the gateway produces; the ``[smtp]`` settings go through the real parser.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.config.settings import ConfigError, SMTPSettings, settings_from_mapping
from gateway.manage.mailer import MailError, SMTPMailer, credentials_message
from tests.support.harness import GatewayHome, free_port, random_loopback

ACCOUNT_EMAIL = "pbx-admin@acme.example"
SENDER = "trunks@gw.example.net"
GATEWAY_ADDRESS = "203.0.113.10:5060"
REALM = "trunk.example.net"
SMTP_USER = "gateway"
SMTP_PASSWORD = "s3cret-relay-password"
#: Generous for a loaded machine; a working send takes milliseconds.
SEND_TIMEOUT = 20.0


# ---------------------------------------------------------------------------
# Profile documents, from the CLI


@pytest.fixture(scope="module")
def documents(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """A registration profile (with a number) and an IP profile, as
    ``sipgw profile create --json`` prints them, with a gateway running
    that PBXs reach at :data:`GATEWAY_ADDRESS` (behind NAT: it listens on
    loopback and advertises that address) with realm :data:`REALM`."""
    home = GatewayHome(tmp_path_factory.mktemp("mailer-home"))
    config = home.directory / "gateway.toml"
    config.write_text(f'[sip]\nrealm = "{REALM}"\n')
    try:
        home.serve(sip_config=f'advertise = "{GATEWAY_ADDRESS}"\nrealm = "{REALM}"')
        home.cli("account", "create", "--name", "acme", "--email", ACCOUNT_EMAIL)
        home.cli(
            "profile", "create", "--account", "acme", "--name", "sales",
            "--auth", "registration", "--channels", "30", "--config", str(config),
        )  # fmt: skip
        home.cli("number", "add", "--account", "acme", "+441134960000")
        home.cli("number", "assign", "+441134960000", "--profile", "sales")
        sales = home.cli_json("profile", "show", "sales", "--config", str(config))
        pbx = home.cli_json(
            "profile", "create", "--account", "acme", "--name", "leeds-pbx",
            "--auth", "ip", "--ip", "192.0.2.44", "--port", "5080", "--config", str(config),
        )  # fmt: skip
    finally:
        home.stop()
    return {"registration": sales, "ip": pbx}


# ---------------------------------------------------------------------------
# A real SMTP server


class Mailbox:
    """An aiosmtpd handler keeping what it accepts."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []
        self.logins: list[str] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        return "250 2.0.0 OK: queued"

    def only_message(self) -> tuple[Envelope, EmailMessage]:
        assert len(self.envelopes) == 1, self.envelopes
        (envelope,) = self.envelopes
        assert isinstance(envelope.content, bytes)
        parsed = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return envelope, parsed

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        ok = (auth_data.login, auth_data.password) == (
            SMTP_USER.encode(),
            SMTP_PASSWORD.encode(),
        )
        if ok:
            self.logins.append(auth_data.login.decode())
        # handled=False: aiosmtpd then answers 535 itself (RFC 4954 §6).
        return AuthResult(success=ok, handled=False)


class RefusingMailbox(Mailbox):
    """Answers every RCPT TO with 550 (RFC 5321 §4.2.3: mailbox unavailable)."""

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        return f"550 5.1.1 <{address}>: mailbox unavailable"


@dataclass
class SMTPServer:
    host: str
    port: int
    mailbox: Mailbox


StartServer = Callable[..., SMTPServer]


@pytest.fixture
def smtp_server() -> Iterator[StartServer]:
    """Start SMTP servers (``start(mailbox=None, host=None, **SMTP
    options)``), each on its own (by default random) loopback address; all
    are stopped at teardown."""
    started: list[Controller] = []

    def start(
        mailbox: Mailbox | None = None, *, host: str | None = None, **options: Any
    ) -> SMTPServer:
        host = host if host is not None else random_loopback()
        box = mailbox if mailbox is not None else Mailbox()
        controller = Controller(
            box, hostname=host, port=free_port(host), server_hostname="mx.test", **options
        )
        controller.start()
        started.append(controller)
        return SMTPServer(host, controller.port, box)

    try:
        yield start
    finally:
        for controller in started:
            controller.stop()


@dataclass(frozen=True)
class TestCA:
    """A certificate authority of this test run, trusted by nobody else."""

    __test__ = False  # not a test class, despite its name

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    path: Path

    def client_context(self) -> ssl.SSLContext:
        """What a client configured to trust this CA verifies with."""
        return ssl.create_default_context(cafile=str(self.path))

    def server_context(self, host: str, directory: Path) -> ssl.SSLContext:
        """A server context with a certificate for the IP address ``host``."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        cert_path, key_path = directory / f"{host}.crt", directory / f"{host}.key"
        cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert_path, key_path)
        return context


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sipgw test CA")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    path = tmp_path_factory.mktemp("ca") / "ca.crt"
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return TestCA(key, certificate, path)


def smtp_settings(host: str, port: int, **values: Any) -> SMTPSettings:
    """``[smtp]`` settings through the real parser."""
    section = {"host": host, "port": port, "from_address": SENDER, **values}
    return settings_from_mapping({"smtp": section}).smtp


async def send(mailer: SMTPMailer, document: dict[str, Any]) -> None:
    message = credentials_message(
        sender=mailer.settings.from_address, to=ACCOUNT_EMAIL, account="acme", document=document
    )
    async with asyncio.timeout(SEND_TIMEOUT):
        await mailer.send(message)


def body_of(message: EmailMessage) -> str:
    assert message.get_content_type() == "text/plain"
    content = message.get_content()
    assert isinstance(content, str)
    return content


# ---------------------------------------------------------------------------
# Delivery


async def test_registration_credentials_reach_the_account(
    smtp_server: StartServer, documents: dict[str, dict[str, Any]]
) -> None:
    server = smtp_server()
    document = documents["registration"]
    mailer = SMTPMailer(smtp_settings(server.host, server.port))
    assert mailer.enabled
    await send(mailer, document)

    envelope, message = server.mailbox.only_message()
    assert envelope.mail_from == SENDER
    assert envelope.rcpt_tos == [ACCOUNT_EMAIL]
    assert message["From"] == SENDER
    assert message["To"] == ACCOUNT_EMAIL
    assert message["Subject"] == "SIP trunk credentials for profile sales"
    assert message["Date"] is not None and message["Message-ID"] is not None
    password = document["password"]
    assert isinstance(password, str) and len(password) == 20
    for header, value in message.items():
        assert password not in str(value), f"password in the {header} header"

    body = body_of(message)
    lines = body.splitlines()
    assert f"SIP username:   {document['sip_username']}" in lines
    assert f"Password:       {password}" in lines
    assert f"Realm:          {REALM}" in lines
    assert "Register with, and send calls to (registrar and outbound proxy):" in lines
    assert f"  {GATEWAY_ADDRESS} (UDP, TCP)" in lines
    assert "Authentication: registration (SIP digest)" in lines
    assert "Profile:        sales" in lines and "Account:        acme" in lines
    assert "Channels:       30 concurrent calls" in lines
    assert "Numbers:        +441134960000" in lines


async def test_ip_profile_gets_the_allow_list(
    smtp_server: StartServer, documents: dict[str, dict[str, Any]]
) -> None:
    server = smtp_server()
    document = documents["ip"]
    assert document["password"] is None
    await send(SMTPMailer(smtp_settings(server.host, server.port)), document)

    envelope, message = server.mailbox.only_message()
    assert envelope.rcpt_tos == [ACCOUNT_EMAIL]
    assert message["Subject"] == "SIP trunk credentials for profile leeds-pbx"
    body = body_of(message)
    lines = body.splitlines()
    assert "Authentication: IP address (no registration)" in lines
    assert "The gateway accepts calls from your PBX at 192.0.2.44:5080 (UDP)." in lines
    assert "Send calls to, and allow SIP from, the gateway's addresses:" in lines
    assert f"  {GATEWAY_ADDRESS} (UDP, TCP)" in lines
    assert "Numbers:        none yet" in lines
    assert "Password" not in body and "SIP username" not in body and "Realm" not in body


async def test_made_while_no_gateway_runs_it_says_so(
    smtp_server: StartServer, documents: dict[str, dict[str, Any]]
) -> None:
    """Only a running gateway knows where PBXs reach it: a profile made
    while none runs gets no guessed address."""
    server = smtp_server()
    document = {**documents["registration"], "gateway_addresses": []}
    await send(SMTPMailer(smtp_settings(server.host, server.port)), document)
    _, message = server.mailbox.only_message()
    lines = body_of(message).splitlines()
    index = lines.index("Register with, and send calls to (registrar and outbound proxy):")
    assert lines[index + 1] == "  (no gateway is running right now: ask the gateway operator)"


def test_a_document_without_the_password_says_so(documents: dict[str, dict[str, Any]]) -> None:
    """A store opened without the secret key shows no password (``null``):
    the e-mail must not print "None"."""
    document = {**documents["registration"], "password": None}
    message = credentials_message(
        sender=SENDER, to=ACCOUNT_EMAIL, account="acme", document=document
    )
    body = body_of(message)
    assert "Password:       (not available: ask the gateway operator)" in body.splitlines()
    assert "None" not in body


async def test_a_name_in_any_script_survives_the_trip(
    smtp_server: StartServer, documents: dict[str, dict[str, Any]]
) -> None:
    """Profile names may be any printable text: the subject is encoded
    (RFC 2047) and the body is quoted-printable UTF-8 (RFC 2045)."""
    server = smtp_server()
    document = {**documents["ip"], "name": "Zürich Büro"}
    await send(SMTPMailer(smtp_settings(server.host, server.port)), document)
    envelope, message = server.mailbox.only_message()
    assert isinstance(envelope.content, bytes) and envelope.content.isascii()
    assert message["Subject"] == "SIP trunk credentials for profile Zürich Büro"
    assert "Profile:        Zürich Büro" in body_of(message).splitlines()


# ---------------------------------------------------------------------------
# Failures


async def test_refused_recipient_is_a_mail_error(
    smtp_server: StartServer, documents: dict[str, dict[str, Any]]
) -> None:
    server = smtp_server(RefusingMailbox())
    with pytest.raises(MailError) as info:
        await send(SMTPMailer(smtp_settings(server.host, server.port)), documents["registration"])
    assert str(info.value) == (
        f"SMTP {server.host}:{server.port}: recipient refused"
        f" ({ACCOUNT_EMAIL}: 550 5.1.1 <{ACCOUNT_EMAIL}>: mailbox unavailable)"
    )
    assert server.mailbox.envelopes == []


async def test_closed_port_fails_at_once(documents: dict[str, dict[str, Any]]) -> None:
    host = random_loopback()
    port = free_port(host)  # nobody listens there
    # A refusal must not wait for smtp.timeout: the send gets 60 s, the test
    # allows it far less (send() gives up after SEND_TIMEOUT).
    mailer = SMTPMailer(smtp_settings(host, port, timeout=60))
    assert SEND_TIMEOUT < 60
    with pytest.raises(MailError) as info:
        await send(mailer, documents["registration"])
    assert str(info.value) == f"SMTP {host}:{port}: connection refused"


async def test_silent_server_times_out(documents: dict[str, dict[str, Any]]) -> None:
    """A server that accepts the connection and never greets (RFC 5321
    §3.1): the send gives up after smtp.timeout."""
    host = random_loopback()
    with socket.create_server((host, 0)) as silent:  # the kernel accepts, nobody answers
        port = silent.getsockname()[1]
        mailer = SMTPMailer(smtp_settings(host, port, timeout=0.5))
        with pytest.raises(MailError) as info:
            await send(mailer, documents["registration"])
    assert str(info.value) == f"SMTP {host}:{port}: no answer within 0.5 s"


async def test_starttls_required_but_not_offered(
    smtp_server: StartServer, documents: dict[str, dict[str, Any]]
) -> None:
    """RFC 3207: with security = "starttls" the password never goes out in
    clear; a server that does not offer STARTTLS gets nothing."""
    server = smtp_server()
    mailer = SMTPMailer(smtp_settings(server.host, server.port, security="starttls"))
    with pytest.raises(MailError) as info:
        await send(mailer, documents["registration"])
    assert str(info.value) == (
        f"SMTP {server.host}:{server.port}: the server does not offer STARTTLS"
    )
    assert server.mailbox.envelopes == []


async def test_server_demanding_tls_refuses_a_plain_send(
    smtp_server: StartServer,
    documents: dict[str, dict[str, Any]],
    test_ca: TestCA,
    tmp_path: Path,
) -> None:
    """A server that requires STARTTLS (RFC 3207 §4) answers 530 to a
    plain MAIL FROM: the reason reaches the operator."""
    host = random_loopback()
    server = smtp_server(
        host=host, tls_context=test_ca.server_context(host, tmp_path), require_starttls=True
    )
    with pytest.raises(MailError) as info:
        await send(SMTPMailer(smtp_settings(server.host, server.port)), documents["ip"])
    message = str(info.value)
    assert message.startswith(f"SMTP {server.host}:{server.port}: ")
    assert "530" in message and "STARTTLS" in message


# ---------------------------------------------------------------------------
# TLS and login


async def test_starttls_and_login(
    smtp_server: StartServer,
    documents: dict[str, dict[str, Any]],
    test_ca: TestCA,
    tmp_path: Path,
) -> None:
    host = random_loopback()
    mailbox = Mailbox()
    server = start_tls_server(
        smtp_server, mailbox, host, test_ca.server_context(host, tmp_path), implicit=False
    )
    settings = smtp_settings(
        server.host,
        server.port,
        security="starttls",
        username=SMTP_USER,
        password=SMTP_PASSWORD,
    )
    await send(
        SMTPMailer(settings, ssl_context=test_ca.client_context()), documents["registration"]
    )
    assert mailbox.logins == [SMTP_USER]
    _, message = mailbox.only_message()
    assert documents["registration"]["password"] in body_of(message)

    wrong = smtp_settings(
        server.host, server.port, security="starttls", username=SMTP_USER, password="guess"
    )
    with pytest.raises(MailError) as info:
        await send(SMTPMailer(wrong, ssl_context=test_ca.client_context()), documents["ip"])
    text = str(info.value)
    assert text.startswith(f"SMTP {server.host}:{server.port}: login failed (535 ")
    assert "guess" not in text and "\n" not in text
    assert len(mailbox.envelopes) == 1

    # The system's CAs do not know this server: the handshake fails before
    # the login, and the reason is the certificate (not a hang at QUIT).
    with pytest.raises(MailError) as info:
        await send(SMTPMailer(settings), documents["ip"])
    assert str(info.value).startswith(
        f"SMTP {server.host}:{server.port}: TLS certificate not trusted ("
    )
    assert mailbox.logins == [SMTP_USER] and len(mailbox.envelopes) == 1


async def test_implicit_tls(
    smtp_server: StartServer,
    documents: dict[str, dict[str, Any]],
    test_ca: TestCA,
    tmp_path: Path,
) -> None:
    host = random_loopback()
    mailbox = Mailbox()
    server = start_tls_server(
        smtp_server, mailbox, host, test_ca.server_context(host, tmp_path), implicit=True
    )
    settings = smtp_settings(
        server.host, server.port, security="tls", username=SMTP_USER, password=SMTP_PASSWORD
    )
    await send(SMTPMailer(settings, ssl_context=test_ca.client_context()), documents["ip"])
    assert mailbox.logins == [SMTP_USER]
    _, message = mailbox.only_message()
    assert message["Subject"] == "SIP trunk credentials for profile leeds-pbx"

    # The default context trusts the system's CAs only: this server's
    # certificate is refused, and nothing is sent.
    with pytest.raises(MailError) as info:
        await send(SMTPMailer(settings), documents["ip"])
    assert str(info.value).startswith(
        f"SMTP {server.host}:{server.port}: TLS certificate not trusted ("
    )
    assert len(mailbox.envelopes) == 1


def start_tls_server(
    start: StartServer, mailbox: Mailbox, host: str, context: ssl.SSLContext, *, implicit: bool
) -> SMTPServer:
    """An SMTP server on ``host`` with login; TLS from the first byte
    (``implicit``) or after STARTTLS, which it then requires."""
    return start(
        mailbox,
        host=host,
        authenticator=mailbox.authenticate,
        # aiosmtpd counts only STARTTLS as TLS; implicit TLS is TLS all the same.
        auth_require_tls=not implicit,
        **({"ssl_context": context} if implicit else {"tls_context": context}),
        **({} if implicit else {"require_starttls": True}),
    )


# ---------------------------------------------------------------------------
# Settings


async def test_no_host_means_no_email(documents: dict[str, dict[str, Any]]) -> None:
    mailer = SMTPMailer(settings_from_mapping({}).smtp)
    assert not mailer.enabled
    with pytest.raises(MailError) as info:
        await send(mailer, documents["registration"])
    assert str(info.value) == "e-mail is disabled (smtp.host is empty)"


@pytest.mark.parametrize(
    ("section", "key", "problem"),
    [
        ({"username": "gateway"}, "smtp.password", "both or neither"),
        ({"password": "secret"}, "smtp.username", "both or neither"),
        ({"username": "gateway", "password": "secret"}, "smtp.security", "in clear"),
        (
            {"username": "gateway", "password": "secret", "security": "none"},
            "smtp.security",
            "in clear",
        ),
        ({"username": "gate\nway", "password": "x", "security": "tls"}, "smtp.username", "print"),
        ({"username": 5, "password": "x", "security": "tls"}, "smtp.username", "string"),
    ],
)
def test_login_settings(section: dict[str, Any], key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_mapping({"smtp": {"host": "smtp.example.net", **section}})
    assert info.value.key == key
    assert problem in info.value.problem
    assert "secret" not in str(info.value)  # a password is never echoed


def test_login_settings_accepted_with_tls() -> None:
    smtp = settings_from_mapping(
        {"smtp": {"host": "smtp.example.net", "port": 587, "security": "starttls",
                  "username": "gateway", "password": "secret"}}
    ).smtp  # fmt: skip
    assert (smtp.username, smtp.password, smtp.security, smtp.port) == (
        "gateway",
        "secret",
        "starttls",
        587,
    )
    assert "secret" not in repr(smtp)
