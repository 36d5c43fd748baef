---- MODULE Values ----
\* The initial state violates Bad; it shows how TLC prints many kinds of value.
EXTENDS Naturals, Integers, Sequences, TLC
CONSTANTS a1, a2
VARIABLES iv, fseq, rec, tup, emptyf, nested, ss, str, sub, fnset, negdom, big, bools, strdom, sym
Init == /\ iv = 1..3
        /\ fseq = [i \in 1..3 |-> i * 10]
        /\ rec = [s \in {"a", "b"} |-> s]
        /\ tup = [p \in {<<1, 2>>, <<3, 4>>} |-> p[1]]
        /\ emptyf = [i \in {} |-> 1]
        /\ nested = [a \in {a1, a2} |-> [b \in {a1} |-> {<<a, b>>}]]
        /\ ss = {{}, {1}, {1, 2}}
        /\ str = "tab\there\nnew \\ back"
        /\ sub = SUBSET {1, 2}
        /\ fnset = [{1} -> {TRUE}]
        /\ negdom = [i \in -2..0 |-> i]
        /\ big = <<2^30, -(2^30)>>
        /\ bools = {TRUE, FALSE}
        /\ strdom = [s \in {"x"} |-> [t \in {"y"} |-> 1]]
        /\ sym = {a2, a1}
Next == UNCHANGED iv /\ FALSE
Bad == iv = {}
====
