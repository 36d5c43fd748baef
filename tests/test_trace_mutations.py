"""Trace mutations: edit one event or one field of an accepted run; the checker must agree
with a prediction made from the original run.

Theory of operation
===================

Each test takes a copy of an accepted scenario run (traces/accepted/scenarios/, small enough
to replay in a few milliseconds), edits one node's ndjson file once, and runs `check_run`.
The oracle predicts, from the *original* run and the spec alone (never from the checker's
verdict on the mutant), either "accepted" or the file:line of the first rejected event, and
the test asserts the checker says exactly that.

The oracle's tools:

- `Corpus`: the original run in merged order (by (lc, node), stable in file order: the
  documented merge), and for each event the spec's state of its node before it, the spec's
  network before it, and the messages its step puts in the network (`produced`).  Building it
  replays the run once with `step` and asserts every event is a spec step whose logged sends
  are among the messages that step itself produces (F1).  F1 is what lets the oracle reason
  locally: a message a receive consumes is in the network because its own sender's step put
  it there, whatever happens to unrelated events.
- `step`: the spec's machine (conformance/machine.py) applied to one logged event from a given
  node state: enabled, and reaching the logged state?  `allowed` adds the network: the
  consumed message is in it, and the logged sends are in it afterwards.  (It undoes the
  abstraction function of impl/trace.py itself, independently of conformance/replay.py.)

Why each prediction holds is written beside the test.  Two facts recur: (1) events before
the mutated one in merged order are unchanged, so the checker reaches it in the original
state; (2) when every event's step is a spec step, the invariants and the refinement hold by
themselves (they are invariants of the spec, checked by TLC), so the oracle only checks steps.
A few cases whose outcome depends on a chain of further steps are excluded (`assume`), each
with its reason.
"""

from __future__ import annotations

import copy
import functools
import json
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs
import hypothesis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from conformance import machine as M
from conformance.replay import check_run
from conformance.seq import Terms
from conformance.tlc import Record

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "traces" / "accepted" / "scenarios"
RUNS = sorted(p.name for p in SCENARIOS.iterdir())
PHASES = ("greeting", "campaign", "leader")

Key = tuple[str, int]  # (node, index in its file); the line is index + 1

MUTATIONS = settings(
    max_examples=40,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


# ---------------------------------------------------------------------------------------------
# The spec, applied to logged events (the oracle's own reading of impl/trace.py)
# ---------------------------------------------------------------------------------------------


def spec_value(name: str, value: Any) -> Any:
    """A logged state variable as the spec's value (abstraction lines 1-2, 5)."""
    if name.endswith("history"):  # also a message's `history`
        return tuple(Record(term=e["term"], lsn=e["lsn"]) for e in value)
    if name.endswith("_wal"):
        return Terms(t for t, n in value for _ in range(n))
    if name == "prop_heard":
        return frozenset(value)
    if name == "prop_acks":
        return Record(value)
    return value


def spec_state(state: dict[str, Any]) -> dict[str, Any]:
    return {k: spec_value(k, v) for k, v in state.items()}


def spec_msgs(msg: dict[str, Any]) -> frozenset[Record]:
    """The spec messages a logged message stands for (abstraction line 3)."""
    fields = dict(msg)
    if "history" in fields:
        fields["history"] = spec_value("history", fields["history"])
    if fields["type"] != "AppendRequest":
        return frozenset({Record(fields)})
    entries = [t for t, n in fields["entries"] for _ in range(n)]
    if not entries:
        return frozenset({Record(dict(fields, entries=()))})
    return frozenset(Record(dict(fields, lsn=fields["lsn"] + i, entries=(t,))) for i, t in enumerate(entries))


@attrs.frozen
class Step:
    """What the spec makes of one logged event (see `step`)."""

    ok: bool  # every spec step enabled and the node's state the logged one
    state: dict[str, Any]  # the spec's state of the node after
    consumed: frozenset[Record]  # the messages the step needs in the network
    produced: frozenset[Record]  # the messages it adds


def step(model: M.Model, node: str, pre: dict[str, Any], event: dict[str, Any], msg: dict[str, Any] | None) -> Step:
    """The spec's step(s) for `event` from the node's state `pre`, consuming `msg`."""
    s = M.init(model).with_(msgs=frozenset())
    s = s.with_(**{k: Record({**dict(getattr(s, k).items()), node: v}) for k, v in pre.items()})
    action, args = event["action"], event["args"]
    consumed = spec_msgs(msg) if msg is not None else frozenset()
    if action == "AnswerGreeting" and msg is None:  # a stale request: the Greeting is the argument
        consumed = frozenset({Record(type="Greeting", **{"from": args["from"]})})
    # AcceptAppend takes the k one-entry messages in order of position.
    messages = sorted(consumed, key=lambda m: m.get("lsn", 0))
    calls: list[tuple[Any, ...]] = {
        "StartCampaign": [()], "BecomeLeader": [()], "Flush": [()],
        "NewEntry": [()] * args.get("entries", 1),
        "SendAppend": [(args.get("l", 0) + i,) for i in range(max(args.get("entries", 1), 1))],
        "RestartAcceptor": [(event["state"].get("acc_flush", 1), event["state"].get("acc_commit", 1))],
    }.get(action, [(m,) for m in messages])
    enabled = action in M.ACTIONS and action != "LoseMessage"
    if action == "RestartProposer":
        s = M.RestartProposer(model, s, node)
    elif enabled:
        if action in ("CollectTerm", "CollectVote", "CollectAck", "Vote", "AcceptElected", "AnswerGreeting"):
            enabled = len(messages) == 1
        for call in calls if enabled else ():
            s2 = M.ACTIONS[action](model, s, node, *call)
            if isinstance(s2, M.Disabled):
                enabled = False
                break
            s = s2
    after = {k: getattr(s, k)[node] for k in pre}
    ok = enabled and after == spec_state(event["state"])
    return Step(ok, after, consumed, frozenset(s.msgs))


def advance(network: frozenset[Record], event: dict[str, Any], produced: frozenset[Record]) -> frozenset[Record]:
    """The network after `event`: a RestartProposer drops what is addressed to its node."""
    if event["action"] == "RestartProposer":
        network = frozenset(m for m in network if not M.AddressedTo(m, event["node"]))
    return network | produced


def logged_sends(event: dict[str, Any]) -> frozenset[Record]:
    return frozenset().union(*(spec_msgs(s["msg"]) for s in event["sent"]))


# ---------------------------------------------------------------------------------------------
# The original run
# ---------------------------------------------------------------------------------------------


@attrs.frozen
class Corpus:
    dir: Path
    model: M.Model
    files: dict[str, list[dict[str, Any]]]  # node -> its events, in file order
    order: list[Key]  # merged order (LoseMessage events left out: they are not replayed)
    pre: dict[Key, dict[str, Any]]
    net: dict[Key, frozenset[Record]]  # the network before the event
    produced: dict[Key, frozenset[Record]]
    sender: dict[str, Key]  # message id -> the event that sent it
    receivers: dict[str, list[Key]]  # message id -> the events consuming it, in merged order

    def event(self, key: Key) -> dict[str, Any]:
        return self.files[key[0]][key[1]]

    def message(self, msg_id: str | None) -> dict[str, Any] | None:
        if msg_id is None:
            return None
        node, index = self.sender[msg_id]
        return next(s["msg"] for s in self.files[node][index]["sent"] if s["id"] == msg_id)

    def addressee(self, msg_id: str) -> str:
        node, index = self.sender[msg_id]
        return next(s["to"] for s in self.files[node][index]["sent"] if s["id"] == msg_id)

    def pos(self, key: Key) -> int:
        return self.order.index(key)

    def between(self, lo: tuple[int, str], hi: tuple[int, str]) -> list[Key]:
        """The events whose (lc, node) lies strictly between lo and hi, in merged order."""
        return [k for k in self.order if lo < (self.event(k)["lc"], k[0]) < hi]

    def allowed(
        self, key: Key, pre: dict[str, Any], net: frozenset[Record], event: dict[str, Any], msg: dict[str, Any] | None
    ) -> Step | None:
        """The step if `event` (at `key`'s node) is a spec step from `pre` in `net`, else None."""
        s = step(self.model, key[0], pre, event, msg)
        ok = s.ok and s.consumed <= net and logged_sends(event) <= advance(net, event, s.produced)
        return s if ok else None


@functools.cache
def corpus(name: str) -> Corpus:
    run = SCENARIOS / name
    cluster = json.loads((run / "run.json").read_text())["cluster"]
    model = M.Model(tuple(sorted(cluster["proposers"])), tuple(sorted(cluster["acceptors"])))
    files = {
        p.stem: [json.loads(line) for line in p.read_text().splitlines()]
        for p in sorted(run.glob("*.ndjson"))
        if p.name not in ("all.ndjson", "net.ndjson")
    }
    keys = [(node, i) for node in sorted(files) for i in range(len(files[node]))]
    order = sorted(keys, key=lambda k: (files[k[0]][k[1]]["lc"], k[0]))
    sender = {s["id"]: k for k in keys for s in files[k[0]][k[1]]["sent"]}
    receivers: dict[str, list[Key]] = {}
    for k in order:
        if files[k[0]][k[1]]["recv"] is not None:
            receivers.setdefault(files[k[0]][k[1]]["recv"], []).append(k)
    c = Corpus(run, model, files, order, {}, {}, {}, sender, receivers)
    init = M.init(model)
    state = {
        node: {v: getattr(init, v)[node] for v in files[node][0]["state"]} for node in files
    }
    net = init.msgs
    for k in order:
        event = c.event(k)
        c.pre[k], c.net[k] = state[k[0]], net
        s = c.allowed(k, state[k[0]], net, event, c.message(event["recv"]))
        assert s is not None, f"{name}: {k} is not a spec step"
        assert logged_sends(event) <= s.produced, f"{name}: {k} logs a send its step does not produce (F1)"
        c.produced[k] = s.produced
        state[k[0]], net = s.state, advance(net, event, s.produced)
    return c


# ---------------------------------------------------------------------------------------------
# Applying a mutation and checking the prediction
# ---------------------------------------------------------------------------------------------


def verdict(c: Corpus, node: str, lines: list[dict[str, Any]]) -> tuple[str, int] | None:
    """Check a copy of the run whose `node` file holds `lines`: None or the rejected file:line."""
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / c.dir.name
        shutil.copytree(c.dir, run, ignore=shutil.ignore_patterns("all.ndjson"))
        (run / f"{node}.ndjson").write_text("".join(json.dumps(e) + "\n" for e in lines))
        result = check_run([run])
    if result.verdict == "accepted":
        return None
    d = result.divergence
    return Path(d.event.file).stem, d.event.line


def expect(c: Corpus, node: str, lines: list[dict[str, Any]], predicted: tuple[str, int] | None) -> None:
    if hypothesis.currently_in_test_context():  # the statistics say how many mutants are allowed
        hypothesis.event("predicted: accepted" if predicted is None else "predicted: rejected")
    got = verdict(c, node, lines)
    assert got == predicted, f"{c.dir.name}: predicted {predicted or 'accepted'}, checker says {got or 'accepted'}"


def first(c: Corpus, keys: Iterable[Key]) -> Key | None:
    return min(keys, key=c.pos, default=None)


def line(key: Key | None) -> tuple[str, int] | None:
    return None if key is None else (key[0], key[1] + 1)


def perturb(value: Any, draw: Callable[[Any], Any], names: tuple[str, ...]) -> Any:
    """`value` with one leaf changed: a number by a small delta, a phase or node id swapped."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + draw(st.sampled_from([-2, -1, 1, 2, 7]))
    if isinstance(value, str):
        pool = PHASES if value in PHASES else names
        return draw(st.sampled_from([v for v in pool if v != value]))
    if isinstance(value, list) and value:
        i = draw(st.integers(0, len(value) - 1))
        return [perturb(v, draw, names) if j == i else v for j, v in enumerate(value)]
    if isinstance(value, dict) and value:
        k = draw(st.sampled_from(sorted(value)))
        return {j: perturb(v, draw, names) if j == k else v for j, v in value.items()}
    assume(False)  # nothing to perturb (an empty list or map)


def names(c: Corpus) -> tuple[str, ...]:
    return (*c.model.proposers, *c.model.acceptors, "x9")  # x9: a node not in the cluster


@st.composite
def events(draw: Callable[[Any], Any], where: Callable[[Corpus, Key], bool] = lambda c, k: True) -> tuple[Corpus, Key]:
    c = corpus(draw(st.sampled_from(RUNS)))
    keys = [k for k in c.order if where(c, k)]
    assume(keys)
    return c, draw(st.sampled_from(keys))


def edited(c: Corpus, node: str) -> list[dict[str, Any]]:
    return copy.deepcopy(c.files[node])


# ---------------------------------------------------------------------------------------------
# Delete, duplicate, swap
# ---------------------------------------------------------------------------------------------


@MUTATIONS
@given(st.data())
def test_delete_an_event(data):
    """Deleting e: a receive of a message e sent now names an id nobody sent (rejected there).
    The node's next event is judged from the state before e: rejected unless the spec reaches
    its logged state from there too.  Nothing else reads what e did (F1), so if neither
    happens the run is allowed: e changed nothing that lasts, and its messages were lost."""
    c, key = data.draw(events())
    node, i = key
    e = c.event(key)
    lines = edited(c, node)
    del lines[i]
    candidates = [r for s in e["sent"] for r in c.receivers.get(s["id"], ())]
    if i + 1 < len(c.files[node]):
        nxt = (node, i + 1)
        # The network before it, without what e produced or dropped.
        net = M.init(c.model).msgs
        for k in c.order[: c.pos(nxt)]:
            if k != key:
                net = advance(net, c.event(k), c.produced[k])
        s = c.allowed(nxt, c.pre[key], net, c.event(nxt), c.message(c.event(nxt)["recv"]))
        if s is None:
            candidates.append(nxt)
        else:
            # Resynchronised; excluded if its step now produces less (a reply built from the
            # state e changed), since a later receive could miss it.
            assume(s.produced >= c.produced[nxt])
    rejected = first(c, candidates)
    if rejected is not None and rejected[0] == node:
        rejected = (node, rejected[1] - 1)  # the node's later lines moved up by one
    expect(c, node, lines, line(rejected))


@MUTATIONS
@given(st.data())
def test_duplicate_an_event(data):
    """The copy has e's clock: it sorts right after e (same (lc, node), stable), and a node's
    clock must grow with each event, so the copy (line i + 2) is rejected, nothing before."""
    c, (node, i) = data.draw(events())
    lines = edited(c, node)
    lines.insert(i + 1, copy.deepcopy(lines[i]))
    expect(c, node, lines, (node, i + 2))


@MUTATIONS
@given(st.data())
def test_swap_two_whole_lines(data):
    """Swapping two adjacent lines of a node, clocks and all, changes no (lc, node): the merged
    order, hence the behaviour, is the original one, so the run is accepted (file order
    carries no meaning; the clocks do)."""
    c, (node, i) = data.draw(events(lambda c, k: k[1] + 1 < len(c.files[k[0]])))
    lines = edited(c, node)
    lines[i], lines[i + 1] = lines[i + 1], lines[i]
    expect(c, node, lines, None)


@MUTATIONS
@given(st.data())
def test_swap_two_events_keeping_the_clocks(data):
    """Swapping e1 and e2 (adjacent, one node) but not their clocks: e2 now happens at e1's
    time, so (1) if e2 consumes a message sent in between (B, the events between their
    clocks), it is rejected at line i + 1; (2) else it must be a spec step from e1's pre-state,
    or it is rejected there; (3) a receive in B of a message e1 sent names an id not yet sent;
    (4) e1 must be a step from e2's logged state, or line i + 2 is rejected.  If all pass and
    e1's logged state equals e2's, the node is back in sync: accepted."""
    c, (node, i) = data.draw(events(lambda c, k: k[1] + 1 < len(c.files[k[0]])))
    k1, k2 = (node, i), (node, i + 1)
    e1, e2 = c.event(k1), c.event(k2)
    between = c.between((e1["lc"], node), (e2["lc"], node))
    # A RestartProposer drops the messages addressed to its node: moving one, or moving a send
    # across one, changes the network for receives far later; not predicted here.
    assume("RestartProposer" not in {c.event(k)["action"] for k in [k1, k2, *between]})
    lines = edited(c, node)
    lines[i], lines[i + 1] = {**e2, "lc": e1["lc"]}, {**e1, "lc": e2["lc"]}
    if e2["recv"] is not None and c.sender.get(e2["recv"]) in between:
        return expect(c, node, lines, line(k1))
    s2 = c.allowed(k1, c.pre[k1], c.net[k1], e2, c.message(e2["recv"]))
    if s2 is None:
        return expect(c, node, lines, line(k1))
    receives = [r for s in e1["sent"] for r in c.receivers.get(s["id"], ()) if r in between]
    if receives:
        return expect(c, node, lines, line(first(c, receives)))
    net = c.net[k1] | s2.produced
    for k in between:
        net = advance(net, c.event(k), c.produced[k])
    s1 = c.allowed(k2, s2.state, net, e1, c.message(e1["recv"]))
    if s1 is None:
        return expect(c, node, lines, line(k2))
    # Both steps allowed: accepted if the node ends where it did, with no message less.
    assume(spec_state(e1["state"]) == spec_state(e2["state"]))
    assume(s1.produced | s2.produced >= c.produced[k1] | c.produced[k2])
    expect(c, node, lines, None)


# ---------------------------------------------------------------------------------------------
# Perturb one field
# ---------------------------------------------------------------------------------------------


@MUTATIONS
@given(st.data())
def test_perturb_a_state_variable(data):
    """The original state is the spec's successor, so any other value is not: rejected at e."""
    c, key = data.draw(events())
    e = c.event(key)
    var = data.draw(st.sampled_from(sorted(e["state"])))
    value = perturb(e["state"][var], data.draw, names(c))
    assume(spec_value(var, value) != spec_value(var, e["state"][var]))
    lines = edited(c, key[0])
    lines[key[1]]["state"][var] = value
    expect(c, key[0], lines, line(key))


@MUTATIONS
@given(st.data())
def test_perturb_an_argument(data):
    """NewEntry's count, SendAppend's position or count, AnswerGreeting's proposer: rejected at
    e unless the spec's step with the new arguments is enabled, reaches the logged state and
    puts every logged send in the network.  If it is, the run is accepted: the step's extra
    messages only enlarge the network, and no receive relies on a message it lacks (F1).
    (AnswerGreeting with a received Greeting answers that message's sender, so its `from`
    argument is redundant and does not matter to the spec.)"""
    c, key = data.draw(events(lambda c, k: bool(c.event(k)["args"])))
    e = c.event(key)
    arg = data.draw(st.sampled_from(sorted(e["args"])))
    mutant = copy.deepcopy(e)
    mutant["args"][arg] = perturb(e["args"][arg], data.draw, names(c))
    lines = edited(c, key[0])
    lines[key[1]] = mutant
    s = c.allowed(key, c.pre[key], c.net[key], mutant, c.message(e["recv"]))
    expect(c, key[0], lines, None if s is not None else line(key))


@MUTATIONS
@given(st.data())
def test_perturb_a_sent_message(data):
    """A field of a message e sent: the spec's step of e is unchanged, so e is rejected iff the
    new message is not in the network after it.  Otherwise each receive of it, in merged
    order, must still be a spec step with the new content, or it is rejected.  The envelope's
    `to`: the first receive of it is rejected (the message was not sent to that node)."""
    c, key = data.draw(events(lambda c, k: bool(c.event(k)["sent"])))
    e = c.event(key)
    j = data.draw(st.integers(0, len(e["sent"]) - 1))
    sent = e["sent"][j]
    receives = c.receivers.get(sent["id"], [])
    lines = edited(c, key[0])
    field = data.draw(st.sampled_from(["to", *sorted(f for f in sent["msg"] if f != "type")]))
    if field == "to":
        lines[key[1]]["sent"][j]["to"] = perturb(sent["to"], data.draw, names(c))
        return expect(c, key[0], lines, line(first(c, receives)))
    msg = dict(sent["msg"], **{field: perturb(sent["msg"][field], data.draw, names(c))})
    lines[key[1]]["sent"][j]["msg"] = msg
    if not spec_msgs(msg) <= advance(c.net[key], e, c.produced[key]):
        return expect(c, key[0], lines, line(key))
    for r in receives:
        s = c.allowed(r, c.pre[r], c.net[r], c.event(r), msg)
        if s is None:
            return expect(c, key[0], lines, line(r))
        assume(s.produced >= c.produced[r])  # a receive that now produces less: not predicted
    expect(c, key[0], lines, None)


@MUTATIONS
@given(st.data())
def test_perturb_the_received_message(data):
    """recv names another id: rejected at e if no earlier event sent it (a fresh id, one sent
    later, e's own) or it was sent to another node; else e must be a spec step consuming that
    message instead.  Messages are a set in the spec, so one whose content is identical is
    allowed, and so is any other the step treats alike."""
    c, key = data.draw(events(lambda c, k: c.event(k)["recv"] is not None))
    e = c.event(key)
    other = data.draw(st.sampled_from(sorted(set(c.sender) - {e["recv"]}) + ["p1:999"]))
    lines = edited(c, key[0])
    lines[key[1]]["recv"] = other
    sent_before = other in c.sender and c.pos(c.sender[other]) < c.pos(key)
    if not sent_before or c.addressee(other) != key[0]:
        return expect(c, key[0], lines, line(key))
    s = c.allowed(key, c.pre[key], c.net[key], e, c.message(other))
    if s is not None:
        assume(s.produced >= c.produced[key])  # a reply built from the other message: not predicted
    expect(c, key[0], lines, None if s is not None else line(key))


@MUTATIONS
@given(st.data())
def test_perturb_the_clock(data):
    """lc moved to lc' within [previous event's lc, next event's lc] of the node:

    - lc' = the previous lc: e sorts right after it and its clock does not grow: rejected at e;
    - earlier (lc' < lc): e overtakes the events B between; if it consumes a message one of
      them sent, rejected at e, else nothing it needs comes later: accepted;
    - later (lc' > lc): the events B between overtake e; a receive among them of a message e
      sent is rejected; else accepted, unless lc' = the next lc, whose clock then does not grow.
    """
    c, key = data.draw(events(lambda c, k: c.event(k)["action"] != "RestartProposer"))
    node, i = key
    e = c.event(key)
    events_of = c.files[node]
    lo = events_of[i - 1]["lc"] if i > 0 else 0
    hi = events_of[i + 1]["lc"] if i + 1 < len(events_of) else e["lc"] + 5
    lc = data.draw(st.sampled_from([v for v in range(lo, hi + 1) if v != e["lc"]]))
    lines = edited(c, node)
    lines[i]["lc"] = lc
    if lc == lo:
        return expect(c, node, lines, line(key))
    if lc < e["lc"]:
        overtaken = c.between((lc, node), (e["lc"], node))
        if e["recv"] is not None and c.sender[e["recv"]] in overtaken:
            return expect(c, node, lines, line(key))
        # A send overtaking a RestartProposer of its addressee would now be dropped by it.
        to = {s["to"] for s in e["sent"]}
        assume(not any(c.event(k)["action"] == "RestartProposer" and k[0] in to for k in overtaken))
        return expect(c, node, lines, None)
    overtaking = c.between((e["lc"], node), (lc, node))
    receives = [r for s in e["sent"] for r in c.receivers.get(s["id"], ()) if r in overtaking]
    if receives:
        return expect(c, node, lines, line(first(c, receives)))
    expect(c, node, lines, (node, i + 2) if i + 1 < len(events_of) and lc == hi else None)


# ---------------------------------------------------------------------------------------------
# Mutants the tests above found the checker mishandling, pinned
# ---------------------------------------------------------------------------------------------


def test_a_first_event_with_clock_0_is_rejected_there():
    """A node's clock starts at 0 and grows with each event, so lc 0 is never valid: the
    checker must reject a1's first event, not fail on it (it raised KeyError)."""
    c = corpus("election")
    lines = edited(c, "a1")
    lines[0]["lc"] = 0
    expect(c, "a1", lines, ("a1", 1))


def test_a_receive_of_a_message_of_another_type_is_rejected_there():
    """a1's AnswerGreeting (line 22) made to consume p1:10, an AppendRequest sent to a1
    earlier: AnswerGreeting's guard m.type = "Greeting" is false, so it is rejected there
    (the checker raised TypeError)."""
    c = corpus("proposer-crash-mid-recovery")
    assert c.message("p1:10")["type"] == "AppendRequest" and c.addressee("p1:10") == "a1"
    assert c.pos(c.sender["p1:10"]) < c.pos(("a1", 21))
    lines = edited(c, "a1")
    assert lines[21]["action"] == "AnswerGreeting"
    lines[21]["recv"] = "p1:10"
    expect(c, "a1", lines, ("a1", 22))
