"""Shared test fixtures: free ports, random loopback addresses, SIP message
builders, the real ``sipgw serve`` running as a subprocess, its management
commands against a temporary database, and SIPp (``tests/support/sipp.py``).

Several suites may run at once on one machine, so nothing binds a fixed
address: servers get a random address in 127.0.0.0/8 and a port the kernel
found free there.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import errno
import io
import json
import logging
import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sip.message import Message, Response
from sip.parser import StreamParser, parse_datagram

if TYPE_CHECKING:
    from gateway.store.database import Store
    from tests.support.sipp import SippLauncher

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Generous for a loaded CI machine; the gateway is usually up in ~0.3 s.
START_TIMEOUT = 15.0
REPLY_TIMEOUT = 2.0
#: How long :meth:`ServedGateway.assert_idle` waits for the last channel to
#: be given back (the admission release runs as a task once a call is over).
IDLE_TIMEOUT = 5.0
IDLE_POLL = 0.05
#: The environment variable holding the Fernet key that encrypts the stored
#: SIP passwords (``gateway.config.settings.SECRET_KEY_ENV``).
SECRET_KEY_ENV = "SIPGW_SECRET_KEY"


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


@dataclass(frozen=True)
class LoopbackBlock:
    """Addresses for the actors of one end-to-end test, as in the field:
    each its own IP, so that trust by source address is really tested.  A
    random 127.A.B.0/24 keeps parallel suites apart; inside it the gateway
    is .10, the PBXs .20 to .29 and the carrier .30."""

    prefix: str  # "127.A.B."

    def host(self, number: int) -> str:
        return f"{self.prefix}{number}"

    @property
    def gateway(self) -> str:
        return self.host(10)

    def pbx(self, index: int = 0) -> str:
        if not 0 <= index <= 9:
            raise ValueError(f"PBX index {index} outside .20-.29")
        return self.host(20 + index)

    @property
    def carrier(self) -> str:
        return self.host(30)


def random_loopback_block() -> LoopbackBlock:
    rng = random.SystemRandom()
    # 127.0.x.y left out: 127.0.0.1 and its neighbours hold the usual services.
    return LoopbackBlock(f"127.{rng.randint(1, 255)}.{rng.randint(0, 255)}.")


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

    def metrics(self, timeout: float = 2.0) -> str:
        """``GET /metrics``: the Prometheus text."""
        with urllib.request.urlopen(self.http_url + "/metrics", timeout=timeout) as reply:
            assert reply.status == 200
            text: str = reply.read().decode()
            return text

    def leftovers(self) -> list[str]:
        """What is still in use, read from the gateway: non-zero channel
        counts in ``/healthz`` (``{account: {profile: n}}``), its live
        ``calls``, and ``sipgw_channels_in_use`` samples in ``/metrics``
        (summed, whatever their labels).  Empty when the gateway is idle."""
        left: list[str] = []
        health = self.healthz()
        busy = {
            f"{account}/{profile}": count
            for account, profiles in health["channels"].items()
            for profile, count in profiles.items()
            if count
        }
        if busy:
            left.append(f"/healthz channels {busy}")
        if health["calls"]:
            left.append(f"/healthz calls {health['calls']}")
        samples = [
            sample
            for family in text_string_to_metric_families(self.metrics())
            if family.name == "sipgw_channels_in_use"
            for sample in family.samples
        ]
        in_use = sum(sample.value for sample in samples)
        if in_use:
            labelled = {",".join(s.labels.values()): s.value for s in samples if s.value}
            left.append(f"/metrics sipgw_channels_in_use {in_use:g} {labelled}")
        return left

    def assert_idle(self, timeout: float = IDLE_TIMEOUT) -> None:
        """Wait (at most ``timeout`` seconds) until no channel is in use,
        in the admission controller (``/healthz``) and in the metrics, and
        no call is live; else fail saying what is left."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                left = self.leftovers()
            except (OSError, urllib.error.URLError, ValueError, KeyError) as exc:
                left = [f"no answer from {self.http_url}: {exc!r}"]
            if not left:
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"gateway at {self.http_url} not idle after {timeout} s: " + "; ".join(left)
                )
            time.sleep(IDLE_POLL)

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
    extra_config: str = "",
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> ServedGateway:
    """Write a config into ``directory`` and start the gateway with it; wait
    until /healthz answers.  The caller must ``stop()`` it.

    ``sip_config`` goes into the ``[sip]`` table, ``extra_config`` (whole
    tables) after the others; ``args`` are more ``serve`` options and
    ``env`` replaces the environment (:func:`gateway_env` by default).
    """
    host = host or random_loopback()
    sip_port = free_port(host)
    http_port = free_port(host)
    config = directory / "gateway.toml"
    config.write_text(
        f'[sip]\nlisten = ["{host}:{sip_port}"]\n{sip_config}\n'
        f'[http]\nlisten = "{host}:{http_port}"\n'
        f'[log]\nlevel = "{log_level}"\n'
        f"{extra_config}"
    )
    log_path = directory / "gateway.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            gateway_command("serve", "--config", str(config), *args),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=directory,
            env=dict(env) if env is not None else gateway_env(),
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


# ---------------------------------------------------------------------------
# A gateway with its database: management commands and ``serve``


def fernet_key() -> str:
    """A fresh Fernet key: 32 random bytes, URL-safe base64, the format of
    ``cryptography.fernet.Fernet.generate_key()``."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(text)


def _in_event_loop() -> bool:
    """Whether a coroutine is calling (asyncio.run would refuse)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _in_a_thread(work: Callable[[], T]) -> T:
    """``work()`` in a thread of its own, the caller blocked until it
    returns, as a subprocess would block it."""
    with concurrent.futures.ThreadPoolExecutor(1) as thread:
        return thread.submit(work).result()


def run_in_process(
    args: list[str], *, cwd: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """``sipgw ARGS`` as :func:`gateway.cli.commands.main`, in this process: in
    ``cwd``, with ``env`` as the whole environment, standard output and
    error captured as a subprocess's would be (text mode: CRLF read as LF;
    a warning logged with no handler configured written to stderr, as
    Python's last-resort handler does), ``SystemExit`` (argparse) as the
    exit status.  Called from a coroutine (a running event loop), the
    command runs in a thread of its own, as its own process would: it starts
    an event loop of its own, and blocks the caller as ``subprocess.run``
    does."""
    if _in_event_loop():
        return _in_a_thread(lambda: run_in_process(args, cwd=cwd, env=env))
    from gateway.cli.commands import main as cli_main

    out, err = io.StringIO(), io.StringIO()
    last_resort = logging.StreamHandler(err)
    last_resort.setLevel(logging.WARNING)
    root = logging.getLogger()
    saved_environment, saved_directory = dict(os.environ), Path.cwd()
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    root.addHandler(last_resort)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = cli_main(args)
            except SystemExit as stop:
                status = stop.code if isinstance(stop.code, int) else 1
    finally:
        root.removeHandler(last_resort)
        os.chdir(saved_directory)
        os.environ.clear()
        os.environ.update(saved_environment)

    def text(stream: io.StringIO) -> str:
        return stream.getvalue().replace("\r\n", "\n").replace("\r", "\n")

    return subprocess.CompletedProcess(["sipgw", *args], status, text(out), text(err))


@dataclass
class GatewayHome:
    """What one gateway runs on, in a temporary directory: a SQLite database
    and a secret key.  The management commands (``python -m gateway account
    create ...``) and ``serve`` share them, as an operator's would: the
    database through ``--database``, the key through the environment."""

    directory: Path
    secret_key: str = field(default_factory=fernet_key)
    started: list[ServedGateway] = field(default_factory=list)

    @property
    def database_url(self) -> str:
        # An absolute path after the three slashes: four in all.
        return f"sqlite+aiosqlite:///{self.directory / 'gw.sqlite3'}"

    def env(self) -> dict[str, str]:
        env = gateway_env()
        env[SECRET_KEY_ENV] = self.secret_key
        return env

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``sipgw ARGS --database URL`` (the entry point, in-process: see
        :func:`run_in_process`), run in the home directory (where no config
        file is found).  With ``check``, a non-zero exit fails with the
        command's one-line message.  After a command that succeeded, waits
        until every running gateway started here has applied the change
        (:meth:`wait_applied`)."""
        result = run_in_process(
            [*args, "--database", self.database_url], cwd=self.directory, env=self.env()
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"sipgw {shlex.join(args)} exited with {result.returncode}:"
                f" {result.stderr.strip() or result.stdout.strip()}"
            )
        if result.returncode == 0:
            self.wait_applied()  # read-your-writes, as the REST API gives
        return result

    def cli_json(self, *args: str) -> Any:
        """``cli(*args, "--json")``, its standard output parsed."""
        result = self.cli(*args, "--json")
        try:
            return json.loads(result.stdout)
        except json.JSONDecodeError:
            raise AssertionError(
                f"sipgw {shlex.join(args)} --json printed no JSON: {result.stdout!r}"
            ) from None

    def wait_applied(self, timeout: float = 10.0) -> None:
        """Return once every gateway started here and still running has
        applied the database's directory version (``directory_version`` in
        ``/healthz``): a change just made is in force for the next call."""
        running = [served for served in self.started if served.process.poll() is None]
        if not running:
            return
        version = self.with_store(lambda store: store.version())
        deadline = time.monotonic() + timeout
        for served in running:
            while (applied := served.healthz()["directory_version"]) < version:
                assert time.monotonic() < deadline, (
                    f"{served.http_url} still at directory version {applied} < {version}"
                    f" after {timeout} s\n{served.log()}"
                )
                time.sleep(0.02)

    def with_store(self, work: Callable[[Store], Awaitable[T]]) -> T:
        """``await work(store)`` on this home's database, in this process:
        the service layer the CLI calls, without a subprocess per step (for
        test set-ups; the CLI itself is tested in test_cli_*.py)."""

        from gateway.config.settings import DEFAULT_REALM
        from gateway.store.database import Store

        async def run() -> T:
            store = await Store.open(
                self.database_url, secret_key=self.secret_key.encode(), realm=DEFAULT_REALM
            )
            async with store:
                return await work(store)

        if _in_event_loop():  # called from a coroutine: a loop of its own
            return _in_a_thread(lambda: asyncio.run(run()))
        return asyncio.run(run())

    def open_for_calls(
        self, account: str, profiles: Sequence[str], *, credit: str = "1000", price: str = "0"
    ) -> None:
        """Outbound calls are charged (issue 5): a default rate of ``price``
        per minute for every destination, and ``credit`` moved from the
        account's balance (it must hold enough) to each of ``profiles``."""
        self.cli("rate", "set", "", price)
        for profile in profiles:
            self.cli("profile", "credit", profile, "--account", account, "--add", credit)

    def serve(
        self,
        *,
        host: str | None = None,
        carrier: tuple[str, int] | None = None,
        carrier_sources: Sequence[str] = (),
        sip_config: str = "",
        log_level: str = "info",
    ) -> ServedGateway:
        """Start ``sipgw serve`` on this database and key; with ``carrier``,
        ``--carrier sip:HOST:PORT``; ``carrier_sources`` become ``[carrier]
        sources`` in the config.  Stopped by :meth:`stop`."""
        directory = self.directory / f"serve{len(self.started)}"
        directory.mkdir()
        args = ["--database", self.database_url]
        if carrier is not None:
            carrier_host, carrier_port = carrier
            if ":" in carrier_host:
                carrier_host = f"[{carrier_host}]"
            args += ["--carrier", f"sip:{carrier_host}:{carrier_port}"]
        extra_config = ""
        if carrier_sources:
            sources = ", ".join(toml_string(source) for source in carrier_sources)
            extra_config = f"[carrier]\nsources = [{sources}]\n"
        served = start_gateway(
            directory,
            sip_config=sip_config,
            log_level=log_level,
            host=host,
            extra_config=extra_config,
            args=args,
            env=self.env(),
        )
        self.started.append(served)
        return served

    def stop(self, *, check_idle: bool = True) -> None:
        """Stop every gateway started here.  With ``check_idle``, first
        :meth:`ServedGateway.assert_idle` on each one still running (one
        killed with SIGKILL has nothing to say); all are stopped regardless,
        then the stop fails if any was not idle."""
        failures: list[str] = []
        if check_idle:
            for served in self.started:
                if served.process.poll() is not None:
                    continue
                try:
                    served.assert_idle()
                except AssertionError as exc:
                    failures.append(str(exc))
        for served in self.started:
            with contextlib.suppress(Exception):
                served.stop()
        if failures:
            raise AssertionError("\n".join(failures))


@pytest.fixture
def gateway_home(tmp_path: Path) -> Iterator[GatewayHome]:
    """A :class:`GatewayHome` in ``tmp_path``; every gateway it started is
    stopped (SIGTERM, then SIGKILL) at teardown, and the test fails there if
    a gateway still running had a channel in use or a call up."""
    home = GatewayHome(tmp_path / "home")
    home.directory.mkdir()
    try:
        yield home
    finally:
        home.stop()


# ---------------------------------------------------------------------------
# SIPp


@pytest.fixture
def sipp(tmp_path: Path) -> Iterator[SippLauncher]:
    """Runs SIPp roles for one test (:mod:`tests.support.sipp`), each in its own
    directory under ``tmp_path/sipp``; whatever still runs at teardown is
    killed.  Without ``sipp`` installed the test fails under CI and is
    skipped elsewhere."""
    # Imported here: tests.support.sipp imports this module.
    from tests.support.sipp import SippLauncher, sipp_binary

    launcher = SippLauncher(sipp_binary(), tmp_path / "sipp")
    try:
        yield launcher
    finally:
        launcher.close()
