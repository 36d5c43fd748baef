"""State and action coverage (conformance/coverage.py, conformance/corpus.py, `paxwal coverage`)."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from conformance import machine as M
from conformance import mc
from conformance.coverage import MODEL_FILE, digest, load_model_states, project, spec_stamp
from conformance.tlc import ModelValue
from impl.cli import main

ROOT = Path(__file__).resolve().parent.parent
PROPOSERS, ACCEPTORS = ("p1",), ("a1", "a2", "a3")
STRINGS = M.Model(PROPOSERS, ACCEPTORS)
MODEL_VALUES = M.Model(tuple(map(ModelValue, PROPOSERS)), tuple(map(ModelValue, ACCEPTORS)))


def _walk(model: M.Model, seed: int, steps: int) -> list[M.State]:
    """A random behaviour of the CI model: its bounds (terms <= 2, one entry) and steering."""
    rng = random.Random(seed)
    s = M.init(model)
    states = [s]
    for _ in range(steps):
        moves = [
            t for action, args, t in M.successors(model, s)
            if mc.StateConstraint(model, t, 2, 1)
            and mc.Steady(model, s, action, args, t, 1)
            and mc.NoAcceptorCrash(model, s, action, args, t, 1)
        ]
        if not moves:
            break
        s = rng.choice(moves)
        states.append(s)
    return states


def _rename(s: M.State, mapping: dict[str, str]) -> M.State:
    """The state with acceptors renamed (a symmetry of the model)."""
    model = M.Model(PROPOSERS, tuple(sorted(mapping[a] for a in ACCEPTORS)))
    renamed = M.init(model)
    fields = {}
    for name in ("acc_term", "acc_history", "acc_wal", "acc_flush", "acc_commit"):
        fields[name] = type(getattr(renamed, name))((mapping[a], v) for a, v in getattr(s, name).items())
    fields["prop_heard"] = type(s.prop_heard)((p, frozenset(mapping[a] for a in h)) for p, h in s.prop_heard.items())
    fields["prop_acks"] = type(s.prop_acks)(
        (p, type(acks)((mapping[a], v) for a, v in acks.items())) for p, acks in s.prop_acks.items()
    )
    return s.with_(**fields)


def test_the_digest_is_the_same_under_every_renaming_of_acceptors() -> None:
    states = _walk(STRINGS, 1, 25)
    s = states[-1]
    assert s.acc_term != M.init(STRINGS).acc_term  # the walk went somewhere
    for mapping in ({"a1": "a2", "a2": "a3", "a3": "a1"}, {"a1": "a1", "a2": "a3", "a3": "a2"}):
        assert digest(project(_rename(s, mapping)), PROPOSERS, ACCEPTORS) == digest(project(s), PROPOSERS, ACCEPTORS)
    assert len({digest(project(t), PROPOSERS, ACCEPTORS) for t in states}) > 5


def test_trace_states_and_tlc_states_give_the_same_digest() -> None:
    # A trace names nodes by strings, TLC by model values.
    for a, b in zip(_walk(STRINGS, 2, 20), _walk(MODEL_VALUES, 2, 20)):
        assert digest(project(a), PROPOSERS, ACCEPTORS) == digest(project(b), PROPOSERS, ACCEPTORS)


def test_the_recorded_model_states_belong_to_this_spec() -> None:
    model = load_model_states()
    assert model.stamp == spec_stamp(), (
        f"{MODEL_FILE.name} was recorded for another version of the spec: rerun `paxwal coverage --model-states`"
    )
    assert (model.proposers, model.acceptors) == (PROPOSERS, ACCEPTORS)


@pytest.mark.parametrize("seed", range(6))
def test_every_state_of_a_random_ci_behaviour_is_among_the_recorded_ones(seed: int) -> None:
    model = load_model_states()
    for depth, s in enumerate(_walk(STRINGS, seed, 40)):
        assert digest(project(s), PROPOSERS, ACCEPTORS) in model.digests, f"seed {seed}, state {depth}: {s}"


def test_a_state_beyond_the_bounds_is_not_recorded() -> None:
    s = M.init(STRINGS)
    beyond = s.with_(prop_term=type(s.prop_term)(p1=3))
    assert digest(project(beyond), PROPOSERS, ACCEPTORS) not in load_model_states().digests


def test_coverage_command_reports_actions_and_states(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["coverage", str(ROOT / "traces" / "accepted"), "--sim", "0:2"]) == 0
    out = capsys.readouterr().out
    for action in M.ACTIONS:
        assert f"  {action} " in out
    assert "NEVER" not in out
    line = next(x for x in out.splitlines() if x.startswith("CI-model states visited:"))
    visited = int(line.split()[3].replace(",", ""))
    assert visited > 10


def test_coverage_fails_when_an_action_is_never_exercised(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(ROOT / "traces" / "accepted" / "scenarios" / "election", tmp_path / "election")
    assert main(["coverage", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "RestartAcceptor" in out.split("never exercised:")[-1]


def test_coverage_of_a_path_without_runs_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["coverage", str(tmp_path)]) == 2
    assert "no run directory" in capsys.readouterr().err
