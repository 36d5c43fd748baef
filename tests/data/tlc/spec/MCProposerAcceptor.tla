---- MODULE MCProposerAcceptor ----
\* A stand-in for the real model module, for CLI and mutant-runner tests: acceptors vote
\* once for a term, a term with a quorum of votes elects its leader.
EXTENDS Naturals, FiniteSets
CONSTANT Acceptors
VARIABLES votes, leader
Terms == 1..2
IsQuorum(S) == 2 * Cardinality(S) > Cardinality(Acceptors)
BadQuorum(S) == 2 * Cardinality(S) >= Cardinality(Acceptors) - 1   \* n/2, rounded down
Init == votes = [t \in Terms |-> {}] /\ leader = [t \in Terms |-> FALSE]
Vote(t, a) == /\ \A u \in Terms : a \notin votes[u]
              /\ votes' = [votes EXCEPT ![t] = @ \cup {a}]
              /\ UNCHANGED leader
Elect(t) == /\ IsQuorum(votes[t]) /\ ~leader[t]
            /\ leader' = [leader EXCEPT ![t] = TRUE]
            /\ UNCHANGED votes
Next == (\E t \in Terms, a \in Acceptors : Vote(t, a)) \/ (\E t \in Terms : Elect(t))
ElectionSafety == Cardinality({t \in Terms : leader[t]}) <= 1
AtMostOneVote == \A a \in Acceptors : Cardinality({t \in Terms : a \in votes[t]}) <= 1
====
