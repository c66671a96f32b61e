"""The admission controller: per-profile channel limits (DESIGN.md).

One narrow interface, :class:`AdmissionController` — ``acquire(profile_id,
call_id, limit)`` returning :class:`Admitted` or :class:`Rejected`,
``release(call_id)``, and counts for metrics — with interchangeable
backends.  :class:`MemoryAdmission` is the embedded default (one node, one
event loop).  :class:`RedisAdmission` (``admission.redis``) lets several
nodes share the limit; it is imported on first use, so the memory backend
needs no Redis client installed.

It knows profiles only as ids and limits, never as accounts or credit.
"""

from typing import TYPE_CHECKING, Any

from admission.memory import MemoryAdmission
from admission.types import (
    MAX_CHANNELS,
    MIN_CHANNELS,
    AdmissionController,
    AdmissionResult,
    Admitted,
    ImmediateAdmission,
    Rejected,
    RejectReason,
    clamp_limit,
)

if TYPE_CHECKING:
    from admission.redis import RedisAdmission

__all__ = [
    "MAX_CHANNELS",
    "MIN_CHANNELS",
    "AdmissionController",
    "AdmissionResult",
    "Admitted",
    "ImmediateAdmission",
    "MemoryAdmission",
    "RedisAdmission",
    "RejectReason",
    "Rejected",
    "clamp_limit",
]


def __getattr__(name: str) -> Any:
    # PEP 562: the Redis backend (and the redis package) load only when used.
    if name == "RedisAdmission":
        from admission.redis import RedisAdmission  # noqa: PLC0415

        return RedisAdmission
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
