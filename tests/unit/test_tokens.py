"""REST API tokens (``gateway/manage/tokens.py``), on SQLite and PostgreSQL:
creation (secret shown once, only its SHA-256 stored), authentication,
revocation, pagination, and the scoping rule of account managers."""

from __future__ import annotations

import hashlib
import re

import pytest
from sqlalchemy import select

from gateway.manage import profiles
from gateway.manage.errors import ConflictError, ForbiddenError, NotFoundError, ValidationError
from gateway.manage.tokens import (
    Principal,
    authenticate,
    create_token,
    list_tokens,
    require_operator,
    revoke_token,
    token_document,
    visible_account,
)
from gateway.store.database import Store
from gateway.store.models import ApiToken, TokenRole
from tests.unit import test_store as shared

# The store fixtures of tests/unit/test_store.py (SQLite and PostgreSQL), shared.
postgres_url = shared.postgres_url
database_url = shared.database_url
secret_key = shared.secret_key
store = shared.store

OPERATOR = Principal(role=TokenRole.OPERATOR, account_id=None, account=None, token="ops")


async def accounts(store: Store) -> None:
    await profiles.create_account(store, name="acme", email="ops@acme.example")
    await profiles.create_account(store, name="other", email="ops@other.example")


async def test_create_and_authenticate(store: Store) -> None:
    await accounts(store)
    version = await store.version()
    operator, operator_secret = await create_token(store, name="ops", role="operator", account=None)
    manager, manager_secret = await create_token(
        store, name="acme-console", role=TokenRole.ACCOUNT, account="acme"
    )
    assert await store.version() == version, "the SIP side does not reload for tokens"
    assert (operator.role, operator.account) == (TokenRole.OPERATOR, None)
    assert (manager.role, manager.account) == (TokenRole.ACCOUNT, "acme")
    for secret in (operator_secret, manager_secret):
        assert re.fullmatch(r"sgw_[A-Za-z0-9_-]{43}", secret)
    assert operator_secret != manager_secret

    # Only the SHA-256 is stored; the secret appears nowhere in the row.
    async with store.read() as session:
        rows = {t.name: t for t in await session.scalars(select(ApiToken))}
    assert rows["ops"].token_sha256 == hashlib.sha256(operator_secret.encode()).hexdigest()
    for row in rows.values():
        assert operator_secret not in repr(vars(row)) and manager_secret not in repr(vars(row))

    acme = await profiles.get_account(store, "acme")
    assert await authenticate(store, operator_secret) == OPERATOR
    assert await authenticate(store, manager_secret) == Principal(
        role=TokenRole.ACCOUNT, account_id=acme.id, account="acme", token="acme-console"
    )
    for wrong in (
        "",
        "sgw_",
        operator_secret[:-1],
        operator_secret + "x",
        operator_secret.removeprefix("sgw_"),
        "sgw_" + "x" * 500,
        hashlib.sha256(operator_secret.encode()).hexdigest(),  # the stored value is no key
    ):
        assert await authenticate(store, wrong) is None, wrong


async def test_revoke_stops_the_secret_at_once(store: Store) -> None:
    await accounts(store)
    _, secret = await create_token(store, name="ci", role="operator", account=None)
    assert await authenticate(store, secret) is not None
    revoked = await revoke_token(store, "ci")
    assert (revoked.name, revoked.role) == ("ci", TokenRole.OPERATOR)
    assert await authenticate(store, secret) is None
    with pytest.raises(NotFoundError, match="no token named 'ci'"):
        await revoke_token(store, "ci")
    # The name can be used again, with a new secret.
    _, fresh = await create_token(store, name="ci", role="operator", account=None)
    assert fresh != secret and await authenticate(store, secret) is None


async def test_list_in_pages_never_shows_secrets(store: Store) -> None:
    await accounts(store)
    secrets = []
    for name, account in (("c", "acme"), ("a", None), ("b", "other")):
        role = "operator" if account is None else "account"
        _, secret = await create_token(store, name=name, role=role, account=account)
        secrets.append(secret)
    page = await list_tokens(store, limit=2)
    assert [(t.name, t.account) for t in page.items] == [("a", None), ("b", "other")]
    assert (page.total, page.next_offset) == (3, 2)
    rest = await list_tokens(store, offset=2)
    assert [(t.name, t.role) for t in rest.items] == [("c", TokenRole.ACCOUNT)]
    documents = [token_document(t) for t in [*page.items, *rest.items]]
    assert set(documents[0]) == {"name", "role", "account", "created_at"}
    assert not any(secret in str(documents) for secret in secrets)


@pytest.mark.parametrize(
    ("arguments", "error", "problem"),
    [
        ({"name": "x", "role": "admin", "account": None}, ValidationError, "token role must be"),
        ({"name": "x", "role": "operator", "account": "acme"}, ValidationError, "name no account"),
        ({"name": "x", "role": "account", "account": None}, ValidationError, "needs the account"),
        ({"name": "", "role": "operator", "account": None}, ValidationError, "token name"),
        ({"name": " x", "role": "operator", "account": None}, ValidationError, "token name"),
        ({"name": "a\nb", "role": "operator", "account": None}, ValidationError, "token name"),
        ({"name": "x", "role": "account", "account": "nope"}, NotFoundError, "no account named"),
        ({"name": "taken", "role": "operator", "account": None}, ConflictError, "already exists"),
    ],
)
async def test_create_validation(
    store: Store, arguments: dict[str, str | None], error: type[Exception], problem: str
) -> None:
    await accounts(store)
    await create_token(store, name="taken", role="operator", account=None)
    with pytest.raises(error) as info:
        await create_token(store, **arguments)  # type: ignore[arg-type]
    assert problem in str(info.value)
    assert (await list_tokens(store)).total == 1


async def test_account_manager_scoping(store: Store) -> None:
    await accounts(store)
    await profiles.create_profile(store, account="acme", name="sales", auth="registration")
    await profiles.create_profile(store, account="other", name="sales", auth="registration")
    _, secret = await create_token(store, name="m", role="account", account="acme")
    manager = await authenticate(store, secret)
    assert manager is not None
    # An operator names any account, or none (all of them).
    assert visible_account(OPERATOR, "other") == "other"
    assert visible_account(OPERATOR, None) is None
    require_operator(OPERATOR)
    # A manager gets its own account, named or not...
    assert visible_account(manager, None) == "acme"
    assert visible_account(manager, "acme") == "acme"
    # ...and another account is not found, worded as for a missing one.
    with pytest.raises(NotFoundError) as other:
        visible_account(manager, "other")
    with pytest.raises(NotFoundError) as missing:
        await profiles.get_account(store, "nobody")
    assert str(other.value) == "no account named 'other'"
    assert str(missing.value) == "no account named 'nobody'"
    with pytest.raises(ForbiddenError, match="only an operator"):
        require_operator(manager)
    # What the service then shows the manager is its own account's only.
    scoped = visible_account(manager, None)
    shown = await profiles.get_profile(store, "sales", account=scoped)
    assert shown.account == "acme"
    listed = await profiles.list_profiles(store, account=scoped)
    assert [(p.account, p.name) for p in listed.items] == [("acme", "sales")]
