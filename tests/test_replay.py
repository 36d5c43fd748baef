"""The trace replay checker (conformance/replay.py) and `paxwal check`."""

from __future__ import annotations

import json
import shutil
from functools import cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conformance import machine as M
from conformance.derived import (
    AppendNet,
    AppendRange,
    _concat,
    accept_appends,
    append_range,
    collect_ack,
    flush,
    logs,
    new_entries,
    quorum_flush,
    send_appends,
)
from conformance.replay import (
    _ACCEPTOR_FORMS,
    _PROPOSER_FORMS,
    _UNLOGGED,
    Event,
    TraceError,
    _extends,
    _logged_value,
    _model,
    _Replayer,
    check_run,
    load_events,
    replay,
    spec_messages,
)
from conformance.seq import Terms
from conformance.tlc import Record
from impl.cli import main
from impl.sim import run_seed
from naive_replay import naive_replay

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = sorted((ROOT / "traces" / "accepted" / "scenarios").iterdir())


@pytest.mark.parametrize("run", SCENARIOS, ids=[p.name for p in SCENARIOS])
def test_every_scenario_trace_is_accepted(run):
    result = check_run([run])
    assert result.verdict == "accepted", result.divergence and result.divergence.report()
    assert result.events > 0


@pytest.mark.parametrize("seed", range(6))
def test_simulator_runs_are_accepted(seed, tmp_path):
    """Faults, competing proposers, crashes: every event a step of the spec."""
    run_seed(seed, steps=500, out=tmp_path)
    result = check_run([tmp_path])
    assert result.verdict == "accepted", result.divergence and result.divergence.report()


def test_merge_respects_happens_before():
    events, run = load_events([ROOT / "traces" / "accepted" / "scenarios" / "figure8"])
    assert run is not None and run["cluster"]["acceptors"] == ["a1", "a2", "a3"]
    sent_at = {}
    for index, event in enumerate(events):
        for sent in event.data["sent"]:
            sent_at[sent["id"]] = index
        if event.data["recv"] is not None:
            assert sent_at[event.data["recv"]] < index
    per_node = {}
    for event in events:
        assert per_node.get(event.node, 0) < event.line
        per_node[event.node] = event.line


# ---------------------------------------------------------------------------------------
# Rejections: one event edited, the checker names it
# ---------------------------------------------------------------------------------------


def _edit(tmp_path: Path, scenario: str, node: str, pick, change) -> tuple[Path, int]:
    """Copy a scenario's trace and edit the first event of `node` that `pick` selects."""
    run = tmp_path / scenario
    shutil.copytree(ROOT / "traces" / "accepted" / "scenarios" / scenario, run)
    (run / "all.ndjson").unlink()
    path = run / f"{node}.ndjson"
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        event = json.loads(line)
        if pick(event):
            change(event)
            lines[number - 1] = json.dumps(event)
            path.write_text("\n".join(lines) + "\n")
            return run, number
    raise AssertionError("no event picked")


def _rejected_at(run: Path, node: str, line: int) -> str:
    result = check_run([run])
    assert result.verdict == "rejected"
    d = result.divergence
    assert (Path(d.event.file).name, d.event.line) == (f"{node}.ndjson", line)
    return d.report()


def test_a_logged_state_the_spec_does_not_reach_is_rejected(tmp_path):
    def change(e):
        e["state"]["acc_term"] += 1

    run, line = _edit(tmp_path, "election", "a1", lambda e: e["action"] == "Vote", change)
    report = _rejected_at(run, "a1", line)
    assert "acc_term: logged 2, spec 1" in report


def test_a_second_vote_in_a_term_is_rejected(tmp_path):
    """a1 voted for p1 in term 1; a forged event has it vote for p2 in term 1 too."""
    run = tmp_path / "split-vote"
    shutil.copytree(ROOT / "traces" / "accepted" / "scenarios" / "split-vote", run)
    (run / "all.ndjson").unlink()
    events, _ = load_events([run])
    p2_request = next(
        sent["id"] for e in events if e.node == "p2" and e.action == "StartCampaign"
        for sent in e.data["sent"] if sent["to"] == "a1" and sent["msg"]["term"] == 1
    )
    vote = next(e.data for e in events if e.node == "a1" and e.action == "Vote" and e.data["state"]["acc_term"] == 1)
    forged = json.loads(json.dumps(vote))
    forged["lc"] = max(e.data["lc"] for e in events) + 1
    forged["recv"] = p2_request
    forged["sent"][0]["id"] = "a1:999"
    forged["sent"][0]["to"] = "p2"
    forged["sent"][0]["msg"]["to"] = "p2"
    path = run / "a1.ndjson"
    lines = path.read_text().splitlines() + [json.dumps(forged)]
    path.write_text("\n".join(lines) + "\n")
    report = _rejected_at(run, "a1", len(lines))
    assert "Vote is not enabled" in report and "guard: VoteAllowed(a, m.term)" in report


def test_a_commit_without_a_quorum_is_rejected(tmp_path):
    def change(e):
        e["state"]["prop_commit"] += 1

    run, line = _edit(tmp_path, "election", "p1", lambda e: e["action"] == "CollectAck" and e["state"]["prop_commit"] == 1, change)
    report = _rejected_at(run, "p1", line)
    assert "prop_commit" in report


def test_a_message_never_sent_is_rejected(tmp_path):
    def change(e):
        e["recv"] = "a9:1"

    run, line = _edit(tmp_path, "election", "p1", lambda e: e["action"] == "CollectVote", change)
    assert "no earlier event sent" in _rejected_at(run, "p1", line)


def test_an_append_before_the_election_is_processed_is_rejected(tmp_path):
    """An acceptor that takes WAL in a term before processing its ProposerElected."""
    def change(e):
        e["action"] = "AcceptAppend"

    run, line = _edit(tmp_path, "election", "a1", lambda e: e["action"] == "AcceptElected", change)
    report = _rejected_at(run, "a1", line)
    assert "AcceptAppend is not enabled" in report or "ProposerElected" in report


def test_the_report_shows_guard_state_diff_and_window(tmp_path):
    def change(e):
        e["state"]["acc_flush"] = 1

    run, line = _edit(tmp_path, "election", "a2", lambda e: e["action"] == "Flush", change)
    report = _rejected_at(run, "a2", line)
    for part in ("REJECTED at", "accepted events", "event: a2 Flush", "state of a2 before:", "acc_flush: logged 1, spec 6", "events before it:", ">> "):
        assert part in report


def test_unreadable_input_is_a_trace_error(tmp_path):
    with pytest.raises(TraceError, match="no such file"):
        check_run([tmp_path / "missing"])
    bad = tmp_path / "x.ndjson"
    bad.write_text("{not json\n")
    with pytest.raises(TraceError, match="x.ndjson:1: not JSON"):
        check_run([bad])


def test_cli_check_exit_codes(capsys, tmp_path):
    assert main(["check", str(ROOT / "traces" / "accepted" / "scenarios" / "election")]) == 0
    assert "accepted: " in capsys.readouterr().out
    def change(e):
        e["state"]["acc_term"] += 1
    run, _ = _edit(tmp_path, "election", "a1", lambda e: e["action"] == "Vote", change)
    assert main(["check", str(run)]) == 1
    assert "REJECTED at" in capsys.readouterr().out
    assert main(["check", str(tmp_path / "nope")]) == 2


# ---------------------------------------------------------------------------------------
# Speed without weakening: the derived steps equal the machine's, the fast replay the naive
# one (tests/naive_replay.py: k single steps, Records, every invariant after every event)
# ---------------------------------------------------------------------------------------

MODEL = M.Model(("p1",), ("a1", "a2", "a3"))
TERMS = st.lists(st.tuples(st.integers(1, 3), st.integers(1, 3)), max_size=4).map(Terms.from_runs)
HISTORIES = st.lists(st.tuples(st.integers(0, 3), st.integers(1, 6)), min_size=1, max_size=3).map(
    lambda h: tuple(Record(term=t, lsn=l) for t, l in h)
)
PHASES = st.sampled_from(("greeting", "campaign", "leader"))


def _with(node: str, **values) -> M.State:
    s = M.init(MODEL)
    return s.with_(**{name: M._set(getattr(s, name), node, v) for name, v in values.items()})


def _singles(action, s: M.State, args_list):
    """Apply the machine's action once per args; (final state, first false conjunct or None)."""
    for args in args_list:
        t = M.ACTIONS[action](MODEL, s, *args)
        if isinstance(t, M.Disabled):
            return s, t.conjunct
        s = t
    return s, None


@settings(max_examples=300, deadline=None)
@given(phase=PHASES, term=st.integers(0, 3), wal=TERMS, k=st.integers(-1, 6))
def test_new_entries_is_k_new_entry_steps(phase, term, wal, k):
    s, disabled = _singles("NewEntry", _with("p1", prop_phase=phase, prop_term=term, prop_wal=wal), [("p1",)] * max(k, 0))
    batched = new_entries(phase, term, wal, k)
    if disabled:
        assert isinstance(batched, M.Disabled) and batched.conjunct == disabled
    else:
        assert batched == s.prop_wal["p1"] and tuple(batched) == tuple(s.prop_wal["p1"])


@settings(max_examples=300, deadline=None)
@given(phase=PHASES, term=st.integers(0, 3), wal=TERMS, commit=st.integers(1, 5), l=st.integers(-1, 14), k=st.integers(0, 6))
def test_send_appends_is_k_send_append_steps(phase, term, wal, commit, l, k):
    s0 = _with("p1", prop_phase=phase, prop_term=term, prop_wal=wal, prop_commit=commit)
    s, disabled = _singles("SendAppend", s0, [("p1", l + i) for i in range(max(k, 1))])
    batched = send_appends(phase, term, wal, commit, l, k)
    if disabled:
        assert isinstance(batched, M.Disabled) and batched.conjunct == disabled
    else:
        assert set(batched.records()) == s.msgs - s0.msgs
        assert len(batched.records()) == max(k, 1)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    acc_term=st.integers(0, 2), history=HISTORIES, wal=TERMS, flush_at=st.integers(1, 8), commit=st.integers(1, 8),
    m_term=st.integers(0, 2), lsn=st.integers(1, 12), entries=TERMS, m_commit=st.integers(1, 9),
)
def test_accept_appends_is_one_accept_append_per_message(acc_term, history, wal, flush_at, commit, m_term, lsn, entries, m_commit):
    m = AppendRange(m_term, lsn, entries, m_commit, not entries.runs)
    s0 = _with("a1", acc_term=acc_term, acc_history=history, acc_wal=wal, acc_flush=flush_at, acc_commit=commit)
    s, disabled = _singles("AcceptAppend", s0, [("a1", one) for one in m.records()])
    batched = accept_appends(acc_term, history, wal, flush_at, commit, m)
    if disabled:
        assert isinstance(batched, M.Disabled) and batched.conjunct == disabled
    else:
        assert batched == (s.acc_wal["a1"], s.acc_commit["a1"])


@settings(max_examples=300, deadline=None)
@given(acc_term=st.integers(0, 2), history=HISTORIES, wal=TERMS, flush_at=st.integers(1, 8))
def test_flush_is_the_machine_flush(acc_term, history, wal, flush_at):
    s0 = _with("a1", acc_term=acc_term, acc_history=history, acc_wal=wal, acc_flush=flush_at)
    t = M.Flush(MODEL, s0, "a1")
    derived = flush("a1", acc_term, history, wal, flush_at)
    if isinstance(t, M.Disabled):
        assert isinstance(derived, M.Disabled) and derived.conjunct == t.conjunct
    else:
        f, ack = derived
        assert f == t.acc_flush["a1"] and t.msgs - s0.msgs == ({ack} if ack else set())


@settings(max_examples=500, deadline=None)
@given(
    phase=PHASES, term=st.integers(0, 2), history=HISTORIES, wal=TERMS, commit=st.integers(1, 6), log=TERMS,
    acks=st.tuples(*[st.integers(0, 8)] * 3), m_type=st.sampled_from(("AppendResponse", "VoteResponse")),
    m_from=st.sampled_from(MODEL.acceptors), m_term=st.integers(0, 2), m_flush=st.integers(0, 9),
)
def test_collect_ack_is_the_machine_collect_ack(phase, term, history, wal, commit, log, acks, m_type, m_from, m_term, m_flush):
    acks = dict(zip(MODEL.acceptors, acks))
    s0 = _with("p1", prop_phase=phase, prop_term=term, prop_history=history, prop_wal=wal, prop_commit=commit, prop_acks=Record(acks))
    s0 = s0.with_(committed_log=log)
    m = Record(type=m_type, term=m_term, flush=m_flush, **{"from": m_from})
    t = M.CollectAck(MODEL, s0, "p1", m)
    derived = collect_ack(MODEL, phase, term, history, wal, acks, commit, log, m)
    if isinstance(t, M.Disabled):
        assert isinstance(derived, M.Disabled) and derived.conjunct == t.conjunct
    else:
        assert derived == (dict(t.prop_acks["p1"].items()), t.prop_commit["p1"], t.committed_log)


@settings(max_examples=300, deadline=None)
@given(acks=st.lists(st.integers(0, 9), min_size=1, max_size=7))
def test_quorum_flush_is_the_machine_quorum_flush(acks):
    model = M.Model(("p1",), tuple(f"a{i}" for i in range(len(acks))))
    assert quorum_flush(acks) == M.QuorumFlush(model, dict(zip(model.acceptors, acks)))


@settings(max_examples=500, deadline=None)
@given(history=HISTORIES, wal=TERMS)
def test_log_matches_history_by_prefix_is_the_machine_check(history, wal):
    r = _Replayer(MODEL)
    expected = wal == M.WalFromHistory(history, len(wal) + 1)
    assert r._matches_history(history, wal) == expected
    assert r._matches_history(history, wal) == expected  # from the cache
    own = M.WalFromHistory(history, 5)
    if len(own) == 4:  # a history whose WAL has the length asked for (not so when malformed)
        assert r._matches_history(history, own)


RANGES = st.builds(
    AppendRange, st.integers(1, 2), st.integers(1, 8),
    st.lists(st.tuples(st.integers(1, 2), st.integers(1, 3)), max_size=3).map(Terms.from_runs),
    st.integers(1, 2), st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(sent=st.lists(RANGES, max_size=8), asked=st.lists(RANGES, max_size=8))
def test_the_append_network_answers_as_a_set_of_records(sent, asked):
    net, records = AppendNet(), set()
    for m in sent:
        net.add(m)
        records |= set(m.records())
    for m in sent + asked:
        assert (m in net) == (set(m.records()) <= records), m


def test_a_logged_append_request_stands_for_spec_messages():
    msg = {"type": "AppendRequest", "term": 2, "lsn": 3, "entries": [[1, 2], [2, 1]], "commit": 1}
    assert set(append_range(msg).records()) == set(spec_messages(msg))
    beat = dict(msg, entries=[])
    assert set(append_range(beat).records()) == set(spec_messages(beat))
    assert append_range(dict(msg, extra=1)) is None and append_range(dict(msg, entries=[[1, 2.5]])) is None


@settings(max_examples=500, deadline=None)
@given(w=TERMS, more=TERMS, cut=st.integers(0, 8), other=TERMS, n=st.one_of(st.none(), st.integers(-6, 14)))
def test_starts_with_a_slice_is_is_prefix_of_the_slice(w, more, cut, other, n):
    for prefix in (other, _concat(w[:cut], more)):  # unrelated, and sharing a prefix with w
        sliced = tuple(prefix) if n is None else tuple(prefix)[:n]
        assert w.starts_with(prefix, n) == M.IsPrefix(sliced, tuple(w))


@settings(max_examples=300, deadline=None)
@given(w=TERMS, begin=st.integers(0, 14), end=st.integers(0, 16))
def test_a_segment_is_the_slice(w, begin, end):
    segment = w.segment(begin, end)
    assert tuple(segment) == tuple(w)[begin:end] and len(segment) == len(tuple(w)[begin:end])
    assert segment.runs == Terms(tuple(w)[begin:end]).runs  # merged runs, as every Terms keeps them


@settings(max_examples=300, deadline=None)
@given(old=TERMS, more=TERMS, cut=st.integers(0, 8), other=TERMS)
def test_extends_is_the_machine_refinement(old, more, cut, other):
    s = M.init(MODEL)
    for new in (old, other, _concat(old, more), _concat(old[:cut], more)):
        assert _extends(old, new) == M.refines(s.with_(committed_log=old), s.with_(committed_log=new))


_LOG_EDITS = ("none", "float count", "bool count", "split run", "extra field", "float lsn", "lsn", "term", "commit")


@settings(max_examples=300, deadline=None)
@given(m=RANGES, edit=st.sampled_from(_LOG_EDITS))
def test_a_message_logged_as_sent_is_the_sent_message(m, edit):
    msg = {"type": "AppendRequest", "term": m.term, "lsn": m.lsn, "entries": [[t, n] for t, n in m.terms.runs], "commit": m.commit}
    runs = msg["entries"]
    if edit == "float count" and runs:
        runs[0][1] = float(runs[0][1])
    elif edit == "bool count" and runs and runs[0][1] == 1:
        runs[0][1] = True
    elif edit == "split run" and runs and runs[0][1] > 1:
        runs[:1] = [[runs[0][0], 1], [runs[0][0], runs[0][1] - 1]]
    elif edit == "extra field":
        msg["to"] = "a1"
    elif edit in ("float lsn", "lsn", "term", "commit"):
        key = "lsn" if edit == "float lsn" else edit
        msg[key] = float(msg[key]) if edit == "float lsn" else msg[key] + 1
    if logs(msg, m):  # the quick test never says yes wrongly
        assert append_range(msg) == m
    if edit == "none" and m.heartbeat is not bool(m.terms.runs):  # and says yes as the trace logs it
        assert logs(msg, m)
    ack = Record(type="AppendResponse", term=m.term, flush=m.lsn, **{"from": "a1"})
    assert logs(dict(ack), ack) and spec_messages(dict(ack)) == [ack]
    assert not logs(dict(ack, flush=m.lsn + 1), ack)


@settings(max_examples=300, deadline=None)
@given(
    wal=TERMS, history=HISTORIES, heard=st.frozensets(st.sampled_from(MODEL.acceptors)),
    acks=st.tuples(*[st.integers(0, 8)] * 3), numbers=st.tuples(*[st.integers(0, 9)] * 4),
)
def test_the_logged_forms_stand_for_the_spec_values(wal, history, heard, acks, numbers):
    """same_state compares a logged state with these forms: each is a JSON value that
    `_logged_value` turns back into the spec's value (or _UNLOGGED, equal to no JSON value)."""
    term, flush_at, commit, _ = numbers
    values = {
        "prop_phase": "leader", "prop_term": term, "prop_heard": heard, "prop_history": history, "prop_wal": wal,
        "prop_acks": dict(zip(MODEL.acceptors, acks)), "prop_commit": commit,
        "acc_term": term, "acc_history": history, "acc_wal": wal, "acc_flush": flush_at, "acc_commit": commit,
    }
    for name, convert in _PROPOSER_FORMS + _ACCEPTOR_FORMS:
        form = values[name] if convert is None else convert(values[name])
        assert form is not _UNLOGGED  # every history the spec builds has a logged form
        assert json.loads(json.dumps(form)) == form
        assert _logged_value(name, form) == (Record(values[name]) if name == "prop_acks" else values[name])


def _verdict(result):
    d = result.divergence
    return ("accepted",) if d is None else ("rejected", d.event.file, d.event.line, d.reason, d.guard)


CORPUS = sorted(
    [p for p in (ROOT / "traces" / "accepted").glob("*/*") if p.is_dir()]
    + [p for p in (ROOT / "traces" / "rejected").iterdir() if p.is_dir()]
)


@pytest.mark.parametrize("run", CORPUS, ids=[f"{p.parent.name}/{p.name}" for p in CORPUS])
def test_the_fast_replay_judges_the_corpus_as_the_naive_one(run):
    """Same verdict, event, reason and guard; and (paranoid) the incremental invariant
    verdict equals the full one after every event."""
    events, info = load_events([run])
    assert _verdict(check_run([run], paranoid=True)) == naive_replay(events, info)
    assert _verdict(replay(events, info)) == naive_replay(events, info)


_EDITS = ("state", "args", "recv", "drop", "entries")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=st.sampled_from(SCENARIOS), pick=st.integers(0, 10_000), edit=st.sampled_from(_EDITS), delta=st.sampled_from((-2, -1, 1, 2)))
def test_the_fast_replay_judges_edited_traces_as_the_naive_one(scenario, pick, edit, delta):
    events, info = load_events([scenario])
    events = [Event(json.loads(json.dumps(e.data)), e.file, e.line) for e in events]
    event = events[pick % len(events)]
    data = event.data
    if edit == "drop":
        events.remove(event)
    elif edit == "state":
        ints = [k for k, v in data["state"].items() if type(v) is int]
        if ints:
            data["state"][ints[pick % len(ints)]] += delta
    elif edit == "args":
        ints = [k for k, v in data["args"].items() if type(v) is int]
        if ints:
            data["args"][ints[pick % len(ints)]] += delta
    elif edit == "recv":
        ids = [s["id"] for e in events for s in e.data["sent"]]
        data["recv"] = ids[(pick + delta) % len(ids)]
    elif edit == "entries":
        for sent in data["sent"]:
            if sent["msg"]["type"] == "AppendRequest" and sent["msg"]["entries"]:
                sent["msg"]["entries"][-1][1] = max(1, sent["msg"]["entries"][-1][1] + delta)
    try:
        naive = naive_replay(events, info)
    except ValueError:  # the naive replay cannot unpack k > 1 messages for a one-message action
        assert replay(events, info, paranoid=True).verdict == "rejected"
        return
    assert _verdict(replay(events, info, paranoid=True)) == naive


@cache
def _loaded(run: Path) -> tuple[list[Event], dict | None]:
    return load_events([run])


ACCEPTED = sorted(p for p in (ROOT / "traces" / "accepted").glob("*/*") if p.is_dir())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    run=st.sampled_from(ACCEPTED), pick=st.integers(0, 10_000), more=TERMS, cut=st.integers(0, 40),
    d_commit=st.integers(-3, 3), d_flush=st.integers(-3, 3), log_edit=st.sampled_from(("same", "extend", "cut", "other")),
)
def test_incremental_invariants_equal_the_full_check(run, pick, more, cut, d_commit, d_flush, log_edit):
    """From a reachable state (an accepted prefix), change one node's variables and the
    committed log as a derived step may; the incremental verdict must be the full one."""
    events, info = _loaded(run)
    model = _model(events, info)
    r = _Replayer(model)
    for e in events[: pick % len(events)]:
        if e.action != "LoseMessage":
            r.apply(e.data)
    assert r.check_full() == []
    nodes = model.proposers + model.acceptors
    node = nodes[pick % len(nodes)]
    vals = r.vars[node]
    before, committed = list(vals), r.committed_log
    wal_at, commit_at = (4, 6) if node in model.proposers else (2, 4)
    vals[wal_at] = _concat(vals[wal_at][:cut], more) if cut % 3 else vals[wal_at]
    vals[commit_at] = max(1, vals[commit_at] + d_commit)
    if node in model.acceptors and d_flush:
        vals[3] = max(1, vals[3] + d_flush)
    if log_edit == "extend":
        r.committed_log = _concat(committed, more)
    elif log_edit == "cut":
        r.committed_log = committed[:cut]
    elif log_edit == "other":
        r.committed_log = more
    assert r.check_incremental(node, before, committed) == M.invariants(model, r.state())
    assert r.holders == {a: r._holds(a) for a in model.acceptors}  # CommittedNeverLost's cache
