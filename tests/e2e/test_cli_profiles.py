"""The management commands as an operator runs them: a command line given
to the ``sipgw`` entry point, against a SQLite file in a temporary
directory, with a temporary secret key; its output and exit status checked.
The entry point runs in-process (the ``sipgw`` fixture); ``python -m
gateway`` runs as a subprocess for ``serve`` and in
:func:`test_the_console_script_runs_as_a_process`."""

from __future__ import annotations

import asyncio
import json
import shlex
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
from cryptography.fernet import Fernet
from sqlalchemy.engine import make_url

from gateway.cli.output import NO_GATEWAY
from gateway.config.settings import SECRET_KEY_ENV
from gateway.manage.profiles import get_profile
from gateway.store.database import Store
from gateway.web.directory import load_directory
from sip.digest import ha1
from tests.support.environment import missing
from tests.support.harness import (
    free_port,
    gateway_command,
    gateway_env,
    random_loopback,
    run_in_process,
    wait_until_healthy,
)
from tests.unit import test_store as shared

#: One command: interpreter start, imports, migration check.  Generous for CI.
RUN_TIMEOUT = 60.0


class Run(Protocol):
    def __call__(
        self,
        command: str,
        *,
        env: dict[str, str] | None = None,
        database: bool = True,
        process: bool = False,
    ) -> subprocess.CompletedProcess[str]: ...


@pytest.fixture
def secret_key() -> str:
    return Fernet.generate_key().decode()


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/db.sqlite3"


@pytest.fixture
def sipgw(tmp_path: Path, secret_key: str, database_url: str) -> Run:
    """``sipgw("profile list --json")``: run one command (split like a shell
    line) in ``tmp_path``, so that no config/gateway.toml is found, with the
    secret key in the environment, and with ``--database`` added unless
    ``database=False``, the command names one, or it is ``serve``.

    Management commands run in this process through the console script's
    entry point (:func:`gateway.cli.commands.main`, see :func:`run_in_process`):
    the same arguments, output and exit status as ``python -m gateway``,
    without half a second of interpreter start and imports per command.
    ``serve`` and ``process=True`` run ``python -m gateway`` in a
    subprocess, as :func:`test_the_console_script_runs_as_a_process` does
    for the entry point itself."""

    def run(
        command: str,
        *,
        env: dict[str, str] | None = None,
        database: bool = True,
        process: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        args = shlex.split(command)
        if database and "--database" not in args and args[0] != "serve":
            args += ["--database", database_url]
        environment = gateway_env()
        environment[SECRET_KEY_ENV] = secret_key
        environment.update(env or {})
        if not process and args[0] != "serve":
            return run_in_process(args, cwd=tmp_path, env=environment)
        return subprocess.run(
            gateway_command(*args),
            cwd=tmp_path,
            env=environment,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )

    return run


def ok_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return json.loads(result.stdout)


def assert_error(result: subprocess.CompletedProcess[str], status: int, *needles: str) -> None:
    """Exit ``status``, one line on stderr naming the problem, nothing on stdout."""
    assert result.returncode == status, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("sipgw: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert result.stdout == ""


def setup_account(sipgw: Run) -> None:
    ok_json(sipgw("account create --name acme --email ops@acme.example --json"))


# ---------------------------------------------------------------------------
# Every command, JSON output


def test_every_command_with_json(sipgw: Run, database_url: str, secret_key: str) -> None:
    account = ok_json(
        sipgw("account create --name acme --email ops@acme.example --balance 25.5 --json")
    )
    assert (account["name"], account["email"]) == ("acme", "ops@acme.example")
    assert account["balance"] == "25.5000"  # a string: the exact decimal

    sales = ok_json(sipgw("profile create --account acme --name sales --auth registration --json"))
    assert (sales["auth"], sales["account"], sales["name"]) == ("registration", "acme", "sales")
    assert len(sales["sip_username"]) == 11 and sales["sip_username"].startswith("p")
    assert len(sales["password"]) == 20 and sales["password"].isalnum()
    assert sales["realm"] == "sipgw"
    # No gateway runs: no address is guessed from the configuration
    # (issue 10: 1; test_advertise_e2e has them from a running one).
    assert (sales["gateway_addresses"], sales["transports"]) == ([], [])
    assert sales["channel_limit"] == 300
    assert (sales["ip"], sales["port"], sales["numbers"]) == (None, None, [])
    assert sales["credit"] == "0.0000"
    assert sales["incoming"] == {"numbers": [], "delivered_to": "registered PBX"}
    # No [smtp] host: nothing sent, nothing failed.
    assert sales["email"] == {"sent": False, "to": None, "error": None}

    pbx = ok_json(
        sipgw(
            "profile create --account acme --name pbx --auth ip"
            " --ip 127.0.0.20 --port 5062 --channels 12 --json"
        )
    )
    assert (pbx["auth"], pbx["ip"], pbx["port"]) == ("ip", "127.0.0.20", 5062)
    assert (pbx["channel_limit"], pbx["password"], pbx["realm"]) == (12, None, None)

    added = ok_json(sipgw("number add --account acme '+44 113 496 0000' +441134960001 --json"))
    assert added == {"account": "acme", "numbers": ["+441134960000", "+441134960001"]}
    assigned = ok_json(sipgw("number assign +441134960000 --profile sales --json"))
    assert assigned == {"number": "+441134960000", "account": "acme", "profile": "sales"}
    ok_json(sipgw("number assign +441134960001 --profile pbx --json"))

    shown = ok_json(sipgw("profile show sales --json"))
    assert shown["password"] == sales["password"]  # retrievable at any time
    assert shown["sip_username"] == sales["sip_username"]
    assert shown["numbers"] == ["+441134960000"]
    listed = ok_json(sipgw("profile list --json"))["items"]
    assert [(p["name"], p["numbers"]) for p in listed] == [
        ("pbx", ["+441134960001"]),
        ("sales", ["+441134960000"]),
    ]
    assert ok_json(sipgw("profile list --account acme --json"))["items"] == listed

    # What the CLI stored is what the gateway will verify against.
    async def directory_entries() -> None:
        async with await Store.open(database_url, secret_key=secret_key.encode()) as store:
            directory = await load_directory(store)
        username, password = sales["sip_username"], sales["password"]
        entry = directory.by_username(username)
        assert entry is not None
        assert entry.ha1["SHA-256"] == ha1(username, "sipgw", password, "SHA-256")
        assert entry.ha1["MD5"] == ha1(username, "sipgw", password, "MD5")
        assert directory.by_number("441134960000") == entry
        ip_entry = directory.by_source("UDP", "127.0.0.20", 5062)
        assert ip_entry is not None and ip_entry.channel_limit == 12

    asyncio.run(directory_entries())


def test_text_output(sipgw: Run) -> None:
    created = sipgw("account create --name acme --email ops@acme.example")
    assert created.returncode == 0 and "account created" in created.stdout
    made = sipgw("profile create --account acme --name sales --auth registration")
    assert made.returncode == 0, made.stderr
    fields = dict(line.split(":", 1) for line in made.stdout.splitlines() if ":" in line)
    username, password = fields["sip username"].strip(), fields["password"].strip()
    assert len(password) == 20 and "profile created" in made.stdout
    shown = sipgw("profile show sales")
    assert shown.returncode == 0
    assert username in shown.stdout and password in shown.stdout
    assert "realm:" in shown.stdout and f"gateway:       {NO_GATEWAY}" in shown.stdout
    made_ip = sipgw("profile create --account acme --name pbx --auth ip --ip ::1 --port 5060")
    assert made_ip.returncode == 0 and "[::1]:5060" in made_ip.stdout
    listing = sipgw("profile list")
    assert listing.returncode == 0
    lines = listing.stdout.splitlines()
    assert lines[0].split()[:3] == ["ACCOUNT", "PROFILE", "AUTH"]
    assert "[::1]:5060" in lines[1] and username in lines[2]
    assert password not in listing.stdout  # the table does not print passwords
    added = sipgw("number add --account acme +441134960000")
    assert added.returncode == 0 and "+441134960000" in added.stdout
    assigned = sipgw("number assign +441134960000 --profile pbx")
    assert assigned.returncode == 0 and "delivered to profile pbx" in assigned.stdout


def test_empty_list(sipgw: Run) -> None:
    assert ok_json(sipgw("profile list --json")) == {
        "items": [],
        "total": 0,
        "offset": 0,
        "limit": 100,
        "next_offset": None,
    }
    assert sipgw("profile list").stdout.strip() == "no profiles"


# ---------------------------------------------------------------------------
# Errors: one line; exit 2 for usage and validation, 1 for not found/conflict


def test_the_console_script_runs_as_a_process(sipgw: Run, database_url: str) -> None:
    """The other tests call the entry point in-process; this one runs
    ``python -m gateway`` itself: output, the three exit statuses, and the
    secret key read from the environment of a fresh interpreter."""
    created = ok_json(
        sipgw("account create --name acme --email ops@acme.example --json", process=True)
    )
    assert created["name"] == "acme"
    profile = ok_json(
        sipgw("profile create --account acme --name sales --auth registration --json", process=True)
    )
    shown = ok_json(sipgw("profile show sales --json", process=True))
    assert shown["password"] == profile["password"]
    assert_error(sipgw("profile show ghost", process=True), 1, "no profile named 'ghost'")
    assert_error(sipgw("profile frobnicate", process=True), 2, "invalid choice")
    # In-process and subprocess runs see the same database and say the same.
    assert ok_json(sipgw("profile show sales --json")) == shown


def test_usage_and_validation_errors_exit_2(sipgw: Run) -> None:
    setup_account(sipgw)
    create = "profile create --account acme --name x"
    cases: list[tuple[str, tuple[str, ...]]] = [
        (f"{create} --auth magic", ("--auth", "invalid choice")),
        (f"{create} --auth registration --channels 301", ("channel_limit must be 1 to 300",)),
        (f"{create} --auth registration --channels 0", ("channel_limit must be 1 to 300",)),
        (f"{create} --auth registration --channels many", ("--channels", "whole number")),
        (f"{create} --auth ip --ip 192.0.2.1", ("needs the PBX's address: ip and port (--port)",)),
        (f"{create} --auth ip --ip 192.0.2.1 --port 70000", ("--port", "1 to 65535")),
        (f"{create} --auth ip --ip pbx.example --port 5060", ("not an IP address",)),
        (f"{create} --auth registration --ip 192.0.2.1", ("ip profiles only", "(--ip)")),
        ("profile create --account acme --name 'a/b' --auth registration", ("not '/'",)),
        ("profile create --account acme --auth ip", ("--name", "required")),
        ("account create --name b --email nobody", ("not an e-mail address",)),
        ("account create --name b --email b@b.example --balance=-5", ("zero or more",)),
        ("account create --name b --email b@b.example --balance lots", ("balance",)),
        ("number add --account acme 01134960000", ("not an E.164 number",)),
        ("number add --account acme +441134960000 '+44 113 496 0000'", ("listed twice",)),
        ("number assign 12 --profile x", ("not an E.164 number",)),
        ("profile list --database mysql://db/x", ("--database", "unsupported driver")),
        ("profile frobnicate", ("invalid choice",)),
    ]
    for command, needles in cases:
        assert_error(sipgw(command), 2, *needles)
    assert_error(sipgw("account", database=False), 2, "required")
    assert ok_json(sipgw("profile list --json"))["total"] == 0  # nothing was created


def test_not_found_and_conflicts_exit_1(sipgw: Run) -> None:
    setup_account(sipgw)
    ok_json(
        sipgw(
            "profile create --account acme --name pbx --auth ip --ip 192.0.2.1 --port 5060 --json"
        )
    )
    ok_json(sipgw("number add --account acme +441134960000 --json"))
    cases: list[tuple[str, tuple[str, ...]]] = [
        ("account create --name acme --email x@acme.example", ("account 'acme' already exists",)),
        (
            "profile create --account nope --name x --auth registration",
            ("no account named 'nope'",),
        ),
        (
            "profile create --account acme --name pbx --auth registration",
            ("already has a profile named 'pbx'",),
        ),
        (
            "profile create --account acme --name pbx2 --auth ip --ip 192.0.2.1 --port 5060",
            ("192.0.2.1:5060 is already used by profile 'pbx'",),
        ),
        ("profile show nope", ("no profile named 'nope'",)),
        ("profile list --account nope", ("no account named 'nope'",)),
        ("number add --account acme +441134960000", ("+441134960000 already exists",)),
        ("number add --account nope +441134960001", ("no account named 'nope'",)),
        (
            "number assign +441134960009 --profile pbx",
            ("no number +441134960009", "(an operator adds it with 'sipgw number add')"),
        ),
        (
            "number assign +441134960000 --profile nope",
            ("no profile named 'nope' in account 'acme'",),
        ),
    ]
    for command, needles in cases:
        assert_error(sipgw(command), 1, *needles)


def test_same_profile_name_in_two_accounts_needs_account(sipgw: Run) -> None:
    setup_account(sipgw)
    ok_json(sipgw("account create --name other --email o@other.example --json"))
    for account in ("acme", "other"):
        ok_json(
            sipgw(f"profile create --account {account} --name sales --auth registration --json")
        )
    assert_error(sipgw("profile show sales"), 2, "several accounts", "--account")
    shown = ok_json(sipgw("profile show sales --account other --json"))
    assert shown["account"] == "other"
    # A number is assigned within its own account: no ambiguity there.
    ok_json(sipgw("number add --account other +441134960000 --json"))
    assigned = ok_json(sipgw("number assign +441134960000 --profile sales --json"))
    assert assigned["account"] == "other"


def test_reassigning_needs_move(sipgw: Run) -> None:
    setup_account(sipgw)
    for name in ("a", "b"):
        ok_json(sipgw(f"profile create --account acme --name {name} --auth registration --json"))
    ok_json(sipgw("number add --account acme +441134960000 --json"))
    ok_json(sipgw("number assign +441134960000 --profile a --json"))
    assert_error(sipgw("number assign +441134960000 --profile b"), 1, "--move")
    moved = ok_json(sipgw("number assign +441134960000 --profile b --move --json"))
    assert moved["profile"] == "b"


def test_database_and_key_problems_exit_1(sipgw: Run) -> None:
    result = sipgw("profile list --database postgresql+asyncpg://postgres:hunter2@127.0.0.1:1/x")
    assert_error(result, 1, "cannot open database", "127.0.0.1:1")
    assert "hunter2" not in result.stderr
    setup_account(sipgw)
    ok_json(sipgw("profile create --account acme --name s --auth registration --json"))
    wrong_key = {SECRET_KEY_ENV: Fernet.generate_key().decode()}
    assert_error(sipgw("profile show s", env=wrong_key), 1, "cannot be decrypted")
    assert_error(sipgw("profile list", env={SECRET_KEY_ENV: "nope"}), 1, SECRET_KEY_ENV)


# ---------------------------------------------------------------------------
# Settings: config file, defaults relative to the working directory


def test_config_file_names_the_database_and_key_file(sipgw: Run, tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    database = f"sqlite+aiosqlite:///{tmp_path}/cfg/db.sqlite3"
    key_file = tmp_path / "keys" / "secret.key"
    config.write_text(
        '[sip]\nlisten = ["127.0.0.10:5070"]\nrealm = "pbx.example.net"\n'
        f'[store]\ndatabase = "{database}"\nsecret_key_file = "{key_file}"\n'
    )
    from_file: dict[str, Any] = {"env": {SECRET_KEY_ENV: ""}, "database": False}
    ok_json(
        sipgw(
            f"account create --name acme --email a@acme.example --config {config} --json",
            **from_file,
        )
    )
    profile = ok_json(
        sipgw(
            f"profile create --account acme --name s --auth registration --config {config} --json",
            **from_file,
        )
    )
    assert profile["realm"] == "pbx.example.net"
    assert profile["gateway_addresses"] == []  # the file's listen is no running gateway
    assert (tmp_path / "cfg" / "db.sqlite3").is_file()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    # --database wins over the file: that database has no profile "s".
    assert_error(sipgw(f"profile show s --config {config}"), 1, "no profile named 's'")

    async def stored_password() -> str | None:
        key = key_file.read_bytes().strip()
        async with await Store.open(database, secret_key=key, realm="pbx.example.net") as store:
            return (await get_profile(store, "s")).password

    assert asyncio.run(stored_password()) == profile["password"]


def test_defaults_are_relative_to_the_working_directory(sipgw: Run, tmp_path: Path) -> None:
    created = sipgw(
        "account create --name acme --email a@acme.example",
        env={SECRET_KEY_ENV: ""},
        database=False,
    )
    assert created.returncode == 0, created.stderr
    assert (tmp_path / "var" / "sipgw.sqlite3").is_file()
    assert stat.S_IMODE((tmp_path / "var" / "secret.key").stat().st_mode) == 0o600


def test_bad_config_file_is_one_line(sipgw: Run, tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[store]\ndatabase = "oracle://x"\n')
    assert_error(sipgw(f"profile list --config {config}"), 2, str(config), "store.database")
    missing = tmp_path / "missing.toml"
    assert_error(sipgw(f"profile list --config {missing}"), 2, "cannot read")


def test_serve_rejects_bad_database_and_carrier(sipgw: Run) -> None:
    assert_error(sipgw("serve --carrier carrier.example.net:5060"), 2, "--carrier", "sip: URI")
    assert_error(sipgw("serve --carrier sips:carrier.example.net"), 2, "--carrier", "sips")
    assert_error(sipgw("serve --database mysql://x/y"), 2, "--database", "unsupported driver")


def test_serve_opens_the_database_it_is_given(sipgw: Run, tmp_path: Path) -> None:
    """``serve --database URL --carrier URI`` starts on that database (created
    and migrated on the way), the same one the management commands use."""
    setup_account(sipgw)  # the fixture's database, through the CLI
    host = random_loopback()
    sip_port, http_port = free_port(host), free_port(host)
    database = f"sqlite+aiosqlite:///{tmp_path}/served/gw.sqlite3"
    environment = {**gateway_env(), SECRET_KEY_ENV: Fernet.generate_key().decode()}
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            gateway_command(
                "serve",
                "--sip-listen", f"{host}:{sip_port}",
                "--http-listen", f"{host}:{http_port}",
                "--database", database,
                "--carrier", "sip:127.0.0.30:5999",
                "--log-level", "warning",
            ),
            cwd=tmp_path, env=environment, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        wait_until_healthy(process, f"http://{host}:{http_port}", on_failure=log_path.read_text)
        assert (tmp_path / "served" / "gw.sqlite3").is_file()
        assert not (tmp_path / "var" / "sipgw.sqlite3").exists()  # not the default
    finally:
        process.terminate()
        try:
            process.wait(RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode == 0, log_path.read_text()
    assert "Traceback" not in log_path.read_text()


# ---------------------------------------------------------------------------
# profile set-limit, on SQLite and on PostgreSQL


@pytest.fixture(params=["sqlite", "postgresql"])
def any_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database of each kind: a SQLite file, or a PostgreSQL database
    created for this test and dropped after it.  Without a reachable
    PostgreSQL the PostgreSQL half is skipped, or fails when ``CI`` is set."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/limits.sqlite3"
        return
    name = f"sipgw_test_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(shared._admin(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        missing(f"PostgreSQL at {shared.POSTGRES_ADMIN_URL} is not usable: {exc}")
    url = make_url(shared.POSTGRES_ADMIN_URL).set(database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        asyncio.run(shared._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def directory_version(database_url: str) -> int:
    """What running gateways poll to notice a change."""

    async def read() -> int:
        async with await Store.open(database_url, migrate=False) as store:
            return await store.version()

    return asyncio.run(read())


def test_set_limit_changes_the_profile(sipgw: Run, any_database: str) -> None:
    on = f"--database {any_database}"
    ok_json(sipgw(f"account create --name acme --email ops@acme.example --json {on}"))
    created = ok_json(
        sipgw(
            "profile create --account acme --name pbx --auth ip"
            f" --ip 192.0.2.1 --port 5060 --channels 12 --json {on}"
        )
    )
    before = directory_version(any_database)
    changed = ok_json(sipgw(f"profile set-limit pbx 4 --json {on}"))
    assert changed["channel_limit"] == 4
    # Nothing else about the profile changes.
    assert {k: v for k, v in changed.items() if k != "channel_limit"} == {
        k: v for k, v in created.items() if k not in ("channel_limit", "email")
    }
    assert ok_json(sipgw(f"profile show pbx --json {on}")) == changed
    assert directory_version(any_database) > before, "running gateways must notice"
    # Text output: the profile as `profile show` prints it, and what was done.
    text = sipgw(f"profile set-limit pbx 300 --account acme {on}")
    assert text.returncode == 0, text.stderr
    fields = dict(line.split(":", 1) for line in text.stdout.splitlines() if ":" in line)
    assert fields["channels"].strip() == "300"
    assert fields["pbx address"].strip() == "192.0.2.1:5060"
    assert text.stdout.rstrip().endswith("channel limit set")
    shown = sipgw(f"profile show pbx {on}")
    assert shown.returncode == 0 and "channels:     300" in shown.stdout
    assert ok_json(sipgw(f"profile set-limit pbx 1 --json {on}"))["channel_limit"] == 1
    listed = ok_json(sipgw(f"profile list --json {on}"))["items"]
    assert [(p["name"], p["channel_limit"]) for p in listed] == [("pbx", 1)]


def test_set_limit_errors(sipgw: Run, any_database: str) -> None:
    on = f"--database {any_database}"
    for account in ("acme", "other"):
        ok_json(sipgw(f"account create --name {account} --email ops@{account}.example --json {on}"))
    ok_json(sipgw(f"profile create --account acme --name pbx --auth registration --json {on}"))
    for account in ("acme", "other"):
        ok_json(
            sipgw(
                f"profile create --account {account} --name sales --auth registration --json {on}"
            )
        )
    version = directory_version(any_database)
    # Bad values: exit 2, one line, nothing written.
    bad: list[tuple[str, tuple[str, ...]]] = [
        ("pbx 0", ("channel_limit must be 1 to 300, got 0",)),
        ("pbx 301", ("channel_limit must be 1 to 300, got 301",)),
        ("pbx -5", ("channel_limit must be 1 to 300, got -5",)),
        ("pbx many", ("LIMIT", "whole number", "'many'")),
        ("pbx 4.5", ("LIMIT", "whole number", "'4.5'")),
        ("pbx", ("LIMIT", "required")),
    ]
    for arguments, needles in bad:
        assert_error(sipgw(f"profile set-limit {arguments} {on}"), 2, *needles)
    # Not found: exit 1.
    missing: list[tuple[str, tuple[str, ...]]] = [
        ("nope 4", ("no profile named 'nope'",)),
        ("pbx 4 --account other", ("no profile named 'pbx' in account 'other'",)),
        ("pbx 4 --account nobody", ("no profile named 'pbx' in account 'nobody'",)),
    ]
    for arguments, needles in missing:
        assert_error(sipgw(f"profile set-limit {arguments} {on}"), 1, *needles)
    # A name two accounts use needs --account, and changes only that one.
    assert_error(
        sipgw(f"profile set-limit sales 5 {on}"), 2, "several accounts", "'acme'", "'other'"
    )
    assert directory_version(any_database) == version, "nothing was written"
    changed = ok_json(sipgw(f"profile set-limit sales 5 --account other --json {on}"))
    assert (changed["account"], changed["channel_limit"]) == ("other", 5)
    listed = ok_json(sipgw(f"profile list --json {on}"))["items"]
    assert [(p["account"], p["name"], p["channel_limit"]) for p in listed] == [
        ("acme", "pbx", 300),
        ("acme", "sales", 300),
        ("other", "sales", 5),
    ]
