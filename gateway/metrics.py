"""Prometheus metrics: what operators watch (served at ``GET /metrics``).

Two kinds, in the client_python style (docs/content/collector/custom.md):

* counters and a histogram updated as things happen (SIP traffic,
  admissions, authentication failures, call setup time);
* a custom collector that reads the current state at scrape time (channels
  in use and channel limit per profile, live registrations per profile), so
  a deleted profile simply stops being reported.

Label values stay bounded: account and profile names (one pair per
profile: names are unique within an account only), SIP methods
(known ones, anything else is ``other``), response codes (100–699).  No
Call-ID, number or address is ever a label.  Each application has its own
registry, no module-level state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.calls import ReleaseReason
from gateway.directory import Directory

__all__ = ["ADMISSION_RESULTS", "KNOWN_METHODS", "Metrics"]

#: Methods reported by name; any other method counts as "other".
KNOWN_METHODS = frozenset(
    {
        "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "UPDATE", "INFO",
        "PRACK", "SUBSCRIBE", "NOTIFY", "MESSAGE", "REFER", "PUBLISH",
    }
)  # fmt: skip
#: Every result an admission can have, as labelled.
ADMISSION_RESULTS = ("admitted", "channel_limit", "call_id_in_use", "no_credit", "no_rate")
#: Every reason a channel can be given back for.
RELEASE_REASONS = tuple(reason.value for reason in ReleaseReason)
# Call setup (INVITE in → first ringing/answer/final out) is milliseconds on
# a LAN and seconds through a slow carrier.
#: The labels of every per-profile metric.
PROFILE = ["account", "profile"]
SETUP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _StateCollector(Collector):
    """Gauges read at scrape time from the directory, the admission counts
    snapshot and the registrar."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        m = self._metrics
        in_use = GaugeMetricFamily(
            "sipgw_channels_in_use", "Calls holding a channel of the profile.", labels=PROFILE
        )
        limit = GaugeMetricFamily(
            "sipgw_channel_limit", "Most concurrent calls the profile may hold.", labels=PROFILE
        )
        registered = GaugeMetricFamily(
            "sipgw_registrations", "Live registration bindings of the profile.", labels=PROFILE
        )
        credit = GaugeMetricFamily(
            "sipgw_profile_credit",
            "Credit of the profile as last committed to the database (before live calls).",
            labels=PROFILE,
        )
        counts = m.channel_counts
        registrations = m.registration_counts()
        for entry in m.directory().profiles():
            labels = [entry.account, entry.name]
            in_use.add_metric(labels, counts.get(entry.id, 0))
            limit.add_metric(labels, entry.channel_limit)
            credit.add_metric(labels, float(entry.credit))
            if entry.auth_mode == "registration":
                registered.add_metric(labels, registrations.get(entry.id, 0))
        yield in_use
        yield limit
        yield credit
        yield registered


class Metrics:
    """The gateway's metrics and their registry."""

    def __init__(
        self,
        directory: Callable[[], Directory],
        registration_counts: Callable[[], dict[int, int]],
    ) -> None:
        self.directory = directory
        self.registration_counts = registration_counts
        self.channel_counts: dict[int, int] = {}  # refreshed before each scrape
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "sipgw_sip_requests_received", "SIP requests received.", ["method"], registry=r
        )
        self.responses = Counter(
            "sipgw_sip_responses_sent", "SIP responses sent (retransmissions included).",
            ["code"], registry=r,
        )  # fmt: skip
        self.admissions = Counter(
            "sipgw_admissions", "Admission decisions for initial INVITEs.",
            [*PROFILE, "result"], registry=r,
        )  # fmt: skip
        self.releases = Counter(
            "sipgw_channel_releases", "Channels given back, by why the call ended.",
            [*PROFILE, "reason"], registry=r,
        )  # fmt: skip
        self.auth_failures = Counter(
            "sipgw_auth_failures",
            "Digest credentials that did not verify (wrong password, unknown user, stale).",
            registry=r,
        )
        self.call_setup = Histogram(
            "sipgw_call_setup_seconds",
            "INVITE received to first ringing, answer or final response sent.",
            buckets=SETUP_BUCKETS, registry=r,
        )  # fmt: skip
        r.register(_StateCollector(self))
        self._profile_labels: set[tuple[str, str]] = set()

    # -- the router's observer -------------------------------------------------
    def request_received(self, method: str) -> None:
        self.requests.labels(method if method in KNOWN_METHODS else "other").inc()

    def response_sent(self, status: int) -> None:
        self.responses.labels(str(status)).inc()

    def admission(self, account: str, profile: str, result: str) -> None:
        self._profile_labels.add((account, profile))
        self.admissions.labels(account, profile, result).inc()

    def channel_released(self, account: str, profile: str, reason: ReleaseReason) -> None:
        self._profile_labels.add((account, profile))
        self.releases.labels(account, profile, reason.value).inc()

    def auth_failure(self) -> None:
        self.auth_failures.inc()

    def call_setup_time(self, seconds: float) -> None:
        self.call_setup.observe(seconds)

    def profiles_changed(self, names: Iterable[tuple[str, str]]) -> None:
        """Forget the admission label sets of profiles that no longer exist
        (``names``: the (account, profile) pairs that do)."""
        current = set(names)
        for gone in self._profile_labels - current:
            for counter, values in (
                (self.admissions, ADMISSION_RESULTS),
                (self.releases, RELEASE_REASONS),
            ):
                for value in values:
                    try:
                        counter.remove(*gone, value)
                    except KeyError:
                        pass
        self._profile_labels &= current
