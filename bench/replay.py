"""How fast `paxwal check` replays a long fault-free run, beside merely parsing its ndjson.

The run: the simulator's default cluster options with one proposer and no faults (no loss,
duplication, crash or partition), so nearly every event is the steady state of streaming:
NewEntry, SendAppend, AcceptAppend, Flush, CollectAck.  It is written straight to per-node
files in a temporary directory as it runs, and replayed with `check_run` (reading, merging,
replaying: everything `paxwal check` does).

Baseline: `json.loads` of every line of the same files, the least any reader of the trace
pays; the ratio says how far the replay is from that.  Two sizes, ten times apart, show
whether the replay is linear: its events/s should be the same at both.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from conformance.replay import _loads, check_run
from impl.sim import WAL_START, Sim, SimOptions
from impl.trace import Tracer, dumps

NAME = "replay"

# Events per second of budget for the larger run (generating, parsing and replaying it take
# about that budget on a slow machine); the smaller run is a tenth of it.
_EVENTS_PER_SECOND_OF_BUDGET = 8_000
# Simulator steps per trace event, in a fault-free run with one proposer (measured).
_STEPS_PER_EVENT = 0.79


class _FileSim(Sim):
    """A Sim whose trace goes to per-node files as it runs, not into memory."""

    def __init__(self, options: SimOptions, out: Path) -> None:
        self._out = out
        self._files: list[Any] = []
        self.written = 0
        super().__init__(options)

    def _tracer(self, node: str, on: bool) -> Tracer | None:
        stream = (self._out / f"{node}.ndjson").open("w")
        self._files.append(stream)

        def write(event: dict[str, Any]) -> None:
            stream.write(dumps(event) + "\n")
            self.written += 1

        return Tracer(node, WAL_START, write)

    def close(self) -> None:
        for stream in self._files:
            stream.close()
        run = {"cluster": {"acceptors": list(self.acceptors), "proposers": list(self.proposers), "wal_start": WAL_START}}
        (self._out / "run.json").write_text(json.dumps(run) + "\n")


def fault_free_run(out: Path, events: int) -> int:
    """Write a fault-free simulated run of about `events` events into `out`; the count."""
    out.mkdir(parents=True, exist_ok=True)
    sim = _FileSim(SimOptions(seed=0, proposers=1, steps=max(1, int(events * _STEPS_PER_EVENT))), out)
    result = sim.run()
    sim.close()
    if not result.ok:
        raise RuntimeError(f"the fault-free run failed its own checks: {result.violations}")
    return sim.written


def replay_rate(run: Path) -> tuple[int, float]:
    """(events, seconds) for `check_run` on the run directory; it must be accepted."""
    start = time.perf_counter()
    result = check_run([run])
    elapsed = time.perf_counter() - start
    if result.verdict != "accepted":
        raise RuntimeError(result.divergence.report() if result.divergence else "rejected")
    return result.events, elapsed


def parse_rate(run: Path, loads: Any = json.loads) -> tuple[int, float]:
    """(lines, seconds) for `loads` of every line of the run's per-node files."""
    files = [f for f in sorted(run.glob("*.ndjson"))]
    lines = 0
    start = time.perf_counter()
    for file in files:
        with file.open("rb") as stream:
            for text in stream:
                loads(text)
                lines += 1
    return lines, time.perf_counter() - start


def run(seconds: float = 20.0) -> dict[str, Any]:
    large = max(2_000, int(seconds * _EVENTS_PER_SECOND_OF_BUDGET))
    small = large // 10
    with tempfile.TemporaryDirectory(prefix="paxwal-bench-replay-") as tmp:
        rates = {}
        for size in (small, large):
            out = Path(tmp) / f"run-{size}"
            fault_free_run(out, size)
            events, elapsed = replay_rate(out)
            rates[size] = (events, events / elapsed)
        parsed, parse_s = parse_rate(out)
        parsed_fast, parse_fast_s = parse_rate(out, _loads)
    (small_events, small_rate), (large_events, large_rate) = rates[small], rates[large]
    parse = parsed / parse_s
    return {
        "events_small_run": small_events,
        "events_large_run": large_events,
        "replay_events_per_second_small": round(small_rate),
        "replay_events_per_second_large": round(large_rate),
        "parse_json_loads_events_per_second": round(parse),
        "parse_reader_events_per_second": round(parsed_fast / parse_fast_s),
        "ratio_replay_to_parse": round(large_rate / parse, 3),
        "ratio_large_to_small": round(large_rate / small_rate, 3),
    }
