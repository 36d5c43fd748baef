-------------------------- MODULE ProposerAcceptor --------------------------
(***************************************************************************)
(* The replicated write-ahead log of paxwal: proposers (computes, no disk) *)
(* win a term from a majority of acceptors (safekeepers, durable), recover *)
(* the most advanced WAL by term history, truncate diverged acceptors and  *)
(* stream WAL; a record is committed when a majority has flushed it.       *)
(*                                                                         *)
(* It refines AbstractLog (an append-only committed log that only grows)  *)
(* under the mapping  log <- committed_log;  that refinement is the        *)
(* top-level correctness statement, checked by TLC as a PROPERTY.          *)
(*                                                                         *)
(* Unlike Neon's ProposerAcceptorStatic.tla, which this spec follows in   *)
(* its vocabulary (term histories, highest common point, donor choice by  *)
(* <<last_log_term, flush_lsn>>), nothing here happens instantly:          *)
(*  - every exchange is a message in an explicit network `msgs`.  A        *)
(*    message stays in `msgs` after delivery, so it may be delivered again *)
(*    (duplication), in any order (reordering), or never; LoseMessage     *)
(*    removes it (loss).  Every receiving action is idempotent or guarded, *)
(*    so redelivery is safe by design, as it must be on the real network.  *)
(*    A message is a value: sending the same content twice is one element, *)
(*    and one request addressed to "every acceptor" stands for the copies  *)
(*    the implementation sends on each connection.                         *)
(*  - an acceptor's WAL has a written part (acc_wal) and a flushed part    *)
(*    (the first acc_flush - 1 entries); RestartAcceptor keeps term, term  *)
(*    history and flushed WAL, and of the unflushed entries any prefix:   *)
(*    written bytes may survive a crash (kill -9 leaves them in the page  *)
(*    cache, a power loss any prefix the disk got), and what survives is  *)
(*    flushed from then on (the implementation fsyncs what it finds       *)
(*    before counting it flushed).                                         *)
(*  - RestartProposer forgets everything a proposer knew.                  *)
(*  - the new leader learns the donor's WAL from its vote (history and     *)
(*    flush_lsn determine the entries, see WalFromHistory) instead of     *)
(*    copying the donor's current WAL at election time.                   *)
(*                                                                         *)
(* WAL entries are identified by <<term, position>> as in Neon's spec: an *)
(* entry is the term of the proposer that created it.  LSNs are positions *)
(* starting at 1; a flush_lsn or commit_lsn is the position of the first  *)
(* entry NOT covered, so 1 means "nothing".                               *)
(*                                                                         *)
(* Deliberate difference from DESIGN.md section 2: the acceptor computes  *)
(* the truncation point itself, from ProposerElected's term history and   *)
(* its own history and flush_lsn, instead of obeying a point the proposer *)
(* computed from its (possibly stale) vote.  A duplicated or late         *)
(* ProposerElected then re-truncates nothing that was flushed, and the    *)
(* proposer learns where to stream from the acceptor's AppendResponse.    *)
(*                                                                         *)
(* Mutants: each bug class the protocol guards against is a named bad     *)
(* variant of one operator, defined right after the correct one, and     *)
(* selected by an `Op <- BadOp` line in spec/mutants/<Name>.cfg:           *)
(*   (a) CommitIgnoringTermStart   (Raft figure 8)                         *)
(*   (b) BadQuorum                 (n div 2 acceptors)                     *)
(*   (c) TermForgottenOnRestart    (vote replied before term persisted)    *)
(*   (d) TruncateAtCommonTermStart (truncation below commit)               *)
(*   (e) StreamingBeforeElected    (WAL accepted before ProposerElected)   *)
(*   (f) BetterDonorByFlush        (donor by flush_lsn alone)              *)
(*   (g) VoteTwiceAllowed          (two votes in one term)                 *)
(*   (h) AckOnWriteBeforeFlush     (AppendResponse before fsync)           *)
(***************************************************************************)
EXTENDS Naturals, Sequences, FiniteSets

CONSTANTS Proposers, Acceptors

VARIABLES
    \* Proposer state: volatile, lost by RestartProposer.
    prop_phase,    \* "greeting" | "campaign" | "leader"
    prop_term,     \* greeting: highest term heard; afterwards: the term campaigned for / won
    prop_heard,    \* greeting: acceptors whose term was heard; campaign: acceptors that voted
    prop_history,  \* campaign: the best donor's term history; leader: its own
    prop_wal,      \* campaign: the best donor's WAL; leader: its own WAL
    prop_acks,     \* leader: highest flush_lsn acknowledged by each acceptor in this term (0: none)
    prop_commit,   \* leader: commit_lsn
    \* Acceptor state: everything but acc_commit and the unflushed WAL is durable.
    acc_term,      \* highest term seen (persisted before any reply)
    acc_history,   \* term history: <<[term, lsn]>>, adopted from ProposerElected
    acc_wal,       \* written WAL, a sequence of terms
    acc_flush,     \* flush_lsn: entries below it are fsync'd
    acc_commit,    \* commit_lsn learned from the leader
    \* The network.
    msgs,
    \* Ghosts, for checking only.
    committed_log, \* the committed log: what leaders committed, extended, never shortened
    elections      \* every election won: [term, leader, history]

prop_vars == <<prop_phase, prop_term, prop_heard, prop_history, prop_wal, prop_acks, prop_commit>>
acc_vars == <<acc_term, acc_history, acc_wal, acc_flush, acc_commit>>
ghost_vars == <<committed_log, elections>>
vars == <<prop_vars, acc_vars, msgs, ghost_vars>>

-----------------------------------------------------------------------------
(***************************************************************************)
(* Helpers                                                                 *)
(***************************************************************************)
Max(x, y) == IF x > y THEN x ELSE y
Min(x, y) == IF x < y THEN x ELSE y
MaxOf(S) == CHOOSE x \in S : \A y \in S : x >= y

Send(m) == msgs' = msgs \cup {m}
\* Replies name their proposer; requests and acks do not (see the header).
AddressedTo(m, p) == "to" \in DOMAIN m /\ m.to = p

IsPrefix(s, t) == Len(s) <= Len(t) /\ SubSeq(t, 1, Len(s)) = s

\* A majority: any two intersect, so a term has at most one winner and a
\* committed entry is on at least one voter of every later election.
IsQuorum(S) == Cardinality(S) * 2 > Cardinality(Acceptors)
\* (b) "n/2": with 3 acceptors one alone is a quorum; quorums need not intersect.
BadQuorum(S) == Cardinality(S) >= Cardinality(Acceptors) \div 2

\* The sentinel every history starts with: term 0 (no leader is ever elected
\* in it) "starts" at 1, so any two histories have a common point.
InitHistory == <<[term |-> 0, lsn |-> 1]>>

LastLogTerm(h) == h[Len(h)].term

\* The term of the entry at position l according to history h: the term of
\* the last switch point at or below l.  Example: <<[0,1],[1,1],[3,3]>> says
\* positions 1 and 2 hold term 1, position 3 and on term 3.
TermAt(h, l) ==
    h[CHOOSE i \in 1..Len(h) : h[i].lsn <= l /\ (i = Len(h) \/ h[i + 1].lsn > l)].term

\* The WAL that history h describes up to flush_lsn f (the recovery fetch).
WalFromHistory(h, f) == [l \in 1..(f - 1) |-> TermAt(h, l)]

\* The history an acceptor reports: switch points at or below flush_lsn (a
\* term starting exactly at flush_lsn counts: that is how an election with no
\* new entry raises last_log_term, as in Neon's AcceptorTermHistory).
FlushedHistory(a) ==
    LET flushed(e) == e.lsn <= acc_flush[a]
    IN SelectSeq(acc_history[a], flushed)

\* The number of leading entries on which two histories agree by term.
CommonPrefixLen(h1, h2) ==
    LET n == Min(Len(h1), Len(h2))
    IN CHOOSE i \in 0..n : /\ \A j \in 1..i : h1[j].term = h2[j].term
                           /\ i < n => h1[i + 1].term # h2[i + 1].term

\* Where the WAL of an acceptor (history ah, flush_lsn f) stops agreeing with
\* a proposer's history ph: the end of the last common term, which ends at
\* the next switch point on either side or, where there is none, at f.
\* Example: ph = <<[0,1],[1,1],[3,3]>>, ah = <<[0,1],[1,1],[2,2]>>, f = 4:
\* term 1 is common and ends at 3 on ph's side, at 2 on ah's, so 2.
HighestCommonPoint(ph, ah, f) ==
    LET i == CommonPrefixLen(ph, ah)
        accEnd == IF i < Len(ah) THEN ah[i + 1].lsn ELSE f
    IN IF i = Len(ph) THEN f ELSE Min(ph[i + 1].lsn, accEnd)

TruncationPoint(a, h) == HighestCommonPoint(h, FlushedHistory(a), acc_flush[a])
\* (d) ends the common term where it starts on the acceptor: flushed entries
\* of that term, committed ones among them, are cut.
TruncateAtCommonTermStart(a, h) ==
    FlushedHistory(a)[CommonPrefixLen(h, FlushedHistory(a))].lsn

\* Donor choice: the most advanced WAL is the one whose last term is highest,
\* then the longest.  Only the last term tells which WAL holds the entries a
\* newer leader wrote; a long WAL of an old term may be a diverged tail.
BetterDonor(h1, f1, h2, f2) ==
    \/ LastLogTerm(h1) > LastLogTerm(h2)
    \/ LastLogTerm(h1) = LastLogTerm(h2) /\ f1 > f2
\* (f) the longest WAL wins, whatever its term.
BetterDonorByFlush(h1, f1, h2, f2) == f1 > f2

\* An acceptor gives at most one vote per term: only to a higher term.
VoteAllowed(a, t) == t > acc_term[a]
\* (g) a second vote in the term it already has.
VoteTwiceAllowed(a, t) == t >= acc_term[a]

\* An acceptor takes WAL and acknowledges it only once it has processed the
\* ProposerElected of its current term: its history then ends with that term,
\* and its WAL is a prefix of the leader's.  Term 0 never has a leader.
Streaming(a) == acc_term[a] > 0 /\ LastLogTerm(acc_history[a]) = acc_term[a]
\* (e) any append of its term is taken, ProposerElected or not.
StreamingBeforeElected(a) == acc_term[a] > 0

\* The leader counts acks only at or above the start of its own term: an
\* acceptor that has not flushed up to there still reports an older
\* last_log_term and may lose a later election to a diverged WAL.
PropStartLsn(p) == prop_history[p][Len(prop_history[p])].lsn
CommitAllowed(p, c) == c >= PropStartLsn(p)
\* (a) previous-term entries committed by counting (Raft figure 8).
CommitIgnoringTermStart(p, c) == TRUE

\* Durable state survives a crash; the term is part of it.
TermAfterRestart(a) == acc_term[a]
\* (c) the vote was sent before its term was persisted: after a crash the
\* acceptor knows only the term of the history it last persisted.
TermForgottenOnRestart(a) == LastLogTerm(acc_history[a])

\* The network after an acceptor has written (not flushed) an append: no
\* reply yet; the acknowledgement comes from Flush.
AckOnWrite(a, wal) == msgs
\* (h) acknowledge what is written, before it is fsync'd.
AckOnWriteBeforeFlush(a, wal) ==
    msgs \cup {[type |-> "AppendResponse", from |-> a, term |-> acc_term[a],
                flush |-> Len(wal) + 1]}

\* The highest LSN that a quorum has acknowledged (0 if none).
QuorumFlush(acks) ==
    LET ok == {l \in {acks[a] : a \in Acceptors} :
                    IsQuorum({b \in Acceptors : acks[b] >= l})}
    IN IF ok = {} THEN 0 ELSE MaxOf(ok)

NoAcks == [a \in Acceptors |-> 0]


-----------------------------------------------------------------------------
(***************************************************************************)
(* Types                                                                   *)
(***************************************************************************)
IsHistory(h) ==
    /\ Len(h) >= 1 /\ h[1] = [term |-> 0, lsn |-> 1]
    /\ \A i \in 1..Len(h) : h[i].term \in Nat /\ h[i].lsn \in Nat \ {0}
    /\ \A i \in 1..(Len(h) - 1) : h[i].term < h[i + 1].term /\ h[i].lsn <= h[i + 1].lsn

IsWal(w) == \A i \in 1..Len(w) : w[i] \in Nat

ToProposer(m) == m.from \in Acceptors /\ m.to \in Proposers

IsMessage(m) ==
    \/ m.type = "Greeting" /\ m.from \in Proposers
    \/ m.type = "GreetingResponse" /\ ToProposer(m) /\ m.term \in Nat
    \/ m.type = "VoteRequest" /\ m.from \in Proposers /\ m.term \in Nat \ {0}
    \/ /\ m.type = "VoteResponse" /\ ToProposer(m)
       /\ m.term \in Nat \ {0} /\ IsHistory(m.history) /\ m.flush \in Nat \ {0}
    \/ m.type = "ProposerElected" /\ m.term \in Nat \ {0} /\ IsHistory(m.history)
    \/ /\ m.type = "AppendRequest"
       /\ m.term \in Nat \ {0} /\ m.lsn \in Nat \ {0}
       /\ Len(m.entries) <= 1 /\ IsWal(m.entries) /\ m.commit \in Nat \ {0}
    \/ /\ m.type = "AppendResponse" /\ m.from \in Acceptors
       /\ m.term \in Nat \ {0} /\ m.flush \in Nat \ {0}

TypeOK ==
    /\ \A p \in Proposers :
        /\ prop_phase[p] \in {"greeting", "campaign", "leader"}
        /\ prop_term[p] \in Nat
        /\ prop_heard[p] \subseteq Acceptors
        /\ prop_phase[p] = "leader" => IsHistory(prop_history[p])
        /\ IsWal(prop_wal[p])
        /\ prop_acks[p] \in [Acceptors -> Nat]
        /\ prop_commit[p] \in 1..(Len(prop_wal[p]) + 1)
    /\ \A a \in Acceptors :
        /\ acc_term[a] \in Nat
        /\ IsHistory(acc_history[a])
        /\ IsWal(acc_wal[a])
        /\ acc_flush[a] \in 1..(Len(acc_wal[a]) + 1)
        /\ acc_commit[a] \in 1..acc_flush[a]
    /\ \A m \in msgs : IsMessage(m)
    /\ IsWal(committed_log)

-----------------------------------------------------------------------------
(***************************************************************************)
(* Initial state: proposers have just started and sent their greeting.    *)
(***************************************************************************)
Init ==
    /\ prop_phase = [p \in Proposers |-> "greeting"]
    /\ prop_term = [p \in Proposers |-> 0]
    /\ prop_heard = [p \in Proposers |-> {}]
    /\ prop_history = [p \in Proposers |-> <<>>]
    /\ prop_wal = [p \in Proposers |-> <<>>]
    /\ prop_acks = [p \in Proposers |-> NoAcks]
    /\ prop_commit = [p \in Proposers |-> 1]
    /\ acc_term = [a \in Acceptors |-> 0]
    /\ acc_history = [a \in Acceptors |-> InitHistory]
    /\ acc_wal = [a \in Acceptors |-> <<>>]
    /\ acc_flush = [a \in Acceptors |-> 1]
    /\ acc_commit = [a \in Acceptors |-> 1]
    /\ msgs = {[type |-> "Greeting", from |-> p] : p \in Proposers}
    /\ committed_log = <<>>
    /\ elections = {}

-----------------------------------------------------------------------------
(***************************************************************************)
(* Proposer actions                                                        *)
(***************************************************************************)

(* Proposer p crashes and starts again with no state (a compute restart); *)
(* it greets every acceptor to learn their terms.                          *)
(* Effect: replies in flight to the old incarnation are dropped, as its   *)
(*   connections are.  Without that, TLC finds a restarted proposer that  *)
(*   picks its old term again from stale greeting replies and wins it a   *)
(*   second time with votes given to its previous incarnation: two        *)
(*   leaders, two histories, one term.                                     *)
(* In impl: ProposerCore.restart_proposer, the core's constructor.        *)
RestartProposer(p) ==
    /\ prop_phase' = [prop_phase EXCEPT ![p] = "greeting"]
    /\ prop_term' = [prop_term EXCEPT ![p] = 0]
    /\ prop_heard' = [prop_heard EXCEPT ![p] = {}]
    /\ prop_history' = [prop_history EXCEPT ![p] = <<>>]
    /\ prop_wal' = [prop_wal EXCEPT ![p] = <<>>]
    /\ prop_acks' = [prop_acks EXCEPT ![p] = NoAcks]
    /\ prop_commit' = [prop_commit EXCEPT ![p] = 1]
    /\ msgs' = {m \in msgs : ~AddressedTo(m, p)} \cup {[type |-> "Greeting", from |-> p]}
    /\ UNCHANGED <<acc_vars, ghost_vars>>

(* Proposer p, greeting, hears an acceptor's term.                         *)
(* Guard: p is still greeting (later, terms come from votes).              *)
(* Effect: remember the acceptor and the highest term heard.              *)
(* In impl: ProposerCore.collect_term (GreetingResponse received).        *)
CollectTerm(p, m) ==
    /\ m.type = "GreetingResponse" /\ m.to = p
    /\ prop_phase[p] = "greeting"
    /\ prop_heard' = [prop_heard EXCEPT ![p] = @ \cup {m.from}]
    /\ prop_term' = [prop_term EXCEPT ![p] = Max(@, m.term)]
    /\ UNCHANGED <<prop_phase, prop_history, prop_wal, prop_acks, prop_commit,
                   acc_vars, msgs, ghost_vars>>

(* Proposer p, having heard the terms of a quorum, campaigns for the next *)
(* term above all of them and asks every acceptor for its vote.            *)
(* Guard: a quorum's terms are known, so the new term is above every term *)
(*   that quorum promised (a smaller one could not win there anyway).     *)
(* In impl: ProposerCore.start_campaign.                                  *)
StartCampaign(p) ==
    /\ prop_phase[p] = "greeting"
    /\ IsQuorum(prop_heard[p])
    /\ prop_phase' = [prop_phase EXCEPT ![p] = "campaign"]
    /\ prop_term' = [prop_term EXCEPT ![p] = @ + 1]
    /\ prop_heard' = [prop_heard EXCEPT ![p] = {}]
    /\ Send([type |-> "VoteRequest", from |-> p, term |-> prop_term[p] + 1])
    /\ UNCHANGED <<prop_history, prop_wal, prop_acks, prop_commit,
                   acc_vars, ghost_vars>>

(* Proposer p records a vote, keeping the most advanced WAL seen so far   *)
(* as the donor's.                                                         *)
(* Guard: the vote is for the term p campaigns in (a vote of an older     *)
(*   campaign says nothing about this one).                                *)
(* Effect: the voter joins prop_heard; its history and WAL replace the    *)
(*   donor's if BetterDonor says so (the first vote always does).          *)
(* In impl: ProposerCore.collect_vote.                                    *)
CollectVote(p, m) ==
    /\ m.type = "VoteResponse" /\ m.to = p
    /\ prop_phase[p] = "campaign" /\ m.term = prop_term[p]
    /\ prop_heard' = [prop_heard EXCEPT ![p] = @ \cup {m.from}]
    /\ IF prop_heard[p] = {} \/
          BetterDonor(m.history, m.flush, prop_history[p], Len(prop_wal[p]) + 1)
       THEN /\ prop_history' = [prop_history EXCEPT ![p] = m.history]
            /\ prop_wal' = [prop_wal EXCEPT ![p] = WalFromHistory(m.history, m.flush)]
       ELSE UNCHANGED <<prop_history, prop_wal>>
    /\ UNCHANGED <<prop_phase, prop_term, prop_acks, prop_commit,
                   acc_vars, msgs, ghost_vars>>

(* Proposer p, with votes from a quorum, becomes leader of its term.       *)
(* Guard: a quorum voted, so no other proposer can win this term, and the *)
(*   donor's WAL holds every entry committed in an earlier term.           *)
(* Effect: p's history is the donor's plus its own term starting at the   *)
(*   end of the donor's WAL; ProposerElected carries it to each acceptor. *)
(* In impl: ProposerCore.become_leader.                                   *)
BecomeLeader(p) ==
    /\ prop_phase[p] = "campaign"
    /\ IsQuorum(prop_heard[p])
    /\ LET h == Append(prop_history[p],
                       [term |-> prop_term[p], lsn |-> Len(prop_wal[p]) + 1])
       IN /\ prop_phase' = [prop_phase EXCEPT ![p] = "leader"]
          /\ prop_history' = [prop_history EXCEPT ![p] = h]
          /\ Send([type |-> "ProposerElected", term |-> prop_term[p], history |-> h])
          /\ elections' = elections \cup {[term |-> prop_term[p], leader |-> p, history |-> h]}
    /\ UNCHANGED <<prop_term, prop_heard, prop_wal, prop_acks, prop_commit,
                   acc_vars, committed_log>>

(* Leader p appends a new entry to its WAL (a record from the compute).   *)
(* In impl: ProposerCore.new_entry, behind the shell's append(record).    *)
NewEntry(p) ==
    /\ prop_phase[p] = "leader"
    /\ prop_wal' = [prop_wal EXCEPT ![p] = Append(@, prop_term[p])]
    /\ UNCHANGED <<prop_phase, prop_term, prop_heard, prop_history, prop_acks,
                   prop_commit, acc_vars, msgs, ghost_vars>>

(* Leader p sends the entry at position l with its commit_lsn; l one past *)
(* its WAL is a heartbeat carrying only commit_lsn.  Any position may be  *)
(* (re)sent: the implementation streams to each acceptor from where that  *)
(* acceptor's WAL ends, and again from there after a reconnection.        *)
(* In impl: ProposerCore.send_append.                                     *)
SendAppend(p, l) ==
    /\ prop_phase[p] = "leader"
    /\ l \in 1..(Len(prop_wal[p]) + 1)
    /\ Send([type |-> "AppendRequest", term |-> prop_term[p], lsn |-> l,
             entries |-> IF l <= Len(prop_wal[p]) THEN <<prop_wal[p][l]>> ELSE <<>>,
             commit |-> prop_commit[p]])
    /\ UNCHANGED <<prop_vars, acc_vars, ghost_vars>>

(* Leader p receives an acknowledgement and advances commit_lsn to the    *)
(* highest LSN flushed on a quorum, if CommitAllowed.                      *)
(* Guard: the ack is of p's term: such an ack comes from an acceptor that *)
(*   processed p's ProposerElected, so its flushed WAL is a prefix of p's. *)
(* Effect: acks only grow (a late ack reports less); commit_lsn only      *)
(*   grows, and never past p's own WAL.  The ghost committed_log becomes  *)
(*   p's committed prefix unless that is a prefix of it already: the      *)
(*   refinement to AbstractLog then checks that a new committed log       *)
(*   extends every log committed before, by any proposer.  A shorter      *)
(*   prefix that agrees leaves it as it is: a deposed leader may count a  *)
(*   late ack of its term after a newer leader committed more (found by   *)
(*   replaying simulator traces).                                          *)
(* In impl: ProposerCore.collect_ack.                                     *)
CollectAck(p, m) ==
    /\ m.type = "AppendResponse"
    /\ prop_phase[p] = "leader" /\ m.term = prop_term[p]
    /\ LET acks == [prop_acks[p] EXCEPT ![m.from] = Max(@, m.flush)]
           c == Min(QuorumFlush(acks), Len(prop_wal[p]) + 1)
       IN /\ prop_acks' = [prop_acks EXCEPT ![p] = acks]
          /\ IF c > prop_commit[p] /\ CommitAllowed(p, c)
             THEN /\ prop_commit' = [prop_commit EXCEPT ![p] = c]
                  /\ committed_log' = IF IsPrefix(SubSeq(prop_wal[p], 1, c - 1), committed_log)
                                      THEN committed_log
                                      ELSE SubSeq(prop_wal[p], 1, c - 1)
             ELSE UNCHANGED <<prop_commit, committed_log>>
    /\ UNCHANGED <<prop_phase, prop_term, prop_heard, prop_history, prop_wal,
                   acc_vars, msgs, elections>>

-----------------------------------------------------------------------------
(***************************************************************************)
(* Acceptor actions.  Each persists its effect before the reply it sends. *)
(***************************************************************************)

(* Acceptor a crashes and restarts: term, history and flushed WAL are    *)
(* durable; commit_lsn, persisted lazily, may come back as any value up   *)
(* to the one it had.                                                      *)
(* Effect on the WAL: any prefix of it at least as long as the flushed    *)
(*   part survives, and that prefix is the flushed part from then on.     *)
(*   Written bytes may outlive a crash without an fsync (kill -9 leaves   *)
(*   them in the page cache; a power loss keeps whatever prefix the disk  *)
(*   got), so the restarted acceptor cannot tell them from flushed ones:  *)
(*   it fsyncs what it finds before counting it flushed.  Keeping nothing *)
(*   unflushed (k = acc_flush[a]) is the crash that loses it all.  What   *)
(*   is kept matches acc_history: an entry is only written once the       *)
(*   history it was written under is durable (AcceptElected persists the  *)
(*   history and finishes its cut before any entry of the new term), and  *)
(*   a truncation is durable before the truncated WAL is written again,   *)
(*   so no entry a truncation removed can come back.                       *)
(* In impl: AcceptorCore.restart_acceptor (the core built from disk, by   *)
(*   FileWal.open, which fsyncs what it finds).                            *)
RestartAcceptor(a) ==
    /\ \E k \in acc_flush[a]..(Len(acc_wal[a]) + 1) :
          /\ acc_wal' = [acc_wal EXCEPT ![a] = SubSeq(@, 1, k - 1)]
          /\ acc_flush' = [acc_flush EXCEPT ![a] = k]
    /\ acc_term' = [acc_term EXCEPT ![a] = TermAfterRestart(a)]
    /\ \E c \in 1..acc_commit[a] : acc_commit' = [acc_commit EXCEPT ![a] = c]
    /\ UNCHANGED <<acc_history, prop_vars, msgs, ghost_vars>>

(* Acceptor a answers a greeting with its term.                            *)
(* In impl: AcceptorCore.answer_greeting.                                 *)
AnswerGreeting(a, m) ==
    /\ m.type = "Greeting"
    /\ Send([type |-> "GreetingResponse", from |-> a, to |-> m.from, term |-> acc_term[a]])
    /\ UNCHANGED <<prop_vars, acc_vars, ghost_vars>>

(* Acceptor a votes for the requesting proposer.                           *)
(* Guard: VoteAllowed, i.e. the term is above every term a has seen:      *)
(*   one vote per term, and never for a term older than a promise.        *)
(* Effect: the term is persisted, then the vote carries a's flushed term  *)
(*   history and flush_lsn (what the new leader may need to recover).      *)
(* In impl: AcceptorCore.vote; the reply leaves after the term's fsync.   *)
Vote(a, m) ==
    /\ m.type = "VoteRequest"
    /\ VoteAllowed(a, m.term)
    /\ acc_term' = [acc_term EXCEPT ![a] = m.term]
    /\ Send([type |-> "VoteResponse", from |-> a, to |-> m.from, term |-> m.term,
             history |-> FlushedHistory(a), flush |-> acc_flush[a]])
    /\ UNCHANGED <<acc_history, acc_wal, acc_flush, acc_commit, prop_vars, ghost_vars>>

(* Acceptor a processes ProposerElected: truncates its WAL at the highest *)
(* common point of the leader's history and its own, and adopts the       *)
(* leader's history.                                                       *)
(* Guard: the message is of a's current term (a promised it; an older     *)
(*   leader is deposed, a newer one must first get a's vote); truncation  *)
(*   never goes below a's commit_lsn (it cannot in this protocol; the     *)
(*   implementation refuses such a message instead of obeying it).        *)
(* Effect: the WAL past the common point diverges from the leader's and   *)
(*   is cut; a repeated message cuts only unflushed entries.  Once the    *)
(*   truncation and the history are persisted, a acknowledges its         *)
(*   flush_lsn: the leader streams to a from there.                        *)
(* In impl: AcceptorCore.accept_elected.                                  *)
AcceptElected(a, m) ==
    /\ m.type = "ProposerElected"
    /\ m.term = acc_term[a]
    /\ LET start == TruncationPoint(a, m.history)
       IN /\ start >= acc_commit[a]
          /\ acc_wal' = [acc_wal EXCEPT ![a] = SubSeq(@, 1, start - 1)]
          /\ acc_flush' = [acc_flush EXCEPT ![a] = start]
          /\ acc_history' = [acc_history EXCEPT ![a] = m.history]
          /\ Send([type |-> "AppendResponse", from |-> a,
                   term |-> acc_term[a], flush |-> start])
    /\ UNCHANGED <<acc_term, acc_commit, prop_vars, ghost_vars>>

(* Acceptor a writes an appended entry (not yet flushed) and learns the   *)
(* leader's commit_lsn.                                                    *)
(* Guard: the leader is of a's term and a is Streaming in it; the entry   *)
(*   leaves no gap; an entry a already holds must be the same (appends    *)
(*   never rewrite WAL).                                                   *)
(* Effect: commit_lsn grows to the leader's, capped by a's flush_lsn, the *)
(*   part of a's WAL known to match the leader's.                          *)
(* In impl: AcceptorCore.accept_append.                                   *)
AcceptAppend(a, m) ==
    /\ m.type = "AppendRequest"
    /\ m.term = acc_term[a]
    /\ Streaming(a)
    /\ m.lsn <= Len(acc_wal[a]) + 1
    /\ m.entries # <<>> /\ m.lsn <= Len(acc_wal[a]) => acc_wal[a][m.lsn] = m.entries[1]
    /\ LET wal == IF m.entries # <<>> /\ m.lsn = Len(acc_wal[a]) + 1
                  THEN Append(acc_wal[a], m.entries[1])
                  ELSE acc_wal[a]
       IN /\ acc_wal' = [acc_wal EXCEPT ![a] = wal]
          /\ msgs' = AckOnWrite(a, wal)
    /\ acc_commit' = [acc_commit EXCEPT ![a] = Max(@, Min(m.commit, acc_flush[a]))]
    /\ UNCHANGED <<acc_term, acc_history, acc_flush, prop_vars, ghost_vars>>

(* Acceptor a fsyncs its written WAL and, if Streaming, acknowledges the  *)
(* new flush_lsn to the leader of its term.                                *)
(* Guard: something is written and not yet flushed.                        *)
(* Effect: an ack is addressed by its term: only the term's leader counts *)
(*   it, and a term has one leader (ElectionSafety).                       *)
(* In impl: AcceptorCore.flush (the completion of the shell's fsync).     *)
Flush(a) ==
    /\ acc_flush[a] <= Len(acc_wal[a])
    /\ acc_flush' = [acc_flush EXCEPT ![a] = Len(acc_wal[a]) + 1]
    /\ IF Streaming(a)
       THEN Send([type |-> "AppendResponse", from |-> a,
                  term |-> acc_term[a], flush |-> Len(acc_wal[a]) + 1])
       ELSE UNCHANGED msgs
    /\ UNCHANGED <<acc_term, acc_history, acc_wal, acc_commit, prop_vars, ghost_vars>>

-----------------------------------------------------------------------------
(***************************************************************************)
(* Network faults                                                          *)
(***************************************************************************)

(* The network loses message m.                                            *)
(* In impl: the simulator dropping a frame; a broken connection.          *)
LoseMessage(m) ==
    /\ msgs' = msgs \ {m}
    /\ UNCHANGED <<prop_vars, acc_vars, ghost_vars>>

-----------------------------------------------------------------------------
Next ==
    \/ \E p \in Proposers :
        \/ RestartProposer(p)
        \/ StartCampaign(p)
        \/ BecomeLeader(p)
        \/ NewEntry(p)
        \/ \E l \in 1..(Len(prop_wal[p]) + 1) : SendAppend(p, l)
        \/ \E m \in msgs : CollectTerm(p, m) \/ CollectVote(p, m) \/ CollectAck(p, m)
    \/ \E a \in Acceptors :
        \/ RestartAcceptor(a)
        \/ Flush(a)
        \/ \E m \in msgs : AnswerGreeting(a, m) \/ Vote(a, m) \/ AcceptElected(a, m)
                           \/ AcceptAppend(a, m)
    \/ \E m \in msgs : LoseMessage(m)

Spec == Init /\ [][Next]_vars

-----------------------------------------------------------------------------
(***************************************************************************)
(* Invariants                                                              *)
(***************************************************************************)

\* The flushed part of an acceptor's WAL.
FlushedWal(a) == SubSeq(acc_wal[a], 1, acc_flush[a] - 1)

\* At most one leader per term, ever (not only at the same time).
ElectionSafety ==
    \A e1, e2 \in elections : e1.term = e2.term => e1 = e2

\* Terms never decrease along a WAL.
LogIsMonotonic ==
    /\ \A a \in Acceptors : \A i \in 1..(Len(acc_wal[a]) - 1) : acc_wal[a][i] <= acc_wal[a][i + 1]
    /\ \A p \in Proposers : \A i \in 1..(Len(prop_wal[p]) - 1) : prop_wal[p][i] <= prop_wal[p][i + 1]

\* An acceptor's WAL is the one its term history describes: recovery
\* (WalFromHistory) rebuilds exactly what is on disk.
LogMatchesHistory ==
    \A a \in Acceptors : \A l \in 1..Len(acc_wal[a]) : acc_wal[a][l] = TermAt(acc_history[a], l)

\* Two logs agree on every position either has committed: each node's
\* committed prefix is a prefix of the committed log.
LogSafety ==
    /\ \A p \in Proposers : IsPrefix(SubSeq(prop_wal[p], 1, prop_commit[p] - 1), committed_log)
    /\ \A a \in Acceptors : IsPrefix(SubSeq(acc_wal[a], 1, acc_commit[a] - 1), committed_log)

\* Every committed entry is in the flushed WAL of every member of a majority
\* (stated with Majorities, not IsQuorum, so that a mutant quorum rule cannot
\* weaken the invariant that judges it).
Majorities == {Q \in SUBSET Acceptors : Cardinality(Q) * 2 > Cardinality(Acceptors)}
CommittedNeverLost ==
    \E Q \in Majorities : \A a \in Q : IsPrefix(committed_log, FlushedWal(a))

(***************************************************************************)
(* Properties of steps                                                     *)
(***************************************************************************)

\* commit_lsn never goes back: the committed log only grows, a leader's
\* commit_lsn only grows, and an acceptor's only grows except by a crash
\* (a step that keeps its history and its flushed WAL: RestartAcceptor).
CommitLsnMonotonic ==
    [][ /\ Len(committed_log') >= Len(committed_log)
        /\ \A p \in Proposers :
              prop_phase'[p] = "leader" => prop_commit'[p] >= prop_commit[p]
        /\ \A a \in Acceptors :
              acc_commit'[a] < acc_commit[a] =>
                  /\ acc_flush'[a] >= acc_flush[a] /\ acc_history'[a] = acc_history[a]
                  /\ IsPrefix(FlushedWal(a), acc_wal'[a])
      ]_vars

\* The top-level statement: the committed log is an append-only log.
AL == INSTANCE AbstractLog WITH log <- committed_log
Refinement == AL!Spec

(***************************************************************************)
(* Probes expected to FAIL: they show a model reaches interesting states. *)
(* Check one as an invariant; TLC must report it violated.                 *)
(***************************************************************************)
ProbeNoCommit == committed_log = <<>>
\* Two acceptors' WALs disagree somewhere: a later ProposerElected must cut one.
ProbeNoDivergence ==
    \A a, b \in Acceptors : IsPrefix(acc_wal[a], acc_wal[b]) \/ IsPrefix(acc_wal[b], acc_wal[a])
=============================================================================
