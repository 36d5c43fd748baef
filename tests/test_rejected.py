"""The corpus of bad traces (traces/rejected/): each must be rejected where its .reason says.

Every `traces/rejected/<name>/` is an accepted scenario run with one event edited (see
tests/make_rejected.py, which generated it); `traces/rejected/<name>.reason` says

    expect: <node>.ndjson:<line>
    why: <the protocol rule the edit breaks>
    edit: <what was changed>

These tests read the committed files only.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conformance.replay import check_run

ROOT = Path(__file__).resolve().parent.parent
REJECTED = ROOT / "traces" / "rejected"
REASONS = sorted(REJECTED.glob("*.reason"))
FIELDS = ("expect", "why", "edit")
EXPECT = re.compile(r"(?P<file>[A-Za-z0-9_-]+\.ndjson):(?P<line>[1-9][0-9]*)")


def parse(path: Path) -> dict[str, str]:
    """A .reason file's fields, in order; each on one line as `name: value`."""
    fields: dict[str, str] = {}
    for text in path.read_text().splitlines():
        if not text.strip():
            continue
        name, sep, value = text.partition(": ")
        assert sep and name in FIELDS and name not in fields, f"{path.name}: bad line {text!r}"
        fields[name] = value.strip()
    return fields


def test_the_corpus_has_at_least_15_traces():
    assert len(REASONS) >= 15


def test_every_run_has_a_reason_and_every_reason_a_run():
    runs = {p.name for p in REJECTED.iterdir() if p.is_dir()}
    reasons = {p.stem for p in REASONS}
    assert runs == reasons, f"runs without a .reason: {sorted(runs - reasons)}; .reasons without a run: {sorted(reasons - runs)}"
    others = {p.name for p in REJECTED.iterdir() if not p.is_dir() and p.suffix != ".reason"}
    assert not others


@pytest.mark.parametrize("reason", REASONS, ids=[p.stem for p in REASONS])
def test_the_reason_has_its_three_fields(reason):
    fields = parse(reason)
    assert tuple(fields) == FIELDS
    assert all(fields.values())
    assert EXPECT.fullmatch(fields["expect"]), fields["expect"]
    assert "traces/accepted/scenarios/" in fields["edit"]


@pytest.mark.parametrize("reason", REASONS, ids=[p.stem for p in REASONS])
def test_the_trace_is_rejected_at_the_expected_event(reason):
    run = REJECTED / reason.stem
    assert not (run / "all.ndjson").exists()
    expect = EXPECT.fullmatch(parse(reason)["expect"])
    assert expect and (run / expect["file"]).is_file()
    result = check_run([run])
    assert result.verdict == "rejected"
    d = result.divergence
    assert (Path(d.event.file).name, d.event.line) == (expect["file"], int(expect["line"])), d.report()
