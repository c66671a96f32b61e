"""Prometheus metrics: what operators watch (served at ``GET /metrics``).

Two kinds, in the client_python style (docs/content/collector/custom.md):

* counters and a histogram updated as things happen (SIP traffic,
  authentication failures, call setup time);
* custom collectors that render at scrape time under the profile
  directory's current names: the state read then (channels in use, channel
  limit, credit, live registrations per profile), and the admissions and
  channel releases counted per profile *id* as they happen.  A renamed
  profile's counts carry on under its new name (and back), and a deleted
  profile simply stops being reported;
* a custom collector that reads the SIP transport's own counters
  (:class:`sip.transport.TransportStats`: messages in and out, keep-alives,
  TCP connections, what was dropped and why) at scrape time, so the
  transport keeps counting in plain ints; one reads the router's
  (:class:`gateway.proxy.router.RouterStats`) likewise, and one the
  overload control's (:class:`sip.overload.OverloadControl`).

Label values stay bounded: account and profile names (one pair per
profile: names are unique within an account only), SIP methods
(known ones, anything else is ``other``), response codes (100–699).  No
Call-ID, number or address is ever a label.  Each application has its own
registry, no module-level state.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import fields

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.proxy.directory import Directory, ProfileEntry
from gateway.proxy.router import ReleaseReason, RouterStats
from sip.overload import OverloadControl
from sip.transport import TransportStats

__all__ = ["ADMISSION_RESULTS", "DROP_REASONS", "KNOWN_METHODS", "Metrics"]

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
#: Every reason the SIP transport drops something for: its ``dropped_*``
#: counters (``malformed``, ``handler_error``, ``unroutable``, ...).
DROP_REASONS = tuple(
    f.name.removeprefix("dropped_") for f in fields(TransportStats) if f.name.startswith("dropped_")
)
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


class _TransportCollector(Collector):
    """The SIP transport's counters, read at scrape time (DESIGN.md: cheap
    metrics; the transport only adds to plain ints)."""

    def __init__(self, stats: Callable[[], TransportStats]) -> None:
        self._stats = stats

    def _families(self) -> tuple[CounterMetricFamily, ...]:
        return (
            CounterMetricFamily(
                "sipgw_sip_messages_received",
                "SIP messages received over UDP and TCP, well-formed or not (keep-alives apart).",
            ),
            CounterMetricFamily(
                "sipgw_sip_messages_sent",
                "SIP messages written to a socket, retransmissions included.",
            ),
            CounterMetricFamily(
                "sipgw_sip_malformed_answered",
                "Requests the parser refused, answered with an error response.",
            ),
            CounterMetricFamily(
                "sipgw_sip_keepalives", "CRLF keep-alives received (RFC 5626 §4.4.1)."
            ),
            CounterMetricFamily("sipgw_sip_tcp_connections_accepted", "TCP connections accepted."),
            CounterMetricFamily(
                "sipgw_sip_dropped",
                "SIP messages received or to be sent that went nowhere, by why.",
                labels=["reason"],
            ),
        )

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield from self._families()

    def collect(self) -> Iterator[CounterMetricFamily]:
        stats = self._stats()
        received, sent, answered, keepalives, accepted, dropped = self._families()
        received.add_metric([], stats.received)
        sent.add_metric([], stats.sent)
        answered.add_metric([], stats.rejected)
        keepalives.add_metric([], stats.keepalives)
        accepted.add_metric([], stats.tcp_accepted)
        for reason in DROP_REASONS:
            dropped.add_metric([reason], getattr(stats, f"dropped_{reason}"))
        yield from (received, sent, answered, keepalives, accepted, dropped)


class _RouterCollector(Collector):
    """The router's counters (:class:`RouterStats`), read at scrape time."""

    def __init__(self, stats: Callable[[], RouterStats]) -> None:
        self._stats = stats

    @staticmethod
    def _family() -> CounterMetricFamily:
        return CounterMetricFamily(
            "sipgw_call_state_errors",
            "Events a call's state had no transition for (each a bug, logged; the call was ended).",
        )

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield self._family()

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = self._family()
        family.add_metric([], self._stats().call_state_errors)
        yield family


class _OverloadCollector(Collector):
    """The overload control's state and sheds (:class:`OverloadControl`),
    read at scrape time."""

    def __init__(self, control: OverloadControl) -> None:
        self._control = control

    @staticmethod
    def _families() -> tuple[
        GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily, CounterMetricFamily
    ]:
        return (
            GaugeMetricFamily(
                "sipgw_overload_occupancy",
                "Share of the last period the SIP loop spent working (0-1).",
            ),
            GaugeMetricFamily(
                "sipgw_overload_queue_delay_seconds",
                "How long the last datagram read had waited in its socket's buffer.",
            ),
            GaugeMetricFamily(
                "sipgw_overload_accept_ratio",
                "Share of new INVITEs taken (1: nothing is shed).",
            ),
            CounterMetricFamily(
                "sipgw_overload_shed",
                "New requests answered 503 with Retry-After to shed load, by class.",
                labels=["class"],
            ),
        )

    def describe(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield from self._families()

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        control = self._control
        occupancy, delay, accept, shed = self._families()
        occupancy.add_metric([], control.occupancy)
        delay.add_metric([], control.delay)
        accept.add_metric([], control.accept)
        for kind, count in control.shed.items():
            shed.add_metric([kind.name.lower()], count)
        shed.add_metric(["table_full"], control.table_full)
        yield occupancy
        yield delay
        yield accept
        yield shed


class _Tally:
    """One profile's counts of one counter, by label value (admission
    result, release reason), and when each value was first counted: the
    counter's ``_created``, which stays put across renames (Prometheus reads
    a new creation time as a reset)."""

    __slots__ = ("counts", "created")

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.created: dict[str, float] = {}

    def add(self, value: str) -> None:
        counts = self.counts
        if value in counts:
            counts[value] += 1
        else:
            counts[value] = 1
            self.created[value] = time.time()

    def render(self, family: CounterMetricFamily, account: str, profile: str) -> None:
        for value, count in self.counts.items():
            family.add_metric([account, profile, value], count, created=self.created[value])


class _ProfileCounts:
    """A profile's admissions and channel releases, whatever its name."""

    __slots__ = ("admissions", "releases")

    def __init__(self) -> None:
        self.admissions = _Tally()
        self.releases = _Tally()


class _CountCollector(Collector):
    """``sipgw_admissions_total`` and ``sipgw_channel_releases_total``,
    rendered at scrape time from the counts kept per profile id, under the
    names the profile has in the current directory."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def _families(self) -> tuple[CounterMetricFamily, CounterMetricFamily]:
        return (
            CounterMetricFamily(
                "sipgw_admissions", "Admission decisions for initial INVITEs.",
                labels=[*PROFILE, "result"],
            ),
            CounterMetricFamily(
                "sipgw_channel_releases", "Channels given back, by why the call ended.",
                labels=[*PROFILE, "reason"],
            ),
        )  # fmt: skip

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield from self._families()

    def collect(self) -> Iterator[CounterMetricFamily]:
        admissions, releases = self._families()
        for account, profile, counts in self._metrics.profile_counts():
            counts.admissions.render(admissions, account, profile)
            counts.releases.render(releases, account, profile)
        yield admissions
        yield releases


class Metrics:
    """The gateway's metrics and their registry.

    Admissions and releases are reported by the router with the profile's
    directory entry and counted by its id (one dict lookup, one increment);
    they are put under the profile's names only at scrape time
    (:class:`_CountCollector`), from the directory of that moment.
    """

    def __init__(
        self,
        directory: Callable[[], Directory],
        registration_counts: Callable[[], dict[int, int]],
        transport: Callable[[], TransportStats] | None = None,
        router: Callable[[], RouterStats] | None = None,
        overload: OverloadControl | None = None,
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
        r.register(_CountCollector(self))
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
        if transport is not None:
            r.register(_TransportCollector(transport))
        if router is not None:
            r.register(_RouterCollector(router))
        if overload is not None:
            r.register(_OverloadCollector(overload))
        #: Per profile id: what is reported, under the directory's names.
        self._counts: dict[int, _ProfileCounts] = {}
        # The labelled children the SIP path increments, found once each
        # (labels() builds a tuple and takes a lock on every call).
        self._by_method: dict[str, Counter] = {}
        self._by_status: dict[int, Counter] = {}

    # -- the router's observer -------------------------------------------------
    def request_received(self, method: str) -> None:
        child = self._by_method.get(method)
        if child is None:
            label = method if method in KNOWN_METHODS else "other"
            child = self.requests.labels(label)
            if label != "other":  # only known methods: the dict stays bounded
                self._by_method[method] = child
        child.inc()

    def response_sent(self, status: int) -> None:
        child = self._by_status.get(status)
        if child is None:  # at most 600 codes (100-699)
            child = self._by_status[status] = self.responses.labels(str(status))
        child.inc()

    def admission(self, profile: ProfileEntry, result: str) -> None:
        self._of(profile.id).admissions.add(result)

    def channel_released(self, profile: ProfileEntry, reason: ReleaseReason) -> None:
        self._of(profile.id).releases.add(reason.value)

    def auth_failure(self) -> None:
        self.auth_failures.inc()

    def call_setup_time(self, seconds: float) -> None:
        self.call_setup.observe(seconds)

    def _of(self, profile_id: int) -> _ProfileCounts:
        counts = self._counts.get(profile_id)
        if counts is None:
            counts = self._counts[profile_id] = _ProfileCounts()
        return counts

    def profiles_changed(self, profiles: Iterable[ProfileEntry]) -> None:
        """The directory changed (called once the router has applied it,
        with its ``profiles``): the counts of profiles that are gone go too.
        (A count made for a deleted profile after this, by a call that was
        still being admitted, is never reported and goes at the next change.)"""
        live = {entry.id for entry in profiles}
        for profile_id in self._counts.keys() - live:
            del self._counts[profile_id]

    def profile_counts(self) -> Iterator[tuple[str, str, _ProfileCounts]]:
        """(account, profile, counts) to report: the current directory's
        profiles, under their names now."""
        for entry in self.directory().profiles():
            counts = self._counts.get(entry.id)
            if counts is not None:
                yield entry.account, entry.name, counts
