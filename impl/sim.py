"""The deterministic simulator: the real cores on a virtual network, disk and clock.

Theory of operation
===================

`Sim` runs `ProposerCore`s and `AcceptorCore`s (the same code the trio shells will run)
against:

- a virtual clock: integer milliseconds; every future happening is an event in one heap,
  ordered by (time, sequence number), so nothing depends on the host;
- a virtual network: each message is an envelope on a connection between a proposer
  incarnation and an acceptor incarnation; it is delayed (hence reordered), lost or
  duplicated at random, blocked by partitions (one-way ones too), and dropped on delivery
  if either end restarted since it was sent (replies are bound to connections, as the
  spec's RestartProposer drops messages addressed to the old incarnation);
- a virtual disk per acceptor (`VirtualDisk`): a WAL whose unflushed tail a crash loses,
  all of it or all but a prefix (written bytes may outlive a crash without an fsync: a
  kill -9 leaves them in the page cache, a power loss keeps what reached the disk), and a
  control file written atomically when a persist completes.  A restart finds the WAL that
  survived and makes it durable (as FileWal.open fsyncs it): it is flushed from then on,
  the spec's RestartAcceptor.  A flush or persist takes a random time, and a crash before
  it completes undoes it;
- a client per proposer that appends records while it leads and records its history: each
  append invoked, acknowledged (its record's LSN range is committed) or of unknown outcome
  (its proposer died first).

A seed determines everything: `SimOptions.from_seed` expands it into the printed options
(nodes, fault rates), and one `random.Random(seed)` draws every choice, so the same seed
gives byte-identical traces.

A run has two phases.  In the fault phase the network misbehaves and nodes crash; then
faults stop (partitions heal, loss stops, every node comes back) and within
`liveness_ms` of virtual time a record appended after the healing must be committed.

Checks, from the run's own state and client history (an oracle independent of the spec's
conformance checker):
- ElectionSafety: at most one proposer incarnation ever leads a term;
- the committed log only grows: whenever a leader's commit_lsn advances, its committed WAL
  agrees byte for byte with every committed WAL seen before, and the longest is the
  committed log;
- every acknowledged append is in the final committed log at its LSN, unchanged;
- the committed log is on the flushed WAL of a majority of acceptors (CommittedNeverLost);
- no core raises (a ProtocolError between honest nodes is a bug);
- liveness, as above.

`Sim` also has a manual mode for scenarios (tests/test_scenarios.py): messages wait in
`in_flight` until a test delivers, drops or duplicates them, disk operations wait until it
completes them, and timers fire when it ticks them.
"""

from __future__ import annotations

import heapq
import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs

from impl.acceptor import AcceptorCore
from impl.control import ControlState
from impl.effects import (
    Close,
    Committed,
    Effect,
    Flush,
    MsgMeta,
    PersistControl,
    ResetConnections,
    Send,
    SendWal,
    SetTimer,
    TruncateWal,
    WriteWal,
)
from impl.proposer import NotLeader, ProposerConfig, ProposerCore
from impl.storage import CorruptStorage
from impl.trace import Tracer, dumps
from impl.wire import Message, WalData, describe

__all__ = ["Envelope", "Sim", "SimOptions", "SimResult", "VirtualDisk", "run_seed"]

WAL_START = 0


@attrs.frozen(kw_only=True)
class SimOptions:
    """Everything a run depends on besides the code.  `from_seed` derives it from a seed.

    Times are virtual milliseconds; rates are probabilities per message or mean intervals.
    """

    seed: int
    acceptors: int = 3
    proposers: int = 2
    steps: int = 3000  # events in the fault phase
    liveness_ms: int = 20_000
    latency: tuple[int, int] = (1, 10)
    loss: float = 0.0
    duplicate: float = 0.0
    crash_every: int = 0  # mean ms between crashes; 0: none
    down: tuple[int, int] = (50, 1000)
    partition_every: int = 0  # mean ms between partitions; 0: none
    partition_ms: tuple[int, int] = (100, 1500)
    append_every: int = 20
    record_size: tuple[int, int] = (4, 24)
    fsync: tuple[int, int] = (1, 5)
    max_send: int = 64
    election_timeout: int = 300
    heartbeat: int = 50

    @classmethod
    def from_seed(cls, seed: int, steps: int = 3000) -> SimOptions:
        """Expand a seed into options: a spread of cluster sizes and fault rates."""
        rng = random.Random(f"options-{seed}")
        return cls(
            seed=seed,
            acceptors=rng.choice((3, 3, 5)),
            proposers=rng.choice((1, 2, 2, 3)),
            steps=steps,
            latency=(1, rng.choice((5, 10, 30))),
            loss=rng.choice((0.0, 0.01, 0.05, 0.1)),
            duplicate=rng.choice((0.0, 0.02, 0.1)),
            crash_every=rng.choice((0, 200, 500, 1000)),
            partition_every=rng.choice((0, 500, 1500)),
            append_every=rng.choice((5, 20, 50)),
            max_send=rng.choice((16, 64, 256)),
        )

    def describe(self) -> str:
        """One line: the options that matter, for a failing run's report."""
        return (
            f"seed={self.seed} acceptors={self.acceptors} proposers={self.proposers}"
            f" steps={self.steps} latency={self.latency[0]}-{self.latency[1]}ms loss={self.loss}"
            f" duplicate={self.duplicate} crash_every={self.crash_every}ms"
            f" partition_every={self.partition_every}ms append_every={self.append_every}ms"
            f" max_send={self.max_send}"
        )

    @property
    def acceptor_ids(self) -> tuple[str, ...]:
        return tuple(f"a{i + 1}" for i in range(self.acceptors))

    @property
    def proposer_ids(self) -> tuple[str, ...]:
        return tuple(f"p{i + 1}" for i in range(self.proposers))


class VirtualDisk:
    """An acceptor's disk: a WAL (bytes, with a flushed prefix) and a control file.

    Implements the WalStorage and ControlStorage protocols of impl/storage.py.
    """

    def __init__(self, start_lsn: int = WAL_START) -> None:
        self._start = start_lsn
        self._data = bytearray()
        self._flushed = start_lsn
        self._control: ControlState | None = None

    start_lsn = property(lambda self: self._start)
    write_lsn = property(lambda self: self._start + len(self._data))
    flush_lsn = property(lambda self: self._flushed)

    def write(self, lsn: int, data: bytes) -> None:
        if lsn != self.write_lsn:
            raise ValueError(f"write at {lsn}, WAL ends at {self.write_lsn}")
        self._data += data

    def flush(self) -> int:
        self._flushed = self.write_lsn
        return self._flushed

    def truncate(self, lsn: int) -> None:
        if not self._start <= lsn <= self.write_lsn:
            raise ValueError(f"truncate at {lsn} outside [{self._start}, {self.write_lsn}]")
        del self._data[lsn - self._start :]
        self._flushed = min(self._flushed, lsn)

    def read(self, begin: int, end: int) -> bytes:
        if not self._start <= begin <= end <= self.write_lsn:
            raise ValueError(f"read [{begin}, {end}) outside [{self._start}, {self.write_lsn}]")
        return bytes(self._data[begin - self._start : end - self._start])

    def load(self) -> ControlState | None:
        return self._control

    def store(self, state: ControlState) -> None:
        self._control = state

    def crash(self, keep: int = 0) -> None:
        """Lose everything not flushed but its first `keep` bytes (a crash may leave any
        prefix of what was written; the default keeps none)."""
        del self._data[self._flushed - self._start + max(keep, 0) :]

    def reopen(self) -> int:
        """A restart: what the WAL holds is made durable (FileWal.open fsyncs what it finds)
        and is flushed from now on.  Returns the new flush_lsn."""
        self._flushed = self.write_lsn
        return self._flushed


@attrs.frozen
class Envelope:
    """A message on the wire between `src` and `dst`, on connection incarnation `epoch`."""

    src: str
    dst: str
    msg: Message
    meta: MsgMeta | None
    epoch: int

    def describe(self) -> str:
        return describe(self.msg).replace("->*", f"->{self.dst}", 1)


@attrs.define
class _Acceptor:
    name: str
    tracer: Tracer | None
    disk: VirtualDisk = attrs.Factory(VirtualDisk)
    core: AcceptorCore | None = None
    incarnation: int = 0


@attrs.define
class _Proposer:
    name: str
    tracer: Tracer | None
    core: ProposerCore | None = None
    incarnation: int = 0
    pending: list[dict[str, Any]] = attrs.Factory(list)  # client ops awaiting commit
    records: int = 0


class Violation(Exception):
    """A built-in check failed; the message says which and with what values."""


@attrs.frozen
class SimResult:
    """How a run ended."""

    seed: int
    ok: bool
    violations: tuple[str, ...]
    events: int
    commit_lsn: int
    acknowledged: int
    elections: int
    virtual_ms: int


class Sim:
    """One simulated cluster.  See the module docstring."""

    def __init__(self, options: SimOptions, manual: bool = False, trace: bool = True) -> None:
        self.options = options
        self.manual = manual
        self.rng = random.Random(options.seed)
        # How much unflushed WAL a crash keeps: drawn apart, so that the other choices of a
        # seed do not depend on it.
        self._disk_rng = random.Random(f"disk-{options.seed}")
        self.now = 0
        self._queue: list[tuple[int, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0
        self.events: list[dict[str, Any]] = []  # every trace event, in execution order
        self.node_events: dict[str, list[dict[str, Any]]] = {}
        # The network's own trace: the messages it loses (spec LoseMessage).
        self._net = self._tracer("net", trace)
        self.acceptors = {a: _Acceptor(a, self._tracer(a, trace)) for a in options.acceptor_ids}
        self.proposers = {p: _Proposer(p, self._tracer(p, trace)) for p in options.proposer_ids}
        self._epoch: dict[tuple[str, str], int] = {}
        self._connected: set[tuple[str, str]] = set()
        self._blocked: set[tuple[str, str]] = set()  # directed links a partition cuts
        self._timer_gen: dict[tuple[str, str], int] = {}
        self.loss = options.loss
        self.duplicate_rate = options.duplicate
        # Ghosts and the client history.
        self.leaders: dict[int, tuple[str, int]] = {}
        self.committed = bytearray()
        self._committer: tuple[str, int, int] | None = None
        self.history: list[dict[str, Any]] = []
        self.violations: list[str] = []
        self.steps = 0
        # Manual mode.
        self.in_flight: list[Envelope] = []
        self.disk_pending: dict[str, list[Callable[[], None]]] = {a: [] for a in options.acceptor_ids}
        self.armed: dict[tuple[str, str], int] = {}

    def _tracer(self, node: str, on: bool) -> Tracer | None:
        if not on:
            return None
        own: list[dict[str, Any]] = []
        self.node_events[node] = own

        def write(event: dict[str, Any]) -> None:
            own.append(event)
            self.events.append(event)

        return Tracer(node, WAL_START, write)

    def _config(self) -> ProposerConfig:
        o = self.options
        return ProposerConfig(
            max_send=o.max_send,
            window=o.max_send * 8,
            election_timeout=o.election_timeout,
            heartbeat=o.heartbeat,
            stall_ticks=20,
        )

    # -----------------------------------------------------------------------------------
    # Scheduling
    # -----------------------------------------------------------------------------------

    def _at(self, delay: int, fn: Callable[..., None], *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (self.now + delay, self._seq, fn, args))

    def _between(self, bounds: tuple[int, int]) -> int:
        return self.rng.randint(*bounds)

    def step(self) -> bool:
        """Run the next event; False if none is left."""
        if not self._queue:
            return False
        self.now, _, fn, args = heapq.heappop(self._queue)
        self.steps += 1
        fn(*args)
        return True

    # -----------------------------------------------------------------------------------
    # Nodes
    # -----------------------------------------------------------------------------------

    def start(self) -> None:
        """Bring every node up: fresh acceptors, then proposers (which connect)."""
        self.start_acceptors()
        for name in self.proposers:
            self.start_proposer(name)

    def start_acceptors(self) -> None:
        """Fresh acceptors with empty WALs (the spec's Init)."""
        for node in self.acceptors.values():
            node.core = AcceptorCore.fresh(node.name, WAL_START, node.tracer)

    def start_proposer(self, name: str) -> None:
        node = self.proposers[name]
        node.incarnation += 1
        node.core = ProposerCore(name, tuple(self.acceptors), WAL_START, self._config(), node.tracer)
        self._proposer_effects(node, self._guard(name, node.core.start))

    def crash(self, name: str, keep: int | None = None) -> None:
        """Kill a node: its volatile state goes, an acceptor's unflushed WAL too, but for
        its first `keep` bytes (None: a seeded draw in a random run, none in manual mode)."""
        if name in self.acceptors:
            node = self.acceptors[name]
            if node.core is None:
                return
            node.core = None
            node.incarnation += 1
            if keep is None:
                keep = 0 if self.manual else self._kept(node.disk.write_lsn - node.disk.flush_lsn)
            node.disk.crash(keep)
            self.disk_pending[name].clear()
            for p in self.proposers:
                self._disconnect(p, name)
        else:
            node_p = self.proposers[name]
            if node_p.core is None:
                return
            node_p.core = None
            node_p.incarnation += 1
            self._abandon(node_p)
            for a in self.acceptors:
                self._disconnect(name, a)

    def _kept(self, unflushed: int) -> int:
        """How many of `unflushed` written bytes a crash keeps: none half the time (the
        crash the spec had before), else any number up to all of them."""
        if unflushed <= 0 or self._disk_rng.random() < 0.5:
            return 0
        return self._disk_rng.randint(1, unflushed)

    def restart(self, name: str) -> None:
        """Bring a crashed node back from its disk (an acceptor) or with nothing (a proposer)."""
        if name in self.proposers:
            if self.proposers[name].core is None:
                self.start_proposer(name)
            return
        node = self.acceptors[name]
        if node.core is not None:
            return
        control = node.disk.load()
        if control is None:
            node.core, effects = AcceptorCore.fresh(name, WAL_START, node.tracer), ()
        else:
            try:
                node.core, effects = AcceptorCore.restart_acceptor(control, node.disk.reopen(), node.tracer)
            except CorruptStorage as exc:  # its disk lost what it promised: it stays down
                self._violate(f"{name} refused to restart: {exc}")
                return
        self._acceptor_effects(node, effects)
        for p, pnode in self.proposers.items():
            if pnode.core is not None:
                self._connect_later(p, name)

    def is_up(self, name: str) -> bool:
        node = self.acceptors.get(name) or self.proposers[name]
        return node.core is not None

    def _guard(self, node: str, call: Callable[[], tuple[Effect, ...]]) -> tuple[Effect, ...]:
        """Run a core call; any exception between honest nodes is a violation."""
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - reported with the seed, never swallowed silently
            self._violate(f"{node} raised {type(exc).__name__}: {exc}")
            return ()

    # -----------------------------------------------------------------------------------
    # Connections and the network
    # -----------------------------------------------------------------------------------

    def _disconnect(self, p: str, a: str) -> None:
        key = (p, a)
        self._epoch[key] = self._epoch.get(key, 0) + 1
        if key in self._connected:
            self._connected.discard(key)
            pnode = self.proposers[p]
            if pnode.core is not None:
                self._proposer_effects(pnode, self._guard(p, lambda: pnode.core.on_disconnected(a)))
            anode = self.acceptors[a]
            if anode.core is not None:
                self._acceptor_effects(anode, self._guard(a, lambda: anode.core.on_disconnected(p)))

    def _connect_later(self, p: str, a: str, backoff: int = 0) -> None:
        """Connect after `backoff` ms plus jitter (up to half an election timeout more)."""
        incarnations = (self.proposers[p].incarnation, self.acceptors[a].incarnation)
        if self.manual:
            self.connect(p, a)
        else:
            jitter = self._between((1, max(1, backoff // 2 + self.options.election_timeout // 2)))
            self._at(backoff + jitter, self._connect, p, a, incarnations)

    def _connect(self, p: str, a: str, incarnations: tuple[int, int]) -> None:
        if incarnations != (self.proposers[p].incarnation, self.acceptors[a].incarnation):
            return
        self.connect(p, a)

    def connect(self, p: str, a: str) -> None:
        """Open the connection p-a if both are up and it is not open."""
        pnode = self.proposers[p]
        if pnode.core is None or self.acceptors[a].core is None or (p, a) in self._connected:
            return
        self._connected.add((p, a))
        self._epoch.setdefault((p, a), 0)
        self._proposer_effects(pnode, self._guard(p, lambda: pnode.core.on_connected(a)))

    def _send(self, src: str, dst: str, msg: Message, meta: MsgMeta | None) -> None:
        key = (src, dst) if src in self.proposers else (dst, src)
        if key not in self._connected:
            return
        env = Envelope(src, dst, msg, meta, self._epoch[key])
        if self.manual:
            self.in_flight.append(env)
            return
        if (src, dst) in self._blocked or self.rng.random() < self.loss:
            self._lose(env)
            return
        self._at(self._between(self.options.latency), self._deliver, env)
        if self.rng.random() < self.duplicate_rate:
            self._at(self._between(self.options.latency), self._deliver, env)

    def _lose(self, env: Envelope) -> None:
        """The network loses a message.  Spec: LoseMessage (traced by the node "net")."""
        if self._net is not None and env.meta is not None:
            self._net.event("LoseMessage", {}, (), env.meta)

    def _deliver(self, env: Envelope) -> None:
        key = (env.src, env.dst) if env.src in self.proposers else (env.dst, env.src)
        if self._epoch.get(key) != env.epoch or key not in self._connected:
            self._lose(env)  # the connection it was sent on is gone
            return
        if env.dst in self.acceptors:
            node = self.acceptors[env.dst]
            if node.core is not None:
                core = node.core
                self._acceptor_effects(node, self._guard(env.dst, lambda: core.receive(env.src, env.msg, env.meta)))
        else:
            pnode = self.proposers[env.dst]
            if pnode.core is not None:
                pcore = pnode.core
                self._proposer_effects(pnode, self._guard(env.dst, lambda: pcore.receive(env.src, env.msg, env.meta)))

    # -----------------------------------------------------------------------------------
    # Effects
    # -----------------------------------------------------------------------------------

    def _acceptor_effects(self, node: _Acceptor, effects: tuple[Effect, ...]) -> None:
        for effect in effects:
            match effect:
                case Send(to=to, msg=msg, meta=meta):
                    self._send(node.name, to, msg, meta)
                case WriteWal(lsn=lsn, data=data):
                    node.disk.write(lsn, data)
                case TruncateWal(lsn=lsn):
                    node.disk.truncate(lsn)
                case Flush():
                    self._disk_op(node, node.disk.flush, "on_flushed")
                case PersistControl(state=state):
                    self._disk_op(node, lambda s=state: node.disk.store(s), "on_persisted")
                case Close(peer=peer, reason=reason):  # honest peers are never refused
                    self._violate(f"{node.name} refused {peer}: {reason}")
                    self._disconnect(peer, node.name)
                case SendWal(to=to, term=term, begin_lsn=begin, end_lsn=end):
                    wal = node.disk.read(begin, end)
                    data = WalData(acceptor=node.name, term=term, begin_lsn=begin, end_lsn=end, wal=wal)
                    self._send(node.name, to, data, None)
                case _:
                    self._violate(f"{node.name}: unexpected acceptor effect {effect!r}")

    def _disk_op(self, node: _Acceptor, apply: Callable[[], object], completion: str) -> None:
        """A flush or persist: it takes effect, and is reported, only when it completes."""
        incarnation = node.incarnation

        def complete() -> None:
            if node.incarnation != incarnation or node.core is None:
                return  # the node crashed first: the write never happened
            apply()
            core = node.core
            self._acceptor_effects(node, self._guard(node.name, getattr(core, completion)))

        if self.manual:
            self.disk_pending[node.name].append(complete)
        else:
            self._at(self._between(self.options.fsync), complete)

    def _proposer_effects(self, node: _Proposer, effects: tuple[Effect, ...]) -> None:
        for effect in effects:
            match effect:
                case Send(to=to, msg=msg, meta=meta):
                    self._send(node.name, to, msg, meta)
                case SetTimer(name=name, delay=delay):
                    self._set_timer(node, name, delay)
                case Committed(commit_lsn=lsn):
                    self._committed(node, lsn)
                case ResetConnections(backoff=backoff):  # a restart: pending appends in doubt
                    self._abandon(node)
                    for a in self.acceptors:
                        self._disconnect(node.name, a)
                    for a, anode in self.acceptors.items():
                        if anode.core is not None:
                            self._connect_later(node.name, a, backoff)
                case _:
                    self._violate(f"{node.name}: unexpected proposer effect {effect!r}")
        self._check_election(node)

    def _set_timer(self, node: _Proposer, name: str, delay: int) -> None:
        key = (node.name, name)
        gen = self._timer_gen[key] = self._timer_gen.get(key, 0) + 1
        if self.manual:
            self.armed[key] = gen
            return
        if name == "election":  # jitter separates competing proposers
            delay += self.rng.randint(0, delay)
        incarnation = node.incarnation
        self._at(delay, self._fire, node, name, gen, incarnation)

    def _fire(self, node: _Proposer, name: str, gen: int, incarnation: int) -> None:
        if node.incarnation != incarnation or node.core is None or self._timer_gen[(node.name, name)] != gen:
            return
        core = node.core
        self._proposer_effects(node, self._guard(node.name, lambda: core.on_timer(name)))

    # -----------------------------------------------------------------------------------
    # Client and checks
    # -----------------------------------------------------------------------------------

    def append(self, name: str, record: bytes | None = None) -> dict[str, Any] | None:
        """The client of proposer `name` appends a record if it leads; returns the op."""
        node = self.proposers[name]
        core = node.core
        if core is None or core.phase != "leader":
            return None
        if record is None and core.wal_end - core.commit_lsn > self._config().window:
            return None  # back-pressure: a client waits while a window is uncommitted
        if record is None:
            node.records += 1
            size = self._between(self.options.record_size)
            record = f"{name}.{node.incarnation}.{node.records};".encode().ljust(size, b"-")
        try:
            end, effects = core.new_entry(record)
        except NotLeader:
            return None
        op = {
            "op": "append", "proposer": name, "term": core.term, "invoked_ms": self.now,
            "begin": end - len(record), "end": end, "data": record.decode(), "status": "pending",
        }
        self.history.append(op)
        node.pending.append(op)
        self._proposer_effects(node, effects)
        return op

    def _committed(self, node: _Proposer, commit_lsn: int) -> None:
        """A leader's commit_lsn advanced: the committed log must extend the one known."""
        core = node.core
        assert core is not None
        known = len(self.committed)
        length = commit_lsn - WAL_START
        committer = (node.name, node.incarnation, core.term)
        # A leader's WAL only grows, so after its first commit only its new bytes need a look.
        checked = min(known, length) if committer == self._committer else 0
        self._committer = committer
        overlap = min(known, length)
        if core.wal_bytes(WAL_START + checked, WAL_START + overlap) != self.committed[checked:overlap]:
            self._violate(
                f"committed WAL changed: {node.name} (term {core.term}) commits"
                f" {core.wal_bytes(WAL_START, WAL_START + overlap)!r}, earlier commits were"
                f" {bytes(self.committed[:overlap])!r}"
            )
        # A deposed leader may still commit a shorter prefix (a late ack of its term); it
        # must agree with the committed log, which the comparison above checked.
        if length > known:
            self.committed += core.wal_bytes(WAL_START + known, commit_lsn)
        still = []
        for op in node.pending:
            if op["end"] <= commit_lsn:
                op["status"] = "ok"
                op["acked_ms"] = self.now
            else:
                still.append(op)
        node.pending = still

    def _abandon(self, node: _Proposer) -> None:
        """The proposer restarted: its pending appends may or may not be committed."""
        for op in node.pending:
            op["status"] = "unknown"
        node.pending.clear()

    def _check_election(self, node: _Proposer) -> None:
        core = node.core
        if core is None or core.phase != "leader":
            return
        who = (node.name, node.incarnation)
        first = self.leaders.setdefault(core.term, who)
        if first != who:
            self._violate(f"ElectionSafety: term {core.term} led by {first} and by {who}")

    def _violate(self, what: str) -> None:
        self.violations.append(f"t={self.now}ms: {what}")

    def final_checks(self) -> None:
        """The end-of-run checks (acknowledged appends, committed log on a majority)."""
        for op in self.history:
            if op["status"] == "ok":
                got = bytes(self.committed[op["begin"] - WAL_START : op["end"] - WAL_START])
                if got != op["data"].encode():
                    self._violate(f"acknowledged append lost or changed: {op} but the log has {got!r}")
        holders = [
            a for a, node in self.acceptors.items()
            if node.disk.read(WAL_START, node.disk.flush_lsn).startswith(bytes(self.committed))
        ]
        if 2 * len(holders) <= len(self.acceptors):
            self._violate(f"CommittedNeverLost: the committed log ({len(self.committed)} B) is flushed only on {holders}")

    # -----------------------------------------------------------------------------------
    # Manual mode (scenarios)
    # -----------------------------------------------------------------------------------

    def find(self, src: str | None = None, dst: str | None = None, type: str | None = None) -> Iterator[Envelope]:
        """The in-flight envelopes matching the filters, oldest first."""
        for env in self.in_flight:
            if (src is None or env.src == src) and (dst is None or env.dst == dst) and (
                type is None or env.msg.__class__.__name__ == type
            ):
                yield env

    def deliver(self, src: str | None = None, dst: str | None = None, type: str | None = None, keep: bool = False) -> Envelope:
        """Deliver the oldest matching in-flight message (`keep`: a duplicate stays behind)."""
        env = next(self.find(src, dst, type), None)
        if env is None:
            raise LookupError(f"no message {src or '*'}->{dst or '*'} {type or ''} in flight")
        if not keep:
            self.in_flight.remove(env)
        self._deliver(env)
        return env

    def drop(self, src: str | None = None, dst: str | None = None, type: str | None = None) -> int:
        """Lose every matching in-flight message; returns how many."""
        lost = list(self.find(src, dst, type))
        for env in lost:
            self.in_flight.remove(env)
            self._lose(env)
        return len(lost)

    def complete(self, acceptor: str) -> None:
        """Complete the acceptor's oldest outstanding flush or persist."""
        pending = self.disk_pending[acceptor]
        if not pending:
            raise LookupError(f"{acceptor} has no disk operation outstanding")
        pending.pop(0)()

    def tick(self, proposer: str, timer: str) -> None:
        """Fire a proposer's timer now."""
        node = self.proposers[proposer]
        core = node.core
        if core is None:
            raise LookupError(f"{proposer} is down")
        self._proposer_effects(node, self._guard(proposer, lambda: core.on_timer(timer)))

    def stabilize(self, limit: int = 100_000) -> None:
        """Deliver every message and complete every disk operation until none is left."""
        for _ in range(limit):
            busy = [a for a, ops in self.disk_pending.items() if ops]
            if busy:
                self.complete(busy[0])
            elif self.in_flight:
                self._deliver(self.in_flight.pop(0))
            else:
                return
        raise RuntimeError(f"not stable after {limit} steps")

    # -----------------------------------------------------------------------------------
    # The random run
    # -----------------------------------------------------------------------------------

    def run(self) -> SimResult:
        """The fault phase, then healing and the liveness phase; then the final checks."""
        o = self.options
        self.start()
        for name in self.proposers:
            self._at(self._between((1, o.append_every)), self._client, name)
        if o.crash_every:
            self._at(self._between((1, 2 * o.crash_every)), self._random_crash)
        if o.partition_every:
            self._at(self._between((1, 2 * o.partition_every)), self._random_partition)
        self._faults = True
        while self.steps < o.steps and not self.violations and self.step():
            pass
        self._heal()
        healed_at = self.now
        deadline = healed_at + o.liveness_ms
        while not self.violations and self.now <= deadline and not self._live_since(healed_at):
            if not self.step():
                break
        if not self.violations and not self._live_since(healed_at):
            self._violate(
                f"liveness: no append invoked after the faults stopped (t={healed_at}ms) was"
                f" acknowledged within {o.liveness_ms}ms; commit at {len(self.committed)} B"
            )
        self.final_checks()
        return SimResult(
            seed=o.seed,
            ok=not self.violations,
            violations=tuple(self.violations),
            events=len(self.events),
            commit_lsn=WAL_START + len(self.committed),
            acknowledged=sum(op["status"] == "ok" for op in self.history),
            elections=len(self.leaders),
            virtual_ms=self.now,
        )

    def _live_since(self, t: int) -> bool:
        return any(op["status"] == "ok" and op["invoked_ms"] >= t for op in self.history)

    def _client(self, name: str) -> None:
        self.append(name)
        self._at(self._between((1, 2 * self.options.append_every)), self._client, name)

    def _random_crash(self) -> None:
        if not self._faults:
            return
        name = self.rng.choice(sorted(self.acceptors) + sorted(self.proposers))
        if self.is_up(name):
            self.crash(name)
            self._at(self._between(self.options.down), self._restart_if_faulty, name)
        self._at(self._between((1, 2 * self.options.crash_every)), self._random_crash)

    def _restart_if_faulty(self, name: str) -> None:
        if self._faults:
            self.restart(name)

    def _random_partition(self) -> None:
        if not self._faults:
            return
        nodes = sorted(self.acceptors) + sorted(self.proposers)
        victim = self.rng.choice(nodes)
        one_way = self.rng.random() < 0.5
        links = {(victim, n) for n in nodes if n != victim}
        if not one_way:
            links |= {(n, victim) for n in nodes if n != victim}
        self._blocked |= links
        self._at(self._between(self.options.partition_ms), self._unblock, frozenset(links))
        self._at(self._between((1, 2 * self.options.partition_every)), self._random_partition)

    def _unblock(self, links: frozenset[tuple[str, str]]) -> None:
        self._blocked -= links

    def _heal(self) -> None:
        """Faults stop: links heal, loss stops, every node comes back."""
        self._faults = False
        self._blocked.clear()
        self.loss = 0.0
        self.duplicate_rate = 0.0
        for name in sorted(self.acceptors) + sorted(self.proposers):
            self.restart(name)

    # -----------------------------------------------------------------------------------
    # Output
    # -----------------------------------------------------------------------------------

    def write_run(self, out: Path, result: SimResult | None = None) -> None:
        """Write the run directory: one ndjson per node, all.ndjson, run.json (DESIGN §5)."""
        out.mkdir(parents=True, exist_ok=True)
        for node, events in self.node_events.items():
            (out / f"{node}.ndjson").write_text("".join(dumps(e) + "\n" for e in events))
        (out / "all.ndjson").write_text("".join(dumps(e) + "\n" for e in self.events))
        run = {
            "seed": self.options.seed,
            "options": attrs.asdict(self.options),
            "cluster": {"acceptors": list(self.acceptors), "proposers": list(self.proposers), "wal_start": WAL_START},
            "result": attrs.asdict(result) if result is not None else None,
            "history": self.history,
        }
        (out / "run.json").write_text(json.dumps(run, indent=1) + "\n")


def run_seed(seed: int, steps: int = 3000, out: Path | None = None, trace: bool = True) -> SimResult:
    """One deterministic run of `SimOptions.from_seed(seed)`; writes `out` if given."""
    sim = Sim(SimOptions.from_seed(seed, steps), trace=trace or out is not None)
    result = sim.run()
    if out is not None:
        sim.write_run(out, result)
    return result
