---- MODULE Rich ----
\* SmallLog fails after three steps; the variables hold records, sequences, sets,
\* functions over model values, strings with escapes and negative numbers.
EXTENDS Naturals, Integers, Sequences, TLC
CONSTANTS Acceptors, Values
VARIABLES step, msgs, log, votes, note, neg
vars == <<step, msgs, log, votes, note, neg>>
Init == /\ step = 0
        /\ msgs = {}
        /\ log = <<>>
        /\ votes = [a \in Acceptors |-> 0]
        /\ note = "hello \"world\""
        /\ neg = -1
Send(a) == /\ step' = step + 1
           /\ msgs' = msgs \cup {[type |-> "vote", from |-> a, bal |-> step, acks |-> {a}, hist |-> <<step, -step>>]}
           /\ log' = Append(log, [term |-> step, val |-> CHOOSE v \in Values : TRUE])
           /\ votes' = [votes EXCEPT ![a] = @ + 1]
           /\ note' = "step with spaces"
           /\ neg' = neg - 1
Next == \E a \in Acceptors : Send(a)
SmallLog == Len(log) < 3
====
