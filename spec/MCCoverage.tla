----------------------------- MODULE MCCoverage -----------------------------
(***************************************************************************)
(* The CI model's states as the coverage report counts them: each state   *)
(* projected on the nodes' variables and the ghosts (the network left     *)
(* out), printed the first time it occurs.  `paxwal coverage --model-     *)
(* states` runs the CI model's config with the invariant Cover instead of *)
(* its invariants (one worker: the registers are the worker's) and keeps  *)
(* the projections, up to symmetry, in spec/models/ci-coverage.json.      *)
(***************************************************************************)
EXTENDS MCProposerAcceptor

Projection == <<prop_vars, acc_vars, ghost_vars>>

\* The projections seen so far are kept in Buckets registers, chosen by the
\* length of the projection's text: membership in a TLC set costs time in
\* its size, and one set of every projection made the run several times
\* slower than the model itself.
Buckets == 256
Bucket(v) == 1 + (Len(ToString(v)) % Buckets)

ASSUME \A i \in 1..Buckets : TLCSet(i, {})

\* TRUE always; prints a projection the first time this worker meets it.
Cover ==
    LET v == Projection
        b == Bucket(v)
    IN  \/ v \in TLCGet(b)
        \/ /\ PrintT(<<"projection", v>>)
           /\ TLCSet(b, TLCGet(b) \cup {v})
=============================================================================
