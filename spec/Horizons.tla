------------------------------ MODULE Horizons ------------------------------
(***************************************************************************)
(* What may be deleted, and when: the horizons of paxwal's storage, and    *)
(* the one property they exist for.  Abstract over page contents: the      *)
(* database is its WAL, and a page version is only "the state at LSN L".   *)
(* The spec sits beside ProposerAcceptor.tla and takes its commit_lsn as   *)
(* given.                                                                  *)
(*                                                                         *)
(* Rebuildable: every LSN of every timeline inside its window (the main    *)
(* timeline from its GC cutoff up to commit_lsn; every branch point) can   *)
(* be rebuilt from what survives any crash: the layers the uploaded index  *)
(* names (and object storage holds), plus the committed WAL that a quorum  *)
(* (a majority) of acceptors still keeps on disk.                          *)
(*                                                                         *)
(* Who deletes what, and the horizon that guards it:                       *)
(*  - an acceptor removes WAL below min(remote_consistent_lsn, offloaded): *)
(*    where the pageserver's UPLOADED index covers the data, not its local *)
(*    disk_consistent_lsn, which a crash of its disk loses;                *)
(*  - the pageserver's GC drops layers older than its cutoff (the PITR     *)
(*    window behind last_record_lsn), except what a branch point needs;    *)
(*  - a dropped layer leaves object storage only once an index that does   *)
(*    not name it is uploaded: the index is the source of truth, and a     *)
(*    restarted pageserver trusts every layer it names.                    *)
(*                                                                         *)
(* LSNs: record l (1..MaxLsn) is the l-th committed WAL record; LSN L is   *)
(* the database after records 1..L (0: after initdb).  Every horizon       *)
(* counts records: remote_consistent_lsn = 2 means "the uploaded layers    *)
(* hold records 1 and 2".  In impl an LSN is the end LSN of its record (a  *)
(* byte position); only the order matters here.                            *)
(*                                                                         *)
(* Layers are values: Delta(s, e) holds records s+1..e (a delta layer over *)
(* every key), Image(i) the state at i.  LSN L is rebuilt from an image at *)
(* i <= L and records i+1..L, each from any delta that holds it or from    *)
(* WAL: a delta is indexed by LSN, so part of one serves as well as all of *)
(* it (Neon's reconstruct: newest image, then the records above it).       *)
(*                                                                         *)
(* Variables, and where they live in impl (impl/pageserver.py and          *)
(* impl/timeline.py are to come; their names here are the plan):           *)
(*   commit_lsn             records flushed by a majority: the proposer's  *)
(*                          and acceptors' commit_lsn (ProposerAcceptor's  *)
(*                          commit_lsn - 1), impl/acceptor.py              *)
(*   acc_removed[a]         the last record removed from a's disk: its     *)
(*                          local_start_lsn, impl/offload.py rule 5,       *)
(*                          FileWal.remove_below                           *)
(*   offloaded              the uploaded WAL horizon P/offloaded:          *)
(*                          impl/offload.py Offloader, rules 2-4           *)
(*   last_record_lsn        records ingested (walreceiver into the open    *)
(*                          in-memory layer): impl/timeline.py             *)
(*   disk_consistent_lsn    records in local layer files: impl/timeline.py *)
(*   layer_map              the layer map, local or uploaded layers; lost  *)
(*                          by a crash: impl/timeline.py                   *)
(*   remote_layers          layer objects in object storage: the upload    *)
(*                          and deletion queues of impl/pageserver.py      *)
(*   index_layers           the layers the uploaded index_part.json names  *)
(*   remote_consistent_lsn  the disk_consistent_lsn that index carries;    *)
(*                          reported to the acceptors, which persist it:   *)
(*                          impl/acceptor_server.py                        *)
(*                          set_remote_consistent_lsn                      *)
(*   gc_cutoff              applied_gc_cutoff_lsn, in the index metadata,  *)
(*                          uploaded before GC drops anything              *)
(*   branch_lsn[b]          ancestor_lsn of branch b of the main timeline  *)
(*                          (the child's metadata, durable once created)   *)
(*                                                                         *)
(* Abstracted away: page contents and keys (every layer covers every key); *)
(* terms and uncommitted WAL (ProposerAcceptor.tla's business: here a      *)
(* record is committed or not yet written, and every acceptor holds every  *)
(* committed record it has not removed, since a lagging one catches up     *)
(* through the proposer and only majorities count); the branches' own WAL  *)
(* and layers (a branch is its point on the main timeline, which it reads  *)
(* through); compaction of deltas; LSN leases; generations (one            *)
(* pageserver); acceptor crashes (all that is modelled of an acceptor is   *)
(* durable); and the delay with which acceptors learn                      *)
(* remote_consistent_lsn (it only grows, so a stale value is a lower       *)
(* horizon: safe).  A pageserver crash is the worst case: its whole disk   *)
(* is lost, and it restarts from the index alone.                          *)
(*                                                                         *)
(* Deliberate choice: the pageserver streams WAL from acceptors' disks,    *)
(* never from offloaded WAL.  Offloaded WAL serves acceptors and proposers *)
(* (impl/offload.py rule 6), and CommittedWalKept counts it.  Were the     *)
(* pageserver to read it too (PageserverReadsOffloaded), every removed     *)
(* record would still be readable, since offloaded WAL is never deleted:   *)
(* remote_consistent_lsn would guard nothing, and removing WAL below       *)
(* disk_consistent_lsn would be harmless (tests/test_horizons.py checks    *)
(* that last statement with TLC).                                          *)
(*                                                                         *)
(* Mutants, continuing ProposerAcceptor.tla's (a)..(h): each is a named    *)
(* bad variant beside the correct operator, selected by an `Op <- BadOp`   *)
(* line in spec/mutants/horizons/<Name>.cfg:                               *)
(*   (i) WalRemovedBelowDiskConsistent  removal trusts the local LSN       *)
(*   (j) GcIgnoresBranchPoints          GC keeps nothing for branches      *)
(*   (k) LayerDeletedBeforeIndex        deleted while the index names it   *)
(*   (l) WalRemovedBeforeOffload        removal ignores the offloaded LSN  *)
(*   (m) IndexUploadedBeforeLayers      the index names missing layers     *)
(*   (n) BranchBelowCutoff              a branch point below the cutoff    *)
(***************************************************************************)
EXTENDS Naturals, FiniteSets

CONSTANTS
    Acceptors,  \* the acceptors (safekeepers) of the main timeline
    Branches,   \* names of the branches that may be created off it
    MaxLsn,     \* the number of WAL records the model writes
    Pitr        \* the PITR window, in records behind last_record_lsn

ASSUME MaxLsn \in Nat /\ Pitr \in Nat

VARIABLES
    \* Acceptors: durable.
    commit_lsn,            \* records 1..commit_lsn are committed, on every
    acc_removed,           \* acceptor's disk except 1..acc_removed[a]
    offloaded,             \* records 1..offloaded are in object storage
    \* Pageserver, volatile: a crash resets it from the index.
    last_record_lsn,       \* records ingested
    disk_consistent_lsn,   \* records in layer files
    layer_map,             \* the layers of the timeline, local or uploaded
    \* Pageserver, durable: object storage and metadata.
    remote_layers,         \* layer objects in object storage
    index_layers,          \* layers the uploaded index names
    remote_consistent_lsn, \* the disk_consistent_lsn the index carries
    gc_cutoff,             \* applied GC cutoff
    branch_lsn             \* created branch -> its point on the main timeline

acceptor_vars == <<commit_lsn, acc_removed, offloaded>>
local_vars == <<last_record_lsn, disk_consistent_lsn, layer_map>>
remote_vars == <<remote_layers, index_layers, remote_consistent_lsn, gc_cutoff, branch_lsn>>
vars == <<acceptor_vars, local_vars, remote_vars>>

-----------------------------------------------------------------------------
(***************************************************************************)
(* Helpers                                                                 *)
(***************************************************************************)
Lsns == 0..MaxLsn
Min(x, y) == IF x < y THEN x ELSE y

\* Layers.  Record fields are single words: TLC's pretty-printer mangles
\* some names with underscores.
Delta(s, e) == [kind |-> "delta", lo |-> s, hi |-> e]
Image(i) == [kind |-> "image", lo |-> i, hi |-> i]
Layers == {Delta(s, e) : s \in Lsns, e \in Lsns} \cup {Image(i) : i \in Lsns}
IsLayer(l) == l \in Layers /\ l.lo <= l.hi /\ (l.kind = "delta" => l.lo < l.hi)

\* Record p can be replayed from one of the layers.
InLayers(p, layers) == \E d \in layers : d.kind = "delta" /\ d.lo < p /\ p <= d.hi

\* The state at LSN L can be rebuilt from these layers and these WAL records:
\* an image at or below L, then every later record up to L.
Rebuild(L, layers, wal) ==
    \E i \in layers :
        /\ i.kind = "image" /\ i.lo <= L
        /\ \A p \in (i.lo + 1)..L : InLayers(p, layers) \/ p \in wal

\* A majority, written out (not a parameter: no mutant changes quorums).
IsMajority(S) == Cardinality(S) * 2 > Cardinality(Acceptors)

\* Acceptor a has record p on its disk.
Holds(a, p) == acc_removed[a] < p /\ p <= commit_lsn

\* The WAL a pageserver can stream after any crash of any minority of
\* acceptors: committed records a majority still keeps on disk.
PageserverWal == {p \in 1..commit_lsn : IsMajority({a \in Acceptors : Holds(a, p)})}

\* What a restarted pageserver can read: layers the index names.  (A
\* layer the index names but object storage lacks is a failed read.)
DurableLayers == index_layers \cap remote_layers
\* Not the spec's choice (see the header): the pageserver reading offloaded
\* WAL as well.  With it, WalRemovedBelowDiskConsistent loses nothing.
PageserverReadsOffloaded ==
    {p \in 1..commit_lsn : p <= offloaded \/ IsMajority({a \in Acceptors : Holds(a, p)})}

\* The branch points: the parent's retain_lsns.
BranchPoints == {branch_lsn[b] : b \in DOMAIN branch_lsn}

\* Acceptor a removes its WAL up to here.  Below remote_consistent_lsn the
\* uploaded layers hold the records; below offloaded object storage does;
\* both are committed (impl/offload.py rule 5 also bounds it by the
\* acceptor's own flush_lsn and commit_lsn, which are above both here).
RemovalHorizon(a) ==
    Min(remote_consistent_lsn, offloaded)
\* WalRemovedBelowDiskConsistent: the pageserver's local disk_consistent_lsn
\* instead: layers not yet uploaded are gone with the pageserver's disk.
WalRemovedBelowDiskConsistent(a) ==
    Min(disk_consistent_lsn, offloaded)
\* WalRemovedBeforeOffload: offloaded is left out: the records the
\* pageserver has are removed before object storage has them, and a
\* proposer recovering from the acceptors cannot read them anywhere.
WalRemovedBeforeOffload(a) ==
    remote_consistent_lsn

\* The LSNs GC must keep readable besides its window: the branch points
\* (the parent's retain_lsns; LSN leases are abstracted away).
RetainLsns == BranchPoints
\* GcIgnoresBranchPoints: no retain_lsns; a branch's history is collected.
GcIgnoresBranchPoints == {}

\* Layer l holds something the reader of LSN h may need: a delta holds the
\* records above its lo, an image the state at its lo.
Below(l, h) == IF l.kind = "image" THEN l.lo <= h ELSE l.lo < h

\* GC may drop a layer that ends at or below the cutoff and that, for the
\* cutoff and for every retain_lsn h it lies below, is shadowed by another
\* image in [l.hi, h]: a reader of h (or of anything above the cutoff)
\* starts at that image or a newer one.  This is impl/timeline.py's rule
\* (its rule 6, one key range).  Neon's gc_timeline keeps every layer that
\* starts at or below a retain_lsn; here a layer below a branch point may
\* go when an image between it and the branch point shadows it.
Collectable(l) ==
    /\ l.hi <= gc_cutoff
    /\ \A h \in {gc_cutoff} \cup RetainLsns :
          Below(l, h) =>
              \E i \in layer_map : i.kind = "image" /\ i # l /\ l.hi <= i.lo /\ i.lo <= h

\* A layer object may be deleted once the uploaded index no longer names it.
DeletionAllowed(l) == l \notin index_layers
\* LayerDeletedBeforeIndex: deleted as soon as GC drops it from the layer
\* map, while the uploaded index still names it.
LayerDeletedBeforeIndex(l) == TRUE

\* The index is a barrier: it is uploaded only after every layer it names.
IndexUploadAllowed == layer_map \subseteq remote_layers
\* IndexUploadedBeforeLayers: the upload queue does not wait for layers.
IndexUploadedBeforeLayers == TRUE

\* A branch may start at any LSN the pageserver has ingested inside the window.
BranchStarts == gc_cutoff..last_record_lsn
\* BranchBelowCutoff: creation forgets to check the GC cutoff.
BranchBelowCutoff == 0..last_record_lsn

-----------------------------------------------------------------------------
(***************************************************************************)
(* Types                                                                   *)
(***************************************************************************)
TypeOK ==
    /\ commit_lsn \in Lsns
    /\ acc_removed \in [Acceptors -> Lsns]
    /\ offloaded \in Lsns
    /\ last_record_lsn \in Lsns
    /\ disk_consistent_lsn \in Lsns
    /\ remote_consistent_lsn \in Lsns
    /\ gc_cutoff \in Lsns
    /\ \A l \in layer_map \cup remote_layers \cup index_layers : IsLayer(l)
    /\ DOMAIN branch_lsn \subseteq Branches
    /\ \A b \in DOMAIN branch_lsn : branch_lsn[b] \in Lsns

-----------------------------------------------------------------------------
(***************************************************************************)
(* Initial state: an empty timeline after initdb, whose image layer at 0   *)
(* is uploaded and indexed; no WAL yet.                                    *)
(***************************************************************************)
Init ==
    /\ commit_lsn = 0
    /\ acc_removed = [a \in Acceptors |-> 0]
    /\ offloaded = 0
    /\ last_record_lsn = 0
    /\ disk_consistent_lsn = 0
    /\ layer_map = {Image(0)}
    /\ remote_layers = {Image(0)}
    /\ index_layers = {Image(0)}
    /\ remote_consistent_lsn = 0
    /\ gc_cutoff = 0
    /\ branch_lsn = [b \in {} |-> 0]

-----------------------------------------------------------------------------
(***************************************************************************)
(* Acceptor actions                                                        *)
(***************************************************************************)

(* The next record is committed: a majority of acceptors flushed it.       *)
(* Guard: the model's WAL is not exhausted.                                *)
(* In impl: the proposer's commit_lsn (ProposerAcceptor's Flush and        *)
(*   AppendResponse; terms, acks and quorums are that spec's business).    *)
Commit ==
    /\ commit_lsn < MaxLsn
    /\ commit_lsn' = commit_lsn + 1
    /\ UNCHANGED <<acc_removed, offloaded, local_vars, remote_vars>>

(* The offloader uploads the next committed record.                        *)
(* Guard: it is committed, and some acceptor still has it on disk.         *)
(* In impl: Offloader uploads the segment, then moves P/offloaded by       *)
(*   compare-and-swap (impl/offload.py rules 2-4).                         *)
Offload ==
    /\ offloaded < commit_lsn
    /\ \E a \in Acceptors : Holds(a, offloaded + 1)
    /\ offloaded' = offloaded + 1
    /\ UNCHANGED <<commit_lsn, acc_removed, local_vars, remote_vars>>

(* Acceptor a removes its WAL up to its removal horizon.                   *)
(* In impl: the removal task, FileWal.remove_below (impl/offload.py rule   *)
(*   5), with the remote_consistent_lsn it persisted (LocalHorizons).      *)
RemoveWal(a) ==
    /\ RemovalHorizon(a) > acc_removed[a]
    /\ acc_removed' = [acc_removed EXCEPT ![a] = RemovalHorizon(a)]
    /\ UNCHANGED <<commit_lsn, offloaded, local_vars, remote_vars>>

-----------------------------------------------------------------------------
(***************************************************************************)
(* Pageserver actions                                                      *)
(***************************************************************************)

(* The pageserver ingests the next committed record.                       *)
(* Guard: committed, and on the disk of the acceptor it streams from.      *)
(* Effect: the record is in the open in-memory layer.                      *)
(* In impl: walreceiver + walingest (impl/timeline.py).                    *)
Ingest ==
    /\ last_record_lsn < commit_lsn
    /\ \E a \in Acceptors : Holds(a, last_record_lsn + 1)
    /\ last_record_lsn' = last_record_lsn + 1
    /\ UNCHANGED <<acceptor_vars, disk_consistent_lsn, layer_map, remote_vars>>

(* The open in-memory layer is frozen and written as a delta layer file.   *)
(* In impl: freeze, write and fsync the layer file, then advance           *)
(*   disk_consistent_lsn (impl/timeline.py).                               *)
FlushLayer ==
    /\ disk_consistent_lsn < last_record_lsn
    /\ layer_map' = layer_map \cup {Delta(disk_consistent_lsn, last_record_lsn)}
    /\ disk_consistent_lsn' = last_record_lsn
    /\ UNCHANGED <<acceptor_vars, last_record_lsn, remote_vars>>

(* Image compaction materialises the state at disk_consistent_lsn.         *)
(* Guard: the layer map can rebuild it (LayerMapRebuildable: always).      *)
(* In impl: image layer creation in compaction (impl/timeline.py).         *)
CreateImage ==
    /\ Image(disk_consistent_lsn) \notin layer_map
    /\ Rebuild(disk_consistent_lsn, layer_map, {})
    /\ layer_map' = layer_map \cup {Image(disk_consistent_lsn)}
    /\ UNCHANGED <<acceptor_vars, last_record_lsn, disk_consistent_lsn, remote_vars>>

(* A layer of the layer map is uploaded to object storage.  It is not      *)
(* part of the remote state until an index names it.                       *)
(* In impl: the upload queue PUTs the layer file (impl/pageserver.py).     *)
UploadLayer(l) ==
    /\ l \in layer_map \ remote_layers
    /\ remote_layers' = remote_layers \cup {l}
    /\ UNCHANGED <<acceptor_vars, local_vars, index_layers, remote_consistent_lsn,
                   gc_cutoff, branch_lsn>>

(* The index is uploaded: it names the layer map and carries               *)
(* disk_consistent_lsn, which becomes remote_consistent_lsn.               *)
(* Guard: every layer it names is uploaded (the barrier); it says          *)
(*   something new.                                                        *)
(* In impl: the upload queue PUTs index_part.json, then the pageserver     *)
(*   reports remote_consistent_lsn to the acceptors.                       *)
UploadIndex ==
    /\ IndexUploadAllowed
    /\ <<layer_map, disk_consistent_lsn>> # <<index_layers, remote_consistent_lsn>>
    /\ index_layers' = layer_map
    /\ remote_consistent_lsn' = disk_consistent_lsn
    /\ UNCHANGED <<acceptor_vars, local_vars, remote_layers, gc_cutoff, branch_lsn>>

(* GC moves its cutoff to the PITR window's start behind last_record_lsn.  *)
(* Guard: that is above the current cutoff (it never moves back).          *)
(* In impl: gc_timeline persists the new applied_gc_cutoff_lsn in the      *)
(*   index before it drops any layer (impl/timeline.py).                   *)
AdvanceGcCutoff ==
    /\ last_record_lsn >= Pitr
    /\ last_record_lsn - Pitr > gc_cutoff
    /\ gc_cutoff' = last_record_lsn - Pitr
    /\ UNCHANGED <<acceptor_vars, local_vars, remote_layers, index_layers,
                   remote_consistent_lsn, branch_lsn>>

(* GC drops a collectable layer from the layer map; the next index will    *)
(* not name it.                                                            *)
(* In impl: gc_timeline (impl/timeline.py), then an index upload and the   *)
(*   deletion are scheduled.                                               *)
GcLayer(l) ==
    /\ l \in layer_map
    /\ Collectable(l)
    /\ layer_map' = layer_map \ {l}
    /\ UNCHANGED <<acceptor_vars, last_record_lsn, disk_consistent_lsn, remote_vars>>

(* A layer object that is no longer part of the timeline is deleted.       *)
(* Guard: the layer map does not hold it (GC dropped it, or a crash left   *)
(*   it an orphan), and DeletionAllowed.                                   *)
(* In impl: the deletion queue, run after the index upload that drops it   *)
(*   (impl/pageserver.py).                                                 *)
DeleteLayer(l) ==
    /\ l \in remote_layers \ layer_map
    /\ DeletionAllowed(l)
    /\ remote_layers' = remote_layers \ {l}
    /\ UNCHANGED <<acceptor_vars, local_vars, index_layers, remote_consistent_lsn,
                   gc_cutoff, branch_lsn>>

(* Branch b is created off the main timeline at LSN l.                     *)
(* Guard: l is ingested and not below the GC cutoff.                       *)
(* Effect: l becomes a retain_lsn of the main timeline, for good.          *)
(* In impl: branch creation under the GC lock (impl/timeline.py): the      *)
(*   child's metadata (ancestor, ancestor_lsn) is durable before it        *)
(*   returns.                                                              *)
CreateBranch(b, l) ==
    /\ b \notin DOMAIN branch_lsn
    /\ l \in BranchStarts
    /\ branch_lsn' = [x \in DOMAIN branch_lsn \cup {b} |-> IF x = b THEN l ELSE branch_lsn[x]]
    /\ UNCHANGED <<acceptor_vars, local_vars, remote_layers, index_layers,
                   remote_consistent_lsn, gc_cutoff>>

(* The pageserver crashes and loses its disk; it restarts from the index   *)
(* and ingests again from remote_consistent_lsn.                           *)
(* Guard: it has something to lose.                                        *)
(* In impl: pageserver start-up (impl/pageserver.py): load the index,      *)
(*   download layers on demand, orphans are deleted.                       *)
CrashPageserver ==
    /\ <<layer_map, disk_consistent_lsn, last_record_lsn>>
           # <<index_layers, remote_consistent_lsn, remote_consistent_lsn>>
    /\ layer_map' = index_layers
    /\ disk_consistent_lsn' = remote_consistent_lsn
    /\ last_record_lsn' = remote_consistent_lsn
    /\ UNCHANGED <<acceptor_vars, remote_vars>>

-----------------------------------------------------------------------------
(***************************************************************************)
(* The specification                                                       *)
(***************************************************************************)
Next ==
    \/ Commit
    \/ \E a \in Acceptors : RemoveWal(a)
    \/ Offload
    \/ Ingest
    \/ FlushLayer
    \/ CreateImage
    \/ \E l \in layer_map : UploadLayer(l)
    \/ \E l \in layer_map : GcLayer(l)
    \/ UploadIndex
    \/ AdvanceGcCutoff
    \/ \E l \in remote_layers : DeleteLayer(l)
    \/ \E b \in Branches, l \in Lsns : CreateBranch(b, l)
    \/ CrashPageserver

Spec == Init /\ [][Next]_vars

-----------------------------------------------------------------------------
(***************************************************************************)
(* Invariants                                                              *)
(***************************************************************************)

\* The horizons' order.  Between them lies what each party still needs.
HorizonsOrdered ==
    /\ remote_consistent_lsn <= disk_consistent_lsn
    /\ disk_consistent_lsn <= last_record_lsn
    /\ last_record_lsn <= commit_lsn
    /\ offloaded <= commit_lsn
    /\ gc_cutoff <= commit_lsn
    /\ \A a \in Acceptors : acc_removed[a] <= commit_lsn

\* Every layer the index names exists: a restarted pageserver trusts them.
IndexNamesExistingLayers == index_layers \subseteq remote_layers

\* The pageserver can rebuild its disk_consistent_lsn from its layer map
\* alone: ingest goes on from there, and image creation reads it.
LayerMapRebuildable == Rebuild(disk_consistent_lsn, layer_map, {})

\* Rebuildable, in two conjuncts so that TLC says which failed.
\* The main timeline's window: every LSN from the GC cutoff to commit_lsn.
WindowRebuildable ==
    \A L \in gc_cutoff..commit_lsn : Rebuild(L, DurableLayers, PageserverWal)
\* Every branch point, however old.
BranchesRebuildable ==
    \A b \in DOMAIN branch_lsn : Rebuild(branch_lsn[b], DurableLayers, PageserverWal)
Rebuildable == WindowRebuildable /\ BranchesRebuildable

\* Every committed record is on a majority of acceptors or offloaded: a
\* recovering proposer can read the whole WAL (impl/offload.py rule 6).
CommittedWalKept ==
    \A p \in 1..commit_lsn :
        p <= offloaded \/ IsMajority({a \in Acceptors : Holds(a, p)})

(***************************************************************************)
(* Properties of steps                                                     *)
(***************************************************************************)

\* The durable horizons never move back: the GC cutoff, remote_consistent_lsn
\* (what acceptors act on), the offloaded LSN and each acceptor's removal.
GcCutoffMonotonic == [][gc_cutoff' >= gc_cutoff]_vars
RemoteConsistentMonotonic == [][remote_consistent_lsn' >= remote_consistent_lsn]_vars
WalHorizonsMonotonic ==
    [][offloaded' >= offloaded /\ \A a \in Acceptors : acc_removed'[a] >= acc_removed[a]]_vars

(***************************************************************************)
(* Probes expected to FAIL: they show a model reaches interesting states.  *)
(* Check one as an invariant; TLC must report it violated.                 *)
(***************************************************************************)
\* Acceptors remove WAL.
ProbeNoWalRemoved == \A a \in Acceptors : acc_removed[a] = 0
\* GC collects and deletes: the initdb image leaves object storage.
ProbeNoLayerDeleted == Image(0) \in remote_layers
\* The window moves past a branch point, which GC must then keep.
ProbeNoBranchBehindCutoff == \A b \in DOMAIN branch_lsn : branch_lsn[b] >= gc_cutoff
=============================================================================
