"""The trace replay checker (conformance/replay.py) and `paxwal check`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conformance.replay import TraceError, check_run, load_events
from impl.cli import main
from impl.sim import run_seed

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = sorted((ROOT / "traces" / "accepted" / "scenarios").iterdir())


@pytest.mark.parametrize("run", SCENARIOS, ids=[p.name for p in SCENARIOS])
def test_every_scenario_trace_is_accepted(run):
    result = check_run([run])
    assert result.verdict == "accepted", result.divergence and result.divergence.report()
    assert result.events > 0


@pytest.mark.parametrize("seed", range(6))
def test_simulator_runs_are_accepted(seed, tmp_path):
    """Faults, competing proposers, crashes: every event a step of the spec."""
    run_seed(seed, steps=500, out=tmp_path)
    result = check_run([tmp_path])
    assert result.verdict == "accepted", result.divergence and result.divergence.report()


def test_merge_respects_happens_before():
    events, run = load_events([ROOT / "traces" / "accepted" / "scenarios" / "figure8"])
    assert run is not None and run["cluster"]["acceptors"] == ["a1", "a2", "a3"]
    sent_at = {}
    for index, event in enumerate(events):
        for sent in event.data["sent"]:
            sent_at[sent["id"]] = index
        if event.data["recv"] is not None:
            assert sent_at[event.data["recv"]] < index
    per_node = {}
    for event in events:
        assert per_node.get(event.node, 0) < event.line
        per_node[event.node] = event.line


# ---------------------------------------------------------------------------------------
# Rejections: one event edited, the checker names it
# ---------------------------------------------------------------------------------------


def _edit(tmp_path: Path, scenario: str, node: str, pick, change) -> tuple[Path, int]:
    """Copy a scenario's trace and edit the first event of `node` that `pick` selects."""
    run = tmp_path / scenario
    shutil.copytree(ROOT / "traces" / "accepted" / "scenarios" / scenario, run)
    (run / "all.ndjson").unlink()
    path = run / f"{node}.ndjson"
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        event = json.loads(line)
        if pick(event):
            change(event)
            lines[number - 1] = json.dumps(event)
            path.write_text("\n".join(lines) + "\n")
            return run, number
    raise AssertionError("no event picked")


def _rejected_at(run: Path, node: str, line: int) -> str:
    result = check_run([run])
    assert result.verdict == "rejected"
    d = result.divergence
    assert (Path(d.event.file).name, d.event.line) == (f"{node}.ndjson", line)
    return d.report()


def test_a_logged_state_the_spec_does_not_reach_is_rejected(tmp_path):
    def change(e):
        e["state"]["acc_term"] += 1

    run, line = _edit(tmp_path, "election", "a1", lambda e: e["action"] == "Vote", change)
    report = _rejected_at(run, "a1", line)
    assert "acc_term: logged 2, spec 1" in report


def test_a_second_vote_in_a_term_is_rejected(tmp_path):
    """a1 voted for p1 in term 1; a forged event has it vote for p2 in term 1 too."""
    run = tmp_path / "split-vote"
    shutil.copytree(ROOT / "traces" / "accepted" / "scenarios" / "split-vote", run)
    (run / "all.ndjson").unlink()
    events, _ = load_events([run])
    p2_request = next(
        sent["id"] for e in events if e.node == "p2" and e.action == "StartCampaign"
        for sent in e.data["sent"] if sent["to"] == "a1" and sent["msg"]["term"] == 1
    )
    vote = next(e.data for e in events if e.node == "a1" and e.action == "Vote" and e.data["state"]["acc_term"] == 1)
    forged = json.loads(json.dumps(vote))
    forged["lc"] = max(e.data["lc"] for e in events) + 1
    forged["recv"] = p2_request
    forged["sent"][0]["id"] = "a1:999"
    forged["sent"][0]["to"] = "p2"
    forged["sent"][0]["msg"]["to"] = "p2"
    path = run / "a1.ndjson"
    lines = path.read_text().splitlines() + [json.dumps(forged)]
    path.write_text("\n".join(lines) + "\n")
    report = _rejected_at(run, "a1", len(lines))
    assert "Vote is not enabled" in report and "guard: VoteAllowed(a, m.term)" in report


def test_a_commit_without_a_quorum_is_rejected(tmp_path):
    def change(e):
        e["state"]["prop_commit"] += 1

    run, line = _edit(tmp_path, "election", "p1", lambda e: e["action"] == "CollectAck" and e["state"]["prop_commit"] == 1, change)
    report = _rejected_at(run, "p1", line)
    assert "prop_commit" in report


def test_a_message_never_sent_is_rejected(tmp_path):
    def change(e):
        e["recv"] = "a9:1"

    run, line = _edit(tmp_path, "election", "p1", lambda e: e["action"] == "CollectVote", change)
    assert "no earlier event sent" in _rejected_at(run, "p1", line)


def test_an_append_before_the_election_is_processed_is_rejected(tmp_path):
    """An acceptor that takes WAL in a term before processing its ProposerElected."""
    def change(e):
        e["action"] = "AcceptAppend"

    run, line = _edit(tmp_path, "election", "a1", lambda e: e["action"] == "AcceptElected", change)
    report = _rejected_at(run, "a1", line)
    assert "AcceptAppend is not enabled" in report or "ProposerElected" in report


def test_the_report_shows_guard_state_diff_and_window(tmp_path):
    def change(e):
        e["state"]["acc_flush"] = 1

    run, line = _edit(tmp_path, "election", "a2", lambda e: e["action"] == "Flush", change)
    report = _rejected_at(run, "a2", line)
    for part in ("REJECTED at", "accepted events", "event: a2 Flush", "state of a2 before:", "acc_flush: logged 1, spec 6", "events before it:", ">> "):
        assert part in report


def test_unreadable_input_is_a_trace_error(tmp_path):
    with pytest.raises(TraceError, match="no such file"):
        check_run([tmp_path / "missing"])
    bad = tmp_path / "x.ndjson"
    bad.write_text("{not json\n")
    with pytest.raises(TraceError, match="x.ndjson:1: not JSON"):
        check_run([bad])


def test_cli_check_exit_codes(capsys, tmp_path):
    assert main(["check", str(ROOT / "traces" / "accepted" / "scenarios" / "election")]) == 0
    assert "accepted: " in capsys.readouterr().out
    def change(e):
        e["state"]["acc_term"] += 1
    run, _ = _edit(tmp_path, "election", "a1", lambda e: e["action"] == "Vote", change)
    assert main(["check", str(run)]) == 1
    assert "REJECTED at" in capsys.readouterr().out
    assert main(["check", str(tmp_path / "nope")]) == 2
