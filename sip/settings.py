"""Settings of the SIP core: timers (RFC 3261 §17, Table 4) and size limits.

One injected, immutable object; no module-level mutable state.  Every
derived timer is a property so that changing T1 changes them all, as the RFC
intends.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SIPSettings"]

# RFC 3261 §18.1.1: a UDP request larger than the path MTU minus 200 bytes
# should go over a congestion-controlled transport; no SIP message we accept
# needs to be larger than this.  64 KiB is the largest UDP payload anyway.
MAX_MESSAGE_SIZE = 65_535
# A real INVITE has 10-30 headers; torture tests have ~40.  256 leaves room
# for any legitimate message and bounds the work an attacker can make us do.
MAX_HEADERS = 256
# The longest legitimate header lines (Via chains, long Contact URIs,
# P-Asserted-Identity) stay well below 8 KiB.
MAX_LINE_LENGTH = 8_192


@dataclass(frozen=True, slots=True, kw_only=True)
class SIPSettings:
    """Timers in seconds and limits in bytes/counts, validated on construction."""

    t1: float = 0.5  # RTT estimate (RFC 3261 §17.1.1.1)
    t2: float = 4.0  # maximum retransmit interval for non-INVITE requests and INVITE responses
    t4: float = 5.0  # maximum duration a message remains in the network
    timer_c: float = 180.0  # proxy INVITE transaction timeout (RFC 3261 §16.6 step 11), > 3 min
    max_message_size: int = MAX_MESSAGE_SIZE
    max_headers: int = MAX_HEADERS
    max_line_length: int = MAX_LINE_LENGTH
    tcp_idle_timeout: float = 120.0  # idle TCP connections are closed after this (RFC 3261 §18)

    def __post_init__(self) -> None:
        for name in ("t1", "t2", "t4", "timer_c", "tcp_idle_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.t2 < self.t1:
            raise ValueError("t2 must not be smaller than t1")
        for name in ("max_message_size", "max_headers", "max_line_length"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")

    # Derived timers, RFC 3261 Table 4 (UDP values; over a reliable transport
    # the transaction layer sets the retransmission timers aside and uses 0
    # for D, I, J, K).
    @property
    def timer_b(self) -> float:
        """INVITE client transaction timeout: 64*T1."""
        return 64 * self.t1

    @property
    def timer_d(self) -> float:
        """Wait time for response retransmits: at least 32 s for UDP."""
        return max(32.0, 64 * self.t1)

    @property
    def timer_f(self) -> float:
        """Non-INVITE client transaction timeout: 64*T1."""
        return 64 * self.t1

    @property
    def timer_h(self) -> float:
        """Wait time for ACK receipt: 64*T1."""
        return 64 * self.t1

    @property
    def timer_i(self) -> float:
        """Wait time for ACK retransmits: T4."""
        return self.t4

    @property
    def timer_j(self) -> float:
        """Wait time for non-INVITE request retransmits: 64*T1."""
        return 64 * self.t1

    @property
    def timer_l(self) -> float:
        """Wait time for accepted INVITE request retransmits: 64*T1 (RFC 6026 §8.7)."""
        return 64 * self.t1

    @property
    def timer_m(self) -> float:
        """Wait time for retransmission of 2xx to INVITE: 64*T1 (RFC 6026 §8.4)."""
        return 64 * self.t1

    @property
    def timer_k(self) -> float:
        """Wait time for response retransmits: T4."""
        return self.t4
