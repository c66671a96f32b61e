"""The per-profile counters of ``gateway.metrics.Metrics`` (issue 10, point 4).

``sipgw_admissions_total`` and ``sipgw_channel_releases_total`` are kept
per profile id (the router reports the profile's directory entry) and
rendered at scrape time under the profile's current names: a rename
carries every count over (and back), and a deleted profile's label sets
are gone.  Each test drives the :class:`Metrics` the way
``gateway.web.app`` does: the router's directory moves first, then
``profiles_changed`` is called with the new directory's profiles; the
exposition is read back with ``prometheus_client.parser``.
"""

from __future__ import annotations

import types
from dataclasses import replace

from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from gateway.proxy.directory import Directory, ProfileEntry
from gateway.proxy.router import ReleaseReason, RouterStats
from gateway.web.metrics import DROP_REASONS, Metrics
from sip.transport import TransportStats

Counts = dict[tuple[str, str, str, str], float]


def profile(profile_id: int, name: str, account: str = "acme") -> ProfileEntry:
    return ProfileEntry(
        id=profile_id,
        account_id=1 if account == "acme" else 2,
        name=name,
        auth_mode="ip",
        sip_username=f"p{profile_id:010d}",
        ha1=types.MappingProxyType({}),
        ip=f"192.0.2.{profile_id}",
        port=5060,
        channel_limit=300,
        account=account,
    )


class Gateway:
    """The router's current directory and the metrics that read it."""

    def __init__(self, *profiles: ProfileEntry) -> None:
        self.directory = Directory(profiles)
        self.metrics = Metrics(lambda: self.directory, dict)

    def move(self, *profiles: ProfileEntry) -> None:
        """What ``router.apply_directory`` does first: the new snapshot."""
        self.directory = Directory(profiles, version=self.directory.version + 1)

    def apply(self, *profiles: ProfileEntry) -> None:
        """A directory reload, as ``directory_ctx``'s ``apply()`` makes it."""
        self.move(*profiles)
        self.metrics.profiles_changed(self.directory.profiles())

    def families(self) -> dict[str, Metric]:
        text = generate_latest(self.metrics.registry).decode()
        return {family.name: family for family in text_string_to_metric_families(text)}

    def samples(self, suffix: str = "_total") -> Counts:
        """{(metric, account, profile, result or reason): value} of the two
        per-profile counters (``suffix`` ``_created``: their creation times)."""
        text = generate_latest(self.metrics.registry).decode()
        found: Counts = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name not in (
                    f"sipgw_admissions{suffix}",
                    f"sipgw_channel_releases{suffix}",
                ):
                    continue
                labels = dict(sample.labels)
                value = labels.pop("result", None) or labels.pop("reason")
                assert set(labels) == {"account", "profile"}, sample
                key = (sample.name, labels["account"], labels["profile"], value)
                assert key not in found, f"{key} reported twice"
                found[key] = sample.value
        return found


def calls(gateway: Gateway, entry: ProfileEntry) -> None:
    """Two admitted calls (one hung up, one cancelled), one refused."""
    metrics = gateway.metrics
    metrics.admission(entry, "admitted")
    metrics.admission(entry, "admitted")
    metrics.admission(entry, "channel_limit")
    metrics.channel_released(entry, ReleaseReason.BYE)
    metrics.channel_released(entry, ReleaseReason.CANCEL)


def counted(name: str, account: str = "acme", admitted: float = 2.0) -> Counts:
    return {
        ("sipgw_admissions_total", account, name, "admitted"): admitted,
        ("sipgw_admissions_total", account, name, "channel_limit"): 1.0,
        ("sipgw_channel_releases_total", account, name, "bye"): 1.0,
        ("sipgw_channel_releases_total", account, name, "cancel"): 1.0,
    }


SALES, SUPPORT = profile(1, "sales"), profile(2, "support")
OTHER_SALES = profile(3, "sales", "globex")  # same name, another account


def test_counts_carry_over_a_rename_and_back() -> None:
    gateway = Gateway()
    gateway.apply(SALES, SUPPORT, OTHER_SALES)
    calls(gateway, SALES)
    calls(gateway, OTHER_SALES)  # another account's profile of the same name
    gateway.metrics.admission(SUPPORT, "no_rate")
    support = {("sipgw_admissions_total", "acme", "support", "no_rate"): 1.0}
    others = {**counted("sales", "globex"), **support}
    assert gateway.samples() == {**counted("sales"), **others}
    created = gateway.samples("_created")

    renamed = replace(SALES, name="sales2")
    gateway.apply(renamed, SUPPORT, OTHER_SALES)
    assert gateway.samples() == {**counted("sales2"), **others}
    gateway.metrics.admission(renamed, "admitted")  # counted under the new name
    assert gateway.samples() == {**counted("sales2", admitted=3.0), **others}

    gateway.apply(SALES, SUPPORT, OTHER_SALES)
    assert gateway.samples() == {**counted("sales", admitted=3.0), **others}
    # The same counters throughout: never reset, so their creation times stand.
    assert gateway.samples("_created") == created


def test_an_account_rename_carries_the_counts_too() -> None:
    gateway = Gateway()
    gateway.apply(SALES)
    calls(gateway, SALES)
    gateway.apply(replace(SALES, account="acme-ltd"))
    assert gateway.samples() == counted("sales", "acme-ltd")


def test_a_deleted_profile_is_no_longer_reported() -> None:
    gateway = Gateway()
    gateway.apply(SALES, SUPPORT)
    calls(gateway, SALES)
    calls(gateway, SUPPORT)
    # Deleted with calls up: apply_directory ends them after the directory
    # moved and before profiles_changed.
    gateway.move(SUPPORT)
    gateway.metrics.channel_released(SALES, ReleaseReason.PROFILE_DELETED)
    gateway.metrics.profiles_changed(gateway.directory.profiles())
    assert gateway.samples() == counted("support")
    # An admission that was in flight when it was deleted, and its release.
    gateway.metrics.admission(SALES, "admitted")
    gateway.metrics.channel_released(SALES, ReleaseReason.CANCEL)
    assert gateway.samples() == counted("support")
    # A new profile given the old name starts from nothing, even with the
    # late counts of the old one not yet forgotten.
    new_sales = profile(4, "sales")
    gateway.move(SUPPORT, new_sales)
    assert gateway.samples() == counted("support")
    gateway.metrics.profiles_changed(gateway.directory.profiles())
    gateway.metrics.admission(new_sales, "admitted")
    admitted = {("sipgw_admissions_total", "acme", "sales", "admitted"): 1.0}
    assert gateway.samples() == {**counted("support"), **admitted}


def test_counts_made_before_the_metrics_hear_of_a_directory() -> None:
    # At start-up the router has its first directory; profiles_changed comes
    # with the first reload only.
    gateway = Gateway(SALES)
    calls(gateway, SALES)
    assert gateway.samples() == counted("sales")
    # Between the router taking a new directory and profiles_changed, calls
    # already carry the new names.
    gateway.move(replace(SALES, name="sales2"))
    gateway.metrics.admission(replace(SALES, name="sales2"), "admitted")
    gateway.metrics.profiles_changed(gateway.directory.profiles())
    assert gateway.samples() == counted("sales2", admitted=3.0)
    gateway.apply(SALES)
    assert gateway.samples() == counted("sales", admitted=3.0)


def test_a_profile_no_directory_holds_is_not_reported() -> None:
    gateway = Gateway()
    gateway.apply(SUPPORT)
    calls(gateway, SALES)  # an entry of no directory the metrics read
    assert gateway.samples() == {}
    gateway.apply(SUPPORT)  # and its counts go with the next change
    gateway.apply(SUPPORT, SALES)
    assert gateway.samples() == {}


def test_the_exposition_keeps_its_names_types_and_labels() -> None:
    """Dashboards and the benchmark harness read these exact names, types
    and labels (in this order)."""
    gateway = Gateway()
    gateway.apply(SALES)
    families = gateway.families()
    for name in ("sipgw_admissions", "sipgw_channel_releases"):
        assert families[name].type == "counter"
        assert families[name].samples == []  # nothing counted yet
    calls(gateway, SALES)
    lines = generate_latest(gateway.metrics.registry).decode().splitlines()
    assert "# HELP sipgw_admissions_total Admission decisions for initial INVITEs." in lines
    assert "# TYPE sipgw_admissions_total counter" in lines
    assert "# TYPE sipgw_channel_releases_total counter" in lines
    assert 'sipgw_admissions_total{account="acme",profile="sales",result="admitted"} 2.0' in lines
    assert 'sipgw_channel_releases_total{account="acme",profile="sales",reason="bye"} 1.0' in lines
    created = [line for line in lines if line.startswith("sipgw_admissions_created{")]
    assert len(created) == 2  # admitted, channel_limit: one per label set, as Counter gives


TRANSPORT_METRICS = (
    "sipgw_sip_messages_",
    "sipgw_sip_malformed_",
    "sipgw_sip_keepalives_",
    "sipgw_sip_tcp_",
    "sipgw_sip_dropped_",
)


def test_the_transport_counters_are_read_at_scrape_time() -> None:
    """``sip.transport.TransportStats`` counts in plain ints; each scrape
    reads them as they are then."""
    stats = TransportStats()
    metrics = Metrics(lambda: Directory(()), dict, transport=lambda: stats)

    def scraped() -> dict[tuple[str, str], float]:
        text = generate_latest(metrics.registry).decode()
        return {
            (sample.name, sample.labels.get("reason", "")): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name.startswith(TRANSPORT_METRICS)
        }

    zero = scraped()
    assert set(DROP_REASONS) == {
        "malformed", "handler_error", "unroutable", "send_error", "connection_limit",
        "internal_error",
    }  # fmt: skip
    assert zero == {
        ("sipgw_sip_messages_received_total", ""): 0.0,
        ("sipgw_sip_messages_sent_total", ""): 0.0,
        ("sipgw_sip_malformed_answered_total", ""): 0.0,
        ("sipgw_sip_keepalives_total", ""): 0.0,
        ("sipgw_sip_tcp_connections_accepted_total", ""): 0.0,
        **{("sipgw_sip_dropped_total", reason): 0.0 for reason in DROP_REASONS},
    }
    stats.received += 3
    stats.sent += 2
    stats.rejected += 1
    stats.keepalives += 4
    stats.tcp_accepted += 1
    stats.dropped_malformed += 5
    stats.dropped_send_error += 1
    assert scraped() == {
        **zero,
        ("sipgw_sip_messages_received_total", ""): 3.0,
        ("sipgw_sip_messages_sent_total", ""): 2.0,
        ("sipgw_sip_malformed_answered_total", ""): 1.0,
        ("sipgw_sip_keepalives_total", ""): 4.0,
        ("sipgw_sip_tcp_connections_accepted_total", ""): 1.0,
        ("sipgw_sip_dropped_total", "malformed"): 5.0,
        ("sipgw_sip_dropped_total", "send_error"): 1.0,
    }


def test_without_a_transport_there_are_no_transport_counters() -> None:
    families = Gateway().families()
    assert not [name for name in families if name.startswith(TRANSPORT_METRICS)]


def test_the_router_counters_are_read_at_scrape_time() -> None:
    """``RouterStats.call_state_errors`` (a call event with no row in the
    state table) is ``sipgw_call_state_errors_total``, as it is then."""
    stats = RouterStats()
    metrics = Metrics(lambda: Directory(()), dict, router=lambda: stats)

    def scraped() -> float | None:
        text = generate_latest(metrics.registry).decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "sipgw_call_state_errors_total":
                    return sample.value
        return None

    assert scraped() == 0.0
    stats.call_state_errors += 2
    assert scraped() == 2.0
    assert "sipgw_call_state_errors" not in Gateway().families()  # no router, no family
