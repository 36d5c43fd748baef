"""How much of the CI model's state space the simulator's traces visit.

Theory of operation
===================

The CI model (spec/models/ci.cfg: one proposer, three acceptors, terms up to 2, one WAL
entry) is what TLC proves safe in every CI run; the simulator explores far bigger
configurations, but it is worth knowing which of the model's states it ever reaches.

A state is counted by its *projection*: the nodes' variables and the ghosts
(`prop_vars`, `acc_vars`, `ghost_vars`), the network left out — the network of a simulator
run holds every message ever sent, retries and heartbeats included, which the CI model's
steering (SendOnce, NoLoss) never produces, so comparing networks would count nothing.
Projections are taken up to the model's symmetry (acceptors, and proposers, are
interchangeable): `digest` renames the nodes in every way the symmetry allows and keeps the
smallest rendering, hashed.

The model's side comes from TLC itself: spec/MCCoverage.tla runs the CI model with an
invariant that prints each projection the first time it occurs; `record_model_states` keeps
their digests in `spec/models/ci-coverage.json`, stamped with a hash of the spec files it
came from (a test fails when the spec changed since).  The traces' side is the replay's
states (`conformance/replay.py`), for runs whose cluster has the model's nodes.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs

from conformance import machine as M
from conformance.seq import Terms
from conformance.tlc import ModelValue, Progress, Record, parse_value, run_tlc

__all__ = [
    "MODEL_FILE",
    "ModelStates",
    "StateCoverage",
    "digest",
    "load_model_states",
    "record_model_states",
    "spec_stamp",
]

SPEC_DIR = Path(__file__).resolve().parent.parent / "spec"
MODEL_FILE = SPEC_DIR / "models" / "ci-coverage.json"
# What the recorded states depend on: the spec, its model module, the CI config, this module.
_STAMPED = ("ProposerAcceptor.tla", "MCProposerAcceptor.tla", "MCCoverage.tla", "models/ci.cfg")

# The projection, in the order of the spec's <<prop_vars, acc_vars, ghost_vars>>.
PROJECTED = (
    "prop_phase", "prop_term", "prop_heard", "prop_history", "prop_wal", "prop_acks", "prop_commit",
    "acc_term", "acc_history", "acc_wal", "acc_flush", "acc_commit",
    "committed_log", "elections",
)  # fmt: skip


def _plain(value: Any, rename: dict[str, str]) -> Any:
    """A value with nodes renamed, in a form whose repr is canonical (sets and maps sorted)."""
    if isinstance(value, ModelValue):
        return rename.get(value.name, value.name)
    if isinstance(value, str):
        return rename.get(value, value)
    if isinstance(value, Record):
        return ("map", tuple(sorted(((_plain(k, rename), _plain(v, rename)) for k, v in value.items()), key=repr)))
    if isinstance(value, frozenset | set):
        return ("set", tuple(sorted((_plain(v, rename) for v in value), key=repr)))
    if isinstance(value, tuple | Terms):
        return tuple(_plain(v, rename) for v in value)
    return value


def digest(projection: Sequence[Any], proposers: Sequence[str], acceptors: Sequence[str]) -> str:
    """The projection's digest, the same for every renaming the symmetry allows."""
    renderings = (
        repr(_plain(tuple(projection), dict(zip(proposers, p)) | dict(zip(acceptors, a))))
        for p in itertools.permutations(proposers)
        for a in itertools.permutations(acceptors)
    )
    return hashlib.sha256(min(renderings).encode()).hexdigest()[:16]


def project(state: M.State) -> tuple[Any, ...]:
    return tuple(getattr(state, name) for name in PROJECTED)


def spec_stamp(spec_dir: Path = SPEC_DIR) -> str:
    """A hash of the files the model's states depend on."""
    h = hashlib.sha256()
    for name in _STAMPED:
        h.update(name.encode() + b"\0" + (spec_dir / name).read_bytes() + b"\0")
    return h.hexdigest()


@attrs.frozen
class ModelStates:
    """The CI model's projections, as digests, and the stamp of the spec they came from."""

    stamp: str
    proposers: tuple[str, ...]
    acceptors: tuple[str, ...]
    digests: frozenset[str]
    distinct_states: int  # TLC's count for the run, for the report


def load_model_states(path: Path = MODEL_FILE) -> ModelStates:
    data = json.loads(path.read_text())
    return ModelStates(
        stamp=data["stamp"],
        proposers=tuple(data["proposers"]),
        acceptors=tuple(data["acceptors"]),
        digests=frozenset(data["digests"]),
        distinct_states=data["distinct_states"],
    )


_CONSTANT = re.compile(r"^\s*(Proposers|Acceptors)\s*=\s*\{([^}]*)\}", re.M)


def record_model_states(
    spec_dir: Path = SPEC_DIR,
    out: Path = MODEL_FILE,
    progress: Callable[[Progress], None] | None = None,
) -> ModelStates:
    """Run the CI model under MCCoverage (TLC, one worker) and write `out`.

    Raises:
        RuntimeError: TLC did not finish the model cleanly.
    """
    ci = (spec_dir / "models" / "ci.cfg").read_text()
    nodes = {kind: tuple(sorted(n.strip() for n in names.split(","))) for kind, names in _CONSTANT.findall(ci)}
    # The CI config with Cover in place of its invariants and properties (both sections come last).
    config = spec_dir / ".coverage-ci.cfg"
    config.write_text(ci[: ci.index("INVARIANTS")] + "INVARIANT Cover\n")
    try:
        result = run_tlc(spec_dir / "MCCoverage.tla", config, workers=1, on_progress=progress)
    finally:
        config.unlink()
    if result.outcome != "ok" or result.distinct_states is None:
        raise RuntimeError(f"TLC on the coverage model: {result.outcome}: {result.message}")
    digests = set()
    for value in _printed(result.output):
        _, (prop_vars, acc_vars, ghost_vars) = value
        digests.add(digest(prop_vars + acc_vars + ghost_vars, nodes["Proposers"], nodes["Acceptors"]))
    if not digests:
        raise RuntimeError("TLC on the coverage model printed no projection (did Cover run?)")
    states = ModelStates(spec_stamp(spec_dir), nodes["Proposers"], nodes["Acceptors"], frozenset(digests), result.distinct_states)
    out.write_text(json.dumps({
        "about": "CI-model states projected on node variables and ghosts, up to symmetry: see conformance/coverage.py",
        "stamp": states.stamp,
        "proposers": list(states.proposers),
        "acceptors": list(states.acceptors),
        "distinct_states": states.distinct_states,
        "digests": sorted(states.digests),
    }, indent=0) + "\n")
    return states


_PRINTED = re.compile(r'<<\s*"projection",')


def _printed(output: str) -> Iterable[Any]:
    """The values Cover printed.  Each starts a line with `<< "projection",`; TLC's pretty
    printer indents the lines that continue a value, and PrintT writes a value at once, so a
    value is its first line and the indented lines after it."""
    chunk: list[str] = []
    for line in [*output.splitlines(), ""]:
        if chunk and line[:1].isspace():
            chunk.append(line)
            continue
        if chunk:
            yield parse_value("\n".join(chunk))
            chunk = []
        if _PRINTED.match(line):
            chunk = [line]


@attrs.define
class StateCoverage:
    """Accumulates the projections traces visit and compares them with the model's."""

    model: ModelStates
    visited: set[str] = attrs.field(factory=set)
    runs: int = 0  # runs whose cluster is the model's

    def fits(self, proposers: Sequence[str], acceptors: Sequence[str]) -> bool:
        return tuple(sorted(proposers)) == self.model.proposers and tuple(sorted(acceptors)) == self.model.acceptors

    def add(self, state: M.State) -> None:
        self.visited.add(digest(project(state), self.model.proposers, self.model.acceptors))

    @property
    def inside(self) -> int:
        """Visited projections that are states of the model."""
        return len(self.visited & self.model.digests)

    @property
    def fraction(self) -> float:
        return self.inside / len(self.model.digests)
