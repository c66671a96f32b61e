"""What a test needs from the machine beyond Python: SIPp, Redis,
PostgreSQL, the RFC 4475 corpus.

Missing, it skips the test on a developer's machine and fails it under CI
(``CI`` set): the suite's set-up installs every one of them, so there an
absence is a broken set-up, and CI must test what production runs.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

__all__ = ["missing", "require"]


def missing(why: str) -> NoReturn:
    """The test cannot run for ``why``: fail under CI, skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


def require(condition: bool, why: str) -> None:
    """:func:`missing` unless ``condition`` holds."""
    if not condition:
        missing(why)
