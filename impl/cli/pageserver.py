"""`paxwal pageserver` (run one, or ask the cluster's for status and GC) and `paxwal branch`."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from impl.cli.common import CliError, cluster_dir_argument

DEFAULT_TIMELINE = "main"


def parse_lsn(text: str) -> int:
    """An LSN argument: Postgres' ``X/Y`` (hex) or a decimal byte position."""
    try:
        if "/" in text:
            high, low = text.split("/")
            value = int(high, 16) << 32 | int(low, 16)
        else:
            value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an LSN (X/Y in hex, or a decimal number), got {text!r}") from None
    if not 0 <= value < 2**64:
        raise argparse.ArgumentTypeError(f"LSN {text!r} is out of range")
    return value


def _acceptors(text: str) -> dict[str, int]:
    result = {}
    for part in text.split(","):
        name, sep, port = part.partition("=")
        if not sep or not name or not port.isdigit() or not 0 < int(port) < 65536:
            raise argparse.ArgumentTypeError(f"expected a1=PORT,a2=PORT,..., got {text!r}")
        result[name] = int(port)
    return result


async def _serve_until_signalled(args: argparse.Namespace) -> str | None:
    import trio

    from impl.pageserver import PageserverConfig, serve_pageserver
    from impl.remote import RemoteError, open_remote
    from impl.remote_timeline import RemoteTimelineError
    from impl.storage import CorruptStorage
    from impl.timeline import TimelineConfig
    from impl.walreceiver import ReceiverConfig

    try:
        remote = None if args.remote is None else open_remote(args.remote)
    except (ValueError, RemoteError) as exc:
        return f"pageserver: object store {args.remote}: {exc}"
    config = PageserverConfig(
        receiver=ReceiverConfig(node=args.node, timeline=args.timeline),
        timelines=TimelineConfig(checkpoint_timeout_us=int(args.checkpoint_timeout * 1_000_000),
                                 pitr_bytes=args.pitr_bytes, pitr_seconds=args.pitr_seconds),
        wal_start=args.wal_start, gc_interval=args.gc_interval, wait_lsn_timeout=args.wait_lsn_timeout,
    )
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            try:
                server = await nursery.start(lambda task_status: serve_pageserver(
                    args.data_dir, args.acceptors, port=args.port, remote=remote, remote_prefix=args.remote_prefix,
                    config=config, task_status=task_status))
            except (CorruptStorage, RemoteError, RemoteTimelineError, ValueError) as exc:
                return f"pageserver cannot start with {args.data_dir}: {exc}"
            except OSError as exc:
                return f"pageserver cannot start on 127.0.0.1:{args.port} with {args.data_dir}: {exc}"
            async for signum in signals:
                logging.getLogger("paxwal.pageserver").info("stopping on %s", signal.Signals(signum).name)
                await server.shutdown()
                nursery.cancel_scope.cancel()
                break
    return None


def _cmd_run(args: argparse.Namespace) -> int:
    import trio

    missing = [flag for flag, value in (("--dir", args.data_dir), ("--port", args.port), ("--acceptors", args.acceptors))
               if value is None]
    if missing:
        raise CliError(f"pageserver: {' and '.join(missing)} required to run one (or use `paxwal pageserver status|gc`)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    failure = trio.run(_serve_until_signalled, args)
    if failure is not None:
        raise CliError(failure)
    return 0


def _request(args: argparse.Namespace, msg: object) -> object:
    """Send one request to the cluster's pageserver; a refusal becomes a CliError."""
    from impl.cluster import Cluster, ClusterError
    from impl.pageclient import page_request
    from impl.wire import PageserverError, ProtocolError

    cluster = Cluster(args.dir)
    try:
        config = cluster.load()
    except ClusterError as exc:
        raise CliError(str(exc)) from None
    if config.pageserver_port is None:
        raise CliError(f"the cluster in {args.dir} has no pageserver")
    try:
        reply = page_request(config.pageserver_port, msg)  # type: ignore[arg-type]
    except (OSError, ProtocolError) as exc:
        raise CliError(f"the pageserver on port {config.pageserver_port} is not answering: {exc}") from None
    if isinstance(reply, PageserverError):
        raise CliError(f"pageserver refused: {reply.code}: {reply.text}")
    return reply


def _status_line(status: object) -> str:
    from impl.wire import format_lsn

    s = status  # a PageserverStatus
    origin = f"  branch of {s.ancestor}@{format_lsn(s.ancestor_lsn)}" if s.ancestor else ""  # type: ignore[attr-defined]
    streaming = f"  streaming from {s.streaming_from}" if s.streaming_from else ""  # type: ignore[attr-defined]
    return (f"{s.timeline}: last_record {format_lsn(s.last_record_lsn)}  disk_consistent "  # type: ignore[attr-defined]
            f"{format_lsn(s.disk_consistent_lsn)}  remote_consistent {format_lsn(s.remote_consistent_lsn)}"  # type: ignore[attr-defined]
            f"  gc_cutoff {format_lsn(s.gc_cutoff)}  layers {s.layers}{origin}{streaming}")  # type: ignore[attr-defined]


def _cmd_status(args: argparse.Namespace) -> int:
    from impl.wire import PageserverStatusRequest

    print(_status_line(_request(args, PageserverStatusRequest(timeline=args.timeline))))
    return 0


def _cmd_gc(args: argparse.Namespace) -> int:
    from impl.wire import Gc

    done = _request(args, Gc())
    print(f"gc: removed {done.removed} layer files, {done.kept} kept")  # type: ignore[attr-defined]
    return 0


def _cmd_branch_create(args: argparse.Namespace) -> int:
    from impl.wire import BranchCreate, PageserverStatusRequest, format_lsn

    ancestor, _, at = args.source.partition("@")
    if at:
        lsn = parse_lsn(at)
    else:
        lsn = _request(args, PageserverStatusRequest(timeline=ancestor)).last_record_lsn  # type: ignore[attr-defined]
    try:
        msg = BranchCreate(name=args.name, ancestor=ancestor, lsn=lsn)
    except Exception as exc:  # noqa: BLE001 - a ProtocolError from a bad name
        raise CliError(f"bad branch: {exc}") from None
    created = _request(args, msg)
    print(f"branch {created.name} created from {created.ancestor} at {format_lsn(created.lsn)}")  # type: ignore[attr-defined]
    return 0


def _cmd_branch_list(args: argparse.Namespace) -> int:
    from impl.wire import BranchList, PageserverStatusRequest

    for name in _request(args, BranchList()).names:  # type: ignore[attr-defined]
        print(_status_line(_request(args, PageserverStatusRequest(timeline=name))))
    return 0


def _lsn_arg(text: str) -> str:
    """B or B@LSN; the LSN is checked here, so a typo fails before any connection."""
    if "@" in text:
        parse_lsn(text.partition("@")[2])
    return text


def add_commands(commands: argparse._SubParsersAction) -> None:
    ps = commands.add_parser(
        "pageserver",
        help="run a pageserver, or ask the cluster's pageserver for its status or a GC",
        description=(
            "Without a subcommand: run a pageserver on 127.0.0.1:PORT with its data in --dir, streaming the"
            " committed WAL of every timeline (main and each branch, whose WAL starts at its branch LSN) from the"
            " acceptors, until SIGTERM or SIGINT (exit 0; it checkpoints and uploads first). Exit 2 with one line"
            " if it cannot start."
        ),
    )
    ps.add_argument("--dir", dest="data_dir", type=Path, metavar="DIR", help="its data directory (to run one)")
    ps.add_argument("--port", type=int, metavar="P", help="the page service's TCP port (0: any)")
    ps.add_argument("--acceptors", type=_acceptors, metavar="a1=PORT,...", help="the acceptors' ports on 127.0.0.1")
    ps.add_argument("--remote", metavar="LOCATION",
                    help="object storage (the source of truth): a directory or s3://BUCKET[/PREFIX] (default: none)")
    ps.add_argument("--remote-prefix", default="pageserver", metavar="PREFIX", help="key prefix (default pageserver)")
    ps.add_argument("--node", default="pageserver", help="its id (default pageserver)")
    ps.add_argument("--timeline", default=DEFAULT_TIMELINE,
                    help="the timeline created when neither --dir nor object storage holds one (default main)")
    ps.add_argument("--wal-start", type=int, default=0, metavar="LSN", help="where the WAL starts (default 0)")
    ps.add_argument("--checkpoint-timeout", type=float, default=10.0, metavar="S",
                    help="freeze and flush the open layer after S seconds (default 10)")
    ps.add_argument("--pitr-bytes", type=int, default=64 * 1024 * 1024, metavar="B",
                    help="GC keeps at least B bytes of WAL history readable (default 64 MiB)")
    ps.add_argument("--pitr-seconds", type=int, default=7 * 24 * 3600, metavar="S",
                    help="... and S seconds of it (default 7 days); GC keeps the smaller")
    ps.add_argument("--gc-interval", type=float, default=60.0, metavar="S", help="seconds between GCs (0: on request only)")
    ps.add_argument("--wait-lsn-timeout", type=float, default=10.0, metavar="S",
                    help="how long GetPage@LSN waits for the LSN to be ingested (default 10)")
    ps.set_defaults(handler=_cmd_run)
    sub = ps.add_subparsers(dest="pageserver_command", metavar="SUBCOMMAND")
    status = sub.add_parser("status", help="the LSNs, GC cutoff and layers of a timeline",
                            description="Ask the cluster's pageserver for a timeline's LSNs (last record, disk- and"
                                        " remote-consistent), GC cutoff and layer count.")
    cluster_dir_argument(status)
    status.add_argument("--timeline", default=DEFAULT_TIMELINE, help="(default main)")
    status.set_defaults(handler=_cmd_status)
    gc = sub.add_parser("gc", help="run GC on every timeline now", description="Run GC on every timeline now.")
    cluster_dir_argument(gc)
    gc.set_defaults(handler=_cmd_gc)

    branch = commands.add_parser("branch", help="create or list branches (timelines) on the cluster's pageserver",
                                 description="Branches are timelines with an ancestor and an LSN (copy-on-write).")
    bsub = branch.add_subparsers(dest="branch_command", required=True, metavar="SUBCOMMAND")
    create = bsub.add_parser("create", help="create branch NAME from B at LSN (default: its last record)",
                             description="Create branch NAME from timeline B at LSN (X/Y or decimal); without @LSN,"
                                         " at B's last ingested record.")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--from", dest="source", required=True, type=_lsn_arg, metavar="B[@LSN]")
    cluster_dir_argument(create)
    create.set_defaults(handler=_cmd_branch_create)
    listing = bsub.add_parser("list", help="every timeline and its LSNs", description="List every timeline.")
    cluster_dir_argument(listing)
    listing.set_defaults(handler=_cmd_branch_list)
