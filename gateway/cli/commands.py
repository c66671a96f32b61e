"""The ``sipgw`` command.

``sipgw serve`` runs the gateway until SIGINT or SIGTERM.  Settings come from
``--config`` (default ``config/gateway.toml`` in the working directory if it
exists, else the built-in defaults); ``--sip-listen``, ``--sip-advertise``,
``--http-listen``, ``--log-level``, ``--database`` and ``--carrier``
override the file.

The management commands (``account``, ``profile``, ``number``, ``rate``,
``history``, ``token``; see ``docs/cli.md``) open the same store as the
gateway, call the service layer (:mod:`gateway.manage.profiles`,
:mod:`gateway.manage.rates`, :mod:`gateway.manage.history`, :mod:`gateway.manage.tokens`: the
functions the REST API calls too, so no rule is written twice) and print
the result, as text or with ``--json`` as JSON.  A running gateway picks
their changes up by itself (``store.directory_poll_interval``).

Problems an operator can fix end the command with one line on stderr and a
non-zero status, never a traceback: 2 for a bad command line, setting or
value, 1 for what was refused or failed (not found, conflict, database
unreachable, address in use).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shlex
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from sqlalchemy.exc import SQLAlchemyError

from gateway import __version__
from gateway.config.settings import (
    LOG_LEVELS,
    ConfigError,
    GatewaySettings,
    HostPort,
    load_settings,
    parse_host_port,
)
from gateway.manage import history, nodes, profiles, rates, tokens
from gateway.manage.errors import ProfileError
from gateway.manage.mailer import SMTPMailer
from gateway.manage.paging import DEFAULT_LIMIT, MAX_LIMIT, Page
from gateway.store.database import Store, StoreError, open_store
from gateway.store.models import MAX_CHANNELS, AuthMode, TokenRole
from sip.transport import event_loop_factory

__all__ = ["DEFAULT_CONFIG", "EXIT_CONFIG", "EXIT_RUNTIME", "build_parser", "main"]

logger = logging.getLogger("gateway")

DEFAULT_CONFIG = Path("config/gateway.toml")
EXIT_RUNTIME = 1  # could not start (address in use, ...)
EXIT_CONFIG = 2  # bad command line or configuration (argparse uses 2 as well)
EXIT_INTERRUPTED = 130  # interrupted before the signal handlers were in place


class _StartError(Exception):
    """A problem already phrased for the operator."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _address(key: str) -> Callable[[str], HostPort]:
    def convert(text: str) -> HostPort:
        try:
            return parse_host_port(text, key)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(exc.problem) from None

    convert.__name__ = "HOST:PORT"
    return convert


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (``sipgw: ...``), like
    every other error of the command."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("sipgw").strip()
        where = f"{command}: " if command else ""
        self.exit(EXIT_CONFIG, f"sipgw: {where}{message}\n")


def _port(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535, got {text!r}")
    return int(text)


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        metavar="PATH",
        help=f"TOML settings file (default: {DEFAULT_CONFIG} if it exists, else built-in)",
    )


def _database_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database",
        metavar="URL",
        help="database URL, e.g. sqlite+aiosqlite:///var/sipgw.sqlite3 (replaces store.database)",
    )


def _amount_text(text: str) -> str:
    """An amount as typed, without a sign: ``--add`` and ``--withdraw`` say
    which way the money goes (the service checks the amount itself)."""
    if text.strip().startswith(("-", "+")):
        raise argparse.ArgumentTypeError(f"give the amount without a sign, got {text!r}")
    return text


def _management_options() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    _config_option(common)
    _database_option(common)
    common.add_argument("--json", action="store_true", help="print the result as JSON")
    return common


def _paging_options() -> argparse.ArgumentParser:
    paging = _Parser(add_help=False)
    paging.add_argument(
        "--offset", type=_integer, default=0, metavar="N", help="skip the first N (default 0)"
    )
    paging.add_argument(
        "--limit",
        type=_integer,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"show at most N, 1-{MAX_LIMIT} (default {DEFAULT_LIMIT})",
    )
    return paging


def _account_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--account", metavar="NAME", help=what)


_SEVERAL = "needed when several accounts use the name"


def _account_commands(commands: Any, common: argparse.ArgumentParser, paging: Any) -> None:
    account = commands.add_parser("account", help="manage accounts")
    actions = account.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", parents=[common], help="create an account")
    create.add_argument("--name", required=True, help="account name (unique)")
    create.add_argument("--email", required=True, help="where credentials are sent")
    create.add_argument("--balance", default="0", metavar="AMOUNT", help="opening balance")
    create.set_defaults(run=_account_create)
    listing = actions.add_parser("list", parents=[common, paging], help="list accounts")
    listing.set_defaults(run=_account_list)
    show = actions.add_parser("show", parents=[common], help="show an account")
    show.add_argument("name", metavar="NAME", help="account name")
    show.set_defaults(run=_account_show)
    deposit = actions.add_parser(
        "deposit", parents=[common], help="add money paid in to an account's balance"
    )
    deposit.add_argument("name", metavar="NAME", help="account name")
    deposit.add_argument("amount", metavar="AMOUNT", help="more than zero, e.g. 25.00")
    deposit.set_defaults(run=_account_deposit)


def _profile_commands(commands: Any, common: argparse.ArgumentParser, paging: Any) -> None:
    profile = commands.add_parser("profile", help="manage SIP profiles")
    actions = profile.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser(
        "create", parents=[common], help="create a profile (e-mails registration credentials)"
    )
    create.add_argument("--account", required=True, metavar="NAME", help="owning account")
    create.add_argument("--name", required=True, help="profile name (unique in the account)")
    create.add_argument(
        "--auth",
        required=True,
        choices=[m.value for m in AuthMode],
        help="registration: generated SIP credentials; ip: trusted by --ip and --port",
    )
    create.add_argument("--ip", metavar="ADDR", help="the PBX's IP address (ip profiles)")
    create.add_argument(
        "--port", type=_port, metavar="PORT", help="the PBX's UDP port (ip profiles)"
    )
    create.add_argument(
        "--channels",
        type=_integer,
        default=MAX_CHANNELS,
        metavar="N",
        help=f"concurrent calls allowed, 1-{MAX_CHANNELS} (default {MAX_CHANNELS})",
    )
    create.set_defaults(run=_profile_create)

    show = actions.add_parser("show", parents=[common], help="show a profile with its credentials")
    show.add_argument("name", metavar="NAME", help="profile name")
    _account_option(show, _SEVERAL)
    show.set_defaults(run=_profile_show)

    listing = actions.add_parser("list", parents=[common, paging], help="list profiles")
    _account_option(listing, "only this account's profiles")
    listing.set_defaults(run=_profile_list)

    rename = actions.add_parser("rename", parents=[common], help="rename a profile")
    rename.add_argument("name", metavar="NAME", help="profile name")
    rename.add_argument("new_name", metavar="NEW_NAME", help="new name, unique in the account")
    _account_option(rename, _SEVERAL)
    rename.set_defaults(run=_profile_rename)

    set_limit = actions.add_parser(
        "set-limit",
        parents=[common],
        help="change a profile's channel limit; running gateways apply it without a restart",
    )
    set_limit.add_argument("name", metavar="NAME", help="profile name")
    set_limit.add_argument(
        "limit",
        type=_integer,
        metavar="LIMIT",
        help=f"concurrent calls allowed, 1-{MAX_CHANNELS}",
    )
    _account_option(set_limit, _SEVERAL)
    set_limit.set_defaults(run=_profile_set_limit)

    credit = actions.add_parser(
        "credit",
        parents=[common],
        help="move money from the account's balance to the profile, or back",
    )
    credit.add_argument("name", metavar="NAME", help="profile name")
    way = credit.add_mutually_exclusive_group(required=True)
    way.add_argument(
        "--add", type=_amount_text, metavar="AMOUNT", help="from the account to the profile"
    )
    way.add_argument(
        "--withdraw",
        type=_amount_text,
        metavar="AMOUNT",
        help="from the profile back to the account",
    )
    _account_option(credit, _SEVERAL)
    credit.set_defaults(run=_profile_credit)

    remove = actions.add_parser(
        "delete",
        parents=[common],
        help="delete a profile: credit and numbers go back to the account, history is erased",
    )
    remove.add_argument("name", metavar="NAME", help="profile name")
    remove.add_argument(
        "--confirm", required=True, metavar="NAME", help="the profile name again, to confirm"
    )
    remove.add_argument(
        "--end-calls", action="store_true", help="delete even with calls up, ending them"
    )
    _account_option(remove, _SEVERAL)
    remove.set_defaults(run=_profile_delete)


def _number_commands(commands: Any, common: argparse.ArgumentParser, paging: Any) -> None:
    number = commands.add_parser("number", help="manage numbers (DIDs)")
    actions = number.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = actions.add_parser("add", parents=[common], help="add E.164 numbers to an account's pool")
    add.add_argument("--account", required=True, metavar="NAME", help="owning account")
    add.add_argument("numbers", nargs="+", metavar="NUMBER", help="E.164, e.g. +441134960000")
    add.set_defaults(run=_number_add)
    assign = actions.add_parser(
        "assign", parents=[common], help="deliver a number to a profile of its account"
    )
    assign.add_argument("number", metavar="NUMBER", help="E.164 number")
    assign.add_argument("--profile", required=True, metavar="NAME", help="receiving profile")
    assign.add_argument(
        "--move", action="store_true", help="take it from the profile that has it now"
    )
    _account_option(assign, "the account the number must belong to")
    assign.set_defaults(run=_number_assign)
    unassign = actions.add_parser(
        "unassign", parents=[common], help="take a number from its profile, back to the pool"
    )
    unassign.add_argument("number", metavar="NUMBER", help="E.164 number")
    _account_option(unassign, "the account the number must belong to")
    unassign.set_defaults(run=_number_unassign)
    listing = actions.add_parser("list", parents=[common, paging], help="list an account's numbers")
    listing.add_argument("--account", required=True, metavar="NAME", help="owning account")
    listing.add_argument("--profile", metavar="NAME", help="only the numbers of this profile")
    listing.set_defaults(run=_number_list)


def _rate_commands(commands: Any, common: argparse.ArgumentParser, paging: Any) -> None:
    rate = commands.add_parser("rate", help="manage the rate table (price per minute)")
    actions = rate.add_subparsers(dest="action", metavar="ACTION", required=True)
    set_rate = actions.add_parser(
        "set", parents=[common], help="set the price per minute of a destination prefix"
    )
    set_rate.add_argument(
        "prefix", metavar="PREFIX", help="E.164 digits, e.g. 44 or 4420; '' for the default rate"
    )
    set_rate.add_argument("price", metavar="PRICE", help="per minute, e.g. 0.0120")
    set_rate.set_defaults(run=_rate_set)
    delete = actions.add_parser("delete", parents=[common], help="remove a prefix's rate")
    delete.add_argument("prefix", metavar="PREFIX", help="as given to 'rate set'")
    delete.set_defaults(run=_rate_delete)
    listing = actions.add_parser("list", parents=[common, paging], help="list the rate table")
    listing.set_defaults(run=_rate_list)


def _history_command(commands: Any, common: argparse.ArgumentParser, paging: Any) -> None:
    history = commands.add_parser(
        "history", parents=[common, paging], help="a profile's call history (or its CSV report)"
    )
    history.add_argument("profile", metavar="PROFILE", help="profile name")
    _account_option(history, _SEVERAL)
    history.add_argument(
        "--since", metavar="ISO", help="calls that started at or after, e.g. 2024-06-01"
    )
    history.add_argument("--until", metavar="ISO", help="calls that started before")
    history.add_argument(
        "--csv", action="store_true", help="the whole period as CSV on stdout (no paging)"
    )
    history.set_defaults(run=_history)


def _token_commands(commands: Any, common: argparse.ArgumentParser, paging: Any) -> None:
    token = commands.add_parser("token", help="manage REST API tokens")
    actions = token.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser(
        "create", parents=[common], help="create a token and print its secret (once)"
    )
    create.add_argument("--name", required=True, help="token name (unique)")
    create.add_argument(
        "--role",
        required=True,
        choices=[r.value for r in TokenRole],
        help="operator: every account; account: one account (--account)",
    )
    create.add_argument("--account", metavar="NAME", help="the account of an account token")
    create.set_defaults(run=_token_create)
    listing = actions.add_parser("list", parents=[common, paging], help="list tokens")
    listing.set_defaults(run=_token_list)
    revoke = actions.add_parser("revoke", parents=[common], help="revoke a token at once")
    revoke.add_argument("name", metavar="NAME", help="token name")
    revoke.set_defaults(run=_token_revoke)


#: The management commands: each opens the store and calls the service.
MANAGEMENT_COMMANDS = ("account", "profile", "number", "rate", "history", "token")


def _management_commands(commands: Any) -> None:
    common, paging = _management_options(), _paging_options()
    _account_commands(commands, common, paging)
    _profile_commands(commands, common, paging)
    _number_commands(commands, common, paging)
    _rate_commands(commands, common, paging)
    _history_command(commands, common, paging)
    _token_commands(commands, common, paging)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sipgw", description="SIP trunk gateway: registrar and stateful proxy.")
    parser.add_argument("--version", action="version", version=f"sipgw {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the gateway until SIGINT/SIGTERM")
    _config_option(serve)
    serve.add_argument(
        "--sip-listen",
        action="append",
        type=_address("--sip-listen"),
        metavar="HOST:PORT",
        help="SIP address for UDP and TCP (repeatable; replaces sip.listen)",
    )
    serve.add_argument(
        "--sip-advertise",
        metavar="HOST[:PORT]",
        help="address PBXs and the carrier reach the gateway at, put in Via and"
        ' Record-Route (replaces sip.advertise; "" for none)',
    )
    serve.add_argument(
        "--http-listen",
        type=_address("--http-listen"),
        metavar="HOST:PORT",
        help="HTTP address of the REST API (/api/v1), /metrics and /healthz (replaces http.listen)",
    )
    serve.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        metavar="LEVEL",
        help=f"one of {', '.join(LOG_LEVELS)} (replaces log.level)",
    )
    _database_option(serve)
    serve.add_argument(
        "--carrier",
        metavar="URI",
        help="carrier for outbound calls, e.g. sip:203.0.113.5:5060 (replaces carrier.uri)",
    )
    _management_commands(commands)
    return parser


def _settings(args: argparse.Namespace) -> GatewaySettings:
    path: Path | None = args.config
    if path is None and DEFAULT_CONFIG.is_file():
        path = DEFAULT_CONFIG
    try:
        settings = load_settings(path) if path is not None else GatewaySettings()
        return settings.with_overrides(
            sip_listen=getattr(args, "sip_listen", None),
            sip_advertise=getattr(args, "sip_advertise", None),
            http_listen=getattr(args, "http_listen", None),
            log_level=getattr(args, "log_level", None),
            database=args.database,
            carrier=getattr(args, "carrier", None),
        )
    except ConfigError as exc:
        raise _StartError(str(exc), EXIT_CONFIG) from None


def _why(exc: OSError) -> str:
    if exc.strerror and exc.strerror.startswith("cannot"):
        return exc.strerror  # already phrased by sip.transport
    return exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc))


async def serve(settings: GatewaySettings) -> int:
    """Run until SIGINT/SIGTERM; return the exit status."""
    # Imported here: the management commands never need the SIP service and
    # aiohttp, and start faster without them.
    from aiohttp import web  # noqa: PLC0415

    from gateway.web.app import NODE, SIP_TRANSPORT, create_app  # noqa: PLC0415

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    runner = web.AppRunner(create_app(settings), access_log=None, shutdown_timeout=5.0)
    try:
        try:
            await runner.setup()  # opens the store, binds the SIP listeners (cleanup_ctx)
        except OSError as exc:
            raise _StartError(_why(exc), EXIT_RUNTIME) from None
        except StoreError as exc:
            raise _StartError(str(exc), EXIT_RUNTIME) from None
        http = settings.http.listen
        site = web.TCPSite(runner, http.host, http.port)
        try:
            await site.start()
        except OSError as exc:
            message = f"cannot listen for HTTP on {http}: {_why(exc)}"
            raise _StartError(message, EXIT_RUNTIME) from None
        bound = runner.addresses[0] if runner.addresses else (http.host, http.port)
        # The CLI asks this node (calls up, a deletion settled) where it listens.
        await runner.app[NODE].set_http_address(_host_port(str(bound[0]), bound[1]))
        sip = ", ".join(str(a) for a in runner.app[SIP_TRANSPORT].listeners)
        logger.info("sipgw %s serving SIP on %s, HTTP on %s", __version__, sip, http)
        await stop.wait()
        logger.info("shutting down")
    finally:
        await runner.cleanup()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return 0


# ---------------------------------------------------------------------------
# Management commands: each returns (JSON-ready data, text for people), or
# None when it wrote its output itself (the CSV report).

_Output = tuple[Any, str] | None


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _pairs(pairs: Sequence[tuple[str, str]]) -> str:
    return _table([(f"{key}:", value) for key, value in pairs])


def _listing(
    page: Page[Any],
    documents: list[dict[str, Any]],
    heading: Sequence[str],
    rows: Sequence[Sequence[str]],
    empty: str,
) -> tuple[dict[str, Any], str]:
    """A page as JSON (:func:`profiles.page_document`) and as a table, with
    a line saying where the page sits when the list goes beyond it."""
    document = profiles.page_document(page, documents)
    if not page.items:
        if page.offset:
            return document, f"nothing at offset {page.offset} ({page.total} in all)"
        return document, empty
    text = _table([heading, *rows])
    if page.offset or page.next_offset is not None:
        first, last = page.offset + 1, page.offset + len(page.items)
        following = "" if page.next_offset is None else f"; next: --offset {page.next_offset}"
        text += f"\n{first}-{last} of {page.total}{following}"
    return document, text


def _host_port(host: str, port: object) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _profile_text(document: dict[str, Any]) -> str:
    pairs = [("profile", document["name"]), ("account", document["account"])]
    pairs.append(("auth", document["auth"]))
    if document["auth"] == AuthMode.REGISTRATION:
        pairs.append(("sip username", document["sip_username"]))
        password = document["password"]
        pairs.append(("password", password if password is not None else "(no secret key)"))
        pairs.append(("realm", document["realm"]))
    else:
        pairs.append(("pbx address", _host_port(document["ip"], document["port"])))
    transports = ", ".join(document["transports"])
    for address in document["gateway_addresses"]:
        pairs.append(("gateway", f"{address} ({transports})"))
    if not document["gateway_addresses"]:
        # Only a running gateway knows where PBXs reach it (gateway.manage.nodes).
        pairs.append(("gateway", NO_GATEWAY))
    pairs.append(("channels", str(document["channel_limit"])))
    pairs.append(("credit", document["credit"]))
    incoming = document["incoming"]
    numbers = ", ".join(incoming["numbers"])
    pairs.append(("numbers", f"{numbers} (to {incoming['delivered_to']})" if numbers else "-"))
    return _pairs(pairs)


def _account_text(view: profiles.AccountView) -> str:
    return _pairs([("account", view.name), ("e-mail", view.email), ("balance", str(view.balance))])


#: What ``profile show`` says for the gateway's address when none runs.
NO_GATEWAY = (
    "none running, so no address to give: start the gateway (sipgw serve) and run"
    " 'sipgw profile show' again"
)


async def _gateway_addresses(store: Store) -> tuple[list[str], list[str]]:
    """What the running gateways advertise (:mod:`gateway.manage.nodes`): their
    addresses and transports, both empty when none runs."""
    return nodes.advertised(await nodes.live_nodes(store))


async def _document(store: Store, view: profiles.ProfileView) -> dict[str, Any]:
    addresses, transports = await _gateway_addresses(store)
    return profiles.profile_document(view, gateway_addresses=addresses, transports=transports)


# -- accounts ----------------------------------------------------------------


async def _account_create(
    store: Store, args: argparse.Namespace, _settings: GatewaySettings
) -> _Output:
    view = await profiles.create_account(
        store, name=args.name, email=args.email, balance=args.balance
    )
    return profiles.account_document(view), f"{_account_text(view)}\naccount created"


async def _account_list(
    store: Store, args: argparse.Namespace, _settings: GatewaySettings
) -> _Output:
    page = await profiles.list_accounts(store, offset=args.offset, limit=args.limit)
    documents = [profiles.account_document(v) for v in page.items]
    rows = [(v.name, v.email, str(v.balance)) for v in page.items]
    return _listing(page, documents, ("ACCOUNT", "E-MAIL", "BALANCE"), rows, "no accounts")


async def _account_show(
    store: Store, args: argparse.Namespace, _settings: GatewaySettings
) -> _Output:
    view = await profiles.get_account(store, args.name)
    return profiles.account_document(view), _account_text(view)


async def _account_deposit(
    store: Store, args: argparse.Namespace, _settings: GatewaySettings
) -> _Output:
    view = await profiles.deposit(store, args.name, args.amount)
    return profiles.account_document(view), f"{_account_text(view)}\ndeposited"


# -- profiles ----------------------------------------------------------------


async def _profile_create(
    store: Store, args: argparse.Namespace, settings: GatewaySettings
) -> _Output:
    mailer = SMTPMailer(settings.smtp) if settings.smtp.host else None
    addresses, transports = await _gateway_addresses(store)
    view, notice = await profiles.create_profile_and_notify(
        store,
        mailer,
        gateway_addresses=addresses,
        transports=transports,
        account=args.account,
        name=args.name,
        auth=args.auth,
        ip=args.ip,
        port=args.port,
        channels=args.channels,
    )
    document = await _document(store, view)
    document["email"] = {"sent": notice.emailed, "to": notice.recipient, "error": notice.error}
    text = _profile_text(document) + "\nprofile created"
    if notice.emailed:
        text += f"\ncredentials e-mailed to {notice.recipient}"
    elif notice.error is not None:
        # The profile exists (exit 0); the operator must hand the
        # credentials over another way.
        sys.stderr.write(
            f"sipgw: warning: credentials not e-mailed to {notice.recipient}: {notice.error}"
            f" (they stay retrievable: sipgw profile show {shlex.quote(view.name)})\n"
        )
        text += "\ncredentials NOT e-mailed (see the warning)"
    elif view.auth_mode is AuthMode.REGISTRATION:
        text += "\ncredentials not e-mailed: e-mail is off (smtp.host is empty)"
    return document, text


async def _profile_show(
    store: Store, args: argparse.Namespace, settings: GatewaySettings
) -> _Output:
    view = await profiles.get_profile(store, args.name, account=args.account)
    document = await _document(store, view)
    return document, _profile_text(document)


async def _profile_list(
    store: Store, args: argparse.Namespace, settings: GatewaySettings
) -> _Output:
    page = await profiles.list_profiles(
        store, account=args.account, offset=args.offset, limit=args.limit
    )
    addresses, transports = await _gateway_addresses(store)
    documents = [
        profiles.profile_document(v, gateway_addresses=addresses, transports=transports)
        for v in page.items
    ]
    heading = ("ACCOUNT", "PROFILE", "AUTH", "USERNAME / PBX ADDRESS", "CHANNELS", "CREDIT")
    rows = []
    for view in page.items:
        who = view.sip_username if view.ip is None else _host_port(view.ip, view.port)
        numbers = ", ".join(view.numbers) or "-"
        rows.append(
            (
                view.account,
                view.name,
                view.auth_mode.value,
                who,
                str(view.channel_limit),
                str(view.credit),
                numbers,
            )
        )
    return _listing(page, documents, (*heading, "NUMBERS"), rows, "no profiles")


async def _profile_rename(
    store: Store, args: argparse.Namespace, settings: GatewaySettings
) -> _Output:
    view = await profiles.rename_profile(store, args.name, args.new_name, account=args.account)
    document = await _document(store, view)
    return document, _profile_text(document) + f"\nprofile {args.name} renamed {view.name}"


async def _profile_set_limit(
    store: Store, args: argparse.Namespace, settings: GatewaySettings
) -> _Output:
    view = await profiles.set_channel_limit(store, args.name, args.limit, account=args.account)
    document = await _document(store, view)
    return document, _profile_text(document) + "\nchannel limit set"


async def _profile_credit(
    store: Store, args: argparse.Namespace, settings: GatewaySettings
) -> _Output:
    amount = args.add if args.add is not None else "-" + args.withdraw.strip()
    view, owner = await profiles.allocate_credit(store, args.name, amount, account=args.account)
    document = {
        "profile": await _document(store, view),
        "account": profiles.account_document(owner),
    }
    done = "added to the profile" if args.add is not None else "withdrawn to the account"
    text = _pairs(
        [
            ("profile", view.name),
            ("credit", str(view.credit)),
            ("account", owner.name),
            ("balance", str(owner.balance)),
        ]
    )
    return document, f"{text}\n{profiles.parse_amount(amount, 'amount').copy_abs()} {done}"


async def _profile_delete(
    store: Store, args: argparse.Namespace, settings: GatewaySettings
) -> _Output:
    report = await profiles.delete_profile(
        store,
        args.name,
        account=args.account,
        confirm=args.confirm,
        end_calls=args.end_calls,
        active_calls=_active_calls(store, settings),
        settle=nodes.settle_deletion(store),
    )
    text = _pairs(
        [
            ("profile", report.name),
            ("account", report.account),
            ("calls charged", str(report.charged)),
            ("credit returned", str(report.credit_returned)),
            ("balance now", str(report.balance)),
            ("numbers released", ", ".join(report.numbers_released) or "-"),
            ("records erased", str(report.records_erased)),
            ("calls ended", str(report.calls_up)),
        ]
    )
    return profiles.deletion_document(report), f"{text}\nprofile deleted"


def _active_calls(store: Store, settings: GatewaySettings) -> profiles.ActiveCalls:
    """How many calls a profile has up, asked where the gateways keep count:
    Redis for ``[admission] backend = "redis"`` (every node's channels),
    else every running gateway's ``GET /healthz`` (:func:`gateway.manage.nodes.calls_up`)."""

    async def count(view: profiles.ProfileView) -> int:
        admission = settings.admission
        if admission.backend == "redis":
            return await _calls_in_redis(settings, view)
        return await nodes.calls_up(store, account=view.account, profile=view.name)

    return count


async def _calls_in_redis(settings: GatewaySettings, view: profiles.ProfileView) -> int:
    # Imported here: only this command needs Redis.
    from redis.exceptions import RedisError  # noqa: PLC0415

    from admission import RedisAdmission  # noqa: PLC0415

    config = settings.admission
    counter = RedisAdmission(
        config.redis_url, prefix=config.key_prefix, lease_seconds=config.lease_seconds
    )
    try:
        return await counter.in_use(view.id)
    except (RedisError, OSError) as exc:
        message = f"cannot ask Redis ({config.redis_url}) how many calls are up: {exc}"
        raise _StartError(message, EXIT_RUNTIME) from None
    finally:
        await counter.close()


# -- numbers -----------------------------------------------------------------


async def _number_add(
    store: Store, args: argparse.Namespace, _settings: GatewaySettings
) -> _Output:
    added = await profiles.add_numbers(store, account=args.account, numbers=args.numbers)
    document = {"account": args.account, "numbers": added}
    return document, f"added to account {args.account}: {', '.join(added)}"


async def _number_assign(
    store: Store, args: argparse.Namespace, _settings: GatewaySettings
) -> _Output:
    view = await profiles.assign_number(
        store, args.number, profile=args.profile, move=args.move, account=args.account
    )
    text = f"{view.e164} is delivered to profile {view.profile} (account {view.account})"
    return profiles.number_document(view), text


async def _number_unassign(
    store: Store, args: argparse.Namespace, _settings: GatewaySettings
) -> _Output:
    view = await profiles.unassign_number(store, args.number, account=args.account)
    text = f"{view.e164} is back in the pool of account {view.account}"
    return profiles.number_document(view), text


async def _number_list(
    store: Store, args: argparse.Namespace, _settings: GatewaySettings
) -> _Output:
    page = await profiles.list_numbers(
        store, account=args.account, profile=args.profile, offset=args.offset, limit=args.limit
    )
    documents = [profiles.number_document(v) for v in page.items]
    rows = [(v.e164, v.profile or "- (pool)") for v in page.items]
    return _listing(page, documents, ("NUMBER", "PROFILE"), rows, "no numbers")


# -- rates -------------------------------------------------------------------


def _prefix_text(prefix: str) -> str:
    return prefix or "(default)"


async def _rate_set(store: Store, args: argparse.Namespace, _settings: GatewaySettings) -> _Output:
    view = await rates.set_rate(store, args.prefix, args.price)
    text = f"calls to {_prefix_text(view.prefix)}: {view.price_per_minute} per minute"
    return rates.rate_document(view), text


async def _rate_delete(
    store: Store, args: argparse.Namespace, _settings: GatewaySettings
) -> _Output:
    view = await rates.delete_rate(store, args.prefix)
    return rates.rate_document(view), f"rate for {_prefix_text(view.prefix)} deleted"


async def _rate_list(store: Store, args: argparse.Namespace, _settings: GatewaySettings) -> _Output:
    page = await rates.list_rates(store, offset=args.offset, limit=args.limit)
    documents = [rates.rate_document(v) for v in page.items]
    rows = [(_prefix_text(v.prefix), str(v.price_per_minute)) for v in page.items]
    return _listing(page, documents, ("PREFIX", "PER MINUTE"), rows, "no rates")


# -- history -----------------------------------------------------------------


async def _history(store: Store, args: argparse.Namespace, _settings: GatewaySettings) -> _Output:
    since = None if args.since is None else history.parse_time(args.since, "--since")
    until = None if args.until is None else history.parse_time(args.until, "--until")
    if args.csv:
        if args.json:
            raise profiles.ValidationError("--csv and --json: choose one")
        lines = history.history_csv(
            store, args.profile, account=args.account, since=since, until=until
        )
        async with contextlib.aclosing(lines):
            # The first line comes after the checks: an error leaves stdout empty.
            sys.stdout.write(await anext(lines))
            async for line in lines:
                sys.stdout.write(line)
        sys.stdout.flush()
        return None
    page = await history.call_history(
        store,
        args.profile,
        account=args.account,
        since=since,
        until=until,
        offset=args.offset,
        limit=args.limit,
    )
    documents = [history.record_document(r) for r in page.items]
    heading = ("STARTED", "DIRECTION", "CALLER", "CALLEE", "STATUS", "SECONDS", "COST")
    rows = [
        (
            r.started_at.isoformat(timespec="seconds"),
            r.direction,
            r.caller,
            r.callee,
            str(r.final_status),
            str(r.duration_seconds),
            str(r.cost),
        )
        for r in page.items
    ]
    return _listing(page, documents, heading, rows, "no calls")


# -- tokens ------------------------------------------------------------------


async def _token_create(
    store: Store, args: argparse.Namespace, _settings: GatewaySettings
) -> _Output:
    view, secret = await tokens.create_token(
        store, name=args.name, role=args.role, account=args.account
    )
    document = {**tokens.token_document(view), "secret": secret}
    pairs = [("token", view.name), ("role", view.role.value)]
    if view.account is not None:
        pairs.append(("account", view.account))
    pairs.append(("secret", secret))
    text = _pairs(pairs) + "\ntoken created: the secret is shown only this once"
    return document, text


async def _token_list(
    store: Store, args: argparse.Namespace, _settings: GatewaySettings
) -> _Output:
    page = await tokens.list_tokens(store, offset=args.offset, limit=args.limit)
    documents = [tokens.token_document(v) for v in page.items]
    rows = [
        (v.name, v.role.value, v.account or "-", v.created_at.isoformat(timespec="seconds"))
        for v in page.items
    ]
    return _listing(page, documents, ("TOKEN", "ROLE", "ACCOUNT", "CREATED"), rows, "no tokens")


async def _token_revoke(
    store: Store, args: argparse.Namespace, _settings: GatewaySettings
) -> _Output:
    view = await tokens.revoke_token(store, args.name)
    return tokens.token_document(view), f"token {view.name} revoked"


async def _manage(
    run: Callable[[Store, argparse.Namespace, GatewaySettings], Awaitable[_Output]],
    args: argparse.Namespace,
    settings: GatewaySettings,
) -> _Output:
    async with await open_store(settings) as store:
        return await run(store, args, settings)


#: The options of this CLI that give a service field, where the command's
#: own spelling is not the field's name (the service's messages name
#: fields; the REST API's fields have those names).
_OPTION_OF_FIELD = {
    "ip": "--ip",
    "port": "--port",
    "account": "--account",
    "email": "--email",
    "balance": "--balance",
    "end_calls": "--end-calls",
    "move": "--move",
    "channel_limit": "--channels",
}


def _hint(exc: ProfileError, args: argparse.Namespace) -> str:
    """The CLI's words for what to do about a refused input: its option."""
    command = (args.command, getattr(args, "action", None))
    if exc.field == "number" and isinstance(exc, profiles.NotFoundError):
        return " (an operator adds it with 'sipgw number add')"
    if exc.field == "channel_limit" and command == ("profile", "set-limit"):
        return " (LIMIT)"
    option = _OPTION_OF_FIELD.get(exc.field or "")
    return "" if option is None else f" ({option})"


def _first_line(exc: BaseException) -> str:
    origin = getattr(exc, "orig", None) or exc
    lines = str(origin).strip().splitlines()
    return lines[0] if lines else type(origin).__name__


def _management(args: argparse.Namespace) -> int:
    """Run one management command; print its result or a one-line error."""
    try:
        settings = _settings(args)
        output = asyncio.run(_manage(args.run, args, settings))
    except _StartError as exc:
        sys.stderr.write(f"sipgw: {exc}\n")
        return exc.status
    except ProfileError as exc:
        sys.stderr.write(f"sipgw: {exc}{_hint(exc, args)}\n")
        return exc.exit_status
    except StoreError as exc:
        sys.stderr.write(f"sipgw: {exc}\n")
        return EXIT_RUNTIME
    except SQLAlchemyError as exc:
        sys.stderr.write(f"sipgw: database error: {_first_line(exc)}\n")
        return EXIT_RUNTIME
    except OSError as exc:
        sys.stderr.write(f"sipgw: {_why(exc)}\n")
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    if output is None:
        return 0  # written as it came (the CSV report)
    document, text = output
    if args.json:
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        sys.stdout.write(text + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sipgw`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in MANAGEMENT_COMMANDS:
        return _management(args)
    if args.command != "serve":
        parser.print_help(sys.stderr)
        return EXIT_CONFIG
    try:
        settings = _settings(args)
        logging.basicConfig(
            level=settings.log.level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            return runner.run(serve(settings))
    except _StartError as exc:
        sys.stderr.write(f"sipgw: {exc}\n")
        return exc.status
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
