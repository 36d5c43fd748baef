---- MODULE Live ----
\* Without fairness x may stop early, so <>(x = 3) fails with a stuttering counterexample.
EXTENDS Naturals
VARIABLE x
Init == x = 0
Next == x < 3 /\ x' = x + 1
Spec == Init /\ [][Next]_x
ReachesThree == <>(x = 3)
====
