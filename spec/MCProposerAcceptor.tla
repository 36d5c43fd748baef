------------------------- MODULE MCProposerAcceptor -------------------------
(***************************************************************************)
(* Bounded models of ProposerAcceptor for TLC: the state constraint, the  *)
(* symmetry, and the action constraints that steer targeted models.  The  *)
(* models themselves are spec/models/*.cfg and spec/mutants/*.cfg.         *)
(***************************************************************************)
EXTENDS ProposerAcceptor, TLC

CONSTANTS MaxTerm, MaxEntries

\* Terms and WAL lengths are bounded; everything else follows from them.
StateConstraint ==
    \A p \in Proposers : prop_term[p] <= MaxTerm /\ Len(prop_wal[p]) <= MaxEntries

\* Proposers are interchangeable, and so are acceptors: every action and
\* invariant treats them alike (no ordering, no distinguished member).
Symmetry == Permutations(Proposers) \cup Permutations(Acceptors)

(***************************************************************************)
(* The view: states that differ only in dead messages are one state.  A    *)
(* message is dead when no one can ever receive it again: a reply to a    *)
(* proposer that has left the phase that reads it (a restart drops its    *)
(* replies, and it never returns to a term it left), or an ack of a term  *)
(* with no leader (a term's leader never comes back after a crash).        *)
(* Dead messages change no behaviour, so the view is exact for safety.    *)
(***************************************************************************)
Live(m) ==
    CASE m.type = "GreetingResponse" -> prop_phase[m.to] = "greeting"
      [] m.type = "VoteResponse" -> prop_phase[m.to] = "campaign" /\ prop_term[m.to] = m.term
      [] m.type = "AppendResponse" ->
            \E p \in Proposers : prop_phase[p] # "greeting" /\ prop_term[p] = m.term
      [] OTHER -> TRUE

View == <<prop_vars, acc_vars, {m \in msgs : Live(m)}, ghost_vars>>

(***************************************************************************)
(* Action constraints.  Each removes behaviours that no counterexample     *)
(* needs; a model that uses one must still pass with the correct spec      *)
(* (the mutant runner checks that).                                        *)
(***************************************************************************)

\* The network loses nothing.  Sound for safety: losing a message only
\* removes behaviours, since a message that is never delivered is as good
\* as lost.  Loss matters to liveness, which these models do not check.
\* (A delivery that changes nothing looks like a loss and is excluded too,
\* for the same reason.)
NoLoss == ~\E m \in msgs : LoseMessage(m)

\* A leader sends each entry once, with the commit_lsn it has then, and no
\* heartbeats.  Resending repeats content an acceptor holds already, and
\* commit_lsn on acceptors only guards truncation, which never reaches it.
SendOnce ==
    \A p \in Proposers, l \in 1..(MaxEntries + 1) :
        SendAppend(p, l) =>
            /\ l <= Len(prop_wal[p])
            /\ ~\E m \in msgs : m.type = "AppendRequest" /\ m.term = prop_term[p]
                                /\ m.lsn = l
\* Proposers crash only as leaders: a crash while greeting or campaigning
\* leaves only stale requests, which acceptors handle as they handle any.
LeadersCrash == \A p \in Proposers : RestartProposer(p) => prop_phase[p] = "leader"

\* Acceptors answer a greeting only while its proposer is still greeting.
\* Exact: a later answer is never read (CollectTerm needs the greeting
\* phase, and a restart drops replies to the old incarnation).
LiveGreetings ==
    \A a \in Acceptors, m \in msgs :
        AnswerGreeting(a, m) => prop_phase[m.from] = "greeting"

\* Acceptors do not crash (the targeted models that need crashes allow them).
\* A restart that keeps all its WAL and commit_lsn is, as a pair of states,
\* also a Flush that sends nothing new (an acceptor not Streaming, or its
\* ack in msgs already): such a step stays allowed, as a Flush.
NoAcceptorCrash == \A a \in Acceptors : RestartAcceptor(a) => Flush(a)

Steady == NoLoss /\ SendOnce /\ LeadersCrash /\ LiveGreetings

(***************************************************************************)
(* Scripts: a fixed election order for targeted (mutant) models.  A        *)
(* script says, per term, which acceptors may vote, which may take that    *)
(* term's appends, and how many new entries its leader writes.  Models    *)
(* that use one name acceptors by strings ("a1") and do without symmetry.  *)
(***************************************************************************)
Follows(S) ==
    /\ \A a \in Acceptors, m \in msgs :
          /\ Vote(a, m) => a \in S.votes[m.term]
          /\ AcceptAppend(a, m) => a \in S.appends[m.term]
    /\ \A p \in Proposers :
          NewEntry(p) => Len(prop_wal[p]) - PropStartLsn(p) + 1 < S.entries[prop_term[p]]

All == {"a1", "a2", "a3"}
Script(v, ap, e) == [votes |-> v, appends |-> ap, entries |-> e]

\* Raft's figure 8 in this protocol.  T1 (voters a1, a2) writes two entries
\* to a1 only; T2 (a2, a3) writes one to a3 only; T3 (a1, a2) recovers T1's
\* WAL from a1 and streams its first entry to a2, whose flush_lsn stays
\* below T3's start; T4 (a2, a3) prefers a3's term-2 WAL.  Committing in T3
\* by counting a2 loses what T3 committed.
Figure8 == Script(<<{"a1", "a2"}, {"a2", "a3"}, {"a1", "a2"}, {"a2", "a3"}>>,
                  <<{"a1"}, {"a3"}, All, All>>,
                  <<2, 1, 0, 0>>)

\* Donor choice.  T1 (a1, a2) writes two entries to a1 only; T2 (a2, a3)
\* commits one entry on a2 and a3; T3 (a1, a2) must take a2's shorter but
\* newer WAL.
Donor == Script(<<{"a1", "a2"}, {"a2", "a3"}, {"a1", "a2"}>>,
                <<{"a1"}, All, All>>,
                <<2, 1, 0>>)

\* Truncation.  T1 commits an entry on a1 and a2; T2 (a1, a3) sends a1 its
\* ProposerElected, which must cut nothing a1 flushed in T1.
Truncation == Script(<<{"a1", "a2"}, {"a1", "a3"}>>,
                     <<{"a1", "a2"}, All>>,
                     <<1, 0>>)

\* Streaming before ProposerElected.  T1 (a1, a2) writes an entry to a1
\* only; every acceptor may vote in T2, whose leader writes two entries that
\* only a1 and a2 take.
EarlyAppend == Script(<<{"a1", "a2"}, All>>,
                      <<{"a1"}, {"a1", "a2"}>>,
                      <<1, 2>>)

\* The CI model's script: T1 is elected by anyone and writes one entry
\* that anyone may take; T2 is elected by a2 and a3 only, so a1 may hold a
\* stale or diverged WAL when T2's ProposerElected reaches it.
Handover == Script(<<All, {"a2", "a3"}>>, <<All, All>>, <<1, 1>>)

HandoverSteering == Steady /\ Follows(Handover)
Figure8Steering == Steady /\ NoAcceptorCrash /\ Follows(Figure8)
DonorSteering == Steady /\ NoAcceptorCrash /\ Follows(Donor)
TruncationSteering == Steady /\ NoAcceptorCrash /\ Follows(Truncation)
EarlyAppendSteering == Steady /\ NoAcceptorCrash /\ Follows(EarlyAppend)
=============================================================================
