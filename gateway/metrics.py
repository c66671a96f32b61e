"""Prometheus metrics: what operators watch (served at ``GET /metrics``).

Two kinds, in the client_python style (docs/content/collector/custom.md):

* counters and a histogram updated as things happen (SIP traffic,
  authentication failures, call setup time);
* custom collectors that render at scrape time under the profile
  directory's current names: the state read then (channels in use, channel
  limit, credit, live registrations per profile), and the admissions and
  channel releases counted per profile *id* as they happen.  A renamed
  profile's counts carry on under its new name (and back), and a deleted
  profile simply stops being reported.

Label values stay bounded: account and profile names (one pair per
profile: names are unique within an account only), SIP methods
(known ones, anything else is ``other``), response codes (100–699).  No
Call-ID, number or address is ever a label.  Each application has its own
registry, no module-level state.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.calls import ReleaseReason
from gateway.directory import Directory, ProfileEntry

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
#: (account, profile): how the router names a profile to its observer.
Names = tuple[str, str]
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

    def absorb(self, other: _Tally) -> None:
        for value, count in other.counts.items():
            self.counts[value] = self.counts.get(value, 0) + count
            created = other.created[value]
            self.created[value] = min(self.created.get(value, created), created)

    def render(self, family: CounterMetricFamily, account: str, profile: str) -> None:
        for value, count in self.counts.items():
            family.add_metric([account, profile, value], count, created=self.created[value])


class _ProfileCounts:
    """A profile's admissions and channel releases, whatever its name."""

    __slots__ = ("admissions", "profile_id", "releases")

    def __init__(self, profile_id: int | None) -> None:
        #: None: counted under a name no directory held (``Metrics._place``).
        self.profile_id = profile_id
        self.admissions = _Tally()
        self.releases = _Tally()

    def absorb(self, other: _ProfileCounts) -> None:
        self.admissions.absorb(other.admissions)
        self.releases.absorb(other.releases)


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

    Admissions and releases are reported by the router under a profile's
    current (account, profile) names and counted per profile id: one dict
    lookup binds the names to the profile's counts (``_by_name``, rebuilt
    when the directory changes), then one dict increment.  Rendering under
    names happens at scrape time only (:class:`_CountCollector`).
    """

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
        #: Per profile id: what is reported, under the directory's names.
        self._counts: dict[int, _ProfileCounts] = {}
        #: Names → counts for the hot path: the current directory's names,
        #: the previous directory's names of profiles since renamed or
        #: deleted (for one more directory), names no directory held.
        self._by_name: dict[Names, _ProfileCounts] = {}
        #: The names of the profiles of the directory last indexed.
        self._current: dict[Names, _ProfileCounts] = {}
        #: The directory ``_by_name`` was last completed from, if known.
        self._indexed: Directory | None = None
        #: Counts under names no directory held, reported under those names.
        self._unplaced: dict[Names, _ProfileCounts] = {}
        #: Where late counts of profiles just deleted go: never reported.
        self._discarded = _ProfileCounts(None)

    # -- the router's observer -------------------------------------------------
    def request_received(self, method: str) -> None:
        self.requests.labels(method if method in KNOWN_METHODS else "other").inc()

    def response_sent(self, status: int) -> None:
        self.responses.labels(str(status)).inc()

    def admission(self, account: str, profile: str, result: str) -> None:
        counts = self._by_name.get((account, profile))
        if counts is None:
            counts = self._place(account, profile)
        counts.admissions.add(result)

    def channel_released(self, account: str, profile: str, reason: ReleaseReason) -> None:
        counts = self._by_name.get((account, profile))
        if counts is None:
            counts = self._place(account, profile)
        counts.releases.add(reason.value)

    def auth_failure(self) -> None:
        self.auth_failures.inc()

    def call_setup_time(self, seconds: float) -> None:
        self.call_setup.observe(seconds)

    def profiles_changed(self, profiles: Iterable[ProfileEntry]) -> None:
        """The directory changed (called once the router has applied it,
        with its ``profiles``): bind their current names to their counts,
        and forget the counts of profiles that are gone.

        A name the previous directory gave a profile that is now renamed or
        deleted stays bound for one more directory: to the profile's counts,
        or, deleted, to counts never reported (an admission in flight when
        its profile was deleted ends after the change, under the old name).
        Counts under a name no directory held join the profile that now has
        that name, or are dropped."""
        entries = list(profiles)
        live = {entry.id for entry in entries}
        for profile_id in self._counts.keys() - live:
            del self._counts[profile_id]
        previous = self._current
        self._by_name, self._current, self._indexed = {}, {}, None
        self._discarded = _ProfileCounts(None)
        self._index(entries)
        self._unplaced.clear()
        for names, counts in previous.items():
            if names not in self._by_name:
                self._by_name[names] = counts if counts.profile_id in live else self._discarded

    def profile_counts(self) -> Iterator[tuple[str, str, _ProfileCounts]]:
        """(account, profile, counts) to report: the current directory's
        profiles under their names, then names no directory held."""
        directory = self.directory()
        self._follow(directory)
        for entry in directory.profiles():
            counts = self._counts.get(entry.id)
            if counts is not None:
                yield entry.account, entry.name, counts
        for (account, profile), counts in self._unplaced.items():
            yield account, profile, counts

    def _index(self, entries: Iterable[ProfileEntry]) -> None:
        """Bind each profile's current names to its counts (made here: once
        per profile); counts made under such a name before it was known
        become the profile's."""
        for entry in entries:
            counts = self._counts.get(entry.id)
            if counts is None:
                counts = self._counts[entry.id] = _ProfileCounts(entry.id)
            names = (entry.account, entry.name)
            unplaced = self._unplaced.pop(names, None)
            if unplaced is not None:
                counts.absorb(unplaced)
            self._by_name[names] = self._current[names] = counts

    def _follow(self, directory: Directory) -> None:
        """Index ``directory`` if it is not the one last indexed: the
        router's directory moves before ``profiles_changed`` is called, and
        the one it starts with is never announced."""
        if directory is not self._indexed:
            self._index(directory.profiles())
            self._indexed = directory

    def _place(self, account: str, profile: str) -> _ProfileCounts:
        """The counts of names not bound yet (off the hot path: once per
        profile and directory at most): the current directory's profile of
        that name, or counts kept and reported under the names themselves,
        so that nothing counted is lost."""
        names = (account, profile)
        self._follow(self.directory())
        counts = self._by_name.get(names)
        if counts is None:
            counts = self._unplaced[names] = _ProfileCounts(None)
            self._by_name[names] = counts
        return counts
