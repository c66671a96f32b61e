"""Admission benchmark (issue 4): acquire + release pairs per second.

For :class:`MemoryAdmission` and :class:`RedisAdmission`, with every call on
one profile and with calls spread over 1,000 profiles.  Each run does at most
``--pairs`` pairs or ``--seconds`` seconds, whichever comes first; a figure
is the median of ``--runs`` runs.  ``--concurrency`` callers run at once on
one event loop (a gateway admits many calls at a time; with one caller the
Redis figure is the round-trip latency, twice per pair).

    python loadtests/bench_admission.py [--redis redis://127.0.0.1:6379/0]
        [--pairs 20000] [--seconds 5] [--runs 3] [--concurrency 1 64]

Keys go under a unique prefix and are deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Callable

import redis.asyncio as aioredis

from admission import AdmissionController, Admitted, MemoryAdmission
from admission.redis import RedisAdmission


async def one_run(
    controller: AdmissionController, profiles: int, pairs: int, seconds: float, concurrency: int
) -> float:
    """Pairs per second of one run: ``concurrency`` callers share a budget."""
    remaining = pairs
    deadline = time.perf_counter() + seconds
    done = 0

    async def caller(worker: int) -> None:
        nonlocal remaining, done
        n = 0
        while remaining > 0 and time.perf_counter() < deadline:
            remaining -= 1
            n += 1
            call_id = f"bench-{worker}-{n}"
            result = await controller.acquire(n % profiles, call_id, 300)
            assert isinstance(result, Admitted), result
            assert await controller.release(call_id)
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(caller(w) for w in range(concurrency)))
    return done / (time.perf_counter() - start)


async def measure(
    make: Callable[[], AdmissionController], profiles: int, args: argparse.Namespace, c: int
) -> float:
    rates = []
    for _ in range(args.runs):
        controller = make()
        try:
            rates.append(await one_run(controller, profiles, args.pairs, args.seconds, c))
        finally:
            await controller.close()
    return statistics.median(rates)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--pairs", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    args = parser.parse_args()

    prefix = f"sipgw-bench:{uuid.uuid4().hex}:"
    backends: dict[str, Callable[[], AdmissionController]] = {
        "memory": MemoryAdmission,
        "redis": lambda: RedisAdmission(args.redis, prefix=prefix),
    }
    print(
        f"acquire+release pairs/s, median of {args.runs} runs, "
        f"each at most {args.pairs} pairs or {args.seconds:g} s"
    )
    print(f"{'backend':8} {'profiles':>8} {'callers':>7} {'pairs/s':>10}")
    try:
        for name, make in backends.items():
            for profiles in (1, 1000):
                for c in args.concurrency:
                    rate = await measure(make, profiles, args, c)
                    print(f"{name:8} {profiles:>8} {c:>7} {rate:>10,.0f}", flush=True)
    finally:
        client = aioredis.Redis.from_url(args.redis)
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


if __name__ == "__main__":
    asyncio.run(main())
