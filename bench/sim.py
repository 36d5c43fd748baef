"""How many simulated runs a minute, with tracing off and on.

Baseline: the same seeds with tracing off; the ratio says what tracing costs a run.
"""

from __future__ import annotations

import time
from typing import Any

from impl.sim import run_seed

NAME = "sim"


def _campaign(seconds: float, trace: bool) -> tuple[int, int, float]:
    """Run seeds 0, 1, ... for about `seconds`; returns (runs, events, elapsed)."""
    runs = events = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        result = run_seed(runs, trace=trace)
        events += result.events
        runs += 1
    return runs, events, time.perf_counter() - start


def run(seconds: float = 20.0) -> dict[str, Any]:
    """Half the time without tracing (the baseline), half with it."""
    off_runs, _, off_s = _campaign(seconds / 2, trace=False)
    on_runs, on_events, on_s = _campaign(seconds / 2, trace=True)
    off_rate = off_runs / off_s * 60
    on_rate = on_runs / on_s * 60
    return {
        "runs_per_minute_tracing_off": round(off_rate, 1),
        "runs_per_minute_tracing_on": round(on_rate, 1),
        "trace_events_per_second": round(on_events / on_s),
        "ratio_on_to_off": round(on_rate / off_rate, 3),
        "runs": off_runs + on_runs,
    }
