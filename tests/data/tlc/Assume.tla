---- MODULE Assume ----
\* The model sets N = 2, which breaks the assumption.
EXTENDS Naturals
CONSTANT N
ASSUME N > 3
VARIABLE x
Init == x = 0
Next == x' = x
====
