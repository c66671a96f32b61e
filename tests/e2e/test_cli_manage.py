"""The management commands of issue 5 as an operator runs them: a command
line given to the ``sipgw`` entry point (in-process, see the ``sipgw``
fixture of test_cli_profiles.py), on a fresh SQLite file and a fresh
PostgreSQL database.

Each command's success, and its failure as one line on stderr with the
documented exit status; the credentials e-mail of ``profile create``
through a real SMTP server; ``profile delete`` asking a served gateway (or
Redis) how many calls are up, refusing while one is, and ending it when
told to.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import shlex
import socket
import subprocess
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from admission.redis import RedisAdmission
from gateway.manage.nodes import NodeView, announce
from gateway.manage.profiles import get_profile
from gateway.manage.tokens import authenticate
from gateway.store.database import Store
from gateway.store.models import TokenRole, utcnow
from tests.e2e import test_cli_profiles as cli
from tests.e2e.test_cli_profiles import Run, assert_error, ok_json
from tests.support.harness import (
    SECRET_KEY_ENV,
    GatewayHome,
    free_port,
    gateway_command,
    gateway_env,
    random_loopback,
)
from tests.support.peers import ACCOUNT, answered_call, gateway_ends_call, trunk
from tests.unit import test_admission_redis as redis_tests
from tests.unit import test_mailer as mail
from tests.unit.test_history import T0, insert_records

# The fixtures of the modules this one builds on.  Every command runs on a
# fresh SQLite file and on a fresh PostgreSQL database.
sipgw = cli.sipgw
secret_key = cli.secret_key
database_url = cli.any_database
smtp_server = mail.smtp_server
prefix = redis_tests.prefix


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """Settings whose ``http.listen`` is a free port nobody listens on: the
    gateway ``profile delete`` asks is not running (0 calls up)."""
    host = random_loopback()
    path = tmp_path / "gw.toml"
    path.write_text(f'[http]\nlisten = "{host}:{free_port(host)}"\n')
    return path


def run_async(database_url: str, secret_key: str, work: Any) -> Any:
    """``await work(store)`` on the test's database, from a plain test."""

    async def run() -> Any:
        async with await Store.open(database_url, secret_key=secret_key.encode()) as store:
            return await work(store)

    return asyncio.run(run())


def raw_stdout(command: str, database_url: str, secret_key: str) -> bytes:
    """What ``sipgw COMMAND`` writes to stdout, byte for byte (the ``sipgw``
    fixture reads text, which turns CRLF into LF)."""
    environment = {**gateway_env(), SECRET_KEY_ENV: secret_key}
    result = subprocess.run(
        gateway_command(*shlex.split(command), "--database", database_url),
        env=environment,
        capture_output=True,
        timeout=cli.RUN_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0 and result.stderr == b"", result.stderr
    return result.stdout


def acme_with_profiles(sipgw: Run) -> None:
    """acme (balance 100) with a registration profile "sales" and an IP
    profile "pbx", and two numbers, one assigned to each."""
    ok_json(sipgw("account create --name acme --email ops@acme.example --balance 100 --json"))
    ok_json(sipgw("profile create --account acme --name sales --auth registration --json"))
    ok_json(
        sipgw(
            "profile create --account acme --name pbx --auth ip --ip 192.0.2.1 --port 5060 --json"
        )
    )
    ok_json(sipgw("number add --account acme +441134960000 +441134960001 --json"))
    ok_json(sipgw("number assign +441134960000 --profile sales --json"))
    ok_json(sipgw("number assign +441134960001 --profile pbx --json"))


# ---------------------------------------------------------------------------
# Accounts


def test_account_list_show_deposit(sipgw: Run) -> None:
    for name in ("beta", "alpha", "gamma"):
        ok_json(sipgw(f"account create --name {name} --email ops@{name}.example --json"))
    page = ok_json(sipgw("account list --limit 2 --json"))
    assert [a["name"] for a in page["items"]] == ["alpha", "beta"]
    assert (page["total"], page["offset"], page["limit"], page["next_offset"]) == (3, 0, 2, 2)
    text = sipgw("account list --offset 2 --limit 2")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].split() == ["ACCOUNT", "E-MAIL", "BALANCE"]
    assert lines[1].split() == ["gamma", "ops@gamma.example", "0.0000"]
    assert lines[2] == "3-3 of 3"
    deposited = ok_json(sipgw("account deposit alpha 25.5 --json"))
    assert deposited["balance"] == "25.5000"
    ok_json(sipgw("account deposit alpha 0.0001 --json"))
    shown = ok_json(sipgw("account show alpha --json"))
    assert (shown["name"], shown["email"], shown["balance"]) == (
        "alpha",
        "ops@alpha.example",
        "25.5001",
    )
    assert "balance:  25.5001" in sipgw("account show alpha").stdout

    assert_error(sipgw("account deposit alpha 0"), 2, "deposit must be more than zero")
    assert_error(sipgw("account deposit alpha 1.23456"), 2, "more than 4 decimal places")
    assert_error(sipgw("account deposit nope 5"), 1, "no account named 'nope'")
    assert_error(sipgw("account show nope"), 1, "no account named 'nope'")
    assert_error(sipgw("account list --limit 0"), 2, "limit must be 1 to 1000")
    assert_error(sipgw("account list --offset many"), 2, "--offset", "whole number")
    assert ok_json(sipgw("account show alpha --json"))["balance"] == "25.5001"


# ---------------------------------------------------------------------------
# Profiles: rename, credit


def test_profile_rename_and_credit(sipgw: Run) -> None:
    acme_with_profiles(sipgw)
    renamed = ok_json(sipgw("profile rename pbx leeds-pbx --json"))
    assert (renamed["name"], renamed["ip"], renamed["numbers"]) == (
        "leeds-pbx",
        "192.0.2.1",
        ["+441134960001"],
    )
    assert renamed["incoming"]["delivered_to"] == "192.0.2.1:5060"
    assert_error(sipgw("profile show pbx"), 1, "no profile named 'pbx'")
    assert_error(sipgw("profile rename leeds-pbx sales"), 1, "already has a profile named 'sales'")
    assert_error(sipgw("profile rename leeds-pbx 'x/y'"), 2, "new profile name")
    assert_error(sipgw("profile rename nope x --account acme"), 1, "no profile named 'nope'")

    moved = ok_json(sipgw("profile credit leeds-pbx --add 30.25 --json"))
    assert moved["profile"]["credit"] == "30.2500"
    assert moved["account"]["balance"] == "69.7500"
    back = sipgw("profile credit leeds-pbx --withdraw 0.25 --account acme")
    assert back.returncode == 0, back.stderr
    fields = dict(line.split(":", 1) for line in back.stdout.splitlines() if ":" in line)
    assert (fields["credit"].strip(), fields["balance"].strip()) == ("30.0000", "70.0000")
    assert back.stdout.rstrip().endswith("0.2500 withdrawn to the account")
    shown = sipgw("profile show leeds-pbx")
    assert "credit:       30.0000" in shown.stdout
    assert "+441134960001 (to 192.0.2.1:5060)" in shown.stdout

    assert_error(
        sipgw("profile credit leeds-pbx --add 70.0001"),
        1,
        "account 'acme' has a balance of 70.0000",
    )
    assert_error(
        sipgw("profile credit leeds-pbx --withdraw 31"),
        1,
        "profile 'leeds-pbx' has a credit of 30.0000",
    )
    assert_error(sipgw("profile credit leeds-pbx --add 0"), 2, "must not be zero")
    assert_error(sipgw("profile credit leeds-pbx --add=-5"), 2, "without a sign")
    assert_error(sipgw("profile credit leeds-pbx --withdraw=+5"), 2, "without a sign")
    assert_error(sipgw("profile credit leeds-pbx --add 1 --withdraw 1"), 2, "not allowed with")
    assert_error(sipgw("profile credit leeds-pbx"), 2, "one of the arguments")
    assert_error(sipgw("profile credit leeds-pbx --add ten"), 2, "must be an amount")
    listed = ok_json(sipgw("profile list --json --limit 1"))
    assert [p["name"] for p in listed["items"]] == ["leeds-pbx"]
    assert (listed["total"], listed["next_offset"]) == (2, 1)
    assert listed["items"][0]["credit"] == "30.0000"


# ---------------------------------------------------------------------------
# Numbers


def test_number_unassign_and_list(sipgw: Run) -> None:
    acme_with_profiles(sipgw)
    ok_json(sipgw("account create --name other --email o@other.example --json"))
    ok_json(sipgw("number add --account acme +441134960002 --json"))
    listed = ok_json(sipgw("number list --account acme --json"))
    assert [(n["number"], n["profile"]) for n in listed["items"]] == [
        ("+441134960000", "sales"),
        ("+441134960001", "pbx"),
        ("+441134960002", None),
    ]
    only = ok_json(sipgw("number list --account acme --profile pbx --json"))
    assert [n["number"] for n in only["items"]] == ["+441134960001"]
    back = ok_json(sipgw("number unassign '+44 113 496 0000' --json"))
    assert back == {"number": "+441134960000", "account": "acme", "profile": None}
    text = sipgw("number list --account acme")
    assert text.returncode == 0, text.stderr
    rows = [line.split(None, 1) for line in text.stdout.splitlines()]
    assert rows == [
        ["NUMBER", "PROFILE"],
        ["+441134960000", "- (pool)"],
        ["+441134960001", "pbx"],
        ["+441134960002", "- (pool)"],
    ]
    assert ok_json(sipgw("profile show sales --json"))["incoming"]["numbers"] == []
    assigned = sipgw("number assign +441134960000 --profile pbx --account acme")
    assert assigned.returncode == 0, assigned.stderr
    assert_error(sipgw("number unassign +441134960009"), 1, "no number +441134960009")
    assert_error(
        sipgw("number unassign +441134960000 --account other"),
        1,
        "no number +441134960000 in account 'other'",
    )
    assert_error(sipgw("number unassign 0113"), 2, "not an E.164 number")
    assert_error(sipgw("number list --account nope"), 1, "no account named 'nope'")
    assert_error(sipgw("number list --account acme --profile x"), 1, "no profile named 'x'")
    assert_error(sipgw("number list"), 2, "--account", "required")


# ---------------------------------------------------------------------------
# Rates


def test_rates(sipgw: Run) -> None:
    assert ok_json(sipgw("rate set 44 0.02 --json"))["price_per_minute"] == "0.0200"
    assert ok_json(sipgw("rate set +4420 0.015 --json"))["prefix"] == "4420"
    default = sipgw("rate set '' 0.5")
    assert default.returncode == 0 and "calls to (default): 0.5000 per minute" in default.stdout
    ok_json(sipgw("rate set 44 0.0199 --json"))  # a new price for a known prefix
    listed = ok_json(sipgw("rate list --json"))
    assert [(r["prefix"], r["price_per_minute"]) for r in listed["items"]] == [
        ("", "0.5000"),
        ("44", "0.0199"),
        ("4420", "0.0150"),
    ]
    table = sipgw("rate list").stdout.splitlines()
    assert table[0].split() == ["PREFIX", "PER", "MINUTE"]
    assert table[1].split() == ["(default)", "0.5000"]
    assert ok_json(sipgw("rate delete 4420 --json"))["prefix"] == "4420"
    assert ok_json(sipgw("rate list --json"))["total"] == 2
    assert_error(sipgw("rate delete 4420"), 1, "no rate for prefix '4420'")
    assert_error(sipgw("rate set 044 0.01"), 2, "rate prefix must be")
    assert_error(sipgw("rate set 44 -1"), 2, "zero or more")
    assert_error(sipgw("rate set 44"), 2, "PRICE", "required")


# ---------------------------------------------------------------------------
# History


def test_history_pages_and_csv(sipgw: Run, database_url: str, secret_key: str) -> None:
    acme_with_profiles(sipgw)

    async def records(store: Store) -> list[str]:
        sales = await get_profile(store, "sales")
        pbx = await get_profile(store, "pbx")
        await insert_records(store, pbx.id, [T0])
        return await insert_records(
            store,
            sales.id,
            [T0 + timedelta(days=d) for d in range(3)],
            caller='"Sales, Leeds" <sip:100@pbx>',
        )

    ids = run_async(database_url, secret_key, records)
    page = ok_json(sipgw("history sales --limit 2 --json"))
    assert [r["call_id"] for r in page["items"]] == [ids[2], ids[1]]  # newest first
    assert (page["total"], page["next_offset"]) == (3, 2)
    first = page["items"][0]
    assert (first["duration_seconds"], first["cost"], first["final_status"]) == (
        "30.500",
        "0.0123",
        200,
    )
    assert first["started_at"] == "2024-06-03T09:00:00+00:00"
    text = sipgw("history sales --since 2024-06-02 --until 2024-06-03")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].split()[:3] == ["STARTED", "DIRECTION", "CALLER"]
    assert len(lines) == 2 and lines[1].startswith("2024-06-02T09:00:00+00:00")

    command = "history sales --csv --since 2024-06-02T00:00:00Z --account acme"
    raw = raw_stdout(command, database_url, secret_key)
    assert raw.endswith(b"\r\n") and raw.count(b"\r\n") == 3  # RFC 4180 §2: CRLF
    rows = list(csv.reader(io.StringIO(raw.decode(), newline="")))
    assert rows[0][:3] == ["call_id", "direction", "caller"]
    assert [row[0] for row in rows[1:]] == ids[1:]  # in the order the calls started
    assert rows[1][2] == '"Sales, Leeds" <sip:100@pbx>'
    whole = sipgw("history pbx --csv")
    assert whole.returncode == 0 and len(whole.stdout.splitlines()) == 2

    assert_error(sipgw("history sales --since 2024-13-01"), 2, "--since must be an ISO 8601")
    assert_error(
        sipgw("history sales --since 2024-06-03 --until 2024-06-01 --csv"), 2, "is after until"
    )
    assert_error(sipgw("history sales --csv --json"), 2, "--csv and --json")
    assert_error(sipgw("history nope --csv"), 1, "no profile named 'nope'")
    assert_error(sipgw("history sales --account other"), 1, "no profile named 'sales'")


# ---------------------------------------------------------------------------
# Tokens


def test_tokens(sipgw: Run, database_url: str, secret_key: str) -> None:
    ok_json(sipgw("account create --name acme --email ops@acme.example --json"))
    operator = ok_json(sipgw("token create --name ops --role operator --json"))
    assert (operator["name"], operator["role"], operator["account"]) == ("ops", "operator", None)
    assert operator["secret"].startswith("sgw_")
    made = sipgw("token create --name acme-console --role account --account acme")
    assert made.returncode == 0, made.stderr
    fields = dict(line.split(":", 1) for line in made.stdout.splitlines() if ":" in line)
    manager_secret = fields["secret"].strip()
    assert "shown only this once" in made.stdout

    async def who(store: Store) -> list[Any]:
        return [await authenticate(store, s) for s in (operator["secret"], manager_secret)]

    ops, manager = run_async(database_url, secret_key, who)
    assert ops is not None and ops.role is TokenRole.OPERATOR
    assert manager is not None and (manager.role, manager.account) == (TokenRole.ACCOUNT, "acme")

    listed = ok_json(sipgw("token list --json"))
    assert [(t["name"], t["account"]) for t in listed["items"]] == [
        ("acme-console", "acme"),
        ("ops", None),
    ]
    assert operator["secret"] not in json.dumps(listed)
    assert "secret" not in sipgw("token list").stdout
    assert ok_json(sipgw("token revoke ops --json"))["name"] == "ops"
    ops, manager = run_async(database_url, secret_key, who)
    assert ops is None and manager is not None

    assert_error(sipgw("token create --name x --role account"), 2, "needs the account")
    assert_error(sipgw("token create --name x --role operator --account acme"), 2, "no account")
    assert_error(sipgw("token create --name x --role root"), 2, "--role", "invalid choice")
    assert_error(sipgw("token create --name acme-console --role operator"), 1, "already exists")
    assert_error(sipgw("token create --name x --role account --account nope"), 1, "nope")
    assert_error(sipgw("token revoke ops"), 1, "no token named 'ops'")


# ---------------------------------------------------------------------------
# profile create: the credentials e-mail


def test_profile_create_emails_the_credentials(
    sipgw: Run, tmp_path: Path, smtp_server: mail.StartServer
) -> None:
    server = smtp_server()
    settings = tmp_path / "mail.toml"
    settings.write_text(
        f'[sip]\nlisten = ["{mail.GATEWAY_ADDRESS}"]\n'
        f'[smtp]\nhost = "{server.host}"\nport = {server.port}\n'
        f'from_address = "{mail.SENDER}"\n'
    )
    ok_json(sipgw(f"account create --name acme --email {mail.ACCOUNT_EMAIL} --json"))
    created = ok_json(
        sipgw(
            "profile create --account acme --name sales --auth registration"
            f" --config {settings} --json"
        )
    )
    assert created["email"] == {"sent": True, "to": mail.ACCOUNT_EMAIL, "error": None}
    envelope, message = server.mailbox.only_message()
    assert envelope.rcpt_tos == [mail.ACCOUNT_EMAIL] and envelope.mail_from == mail.SENDER
    body = mail.body_of(message).splitlines()
    assert f"Password:       {created['password']}" in body
    assert f"SIP username:   {created['sip_username']}" in body
    # No gateway runs here: the e-mail guesses no address from the settings
    # (test_mailer's have the one a running gateway advertises).
    assert "  (no gateway is running right now: ask the gateway operator)" in body
    text = sipgw(f"profile create --account acme --name hr --auth registration --config {settings}")
    assert text.returncode == 0, text.stderr
    assert text.stdout.rstrip().endswith(f"credentials e-mailed to {mail.ACCOUNT_EMAIL}")
    # No secret in an IP profile: nothing is sent for it.
    ip = ok_json(
        sipgw(
            "profile create --account acme --name pbx --auth ip --ip 192.0.2.1 --port 5060"
            f" --config {settings} --json"
        )
    )
    assert ip["email"] == {"sent": False, "to": None, "error": None}
    assert len(server.mailbox.envelopes) == 2


def test_a_failed_email_is_reported_and_the_profile_stays(sipgw: Run, tmp_path: Path) -> None:
    host = random_loopback()
    settings = tmp_path / "dead-mail.toml"
    settings.write_text(f'[smtp]\nhost = "{host}"\nport = {free_port(host)}\n')
    ok_json(sipgw("account create --name acme --email ops@acme.example --json"))
    result = sipgw(
        f"profile create --account acme --name sales --auth registration --config {settings} --json"
    )
    assert result.returncode == 0  # the profile exists: retrying would be a conflict
    warning = result.stderr.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith("sipgw: warning: credentials not e-mailed")
    assert "connection refused" in warning[0] and "profile show sales" in warning[0]
    created = json.loads(result.stdout)
    assert created["email"]["sent"] is False and "connection refused" in created["email"]["error"]
    assert ok_json(sipgw("profile show sales --json"))["password"] == created["password"]


# ---------------------------------------------------------------------------
# profile delete


def test_profile_delete_without_a_gateway(sipgw: Run, config: Path) -> None:
    acme_with_profiles(sipgw)
    ok_json(sipgw("profile credit pbx --add 12.5 --json"))
    with_config = f"--config {config}"
    assert_error(
        sipgw(f"profile delete pbx --confirm PBX {with_config}"), 2, "confirmation does not match"
    )
    assert_error(sipgw(f"profile delete pbx {with_config}"), 2, "--confirm", "required")
    assert_error(sipgw(f"profile delete nope --confirm nope {with_config}"), 1, "no profile")
    assert ok_json(sipgw("profile show pbx --json"))["credit"] == "12.5000"
    report = ok_json(sipgw(f"profile delete pbx --confirm pbx {with_config} --json"))
    assert report == {
        "name": "pbx",
        "account": "acme",
        "charged": "0.0000",
        "credit_returned": "12.5000",
        "numbers_released": ["+441134960001"],
        "records_erased": 0,
        "calls_up": 0,
        "balance": "100.0000",
    }
    assert_error(sipgw("profile show pbx"), 1, "no profile named 'pbx'")
    pool = ok_json(sipgw("number list --account acme --json"))
    assert [(n["number"], n["profile"]) for n in pool["items"]] == [
        ("+441134960000", "sales"),
        ("+441134960001", None),
    ]
    text = sipgw(f"profile delete sales --confirm sales {with_config}")
    assert text.returncode == 0, text.stderr
    assert text.stdout.rstrip().endswith("profile deleted")
    assert "numbers released:  +441134960000" in text.stdout


def test_profile_delete_asks_a_served_gateway(gateway_home: GatewayHome) -> None:
    """A call is up through a served gateway: the deletion is refused, then
    done with --end-calls, and the gateway ends the call on both sides."""
    with trunk(gateway_home) as setup:
        served = ["--config", str(setup.gateway.config_path)]
        answered_call(setup, "delete-me")
        assert setup.channels() == 1
        refused = gateway_home.cli(
            "profile", "delete", "pbx", "--confirm", "pbx", *served, check=False
        )
        assert_error(refused, 1, "profile 'pbx' has 1 call up", "--end-calls")
        assert setup.channels() == 1, "nothing was touched"
        report = gateway_home.cli_json(
            "profile", "delete", "pbx", "--confirm", "pbx", "--end-calls", *served
        )
        assert (report["name"], report["calls_up"]) == ("pbx", 1)
        gateway_ends_call(setup, "delete-me")
        setup.gateway.assert_idle()
        assert "pbx" not in setup.gateway.healthz()["channels"].get(ACCOUNT, {})


async def test_profile_delete_counts_calls_in_redis(
    sipgw: Run, tmp_path: Path, prefix: str, config: Path
) -> None:
    """With ``[admission] backend = "redis"`` the count is read from Redis:
    every node's calls, whichever node holds them."""
    acme_with_profiles(sipgw)
    redis_config = tmp_path / "redis.toml"
    redis_config.write_text(
        config.read_text()
        + f'[admission]\nbackend = "redis"\nredis_url = "{redis_tests.REDIS_URL}"\n'
        + f'key_prefix = "{prefix}"\n'
    )
    profile_id = ok_json(sipgw("profile show pbx --json"))["id"]
    node = RedisAdmission(redis_tests.REDIS_URL, prefix=prefix)  # a gateway node elsewhere
    try:
        for call_id in ("a@pbx", "b@pbx"):
            await node.acquire(profile_id, call_id, 10)
        refused = await asyncio.to_thread(
            sipgw, f"profile delete pbx --confirm pbx --config {redis_config}"
        )
        assert_error(refused, 1, "profile 'pbx' has 2 calls up")
        await node.release("a@pbx")
        await node.release("b@pbx")
        done = await asyncio.to_thread(
            sipgw, f"profile delete pbx --confirm pbx --config {redis_config} --json"
        )
        assert ok_json(done)["calls_up"] == 0
    finally:
        await node.close()
    unreachable = tmp_path / "no-redis.toml"
    host = random_loopback()
    unreachable.write_text(
        f'[admission]\nbackend = "redis"\nredis_url = "redis://{host}:{free_port(host)}/0"\n'
    )
    failed = await asyncio.to_thread(
        sipgw, f"profile delete sales --confirm sales --config {unreachable}"
    )
    assert_error(failed, 1, "cannot ask Redis")
    assert (await asyncio.to_thread(sipgw, "profile show sales")).returncode == 0


@pytest.fixture
def busy_http(tmp_path: Path) -> Iterator[Path]:
    """Settings whose ``http.listen`` answers, but not as the gateway's
    /healthz does: every request gets ``500 Broken``."""
    host = random_loopback()
    listener = socket.create_server((host, 0))
    port = listener.getsockname()[1]
    path = tmp_path / "busy.toml"
    path.write_text(f'[http]\nlisten = "{host}:{port}"\n')

    def serve() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return  # closed: the test is over
            with connection:
                connection.settimeout(5)
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = connection.recv(65536)
                    if not chunk:
                        break
                    request += chunk
                connection.sendall(b"HTTP/1.1 500 Broken\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        # shutdown wakes the thread blocked in accept (close alone does not).
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(5)


def test_profile_delete_when_the_gateway_cannot_say(
    sipgw: Run, busy_http: Path, database_url: str, secret_key: str
) -> None:
    """Something answers where a running gateway said its HTTP listener is,
    but not with channel counts: the deletion is refused rather than guessed."""
    acme_with_profiles(sipgw)
    http = busy_http.read_text().split('"')[1]  # [http] listen = "HOST:PORT"
    node = NodeView(
        node_id="broken-node",
        sip_addresses=("192.0.2.99:5060",),
        transports=("udp", "tcp"),
        http_address=http,
        started_at=utcnow(),
        seen_at=utcnow(),
    )
    run_async(database_url, secret_key, lambda store: announce(store, node))
    result = sipgw(f"profile delete pbx --confirm pbx --end-calls --config {busy_http}")
    assert_error(result, 1, "cannot ask the gateway at", "500", "Broken")
    assert ok_json(sipgw("profile show pbx --json"))["name"] == "pbx"
