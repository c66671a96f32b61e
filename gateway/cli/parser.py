"""The command line of ``sipgw``: its words (argparse), the settings it
selects and the exit statuses.

``sipgw serve`` (:mod:`gateway.cli.serve`) and the management commands
(:mod:`gateway.cli.commands`, which says what each one runs) take their
settings from ``--config`` (default ``config/gateway.toml`` in the working
directory if it exists, else the built-in defaults); ``serve``'s
``--sip-listen``, ``--sip-advertise``, ``--http-listen``, ``--log-level``,
``--database`` and ``--carrier`` override the file, as the management
commands' ``--database`` does.

A bad command line ends with one line on stderr (``sipgw: ...``) and status
2, like every other problem an operator can fix: 2 for a bad command line,
setting or value, 1 for what was refused or failed.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from gateway import __version__
from gateway.config.settings import (
    LOG_LEVELS,
    ConfigError,
    GatewaySettings,
    HostPort,
    load_settings,
    parse_host_port,
)
from gateway.manage.paging import DEFAULT_LIMIT, MAX_LIMIT
from gateway.store.models import MAX_CHANNELS, AuthMode, TokenRole

__all__ = [
    "DEFAULT_CONFIG",
    "EXIT_CONFIG",
    "EXIT_INTERRUPTED",
    "EXIT_RUNTIME",
    "MANAGEMENT_COMMANDS",
    "StartError",
    "build_parser",
    "settings_from",
]

DEFAULT_CONFIG = Path("config/gateway.toml")
EXIT_RUNTIME = 1  # could not start (address in use, ...)
EXIT_CONFIG = 2  # bad command line or configuration (argparse uses 2 as well)
EXIT_INTERRUPTED = 130  # interrupted before the signal handlers were in place


class StartError(Exception):
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
    actions.add_parser("list", parents=[common, paging], help="list accounts")
    show = actions.add_parser("show", parents=[common], help="show an account")
    show.add_argument("name", metavar="NAME", help="account name")
    deposit = actions.add_parser(
        "deposit", parents=[common], help="add money paid in to an account's balance"
    )
    deposit.add_argument("name", metavar="NAME", help="account name")
    deposit.add_argument("amount", metavar="AMOUNT", help="more than zero, e.g. 25.00")


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

    show = actions.add_parser("show", parents=[common], help="show a profile with its credentials")
    show.add_argument("name", metavar="NAME", help="profile name")
    _account_option(show, _SEVERAL)

    listing = actions.add_parser("list", parents=[common, paging], help="list profiles")
    _account_option(listing, "only this account's profiles")

    rename = actions.add_parser("rename", parents=[common], help="rename a profile")
    rename.add_argument("name", metavar="NAME", help="profile name")
    rename.add_argument("new_name", metavar="NEW_NAME", help="new name, unique in the account")
    _account_option(rename, _SEVERAL)

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


def _number_commands(commands: Any, common: argparse.ArgumentParser, paging: Any) -> None:
    number = commands.add_parser("number", help="manage numbers (DIDs)")
    actions = number.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = actions.add_parser("add", parents=[common], help="add E.164 numbers to an account's pool")
    add.add_argument("--account", required=True, metavar="NAME", help="owning account")
    add.add_argument("numbers", nargs="+", metavar="NUMBER", help="E.164, e.g. +441134960000")
    assign = actions.add_parser(
        "assign", parents=[common], help="deliver a number to a profile of its account"
    )
    assign.add_argument("number", metavar="NUMBER", help="E.164 number")
    assign.add_argument("--profile", required=True, metavar="NAME", help="receiving profile")
    assign.add_argument(
        "--move", action="store_true", help="take it from the profile that has it now"
    )
    _account_option(assign, "the account the number must belong to")
    unassign = actions.add_parser(
        "unassign", parents=[common], help="take a number from its profile, back to the pool"
    )
    unassign.add_argument("number", metavar="NUMBER", help="E.164 number")
    _account_option(unassign, "the account the number must belong to")
    listing = actions.add_parser("list", parents=[common, paging], help="list an account's numbers")
    listing.add_argument("--account", required=True, metavar="NAME", help="owning account")
    listing.add_argument("--profile", metavar="NAME", help="only the numbers of this profile")


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
    delete = actions.add_parser("delete", parents=[common], help="remove a prefix's rate")
    delete.add_argument("prefix", metavar="PREFIX", help="as given to 'rate set'")
    actions.add_parser("list", parents=[common, paging], help="list the rate table")


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
    actions.add_parser("list", parents=[common, paging], help="list tokens")
    revoke = actions.add_parser("revoke", parents=[common], help="revoke a token at once")
    revoke.add_argument("name", metavar="NAME", help="token name")


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
    """Every word of ``sipgw``; what each management command runs is
    :data:`gateway.cli.commands.COMMANDS`, keyed by ``(command, action)``."""
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


def settings_from(args: argparse.Namespace) -> GatewaySettings:
    """The settings a command runs with: ``--config`` (else
    :data:`DEFAULT_CONFIG` if it exists, else the defaults) with the command
    line's overrides."""
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
        raise StartError(str(exc), EXIT_CONFIG) from None
