---------------------------- MODULE MCHorizons ------------------------------
(***************************************************************************)
(* Bounded models of Horizons for TLC: only the symmetry.  Every variable *)
(* is bounded by MaxLsn already, so no state constraint is needed.  The   *)
(* models are spec/models/horizons*.cfg and spec/mutants/horizons/*.cfg.   *)
(***************************************************************************)
EXTENDS Horizons, TLC

\* Acceptors are interchangeable, and so are branches: no action or
\* invariant tells one from another.
Symmetry == Permutations(Acceptors) \cup Permutations(Branches)
=============================================================================
