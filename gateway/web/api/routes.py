"""The REST API under ``/api/v1`` (issue 5): accounts, profiles, credit,
numbers, call history, rates and tokens, as JSON over HTTP.

This module is only the HTTP side.  Every rule (validation of names,
amounts and addresses, scoping by account, money that never goes negative)
lives in the service layer (:mod:`gateway.manage.profiles`, :mod:`gateway.manage.rates`,
:mod:`gateway.manage.history`, :mod:`gateway.manage.tokens`), which the CLI calls too, so
that nothing is written twice.  Here a request is authenticated, its path,
query and body are read into the service's arguments (their JSON types
checked), the service is called, and its answer or its refusal becomes the
response:

* Authentication: ``Authorization: Bearer <secret>`` (RFC 6750 §2.1).  A
  missing or unknown token is ``401`` with ``WWW-Authenticate: Bearer``
  (§3); an account manager asking for an operator's operation is ``403``;
  an account manager naming another account is ``404``, the answer for an
  account that does not exist (:func:`gateway.manage.tokens.visible_account`).
* Errors are one JSON shape, ``{"error": {"status": n, "message": "..."}}``,
  produced at one boundary (:func:`_errors`) from the exception's own
  ``http_status`` (the h11 habit of errors carrying their answer): 422 for
  bad input (a malformed body or parameter included), 404, 409, 405, 413.
  Never a stack trace.
* Lists take ``?offset=&limit=`` and answer ``{"items", "total", "offset",
  "limit", "next_offset"}``.
* Money is a string with 4 decimals (``"12.5000"``), in and out: a JSON
  number is a binary float, and 0.1 is not exact in one.

After every successful write the app's ``DIRECTORY_REFRESH`` event is set
and the answer waits (briefly, :data:`APPLY_TIMEOUT` at most) until this
gateway's router holds the new directory version: a rename, a credit move
or a channel limit is in force for the next call through this gateway once
the client has its answer.  Other nodes learn of it through PostgreSQL
LISTEN/NOTIFY or their directory poll.

The OpenAPI document describing all of it is :mod:`gateway.web.api.openapi`,
served at ``/api/v1/openapi.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final
from urllib.parse import quote

from aiohttp import web
from sqlalchemy.exc import InterfaceError, OperationalError

from gateway.config.advertise import gateway_addresses
from gateway.manage import history, nodes, profiles, rates, tokens
from gateway.manage.errors import ProfileError, ValidationError
from gateway.manage.mailer import Mailer
from gateway.manage.paging import DEFAULT_LIMIT, Page, check_page
from gateway.manage.tokens import Principal, require_operator, visible_account
from gateway.store.database import Store, StoreError
from gateway.store.models import TokenRole
from gateway.web.api.openapi import openapi_document
from gateway.web.keys import ADMISSION, DIRECTORY_REFRESH, ROUTER, SETTINGS, SIP_TRANSPORT, STORE

__all__ = [
    "API_PREFIX",
    "DEFAULT_RATE",
    "MAILER",
    "MAX_BODY",
    "ROUTES",
    "api_app",
    "mount_api",
]

logger = logging.getLogger(__name__)

API_PREFIX: Final = "/api/v1"
#: The largest request body read (bytes).  The largest legitimate one is a
#: batch of numbers (at most 1,000 of about 17 bytes each); anything bigger
#: is refused with 413 before it is parsed.
MAX_BODY: Final = 64 * 1024
#: The path segment naming the default rate (the empty prefix) in
#: ``/rates/{prefix}``: an empty segment cannot be written in a URL.
DEFAULT_RATE: Final = "default"
#: The CSV report is written to the client in pieces of about this size.
CSV_WRITE_SIZE: Final = 64 * 1024
#: How long a write's answer waits for this gateway to apply the change
#: (a directory reload takes milliseconds; a store in trouble must not
#: hold answers for long: the change still applies when the store answers).
APPLY_TIMEOUT: Final = 2.0
APPLY_POLL: Final = 0.005
#: The realm of the ``WWW-Authenticate: Bearer`` challenge (RFC 6750 §3).
AUTH_REALM: Final = "sipgw"

#: The mailer that e-mails a new registration profile's credentials
#: (None: no e-mail); an item of the API's sub-application.
MAILER: web.AppKey[Mailer | None] = web.AppKey("mailer")
#: Who the request speaks for, set by :func:`_authenticate`.
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)

_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*\Z")  # RFC 6750 §2.1
_SAFE_FILENAME = re.compile(r"[^A-Za-z0-9._-]")
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# ---------------------------------------------------------------------------
# Errors and JSON


class _HTTPError(Exception):
    """An answer decided by the HTTP layer itself (401, 413)."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response(
        {"error": {"status": status, "message": message}}, status=status, headers=headers
    )


def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response(data, status=status, headers=headers)


def _http_message(request: web.Request, exc: web.HTTPException) -> str:
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return f"method {request.method} is not allowed on {request.path} (allowed: {allowed})"
    if isinstance(exc, web.HTTPNotFound):
        return f"no such resource: {request.path}"
    return exc.reason


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one boundary where every refusal becomes the JSON error shape."""
    try:
        return await handler(request)
    except ProfileError as exc:
        return _error(exc.http_status, str(exc))
    except _HTTPError as exc:
        return _error(exc.status, str(exc), exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return _error(exc.status, _http_message(request, exc), headers)
    except StoreError as exc:
        # The store's own one-line explanation (e.g. no secret key to
        # encrypt a new profile's password): the gateway's configuration.
        logger.error("%s %s: %s", request.method, request.path, exc)
        return _error(503, str(exc))
    except (OperationalError, InterfaceError) as exc:
        logger.error("%s %s: database unavailable: %s", request.method, request.path, exc)
        return _error(503, "the database is not reachable; try again later")
    except Exception:
        logger.exception("%s %s failed", request.method, request.path)
        return _error(500, "internal error; the gateway's log has the details")


@web.middleware
async def _refresh_directory(request: web.Request, handler: Handler) -> web.StreamResponse:
    """After a successful write, wake this gateway's directory watcher and
    answer once the change is applied here (read-your-writes): a client that
    renames a profile or moves credit and then places a call through this
    gateway finds the change in force, not after the next poll."""
    response = await handler(request)
    if request.method in ("GET", "HEAD", "OPTIONS") or response.status >= 400:
        return response
    refresh = request.config_dict.get(DIRECTORY_REFRESH)
    if refresh is None:
        return response
    refresh.set()
    router = request.config_dict.get(ROUTER)
    if router is None:
        return response
    written = await _store(request).version()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + APPLY_TIMEOUT
    while router.directory.version < written:
        if loop.time() >= deadline:
            logger.warning(
                "directory version %d not applied within %g s of %s %s",
                written,
                APPLY_TIMEOUT,
                request.method,
                request.path,
            )
            break
        await asyncio.sleep(APPLY_POLL)
    return response


def _challenge(error: str | None = None) -> dict[str, str]:
    # RFC 6750 §3: no error code when the request had no credentials (§3.1).
    value = f'Bearer realm="{AUTH_REALM}"'
    if error is not None:
        value += f', error="{error}"'
    return {"WWW-Authenticate": value}


@web.middleware
async def _authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every request but the OpenAPI document needs a live bearer token."""
    if request.match_info.handler is openapi_json:
        return await handler(request)
    scheme, _, credentials = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer":
        raise _HTTPError(
            401, "a bearer token is required (Authorization: Bearer ...)", _challenge()
        )
    secret = credentials.strip()
    principal = None
    if _B64TOKEN.match(secret):
        principal = await tokens.authenticate(_store(request), secret)
    if principal is None:
        raise _HTTPError(
            401, "the bearer token is not valid (unknown or revoked)", _challenge("invalid_token")
        )
    request[PRINCIPAL] = principal
    return await handler(request)


# ---------------------------------------------------------------------------
# Reading requests


def _store(request: web.Request) -> Store:
    return request.config_dict[STORE]


def _principal(request: web.Request) -> Principal:
    return request[PRINCIPAL]


def _operator(request: web.Request) -> Principal:
    principal = _principal(request)
    require_operator(principal)
    return principal


def _account(request: web.Request) -> str:
    """The account in the path, as the caller may see it (an account
    manager naming another account: 404, as for one that does not exist)."""
    account = visible_account(_principal(request), request.match_info["account"])
    assert account is not None  # a name was given, so one is returned
    return account


def _query(request: web.Request, allowed: Sequence[str]) -> dict[str, str]:
    """The query parameters, each at most once, none unknown (a misspelt
    one would otherwise be silently ignored)."""
    values: dict[str, str] = {}
    for key, value in request.query.items():
        if key not in allowed:
            known = ", ".join(allowed) if allowed else "none"
            raise ValidationError(f"unknown query parameter {key!r} (known: {known})")
        if key in values:
            raise ValidationError(f"query parameter {key!r} given twice")
        values[key] = value
    return values


def _whole(query: Mapping[str, str], key: str, default: int) -> int:
    text = query.get(key)
    if text is None:
        return default
    if not text.isascii() or not text.lstrip("-").isdigit():
        raise ValidationError(f"{key} must be a whole number, got {text!r}")
    return int(text)


def _page(query: Mapping[str, str]) -> tuple[int, int]:
    """``offset`` and ``limit`` as given (bounds are the service's rule)."""
    return _whole(query, "offset", 0), _whole(query, "limit", DEFAULT_LIMIT)


def _flag(query: Mapping[str, str], key: str) -> bool:
    text = query.get(key, "false").lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValidationError(f"{key} must be true or false, got {query[key]!r}")


def _time(query: Mapping[str, str], key: str) -> datetime | None:
    text = query.get(key)
    return None if text is None else history.parse_time(text, key)


async def _body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object, at most :data:`MAX_BODY` bytes."""
    too_large = f"the request body is larger than {MAX_BODY} bytes"
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise _HTTPError(413, too_large)
    data = bytearray()
    while chunk := await request.content.read(MAX_BODY + 1 - len(data)):
        data += chunk
        if len(data) > MAX_BODY:
            raise _HTTPError(413, too_large)
    if not data.strip():
        raise ValidationError("a JSON object is required as the request body")

    def no_constant(name: str) -> None:
        raise ValueError(f"{name} is not a number JSON allows")

    try:
        value = json.loads(data.decode("utf-8"), parse_constant=no_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValidationError(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValidationError("the request body must be a JSON object")
    return value


#: JSON types of body fields: the HTTP layer checks the shape, the service
#: the meaning.  (``bool`` is not an ``int`` here, whatever Python says.)
_JSON_TYPES: dict[type, str] = {
    str: "a string",
    int: "a whole number",
    bool: "true or false",
    list: "a list of strings",
}


def _fields(
    body: Mapping[str, Any],
    required: Mapping[str, type],
    optional: Mapping[str, type] | None = None,
) -> dict[str, Any]:
    """``body``'s fields, each of its JSON type; unknown fields refused."""
    known = {**required, **(optional or {})}
    for key in body:
        if key not in known:
            raise ValidationError(f"unknown field {key!r} (known: {', '.join(known)})")
    for key in required:
        if key not in body:
            raise ValidationError(f"field {key!r} is required")
    values: dict[str, Any] = {}
    for key, kind in known.items():
        if key not in body:
            continue
        value = body[key]
        fits = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is list:
            fits = fits and all(isinstance(item, str) for item in value)
        if not fits:
            raise ValidationError(f"field {key!r} must be {_JSON_TYPES[kind]}, got {value!r}")
        values[key] = value
    return values


async def _gateway_addresses(request: web.Request) -> tuple[list[str], list[str]]:
    """Where PBXs send SIP, and over what: what the live nodes advertise
    (:mod:`gateway.manage.nodes`), this one's own listeners included even when
    its entry could not be written (a configured port 0 is a real port by
    now; an API served without SIP lists its configured addresses)."""
    sip = request.config_dict[SETTINGS].sip
    transport = request.config_dict.get(SIP_TRANSPORT)
    own = gateway_addresses(sip, transport.listeners if transport is not None else sip.listen)
    addresses, transports = nodes.advertised(await nodes.live_nodes(_store(request)))
    addresses += [address for address in own if address not in addresses]
    return addresses, transports or list(profiles.GATEWAY_TRANSPORTS)


def _location(*segments: str) -> str:
    return API_PREFIX + "".join("/" + quote(segment, safe="") for segment in segments)


def _listing(page: Page[Any], documents: list[dict[str, Any]]) -> web.Response:
    return _json(profiles.page_document(page, documents))


async def _profile_document(request: web.Request, view: profiles.ProfileView) -> dict[str, Any]:
    addresses, transports = await _gateway_addresses(request)
    return profiles.profile_document(view, gateway_addresses=addresses, transports=transports)


# ---------------------------------------------------------------------------
# Accounts


async def list_accounts(request: web.Request) -> web.Response:
    offset, limit = _page(_query(request, ("offset", "limit")))
    principal = _principal(request)
    store = _store(request)
    if principal.role is TokenRole.OPERATOR:
        page = await profiles.list_accounts(store, offset=offset, limit=limit)
    else:
        # An account manager's list is its own account.
        offset, limit = check_page(offset, limit)
        own = visible_account(principal, None)
        assert own is not None
        mine = [await profiles.get_account(store, own)]
        page = Page(mine[offset : offset + limit], len(mine), offset, limit)
    return _listing(page, [profiles.account_document(view) for view in page.items])


async def create_account(request: web.Request) -> web.Response:
    _operator(request)
    _query(request, ())
    fields = _fields(await _body(request), {"name": str, "email": str}, {"balance": str})
    view = await profiles.create_account(_store(request), **fields)
    return _json(
        profiles.account_document(view), 201, {"Location": _location("accounts", view.name)}
    )


async def get_account(request: web.Request) -> web.Response:
    _query(request, ())
    view = await profiles.get_account(_store(request), _account(request))
    return _json(profiles.account_document(view))


async def deposit(request: web.Request) -> web.Response:
    _operator(request)
    _query(request, ())
    account = _account(request)
    fields = _fields(await _body(request), {"amount": str})
    view = await profiles.deposit(_store(request), account, fields["amount"])
    return _json(profiles.account_document(view))


# ---------------------------------------------------------------------------
# Profiles


async def list_profiles(request: web.Request) -> web.Response:
    offset, limit = _page(_query(request, ("offset", "limit")))
    page = await profiles.list_profiles(
        _store(request), account=_account(request), offset=offset, limit=limit
    )
    addresses, transports = await _gateway_addresses(request)
    documents = [
        profiles.profile_document(view, gateway_addresses=addresses, transports=transports)
        for view in page.items
    ]
    return _listing(page, documents)


async def create_profile(request: web.Request) -> web.Response:
    _query(request, ())
    account = _account(request)
    fields = _fields(
        await _body(request),
        {"name": str, "auth": str},
        {"ip": str, "port": int, "channel_limit": int},
    )
    if "channel_limit" in fields:
        fields["channels"] = fields.pop("channel_limit")
    addresses, transports = await _gateway_addresses(request)
    view, notice = await profiles.create_profile_and_notify(
        _store(request),
        request.app[MAILER],
        gateway_addresses=addresses,
        transports=transports,
        account=account,
        **fields,
    )
    # The addresses just put in the e-mail, not read from the store again.
    document = profiles.profile_document(view, gateway_addresses=addresses, transports=transports)
    document["email"] = {"sent": notice.emailed, "to": notice.recipient, "error": notice.error}
    location = _location("accounts", view.account, "profiles", view.name)
    return _json(document, 201, {"Location": location})


async def get_profile(request: web.Request) -> web.Response:
    _query(request, ())
    view = await profiles.get_profile(
        _store(request), request.match_info["profile"], account=_account(request)
    )
    return _json(await _profile_document(request, view))


async def update_profile(request: web.Request) -> web.Response:
    """PATCH: a new name and/or a new channel limit, in one transaction
    (a refused rename leaves the limit as it was too)."""
    _query(request, ())
    account = _account(request)
    fields = _fields(await _body(request), {}, {"name": str, "channel_limit": int})
    if not fields:
        raise ValidationError("nothing to change: give 'name' and/or 'channel_limit'")
    view = await profiles.update_profile(
        _store(request),
        request.match_info["profile"],
        new_name=fields.get("name"),
        channel_limit=fields.get("channel_limit"),
        account=account,
    )
    return _json(await _profile_document(request, view))


async def delete_profile(request: web.Request) -> web.Response:
    query = _query(request, ("confirm", "end_calls"))
    account = _account(request)
    if "confirm" not in query:
        raise ValidationError(
            "deleting a profile erases its call history: repeat its name in ?confirm="
        )
    admission = request.config_dict[ADMISSION]

    store = _store(request)
    refresh = request.config_dict.get(DIRECTORY_REFRESH)

    async def active_calls(view: profiles.ProfileView) -> int:
        return await admission.in_use(view.id)

    report = await profiles.delete_profile(
        store,
        request.match_info["profile"],
        account=account,
        confirm=query["confirm"],
        end_calls=_flag(query, "end_calls"),
        active_calls=active_calls,
        # This node applies the closing at once (the others by NOTIFY or poll).
        settle=nodes.settle_deletion(store, wake=refresh.set if refresh is not None else None),
    )
    return _json(profiles.deletion_document(report))


async def move_credit(request: web.Request) -> web.Response:
    _query(request, ())
    account = _account(request)
    fields = _fields(await _body(request), {"amount": str})
    view, owner = await profiles.allocate_credit(
        _store(request), request.match_info["profile"], fields["amount"], account=account
    )
    return _json(
        {
            "profile": await _profile_document(request, view),
            "account": profiles.account_document(owner),
        }
    )


async def incoming(request: web.Request) -> web.Response:
    """The numbers delivered to the profile, and where they go."""
    offset, limit = _page(_query(request, ("offset", "limit")))
    store = _store(request)
    view = await profiles.get_profile(
        store, request.match_info["profile"], account=_account(request), reveal=False
    )
    page = await profiles.list_numbers(
        store, account=view.account, profile=view.name, offset=offset, limit=limit
    )
    document = profiles.page_document(page, [profiles.number_document(n) for n in page.items])
    where = profiles.delivered_to(view)
    return _json({"profile": view.name, "account": view.account, "delivered_to": where} | document)


# ---------------------------------------------------------------------------
# Call history


async def call_history(request: web.Request) -> web.Response:
    query = _query(request, ("since", "until", "offset", "limit"))
    offset, limit = _page(query)
    page = await history.call_history(
        _store(request),
        request.match_info["profile"],
        account=_account(request),
        since=_time(query, "since"),
        until=_time(query, "until"),
        offset=offset,
        limit=limit,
    )
    return _listing(page, [history.record_document(record) for record in page.items])


def _attachment(profile: str) -> str:
    """Content-Disposition for the report (RFC 6266 §4.3): an ASCII
    ``filename`` and the exact name as ``filename*`` (RFC 8187)."""
    name = f"{profile}-history.csv"
    plain = _SAFE_FILENAME.sub("_", name)
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(name, safe='')}"


async def call_history_csv(request: web.Request) -> web.StreamResponse:
    """The CSV report, streamed: the first line is taken before the answer
    starts, so that a bad request still gets a JSON error; after that an
    error can only cut the download short (the connection is closed
    without the final chunk, which a client sees as incomplete)."""
    query = _query(request, ("since", "until"))
    profile = request.match_info["profile"]
    lines = history.history_csv(
        _store(request),
        profile,
        account=_account(request),
        since=_time(query, "since"),
        until=_time(query, "until"),
    )
    async with contextlib.aclosing(lines):
        first = await anext(lines)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/csv; charset=utf-8; header=present",  # RFC 4180 §3
                "Content-Disposition": _attachment(profile),
                "Cache-Control": "no-store",
            }
        )
        await response.prepare(request)
        pending, size = [first], len(first)
        try:
            async for line in lines:
                pending.append(line)
                size += len(line)
                if size >= CSV_WRITE_SIZE:
                    await response.write("".join(pending).encode())
                    pending, size = [], 0
            await response.write("".join(pending).encode())
        except Exception:
            logger.exception("CSV report of profile %r cut short", profile)
            if request.transport is not None:
                request.transport.close()
            return response
    await response.write_eof()
    return response


# ---------------------------------------------------------------------------
# Numbers


async def list_numbers(request: web.Request) -> web.Response:
    query = _query(request, ("profile", "offset", "limit"))
    offset, limit = _page(query)
    page = await profiles.list_numbers(
        _store(request),
        account=_account(request),
        profile=query.get("profile"),
        offset=offset,
        limit=limit,
    )
    return _listing(page, [profiles.number_document(view) for view in page.items])


async def add_numbers(request: web.Request) -> web.Response:
    """Numbers come from the operator's carrier: adding them is an
    operator's business; account managers assign them."""
    _operator(request)
    _query(request, ())
    account = _account(request)
    fields = _fields(await _body(request), {"numbers": list})
    added = await profiles.add_numbers(_store(request), account=account, numbers=fields["numbers"])
    documents = [{"number": number, "account": account, "profile": None} for number in added]
    return _json({"items": documents}, 201)


async def assign_number(request: web.Request) -> web.Response:
    _query(request, ())
    account = _account(request)
    fields = _fields(await _body(request), {"profile": str}, {"move": bool})
    view = await profiles.assign_number(
        _store(request),
        request.match_info["number"],
        profile=fields["profile"],
        move=fields.get("move", False),
        account=account,
    )
    return _json(profiles.number_document(view))


async def unassign_number(request: web.Request) -> web.Response:
    _query(request, ())
    view = await profiles.unassign_number(
        _store(request), request.match_info["number"], account=_account(request)
    )
    return _json(profiles.number_document(view))


# ---------------------------------------------------------------------------
# Rates


def _prefix(request: web.Request) -> str:
    prefix = request.match_info["prefix"]
    return "" if prefix == DEFAULT_RATE else prefix


async def list_rates(request: web.Request) -> web.Response:
    offset, limit = _page(_query(request, ("offset", "limit")))
    page = await rates.list_rates(_store(request), offset=offset, limit=limit)
    return _listing(page, [rates.rate_document(view) for view in page.items])


async def set_rate(request: web.Request) -> web.Response:
    _operator(request)
    _query(request, ())
    fields = _fields(await _body(request), {"price_per_minute": str})
    view = await rates.set_rate(_store(request), _prefix(request), fields["price_per_minute"])
    return _json(rates.rate_document(view))


async def delete_rate(request: web.Request) -> web.Response:
    _operator(request)
    _query(request, ())
    view = await rates.delete_rate(_store(request), _prefix(request))
    return _json(rates.rate_document(view))


# ---------------------------------------------------------------------------
# Tokens


async def list_tokens(request: web.Request) -> web.Response:
    _operator(request)
    offset, limit = _page(_query(request, ("offset", "limit")))
    page = await tokens.list_tokens(_store(request), offset=offset, limit=limit)
    return _listing(page, [tokens.token_document(view) for view in page.items])


async def create_token(request: web.Request) -> web.Response:
    _operator(request)
    _query(request, ())
    fields = _fields(await _body(request), {"name": str, "role": str}, {"account": str})
    view, secret = await tokens.create_token(
        _store(request), name=fields["name"], role=fields["role"], account=fields.get("account")
    )
    document = {**tokens.token_document(view), "secret": secret}
    return _json(document, 201, {"Location": _location("tokens", view.name)})


async def revoke_token(request: web.Request) -> web.Response:
    _operator(request)
    _query(request, ())
    view = await tokens.revoke_token(_store(request), request.match_info["name"])
    return _json(tokens.token_document(view))


# ---------------------------------------------------------------------------
# The OpenAPI document and the routes


async def openapi_json(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 description of this API (no token needed)."""
    _query(request, ())
    return _json(openapi_document())


_PROFILE = "/accounts/{account}/profiles/{profile}"

#: Every operation: (method, path under :data:`API_PREFIX`, handler).
#: :mod:`gateway.web.api.openapi` describes exactly these (a test holds them equal).
ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "/openapi.json", openapi_json),
    ("GET", "/accounts", list_accounts),
    ("POST", "/accounts", create_account),
    ("GET", "/accounts/{account}", get_account),
    ("POST", "/accounts/{account}/deposit", deposit),
    ("GET", "/accounts/{account}/profiles", list_profiles),
    ("POST", "/accounts/{account}/profiles", create_profile),
    ("GET", _PROFILE, get_profile),
    ("PATCH", _PROFILE, update_profile),
    ("DELETE", _PROFILE, delete_profile),
    ("POST", _PROFILE + "/credit", move_credit),
    ("GET", _PROFILE + "/history", call_history),
    ("GET", _PROFILE + "/history.csv", call_history_csv),
    ("GET", _PROFILE + "/incoming", incoming),
    ("GET", "/accounts/{account}/numbers", list_numbers),
    ("POST", "/accounts/{account}/numbers", add_numbers),
    ("PUT", "/accounts/{account}/numbers/{number}/profile", assign_number),
    ("DELETE", "/accounts/{account}/numbers/{number}/profile", unassign_number),
    ("GET", "/rates", list_rates),
    ("PUT", "/rates/{prefix}", set_rate),
    ("DELETE", "/rates/{prefix}", delete_rate),
    ("GET", "/tokens", list_tokens),
    ("POST", "/tokens", create_token),
    ("DELETE", "/tokens/{name}", revoke_token),
)


def api_app(*, mailer: Mailer | None) -> web.Application:
    """The API as a sub-application, for :func:`mount_api`.  It reads the
    store, the settings, the admission controller and the refresh event
    from the application it is mounted in."""
    app = web.Application(middlewares=[_errors, _refresh_directory, _authenticate])
    app[MAILER] = mailer
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    return app


def mount_api(app: web.Application, *, mailer: Mailer | None) -> None:
    """Serve the API at :data:`API_PREFIX` of ``app`` (the gateway's
    application, :func:`gateway.web.app.create_app`)."""
    app.add_subapp(API_PREFIX, api_app(mailer=mailer))
