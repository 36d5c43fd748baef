"""The scenario files (tests/scenarios/*.txt) and their trace corpus (traces/accepted/scenarios/).

Each scenario is a hand-written protocol story run on the simulator's manual mode
(impl/scenario.py).  Its outputs must match what it says, and the trace it produces must
match the committed corpus byte for byte, so a change in behaviour or in the trace format
shows up as a reviewable diff.  Regenerate both with

    pytest tests/test_scenarios.py --rewrite

and read the diff before committing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conformance.corpus import spec_actions, trace_files
from conformance.machine import ACTIONS
from impl.scenario import _parse, run_file

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = sorted((ROOT / "tests" / "scenarios").glob("*.txt"))
CORPUS = ROOT / "traces" / "accepted" / "scenarios"

@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario(path: Path, tmp_path: Path, rewrite: bool) -> None:
    stem = path.stem
    out = tmp_path / stem
    mismatches = run_file(path, trace_dir=out, rewrite=rewrite)
    assert not mismatches, f"scenario {stem}:\n" + "\n\n".join(mismatches)

    produced = trace_files(out)
    corpus = CORPUS / stem
    if rewrite:
        if corpus.exists():
            shutil.rmtree(corpus)
        corpus.mkdir(parents=True)
        for name, data in produced.items():
            (corpus / name).write_bytes(data)
        return
    committed = trace_files(corpus) if corpus.is_dir() else None
    assert committed == produced, (
        f"trace of scenario {stem} changed (or is missing): rerun"
        " `pytest tests/test_scenarios.py --rewrite` and review the diff"
    )


def test_spec_actions_are_parsed() -> None:
    # A guard on the parser: it finds exactly the actions the machine transcribes.
    assert spec_actions() == set(ACTIONS)


def test_corpus_holds_exactly_the_scenarios(rewrite: bool) -> None:
    # Runs before the action test below: a stale directory would count its actions.
    dirs = {d.name for d in CORPUS.iterdir() if d.is_dir()} if CORPUS.is_dir() else set()
    stale = dirs - {p.stem for p in SCENARIOS}
    if rewrite:
        for name in stale:
            shutil.rmtree(CORPUS / name)
        return
    assert dirs == {p.stem for p in SCENARIOS}, (
        f"traces/accepted/scenarios/ must hold one directory per scenario (stale: {sorted(stale)},"
        f" missing: {sorted({p.stem for p in SCENARIOS} - dirs)}): rerun"
        " `pytest tests/test_scenarios.py --rewrite`"
    )


def test_every_spec_action_appears_in_the_scenario_traces() -> None:
    seen: set[str] = set()
    for trace in sorted(CORPUS.glob("*/all.ndjson")):
        for line in trace.read_text().splitlines():
            if line.strip():
                seen.add(json.loads(line)["action"])
    assert seen == spec_actions(), (
        f"missing from the scenario traces: {sorted(spec_actions() - seen)};"
        f" not spec actions: {sorted(seen - spec_actions())}"
    )


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_each_scenario_ends_with_a_passing_check(path: Path) -> None:
    blocks, _ = _parse(path.read_text())
    assert blocks, f"{path.name} has no command"
    last = blocks[-1]
    assert last.command.strip() == "check", f"{path.name}: the last command is {last.command!r}, not check"
    assert last.expected and last.expected[-1] == "ok", f"{path.name}: its final check does not end with ok: {last.expected}"


def test_each_scenario_tells_its_story() -> None:
    # Every file opens with a `#` comment (the story in numbered steps).
    for path in SCENARIOS:
        first = path.read_text().splitlines()[0]
        assert first.startswith("#"), f"{path.name} must start with a # comment telling its story"
