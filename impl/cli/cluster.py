"""`paxwal cluster up|down|status`, `paxwal load`, `paxwal sqlload` and `paxwal chaos`: a local
multi-process cluster, load on it, and chaos under load."""

from __future__ import annotations

import argparse
import collections
import math
import shutil
import signal
import sys
from pathlib import Path

from impl.cli.acceptor import segment_size
from impl.cli.common import CliError, cluster_dir_argument, positive_int
from impl.cluster import Cluster, ClusterError
from impl.wal import DEFAULT_SEGMENT_SIZE
from impl.wire import format_lsn


def _cluster(args: argparse.Namespace) -> Cluster:
    return Cluster(args.dir)


def _cmd_up(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    try:
        config, started = cluster.up(args.acceptors, args.segment_size, args.remote, pageserver=args.pageserver)
    except ClusterError as exc:
        raise CliError(str(exc)) from None
    running = [n for n in config.acceptors if n not in started]
    print(f"cluster in {cluster.dir}: {len(config.acceptors)} acceptors on 127.0.0.1")
    for node, port in config.acceptors.items():
        print(f"  {node}  port {port}  pid {cluster.pid(node)}  {'started' if node in started else 'already running'}")
    if config.pageserver_port is not None:
        print(f"  pageserver  port {config.pageserver_port}  pid {cluster.pid('pageserver')}"
              f"  {'started' if 'pageserver' in started else 'already running'}")
    if running and not started:
        print("nothing to start: every node was running")
    print(f"traces in {cluster.run_dir}; logs in {cluster.dir / 'logs'}; `paxwal cluster status --dir {cluster.dir}`")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    try:
        outcome = cluster.down()
    except ClusterError as exc:
        raise CliError(str(exc)) from None
    for node, how in outcome.items():
        print(f"  {node}  {how}")
    print(f"cluster in {cluster.dir} is down (its data is kept: `paxwal cluster up --dir {cluster.dir}` starts it again)")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    try:
        nodes = cluster.status(args.timeline)
    except ClusterError as exc:
        raise CliError(str(exc)) from None
    answered = [n.state for n in nodes if n.state is not None]
    leaders = collections.Counter((s.leader_term, s.leader) for s in answered if s.leader)
    leader = max(leaders) if leaders else None
    quorum = len(nodes) // 2 + 1
    commit = max((s.commit_lsn for s in answered), default=None)
    print(f"cluster in {cluster.dir}: {len(answered)} of {len(nodes)} acceptors answering (quorum {quorum})")
    if leader is not None:
        term, name = leader
        print(f"leader: {name} in term {term} (followed by {leaders[leader]} of {len(nodes)})")
    else:
        print("leader: none elected")
    if commit is not None:
        print(f"commit_lsn: {format_lsn(commit)}")
    print(f"{'node':<6}{'port':<7}{'pid':<9}{'term':<6}{'flush_lsn':<14}{'commit_lsn':<14}{'leader':<10}proposers")
    for n in nodes:
        pid = str(n.pid) if n.pid is not None else "-"
        if n.state is None:
            print(f"{n.node:<6}{n.port:<7}{pid:<9}{n.error}")
            continue
        s = n.state
        follows = f"{s.leader}@{s.leader_term}" if s.leader else "-"
        print(f"{n.node:<6}{n.port:<7}{pid:<9}{s.term:<6}{format_lsn(s.flush_lsn):<14}{format_lsn(s.commit_lsn):<14}"
              f"{follows:<10}{','.join(s.proposers) or '-'}")
    pageserver = cluster.pageserver_status(args.timeline)
    if pageserver is not None:
        if isinstance(pageserver, str):
            print(f"pageserver: {pageserver}")
        else:
            p = pageserver
            print(f"pageserver: {p.timeline} last_record {format_lsn(p.last_record_lsn)}  disk_consistent"
                  f" {format_lsn(p.disk_consistent_lsn)}  remote_consistent {format_lsn(p.remote_consistent_lsn)}"
                  f"  gc_cutoff {format_lsn(p.gc_cutoff)}  layers {p.layers}  streaming from {p.streaming_from or '-'}")
    return 0 if len(answered) == len(nodes) and not isinstance(pageserver, str) else 1


def _timeline(text: str) -> str:
    from impl.wire import check_timeline_id

    try:
        return check_timeline_id(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cmd_load(args: argparse.Namespace) -> int:
    import trio

    from impl.load import run_load

    cluster = _cluster(args)
    if not cluster.exists():
        raise CliError(f"no cluster in {cluster.dir}: start one with `paxwal cluster up --dir {cluster.dir}`")

    def progress(summary, elapsed: float) -> None:  # type: ignore[no-untyped-def]
        if int(elapsed) % args.progress_every == 0:
            print(f"{elapsed:6.0f} s  acked {summary.acked:,}  failed {summary.failed_definite + summary.failed_unknown:,}"
                  f"  lsn {format_lsn(summary.last_lsn) if summary.last_lsn is not None else '-'}", file=sys.stderr, flush=True)

    async def main() -> object:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                result: list[object] = []

                async def load() -> None:
                    result.append(await run_load(cluster, args.clients, args.seconds, args.name, progress=progress,
                                                 timeline=args.timeline, wal_start=args.wal_start))
                    nursery.cancel_scope.cancel()

                async def stop_on_signal() -> None:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()

                nursery.start_soon(load)
                nursery.start_soon(stop_on_signal)
            return result[0] if result else None

    try:
        summary = trio.run(main)
    except (ClusterError, ValueError) as exc:
        raise CliError(str(exc)) from None
    if summary is None:
        print(f"load stopped by a signal; the history is in {cluster.history_path(args.timeline)}")
        return 0
    rate = summary.acked / args.seconds if args.seconds != math.inf else 0
    p50, p99 = summary.percentile(0.5), summary.percentile(0.99)
    print(f"proposer {summary.proposer} (incarnation {summary.incarnation}): acked {summary.acked:,} records"
          f" ({rate:,.0f}/s), failed {summary.failed_definite:,} never written + {summary.failed_unknown:,} outcome unknown")
    if p50 is not None:
        print(f"commit latency p50 {p50 * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms; history in {cluster.history_path(args.timeline)}")
    return 0


def _cmd_sqlload(args: argparse.Namespace) -> int:
    import threading

    from impl.sqlload import SQL_HISTORY, run_sqlload

    cluster = _cluster(args)
    try:
        config = cluster.load()
    except ClusterError as exc:
        raise CliError(str(exc)) from None
    history = args.history if args.history is not None else cluster.timeline_run_dir("main") / SQL_HISTORY
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    def progress(summary, elapsed: float) -> None:  # type: ignore[no-untyped-def]
        if int(elapsed) % args.progress_every == 0:
            print(f"{elapsed:6.0f} s  acked {summary.acked:,}  outcome unknown {summary.unknown:,}"
                  f"  connections {summary.connects:,}", file=sys.stderr, flush=True)

    summary = run_sqlload(args.port, config.compute_password, history, args.clients, args.seconds, stop, progress)
    p50, p99 = summary.percentile(0.5), summary.percentile(0.99)
    print(f"sqlload {summary.incarnation}: acked {summary.acked:,} transactions, {summary.unknown:,} outcome unknown,"
          f" {summary.connects:,} connections; history in {history}")
    if p50 is not None:
        print(f"commit latency p50 {p50 * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms")
    return 0


def _cmd_chaos(args: argparse.Namespace) -> int:
    import tempfile

    from impl.chaos import ChaosOptions, run_chaos, run_sql_chaos

    directory = args.dir if args.dir is not None else Path(tempfile.mkdtemp(prefix="paxwal-chaos-"))
    if directory.exists() and any(directory.iterdir()):
        raise CliError(f"{directory} is not empty: chaos builds a fresh cluster")
    options = ChaosOptions(args.seconds, args.seed, clients=args.clients)
    workload = "SQL computes" if args.sql else "the record load"
    print(f"chaos for {args.seconds:.0f} s under {workload}, seed {args.seed}, in {directory}", flush=True)
    try:
        report = (run_sql_chaos if args.sql else run_chaos)(directory, options, say=lambda line: print(line, flush=True))
    except ClusterError as exc:
        raise CliError(str(exc)) from None
    for line in report.lines():
        print(line)
    if report.ok and args.dir is None:
        shutil.rmtree(directory)  # a passing run's gigabytes of traces are not worth keeping
    print("chaos: PASSED" if report.ok else f"chaos: FAILED (the run is kept in {directory})")
    return 0 if report.ok else 1


def add_commands(commands: argparse._SubParsersAction) -> None:
    cluster = commands.add_parser(
        "cluster",
        help="a local multi-process cluster on 127.0.0.1",
        description=(
            "Run acceptors as separate processes on 127.0.0.1, each with its data directory, log and trace"
            " under DIR (see impl/cluster.py). Exit 2 with one line if DIR holds no cluster or a node cannot start."
        ),
    )
    sub = cluster.add_subparsers(dest="cluster_command", required=True, metavar="SUBCOMMAND")
    up = sub.add_parser("up", help="create the cluster if needed and start every node not running",
                        description="Create the cluster in DIR if it has none (free ports, cluster.json), then start"
                                    " every acceptor not running and wait until each listens.")
    cluster_dir_argument(up)
    up.add_argument("--acceptors", type=positive_int, default=3, metavar="N", help="number of acceptors (default 3)")
    up.add_argument("--segment-size", type=segment_size, default=DEFAULT_SEGMENT_SIZE, metavar="BYTES",
                    help=f"WAL segment size of a new cluster (default {DEFAULT_SEGMENT_SIZE:,})")
    up.add_argument("--remote", default="remote", metavar="LOCATION",
                    help="object store for WAL offload of a new cluster: a directory (relative to DIR) or"
                         " s3://BUCKET[/PREFIX] with AWS_* variables for endpoint and credentials (default DIR/remote)")
    up.add_argument("--no-pageserver", dest="pageserver", action="store_false",
                    help="a new cluster without the pageserver (by default one streams every timeline's"
                         " committed WAL into DIR/pageserver and serves its pages)")
    up.set_defaults(handler=_cmd_up)
    down = sub.add_parser("down", help="stop every node (SIGTERM, then SIGKILL after 10 s); data is kept",
                          description="Stop every node of the cluster in DIR; its data, logs and traces stay.")
    cluster_dir_argument(down)
    down.set_defaults(handler=_cmd_down)
    status = sub.add_parser("status", help="each acceptor's term, flush and commit LSN, and the leader",
                            description="Ask each acceptor for its state. Exit 0 if all answer, 1 if one does not.")
    cluster_dir_argument(status)
    status.add_argument("--timeline", type=_timeline, default="main", metavar="T",
                        help="the timeline to report (default main); one an acceptor lacks shows term 0, nothing flushed")
    status.set_defaults(handler=_cmd_status)

    load = commands.add_parser(
        "load",
        help="append records through a proposer, recording the client history",
        description=(
            "Run proposer NAME of timeline T against the cluster in DIR and C clients appending page records (one 4 KiB page each)"
            " for S seconds (each waits for its commit before the next), writing every operation to"
            " DIR/run/T/history.jsonl"
            " (invoke, ack with LSN, fail). SIGTERM or SIGINT stops it early."
        ),
    )
    cluster_dir_argument(load)
    load.add_argument("--clients", type=positive_int, default=4, metavar="C", help="concurrent clients (default 4)")
    load.add_argument("--seconds", type=float, default=10.0, metavar="S", help="how long (default 10; inf: until signalled)")
    load.add_argument("--name", default="p1", help="the proposer's id (default p1)")
    load.add_argument("--timeline", type=_timeline, default="main", metavar="T",
                      help="the timeline to write; acceptors create it if new (default main)")
    load.add_argument("--wal-start", type=int, default=None, metavar="LSN",
                      help="where timeline T's WAL starts: its branch LSN"
                           " (default: the cluster's, for main)")
    load.add_argument("--progress-every", type=positive_int, default=5, metavar="SECONDS",
                      help="a progress line on stderr this often (default 5)")
    load.set_defaults(handler=_cmd_load)

    sqlload = commands.add_parser(
        "sqlload",
        help="run SQL transactions against a compute, recording the client history",
        description=(
            "Run C clients against the compute listening on P (127.0.0.1; with several --port, whichever"
            " answers), each a loop of transactions that insert one row into tables a and b and bump its"
            " counter in table counts, for S seconds, writing every transaction to the history"
            " (invoke, ack, fail with SQLSTATE) at DIR/run/main/sql-history.jsonl (impl/sqlload.py)."
            " SIGTERM or SIGINT stops it after the Queries in flight."
        ),
    )
    cluster_dir_argument(sqlload)
    sqlload.add_argument("--port", type=int, action="append", required=True, metavar="P",
                         help="a compute's Postgres port (repeat it: clients try each in turn)")
    sqlload.add_argument("--clients", type=positive_int, default=4, metavar="C", help="concurrent clients (default 4)")
    sqlload.add_argument("--seconds", type=float, default=10.0, metavar="S", help="how long (default 10; inf: until signalled)")
    sqlload.add_argument("--name", default="sqlload", help="its node name, for its pid file and log (default sqlload)")
    sqlload.add_argument("--history", type=Path, metavar="FILE", help="the history file (default DIR/run/main/sql-history.jsonl)")
    sqlload.add_argument("--progress-every", type=positive_int, default=5, metavar="SECONDS",
                         help="a progress line on stderr this often (default 5)")
    sqlload.set_defaults(handler=_cmd_sqlload)

    chaos = commands.add_parser(
        "chaos",
        help="kill -9, pause and restart nodes of a real cluster under load, then check nothing was lost",
        description=(
            "Build a fresh cluster in DIR, run `paxwal load` as its own process, and for S seconds kill -9"
            " or pause a minority of the acceptors, all of them at once, or the load process, restarting each."
            " Then a calm phase must commit, every acknowledged record must be on a majority at its LSN, and"
            " every process's trace must be a behaviour of the spec. Exit 0 if so, 1 if not (impl/chaos.py)."
            " With --sql: `paxwal sqlload` transactions against SQL computes instead, and the faults also"
            " kill -9 and pause computes, the pageserver and the workload, and start a compute that takes"
            " over; afterwards a new compute must hold every acknowledged transaction whole."
        ),
    )
    chaos.add_argument("--seconds", type=float, default=60.0, metavar="S", help="the fault phase (default 60)")
    chaos.add_argument("--seed", type=int, default=0, help="chooses the faults and their timing (default 0)")
    chaos.add_argument("--dir", type=Path, metavar="DIR", help="an empty or new directory, kept afterwards (default: a new temporary one, removed if the run passes)")
    chaos.add_argument("--clients", type=positive_int, default=4, metavar="C", help="load clients (default 4)")
    chaos.add_argument("--sql", action="store_true",
                       help="the SQL workload on computes, with compute, pageserver and workload faults too")
    chaos.set_defaults(handler=_cmd_chaos)
