---- MODULE ParseError ----
\* A junction bullet with nothing after it: SANY's parser rejects the module.
EXTENDS Naturals
VARIABLE x
Init == x = 0
Next == /\ x' = x + 1
        /\
====
