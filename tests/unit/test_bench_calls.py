"""loadtests/bench_calls.py keeps working: its calls complete (a record
each, no channel left) in both modes.  Behaviour only; the timings it
prints are for a human comparing runs, never asserted."""

from __future__ import annotations

import pytest

from loadtests import bench_calls


@pytest.mark.parametrize("mode", ["ip", "auth"])
async def test_the_in_process_benchmark_completes_its_calls(mode: str) -> None:
    per_call, per_message = await bench_calls.run(mode, 20)
    assert per_call > 0 and per_message > 0
    assert per_call > per_message  # a call is several messages
