"""The accepted corpus (traces/accepted/): scenario runs and a fixed set of simulator seeds.

The simulator runs are what `paxwal sim --seed N --steps 600` writes today, byte for byte,
so a change in the cores or in the trace format shows up as a reviewable diff; regenerate
with `pytest tests/test_corpus.py --rewrite`.  Every run in the corpus must be accepted, and
together they must exercise every action of the spec.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conformance.corpus import action_coverage, find_runs, spec_actions, trace_files
from conformance.replay import check_run
from impl.cli import main
from impl.sim import run_seed

ROOT = Path(__file__).resolve().parent.parent
ACCEPTED = ROOT / "traces" / "accepted"
SIM = ACCEPTED / "sim"
SEEDS = range(1, 9)
STEPS = 600


@pytest.mark.parametrize("seed", SEEDS)
def test_simulator_runs_are_reproduced_byte_for_byte(seed: int, tmp_path: Path, rewrite: bool) -> None:
    out = tmp_path / f"seed-{seed}"
    assert run_seed(seed, STEPS, out=out).ok
    committed = SIM / f"seed-{seed}"
    if rewrite:
        shutil.rmtree(committed, ignore_errors=True)
        shutil.copytree(out, committed)
        return
    assert committed.is_dir() and trace_files(committed) == trace_files(out), (
        f"simulator run seed {seed} changed (or is missing): rerun"
        " `pytest tests/test_corpus.py --rewrite` and review the diff"
    )


def test_the_corpus_holds_the_scenarios_and_the_seeds() -> None:
    runs = find_runs([ACCEPTED])
    names = {run.relative_to(ACCEPTED).as_posix() for run in runs}
    assert {f"sim/seed-{s}" for s in SEEDS} <= names
    assert len([n for n in names if n.startswith("scenarios/")]) == len(list((ROOT / "tests" / "scenarios").glob("*.txt")))
    assert len(names) == len(runs)


@pytest.mark.parametrize("run", find_runs([ACCEPTED]), ids=lambda run: run.relative_to(ACCEPTED).as_posix())
def test_every_accepted_run_is_accepted(run: Path) -> None:
    result = check_run([run])
    assert result.divergence is None, result.divergence.report()
    assert result.verdict == "accepted"


def test_the_corpus_exercises_every_spec_action() -> None:
    coverage = action_coverage(find_runs([ACCEPTED]))
    assert set(coverage) == spec_actions()
    assert all(count > 0 for count in coverage.values()), coverage


def test_check_judges_a_corpus_run_by_run(capsys: pytest.CaptureFixture[str]) -> None:
    runs = len(find_runs([ACCEPTED]))
    assert main(["check", str(ACCEPTED)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"{runs} runs: {runs} accepted, 0 rejected, 0 unreadable"
    rejected = ROOT / "traces" / "rejected"
    bad = len(find_runs([rejected]))
    assert main(["check", str(rejected)]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == f"{bad} runs: 0 accepted, {bad} rejected, 0 unreadable"
    assert main(["check", str(ACCEPTED), "--diagram", "x.svg"]) == 2
    assert "--diagram needs a single run" in capsys.readouterr().err
