"""Term histories: which term wrote which part of a WAL, and where two WALs part ways.

A term history is a tuple of `TermSwitch(term, lsn)`: from `lsn` on (up to the next switch),
the WAL was written by the leader of `term`.  It starts with the term-0 sentinel at the WAL's
first LSN, terms strictly increase and LSNs never decrease (impl/wire.py checks that shape).
Two switches may share an LSN: a leader elected with nothing to add to its donor's WAL starts
its term where the previous one started, and that term wrote no byte.

Every function here is pure and is the twin of a spec operator of the same name
(spec/ProposerAcceptor.tla), with byte LSNs where the spec has entry positions:

===========================  ======================  =====================================
function                     spec operator           used by
===========================  ======================  =====================================
last_log_term                LastLogTerm             donor choice, Streaming
term_at                      TermAt                  the trace abstraction (impl/trace.py)
flushed_history              FlushedHistory          Vote (what a voter reports)
common_prefix_len            CommonPrefixLen         highest_common_point
highest_common_point         HighestCommonPoint      AcceptElected (where to truncate)
better_donor                 BetterDonor             CollectVote (which WAL to recover)
===========================  ======================  =====================================

Neon's safekeeper has the same functions (`TermHistory::find_highest_common_point`); its
walproposer computes the point for each acceptor, ours lets each acceptor compute its own
(see the spec's header for why).
"""

from __future__ import annotations

from impl.wire import TermSwitch

__all__ = [
    "TermHistory",
    "better_donor",
    "common_prefix_len",
    "flushed_history",
    "highest_common_point",
    "last_log_term",
    "term_at",
]

TermHistory = tuple[TermSwitch, ...]


def last_log_term(history: TermHistory) -> int:
    """The term of the last switch: the term that wrote (or may write) the WAL's tail."""
    return history[-1].term


def term_at(history: TermHistory, lsn: int) -> int:
    """The term that wrote the byte at `lsn`: that of the last switch at or below it.

    Of several switches at one LSN the last wins: the earlier ones wrote nothing.

    Raises:
        ValueError: `lsn` lies below the history's first switch (before the WAL starts).
    """
    if lsn < history[0].lsn:
        raise ValueError(f"lsn {lsn} is below the WAL's start {history[0].lsn}")
    term = history[0].term
    for switch in history:
        if switch.lsn > lsn:
            break
        term = switch.term
    return term


def flushed_history(history: TermHistory, flush_lsn: int) -> TermHistory:
    """The switches at or below `flush_lsn`: the history of the durable WAL.

    A switch exactly at `flush_lsn` is kept: it is how an election that added no WAL still
    raises the acceptor's last_log_term (spec FlushedHistory, Neon's AcceptorTermHistory).
    """
    return tuple(switch for switch in history if switch.lsn <= flush_lsn)


def common_prefix_len(h1: TermHistory, h2: TermHistory) -> int:
    """How many leading switches the two histories share by term."""
    n = 0
    for s1, s2 in zip(h1, h2):
        if s1.term != s2.term:
            break
        n += 1
    return n


def highest_common_point(prop_history: TermHistory, acc_history: TermHistory, flush_lsn: int) -> int:
    """Where an acceptor's flushed WAL stops agreeing with a leader's history.

    The last term both histories hold ends at the next switch on either side or, where
    the acceptor has none, at its `flush_lsn`.  If the acceptor holds every term of the
    leader's history, its whole flushed WAL agrees.

    Example: leader [0@0, 1@0, 3@30], acceptor [0@0, 1@0, 2@20] flushed to 40: term 1 is
    common; it ends at 30 for the leader and at 20 for the acceptor, so 20.

    Args:
        prop_history: the leader's history (ProposerElected).
        acc_history: the acceptor's flushed history (`flushed_history`).
        flush_lsn: the acceptor's flush_lsn.

    Returns:
        The LSN to truncate the acceptor's WAL at; never above `flush_lsn`.
    """
    i = common_prefix_len(prop_history, acc_history)
    if i == len(prop_history):
        return flush_lsn
    acc_end = acc_history[i].lsn if i < len(acc_history) else flush_lsn
    return min(prop_history[i].lsn, acc_end)


def better_donor(h1: TermHistory, flush1: int, h2: TermHistory, flush2: int) -> bool:
    """Whether the WAL (h1, flush1) is more advanced than (h2, flush2).

    By last_log_term first, then by length.  Length alone is wrong: a long WAL of an old
    term may be a diverged tail that a newer leader already cut everywhere else (the
    BetterDonorByFlush mutant).
    """
    return (last_log_term(h1), flush1) > (last_log_term(h2), flush2)
