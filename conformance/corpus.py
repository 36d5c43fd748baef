"""Corpora of runs: finding the runs under a path, and which spec actions they exercise.

A run is a directory holding one ndjson trace per node (and usually run.json), as
impl/sim.py and the cluster write them; a corpus is any directory tree of runs
(traces/accepted/ has traces/accepted/scenarios/<name>/ and traces/accepted/sim/seed-N/).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from conformance.replay import TraceError

__all__ = ["SPEC", "action_coverage", "find_runs", "is_run", "spec_actions", "trace_files"]

SPEC = Path(__file__).resolve().parent.parent / "spec" / "ProposerAcceptor.tla"

# Operators of the TLA+ standard modules that may appear applied inside Next.
_TLA_BUILTINS = frozenset({
    "Len", "Append", "SubSeq", "Head", "Tail", "SelectSeq", "Seq", "Cardinality",
    "IsFiniteSet", "DOMAIN", "UNCHANGED", "SUBSET", "UNION",
})


def spec_actions(spec: Path = SPEC) -> set[str]:
    """The action names applied in the disjuncts of the spec's `Next ==`, read from its text
    (so that coverage is judged against the spec, not against conformance/machine.py)."""
    text = spec.read_text()
    match = re.search(r"^Next ==\n(.*?)(?=^\S)", text, re.MULTILINE | re.DOTALL)
    if match is None:
        raise ValueError(f"no `Next ==` definition in {spec}")
    return set(re.findall(r"(\w+)\(", match.group(1))) - _TLA_BUILTINS


def trace_files(run: Path) -> dict[str, bytes]:
    """The files of a run directory that make it up: every *.ndjson and run.json, by name."""
    files = sorted(run.glob("*.ndjson")) + [run / "run.json"]
    return {f.name: f.read_bytes() for f in files if f.is_file()}


def is_run(path: Path) -> bool:
    """A directory with per-node traces (all.ndjson, the merged copy, does not count)."""
    return path.is_dir() and any(p.name != "all.ndjson" for p in path.glob("*.ndjson"))


def find_runs(paths: Iterable[Path]) -> list[Path]:
    """Every run at or below `paths`, sorted; each path must hold at least one.

    Raises:
        TraceError: a path is missing or holds no run.
    """
    runs: list[Path] = []
    for path in paths:
        if not path.exists():
            raise TraceError(f"{path}: no such file or directory")
        found = [path] if is_run(path) else sorted(d for d in path.rglob("*") if is_run(d))
        if not found:
            raise TraceError(f"{path}: no run directory (one with per-node *.ndjson traces) at or below it")
        runs += found
    return runs


def action_coverage(runs: Sequence[Path]) -> dict[str, int]:
    """How many events of each spec action the runs hold (0 for an action none exercised)."""
    counts: Counter[str] = Counter({name: 0 for name in spec_actions()})
    for run in runs:
        for trace in sorted(run.glob("*.ndjson")):
            if trace.name == "all.ndjson":
                continue
            for line in trace.read_text().splitlines():
                if line.strip():
                    counts[json.loads(line)["action"]] += 1
    return dict(counts)
