"""What ``sipgw`` prints for people: aligned tables, ``key: value``
pairs, the text of a profile or account document, a page of a listing with
where it sits, an operating system error in the operator's words.

The management commands (:mod:`gateway.cli.commands`) print these, or with
``--json`` the documents themselves.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from gateway.manage import profiles
from gateway.manage.paging import Page
from gateway.store.models import AuthMode
from sip.uri import host_port

__all__ = [
    "NO_GATEWAY",
    "account_text",
    "error_text",
    "host_port",
    "listing",
    "pairs",
    "prefix_text",
    "profile_text",
    "table",
]


def table(rows: Sequence[Sequence[str]]) -> str:
    """``rows`` in columns, each as wide as its widest cell."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def pairs(items: Sequence[tuple[str, str]]) -> str:
    """``key: value`` lines, the values aligned."""
    return table([(f"{key}:", value) for key, value in items])


def listing(
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
    text = table([heading, *rows])
    if page.offset or page.next_offset is not None:
        first, last = page.offset + 1, page.offset + len(page.items)
        following = "" if page.next_offset is None else f"; next: --offset {page.next_offset}"
        text += f"\n{first}-{last} of {page.total}{following}"
    return document, text


def profile_text(document: dict[str, Any]) -> str:
    """A profile document (:func:`profiles.profile_document`) as what to
    configure in the PBX."""
    lines = [("profile", document["name"]), ("account", document["account"])]
    lines.append(("auth", document["auth"]))
    if document["auth"] == AuthMode.REGISTRATION:
        lines.append(("sip username", document["sip_username"]))
        password = document["password"]
        lines.append(("password", password if password is not None else "(no secret key)"))
        lines.append(("realm", document["realm"]))
    else:
        lines.append(("pbx address", host_port(document["ip"], document["port"])))
    transports = ", ".join(document["transports"])
    for address in document["gateway_addresses"]:
        lines.append(("gateway", f"{address} ({transports})"))
    if not document["gateway_addresses"]:
        # Only a running gateway knows where PBXs reach it (gateway.manage.nodes).
        lines.append(("gateway", NO_GATEWAY))
    lines.append(("channels", str(document["channel_limit"])))
    lines.append(("credit", document["credit"]))
    incoming = document["incoming"]
    numbers = ", ".join(incoming["numbers"])
    lines.append(("numbers", f"{numbers} (to {incoming['delivered_to']})" if numbers else "-"))
    return pairs(lines)


def account_text(view: profiles.AccountView) -> str:
    return pairs([("account", view.name), ("e-mail", view.email), ("balance", str(view.balance))])


#: What ``profile show`` says for the gateway's address when none runs.
NO_GATEWAY = (
    "none running, so no address to give: start the gateway (sipgw serve) and run"
    " 'sipgw profile show' again"
)


def prefix_text(prefix: str) -> str:
    """A rate's destination prefix; the empty one is the default rate."""
    return prefix or "(default)"


def error_text(exc: OSError) -> str:
    """An operating system error in the operator's words."""
    if exc.strerror and exc.strerror.startswith("cannot"):
        return exc.strerror  # already phrased by sip.transport
    return exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc))
