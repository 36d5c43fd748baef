---- MODULE Refine ----
\* A fair counter that wraps from 3 to 0: three ways to fail a PROPERTY.
EXTENDS Naturals
VARIABLE x
Init == x = 0
Next == \/ x < 3 /\ x' = x + 1
        \/ x = 3 /\ x' = 0
Spec == Init /\ WF_x(Next) /\ [][Next]_x
A == INSTANCE AbsLog WITH n <- x
Refinement == A!ASpec                 \* fails at the wrap: an action-property violation
B == INSTANCE AbsLog WITH n <- x + 1
ShiftedRefinement == B!ASpec          \* fails in the initial state
EventuallyFive == []<>(x = 5)         \* fails on a lasso that returns to state 1
====
