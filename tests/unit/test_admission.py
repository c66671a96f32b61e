"""The admission controller (memory backend): exact limits under concurrency,
idempotent acquire and release, independent profiles, live limit changes."""

from __future__ import annotations

import asyncio
import dataclasses
import random

import pytest

import admission
from admission import (
    MAX_CHANNELS,
    AdmissionController,
    AdmissionResult,
    Admitted,
    MemoryAdmission,
    Rejected,
    RejectReason,
    clamp_limit,
)

ALICE = 1  # profile ids: admission knows profiles only as ids
BOB = 2


async def burst(controller: AdmissionController, n: int, limit: int) -> list[AdmissionResult]:
    """``n`` distinct calls of one profile asking for a channel at once."""
    return await asyncio.gather(
        *(controller.acquire(ALICE, f"call-{i}@pbx", limit) for i in range(n))
    )


class RacyAdmission:
    """The Kamailio pattern DESIGN.md rules out: read the count, yield to the
    loop, then take the channel.  It exists to show the burst test can fail."""

    def __init__(self) -> None:
        self.used: dict[int, int] = {}

    async def acquire(self, profile_id: int, call_id: str, limit: int) -> AdmissionResult:
        used = self.used.get(profile_id, 0)
        await asyncio.sleep(0)  # another coroutine runs here and reads the same count
        if used >= limit:
            return Rejected(reason=RejectReason.CHANNEL_LIMIT, in_use=used, limit=limit)
        self.used[profile_id] = self.used.get(profile_id, 0) + 1
        return Admitted(profile_id=profile_id, call_id=call_id, in_use=self.used[profile_id])

    async def release(self, call_id: str) -> bool:
        raise NotImplementedError

    async def in_use(self, profile_id: int) -> int:
        return self.used.get(profile_id, 0)

    async def counts(self) -> dict[int, int]:
        return dict(self.used)

    async def close(self) -> None:
        self.used.clear()


# -- exactness under a burst ---------------------------------------------------


async def test_a_burst_of_1000_calls_admits_exactly_the_limit() -> None:
    controller = MemoryAdmission()
    results = await burst(controller, 1000, 300)
    admitted = [r for r in results if isinstance(r, Admitted)]
    rejected = [r for r in results if isinstance(r, Rejected)]
    assert len(admitted) == 300
    assert len(rejected) == 700
    assert {r.call_id for r in admitted} == {f"call-{i}@pbx" for i in range(300)}
    assert sorted(r.in_use for r in admitted) == list(range(1, 301))
    assert all(
        r == Rejected(reason=RejectReason.CHANNEL_LIMIT, in_use=300, limit=300) for r in rejected
    )
    assert await controller.in_use(ALICE) == 300
    assert await controller.counts() == {ALICE: 300}


async def test_the_burst_check_catches_a_read_then_take_race() -> None:
    controller = RacyAdmission()
    results = await burst(controller, 1000, 300)
    # Every coroutine read 0 before any took a channel: all 1000 got one.
    assert sum(isinstance(r, Admitted) for r in results) > 300


async def test_a_burst_below_the_limit_admits_everybody() -> None:
    controller = MemoryAdmission()
    results = await burst(controller, 120, 300)
    assert all(isinstance(r, Admitted) for r in results)
    assert await controller.in_use(ALICE) == 120


async def test_random_interleavings_never_exceed_the_limit() -> None:
    """Many short calls on three profiles, yielding to each other between
    steps; the count never passes the limit and always equals the calls held."""
    controller = MemoryAdmission()
    limits = {1: 5, 2: 17, 3: 300}
    held: dict[int, set[str]] = {p: set() for p in limits}
    rng = random.Random(4475)
    violations: list[str] = []

    async def caller(worker: int) -> None:
        for n in range(40):  # bounded: 40 calls per worker
            profile = rng.choice(list(limits))
            call_id = f"w{worker}-c{n}"
            result = await controller.acquire(profile, call_id, limits[profile])
            if isinstance(result, Admitted):
                held[profile].add(call_id)
                if result.in_use > limits[profile]:
                    violations.append(f"{profile}: {result.in_use}")
            for _ in range(rng.randrange(3)):
                await asyncio.sleep(0)
            if isinstance(result, Admitted):
                held[profile].discard(call_id)
                assert await controller.release(call_id)
            if await controller.in_use(profile) != len(held[profile]):
                violations.append(f"count drift on {profile}")

    await asyncio.wait_for(asyncio.gather(*(caller(w) for w in range(50))), timeout=30)
    assert violations == []
    assert await controller.counts() == {}


# -- idempotence ----------------------------------------------------------------


async def test_acquiring_twice_with_one_call_id_takes_one_channel() -> None:
    controller = MemoryAdmission()
    first = await controller.acquire(ALICE, "invite-1", 10)
    again = await controller.acquire(ALICE, "invite-1", 10)
    assert first == Admitted(profile_id=ALICE, call_id="invite-1", in_use=1)
    assert again == Admitted(profile_id=ALICE, call_id="invite-1", in_use=1)
    assert await controller.in_use(ALICE) == 1


async def test_a_retransmission_is_admitted_even_when_the_profile_is_full() -> None:
    controller = MemoryAdmission()
    assert isinstance(await controller.acquire(ALICE, "a", 2), Admitted)
    assert isinstance(await controller.acquire(ALICE, "b", 2), Admitted)
    assert isinstance(await controller.acquire(ALICE, "c", 2), Rejected)
    assert await controller.acquire(ALICE, "b", 2) == Admitted(
        profile_id=ALICE, call_id="b", in_use=2
    )
    assert await controller.in_use(ALICE) == 2


async def test_concurrent_acquires_of_one_call_id_take_one_channel() -> None:
    controller = MemoryAdmission()
    results = await asyncio.gather(*(controller.acquire(ALICE, "same", 300) for _ in range(50)))
    assert all(isinstance(r, Admitted) for r in results)
    assert await controller.in_use(ALICE) == 1


async def test_release_is_idempotent() -> None:
    controller = MemoryAdmission()
    await controller.acquire(ALICE, "call", 1)
    assert await controller.release("call") is True
    assert await controller.release("call") is False
    assert await controller.release("never-admitted") is False
    assert await controller.in_use(ALICE) == 0
    # The channel really came back.
    assert isinstance(await controller.acquire(ALICE, "next", 1), Admitted)


async def test_a_rejected_call_holds_nothing_to_release() -> None:
    controller = MemoryAdmission()
    await controller.acquire(ALICE, "a", 1)
    assert isinstance(await controller.acquire(ALICE, "b", 1), Rejected)
    assert await controller.release("b") is False
    assert await controller.in_use(ALICE) == 1


async def test_a_released_call_id_can_be_admitted_again() -> None:
    controller = MemoryAdmission()
    await controller.acquire(ALICE, "call", 1)
    await controller.release("call")
    assert await controller.acquire(ALICE, "call", 1) == Admitted(
        profile_id=ALICE, call_id="call", in_use=1
    )


# -- profiles ---------------------------------------------------------------------


async def test_profiles_count_independently() -> None:
    controller = MemoryAdmission()
    for i in range(3):
        assert isinstance(await controller.acquire(ALICE, f"a{i}", 3), Admitted)
    assert isinstance(await controller.acquire(ALICE, "a3", 3), Rejected)
    # Alice being full costs Bob nothing.
    assert await controller.acquire(BOB, "b0", 3) == Admitted(
        profile_id=BOB, call_id="b0", in_use=1
    )
    await controller.release("b0")
    assert await controller.in_use(ALICE) == 3
    assert await controller.in_use(BOB) == 0


async def test_a_call_id_held_by_another_profile_is_refused() -> None:
    controller = MemoryAdmission()
    await controller.acquire(ALICE, "shared", 10)
    result = await controller.acquire(BOB, "shared", 10)
    assert result == Rejected(reason=RejectReason.CALL_ID_IN_USE, in_use=0, limit=10)
    assert await controller.counts() == {ALICE: 1}
    # Releasing frees Alice's channel, the one that call id holds.
    assert await controller.release("shared")
    assert await controller.counts() == {}


# -- limits -------------------------------------------------------------------------


async def test_lowering_the_limit_refuses_new_calls_until_use_drops_under_it() -> None:
    controller = MemoryAdmission()
    for i in range(5):
        await controller.acquire(ALICE, f"c{i}", 10)
    # The operator lowers the limit to 3: the five calls go on, new ones wait.
    assert await controller.acquire(ALICE, "new", 3) == Rejected(
        reason=RejectReason.CHANNEL_LIMIT, in_use=5, limit=3
    )
    await controller.release("c0")
    await controller.release("c1")
    assert isinstance(await controller.acquire(ALICE, "new", 3), Rejected)  # 3 in use, limit 3
    await controller.release("c2")
    assert await controller.acquire(ALICE, "new", 3) == Admitted(
        profile_id=ALICE, call_id="new", in_use=3
    )


async def test_raising_the_limit_admits_at_once() -> None:
    controller = MemoryAdmission()
    await controller.acquire(ALICE, "a", 1)
    assert isinstance(await controller.acquire(ALICE, "b", 1), Rejected)
    assert isinstance(await controller.acquire(ALICE, "b", 2), Admitted)


@pytest.mark.parametrize(
    ("limit", "effective"), [(1000, 300), (301, 300), (300, 300), (7, 7), (1, 1), (0, 1), (-5, 1)]
)
def test_clamp_limit(limit: int, effective: int) -> None:
    assert clamp_limit(limit) == effective


async def test_a_limit_above_300_is_held_to_300() -> None:
    controller = MemoryAdmission()
    results = await burst(controller, 400, 10_000)
    assert sum(isinstance(r, Admitted) for r in results) == MAX_CHANNELS
    assert Rejected(reason=RejectReason.CHANNEL_LIMIT, in_use=300, limit=300) in results


async def test_a_limit_below_one_is_held_to_one() -> None:
    controller = MemoryAdmission()
    assert isinstance(await controller.acquire(ALICE, "a", 0), Admitted)
    assert await controller.acquire(ALICE, "b", 0) == Rejected(
        reason=RejectReason.CHANNEL_LIMIT, in_use=1, limit=1
    )


# -- counts, close, contract ---------------------------------------------------------


async def test_counts_list_the_profiles_holding_channels() -> None:
    controller = MemoryAdmission()
    assert await controller.counts() == {}
    await controller.acquire(ALICE, "a1", 5)
    await controller.acquire(ALICE, "a2", 5)
    await controller.acquire(BOB, "b1", 5)
    counts = await controller.counts()
    assert counts == {ALICE: 2, BOB: 1}
    counts[ALICE] = 99  # a copy: the caller cannot corrupt the controller
    assert await controller.in_use(ALICE) == 2
    await controller.release("b1")
    # A profile back to zero disappears rather than lingering as a 0 entry.
    assert await controller.counts() == {ALICE: 2}
    assert await controller.in_use(BOB) == 0


async def test_close_forgets_everything_and_refuses_further_acquires() -> None:
    controller = MemoryAdmission()
    await controller.acquire(ALICE, "a", 5)
    await controller.close()
    assert await controller.counts() == {}
    with pytest.raises(RuntimeError, match="closed"):
        await controller.acquire(ALICE, "b", 5)


async def test_an_empty_call_id_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="call_id"):
        await MemoryAdmission().acquire(ALICE, "", 5)


def test_memory_admission_is_an_admission_controller() -> None:
    controller: AdmissionController = MemoryAdmission()  # checked by mypy
    assert isinstance(controller, AdmissionController)
    assert not isinstance(object(), AdmissionController)


def test_results_are_frozen_slotted_and_keyword_only() -> None:
    admitted = Admitted(profile_id=ALICE, call_id="c", in_use=1)
    rejected = Rejected(reason=RejectReason.CHANNEL_LIMIT, in_use=3, limit=3)
    for result in (admitted, rejected):
        assert not hasattr(result, "__dict__")
        with pytest.raises(dataclasses.FrozenInstanceError):
            result.in_use = 0  # type: ignore[misc]
    with pytest.raises(TypeError):
        Admitted(ALICE, "c", 1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Rejected(RejectReason.CHANNEL_LIMIT, 3, 3)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "make",
    [
        lambda: Admitted(profile_id=ALICE, call_id="", in_use=1),
        lambda: Admitted(profile_id=ALICE, call_id="c", in_use=0),
        lambda: Rejected(reason=RejectReason.CHANNEL_LIMIT, in_use=-1, limit=3),
        lambda: Rejected(reason=RejectReason.CHANNEL_LIMIT, in_use=3, limit=0),
        lambda: Rejected(reason=RejectReason.CHANNEL_LIMIT, in_use=3, limit=301),
    ],
)
def test_results_validate_on_construction(make: object) -> None:
    with pytest.raises(ValueError):
        make()  # type: ignore[operator]


def test_reject_reasons_read_as_labels() -> None:
    assert str(RejectReason.CHANNEL_LIMIT) == "channel_limit"
    assert RejectReason("call_id_in_use") is RejectReason.CALL_ID_IN_USE


def test_the_package_exports_its_api() -> None:
    assert set(admission.__all__) >= {
        "AdmissionController",
        "Admitted",
        "MemoryAdmission",
        "RejectReason",
        "Rejected",
        "MAX_CHANNELS",
    }
    assert MAX_CHANNELS == 300
    assert all(hasattr(admission, name) for name in admission.__all__)
