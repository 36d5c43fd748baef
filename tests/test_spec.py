"""The TLA+ spec itself, checked by TLC: the CI model holds, every mutant is refuted.

These run Java (marked ``tlc``) and take minutes: the CI model's breadth-first search is the
longest single test of the suite. The model's size is recorded in spec/models/manifest.json;
a change to the spec that changes it must update the manifest, on purpose.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conformance.mutants import MODEL_MODULE, check_mutant, load_mutants
from conformance.tlc import config_properties, run_tlc
from impl.cli.tlc import DETERMINISTIC_SEARCH

SPEC = Path(__file__).resolve().parent.parent / "spec"
MODULE = SPEC / MODEL_MODULE
MANIFEST = json.loads((SPEC / "models" / "manifest.json").read_text())
INVARIANTS = ["TypeOK", "ElectionSafety", "LogIsMonotonic", "LogMatchesHistory", "LogSafety", "CommittedNeverLost"]

pytestmark = pytest.mark.tlc


@pytest.fixture(scope="module")
def ci_result():
    # One worker and a fixed fingerprint polynomial: with VIEW and SYMMETRY, TLC's count
    # depends on which member of a class it keeps, fixed only by both (see impl/cli/tlc.py).
    return run_tlc(
        MODULE, SPEC / "models" / "ci.cfg", workers=1, check_deadlock=False, timeout=1200, extra_args=DETERMINISTIC_SEARCH
    )


def test_ci_model_holds(ci_result):
    assert ci_result.outcome == "ok", ci_result.message
    assert ci_result.distinct_states == MANIFEST["ci"]["distinct_states"]
    assert ci_result.depth == MANIFEST["ci"]["depth"]


def test_ci_model_checks_every_invariant_and_the_refinement():
    text = (SPEC / "models" / "ci.cfg").read_text()
    for name in INVARIANTS:
        assert re.search(rf"^\s*{name}\s*$", text, re.M), name
    assert config_properties(text) == ["CommitLsnMonotonic", "Refinement"]


MUTANTS = load_mutants(SPEC)


def test_catalogue_covers_the_issue_bug_classes():
    classes = {m.bug[:3] for m in MUTANTS}
    assert {"(a)", "(b)", "(c)", "(d)", "(e)", "(f)"} <= classes
    assert len(MUTANTS) >= 6


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_mutant_is_refuted(mutant):
    result = check_mutant(mutant, timeout=600, workers=2, check_deadlock=False)
    assert result.refuted, result.reason
    assert result.violated == mutant.expect
    assert result.trace_length > 1


def _variant(tmp_path: Path, source: Path, replace: dict[str, str]) -> Path:
    """A copy of a config beside the model module, with whole lines replaced."""
    text = source.read_text()
    for old, new in replace.items():
        text, count = re.subn(rf"^{re.escape(old)}.*$", new, text, flags=re.M)
        assert count == 1, old
    path = SPEC / f"_test_{tmp_path.name}.cfg"
    path.write_text(text)
    return path


def test_refinement_alone_catches_figure_8(tmp_path):
    """With no invariant at all, the refinement to AbstractLog refutes the figure-8 mutant:
    a later leader rewrites a committed entry, so the committed log is not append-only."""
    cfg = _variant(
        tmp_path,
        SPEC / "mutants" / "CommitIgnoringTermStart.cfg",
        {"INVARIANTS": "PROPERTIES Refinement"},
    )
    try:
        result = run_tlc(MODULE, cfg, workers=2, check_deadlock=False, timeout=600)
    finally:
        cfg.unlink()
    assert result.outcome == "property", result.message
    assert result.violated == "Refinement"


@pytest.mark.parametrize("probe", ["ProbeNoCommit", "ProbeNoDivergence"])
def test_ci_model_reaches_commits_and_divergence(tmp_path, probe):
    """Probes that must FAIL: the CI model really commits, and WALs really diverge."""
    cfg = _variant(tmp_path, SPEC / "models" / "ci.cfg", {"INVARIANTS": f"INVARIANTS {probe}"})
    text = cfg.read_text()
    cfg.write_text(re.sub(r"^\s+(TypeOK|ElectionSafety|LogIsMonotonic|LogMatchesHistory|LogSafety|CommittedNeverLost)\s*$\n", "", text, flags=re.M))
    try:
        result = run_tlc(MODULE, cfg, workers=2, check_deadlock=False, timeout=600)
    finally:
        cfg.unlink()
    assert result.outcome == "invariant"
    assert result.violated == probe
