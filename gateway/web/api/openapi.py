"""The OpenAPI 3.1 description of the REST API (:mod:`gateway.web.api.routes`), served
at ``/api/v1/openapi.json``.

It is data, written beside the handlers rather than generated from them:
the schemas say what the service layer's documents hold
(:func:`gateway.manage.profiles.profile_document` and friends).  A test holds the
routes of :data:`gateway.web.api.routes.ROUTES` and the operations here equal, both
ways.  Paths are relative to the server URL ``/api/v1``.
"""

from __future__ import annotations

import copy
from typing import Any, Final

from gateway.manage.paging import DEFAULT_LIMIT, MAX_LIMIT
from gateway.manage.profiles import E164_PATTERN
from gateway.store.models import BALANCE_SCALE, MAX_CHANNELS, NAME_MAX_LENGTH, PREFIX_MAX_LENGTH

__all__ = ["OPENAPI_VERSION", "openapi_document"]

OPENAPI_VERSION: Final = "3.1.0"

JSON = "application/json"
Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties: dict[str, Schema], *, required: tuple[str, ...] | None = None) -> Schema:
    """A closed object; every property required unless ``required`` says."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties if required is None else required),
        "additionalProperties": False,
    }


def _nullable(schema: Schema) -> Schema:
    return {"oneOf": [schema, {"type": "null"}]}


STRING: Final[Schema] = {"type": "string"}
NAME: Final[Schema] = {"type": "string", "minLength": 1, "maxLength": NAME_MAX_LENGTH}
TIME: Final[Schema] = {"type": "string", "format": "date-time"}
E164: Final[Schema] = {"type": "string", "pattern": f"^{E164_PATTERN}$"}
#: Money: a decimal string, exact to 4 places (a JSON number is a float).
MONEY: Final[Schema] = {
    "type": "string",
    "pattern": rf"^-?[0-9]+(\.[0-9]{{1,{BALANCE_SCALE}}})?$",
    "examples": ["12.5000"],
}
COUNT: Final[Schema] = {"type": "integer", "minimum": 0}
CHANNEL_LIMIT: Final[Schema] = {"type": "integer", "minimum": 1, "maximum": MAX_CHANNELS}


def _page_of(item: str) -> Schema:
    return _object(
        {
            "items": {"type": "array", "items": _ref(item)},
            "total": COUNT,
            "offset": COUNT,
            "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
            "next_offset": _nullable(COUNT),
        }
    )


_PROFILE_PROPERTIES: Final[dict[str, Schema]] = {
    "id": {"type": "integer"},
    "name": NAME,
    "account": NAME,
    "auth": {"enum": ["registration", "ip"]},
    "sip_username": STRING,
    "password": {
        **_nullable(STRING),
        "description": "the retrievable SIP password (registration profiles)",
    },
    "realm": _nullable(STRING),
    "gateway_addresses": {
        "type": "array",
        "items": STRING,
        "description": "where the PBX sends SIP (registrar and outbound proxy)",
    },
    "transports": {"type": "array", "items": {"enum": ["udp", "tcp"]}},
    "ip": _nullable(STRING),
    "port": _nullable({"type": "integer", "minimum": 1, "maximum": 65535}),
    "channel_limit": CHANNEL_LIMIT,
    "credit": MONEY,
    "numbers": {"type": "array", "items": E164},
    "incoming": _object(
        {
            "numbers": {"type": "array", "items": E164},
            "delivered_to": {
                "type": "string",
                "description": '"registered PBX" or the IP profile\'s "ip:port"',
            },
        }
    ),
    "created_at": TIME,
}

SCHEMAS: Final[dict[str, Schema]] = {
    "Error": _object(
        {
            "error": _object(
                {"status": {"type": "integer", "minimum": 400, "maximum": 599}, "message": STRING}
            )
        }
    ),
    "Account": _object(
        {
            "id": {"type": "integer"},
            "name": NAME,
            "email": STRING,
            "balance": MONEY,
            "created_at": TIME,
        }
    ),
    "AccountCreate": _object(
        {"name": NAME, "email": STRING, "balance": MONEY}, required=("name", "email")
    ),
    "AccountPage": _page_of("Account"),
    "Deposit": _object({"amount": MONEY}),
    "Profile": _object(_PROFILE_PROPERTIES),
    "ProfileCreated": _object(
        {
            **_PROFILE_PROPERTIES,
            "email": _object(
                {
                    "sent": {"type": "boolean"},
                    "to": _nullable(STRING),
                    "error": _nullable(STRING),
                }
            ),
        }
    ),
    "ProfileCreate": _object(
        {
            "name": NAME,
            "auth": {"enum": ["registration", "ip"]},
            "ip": STRING,
            "port": {"type": "integer", "minimum": 1, "maximum": 65535},
            "channel_limit": CHANNEL_LIMIT,
        },
        required=("name", "auth"),
    ),
    "ProfileUpdate": {
        **_object(
            {"name": NAME, "channel_limit": CHANNEL_LIMIT},
            required=(),
        ),
        "minProperties": 1,
    },
    "ProfilePage": _page_of("Profile"),
    "Credit": _object(
        {
            "amount": {
                **MONEY,
                "description": "more than 0: from the account's balance to the profile;"
                " less than 0: back to the balance",
            }
        }
    ),
    "CreditMove": _object({"profile": _ref("Profile"), "account": _ref("Account")}),
    "Deletion": _object(
        {
            "name": NAME,
            "account": NAME,
            "charged": MONEY,
            "credit_returned": MONEY,
            "numbers_released": {"type": "array", "items": E164},
            "records_erased": COUNT,
            "calls_up": COUNT,
            "balance": MONEY,
        }
    ),
    "Number": _object({"number": E164, "account": NAME, "profile": _nullable(NAME)}),
    "NumberPage": _page_of("Number"),
    "NumbersAdd": _object({"numbers": {"type": "array", "items": STRING, "minItems": 1}}),
    "NumbersAdded": _object({"items": {"type": "array", "items": _ref("Number")}}),
    "NumberAssign": _object(
        {
            "profile": NAME,
            "move": {
                "type": "boolean",
                "description": "take the number from the profile it is assigned to",
            },
        },
        required=("profile",),
    ),
    "Incoming": _object(
        {
            "profile": NAME,
            "account": NAME,
            "delivered_to": STRING,
            **_page_of("Number")["properties"],
        }
    ),
    "CallRecord": _object(
        {
            "call_id": STRING,
            "direction": {"enum": ["outbound", "inbound"]},
            "caller": STRING,
            "callee": STRING,
            "started_at": TIME,
            "answered_at": _nullable(TIME),
            "ended_at": TIME,
            "duration_seconds": {"type": "string", "examples": ["30.500"]},
            "final_status": {"type": "integer"},
            "cost": MONEY,
        }
    ),
    "CallRecordPage": _page_of("CallRecord"),
    "Rate": _object(
        {
            "prefix": {
                "type": "string",
                "pattern": f"^([1-9][0-9]{{0,{PREFIX_MAX_LENGTH - 1}}})?$",
            },
            "price_per_minute": MONEY,
            "created_at": TIME,
        }
    ),
    "RateSet": _object({"price_per_minute": MONEY}),
    "RatePage": _page_of("Rate"),
    "Token": _object(
        {
            "name": NAME,
            "role": {"enum": ["operator", "account"]},
            "account": _nullable(NAME),
            "created_at": TIME,
        }
    ),
    "TokenCreate": _object(
        {"name": NAME, "role": {"enum": ["operator", "account"]}, "account": NAME},
        required=("name", "role"),
    ),
    "TokenCreated": _object(
        {
            "name": NAME,
            "role": {"enum": ["operator", "account"]},
            "account": _nullable(NAME),
            "created_at": TIME,
            "secret": {"type": "string", "description": "shown this once only"},
        }
    ),
    "TokenPage": _page_of("Token"),
}


def _path_parameter(name: str, description: str) -> Schema:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": STRING,
    }


def _query_parameter(name: str, description: str, schema: Schema) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


PARAMETERS: Final[dict[str, Schema]] = {
    "account": _path_parameter("account", "account name"),
    "profile": _path_parameter("profile", "profile name, unique in its account"),
    "number": _path_parameter("number", "E.164 number, e.g. +441134960000"),
    "prefix": _path_parameter(
        "prefix", 'destination prefix (E.164 digits without "+"); "default" for the default rate'
    ),
    "token": _path_parameter("name", "token name"),
    "offset": _query_parameter("offset", "first item of the page", {**COUNT, "default": 0}),
    "limit": _query_parameter(
        "limit",
        "items per page",
        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
    ),
    "since": _query_parameter(
        "since", "calls that started at or after (ISO 8601; UTC if no offset)", STRING
    ),
    "until": _query_parameter("until", "calls that started before (ISO 8601)", STRING),
}

_ERRORS: Final[dict[str, tuple[str, str]]] = {
    "401": ("Unauthorized", "no bearer token, or not a live one (WWW-Authenticate: Bearer)"),
    "403": ("Forbidden", "an operator's operation asked for with an account token"),
    "404": ("NotFound", "no such account, profile, number, rate or token (or not yours)"),
    "409": ("Conflict", "the current state forbids it (a name taken, not enough money, calls up)"),
    "413": ("TooLarge", "the request body is larger than 64 KiB"),
    "422": ("Invalid", "a malformed body or parameter, or a value the service refuses"),
}

RESPONSES: Final[dict[str, Schema]] = {
    name: {"description": description, "content": {JSON: {"schema": _ref("Error")}}}
    for name, description in _ERRORS.values()
}


def _operation(
    summary: str,
    ok: tuple[int, str],
    *,
    parameters: tuple[str, ...] = (),
    body: str | None = None,
    errors: tuple[int, ...] = (),
    operator: bool = False,
    content: str = JSON,
) -> Schema:
    status, schema = ok
    answer: Schema = {"schema": _ref(schema)} if content == JSON else {"schema": STRING}
    responses: dict[str, Schema] = {
        str(status): {"description": summary, "content": {content: answer}}
    }
    codes = {401, 422, *errors}
    if operator:
        codes.add(403)
    if body is not None:
        codes.add(413)
    for code in sorted(codes):
        responses[str(code)] = {"$ref": f"#/components/responses/{_ERRORS[str(code)][0]}"}
    operation: Schema = {
        "summary": summary,
        "parameters": [{"$ref": f"#/components/parameters/{name}"} for name in parameters],
        "responses": responses,
    }
    if operator:
        operation["description"] = "Operator tokens only."
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {JSON: {"schema": _ref(body)}},
        }
    return operation


_PAGE = ("offset", "limit")
_PROFILE = ("account", "profile")


def _paths() -> dict[str, dict[str, Schema]]:
    profile = "/accounts/{account}/profiles/{profile}"
    return {
        "/openapi.json": {
            "get": {
                "summary": "this document (no token needed)",
                "security": [],
                "responses": {
                    "200": {
                        "description": "the OpenAPI document",
                        "content": {JSON: {"schema": {"type": "object"}}},
                    }
                },
            }
        },
        "/accounts": {
            "get": _operation(
                "list the accounts (an account token: its own)",
                (200, "AccountPage"),
                parameters=_PAGE,
            ),
            "post": _operation(
                "create an account",
                (201, "Account"),
                body="AccountCreate",
                errors=(409,),
                operator=True,
            ),
        },
        "/accounts/{account}": {
            "get": _operation(
                "an account", (200, "Account"), parameters=("account",), errors=(404,)
            ),
        },
        "/accounts/{account}/deposit": {
            "post": _operation(
                "add money paid in to the account's balance",
                (200, "Account"),
                parameters=("account",),
                body="Deposit",
                errors=(404, 409),
                operator=True,
            ),
        },
        "/accounts/{account}/profiles": {
            "get": _operation(
                "the account's profiles",
                (200, "ProfilePage"),
                parameters=("account", *_PAGE),
                errors=(404,),
            ),
            "post": _operation(
                "create a profile; a registration profile's credentials are e-mailed"
                " to the account",
                (201, "ProfileCreated"),
                parameters=("account",),
                body="ProfileCreate",
                errors=(404, 409),
            ),
        },
        profile: {
            "get": _operation(
                "a profile: what its PBX needs, credentials included",
                (200, "Profile"),
                parameters=_PROFILE,
                errors=(404,),
            ),
            "patch": _operation(
                "rename the profile and/or change its channel limit (applies at once)",
                (200, "Profile"),
                parameters=_PROFILE,
                body="ProfileUpdate",
                errors=(404, 409),
            ),
            "delete": {
                **_operation(
                    "delete the profile: credit back to the balance, numbers back to the"
                    " pool, call history erased, registrations removed",
                    (200, "Deletion"),
                    parameters=_PROFILE,
                    errors=(404, 409),
                ),
                "parameters": [
                    {"$ref": "#/components/parameters/account"},
                    {"$ref": "#/components/parameters/profile"},
                    {
                        "name": "confirm",
                        "in": "query",
                        "required": True,
                        "description": "the profile's name, repeated",
                        "schema": STRING,
                    },
                    {
                        "name": "end_calls",
                        "in": "query",
                        "required": False,
                        "description": "end the profile's calls up (else 409 while any is up)",
                        "schema": {"type": "boolean", "default": False},
                    },
                ],
            },
        },
        profile + "/credit": {
            "post": _operation(
                "move credit between the account's balance and the profile",
                (200, "CreditMove"),
                parameters=_PROFILE,
                body="Credit",
                errors=(404, 409),
            ),
        },
        profile + "/history": {
            "get": _operation(
                "the profile's calls, newest first",
                (200, "CallRecordPage"),
                parameters=(*_PROFILE, "since", "until", *_PAGE),
                errors=(404,),
            ),
        },
        profile + "/history.csv": {
            "get": _operation(
                "the profile's call history report (RFC 4180 CSV, oldest first)",
                (200, "CallRecord"),
                parameters=(*_PROFILE, "since", "until"),
                errors=(404,),
                content="text/csv",
            ),
        },
        profile + "/incoming": {
            "get": _operation(
                "the numbers delivered to the profile, and where they are delivered",
                (200, "Incoming"),
                parameters=(*_PROFILE, *_PAGE),
                errors=(404,),
            ),
        },
        "/accounts/{account}/numbers": {
            "get": {
                **_operation(
                    "the account's numbers",
                    (200, "NumberPage"),
                    parameters=("account", *_PAGE),
                    errors=(404,),
                ),
                "parameters": [
                    {"$ref": "#/components/parameters/account"},
                    {
                        "name": "profile",
                        "in": "query",
                        "required": False,
                        "description": "only the numbers delivered to this profile",
                        "schema": STRING,
                    },
                    {"$ref": "#/components/parameters/offset"},
                    {"$ref": "#/components/parameters/limit"},
                ],
            },
            "post": _operation(
                "add numbers to the account's pool (all or none)",
                (201, "NumbersAdded"),
                parameters=("account",),
                body="NumbersAdd",
                errors=(404, 409),
                operator=True,
            ),
        },
        "/accounts/{account}/numbers/{number}/profile": {
            "put": _operation(
                "deliver the number to a profile of the account",
                (200, "Number"),
                parameters=("account", "number"),
                body="NumberAssign",
                errors=(404, 409),
            ),
            "delete": _operation(
                "take the number back into the account's pool",
                (200, "Number"),
                parameters=("account", "number"),
                errors=(404,),
            ),
        },
        "/rates": {
            "get": _operation(
                "the rate table (longest prefix wins)", (200, "RatePage"), parameters=_PAGE
            ),
        },
        "/rates/{prefix}": {
            "put": _operation(
                "set the price per minute of a destination prefix",
                (200, "Rate"),
                parameters=("prefix",),
                body="RateSet",
                errors=(409,),
                operator=True,
            ),
            "delete": _operation(
                "remove a prefix's rate",
                (200, "Rate"),
                parameters=("prefix",),
                errors=(404,),
                operator=True,
            ),
        },
        "/tokens": {
            "get": _operation(
                "the API tokens (never their secrets)",
                (200, "TokenPage"),
                parameters=_PAGE,
                operator=True,
            ),
            "post": _operation(
                "create a token; its secret is in this answer only",
                (201, "TokenCreated"),
                body="TokenCreate",
                errors=(404, 409),
                operator=True,
            ),
        },
        "/tokens/{name}": {
            "delete": _operation(
                "revoke a token (at once)",
                (200, "Token"),
                parameters=("token",),
                errors=(404,),
                operator=True,
            ),
        },
    }


def openapi_document() -> dict[str, Any]:
    """The whole document, fresh (callers may change their copy)."""
    document = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "sipgw management API",
            "version": "1",
            "description": (
                "Accounts, SIP profiles, credit, numbers, call history, rates and API"
                " tokens of the SIP trunk gateway. Bearer tokens (RFC 6750): an operator"
                " token acts on every account, an account token on its own account only"
                " (any other account answers 404). Errors are"
                ' {"error": {"status": n, "message": "..."}}; money is a decimal string'
                ' with 4 places, e.g. "12.5000". See docs/api.md.'
            ),
        },
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearer": []}],
        "paths": _paths(),
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a token made with 'sipgw token create' or POST /tokens",
                }
            },
            "schemas": SCHEMAS,
            "parameters": PARAMETERS,
            "responses": RESPONSES,
        },
    }
    return copy.deepcopy(document)
