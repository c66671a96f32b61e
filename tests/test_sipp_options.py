"""SIPp as a real peer: OPTIONS over UDP to the served gateway, all answered 200.

SIPp (Debian package sip-tester) plays a PBX probing its trunk.  The
scenario also checks what RFC 3261 §11.2 and §8.2.6.2 require of the answer
(Allow lists OPTIONS, the To header carries a tag); a failed check fails the
call, and SIPp's exit status and statistics say so.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ServedGateway, free_port

pytestmark = pytest.mark.sipp

CALLS = 20
RATE = 50  # calls per second
SIPP_TIMEOUT = 30  # seconds, SIPp's own global timeout (-timeout)

# The scenario the README shows to users: one file, used as shipped.
SCENARIO = Path(__file__).resolve().parents[1] / "loadtests" / "sipp" / "options.xml"


@pytest.fixture
def sipp() -> str:
    path = shutil.which("sipp")
    if path is None:
        message = "sipp not installed (Debian package sip-tester)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def run_sipp(
    sipp: str, gateway: ServedGateway, directory: Path
) -> subprocess.CompletedProcess[str]:
    scenario = SCENARIO
    host, port = gateway.sip
    command = [
        sipp,
        f"{host}:{port}",
        "-sf",
        str(scenario),
        "-t",
        "u1",
        "-i",
        host,
        "-p",
        str(free_port(host)),
        "-m",
        str(CALLS),
        "-r",
        str(RATE),
        "-timeout",
        f"{SIPP_TIMEOUT}s",
        "-timeout_error",
        "-nostdin",
        "-trace_stat",
        "-stf",
        str(directory / "stats.csv"),
        "-trace_err",
    ]
    process = subprocess.Popen(
        command,
        cwd=directory,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = process.communicate(timeout=SIPP_TIMEOUT + 15)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def final_statistics(path: Path) -> dict[str, str]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter=";"))
    assert rows, "SIPp wrote no statistics"
    return rows[-1]


def test_sipp_options_all_answered_200(
    sipp: str, serve_gateway: Callable[..., ServedGateway], tmp_path: Path
) -> None:
    gateway = serve_gateway()
    result = run_sipp(sipp, gateway, tmp_path)
    errors = "".join(p.read_text(errors="replace") for p in tmp_path.glob("*_errors.log"))
    assert result.returncode == 0, f"SIPp exit {result.returncode}\n{result.stderr}\n{errors}"
    stats = final_statistics(tmp_path / "stats.csv")
    assert int(stats["SuccessfulCall(C)"]) == CALLS
    assert int(stats["FailedCall(C)"]) == 0
    assert int(stats["OutgoingCall(C)"]) == CALLS
    assert int(stats["Retransmissions(C)"]) == 0  # every OPTIONS answered at once
    gateway.assert_alive()
