"""spec/Horizons.tla, checked by TLC: what may be deleted (issue 8 §5).

The model holds with the size recorded in spec/models/manifest-horizons.json; every mutant of
spec/mutants/horizons/ is refuted with its expected invariant; the probes show the model
reaches WAL removal, layer deletion and a branch behind the GC cutoff; and the spec's one
design choice (the pageserver never reads offloaded WAL) is what makes the
remote_consistent_lsn horizon necessary. Tests marked ``tlc`` run Java, a few seconds each
(the model itself about 20 s); the others check how the catalogue and the CLI find the spec.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from conformance.mutants import (
    MODEL_MODULE,
    MutantError,
    check_mutant,
    config_module,
    control_config,
    load_mutants,
)
from conformance.tlc import config_properties, run_tlc
from impl.cli import main
from impl.cli.tlc import DETERMINISTIC_SEARCH

SPEC = Path(__file__).resolve().parent.parent / "spec"
MODULE = SPEC / "MCHorizons.tla"
MODEL = SPEC / "models" / "horizons.cfg"
MANIFEST = json.loads((SPEC / "models" / "manifest-horizons.json").read_text())
INVARIANTS = [
    "TypeOK",
    "HorizonsOrdered",
    "IndexNamesExistingLayers",
    "LayerMapRebuildable",
    "WindowRebuildable",
    "BranchesRebuildable",
    "CommittedWalKept",
]
PROPERTIES = ["GcCutoffMonotonic", "RemoteConsistentMonotonic", "WalHorizonsMonotonic"]
# The issue's three bug classes, then three more; the letters go on from ProposerAcceptor's.
EXPECTED = {
    "WalRemovedBelowDiskConsistent": ("(i)", "WindowRebuildable"),
    "GcIgnoresBranchPoints": ("(j)", "BranchesRebuildable"),
    "LayerDeletedBeforeIndex": ("(k)", "IndexNamesExistingLayers"),
    "WalRemovedBeforeOffload": ("(l)", "CommittedWalKept"),
    "IndexUploadedBeforeLayers": ("(m)", "IndexNamesExistingLayers"),
    "BranchBelowCutoff": ("(n)", "BranchesRebuildable"),
}
MUTANTS = [m for m in load_mutants(SPEC, subdirectories=True) if m.module == MODULE]


def _variant(tmp_path: Path, source: Path, replace: dict[str, str]) -> Path:
    """A copy of a config beside the model module, with whole lines replaced."""
    text = source.read_text()
    for old, new in replace.items():
        text, count = re.subn(rf"^\s*{re.escape(old)}.*$", new, text, flags=re.M)
        assert count == 1, old
    path = SPEC / f"_test_horizons_{tmp_path.name}.cfg"
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------
# The catalogue and the configs (no Java)
# ---------------------------------------------------------------------------------------


def test_catalogue_has_the_issue_mutants():
    assert {m.name: (m.bug[:3], m.expect) for m in MUTANTS} == EXPECTED
    assert all(m.cfg.parent == SPEC / "mutants" / "horizons" for m in MUTANTS)


def test_top_level_catalogue_stays_proposer_acceptor_only():
    """tests/test_spec.py reads the top level only: the Horizons mutants are not its."""
    top = load_mutants(SPEC)
    assert top and all(m.module is None for m in top)
    assert not {m.name for m in top} & set(EXPECTED)
    everything = load_mutants(SPEC, subdirectories=True)
    assert everything[: len(top)] == top and len(everything) == len(top) + len(EXPECTED)


def test_configs_name_their_module():
    assert config_module(MODEL, SPEC) == MODULE
    assert config_module(SPEC / "models" / "ci.cfg", SPEC) == SPEC / MODEL_MODULE
    for mutant in MUTANTS:
        assert config_module(mutant.cfg, SPEC) == MODULE


def test_model_checks_every_invariant_and_property():
    text = MODEL.read_text()
    for name in INVARIANTS:
        assert re.search(rf"^\s*{name}\s*$", text, re.M), name
    assert config_properties(text) == PROPERTIES


def test_mutant_controls_are_the_unmodified_spec():
    for mutant in MUTANTS:
        control = control_config(mutant)
        assert "<-" not in control and "MUTATION" not in control.split("\n", 1)[1]


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


MUTANT_TEXT = "\\* mutant: {name}\n\\* bug: (x) a bug\n\\* expect: Inv\n{module}CONSTANTS\n    Op <- BadOp   \\* MUTATION\n"


def test_subdirectory_mutants_need_a_module(tmp_path):
    _write(tmp_path / "mutants" / "Top.cfg", MUTANT_TEXT.format(name="Top", module=""))
    _write(tmp_path / "mutants" / "other" / "Sub.cfg", MUTANT_TEXT.format(name="Sub", module="\\* module: MCOther.tla\n"))
    assert [m.name for m in load_mutants(tmp_path)] == ["Top"]
    top, sub = load_mutants(tmp_path, subdirectories=True)
    assert (top.name, top.module) == ("Top", None)
    assert (sub.name, sub.module) == ("Sub", tmp_path / "MCOther.tla")
    _write(tmp_path / "mutants" / "other" / "Sub.cfg", MUTANT_TEXT.format(name="Sub", module=""))
    with pytest.raises(MutantError, match="needs a header line '.. module"):
        load_mutants(tmp_path, subdirectories=True)
    _write(tmp_path / "mutants" / "other" / "Sub.cfg", MUTANT_TEXT.format(name="Sub", module="\\* module: ../x.tla\n"))
    with pytest.raises(MutantError, match="not a .tla file name"):
        load_mutants(tmp_path, subdirectories=True)
    _write(tmp_path / "mutants" / "other" / "Top.cfg", MUTANT_TEXT.format(name="Top", module="\\* module: M.tla\n"))
    (tmp_path / "mutants" / "other" / "Sub.cfg").unlink()
    with pytest.raises(MutantError, match="mutant Top is also"):
        load_mutants(tmp_path, subdirectories=True)


def test_cli_lists_the_horizons_mutants(capsys):
    assert main(["tlc", "mutants", "--only", "Nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown mutant(s) Nope" in err
    assert all(name in err for name in EXPECTED) and "BadQuorum" in err


# ---------------------------------------------------------------------------------------
# TLC
# ---------------------------------------------------------------------------------------


@pytest.mark.tlc
def test_model_holds():
    result = run_tlc(MODULE, MODEL, workers=1, check_deadlock=False, timeout=600, extra_args=DETERMINISTIC_SEARCH)
    assert result.outcome == "ok", result.message
    recorded = MANIFEST["horizons"]
    assert (result.distinct_states, result.depth) == (recorded["distinct_states"], recorded["depth"])


@pytest.mark.tlc
@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_mutant_is_refuted(mutant):
    result = check_mutant(mutant, timeout=300, workers=1, check_deadlock=False)
    assert result.refuted, result.reason
    assert result.violated == mutant.expect
    assert result.trace_length > 1


@pytest.mark.tlc
@pytest.mark.parametrize("probe", ["ProbeNoWalRemoved", "ProbeNoLayerDeleted", "ProbeNoBranchBehindCutoff"])
def test_model_reaches_deletions_and_old_branches(tmp_path, probe):
    """Probes that must FAIL: acceptors remove WAL, GC deletes the initdb image from object
    storage, and the window moves past a branch point."""
    text = MODEL.read_text()
    text = re.sub(r"^INVARIANTS\n(\s+\w+\n)+", f"INVARIANTS {probe}\n", text, flags=re.M)
    text = re.sub(r"^PROPERTIES\n(\s+\w+\n)+", "", text, flags=re.M)
    cfg = SPEC / f"_test_horizons_{tmp_path.name}.cfg"
    cfg.write_text(text)
    try:
        result = run_tlc(MODULE, cfg, workers=1, check_deadlock=False, timeout=300)
    finally:
        cfg.unlink()
    assert (result.outcome, result.violated) == ("invariant", probe), result.message


@pytest.mark.tlc
def test_offloaded_reads_would_make_remote_consistent_lsn_moot(tmp_path):
    """The header's design choice, checked: if the pageserver could read offloaded WAL,
    removing acceptor WAL below disk_consistent_lsn would lose nothing."""
    source = SPEC / "mutants" / "horizons" / "WalRemovedBelowDiskConsistent.cfg"
    cfg = _variant(
        tmp_path,
        source,
        {"RemovalHorizon <-": "    RemovalHorizon <- WalRemovedBelowDiskConsistent\n    PageserverWal <- PageserverReadsOffloaded"},
    )
    try:
        result = run_tlc(MODULE, cfg, workers=1, check_deadlock=False, timeout=300)
    finally:
        cfg.unlink()
    assert result.outcome == "ok", result.violated or result.message


@pytest.mark.tlc
def test_cli_checks_a_horizons_model(tmp_path, capsys):
    """`paxwal tlc check --model NAME` takes the module the config names (a smaller model here)."""
    spec = tmp_path / "spec"
    (spec / "models").mkdir(parents=True)
    for name in ("Horizons.tla", "MCHorizons.tla"):
        shutil.copy(SPEC / name, spec / name)
    (spec / "models" / "horizons.cfg").write_text(MODEL.read_text().replace("MaxLsn = 2", "MaxLsn = 1"))
    assert main(["--spec-dir", str(spec), "tlc", "check", "--model", "horizons"]) == 0
    captured = capsys.readouterr()
    assert "horizons.cfg on MCHorizons.tla" in captured.err
    assert re.search(r"outcome\s+ok", captured.out)


@pytest.mark.tlc
def test_cli_mutants_runs_a_horizons_mutant(capsys):
    assert main(["tlc", "mutants", "--workers", "1", "--only", "LayerDeletedBeforeIndex"]) == 0
    header, row = capsys.readouterr().out.splitlines()[:2]
    assert header.split()[:4] == ["mutant", "bug", "expected", "violated"]
    assert row.startswith("LayerDeletedBeforeIndex") and row.endswith("refuted") and "NOT" not in row
    assert row.count("IndexNamesExistingLayers") == 2
