"""The implementation-mutant catalogue: deliberate bugs in the protocol cores, as source patches.

Theory of operation
===================

Each `Mutant` names one core module (impl/acceptor.py, impl/proposer.py, impl/termhistory.py),
an exact snippet of its source, the text that replaces it, and the bug in one line.  Nothing
in impl/ knows about mutants: there is no flag and no hook, so the normal code paths are the
code.  conformance/impl_mutants.py applies one mutant at a time, in a worker process only.

`patched_source` insists that the snippet occurs exactly once in the module as it is today: a
refactor that rewrites a snippet makes `paxwal mutants` fail naming the mutant, instead of
silently checking an unmutated core.  Snippets are therefore kept short (a line, or the few
lines the bug needs) and quote the comment of the rule they break where there is one, which
pins them to their place.

The letters (a)..(h) are the spec mutants of spec/ProposerAcceptor.tla's header that a
mutant is the implementation's version of; the rest have no spec twin.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import attrs

__all__ = ["CATALOGUE", "CatalogueError", "Mutant", "patched_source", "select"]


class CatalogueError(Exception):
    """A catalogue entry does not apply (or is unknown); the message names the mutant."""


@attrs.frozen
class Mutant:
    """One deliberate bug: replace `original` (exactly once in `module`) by `replacement`."""

    name: str
    module: str
    original: str
    replacement: str
    bug: str


def _module_path(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise CatalogueError(f"no module {module}")
    return Path(spec.origin)


def patched_source(mutant: Mutant) -> str:
    """The mutant's module source with its snippet replaced; checked to compile.

    Raises:
        CatalogueError: the snippet does not occur exactly once, or the patched module does
            not compile; the message names the mutant.
    """
    path = _module_path(mutant.module)
    source = path.read_text()
    count = source.count(mutant.original)
    if count != 1:
        raise CatalogueError(
            f"mutant {mutant.name}: its original snippet occurs {count} times in {path}"
            f" (must be exactly once; update the catalogue): {mutant.original!r}"
        )
    patched = source.replace(mutant.original, mutant.replacement)
    try:
        compile(patched, str(path), "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise CatalogueError(f"mutant {mutant.name}: the patched {path.name} does not compile: {exc}") from None
    return patched


def select(names: list[str] | None) -> list[Mutant]:
    """The catalogue, or the named mutants in catalogue order.

    Raises:
        CatalogueError: a name that is not in the catalogue (the message lists them all).
    """
    if not names:
        return list(CATALOGUE)
    known = [m.name for m in CATALOGUE]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise CatalogueError(f"unknown mutant(s) {', '.join(unknown)}; available: {', '.join(known)}")
    return [m for m in CATALOGUE if m.name in names]


_A, _P, _T = "impl.acceptor", "impl.proposer", "impl.termhistory"

CATALOGUE: tuple[Mutant, ...] = (
    # --- the acceptor ------------------------------------------------------------------------
    Mutant(
        "ack_before_flush", _A,
        'effects = write + self._emit("AcceptAppend", (), meta)',
        'effects = write + self._emit("AcceptAppend", (Send(peer, AppendResponse(acceptor=self.node,'
        ' term=self.term, flush_lsn=self.write_lsn, commit_lsn=self.commit_lsn)),) if new else (), meta)',
        "(h) an append is acknowledged as written, before its fsync",
    ),
    Mutant(
        "vote_twice", _A,
        "if not msg.term > self.term:  # VoteAllowed",
        "if not msg.term >= self.term:  # VoteAllowed",
        "(g) a vote for a term equal to the one promised: two votes in a term",
    ),
    Mutant(
        "vote_before_persist", _A,
        "return (self._persist(voted),)",
        "return voted() + (self._persist(lambda: ()),)",
        "(c) the vote is sent before its term is stored: a crash forgets the promise",
    ),
    Mutant(
        "history_not_persisted", _A,
        "return (self._persist(elected, truncate_pending=start if cut else None),)",
        "return elected()",
        "ProposerElected is acked before its term history is stored",
    ),
    Mutant(
        "truncate_below_commit", _A,
        "if start < self.commit_lsn:  # never truncate committed WAL",
        "start = min(start, max(s.lsn for s in self.history if s in msg.term_history))\n"
        "        if start < self.wal_start:  # never truncate committed WAL",
        "(d) the cut is at the start of the last common term, and the commit_lsn guard is gone",
    ),
    Mutant(
        "commit_goes_back", _A,
        "self.commit_lsn = max(self.commit_lsn, min(msg.commit_lsn, self.flush_lsn))",
        "self.commit_lsn = min(msg.commit_lsn, self.flush_lsn)",
        "commit_lsn is taken from each append, so an older one moves it back",
    ),
    Mutant(
        "append_from_stale_term", _A,
        "if msg.term < self.term:\n"
        "            return self._refuse_stale(peer, msg.term)\n"
        "        if (\n"
        "            msg.term != self.term\n",
        "if (\n"
        "            msg.term > self.term\n",
        "appends of a deposed leader (an older term) are written",
    ),
    Mutant(
        "duplicate_append_twice", _A,
        'new = msg.wal[self.write_lsn - msg.begin_lsn :] if msg.end_lsn > self.write_lsn else b""',
        'new = msg.wal',
        "an append the acceptor holds already (a duplicate, a resend) is written again",
    ),
    Mutant(
        "append_with_gap", _A,
        "\n            or msg.begin_lsn > self.write_lsn  # no gap",
        "",
        "an append that starts beyond the WAL's end is written at its end (no gap check)",
    ),
    # --- the proposer ------------------------------------------------------------------------
    Mutant(
        "figure8_commit", _P,
        "if commit > self.commit_lsn and commit >= self.history[-1].lsn:  # CommitAllowed (rule 5)",
        "if commit > self.commit_lsn:  # CommitAllowed (rule 5)",
        "(a) entries of earlier terms committed by counting acks (Raft figure 8)",
    ),
    Mutant(
        "bad_quorum", _P,
        "return len(self.acceptors) // 2 + 1",
        "return len(self.acceptors) // 2",
        "(b) a quorum of n/2 acceptors, not a majority",
    ),
    Mutant(
        "last_term_heard", _P,
        "self.term = max(self.term, msg.term)",
        "self.term = msg.term",
        "the campaign is for the term above the last term heard, not the highest",
    ),
    Mutant(
        "commit_on_one_ack", _P,
        "return acked[self.quorum - 1] if len(acked) >= self.quorum else self.wal_start",
        "return acked[0] if acked else self.wal_start",
        "commit_lsn is the highest flush_lsn acked by anyone, not by a quorum",
    ),
    Mutant(
        "donor_first_vote", _P,
        "if not self.heard or better_donor(msg.term_history, msg.flush_lsn, self.history, self.wal_end):",
        "if not self.heard:",
        "the first voter is the donor, whatever the others hold",
    ),
    # --- term histories ----------------------------------------------------------------------
    Mutant(
        "donor_by_flush", _T,
        "return (last_log_term(h1), flush1) > (last_log_term(h2), flush2)",
        "return flush1 > flush2",
        "(f) the donor is the longest WAL, whatever its last term",
    ),
    Mutant(
        "keep_diverged_tail", _T,
        "return min(prop_history[i].lsn, acc_end)",
        "return acc_end",
        "the common point ignores where the leader's history switches: a diverged tail stays",
    ),
    Mutant(
        "switch_at_flush_dropped", _T,
        "return tuple(switch for switch in history if switch.lsn <= flush_lsn)",
        "return history[:1] + tuple(switch for switch in history[1:] if switch.lsn < flush_lsn)",
        "off by one: a vote leaves out a term switch exactly at flush_lsn (last_log_term too low)",
    ),
)
