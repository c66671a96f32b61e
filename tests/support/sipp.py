"""SIPp as a test peer: the PBXs and the carrier of the end-to-end tests.

SIPp (Debian package ``sip-tester``) is the SIP industry's load and
conformance tool; the scenarios it plays live in ``loadtests/sipp/`` (shared
with the README, the demo and the benchmarks) and ``tests/scenarios/`` (the
tests' own).  This
module turns one SIPp role into one object:

* :class:`Sipp` says what to run: the scenario, the local and remote
  addresses, the call count and rate, credentials, keys.  Its
  :meth:`Sipp.command` is the exact command line, for error messages and for
  running by hand.
* :class:`SippLauncher` (the ``sipp`` fixture) runs it, each run in its own
  directory: :meth:`SippLauncher.run` to completion (a PBX placing calls),
  :meth:`SippLauncher.start` in the background (a UAS waiting for calls;
  it returns once SIPp holds its port).  Every process has a deadline and
  the fixture kills whatever is still running at teardown.
* :class:`SippResult` is what SIPp reported: its exit status, the final
  ``-trace_stat`` row (``SuccessfulCall(C)``, ``FailedCall(C)``, the
  scenario's ``counter`` values), the ``-trace_counts`` per-message counts,
  the error log; :meth:`SippResult.explain` puts them in assertion messages.

SIPp binds one UDP port for SIP (``-p``), two for RTP echo on the same
address (``-mp`` and ``-mp`` + 2) and a control port on every address
(8888 upwards); two SIPps on one address clash on the RTP ports unless
each gets its own ``-mp``, so every run does.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.environment import missing
from tests.support.harness import REPO_ROOT, free_port

__all__ = [
    "DEFAULT_TIMEOUT",
    "SCENARIO_DIR",
    "Sipp",
    "SippLauncher",
    "SippProcess",
    "SippResult",
    "TracedMessage",
    "sipp_binary",
]

SCENARIO_DIR = REPO_ROOT / "loadtests" / "sipp"
#: Scenarios only the tests play (stand-ins, bursts, failures); the ones the
#: README, the demo and the benchmarks play too stay in :data:`SCENARIO_DIR`.
TEST_SCENARIO_DIR = REPO_ROOT / "tests" / "scenarios"

#: SIPp's own deadline for a run (``-timeout`` with ``-timeout_error``: it
#: then exits with status 255).  A test's calls take seconds; a peer that
#: never answers must cost a bounded wait, not hang the suite.
DEFAULT_TIMEOUT = 30.0
#: How long past its own deadline we wait before killing SIPp: it stops at
#: the deadline by itself; this covers a machine too loaded to notice.
KILL_GRACE = 10.0
#: How long a background SIPp may take to bind its SIP port (it does so in
#: well under a second).
BIND_TIMEOUT = 10.0
BIND_POLL = 0.02
#: Tries at starting SIPp when the ports it was given are taken before it binds.
BIND_ATTEMPTS = 3
#: How long ``stop()`` gives SIPp after SIGUSR1 (a soft exit: no new calls,
#: the calls in progress finish).
STOP_TIMEOUT = 30.0
#: After SIGTERM, before SIGKILL.
TERM_GRACE = 3.0
#: Attempts at finding two free UDP ports two apart for RTP echo.
MEDIA_PORT_ATTEMPTS = 100

#: SIPp's exit statuses (``sipp -h``).
EXIT_ALL_CALLS_OK = 0
EXIT_SOME_CALLS_FAILED = 1
EXIT_INTERNAL_COMMAND = 97  # e.g. <exec int_cmd="stop_now"/>
EXIT_NO_CALLS = 99
EXIT_FATAL = 255  # -1: fatal error, or -timeout reached with -timeout_error
EXIT_BIND_ERROR = 254  # -2


def sipp_binary() -> str:
    """The ``sipp`` executable.  Missing, it fails the test under CI (the
    suite's set-up installs it, so its absence is a broken set-up) and skips
    it elsewhere."""
    path = shutil.which("sipp")
    if path is None:
        missing("sipp not installed (Debian package sip-tester)")
    return path


def free_media_port(host: str) -> int:
    """An even UDP port P on ``host`` with P + 2 free too (SIPp's RTP echo
    binds both)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(MEDIA_PORT_ATTEMPTS):
        with socket.socket(family, socket.SOCK_DGRAM) as first:
            first.bind((host, 0))
            port = int(first.getsockname()[1])
            if port % 2 or port + 2 > 65535:
                continue
            with socket.socket(family, socket.SOCK_DGRAM) as second:
                try:
                    second.bind((host, port + 2))
                except OSError:
                    continue
            return port
    raise RuntimeError(f"no free RTP port pair on {host}")


def holds_udp_port(pid: int, host: str, port: int) -> bool:
    """Whether process ``pid`` holds a UDP socket bound to ``host:port``
    (Linux: the socket's inode in ``/proc/net/udp*`` among the process's
    open files).  Asking the port alone is not enough: another process may
    hold it, and SIPp is then about to exit."""
    if ":" in host:
        table, packed = "/proc/net/udp6", socket.inet_pton(socket.AF_INET6, host)
        # /proc prints the address as four host-order 32-bit words.
        words = [packed[i : i + 4] for i in range(0, 16, 4)]
        address = "".join(w[::-1].hex().upper() for w in words)
    else:
        table = "/proc/net/udp"
        address = socket.inet_aton(host)[::-1].hex().upper()
    wanted = f"{address}:{port:04X}"
    inodes = set()
    with open(table) as rows:
        next(rows)
        for row in rows:
            fields = row.split()
            if fields[1] == wanted:
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return False
    fds = Path(f"/proc/{pid}/fd")
    with contextlib.suppress(FileNotFoundError):
        for fd in fds.iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) in inodes:
                    return True
    return False


@dataclass(frozen=True, kw_only=True)
class Sipp:
    """One SIPp role: what to play, where, how much.

    ``scenario`` is a file name in ``loadtests/sipp/`` or a path.  ``remote``
    is the peer (the gateway); None for a UAS that only waits for calls.
    ``local_port`` None picks a free port at start.  The other fields map
    one to one to SIPp options (``sipp -h``); None leaves SIPp's default.
    """

    scenario: str
    local_ip: str
    local_port: int | None = None
    remote: tuple[str, int] | None = None
    calls: int | None = None  # -m: stop after this many calls
    rate: float | None = None  # -r: calls per rate period
    rate_period_ms: int | None = None  # -rp
    limit: int | None = None  # -l: most calls at once
    duration_ms: int | None = None  # -d: length of <pause/>
    service: str | None = None  # -s: Request-URI user, [service]
    auth_user: str | None = None  # -au
    auth_password: str | None = None  # -ap
    auth_uri: str | None = None  # -auth_uri: the digest uri, without "sip:"
    keys: Mapping[str, str] = field(default_factory=dict)  # -key NAME VALUE
    out_of_call_scenario: str | None = None  # -oocsf
    timeout: float = DEFAULT_TIMEOUT  # -timeout Ns -timeout_error
    recv_timeout_ms: int | None = None  # -recv_timeout
    trace_messages: bool = False  # -trace_msg: every message, to messages.log
    extra_args: tuple[str, ...] = ()

    @property
    def scenario_path(self) -> Path:
        return scenario_path(self.scenario)

    @property
    def name(self) -> str:
        return self.scenario_path.stem

    def command(self, binary: str, *, local_port: int, media_port: int) -> list[str]:
        """The command line.  Trace files go to the working directory: the
        statistics to ``stats.csv``, errors to ``errors.log``, messages to
        ``messages.log``, and SIPp names the counts file itself
        (``<scenario>_<pid>_counts.csv``)."""
        command = [binary]
        if self.remote is not None:
            host, port = self.remote
            command.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        command += ["-sf", str(self.scenario_path)]
        if self.out_of_call_scenario is not None:
            command += ["-oocsf", str(scenario_path(self.out_of_call_scenario))]
        command += [
            "-t", "u1",
            "-i", self.local_ip,
            "-p", str(local_port),
            "-mp", str(media_port),
        ]  # fmt: skip
        options: list[tuple[str, object | None]] = [
            ("-m", self.calls),
            ("-r", self.rate),
            ("-rp", self.rate_period_ms),
            ("-l", self.limit),
            ("-d", self.duration_ms),
            ("-s", self.service),
            ("-au", self.auth_user),
            ("-ap", self.auth_password),
            ("-auth_uri", self.auth_uri),
            ("-recv_timeout", self.recv_timeout_ms),
        ]
        for flag, value in options:
            if value is not None:
                command += [flag, _number(value)]
        for key, value in self.keys.items():
            command += ["-key", key, value]
        command += [
            "-timeout", f"{_number(self.timeout)}s",
            "-timeout_error",
            "-nostdin",
            "-trace_stat", "-stf", "stats.csv",
            "-trace_counts",
            "-trace_err", "-error_file", "errors.log",
        ]  # fmt: skip
        if self.trace_messages:
            command += ["-trace_msg", "-message_file", "messages.log"]
        command += list(self.extra_args)
        return command


def scenario_path(scenario: str) -> Path:
    path = Path(scenario)
    if not path.is_absolute() and path.parent == Path("."):
        own = TEST_SCENARIO_DIR / path
        path = own if own.is_file() else SCENARIO_DIR / path
    if not path.is_file():
        raise FileNotFoundError(f"no SIPp scenario {path}")
    return path


def _number(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@dataclass(frozen=True)
class SippResult:
    """What one finished SIPp process reported."""

    spec: Sipp
    command: list[str]
    returncode: int
    directory: Path
    #: The last ``-trace_stat`` row: cumulative ``(C)`` columns, counters.
    stats: dict[str, str]
    #: The last ``-trace_counts`` row: ``<index>_<message>_<Sent|Recv|...>``.
    counts: dict[str, int]

    @property
    def ok(self) -> bool:
        """SIPp's own verdict: every call followed the scenario."""
        return self.returncode == EXIT_ALL_CALLS_OK

    def stat(self, name: str) -> int:
        """A cumulative statistic, e.g. ``stat("SuccessfulCall")``."""
        column = f"{name}(C)"
        if column not in self.stats:
            raise KeyError(f"SIPp wrote no {column} statistic\n{self.explain()}")
        return int(self.stats[column])

    def counter(self, name: str) -> int:
        """A scenario counter (``counter="answered"`` on a message)."""
        return self.stat(name)

    @property
    def successful(self) -> int:
        return self.stat("SuccessfulCall")

    @property
    def failed(self) -> int:
        return self.stat("FailedCall")

    def count(self, message: str, what: str = "Recv") -> int:
        """How often the scenario's ``message`` steps (a method or a status,
        e.g. ``"503"``) were ``what`` (``Sent``, ``Recv``, ``Retrans``,
        ``Timeout``, ``Unexp``), summed over every step with that message."""
        total = 0
        for column, value in self.counts.items():
            parts = column.split("_")
            if len(parts) == 3 and parts[1] == message and parts[2] == what:
                total += value
        return total

    def errors(self) -> str:
        return _read(self.directory / "errors.log")

    def messages(self) -> list[TracedMessage]:
        """Every SIP message sent and received, in order (only with
        ``trace_messages``)."""
        return parse_message_log(_read(self.directory / "messages.log"))

    def screen(self) -> str:
        return _read(self.directory / "stdout.txt")

    def explain(self) -> str:
        """Everything needed to see why a run went wrong, for assertions."""
        interesting = {
            k: v
            for k, v in self.stats.items()
            if k.endswith("(C)") and v not in ("0", "") and not k.startswith(("Call", "Elapsed"))
        }
        return "\n".join(
            [
                f"SIPp {self.spec.name} exited with {self.returncode}",
                "command: " + " ".join(self.command),
                f"directory: {self.directory}",
                f"statistics: {interesting}",
                "errors:",
                _tail(self.errors(), 40),
                "screen:",
                _tail(self.screen(), 30),
            ]
        )


@dataclass(frozen=True)
class TracedMessage:
    """One SIP message from SIPp's ``-trace_msg`` log."""

    direction: str  # "sent" or "received"
    text: str

    @property
    def first_line(self) -> str:
        return self.text.split("\n", 1)[0].strip()

    @property
    def method(self) -> str | None:
        """The request method, None for a response."""
        word = self.first_line.split(" ", 1)[0]
        return None if word == "SIP/2.0" else word

    @property
    def status(self) -> int | None:
        """The response status, None for a request."""
        parts = self.first_line.split(" ", 2)
        return int(parts[1]) if parts[0] == "SIP/2.0" else None

    def headers(self, name: str) -> list[str]:
        """The values of every ``name`` header line, in order (the header
        block only; names compare case-insensitively)."""
        wanted = name.lower()
        values = []
        for raw in self.text.split("\n")[1:]:
            line = raw.rstrip("\r")
            if not line:
                break
            field_name, sep, value = line.partition(":")
            if sep and field_name.strip().lower() == wanted:
                values.append(value.strip())
        return values

    def header(self, name: str) -> str | None:
        values = self.headers(name)
        return values[0] if values else None

    @property
    def cseq_method(self) -> str | None:
        cseq = self.header("CSeq")
        return cseq.split()[-1] if cseq else None

    @property
    def branch(self) -> str | None:
        """The top Via's branch parameter."""
        via = self.header("Via")
        found = re.search(r";\s*branch=([^;,\s]+)", via or "")
        return found.group(1) if found else None


#: The line SIPp writes before each traced message.
_TRACE_SEPARATOR = re.compile(r"^-{20,} .*$", re.MULTILINE)
_TRACE_DIRECTION = re.compile(r"message (sent|received)")


def parse_message_log(log: str) -> list[TracedMessage]:
    """SIPp's ``-trace_msg`` log as messages: each entry is a separator
    line, "UDP message sent (N bytes):" or "UDP message received [N]
    bytes :", a blank line, then the message."""
    messages = []
    for block in _TRACE_SEPARATOR.split(log):
        head, _, body = block.lstrip("\n").partition("\n")
        direction = _TRACE_DIRECTION.search(head)
        text = body.strip("\r\n")
        if direction and text:
            messages.append(TracedMessage(direction.group(1), text.replace("\r\n", "\n")))
    return messages


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _tail(text: str, lines: int) -> str:
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def _last_row(path: Path) -> dict[str, str]:
    """The last data row of a SIPp CSV file (``;``-separated; the header is
    the first line and every later line is a cumulative snapshot)."""
    try:
        with path.open(newline="", errors="replace") as f:
            rows = list(csv.reader(f, delimiter=";"))
    except FileNotFoundError:
        return {}
    if len(rows) < 2:
        return {}
    header, last = rows[0], rows[-1]
    return {name: value for name, value in zip(header, last, strict=False) if name}


class SippProcess:
    """A running SIPp; :meth:`wait` or :meth:`stop` gives its result."""

    def __init__(
        self,
        spec: Sipp,
        command: list[str],
        process: subprocess.Popen[bytes],
        directory: Path,
        local: tuple[str, int],
    ) -> None:
        self.spec = spec
        self.command = command
        self.process = process
        self.directory = directory
        self.local = local
        self._result: SippResult | None = None

    @property
    def deadline(self) -> float:
        """Seconds SIPp may run in all: its own timeout plus the grace."""
        return self.spec.timeout + KILL_GRACE

    def running(self) -> bool:
        return self.process.poll() is None

    def wait(self, timeout: float | None = None) -> SippResult:
        """Wait for SIPp to exit (by default: until its own deadline plus
        the grace), killing it if it does not."""
        try:
            self.process.wait(self.deadline if timeout is None else timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"SIPp {self.spec.name} still running after {timeout or self.deadline} s,"
                f" killed\n{self.result().explain()}"
            ) from None
        return self.result()

    def stop(self, timeout: float = STOP_TIMEOUT) -> SippResult:
        """Soft exit (SIGUSR1): no new calls, the calls in progress finish,
        the statistics are written.  For UAS roles started without ``-m``."""
        if self.running():
            self.process.send_signal(signal.SIGUSR1)
        return self.wait(timeout)

    def kill(self) -> None:
        """SIGTERM, then SIGKILL; for teardown and runaways."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(TERM_GRACE)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def result(self) -> SippResult:
        """What SIPp reported; while it still runs, what it wrote so far
        (``returncode`` -1)."""
        if self._result is not None:
            return self._result
        returncode = self.process.poll()
        counts_files = sorted(self.directory.glob(f"*_{self.process.pid}_counts.csv"))
        counts = _last_row(counts_files[0]) if counts_files else {}
        result = SippResult(
            spec=self.spec,
            command=self.command,
            returncode=-1 if returncode is None else returncode,
            directory=self.directory,
            stats=_last_row(self.directory / "stats.csv"),
            counts={k: int(v) for k, v in counts.items() if v.isdigit()},
        )
        if returncode is not None:
            self._result = result  # final: SIPp wrote its last rows on exit
        return result


def _start_again(running: SippProcess, attempt: int) -> bool:
    """Whether SIPp exited because a port it was given was taken after it
    was found free, and may be started again on others: fewer than
    :data:`BIND_ATTEMPTS` tries so far, and no port fixed by its spec."""
    return (
        attempt < BIND_ATTEMPTS
        and not running.spec.local_port
        and not running.running()
        and "Unable to bind" in running.result().errors()
    )


class SippLauncher:
    """Runs :class:`Sipp` roles for one test, each in its own directory
    under ``root``, and kills what is left at :meth:`close`."""

    def __init__(self, binary: str, root: Path) -> None:
        self.binary = binary
        self.root = root
        self.processes: list[SippProcess] = []

    def start(self, spec: Sipp, *, wait_bound: bool = True) -> SippProcess:
        """Start SIPp in the background.  With ``wait_bound`` (for roles
        that wait for calls) return only once it holds its SIP port, so that
        the first request sent to it is not lost.

        A port found free can be taken by another process before SIPp binds
        it (suites run side by side): SIPp then exits at once saying so, and
        it is started again on other ports, unless the spec fixed its port.
        """
        for attempt in range(1, BIND_ATTEMPTS + 1):
            running = self._launch(spec)
            if not wait_bound:
                return running
            try:
                self._wait_bound(running)
            except AssertionError:
                if not _start_again(running, attempt):
                    raise
                continue
            return running
        raise AssertionError("unreachable")

    def _launch(self, spec: Sipp) -> SippProcess:
        local_port = spec.local_port or free_port(spec.local_ip)
        media_port = free_media_port(spec.local_ip)
        command = spec.command(self.binary, local_port=local_port, media_port=media_port)
        directory = self.root / f"{len(self.processes):02d}-{spec.name}"
        directory.mkdir(parents=True)
        (directory / "command.txt").write_text(" ".join(command) + "\n")
        with open(directory / "stdout.txt", "wb") as out:
            # SIPp redraws its screen on stdout: a file, never a pipe that
            # nobody reads (a full pipe would block SIPp).
            process = subprocess.Popen(
                command,
                cwd=directory,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        running = SippProcess(spec, command, process, directory, (spec.local_ip, local_port))
        self.processes.append(running)
        return running

    def run(self, spec: Sipp) -> SippResult:
        """Run SIPp to completion (bounded by its deadline), again on other
        ports if the ones it was given were taken before it bound them."""
        for attempt in range(1, BIND_ATTEMPTS + 1):
            running = self._launch(spec)
            result = running.wait()
            if not _start_again(running, attempt):
                return result
        raise AssertionError("unreachable")

    def close(self) -> None:
        for running in self.processes:
            with contextlib.suppress(Exception):
                running.kill()

    @staticmethod
    def _wait_bound(running: SippProcess) -> None:
        host, port = running.local
        deadline = time.monotonic() + BIND_TIMEOUT
        while not holds_udp_port(running.process.pid, host, port):
            if not running.running():
                raise AssertionError(
                    f"SIPp {running.spec.name} exited at start\n{running.result().explain()}"
                )
            if time.monotonic() > deadline:
                running.kill()
                raise AssertionError(
                    f"SIPp {running.spec.name} did not bind {host}:{port} in {BIND_TIMEOUT} s"
                    f"\n{running.result().explain()}"
                )
            time.sleep(BIND_POLL)
