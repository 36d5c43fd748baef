----------------------------- MODULE AbstractLog -----------------------------
(***************************************************************************)
(* What a replicated WAL promises its clients, and nothing else: there is *)
(* one committed log, it starts empty, and a step may only extend it by   *)
(* one or more entries.  No committed entry is ever removed or changed.   *)
(*                                                                         *)
(* ProposerAcceptor refines this spec under  log <- committed_log  (see   *)
(* Refinement there); TLC checks it as a PROPERTY on every model.          *)
(*                                                                         *)
(* Grow is written as a relation between log and log' rather than as a    *)
(* choice of new entries, so TLC can check it against the values the      *)
(* refinement mapping supplies without enumerating sequences.              *)
(***************************************************************************)
EXTENDS Naturals, Sequences

VARIABLE log

Init == log = <<>>

\* log' keeps every entry of log at its position and adds at least one.
Grow ==
    /\ Len(log') > Len(log)
    /\ SubSeq(log', 1, Len(log)) = log

Spec == Init /\ [][Grow]_log
=============================================================================
