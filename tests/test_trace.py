"""Tests of impl/trace.py: the abstraction function from the cores to spec/ProposerAcceptor.tla.

The spec's text is the reference: variable names come from its prop_vars and acc_vars,
message fields from IsMessage, and an end-to-end run of the cores checks that the events
they emit speak only those names.
"""

from __future__ import annotations

import io
import json
import re
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from impl.acceptor import AcceptorCore
from impl.effects import Close, Flush, MsgMeta, PersistControl, Send, SendWal
from impl.proposer import ProposerCore
from impl.termhistory import term_at
from impl.trace import (
    SPEC_VARIABLES,
    JsonlWriter,
    Tracer,
    dumps,
    history_view,
    message_view,
    position,
    read_events,
    resume_tracer,
    wal_terms,
)
from impl.storage import CorruptStorage
from impl.wire import (
    IMPLEMENTATION_ONLY,
    MESSAGE_TYPES,
    AppendRequest,
    AppendResponse,
    Greeting,
    GreetingResponse,
    ProposerElected,
    TermSwitch,
    VoteRequest,
    VoteResponse,
    WalData,
    WalRead,
)

# Moderate example counts keep the file within a few seconds.
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SPEC_TEXT = (Path(__file__).resolve().parent.parent / "spec" / "ProposerAcceptor.tla").read_text()

History = tuple[TermSwitch, ...]

START = 100  # a WAL start other than 0, so that LSN and position differ


def h(*pairs: tuple[int, int]) -> History:
    """A history from (term, lsn) pairs."""
    return tuple(TermSwitch(term=t, lsn=lsn) for t, lsn in pairs)


# ---------------------------------------------------------------------------------------------
# The spec's text
# ---------------------------------------------------------------------------------------------


def spec_tuple(name: str) -> set[str]:
    """The variables of a `name == <<...>>` definition in the spec."""
    match = re.search(rf"^{name} == <<([^>]*)>>", SPEC_TEXT, re.MULTILINE)
    assert match, f"no {name} in the spec"
    return {v.strip() for v in match.group(1).split(",")}


def spec_message_fields() -> dict[str, set[str]]:
    """Per message type, the fields IsMessage gives it (`m.field`, ToProposer(m) expanded)."""
    body = re.search(r"^IsMessage\(m\) ==\n(.*?)\n\n", SPEC_TEXT, re.MULTILINE | re.DOTALL)
    to_proposer = re.search(r"^ToProposer\(m\) == (.*)$", SPEC_TEXT, re.MULTILINE)
    assert body and to_proposer, "IsMessage or ToProposer not found in the spec"
    fields: dict[str, set[str]] = {}
    for disjunct in body.group(1).split("\\/")[1:]:
        kind = re.search(r'm\.type = "(\w+)"', disjunct)
        assert kind, f"an IsMessage disjunct without a type: {disjunct!r}"
        names = set(re.findall(r"\bm\.(\w+)", disjunct))
        if "ToProposer(m)" in disjunct:
            names |= set(re.findall(r"\bm\.(\w+)", to_proposer.group(1)))
        fields[kind.group(1)] = names
    return fields


def test_spec_message_fields_parse_as_documented() -> None:
    """Spec IsMessage, parsed: the parser reads the shape impl/wire.py's table documents."""
    fields = spec_message_fields()
    assert fields["GreetingResponse"] == {"type", "from", "to", "term"}
    assert fields["AppendRequest"] == {"type", "term", "lsn", "entries", "commit"}


def test_spec_variables_are_exactly_the_spec_node_variables() -> None:
    """Spec prop_vars and acc_vars: SPEC_VARIABLES names every variable a node owns, no other."""
    assert set(SPEC_VARIABLES) == spec_tuple("prop_vars") | spec_tuple("acc_vars")


# ---------------------------------------------------------------------------------------------
# position, history_view, wal_terms
# ---------------------------------------------------------------------------------------------


def test_position_maps_the_wal_start_to_one() -> None:
    """Abstraction line 1: byte LSN wal_start is spec position 1 ("nothing"), each byte one entry."""
    assert position(START, START) == 1
    assert position(START + 5, START) == 6
    assert position(0, 0) == 1


def test_history_view_is_the_spec_record_sequence_in_positions() -> None:
    """Spec IsHistory's records [term, lsn] with the sentinel at position 1 (InitHistory)."""
    view = history_view(h((0, START), (1, START), (2, START + 5)))
    assert view == [{"term": 0, "lsn": 1}, {"term": 1, "lsn": 1}, {"term": 2, "lsn": 6}]
    assert history_view(h((0, 7))) == [{"term": 0, "lsn": 1}]


def test_wal_terms_examples() -> None:
    """Abstraction line 2 (spec TermAt per entry, run-length encoded): worked examples."""
    history = h((0, 0), (1, 0), (3, 3))
    assert wal_terms(history, 0, 5) == [[1, 3], [3, 2]]  # term 0 starts where 1 does: no run
    assert wal_terms(history, 0, 0) == []
    assert wal_terms(history, 0, 2) == [[1, 2]]  # switches above end are ignored
    assert wal_terms(history, 2, 4) == [[1, 1], [3, 1]]  # clipped on both sides
    assert wal_terms(history, 4, 9) == [[3, 5]]  # the last term runs on to the end
    assert wal_terms(history, 3, 3) == []


def test_wal_terms_switches_sharing_an_lsn() -> None:
    """Spec TermAt with switches at one LSN: the last one's term; the others have no run."""
    history = h((0, 10), (1, 10), (2, 12), (3, 12), (4, 12))
    assert wal_terms(history, 10, 15) == [[1, 2], [4, 3]]


def test_wal_terms_merges_adjacent_runs_of_one_term() -> None:
    """Abstraction line 2: runs of one term merge (only an ill-formed history, not IsHistory, has them)."""
    assert wal_terms(h((0, 0), (1, 0), (1, 3)), 0, 5) == [[1, 5]]


@st.composite
def history_and_range(draw: st.DrawFn) -> tuple[History, int, int]:
    """A well-formed history (spec IsHistory) and a range [begin, end) of its WAL."""
    start = draw(st.integers(0, 40))
    switches = [TermSwitch(term=0, lsn=start)]
    for term in sorted(draw(st.sets(st.integers(1, 8), max_size=5))):
        switches.append(TermSwitch(term=term, lsn=switches[-1].lsn + draw(st.integers(0, 5))))
    end = start + draw(st.integers(0, switches[-1].lsn - start + 6))
    begin = start + draw(st.integers(0, end - start))
    return tuple(switches), begin, end


@FAST
@given(history_and_range())
def test_wal_terms_expands_back_to_term_at_of_every_byte(case: tuple[History, int, int]) -> None:
    """Abstraction line 2: wal_terms expands to TermAt(h, l) for each l in [begin, end), runs canonical."""
    history, begin, end = case
    runs = wal_terms(history, begin, end)
    expanded = [term for term, count in runs for _ in range(count)]
    assert expanded == [term_at(history, lsn) for lsn in range(begin, end)]
    assert all(count > 0 for _, count in runs)
    assert all(a[0] != b[0] for a, b in zip(runs, runs[1:]))


# ---------------------------------------------------------------------------------------------
# message_view
# ---------------------------------------------------------------------------------------------

HISTORY = h((0, START), (1, START), (2, START + 3))

SPEC_MESSAGES = [
    Greeting(proposer="p1"),
    GreetingResponse(acceptor="a1", proposer="p1", term=0),
    VoteRequest(proposer="p1", term=3),
    VoteResponse(
        acceptor="a1", proposer="p1", term=3, term_history=HISTORY, flush_lsn=START + 5, commit_lsn=START + 2
    ),
    ProposerElected(proposer="p1", term=3, term_history=HISTORY + h((3, START + 5))),
    AppendRequest(
        proposer="p1", term=2, begin_lsn=START + 2, end_lsn=START + 5, commit_lsn=START + 1, wal=b"xyz"
    ),
    AppendResponse(acceptor="a1", term=2, flush_lsn=START + 4, commit_lsn=START + 1),
]


def test_spec_messages_cover_every_spec_message_type() -> None:
    """Spec IsMessage's types are wire's MESSAGE_TYPES minus IMPLEMENTATION_ONLY, each tested here."""
    spec_types = set(spec_message_fields())
    assert spec_types == set(MESSAGE_TYPES) - IMPLEMENTATION_ONLY
    assert {type(m).__name__ for m in SPEC_MESSAGES} == spec_types


@pytest.mark.parametrize("msg", SPEC_MESSAGES, ids=lambda m: type(m).__name__)
def test_message_view_has_exactly_the_spec_fields(msg: Any) -> None:
    """Spec IsMessage: the view of each message has `type` and exactly its type's fields."""
    view = message_view(msg, START, HISTORY)
    assert view["type"] == type(msg).__name__
    assert set(view) == spec_message_fields()[view["type"]]


def test_message_view_values_are_in_positions() -> None:
    """Abstraction lines 1-2: spec message fields in positions; AppendRequest entries from TermAt."""
    views = {type(m).__name__: message_view(m, START, HISTORY) for m in SPEC_MESSAGES}
    assert views["Greeting"] == {"type": "Greeting", "from": "p1"}
    assert views["GreetingResponse"] == {"type": "GreetingResponse", "from": "a1", "to": "p1", "term": 0}
    assert views["VoteRequest"] == {"type": "VoteRequest", "from": "p1", "term": 3}
    records = [{"term": 0, "lsn": 1}, {"term": 1, "lsn": 1}, {"term": 2, "lsn": 4}]
    assert views["VoteResponse"] == {
        "type": "VoteResponse", "from": "a1", "to": "p1", "term": 3, "history": records, "flush": 6,
    }
    assert views["ProposerElected"] == {
        "type": "ProposerElected", "term": 3, "history": records + [{"term": 3, "lsn": 6}],
    }
    assert views["AppendRequest"] == {
        "type": "AppendRequest", "term": 2, "lsn": 3, "entries": [[1, 1], [2, 2]], "commit": 2,
    }
    assert views["AppendResponse"] == {"type": "AppendResponse", "from": "a1", "term": 2, "flush": 5}


def test_message_view_of_a_heartbeat_has_no_entries() -> None:
    """Spec SendAppend one past the WAL: an AppendRequest with no bytes has entries <<>>."""
    end = START + 5
    beat = AppendRequest(proposer="p1", term=2, begin_lsn=end, end_lsn=end, commit_lsn=end, wal=b"")
    assert message_view(beat, START, HISTORY)["entries"] == []


@pytest.mark.parametrize(
    "msg",
    [
        WalRead(proposer="p1", term=2, begin_lsn=START, end_lsn=START + 1),
        WalData(acceptor="a1", term=2, begin_lsn=START, end_lsn=START + 1, wal=b"x"),
    ],
    ids=lambda m: type(m).__name__,
)
def test_message_view_refuses_implementation_only_messages(msg: Any) -> None:
    """Abstraction line 4: WalRead/WalData are not spec messages and have no view."""
    with pytest.raises(TypeError, match="not a spec message"):
        message_view(msg, START, HISTORY)


# ---------------------------------------------------------------------------------------------
# Tracer
# ---------------------------------------------------------------------------------------------

EVENT_KEYS = {"lc", "node", "action", "args", "state", "sent", "recv"}


def test_tracer_lamport_clock_is_max_of_own_and_received_plus_one() -> None:
    """Lamport clock: lc = max(own lc, the received message's lc) + 1."""
    events: list[dict[str, Any]] = []
    tracer = Tracer("a1", START, events.append)
    tracer.event("Flush", {})
    assert tracer.lc == 1
    tracer.event("Vote", {}, recv=MsgMeta("p1:4", 10))
    assert tracer.lc == 11
    tracer.event("AcceptElected", {}, recv=MsgMeta("p1:5", 3))
    assert tracer.lc == 12
    assert [e["lc"] for e in events] == [1, 11, 12]
    assert [e["recv"] for e in events] == [None, "p1:4", "p1:5"]


def test_tracer_stamps_sends_with_increasing_ids_and_the_event_clock() -> None:
    """Trace `sent`: ids "<node>:<n>" count up across events; meta.lc is the sending event's clock."""
    events: list[dict[str, Any]] = []
    tracer = Tracer("p1", START, events.append)
    greet = Greeting(proposer="p1")
    first = tracer.event("RestartProposer", {}, [Send("a1", greet), Send("a2", greet)])
    ask = Send("a1", VoteRequest(proposer="p1", term=1))
    second = tracer.event("StartCampaign", {}, [ask], recv=MsgMeta("a1:1", 5))
    assert [s.meta for s in first] == [MsgMeta("p1:1", 1), MsgMeta("p1:2", 1)]
    assert [s.meta for s in second] == [MsgMeta("p1:3", 6)]
    assert [(s.to, s.msg) for s in first] == [("a1", greet), ("a2", greet)]
    assert events[0]["sent"] == [
        {"id": "p1:1", "to": "a1", "msg": {"type": "Greeting", "from": "p1"}},
        {"id": "p1:2", "to": "a2", "msg": {"type": "Greeting", "from": "p1"}},
    ]
    vote_request = {"type": "VoteRequest", "from": "p1", "term": 1}
    assert events[1]["sent"] == [{"id": "p1:3", "to": "a1", "msg": vote_request}]


def test_tracer_event_has_exactly_the_documented_keys() -> None:
    """An event is {lc, node, action, args, state, sent, recv} and nothing else; args default {}."""
    events: list[dict[str, Any]] = []
    tracer = Tracer("a1", START, events.append)
    tracer.event("Flush", {"acc_flush": 3})
    tracer.event("NewEntry", {"prop_wal": []}, args={"entries": 5})
    assert all(set(e) == EVENT_KEYS for e in events)
    assert events[0] == {
        "lc": 1, "node": "a1", "action": "Flush", "args": {}, "state": {"acc_flush": 3},
        "sent": [], "recv": None,
    }
    assert events[1]["args"] == {"entries": 5}


def test_dumps_is_compact_deterministic_json() -> None:
    """Trace ndjson: dumps is compact and deterministic; JsonlWriter and read_events round-trip it."""
    def run() -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        tracer = Tracer("a1", START, events.append)
        reply = AppendResponse(acceptor="a1", term=2, flush_lsn=START + 4, commit_lsn=START)
        tracer.event("Flush", {"acc_term": 2, "acc_wal": [[1, 4]]}, [Send("p1", reply)], MsgMeta("p1:9", 4))
        return events

    line = dumps(run()[0])
    assert line == dumps(run()[0])
    assert " " not in line and "\n" not in line
    assert line.startswith('{"lc":5,"node":"a1","action":"Flush","args":{},"state":{"acc_term":2,')
    assert json.loads(line) == run()[0]
    stream = io.StringIO()
    JsonlWriter(stream)(run()[0])
    assert stream.getvalue() == line + "\n"
    assert read_events(["", stream.getvalue(), "  \n"]) == run()


# ---------------------------------------------------------------------------------------------
# End to end: the cores' trace of an election and one commit
# ---------------------------------------------------------------------------------------------

ACCEPTORS = ("a1", "a2", "a3")


class Cluster:
    """One proposer and three acceptors driven by hand: a FIFO network, instant disks."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.proposer = ProposerCore("p1", ACCEPTORS, 0, tracer=Tracer("p1", 0, self.events.append))
        self.acceptors = {a: AcceptorCore.fresh(a, 0, Tracer(a, 0, self.events.append)) for a in ACCEPTORS}
        self.network: deque[tuple[str, Send]] = deque()  # (sender, send)

    def from_proposer(self, effects: tuple) -> None:
        """Run a proposer's effects: only its sends matter here."""
        self.network.extend(("p1", e) for e in effects if isinstance(e, Send))

    def from_acceptor(self, name: str, effects: tuple) -> None:
        """Run an acceptor's effects; its disk completes every persist and flush at once."""
        core = self.acceptors[name]
        for effect in effects:
            if isinstance(effect, Send):
                self.network.append((name, effect))
            elif isinstance(effect, PersistControl):
                self.from_acceptor(name, core.on_persisted())
            elif isinstance(effect, Flush):
                self.from_acceptor(name, core.on_flushed())
            elif isinstance(effect, SendWal):
                raise AssertionError(f"nothing to fetch on an empty WAL: {effect}")
            elif isinstance(effect, Close):
                raise AssertionError(f"a correct proposer's message refused: {effect}")
            # WriteWal, TruncateWal: no disk here.

    def step(self) -> None:
        """Deliver the oldest message in the network."""
        sender, send = self.network.popleft()
        if sender == "p1":
            self.from_acceptor(send.to, self.acceptors[send.to].receive("p1", send.msg, send.meta))
        else:
            self.from_proposer(self.proposer.receive(sender, send.msg, send.meta))

    def run(self, until: Callable[[], bool], limit: int = 200) -> None:
        """Deliver messages until `until()` holds."""
        for _ in range(limit):
            if until():
                return
            assert self.network, "the network went quiet before the goal"
            self.step()
        raise AssertionError("no progress within the step limit")


@pytest.fixture(scope="module")
def committed_run() -> Cluster:
    """p1 wins term 1 on a fresh cluster, appends "hello" and commits it."""
    c = Cluster()
    p = c.proposer
    c.from_proposer(p.start())
    for a in ACCEPTORS:
        c.from_proposer(p.on_connected(a))
    c.run(lambda: p.phase == "leader")
    end, effects = p.new_entry(b"hello")
    assert end == 5
    c.from_proposer(effects)
    c.run(lambda: p.commit_lsn == 5)
    c.run(lambda: not c.network)  # deliver what is left: the last appends and acks
    return c


def test_trace_states_hold_exactly_each_node_spec_variables(committed_run: Cluster) -> None:
    """DESIGN §5 / spec prop_vars, acc_vars: an event's state is exactly the node's variables."""
    prop = {v for v in SPEC_VARIABLES if v.startswith("prop_")}
    acc = {v for v in SPEC_VARIABLES if v.startswith("acc_")}
    assert {e["node"] for e in committed_run.events} == {"p1", *ACCEPTORS}
    for event in committed_run.events:
        assert set(event) == EVENT_KEYS
        assert set(event["state"]) == (prop if event["node"] == "p1" else acc), event


def test_trace_every_receive_pairs_with_an_earlier_send(committed_run: Cluster) -> None:
    """Spec msgs, rebuilt: every recv id is the sent id of an earlier event; sent ids are unique."""
    sent: set[str] = set()
    for event in committed_run.events:
        if event["recv"] is not None:
            assert event["recv"] in sent, event
        ids = [s["id"] for s in event["sent"]]
        assert not sent & set(ids), event
        sent |= set(ids)


def test_trace_proposer_actions_follow_the_spec_election(committed_run: Cluster) -> None:
    """Spec RestartProposer, CollectTerm x2, StartCampaign, CollectVote x2, BecomeLeader, then streaming."""
    actions = [e["action"] for e in committed_run.events if e["node"] == "p1"]
    campaign = actions.index("StartCampaign")
    elected = actions.index("BecomeLeader")
    assert actions[0] == "RestartProposer"
    assert actions[1:campaign] == ["CollectTerm"] * 2  # a quorum of 3 is 2; the third is late
    assert actions[campaign + 1 : elected] == ["CollectVote"] * 2
    assert set(actions[elected + 1 :]) == {"NewEntry", "SendAppend", "CollectAck"}
    assert actions.index("NewEntry") < actions.index("SendAppend")


def test_trace_final_acceptor_wal_is_the_committed_entry(committed_run: Cluster) -> None:
    """Spec CommittedNeverLost: a quorum ends with acc_wal <<1,1,1,1,1>> ([[1, 5]]) and acc_flush 6."""
    last = {e["node"]: e["state"] for e in committed_run.events}
    holding = [a for a in ACCEPTORS if last[a]["acc_wal"] == [[1, 5]] and last[a]["acc_flush"] == 6]
    assert len(holding) >= 2, last
    assert last["p1"]["prop_commit"] == 6
    assert last["p1"]["prop_wal"] == [[1, 5]]


# ---------------------------------------------------------------------------------------------
# Resuming a trace after a restart
# ---------------------------------------------------------------------------------------------


def _trace_file(path: Path, events: int, sends_every: int) -> None:
    lines = []
    for i in range(events):
        sent = [{"id": f"p1:{i}", "to": "a1", "msg": {}}] if i % sends_every == 0 else []
        lines.append(json.dumps({"lc": i + 1, "sent": sent, "pad": "x" * (i % 300)}))
    path.write_text("\n".join(lines) + "\n\n")


@pytest.mark.parametrize("events, sends_every", [(5000, 7), (3, 5), (1, 1)])
def test_resume_takes_the_clock_and_the_last_id_from_the_tail(tmp_path: Path, events: int, sends_every: int) -> None:
    path = tmp_path / "p1.ndjson"
    _trace_file(path, events, sends_every)
    tracer = resume_tracer("p1", 0, path, io.StringIO())
    assert tracer.lc == events
    assert tracer._sent == max(i for i in range(events) if i % sends_every == 0)


def test_resume_of_an_empty_trace_starts_at_zero(tmp_path: Path) -> None:
    path = tmp_path / "p1.ndjson"
    path.write_text("")
    tracer = resume_tracer("p1", 0, path, io.StringIO())
    assert (tracer.lc, tracer._sent) == (0, 0)


def test_resume_refuses_a_damaged_tail(tmp_path: Path) -> None:
    path = tmp_path / "p1.ndjson"
    _trace_file(path, 10, 3)
    with path.open("a") as file:
        file.write('{"lc": 11, "sent": [{"id"\n')
    with pytest.raises(CorruptStorage, match="line 1 from the end is not JSON"):
        resume_tracer("p1", 0, path, io.StringIO())
