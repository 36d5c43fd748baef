---- MODULE AbsLog ----
\* An abstract counter that only grows; Refine.tla claims (wrongly) to refine it.
EXTENDS Naturals
VARIABLE n
AInit == n = 0
ANext == n' = n + 1
ASpec == AInit /\ [][ANext]_n
====
