"""The acceptor core (impl/acceptor.py): spec actions as explicit message sequences.

Each test feeds `AcceptorCore` a short, hand-built sequence of inputs and checks the exact
effects, citing the spec action (spec/ProposerAcceptor.tla) and the rule of the module's
theory of operation it exercises.  Byte LSNs map to spec positions as lsn - wal_start + 1.
The last sections start acceptors from real files through `open_acceptor`, and run a
hypothesis property with a single honest leader.
"""

from __future__ import annotations

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from impl.acceptor import AcceptorCore, CoreMisuse, open_acceptor
from impl.control import ControlState, FileControlStorage
from impl.effects import (
    Close,
    Flush,
    MsgMeta,
    PersistControl,
    Send,
    SendWal,
    TruncateWal,
    WriteWal,
)
from impl.storage import CorruptStorage
from impl.trace import Tracer
from impl.wal import FileWal, segment_name
from impl.wire import (
    AppendRequest,
    AppendResponse,
    Greeting,
    GreetingResponse,
    ProposerElected,
    ProtocolError,
    TermSwitch,
    VoteRequest,
    VoteResponse,
    WalData,
    WalRead,
)

A = "a1"
P1 = "p1"
P2 = "p2"


# ---------------------------------------------------------------------------------------
# Helpers: messages and a few acceptors in known states
# ---------------------------------------------------------------------------------------


def hist(*pairs: tuple[int, int]) -> tuple[TermSwitch, ...]:
    """A term history from (term, lsn) pairs; the (0, 0) sentinel is written out."""
    return tuple(TermSwitch(term=t, lsn=lsn) for t, lsn in pairs)


def vote_req(term: int, proposer: str = P1) -> VoteRequest:
    return VoteRequest(proposer=proposer, term=term)


def elected(term: int, history: tuple[TermSwitch, ...], proposer: str = P1) -> ProposerElected:
    return ProposerElected(proposer=proposer, term=term, term_history=history)


def append(
    term: int, begin: int, data: bytes, commit: int = 0, proposer: str = P1
) -> AppendRequest:
    return AppendRequest(
        proposer=proposer,
        term=term,
        begin_lsn=begin,
        end_lsn=begin + len(data),
        commit_lsn=commit,
        wal=data,
    )


def ack(term: int, flush: int, commit: int = 0, to: str = P1) -> Send:
    return Send(to, AppendResponse(acceptor=A, term=term, flush_lsn=flush, commit_lsn=commit))


def greeting_response(term: int, to: str = P1) -> Send:
    return Send(to, GreetingResponse(acceptor=A, proposer=to, term=term))


def control(**changes: object) -> ControlState:
    """The control state the core persists; defaults are a fresh acceptor's."""
    fields: dict[str, object] = dict(
        node_id=A, term=0, term_history=((0, 0),), flush_lsn=0, commit_lsn=0,
        truncate_pending_lsn=None,
    )
    fields.update(changes)
    return ControlState(**fields)  # type: ignore[arg-type]


def voted(core: AcceptorCore, term: int, proposer: str = P1) -> Send:
    """Vote in `term` (Spec: Vote) and complete the persist; returns the vote."""
    (persist,) = core.receive(proposer, vote_req(term, proposer))
    assert type(persist) is PersistControl and persist.state.term == term
    (vote,) = core.on_persisted()
    assert type(vote.msg) is VoteResponse and vote.to == proposer
    return vote


def streaming(
    term: int = 1,
    history: tuple[TermSwitch, ...] | None = None,
    proposer: str = P1,
    core: AcceptorCore | None = None,
) -> AcceptorCore:
    """Vote and process ProposerElected of `term` (Spec: Vote, AcceptElected)."""
    core = core if core is not None else AcceptorCore.fresh(A, 0)
    voted(core, term, proposer)
    history = history if history is not None else hist((0, 0), (term, core.flush_lsn))
    (persist,) = core.receive(proposer, elected(term, history, proposer))
    assert type(persist) is PersistControl
    effects = core.on_persisted()
    if any(type(e) is TruncateWal for e in effects):
        assert core.on_persisted() == ()  # the cleared truncation flag
    assert not core.busy
    return core


def write(core: AcceptorCore, term: int, data: bytes, commit: int = 0, proposer: str = P1) -> Send:
    """Append `data` at the core's end and flush it (Spec: AcceptAppend, Flush); the ack."""
    begin = core.write_lsn
    assert core.receive(proposer, append(term, begin, data, commit, proposer)) == (
        WriteWal(begin, data),
        Flush(begin + len(data)),
    )
    (sent,) = core.on_flushed()
    return sent


def old_term_acceptor() -> AcceptorCore:
    """Holds 10 flushed bytes of term 1 (history [0@0, 1@0]) and has voted in term 3 for p2.

    fresh -> vote 1 -> elected 1 -> append 10 bytes -> flush -> vote 3 (p2).
    """
    core = streaming(1)
    write(core, 1, b"0123456789")
    vote = voted(core, 3, P2)
    assert vote.msg.term_history == hist((0, 0), (1, 0))
    assert vote.msg.flush_lsn == 10
    return core


# ---------------------------------------------------------------------------------------
# Rule 1: durable before visible
# ---------------------------------------------------------------------------------------


def test_vote_is_sent_only_after_the_term_is_persisted():
    # Spec: Vote.  The promise (term) is durable before the VoteResponse leaves.
    core = AcceptorCore.fresh(A, 0)
    effects = core.receive(P1, vote_req(1))
    assert effects == (PersistControl(control(term=1)),)
    assert core.busy
    assert core.on_persisted() == (
        Send(
            P1,
            VoteResponse(
                acceptor=A, proposer=P1, term=1, term_history=hist((0, 0)), flush_lsn=0,
                commit_lsn=0,
            ),
        ),
    )
    assert not core.busy


def test_vote_reports_flushed_history_flush_and_commit():
    # Spec: Vote sends FlushedHistory(a) and acc_flush; commit_lsn is wire-only.
    core = streaming(1)
    write(core, 1, b"abcdef")
    write(core, 1, b"gh", commit=6)  # commit learned: min(6, flush 6 before the write)
    assert (core.flush_lsn, core.commit_lsn) == (8, 6)
    (persist,) = core.receive(P2, vote_req(2, P2))
    assert persist == PersistControl(
        control(term=2, term_history=((0, 0), (1, 0)), flush_lsn=8, commit_lsn=6)
    )
    assert core.on_persisted() == (
        Send(
            P2,
            VoteResponse(
                acceptor=A, proposer=P2, term=2, term_history=hist((0, 0), (1, 0)),
                flush_lsn=8, commit_lsn=6,
            ),
        ),
    )


def test_elected_ack_comes_only_out_of_on_persisted():
    # Spec: AcceptElected.  The adopted history is durable before the ack.
    core = AcceptorCore.fresh(A, 0)
    voted(core, 1)
    effects = core.receive(P1, elected(1, hist((0, 0), (1, 0))))
    assert effects == (PersistControl(control(term=1, term_history=((0, 0), (1, 0)))),)
    assert core.history == hist((0, 0), (1, 0))
    assert core.on_persisted() == (ack(1, 0),)


def test_append_is_acked_only_after_the_flush():
    # Spec: AcceptAppend writes, Flush acks (the AckOnWriteBeforeFlush mutant's place).
    core = streaming(1)
    effects = core.receive(P1, append(1, 0, b"hello"))
    assert effects == (WriteWal(0, b"hello"), Flush(5))
    assert not any(type(e) is Send for e in effects)
    assert (core.write_lsn, core.flush_lsn) == (5, 0)
    assert core.on_flushed() == (ack(1, 5),)
    assert (core.write_lsn, core.flush_lsn) == (5, 5)


# ---------------------------------------------------------------------------------------
# Spec: Vote, VoteAllowed (one vote per term)
# ---------------------------------------------------------------------------------------


def test_second_vote_request_of_the_term_from_another_proposer_gets_nothing():
    core = AcceptorCore.fresh(A, 0)
    voted(core, 1, P1)
    assert core.receive(P2, vote_req(1, P2)) == ()
    assert not core.busy  # no PersistControl either
    assert core.term == 1


def test_repeated_vote_request_of_the_voted_proposer_gets_the_same_vote_again():
    # Rule 4: the vote is resent as the same message (same trace id), not voted anew.
    events: list[dict] = []
    core = AcceptorCore.fresh(A, 0, Tracer(node=A, wal_start=0, write=events.append))
    core.receive(P1, vote_req(1), MsgMeta("p1:1", 1))
    (vote,) = core.on_persisted()
    assert vote.meta is not None
    n_events = len(events)
    (again,) = core.receive(P1, vote_req(1), MsgMeta("p1:2", 2))
    assert again is vote
    assert again.meta == vote.meta
    assert len(events) == n_events  # redelivery is no new action
    assert not core.busy


def test_vote_request_of_an_older_term_is_answered_with_our_term():
    # Rule 3: AnswerGreeting for the stale proposer.
    core = AcceptorCore.fresh(A, 0)
    voted(core, 5)
    assert core.receive(P2, vote_req(3, P2)) == (greeting_response(5, P2),)
    assert core.receive(P1, vote_req(3, P1)) == (greeting_response(5, P1),)
    assert core.term == 5


def test_greeting_is_answered_with_the_term():
    # Spec: AnswerGreeting.
    core = AcceptorCore.fresh(A, 0)
    assert core.receive(P1, Greeting(proposer=P1)) == (greeting_response(0),)
    voted(core, 2)
    assert core.receive(P2, Greeting(proposer=P2)) == (greeting_response(2, P2),)


def test_a_higher_vote_request_replaces_the_old_vote():
    core = AcceptorCore.fresh(A, 0)
    voted(core, 1, P1)
    voted(core, 2, P2)
    # P1's repeated request of term 1 is now stale.
    assert core.receive(P1, vote_req(1, P1)) == (greeting_response(2, P1),)
    # P1's request of term 2 is another proposer's in P2's term.
    assert core.receive(P1, vote_req(2, P1)) == ()


# ---------------------------------------------------------------------------------------
# Rule 2: one durable operation at a time; everything else is queued
# ---------------------------------------------------------------------------------------


def test_messages_during_a_persist_are_queued_and_handled_in_order():
    core = AcceptorCore.fresh(A, 0)
    (persist,) = core.receive(P1, vote_req(1, P1))
    assert persist.state.term == 1
    # Both arrive while the promise is not yet durable: nothing comes out.
    assert core.receive(P2, vote_req(1, P2)) == ()
    assert core.receive(P2, Greeting(proposer=P2)) == ()
    assert core.receive(P1, vote_req(1, P1)) == ()
    effects = core.on_persisted()
    vote = Send(
        P1,
        VoteResponse(
            acceptor=A, proposer=P1, term=1, term_history=hist((0, 0)), flush_lsn=0, commit_lsn=0
        ),
    )
    # In order: the vote; P2 gets no vote; P2's greeting; P1's repeat gets the same vote.
    assert effects == (vote, greeting_response(1, P2), vote)
    assert effects[2] is effects[0]
    assert not core.busy


def test_queued_messages_stop_at_the_next_durable_operation():
    # A queued VoteRequest of a higher term starts a persist: the rest stays queued.
    core = AcceptorCore.fresh(A, 0)
    core.receive(P1, vote_req(1, P1))
    assert core.receive(P2, vote_req(2, P2)) == ()
    assert core.receive(P1, Greeting(proposer=P1)) == ()
    effects = core.on_persisted()
    assert effects[0].msg.term == 1 and effects[0].to == P1  # the vote of term 1
    assert effects[1] == PersistControl(control(term=2))
    assert len(effects) == 2 and core.busy
    assert core.on_persisted()[1:] == (greeting_response(2, P1),)


def test_appends_during_a_flush_are_queued_then_written_together():
    # Group commit: what arrives during one fsync is written and covered by the next.
    core = streaming(1)
    assert core.receive(P1, append(1, 0, b"aaaa")) == (WriteWal(0, b"aaaa"), Flush(4))
    assert core.receive(P1, append(1, 4, b"bb")) == ()
    assert core.receive(P1, append(1, 6, b"c")) == ()
    assert core.write_lsn == 4  # nothing written while busy
    effects = core.on_flushed()
    assert effects == (ack(1, 4), WriteWal(4, b"bb"), WriteWal(6, b"c"), Flush(7))  # one fsync for both
    assert core.on_flushed() == (ack(1, 7),)
    assert not core.busy


def test_completions_with_nothing_outstanding_are_misuse():
    core = AcceptorCore.fresh(A, 0)
    with pytest.raises(CoreMisuse, match="persist completed, but awaiting None"):
        core.on_persisted()
    with pytest.raises(CoreMisuse, match="flush completed"):
        core.on_flushed()
    # The wrong completion while the other is outstanding is misuse too.
    core.receive(P1, vote_req(1))
    with pytest.raises(CoreMisuse, match="flush completed, but awaiting persist"):
        core.on_flushed()


# ---------------------------------------------------------------------------------------
# Spec: AcceptElected
# ---------------------------------------------------------------------------------------


def test_elected_truncates_at_the_highest_common_point():
    # Our WAL: 10 bytes of term 1.  The leader of term 3 recovered from a donor where term 1
    # ended at 4 and term 2 wrote [4, 6): [0@0, 1@0, 2@4, 3@6].  Common: term 1, which ends
    # at 4 for the leader, so we cut at 4 (HighestCommonPoint).
    core = old_term_acceptor()
    history = hist((0, 0), (1, 0), (2, 4), (3, 6))
    effects = core.receive(P2, elected(3, history, P2))
    pairs = ((0, 0), (1, 0), (2, 4), (3, 6))
    # The new history and the pending cut are durable first.
    assert effects == (
        PersistControl(control(term=3, term_history=pairs, flush_lsn=4, truncate_pending_lsn=4)),
    )
    assert (core.write_lsn, core.flush_lsn) == (4, 4)
    # Then the cut, the flag cleared, and the ack of the truncation point.
    assert core.on_persisted() == (
        TruncateWal(4),
        PersistControl(control(term=3, term_history=pairs, flush_lsn=4)),
        ack(3, 4, to=P2),
    )
    assert core.busy  # until the flag is cleared
    assert core.receive(P2, append(3, 4, b"xy")) == ()  # queued
    assert core.on_persisted() == (WriteWal(4, b"xy"), Flush(6))


def test_elected_without_divergence_does_not_truncate():
    # The leader holds all our term-1 WAL and more: [0@0, 1@0, 3@12]; the point is our
    # flush_lsn (10) = write_lsn: no TruncateWal and no pending flag.
    core = old_term_acceptor()
    pairs = ((0, 0), (1, 0), (3, 12))
    effects = core.receive(P2, elected(3, hist(*pairs), P2))
    assert effects == (PersistControl(control(term=3, term_history=pairs, flush_lsn=10)),)
    assert effects[0].state.truncate_pending_lsn is None
    assert core.on_persisted() == (ack(3, 10, to=P2),)
    assert not core.busy


def test_repeated_elected_after_appends_does_not_rewind():
    # A duplicate ProposerElected of the term: the whole flushed WAL is common.
    core = streaming(1)
    write(core, 1, b"abcd")
    (persist,) = core.receive(P1, elected(1, hist((0, 0), (1, 0))))
    assert persist.state.truncate_pending_lsn is None
    assert core.on_persisted() == (ack(1, 4),)
    assert core.write_lsn == 4


def test_elected_that_would_cut_committed_wal_is_refused():
    # Not something a correct leader sends: a refusal test (safety assert, rule 3).
    core = streaming(1)
    write(core, 1, b"0123456789")
    # A heartbeat teaches commit_lsn 10 (capped by flush_lsn 10).
    core.receive(P1, append(1, 10, b"", commit=10))
    assert core.commit_lsn == 10
    voted(core, 2, P2)
    # Its history says term 1 ended at 5: the cut would be at 5, below commit_lsn 10.
    bad = elected(2, hist((0, 0), (1, 0), (2, 5)), P2)
    with pytest.raises(ProtocolError) as excinfo:
        core.receive(P2, bad)
    text = str(excinfo.value)
    assert "commit_lsn 0/A" in text and "0/5" in text and "term 2" in text
    # Nothing changed.
    assert (core.history, core.write_lsn, core.flush_lsn) == (hist((0, 0), (1, 0)), 10, 10)
    assert not core.busy


def test_elected_with_another_wal_start_is_refused():
    core = AcceptorCore.fresh(A, 0)
    voted(core, 1)
    with pytest.raises(ProtocolError, match="history starts at 0/1000, this WAL at 0/0"):
        core.receive(P1, elected(1, hist((0, 4096), (1, 4096))))


def test_elected_of_another_term_is_ignored():
    core = AcceptorCore.fresh(A, 0)
    voted(core, 2)
    # Older: the deposed leader learns our term.
    assert core.receive(P1, elected(1, hist((0, 0), (1, 0)))) == (greeting_response(2),)
    # Newer: we have not voted in it; ignored.
    assert core.receive(P2, elected(3, hist((0, 0), (3, 0)), P2)) == ()
    assert core.history == hist((0, 0))
    assert not core.busy


# ---------------------------------------------------------------------------------------
# Spec: AcceptAppend, Flush
# ---------------------------------------------------------------------------------------


def test_append_before_elected_is_ignored():
    # Streaming(a) requires the term's ProposerElected to be processed.
    core = AcceptorCore.fresh(A, 0)
    voted(core, 1)
    assert core.receive(P1, append(1, 0, b"abc", commit=3)) == ()
    assert (core.write_lsn, core.commit_lsn) == (0, 0)
    # Also in a later term, while holding an older term's WAL.
    core = streaming(1)
    write(core, 1, b"abc")
    voted(core, 2, P2)
    assert core.receive(P2, append(2, 3, b"de", proposer=P2)) == ()
    assert core.write_lsn == 3


def test_append_of_a_newer_term_is_ignored():
    core = streaming(1)
    assert core.receive(P2, append(2, 0, b"abc", proposer=P2)) == ()
    assert core.write_lsn == 0 and core.term == 1


def test_append_with_a_gap_is_ignored():
    core = streaming(1)
    write(core, 1, b"abc")
    assert core.receive(P1, append(1, 4, b"ef", commit=4)) == ()
    assert (core.write_lsn, core.commit_lsn) == (3, 0)


def test_overlapping_append_writes_only_the_new_suffix():
    core = streaming(1)
    write(core, 1, b"0123456789")
    assert core.receive(P1, append(1, 5, b"56789abcde")) == (WriteWal(10, b"abcde"), Flush(15))
    assert core.on_flushed() == (ack(1, 15),)
    # Fully inside what we hold: nothing written, the last ack again.
    (again,) = core.receive(P1, append(1, 2, b"234"))
    assert again == ack(1, 15)


def test_commit_lsn_is_capped_by_the_flush_before_the_write():
    # Spec AcceptAppend: acc_commit' = Max(acc_commit, Min(m.commit, acc_flush)).
    core = streaming(1)
    write(core, 1, b"0123456789")
    # commit 20 arrives with bytes [10, 20): only flush_lsn 10 is known to match.
    core.receive(P1, append(1, 10, b"x" * 10, commit=20))
    assert core.commit_lsn == 10
    assert core.on_flushed() == (ack(1, 20, commit=10),)
    # A smaller commit_lsn (a resend) never lowers it.
    core.receive(P1, append(1, 20, b"y", commit=3))
    assert core.commit_lsn == 10
    assert core.on_flushed() == (ack(1, 21, commit=10),)
    # A commit within the flushed WAL is taken as is.
    core.receive(P1, append(1, 21, b"", commit=15))
    assert core.commit_lsn == 15


def test_heartbeat_repeats_the_last_ack_object():
    # Rule 4: a caught-up acceptor answers a heartbeat with its last ack, the same message.
    core = streaming(1)
    last = write(core, 1, b"abc")
    (again,) = core.receive(P1, append(1, 3, b"", commit=3))
    assert again is last
    assert core.commit_lsn == 3  # learned, though the repeated ack still says 0
    assert not core.busy
    # Right after ProposerElected, the last ack is the elected ack.
    core = streaming(1)
    (elected_ack,) = core.receive(P1, append(1, 0, b""))
    assert elected_ack == ack(1, 0)


def test_append_of_an_older_term_gets_our_term():
    core = streaming(1)
    voted(core, 2, P2)
    assert core.receive(P1, append(1, 0, b"abc")) == (greeting_response(2),)
    assert core.write_lsn == 0


def test_vote_request_during_a_flush_waits_for_its_ack():
    # Spec Flush acks IF Streaming(a).  A VoteRequest of a higher term queued during the
    # flush is handled after it (rule 2), so the flush of term 1 still acks its leader.
    core = streaming(1)
    core.receive(P1, append(1, 0, b"abc"))
    assert core.receive(P2, vote_req(2, P2)) == ()
    effects = core.on_flushed()
    assert effects == (ack(1, 3), PersistControl(control(term=2, term_history=((0, 0), (1, 0)), flush_lsn=3)))


# ---------------------------------------------------------------------------------------
# WalRead (not a spec message): serve the WAL we voted with
# ---------------------------------------------------------------------------------------


def test_wal_read_is_served_only_in_our_term_and_within_flush():
    core = streaming(1)
    write(core, 1, b"0123456789")
    voted(core, 2, P2)
    read = WalRead(proposer=P2, term=2, begin_lsn=0, end_lsn=10)
    assert core.receive(P2, read) == (SendWal(P2, 2, 0, 10),)
    assert core.receive(P2, attrs.evolve(read, begin_lsn=3, end_lsn=7)) == (SendWal(P2, 2, 3, 7),)
    # Past flush_lsn: not the WAL our vote described.
    assert core.receive(P2, attrs.evolve(read, end_lsn=11)) == ()
    # Another term: a later ProposerElected may have cut it, or it is not ours yet.
    assert core.receive(P1, WalRead(proposer=P1, term=1, begin_lsn=0, end_lsn=10)) == ()
    assert core.receive(P1, WalRead(proposer=P1, term=3, begin_lsn=0, end_lsn=10)) == ()


# ---------------------------------------------------------------------------------------
# Rule 3: messages only proposers receive
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "msg",
    [
        VoteResponse(
            acceptor="a2", proposer=P1, term=1, term_history=hist((0, 0)), flush_lsn=0,
            commit_lsn=0,
        ),
        AppendResponse(acceptor="a2", term=1, flush_lsn=0, commit_lsn=0),
        GreetingResponse(acceptor="a2", proposer=P1, term=1),
        WalData(acceptor="a2", term=1, begin_lsn=0, end_lsn=1, wal=b"x"),
    ],
    ids=lambda m: type(m).__name__,
)
def test_reply_types_are_protocol_errors(msg):
    core = AcceptorCore.fresh(A, 0)
    with pytest.raises(ProtocolError, match=f"got {type(msg).__name__}, which only proposers receive"):
        core.receive(P1, msg)


def test_reply_type_while_busy_is_refused_without_losing_the_completion():
    """A message no proposer may send is refused at its receive, even while busy (rule 3)."""
    core = AcceptorCore.fresh(A, 0)
    core.receive(P1, vote_req(1))
    stray = AppendResponse(acceptor="a2", term=1, flush_lsn=0, commit_lsn=0)
    with pytest.raises(ProtocolError):
        core.receive(P2, stray)
    (vote,) = core.on_persisted()
    assert type(vote.msg) is VoteResponse


def test_queued_message_refused_later_becomes_a_close_effect():
    """A queued ProposerElected refused inside a completion closes its connection; the
    completion's own effects and the rest of the queue still come out, in order."""
    core = AcceptorCore.fresh(A, 0)
    core.receive(P1, vote_req(1))
    bad = ProposerElected(proposer=P1, term=1, term_history=hist((0, 8), (1, 8)))  # another WAL
    assert core.receive(P1, bad) == ()
    assert core.receive(P2, Greeting(proposer=P2)) == ()
    vote, close, greeting = core.on_persisted()
    assert type(vote.msg) is VoteResponse
    assert type(close) is Close and close.peer == P1 and "history starts at" in close.reason
    assert greeting == greeting_response(1, to=P2)


# ---------------------------------------------------------------------------------------
# Spec: RestartAcceptor
# ---------------------------------------------------------------------------------------


def test_restart_finishes_a_pending_truncation_first():
    state = control(
        term=3, term_history=((0, 0), (1, 0), (3, 4)), flush_lsn=4, commit_lsn=2,
        truncate_pending_lsn=4,
    )
    core, effects = AcceptorCore.restart_acceptor(state, wal_end=10)
    assert effects == (TruncateWal(4), PersistControl(attrs.evolve(state, truncate_pending_lsn=None)))
    assert (core.flush_lsn, core.write_lsn, core.commit_lsn, core.term) == (4, 4, 2, 3)
    assert core.history == hist((0, 0), (1, 0), (3, 4))
    # Busy until the flag is cleared: messages wait.
    assert core.receive(P1, Greeting(proposer=P1)) == ()
    assert core.on_persisted() == (greeting_response(3),)


def test_restart_without_pending_truncation_trusts_the_wal_end():
    # flush_lsn in the control file is a lazily stored hint; the WAL files are authoritative.
    state = control(term=1, term_history=((0, 0), (1, 0)), flush_lsn=4, commit_lsn=8)
    core, effects = AcceptorCore.restart_acceptor(state, wal_end=6)
    assert effects == ()
    assert (core.flush_lsn, core.write_lsn) == (6, 6)
    assert core.commit_lsn == 6  # capped by what is flushed
    assert not core.busy


def test_restart_refuses_a_wal_missing_flushed_bytes():
    state = control(term=1, term_history=((0, 0), (1, 0)), flush_lsn=10)
    with pytest.raises(CorruptStorage, match=r"acceptor a1: WAL ends at 0/5.*flush_lsn 0/A.*flushed WAL is missing"):
        AcceptorCore.restart_acceptor(state, wal_end=5)


def test_restart_forgets_the_vote_message_but_not_the_promise():
    # After a restart the core still refuses a second vote in its term, and no longer has
    # the vote message to resend (it is the spec's: the vote's message is gone with the
    # connection).
    state = control(term=2)
    core, _ = AcceptorCore.restart_acceptor(state, wal_end=0)
    assert core.receive(P1, vote_req(2)) == ()
    assert core.receive(P1, vote_req(1)) == (greeting_response(2),)


# ---------------------------------------------------------------------------------------
# open_acceptor: start from disk or refuse to
# ---------------------------------------------------------------------------------------


def stored_acceptor(directory, wal: bytes = b"0123456789", **changes: object) -> ControlState:
    """A control file and a WAL (default segment size, as open_acceptor opens it)."""
    fields: dict[str, object] = dict(
        term=1, term_history=((0, 0), (1, 0)), flush_lsn=len(wal), commit_lsn=0
    )
    fields.update(changes)
    state = control(**fields)
    FileControlStorage(directory).store(state)
    with FileWal(directory) as file_wal:
        file_wal.write(0, wal)
        file_wal.flush()
    return state


def test_open_fresh_directory_creates_a_wal(tmp_path):
    core, effects, wal, storage = open_acceptor(tmp_path, A)
    try:
        assert effects == ()
        assert (core.node, core.term, core.history, core.flush_lsn) == (A, 0, hist((0, 0)), 0)
        assert (tmp_path / segment_name(0, partial=True)).is_file()
        assert (wal.start_lsn, wal.write_lsn) == (0, 0)
        assert storage.load() == control(term=0, flush_lsn=0)  # Init, so that it can restart
    finally:
        wal.close()
    core, _, wal, _ = open_acceptor(tmp_path, A)  # stopped before any vote: restarts
    wal.close()
    assert (core.term, core.flush_lsn) == (0, 0)


def test_open_starts_fresh_on_empty_segments_without_a_control_file(tmp_path):
    # A fresh start stopped between creating its WAL and storing its control file.
    FileWal(tmp_path, start_lsn=0).close()
    core, _, wal, storage = open_acceptor(tmp_path, A)
    wal.close()
    assert core.term == 0 and storage.load() is not None


def test_open_restarts_from_stored_state(tmp_path):
    state = stored_acceptor(tmp_path, commit_lsn=4)
    core, effects, wal, _ = open_acceptor(tmp_path, A)
    try:
        assert effects == ()
        assert (core.term, core.flush_lsn, core.commit_lsn) == (1, 10, 4)
        assert core.history == hist(*state.term_history)
        assert wal.read(0, 10) == b"0123456789"
    finally:
        wal.close()


def test_open_counts_unflushed_bytes_it_finds_as_flushed(tmp_path, caplog):
    # Killed after write() and before its fsync: the bytes are in the file.  Spec
    # RestartAcceptor keeps any prefix of the written WAL as the flushed WAL; FileWal.open
    # fsyncs it first and says what it found beyond the control file's flush_lsn.
    stored_acceptor(tmp_path, wal=b"0123", flush_lsn=4)
    with FileWal.open(tmp_path) as file_wal:
        file_wal.write(4, b"456789")  # never flushed
    caplog.set_level("INFO", logger="paxwal.wal")
    core, effects, wal, _ = open_acceptor(tmp_path, A)
    try:
        assert effects == ()
        assert (core.flush_lsn, core.write_lsn) == (10, 10)
        assert wal.read(0, 10) == b"0123456789"
    finally:
        wal.close()
    assert any("found 6 bytes beyond the flush_lsn 0/4" in r.getMessage() for r in caplog.records)


def test_open_finishes_a_pending_truncation(tmp_path):
    stored_acceptor(
        tmp_path, term=3, term_history=((0, 0), (1, 0), (3, 4)), flush_lsn=4,
        truncate_pending_lsn=4,
    )
    core, effects, wal, _ = open_acceptor(tmp_path, A)
    wal.close()
    assert effects[0] == TruncateWal(4)
    assert core.flush_lsn == 4


def test_open_refuses_a_control_file_with_a_flipped_byte(tmp_path):
    stored_acceptor(tmp_path)
    path = tmp_path / "control"
    raw = bytearray(path.read_bytes())
    raw[12] ^= 0x01  # inside the CBOR body (after the 10-byte header)
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptStorage) as excinfo:
        open_acceptor(tmp_path, A)
    text = str(excinfo.value)
    assert str(path) in text and "CRC" in text


def test_open_refuses_a_truncated_control_file(tmp_path):
    stored_acceptor(tmp_path)
    path = tmp_path / "control"
    path.write_bytes(path.read_bytes()[:5])
    with pytest.raises(CorruptStorage) as excinfo:
        open_acceptor(tmp_path, A)
    text = str(excinfo.value)
    assert str(path) in text and "truncated" in text


def test_open_refuses_a_completed_segment_of_the_wrong_size(tmp_path):
    stored_acceptor(tmp_path, wal=b"")
    (tmp_path / segment_name(0, partial=True)).unlink()
    bad = tmp_path / segment_name(0, partial=False)
    bad.write_bytes(b"x" * 17)
    with pytest.raises(CorruptStorage) as excinfo:
        open_acceptor(tmp_path, A)
    text = str(excinfo.value)
    assert str(bad) in text and "completed segment has 17 bytes" in text


def test_open_refuses_a_partial_segment_that_is_not_last(tmp_path):
    stored_acceptor(tmp_path)
    stray = tmp_path / segment_name(16 * 1024 * 1024, partial=True)
    stray.write_bytes(b"")
    with pytest.raises(CorruptStorage) as excinfo:
        open_acceptor(tmp_path, A)
    text = str(excinfo.value)
    assert str(tmp_path / segment_name(0, partial=True)) in text
    assert ".partial segment is not the last" in text


def test_open_refuses_a_misnamed_segment(tmp_path):
    stored_acceptor(tmp_path)
    bad = tmp_path / "1000.partial"
    bad.write_bytes(b"")
    with pytest.raises(CorruptStorage) as excinfo:
        open_acceptor(tmp_path, A)
    assert str(bad) in str(excinfo.value) and "16 uppercase hex digits" in str(excinfo.value)


def test_open_refuses_a_wal_shorter_than_the_flushed_lsn(tmp_path):
    stored_acceptor(tmp_path, flush_lsn=20)
    with pytest.raises(CorruptStorage) as excinfo:
        open_acceptor(tmp_path, A)
    text = str(excinfo.value)
    assert "acceptor a1" in text and "flushed WAL is missing" in text


def test_open_refuses_segments_without_a_control_file(tmp_path):
    with FileWal(tmp_path) as file_wal:
        file_wal.write(0, b"abc")
        file_wal.flush()
    with pytest.raises(CorruptStorage) as excinfo:
        open_acceptor(tmp_path, A)
    text = str(excinfo.value)
    assert "no control file" in text and str(tmp_path / "control") in text


def test_open_refuses_a_control_file_without_segments(tmp_path):
    FileControlStorage(tmp_path).store(control(term=1))
    with pytest.raises(CorruptStorage) as excinfo:
        open_acceptor(tmp_path, A)
    text = str(excinfo.value)
    assert "has no WAL segments" in text and str(tmp_path / "control") in text


def test_open_refuses_another_nodes_control_file(tmp_path):
    stored_acceptor(tmp_path, node_id="a2")
    with pytest.raises(CorruptStorage) as excinfo:
        open_acceptor(tmp_path, A)
    text = str(excinfo.value)
    assert str(tmp_path / "control") in text and "'a2'" in text and "'a1'" in text


def test_open_needs_the_segment_size_the_wal_was_made_with(tmp_path):
    """Nothing on disk records the segment size: it is cluster configuration.  With the
    right one a 4 KiB-segment WAL reopens; with the default it is refused, naming the file."""
    FileControlStorage(tmp_path).store(
        control(term=1, term_history=((0, 0), (1, 0)), flush_lsn=5000)
    )
    with FileWal(tmp_path, segment_size=4096) as file_wal:
        file_wal.write(0, b"z" * 5000)
        file_wal.flush()
    core, _, wal, _ = open_acceptor(tmp_path, A, segment_size=4096)
    assert core.flush_lsn == 5000
    wal.close()
    with pytest.raises(CorruptStorage) as excinfo:
        open_acceptor(tmp_path, A)
    text = str(excinfo.value)
    assert str(tmp_path / segment_name(4096, partial=True)) in text
    assert "not a multiple of the segment size 0x1000000" in text


# ---------------------------------------------------------------------------------------
# Property: a single honest leader, random deliveries, completions and crashes
# ---------------------------------------------------------------------------------------

# The leader's WAL: term 1 wrote [0, K1), term 2 (the same leader re-elected with its own
# WAL as donor) wrote [K1, N).  Histories of the two terms:
N = 48
K1 = 20
LEADER_WAL = bytes(range(65, 65 + N))
HISTORIES = {1: hist((0, 0), (1, 0)), 2: hist((0, 0), (1, 0), (2, K1))}
WAL_END = {1: K1, 2: N}

# Term 1 most of the time, so that most examples get to stream.
_term = st.sampled_from([1, 1, 1, 2])
_OPS = {
    "complete": st.just(("complete",)),
    "append": st.tuples(
        st.just("append"), _term, st.integers(-8, 4), st.integers(0, 12), st.integers(0, N)
    ),
    "vote": st.tuples(st.just("vote"), _term),
    "elected": st.tuples(st.just("elected"), _term),
    "read": st.tuples(st.just("read"), _term, st.integers(0, N), st.integers(0, N)),
    "crash": st.tuples(st.just("crash"), st.booleans(), st.integers(0, N)),
}
# Weighted: mostly appends and completions, so that examples get somewhere.
_KINDS = ("complete",) * 4 + ("append",) * 4 + ("vote", "elected", "read", "crash")
_op = st.sampled_from(_KINDS).flatmap(_OPS.__getitem__)
# How the leader of term 1 usually starts: vote, elected, with the completions in between.
_PRELUDE = [("vote", 1), ("complete",), ("elected", 1), ("complete",)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prelude=st.booleans(), rest=st.lists(_op, min_size=20, max_size=60))
def test_single_honest_leader_keeps_the_invariants(prelude, rest):
    """Spec invariants of one acceptor under one honest leader (terms 1 and 2).

    The leader's appends are chunks of its WAL near the acceptor's end (resends, overlaps,
    gaps, heartbeats), any commit_lsn; the shell completes durable operations or crashes,
    losing an outstanding persist or not and keeping some unflushed bytes or not.
    """
    ops = (_PRELUDE if prelude else []) + rest
    core = AcceptorCore.fresh(A, 0)
    disk = bytearray()  # the WAL as WriteWal/TruncateWal left it
    durable_wal = 0  # what a crash keeps for sure
    stored: ControlState | None = None  # the control file
    pending: list = []  # outstanding PersistControl / Flush, at most one

    def run(effects):
        nonlocal durable_wal
        for e in effects:
            match e:
                case WriteWal(lsn=lsn, data=data):
                    assert lsn == len(disk), "WriteWal must append at the end"
                    disk.extend(data)
                case TruncateWal(lsn=lsn):
                    assert lsn <= len(disk)
                    del disk[lsn:]
                    durable_wal = min(durable_wal, lsn)
                case Flush(upto=upto):
                    assert upto == len(disk) and not pending
                    pending.append(e)
                case PersistControl():
                    assert not pending
                    pending.append(e)
                case Send(msg=msg):
                    # Durable before visible: what a reply reports survives a crash.
                    if type(msg) in (VoteResponse, AppendResponse):
                        assert stored is not None and stored.term >= msg.term
                        assert msg.flush_lsn <= durable_wal
                case SendWal(begin_lsn=b, end_lsn=e_):
                    assert e_ <= durable_wal
                    assert bytes(disk[b:e_]) == LEADER_WAL[b:e_]

    for op in ops:
        match op:
            case ("vote", t):
                run(core.receive(P1, vote_req(t)))
            case ("elected", t):
                run(core.receive(P1, elected(t, HISTORIES[t])))
            case ("append", t, delta, length, commit):
                begin = max(0, min(core.write_lsn + delta, WAL_END[t]))
                end = min(begin + length, WAL_END[t])
                run(core.receive(P1, append(t, begin, LEADER_WAL[begin:end], commit)))
            case ("read", t, b, e):
                b, e = min(b, e), max(b, e)
                run(core.receive(P1, WalRead(proposer=P1, term=t, begin_lsn=b, end_lsn=e)))
            case ("complete",):
                done = pending.pop() if pending else None
                if done is None:
                    assert not core.busy
                elif type(done) is PersistControl:
                    stored = done.state
                    run(core.on_persisted())
                else:
                    durable_wal = done.upto
                    run(core.on_flushed())
            case ("crash", persisted, kept):
                # An outstanding persist may or may not have reached the disk; unflushed
                # WAL bytes may partly survive (the file system kept them).
                if pending and type(pending[0]) is PersistControl and persisted:
                    stored = pending[0].state
                pending.clear()
                wal_end = durable_wal + kept % (len(disk) - durable_wal + 1)
                del disk[wal_end:]
                durable_wal = wal_end
                if stored is None:
                    core = AcceptorCore.fresh(A, 0)
                else:
                    core, effects = AcceptorCore.restart_acceptor(stored, wal_end)
                    run(effects)
        # Invariants after every step.
        assert core.busy == bool(pending)
        assert core.flush_lsn <= core.write_lsn == len(disk)
        assert core.commit_lsn <= core.flush_lsn
        assert bytes(disk) == LEADER_WAL[: len(disk)]
        assert core.flush_lsn <= durable_wal or pending


def test_a_vote_is_not_resent_to_the_next_connection_of_its_proposer():
    """After its connection closes, a proposer's vote is not repeated to whatever connects
    under its name next: a restarted proposer must not collect its previous incarnation's
    vote (the spec's RestartProposer drops replies addressed to it)."""
    core = AcceptorCore.fresh(A, 0)
    core.receive(P1, vote_req(1))
    (vote,) = core.on_persisted()
    assert core.receive(P1, vote_req(1)) == (vote,)  # same connection: resent
    assert core.on_disconnected(P1) == ()
    assert core.receive(P1, vote_req(1)) == ()  # a new connection: the promise stands, no vote


def test_messages_queued_from_a_closed_connection_are_dropped():
    core = AcceptorCore.fresh(A, 0)
    core.receive(P1, vote_req(1))
    core.receive(P2, Greeting(proposer=P2))
    core.receive(P1, Greeting(proposer=P1))
    core.on_disconnected(P1)
    vote, greeting = core.on_persisted()
    assert vote.to == P1 and type(vote.msg) is VoteResponse  # its persist was under way
    assert greeting == greeting_response(1, to=P2)
