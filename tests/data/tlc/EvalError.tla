---- MODULE EvalError ----
\* Reads past the end of a sequence in the first step: TLC fails while evaluating Next.
EXTENDS Naturals, Sequences
VARIABLE x
Init == x = <<1, 2>>
Next == x' = Append(x, x[Len(x) + 1])
====
