"""The one-command demo (``scripts/demo``): a gateway, a PBX and a carrier
on loopback, one outbound and one inbound call, and what they left behind.

It starts ``sipgw serve`` on a fresh SQLite database in a temporary
directory (with its own secret key and record spool: the repository's
``var/`` is never touched), creates an account, an IP-authenticated profile,
a number, a rate and credit with the ``sipgw`` CLI, plays the calls with
SIPp (``loadtests/sipp/``), then prints the call records, the credit and
balance left and the ``sipgw_*`` metrics that moved.  It stops everything it
started, on success, on failure and on Ctrl-C, and removes the directory
(``--keep`` keeps it; a failure keeps it too, for the logs).

Every wait is bounded; a failure is one line on stderr, naming the gateway's
log, and exit status 1.

    scripts/demo [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import io
import json
import os
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from gateway.cli.commands import main as sipgw_main

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "loadtests" / "sipp"

#: One loopback address per actor, as in the README's walkthrough; the
#: walkthrough's ports are taken when free, other free ports otherwise.
GATEWAY_IP, PBX_IP, CARRIER_IP = "127.0.0.10", "127.0.0.20", "127.0.0.30"
PREFERRED_SIP_PORT, PREFERRED_HTTP_PORT = 5060, 8080
PREFERRED_PBX_PORT, PREFERRED_CARRIER_PORT = 5062, 5080

ACCOUNT, EMAIL, PROFILE = "acme", "ops@acme.example", "sales"
BALANCE, CREDIT = "50", "10"
#: Per minute, for every destination: 0.01 a second, so a short call
#: costs something visible at four decimal places.
RATE = "0.6000"
NUMBER = "+441134960000"  # the profile's number: the inbound call rings it
DESTINATION = "+14155550123"  # the outbound call's
OUTBOUND_MS, INBOUND_MS = 3000, 2000  # how long each call lasts once answered

GATEWAY_START_TIMEOUT = 20.0  # until /healthz answers
GATEWAY_STOP_TIMEOUT = 15.0  # SIGTERM until exit (it flushes call records)
START_ATTEMPTS = 3  # a port found free may be taken before the gateway binds it
SIPP_TIMEOUT = 20  # seconds: SIPp's own deadline for one call (-timeout)
SIPP_GRACE = 10.0  # past that deadline, before we kill it
BIND_TIMEOUT = 10.0  # a waiting SIPp binds its port in well under a second
APPLY_TIMEOUT = 10.0  # the gateway applies a CLI change within a poll (1 s)
RECORD_TIMEOUT = 10.0  # call records are written in batches, off the call path
TERM_GRACE = 3.0  # SIGTERM, then SIGKILL
HTTP_TIMEOUT = 2.0
POLL = 0.05

PR_SET_PDEATHSIG = 1  # linux/prctl.h
EXIT_FAILED, EXIT_INTERRUPTED = 1, 130


class DemoError(Exception):
    """What went wrong, in one line for the user."""


def _die_with_parent() -> None:
    """In a child, before exec: if the demo itself is killed (SIGKILL,
    which runs no clean-up), the kernel sends the child SIGTERM."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def port_is_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound for both UDP and TCP now.  The TCP
    probe sets SO_REUSEADDR, as servers do: connections of an earlier run
    in TIME_WAIT do not keep a listener from binding, a listener does."""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as probe:
            if kind == socket.SOCK_STREAM:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError:
                return False
    return True


def free_port(host: str, preferred: int, taken: Sequence[int] = ()) -> int:
    """``preferred`` if it is free on ``host`` (UDP and TCP), else a port
    the kernel picks that is free for both."""
    if preferred not in taken and port_is_free(host, preferred):
        return preferred
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
        if port not in taken and port_is_free(host, port):
            return port
    raise DemoError(f"no free port on {host}")


def free_media_port(host: str) -> int:
    """An even UDP port P with P + 2 free too: SIPp's RTP echo binds both
    (its default, 6000, may be taken)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as first:
            first.bind((host, 0))
            port = int(first.getsockname()[1])
            if port % 2 or port + 2 > 65535:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as second:
                try:
                    second.bind((host, port + 2))
                except OSError:
                    continue
            return port
    raise DemoError(f"no free RTP port pair on {host}")


def holds_udp_port(pid: int, host: str, port: int) -> bool:
    """Whether process ``pid`` holds a UDP socket bound to ``host:port``
    (Linux: the socket's inode in ``/proc/net/udp`` among the process's open
    files), so that a waiting SIPp is known to be listening."""
    wanted = f"{socket.inet_aton(host)[::-1].hex().upper()}:{port:04X}"
    with open("/proc/net/udp") as rows:
        next(rows)
        inodes = {f"socket:[{f[9]}]" for f in (row.split() for row in rows) if f[1] == wanted}
    if not inodes:
        return False
    with contextlib.suppress(FileNotFoundError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) in inodes:
                    return True
    return False


def http_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as response:
        body: bytes = response.read()
        return body


#: A sample: its metric family, its name and its labels.
Sample = tuple[str, str, tuple[tuple[str, str], ...]]


def metric_samples(text: str) -> tuple[dict[Sample, float], dict[str, str]]:
    """The ``sipgw_*`` samples of a scrape (histogram buckets and
    ``_created`` timestamps left out: the count and sum say enough), and
    each metric family's help text."""
    samples: dict[Sample, float] = {}
    helps: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("sipgw_"):
            continue
        helps[family.name] = family.documentation
        for sample in family.samples:
            if sample.name.endswith(("_bucket", "_created")):
                continue
            key = (family.name, sample.name, tuple(sorted(sample.labels.items())))
            samples[key] = sample.value
    return samples, helps


def moved_metrics(before: str, after: str) -> list[str]:
    """The ``sipgw_*`` samples whose value changed between two scrapes, as
    ``name{labels}  before -> after`` under their metric's help text (a
    sample new in ``after`` was 0)."""
    old, _ = metric_samples(before)
    new, helps = metric_samples(after)
    moved: dict[str, list[tuple[str, float, float]]] = {}
    for key in sorted(new):
        family, name, labels = key
        was, now = old.get(key, 0.0), new[key]
        if was != now:
            shown = ",".join(f'{k}="{v}"' for k, v in labels)
            sample = f"{name}{{{shown}}}" if shown else name
            moved.setdefault(family, []).append((sample, was, now))
    width = max((len(sample) for rows in moved.values() for sample, _, _ in rows), default=0)
    lines: list[str] = []
    for family, rows in moved.items():
        lines.append(f"{helps[family].rstrip('.')}:")
        lines.extend(
            f"  {sample:<{width}}  {_number(was)} -> {_number(now)}" for sample, was, now in rows
        )
    return lines


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:.4f}".rstrip("0")


def indent(text: str, by: str = "    ") -> str:
    return "\n".join(by + line if line else line for line in text.rstrip("\n").splitlines())


@dataclass(frozen=True)
class Peer:
    """A SIP peer SIPp plays: who, which scenario, from where."""

    role: str  # "PBX" or "carrier", as the messages name it
    scenario: str  # in loadtests/sipp/
    ip: str
    port: int


@dataclass
class SippRun:
    """One SIPp process of a call, and where its output goes."""

    call: str  # "outbound" or "inbound"
    peer: Peer
    screen: Path
    errors: Path
    process: subprocess.Popen[bytes] | None = None

    def __str__(self) -> str:
        return f"SIPp as the {self.peer.role} of the {self.call} call ({self.peer.scenario})"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def exited(self) -> bool:
        return self.process is None or self.process.poll() is not None

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def why(self) -> str:
        """SIPp's last error, without its timestamps, else the last line
        of its screen."""
        error = _last_line(self.errors)
        if error:
            return error.split(": ", 1)[-1]
        return _last_line(self.screen) or "no output"


@dataclass
class Ports:
    sip: int
    http: int
    pbx: int
    carrier: int

    @classmethod
    def find(cls) -> Ports:
        sip = free_port(GATEWAY_IP, PREFERRED_SIP_PORT)
        http = free_port(GATEWAY_IP, PREFERRED_HTTP_PORT, taken=[sip])
        return cls(
            sip=sip,
            http=http,
            pbx=free_port(PBX_IP, PREFERRED_PBX_PORT),
            carrier=free_port(CARRIER_IP, PREFERRED_CARRIER_PORT),
        )


@dataclass
class Demo:
    """One run: its directory, the processes it started, what it printed."""

    work: Path
    ports: Ports = field(default_factory=Ports.find)
    gateway: subprocess.Popen[bytes] | None = None
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def config(self) -> Path:
        return self.work / "gateway.toml"

    @property
    def database(self) -> Path:
        return self.work / "sipgw.sqlite3"

    @property
    def log(self) -> Path:
        return self.work / "gateway.log"

    @property
    def http_url(self) -> str:
        return f"http://{GATEWAY_IP}:{self.ports.http}"

    @property
    def sip_address(self) -> str:
        return f"{GATEWAY_IP}:{self.ports.sip}"

    # -- the gateway -------------------------------------------------------

    def write_config(self) -> None:
        """Settings for this run only: a fresh database, secret key and
        record spool in the temporary directory, loopback listeners, the
        SIPp carrier.  The management commands read the same file, so they
        open the same database and print the right gateway address."""
        values: dict[str, dict[str, Any]] = {
            "sip": {"listen": [self.sip_address]},
            "http": {"listen": f"{GATEWAY_IP}:{self.ports.http}"},
            "store": {
                "database": f"sqlite+aiosqlite:///{self.database}",
                "secret_key_file": str(self.work / "secret.key"),
                "record_spool": str(self.work / "call-records.spool"),
            },
            "carrier": {"uri": f"sip:{CARRIER_IP}:{self.ports.carrier}"},
        }
        lines = ["# sipgw demo: settings for one run (scripts/demo)"]
        for section, keys in values.items():
            lines.append(f"\n[{section}]")
            # JSON strings and lists of them are TOML too.
            lines.extend(f"{key} = {json.dumps(value)}" for key, value in keys.items())
        self.config.write_text("\n".join(lines) + "\n")

    def serve_command(self) -> list[str]:
        return [_sipgw_executable(), "serve", "--config", str(self.config)]

    def start_gateway(self) -> float:
        """Start ``sipgw serve`` and wait for ``/healthz``; another set of
        ports if one found free was taken before the gateway bound it.
        Returns the seconds it took."""
        started = time.monotonic()
        for attempt in range(1, START_ATTEMPTS + 1):
            self.write_config()
            with self.log.open("ab") as log:
                self.gateway = self.spawn(self.serve_command(), stdout=log)
            deadline = time.monotonic() + GATEWAY_START_TIMEOUT
            while self.gateway.poll() is None:
                if time.monotonic() > deadline:
                    raise DemoError(
                        f"the gateway did not answer {self.http_url}/healthz"
                        f" within {GATEWAY_START_TIMEOUT:.0f} s"
                    )
                with contextlib.suppress(OSError):
                    http_get(f"{self.http_url}/healthz")
                    return time.monotonic() - started
                time.sleep(POLL)
            reason = _last_line(self.log)
            if "in use" not in reason or attempt == START_ATTEMPTS:
                raise DemoError(f"the gateway exited at start: {reason}")
            self.ports = Ports.find()
        raise AssertionError("unreachable")

    def healthz(self) -> dict[str, Any]:
        try:
            document: dict[str, Any] = json.loads(http_get(f"{self.http_url}/healthz"))
        except (OSError, ValueError) as exc:
            raise DemoError(f"{self.http_url}/healthz did not answer: {exc}") from None
        return document

    def metrics(self) -> str:
        try:
            return http_get(f"{self.http_url}/metrics").decode()
        except OSError as exc:
            raise DemoError(f"{self.http_url}/metrics did not answer: {exc}") from None

    def wait_applied(self) -> None:
        """Until the gateway has applied every change in the database (its
        ``directory_version`` in ``/healthz``): a change just made is then
        in force for the next call."""
        with contextlib.closing(sqlite3.connect(self.database)) as db:
            (version,) = db.execute("SELECT version FROM directory_version").fetchone()
        deadline = time.monotonic() + APPLY_TIMEOUT
        while (applied := self.healthz()["directory_version"]) < version:
            if time.monotonic() > deadline:
                raise DemoError(
                    f"the gateway did not apply the changes within {APPLY_TIMEOUT:.0f} s"
                    f" (directory version {applied} < {version})"
                )
            self.check_gateway()
            time.sleep(POLL)

    def check_gateway(self) -> None:
        if self.gateway is not None and self.gateway.poll() is not None:
            raise DemoError(
                f"the gateway exited (status {self.gateway.returncode}): {_last_line(self.log)}"
            )

    # -- the CLI -----------------------------------------------------------

    def sipgw(self, *args: str, show: bool = True) -> str:
        """``sipgw ARGS --config CONFIG``: the ``sipgw`` entry point, run in
        this process (a new process per command would add a second of
        start-up to each).  Prints the command and its output unless
        ``show`` is false; a failure is a :class:`DemoError`."""
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = sipgw_main([*args, "--config", str(self.config)])
            except SystemExit as stop:
                status = stop.code if isinstance(stop.code, int) else 1
        if status == EXIT_INTERRUPTED:
            raise KeyboardInterrupt  # Ctrl-C while the command ran
        if status != 0:
            why = (err.getvalue().strip() or out.getvalue().strip()).splitlines()
            raise DemoError(
                f"sipgw {shlex.join(args)} exited with {status}: {why[-1] if why else ''}"
            )
        if show:
            print(f"  $ sipgw {shlex.join(args)}")
            print(indent(out.getvalue(), "      "))
        return out.getvalue()

    def sipgw_json(self, *args: str) -> Any:
        return json.loads(self.sipgw(*args, "--json", show=False))

    # -- SIPp --------------------------------------------------------------

    def spawn(self, command: list[str], *, stdout: Any) -> subprocess.Popen[bytes]:
        """A child in its own session (Ctrl-C reaches the demo, which stops
        it), killed by the kernel if the demo dies without cleaning up."""
        try:
            child = subprocess.Popen(
                command,
                cwd=self.work,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
            )
        except OSError as exc:
            raise DemoError(f"cannot run {command[0]}: {exc.strerror}") from None
        self.children.append(child)
        return child

    def sipp(self, call: str, peer: Peer, *options: str) -> SippRun:
        """Start SIPp as ``peer`` in ``call``, for one call.  Prints the
        command as one would type it from the repository root; SIPp's screen
        and error log go to files in the demo's directory."""
        remote, rest = list(options[:1]), list(options[1:])
        where = ["-i", peer.ip, "-p", str(peer.port), "-t", "u1"]
        scenario = f"loadtests/sipp/{peer.scenario}"
        shown = ["sipp", *remote, "-sf", scenario, *where, *rest, "-m", "1"]
        print(f"  $ {shlex.join(shown)}")
        stem = self.work / f"{call}-{peer.role.lower()}"
        run = SippRun(call, peer, Path(f"{stem}.screen"), Path(f"{stem}-errors.log"))
        command = [
            shutil.which("sipp") or "sipp", *remote,
            "-sf", str(SCENARIOS / peer.scenario), *where,
            "-mp", str(free_media_port(peer.ip)),
            *rest, "-m", "1",
            "-nostdin",
            "-timeout", f"{SIPP_TIMEOUT}s", "-timeout_error",
            "-trace_err", "-error_file", str(run.errors),
        ]  # fmt: skip
        with run.screen.open("wb") as screen:
            run.process = self.spawn(command, stdout=screen)
        return run

    def wait_bound(self, run: SippRun) -> None:
        """Until a waiting SIPp listens on its port (so that the call to it
        cannot arrive first)."""
        deadline = time.monotonic() + BIND_TIMEOUT
        while not holds_udp_port(run.pid, run.peer.ip, run.peer.port):
            if run.exited():
                raise DemoError(f"{run} exited before listening: {run.why()}")
            if time.monotonic() > deadline:
                raise DemoError(f"{run} did not listen within {BIND_TIMEOUT:.0f} s")
            time.sleep(POLL)

    def wait_done(self, run: SippRun) -> None:
        """Until SIPp ends, by itself within its own deadline (-timeout);
        every call must have succeeded."""
        try:
            status = run.wait(SIPP_TIMEOUT + SIPP_GRACE)
        except subprocess.TimeoutExpired:
            raise DemoError(
                f"{run} did not finish within {SIPP_TIMEOUT + SIPP_GRACE:.0f} s"
            ) from None
        if status != 0:
            raise DemoError(f"{run} failed (exit status {status}; {run.errors}): {run.why()}")

    def call(self, name: str, caller: Peer, callee: Peer, *options: str) -> None:
        """One call: SIPp as ``callee`` waits, SIPp as ``caller`` calls
        through the gateway; both must end with their call successful."""
        answering = self.sipp(name, callee)
        self.wait_bound(answering)
        calling = self.sipp(name, caller, self.sip_address, *options)
        self.wait_done(calling)
        self.wait_done(answering)
        self.check_gateway()

    # -- stopping ----------------------------------------------------------

    def stop(self) -> None:
        """Stop every process started, SIPp first, then the gateway (with
        SIGTERM, so that it ends calls and writes its records); kill what
        does not stop in time."""
        for child in reversed(self.children):
            if child.poll() is not None:
                continue
            grace = GATEWAY_STOP_TIMEOUT if child is self.gateway else TERM_GRACE
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)
            try:
                child.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
                child.wait()


def _sipgw_executable() -> str:
    beside = Path(sys.executable).with_name("sipgw")
    return str(beside) if beside.exists() else "sipgw"


def _last_line(path: Path) -> str:
    """The last non-empty line of a log, for a one-line reason."""
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
    except OSError:
        return ""
    return next((line for line in reversed(lines) if line), "")


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Ctrl-C (SIGINT) and SIGTERM raise :class:`KeyboardInterrupt`, so that
    the clean-up runs; SIGINT too, even when started with it ignored (a
    background job of a non-interactive shell)."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = {
        signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
        signal.SIGTERM: signal.signal(signal.SIGTERM, handler),
    }
    try:
        yield
    finally:
        for number, action in previous.items():
            signal.signal(number, action)


def play(demo: Demo) -> None:
    begun = time.monotonic()
    print(f"sipgw demo, in {demo.work}/ (removed at the end; --keep keeps it)")

    print("\n1. Start the gateway")
    took = demo.start_gateway()
    ports = demo.ports
    print(f"  $ {shlex.join(['sipgw', *demo.serve_command()[1:]])}")
    print(f"      gateway  SIP {demo.sip_address} (UDP and TCP), HTTP {demo.http_url}")
    print(f"      carrier  sip:{CARRIER_IP}:{ports.carrier} (SIPp)")
    print(f"      PBX      {PBX_IP}:{ports.pbx} (SIPp)")
    print(f"      log      {demo.log}")
    print(f"      /healthz answered after {took:.1f} s")

    print(f"\n2. Create the data (each sipgw command also gets --config {demo.config})")
    demo.sipgw("account", "create", "--name", ACCOUNT, "--email", EMAIL, "--balance", BALANCE)
    demo.sipgw(
        "profile", "create", "--account", ACCOUNT, "--name", PROFILE,
        "--auth", "ip", "--ip", PBX_IP, "--port", str(ports.pbx),
    )  # fmt: skip
    demo.sipgw("number", "add", "--account", ACCOUNT, NUMBER)
    demo.sipgw("number", "assign", NUMBER, "--profile", PROFILE)
    demo.sipgw("rate", "set", "", RATE)
    demo.sipgw("profile", "credit", PROFILE, "--add", CREDIT)
    demo.wait_applied()
    before = demo.metrics()

    print(
        f"\n3. Outbound call: the PBX calls {DESTINATION} through the gateway, the carrier"
        f" answers, the PBX hangs up after {OUTBOUND_MS / 1000:g} s"
    )
    demo.call(
        "outbound",
        Peer("PBX", "pbx_uac.xml", PBX_IP, ports.pbx),
        Peer("carrier", "carrier_uas.xml", CARRIER_IP, ports.carrier),
        *("-s", DESTINATION, "-d", str(OUTBOUND_MS)),
    )
    print("      answered and hung up")

    print(
        f"\n4. Inbound call: the carrier calls {NUMBER}, the gateway delivers it to the"
        f" profile's PBX, the carrier hangs up after {INBOUND_MS / 1000:g} s"
    )
    demo.call(
        "inbound",
        Peer("carrier", "carrier_uac.xml", CARRIER_IP, ports.carrier),
        Peer("PBX", "pbx_uas.xml", PBX_IP, ports.pbx),
        *("-s", NUMBER, "-d", str(INBOUND_MS)),
    )
    print("      answered and hung up")

    # Records are written in batches, off the call path; the cost is
    # debited with the record, and the gateway reloads the new credit.
    deadline = time.monotonic() + RECORD_TIMEOUT
    while (written := demo.sipgw_json("history", PROFILE)["total"]) < 2:
        if time.monotonic() > deadline:
            raise DemoError(f"{written} of 2 call records written after {RECORD_TIMEOUT:.0f} s")
        demo.check_gateway()
        time.sleep(POLL)
    demo.wait_applied()
    after = demo.metrics()

    print("\n5. What happened")
    print("\n  The call records, newest first (the outbound call is charged, each started")
    print(f"  second at {RATE} per minute; inbound calls are free):")
    demo.sipgw("history", PROFILE)
    profile = demo.sipgw_json("profile", "show", PROFILE)
    account = demo.sipgw_json("account", "show", ACCOUNT)
    print("\n  The profile:")
    demo.sipgw("profile", "show", PROFILE)
    print(f"\n  credit given: {float(CREDIT):.4f}, credit left: {profile['credit']}")
    print(
        f"  account balance: {float(BALANCE):.4f} at creation, {account['balance']} now"
        f" ({float(CREDIT):.4f} moved to the profile's credit)"
    )
    print("\n  The metrics that moved (GET /metrics before the calls -> after):")
    for line in moved_metrics(before, after):
        print(f"    {line}")

    print("\n6. Stop")
    demo.stop()
    print(f"      gateway and SIPp stopped; played in {time.monotonic() - begun:.1f} s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/demo",
        description="A gateway, a PBX and a carrier on loopback: one outbound and one inbound"
        " call, then the call records, the credit left and the metrics that moved.",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary directory (database, logs)"
    )
    args = parser.parse_args(argv)
    if shutil.which("sipp") is None:
        print("sipgw demo: failed: sipp not found (Debian package sip-tester)", file=sys.stderr)
        return 1
    # The demo's secret key is the file in its directory, never the caller's.
    os.environ.pop("SIPGW_SECRET_KEY", None)
    work = Path(tempfile.mkdtemp(prefix="sipgw-demo-"))
    keep = args.keep
    status = 0
    demo = None
    try:
        with interruptible():
            demo = Demo(work)
            play(demo)
    except DemoError as exc:
        # The directory stays: the log named here is the place to look.
        keep, status = True, EXIT_FAILED
        print(f"sipgw demo: failed: {exc} (gateway log: {work / 'gateway.log'})", file=sys.stderr)
    except KeyboardInterrupt:
        status = EXIT_INTERRUPTED
        print("sipgw demo: interrupted; stopping what it started", file=sys.stderr)
    finally:
        # Bounded (each process gets a grace, then SIGKILL); a second
        # Ctrl-C must not leave half of it running.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if demo is not None:
            demo.stop()
        if keep:
            print(f"sipgw demo: files kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
            if status == 0:
                print(f"      removed {work}")
    return status


if __name__ == "__main__":
    sys.exit(main())
