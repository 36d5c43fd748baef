----------------------- MODULE TraceProposerAcceptor -----------------------
(***************************************************************************)
(* Trace validation: TLC decides whether a run of the implementation is a  *)
(* behaviour of ProposerAcceptor.  As in Cirstea, Kuppe, Loillier and Merz *)
(* (2024), TLC explores the spec with every step constrained by the next   *)
(* logged event; the run is accepted iff some behaviour explains every    *)
(* event.  (The Python replay, conformance/replay.py, asks the same        *)
(* question of the spec's transcription; the two must agree.)              *)
(*                                                                         *)
(* The data is a generated module TraceData (conformance/tlctrace.py),    *)
(* which undoes impl/trace.py's abstraction as the replay does:            *)
(*   Trace: the events in the replay's merged order, LoseMessage events   *)
(*     left out (the spec's network keeps a lost message; nothing needs   *)
(*     its loss), each a record with fields                                *)
(*       action, node   as logged;                                         *)
(*       recv   the spec messages the event consumes, one per spec step   *)
(*              (an AppendRequest of k entries is k messages); <<>> when   *)
(*              it names no message an earlier event sent;                 *)
(*       args   l and entries, for SendAppend and NewEntry;                *)
(*       state  the node's spec variables after the event, WALs as runs   *)
(*              <<term, count>>;                                           *)
(*       sent   the set of spec messages it logged as sent.                *)
(*   Walk: a behaviour of the Python machine (conformance/machine.py) as  *)
(*     whole states, for WalkInit/WalkNext below.                         *)
(*   TraceProposers, TraceAcceptors: the cluster.                          *)
(* Trace rules the spec has no words for (a node's Lamport clock grows,   *)
(* message ids are unique, a message is received by its addressee) are    *)
(* checked by the generator, which ends Trace before the first event      *)
(* breaking one.                                                           *)
(*                                                                         *)
(* The cursor: l is the event being explained and sub the number of its   *)
(* spec steps taken.  Event e stands for Steps(e) steps of its action     *)
(* (abstraction line 3); after the last one the node's variables equal    *)
(* the logged state, every logged message is in msgs and the spec's       *)
(* invariants hold (as the replay checks after each event).  Every step   *)
(* refines AbstractLog.                                                    *)
(*                                                                         *)
(* The verdict: TLC 2.15 has no POSTCONDITION, and the usual inverted      *)
(* invariant ("l <= Len(Trace)") would print the whole behaviour, i.e.     *)
(* thousands of states holding thousands of messages.  Instead Matched    *)
(* prints each event number explained for the first time; the checker     *)
(* reads the highest.  Len(Trace) means accepted; less is the longest      *)
(* explained prefix, the next event the first one nothing explains (with  *)
(* the reasons Unless printed for it, if its steps were taken).  Run with *)
(* one worker (TLCSet's register is per worker) and no deadlock check (a  *)
(* dead end is just where a prefix stops).                                 *)
(***************************************************************************)
EXTENDS ProposerAcceptor, TLC, TraceData

VARIABLES l, sub

ProposerActions == {"RestartProposer", "StartCampaign", "BecomeLeader", "NewEntry",
                    "SendAppend", "CollectTerm", "CollectVote", "CollectAck"}
AcceptorActions == {"RestartAcceptor", "AnswerGreeting", "Vote", "AcceptElected",
                    "AcceptAppend", "Flush"}

\* The WAL that runs <<term, count>> stand for (abstraction line 2).
RECURSIVE Expand(_)
Expand(runs) ==
    IF runs = <<>> THEN <<>>
    ELSE [i \in 1..runs[1][2] |-> runs[1][1]] \o Expand(Tail(runs))

\* How many spec steps event e stands for (abstraction line 3): one per
\* entry, and a SendAppend of no entry is the heartbeat, one step.
Steps(e) ==
    CASE e.action = "NewEntry" -> e.args.entries
      [] e.action = "SendAppend" -> Max(e.args.entries, 1)
      [] e.action = "AcceptAppend" -> Len(e.recv)
      [] OTHER -> 1

\* Step i (from 0) of event e: its action, by its node, with the i-th
\* consumed message or position.  The spec's actions take a message as an
\* argument and Next draws it from msgs; here the trace names it.
Step(e, i) ==
    LET n == e.node
        m == e.recv[i + 1]
        received == i < Len(e.recv) /\ e.recv[i + 1] \in msgs
    IN
    /\ n \in IF e.action \in ProposerActions THEN Proposers ELSE Acceptors
    /\ \/ e.action = "RestartProposer" /\ RestartProposer(n)
       \/ e.action = "StartCampaign" /\ StartCampaign(n)
       \/ e.action = "BecomeLeader" /\ BecomeLeader(n)
       \/ e.action = "NewEntry" /\ NewEntry(n)
       \/ e.action = "SendAppend" /\ SendAppend(n, e.args.l + i)
       \/ e.action = "CollectTerm" /\ received /\ CollectTerm(n, m)
       \/ e.action = "CollectVote" /\ received /\ CollectVote(n, m)
       \/ e.action = "CollectAck" /\ received /\ CollectAck(n, m)
       \/ e.action = "RestartAcceptor" /\ RestartAcceptor(n)
       \/ e.action = "Flush" /\ Flush(n)
       \/ e.action = "AnswerGreeting" /\ received /\ AnswerGreeting(n, m)
       \/ e.action = "Vote" /\ received /\ Vote(n, m)
       \/ e.action = "AcceptElected" /\ received /\ AcceptElected(n, m)
       \/ e.action = "AcceptAppend" /\ received /\ AcceptAppend(n, m)

\* The variables of node n after a step, by name.
NodeNow(n) ==
    IF n \in Proposers
    THEN [prop_phase |-> prop_phase'[n], prop_term |-> prop_term'[n],
          prop_heard |-> prop_heard'[n], prop_history |-> prop_history'[n],
          prop_wal |-> prop_wal'[n], prop_acks |-> prop_acks'[n],
          prop_commit |-> prop_commit'[n]]
    ELSE [acc_term |-> acc_term'[n], acc_history |-> acc_history'[n],
          acc_wal |-> acc_wal'[n], acc_flush |-> acc_flush'[n], acc_commit |-> acc_commit'[n]]

\* A logged state with its WALs expanded.
LoggedState(s) ==
    [v \in DOMAIN s |-> IF v \in {"prop_wal", "acc_wal"} THEN Expand(s[v]) ELSE s[v]]

Invariants ==
    ElectionSafety /\ LogIsMonotonic /\ LogMatchesHistory /\ LogSafety /\ CommittedNeverLost

\* TLC says only that no state explains an event; a step that was taken but
\* contradicts the log prints why, for the report.  (IF, not \/: TLC would
\* explore a disjunct even when the other holds.)
Unless(ok, why) == IF ok THEN TRUE ELSE PrintT(<<"unexplained", l, why>>) /\ FALSE

\* After the last step of event e: what the event logged is what happened.
Explained(e) ==
    LET now == NodeNow(e.node)
        logged == LoggedState(e.state)
    IN
    /\ Unless(\A m \in e.sent : m \in msgs',
              "it logs sending a message that the spec's action does not send")
    /\ Unless(now = logged,
              <<"the logged state differs from the spec's in",
                {v \in DOMAIN now \cup DOMAIN logged :
                    v \notin DOMAIN now \/ v \notin DOMAIN logged \/ now[v] # logged[v]}>>)
    /\ Unless(Invariants', "the spec's invariants fail after it")

\* Report event n explained, if no state explained as many (see the header).
Matched(n) == IF n > TLCGet(1) THEN PrintT(<<"matched", n>>) /\ TLCSet(1, n) ELSE TRUE

TraceInit == Init /\ l = 1 /\ sub = 0 /\ TLCSet(1, 0)

TraceNext ==
    /\ l <= Len(Trace)
    /\ LET e == Trace[l] IN
        /\ Step(e, sub)
        /\ Unless([AL!Grow]_committed_log, "the committed log shrinks or changes (AbstractLog)")
        /\ IF sub + 1 < Steps(e)
           THEN l' = l /\ sub' = sub + 1
           ELSE /\ Explained(e)
                /\ l' = l + 1 /\ sub' = 0
                /\ Matched(l)

-----------------------------------------------------------------------------
(***************************************************************************)
(* Walks: the other direction of the tie between machine.py and this spec *)
(* (tests/test_tlctrace.py).  Walk[1] must be the initial state and each  *)
(* step of Next must reach exactly the next state of the walk; Matched    *)
(* reports how many states were reached.                                   *)
(***************************************************************************)
State == [prop_phase |-> prop_phase, prop_term |-> prop_term, prop_heard |-> prop_heard,
          prop_history |-> prop_history, prop_wal |-> prop_wal, prop_acks |-> prop_acks,
          prop_commit |-> prop_commit, acc_term |-> acc_term, acc_history |-> acc_history,
          acc_wal |-> acc_wal, acc_flush |-> acc_flush, acc_commit |-> acc_commit,
          msgs |-> msgs, committed_log |-> committed_log, elections |-> elections]

WalkInit == Init /\ State = Walk[1] /\ l = 1 /\ sub = 0 /\ TLCSet(1, 0) /\ Matched(1)

WalkNext ==
    /\ l < Len(Walk)
    /\ Next
    /\ State' = Walk[l + 1]
    /\ l' = l + 1 /\ UNCHANGED sub
    /\ Matched(l + 1)
=============================================================================
