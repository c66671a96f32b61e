"""``sipgw serve`` as a real process: SIP over UDP and TCP, /healthz, signals, errors."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway import __version__
from sip.message import Response
from tests.support.harness import (
    REPLY_TIMEOUT,
    ServedGateway,
    free_port,
    gateway_command,
    gateway_env,
    options_over_udp,
    parse_response,
    random_loopback,
    sip_request,
    tcp_read_messages,
    udp_exchange,
    wait_until_healthy,
)

RUN_TIMEOUT = 30.0  # for commands expected to exit on their own


def exchange(gateway: ServedGateway, build: Callable[[str], bytes]) -> Response | None:
    """Send ``build(via)`` over UDP from a fresh socket that asks for rport;
    return the final answer (an INVITE gets 100 Trying first)."""
    host = gateway.sip[0]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        via = f"SIP/2.0/UDP {host}:{sock.getsockname()[1]};rport"
        sock.settimeout(REPLY_TIMEOUT)
        sock.sendto(build(via), gateway.sip)
        deadline = time.monotonic() + REPLY_TIMEOUT
        while time.monotonic() < deadline:
            try:
                reply, _ = sock.recvfrom(65535)
            except TimeoutError:
                return None
            response = parse_response(reply)
            if response is None or response.status >= 200:
                return response
        return None


def test_options_over_udp(module_gateway: ServedGateway) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((module_gateway.sip[0], 0))
        port = sock.getsockname()[1]
        via = f"SIP/2.0/UDP {module_gateway.sip[0]}:{port};rport"
        request = sip_request(via=via, call_id="udp-options")
        response = udp_exchange(request, module_gateway.sip, sock=sock)
    assert response is not None
    assert (response.status, response.reason) == (200, "OK")
    assert response.call_id == "udp-options"
    assert response.cseq.method == "OPTIONS"
    assert response.to.tag
    assert "OPTIONS" in response.headers.values("allow")
    assert response.headers.get("accept") == "application/sdp"
    assert "supported" in response.headers
    assert response.top_via.rport == port


def test_options_over_tcp(module_gateway: ServedGateway) -> None:
    with socket.create_connection(module_gateway.sip, timeout=5) as sock:
        host, port = sock.getsockname()[:2]
        via = f"SIP/2.0/TCP {host}:{port}"
        sock.sendall(sip_request(via=via, call_id="tcp-1") + sip_request(via=via, call_id="tcp-2"))
        responses = tcp_read_messages(sock, 2)
    assert [(m.call_id, m.status) for m in responses if isinstance(m, Response)] == [
        ("tcp-1", 200),
        ("tcp-2", 200),
    ]


def test_tcp_keepalive_gets_a_pong(module_gateway: ServedGateway) -> None:
    with socket.create_connection(module_gateway.sip, timeout=5) as sock:
        sock.sendall(b"\r\n\r\n")
        assert sock.recv(16) == b"\r\n"


def req(method: str = "OPTIONS", **kwargs: Any) -> Callable[[str], bytes]:
    return lambda via: sip_request(method, via=via, **kwargs)


def mangled(old: bytes, new: bytes, method: str = "OPTIONS") -> Callable[[str], bytes]:
    return lambda via: sip_request(method, via=via).replace(old, new, 1)


CASES = [
    # Nobody known: challenged (RFC 3261 §22.3, §10.3).
    pytest.param(req("INVITE"), 407, None, id="invite"),
    pytest.param(req("REGISTER"), 401, None, id="register"),
    # Dialog methods outside a dialog, and a CANCEL matching nothing.
    pytest.param(req("BYE"), 481, None, id="bye"),
    pytest.param(req("CANCEL"), 481, None, id="cancel"),
    pytest.param(req("FROBNICATE"), 501, None, id="unknown-method"),
    pytest.param(req("INVITE", max_forwards=0), 483, None, id="invite-max-forwards-0"),
    pytest.param(req(max_forwards=0), 200, None, id="options-max-forwards-0"),
    pytest.param(req(uri="nobodyKnowsThisScheme:x"), 416, None, id="unknown-scheme"),
    pytest.param(req(uri="tel:+14155550123"), 200, None, id="tel-uri"),
    pytest.param(req(headers=("Require: fooext",)), 420, "fooext", id="require"),
    pytest.param(req("INVITE", headers=("Proxy-Require: a, b",)), 420, "a, b", id="proxy-require"),
    pytest.param(req(cseq_method="INVITE"), 400, None, id="cseq-mismatch"),
    pytest.param(mangled(b"From:", b"X-From:"), 400, None, id="missing-from"),
    pytest.param(mangled(b" sip:", b"  sip:"), 400, None, id="bad-request-line"),
    pytest.param(req(version="SIP/3.0"), 505, None, id="version"),
    pytest.param(mangled(b"Length: 0", b"Length: 99"), 400, None, id="short-body"),
]


@pytest.mark.parametrize(("build", "status", "unsupported"), CASES)
def test_answers(
    module_gateway: ServedGateway,
    build: Callable[[str], bytes],
    status: int,
    unsupported: str | None,
) -> None:
    response = exchange(module_gateway, build)
    assert response is not None, "no answer"
    assert response.status == status, f"{response.status} {response.reason}"
    assert response.to.tag, "responses carry a To tag (RFC 3261 §8.2.6.2)"
    if unsupported is not None:
        assert response.headers.get("unsupported") == unsupported


def test_ack_and_responses_are_not_answered(module_gateway: ServedGateway) -> None:
    host = module_gateway.sip[0]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        via = f"SIP/2.0/UDP {host}:{sock.getsockname()[1]};rport"
        sock.sendto(sip_request("ACK", via=via), module_gateway.sip)
        stray = (
            f"SIP/2.0 200 OK\r\nVia: {via}=5060;branch=z9hG4bKstray\r\n".encode()
            + b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: s\r\n"
            + b"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
        sock.sendto(stray, module_gateway.sip)
        # The gateway handles datagrams in order: had it answered the ACK or
        # the response, that answer would arrive before this one.
        response = udp_exchange(
            sip_request(via=via, call_id="probe"), module_gateway.sip, sock=sock
        )
    assert response is not None
    assert (response.call_id, response.status) == ("probe", 200)


def test_garbage_does_not_hurt(module_gateway: ServedGateway) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for junk in (b"\x00" * 100, bytes(range(256)) * 200, b"GET / HTTP/1.1\r\n\r\n"):
            sock.sendto(junk, module_gateway.sip)
    with socket.create_connection(module_gateway.sip, timeout=5) as sock:
        sock.sendall(bytes(range(256)) * 300)
        sock.settimeout(5)
        while sock.recv(65536):  # the gateway closes the connection
            pass
    response = options_over_udp(module_gateway.sip)
    assert response is not None and response.status == 200
    module_gateway.assert_alive()


def test_healthz(module_gateway: ServedGateway) -> None:
    with urllib.request.urlopen(module_gateway.http_url + "/healthz", timeout=5) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("application/json")
        body = json.load(reply)
    host, port = module_gateway.sip
    # Earlier tests on this gateway may have transactions still ending (Timer J).
    assert isinstance(body.pop("transactions"), int)
    # What its database holds (GatewayHome.wait_applied relies on it).
    assert isinstance(body.pop("directory_version"), int)
    # Its id among the running gateways (gateway.manage.nodes): host, pid, random.
    assert body.pop("node").split(":")[1] == str(module_gateway.process.pid)
    assert body == {
        "status": "ok",
        "version": __version__,
        "sip_listen": [f"{host}:{port}"],
        "channels": {},
        "calls": 0,
        "tracked": 0,
        "registrations": 0,
        "call_records_pending": 0,
        "unsettled": {},
    }


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_cleanly(serve_gateway: Callable[..., ServedGateway], signum: int) -> None:
    gateway = serve_gateway()
    assert options_over_udp(gateway.sip) is not None  # it served something first
    started = time.monotonic()
    gateway.process.send_signal(signum)
    assert gateway.process.wait(10) == 0, gateway.log()
    assert time.monotonic() - started < 5.0
    assert "Traceback" not in gateway.log()
    # The ports are free again.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(gateway.sip)


def test_command_line_overrides_the_config(
    serve_gateway: Callable[..., ServedGateway], tmp_path: Path
) -> None:
    host = random_loopback()
    sip_port, http_port = free_port(host), free_port(host)
    config = tmp_path / "other.toml"
    config.write_text('[sip]\nlisten = ["127.0.0.1:1"]\n[http]\nlisten = "127.0.0.1:1"\n')
    process = subprocess.Popen(
        gateway_command(
            "serve",
            "--config",
            str(config),
            "--sip-listen",
            f"{host}:{sip_port}",
            "--http-listen",
            f"{host}:{http_port}",
            "--log-level",
            "warning",
        ),
        cwd=tmp_path,
        env=gateway_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until_healthy(process, f"http://{host}:{http_port}")
        response = options_over_udp((host, sip_port))
        assert response is not None and response.status == 200
        with urllib.request.urlopen(f"http://{host}:{http_port}/healthz", timeout=5) as reply:
            assert json.load(reply)["sip_listen"] == [f"{host}:{sip_port}"]
    finally:
        process.terminate()
        _, err = process.communicate(timeout=10)
    assert process.returncode == 0
    assert b"INFO" not in err  # --log-level warning took effect


def test_default_config_is_read_from_the_working_directory(tmp_path: Path) -> None:
    host = random_loopback()
    port = free_port(host)
    http_port = free_port(host)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "gateway.toml").write_text(
        f'[sip]\nlisten = ["{host}:{port}"]\n[http]\nlisten = "{host}:{http_port}"\n'
    )
    process = subprocess.Popen(
        gateway_command("serve"),
        cwd=tmp_path,
        env=gateway_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_healthy(process, f"http://{host}:{http_port}")
        response = options_over_udp((host, port))
        assert response is not None and response.status == 200
    finally:
        process.terminate()
        process.wait(10)


def run_gateway(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        gateway_command(*args),
        cwd=cwd,
        env=gateway_env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("sipgw: ")
    for needle in needles:
        assert needle in lines[0]


def test_bad_config_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[sip]\nt1 = -5\n")
    result = run_gateway("serve", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result, str(config), "sip.t1", "positive")


def test_missing_config_is_one_line(tmp_path: Path) -> None:
    result = run_gateway("serve", "--config", str(tmp_path / "none.toml"), cwd=tmp_path)
    assert_one_line_error(result, "cannot read")


def test_bad_listen_flag_is_rejected(tmp_path: Path) -> None:
    result = run_gateway("serve", "--sip-listen", "::1:5060", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "brackets" in result.stderr


def test_sip_port_in_use_is_one_line(tmp_path: Path) -> None:
    host = random_loopback()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind((host, 0))
        port = taken.getsockname()[1]
        result = run_gateway(
            "serve",
            "--sip-listen",
            f"{host}:{port}",
            "--http-listen",
            f"{host}:{free_port(host)}",
            cwd=tmp_path,
        )
    assert result.returncode == 1
    assert_one_line_error(result, f"{host}:{port}", "in use")


def test_http_port_in_use_is_one_line(tmp_path: Path) -> None:
    host = random_loopback()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind((host, 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_gateway(
            "serve",
            "--sip-listen",
            f"{host}:0",
            "--http-listen",
            f"{host}:{port}",
            "--log-level",
            "error",
            cwd=tmp_path,
        )
    assert result.returncode == 1
    assert_one_line_error(result, "HTTP", f"{host}:{port}", "in use")


def test_version(tmp_path: Path) -> None:
    result = run_gateway("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == f"sipgw {__version__}"
