"""Shared test fixtures: free ports, random loopback addresses, SIP message
builders and the real ``sipgw serve`` running as a subprocess.

Several suites may run at once on one machine, so nothing binds a fixed
address: servers get a random address in 127.0.0.0/8 and a port the kernel
found free there.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sip.message import Message, Response
from sip.parser import StreamParser, parse_datagram

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Generous for a loaded CI machine; the gateway is usually up in ~0.3 s.
START_TIMEOUT = 15.0
REPLY_TIMEOUT = 2.0


# ---------------------------------------------------------------------------
# Addresses


def random_loopback() -> str:
    """A random address in 127.0.0.0/8 other than 127.0.0.1 (Linux answers
    on all of them), so that parallel suites do not meet."""
    rng = random.SystemRandom()
    while True:
        address = f"127.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(2, 254)}"
        if address != "127.0.0.1":
            return address


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on ``host`` right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        with socket.socket(family, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = udp.getsockname()[1]
            with socket.socket(family, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return int(port)
    raise RuntimeError(f"no free port on {host}")


def has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def bind_udp_5060() -> socket.socket:
    """A UDP socket on a random loopback address at port 5060 (where
    RFC 3261 §18.2.2 sends responses to a Via without port or rport)."""
    for _ in range(50):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((random_loopback(), 5060))
        except OSError as exc:
            sock.close()
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                continue
            raise
        return sock
    raise RuntimeError("no loopback address with port 5060 free")


@pytest.fixture
def loopback_address() -> str:
    return random_loopback()


# ---------------------------------------------------------------------------
# Messages


def sip_request(
    method: str = "OPTIONS",
    *,
    via: str,
    uri: str = "sip:gateway@example.net",
    call_id: str | None = None,
    cseq_method: str | None = None,
    max_forwards: int | None = 70,
    headers: tuple[str, ...] = (),
    body: bytes = b"",
    version: str = "SIP/2.0",
) -> bytes:
    """A well-formed request (unless the arguments ask otherwise).

    ``via`` is the top Via value without the branch, e.g.
    ``"SIP/2.0/UDP 127.0.0.1:5070;rport"``.
    """
    branch = "z9hG4bK" + uuid.uuid4().hex
    lines = [
        f"{method} {uri} {version}",
        f"Via: {via};branch={branch}",
        *([f"Max-Forwards: {max_forwards}"] if max_forwards is not None else []),
        "From: <sip:tester@example.org>;tag=" + uuid.uuid4().hex[:10],
        "To: <sip:gateway@example.net>",
        f"Call-ID: {call_id or uuid.uuid4().hex}",
        f"CSeq: 1 {cseq_method or method}",
        *headers,
        f"Content-Length: {len(body)}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def parse_response(data: bytes) -> Response:
    message = parse_datagram(data)
    assert isinstance(message, Response), f"expected a response, got {data[:80]!r}"
    return message


def udp_exchange(
    data: bytes,
    server: tuple[str, int],
    *,
    sock: socket.socket | None = None,
    timeout: float = REPLY_TIMEOUT,
) -> Response | None:
    """Send one datagram, wait for one reply (None on timeout)."""
    own = sock is None
    if sock is None:
        sock = socket.socket(
            socket.AF_INET6 if ":" in server[0] else socket.AF_INET, socket.SOCK_DGRAM
        )
        sock.bind((server[0], 0))
    try:
        sock.settimeout(timeout)
        sock.sendto(data, server)
        try:
            reply, _ = sock.recvfrom(65535)
        except TimeoutError:
            return None
        return parse_response(reply)
    finally:
        if own:
            sock.close()


def options_over_udp(server: tuple[str, int]) -> Response | None:
    """A fresh well-formed OPTIONS from a fresh socket (rport: reply to us)."""
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((server[0], 0))
        host, port = sock.getsockname()[:2]
        sent_by = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        return udp_exchange(sip_request(via=f"SIP/2.0/UDP {sent_by};rport"), server, sock=sock)


def tcp_read_messages(
    sock: socket.socket, count: int, timeout: float = REPLY_TIMEOUT
) -> list[Message]:
    """Read until ``count`` messages were framed or the deadline passed."""
    parser = StreamParser()
    out: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        sock.settimeout(remaining)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        if not data:
            break
        out.extend(parser.feed(data))
    return out


# ---------------------------------------------------------------------------
# The served gateway


@dataclass
class ServedGateway:
    """A running ``python -m gateway serve`` and how to reach it."""

    process: subprocess.Popen[bytes]
    sip: tuple[str, int]
    http: tuple[str, int]
    log_path: Path
    config_path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def http_url(self) -> str:
        return f"http://{self.http[0]}:{self.http[1]}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def healthz(self, timeout: float = 2.0) -> dict[str, Any]:
        with urllib.request.urlopen(self.http_url + "/healthz", timeout=timeout) as reply:
            assert reply.status == 200
            result: dict[str, Any] = json.load(reply)
            return result

    def assert_alive(self) -> None:
        assert self.process.poll() is None, (
            f"gateway died (rc={self.process.returncode}):\n{self.log()}"
        )

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def gateway_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway", *args]


def gateway_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_gateway(
    directory: Path,
    *,
    sip_config: str = "",
    log_level: str = "info",
    host: str | None = None,
) -> ServedGateway:
    """Write a config into ``directory`` and start the gateway with it; wait
    until /healthz answers.  The caller must ``stop()`` it."""
    host = host or random_loopback()
    sip_port = free_port(host)
    http_port = free_port(host)
    config = directory / "gateway.toml"
    config.write_text(
        f'[sip]\nlisten = ["{host}:{sip_port}"]\n{sip_config}\n'
        f'[http]\nlisten = "{host}:{http_port}"\n'
        f'[log]\nlevel = "{log_level}"\n'
    )
    log_path = directory / "gateway.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            gateway_command("serve", "--config", str(config)),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=directory,
            env=gateway_env(),
        )
    served = ServedGateway(process, (host, sip_port), (host, http_port), log_path, config)
    try:
        wait_until_healthy(process, served.http_url, on_failure=served.log)
    except BaseException:
        served.stop()
        raise
    return served


def wait_until_healthy(
    process: subprocess.Popen[bytes],
    http_url: str,
    *,
    timeout: float = START_TIMEOUT,
    on_failure: Callable[[], str] = lambda: "",
) -> None:
    """Poll ``GET /healthz`` until it answers; fail early if the process exits."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited with {process.returncode}:\n{on_failure()}")
        try:
            with urllib.request.urlopen(http_url + "/healthz", timeout=0.5) as reply:
                if reply.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"gateway not ready after {timeout} s:\n{on_failure()}")
        time.sleep(0.05)


@pytest.fixture
def serve_gateway(tmp_path: Path) -> Iterator[Callable[..., ServedGateway]]:
    """Factory: ``serve_gateway(sip_config=..., log_level=...)``; every
    gateway started is stopped (SIGTERM, then SIGKILL) at teardown."""
    started: list[ServedGateway] = []

    def start(**kwargs: Any) -> ServedGateway:
        directory = tmp_path / f"gw{len(started)}"
        directory.mkdir()
        served = start_gateway(directory, **kwargs)
        started.append(served)
        return served

    yield start
    for served in started:
        with contextlib.suppress(Exception):
            served.stop()


@pytest.fixture(scope="module")
def module_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedGateway]:
    """One gateway shared by a module's tests (debug logging, to explain failures)."""
    served = start_gateway(tmp_path_factory.mktemp("gateway"), log_level="debug")
    try:
        yield served
    finally:
        served.stop()
