"""spec/MCProposerAcceptor.tla transcribed, and TLC's breadth-first search over `machine`.

Theory of operation
===================

`conformance/machine.py` is the spec transcribed by hand.  Reading is not proof: this module
ties the transcription to the TLA+ text *mechanically*.  On a bounded model without VIEW and
SYMMETRY, TLC's number of distinct reachable states is a property of the spec alone; a
breadth-first search of the Python machine under the same bounds must reach exactly as many
(`tests/test_machine.py` compares them on the models `spec/models/machine_*.cfg`).  A guard
too strong or too weak, a wrong effect or a missing action changes the count.

What a count needs from MCProposerAcceptor: the state CONSTRAINT `StateConstraint` and the
ACTION_CONSTRAINTs `NoLoss`, `SendOnce`, `LeadersCrash`, `LiveGreetings`, `NoAcceptorCrash`
(and their conjunction `Steady`).  VIEW and SYMMETRY are deliberately not transcribed: with
them TLC keeps one state per class, which one depending on search order and fingerprints.

TLC's search, as this module reproduces it (each point checked against TLC 2.15 on a toy
spec, see tests/test_machine.py::test_tlc_search_semantics):

* Every successor that Next produces from an explored state counts as *generated*, before
  any constraint is checked; the initial states count too.
* A successor `t` of `s` enters the state set (is *distinct*, and is explored later) only if
  `t` satisfies the CONSTRAINT and the pair `(s, t)` satisfies every ACTION_CONSTRAINT.  An
  excluded `t` is simply not recorded: reached again on another, allowed step, it counts.
* The reported depth is the number of BFS levels: 1 for the initial states alone.
* TLC also evaluates the invariants on excluded successors (a state just past the bound
  can violate an invariant); `bfs` checks counted states, and excluded ones only if asked.

Action constraints are predicates of a *pair of states*, not of the action that produced
the step.  `NoLoss == ~\\E m \\in msgs : LoseMessage(m)` forbids every step (s, t) that *is*
a LoseMessage(m) step, i.e. where t is s minus one message, whatever action Next used to get
there: a RestartProposer of a proposer that has heard nothing, with one greeting reply in
flight, is such a step and is cut too.  Likewise `NoAcceptorCrash` cuts a repeated
ProposerElected that only discards unflushed WAL (it equals a restart that keeps
commit_lsn), and lets a Flush that sends nothing new through (it equals a restart that
keeps everything: the constraint is written `RestartAcceptor(a) => Flush(a)`).  So each
predicate below takes the action name and arguments (the BFS has them)
but decides on (s, t) alone, by evaluating the constrained action of the TLA+ definition,
for every value of its bound variables, as a relation between s and t.  (On the models of
spec/models/machine_*.cfg the per-action reading happens to give the same counts: a state
cut on such a step is reached by another one.  The pair reading is TLC's, so it is the one
kept.)

Also here: `load_config` reads a model config into the bounded model it describes, and
`replay` checks that a behaviour TLC printed (a counterexample, a simulation) is a behaviour
of the machine, step by step.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from conformance import machine as M
from conformance.machine import Model, State
from conformance.seq import Terms
from conformance.tlc import ModelValue, Record, TraceState

__all__ = [
    "ACTION_CONSTRAINTS",
    "BfsResult",
    "BoundedModel",
    "InvariantViolation",
    "LeadersCrash",
    "LiveGreetings",
    "NoAcceptorCrash",
    "NoLoss",
    "ReplayError",
    "SendOnce",
    "StateConstraint",
    "Steady",
    "bfs",
    "is_step",
    "load_config",
    "replay",
    "state_from_tlc",
]

ActionConstraint = Callable[[Model, State, str, tuple, State, int], bool]


# ---------------------------------------------------------------------------------------------
# The state constraint
# ---------------------------------------------------------------------------------------------


def StateConstraint(model: Model, s: State, max_term: int, max_entries: int) -> bool:
    """\\A p \\in Proposers : prop_term[p] <= MaxTerm /\\ Len(prop_wal[p]) <= MaxEntries"""
    return all(s.prop_term[p] <= max_term and len(s.prop_wal[p]) <= max_entries for p in model.proposers)


# ---------------------------------------------------------------------------------------------
# Action constraints: each decides on the pair (s, t); `action` and `args` are not consulted.
# ---------------------------------------------------------------------------------------------


def is_step(result: State | M.Disabled, t: State) -> bool:
    """Whether an action instance, evaluated at s (giving `result`), holds of the pair (s, t).

    Every action of the spec determines its successor once its bound variables are fixed, so
    A(x) is true of (s, t) exactly when A(x) is enabled at s and leads to t.
    """
    return isinstance(result, State) and result == t


_MSGS = State._fields.index("msgs")


def _only_msgs_differ(s: State, t: State) -> bool:
    """Every variable but msgs is unchanged (a necessary condition, used to skip work)."""
    return all(x is y or x == y for i, (x, y) in enumerate(zip(s, t)) if i != _MSGS)


def NoLoss(model: Model, s: State, action: str, args: tuple, t: State, max_entries: int) -> bool:
    """~\\E m \\in msgs : LoseMessage(m)"""
    # LoseMessage(m) for m \in msgs removes exactly one message: only m \in s.msgs \ t.msgs
    # can make it true, and only if t has one message less.
    if len(t.msgs) != len(s.msgs) - 1:
        return True
    return not any(is_step(M.LoseMessage(model, s, m), t) for m in s.msgs - t.msgs)


def SendOnce(model: Model, s: State, action: str, args: tuple, t: State, max_entries: int) -> bool:
    """\\A p \\in Proposers, l \\in 1..(MaxEntries + 1) :
    SendAppend(p, l) => /\\ l <= Len(prop_wal[p])
                       /\\ ~\\E m \\in msgs : m.type = "AppendRequest" /\\ m.term = prop_term[p]
                                            /\\ m.lsn = l"""
    # SendAppend only adds one message to msgs (or none, if already there).
    if not (len(t.msgs) - len(s.msgs) in (0, 1) and _only_msgs_differ(s, t)):
        return True
    for p in model.proposers:
        for l in range(1, max_entries + 2):
            if not is_step(M.SendAppend(model, s, p, l), t):
                continue
            if not (
                l <= len(s.prop_wal[p])
                and not any(
                    m["type"] == "AppendRequest" and m["term"] == s.prop_term[p] and m["lsn"] == l for m in s.msgs
                )
            ):
                return False
    return True


def LeadersCrash(model: Model, s: State, action: str, args: tuple, t: State, max_entries: int) -> bool:
    """\\A p \\in Proposers : RestartProposer(p) => prop_phase[p] = "leader" """
    return all(
        s.prop_phase[p] == "leader" or not is_step(M.RestartProposer(model, s, p), t) for p in model.proposers
    )


def LiveGreetings(model: Model, s: State, action: str, args: tuple, t: State, max_entries: int) -> bool:
    """\\A a \\in Acceptors, m \\in msgs : AnswerGreeting(a, m) => prop_phase[m.from] = "greeting" """
    # AnswerGreeting only adds one message to msgs (or none, if already there).
    if not (len(t.msgs) - len(s.msgs) in (0, 1) and _only_msgs_differ(s, t)):
        return True
    for m in s.msgs:
        if m["type"] != "Greeting" or s.prop_phase[m["from"]] == "greeting":
            continue  # AnswerGreeting(a, m) false, or the consequent true
        if any(is_step(M.AnswerGreeting(model, s, a, m), t) for a in model.acceptors):
            return False
    return True


def NoAcceptorCrash(model: Model, s: State, action: str, args: tuple, t: State, max_entries: int) -> bool:
    """\\A a \\in Acceptors : RestartAcceptor(a) => Flush(a)

    RestartAcceptor(a) has the bound variables k \\in acc_flush[a]..(Len(acc_wal[a]) + 1) and
    c \\in 1..acc_commit[a] (machine: parameters).  A restart keeping all its WAL and its
    commit_lsn equals a Flush that sends nothing new; the implication lets that pair through.
    """
    if len(t.msgs) != len(s.msgs):
        return True  # RestartAcceptor(a) leaves msgs unchanged
    for a in model.acceptors:
        restart = any(
            is_step(M.RestartAcceptor(model, s, a, k, c), t)
            for k in range(s.acc_flush[a], len(s.acc_wal[a]) + 2)
            for c in range(1, s.acc_commit[a] + 1)
        )
        if restart and not is_step(M.Flush(model, s, a), t):
            return False
    return True


def Steady(model: Model, s: State, action: str, args: tuple, t: State, max_entries: int) -> bool:
    """NoLoss /\\ SendOnce /\\ LeadersCrash /\\ LiveGreetings"""
    return all(f(model, s, action, args, t, max_entries) for f in (NoLoss, SendOnce, LeadersCrash, LiveGreetings))


ACTION_CONSTRAINTS: dict[str, ActionConstraint] = {
    f.__name__: f for f in (NoLoss, SendOnce, LeadersCrash, LiveGreetings, NoAcceptorCrash, Steady)
}


# ---------------------------------------------------------------------------------------------
# Breadth-first search
# ---------------------------------------------------------------------------------------------


class InvariantViolation(AssertionError):
    """A reachable state violates invariants; `state` is it, `invariants` their names."""

    def __init__(self, invariants: list[str], state: State, depth: int) -> None:
        super().__init__(f"invariants {', '.join(invariants)} violated at depth {depth}: {state}")
        self.invariants = invariants
        self.state = state
        self.depth = depth


@attrs.frozen
class BfsResult:
    """TLC's three counters for a complete search, and the wall-clock time it took.

    `discovered` says, per action, how many counted states were first reached by it: an
    action absent from it never mattered to the count.
    """

    distinct: int
    generated: int
    depth: int
    seconds: float
    discovered: Mapping[str, int] = attrs.field(factory=dict)


def _constraints(names_or_fns: Iterable[str | ActionConstraint]) -> list[ActionConstraint]:
    return [ACTION_CONSTRAINTS[c] if isinstance(c, str) else c for c in names_or_fns]


def bfs(
    model: Model,
    max_term: int,
    max_entries: int,
    action_constraints: Iterable[str | ActionConstraint] = (),
    *,
    check_invariants: bool = True,
    check_excluded: bool = False,
    max_distinct: int | None = None,
) -> BfsResult:
    """Explore the machine as TLC does with `CONSTRAINT StateConstraint` and the given
    ACTION_CONSTRAINTs (names as in MCProposerAcceptor, or predicates).

    Args:
        model: the constants Proposers and Acceptors.
        max_term, max_entries: MaxTerm and MaxEntries.
        action_constraints: the ACTION_CONSTRAINT line of the config.
        check_invariants: evaluate `machine.invariants` on every counted state.
        check_excluded: also on successors the constraints exclude (as TLC does).
        max_distinct: stop with RuntimeError beyond this many states (a runaway model).

    Returns:
        distinct, generated and depth as TLC counts them (see the module docstring).

    Raises:
        InvariantViolation: a checked state violates an invariant.
        RuntimeError: more than `max_distinct` states.
    """
    started = time.monotonic()
    constraints = _constraints(action_constraints)
    s0 = M.init(model)
    if check_invariants and (bad := M.invariants(model, s0)):
        raise InvariantViolation(bad, s0, 1)
    seen: set[State] = {s0}
    excluded_checked: set[State] = set()
    frontier = [s0] if StateConstraint(model, s0, max_term, max_entries) else []
    generated = 1
    depth = 1
    discovered: Counter[str] = Counter()
    while frontier:
        following: list[State] = []
        for s in frontier:
            for action, args, t in M.successors(model, s):
                generated += 1
                if t in seen:
                    continue
                if StateConstraint(model, t, max_term, max_entries) and all(
                    c(model, s, action, args, t, max_entries) for c in constraints
                ):
                    seen.add(t)
                    following.append(t)
                    discovered[action] += 1
                    if check_invariants and (bad := M.invariants(model, t)):
                        raise InvariantViolation(bad, t, depth + 1)
                    if max_distinct is not None and len(seen) > max_distinct:
                        raise RuntimeError(f"more than {max_distinct} distinct states")
                elif check_excluded and t not in excluded_checked:
                    excluded_checked.add(t)
                    if bad := M.invariants(model, t):
                        raise InvariantViolation(bad, t, depth + 1)
        if following:
            depth += 1
        frontier = following
    return BfsResult(
        distinct=len(seen),
        generated=generated,
        depth=depth,
        seconds=time.monotonic() - started,
        discovered=dict(discovered),
    )


# ---------------------------------------------------------------------------------------------
# Models from TLC configs
# ---------------------------------------------------------------------------------------------


@attrs.frozen
class BoundedModel:
    """What a config of MCProposerAcceptor fixes: constants and constraints.

    Node ids are `ModelValue`s, as in TLC's output, so TLC's states convert unchanged.
    """

    model: Model
    max_term: int
    max_entries: int
    action_constraints: tuple[str, ...]

    def bfs(self, **options: Any) -> BfsResult:
        return bfs(self.model, self.max_term, self.max_entries, self.action_constraints, **options)


_CFG_SECTIONS = re.compile(
    r"^\s*(CONSTANTS?|SPECIFICATION|INIT|NEXT|CONSTRAINTS?|ACTION_CONSTRAINTS?|INVARIANTS?|PROPERTY|PROPERTIES"
    r"|SYMMETRY|VIEW|CHECK_DEADLOCK)\b",
    re.M,
)


def load_config(path: Path | str) -> BoundedModel:
    """Read a model config (spec/models/*.cfg) into a BoundedModel.

    Raises:
        ValueError: the config uses VIEW or SYMMETRY (TLC's count would then depend on its
            search order), a constraint other than StateConstraint, a constraint this module
            does not transcribe, or lacks a constant.
    """
    text = re.sub(r"\\\*[^\n]*", "", Path(path).read_text())
    text = re.sub(r"\(\*.*?\*\)", "", text, flags=re.S)
    sections: dict[str, str] = {}
    marks = list(_CFG_SECTIONS.finditer(text))
    for mark, following in zip(marks, [*marks[1:], None]):
        key = mark.group(1).rstrip("S") if mark.group(1) != "PROPERTIES" else "PROPERTY"
        body = text[mark.end() : following.start() if following else len(text)]
        sections[key] = sections.get(key, "") + " " + body
    for forbidden in ("VIEW", "SYMMETRY"):
        if forbidden in sections:
            raise ValueError(f"{path}: {forbidden} makes TLC's state count depend on its search order")
    if sections.get("CONSTRAINT", " StateConstraint").split() != ["StateConstraint"]:
        raise ValueError(f"{path}: only CONSTRAINT StateConstraint is transcribed")
    constants = dict(re.findall(r"(\w+)\s*=\s*(\{[^}]*\}|\d+)", sections.get("CONSTANT", "")))
    try:
        names = {k: re.findall(r"\w+", constants[k]) for k in ("Proposers", "Acceptors")}
        max_term, max_entries = int(constants["MaxTerm"]), int(constants["MaxEntries"])
    except KeyError as missing:
        raise ValueError(f"{path}: constant {missing} missing") from None
    constraints = tuple(sections.get("ACTION_CONSTRAINT", "").split())
    unknown = [c for c in constraints if c not in ACTION_CONSTRAINTS]
    if unknown:
        raise ValueError(f"{path}: action constraints not transcribed in conformance/mc.py: {unknown}")
    model = Model(
        proposers=tuple(ModelValue(n) for n in sorted(names["Proposers"])),
        acceptors=tuple(ModelValue(n) for n in sorted(names["Acceptors"])),
    )
    return BoundedModel(model, max_term, max_entries, constraints)


# ---------------------------------------------------------------------------------------------
# Replaying TLC behaviours through the machine
# ---------------------------------------------------------------------------------------------


class ReplayError(AssertionError):
    """A TLC behaviour that the machine cannot reproduce; `index` is the failing state's
    1-based number in the behaviour."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(f"state {index}: {message}")
        self.index = index


def state_from_tlc(values: Mapping[str, Any]) -> State:
    """A TLC trace state (`TraceState.values`, parsed by conformance.tlc) as a machine State.

    The parser's types are the machine's (Record, tuple, frozenset, ModelValue for node ids),
    except that the machine keeps WALs as `Terms` (equal to the tuple, but with runs that
    its invariants read): prop_wal, acc_wal and committed_log are converted.
    """
    fields = set(State._fields)
    if set(values) != fields:
        raise ValueError(f"variables differ from the spec's: missing {fields - set(values)}, extra {set(values) - fields}")
    converted = dict(values)
    for name in ("prop_wal", "acc_wal"):
        converted[name] = Record((k, Terms(w)) for k, w in values[name].items())
    converted["committed_log"] = Terms(values["committed_log"])
    return State(**converted)


def _differences(s: State, t: State) -> str:
    return ", ".join(f"{name}: {x!r} vs {y!r}" for name, x, y in zip(State._fields, s, t) if x != y)


def replay(model: Model, trace: Sequence[TraceState]) -> list[list[tuple[str, tuple]]]:
    """Check that a TLC behaviour is one of the machine's: its first state is `init(model)`
    and each next state is a successor (any action of Next; constraints are not applied, as
    a behaviour under constraints is a behaviour of the spec).  A "Stuttering" or lasso
    closing entry (liveness traces) is not a step and is skipped.

    Returns:
        For each step, every (action, args) of Next that explains it (often one).

    Raises:
        ReplayError: the first state that is not reproduced, with the nearest successor's
            differing variables.
    """
    if not trace:
        raise ReplayError(0, "empty behaviour")
    states = [state_from_tlc(ts.values) for ts in trace if ts.action != "Stuttering" and ts.loops_to is None]
    first = M.init(model)
    if states[0] != first:
        raise ReplayError(1, f"not the initial state: {_differences(first, states[0])}")
    explanations: list[list[tuple[str, tuple]]] = []
    for i, (s, t) in enumerate(zip(states, states[1:]), start=2):
        steps = list(M.successors(model, s))
        found = [(action, args) for action, args, u in steps if u == t]
        if not found:
            nearest = min(steps, key=lambda step: len(_differences(step[2], t)), default=None)
            detail = f"; nearest {nearest[0]}{nearest[1]}: {_differences(nearest[2], t)}" if nearest else ""
            raise ReplayError(i, f"no action of Next reaches it from state {i - 1}{detail}")
        explanations.append(found)
    return explanations
