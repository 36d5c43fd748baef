"""Re-record the TLC outputs that tests/test_tlc.py parses.

Run from the repository root: ``.venv/bin/python tests/data/tlc/record.py``. Each case runs
TLC through ``conformance.tlc.run_tlc`` on a toy spec in this directory and writes the raw
tool-mode output to ``<case>.out``; ``recordings.json`` keeps how each was made and TLC's
exit code. Outputs contain dates, pids and temp paths, so re-recording changes every file:
check that the tests still pass and read the diff before committing.
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Lets the script run from a checkout before `pip install -e .` has been done.
sys.path.insert(0, str(HERE.parents[2]))

from conformance.tlc import run_tlc  # noqa: E402

# case name -> (module, config, run_tlc keyword arguments)
CASES = {
    "counter_ok": ("Counter.tla", "Counter.cfg", {"check_deadlock": False}),
    "counter_deadlock": ("Counter.tla", "Counter.cfg", {}),
    "counter_undefined": ("Counter.tla", "Counter_undefined.cfg", {}),
    "rich_invariant": ("Rich.tla", "Rich.cfg", {}),
    "rich_simulate": ("Rich.tla", "Rich.cfg", {"simulate": (10, 7), "timeout": 60}),
    "values_initial": ("Values.tla", "Values.cfg", {}),
    "action_property": ("ActionProp.tla", "ActionProp.cfg", {"check_deadlock": False}),
    "temporal_stuttering": ("Live.tla", "Live.cfg", {"check_deadlock": False}),
    "refinement_action": ("Refine.tla", "Refine_action.cfg", {}),
    "refinement_initial": ("Refine.tla", "Refine_init.cfg", {}),
    "temporal_lasso": ("Refine.tla", "Refine_lasso.cfg", {}),
    "parse_error": ("ParseError.tla", "ParseError.cfg", {}),
    "unknown_operator": ("UnknownOp.tla", "UnknownOp.cfg", {}),
    "eval_error": ("EvalError.tla", "EvalError.cfg", {}),
    "assumption": ("Assume.tla", "Assume.cfg", {}),
}


def main() -> None:
    index = {}
    for name, (module, config, kwargs) in CASES.items():
        result = run_tlc(HERE / module, HERE / config, **kwargs)
        (HERE / f"{name}.out").write_text(result.output)
        index[name] = {
            "module": module,
            "config": config,
            "options": {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()},
            "exit_code": result.exit_code,
        }
        print(f"{name}: exit {result.exit_code}, {result.outcome} {result.violated or ''}")
    (HERE / "recordings.json").write_text(json.dumps(index, indent=2) + "\n")


if __name__ == "__main__":
    main()
