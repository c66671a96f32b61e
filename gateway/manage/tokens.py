"""Bearer tokens of the REST API (RFC 6750), and who they speak for.

A token has a name (for listing and revoking) and a role: an *operator*
token acts on every account; an *account* token (an account manager's)
acts on its own account only.  The secret is shown once, when the token
is created; only its SHA-256 is stored, so a copy of the database gives no
usable token.  (The secret has 256 random bits: a plain hash is enough, no
password-style stretching is needed.)

:func:`authenticate` turns a presented secret into a :class:`Principal`;
:func:`visible_account` is the one scoping rule every API handler applies
before calling the service: an account manager naming another account gets
the same :class:`~gateway.manage.errors.NotFoundError` as for an account that does
not exist, so existence never leaks.

Token changes do not bump the directory: the SIP side does not use them.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from gateway.manage.errors import ConflictError, ForbiddenError, NotFoundError, ValidationError
from gateway.manage.paging import DEFAULT_LIMIT, Page, check_page
from gateway.store.database import Store
from gateway.store.models import NAME_MAX_LENGTH, Account, ApiToken, TokenRole

__all__ = [
    "SECRET_PREFIX",
    "Principal",
    "TokenView",
    "authenticate",
    "create_token",
    "list_tokens",
    "require_operator",
    "revoke_token",
    "token_document",
    "visible_account",
]

#: Every secret starts with this, so that a leaked one is recognisable
#: (secret scanners, logs) and a wrong kind of credential is refused early.
SECRET_PREFIX = "sgw_"
#: 32 random bytes: 256 bits, 43 characters of URL-safe base64.
SECRET_BYTES = 32
#: Anything longer is not one of ours; it is refused without hashing.
_SECRET_MAX_LENGTH = 128


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenView:
    name: str
    role: TokenRole
    account: str | None  # the account of an account token
    created_at: datetime


@dataclass(frozen=True)
class Principal:
    """Who a request speaks for: the role, and for an account manager the
    account (id and name); ``token`` is the token's name (for logs)."""

    role: TokenRole
    account_id: int | None
    account: str | None
    token: str


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _name(value: str) -> str:
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= NAME_MAX_LENGTH
        or value != value.strip()
        or not value.isprintable()
    ):
        raise ValidationError(
            f"token name must be 1-{NAME_MAX_LENGTH} printable characters without"
            f" surrounding spaces, got {value!r}"
        )
    return value


def _role(value: TokenRole | str) -> TokenRole:
    try:
        return TokenRole(value)
    except ValueError:
        choices = " or ".join(repr(r.value) for r in TokenRole)
        raise ValidationError(f"token role must be {choices}, got {value!r}") from None


async def create_token(
    store: Store, *, name: str, role: TokenRole | str, account: str | None
) -> tuple[TokenView, str]:
    """A new token; returns its view and its secret (``sgw_`` and 43
    characters), which is stored nowhere: show it once.

    An operator token names no account; an account token must.
    """
    name, kind = _name(name), _role(role)
    if kind is TokenRole.OPERATOR and account is not None:
        raise ValidationError("an operator token acts on every account: name no account")
    if kind is TokenRole.ACCOUNT and account is None:
        raise ValidationError("an account token needs the account it acts on")
    secret = SECRET_PREFIX + secrets.token_urlsafe(SECRET_BYTES)
    try:
        async with store.write(bump=False) as session:
            owner = None
            if account is not None:
                owner = await session.scalar(select(Account).where(Account.name == account))
                if owner is None:
                    raise NotFoundError(f"no account named {account!r}")
            taken = await session.scalar(select(ApiToken.id).where(ApiToken.name == name))
            if taken is not None:
                raise ConflictError(f"a token named {name!r} already exists")
            token = ApiToken(
                name=name,
                token_sha256=_digest(secret),
                role=kind.value,
                account_id=None if owner is None else owner.id,
            )
            session.add(token)
            await session.flush()
            view = TokenView(
                name=name,
                role=kind,
                account=None if owner is None else owner.name,
                created_at=token.created_at,
            )
    except IntegrityError:
        raise ConflictError(f"a token named {name!r} already exists") from None
    return view, secret


async def list_tokens(
    store: Store, *, offset: int = 0, limit: int = DEFAULT_LIMIT
) -> Page[TokenView]:
    """Every token (never a secret), ordered by name."""
    offset, limit = check_page(offset, limit)
    async with store.read() as session:
        total = await session.scalar(select(func.count(ApiToken.id)))
        query = (
            select(ApiToken, Account.name)
            .outerjoin(Account, ApiToken.account_id == Account.id)
            .order_by(ApiToken.name)
            .offset(offset)
            .limit(limit)
        )
        items = [
            TokenView(
                name=token.name,
                role=TokenRole(token.role),
                account=account,
                created_at=token.created_at,
            )
            for token, account in await session.execute(query)
        ]
    return Page(items, int(total or 0), offset, limit)


async def revoke_token(store: Store, name: str) -> TokenView:
    """Delete token ``name``: its secret stops working at once (every
    request is authenticated against the database).  Returns what it was."""
    async with store.write(bump=False) as session:
        row = (
            await session.execute(
                select(ApiToken, Account.name)
                .outerjoin(Account, ApiToken.account_id == Account.id)
                .where(ApiToken.name == name)
            )
        ).first()
        if row is None:
            raise NotFoundError(f"no token named {name!r}")
        token, account = row
        await session.execute(delete(ApiToken).where(ApiToken.id == token.id))
        return TokenView(
            name=token.name,
            role=TokenRole(token.role),
            account=account,
            created_at=token.created_at,
        )


async def authenticate(store: Store, secret: str) -> Principal | None:
    """The principal ``secret`` speaks for, or None if it is no live token.

    The look-up is by SHA-256 of the secret, so the database compares
    digests, never secrets, and its timing tells nothing about a secret.
    """
    if (
        not isinstance(secret, str)
        or not secret.startswith(SECRET_PREFIX)
        or len(secret) > _SECRET_MAX_LENGTH
    ):
        return None
    async with store.read() as session:
        row = (
            await session.execute(
                select(ApiToken, Account.name)
                .outerjoin(Account, ApiToken.account_id == Account.id)
                .where(ApiToken.token_sha256 == _digest(secret))
            )
        ).first()
    if row is None:
        return None
    token, account = row
    return Principal(
        role=TokenRole(token.role), account_id=token.account_id, account=account, token=token.name
    )


def visible_account(principal: Principal, account: str | None) -> str | None:
    """The account a request of ``principal`` may act on, given the one it
    names (None: none named).

    An operator gets what it named (None: every account).  An account
    manager gets its own account, whether it named it or named none; naming
    another account is :class:`~gateway.manage.errors.NotFoundError`, worded as
    for an account that does not exist.
    """
    if principal.role is TokenRole.OPERATOR:
        return account
    if account is None or account == principal.account:
        return principal.account
    raise NotFoundError(f"no account named {account!r}")


def require_operator(principal: Principal) -> None:
    """:class:`~gateway.manage.errors.ForbiddenError` unless ``principal`` is an
    operator (accounts, deposits, rates and tokens are operators' business)."""
    if principal.role is not TokenRole.OPERATOR:
        raise ForbiddenError("only an operator token may do this")


def token_document(view: TokenView) -> dict[str, Any]:
    return {
        "name": view.name,
        "role": view.role.value,
        "account": view.account,
        "created_at": view.created_at.isoformat(),
    }
