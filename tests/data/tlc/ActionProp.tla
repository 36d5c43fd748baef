---- MODULE ActionProp ----
\* x counts to 3 and resets: the action property "x never decreases" fails at the reset.
EXTENDS Naturals
VARIABLE x
Init == x = 0
Up == x < 3 /\ x' = x + 1
Reset == x = 3 /\ x' = 0
Next == Up \/ Reset
Spec == Init /\ [][Next]_x
NeverDecreases == [][x' >= x]_x
====
