"""``scripts/demo`` as a user runs it (issue 10): from the repository root,
one command, exit status 0.

Its output must show what the demo promises: two call records (one
outbound, one inbound, both answered: 200), a credit lower than the credit
given, and the admissions metric moved.  And it must leave nothing behind:
no process with its temporary directory on the command line, the directory
itself removed, its ports free again.  ``TMPDIR`` points the demo's
temporary directory into this test's, so both are easy to find.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest

from loadtests.demo import moved_metrics
from tests.support.harness import REPO_ROOT
from tests.support.sipp import sipp_binary

#: The demo plays in about 15 s; a loaded machine gets ample room, and a
#: demo that hangs is stopped (SIGTERM: it stops what it started) and fails.
DEMO_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0

RECORD = re.compile(
    r"^\s+(?P<started>\d{4}-\d\d-\d\dT\S+)\s+(?P<direction>outbound|inbound)\s+\S+\s+\S+"
    r"\s+(?P<status>\d{3})\s+(?P<seconds>[\d.]+)\s+(?P<cost>[\d.]+)$",
    re.MULTILINE,
)
CREDIT = re.compile(r"credit given: (?P<given>[\d.]+), credit left: (?P<left>[\d.]+)")
ADMITTED = re.compile(
    r'sipgw_admissions_total\{[^}]*result="admitted"[^}]*\}\s+(?P<before>\d+) -> (?P<after>\d+)'
)
#: The addresses the demo printed: ``gateway  SIP IP:PORT ..., HTTP http://IP:PORT``,
#: ``carrier  sip:IP:PORT``, ``PBX      IP:PORT``.
GATEWAY = re.compile(r"gateway\s+SIP (?P<sip>[\d.]+:\d+) .*HTTP http://(?P<http>[\d.]+:\d+)")
CARRIER = re.compile(r"carrier\s+sip:(?P<address>[\d.]+:\d+)")
PBX = re.compile(r"PBX\s+(?P<address>[\d.]+:\d+)")


def processes_mentioning(text: str) -> list[str]:
    """The command lines of running processes that contain ``text``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if text in command:
            found.append(f"{proc.name}: {command.strip()}")
    return found


def bindable(address: str, kind: socket.SocketKind) -> bool:
    """Whether ``IP:PORT`` can be bound now.  TCP with SO_REUSEADDR, as a
    server binds: the demo's closed HTTP connections may sit in TIME_WAIT,
    which holds no port from a listener."""
    host, port = address.rsplit(":", 1)
    with socket.socket(socket.AF_INET, kind) as probe:
        if kind == socket.SOCK_STREAM:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
        except OSError:
            return False
        return True


def kill_leftovers(text: str) -> None:
    for line in processes_mentioning(text):
        try:
            os.kill(int(line.split(":", 1)[0]), signal.SIGKILL)
        except OSError:
            pass


@pytest.mark.sipp
def test_demo_plays_two_calls_and_leaves_nothing_running(tmp_path: Path) -> None:
    sipp_binary()  # skips (fails under CI) without SIPp
    env = dict(os.environ, TMPDIR=str(tmp_path))
    demo = subprocess.Popen(
        [str(REPO_ROOT / "scripts" / "demo")],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        try:
            out, err = demo.communicate(timeout=DEMO_TIMEOUT)
        except subprocess.TimeoutExpired:
            demo.send_signal(signal.SIGTERM)
            out, err = demo.communicate(timeout=STOP_TIMEOUT)
            pytest.fail(f"scripts/demo still running after {DEMO_TIMEOUT:.0f} s\n{out}\n{err}")
        explain = f"--- stdout\n{out}\n--- stderr\n{err}"
        assert demo.returncode == 0, explain
        assert f"sipgw demo, in {tmp_path}/sipgw-demo-" in out, explain  # TMPDIR was honoured

        records = [m.groupdict() for m in RECORD.finditer(out)]
        assert sorted(r["direction"] for r in records) == ["inbound", "outbound"], explain
        assert all(r["status"] == "200" for r in records), explain
        (outbound,) = (r for r in records if r["direction"] == "outbound")
        assert Decimal(outbound["cost"]) > 0, explain

        credit = CREDIT.search(out)
        assert credit is not None, explain
        assert Decimal(credit["left"]) < Decimal(credit["given"]), explain
        assert Decimal(credit["given"]) - Decimal(credit["left"]) == Decimal(outbound["cost"])

        admitted = ADMITTED.search(out)
        assert admitted is not None, explain
        assert int(admitted["after"]) == int(admitted["before"]) + 2, explain

        # Nothing left: no process, no directory, no port held.
        assert processes_mentioning(str(tmp_path)) == []
        assert list(tmp_path.iterdir()) == [], "the demo's temporary directory was not removed"
        gateway, carrier, pbx = GATEWAY.search(out), CARRIER.search(out), PBX.search(out)
        assert gateway is not None and carrier is not None and pbx is not None, explain
        for address, kind in [
            (gateway["sip"], socket.SOCK_DGRAM),
            (gateway["sip"], socket.SOCK_STREAM),
            (gateway["http"], socket.SOCK_STREAM),
            (carrier["address"], socket.SOCK_DGRAM),
            (pbx["address"], socket.SOCK_DGRAM),
        ]:
            assert bindable(address, kind), f"{address} ({kind.name}) still in use"
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        kill_leftovers(str(tmp_path))


def test_moved_metrics_lists_the_samples_that_changed() -> None:
    before = (
        "# HELP sipgw_admissions_total Admission decisions.\n"
        "# TYPE sipgw_admissions_total counter\n"
        'sipgw_admissions_total{profile="sales",result="admitted"} 1.0\n'
        "# HELP sipgw_auth_failures_total Digest failures.\n"
        "# TYPE sipgw_auth_failures_total counter\n"
        "sipgw_auth_failures_total 0.0\n"
        "# HELP python_gc_collections_total GC runs.\n"
        "# TYPE python_gc_collections_total counter\n"
        "python_gc_collections_total 3.0\n"
    )
    after = (
        before.replace("} 1.0", "} 3.0").replace(
            "gc_collections_total 3.0", "gc_collections_total 9.0"
        )
        + "# HELP sipgw_profile_credit Credit.\n"
        "# TYPE sipgw_profile_credit gauge\n"
        'sipgw_profile_credit{profile="sales"} 9.96\n'
    )
    assert moved_metrics(before, after) == [
        "Admission decisions:",
        '  sipgw_admissions_total{profile="sales",result="admitted"}  1 -> 3',
        "Credit:",
        '  sipgw_profile_credit{profile="sales"}                      0 -> 9.96',
    ]
