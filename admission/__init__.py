"""The admission controller: per-profile channel limits (DESIGN.md).

One narrow interface, :class:`AdmissionController` — ``acquire(profile_id,
call_id, limit)`` returning :class:`Admitted` or :class:`Rejected`,
``release(call_id)``, and counts for metrics — with interchangeable
backends.  :class:`MemoryAdmission` is the embedded default (one node, one
event loop).  The Redis backend, for several nodes sharing the limit, arrives
in issue 4 behind the same Protocol.

It knows profiles only as ids and limits, never as accounts or credit.
"""

from admission.memory import MemoryAdmission
from admission.types import (
    MAX_CHANNELS,
    MIN_CHANNELS,
    AdmissionController,
    AdmissionResult,
    Admitted,
    Rejected,
    RejectReason,
    clamp_limit,
)

__all__ = [
    "MAX_CHANNELS",
    "MIN_CHANNELS",
    "AdmissionController",
    "AdmissionResult",
    "Admitted",
    "MemoryAdmission",
    "RejectReason",
    "Rejected",
    "clamp_limit",
]
