"""`paxwal bench NAME`: one benchmark, its figures beside a baseline measured in the same run."""

from __future__ import annotations

import argparse

from bench import REGISTRY, load


def _cmd_bench(args: argparse.Namespace) -> int:
    import json

    figures = load(args.name).run(args.seconds)
    if args.json:
        print(json.dumps({"benchmark": args.name, **figures}))
    else:
        width = max(map(len, figures))
        for key, value in figures.items():
            print(f"{key.ljust(width)}  {value:,}" if isinstance(value, int) else f"{key.ljust(width)}  {value}")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser(
        "bench",
        help="run one benchmark",
        description=(
            "Run one benchmark; it prints its figures and their ratios to a baseline measured "
            "in the same run. Benchmarks: "
            + "; ".join(f"{name}: {about}" for name, (_, about) in REGISTRY.items())
        ),
    )
    bench.add_argument("name", choices=sorted(REGISTRY), metavar="NAME", help=", ".join(sorted(REGISTRY)))
    bench.add_argument("--seconds", type=float, default=20.0, metavar="S", help="time budget (default 20)")
    bench.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    bench.set_defaults(handler=_cmd_bench)
