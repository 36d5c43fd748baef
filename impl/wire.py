"""The protocol's messages and their wire codec: sans-IO, strict, self-validating.

Theory of operation
===================

Rules of this file:

1. Every message the proposer and the acceptors exchange is one of the frozen attrs classes
   below, and every rule a message must obey lives here, in its class.  An instance satisfies
   those rules whether it was built locally or decoded: the constructor checks them, so there
   is no unchecked way in.
2. No I/O.  `encode` returns bytes for the caller to write; `FrameDecoder` only buffers what
   the caller read (`feed`), hands out whole messages (`next_message`) and is told about EOF
   (`eof`).  The same code serves the trio shells and the deterministic simulator.
3. Blame is split as in h11.  `ProtocolError` means "the peer sent something invalid": the
   shell logs it and closes the connection.  Misuse by our own code (encoding a non-message,
   an oversize frame, feeding after EOF) raises a builtin error (`TypeError`, `ValueError`,
   `RuntimeError`): that is a bug, not the peer's fault.  Constructors raise `ProtocolError`
   too, because the decoder builds messages through them; a `ProtocolError` escaping a
   *local* constructor call is therefore a bug in the caller.

Frames
------
A frame is one message on a byte stream::

    +-------------------+-----------+-------------------------------------------+
    | length: 4 bytes,  | version:  | body: one CBOR item,                       |
    | big-endian, = the | 1 byte    | [type_name, {field_name: value, ...}]      |
    | bytes after it    |           | or [type_name, {...}, [trace_id, lc]]      |
    +-------------------+-----------+-------------------------------------------+

The optional third element is the message's trace identity (`MsgMeta`), present when the
sender traces: its run-unique id ``<node>:<n>`` and the sender's Lamport clock.  It travels
with the message so that a receiver's trace names the very id the sender's trace recorded
(impl/trace.py pairs them); it is not part of the message, so `Message` classes never see
it, and `decode_frame`/`FrameDecoder.next_frame` hand it out beside the message.

Field values are CBOR unsigned integers (terms, LSNs, page numbers), text strings (node ids,
timeline names, and PageserverError's one-line `text`), byte strings (`wal`, `image`),
arrays of node ids and, for a term history, an array of `[term, lsn]` arrays.  Nothing else
appears: no floats, no tags, no indefinite lengths, no duplicate keys.

Version rule: the version byte must equal `PROTOCOL_VERSION` exactly (5 since acceptors keep
one WAL and consensus per timeline: OpenTimeline, and StatusRequest/StatusResponse name their
timeline; 4 since the pageserver streams WAL and serves pages; 3 since acceptors answer StatusRequest; 2 since frames carry trace metadata; version 1 had no third element).  There is no
negotiation: a cluster runs one build, and since decoders reject unknown types and unknown
fields, *any* change to a message (a new field, a new type, a new meaning) bumps the version.
The byte is in every frame, not only the first, so a frame from a mismatched or confused peer
is refused wherever it starts, never half-understood.

Limits: the length prefix is at most `MAX_FRAME` (16 MiB) and at least 2 (a version byte and
a body).  An oversize prefix is refused as soon as its 4 bytes arrive, before any of the body
is buffered, so one connection never holds more than about one frame of memory.  (A stray
client helps itself out this way too: "GET " read as a length is 1.2 GB.)  Integers are
unsigned 64-bit (LSNs are 64-bit in Postgres; terms are too, so both fit any peer's u64).
Node ids are 1 to 64 printable ASCII characters without spaces, because `describe` puts them
in one space-separated line.

Validation guarantee: `decode`, `decode_frame`, `FrameDecoder.next_message` and `next_frame`
either return a fully valid message (and meta) or raise `ProtocolError` naming the problem
(and the field, if one is at fault).
Garbage never escapes as another exception and never yields a partly built message.

Messages and the spec
---------------------
Class names are the spec's message `type` strings (spec/ProposerAcceptor.tla, `IsMessage`),
and are also the type names on the wire.  Spec field  <-  wire field:

=================  =====================================================================
class / `type`     fields
=================  =====================================================================
Greeting           from <- proposer
GreetingResponse   from <- acceptor, to <- proposer, term
VoteRequest        from <- proposer, term (>= 1)
VoteResponse       from <- acceptor, to <- proposer, term (>= 1), history <- term_history,
                   flush <- flush_lsn; commit_lsn is wire-only (the spec's acceptor does
                   not report it; the implementation's does, for the new leader's logs
                   and the pageserver's choice of acceptor)
ProposerElected    term (>= 1), history <- term_history; proposer is wire-only (the spec
                   sends one message "to every acceptor" and needs no sender)
AppendRequest      term (>= 1), lsn <- begin_lsn, entries <- wal, commit <- commit_lsn;
                   proposer and end_lsn are wire-only (end_lsn = begin_lsn + len(wal)
                   makes the range explicit for checking); the spec's `entries` holds at
                   most one entry, the wire's `wal` any number of bytes (empty: heartbeat)
AppendResponse     from <- acceptor, term (>= 1), flush <- flush_lsn; commit_lsn is
                   wire-only.  As in the spec, an ack names no proposer: it is addressed
                   by its term, and a term has one leader
WalRead, WalData   not in the spec (IMPLEMENTATION_ONLY): a new leader fetches the donor's
                   WAL bytes with them.  The spec's CollectVote hands the proposer the
                   donor's WAL with the vote; the implementation learns only its extent
                   from the vote and reads the bytes afterwards.  Neither changes any spec
                   variable: the acceptor only reads, and the proposer's prop_wal already
                   is the donor's WAL in the abstraction (impl/trace.py)
OpenTimeline       not in the spec (IMPLEMENTATION_ONLY): a proposer's first frame on every
                   connection, binding it to one timeline's consensus (acceptor_server.py
                   rule 10); the spec models one timeline, and each timeline's core, trace
                   and run are the spec's alone.  The acceptor creates a timeline it does
                   not hold with `wal_start` (a branch's WAL starts at its branch LSN) and
                   refuses a `wal_start` other than the one it holds
StatusRequest,     not in the spec (IMPLEMENTATION_ONLY): an operator's tool (`paxwal
StatusResponse     cluster status`) asks an acceptor for one timeline's state; the shell
                   answers from the core's fields without the core, so nothing changes and
                   nothing traces
StreamWal,         not in the spec (IMPLEMENTATION_ONLY): the pageserver's WAL receiver
WalChunk,          (impl/pageserver.py) asks an acceptor for its committed WAL from
PageserverFeedback start_lsn (StreamWal); the acceptor answers with WalChunks of committed
                   bytes, each with its commit_lsn (an empty one is a keepalive), and takes
                   the pageserver's LSNs (PageserverFeedback, Neon's status update).  The
                   shell answers beside the core (acceptor_server.py rule 9): it only reads
                   committed WAL, so no spec variable changes and nothing traces
GetPage, DbSize,   not in the spec (IMPLEMENTATION_ONLY): the page service's requests
LsnAtTime,         (impl/pageserver.py) and their answers (PageImageData, DbSizeData,
BranchCreate,      LsnAtTimeData, BranchCreated, BranchListData, GcDone,
BranchList, Gc,    PageserverStatus); any of them
PageserverStatus-  may instead be answered by PageserverError(code, text).  Between a
Request and their  client and the pageserver only; no acceptor takes them
answers
=================  =====================================================================

The spec's requests name no receiver and stand for the copies sent on each connection; on
the wire every connection is point to point, so the receiver is implied by the connection.
`describe` prints such a receiver as `*`.

LSNs differ in kind.  The spec's LSNs are entry positions starting at 1 (1 means
"nothing"), and its history sentinel is ``[term |-> 0, lsn |-> 1]``.  The wire's LSNs are byte
positions in the WAL, printed Postgres-style (`format_lsn`), and the sentinel is
``TermSwitch(term=0, lsn=<where the WAL starts>)``.  The abstraction function between the two
(byte LSNs to entry positions, WAL bytes to the spec's per-entry terms) lives in
impl/trace.py (to come), and nowhere else.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import NoReturn, TypeAlias

import attrs
import cbor2

__all__ = [
    "MAX_FRAME",
    "MAX_NODE_ID_LEN",
    "MESSAGE_TYPES",
    "PROTOCOL_VERSION",
    "AppendRequest",
    "AppendResponse",
    "FrameDecoder",
    "Greeting",
    "GreetingResponse",
    "Message",
    "ProposerElected",
    "ProtocolError",
    "TermSwitch",
    "IMPLEMENTATION_ONLY",
    "Frame",
    "MsgMeta",
    "VoteRequest",
    "StatusRequest",
    "OpenTimeline",
    "StatusResponse",
    "StreamWal",
    "WalChunk",
    "PageserverFeedback",
    "GetPage",
    "PageImageData",
    "DbSize",
    "DbSizeData",
    "LsnAtTime",
    "LsnAtTimeData",
    "BranchCreate",
    "BranchCreated",
    "BranchList",
    "BranchListData",
    "Gc",
    "GcDone",
    "PageserverStatusRequest",
    "PageserverStatus",
    "PageserverError",
    "PAGESERVER_MESSAGES",
    "VoteResponse",
    "WalData",
    "WalRead",
    "decode",
    "decode_frame",
    "describe",
    "encode",
    "format_lsn",
]

# The version byte of every frame.  Bump it on any change to any message (see "Version rule").
PROTOCOL_VERSION = 6

# Upper bound on a frame's length prefix (the bytes after it).  It bounds the memory one
# connection can make us buffer, and it must stay above the largest AppendRequest the proposer
# builds: the proposer caps the WAL of one AppendRequest far below it (Neon's walproposer sends
# at most 128 KiB, MAX_SEND_SIZE), so 16 MiB leaves ample room while a garbage or hostile
# prefix costs at most 16 MiB.  encode() refuses to build a larger frame, so a proposer that
# breaks its cap fails at the sender, loudly, instead of at every acceptor.
MAX_FRAME = 16 * 1024 * 1024

# A length prefix below this cannot hold the version byte and a (non-empty) CBOR body.
_MIN_FRAME = 2

_PREFIX_LEN = 4

# Node ids end up in log lines, describe() strings and trace files: keep them short.
MAX_NODE_ID_LEN = 64

# Terms and LSNs are unsigned 64-bit on every peer (Postgres' XLogRecPtr is a uint64).
_U64_MAX = 2**64 - 1

# The body is [name, {field: value}] and a history is a list of pairs, so 4 levels of
# containers suffice; anything deeper is garbage, and refusing it early bounds the decoder's
# recursion no matter what the peer sends.
_MAX_CBOR_DEPTH = 4

# The semantic tags cbor2 6.x decodes by itself (found by probing every tag below 70000 for
# ones that bypass tag_hook).  Their decoders build datetimes, regexes, decimals, shared
# references...  from peer data; none of that belongs on our wire, so each is refused before it
# runs.  A tag a later cbor2 adds would still be refused, by the field type checks.
_CBOR2_SEMANTIC_TAGS = (
    0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258, 260, 261, 1004,
    43000, 55799,
)


class ProtocolError(Exception):
    """The peer sent something invalid; the shell logs it and closes the connection.

    The message names the problem and, where one field is at fault, the field
    (``"VoteRequest: field term: ..."``).
    """


# ---------------------------------------------------------------------------------------------
# Field checks.  Each is an attrs validator: (instance, attribute, value).
# ---------------------------------------------------------------------------------------------


def _show(value: object) -> str:
    """Render a bad value for an error message, briefly.

    A peer controls the value, so it is never repr'd whole: it may be megabytes long or an
    integer too large for str() (Python 3.11 refuses over 4300 digits).
    """
    kind = type(value).__name__
    if type(value) is bool:
        return f"bool {value}"
    if type(value) is int:
        if value.bit_length() <= 128:
            return f"int {value}"
        return f"int of {value.bit_length()} bits"
    if type(value) is str:
        return f"str {_quote(value)}"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"{kind} of {len(value)} bytes"
    if isinstance(value, (list, tuple, dict)):
        return f"{kind} of {len(value)} items"
    return kind


def _quote(text: str) -> str:
    """A peer-chosen string (a type or field name) for an error message, cut short."""
    return repr(text[:32]) + ("..." if len(text) > 32 else "")


def _fail(instance: object, field: str, problem: str) -> NoReturn:
    raise ProtocolError(f"{type(instance).__name__}: field {field}: {problem}")


def _check_u64(instance: object, attribute: attrs.Attribute, value: object) -> None:
    # `type(...) is int`, not isinstance: bool is an int subclass, and True is no term.
    if type(value) is not int:
        _fail(instance, attribute.name, f"expected a non-negative integer, got {_show(value)}")
    if not 0 <= value <= _U64_MAX:
        _fail(instance, attribute.name, f"{_show(value)} is outside the unsigned 64-bit range")


def _check_term_positive(instance: object, attribute: attrs.Attribute, value: object) -> None:
    _check_u64(instance, attribute, value)
    # Spec, IsMessage: m.term \in Nat \ {0}.  Term 0 is the history sentinel; nobody wins it.
    if value == 0:
        _fail(instance, attribute.name, "must be >= 1 (term 0 is never campaigned for)")


def _check_node_id(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if type(value) is not str:
        _fail(instance, attribute.name, f"expected a node id string, got {_show(value)}")
    # '!'..'~': printable ASCII minus the space, which would split a describe() line.
    if not 1 <= len(value) <= MAX_NODE_ID_LEN or not all("!" <= c <= "~" for c in value):
        _fail(
            instance,
            attribute.name,
            f"node id must be 1 to {MAX_NODE_ID_LEN} printable ASCII characters without"
            f" spaces, got {_show(value)} ({len(value)} characters)",
        )


def _check_bytes(instance: object, attribute: attrs.Attribute, value: object) -> None:
    # Exactly bytes: a message is immutable, and bytearray/memoryview are not.
    if type(value) is not bytes:
        _fail(instance, attribute.name, f"expected bytes, got {_show(value)}")


def _check_history(instance: object, attribute: attrs.Attribute, value: object) -> None:
    """Spec, IsHistory: a term-0 sentinel first, terms strictly up, LSNs never down."""
    name = attribute.name
    if type(value) is not tuple:
        _fail(instance, name, f"expected a tuple of TermSwitch, got {_show(value)}")
    if not value:
        _fail(instance, name, "is empty; a history starts with a term-0 switch")
    for i, switch in enumerate(value):
        if type(switch) is not TermSwitch:
            _fail(instance, f"{name}[{i}]", f"expected a TermSwitch, got {_show(switch)}")
    if value[0].term != 0:
        _fail(instance, name, f"must start with a term-0 switch, starts with term {value[0].term}")
    for i in range(1, len(value)):
        prev, cur = value[i - 1], value[i]
        if cur.term <= prev.term:
            _fail(
                instance,
                f"{name}[{i}]",
                f"terms must strictly increase, got term {prev.term} then {cur.term}",
            )
        if cur.lsn < prev.lsn:
            _fail(
                instance,
                f"{name}[{i}]",
                f"lsns must not decrease, got {format_lsn(prev.lsn)} then {format_lsn(cur.lsn)}",
            )


def _check_node_id_or_empty(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if value != "":
        _check_node_id(instance, attribute, value)


def _check_node_ids(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if type(value) is not tuple:
        _fail(instance, attribute.name, f"must be a list of node ids, got {_show(value)}")
    for node in value:
        _check_node_id(instance, attribute, node)


# Error texts travel to an operator's terminal: printable ASCII, one line, bounded.
MAX_TEXT_LEN = 1024


def _check_text(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if type(value) is not str:
        _fail(instance, attribute.name, f"expected a text string, got {_show(value)}")
    if len(value) > MAX_TEXT_LEN or not all(" " <= c <= "~" for c in value):
        _fail(instance, attribute.name, f"must be at most {MAX_TEXT_LEN} printable ASCII characters, got {_show(value)}")


def _list_to_tuple(value: object) -> object:
    # A convenience for callers building a history; anything else goes to the validator as is.
    return tuple(value) if type(value) is list else value


# Timeline ids name directories (`timelines/<id>/`, `<trace_dir>/<id>/`) and object-store
# key prefixes: the pageserver's branch name rule (impl/timeline_meta.py `check_name`).
_TIMELINE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")


def _check_timeline_id(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if type(value) is not str or not _TIMELINE_ID.fullmatch(value):
        _fail(instance, attribute.name, "timeline id must be 1 to 63 characters of A-Z a-z 0-9 _ -, starting with"
                                        f" a letter or digit, got {_show(value)}")


def check_timeline_id(timeline: object) -> str:
    """`timeline` if it is a valid timeline id, else ValueError (for callers outside messages)."""
    if type(timeline) is not str or not _TIMELINE_ID.fullmatch(timeline):
        raise ValueError(f"not a timeline id (1 to 63 of A-Z a-z 0-9 _ -, starting with a letter or digit): {timeline!r}")
    return timeline


def _node_field() -> object:
    return attrs.field(validator=_check_node_id)


def _u64_field() -> object:
    return attrs.field(validator=_check_u64)


def _term_field() -> object:
    return attrs.field(validator=_check_term_positive)


def _history_field() -> object:
    return attrs.field(converter=_list_to_tuple, validator=_check_history)


# ---------------------------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------------------------


def _check_commit_within_flush(msg: VoteResponse | AppendResponse) -> None:
    """An acceptor's commit_lsn is capped by its flush_lsn (spec: AcceptAppend)."""
    if msg.commit_lsn > msg.flush_lsn:
        _fail(msg, "commit_lsn", f"{format_lsn(msg.commit_lsn)} exceeds flush_lsn {format_lsn(msg.flush_lsn)}")


def _check_range(msg: AppendRequest | WalRead | WalData) -> None:
    if msg.begin_lsn > msg.end_lsn:
        raise ProtocolError(
            f"{type(msg).__name__}: inverted LSN range: begin_lsn {format_lsn(msg.begin_lsn)}"
            f" > end_lsn {format_lsn(msg.end_lsn)}"
        )


def _check_wal_length(msg: AppendRequest | WalData) -> None:
    if msg.end_lsn - msg.begin_lsn != len(msg.wal):
        _fail(
            msg,
            "wal",
            f"end_lsn - begin_lsn = {msg.end_lsn - msg.begin_lsn} but len(wal) = {len(msg.wal)}",
        )


@attrs.frozen(kw_only=True)
class TermSwitch:
    """One entry of a term history: from `lsn` on, the WAL was written in `term`.

    The spec's ``[term |-> t, lsn |-> l]`` record, with a byte LSN (see the module docstring).
    """

    term: int = _u64_field()
    lsn: int = _u64_field()


@attrs.frozen(kw_only=True)
class Greeting:
    """A proposer introduces itself to an acceptor, asking for its term.  Spec: "Greeting"."""

    proposer: str = _node_field()


@attrs.frozen(kw_only=True)
class GreetingResponse:
    """An acceptor's answer to a Greeting: its current term.  Spec: "GreetingResponse"."""

    acceptor: str = _node_field()
    proposer: str = _node_field()
    term: int = _u64_field()  # 0 is valid: a fresh acceptor has promised nothing yet


@attrs.frozen(kw_only=True)
class VoteRequest:
    """A proposer asks for votes in `term`.  Spec: "VoteRequest", sent by StartCampaign."""

    proposer: str = _node_field()
    term: int = _term_field()


@attrs.frozen(kw_only=True)
class VoteResponse:
    """An acceptor's vote for `proposer` in `term`, with what a new leader must recover.

    Spec: "VoteResponse", sent by Vote: the voter's flushed term history and flush_lsn.
    """

    acceptor: str = _node_field()
    proposer: str = _node_field()
    term: int = _term_field()
    term_history: tuple[TermSwitch, ...] = _history_field()
    flush_lsn: int = _u64_field()
    commit_lsn: int = _u64_field()

    def __attrs_post_init__(self) -> None:
        _check_commit_within_flush(self)
        last = self.term_history[-1]
        # Spec, FlushedHistory: only switch points at or below flush_lsn are reported.
        if last.lsn > self.flush_lsn:
            _fail(
                self,
                "term_history",
                f"last switch at {format_lsn(last.lsn)} is past flush_lsn"
                f" {format_lsn(self.flush_lsn)}",
            )
        # Spec, VoteAllowed: a vote is only for a term above every term the voter has seen,
        # and its history's terms are among those.
        if last.term >= self.term:
            _fail(
                self,
                "term_history",
                f"last term {last.term} is not below the vote's term {self.term}",
            )


@attrs.frozen(kw_only=True)
class ProposerElected:
    """The new leader's term history, sent to every acceptor.  Spec: "ProposerElected".

    Its last switch is the leader's own term, starting where the donor's WAL ends
    (BecomeLeader); the acceptor truncates at the highest common point (AcceptElected).
    """

    proposer: str = _node_field()
    term: int = _term_field()
    term_history: tuple[TermSwitch, ...] = _history_field()

    def __attrs_post_init__(self) -> None:
        last_term = self.term_history[-1].term
        if last_term != self.term:
            _fail(
                self,
                "term_history",
                f"last switch has term {last_term}, expected the leader's term {self.term}",
            )


@attrs.frozen(kw_only=True)
class AppendRequest:
    """WAL bytes [begin_lsn, end_lsn) and the leader's commit_lsn.  Spec: "AppendRequest".

    An empty `wal` (begin_lsn == end_lsn) is a heartbeat carrying only commit_lsn, like the
    spec's SendAppend one past the WAL.  commit_lsn may lie anywhere relative to the range: a
    resend from an earlier position carries the leader's current commit_lsn.
    """

    proposer: str = _node_field()
    term: int = _term_field()
    begin_lsn: int = _u64_field()
    end_lsn: int = _u64_field()
    commit_lsn: int = _u64_field()
    wal: bytes = attrs.field(validator=_check_bytes, repr=lambda wal: f"<{len(wal)} bytes>")

    def __attrs_post_init__(self) -> None:
        _check_range(self)
        _check_wal_length(self)


@attrs.frozen(kw_only=True)
class AppendResponse:
    """An acceptor's ack: its flush_lsn and commit_lsn in `term`.  Spec: "AppendResponse".

    Sent after a flush (Flush) and after processing ProposerElected (AcceptElected), never
    before the WAL it reports is fsync'd.
    """

    acceptor: str = _node_field()
    term: int = _term_field()
    flush_lsn: int = _u64_field()
    commit_lsn: int = _u64_field()

    def __attrs_post_init__(self) -> None:
        _check_commit_within_flush(self)


@attrs.frozen(kw_only=True)
class WalRead:
    """A new leader asks its donor for WAL bytes [begin_lsn, end_lsn) it voted with.

    Not a spec message (see IMPLEMENTATION_ONLY).  The donor answers only while its term is
    still `term`: then nobody can have truncated the flushed WAL its vote described.
    """

    proposer: str = _node_field()
    term: int = _term_field()
    begin_lsn: int = _u64_field()
    end_lsn: int = _u64_field()

    def __attrs_post_init__(self) -> None:
        _check_range(self)


@attrs.frozen(kw_only=True)
class WalData:
    """The donor's answer to a WalRead: the WAL bytes [begin_lsn, end_lsn).  Not in the spec."""

    acceptor: str = _node_field()
    term: int = _term_field()
    begin_lsn: int = _u64_field()
    end_lsn: int = _u64_field()
    wal: bytes = attrs.field(validator=_check_bytes, repr=lambda wal: f"<{len(wal)} bytes>")

    def __attrs_post_init__(self) -> None:
        _check_range(self)
        _check_wal_length(self)


@attrs.frozen(kw_only=True)
class OpenTimeline:
    """A proposer's first frame on a connection: every later frame on it is for `timeline`,
    whose WAL starts at `wal_start`.  Not in the spec (see IMPLEMENTATION_ONLY)."""

    proposer: str = _node_field()
    timeline: str = attrs.field(validator=_check_timeline_id)
    wal_start: int = _u64_field()


@attrs.frozen(kw_only=True)
class StatusRequest:
    """An operator asks an acceptor for timeline `timeline`'s state.  Not in the spec (see
    IMPLEMENTATION_ONLY)."""

    timeline: str = attrs.field(validator=_check_timeline_id)


@attrs.frozen(kw_only=True)
class StatusResponse:
    """An acceptor's state for an operator: the answer to a StatusRequest.  Not in the spec.

    `leader` is the proposer the acceptor last followed (its ProposerElected or AppendRequest
    in the term of the acceptor's last history entry), in term `leader_term` (empty and 0
    since the acceptor started, until then); `proposers` those connected now.  An acceptor
    that does not hold `timeline` answers an empty status: term 0, every LSN 0, no leader, no
    proposers (it promised nothing for it, as a fresh timeline has not).
    """

    acceptor: str = _node_field()
    timeline: str = attrs.field(validator=_check_timeline_id)
    term: int = _u64_field()
    flush_lsn: int = _u64_field()
    commit_lsn: int = _u64_field()
    wal_start: int = _u64_field()
    leader: str = attrs.field(validator=_check_node_id_or_empty)
    leader_term: int = _u64_field()
    proposers: tuple[str, ...] = attrs.field(converter=_list_to_tuple, validator=_check_node_ids)


# ---------------------------------------------------------------------------------------------
# The pageserver's messages (IMPLEMENTATION_ONLY): WAL streaming and the page service
# ---------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class StreamWal:
    """The pageserver asks an acceptor for timeline `timeline`'s committed WAL from
    `start_lsn` on, as it commits.  Not in the spec (see IMPLEMENTATION_ONLY)."""

    pageserver: str = _node_field()
    timeline: str = _node_field()
    start_lsn: int = _u64_field()


@attrs.frozen(kw_only=True)
class WalChunk:
    """Committed WAL bytes [begin_lsn, end_lsn) for a StreamWal, and the acceptor's
    commit_lsn now (at least end_lsn); no bytes: a keepalive.  Not in the spec."""

    acceptor: str = _node_field()
    begin_lsn: int = _u64_field()
    end_lsn: int = _u64_field()
    commit_lsn: int = _u64_field()
    wal: bytes = attrs.field(validator=_check_bytes, repr=lambda wal: f"<{len(wal)} bytes>")

    def __attrs_post_init__(self) -> None:
        _check_range(self)
        _check_wal_length(self)
        if self.commit_lsn < self.end_lsn:
            _fail(self, "commit_lsn", f"{format_lsn(self.commit_lsn)} is below end_lsn {format_lsn(self.end_lsn)}:"
                                      " only committed WAL is streamed")


@attrs.frozen(kw_only=True)
class PageserverFeedback:
    """The pageserver's progress on a StreamWal connection (Neon's PageserverFeedback);
    the acceptor may remove WAL below remote_consistent_lsn once offloaded.  Not in the spec."""

    timeline: str = _node_field()
    last_record_lsn: int = _u64_field()
    disk_consistent_lsn: int = _u64_field()
    remote_consistent_lsn: int = _u64_field()


@attrs.frozen(kw_only=True)
class GetPage:
    """GetPage@LSN: page `page` of `timeline` as of `lsn`.  Answer: PageImageData."""

    timeline: str = _node_field()
    page: int = _u64_field()
    lsn: int = _u64_field()


@attrs.frozen(kw_only=True)
class PageImageData:
    """The page a GetPage asked for."""

    page: int = _u64_field()
    lsn: int = _u64_field()
    image: bytes = attrs.field(validator=_check_bytes, repr=lambda image: f"<{len(image)} bytes>")


@attrs.frozen(kw_only=True)
class DbSize:
    """The database's size in pages at `lsn`.  Answer: DbSizeData."""

    timeline: str = _node_field()
    lsn: int = _u64_field()


@attrs.frozen(kw_only=True)
class DbSizeData:
    lsn: int = _u64_field()
    db_size: int = _u64_field()


@attrs.frozen(kw_only=True)
class LsnAtTime:
    """PITR by time: the newest LSN of `timeline` whose records all committed at or before
    `time` (microseconds since the epoch).  Answer: LsnAtTimeData."""

    timeline: str = _node_field()
    time: int = _u64_field()


@attrs.frozen(kw_only=True)
class LsnAtTimeData:
    lsn: int = _u64_field()


@attrs.frozen(kw_only=True)
class BranchCreate:
    """Create timeline `name` as a child of `ancestor` at `lsn`.  Answer: BranchCreated."""

    name: str = _node_field()
    ancestor: str = _node_field()
    lsn: int = _u64_field()


@attrs.frozen(kw_only=True)
class BranchCreated:
    name: str = _node_field()
    ancestor: str = _node_field()
    lsn: int = _u64_field()


@attrs.frozen(kw_only=True)
class BranchList:
    """The names of every timeline.  Answer: BranchListData."""


@attrs.frozen(kw_only=True)
class BranchListData:
    names: tuple[str, ...] = attrs.field(converter=_list_to_tuple, validator=_check_node_ids)


@attrs.frozen(kw_only=True)
class Gc:
    """Run GC on every timeline now.  Answer: GcDone."""


@attrs.frozen(kw_only=True)
class GcDone:
    """`removed` layer files were deleted; `kept` remain (all timelines)."""

    removed: int = _u64_field()
    kept: int = _u64_field()


@attrs.frozen(kw_only=True)
class PageserverStatusRequest:
    """The state of `timeline`.  Answer: PageserverStatus."""

    timeline: str = _node_field()


@attrs.frozen(kw_only=True)
class PageserverStatus:
    """A timeline's LSNs as the pageserver holds them.  `ancestor` is empty for a root
    timeline; `streaming_from` the acceptor the WAL receiver streams from (empty: none)."""

    timeline: str = _node_field()
    ancestor: str = attrs.field(validator=_check_node_id_or_empty)
    ancestor_lsn: int = _u64_field()
    last_record_lsn: int = _u64_field()
    disk_consistent_lsn: int = _u64_field()
    remote_consistent_lsn: int = _u64_field()
    gc_cutoff: int = _u64_field()
    layers: int = _u64_field()
    streaming_from: str = attrs.field(validator=_check_node_id_or_empty)


@attrs.frozen(kw_only=True)
class PageserverError:
    """A page-service request refused: `code` (a token such as ``lsn-below-gc-cutoff``)
    and a one-line `text` for the user.  The connection stays open."""

    code: str = _node_field()
    text: str = attrs.field(validator=_check_text)


Message: TypeAlias = (
    Greeting
    | GreetingResponse
    | VoteRequest
    | VoteResponse
    | ProposerElected
    | AppendRequest
    | AppendResponse
    | WalRead
    | WalData
    | OpenTimeline
    | StatusRequest
    | StatusResponse
    | StreamWal
    | WalChunk
    | PageserverFeedback
    | GetPage
    | PageImageData
    | DbSize
    | DbSizeData
    | LsnAtTime
    | LsnAtTimeData
    | BranchCreate
    | BranchCreated
    | BranchList
    | BranchListData
    | Gc
    | GcDone
    | PageserverStatusRequest
    | PageserverStatus
    | PageserverError
)

# Wire type name -> class.  The names are the spec's message `type` strings.
MESSAGE_TYPES: Mapping[str, type[Message]] = MappingProxyType(
    {
        cls.__name__: cls
        for cls in (
            Greeting,
            GreetingResponse,
            VoteRequest,
            VoteResponse,
            ProposerElected,
            AppendRequest,
            AppendResponse,
            WalRead,
            WalData,
            OpenTimeline,
            StatusRequest,
            StatusResponse,
            StreamWal,
            WalChunk,
            PageserverFeedback,
            GetPage,
            PageImageData,
            DbSize,
            DbSizeData,
            LsnAtTime,
            LsnAtTimeData,
            BranchCreate,
            BranchCreated,
            BranchList,
            BranchListData,
            Gc,
            GcDone,
            PageserverStatusRequest,
            PageserverStatus,
            PageserverError,
        )
    }
)

# The messages the spec does not model; every other type is a spec message `type`.
# The messages of the pageserver (WAL streaming and page service), all IMPLEMENTATION_ONLY.
PAGESERVER_MESSAGES: frozenset[str] = frozenset({
    "StreamWal", "WalChunk", "PageserverFeedback", "GetPage", "PageImageData", "DbSize", "DbSizeData", "LsnAtTime",
    "LsnAtTimeData", "BranchCreate", "BranchCreated", "BranchList", "BranchListData", "Gc", "GcDone",
    "PageserverStatusRequest", "PageserverStatus", "PageserverError",
})

IMPLEMENTATION_ONLY: frozenset[str] = frozenset(
    {"WalRead", "WalData", "OpenTimeline", "StatusRequest", "StatusResponse"} | PAGESERVER_MESSAGES
)

# Per class, its field names in declaration order: the order encode() writes them in.
_FIELDS: Mapping[type, tuple[str, ...]] = MappingProxyType(
    {cls: tuple(f.name for f in attrs.fields(cls)) for cls in MESSAGE_TYPES.values()}
)


# ---------------------------------------------------------------------------------------------
# Trace metadata and frames
# ---------------------------------------------------------------------------------------------


def _check_trace_id(instance: object, attribute: attrs.Attribute, value: object) -> None:
    """impl/trace.py's id: ``<node>:<n>``, a node id and a message counter from 1."""
    if type(value) is not str:
        _fail(instance, attribute.name, f"expected a trace id string, got {_show(value)}")
    node, sep, count = value.rpartition(":")
    # A node id may itself hold ':' (it is printable ASCII), so the counter is what follows
    # the last one; its spelling is unique (no sign, no leading zero) like the tracer's.
    if not sep or not count.isascii() or not count.isdigit() or count[0] == "0" or len(count) > 20:
        _fail(instance, attribute.name, f"expected <node>:<n> with n >= 1, got {_show(value)}")
    _check_node_id(instance, attrs.fields(MsgMeta).id, node)
    if int(count) > _U64_MAX:
        _fail(instance, attribute.name, f"counter of {_show(value)} is outside the unsigned 64-bit range")


def _check_clock(instance: object, attribute: attrs.Attribute, value: object) -> None:
    _check_u64(instance, attribute, value)
    # A sent message carries its event's clock, and an event's clock is at least 1.
    if value == 0:
        _fail(instance, attribute.name, "a Lamport clock of a sent message is >= 1")


@attrs.frozen
class MsgMeta:
    """A traced message's identity: a globally unique id and its sender's Lamport clock.

    Present only when the sender traces.  The simulator carries it in its envelope, the
    trio shells in the frame (see "Frames"); either hands it to the receiver's `receive`.
    """

    id: str = attrs.field(validator=_check_trace_id)
    lc: int = attrs.field(validator=_check_clock)


@attrs.frozen
class Frame:
    """One decoded frame: the message and, if the sender traces, its `MsgMeta`."""

    message: Message
    meta: MsgMeta | None = None


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def format_lsn(lsn: int) -> str:
    """Render a byte LSN as Postgres does: upper and lower 32 bits in hex, ``X/Y``.

    Like Postgres' ``%X/%X``, neither part is zero-padded: ``0/16B3748``, ``1/5``.

    Args:
        lsn: an unsigned 64-bit LSN.

    Returns:
        The LSN in Postgres' textual form.

    Raises:
        ValueError: `lsn` is not an int in 0..2**64-1 (a bug in the caller).
    """
    if type(lsn) is not int or not 0 <= lsn <= _U64_MAX:
        raise ValueError(f"not a 64-bit LSN: {_show(lsn)}")
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def _format_history(history: tuple[TermSwitch, ...]) -> str:
    return "[" + ",".join(f"{s.term}@{format_lsn(s.lsn)}" for s in history) + "]"


_DESCRIBERS: Mapping[type, Callable[[object], str]] = MappingProxyType(
    {
        Greeting: lambda m: f"{m.proposer}->* Greeting",
        GreetingResponse: lambda m: f"{m.acceptor}->{m.proposer} GreetingResponse term={m.term}",
        VoteRequest: lambda m: f"{m.proposer}->* VoteRequest term={m.term}",
        VoteResponse: lambda m: (
            f"{m.acceptor}->{m.proposer} VoteResponse term={m.term}"
            f" flush={format_lsn(m.flush_lsn)} commit={format_lsn(m.commit_lsn)}"
            f" history={_format_history(m.term_history)}"
        ),
        ProposerElected: lambda m: (
            f"{m.proposer}->* ProposerElected term={m.term}"
            f" history={_format_history(m.term_history)}"
        ),
        AppendRequest: lambda m: (
            f"{m.proposer}->* AppendRequest term={m.term}"
            f" lsn={format_lsn(m.begin_lsn)}..{format_lsn(m.end_lsn)}"
            f" commit={format_lsn(m.commit_lsn)} ({len(m.wal)} B)"
        ),
        AppendResponse: lambda m: (
            f"{m.acceptor}->* AppendResponse term={m.term}"
            f" flush={format_lsn(m.flush_lsn)} commit={format_lsn(m.commit_lsn)}"
        ),
        WalRead: lambda m: (
            f"{m.proposer}->* WalRead term={m.term}"
            f" lsn={format_lsn(m.begin_lsn)}..{format_lsn(m.end_lsn)}"
        ),
        WalData: lambda m: (
            f"{m.acceptor}->* WalData term={m.term}"
            f" lsn={format_lsn(m.begin_lsn)}..{format_lsn(m.end_lsn)} ({len(m.wal)} B)"
        ),
        OpenTimeline: lambda m: f"{m.proposer}->* OpenTimeline timeline={m.timeline} wal_start={format_lsn(m.wal_start)}",
        StatusRequest: lambda m: f"*->* StatusRequest timeline={m.timeline}",
        StreamWal: lambda m: f"{m.pageserver}->* StreamWal timeline={m.timeline} start={format_lsn(m.start_lsn)}",
        WalChunk: lambda m: (
            f"{m.acceptor}->* WalChunk lsn={format_lsn(m.begin_lsn)}..{format_lsn(m.end_lsn)}"
            f" commit={format_lsn(m.commit_lsn)} ({len(m.wal)} B)"
        ),
        PageserverFeedback: lambda m: (
            f"*->* PageserverFeedback timeline={m.timeline} last_record={format_lsn(m.last_record_lsn)}"
            f" disk_consistent={format_lsn(m.disk_consistent_lsn)} remote_consistent={format_lsn(m.remote_consistent_lsn)}"
        ),
        GetPage: lambda m: f"*->* GetPage timeline={m.timeline} page={m.page} lsn={format_lsn(m.lsn)}",
        PageImageData: lambda m: f"*->* PageImageData page={m.page} lsn={format_lsn(m.lsn)} ({len(m.image)} B)",
        DbSize: lambda m: f"*->* DbSize timeline={m.timeline} lsn={format_lsn(m.lsn)}",
        DbSizeData: lambda m: f"*->* DbSizeData lsn={format_lsn(m.lsn)} db_size={m.db_size}",
        LsnAtTime: lambda m: f"*->* LsnAtTime timeline={m.timeline} time={m.time}",
        LsnAtTimeData: lambda m: f"*->* LsnAtTimeData lsn={format_lsn(m.lsn)}",
        BranchCreate: lambda m: f"*->* BranchCreate {m.name} from={m.ancestor}@{format_lsn(m.lsn)}",
        BranchCreated: lambda m: f"*->* BranchCreated {m.name} from={m.ancestor}@{format_lsn(m.lsn)}",
        BranchList: lambda m: "*->* BranchList",
        BranchListData: lambda m: f"*->* BranchListData {','.join(m.names) or '-'}",
        Gc: lambda m: "*->* Gc",
        GcDone: lambda m: f"*->* GcDone removed={m.removed} kept={m.kept}",
        PageserverStatusRequest: lambda m: f"*->* PageserverStatusRequest timeline={m.timeline}",
        PageserverStatus: lambda m: (
            f"*->* PageserverStatus timeline={m.timeline} last_record={format_lsn(m.last_record_lsn)}"
            f" disk_consistent={format_lsn(m.disk_consistent_lsn)} remote_consistent={format_lsn(m.remote_consistent_lsn)}"
            f" gc_cutoff={format_lsn(m.gc_cutoff)} layers={m.layers}"
        ),
        PageserverError: lambda m: f"*->* PageserverError {m.code}: {m.text}",
        StatusResponse: lambda m: (
            f"{m.acceptor}->* StatusResponse timeline={m.timeline} term={m.term} flush={format_lsn(m.flush_lsn)}"
            f" commit={format_lsn(m.commit_lsn)} leader={m.leader or '-'}@{m.leader_term}"
        ),
    }
)


def describe(msg: Message) -> str:
    """One stable line for logs, scenario files and test expectations.

    ``sender->receiver Type field=value ...``; ``*`` stands for whoever is at the other end
    of the connection (requests and acks name no receiver, as in the spec).  LSNs are in
    Postgres form; an AppendRequest shows its WAL's size, not its bytes.  Example:
    ``a2->p1 VoteResponse term=3 flush=0/1A0 commit=0/100 history=[0@0/0,2@0/80]``.

    Args:
        msg: any message.

    Returns:
        The line, without a newline.

    Raises:
        TypeError: `msg` is not a message (a bug in the caller).
    """
    describer = _DESCRIBERS.get(type(msg))
    if describer is None:
        raise TypeError(f"not a protocol message: {type(msg).__name__}")
    return describer(msg)


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------


def encode(msg: Message, meta: MsgMeta | None = None) -> bytes:
    """Encode one message as one frame: length prefix, version byte, CBOR body.

    Args:
        msg: any message (already valid: its constructor checked it).
        meta: its trace identity, if the sender traces (the `Send` effect's meta).

    Returns:
        The frame, ready to be written to the connection as is.

    Raises:
        TypeError: `msg` is not a message, or `meta` is not a MsgMeta.
        ValueError: the frame would exceed MAX_FRAME (the proposer built too large an
            AppendRequest); every peer would refuse it, so it is refused here.
    """
    cls = type(msg)
    names = _FIELDS.get(cls)
    if names is None:
        raise TypeError(f"not a protocol message: {cls.__name__}")
    fields: dict[str, object] = {}
    for name in names:
        value = getattr(msg, name)
        if name == "term_history":
            value = [[s.term, s.lsn] for s in value]
        fields[name] = value
    item: list[object] = [cls.__name__, fields]
    if meta is not None:
        if type(meta) is not MsgMeta:
            raise TypeError(f"meta must be a MsgMeta, not {type(meta).__name__}")
        item.append([meta.id, meta.lc])
    body = cbor2.dumps(item)
    length = 1 + len(body)
    if length > MAX_FRAME:
        raise ValueError(
            f"{cls.__name__} frame of {length} bytes exceeds MAX_FRAME ({MAX_FRAME});"
            " send less WAL per AppendRequest"
        )
    return length.to_bytes(_PREFIX_LEN, "big") + bytes((PROTOCOL_VERSION,)) + body


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


def _check_length(length: int) -> None:
    if length > MAX_FRAME:
        raise ProtocolError(f"frame length {length} exceeds MAX_FRAME ({MAX_FRAME})")
    if length < _MIN_FRAME:
        raise ProtocolError(
            f"frame length {length} is too short: a frame holds a version byte and a body"
        )


def _reject_tag(*_args: object) -> NoReturn:
    raise ValueError("CBOR tags are not part of the wire format")


_REJECT_SEMANTIC_TAGS: Mapping[int, Callable[..., NoReturn]] = MappingProxyType(
    {tag: _reject_tag for tag in _CBOR2_SEMANTIC_TAGS}
)


def _load_body(body: bytes) -> object:
    """Parse the CBOR body, strictly, and insist that it is exactly one item."""
    stream = io.BytesIO(body)
    decoder = cbor2.CBORDecoder(
        stream,
        tag_hook=_reject_tag,
        semantic_decoders=dict(_REJECT_SEMANTIC_TAGS),
        max_depth=_MAX_CBOR_DEPTH,
        allow_indefinite=False,  # encode() never writes them; one spelling per message
        allow_duplicate_keys=False,  # {"term": 1, "term": 9} must not mean whichever is last
        strict_hashable_types=True,  # only string keys: no hash-collision tricks
    )
    try:
        item = decoder.decode()
    # Deliberately broad: this is the one call that runs a third-party parser on peer bytes,
    # and cbor2's errors (CBORDecodeError is no ValueError since 6.0), its hooks' errors and
    # RecursionError/OverflowError/MemoryError are all the peer's fault, not ours.
    except Exception as exc:
        cause = f" ({exc.__cause__})" if exc.__cause__ is not None else ""
        raise ProtocolError(f"body is not valid CBOR: {str(exc)[:200]}{cause}") from exc
    extra = len(body) - stream.tell()
    if extra:
        raise ProtocolError(f"body has {extra} trailing bytes after its CBOR item")
    return item


def _history_from_wire(cls_name: str, value: object) -> object:
    """Turn the wire's [[term, lsn], ...] into TermSwitches; shape errors name the index."""
    if type(value) is not list:
        raise ProtocolError(
            f"{cls_name}: field term_history: expected a list of [term, lsn] pairs,"
            f" got {_show(value)}"
        )
    switches = []
    for i, pair in enumerate(value):
        if type(pair) is not list or len(pair) != 2:
            raise ProtocolError(
                f"{cls_name}: field term_history[{i}]: expected a [term, lsn] pair,"
                f" got {_show(pair)}"
            )
        try:
            switches.append(TermSwitch(term=pair[0], lsn=pair[1]))
        except ProtocolError as exc:
            raise ProtocolError(f"{cls_name}: field term_history[{i}]: {exc}") from None
    return tuple(switches)


def _meta_from_wire(value: object) -> MsgMeta:
    if type(value) is not list or len(value) != 2:
        raise ProtocolError(f"trace meta must be a [trace_id, lc] pair, got {_show(value)}")
    return MsgMeta(*value)


def _frame_from_body(item: object) -> Frame:
    """Check the body's shape, then let the classes' own constructors check the values."""
    if type(item) is not list or len(item) not in (2, 3):
        raise ProtocolError(
            f"body must be a list [type, fields] or [type, fields, [trace_id, lc]], got {_show(item)}"
        )
    meta = _meta_from_wire(item[2]) if len(item) == 3 else None
    return Frame(_message_from_body(item[0], item[1]), meta)


def _message_from_body(name: object, fields: object) -> Message:
    if type(name) is not str:
        raise ProtocolError(f"message type must be a string, got {_show(name)}")
    cls = MESSAGE_TYPES.get(name)
    if cls is None:
        raise ProtocolError(f"unknown message type {_quote(name)}")
    if type(fields) is not dict:
        raise ProtocolError(f"{name}: fields must be a map, got {_show(fields)}")
    expected = _FIELDS[cls]
    for key in fields:
        # strict_hashable_types already limits keys to text and byte strings.
        if type(key) is not str:
            raise ProtocolError(f"{name}: field names must be strings, got {_show(key)}")
        if key not in expected:
            raise ProtocolError(f"{name}: unexpected field {_quote(key)}")
    for key in expected:
        if key not in fields:
            raise ProtocolError(f"{name}: missing field {key!r}")
    kwargs = dict(fields)
    if "term_history" in kwargs:
        kwargs["term_history"] = _history_from_wire(name, kwargs["term_history"])
    try:
        return cls(**kwargs)
    except ProtocolError:
        raise
    # Defensive: the validators reject every value they do not expect, so a builtin error
    # here would be a bug in this file; still, the peer must only ever cause ProtocolError.
    except (TypeError, ValueError, OverflowError) as exc:  # pragma: no cover
        raise ProtocolError(f"{name}: invalid fields: {exc}") from exc


def _decode_payload(version: int, body: bytes) -> Frame:
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"unsupported protocol version {version} (this side speaks {PROTOCOL_VERSION})"
        )
    return _frame_from_body(_load_body(body))


def decode(frame: bytes) -> Message:
    """`decode_frame`, for callers that need only the message (its trace meta is dropped)."""
    return decode_frame(frame).message


def decode_frame(frame: bytes) -> Frame:
    """Decode exactly one complete frame, as `encode` produced it.

    Args:
        frame: the frame's bytes: length prefix, version byte, body, and nothing more.

    Returns:
        The message and its trace meta (None if the sender sent none), fully validated.

    Raises:
        ProtocolError: the frame is short, oversize, followed by trailing bytes, of another
            version, or its body is not a valid message; the text names the problem.
    """
    if len(frame) < _PREFIX_LEN:
        raise ProtocolError(f"frame of {len(frame)} bytes is shorter than its length prefix")
    length = int.from_bytes(frame[:_PREFIX_LEN], "big")
    _check_length(length)
    total = _PREFIX_LEN + length
    if len(frame) < total:
        raise ProtocolError(f"truncated frame ({len(frame)} of {total} bytes)")
    if len(frame) > total:
        raise ProtocolError(f"{len(frame) - total} trailing bytes after the frame")
    return _decode_payload(frame[_PREFIX_LEN], bytes(frame[_PREFIX_LEN + 1 :]))


class FrameDecoder:
    """Turns the bytes of one connection into messages, sans-IO (like h11's receive side).

    Usage: the shell reads from the socket, calls `feed(data)`, then calls `next_frame()`
    until it returns None (read more), and calls `eof()` when the peer closes.  Any
    ProtocolError is sticky: the decoder refuses all further work, as the connection must be
    closed (a stream that was misframed once cannot be resynchronised).
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        # Where, in _buf, the last frame whose length prefix was checked starts and ends.  The
        # end may lie past the buffered bytes (body still arriving); feed() checks the next
        # prefix once its 4 bytes are there, and only then.
        self._frame_start = 0
        self._frame_end = 0
        self._error: ProtocolError | None = None
        self._closed = False

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise ProtocolError(f"connection already failed: {self._error}")

    def _fail(self, error: ProtocolError) -> NoReturn:
        self._error = error
        self._buf.clear()
        raise error

    def feed(self, data: bytes) -> None:
        """Buffer bytes read from the connection.

        Every length prefix is checked as soon as its 4 bytes are buffered, so an oversize
        frame is refused before its body is read (or even sent).

        Args:
            data: the bytes read (bytes, bytearray or memoryview; may be empty).

        Raises:
            ProtocolError: a length prefix is above MAX_FRAME or below the minimum, or the
                decoder already failed.  Complete frames buffered before the bad prefix are
                dropped with the connection.
            RuntimeError: `eof()` was already called (a bug in the caller).
            TypeError: `data` is not bytes-like.
        """
        self._raise_if_failed()
        if self._closed:
            raise RuntimeError("feed() after eof()")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"feed() takes bytes, not {type(data).__name__}")
        self._buf += data
        while self._frame_end + _PREFIX_LEN <= len(self._buf):
            start = self._frame_end
            length = int.from_bytes(self._buf[start : start + _PREFIX_LEN], "big")
            try:
                _check_length(length)
            except ProtocolError as exc:
                self._fail(exc)
            self._frame_start = start
            self._frame_end = start + _PREFIX_LEN + length

    def next_message(self) -> Message | None:
        """`next_frame`, for callers that need only the message (its trace meta is dropped)."""
        frame = self.next_frame()
        return None if frame is None else frame.message

    def next_frame(self) -> Frame | None:
        """Take the next complete frame out of the buffer.

        Returns:
            The message with its trace meta, fully validated; or None if no complete frame
            is buffered yet (read more and `feed` it).

        Raises:
            ProtocolError: the frame is not a valid message of this version, or the decoder
                already failed.
        """
        self._raise_if_failed()
        if len(self._buf) < _PREFIX_LEN:
            return None
        # feed() has checked this prefix already: the buffer always starts at a frame.
        total = _PREFIX_LEN + int.from_bytes(self._buf[:_PREFIX_LEN], "big")
        if len(self._buf) < total:
            return None
        version = self._buf[_PREFIX_LEN]
        body = bytes(self._buf[_PREFIX_LEN + 1 : total])
        del self._buf[:total]
        self._frame_start -= total
        self._frame_end -= total
        try:
            return _decode_payload(version, body)
        except ProtocolError as exc:
            self._fail(exc)

    def eof(self) -> None:
        """Tell the decoder the peer closed the connection.

        Complete frames still buffered remain available from `next_message()`.

        Raises:
            ProtocolError: a frame was cut short ("connection closed mid-frame (N of M
                bytes)"), or the decoder already failed.
        """
        self._raise_if_failed()
        self._closed = True
        buffered = len(self._buf)
        if buffered < self._frame_end:
            # The last checked frame is incomplete.
            got = buffered - self._frame_start
            want = self._frame_end - self._frame_start
            self._fail(ProtocolError(f"connection closed mid-frame ({got} of {want} bytes)"))
        if buffered > self._frame_end:
            # Part of a length prefix: the frame's size is not even known.
            got = buffered - self._frame_end
            self._fail(
                ProtocolError(
                    f"connection closed mid-frame ({got} of at least {_PREFIX_LEN} bytes)"
                )
            )
