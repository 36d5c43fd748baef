"""TLC trace validation: does TLC, on the spec itself, accept a run of the implementation?

Theory of operation
===================

`conformance/replay.py` answers "is this run a behaviour of the spec?" with the spec's Python
transcription; this module asks TLC the same question on spec/ProposerAcceptor.tla, through
the hand-written trace spec spec/TraceProposerAcceptor.tla (read its header first).  The two
checkers must agree on every trace (tests/test_tlctrace.py).

1. `load_events` merges the run's traces as the replay does.
2. `trace_data` writes the events as the TLA+ module TraceData: one record per event, with
   the abstraction of impl/trace.py undone as the replay undoes it (`spec_messages` turns a
   logged message into the spec messages it stands for; a received id becomes the messages
   it names, or nothing if no earlier event sent it, which no action of the spec can
   consume; an AnswerGreeting with recv null answers the Greeting of `args["from"]`).
   LoseMessage events are left out, as the replay leaves them out.
3. Trace rules the spec has no words for are checked here, and only here (`format_error`):
   a node's Lamport clock grows with each of its events, message ids are unique, and a
   message is received by the node it was sent to (the spec's requests have no addressee).
   TLC gets the events before the first event that breaks one; if it explains all of them,
   the run is rejected at that event with the rule's name.  Every other rejection (an
   unknown action or node, a message never sent, a guard, a logged state, an invariant) is
   TLC's.
4. `run_trace` copies the trace spec, the spec and the generated TraceData into a scratch
   directory and runs TLC there (one worker, no deadlock check, as the trace spec requires).
   TLC prints `<<"matched", n>>` each time it explains event n for the first time; the
   highest n is the longest explained prefix.  All n: accepted.  Fewer: rejected at the
   next event, reported as file:line of the run's ndjson (the merged order's event), with
   the reason TLC printed (`<<"unexplained", n, why>>`: the steps were taken but the logged
   state or messages differ, or an invariant fails) or, if it printed none, "no step is
   enabled".

`check_walk` is the same machinery for the other direction of DESIGN §5: a behaviour of the
Python machine (conformance/machine.py), written as whole states, is checked against TLC's
Next step by step.

Cost: TLC explores one state per spec step (an event of k entries is k states), each
holding the whole network; a sim run under traces/accepted/sim/ (600-770 events, 3,500-5,700
states, up to 1,900 spec messages in flight) takes 8-10 s, a third of it LogMatchesHistory.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from conformance import machine as M
from conformance.replay import Event, TraceError, _model, load_events, spec_messages
from conformance.seq import Terms
from conformance.tlc import Record, TlcResult, format_value, parse_value, run_tlc

__all__ = [
    "TlcCheckError",
    "TlcVerdict",
    "TraceRun",
    "check_events",
    "check_run",
    "check_walk",
    "format_error",
    "run_trace",
    "trace_data",
]

SPEC_DIR = Path(__file__).resolve().parent.parent / "spec"
TRACE_MODULE = "TraceProposerAcceptor.tla"
TRACE_CONFIG = "TraceProposerAcceptor.cfg"
WALK_CONFIG = "TraceProposerAcceptor_walk.cfg"
# The trace spec and what it EXTENDS, besides the generated TraceData.
SPEC_MODULES = (TRACE_MODULE, "ProposerAcceptor.tla", "AbstractLog.tla")


class TlcCheckError(Exception):
    """TLC did not give a verdict (parse error, evaluation error, timeout); one line."""


@attrs.frozen
class TlcVerdict:
    """TLC's verdict on a run.

    Attributes:
        verdict: "accepted" or "rejected".
        events: the run's events (load_events' merged order, lost messages included).
        prefix: how many of them come before the first one nothing explains (all, if
            accepted).
        event: that first unexplained event, None if accepted.
        reason: why it is unexplained, one line ("" if accepted).
        seconds: TLC's wall-clock time, JVM start included.
        states: the distinct states TLC explored.
    """

    verdict: str
    events: int
    prefix: int
    event: Event | None
    reason: str
    seconds: float
    states: int

    def report(self) -> str:
        head = f"TLC: {self.verdict}, {self.events:,} events, {self.states:,} states, {self.seconds:.1f} s"
        if self.event is None:
            return head
        return "\n".join(
            [
                head,
                f"REJECTED at {self.event.file}:{self.event.line} (after {self.prefix:,} explained events)",
                f"  event: {self.event.describe()}",
                f"  why:   {self.reason}",
            ]
        )


# ---------------------------------------------------------------------------------------------
# From events to TLA+ values
# ---------------------------------------------------------------------------------------------


def _tla(value: Any) -> Any:
    """A JSON or machine value as the value conformance.tlc.format_value prints."""
    if isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, Mapping):
        return Record((k, _tla(v)) for k, v in value.items())
    if isinstance(value, (list, tuple, Terms)):
        return tuple(_tla(v) for v in value)
    if isinstance(value, frozenset):
        return frozenset(_tla(v) for v in value)
    raise TraceError(f"{value!r} has no TLA+ counterpart")


def format_error(events: Sequence[Event]) -> tuple[int, str] | None:
    """The first event that breaks a trace rule the spec cannot state, and the rule.

    Returns:
        (index in `events`, reason), or None if every event keeps the rules.
    """
    clock: dict[str, int] = {}
    sent_to: dict[str, str] = {}
    for index, event in enumerate(events):
        if event.action == "LoseMessage":
            continue
        node, lc, recv = event.node, event.data["lc"], event.data["recv"]
        if lc <= clock.get(node, 0):
            return index, f"its Lamport clock {lc} does not exceed {node}'s previous {clock[node]}"
        clock[node] = lc
        if recv in sent_to and sent_to[recv] != node:
            return index, f"it consumes message {recv}, which was sent to {sent_to[recv]}"
        for sent in event.data["sent"]:
            if sent["id"] in sent_to:
                return index, f"it sends message id {sent['id']}, which an earlier event used"
        for sent in event.data["sent"]:
            sent_to[sent["id"]] = sent["to"]
    return None


def _record(event: Event, by_id: Mapping[str, dict[str, Any]]) -> Record:
    """One event as TraceData's record (see the trace spec's header)."""
    data = event.data
    recv = data["recv"]
    if recv in by_id:
        consumed = spec_messages(by_id[recv])
    elif recv is None and event.action == "AnswerGreeting":
        consumed = [Record(type="Greeting", **{"from": data["args"].get("from")})]
    else:
        consumed = []
    fields: dict[str, Any] = {
        "action": event.action,
        "node": event.node,
        "recv": tuple(consumed),
        "state": dict(data["state"]),
        "sent": frozenset(m for s in data["sent"] for m in spec_messages(s["msg"])),
    }
    if "prop_heard" in fields["state"]:
        fields["state"]["prop_heard"] = frozenset(fields["state"]["prop_heard"])
    if event.action in ("NewEntry", "SendAppend"):
        args = {"entries": 1, **data["args"]}
        fields["args"] = {k: args[k] for k in ("l", "entries") if k in args}
    return _tla(fields)


def trace_data(events: Sequence[Event], model: M.Model, end: int) -> tuple[str, list[int]]:
    """The TraceData module for `events[:end]`.

    Returns:
        The module's text, and for each record of its Trace the index of its event.
    """
    by_id: dict[str, dict[str, Any]] = {}
    records: list[str] = []
    kept: list[int] = []
    for index, event in enumerate(events[:end]):
        if event.action == "LoseMessage":
            continue
        try:
            records.append(format_value(_record(event, by_id)))
        except (KeyError, TypeError, AttributeError) as exc:
            raise TraceError(f"{event.file}:{event.line}: malformed event ({exc!r})") from None
        kept.append(index)
        for sent in event.data["sent"]:
            by_id[sent["id"]] = sent["msg"]
    return _module(model, records, []), kept


def _module(model: M.Model, trace: Sequence[str], walk: Sequence[str]) -> str:
    def seq(items: Sequence[str]) -> str:
        return "<<" + "".join(f"\n    {item}," for item in items).rstrip(",") + "\n>>"

    return (
        "---- MODULE TraceData ----\n"
        "\\* Generated by conformance/tlctrace.py; see TraceProposerAcceptor.tla.\n"
        "EXTENDS TLC\n"  # for a function with keys that are not names: ("k" :> v @@ ...)
        f"TraceProposers == {format_value(frozenset(model.proposers))}\n"
        f"TraceAcceptors == {format_value(frozenset(model.acceptors))}\n"
        f"Trace == {seq(trace)}\n"
        f"Walk == {seq(walk)}\n"
        "====\n"
    )


# ---------------------------------------------------------------------------------------------
# Running TLC
# ---------------------------------------------------------------------------------------------


@attrs.frozen
class TraceRun:
    """What the trace spec printed in one TLC run.

    Attributes:
        matched: the highest event (or walk state) number explained, 0 if none.
        unexplained: for an event number, why steps that were taken still did not explain
            it (the trace spec's Unless), as text.
        result: TLC's result.
    """

    matched: int
    unexplained: Mapping[int, frozenset[str]]
    result: TlcResult


def run_trace(data: str, config: str, spec_dir: Path = SPEC_DIR, timeout: float | None = None) -> TraceRun:
    """Run the trace spec on a generated TraceData module.

    Args:
        data: the TraceData module's text.
        config: TRACE_CONFIG or WALK_CONFIG, a file of `spec_dir`.
        spec_dir: where the trace spec, the spec and the configs are.
        timeout: seconds after which TLC is stopped (then TlcCheckError).

    Raises:
        TlcCheckError: TLC found an error or was stopped instead of finishing its search.
        TlcSetupError: Java or TLC is missing.
    """
    with tempfile.TemporaryDirectory(prefix="paxwal-trace-") as tmp:
        work = Path(tmp)
        try:
            for name in SPEC_MODULES:
                shutil.copy(spec_dir / name, work / name)
        except OSError as exc:
            raise TlcCheckError(f"the trace spec is missing: {exc}") from None
        (work / "TraceData.tla").write_text(data)
        result = run_tlc(work / TRACE_MODULE, spec_dir / config, workers=1, check_deadlock=False, timeout=timeout)
    if result.outcome != "ok":
        detail = result.message.splitlines()[0] if result.message else result.outcome
        raise TlcCheckError(f"TLC gave no verdict ({result.outcome}): {detail}")
    matched = 0
    unexplained: dict[int, set[str]] = {}
    for printed in _printed(result.output):
        if printed[0] == "matched":  # <<"matched", n>> from Matched
            matched = max(matched, printed[1])
        elif printed[0] == "unexplained":  # <<"unexplained", n, why>> from Unless
            why = printed[2] if isinstance(printed[2], str) else f"{printed[2][0]} {', '.join(sorted(printed[2][1]))}"
            unexplained.setdefault(printed[1], set()).add(why)
    return TraceRun(matched, {n: frozenset(texts) for n, texts in unexplained.items()}, result)


def _printed(output: str) -> list[Any]:
    """The values the spec printed with PrintT: TLC writes them outside its tool-mode
    messages, one a line, or over several lines whose continuations are indented."""
    texts: list[list[str]] = []
    depth = 0
    for line in output.splitlines():
        if line.startswith("@!@!@STARTMSG"):
            depth += 1
        elif line.startswith("@!@!@ENDMSG"):
            depth -= 1
        elif depth == 0 and line.startswith("<<"):
            texts.append([line])
        elif depth == 0 and texts and line.startswith(" "):
            texts[-1].append(line)
    return [parse_value(" ".join(text)) for text in texts]


def _no_step(event: Event, model: M.Model) -> str:
    """Why TLC found no step for an event, as far as the event itself tells."""
    if event.action not in M.ACTIONS:
        return f"{event.action!r} is not an action of the spec"
    if event.node not in (*model.proposers, *model.acceptors):
        return f"node {event.node!r} is not in the cluster"
    return f"no step of {event.action} by {event.node} is enabled (a false guard, or a message not in msgs)"


def check_events(
    events: Sequence[Event], run: dict[str, Any] | None = None, spec_dir: Path = SPEC_DIR, timeout: float | None = None
) -> TlcVerdict:
    """TLC's verdict on merged events (see the module docstring; arguments as `run_trace`)."""
    broken = format_error(events)
    end = broken[0] if broken else len(events)
    model = _model(events, run)
    data, kept = trace_data(events, model, end)
    tlc = run_trace(data, TRACE_CONFIG, spec_dir, timeout)

    def verdict(prefix: int, reason: str) -> TlcVerdict:
        first = events[prefix] if prefix < len(events) else None
        return TlcVerdict(
            "rejected" if first else "accepted", len(events), prefix, first,
            reason, tlc.result.seconds, tlc.result.distinct_states or 0,
        )  # fmt: skip

    if tlc.matched < len(kept):
        event = events[kept[tlc.matched]]
        why = tlc.unexplained.get(tlc.matched + 1)
        return verdict(kept[tlc.matched], "; ".join(sorted(why)) if why else _no_step(event, model))
    if broken:
        return verdict(end, f"trace rule broken: {broken[1]}")
    return verdict(len(events), "")


def check_run(paths: Sequence[Path], spec_dir: Path = SPEC_DIR, timeout: float | None = None) -> TlcVerdict:
    """Load a run's traces and ask TLC (arguments as `run_trace`).

    Raises:
        TraceError: unreadable input.
        TlcCheckError, TlcSetupError: TLC gave no verdict.
    """
    events, run = load_events(paths)
    return check_events(events, run, spec_dir, timeout)


def check_walk(
    model: M.Model, states: Iterable[M.State], spec_dir: Path = SPEC_DIR, timeout: float | None = None
) -> int:
    """How many states of a machine behaviour TLC reproduces, from the first (the initial
    state) on; all of them iff every step is a step of the spec's Next.

    Args:
        model: the constants; node ids must be strings (TLC gets them as strings).
        states: the behaviour, initial state first.
    """
    walk = [format_value(Record((name, _tla(value)) for name, value in s._asdict().items())) for s in states]
    return run_trace(_module(model, [], walk), WALK_CONFIG, spec_dir, timeout).matched
