"""What trace emission costs a core: off (the claim: next to nothing) and on.

One round is one 32-byte append committed by a 3-acceptor cluster in the simulator's
manual mode (deliver everything, complete every fsync).  Three variants run the same
rounds, interleaved in blocks so machine noise hits all three alike:

- stripped (the baseline): each core's `_emit` replaced by a function that returns the
  sends untouched, as if the code had no tracing at all;
- off: `tracer=None`, the shipped default (one `is not None` test per action);
- on: tracing into memory.
"""

from __future__ import annotations

import time
from typing import Any

from impl.sim import Sim, SimOptions

NAME = "trace"

_ROUNDS_PER_BLOCK = 200


def _cluster(trace: bool, stripped: bool) -> Sim:
    sim = Sim(SimOptions(seed=0, acceptors=3, proposers=1), manual=True, trace=trace)
    sim.start()
    sim.stabilize()
    if stripped:
        cores = [n.core for n in sim.acceptors.values()] + [n.core for n in sim.proposers.values()]
        for core in cores:
            core._emit = lambda action, sends=(), recv=None, args=None: sends  # type: ignore[method-assign]
    return sim


def _block(sim: Sim) -> float:
    start = time.perf_counter()
    for _ in range(_ROUNDS_PER_BLOCK):
        sim.append("p1", b"x" * 32)
        sim.stabilize()
    return time.perf_counter() - start


def run(seconds: float = 10.0) -> dict[str, Any]:
    variants = {"stripped": _cluster(False, True), "off": _cluster(False, False), "on": _cluster(True, False)}
    spent = dict.fromkeys(variants, 0.0)
    rounds = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for name, sim in variants.items():
            spent[name] += _block(sim)
            if name == "on":  # keep memory flat: the events are not the point here
                sim.events.clear()
                for events in sim.node_events.values():
                    events.clear()
        rounds += _ROUNDS_PER_BLOCK
    per = {name: spent[name] / rounds * 1e6 for name in variants}
    return {
        "rounds": rounds,
        "us_per_append_stripped": round(per["stripped"], 2),
        "us_per_append_tracing_off": round(per["off"], 2),
        "us_per_append_tracing_on": round(per["on"], 2),
        "ratio_off_to_stripped": round(per["off"] / per["stripped"], 3),
        "ratio_on_to_stripped": round(per["on"] / per["stripped"], 3),
    }
