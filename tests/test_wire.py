"""Tests of impl/wire.py: round trips, strict validation, framing, garbage, describe()."""

from __future__ import annotations

import re
from pathlib import Path

import attrs
import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from impl import wire
from impl.wire import (
    MAX_FRAME,
    IMPLEMENTATION_ONLY,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    AppendRequest,
    AppendResponse,
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
    WalData,
    WalRead,
    FrameDecoder,
    Greeting,
    GreetingResponse,
    ProposerElected,
    ProtocolError,
    TermSwitch,
    VoteRequest,
    VoteResponse,
    Frame,
    decode,
    decode_frame,
    describe,
    encode,
    format_lsn,
)

# Moderate example counts keep the whole file within a few seconds.
FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

U64_MAX = 2**64 - 1
SPEC = Path(__file__).resolve().parent.parent / "spec" / "ProposerAcceptor.tla"


# ---------------------------------------------------------------------------------------------
# Helpers: frames built by hand, bypassing encode()'s guarantees.
# ---------------------------------------------------------------------------------------------


def raw_frame(body: bytes, version: int = PROTOCOL_VERSION) -> bytes:
    payload = bytes([version]) + body
    return len(payload).to_bytes(4, "big") + payload


def frame_of(item: object, version: int = PROTOCOL_VERSION) -> bytes:
    return raw_frame(cbor2.dumps(item), version)


def decode_all(data: bytes, chunks: list[int] | None = None) -> list[wire.Message]:
    """Feed `data` (in chunks of the given sizes, cycled), drain, then signal EOF."""
    decoder = FrameDecoder()
    out: list[wire.Message] = []
    pos, sizes, i = 0, chunks or [len(data) or 1], 0
    while pos < len(data):
        size = max(1, sizes[i % len(sizes)])
        decoder.feed(data[pos : pos + size])
        pos += size
        i += 1
        while (msg := decoder.next_message()) is not None:
            out.append(msg)
    decoder.eof()
    return out


def fields_of(msg: wire.Message) -> dict[str, object]:
    """A message's fields as the wire spells them (histories as pairs)."""
    out: dict[str, object] = {}
    for name in (f.name for f in attrs.fields(type(msg))):
        value = getattr(msg, name)
        out[name] = [[s.term, s.lsn] for s in value] if name == "term_history" else value
    return out


# ---------------------------------------------------------------------------------------------
# Strategies: valid messages of every type.
# ---------------------------------------------------------------------------------------------

node_ids = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=8)
u64s = st.integers(min_value=0, max_value=U64_MAX)
timeline_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}", fullmatch=True)
small_lsns = st.integers(min_value=0, max_value=2**40)
lsns = st.one_of(small_lsns, u64s)
terms = st.integers(min_value=1, max_value=U64_MAX)


@st.composite
def histories(draw: st.DrawFn, min_last_term: int = 0, max_last_term: int = U64_MAX - 1):
    """Valid term histories: term-0 sentinel, terms strictly up, lsns never down."""
    later_terms = draw(
        st.lists(st.integers(min_value=1, max_value=max_last_term), max_size=5, unique=True)
    )
    all_terms = [0] + sorted(later_terms)
    positions = sorted(draw(st.lists(lsns, min_size=len(all_terms), max_size=len(all_terms))))
    return tuple(TermSwitch(term=t, lsn=l) for t, l in zip(all_terms, positions))


@st.composite
def vote_responses(draw: st.DrawFn) -> VoteResponse:
    history = draw(histories(max_last_term=U64_MAX - 1))
    flush = draw(st.integers(min_value=history[-1].lsn, max_value=U64_MAX))
    return VoteResponse(
        acceptor=draw(node_ids),
        proposer=draw(node_ids),
        term=draw(st.integers(min_value=history[-1].term + 1, max_value=U64_MAX)),
        term_history=history,
        flush_lsn=flush,
        commit_lsn=draw(st.integers(min_value=0, max_value=flush)),
    )


@st.composite
def proposer_elected(draw: st.DrawFn) -> ProposerElected:
    base = draw(histories(max_last_term=U64_MAX - 1))
    term = draw(st.integers(min_value=base[-1].term + 1, max_value=U64_MAX))
    start = draw(st.integers(min_value=base[-1].lsn, max_value=U64_MAX))
    return ProposerElected(
        proposer=draw(node_ids), term=term, term_history=base + (TermSwitch(term=term, lsn=start),)
    )


@st.composite
def append_requests(draw: st.DrawFn) -> AppendRequest:
    data = draw(st.binary(max_size=300))
    begin = draw(st.integers(min_value=0, max_value=U64_MAX - len(data)))
    return AppendRequest(
        proposer=draw(node_ids),
        term=draw(terms),
        begin_lsn=begin,
        end_lsn=begin + len(data),
        commit_lsn=draw(lsns),
        wal=data,
    )


@st.composite
def append_responses(draw: st.DrawFn) -> AppendResponse:
    flush = draw(lsns)
    return AppendResponse(
        acceptor=draw(node_ids),
        term=draw(terms),
        flush_lsn=flush,
        commit_lsn=draw(st.integers(min_value=0, max_value=flush)),
    )


@st.composite
def wal_reads(draw: st.DrawFn) -> WalRead:
    begin = draw(lsns)
    end = draw(st.integers(min_value=begin, max_value=U64_MAX))
    return WalRead(proposer=draw(node_ids), term=draw(terms), begin_lsn=begin, end_lsn=end)


@st.composite
def wal_datas(draw: st.DrawFn) -> WalData:
    data = draw(st.binary(max_size=300))
    begin = draw(st.integers(min_value=0, max_value=U64_MAX - len(data)))
    return WalData(
        acceptor=draw(node_ids), term=draw(terms), begin_lsn=begin, end_lsn=begin + len(data), wal=data
    )


@st.composite
def wal_chunks(draw: st.DrawFn) -> WalChunk:
    data = draw(st.binary(max_size=300))
    begin = draw(st.integers(min_value=0, max_value=U64_MAX - len(data)))
    commit = draw(st.integers(min_value=begin + len(data), max_value=U64_MAX))
    return WalChunk(acceptor=draw(node_ids), begin_lsn=begin, end_lsn=begin + len(data), commit_lsn=commit, wal=data)


texts = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)


MESSAGE_STRATEGIES = {
    Greeting: st.builds(Greeting, proposer=node_ids),
    GreetingResponse: st.builds(
        GreetingResponse, acceptor=node_ids, proposer=node_ids, term=u64s
    ),
    VoteRequest: st.builds(VoteRequest, proposer=node_ids, term=terms),
    VoteResponse: vote_responses(),
    ProposerElected: proposer_elected(),
    AppendRequest: append_requests(),
    AppendResponse: append_responses(),
    WalRead: wal_reads(),
    WalData: wal_datas(),
    OpenTimeline: st.builds(OpenTimeline, proposer=node_ids, timeline=timeline_ids, wal_start=u64s),
    StatusRequest: st.builds(StatusRequest, timeline=timeline_ids),
    StatusResponse: st.builds(
        StatusResponse, acceptor=node_ids, timeline=timeline_ids, term=u64s, flush_lsn=u64s, commit_lsn=u64s, wal_start=u64s,
        leader=st.just("") | node_ids, leader_term=u64s, proposers=st.lists(node_ids, max_size=4).map(tuple),
    ),
    StreamWal: st.builds(StreamWal, pageserver=node_ids, timeline=node_ids, start_lsn=u64s),
    WalChunk: wal_chunks(),
    PageserverFeedback: st.builds(
        PageserverFeedback, timeline=node_ids, last_record_lsn=u64s, disk_consistent_lsn=u64s, remote_consistent_lsn=u64s
    ),
    GetPage: st.builds(GetPage, timeline=node_ids, page=u64s, lsn=u64s),
    PageImageData: st.builds(PageImageData, page=u64s, lsn=u64s, image=st.binary(max_size=300)),
    DbSize: st.builds(DbSize, timeline=node_ids, lsn=u64s),
    DbSizeData: st.builds(DbSizeData, lsn=u64s, db_size=u64s),
    LsnAtTime: st.builds(LsnAtTime, timeline=st.just("main"), time=u64s),
    LsnAtTimeData: st.builds(LsnAtTimeData, lsn=u64s),
    BranchCreate: st.builds(BranchCreate, name=node_ids, ancestor=node_ids, lsn=u64s),
    BranchCreated: st.builds(BranchCreated, name=node_ids, ancestor=node_ids, lsn=u64s),
    BranchList: st.builds(BranchList),
    BranchListData: st.builds(BranchListData, names=st.lists(node_ids, max_size=4).map(tuple)),
    Gc: st.builds(Gc),
    GcDone: st.builds(GcDone, removed=u64s, kept=u64s),
    PageserverStatusRequest: st.builds(PageserverStatusRequest, timeline=node_ids),
    PageserverStatus: st.builds(
        PageserverStatus, timeline=node_ids, ancestor=st.just("") | node_ids, ancestor_lsn=u64s, last_record_lsn=u64s,
        disk_consistent_lsn=u64s, remote_consistent_lsn=u64s, gc_cutoff=u64s, layers=u64s,
        streaming_from=st.just("") | node_ids,
    ),
    PageserverError: st.builds(PageserverError, code=node_ids, text=texts),
}
messages = st.one_of(*MESSAGE_STRATEGIES.values())
chunk_sizes = st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=10)


# ---------------------------------------------------------------------------------------------
# The registry matches the spec.
# ---------------------------------------------------------------------------------------------


def test_registry_names_are_the_spec_message_types():
    """Every class is named as a `type` in the spec's IsMessage, and vice versa."""
    text = SPEC.read_text()
    is_message = text[text.index("IsMessage(m) ==") : text.index("TypeOK ==")]
    spec_types = set(re.findall(r'm\.type = "(\w+)"', is_message))
    assert spec_types == set(MESSAGE_TYPES) - IMPLEMENTATION_ONLY
    assert IMPLEMENTATION_ONLY <= set(MESSAGE_TYPES)
    assert set(MESSAGE_STRATEGIES) == set(MESSAGE_TYPES.values())
    for name, cls in MESSAGE_TYPES.items():
        assert cls.__name__ == name


# ---------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", list(MESSAGE_STRATEGIES), ids=lambda c: c.__name__)
@FAST
@given(data=st.data())
def test_round_trip_each_type(cls, data):
    msg = data.draw(MESSAGE_STRATEGIES[cls])
    frame = encode(msg)
    assert decode(frame) == msg
    assert decode_all(frame, data.draw(chunk_sizes)) == [msg]


@FAST
@given(msgs=st.lists(messages, max_size=6), chunks=chunk_sizes)
def test_round_trip_stream_in_random_chunks(msgs, chunks):
    stream = b"".join(encode(m) for m in msgs)
    assert decode_all(stream, chunks) == msgs


trace_metas = st.builds(
    wire.MsgMeta,
    id=st.builds(lambda node, n: f"{node}:{n}", node_ids, st.integers(1, U64_MAX)),
    lc=st.integers(1, U64_MAX),
)


@FAST
@given(msg=messages, meta=trace_metas)
def test_round_trip_with_trace_meta(msg, meta):
    frame = encode(msg, meta)
    assert decode_frame(frame) == Frame(msg, meta)
    assert decode(frame) == msg  # the message-only API drops the meta
    decoder = FrameDecoder()
    decoder.feed(frame + encode(msg))
    assert decoder.next_frame() == Frame(msg, meta)
    assert decoder.next_frame() == Frame(msg, None)  # meta is per frame, optional
    assert decoder.next_frame() is None


def test_trace_meta_is_the_bodys_third_element():
    frame = encode(Greeting(proposer="p1"), wire.MsgMeta("p1:17", 4))
    assert cbor2.loads(frame[5:]) == ["Greeting", {"proposer": "p1"}, ["p1:17", 4]]
    # A node id may hold ':'; the counter is what follows the last one.
    assert decode_frame(frame_of(["Greeting", {"proposer": "p1"}, ["x:y:3", 2]])).meta == wire.MsgMeta("x:y:3", 2)


def test_encode_refuses_a_meta_that_is_not_a_msgmeta():
    with pytest.raises(TypeError, match="meta must be a MsgMeta, not tuple"):
        encode(Greeting(proposer="p1"), ("p1:1", 1))


def test_frame_layout():
    frame = encode(Greeting(proposer="p1"))
    assert frame[4] == PROTOCOL_VERSION
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    assert cbor2.loads(frame[5:]) == ["Greeting", {"proposer": "p1"}]


def test_history_on_the_wire_is_a_list_of_pairs():
    msg = ProposerElected(
        proposer="p1",
        term=3,
        term_history=(TermSwitch(term=0, lsn=0), TermSwitch(term=3, lsn=0x80)),
    )
    assert cbor2.loads(encode(msg)[5:])[1]["term_history"] == [[0, 0], [3, 0x80]]


def test_history_list_is_frozen_into_a_tuple():
    history = [TermSwitch(term=0, lsn=0), TermSwitch(term=1, lsn=0)]
    msg = ProposerElected(proposer="p1", term=1, term_history=history)
    assert type(msg.term_history) is tuple
    hash(msg)


# ---------------------------------------------------------------------------------------------
# Garbage: only ProtocolError, or valid messages.
# ---------------------------------------------------------------------------------------------


def assert_only_protocol_errors(data: bytes, chunks: list[int] | None = None) -> None:
    try:
        got = decode_all(data, chunks)
    except ProtocolError:
        return
    for msg in got:
        assert type(msg) in MESSAGE_TYPES.values()
        assert decode(encode(msg)) == msg  # complete and valid: it re-encodes identically


@FAST
@given(data=st.binary(max_size=200), chunks=chunk_sizes)
def test_fuzz_arbitrary_bytes(data, chunks):
    assert_only_protocol_errors(data, chunks)


@FAST
@given(body=st.binary(max_size=120), version=st.sampled_from([PROTOCOL_VERSION, 0, 2, 255]))
def test_fuzz_arbitrary_bodies_in_wellformed_frames(body, version):
    # Without the valid prefix, random bytes mostly die at the length check.
    assert_only_protocol_errors(raw_frame(body, version))


cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=10)
    | st.binary(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=10,
)
ALL_FIELD_NAMES = sorted({f.name for cls in MESSAGE_TYPES.values() for f in attrs.fields(cls)})


@FAST
@given(
    name=st.sampled_from(sorted(MESSAGE_TYPES)) | st.text(max_size=10),
    fields=st.dictionaries(st.sampled_from(ALL_FIELD_NAMES) | st.text(max_size=5), cbor_values, max_size=8),
)
def test_fuzz_structured_bodies(name, fields):
    """Plausible bodies with wrong values reach the field checks, not just the parser."""
    assert_only_protocol_errors(frame_of([name, fields]))


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    frame = bytearray(encode(draw(messages)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        kind = draw(st.sampled_from(["flip", "truncate", "extend"]))
        if kind == "flip" and frame:
            i = draw(st.integers(min_value=0, max_value=len(frame) - 1))
            frame[i] ^= draw(st.integers(min_value=1, max_value=255))
        elif kind == "truncate":
            del frame[draw(st.integers(min_value=0, max_value=len(frame))) :]
        else:
            frame += draw(st.binary(min_size=1, max_size=16))
    return bytes(frame)


@FAST
@given(frame=mutated_frames(), chunks=chunk_sizes)
def test_fuzz_mutated_valid_frames(frame, chunks):
    assert_only_protocol_errors(frame, chunks)
    try:
        msg = decode(frame)
    except ProtocolError:
        return
    assert decode(encode(msg)) == msg


# ---------------------------------------------------------------------------------------------
# Validation rules, one row each: (id, words the error must contain, frame).
# ---------------------------------------------------------------------------------------------

VOTE = fields_of(
    VoteResponse(
        acceptor="a2",
        proposer="p1",
        term=3,
        term_history=(TermSwitch(term=0, lsn=0), TermSwitch(term=2, lsn=0x80)),
        flush_lsn=0x1A0,
        commit_lsn=0x100,
    )
)
ELECTED = fields_of(
    ProposerElected(
        proposer="p1",
        term=3,
        term_history=(TermSwitch(term=0, lsn=0), TermSwitch(term=3, lsn=0x80)),
    )
)
APPEND = fields_of(
    AppendRequest(proposer="p1", term=3, begin_lsn=0x100, end_lsn=0x104, commit_lsn=0x100, wal=b"abcd")
)
ACK = fields_of(AppendResponse(acceptor="a1", term=3, flush_lsn=0x180, commit_lsn=0x100))


def with_(fields: dict, **changes: object) -> dict:
    out = dict(fields)
    for key, value in changes.items():
        if value is _DROP:
            del out[key]
        else:
            out[key] = value
    return out


_DROP = object()

DECODE_CASES = [
    ("bad version", ["version 7"], frame_of(["Greeting", {"proposer": "p1"}], version=7)),
    ("old version 5", ["unsupported protocol version 5"], frame_of(["Greeting", {"proposer": "p1"}], version=5)),
    ("old version 4", ["unsupported protocol version 4"], frame_of(["Greeting", {"proposer": "p1"}], version=4)),
    ("old version 3", ["unsupported protocol version 3"], frame_of(["Greeting", {"proposer": "p1"}], version=3)),
    # Version 1 frames had no trace meta; a peer of that build is refused, not half-understood.
    ("old version 1", ["unsupported protocol version 1"],
     frame_of(["Greeting", {"proposer": "p1"}], version=1)),
    ("version 0", ["version"], frame_of(["Greeting", {"proposer": "p1"}], version=0)),
    ("not CBOR", ["not valid CBOR"], raw_frame(b"\xff\xff")),
    ("truncated CBOR", ["not valid CBOR"], raw_frame(b"\x82\x68Greet")),
    ("CBOR trailing bytes", ["trailing"],
     raw_frame(cbor2.dumps(["Greeting", {"proposer": "p1"}]) + b"\x00")),
    ("duplicate key", ["not valid CBOR", "Duplicate"],
     raw_frame(b"\x82\x68Greeting\xa2\x68proposer\x62p1\x68proposer\x62p2")),
    ("indefinite length", ["not valid CBOR", "indefinite"],
     raw_frame(b"\x9f\x68Greeting\xa1\x68proposer\x62p1\xff")),
    ("CBOR tag", ["not valid CBOR", "tag"],
     frame_of(["VoteRequest", {"proposer": "p1", "term": cbor2.CBORTag(1, 5)}])),
    ("unknown CBOR tag", ["tag"],
     frame_of(["VoteRequest", {"proposer": "p1", "term": cbor2.CBORTag(9999, 5)}])),
    ("term 2**64 (a CBOR bignum)", ["not valid CBOR", "tag"],
     frame_of(["VoteRequest", {"proposer": "p1", "term": 2**64}])),
    ("too deep", ["not valid CBOR", "depth"], frame_of(["Greeting", {"proposer": [[["p1"]]]}])),
    ("body not a list", ["body must be a list"], frame_of({"Greeting": {"proposer": "p1"}})),
    ("body a 4-list", ["body must be a list"],
     frame_of(["Greeting", {"proposer": "p1"}, ["p1:1", 1], 1])),
    ("body a 1-list", ["body must be a list"], frame_of(["Greeting"])),
    ("meta not a pair", ["trace meta must be a [trace_id, lc] pair", "int"],
     frame_of(["Greeting", {"proposer": "p1"}, 1])),
    ("meta a 3-list", ["trace meta must be a [trace_id, lc] pair"],
     frame_of(["Greeting", {"proposer": "p1"}, ["p1:1", 1, 2]])),
    ("meta id not text", ["MsgMeta: field id", "bytes"],
     frame_of(["Greeting", {"proposer": "p1"}, [b"p1:1", 1]])),
    ("meta id without counter", ["MsgMeta: field id", "<node>:<n>"],
     frame_of(["Greeting", {"proposer": "p1"}, ["p1", 1]])),
    ("meta id counter 0", ["MsgMeta: field id", "<node>:<n>"],
     frame_of(["Greeting", {"proposer": "p1"}, ["p1:0", 1]])),
    ("meta id counter with a sign", ["MsgMeta: field id", "<node>:<n>"],
     frame_of(["Greeting", {"proposer": "p1"}, ["p1:+3", 1]])),
    ("meta id counter of non-ASCII digits", ["MsgMeta: field id", "<node>:<n>"],
     frame_of(["Greeting", {"proposer": "p1"}, ["p1:\u0663", 1]])),
    ("meta id counter past u64", ["MsgMeta: field id", "unsigned 64-bit"],
     frame_of(["Greeting", {"proposer": "p1"}, [f"p1:{2**64}", 1]])),
    ("meta id with a space in the node", ["MsgMeta: field id", "printable ASCII"],
     frame_of(["Greeting", {"proposer": "p1"}, ["p 1:3", 1]])),
    ("meta id with an empty node", ["MsgMeta: field id", "printable ASCII"],
     frame_of(["Greeting", {"proposer": "p1"}, [":3", 1]])),
    ("meta clock 0", ["MsgMeta: field lc", ">= 1"],
     frame_of(["Greeting", {"proposer": "p1"}, ["p1:1", 0]])),
    ("meta clock bool", ["MsgMeta: field lc", "bool"],
     frame_of(["Greeting", {"proposer": "p1"}, ["p1:1", True]])),
    ("meta clock negative", ["MsgMeta: field lc", "-1"],
     frame_of(["Greeting", {"proposer": "p1"}, ["p1:1", -1]])),
    ("type not a string", ["message type must be a string"], frame_of([1, {"proposer": "p1"}])),
    ("unknown type", ["unknown message type", "'Hello'"], frame_of(["Hello", {"proposer": "p1"}])),
    ("fields not a map", ["Greeting", "fields must be a map"], frame_of(["Greeting", ["p1"]])),
    ("missing field", ["VoteRequest", "missing field 'term'"],
     frame_of(["VoteRequest", {"proposer": "p1"}])),
    ("extra field", ["Greeting", "unexpected field 'x'"],
     frame_of(["Greeting", {"proposer": "p1", "x": 1}])),
    ("bytes field name", ["field names must be strings"],
     frame_of(["Greeting", {"proposer": "p1", b"x": 1}])),
    ("bool term", ["field term", "bool"],
     frame_of(["VoteRequest", {"proposer": "p1", "term": True}])),
    ("float term", ["field term", "float"],
     frame_of(["VoteRequest", {"proposer": "p1", "term": 3.0}])),
    ("negative term", ["field term", "-1"],
     frame_of(["VoteRequest", {"proposer": "p1", "term": -1}])),
    ("null term", ["field term", "NoneType"],
     frame_of(["VoteRequest", {"proposer": "p1", "term": None}])),
    ("string term", ["field term", "str"],
     frame_of(["VoteRequest", {"proposer": "p1", "term": "3"}])),
    ("term zero", ["field term", ">= 1"], frame_of(["VoteRequest", {"proposer": "p1", "term": 0}])),
    ("term -2**64", ["field term", "64-bit"],
     frame_of(["GreetingResponse", {"acceptor": "a1", "proposer": "p1", "term": -(2**64)}])),
    ("empty node id", ["field proposer", "node id"], frame_of(["Greeting", {"proposer": ""}])),
    ("long node id", ["field proposer", "65 characters"],
     frame_of(["Greeting", {"proposer": "p" * 65}])),
    ("space in node id", ["field proposer"], frame_of(["Greeting", {"proposer": "p 1"}])),
    ("non-ASCII node id", ["field proposer"], frame_of(["Greeting", {"proposer": "p\u00e9"}])),
    ("node id not a string", ["field proposer", "bytes"],
     frame_of(["Greeting", {"proposer": b"p1"}])),
    ("history not a list", ["field term_history", "list"],
     frame_of(["VoteResponse", with_(VOTE, term_history=7)])),
    ("history empty", ["field term_history", "empty"],
     frame_of(["VoteResponse", with_(VOTE, term_history=[])])),
    ("history pair of 3", ["field term_history[0]", "pair"],
     frame_of(["VoteResponse", with_(VOTE, term_history=[[0, 0, 0]])])),
    ("history bool lsn", ["field term_history[0]", "field lsn", "bool"],
     frame_of(["VoteResponse", with_(VOTE, term_history=[[0, False]])])),
    ("history no sentinel", ["field term_history", "term-0"],
     frame_of(["VoteResponse", with_(VOTE, term_history=[[1, 0]])])),
    ("history terms repeat", ["field term_history[2]", "strictly increase"],
     frame_of(["VoteResponse", with_(VOTE, term_history=[[0, 0], [1, 5], [1, 6]])])),
    ("history lsns decrease", ["field term_history[2]", "must not decrease"],
     frame_of(["VoteResponse", with_(VOTE, term_history=[[0, 0], [1, 9], [2, 5]])])),
    ("vote commit past flush", ["field commit_lsn", "exceeds flush_lsn"],
     frame_of(["VoteResponse", with_(VOTE, commit_lsn=0x1A1)])),
    ("vote history past flush", ["field term_history", "past flush_lsn"],
     frame_of(["VoteResponse", with_(VOTE, term_history=[[0, 0], [2, 0x1A1]])])),
    ("vote history term not below", ["field term_history", "not below"],
     frame_of(["VoteResponse", with_(VOTE, term_history=[[0, 0], [3, 0x80]])])),
    ("elected wrong last term", ["field term_history", "leader's term 4"],
     frame_of(["ProposerElected", with_(ELECTED, term=4)])),
    ("elected missing history", ["missing field 'term_history'"],
     frame_of(["ProposerElected", with_(ELECTED, term_history=_DROP)])),
    ("append inverted range", ["inverted LSN range"],
     frame_of(["AppendRequest", with_(APPEND, begin_lsn=0x104, end_lsn=0x100)])),
    ("append length mismatch", ["field wal", "len(wal) = 4"],
     frame_of(["AppendRequest", with_(APPEND, end_lsn=0x105)])),
    ("append wal as text", ["field wal", "bytes"],
     frame_of(["AppendRequest", with_(APPEND, wal="abcd")])),
    ("append end over u64", ["not valid CBOR", "tag"],
     frame_of(["AppendRequest", with_(APPEND, end_lsn=2**64 + 3, begin_lsn=2**64 - 1)])),
    ("ack commit past flush", ["field commit_lsn", "exceeds flush_lsn"],
     frame_of(["AppendResponse", with_(ACK, commit_lsn=0x181)])),
    ("ack term zero", ["field term", ">= 1"], frame_of(["AppendResponse", with_(ACK, term=0)])),
    ("oversize frame", ["exceeds", "MAX_FRAME"], (MAX_FRAME + 1).to_bytes(4, "big") + b"\x01"),
    ("empty frame", ["too short"], (0).to_bytes(4, "big")),
    ("version byte only", ["too short"], (1).to_bytes(4, "big") + b"\x01"),
]


@pytest.mark.parametrize(
    "words, frame", [c[1:] for c in DECODE_CASES], ids=[c[0] for c in DECODE_CASES]
)
def test_decode_rejects(words, frame):
    with pytest.raises(ProtocolError) as info:
        decode(frame)
    for word in words:
        assert word in str(info.value)
    # The streaming decoder says the same, whether fed at once or byte by byte.
    for chunks in (None, [1]):
        with pytest.raises(ProtocolError) as info:
            decode_all(frame, chunks)
        for word in words:
            assert word in str(info.value)


def test_valid_rows_of_the_table_are_valid():
    """The table's base messages decode, so each row fails for its own reason only."""
    bases = [
        ("VoteResponse", VOTE),
        ("ProposerElected", ELECTED),
        ("AppendRequest", APPEND),
        ("AppendResponse", ACK),
    ]
    for name, fields in bases:
        assert type(decode(frame_of([name, fields]))).__name__ == name


CONSTRUCT_CASES = [
    ("bool term", "field term", lambda: VoteRequest(proposer="p1", term=True)),
    ("int proposer", "field proposer", lambda: Greeting(proposer=1)),
    ("negative lsn", "field lsn", lambda: TermSwitch(term=0, lsn=-1)),
    ("lsn over u64", "field flush_lsn",
     lambda: AppendResponse(acceptor="a1", term=1, flush_lsn=2**64, commit_lsn=0)),
    ("inverted read", "inverted LSN range",
     lambda: WalRead(proposer="p1", term=1, begin_lsn=5, end_lsn=4)),
    ("short data", "field wal",
     lambda: WalData(acceptor="a1", term=1, begin_lsn=0, end_lsn=3, wal=b"ab")),
    ("bytearray wal", "field wal",
     lambda: AppendRequest(proposer="p1", term=1, begin_lsn=0, end_lsn=1, commit_lsn=0, wal=bytearray(b"x"))),
    ("history of tuples", "field term_history[0]",
     lambda: ProposerElected(proposer="p1", term=1, term_history=((0, 0), (1, 0)))),
    ("elected term 0", "field term",
     lambda: ProposerElected(proposer="p1", term=0, term_history=(TermSwitch(term=0, lsn=0),))),
    ("timeline id with a slash", "field timeline",
     lambda: OpenTimeline(proposer="p1", timeline="a/b", wal_start=0)),
    ("empty timeline id", "field timeline", lambda: StatusRequest(timeline="")),
    ("timeline id of 64 characters", "field timeline", lambda: StatusRequest(timeline="t" * 64)),
    ("heartbeat with data", "len(wal) = 1",
     lambda: AppendRequest(proposer="p1", term=1, begin_lsn=5, end_lsn=5, commit_lsn=0, wal=b"x")),
]


@pytest.mark.parametrize(
    "words, build", [c[1:] for c in CONSTRUCT_CASES], ids=[c[0] for c in CONSTRUCT_CASES]
)
def test_constructors_validate(words, build):
    with pytest.raises(ProtocolError, match=re.escape(words)):
        build()


def test_messages_are_frozen_and_keyword_only():
    msg = VoteRequest(proposer="p1", term=1)
    with pytest.raises(AttributeError):
        msg.term = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        VoteRequest("p1", 1)  # type: ignore[misc]


def test_heartbeat_is_valid():
    hb = AppendRequest(proposer="p1", term=1, begin_lsn=0x180, end_lsn=0x180, commit_lsn=0x100, wal=b"")
    assert decode(encode(hb)) == hb


def test_extreme_values_round_trip():
    msg = AppendRequest(
        proposer="~" * 64, term=U64_MAX, begin_lsn=U64_MAX, end_lsn=U64_MAX, commit_lsn=U64_MAX, wal=b""
    )
    assert decode(encode(msg)) == msg


# ---------------------------------------------------------------------------------------------
# Framing
# ---------------------------------------------------------------------------------------------


def test_oversize_prefix_rejected_on_its_four_bytes():
    decoder = FrameDecoder()
    decoder.feed((MAX_FRAME + 1).to_bytes(4, "big")[:3])  # not yet known
    with pytest.raises(ProtocolError, match="exceeds"):
        decoder.feed((MAX_FRAME + 1).to_bytes(4, "big")[3:])


def test_max_frame_prefix_is_accepted_while_body_arrives():
    decoder = FrameDecoder()
    decoder.feed(MAX_FRAME.to_bytes(4, "big"))
    assert decoder.next_message() is None


def test_oversize_prefix_behind_a_valid_frame_is_rejected_on_feed():
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError, match="exceeds"):
        decoder.feed(encode(Greeting(proposer="p1")) + b"GET / HTTP/1.1\r\n")


def test_errors_are_sticky():
    decoder = FrameDecoder()
    decoder.feed(frame_of(["Hello", {}]) + encode(Greeting(proposer="p1")))
    with pytest.raises(ProtocolError, match="unknown message type"):
        decoder.next_message()
    for call in (decoder.next_message, decoder.eof, lambda: decoder.feed(b"")):
        with pytest.raises(ProtocolError, match="already failed.*unknown message type"):
            call()


def test_eof_mid_frame():
    frame = encode(VoteRequest(proposer="p1", term=3))
    decoder = FrameDecoder()
    decoder.feed(frame[:-2])
    assert decoder.next_message() is None
    expected = rf"connection closed mid-frame \({len(frame) - 2} of {len(frame)} bytes\)"
    with pytest.raises(ProtocolError, match=expected):
        decoder.eof()


def test_eof_mid_length_prefix():
    decoder = FrameDecoder()
    decoder.feed(encode(Greeting(proposer="p1")) + b"\x00\x00")
    assert decoder.next_message() == Greeting(proposer="p1")
    with pytest.raises(ProtocolError, match=r"mid-frame \(2 of at least 4 bytes\)"):
        decoder.eof()


def test_eof_at_frame_boundary_keeps_complete_frames():
    decoder = FrameDecoder()
    decoder.feed(encode(Greeting(proposer="p1")) * 2)
    decoder.eof()
    assert decoder.next_message() == Greeting(proposer="p1")
    assert decoder.next_message() == Greeting(proposer="p1")
    assert decoder.next_message() is None
    with pytest.raises(RuntimeError):
        decoder.feed(b"x")


def test_feed_rejects_non_bytes():
    with pytest.raises(TypeError):
        FrameDecoder().feed("text")  # type: ignore[arg-type]


def test_decode_trailing_bytes():
    with pytest.raises(ProtocolError, match="3 trailing bytes after the frame"):
        decode(encode(Greeting(proposer="p1")) + b"abc")


def test_decode_truncated_and_short():
    frame = encode(Greeting(proposer="p1"))
    with pytest.raises(ProtocolError, match=rf"truncated frame \(9 of {len(frame)} bytes\)"):
        decode(frame[:9])
    with pytest.raises(ProtocolError, match="shorter than its length prefix"):
        decode(frame[:3])


def test_encode_refuses_oversize_frame():
    big = AppendRequest(
        proposer="p1", term=1, begin_lsn=0, end_lsn=MAX_FRAME, commit_lsn=0, wal=bytes(MAX_FRAME)
    )
    with pytest.raises(ValueError, match="exceeds MAX_FRAME"):
        encode(big)


def test_encode_and_describe_refuse_non_messages():
    with pytest.raises(TypeError):
        encode(TermSwitch(term=0, lsn=0))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        describe("Greeting")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# describe() and format_lsn(): golden strings
# ---------------------------------------------------------------------------------------------

H = (TermSwitch(term=0, lsn=0), TermSwitch(term=2, lsn=0x80))
DESCRIBE_CASES = [
    (Greeting(proposer="p1"), "p1->* Greeting"),
    (GreetingResponse(acceptor="a1", proposer="p1", term=2), "a1->p1 GreetingResponse term=2"),
    (VoteRequest(proposer="p1", term=3), "p1->* VoteRequest term=3"),
    (
        VoteResponse(acceptor="a2", proposer="p1", term=3, term_history=H, flush_lsn=0x1A0, commit_lsn=0x100),
        "a2->p1 VoteResponse term=3 flush=0/1A0 commit=0/100 history=[0@0/0,2@0/80]",
    ),
    (
        ProposerElected(proposer="p1", term=3, term_history=H + (TermSwitch(term=3, lsn=0x1A0),)),
        "p1->* ProposerElected term=3 history=[0@0/0,2@0/80,3@0/1A0]",
    ),
    (
        AppendRequest(
            proposer="p1", term=3, begin_lsn=0x100, end_lsn=0x180, commit_lsn=0x100, wal=bytes(128)
        ),
        "p1->* AppendRequest term=3 lsn=0/100..0/180 commit=0/100 (128 B)",
    ),
    (
        AppendRequest(proposer="p1", term=3, begin_lsn=0x180, end_lsn=0x180, commit_lsn=0x100, wal=b""),
        "p1->* AppendRequest term=3 lsn=0/180..0/180 commit=0/100 (0 B)",
    ),
    (
        AppendResponse(acceptor="a1", term=3, flush_lsn=0x180, commit_lsn=0x100),
        "a1->* AppendResponse term=3 flush=0/180 commit=0/100",
    ),
    (
        WalRead(proposer="p1", term=3, begin_lsn=0, end_lsn=0x80),
        "p1->* WalRead term=3 lsn=0/0..0/80",
    ),
    (
        WalData(acceptor="a1", term=3, begin_lsn=0, end_lsn=2, wal=b"ab"),
        "a1->* WalData term=3 lsn=0/0..0/2 (2 B)",
    ),
    (
        OpenTimeline(proposer="p1", timeline="br-1", wal_start=0x1000),
        "p1->* OpenTimeline timeline=br-1 wal_start=0/1000",
    ),
    (StatusRequest(timeline="main"), "*->* StatusRequest timeline=main"),
]


@pytest.mark.parametrize("msg, line", DESCRIBE_CASES, ids=[type(c[0]).__name__ for c in DESCRIBE_CASES])
def test_describe(msg, line):
    assert describe(msg) == line


@pytest.mark.parametrize(
    "lsn, text",
    [
        (0, "0/0"),
        (0x16B3748, "0/16B3748"),  # Postgres prints no leading zeros in the lower half
        (2**32 + 5, "1/5"),
        (0xFFFFFFFF, "0/FFFFFFFF"),
        (U64_MAX, "FFFFFFFF/FFFFFFFF"),
    ],
)
def test_format_lsn(lsn, text):
    assert format_lsn(lsn) == text


@pytest.mark.parametrize("bad", [-1, 2**64, True, 1.0])
def test_format_lsn_rejects_non_lsns(bad):
    with pytest.raises(ValueError):
        format_lsn(bad)


def test_wal_chunk_carries_only_committed_wal():
    with pytest.raises(ProtocolError, match="WalChunk: field commit_lsn: 0/5 is below end_lsn 0/6"):
        WalChunk(acceptor="a1", begin_lsn=2, end_lsn=6, commit_lsn=5, wal=b"abcd")


def test_pageserver_error_text_is_one_printable_line():
    assert PageserverError(code="unknown-timeline", text="no timeline 'x'").text == "no timeline 'x'"
    with pytest.raises(ProtocolError, match="PageserverError: field text"):
        PageserverError(code="x", text="two\nlines")
