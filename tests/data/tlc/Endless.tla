---- MODULE Endless ----
\* An unbounded counter: breadth-first search never ends and simulation never finds an
\* error, so only a timeout stops TLC.
EXTENDS Naturals
VARIABLE x
Init == x = 0
Next == x' = x + 1
====
