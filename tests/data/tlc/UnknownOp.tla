---- MODULE UnknownOp ----
\* Parses, but uses an operator nobody defined: a semantic error.
EXTENDS Naturals
VARIABLE x
Init == x = 0
Next == x' = x + Increment
====
