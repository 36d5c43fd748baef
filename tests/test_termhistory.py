"""Tests of impl/termhistory.py against the spec operators it mirrors (spec/ProposerAcceptor.tla).

Each pure function is checked against a naive twin written from the operator's *meaning*
(which term wrote which byte; where two WALs stop agreeing), not from its formula.  The
histories come from a small simulation of the protocol's elections (`universes`), because
HighestCommonPoint is only meant to be right on histories the protocol can produce: each
term has one leader, whose history is its donor's flushed history plus its own switch.
"""

from __future__ import annotations

import attrs
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from impl.termhistory import (
    better_donor,
    common_prefix_len,
    flushed_history,
    highest_common_point,
    last_log_term,
    term_at,
)
from impl.wire import TermSwitch

# Moderate example counts keep the file within a few seconds.
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

History = tuple[TermSwitch, ...]

MAX_WAL = 30  # bytes per WAL in generated universes
MAX_TERM = 5  # highest term elected in generated universes


def h(*pairs: tuple[int, int]) -> History:
    """A history from (term, lsn) pairs: h((0, 0), (1, 0), (3, 30)) is [0@0, 1@0, 3@30]."""
    return tuple(TermSwitch(term=t, lsn=lsn) for t, lsn in pairs)


# ---------------------------------------------------------------------------------------------
# Naive twins
# ---------------------------------------------------------------------------------------------


def naive_terms(history: History, end: int) -> list[int]:
    """The terms of bytes [start, end), by painting: each switch paints every byte from its
    LSN on, in history order, so the last switch at or below a byte wins (spec TermAt)."""
    start = history[0].lsn
    terms = [history[0].term] * max(0, end - start)
    for switch in history:
        for lsn in range(switch.lsn, end):
            terms[lsn - start] = switch.term
    return terms


def naive_flushed(history: History, flush: int) -> History:
    """The generator's own FlushedHistory, so that universes do not depend on the code under test."""
    return tuple(s for s in history if s.lsn <= flush)


def naive_common_point(
    leader_wal: list[int], leader_term: int, acc_wal: list[int], start: int, flush: int
) -> int:
    """The largest L <= flush such that the acceptor's bytes [start, L) are the leader's.

    The leader's WAL is taken to go on forever in the leader's own term: whatever the leader
    writes next is of its term, and an acceptor's byte of that term came from that leader.
    """
    def leader_term_at(i: int) -> int:
        return leader_wal[i] if i < len(leader_wal) else leader_term

    n = 0
    while start + n < flush and acc_wal[n] == leader_term_at(n):
        n += 1
    return start + n


# ---------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------


@st.composite
def histories(draw: st.DrawFn, start: int | None = None) -> History:
    """Any well-formed history (spec IsHistory): term-0 sentinel first, terms strictly up, LSNs
    never down.  Unrelated to any election; for operators that need no consistency."""
    if start is None:
        start = draw(st.integers(0, 40))
    terms = sorted(draw(st.sets(st.integers(1, 8), max_size=4)))
    switches = [TermSwitch(term=0, lsn=start)]
    for term in terms:
        gap = draw(st.integers(0, 6))
        switches.append(TermSwitch(term=term, lsn=switches[-1].lsn + gap))
    return tuple(switches)


@attrs.define
class Holder:
    """A WAL: its term history and its bytes' terms (the ground truth the history describes)."""

    history: History
    wal: list[int]

    @property
    def term(self) -> int:
        return self.history[-1].term


@attrs.frozen
class Universe:
    start: int
    leaders: dict[int, Holder]  # term -> that term's leader, with all it wrote; 0: the empty WAL


@st.composite
def universes(draw: st.DrawFn) -> Universe:
    """A run of the protocol, reduced to what term histories depend on: its elections.

    - elect: a term t above every earlier one recovers a donor WAL, which is some prefix of
      an earlier leader's WAL (or the empty WAL); t's history is the donor's flushed history
      plus t at the end of the donor's WAL (CollectVote, BecomeLeader); its WAL the donor's.
    - append: any leader, current or deposed, writes bytes of its term (NewEntry).

    Every donor is one the protocol can pick: an acceptor that was fresh when leader s was
    elected holds H_s and the first k bytes of s's WAL once s streamed them; with the rest of
    t's quorum lagging acceptors (term-0 history, empty WAL), it is the best donor.  Each
    term has one leader and one history (ElectionSafety), so a term at index i of any history
    brings the same first i + 1 switches: the consistency HighestCommonPoint relies on.
    """
    start = draw(st.sampled_from([0, 1, 7, 2**32]))
    leaders = {0: Holder((TermSwitch(term=0, lsn=start),), [])}
    for _ in range(draw(st.integers(0, 20))):
        if draw(st.booleans()) and max(leaders) < MAX_TERM:  # elect
            term = max(leaders) + draw(st.integers(1, 2))  # a failed campaign skips a term
            if term > MAX_TERM:
                continue
            # Mostly a WAL with bytes: donors of one term but of different lengths are where
            # histories part in interesting ways (the HighestCommonPoint docstring example).
            written = sorted(t for t in leaders if leaders[t].wal)
            pick_from = written if written and draw(st.booleans()) else sorted(leaders)
            source = leaders[draw(st.sampled_from(pick_from))]
            k = draw(st.integers(0, len(source.wal)))
            donor_history = naive_flushed(source.history, start + k)
            leaders[term] = Holder(donor_history + (TermSwitch(term=term, lsn=start + k),), source.wal[:k])
        else:  # append
            leader = leaders[draw(st.sampled_from(sorted(leaders)))]
            room = MAX_WAL - len(leader.wal)
            if leader.term > 0 and room > 0:
                leader.wal.extend([leader.term] * draw(st.integers(1, min(8, room))))
    return Universe(start, leaders)


def holders(u: Universe) -> list[Holder]:
    """Every leader's WAL and every prefix of it, each with the leader's history: what an
    acceptor holds after the leader streamed it that much (or after a crash lost the rest)."""
    return [
        Holder(leader.history, leader.wal[:k])
        for leader in u.leaders.values()
        for k in range(len(leader.wal) + 1)
    ]


Case = tuple[Universe, Holder, Holder, int]  # a universe, a leader, an acceptor, its flush_lsn


@st.composite
def leader_and_acceptor(draw: st.DrawFn) -> Case:
    """A leader and a WAL that may receive its ProposerElected, with a flush_lsn for it.

    The receiver promised the leader's term (AcceptElected's guard m.term = acc_term), so its
    history's last term is at most the leader's.  Its flush_lsn is at most its WAL's end.
    """
    u = draw(universes().filter(lambda u: len(u.leaders) > 1))
    pairs = [
        (leader, acc)
        for t, leader in sorted(u.leaders.items()) if t > 0
        for acc in holders(u) if acc.term <= t
    ]
    # Half the time, an acceptor whose WAL holds a term the leader's history lacks: the
    # case where the spec's formula has most to get right.
    diverged = [
        (leader, acc) for leader, acc in pairs
        if set(acc.wal) - {s.term for s in leader.history}
    ]
    leader, acc = draw(st.sampled_from(diverged if diverged and draw(st.booleans()) else pairs))
    end = len(acc.wal)
    flush = u.start + draw(st.one_of(st.just(end), st.integers(0, end)))  # mostly all flushed
    return u, leader, acc, flush


# ---------------------------------------------------------------------------------------------
# The generator describes what the protocol builds (a check of the test itself)
# ---------------------------------------------------------------------------------------------


@FAST
@given(universes())
def test_generated_wals_match_their_histories(u: Universe) -> None:
    """Spec LogMatchesHistory holds in every generated universe (a check of the generator)."""
    for holder in u.leaders.values():
        end = u.start + len(holder.wal)
        assert naive_terms(holder.history, end) == holder.wal, holder


# ---------------------------------------------------------------------------------------------
# TermAt, LastLogTerm
# ---------------------------------------------------------------------------------------------


def test_term_at_spec_example() -> None:
    """Spec TermAt's comment: <<[0,1],[1,1],[3,3]>> gives term 1 at positions 1 and 2, then term 3."""
    history = h((0, 1), (1, 1), (3, 3))
    assert [term_at(history, lsn) for lsn in range(1, 6)] == [1, 1, 3, 3, 3]


def test_term_at_last_switch_at_one_lsn_wins() -> None:
    """Spec TermAt: of several switches at one LSN the last wins (the earlier terms wrote nothing)."""
    history = h((0, 10), (1, 10), (2, 14), (3, 14), (4, 14))
    assert term_at(history, 10) == 1
    assert term_at(history, 13) == 1
    assert term_at(history, 14) == 4


def test_term_at_below_wal_start_raises() -> None:
    """Spec TermAt is defined from position 1 on; below the sentinel's LSN there is no WAL."""
    history = h((0, 100), (1, 100))
    with pytest.raises(ValueError, match="below the WAL's start"):
        term_at(history, 99)
    assert term_at(history, 100) == 1


@FAST
@given(histories(), st.integers(0, 12))
def test_term_at_matches_painting_every_byte(history: History, beyond: int) -> None:
    """Spec TermAt: the term of byte l is that of the last switch with lsn <= l, for every l."""
    end = history[-1].lsn + beyond
    start = history[0].lsn
    assert [term_at(history, lsn) for lsn in range(start, end)] == naive_terms(history, end)


@FAST
@given(universes())
def test_term_at_reads_back_every_generated_wal(u: Universe) -> None:
    """Spec LogMatchesHistory read through TermAt: each held byte's term is term_at of its history."""
    for holder in u.leaders.values():
        assert [term_at(holder.history, u.start + i) for i in range(len(holder.wal))] == holder.wal


def test_last_log_term_is_the_last_switch() -> None:
    """Spec LastLogTerm: the term of the history's last record, even one that wrote nothing."""
    assert last_log_term(h((0, 0))) == 0
    assert last_log_term(h((0, 0), (1, 0), (3, 30), (4, 30))) == 4


# ---------------------------------------------------------------------------------------------
# FlushedHistory
# ---------------------------------------------------------------------------------------------


def test_flushed_history_keeps_a_switch_exactly_at_flush() -> None:
    """Spec FlushedHistory's comment: a switch exactly at flush_lsn counts (it raises last_log_term)."""
    history = h((0, 0), (1, 0), (2, 10), (3, 12))
    assert flushed_history(history, 10) == h((0, 0), (1, 0), (2, 10))
    assert last_log_term(flushed_history(history, 10)) == 2
    assert flushed_history(history, 9) == h((0, 0), (1, 0))
    assert flushed_history(history, 0) == h((0, 0), (1, 0))
    assert flushed_history(history, 50) == history


@FAST
@given(histories(), st.integers(0, 70))
def test_flushed_history_keeps_exactly_the_switches_at_or_below_flush(history: History, flush: int) -> None:
    """Spec FlushedHistory (SelectSeq with lsn <= flush): a prefix holding every such switch."""
    flushed = flushed_history(history, flush)
    assert flushed == history[: len(flushed)]
    assert len(flushed) == sum(1 for s in history if s.lsn <= flush)
    assert all(s.lsn > flush for s in history[len(flushed):])


@FAST
@given(histories(), st.integers(0, 12))
def test_flushed_history_describes_the_same_flushed_bytes(history: History, extra: int) -> None:
    """Spec WalFromHistory(FlushedHistory(a), f): dropping switches above f changes no byte below f."""
    flush = history[0].lsn + extra
    assert naive_terms(flushed_history(history, flush), flush) == naive_terms(history, flush)


# ---------------------------------------------------------------------------------------------
# CommonPrefixLen, HighestCommonPoint
# ---------------------------------------------------------------------------------------------


def test_common_prefix_len_counts_leading_switches_equal_by_term() -> None:
    """Spec CommonPrefixLen: leading records on which the histories agree by term."""
    assert common_prefix_len(h((0, 0), (1, 0), (3, 30)), h((0, 0), (1, 0), (2, 20))) == 2
    assert common_prefix_len(h((0, 0), (1, 0)), h((0, 0), (1, 0), (2, 20))) == 2
    assert common_prefix_len(h((0, 0)), h((0, 0))) == 1
    assert common_prefix_len(h((0, 0), (2, 0)), h((0, 0), (1, 0), (2, 5))) == 1


def test_highest_common_point_docstring_example() -> None:
    """Spec HighestCommonPoint, docstring: leader [0@0,1@0,3@30], acceptor [0@0,1@0,2@20] at 40: 20."""
    assert highest_common_point(h((0, 0), (1, 0), (3, 30)), h((0, 0), (1, 0), (2, 20)), 40) == 20


def test_highest_common_point_spec_example() -> None:
    """Spec HighestCommonPoint's comment: <<[0,1],[1,1],[3,3]>>, <<[0,1],[1,1],[2,2]>>, f = 4: 2."""
    assert highest_common_point(h((0, 1), (1, 1), (3, 3)), h((0, 1), (1, 1), (2, 2)), 4) == 2


def test_highest_common_point_cuts_a_tail_the_leader_did_not_take() -> None:
    """Spec HighestCommonPoint: the acceptor's bytes of the common term past the leader's switch go."""
    assert highest_common_point(h((0, 0), (1, 0), (2, 10)), h((0, 0), (1, 0)), 15) == 10


def test_highest_common_point_same_history_keeps_the_whole_flushed_wal() -> None:
    """Spec HighestCommonPoint, i = Len(ph): an acceptor holding every term of the leader keeps all."""
    leader = h((0, 0), (1, 0), (2, 10))
    assert highest_common_point(leader, leader, 17) == 17
    assert highest_common_point(leader, leader, 10) == 10


def test_highest_common_point_of_a_fresh_acceptor_is_the_wal_start() -> None:
    """Spec HighestCommonPoint: only the sentinel in common and nothing flushed: the WAL's start."""
    assert highest_common_point(h((0, 5), (1, 5), (2, 9)), h((0, 5)), 5) == 5


def test_highest_common_point_after_an_empty_term() -> None:
    """Spec HighestCommonPoint after an empty term (1@0, 2@0): every term-1 byte of the acceptor goes."""
    assert highest_common_point(h((0, 0), (1, 0), (2, 0)), h((0, 0), (1, 0)), 5) == 0


def docstring_case() -> Case:
    """highest_common_point's docstring example as a universe: term 2 recovered 20 bytes of
    term 1, term 3 recovered 30; an acceptor of term 2 flushed to 40 meets leader 3."""
    e = h((0, 0), (1, 0))
    leaders = {
        0: Holder(h((0, 0)), []),
        1: Holder(e, [1] * 30),
        2: Holder(e + h((2, 20)), [1] * 20 + [2] * 20),
        3: Holder(e + h((3, 30)), [1] * 30),
    }
    return Universe(0, leaders), leaders[3], leaders[2], 40


@settings(FAST, max_examples=400)
@example(docstring_case())
@given(leader_and_acceptor())
def test_highest_common_point_is_where_the_wals_part(case: Case) -> None:
    """Spec HighestCommonPoint(ph, FlushedHistory(a), f): the largest L <= f where the WALs agree below L."""
    u, leader, acc, flush = case
    got = highest_common_point(leader.history, flushed_history(acc.history, flush), flush)
    assert got == naive_common_point(leader.wal, leader.term, acc.wal, u.start, flush)


@settings(FAST, max_examples=400)
@example(docstring_case())
@given(leader_and_acceptor())
def test_highest_common_point_truncation_leaves_a_prefix_of_the_leader_wal(case: Case) -> None:
    """Spec AcceptElected: TruncationPoint <= acc_flush, and the WAL cut there is a prefix of the leader's."""
    u, leader, acc, flush = case
    point = highest_common_point(leader.history, flushed_history(acc.history, flush), flush)
    assert u.start <= point <= flush
    kept = acc.wal[: point - u.start]
    assert kept == leader.wal[: len(kept)]
    assert naive_terms(leader.history, point) == kept  # LogMatchesHistory after adopting ph


# ---------------------------------------------------------------------------------------------
# BetterDonor
# ---------------------------------------------------------------------------------------------

donors = st.tuples(histories(), st.integers(0, 60))


def test_better_donor_prefers_the_last_term_over_length() -> None:
    """Spec BetterDonor: a higher last_log_term wins over a longer WAL (not BetterDonorByFlush)."""
    newer, older = h((0, 0), (1, 0), (2, 5)), h((0, 0), (1, 0))
    assert better_donor(newer, 6, older, 30)
    assert not better_donor(older, 30, newer, 6)
    assert better_donor(older, 31, older, 30)


@FAST
@given(donors, donors)
def test_better_donor_is_lexicographic_on_last_term_then_flush(d1: tuple, d2: tuple) -> None:
    """Spec BetterDonor: LastLogTerm(h1) > LastLogTerm(h2), or equal terms and f1 > f2."""
    (h1, f1), (h2, f2) = d1, d2
    expected = h1[-1].term > h2[-1].term or (h1[-1].term == h2[-1].term and f1 > f2)
    assert better_donor(h1, f1, h2, f2) == expected


@FAST
@given(donors, donors, donors)
def test_better_donor_is_a_strict_order(d1: tuple, d2: tuple, d3: tuple) -> None:
    """Spec BetterDonor is a strict order: irreflexive, antisymmetric and transitive."""
    def better(x: tuple, y: tuple) -> bool:
        return better_donor(x[0], x[1], y[0], y[1])

    assert not better(d1, d1)
    assert not (better(d1, d2) and better(d2, d1))
    if better(d1, d2) and better(d2, d3):
        assert better(d1, d3)
