"""Calls per second through the gateway (issue 3): digest auth + admission +
Record-Route, end to end with SIPp on loopback.

Starts a gateway on a fresh SQLite database, creates a registration profile
with the CLI, runs SIPp as the carrier (``carrier_uas.xml``) and as the PBX
(``pbx_uac_auth.xml``: INVITE, 407, INVITE with credentials, 180/200, ACK,
BYE), at each rate asked for, and prints per rate: calls attempted,
successful, failed, the failure ratio and the achieved rate.  Every run is
bounded in calls and time.

    python loadtests/call_rate.py --rates 50 100 200 --calls 2000
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "loadtests" / "sipp"
GATEWAY_IP, CARRIER_IP, PBX_IP = "127.0.0.110", "127.0.0.130", "127.0.0.120"
NUMBER = "+441134960000"
RUN_TIMEOUT = 600.0  # seconds, the most one rate may take
SOCKET_BUFFER = 4 * 1024 * 1024  # SIPp's UDP buffers, as large as the gateway's
REDIS_URL = os.environ.get("SIPGW_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
LOG_LEVEL = os.environ.get("SIPGW_BENCH_LOG_LEVEL", "warning")


def free_port(host: str) -> int:
    """A port free for both UDP and TCP on ``host``."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError(f"no free port on {host}")


def cli(env: dict[str, str], database: str, *args: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-m", "gateway", *args, "--database", database, "--json"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


def wait_healthy(url: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the gateway did not start")


def summary(output: str, label: str) -> int:
    """A cumulative counter from SIPp's final screen."""
    m = re.search(rf"{label}\s*\|\s*\d+\s*\|\s*(\d+)", output)
    return int(m.group(1)) if m else 0


def run_rate(rate: int, calls: int, workdir: Path, backend: str = "memory") -> dict[str, float]:
    env = dict(os.environ)
    env["SIPGW_SECRET_KEY"] = "cVxkB1M2cVkU3QvbzFhDPm1i8gAJ6fS0uE0GJ5q5yPY="
    database = f"sqlite+aiosqlite:///{workdir}/{backend}-{rate}.sqlite3"
    cli(
        env, database, "account", "create", "--name", "bench", "--email", "bench@example.test",
        "--balance", "1000000",
    )  # fmt: skip
    profile = cli(
        env,
        database,
        "profile",
        "create",
        "--account",
        "bench",
        "--name",
        "pbx",
        "--auth",
        "registration",
    )
    # Outbound calls are charged: a price for every destination and credit.
    cli(env, database, "rate", "set", "", "0.0100")
    cli(env, database, "profile", "credit", "pbx", "--account", "bench", "--add", "1000000")
    config = workdir / f"gateway-{backend}-{rate}.toml"
    prefix = f"sipgw-bench-{os.getpid()}-{rate}:"
    config.write_text(
        f'[admission]\nbackend = "{backend}"\nredis_url = "{REDIS_URL}"\nkey_prefix = "{prefix}"\n'
    )
    sip_port, http_port = free_port(GATEWAY_IP), free_port(GATEWAY_IP)
    log = (workdir / f"gateway-{rate}.log").open("wb")
    carrier_port, pbx_port = free_port(CARRIER_IP), free_port(PBX_IP)
    gateway = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--database",
            database,
            "--sip-listen",
            f"{GATEWAY_IP}:{sip_port}",
            "--http-listen",
            f"{GATEWAY_IP}:{http_port}",
            "--carrier",
            f"sip:{CARRIER_IP}:{carrier_port}",
            "--log-level",
            LOG_LEVEL,
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    carrier = None
    try:
        wait_healthy(f"http://{GATEWAY_IP}:{http_port}/healthz", time.monotonic() + 30)
        carrier = subprocess.Popen(
            [
                "sipp",
                "-sf",
                str(SCENARIOS / "carrier_uas.xml"),
                "-i",
                CARRIER_IP,
                "-p",
                str(carrier_port),
                "-t",
                "u1",
                "-m",
                str(calls),
                "-nostdin",
                "-timeout",
                f"{int(RUN_TIMEOUT)}s",
                "-trace_err",
                "-error_file",
                str(workdir / f"carrier-errors-{rate}.log"),
                "-buff_size",
                str(SOCKET_BUFFER),
            ],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)
        started = time.monotonic()
        pbx = subprocess.run(
            [
                "sipp",
                f"{GATEWAY_IP}:{sip_port}",
                "-sf",
                str(SCENARIOS / "pbx_uac_auth.xml"),
                "-i",
                PBX_IP,
                "-p",
                str(pbx_port),
                "-t",
                "u1",
                "-s",
                NUMBER,
                "-au",
                str(profile["sip_username"]),
                "-ap",
                str(profile["password"]),
                "-auth_uri",
                f"{NUMBER}@{GATEWAY_IP}:{sip_port}",
                "-m",
                str(calls),
                "-r",
                str(rate),
                "-d",
                "0",
                "-nostdin",
                "-timeout",
                f"{int(RUN_TIMEOUT)}s",
                "-recv_timeout",
                "10000",
                "-trace_err",
                "-error_file",
                str(workdir / f"pbx-errors-{rate}.log"),
                "-buff_size",
                str(SOCKET_BUFFER),
            ],
            cwd=workdir,
            check=False,  # SIPp's exit status is judged from its statistics
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT + 30,
        )
        elapsed = time.monotonic() - started
    finally:
        if carrier is not None:
            if carrier.poll() is None:
                carrier.kill()
            carrier.wait()
        gateway.send_signal(signal.SIGTERM)
        try:
            gateway.wait(10)
        except subprocess.TimeoutExpired:
            gateway.kill()
    successful = summary(pbx.stdout, "Successful call")
    failed = summary(pbx.stdout, "Failed call")
    return {
        "rate": rate,
        "calls": calls,
        "successful": successful,
        "failed": failed,
        "failure_ratio": failed / max(1, successful + failed),
        "achieved_cps": successful / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", type=int, nargs="+", default=[50, 100, 200])
    parser.add_argument("--calls", type=int, default=2000, help="calls per rate")
    parser.add_argument("--keep", help="directory for the databases and SIPp error logs")
    parser.add_argument(
        "--backend", choices=["memory", "redis"], nargs="+", default=["memory"],
        help=f"admission backends to measure (redis: {REDIS_URL})",
    )  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sipgw-rate-") as tmp:
        workdir = Path(args.keep) if args.keep else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for backend, rate in ((b, r) for b in args.backend for r in args.rates):
            r = run_rate(rate, args.calls, workdir, backend)
            verdict = "ok" if r["failure_ratio"] < 0.001 else "too many failures"
            print(
                f"{backend:6} offered {r['rate']:5.0f} cps: "
                f"{r['successful']:.0f}/{r['calls']:.0f} successful, "
                f"{r['failed']:.0f} failed ({100 * r['failure_ratio']:.2f}%), "
                f"achieved {r['achieved_cps']:.1f} cps — {verdict}",
                flush=True,
            )


if __name__ == "__main__":
    main()
