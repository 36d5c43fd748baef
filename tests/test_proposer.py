"""Tests of impl/proposer.py: the sans-IO walproposer, driven by hand-built acceptor messages.

Each section names the spec action it checks (spec/ProposerAcceptor.tla): RestartProposer,
CollectTerm/StartCampaign, CollectVote (BetterDonor), BecomeLeader with the WalRead/WalData
recovery (impl/trace.py line 4), NewEntry/SendAppend/CollectAck (QuorumFlush, CommitAllowed),
the heartbeat and the give-up rules (the module's rules 2-5).  Then the phase table as a
stateful hypothesis test, and one integration run against three real AcceptorCores.

Byte LSNs, WAL starting at 0, three acceptors (quorum 2).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from impl.acceptor import AcceptorCore
from impl.effects import (
    Committed,
    Flush,
    PersistControl,
    ResetConnections,
    Send,
    SendWal,
    SetTimer,
    TruncateWal,
    WriteWal,
)
from impl.proposer import TRANSITIONS, NotLeader, ProposerConfig, ProposerCore
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

P = "p1"
A = ("a1", "a2", "a3")
H0 = (TermSwitch(term=0, lsn=0),)
CFG = ProposerConfig()


def hist(*pairs: tuple[int, int]) -> tuple[TermSwitch, ...]:
    """H0 followed by (term, lsn) switches."""
    return H0 + tuple(TermSwitch(term=t, lsn=lsn) for t, lsn in pairs)


# ---------------------------------------------------------------------------------------------
# Helpers: acceptor messages and a proposer brought to a phase
# ---------------------------------------------------------------------------------------------


def sends(effects, to: str | None = None, kind: type | None = None) -> list[Send]:
    return [
        e for e in effects
        if type(e) is Send and (to is None or e.to == to) and (kind is None or type(e.msg) is kind)
    ]


def greet(core: ProposerCore, a: str, term: int):
    return core.receive(a, GreetingResponse(acceptor=a, proposer=P, term=term))


def vote(core: ProposerCore, a: str, term: int, history=H0, flush: int = 0):
    return core.receive(
        a, VoteResponse(acceptor=a, proposer=P, term=term, term_history=history, flush_lsn=flush, commit_lsn=0)
    )


def ack(core: ProposerCore, a: str, term: int, flush: int):
    return core.receive(a, AppendResponse(acceptor=a, term=term, flush_lsn=flush, commit_lsn=0))


def wal_data(core: ProposerCore, a: str, term: int, begin: int, data: bytes):
    return core.receive(a, WalData(acceptor=a, term=term, begin_lsn=begin, end_lsn=begin + len(data), wal=data))


def started(config: ProposerConfig = CFG, connected=A, core_cls=ProposerCore) -> ProposerCore:
    core = core_cls(P, A, 0, config)
    core.start()
    for a in connected:
        core.on_connected(a)
    return core


def campaigning(config: ProposerConfig = CFG, connected=A, core_cls=ProposerCore) -> ProposerCore:
    """A proposer campaigning for term 5 (it heard terms 0 and 4)."""
    core = started(config, connected, core_cls)
    greet(core, "a1", 0)
    greet(core, "a2", 4)
    assert core.phase == "campaign" and core.term == 5
    return core


def leading(
    config: ProposerConfig = CFG, connected=A, donor_history=H0, donor_wal: bytes = b"", core_cls=ProposerCore
) -> ProposerCore:
    """A leader of term 5 whose donor (a1) had `donor_wal`; nobody has acked yet."""
    core = campaigning(config, connected, core_cls)
    vote(core, "a1", 5, donor_history, len(donor_wal))
    effects = vote(core, "a2", 5, H0, 0)
    while reads := sends(effects, kind=WalRead):
        (read,) = reads
        assert read.to == "a1"
        effects = wal_data(core, "a1", 5, read.msg.begin_lsn, donor_wal[read.msg.begin_lsn : read.msg.end_lsn])
    assert core.phase == "leader"
    return core


def is_restart(core: ProposerCore, effects) -> bool:
    """RestartProposer happened: connections reset, election timer armed, state forgotten."""
    return (
        len(effects) == 2
        and type(effects[0]) is ResetConnections
        and type(effects[1]) is SetTimer
        and effects[1].name == "election"
        and core.phase == "greeting"
        and core.term == 0
        and core.history == ()
        and core.acks == {}
        and core.commit_lsn == core.wal_start
    )


def appended(effects, to: str) -> list[tuple[int, int]]:
    return [(s.msg.begin_lsn, s.msg.end_lsn) for s in sends(effects, to, AppendRequest)]


# ---------------------------------------------------------------------------------------------
# RestartProposer: start and connections
# ---------------------------------------------------------------------------------------------


def test_start_resets_connections_and_arms_the_election_timer():
    core = ProposerCore(P, A, 0, CFG)
    assert core.start() == (ResetConnections(), SetTimer("election", CFG.election_timeout))
    assert core.phase == "greeting" and core.term == 0
    assert core.spec_state()["prop_phase"] == "greeting"


def test_on_connected_returns_only_that_acceptors_greeting():
    core = ProposerCore(P, A, 0, CFG)
    core.start()
    assert core.on_connected("a2") == (Send("a2", Greeting(proposer=P)),)
    # A quorum of answers: VoteRequests go only to the connected acceptor.
    core.on_connected("a1")
    greet(core, "a1", 0)
    effects = greet(core, "a2", 0)
    assert {s.to for s in sends(effects)} == {"a1", "a2"}


def test_a_proposer_needs_acceptors():
    with pytest.raises(ValueError):
        ProposerCore(P, (), 0, CFG)


def test_receive_rejects_unknown_acceptors_and_acceptor_bound_messages():
    core = started()
    with pytest.raises(ProtocolError):
        core.receive("a9", GreetingResponse(acceptor="a9", proposer=P, term=0))
    with pytest.raises(ProtocolError):
        core.receive("a1", Greeting(proposer="a1"))
    with pytest.raises(ProtocolError):
        core.receive("a1", VoteRequest(proposer="a1", term=3))


def test_election_timer_restarts_a_non_leader_but_not_a_leader():
    core = campaigning()
    assert is_restart(core, core.on_timer("election"))
    core = leading()
    assert core.on_timer("election") == ()
    assert core.phase == "leader"
    with pytest.raises(ValueError):
        core.on_timer("nonsense")


def test_giving_up_backs_off_doubling_until_a_commit():
    """Rule 4: each give-up in a row waits twice as long (up to 8 election timeouts) before
    reconnecting; start() does not wait, and a commit as leader resets the count."""
    et = CFG.election_timeout
    core = ProposerCore(P, A, 0, CFG)
    assert core.start()[0] == ResetConnections(0)
    backoffs = []
    for _ in range(5):
        effects = core.on_timer("election")
        assert is_restart(core, effects)
        backoffs.append(effects[0].backoff)
        assert effects[1] == SetTimer("election", effects[0].backoff + et)
    assert backoffs == [et, 2 * et, 4 * et, 8 * et, 8 * et]
    for a in A:
        core.on_connected(a)
    greet(core, "a1", 0)
    greet(core, "a2", 0)
    vote(core, "a1", 1)
    vote(core, "a2", 1)
    core.new_entry(b"x")
    ack(core, "a1", 1, 1)
    assert Committed(1) in ack(core, "a2", 1, 1)
    assert greet(core, "a3", 7)[0] == ResetConnections(et)


# ---------------------------------------------------------------------------------------------
# CollectTerm, StartCampaign
# ---------------------------------------------------------------------------------------------


def test_quorum_of_terms_starts_a_campaign_above_all_heard():
    core = started(connected=("a1", "a2"))
    assert sends(greet(core, "a1", 0)) == []
    assert greet(core, "a1", 0) == ()  # the same acceptor again is no quorum
    assert core.phase == "greeting" and core.term == 0
    effects = greet(core, "a2", 4)
    assert core.phase == "campaign" and core.term == 5
    assert effects == (Send("a1", VoteRequest(proposer=P, term=5)), Send("a2", VoteRequest(proposer=P, term=5)))
    assert core.spec_state()["prop_heard"] == []  # StartCampaign empties prop_heard

    # Rule 2: a later connection gets the same VoteRequest, the same Send every time.
    late = core.on_connected("a3")
    assert [type(s.msg) for s in late] == [Greeting, VoteRequest]
    assert late[1].msg is effects[0].msg
    again = core.on_connected("a3")
    assert again[1] is late[1]


# ---------------------------------------------------------------------------------------------
# CollectVote (BetterDonor), BecomeLeader
# ---------------------------------------------------------------------------------------------

# a1: a long WAL of an old term; a2: a shorter WAL of a newer term (the BetterDonorByFlush mutant
# would pick a1).
OLD_LONG = (hist((2, 0)), 20)
NEW_SHORT = (hist((2, 0), (3, 6)), 8)


@pytest.mark.parametrize("order", [("a1", "a2"), ("a2", "a1")])
def test_donor_is_the_newer_last_term_not_the_longer_wal(order):
    wals = {"a1": OLD_LONG, "a2": NEW_SHORT}
    core = campaigning()
    vote(core, order[0], 5, *wals[order[0]])
    effects = vote(core, order[1], 5, *wals[order[1]])
    assert core.phase == "recovering"
    assert core.history == NEW_SHORT[0] and core.wal_end == 8
    assert sends(effects) == [Send("a2", WalRead(proposer=P, term=5, begin_lsn=0, end_lsn=8))]


def test_donor_with_the_same_last_term_is_the_longer():
    core = campaigning()
    vote(core, "a1", 5, hist((3, 0)), 6)
    effects = vote(core, "a3", 5, hist((3, 0)), 9)
    assert core.wal_end == 9 and sends(effects)[0].to == "a3"


def test_donor_tie_keeps_the_first_vote():
    core = campaigning()
    vote(core, "a2", 5, hist((3, 0)), 6)
    effects = vote(core, "a1", 5, hist((3, 0)), 6)
    assert sends(effects)[0].to == "a2"


def test_votes_of_another_term_and_duplicates_are_ignored():
    core = campaigning()
    assert sends(vote(core, "a1", 5)) == []
    assert vote(core, "a1", 5) == ()  # duplicate
    assert vote(core, "a1", 5, hist((3, 0)), 7) == ()  # a second vote cannot replace the first
    assert core.history == H0 and core.wal_end == 0
    assert vote(core, "a2", 6) == ()  # another (later) term
    assert vote(core, "a2", 4, hist((3, 0)), 0) == ()  # another (older) term
    assert core.phase == "campaign" and core.spec_state()["prop_heard"] == ["a1"]
    vote(core, "a2", 5)
    assert core.phase == "leader"


def test_votes_before_campaign_are_ignored():
    core = started()
    assert vote(core, "a1", 1) == ()
    assert core.phase == "greeting"


def test_vote_naming_another_node_is_a_protocol_error():
    core = campaigning()
    with pytest.raises(ProtocolError):
        core.receive("a1", VoteResponse(acceptor="a2", proposer=P, term=5, term_history=H0, flush_lsn=0, commit_lsn=0))
    with pytest.raises(ProtocolError):  # a history of a WAL starting elsewhere
        vote(core, "a1", 5, (TermSwitch(term=0, lsn=7),), 7)


def test_quorum_of_empty_wals_becomes_leader_at_once():
    core = campaigning(connected=("a1", "a2"))
    vote(core, "a1", 5, hist((3, 0)), 0)
    effects = vote(core, "a2", 5)
    expected = hist((3, 0), (5, 0))  # the donor's history plus this term, at the donor's flush
    elected = ProposerElected(proposer=P, term=5, term_history=expected)
    assert effects == (Send("a1", elected), Send("a2", elected), SetTimer("heartbeat", CFG.heartbeat))
    assert core.phase == "leader" and core.history == expected
    assert core.spec_state()["prop_phase"] == "leader"
    # The unconnected acceptor gets it on connecting (after the Greeting and VoteRequest).
    assert [type(s.msg) for s in core.on_connected("a3")] == [Greeting, VoteRequest, ProposerElected]


# ---------------------------------------------------------------------------------------------
# Recovery: WalRead/WalData from the donor (impl/trace.py line 4)
# ---------------------------------------------------------------------------------------------

DONOR_WAL = b"0123456789"
DONOR_HISTORY = hist((3, 0))


# Chunks of 4 bytes, whether recovery reads are sized by max_send or by window.
SMALL = ProposerConfig(max_send=4, window=4)


def read(begin: int, end: int) -> list[Send]:
    return [Send("a1", WalRead(proposer=P, term=5, begin_lsn=begin, end_lsn=end))]


def recovering(config=SMALL) -> tuple[ProposerCore, Any]:
    core = campaigning(config)
    vote(core, "a1", 5, DONOR_HISTORY, len(DONOR_WAL))
    effects = vote(core, "a2", 5)
    return core, effects


def test_recovery_reads_the_donor_wal_in_chunks_then_leads():
    core, effects = recovering()
    assert sends(effects) == read(0, 4)
    assert core.phase == "recovering" and core.spec_state()["prop_phase"] == "campaign"

    effects = wal_data(core, "a1", 5, 0, DONOR_WAL[0:4])
    assert sends(effects) == read(4, 8)
    assert wal_data(core, "a2", 5, 4, DONOR_WAL[4:8]) == ()  # not the donor
    assert wal_data(core, "a1", 5, 8, DONOR_WAL[8:10]) == ()  # out of order
    assert wal_data(core, "a1", 5, 0, DONOR_WAL[0:4]) == ()  # a duplicate
    assert wal_data(core, "a1", 4, 4, DONOR_WAL[4:8]) == ()  # another term
    assert vote(core, "a3", 5) == ()  # late votes are not collected while reading
    effects = wal_data(core, "a1", 5, 4, DONOR_WAL[4:8])
    assert sends(effects) == read(8, 10)
    effects = wal_data(core, "a1", 5, 8, DONOR_WAL[8:10])

    expected = DONOR_HISTORY + (TermSwitch(term=5, lsn=10),)
    assert core.phase == "leader" and core.history == expected
    assert [s.to for s in sends(effects, kind=ProposerElected)] == list(A)
    assert all(s.msg.term_history == expected for s in sends(effects))
    assert effects[-1] == SetTimer("heartbeat", CFG.heartbeat)
    assert core.wal_bytes(0, 10) == DONOR_WAL and core.wal_end == 10


def test_a_short_wal_data_is_followed_by_a_read_of_the_rest():
    core, _ = recovering()
    effects = wal_data(core, "a1", 5, 0, DONOR_WAL[0:3])
    assert sends(effects) == read(3, 7)


def test_wal_data_beyond_the_votes_flush_is_a_protocol_error():
    core, _ = recovering()
    with pytest.raises(ProtocolError):
        wal_data(core, "a1", 5, 0, DONOR_WAL + b"x")


def test_losing_the_donor_while_recovering_restarts():
    core, _ = recovering()
    assert core.on_disconnected("a2") == ()  # not the donor
    assert core.phase == "recovering"
    assert is_restart(core, core.on_disconnected("a1"))
    state = core.spec_state()
    assert state["prop_phase"] == "greeting" and state["prop_term"] == 0 and state["prop_wal"] == []
    # Connections are gone: the shell reports new ones, which get the Greeting only.
    assert core.on_connected("a1") == (Send("a1", Greeting(proposer=P)),)


# ---------------------------------------------------------------------------------------------
# NewEntry, SendAppend, CollectAck (QuorumFlush, CommitAllowed)
# ---------------------------------------------------------------------------------------------

STREAM = ProposerConfig(max_send=4, window=8)


def test_no_append_before_the_acceptor_acked_this_term():
    core = leading(STREAM)
    end, effects = core.new_entry(b"0123456789")
    assert end == 10 and core.wal_end == 10
    assert sends(effects) == []
    core.on_timer("heartbeat")  # the heartbeat resends the election, not WAL
    assert all(type(s.msg) is not AppendRequest for s in sends(core.on_timer("heartbeat")))


def test_streaming_in_chunks_within_the_window_and_commit_on_a_quorum():
    core = leading(STREAM)
    record = b"0123456789"
    core.new_entry(record)
    effects = ack(core, "a1", 5, 0)
    assert appended(effects, "a1") == [(0, 4), (4, 8)]  # window 8 beyond the ack at 0
    assert all(s.msg.term == 5 and s.msg.commit_lsn == 0 for s in sends(effects))
    assert b"".join(s.msg.wal for s in sends(effects)) == record[:8]
    assert core.commit_lsn == 0 and not [e for e in effects if type(e) is Committed]

    effects = ack(core, "a1", 5, 4)  # one acceptor is no quorum
    assert appended(effects, "a1") == [(8, 10)]
    assert sends(effects)[0].msg.wal == record[8:]
    assert core.commit_lsn == 0

    assert appended(ack(core, "a2", 5, 0), "a2") == [(0, 4), (4, 8)]
    effects = ack(core, "a2", 5, 8)
    assert Committed(4) in effects and core.commit_lsn == 4  # QuorumFlush: 2nd highest of 8, 4
    assert appended(effects, "a2") == [(8, 10)]
    assert sends(effects)[0].msg.commit_lsn == 4
    effects = ack(core, "a1", 5, 10)
    assert Committed(8) in effects and core.commit_lsn == 8
    effects = ack(core, "a2", 5, 10)
    assert effects == (Committed(10),) and core.commit_lsn == 10
    assert ack(core, "a2", 5, 4) == ()  # a late ack: acks and commit only grow
    assert core.acks["a2"] == 10 and core.commit_lsn == 10
    assert ack(core, "a3", 5, 10) == ()  # a third ack changes nothing
    assert core.spec_state()["prop_commit"] == 11  # position = lsn + 1


def test_a_record_written_after_the_ack_streams_at_once():
    core = leading(STREAM)
    assert sends(ack(core, "a1", 5, 0)) == []  # nothing to send yet
    end, effects = core.new_entry(b"abcd")
    assert end == 4 and appended(effects, "a1") == [(0, 4)]
    end, effects = core.new_entry(b"efghij")
    assert end == 10 and appended(effects, "a1") == [(4, 8)]  # window: 8 beyond the ack at 0
    assert appended(ack(core, "a1", 5, 4), "a1") == [(8, 10)]


@pytest.mark.parametrize(
    "window, records",
    [(6, [b"0123456789"]), (8, [b"abc", b"defghi"])],
    ids=["window-not-a-multiple", "record-misaligns-chunks"],
)
def test_window_bounds_the_bytes_in_flight_beyond_the_ack(window, records):
    core = leading(ProposerConfig(max_send=4, window=window))
    ack(core, "a1", 5, 0)
    sent = [span for record in records for span in appended(core.new_entry(record)[1], "a1")]
    # max_send=4, ack at 0: window 6 sends [0,4) [4,8); window 8 sends [0,3) [3,7) [7,9).
    assert max(end for _, end in sent) <= window, sent


def test_commit_allowed_only_from_the_start_of_the_own_term():
    """CommitAllowed (Raft figure 8): a quorum holding 5 of the donor's 10 bytes commits nothing."""
    core = leading(donor_history=hist((3, 0)), donor_wal=DONOR_WAL)
    assert core.history[-1] == TermSwitch(term=5, lsn=10)
    effects = ack(core, "a1", 5, 5)
    assert appended(effects, "a1") == [(5, 10)]
    effects = ack(core, "a2", 5, 5)
    assert core.commit_lsn == 0 and not [e for e in effects if type(e) is Committed]
    assert sends(effects)[0].msg.wal == DONOR_WAL[5:]
    assert ack(core, "a1", 5, 10) == ()
    assert ack(core, "a2", 5, 10) == (Committed(10),)
    assert core.commit_lsn == 10


def test_acks_of_another_term_are_ignored_and_beyond_the_wal_are_errors():
    core = leading(STREAM)
    core.new_entry(b"0123")
    assert ack(core, "a1", 4, 0) == () and ack(core, "a1", 6, 4) == ()
    assert core.acks == {}
    with pytest.raises(ProtocolError):
        ack(core, "a1", 5, 5)
    with pytest.raises(ProtocolError):  # an ack naming another acceptor
        core.receive("a1", AppendResponse(acceptor="a2", term=5, flush_lsn=0, commit_lsn=0))
    assert core.acks == {} and core.commit_lsn == 0
    campaign = campaigning()
    assert ack(campaign, "a1", 5, 0) == ()  # not a leader yet


def test_new_entry_needs_a_leader_and_a_record():
    with pytest.raises(NotLeader):
        started().new_entry(b"x")
    with pytest.raises(NotLeader):
        campaigning().new_entry(b"x")
    with pytest.raises(NotLeader):
        recovering()[0].new_entry(b"x")
    core = leading()
    with pytest.raises(ValueError):
        core.new_entry(b"")
    assert core.wal_end == 0


# ---------------------------------------------------------------------------------------------
# Heartbeat: resends, rewinds, stall detection
# ---------------------------------------------------------------------------------------------


def test_heartbeat_repeats_the_election_to_silent_acceptors_and_commit_to_caught_up_ones():
    core = leading(STREAM, connected=("a1", "a2"))
    elected_a2 = sends(core.on_connected("a2"), kind=ProposerElected)[0]
    ack(core, "a1", 5, 0)
    effects = core.on_timer("heartbeat")
    # a2: VoteRequest and ProposerElected again (the same Sends), not the Greeting; a3: nothing.
    to_a2 = sends(effects, "a2")
    assert [type(s.msg) for s in to_a2] == [VoteRequest, ProposerElected]
    assert to_a2[1] is elected_a2
    assert sends(effects, "a3") == []
    # a1 is caught up: an empty append at wal_end carrying commit_lsn.
    assert [s.msg for s in sends(effects, "a1")] == [
        AppendRequest(proposer=P, term=5, begin_lsn=0, end_lsn=0, commit_lsn=0, wal=b"")
    ]
    assert effects[-1] == SetTimer("heartbeat", STREAM.heartbeat)


def test_heartbeat_rewinds_an_acceptor_whose_ack_did_not_move():
    core = leading(STREAM)
    ack(core, "a1", 5, 0)
    core.new_entry(b"01234567")  # sent: [0,4) [4,8)
    effects = core.on_timer("heartbeat")  # a1's ack is new since no tick: no rewind
    assert appended(effects, "a1") == [(8, 8)]
    effects = core.on_timer("heartbeat")  # ack still 0 since the last tick: resend from 0
    assert appended(effects, "a1") == [(0, 4), (4, 8)]
    assert ack(core, "a1", 5, 4) == ()
    effects = core.on_timer("heartbeat")  # ack moved (0 -> 4): no rewind
    assert appended(effects, "a1") == [(8, 8)]
    effects = core.on_timer("heartbeat")  # stuck at 4: resend from 4
    assert appended(effects, "a1") == [(4, 8)]


def test_reconnected_acceptor_gets_wal_only_after_its_new_ack():
    core = leading(STREAM)
    ack(core, "a1", 5, 0)
    core.new_entry(b"01234567")
    resent = core.on_connected("a1")
    assert [type(s.msg) for s in resent] == [Greeting, VoteRequest, ProposerElected]
    assert appended(core.new_entry(b"89")[1], "a1") == []
    assert appended(ack(core, "a1", 5, 4), "a1") == [(4, 8), (8, 10)]


def test_disconnected_acceptor_gets_nothing():
    core = leading(STREAM)
    ack(core, "a1", 5, 0)
    assert core.on_disconnected("a1") == ()
    assert sends(core.new_entry(b"0123")[1]) == []
    assert sends(core.on_timer("heartbeat"), "a1") == []


def test_heartbeat_gives_up_after_stall_ticks_without_commit_progress():
    config = ProposerConfig(max_send=4, window=8, stall_ticks=3)
    core = leading(config)
    core.new_entry(b"0123")
    for _ in range(2):
        assert core.on_timer("heartbeat")[-1] == SetTimer("heartbeat", config.heartbeat)
        assert core.phase == "leader"
    assert is_restart(core, core.on_timer("heartbeat"))


def test_commit_progress_resets_the_stall_count():
    config = ProposerConfig(max_send=4, window=8, stall_ticks=3)
    core = leading(config)
    ack(core, "a1", 5, 0)
    ack(core, "a2", 5, 0)
    core.new_entry(b"01234567")
    core.on_timer("heartbeat")
    core.on_timer("heartbeat")
    ack(core, "a1", 5, 4)
    ack(core, "a2", 5, 4)
    assert core.commit_lsn == 4  # progress, but WAL still waits
    for _ in range(3):  # the tick that sees the progress, then two stalled ones
        core.on_timer("heartbeat")
        assert core.phase == "leader"
    assert is_restart(core, core.on_timer("heartbeat"))


def test_an_idle_leader_never_gives_up():
    core = leading(ProposerConfig(stall_ticks=2))
    for _ in range(10):
        core.on_timer("heartbeat")
    assert core.phase == "leader"
    core.new_entry(b"ab")
    ack(core, "a1", 5, 2)
    ack(core, "a2", 5, 2)
    for _ in range(10):
        core.on_timer("heartbeat")
    assert core.phase == "leader" and core.commit_lsn == 2


def test_heartbeat_outside_leadership_does_nothing():
    for core in (started(), campaigning(), recovering()[0]):
        phase = core.phase
        assert core.on_timer("heartbeat") == ()
        assert core.phase == phase


# ---------------------------------------------------------------------------------------------
# Deposed: a higher term heard after greeting (rule 4)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [campaigning, lambda: recovering()[0], leading], ids=["campaign", "recovering", "leader"])
def test_a_higher_term_restarts_and_an_equal_or_lower_one_is_ignored(make):
    core = make()
    phase = core.phase
    assert greet(core, "a3", 5) == ()
    assert greet(core, "a1", 2) == ()
    assert core.phase == phase and core.term == 5
    assert is_restart(core, greet(core, "a3", 6))


# ---------------------------------------------------------------------------------------------
# The phase table
# ---------------------------------------------------------------------------------------------


class SpyCore(ProposerCore):
    """A ProposerCore that records every assignment to `phase` as a (from, to) move."""

    @property
    def phase(self) -> str:
        return self._spy_phase

    @phase.setter
    def phase(self, value: str) -> None:
        moves = self.__dict__.setdefault("moves", [])
        if "_spy_phase" in self.__dict__:
            moves.append((self._spy_phase, value))
        self._spy_phase = value


def test_transition_table_covers_the_documented_phases():
    assert set(TRANSITIONS) == {"greeting", "campaign", "recovering", "leader"}
    assert all(targets <= set(TRANSITIONS) for targets in TRANSITIONS.values())
    assert all("greeting" in targets for targets in TRANSITIONS.values())  # RestartProposer


def test_a_life_cycle_takes_only_table_transitions():
    core = leading(SMALL, donor_history=DONOR_HISTORY, donor_wal=DONOR_WAL, core_cls=SpyCore)
    greet(core, "a3", 9)
    moves = [m for m in core.moves if m != ("greeting", "greeting")]
    assert moves == [
        ("greeting", "campaign"), ("campaign", "recovering"), ("recovering", "leader"), ("leader", "greeting"),
    ]
    assert all(new in TRANSITIONS[old] for old, new in core.moves)


def test_a_move_missing_from_the_table_is_refused_naming_both_phases():
    core = started()
    with pytest.raises(AssertionError, match="greeting -> leader"):
        core._enter("leader")


class ProposerMachine(RuleBasedStateMachine):
    """Random well-formed, often ill-timed acceptor messages, connections, timers and records.

    Only ProtocolError and NotLeader may escape; every phase move is in TRANSITIONS; after each
    step commit_lsn <= wal_end, commit_lsn does not fall while leading, the history's terms
    strictly increase, and WAL goes only to acceptors that acked this term, in max_send chunks.
    """

    CONFIG = ProposerConfig(max_send=3, window=6, stall_ticks=3)

    def __init__(self) -> None:
        super().__init__()
        self.core = SpyCore(P, A, 0, self.CONFIG)
        self.core.start()
        self.checked = 0
        self.read: Send | None = None  # the last WalRead the core sent (who the donor is)

    def _run(self, call) -> None:
        core = self.core
        before_phase, before_commit = core.phase, core.commit_lsn
        try:
            out = call()
        except (ProtocolError, NotLeader):
            out = ()
        effects = out[1] if type(out) is tuple and len(out) == 2 and type(out[0]) is int else out
        for old, new in core.moves[self.checked :]:
            assert new in TRANSITIONS[old], f"move {old} -> {new} is not in TRANSITIONS"
        self.checked = len(core.moves)
        if before_phase == "leader" and core.phase == "leader":
            assert core.commit_lsn >= before_commit
        for send in sends(effects, kind=AppendRequest):
            assert core.phase == "leader" and send.msg.term == core.term
            assert send.to in core.acks, f"AppendRequest to {send.to}, which has not acked term {core.term}"
            assert 0 < len(send.msg.wal) <= self.CONFIG.max_send or send.msg.begin_lsn == core.wal_end
            assert send.msg.wal == core.wal_bytes(send.msg.begin_lsn, send.msg.end_lsn)
        for effect in effects:
            assert type(effect) in (Send, SetTimer, Committed, ResetConnections)
            if type(effect) is Send and type(effect.msg) is WalRead:
                assert core.phase == "recovering" and effect.msg.end_lsn <= core.wal_end
                self.read = effect
            if type(effect) is Committed:
                assert effect.commit_lsn == core.commit_lsn

    def _term(self, delta: int) -> int:
        return max(1, self.core.term + delta)

    @rule(a=st.sampled_from(A))
    def connect(self, a):
        self._run(lambda: self.core.on_connected(a))

    @rule(a=st.sampled_from(A))
    def disconnect(self, a):
        self._run(lambda: self.core.on_disconnected(a))

    @rule(name=st.sampled_from(["election", "heartbeat", "heartbeat"]))
    def timer(self, name):
        self._run(lambda: self.core.on_timer(name))

    @rule()
    def restart(self):
        self._run(self.core.start)

    @rule(a=st.sampled_from(A), delta=st.integers(-2, 2))
    def greeting_response(self, a, delta):
        term = max(0, self.core.term + delta)
        self._run(lambda: greet(self.core, a, term))

    @rule(a=st.sampled_from(A), delta=st.sampled_from([0, 0, 0, -1, 1]), data=st.data())
    def vote_response(self, a, delta, data):
        term = self._term(delta)
        flush = data.draw(st.integers(0, 9), label="flush")
        terms = sorted(data.draw(st.sets(st.integers(1, term - 1), max_size=2), label="terms")) if term > 1 else []
        lsns = sorted(data.draw(st.lists(st.integers(0, flush), min_size=len(terms), max_size=len(terms)), label="lsns"))
        history = H0 + tuple(TermSwitch(term=t, lsn=lsn) for t, lsn in zip(terms, lsns))
        self._run(lambda: vote(self.core, a, term, history, flush))

    @rule(a=st.sampled_from(A), delta=st.sampled_from([0, 0, 0, -1, 1]), data=st.data())
    def wal_data(self, a, delta, data):
        have = len(self.core.wal_bytes(0, self.core.wal_end))
        begin = data.draw(st.sampled_from([have, have, max(0, have - 1), have + 1]), label="begin")
        length = data.draw(st.integers(0, 5), label="length")
        term = self._term(delta)
        self._run(lambda: wal_data(self.core, a, term, begin, bytes(length)))

    @rule(a=st.sampled_from(A), delta=st.sampled_from([0, 0, 0, -1, 1]), data=st.data())
    def append_response(self, a, delta, data):
        flush = data.draw(st.integers(0, self.core.wal_end + 1), label="flush")
        term = self._term(delta)
        self._run(lambda: ack(self.core, a, term, flush))

    @rule(record=st.binary(min_size=1, max_size=7))
    def new_entry(self, record):
        self._run(lambda: self.core.new_entry(record))

    def _progress(self, a: str, data) -> None:
        """What the core waits for, well-timed: this keeps the schedule moving to leadership."""
        core = self.core
        if core.phase == "greeting":
            self._run(lambda: greet(core, a, data.draw(st.integers(0, 3), label="term")))
        elif core.phase == "campaign":
            flush = data.draw(st.sampled_from([0, 0, 2, 5]), label="flush")
            history = hist((core.term - 1, 0)) if core.term > 1 and flush else H0
            self._run(lambda: vote(core, a, core.term, history, flush))
        elif core.phase == "recovering" and self.read is not None:
            to, msg = self.read.to, self.read.msg
            self._run(lambda: wal_data(core, to, msg.term, msg.begin_lsn, bytes(msg.end_lsn - msg.begin_lsn)))
        elif core.phase == "leader":
            flush = data.draw(st.integers(core.acks.get(a, 0), core.wal_end), label="flush")
            self._run(lambda: ack(core, a, core.term, flush))

    @rule(a=st.sampled_from(A), data=st.data())
    def progress(self, a, data):
        self._progress(a, data)

    @rule(a=st.sampled_from(A), data=st.data())
    def more_progress(self, a, data):
        self._progress(a, data)

    @invariant()
    def commit_within_wal(self):
        assert self.core.wal_start <= self.core.commit_lsn <= self.core.wal_end

    @invariant()
    def history_terms_increase(self):
        terms = [s.term for s in self.core.history]
        assert all(a < b for a, b in zip(terms, terms[1:]))
        if self.core.phase == "leader":
            assert terms[-1] == self.core.term
            assert self.core.commit_lsn == self.core.wal_start or self.core.commit_lsn >= self.core.history[-1].lsn
            assert len(self.core.wal_bytes(0, self.core.wal_end)) == self.core.wal_end

    @invariant()
    def phase_is_known(self):
        assert self.core.phase in TRANSITIONS


ProposerMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestProposerMachine = ProposerMachine.TestCase


# ---------------------------------------------------------------------------------------------
# Integration: one ProposerCore, three AcceptorCores
# ---------------------------------------------------------------------------------------------


class Cluster:
    """Delivers messages in FIFO order; runs acceptor effects in order, completing each
    PersistControl and Flush at once, and serving SendWal from a per-acceptor bytearray."""

    def __init__(self) -> None:
        self.acceptors = {a: AcceptorCore.fresh(a, 0) for a in A}
        self.wal = {a: bytearray() for a in A}
        self.net: deque[tuple[str, str, Any]] = deque()  # (from, to, msg)
        self.proposer: ProposerCore | None = None
        self.committed: list[int] = []

    def start_proposer(self, node: str = P) -> ProposerCore:
        self.proposer = ProposerCore(node, A, 0, CFG)
        self.net.clear()  # ResetConnections: what was in flight dies with the connections
        self.run_proposer(self.proposer.start())
        for a in A:
            self.run_proposer(self.proposer.on_connected(a))
        return self.proposer

    def run_proposer(self, effects) -> None:
        for e in effects:
            if type(e) is Send:
                self.net.append((self.proposer.node, e.to, e.msg))
            elif type(e) is Committed:
                self.committed.append(e.commit_lsn)
            else:
                assert type(e) in (SetTimer, ResetConnections)

    def run_acceptor(self, a: str, effects) -> None:
        core, wal = self.acceptors[a], self.wal[a]
        for e in effects:
            match e:
                case Send(to=to, msg=msg):
                    self.net.append((a, to, msg))
                case PersistControl():
                    self.run_acceptor(a, core.on_persisted())
                case WriteWal(lsn=lsn, data=data):
                    assert lsn == len(wal)
                    wal += data
                case Flush():
                    self.run_acceptor(a, core.on_flushed())
                case TruncateWal(lsn=lsn):
                    del wal[lsn:]
                case SendWal(to=to, term=term, begin_lsn=b, end_lsn=end):
                    msg = WalData(acceptor=a, term=term, begin_lsn=b, end_lsn=end, wal=bytes(wal[b:end]))
                    self.net.append((a, to, msg))
                case _:
                    raise AssertionError(f"unexpected acceptor effect {e!r}")

    def stabilize(self, limit: int = 10_000) -> list[Any]:
        """Deliver until the network is empty; return the messages the proposer received."""
        seen = []
        for _ in range(limit):
            if not self.net:
                return seen
            src, dst, msg = self.net.popleft()
            if dst in self.acceptors:
                self.run_acceptor(dst, self.acceptors[dst].receive(src, msg))
            else:
                assert dst == self.proposer.node
                seen.append(msg)
                self.run_proposer(self.proposer.receive(src, msg))
        raise AssertionError("the network did not quiesce")


def test_integration_elect_append_commit_then_a_new_proposer_recovers():
    cluster = Cluster()
    p = cluster.start_proposer()
    cluster.stabilize()
    assert p.phase == "leader" and p.term == 1 and p.history == hist((1, 0))

    records = [b"first record", b"second", b"third and last"]
    total = 0
    for record in records:
        end, effects = p.new_entry(record)
        total += len(record)
        assert end == total
        cluster.run_proposer(effects)
        cluster.stabilize()
    assert p.commit_lsn == total and cluster.committed[-1] == total
    assert all(bytes(cluster.wal[a]) == b"".join(records) for a in A)
    cluster.run_proposer(p.on_timer("heartbeat"))  # carries commit_lsn to the acceptors
    cluster.stabilize()
    assert all(acc.commit_lsn == total for acc in cluster.acceptors.values())
    old_commit = p.commit_lsn

    # A compute restart: a new proposer incarnation with no state.
    cluster.committed.clear()
    q = cluster.start_proposer()
    seen = cluster.stabilize()
    assert any(type(m) is WalData for m in seen)  # it read the donor's WAL
    assert q.phase == "leader" and q.term == 2
    assert q.history == hist((1, 0), (2, total))
    assert q.wal_bytes(0, q.wal_end) == b"".join(records)
    assert q.commit_lsn >= old_commit and q.commit_lsn >= q.history[-1].lsn
    assert cluster.committed == [total]

    end, effects = q.new_entry(b"more")
    cluster.run_proposer(effects)
    cluster.stabilize()
    assert q.commit_lsn == end == total + 4
    assert all(bytes(cluster.wal[a]) == b"".join(records) + b"more" for a in A)
