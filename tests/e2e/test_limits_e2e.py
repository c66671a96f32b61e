"""A profile's channel limit changed while calls are up, on a running gateway.

The operator runs ``sipgw profile set-limit``; the gateway notices the
directory version move (``store.directory_poll_interval``) and admits the
next INVITE against the new limit.  Calls already up are never cut: a limit
lowered below the current use refuses new calls (503 with a Warning, RFC
3261 §20.43) until enough calls have ended.  No restart in between.

The PBX and the carrier are plain UDP sockets (:mod:`tests.support.peers`), so each
call is put up and hung up exactly when the scenario needs it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from sip.message import Message, Request, Response
from tests.support.harness import GatewayHome
from tests.support.peers import ACCOUNT, NUMBER, Setup, answer, from_pbx, scrape, trunk

PROFILE = "pbx"  # the IP profile trunk() creates
LABELS = (("account", ACCOUNT), ("profile", PROFILE))
LIMIT = ("sipgw_channel_limit", LABELS)
IN_USE = ("sipgw_channels_in_use", LABELS)
ADMITTED = ("sipgw_admissions_total", (*LABELS, ("result", "admitted")))
REFUSED = ("sipgw_admissions_total", (*LABELS, ("result", "channel_limit")))
#: Seconds a new limit may take to reach the gateway: a directory poll
#: (1 s by default) plus the reload, on a loaded CI machine.
APPLY_TIMEOUT = 15.0


@pytest.fixture
def setup(gateway_home: GatewayHome) -> Iterator[Setup]:
    with trunk(gateway_home) as built:
        yield built


def _of_call(call_id: str, method: str, status: int | None = None) -> Callable[[Message], bool]:
    """Matches the ``method`` request of call ``call_id`` or, with ``status``,
    that response to it; messages of other calls are kept aside."""

    def match(message: Message) -> bool:
        if message.call_id != call_id:
            return False
        if status is None:
            return isinstance(message, Request) and message.method == method
        return (
            isinstance(message, Response)
            and message.status == status
            and message.cseq.method == method
        )

    return match


class Scenario:
    """Calls from the PBX through the gateway to the carrier, by Call-ID."""

    def __init__(self, setup: Setup, home: GatewayHome) -> None:
        self.setup = setup
        self.home = home
        self.up: dict[str, str] = {}  # Call-ID -> To of the answered call (with tag)
        self.refused: list[str] = []
        self.admitted = 0
        self._serial = 0

    def _call_id(self, label: str) -> str:
        self._serial += 1
        return f"limit-{label}-{self._serial}"

    def set_limit(self, limit: int) -> None:
        self.home.cli("profile", "set-limit", PROFILE, str(limit), "--account", ACCOUNT)
        deadline = time.monotonic() + APPLY_TIMEOUT
        while (shown := scrape(self.setup).get(LIMIT)) != limit:
            assert time.monotonic() < deadline, f"{LIMIT[0]} is {shown}, not {limit}"
            self.setup.gateway.assert_alive()
            time.sleep(0.1)

    def call(self) -> str:
        """An outbound call answered by the carrier and acknowledged (RFC 3261
        §13.2.2.4: the ACK follows the route set of the 2xx)."""
        setup, pbx, carrier = self.setup, self.setup.pbx, self.setup.carrier
        call_id = self._call_id("up")
        pbx.send(setup.invite(call_id), setup.sip)
        invite = carrier.expect(_of_call(call_id, "INVITE"))
        assert isinstance(invite, Request)
        carrier.send(answer(invite, 200, contact=carrier.contact), setup.sip)
        ok = pbx.expect(_of_call(call_id, "INVITE", 200))
        to = ok.headers.get("to")
        assert to is not None and ";tag=" in to
        pbx.send(from_pbx(setup, "ACK", call_id, to, 1), setup.sip)
        carrier.expect(_of_call(call_id, "ACK"))
        self.up[call_id] = to
        self.admitted += 1
        return call_id

    def refused_call(self) -> None:
        """An INVITE answered 503 by the gateway itself for the channel
        limit, never forwarded; the PBX acknowledges the 503 as RFC 3261
        §17.1.1.3 says (same branch, the To of the response)."""
        setup, pbx = self.setup, self.setup.pbx
        host, port = setup.sip
        call_id = self._call_id("refused")
        pbx.send(setup.invite(call_id), setup.sip)
        final = pbx.expect(
            lambda m: isinstance(m, Response) and m.call_id == call_id and m.status >= 200
        )
        assert isinstance(final, Response)
        assert final.status == 503, f"{final.status} {final.reason}"
        warning = final.headers.get("warning") or ""
        assert warning.startswith("399 ") and '"Channel limit reached"' in warning, warning
        pbx.send(
            f"ACK sip:{NUMBER}@{host}:{port} SIP/2.0\r\n"
            f"Via: {final.headers.get('via')}\r\n"
            "Max-Forwards: 70\r\n"
            f"From: {final.headers.get('from')}\r\n"
            f"To: {final.headers.get('to')}\r\n"
            f"Call-ID: {call_id}\r\n"
            "CSeq: 1 ACK\r\n"
            "Content-Length: 0\r\n\r\n",
            setup.sip,
        )
        self.refused.append(call_id)

    def hang_up(self, count: int) -> None:
        """The PBX ends ``count`` of the calls up, oldest first."""
        setup, pbx, carrier = self.setup, self.setup.pbx, self.setup.carrier
        for call_id in list(self.up)[:count]:
            to = self.up.pop(call_id)
            pbx.send(from_pbx(setup, "BYE", call_id, to, 2), setup.sip)
            bye = carrier.expect(_of_call(call_id, "BYE"))
            assert isinstance(bye, Request)
            carrier.send(answer(bye, 200), setup.sip)
            pbx.expect(_of_call(call_id, "BYE", 200))
        setup.wait_channels(len(self.up))

    def in_use(self) -> int:
        channels = self.setup.channels()
        assert scrape(self.setup)[IN_USE] == channels
        return channels


def test_lowering_and_raising_the_limit_while_calls_are_up(
    setup: Setup, gateway_home: GatewayHome
) -> None:
    gateway = setup.gateway
    pid = gateway.process.pid
    calls = Scenario(setup, gateway_home)

    calls.set_limit(4)
    for _ in range(4):
        calls.call()
    assert calls.in_use() == 4

    # Lowered below the current use: the calls up stay up, new ones are refused.
    calls.set_limit(2)
    assert calls.in_use() == 4
    calls.refused_call()
    calls.hang_up(1)
    assert calls.in_use() == 3
    calls.refused_call()  # 3 up, still not under 2
    calls.hang_up(2)
    assert calls.in_use() == 1
    calls.call()  # under the limit again
    setup.wait_channels(2)
    calls.refused_call()  # 2 up: the limit is 2, not what it was
    assert calls.in_use() == 2

    # Raised to the maximum: admitted again at once.
    calls.set_limit(300)
    calls.call()
    assert calls.in_use() == 3

    calls.hang_up(len(calls.up))
    assert gateway.healthz()["channels"][ACCOUNT][PROFILE] == 0
    metrics = scrape(setup)
    assert metrics[IN_USE] == 0
    assert metrics[LIMIT] == 300
    assert (calls.admitted, len(calls.refused)) == (6, 3)
    assert metrics[ADMITTED] == calls.admitted
    assert metrics[REFUSED] == len(calls.refused)
    # No refused INVITE was ever forwarded to the carrier.
    forwarded = {m.call_id for m in setup.carrier.seen if isinstance(m, Request)}
    assert forwarded.isdisjoint(calls.refused), forwarded
    # Changed live: the same gateway process throughout.
    gateway.assert_alive()
    assert gateway.process.pid == pid
    assert "Traceback" not in gateway.log()
