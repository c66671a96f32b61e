"""The REST API (``gateway/web/api/routes.py``) in process, on SQLite and PostgreSQL.

The API's sub-application is mounted in an application holding what the
gateway's holds (the store, the settings, an in-memory admission
controller, the directory refresh event) and served by aiohttp's test
server on a random loopback address; requests go over real HTTP.  Tokens
are created through the service layer, as ``sipgw token create`` does.
Every endpoint is tested for its success and its errors, and so are the
rules that hold across them: 401 without a live token, 403 for an account
token on an operator's endpoint, 404 for another account's data on every
account-scoped endpoint, pagination, the JSON error shape, concurrent
credit moves, and what a deletion gives back.

The served gateway (SIP calls, registrations) is tests/e2e/test_api_e2e.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import random
import re
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from admission import MemoryAdmission
from gateway.config.settings import GatewaySettings, HostPort
from gateway.manage import profiles, tokens
from gateway.manage.history import CSV_COLUMNS
from gateway.manage.mailer import Mailer, SMTPMailer
from gateway.store.database import Store
from gateway.web.api.openapi import openapi_document
from gateway.web.api.routes import API_PREFIX, MAX_BODY, ROUTES, mount_api
from gateway.web.app import create_app
from gateway.web.keys import ADMISSION, DIRECTORY_REFRESH, SETTINGS, STORE
from tests.support.harness import random_loopback
from tests.unit import test_store as shared
from tests.unit.test_history import insert_records
from tests.unit.test_mailer import RefusingMailbox, smtp_server, smtp_settings  # noqa: F401

# The store fixtures of tests/unit/test_store.py (SQLite and PostgreSQL), shared.
postgres_url = shared.postgres_url
database_url = shared.database_url
secret_key = shared.secret_key
store = shared.store

SIP_ADDRESS = HostPort("192.0.2.10", 5060)  # what the profile documents advertise
T0 = datetime(2024, 6, 1, 9, 0, tzinfo=UTC)
ERROR_KEYS = {"error"}


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    text: str

    @property
    def json(self) -> Any:
        return json.loads(self.text)

    @property
    def message(self) -> str:
        """The error message; the reply must have the error shape."""
        body = self.json
        assert set(body) == ERROR_KEYS, body
        assert set(body["error"]) == {"status", "message"}, body
        assert body["error"]["status"] == self.status
        message: str = body["error"]["message"]
        assert "Traceback" not in message
        return message


@dataclass
class Api:
    """A served API and the secrets of its tokens (``operator``, and
    ``manager`` of account "acme" once :func:`seed` made it)."""

    client: TestClient[web.Request, web.Application]
    store: Store
    admission: MemoryAdmission
    refresh: asyncio.Event
    operator: str
    secrets: dict[str, str] = field(default_factory=dict)

    async def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = "operator",
        body: Any = None,
        raw: bytes | None = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """``method API_PREFIX+path``; ``token`` names a secret ("operator",
        "manager"), is one itself (starting "sgw_"), or None: no header."""
        sent = dict(headers or {})
        if token is not None:
            secret = token if token.startswith("sgw_") else self.secrets.get(token, self.operator)
            sent["Authorization"] = f"Bearer {secret}"
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            sent.setdefault("Content-Type", "application/json")
        async with self.client.request(
            method, API_PREFIX + path, data=data, params=params, headers=sent
        ) as response:
            return Reply(response.status, dict(response.headers), await response.text())

    async def ok(self, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
        reply = await self.call(method, path, **kwargs)
        assert reply.status == status, (reply.status, reply.text)
        return reply.json

    async def refused(self, method: str, path: str, status: int, **kwargs: Any) -> str:
        reply = await self.call(method, path, **kwargs)
        assert reply.status == status, (reply.status, reply.text)
        assert reply.headers["Content-Type"].startswith("application/json")
        return reply.message


def _settings() -> GatewaySettings:
    return GatewaySettings().with_overrides(sip_listen=[SIP_ADDRESS])


@contextlib.asynccontextmanager
async def _serve(
    store: Store, mailer: Mailer | None, operator: str | None = None
) -> AsyncIterator[Api]:
    """Serve the API on ``store``; ``operator``: the secret of an existing
    operator token (None: create one, "ops")."""
    root = web.Application()
    root[STORE] = store
    root[SETTINGS] = _settings()
    admission = MemoryAdmission()
    root[ADMISSION] = admission
    refresh = asyncio.Event()
    root[DIRECTORY_REFRESH] = refresh
    mount_api(root, mailer=mailer)
    if operator is None:
        _, operator = await tokens.create_token(store, name="ops", role="operator", account=None)
    client = TestClient(TestServer(root, host=random_loopback()))
    await client.start_server()
    try:
        yield Api(client, store, admission, refresh, operator, {"operator": operator})
    finally:
        await client.close()
        await admission.close()


@pytest.fixture
async def api(store: Store) -> AsyncIterator[Api]:
    async with _serve(store, None) as served:
        yield served


async def seed(api: Api) -> None:
    """acme (balance 100) with registration profile "sales" and number
    +441134960000 assigned to it; other with IP profile "desk" and number
    +441134960009 assigned to it; a manager token for acme."""
    await api.ok(
        "POST",
        "/accounts",
        201,
        body={"name": "acme", "email": "ops@acme.example", "balance": "100"},
    )
    await api.ok("POST", "/accounts", 201, body={"name": "other", "email": "ops@other.example"})
    await api.ok(
        "POST", "/accounts/acme/profiles", 201, body={"name": "sales", "auth": "registration"}
    )
    await api.ok(
        "POST",
        "/accounts/other/profiles",
        201,
        body={"name": "desk", "auth": "ip", "ip": "198.51.100.7", "port": 5060},
    )
    await api.ok("POST", "/accounts/acme/numbers", 201, body={"numbers": ["+441134960000"]})
    await api.ok("POST", "/accounts/other/numbers", 201, body={"numbers": ["+441134960009"]})
    await api.ok("PUT", "/accounts/acme/numbers/+441134960000/profile", body={"profile": "sales"})
    await api.ok("PUT", "/accounts/other/numbers/+441134960009/profile", body={"profile": "desk"})
    _, secret = await tokens.create_token(
        api.store, name="acme-mgr", role="account", account="acme"
    )
    api.secrets["manager"] = secret


# ---------------------------------------------------------------------------
# The OpenAPI document


def _registered(app: web.Application) -> set[tuple[str, str]]:
    """(method, path under the prefix) of every route of the API mounted in ``app``."""
    (subapp,) = [r for r in app.router.resources() if isinstance(r, web.PrefixedSubAppResource)]
    assert subapp.canonical == API_PREFIX
    routes = set()
    for route in subapp._app.router.routes():
        assert route.resource is not None
        routes.add((route.method, route.resource.canonical.removeprefix(API_PREFIX)))
    return routes


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def test_the_openapi_document_describes_every_route_and_only_those() -> None:
    document = json.loads(json.dumps(openapi_document()))  # valid JSON, round trip
    assert document["openapi"] == "3.1.0"
    assert document["info"]["title"] and document["info"]["version"]
    assert document["servers"] == [{"url": API_PREFIX}]
    assert "bearer" in document["components"]["securitySchemes"]
    described = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
    }
    registered = _registered(create_app(_settings()))  # as the gateway mounts it
    assert registered == described
    assert registered == {(method, path) for method, path, _ in ROUTES}
    for ref in set(_refs(document)):  # every reference resolves
        node = document
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
    for path, operations in document["paths"].items():
        named = set(re.findall(r"{(\w+)}", path))
        for method, operation in operations.items():
            assert operation["responses"], (method, path)
            parameters = [
                p
                if "$ref" not in p
                else document["components"]["parameters"][p["$ref"].split("/")[-1]]
                for p in operation.get("parameters", [])
            ]
            in_path = {p["name"] for p in parameters if p["in"] == "path"}
            assert in_path == named, (method, path)


async def test_the_openapi_document_is_served_without_a_token(api: Api) -> None:
    reply = await api.call("GET", "/openapi.json", token=None)
    assert reply.status == 200
    assert reply.json == openapi_document()


# ---------------------------------------------------------------------------
# Authentication, roles, scoping

SAMPLE = {
    "account": "acme",
    "profile": "sales",
    "number": "+441134960000",
    "prefix": "44",
    "name": "ops",
}


def _path(template: str, **values: str) -> str:
    return template.format(**{**SAMPLE, **values})


async def test_every_operation_needs_a_live_bearer_token(api: Api) -> None:
    await seed(api)
    revoked = await api.ok("POST", "/tokens", 201, body={"name": "old", "role": "operator"})
    await api.ok("DELETE", "/tokens/old")
    wrong = [
        (None, None),
        ("Basic b3BzOm9wcw==", None),  # another scheme: no error code (RFC 6750 §3.1)
        ("Bearer", "invalid_token"),
        ("Bearer sgw_not-a-token", "invalid_token"),
        ("Bearer sgw_with spaces", "invalid_token"),
        (f"Bearer {revoked['secret']}", "invalid_token"),
    ]
    for method, template, _ in ROUTES:
        if template == "/openapi.json":
            continue
        for header, error in wrong:
            headers = {} if header is None else {"Authorization": header}
            reply = await api.call(
                method,
                _path(template),
                token=None,
                headers=headers,
                body={} if method in ("POST", "PUT", "PATCH") else None,
            )
            assert reply.status == 401, (method, template, header, reply.text)
            assert "token" in reply.message
            challenge = reply.headers["WWW-Authenticate"]
            assert challenge.startswith('Bearer realm="sipgw"')
            assert ("error=" in challenge) == (error is not None), challenge
    # The scheme is case-insensitive (RFC 7235 §2.1).
    reply = await api.call(
        "GET", "/accounts", token=None, headers={"Authorization": f"bearer {api.operator}"}
    )
    assert reply.status == 200


OPERATOR_ONLY = [
    ("POST", "/accounts", {"name": "x", "email": "x@x.example"}),
    ("POST", "/accounts/acme/deposit", {"amount": "5"}),
    ("POST", "/accounts/acme/numbers", {"numbers": ["+441134960005"]}),
    ("PUT", "/rates/44", {"price_per_minute": "0.0100"}),
    ("DELETE", "/rates/44", None),
    ("GET", "/tokens", None),
    ("POST", "/tokens", {"name": "mine", "role": "operator"}),
    ("DELETE", "/tokens/ops", None),
]


@pytest.mark.parametrize(("method", "path", "body"), OPERATOR_ONLY)
async def test_an_account_token_gets_403_on_operator_operations(
    api: Api, method: str, path: str, body: Any
) -> None:
    await seed(api)
    await api.ok("PUT", "/rates/44", body={"price_per_minute": "0.0200"})
    before = await api.ok("GET", "/tokens")
    message = await api.refused(method, path, 403, token="manager", body=body)
    assert message == "only an operator token may do this"
    # Nothing happened.
    assert (await api.ok("GET", "/tokens")) == before
    assert (await api.ok("GET", "/accounts/acme"))["balance"] == "100.0000"
    assert (await api.ok("GET", "/rates"))["items"][0]["price_per_minute"] == "0.0200"
    assert (await api.ok("GET", "/accounts/acme/numbers"))["total"] == 1


# Every account-scoped operation an account manager may use, on account
# "other" (which exists, with profile "desk" and number +441134960009).
SCOPED = [
    ("GET", "/accounts/{account}", None),
    ("GET", "/accounts/{account}/profiles", None),
    ("POST", "/accounts/{account}/profiles", {"name": "new", "auth": "registration"}),
    ("GET", "/accounts/{account}/profiles/{profile}", None),
    ("PATCH", "/accounts/{account}/profiles/{profile}", {"name": "renamed"}),
    ("DELETE", "/accounts/{account}/profiles/{profile}?confirm={profile}", None),
    ("POST", "/accounts/{account}/profiles/{profile}/credit", {"amount": "1"}),
    ("GET", "/accounts/{account}/profiles/{profile}/history", None),
    ("GET", "/accounts/{account}/profiles/{profile}/history.csv", None),
    ("GET", "/accounts/{account}/profiles/{profile}/incoming", None),
    ("GET", "/accounts/{account}/numbers", None),
    ("PUT", "/accounts/{account}/numbers/{number}/profile", {"profile": "desk"}),
    ("DELETE", "/accounts/{account}/numbers/{number}/profile", None),
]


def test_the_scoped_list_covers_every_account_operation_but_the_operators() -> None:
    operator = {(m, p) for m, p, _ in OPERATOR_ONLY}
    scoped = {(m, t.split("?")[0]) for m, t, _ in SCOPED}
    for method, template, _ in ROUTES:
        if "{account}" in template:
            concrete = _path(template)
            assert (method, template) in scoped or (method, concrete) in operator, template


@pytest.mark.parametrize(("method", "template", "body"), SCOPED)
async def test_another_accounts_data_answers_404_like_a_missing_account(
    api: Api, method: str, template: str, body: Any
) -> None:
    await seed(api)
    before = await api.ok("GET", "/accounts/other/profiles/desk")
    numbers = await api.ok("GET", "/accounts/other/numbers")
    other = _path(template, account="other", profile="desk", number="+441134960009")
    missing = _path(template, account="ghost", profile="desk", number="+441134960009")
    for_other = await api.refused(method, other, 404, token="manager", body=body)
    for_missing = await api.refused(method, missing, 404, token="manager", body=body)
    assert for_other == "no account named 'other'"
    assert for_missing == "no account named 'ghost'"
    # The operator sees it; nothing changed.
    assert (await api.ok("GET", "/accounts/other/profiles/desk")) == before
    assert (await api.ok("GET", "/accounts/other/numbers")) == numbers
    assert (await api.ok("GET", "/accounts/other/profiles"))["total"] == 1
    # The manager's own account answers on the same operation.
    own = _path(template, account="acme", profile="sales", number="+441134960000")
    if method == "GET":
        assert (await api.call(method, own, token="manager")).status == 200


async def test_an_account_token_sees_its_own_account_only(api: Api) -> None:
    await seed(api)
    listed = await api.ok("GET", "/accounts", token="manager")
    assert [a["name"] for a in listed["items"]] == ["acme"]
    assert (listed["total"], listed["offset"], listed["limit"]) == (1, 0, 100)
    assert (await api.ok("GET", "/accounts?offset=1", token="manager"))["items"] == []
    assert (await api.ok("GET", "/accounts"))["total"] == 2  # the operator: all
    # It manages its own account: profiles, credit, numbers.
    created = await api.ok(
        "POST",
        "/accounts/acme/profiles",
        201,
        token="manager",
        body={"name": "support", "auth": "registration"},
    )
    assert created["password"] and created["account"] == "acme"
    moved = await api.ok(
        "POST", "/accounts/acme/profiles/support/credit", token="manager", body={"amount": "20"}
    )
    assert moved["account"]["balance"] == "80.0000"
    await api.ok(
        "PUT",
        "/accounts/acme/numbers/+441134960000/profile",
        token="manager",
        body={"profile": "support", "move": True},
    )
    assert (await api.ok("GET", "/rates", token="manager"))["items"] == []


async def test_refusals_name_fields_and_keep_other_accounts_to_themselves(api: Api) -> None:
    """Issue 10 (3, 5): an account manager is not told another account's
    profile names, and no answer of the API names a CLI option."""
    await seed(api)
    profiles_path = "/accounts/acme/profiles"
    # other's "desk" has 198.51.100.7:5060: acme learns it is taken, not by whom.
    taken = await api.refused(
        "POST",
        profiles_path,
        409,
        token="manager",
        body={"name": "leeds", "auth": "ip", "ip": "198.51.100.7", "port": 5060},
    )
    assert taken == "198.51.100.7:5060 is already used"
    # Its own profile it is told about (the operator, for other's).
    own = await api.refused(
        "POST",
        "/accounts/other/profiles",
        409,
        body={"name": "desk2", "auth": "ip", "ip": "198.51.100.7", "port": 5060},
    )
    assert own == "198.51.100.7:5060 is already used by profile 'desk'"
    messages = [
        await api.refused("POST", profiles_path, 422, token="manager", body=body)
        for body in (
            {"name": "x", "auth": "ip", "ip": "198.51.100.8"},
            {"name": "x", "auth": "registration", "port": 5060},
            {"name": "x", "auth": "registration", "channel_limit": 0},
        )
    ]
    assert messages == [
        "an ip profile needs the PBX's address: ip and port",
        "ip and port are for ip profiles only: a registration profile's PBX is found by"
        " its registration",
        "channel_limit must be 1 to 300, got 0",
    ]
    unknown = await api.refused(
        "PUT",
        "/accounts/acme/numbers/+441134960555/profile",
        404,
        token="manager",
        body={"profile": "sales"},
    )
    assert unknown == "no number +441134960555 in account 'acme'"
    await api.ok("POST", profiles_path, 201, body={"name": "support", "auth": "registration"})
    moved = await api.refused(
        "PUT",
        "/accounts/acme/numbers/+441134960000/profile",
        409,
        token="manager",
        body={"profile": "support"},
    )
    assert moved == "+441134960000 is assigned to profile 'sales'; set move to reassign it"
    for message in (taken, own, *messages, unknown, moved):
        assert "--" not in message and "sipgw" not in message


async def test_names_are_trimmed_and_hold_letters_digits_spaces_and_few_marks(api: Api) -> None:
    """Issue 10 (6): names are trimmed and put in NFC; letters of any
    alphabet (Polish ones included), digits, inner spaces and -_.' pass;
    "/", control characters and other punctuation are refused."""
    decomposed = "Zak\u0142ad \u0141o\u0301dz\u0301"  # "Zakład Łódź" typed with combining accents
    created = await api.ok(
        "POST", "/accounts", 201, body={"name": f"  {decomposed} ", "email": "biuro@lodz.example"}
    )
    assert created["name"] == "Zakład Łódź"
    assert (await api.ok("GET", "/accounts/Zakład Łódź"))["name"] == "Zakład Łódź"
    for bad, problem in [
        ("a/b", "not '/'"),
        ("tab\there", "not '\\t'"),
        ("bell\x07", "not '\\x07'"),
        ("semi;colon", "not ';'"),
        ("", "1 to 64 characters"),
        ("   ", "1 to 64 characters"),
        ("x" * 65, "1 to 64 characters"),
    ]:
        message = await api.refused(
            "POST", "/accounts", 422, body={"name": bad, "email": "x@x.example"}
        )
        assert message.startswith("account name ") and problem in message, message
    path = "/accounts/Zakład Łódź/profiles"
    profile = await api.ok(
        "POST", path, 201, body={"name": " Dział sprzedaży O'Neil_2.0-b ", "auth": "registration"}
    )
    assert profile["name"] == "Dział sprzedaży O'Neil_2.0-b"
    for bad in ("sales/leeds", "bad\nname", "50%"):
        assert "profile name may hold letters, digits, spaces and - _ . ' only" in (
            await api.refused("POST", path, 422, body={"name": bad, "auth": "registration"})
        )
    renamed = await api.ok("PATCH", f"{path}/Dział sprzedaży O'Neil_2.0-b", body={"name": " Łódź "})
    assert renamed["name"] == "Łódź"
    assert "new profile name may hold" in await api.refused(
        "PATCH", f"{path}/Łódź", 422, body={"name": "a/b"}
    )
    assert (await api.ok("GET", f"{path}/Łódź"))["name"] == "Łódź"


# ---------------------------------------------------------------------------
# Accounts


async def test_accounts(api: Api) -> None:
    created = await api.call(
        "POST", "/accounts", body={"name": "acme", "email": "ops@acme.example", "balance": "25.5"}
    )
    assert created.status == 201
    assert created.headers["Location"] == f"{API_PREFIX}/accounts/acme"
    account = created.json
    assert account["balance"] == "25.5000" and account["email"] == "ops@acme.example"
    assert await api.ok("GET", "/accounts/acme") == account
    message = await api.refused(
        "POST", "/accounts", 409, body={"name": "acme", "email": "x@acme.example"}
    )
    assert "already exists" in message
    assert "not an e-mail address" in await api.refused(
        "POST", "/accounts", 422, body={"name": "b", "email": "nope"}
    )
    assert "field 'email' is required" in await api.refused(
        "POST", "/accounts", 422, body={"name": "b"}
    )
    assert "unknown field 'mail'" in await api.refused(
        "POST", "/accounts", 422, body={"name": "b", "email": "b@b.example", "mail": "x"}
    )
    assert "field 'balance' must be a string" in await api.refused(
        "POST", "/accounts", 422, body={"name": "b", "email": "b@b.example", "balance": 2.5}
    )
    assert "no account named 'nobody'" in await api.refused("GET", "/accounts/nobody", 404)
    # Deposits.
    after = await api.ok("POST", "/accounts/acme/deposit", body={"amount": "10.1234"})
    assert after["balance"] == "35.6234"
    assert "more than zero" in await api.refused(
        "POST", "/accounts/acme/deposit", 422, body={"amount": "-1"}
    )
    assert "more than 4 decimal places" in await api.refused(
        "POST", "/accounts/acme/deposit", 422, body={"amount": "1.00001"}
    )
    assert "no account named 'nobody'" in await api.refused(
        "POST", "/accounts/nobody/deposit", 404, body={"amount": "1"}
    )
    assert (await api.ok("GET", "/accounts/acme"))["balance"] == "35.6234"


async def test_lists_are_paginated(api: Api) -> None:
    for name in ("delta", "alpha", "charlie", "bravo", "echo"):
        await api.ok("POST", "/accounts", 201, body={"name": name, "email": f"{name}@x.example"})
    first = await api.ok("GET", "/accounts", params={"limit": "2"})
    assert [a["name"] for a in first["items"]] == ["alpha", "bravo"]
    assert (first["total"], first["offset"], first["limit"], first["next_offset"]) == (5, 0, 2, 2)
    last = await api.ok("GET", "/accounts", params={"offset": "4", "limit": "2"})
    assert [a["name"] for a in last["items"]] == ["echo"] and last["next_offset"] is None
    for name in ("p3", "p1", "p2"):
        await api.ok(
            "POST",
            "/accounts/alpha/profiles",
            201,
            body={"name": name, "auth": "ip", "ip": "192.0.2.1", "port": 5060 + int(name[1])},
        )
    page = await api.ok("GET", "/accounts/alpha/profiles", params={"offset": "1", "limit": "1"})
    assert [p["name"] for p in page["items"]] == ["p2"] and page["total"] == 3
    await api.ok(
        "POST",
        "/accounts/alpha/numbers",
        201,
        body={"numbers": [f"+4411349600{i:02}" for i in range(12)]},
    )
    numbers = await api.ok("GET", "/accounts/alpha/numbers", params={"offset": "10"})
    assert [n["number"] for n in numbers["items"]] == ["+441134960010", "+441134960011"]
    for prefix in ("1", "44", "4420"):
        await api.ok("PUT", f"/rates/{prefix}", body={"price_per_minute": "0.01"})
    rates = await api.ok("GET", "/rates", params={"limit": "2"})
    assert [r["prefix"] for r in rates["items"]] == ["1", "44"] and rates["total"] == 3
    tokens_page = await api.ok("GET", "/tokens", params={"limit": "1"})
    assert tokens_page["total"] == 1 and tokens_page["items"][0]["name"] == "ops"
    for params, problem in [
        ({"offset": "-1"}, "offset must be 0 or more"),
        ({"limit": "0"}, "limit must be 1 to 1000"),
        ({"limit": "1001"}, "limit must be 1 to 1000"),
        ({"limit": "ten"}, "limit must be a whole number"),
        ({"limit": "1.5"}, "limit must be a whole number"),
        ({"page": "2"}, "unknown query parameter 'page'"),
    ]:
        for path in (
            "/accounts",
            "/accounts/alpha/profiles",
            "/accounts/alpha/numbers",
            "/rates",
            "/tokens",
            "/accounts/alpha/profiles/p1/history",
            "/accounts/alpha/profiles/p1/incoming",
        ):
            assert problem in await api.refused("GET", path, 422, params=params), (path, params)


# ---------------------------------------------------------------------------
# Profiles


async def test_create_view_rename_and_limit_a_profile(api: Api) -> None:
    await api.ok("POST", "/accounts", 201, body={"name": "acme", "email": "ops@acme.example"})
    api.refresh.clear()
    created = await api.call(
        "POST", "/accounts/acme/profiles", body={"name": "sales", "auth": "registration"}
    )
    assert created.status == 201
    assert created.headers["Location"] == f"{API_PREFIX}/accounts/acme/profiles/sales"
    profile = created.json
    assert profile["email"] == {"sent": False, "to": None, "error": None}  # no mailer
    assert profile["auth"] == "registration" and len(profile["password"]) == 20
    assert profile["realm"] == shared.REALM
    assert profile["gateway_addresses"] == [str(SIP_ADDRESS)]
    assert profile["channel_limit"] == 300 and profile["credit"] == "0.0000"
    assert profile["incoming"] == {"numbers": [], "delivered_to": "registered PBX"}
    assert api.refresh.is_set()  # the running gateway reloads at once
    del profile["email"]
    assert await api.ok("GET", "/accounts/acme/profiles/sales") == profile  # retrievable

    ip = await api.ok(
        "POST",
        "/accounts/acme/profiles",
        201,
        body={
            "name": "desk",
            "auth": "ip",
            "ip": "198.51.100.7",
            "port": 5070,
            "channel_limit": 20,
        },
    )
    assert (ip["ip"], ip["port"], ip["password"], ip["channel_limit"]) == (
        "198.51.100.7",
        5070,
        None,
        20,
    )
    assert ip["incoming"]["delivered_to"] == "198.51.100.7:5070"
    assert ip["email"] == {"sent": False, "to": None, "error": None}
    for body, status, problem in [
        (
            {"name": "d2", "auth": "ip", "ip": "198.51.100.7", "port": 5070},
            409,
            "198.51.100.7:5070 is already used by profile 'desk'",
        ),
        ({"name": "sales", "auth": "registration"}, 409, "already has a profile named 'sales'"),
        ({"name": "x", "auth": "ip", "ip": "not-an-ip", "port": 5070}, 422, "not an IP address"),
        (
            {"name": "x", "auth": "ip", "ip": "198.51.100.8", "port": "5070"},
            422,
            "field 'port' must be a whole number",
        ),
        (
            {"name": "x", "auth": "ip", "ip": "198.51.100.8", "port": True},
            422,
            "field 'port' must be a whole number",
        ),
        ({"name": "x", "auth": "sip"}, 422, "auth must be 'registration' or 'ip'"),
        (
            {"name": "x", "auth": "registration", "channel_limit": 301},
            422,
            "channel_limit must be 1 to 300",
        ),
        ({"name": "", "auth": "registration"}, 422, "profile name must be"),
    ]:
        assert problem in await api.refused("POST", "/accounts/acme/profiles", status, body=body)
    assert "no account named 'ghost'" in await api.refused(
        "POST", "/accounts/ghost/profiles", 404, body={"name": "x", "auth": "registration"}
    )

    # PATCH: rename and/or limit, at once.
    api.refresh.clear()
    renamed = await api.ok("PATCH", "/accounts/acme/profiles/sales", body={"name": "sales-2"})
    assert renamed["name"] == "sales-2" and renamed["password"] == profile["password"]
    assert api.refresh.is_set()
    assert "no profile named 'sales'" in await api.refused(
        "GET", "/accounts/acme/profiles/sales", 404
    )
    both = await api.ok(
        "PATCH", "/accounts/acme/profiles/sales-2", body={"name": "sales", "channel_limit": 10}
    )
    assert (both["name"], both["channel_limit"]) == ("sales", 10)
    api.refresh.clear()
    for body, status, problem in [
        ({}, 422, "nothing to change"),
        ({"channel_limit": 0}, 422, "channel_limit must be 1 to 300"),
        ({"channel_limit": "5"}, 422, "field 'channel_limit' must be a whole number"),
        ({"name": "desk"}, 409, "already has a profile named 'desk'"),
        ({"name": "desk", "channel_limit": 3}, 409, "already has a profile named 'desk'"),
        ({"name": "desk2", "channel_limit": 301}, 422, "channel_limit must be 1 to 300"),
        ({"limit": 5}, 422, "unknown field 'limit'"),
    ]:
        assert problem in await api.refused(
            "PATCH", "/accounts/acme/profiles/sales", status, body=body
        )
    assert not api.refresh.is_set()  # refused writes change nothing
    await api.ok("GET", "/accounts/acme/profiles/sales")
    assert not api.refresh.is_set()  # nor do reads
    assert "no profile named 'ghost'" in await api.refused(
        "PATCH", "/accounts/acme/profiles/ghost", 404, body={"channel_limit": 5}
    )
    listed = await api.ok("GET", "/accounts/acme/profiles")
    assert [(p["name"], p["channel_limit"]) for p in listed["items"]] == [
        ("desk", 20),
        ("sales", 10),
    ]


async def test_credit_moves_both_ways_and_never_below_zero(api: Api) -> None:
    await seed(api)
    path = "/accounts/acme/profiles/sales/credit"
    moved = await api.ok("POST", path, body={"amount": "30.25"})
    assert moved["profile"]["credit"] == "30.2500" and moved["account"]["balance"] == "69.7500"
    back = await api.ok("POST", path, body={"amount": "-10.25"})
    assert back["profile"]["credit"] == "20.0000" and back["account"]["balance"] == "80.0000"
    for body, status, problem in [
        ({"amount": "80.0001"}, 409, "has a balance of 80.0000"),
        ({"amount": "-20.0001"}, 409, "has a credit of 20.0000"),
        ({"amount": 5}, 422, "field 'amount' must be a string"),
        ({"amount": "5.00001"}, 422, "more than 4 decimal places"),
        ({"amount": "lots"}, 422, "amount like 25.00"),
        ({}, 422, "field 'amount' is required"),
    ]:
        assert problem in await api.refused("POST", path, status, body=body)
    assert "no profile named 'ghost'" in await api.refused(
        "POST", "/accounts/acme/profiles/ghost/credit", 404, body={"amount": "1"}
    )
    shown = await api.ok("GET", "/accounts/acme/profiles/sales")
    assert shown["credit"] == "20.0000"
    assert (await api.ok("GET", "/accounts/acme"))["balance"] == "80.0000"


async def test_concurrent_credit_moves_over_http(
    api: Api, database_url: str, secret_key: bytes
) -> None:
    """40 moves at once, spread over two API servers on their own stores
    (two gateway nodes): each succeeds or is refused whole with 409; the
    sums stay exact and neither side goes below zero."""
    await seed(api)
    second_store = await Store.open(database_url, secret_key=secret_key, realm=shared.REALM)
    try:
        async with _serve(second_store, None, api.operator) as second:
            second.secrets = api.secrets
            nodes = [api, second]
            path = "/accounts/acme/profiles/sales/credit"

            async def move(amount: str, index: int) -> int:
                reply = await nodes[index % 2].call(
                    "POST", path, token="manager", body={"amount": amount}
                )
                assert reply.status in (200, 409), reply.text
                if reply.status == 409:
                    assert "cannot" in reply.message
                return reply.status

            async def sides() -> tuple[Decimal, Decimal]:
                profile = await api.ok("GET", "/accounts/acme/profiles/sales")
                account = await api.ok("GET", "/accounts/acme")
                return Decimal(account["balance"]), Decimal(profile["credit"])

            # 40 x +10 against a balance of 100: exactly ten get through.
            done = await asyncio.gather(*(move("10", i) for i in range(40)))
            assert (done.count(200), done.count(409)) == (10, 30)
            assert await sides() == (Decimal(0), Decimal(100))
            # Both ways at once.
            amounts = ["10", "-10"] * 20
            random.shuffle(amounts)
            done = await asyncio.gather(*(move(a, i) for i, a in enumerate(amounts)))
            net = sum(
                (1 if a == "10" else -1) for a, s in zip(amounts, done, strict=True) if s == 200
            )
            balance, credit = await sides()
            assert balance + credit == Decimal(100)
            assert credit == Decimal(100 + 10 * net) and balance >= 0 and credit >= 0
            # 40 x -10: exactly what is there comes back.
            expected = int(credit / 10)
            done = await asyncio.gather(*(move("-10", i) for i in range(40)))
            assert (done.count(200), done.count(409)) == (expected, 40 - expected)
            assert await sides() == (Decimal(100), Decimal(0))
    finally:
        await second_store.close()


async def test_delete_gives_everything_back(api: Api) -> None:
    await seed(api)
    await api.ok("POST", "/accounts/acme/numbers", 201, body={"numbers": ["+441134960001"]})
    await api.ok("PUT", "/accounts/acme/numbers/+441134960001/profile", body={"profile": "sales"})
    await api.ok(
        "POST", "/accounts/acme/profiles", 201, body={"name": "keep", "auth": "registration"}
    )
    await api.ok("POST", "/accounts/acme/numbers", 201, body={"numbers": ["+441134960002"]})
    await api.ok("PUT", "/accounts/acme/numbers/+441134960002/profile", body={"profile": "keep"})
    await api.ok("POST", "/accounts/acme/profiles/sales/credit", body={"amount": "25"})
    await api.ok("POST", "/accounts/acme/profiles/keep/credit", body={"amount": "5"})
    sales = await api.ok("GET", "/accounts/acme/profiles/sales")
    keep = await api.ok("GET", "/accounts/acme/profiles/keep")
    await insert_records(api.store, sales["id"], [T0, T0 + timedelta(hours=1)])
    await insert_records(api.store, keep["id"], [T0])
    path = "/accounts/acme/profiles/sales"
    assert "repeat its name in ?confirm=" in await api.refused("DELETE", path, 422)
    assert "confirmation does not match" in await api.refused(
        "DELETE", path, 422, params={"confirm": "Sales"}
    )
    assert "end_calls must be true or false" in await api.refused(
        "DELETE", path, 422, params={"confirm": "sales", "end_calls": "maybe"}
    )
    # A call up (a channel held in this gateway's admission controller).
    await api.admission.acquire(sales["id"], "call-up@pbx", 300)
    assert "has 1 call up: set end_calls" in await api.refused(
        "DELETE", path, 409, params={"confirm": "sales"}
    )
    assert (await api.ok("GET", path))["credit"] == "25.0000"  # nothing happened
    api.refresh.clear()
    report = await api.ok("DELETE", path, params={"confirm": "sales", "end_calls": "true"})
    assert report == {
        "name": "sales",
        "account": "acme",
        "charged": "0.0000",
        "credit_returned": "25.0000",
        "numbers_released": ["+441134960000", "+441134960001"],
        "records_erased": 2,
        "calls_up": 1,
        "balance": "95.0000",
    }
    assert api.refresh.is_set()
    assert "no profile named 'sales'" in await api.refused("GET", path, 404)
    assert (await api.ok("GET", "/accounts/acme"))["balance"] == "95.0000"
    numbers = await api.ok("GET", "/accounts/acme/numbers")
    assert [(n["number"], n["profile"]) for n in numbers["items"]] == [
        ("+441134960000", None),
        ("+441134960001", None),
        ("+441134960002", "keep"),
    ]
    # The other profile keeps its credit, numbers and history.
    assert (await api.ok("GET", "/accounts/acme/profiles/keep"))["credit"] == "5.0000"
    assert (await api.ok("GET", "/accounts/acme/profiles/keep/history"))["total"] == 1
    # A profile made again under the name starts with no history.
    await api.ok(
        "POST", "/accounts/acme/profiles", 201, body={"name": "sales", "auth": "registration"}
    )
    assert (await api.ok("GET", f"{path}/history"))["total"] == 0
    assert "no profile named 'ghost'" in await api.refused(
        "DELETE", "/accounts/acme/profiles/ghost", 404, params={"confirm": "ghost"}
    )


# ---------------------------------------------------------------------------
# Call history


async def test_history_pages_and_csv_report(api: Api) -> None:
    await seed(api)
    sales = await api.ok("GET", "/accounts/acme/profiles/sales")
    starts = [T0 + timedelta(days=d) for d in range(4)]  # June 1 to 4
    call_ids = await insert_records(api.store, sales["id"], starts)
    await insert_records(
        api.store,
        sales["id"],
        [T0 + timedelta(hours=2)],
        caller='=HYPERLINK("x"), "quoted"',
        answered_at=None,
        duration_ms=0,
        final_status=486,
        cost=Decimal(0),
    )
    path = "/accounts/acme/profiles/sales/history"
    page = await api.ok("GET", path, params={"limit": "2"})
    assert page["total"] == 5 and page["next_offset"] == 2
    assert [r["call_id"] for r in page["items"]] == [call_ids[3], call_ids[2]]  # newest first
    record = page["items"][0]
    assert record["cost"] == "0.0123" and record["duration_seconds"] == "30.500"
    assert record["started_at"] == starts[3].isoformat()
    window = {"since": "2024-06-02", "until": "2024-06-04T00:00:00+00:00"}
    filtered = await api.ok("GET", path, params=window)
    assert [r["call_id"] for r in filtered["items"]] == [call_ids[2], call_ids[1]]
    for params, problem in [
        ({"since": "2024-06-05", "until": "2024-06-01"}, "is after until"),
        ({"since": "yesterday"}, "since must be an ISO 8601 date"),
    ]:
        assert problem in await api.refused("GET", path, 422, params=params)
        assert problem in await api.refused("GET", path + ".csv", 422, params=params)
    assert "unknown query parameter 'offset'" in await api.refused(
        "GET", path + ".csv", 422, params={"offset": "1"}
    )

    # The CSV report: the whole period, oldest first, RFC 4180.
    reply = await api.call("GET", path + ".csv")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/csv")
    assert reply.headers["Content-Disposition"] == (
        "attachment; filename=\"sales-history.csv\"; filename*=UTF-8''sales-history.csv"
    )
    rows = list(csv.reader(io.StringIO(reply.text, newline="")))
    assert rows[0] == list(CSV_COLUMNS)
    assert [row[0] for row in rows[1:]] == [call_ids[0], rows[2][0], *call_ids[1:]]
    declined = dict(zip(CSV_COLUMNS, rows[2], strict=True))
    assert declined["caller"] == '\'=HYPERLINK("x"), "quoted"'  # no formula, quoting intact
    assert (declined["answered_at"], declined["final_status"]) == ("", "486")
    reply = await api.call("GET", path + ".csv", params=window)
    rows = list(csv.reader(io.StringIO(reply.text, newline="")))
    assert [row[0] for row in rows[1:]] == [call_ids[1], call_ids[2]]
    assert "no profile named 'ghost'" in await api.refused(
        "GET", "/accounts/acme/profiles/ghost/history.csv", 404
    )


async def test_a_large_csv_report_streams_in_pieces(api: Api) -> None:
    """More rows than the service reads at once and than one write holds."""
    await seed(api)
    sales = await api.ok("GET", "/accounts/acme/profiles/sales")
    count = 1200
    await insert_records(api.store, sales["id"], [T0 + timedelta(seconds=s) for s in range(count)])
    async with api.client.get(
        API_PREFIX + "/accounts/acme/profiles/sales/history.csv",
        headers={"Authorization": f"Bearer {api.operator}"},
    ) as response:
        assert response.status == 200
        assert response.headers.get("Transfer-Encoding") == "chunked"
        text = await response.text()
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert len(rows) == count + 1
    started = [row[4] for row in rows[1:]]
    assert started == sorted(started) and len(set(started)) == count


# ---------------------------------------------------------------------------
# Numbers and incoming calls


async def test_numbers_assignment_and_incoming(api: Api) -> None:
    await seed(api)
    added = await api.ok(
        "POST",
        "/accounts/acme/numbers",
        201,
        body={"numbers": ["+44 113 496 0003", "+441134960004"]},
    )
    assert added == {
        "items": [
            {"number": "+441134960003", "account": "acme", "profile": None},
            {"number": "+441134960004", "account": "acme", "profile": None},
        ]
    }
    for body, status, problem in [
        ({"numbers": ["+441134960003"]}, 409, "number +441134960003 already exists"),
        ({"numbers": ["+441134960009"]}, 409, "already exists"),  # another account's
        ({"numbers": ["12345"]}, 422, "not an E.164 number"),
        ({"numbers": []}, 422, "no numbers given"),
        ({"numbers": [441134960005]}, 422, "field 'numbers' must be a list of strings"),
        ({"numbers": "+441134960005"}, 422, "field 'numbers' must be a list of strings"),
    ]:
        assert problem in await api.refused("POST", "/accounts/acme/numbers", status, body=body)
    await api.ok(
        "POST",
        "/accounts/acme/profiles",
        201,
        body={"name": "desk", "auth": "ip", "ip": "203.0.113.5", "port": 5060},
    )
    route = "/accounts/acme/numbers/+441134960003/profile"
    assigned = await api.ok("PUT", route, body={"profile": "desk"})
    assert assigned == {"number": "+441134960003", "account": "acme", "profile": "desk"}
    assert "is assigned to profile 'desk'" in await api.refused(
        "PUT", route, 409, body={"profile": "sales"}
    )
    moved = await api.ok("PUT", route, body={"profile": "sales", "move": True})
    assert moved["profile"] == "sales"
    assert "no profile named 'ghost'" in await api.refused(
        "PUT", route, 404, body={"profile": "ghost"}
    )
    assert "no number +441134960099" in await api.refused(
        "PUT", "/accounts/acme/numbers/+441134960099/profile", 404, body={"profile": "sales"}
    )
    # A number of another account is not there for this one, even for the operator.
    assert "no number +441134960009 in account 'acme'" in await api.refused(
        "PUT", "/accounts/acme/numbers/+441134960009/profile", 404, body={"profile": "sales"}
    )
    assert "not an E.164 number" in await api.refused(
        "DELETE", "/accounts/acme/numbers/12/profile", 422
    )

    incoming = await api.ok("GET", "/accounts/acme/profiles/sales/incoming")
    assert incoming["delivered_to"] == "registered PBX"
    assert [n["number"] for n in incoming["items"]] == ["+441134960000", "+441134960003"]
    assert (incoming["profile"], incoming["account"], incoming["total"]) == ("sales", "acme", 2)
    await api.ok("PUT", "/accounts/acme/numbers/+441134960004/profile", body={"profile": "desk"})
    desk = await api.ok("GET", "/accounts/acme/profiles/desk/incoming")
    assert desk["delivered_to"] == "203.0.113.5:5060"
    assert [n["number"] for n in desk["items"]] == ["+441134960004"]

    unassigned = await api.ok("DELETE", route)
    assert unassigned == {"number": "+441134960003", "account": "acme", "profile": None}
    only = await api.ok("GET", "/accounts/acme/numbers", params={"profile": "sales"})
    assert [n["number"] for n in only["items"]] == ["+441134960000"]
    assert "no profile named 'ghost'" in await api.refused(
        "GET", "/accounts/acme/numbers", 404, params={"profile": "ghost"}
    )


# ---------------------------------------------------------------------------
# Rates and tokens


async def test_rates(api: Api) -> None:
    api.refresh.clear()
    rate = await api.ok("PUT", "/rates/44", body={"price_per_minute": "0.01"})
    assert (rate["prefix"], rate["price_per_minute"]) == ("44", "0.0100")
    assert api.refresh.is_set()
    await api.ok("PUT", "/rates/+4420", body={"price_per_minute": "0.0080"})
    default = await api.ok("PUT", "/rates/default", body={"price_per_minute": "0.2"})
    assert default["prefix"] == ""
    await api.ok("PUT", "/rates/44", body={"price_per_minute": "0.0150"})  # a new price
    listed = await api.ok("GET", "/rates")
    assert [(r["prefix"], r["price_per_minute"]) for r in listed["items"]] == [
        ("", "0.2000"),
        ("44", "0.0150"),
        ("4420", "0.0080"),
    ]
    for prefix, body, problem in [
        ("044", {"price_per_minute": "0.01"}, "rate prefix must be"),
        ("44x", {"price_per_minute": "0.01"}, "rate prefix must be"),
        ("44", {"price_per_minute": "-0.01"}, "zero or more"),
        ("44", {"price_per_minute": 0.01}, "field 'price_per_minute' must be a string"),
    ]:
        assert problem in await api.refused("PUT", f"/rates/{prefix}", 422, body=body)
    removed = await api.ok("DELETE", "/rates/4420")
    assert removed["price_per_minute"] == "0.0080"
    assert "no rate for prefix '4420'" in await api.refused("DELETE", "/rates/4420", 404)
    await api.ok("DELETE", "/rates/default")
    assert [r["prefix"] for r in (await api.ok("GET", "/rates"))["items"]] == ["44"]


async def test_tokens(api: Api) -> None:
    await seed(api)
    created = await api.call(
        "POST", "/tokens", body={"name": "acme-2", "role": "account", "account": "acme"}
    )
    assert created.status == 201
    token = created.json
    secret = token.pop("secret")
    assert secret.startswith("sgw_") and token["role"] == "account"
    assert token["account"] == "acme"
    assert (await api.ok("GET", "/accounts/acme", token=secret))["name"] == "acme"
    listed = await api.ok("GET", "/tokens")
    assert [t["name"] for t in listed["items"]] == ["acme-2", "acme-mgr", "ops"]
    assert all("secret" not in t for t in listed["items"]) and secret not in json.dumps(listed)
    for body, status, problem in [
        ({"name": "acme-2", "role": "operator"}, 409, "already exists"),
        ({"name": "x", "role": "account"}, 422, "needs the account"),
        ({"name": "x", "role": "operator", "account": "acme"}, 422, "name no account"),
        ({"name": "x", "role": "admin"}, 422, "token role must be"),
        ({"name": "x", "role": "account", "account": "ghost"}, 404, "no account named 'ghost'"),
    ]:
        assert problem in await api.refused("POST", "/tokens", status, body=body)
    revoked = await api.ok("DELETE", "/tokens/acme-2")
    assert revoked["name"] == "acme-2"
    assert "not valid" in await api.refused("GET", "/accounts/acme", 401, token=secret)
    assert "no token named 'acme-2'" in await api.refused("DELETE", "/tokens/acme-2", 404)


# ---------------------------------------------------------------------------
# Errors and the e-mail


async def test_errors_are_json(api: Api) -> None:
    await seed(api)
    assert "no such resource: /api/v1/nowhere" in await api.refused("GET", "/nowhere", 404)
    reply = await api.call("PUT", "/accounts")
    assert reply.status == 405 and set(reply.headers["Allow"].split(",")) == {"GET", "POST"}
    assert "method PUT is not allowed" in reply.message
    for raw, problem in [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b"", "a JSON object is required"),
        (b'{"amount": NaN}', "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
    ]:
        assert problem in await api.refused(
            "POST",
            "/accounts/acme/deposit",
            422,
            raw=raw,
            headers={"Content-Type": "application/json"},
        )
    huge = json.dumps({"numbers": ["+441134960000"] * (MAX_BODY // 10)}).encode()
    assert "larger than" in await api.refused("POST", "/accounts/acme/numbers", 413, raw=huge)
    # Without Content-Length (chunked), the limit holds all the same.

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(MAX_BODY // 1000 + 2):
            yield b" " * 1000

    async with api.client.post(
        API_PREFIX + "/accounts/acme/numbers",
        data=chunks(),
        headers={"Authorization": f"Bearer {api.operator}"},
    ) as response:
        assert response.status == 413
    assert "unknown query parameter 'x'" in await api.refused(
        "GET", "/accounts/acme", 422, params={"x": "1"}
    )


async def test_an_unexpected_failure_is_500_without_details(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    await seed(api)

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internals at 0xdeadbeef")

    monkeypatch.setattr(profiles, "get_account", broken)
    message = await api.refused("GET", "/accounts/acme", 500)
    assert "internal error" in message and "0xdeadbeef" not in message


async def test_profile_creation_emails_the_credentials(
    store: Store,
    smtp_server: Callable[..., Any],  # noqa: F811
) -> None:
    server = smtp_server()
    mailer = SMTPMailer(smtp_settings(server.host, server.port))
    async with _serve(store, mailer) as api:
        await api.ok("POST", "/accounts", 201, body={"name": "acme", "email": "pbx@acme.example"})
        created = await api.ok(
            "POST", "/accounts/acme/profiles", 201, body={"name": "sales", "auth": "registration"}
        )
        assert created["email"] == {"sent": True, "to": "pbx@acme.example", "error": None}
        envelope, message = server.mailbox.only_message()
        assert envelope.rcpt_tos == ["pbx@acme.example"]
        body = message.get_content()
        assert created["password"] in body and created["sip_username"] in body
        assert str(SIP_ADDRESS) in body
        assert created["password"] not in str(message["Subject"])
        # An IP profile has no secret to hand over: nothing is sent.
        ip = await api.ok(
            "POST",
            "/accounts/acme/profiles",
            201,
            body={"name": "desk", "auth": "ip", "ip": "192.0.2.7", "port": 5060},
        )
        assert ip["email"] == {"sent": False, "to": None, "error": None}
        assert len(server.mailbox.envelopes) == 1


async def test_a_failed_email_keeps_the_profile(
    store: Store,
    smtp_server: Callable[..., Any],  # noqa: F811
) -> None:
    server = smtp_server(RefusingMailbox())
    mailer = SMTPMailer(smtp_settings(server.host, server.port))
    async with _serve(store, mailer) as api:
        await api.ok("POST", "/accounts", 201, body={"name": "acme", "email": "pbx@acme.example"})
        created = await api.ok(
            "POST", "/accounts/acme/profiles", 201, body={"name": "sales", "auth": "registration"}
        )
        notice = created.pop("email")
        assert notice["sent"] is False and notice["to"] == "pbx@acme.example"
        assert "550" in notice["error"]
        assert await api.ok("GET", "/accounts/acme/profiles/sales") == created


async def test_names_with_spaces_and_accents_in_paths(api: Api) -> None:
    await api.ok("POST", "/accounts", 201, body={"name": "Acme Ltd", "email": "ops@acme.example"})
    created = await api.call(
        "POST", "/accounts/Acme%20Ltd/profiles", body={"name": "Ventes Été", "auth": "registration"}
    )
    assert created.status == 201
    location = created.headers["Location"]
    assert location == f"{API_PREFIX}/accounts/Acme%20Ltd/profiles/Ventes%20%C3%89t%C3%A9"
    profile = await api.ok("GET", location.removeprefix(API_PREFIX))
    assert (profile["account"], profile["name"]) == ("Acme Ltd", "Ventes Été")
    reply = await api.call("GET", location.removeprefix(API_PREFIX) + "/history.csv")
    assert reply.status == 200
    assert reply.headers["Content-Disposition"] == (
        'attachment; filename="Ventes__t_-history.csv";'
        " filename*=UTF-8''Ventes%20%C3%89t%C3%A9-history.csv"
    )
