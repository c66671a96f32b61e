"""Pagination of the management lists (accounts, profiles, numbers, rates,
tokens, call history).

Every list function takes ``offset`` and ``limit`` and answers a
:class:`Page`: one slice of a stable ordering plus the ``total`` count, so a
front end can say "51-100 of 240" and ask for the next slice.  The limit is
bounded so that one request never loads an unbounded table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from gateway.manage.errors import ValidationError

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "Page", "check_page"]

#: What one page holds when the caller does not say.
DEFAULT_LIMIT = 100
#: The most one page may hold: a screenful of a console table many times
#: over, and still one short query and a response of bounded size.
MAX_LIMIT = 1000

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """``items`` are the rows ``offset`` to ``offset + limit - 1`` of
    ``total`` in the list's ordering."""

    items: list[T]
    total: int
    offset: int
    limit: int

    @property
    def next_offset(self) -> int | None:
        """Where the next page starts, or None after the last one."""
        following = self.offset + len(self.items)
        return following if self.items and following < self.total else None


def _whole(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{what} must be a whole number, got {value!r}")
    return value


def check_page(offset: int, limit: int) -> tuple[int, int]:
    """``(offset, limit)`` if ``offset >= 0`` and ``1 <= limit <=``
    :data:`MAX_LIMIT`, else :class:`~gateway.manage.errors.ValidationError`."""
    offset, limit = _whole(offset, "offset"), _whole(limit, "limit")
    if offset < 0:
        raise ValidationError(f"offset must be 0 or more, got {offset}")
    if not 1 <= limit <= MAX_LIMIT:
        raise ValidationError(f"limit must be 1 to {MAX_LIMIT}, got {limit}")
    return offset, limit
