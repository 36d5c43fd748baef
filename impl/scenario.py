"""Scenario files: hand-written protocol stories run on the simulator's manual mode.

A scenario (tests/scenarios/*.txt) is a sequence of commands, each followed by `----` and
the output it must produce, in the style of etcd-raft's datadriven tests::

    # p1 wins term 1 with the votes of a1 and a2.
    deliver p1->a1 VoteRequest
    ----
    a1 Vote | p1 VoteResponse term=1 history=[0@1] flush=1

Lines starting with `#` and blank lines are prose, kept as written.  Output is one line per
trace event the command caused (`node Action | receiver Message fields...`, all in the
spec's terms: positions, not byte LSNs), plus any violation of the simulator's checks.
`run(text, rewrite=True)` returns the file with every output replaced by the actual one
(`pytest tests/test_scenarios.py --rewrite`; read the diff before committing).

Commands:

=================================  ========================================================
cluster acceptors=N proposers=M    first command: fresh acceptors a1.., proposers p1.. down
  [max_send=K]                     (K: most bytes per AppendRequest, default 64)
start P...                         start proposers (they connect to every acceptor)
deliver [S->D] [Type] [keep]       deliver the oldest matching message (`keep`: a copy stays
                                   in flight, i.e. a duplicate); S or D may be `*`
deliver-all [S->D] [Type]          deliver every matching message in flight now, in order
drop [S->D] [Type]                 lose every matching message in flight (LoseMessage)
complete A [all]                   finish A's oldest (or every) outstanding flush/persist
stabilize                          deliver and complete everything until nothing is left
crash N [keep=K] / restart N       crash a node / bring it back (an acceptor from its disk);
                                   a crashed acceptor loses its unflushed WAL but for the
                                   first K bytes (default 0), which its restart flushes
append P BYTES                     P's client appends the record BYTES (ASCII, no spaces)
tick P TIMER                       fire P's timer (election, heartbeat)
state N...                         the nodes' spec variables (for an acceptor waiting on its
                                   disk: the state that completion makes durable)
in-flight                          the messages in flight, oldest first
check                              the simulator's safety checks on the run so far
=================================  ========================================================
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from impl.sim import Sim, SimOptions

__all__ = ["ScenarioError", "run", "run_file"]

SEPARATOR = "----"


class ScenarioError(Exception):
    """A malformed scenario file or a command that cannot run; names the line.

    Attributes:
        sim: the simulator as the failing command left it (None before `cluster`), so the
            trace of the run so far can still be checked (conformance/impl_mutants.py).
    """

    def __init__(self, message: str, sim: Sim | None = None) -> None:
        super().__init__(message)
        self.sim = sim


@attrs.define
class _Block:
    prose: list[str]
    command: str
    line: int
    expected: list[str]


def _parse(text: str) -> tuple[list[_Block], list[str]]:
    lines = text.splitlines()
    blocks: list[_Block] = []
    prose: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.startswith("#"):
            prose.append(line)
            i += 1
            continue
        if i + 1 >= len(lines) or lines[i + 1] != SEPARATOR:
            raise ScenarioError(f"line {i + 1}: command {line!r} must be followed by a {SEPARATOR!r} line")
        j = i + 2
        while j < len(lines) and lines[j].strip():
            j += 1
        blocks.append(_Block(prose, line, i + 1, lines[i + 2 : j]))
        prose = []
        i = j
    return blocks, prose


def _render_value(key: str, value: Any) -> str:
    if key == "history":
        return "[" + ",".join(f"{h['term']}@{h['lsn']}" for h in value) + "]"
    if key in ("entries", "wal"):
        return "[" + ",".join(f"{t}*{n}" for t, n in value) + "]"
    return str(value)


def _render_message(sent: dict[str, Any]) -> str:
    msg = sent["msg"]
    fields = " ".join(f"{k}={_render_value(k, v)}" for k, v in msg.items() if k not in ("type", "from", "to"))
    return f"{sent['to']} {msg['type']}" + (f" {fields}" if fields else "")


def render_event(event: dict[str, Any]) -> str:
    """One trace event as a scenario output line."""
    args = "".join(f" {k}={v}" for k, v in event["args"].items() if k != "from")
    line = f"{event['node']} {event['action']}{args}"
    if event["action"] == "LoseMessage":
        return f"{line} {event['recv']}"
    return " | ".join([line] + [_render_message(s) for s in event["sent"]])


def render_state(node: str, state: dict[str, Any]) -> str:
    """A node's spec variables on one line, prefixes dropped."""
    parts = []
    for key, value in state.items():
        name = key.split("_", 1)[1]
        if name == "acks":
            value = "{" + ",".join(f"{a}:{v}" for a, v in value.items()) + "}"
        elif name == "heard":
            value = "[" + ",".join(value) + "]"
        else:
            value = _render_value(name, value)
        parts.append(value if name == "phase" else f"{name}={value}")
    return f"{node} " + " ".join(parts)


class _Runner:
    def __init__(self) -> None:
        self.sim: Sim | None = None

    @property
    def s(self) -> Sim:
        if self.sim is None:
            raise ScenarioError("the first command must be `cluster`")
        return self.sim

    def execute(self, command: str) -> list[str]:
        words = shlex.split(command)
        name, args = words[0], words[1:]
        handler: Callable[[list[str]], list[str] | None] | None = getattr(self, "cmd_" + name.replace("-", "_"), None)
        if handler is None:
            raise ScenarioError(f"unknown command {name!r}")
        before_events = len(self.sim.events) if self.sim else 0
        before_violations = len(self.sim.violations) if self.sim else 0
        extra = handler(args) or []
        sim = self.s
        out = [render_event(e) for e in sim.events[before_events:]]
        out += extra
        out += [f"violation: {v}" for v in sim.violations[before_violations:]]
        return out

    # Commands -------------------------------------------------------------------------

    def cmd_cluster(self, args: list[str]) -> None:
        opts = dict(a.split("=", 1) for a in args)
        unknown = set(opts) - {"acceptors", "proposers", "max_send"}
        if unknown:
            raise ScenarioError(f"cluster: unknown options {sorted(unknown)}")
        self.sim = Sim(
            SimOptions(
                seed=0,
                acceptors=int(opts.get("acceptors", 3)),
                proposers=int(opts.get("proposers", 1)),
                max_send=int(opts.get("max_send", 64)),
            ),
            manual=True,
        )
        self.sim.start_acceptors()

    def cmd_start(self, args: list[str]) -> None:
        for p in args:
            self.s.start_proposer(p)

    def _filters(self, args: list[str]) -> tuple[str | None, str | None, str | None, bool]:
        src = dst = kind = None
        keep = False
        for arg in args:
            if "->" in arg:
                a, b = arg.split("->", 1)
                src, dst = (a if a != "*" else None), (b if b != "*" else None)
            elif arg == "keep":
                keep = True
            else:
                kind = arg
        return src, dst, kind, keep

    def cmd_deliver(self, args: list[str]) -> None:
        src, dst, kind, keep = self._filters(args)
        try:
            self.s.deliver(src, dst, kind, keep=keep)
        except LookupError as exc:
            raise ScenarioError(str(exc)) from None

    def cmd_deliver_all(self, args: list[str]) -> None:
        src, dst, kind, _ = self._filters(args)
        for env in list(self.s.find(src, dst, kind)):
            if env in self.s.in_flight:
                self.s.in_flight.remove(env)
                self.s._deliver(env)

    def cmd_drop(self, args: list[str]) -> list[str]:
        src, dst, kind, _ = self._filters(args)
        return [] if self.s.drop(src, dst, kind) else ["nothing to drop"]

    def cmd_complete(self, args: list[str]) -> None:
        acceptor = args[0]
        try:
            self.s.complete(acceptor)
            while args[1:] == ["all"] and self.s.disk_pending[acceptor]:
                self.s.complete(acceptor)
        except LookupError as exc:
            raise ScenarioError(str(exc)) from None

    def cmd_stabilize(self, args: list[str]) -> None:
        self.s.stabilize()

    def cmd_crash(self, args: list[str]) -> None:
        keep = 0
        for arg in args:
            if arg.startswith("keep="):
                try:
                    keep = int(arg.removeprefix("keep="))
                except ValueError:
                    raise ScenarioError(f"crash: keep= wants a number of bytes, not {arg!r}") from None
        for node in args:
            if not node.startswith("keep="):
                self.s.crash(node, keep)

    def cmd_restart(self, args: list[str]) -> None:
        for node in args:
            self.s.restart(node)

    def cmd_append(self, args: list[str]) -> list[str]:
        op = self.s.append(args[0], args[1].encode())
        return ["not leader"] if op is None else []

    def cmd_tick(self, args: list[str]) -> None:
        self.s.tick(args[0], args[1])

    def cmd_state(self, args: list[str]) -> list[str]:
        out = []
        for node in args:
            acceptor = self.s.acceptors.get(node)
            proposer = self.s.proposers.get(node)
            core = acceptor.core if acceptor else proposer.core if proposer else None
            if acceptor is None and proposer is None:
                raise ScenarioError(f"no node {node!r}")
            if core is None:
                out.append(f"{node} down")
                continue
            line = render_state(node, core.spec_state())
            if acceptor is not None and core.busy:
                # The state shown is the one the outstanding persist/fsync will make durable.
                line += f" ({len(self.s.disk_pending[node])} disk operation(s) outstanding)"
            out.append(line)
        return out

    def cmd_in_flight(self, args: list[str]) -> list[str]:
        return [env.describe() for env in self.s.in_flight] or ["nothing in flight"]

    def cmd_check(self, args: list[str]) -> list[str]:
        before = len(self.s.violations)
        self.s.final_checks()
        ops = self.s.history
        acked = sum(op["status"] == "ok" for op in ops)
        line = f"committed {len(self.s.committed)} B, {acked} of {len(ops)} appends acknowledged"
        return [line] + (["ok"] if len(self.s.violations) == before else [])


def run(text: str, rewrite: bool = False) -> tuple[str, list[str], Sim | None]:
    """Run a scenario.

    Returns:
        The file's text with actual outputs (identical to `text` when it passes), the list
        of mismatches (empty when it passes, or when rewriting), and the simulator.

    Raises:
        ScenarioError: a malformed file or a command that cannot run.
    """
    blocks, trailer = _parse(text)
    runner = _Runner()
    out_lines: list[str] = []
    mismatches: list[str] = []
    for block in blocks:
        try:
            actual = runner.execute(block.command)
        except Exception as exc:  # noqa: BLE001 - any failure of a command is the scenario's
            detail = str(exc) if isinstance(exc, ScenarioError) else f"{type(exc).__name__}: {exc}"
            cause = None if isinstance(exc, ScenarioError) else exc
            raise ScenarioError(f"line {block.line}: {block.command}: {detail}", runner.sim) from cause
        if actual != block.expected and not rewrite:
            mismatches.append(
                f"line {block.line}: {block.command}\n  expected:\n    "
                + "\n    ".join(block.expected or ["(nothing)"])
                + "\n  actual:\n    "
                + "\n    ".join(actual or ["(nothing)"])
            )
        out_lines += block.prose + [block.command, SEPARATOR] + actual
    out_lines += trailer
    return "\n".join(out_lines) + "\n", mismatches, runner.sim


def run_file(path: Path, trace_dir: Path | None = None, rewrite: bool = False) -> list[str]:
    """Run a scenario file; rewrite it in place if asked; write its trace into `trace_dir`.

    Returns:
        The mismatches (empty if it passes).
    """
    text = path.read_text()
    new_text, mismatches, sim = run(text, rewrite)
    if rewrite and new_text != text:
        path.write_text(new_text)
    if trace_dir is not None and sim is not None:
        sim.write_run(trace_dir)
    return mismatches
