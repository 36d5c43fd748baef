"""Acceptors, proposers, a pageserver and computes in one trio run, each stoppable on its own:
the in-process cluster of tests/test_pageserver.py and tests/test_compute.py (127.0.0.1 only,
bounded in time)."""

from __future__ import annotations

import json
from pathlib import Path

import trio

from conformance.replay import check_run
from impl.acceptor_server import AcceptorServer, serve_acceptor
from impl.compute import Compute, ComputeConfig, serve_compute
from impl.pageserver import Pageserver, PageserverConfig, serve_pageserver
from impl.proposer_client import Proposer, serve_proposer
from impl.remote import LocalFs, RemoteStorage
from impl.timeline import TimelineConfig
from impl.walreceiver import ReceiverConfig

DEADLINE = 90  # seconds one trio run may take
COMPUTE_PASSWORD = "secret"


def assert_traces_accepted(run_dir: Path) -> None:
    result = check_run([run_dir])
    assert result.verdict == "accepted", result.divergence.report() if result.divergence else result


ACCEPTORS = ("a1", "a2", "a3")


class Local:
    """Acceptors, a proposer and a pageserver in one nursery, each stoppable on its own."""

    def __init__(self, nursery: trio.Nursery, tmp: Path, store: RemoteStorage | None = None) -> None:
        self.nursery = nursery
        self.tmp = tmp
        self.run_dir = tmp / "run"
        self.run_dir.mkdir()
        self.store = store if store is not None else LocalFs(tmp / "remote")
        self.ports: dict[str, int] = {}
        self.acceptors: dict[str, AcceptorServer] = {}
        self.scopes: dict[str, tuple[trio.CancelScope, trio.Event]] = {}
        self.acceptor_options: dict[str, object] = {}
        self.timelines: dict[str, tuple[list[str], int]] = {}  # timeline -> its proposers, WAL start
        self.pageserver_port = 0

    async def _start(self, name: str, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        scope, stopped = trio.CancelScope(), trio.Event()
        self.scopes[name] = (scope, stopped)

        async def run(task_status: trio.TaskStatus[object]) -> None:
            try:
                with scope:
                    await fn(*args, **kwargs, task_status=task_status)
            finally:
                stopped.set()

        return await self.nursery.start(run)

    async def start_acceptor(self, name: str) -> AcceptorServer:
        server = await self._start(name, serve_acceptor, name, self.tmp / name, "127.0.0.1", self.ports.get(name, 0),
                                   self.run_dir, remote=self.store, remote_prefix="timelines",
                                   **self.acceptor_options)
        self.ports[name] = server.port
        self.acceptors[name] = server
        return server

    async def stop(self, name: str) -> None:
        scope, stopped = self.scopes.pop(name)
        scope.cancel()
        await stopped.wait()

    def _trace(self, name: str, timeline: str, wal_start: int) -> Path:
        """Where proposer `name` of `timeline` traces; the checker then expects its trace."""
        names, start = self.timelines.setdefault(timeline, ([], wal_start))
        assert start == wal_start, (timeline, start, wal_start)
        if name not in names:
            names.append(name)
        (self.run_dir / timeline).mkdir(exist_ok=True)
        return self.run_dir / timeline / f"{name}.ndjson"

    async def start_proposer(self, name: str = "c1") -> Proposer:
        addresses = {a: ("127.0.0.1", self.ports[a]) for a in ACCEPTORS}
        return await self._start(name, serve_proposer, name, addresses, trace_path=self._trace(name, "main", 0))

    async def start_compute(self, name: str, timeline: str = "main", wal_start: int = 0, **options: object) -> Compute:
        """A compute on `timeline` (its `options` go to ComputeConfig); a primary's proposer is
        traced as a proposer of the timeline."""
        static = options.get("lsn") is not None
        config = ComputeConfig(
            name=name, timeline=timeline, wal_start=wal_start, acceptors=dict(self.ports),
            pageserver_port=self.pageserver_port, password=COMPUTE_PASSWORD,
            trace_path=None if static else self._trace(name, timeline, wal_start), **options)
        return await self._start(name, serve_compute, config)

    async def start_pageserver(self, config: PageserverConfig, name: str = "pageserver") -> Pageserver:
        server = await self._start(name, serve_pageserver, self.tmp / name, dict(self.ports), remote=self.store,
                                   config=config)
        self.pageserver_port = server.port
        return server

    def check_traces(self) -> None:
        """Replay each timeline's traces with the conformance checker."""
        assert self.timelines
        for timeline, (names, wal_start) in self.timelines.items():
            cluster = {"proposers": sorted(names), "acceptors": list(ACCEPTORS), "wal_start": wal_start}
            (self.run_dir / timeline / "run.json").write_text(json.dumps({"cluster": cluster}) + "\n")
            assert_traces_accepted(self.run_dir / timeline)


FAST = PageserverConfig(
    receiver=ReceiverConfig(status_interval=0.1, silence_timeout=1.0, retry_first=0.2, retry_max=1.0,
                            feedback_interval=0.1),
    timelines=TimelineConfig(pitr_bytes=0, pitr_seconds=0),
    freeze_interval=0.2, sync_interval=0.3, compaction_interval=1.0, gc_interval=0, wait_lsn_timeout=1.0,
)


def run_local(tmp_path: Path, body, store: RemoteStorage | None = None,  # type: ignore[no-untyped-def]
              **acceptor_options: object) -> Local:
    locals_: list[Local] = []

    async def main() -> None:
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                local = Local(nursery, tmp_path, store)
                locals_.append(local)
                local.acceptor_options = acceptor_options
                for a in ACCEPTORS:
                    await local.start_acceptor(a)
                try:
                    await body(local)
                finally:
                    for name in list(local.scopes):
                        await local.stop(name)

    trio.run(main)
    return locals_[0]


async def wait_for(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.05)
