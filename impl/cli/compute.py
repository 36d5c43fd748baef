"""`paxwal compute start|stop|list|run`: SQL computes on a running cluster (impl/compute.py)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from impl.cli.common import CliError, cluster_dir_argument
from impl.cli.pageserver import parse_lsn

# A compute that stops because it lost its term or a commit (impl/compute.py rule 5).
EXIT_FENCED = 3
# Seconds between the interpreter's GIL hand-overs in a compute process (see _cmd_run).
SWITCH_INTERVAL = 0.0002


def _cluster(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from impl.cluster import Cluster, ClusterError

    cluster = Cluster(args.dir)
    try:
        return cluster, cluster.load()
    except ClusterError as exc:
        raise CliError(str(exc)) from None


def _branch_start(cluster, config, branch: str) -> int:  # type: ignore[no-untyped-def]
    """Where `branch`'s WAL starts: the cluster's for main, else its branch LSN."""
    if branch == "main":
        return config.wal_start
    status = cluster.pageserver_status(branch)
    if isinstance(status, str) or status is None:
        raise CliError(f"cannot learn where branch {branch} starts: the pageserver is {status or 'absent'}")
    if not status.ancestor:
        raise CliError(f"{branch} is not a branch of another timeline")
    return status.ancestor_lsn


def _parse_time(text: str) -> int:
    """A point in time: ISO 8601 (2026-11-25T21:00:00, UTC unless it says otherwise) or seconds
    since the epoch; microseconds since the epoch."""
    import datetime

    try:
        return round(float(text) * 1_000_000)
    except ValueError:
        pass
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO 8601 time or seconds since the epoch, got {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return round(moment.timestamp() * 1_000_000)


def _lsn_at(config, branch: str, time_us: int) -> int:  # type: ignore[no-untyped-def]
    """The newest LSN of `branch` committed at or before `time_us`, from the pageserver."""
    from impl.pageclient import page_request
    from impl.wire import LsnAtTime, LsnAtTimeData, ProtocolError

    try:
        reply = page_request(config.pageserver_port, LsnAtTime(timeline=branch, time=time_us))
    except (OSError, ProtocolError) as exc:
        raise CliError(f"the pageserver on port {config.pageserver_port} is not answering: {exc}") from None
    if not isinstance(reply, LsnAtTimeData):
        raise CliError(f"pageserver refused: {reply}")
    return reply.lsn


def _cmd_start(args: argparse.Namespace) -> int:
    import datetime

    from impl.cluster import ClusterError
    from impl.wire import format_lsn

    cluster, config = _cluster(args)
    if config.pageserver_port is None:
        raise CliError(f"the cluster in {args.dir} has no pageserver: computes read their pages from it")
    if args.at is not None:
        args.lsn = _lsn_at(config, args.branch, args.at)
        moment = datetime.datetime.fromtimestamp(args.at / 1_000_000, datetime.timezone.utc)
        print(f"{args.branch} at {moment.isoformat(timespec='milliseconds')} is LSN {format_lsn(args.lsn)}")
    taken = {record.name for record in cluster.computes()}
    name = args.name or next(f"c{i}" for i in range(1, 10**6) if f"c{i}" not in taken)
    try:
        wal_start = _branch_start(cluster, config, args.branch)
        record = cluster.start_compute(name, args.branch, port=args.port, lsn=args.lsn, replica=args.replica,
                                       wal_start=wal_start)
    except (ClusterError, ValueError) as exc:
        raise CliError(str(exc)) from None
    at = "" if record.lsn is None else f" at {format_lsn(record.lsn)}"
    print(f"compute {name} on {record.branch} ({record.mode}{at}) listening on 127.0.0.1:{record.port};"
          f" log {cluster.log_file(name)}")
    print(cluster.compute_uri(record))
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    cluster, _ = _cluster(args)
    if not cluster.compute_file(args.name).exists():
        raise CliError(f"no compute {args.name} in {args.dir} (`paxwal compute list`)")
    if args.kill:
        how = "killed (SIGKILL)" if cluster.kill(args.name) else "not running"
    else:
        how = cluster.stop(args.name)
    print(f"compute {args.name}: {how}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from impl.cluster import COMPUTE_DATABASE, COMPUTE_USER
    from impl.pgclient import PgConnection, PgError

    cluster, config = _cluster(args)
    print(f"{'name':<10} {'branch':<10} {'mode':<8} {'port':<6} {'pid':<8} {'term':<5} lsn")
    for record in cluster.computes():
        pid = cluster.pid(record.name)
        term, lsn = "-", "not running"
        if pid is not None:
            try:
                with PgConnection(record.port, COMPUTE_USER, config.compute_password, COMPUTE_DATABASE,
                                  timeout=5) as pg:
                    (row,) = pg.query("SELECT paxwal_term(), pg_current_wal_lsn()")
                    term, lsn = str(row[0]), str(row[1])
            except PgError as exc:
                lsn = f"not answering: {exc}"
        print(f"{record.name:<10} {record.branch:<10} {record.mode:<8} {record.port:<6} {pid or '-':<8} {term:<5} {lsn}")
    return 0


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside `exc`'s nested groups (trio's nurseries wrap what they raise)."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


async def _serve_until_signalled(args: argparse.Namespace, config) -> str | None:  # type: ignore[no-untyped-def]
    import trio

    from impl.cluster import COMPUTE_DATABASE, COMPUTE_USER, Cluster
    from impl.compute import ComputeConfig, ComputeError, serve_compute

    ready = Cluster(args.dir).ready_file(args.name)
    compute_config = ComputeConfig(
        name=args.name, timeline=args.branch, wal_start=args.wal_start, acceptors=dict(config.acceptors),
        pageserver_port=config.pageserver_port, port=args.port, user=COMPUTE_USER, password=config.compute_password,
        database=COMPUTE_DATABASE, lsn=args.lsn, replica=args.replica,
        trace_path=(args.dir / "run" / args.branch / f"{args.name}.ndjson"
                    if args.lsn is None and not args.replica else None),
    )
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            async def run_compute(task_status: trio.TaskStatus[object]) -> None:
                await serve_compute(compute_config, task_status=task_status)
                nursery.cancel_scope.cancel()  # it stopped by itself: fenced (impl/compute.py rule 5)

            try:
                compute = await nursery.start(run_compute)
            except (ComputeError, trio.TooSlowError, OSError, BaseExceptionGroup) as exc:
                causes = _leaves(exc)
                if not all(isinstance(c, (ComputeError, trio.TooSlowError, OSError)) for c in causes):
                    raise
                return f"compute {args.name} cannot start: " + "; ".join(f"{type(c).__name__}: {c}" for c in causes)
            ready.write_text(f"{os.getpid()}\n")  # Cluster.start_compute waits for this

            async def stop_on_signal() -> None:
                async for signum in signals:
                    logging.getLogger("paxwal.compute").info("stopping on %s", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_signal)
        if compute.fenced is not None:
            return f"compute {args.name} stopped: {compute.fenced}"
    return None


def _cmd_run(args: argparse.Namespace) -> int:
    import trio

    _, config = _cluster(args)
    # SQLite runs in one worker thread per client session, and they hand the one SQLite
    # connection to each other: with the default 5 ms GIL switch interval each hand-over can
    # wait that long for the GIL.
    sys.setswitchinterval(SWITCH_INTERVAL)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    failure = trio.run(_serve_until_signalled, args, config)
    if failure is not None:
        print(f"paxwal: {failure}", file=sys.stderr)
        return EXIT_FENCED
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from impl.demo import run_demo

    if args.dir is not None and (args.dir / "cluster.json").exists():
        raise CliError(f"{args.dir} holds a cluster already: the demo builds its own (give a new directory)")
    return run_demo(args.dir, lambda line: print(line, flush=True))


def add_commands(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser(
        "demo", help="the failover walk-through: a cluster, computes, kill -9, branches, psql as the client",
        description="Build a fresh local cluster (3 acceptors, a pageserver, objects in a directory), start compute"
                    " c1, commit rows with psql, kill -9 c1, start c2 and show it at the same LSN with every"
                    " acknowledged row (the failover time is printed), write on c2, then read the past through a"
                    " branch and a static compute, stop everything and check every trace. Each step is printed"
                    " with its command, output and time. Exit 0 only if every check held.")
    demo.add_argument("--dir", type=Path, metavar="DIR",
                      help="where to build the cluster, kept afterwards (default: a temporary directory, removed"
                           " if every check held)")
    demo.set_defaults(handler=_cmd_demo)

    compute = commands.add_parser(
        "compute", help="start, stop and list SQL computes (Postgres protocol) on the cluster",
        description="A compute is a stateless SQL database: SQLite on pages from the pageserver, each commit a"
                    " record in the replicated WAL, served over the Postgres protocol on 127.0.0.1 (user and"
                    " database paxwal, the cluster's password). Kill one; start another on the same branch and it"
                    " carries on at the same LSN with every acknowledged commit.")
    sub = compute.add_subparsers(dest="compute_command", required=True, metavar="SUBCOMMAND")

    start = sub.add_parser("start", help="start a compute and print its connection URI (the last line)",
                           description="Start a compute on branch B as its own process and wait until it accepts"
                                       " connections: a primary wins a term on the branch (deposing any other"
                                       " primary) and waits until the pageserver reaches its start LSN; with"
                                       " --lsn, a static read-only snapshot. The last line printed is its URI.")
    cluster_dir_argument(start)
    start.add_argument("--branch", default="main", metavar="B", help="the branch (timeline) to serve (default main)")
    start.add_argument("--name", metavar="N", help="its name (default: the first free c1, c2, ...)")
    start.add_argument("--port", type=int, metavar="P", help="its Postgres port (default: a free one)")
    moment = start.add_mutually_exclusive_group()
    moment.add_argument("--lsn", type=parse_lsn, metavar="LSN", help="a static compute reading B at LSN (X/Y or decimal)")
    moment.add_argument("--at", type=_parse_time, metavar="TIME",
                        help="a static compute reading B as it was at TIME (ISO 8601, UTC by default, or epoch"
                             " seconds): at the newest LSN committed by then")
    moment.add_argument("--replica", action="store_true",
                        help="a read replica: each query reads B at its latest commit LSN; never blocks the primary")
    start.set_defaults(handler=_cmd_start)

    stop = sub.add_parser("stop", help="stop a compute (SIGTERM; --kill: SIGKILL, as a crash)",
                          description="Stop compute N: SIGTERM, or SIGKILL with --kill.")
    stop.add_argument("name", metavar="N")
    stop.add_argument("--kill", action="store_true", help="kill -9: no goodbye to clients or acceptors")
    cluster_dir_argument(stop)
    stop.set_defaults(handler=_cmd_stop)

    listing = sub.add_parser("list", help="every compute: branch, mode, port, term, LSN",
                             description="List every compute started in the cluster, asking each running one for"
                                         " its term and pg_current_wal_lsn().")
    cluster_dir_argument(listing)
    listing.set_defaults(handler=_cmd_list)

    run = sub.add_parser("run", help="run a compute in this process (what `compute start` spawns)",
                         description="Run compute N of the cluster in DIR in this process until SIGTERM or SIGINT."
                                     " Exit 3 with one line if it stops because it lost its term or a commit.")
    cluster_dir_argument(run)
    run.add_argument("--name", required=True, metavar="N")
    run.add_argument("--branch", default="main", metavar="B")
    run.add_argument("--port", type=int, required=True, metavar="P")
    run.add_argument("--wal-start", type=int, required=True, metavar="LSN", help="where B's WAL starts")
    run.add_argument("--lsn", type=parse_lsn, metavar="LSN", help="static at LSN")
    run.add_argument("--replica", action="store_true", help="a read replica")
    run.set_defaults(handler=_cmd_run)
