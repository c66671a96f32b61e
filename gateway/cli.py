"""The ``sipgw`` command.

``sipgw serve`` runs the gateway until SIGINT or SIGTERM.  Settings come from
``--config`` (default ``config/gateway.toml`` in the working directory if it
exists, else the built-in defaults); ``--sip-listen``, ``--http-listen``,
``--log-level``, ``--database`` and ``--carrier`` override the file.

The management commands (``account``, ``profile``, ``number``; see
``docs/cli.md``) open the same store as the gateway, call
:mod:`gateway.profiles` and print the result, as text or with ``--json`` as
JSON.  A running gateway picks their changes up by itself
(``store.directory_poll_interval``).

Problems an operator can fix end the command with one line on stderr and a
non-zero status, never a traceback: 2 for a bad command line, setting or
value, 1 for what was refused or failed (not found, conflict, database
unreachable, address in use).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from sqlalchemy.exc import SQLAlchemyError

from gateway import __version__, profiles
from gateway.models import MAX_CHANNELS, AuthMode
from gateway.settings import (
    LOG_LEVELS,
    ConfigError,
    GatewaySettings,
    HostPort,
    load_settings,
    parse_host_port,
)
from gateway.store import Store, StoreError, open_store
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


def _management_options() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    _config_option(common)
    _database_option(common)
    common.add_argument("--json", action="store_true", help="print the result as JSON")
    return common


def _management_commands(commands: Any) -> None:
    common = _management_options()

    account = commands.add_parser("account", help="manage accounts")
    account_actions = account.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = account_actions.add_parser("create", parents=[common], help="create an account")
    create.add_argument("--name", required=True, help="account name (unique)")
    create.add_argument("--email", required=True, help="where credentials are sent")
    create.add_argument("--balance", default="0", metavar="AMOUNT", help="opening credit")
    create.set_defaults(run=_account_create)

    profile = commands.add_parser("profile", help="manage SIP profiles")
    profile_actions = profile.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = profile_actions.add_parser("create", parents=[common], help="create a profile")
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
    show = profile_actions.add_parser(
        "show", parents=[common], help="show a profile with its credentials"
    )
    show.add_argument("name", metavar="NAME", help="profile name")
    show.add_argument("--account", metavar="NAME", help="needed when several accounts use the name")
    show.set_defaults(run=_profile_show)
    set_limit = profile_actions.add_parser(
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
    set_limit.add_argument(
        "--account", metavar="NAME", help="needed when several accounts use the name"
    )
    set_limit.set_defaults(run=_profile_set_limit)
    listing = profile_actions.add_parser("list", parents=[common], help="list profiles")
    listing.add_argument("--account", metavar="NAME", help="only this account's profiles")
    listing.set_defaults(run=_profile_list)

    number = commands.add_parser("number", help="manage numbers (DIDs)")
    number_actions = number.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = number_actions.add_parser(
        "add", parents=[common], help="add E.164 numbers to an account's pool"
    )
    add.add_argument("--account", required=True, metavar="NAME", help="owning account")
    add.add_argument("numbers", nargs="+", metavar="NUMBER", help="E.164, e.g. +441134960000")
    add.set_defaults(run=_number_add)
    assign = number_actions.add_parser(
        "assign", parents=[common], help="deliver a number to a profile of its account"
    )
    assign.add_argument("number", metavar="NUMBER", help="E.164 number")
    assign.add_argument("--profile", required=True, metavar="NAME", help="receiving profile")
    assign.add_argument(
        "--move", action="store_true", help="take it from the profile that has it now"
    )
    assign.set_defaults(run=_number_assign)


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
        "--http-listen",
        type=_address("--http-listen"),
        metavar="HOST:PORT",
        help="HTTP address for /healthz (replaces http.listen)",
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

    from gateway.app import SIP_TRANSPORT, create_app  # noqa: PLC0415

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
# Management commands: each returns (JSON-ready data, text for people).

_Output = tuple[Any, str]


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _pairs(pairs: Sequence[tuple[str, str]]) -> str:
    return _table([(f"{key}:", value) for key, value in pairs])


def _account_document(view: profiles.AccountView) -> dict[str, Any]:
    return {
        "id": view.id,
        "name": view.name,
        "email": view.email,
        "balance": str(view.balance),  # a string keeps the exact decimal
        "created_at": view.created_at.isoformat(),
    }


def _profile_text(document: dict[str, Any]) -> str:
    pairs = [("profile", document["name"]), ("account", document["account"])]
    pairs.append(("auth", document["auth"]))
    if document["auth"] == AuthMode.REGISTRATION:
        pairs.append(("sip username", document["sip_username"]))
        password = document["password"]
        pairs.append(("password", password if password is not None else "(no secret key)"))
        pairs.append(("realm", document["realm"]))
    else:
        ip, port = document["ip"], document["port"]
        pairs.append(("pbx address", f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"))
    transports = ", ".join(document["transports"])
    for address in document["gateway_addresses"]:
        pairs.append(("gateway", f"{address} ({transports})"))
    pairs.append(("channels", str(document["channel_limit"])))
    pairs.append(("numbers", ", ".join(document["numbers"]) or "-"))
    return _pairs(pairs)


def _gateway_addresses(settings: GatewaySettings) -> list[str]:
    return [str(address) for address in settings.sip.listen]


async def _account_create(
    store: Store, args: argparse.Namespace, _settings: GatewaySettings
) -> _Output:
    view = await profiles.create_account(
        store, name=args.name, email=args.email, balance=args.balance
    )
    document = _account_document(view)
    text = _pairs([("account", view.name), ("e-mail", view.email), ("balance", str(view.balance))])
    return document, f"{text}\naccount created"


async def _profile_create(
    store: Store, args: argparse.Namespace, settings: GatewaySettings
) -> _Output:
    view = await profiles.create_profile(
        store,
        account=args.account,
        name=args.name,
        auth=args.auth,
        ip=args.ip,
        port=args.port,
        channels=args.channels,
    )
    document = profiles.profile_document(view, gateway_addresses=_gateway_addresses(settings))
    return document, _profile_text(document) + "\nprofile created"


async def _profile_show(
    store: Store, args: argparse.Namespace, settings: GatewaySettings
) -> _Output:
    view = await profiles.get_profile(store, args.name, account=args.account)
    document = profiles.profile_document(view, gateway_addresses=_gateway_addresses(settings))
    return document, _profile_text(document)


async def _profile_set_limit(
    store: Store, args: argparse.Namespace, settings: GatewaySettings
) -> _Output:
    view = await profiles.set_channel_limit(store, args.name, args.limit, account=args.account)
    document = profiles.profile_document(view, gateway_addresses=_gateway_addresses(settings))
    return document, _profile_text(document) + "\nchannel limit set"


async def _profile_list(
    store: Store, args: argparse.Namespace, settings: GatewaySettings
) -> _Output:
    views = await profiles.list_profiles(store, account=args.account)
    addresses = _gateway_addresses(settings)
    documents = [profiles.profile_document(v, gateway_addresses=addresses) for v in views]
    if not views:
        return documents, "no profiles"
    rows = [("ACCOUNT", "PROFILE", "AUTH", "USERNAME / PBX ADDRESS", "CHANNELS", "NUMBERS")]
    for view in views:
        if view.ip is not None:
            who = f"[{view.ip}]:{view.port}" if ":" in view.ip else f"{view.ip}:{view.port}"
        else:
            who = view.sip_username
        numbers = ", ".join(view.numbers) or "-"
        rows.append(
            (view.account, view.name, view.auth_mode.value, who, str(view.channel_limit), numbers)
        )
    return documents, _table(rows)


async def _number_add(
    store: Store, args: argparse.Namespace, _settings: GatewaySettings
) -> _Output:
    added = await profiles.add_numbers(store, account=args.account, numbers=args.numbers)
    document = {"account": args.account, "numbers": added}
    return document, f"added to account {args.account}: {', '.join(added)}"


async def _number_assign(
    store: Store, args: argparse.Namespace, _settings: GatewaySettings
) -> _Output:
    view = await profiles.assign_number(store, args.number, profile=args.profile, move=args.move)
    document = {"number": view.e164, "account": view.account, "profile": view.profile}
    return document, f"{view.e164} is delivered to profile {view.profile} (account {view.account})"


async def _manage(
    run: Callable[[Store, argparse.Namespace, GatewaySettings], Awaitable[_Output]],
    args: argparse.Namespace,
    settings: GatewaySettings,
) -> _Output:
    async with await open_store(settings) as store:
        return await run(store, args, settings)


def _first_line(exc: BaseException) -> str:
    origin = getattr(exc, "orig", None) or exc
    lines = str(origin).strip().splitlines()
    return lines[0] if lines else type(origin).__name__


def _management(args: argparse.Namespace) -> int:
    """Run one management command; print its result or a one-line error."""
    try:
        settings = _settings(args)
        document, text = asyncio.run(_manage(args.run, args, settings))
    except _StartError as exc:
        sys.stderr.write(f"sipgw: {exc}\n")
        return exc.status
    except profiles.ProfileError as exc:
        sys.stderr.write(f"sipgw: {exc}\n")
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
    if args.json:
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        sys.stdout.write(text + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sipgw`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("account", "profile", "number"):
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
