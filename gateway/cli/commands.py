"""The management commands of ``sipgw`` and its entry point, :func:`main`.

The management commands (``account``, ``profile``, ``number``, ``rate``,
``history``, ``token``; see ``docs/cli.md``) open the same store as the
gateway, call the service layer (:mod:`gateway.manage.profiles`,
:mod:`gateway.manage.rates`, :mod:`gateway.manage.history`,
:mod:`gateway.manage.tokens`: the functions the REST API calls too, so no
rule is written twice) and print the result, as text
(:mod:`gateway.cli.output`) or with ``--json`` as JSON.  A running gateway
picks their changes up by itself (``store.directory_poll_interval``).
Their words are :mod:`gateway.cli.parser`'s; :data:`COMMANDS` says what
each runs.  ``sipgw serve`` is :mod:`gateway.cli.serve`.

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
import shlex
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from gateway.cli import output
from gateway.cli.parser import (
    EXIT_CONFIG,
    EXIT_INTERRUPTED,
    EXIT_RUNTIME,
    MANAGEMENT_COMMANDS,
    StartError,
    build_parser,
    settings_from,
)
from gateway.cli.serve import serve_command
from gateway.config.settings import GatewaySettings
from gateway.manage import history, nodes, profiles, rates, tokens
from gateway.manage.errors import ProfileError
from gateway.manage.mailer import SMTPMailer
from gateway.store.database import Store, StoreError, open_store
from gateway.store.models import AuthMode

__all__ = ["COMMANDS", "Command", "main"]


# Management commands: each returns (JSON-ready data, text for people), or
# None when it wrote its output itself (the CSV report).

_Output = tuple[Any, str] | None
#: A management command: the store opened, the command line, the settings.
Command = Callable[[Store, argparse.Namespace, GatewaySettings], Awaitable[_Output]]


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
    return profiles.account_document(view), f"{output.account_text(view)}\naccount created"


async def _account_list(
    store: Store, args: argparse.Namespace, _settings: GatewaySettings
) -> _Output:
    page = await profiles.list_accounts(store, offset=args.offset, limit=args.limit)
    documents = [profiles.account_document(v) for v in page.items]
    rows = [(v.name, v.email, str(v.balance)) for v in page.items]
    return output.listing(page, documents, ("ACCOUNT", "E-MAIL", "BALANCE"), rows, "no accounts")


async def _account_show(
    store: Store, args: argparse.Namespace, _settings: GatewaySettings
) -> _Output:
    view = await profiles.get_account(store, args.name)
    return profiles.account_document(view), output.account_text(view)


async def _account_deposit(
    store: Store, args: argparse.Namespace, _settings: GatewaySettings
) -> _Output:
    view = await profiles.deposit(store, args.name, args.amount)
    return profiles.account_document(view), f"{output.account_text(view)}\ndeposited"


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
    # The addresses just put in the e-mail, not read from the store again.
    document = profiles.profile_document(view, gateway_addresses=addresses, transports=transports)
    document["email"] = {"sent": notice.emailed, "to": notice.recipient, "error": notice.error}
    text = output.profile_text(document) + "\nprofile created"
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
    return document, output.profile_text(document)


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
        who = view.sip_username if view.ip is None else output.host_port(view.ip, view.port)
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
    return output.listing(page, documents, (*heading, "NUMBERS"), rows, "no profiles")


async def _profile_rename(
    store: Store, args: argparse.Namespace, settings: GatewaySettings
) -> _Output:
    view = await profiles.rename_profile(store, args.name, args.new_name, account=args.account)
    document = await _document(store, view)
    return document, output.profile_text(document) + f"\nprofile {args.name} renamed {view.name}"


async def _profile_set_limit(
    store: Store, args: argparse.Namespace, settings: GatewaySettings
) -> _Output:
    view = await profiles.set_channel_limit(store, args.name, args.limit, account=args.account)
    document = await _document(store, view)
    return document, output.profile_text(document) + "\nchannel limit set"


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
    text = output.pairs(
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
    text = output.pairs(
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
        raise StartError(message, EXIT_RUNTIME) from None
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
    return output.listing(page, documents, ("NUMBER", "PROFILE"), rows, "no numbers")


# -- rates -------------------------------------------------------------------


async def _rate_set(store: Store, args: argparse.Namespace, _settings: GatewaySettings) -> _Output:
    view = await rates.set_rate(store, args.prefix, args.price)
    text = f"calls to {output.prefix_text(view.prefix)}: {view.price_per_minute} per minute"
    return rates.rate_document(view), text


async def _rate_delete(
    store: Store, args: argparse.Namespace, _settings: GatewaySettings
) -> _Output:
    view = await rates.delete_rate(store, args.prefix)
    return rates.rate_document(view), f"rate for {output.prefix_text(view.prefix)} deleted"


async def _rate_list(store: Store, args: argparse.Namespace, _settings: GatewaySettings) -> _Output:
    page = await rates.list_rates(store, offset=args.offset, limit=args.limit)
    documents = [rates.rate_document(v) for v in page.items]
    rows = [(output.prefix_text(v.prefix), str(v.price_per_minute)) for v in page.items]
    return output.listing(page, documents, ("PREFIX", "PER MINUTE"), rows, "no rates")


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
    return output.listing(page, documents, heading, rows, "no calls")


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
    text = output.pairs(pairs) + "\ntoken created: the secret is shown only this once"
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
    return output.listing(
        page, documents, ("TOKEN", "ROLE", "ACCOUNT", "CREATED"), rows, "no tokens"
    )


async def _token_revoke(
    store: Store, args: argparse.Namespace, _settings: GatewaySettings
) -> _Output:
    view = await tokens.revoke_token(store, args.name)
    return tokens.token_document(view), f"token {view.name} revoked"


async def _manage(
    run: Command,
    args: argparse.Namespace,
    settings: GatewaySettings,
) -> _Output:
    async with await open_store(settings) as store:
        return await run(store, args, settings)


#: What each management command runs, by the words the parser
#: (:func:`gateway.cli.parser.build_parser`) gives it: (command, action).
COMMANDS: dict[tuple[str, str | None], Command] = {
    ("account", "create"): _account_create,
    ("account", "list"): _account_list,
    ("account", "show"): _account_show,
    ("account", "deposit"): _account_deposit,
    ("profile", "create"): _profile_create,
    ("profile", "show"): _profile_show,
    ("profile", "list"): _profile_list,
    ("profile", "rename"): _profile_rename,
    ("profile", "set-limit"): _profile_set_limit,
    ("profile", "credit"): _profile_credit,
    ("profile", "delete"): _profile_delete,
    ("number", "add"): _number_add,
    ("number", "assign"): _number_assign,
    ("number", "unassign"): _number_unassign,
    ("number", "list"): _number_list,
    ("rate", "set"): _rate_set,
    ("rate", "delete"): _rate_delete,
    ("rate", "list"): _rate_list,
    ("history", None): _history,
    ("token", "create"): _token_create,
    ("token", "list"): _token_list,
    ("token", "revoke"): _token_revoke,
}


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
    run = COMMANDS[(args.command, getattr(args, "action", None))]
    try:
        settings = settings_from(args)
        result = asyncio.run(_manage(run, args, settings))
    except StartError as exc:
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
        sys.stderr.write(f"sipgw: {output.error_text(exc)}\n")
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    if result is None:
        return 0  # written as it came (the CSV report)
    document, text = result
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
    return serve_command(args)
