"""`paxwal acceptor`: one acceptor (safekeeper) process, serving until signalled."""

from __future__ import annotations

import argparse
import functools
import logging
import signal
import sys
from pathlib import Path

from impl.cli.common import CliError, positive_int
from impl.wal import DEFAULT_SEGMENT_SIZE, MIN_SEGMENT_SIZE


async def _serve_until_signalled(args: argparse.Namespace) -> str | None:
    """Run the acceptor until SIGTERM or SIGINT; return why it could not start, or None."""
    import trio

    from impl.acceptor_server import serve_acceptor
    from impl.remote import RemoteError, open_remote
    from impl.storage import CorruptStorage

    try:
        remote = None if args.remote is None else open_remote(args.remote)
    except (ValueError, RemoteError) as exc:
        return f"acceptor {args.node}: object store {args.remote}: {exc}"
    serve = functools.partial(
        serve_acceptor, args.node, args.dir, "127.0.0.1", args.port, args.trace_dir,
        segment_size=args.segment_size, remote=remote, remote_prefix=args.remote_prefix,
    )
    # Entered first, so a signal during startup is not lost to the default handlers.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(serve)
            except (CorruptStorage, ValueError) as exc:  # damaged data, a bad --remote-prefix
                return str(exc)
            except OSError as exc:  # the port is taken, or the directory cannot be made
                return f"acceptor {args.node} cannot start on 127.0.0.1:{args.port} with {args.dir}: {exc}"
            async for signum in signals:
                logging.getLogger("paxwal.acceptor").info("stopping on %s", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
    return None


def segment_size(text: str) -> int:
    """A WAL segment size argument: a power of two, at least MIN_SEGMENT_SIZE."""
    size = positive_int(text)
    if size < MIN_SEGMENT_SIZE or size & (size - 1):
        raise argparse.ArgumentTypeError(f"expected a power of two >= {MIN_SEGMENT_SIZE}, got {text!r}")
    return size


def _cmd_acceptor(args: argparse.Namespace) -> int:
    import trio

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    failure = trio.run(_serve_until_signalled, args)
    if failure is not None:
        raise CliError(failure)
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    acceptor = commands.add_parser(
        "acceptor",
        help="run one acceptor (safekeeper) on 127.0.0.1",
        description=(
            "Serve proposers on 127.0.0.1:PORT from the acceptor's directory until SIGTERM or"
            " SIGINT (exit 0). Exit 2 with one line if the storage is damaged or the port is busy."
        ),
    )
    acceptor.add_argument("--node", required=True, help="the acceptor's id, e.g. a1")
    acceptor.add_argument("--dir", required=True, type=Path, metavar="DIR", help="its timelines (DIR/timelines/<timeline>/: control file and WAL)")
    acceptor.add_argument("--port", required=True, type=int, metavar="P", help="TCP port (0: any free one)")
    acceptor.add_argument(
        "--segment-size", type=segment_size, default=DEFAULT_SEGMENT_SIZE, metavar="BYTES",
        help=f"WAL segment size, a power of two (default {DEFAULT_SEGMENT_SIZE:,}); fixed for the directory's life",
    )
    acceptor.add_argument(
        "--remote", metavar="LOCATION",
        help="offload completed WAL segments to this object store: a directory, or s3://BUCKET[/PREFIX]"
             " with AWS_* variables for endpoint and credentials (default: no offload, no WAL removal)",
    )
    acceptor.add_argument("--remote-prefix", default="timelines", metavar="PREFIX",
                          help="key prefix of the WALs' objects, PREFIX/<timeline>/..., shared by the cluster's"
                               " acceptors (default timelines)")
    acceptor.add_argument("--trace-dir", type=Path, metavar="DIR",
                          help="append each timeline's ndjson trace to DIR/<timeline>/<node>.ndjson")
    acceptor.set_defaults(handler=_cmd_acceptor)
