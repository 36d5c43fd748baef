---- MODULE Counter ----
\* Counts to 5 and stops: no error with -deadlock, a deadlock at x = 5 without it.
EXTENDS Naturals
VARIABLE x
Init == x = 0
Next == x < 5 /\ x' = x + 1
TypeOK == x \in 0..5
====
