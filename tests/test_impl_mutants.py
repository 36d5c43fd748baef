"""Implementation mutants (conformance/impl_catalogue.py, conformance/impl_mutants.py, `paxwal mutants`)."""

from __future__ import annotations

import importlib.util
import io
import multiprocessing
from pathlib import Path

import attrs
import pyflakes.api
import pyflakes.reporter
import pytest

import impl.sim
from conformance.impl_catalogue import CATALOGUE, CatalogueError, patched_source, select
from conformance.impl_mutants import (
    CONTROL,
    SMOKE_SEEDS,
    Campaign,
    Kill,
    Plan,
    install,
    passed,
    report,
    run_mutants,
)
from impl.cli import main
from impl.proposer import ProposerCore

BAD_QUORUM = next(m for m in CATALOGUE if m.name == "bad_quorum")


def test_the_catalogue_has_at_least_12_distinct_mutants_of_the_cores():
    names = [m.name for m in CATALOGUE]
    assert len(names) >= 12 and len(set(names)) == len(names)
    assert {m.module for m in CATALOGUE} == {"impl.acceptor", "impl.proposer", "impl.termhistory"}
    assert all(m.bug and m.original != m.replacement for m in CATALOGUE)


@pytest.mark.parametrize("mutant", CATALOGUE, ids=[m.name for m in CATALOGUE])
def test_each_entry_applies_exactly_once(mutant):
    source = Path(importlib.util.find_spec(mutant.module).origin).read_text()
    assert source.count(mutant.original) == 1
    patched = patched_source(mutant)
    assert patched != source and patched.count(mutant.replacement) >= 1


@pytest.mark.parametrize("mutant", CATALOGUE, ids=[m.name for m in CATALOGUE])
def test_each_patched_module_names_only_what_it_defines_or_imports(mutant):
    # A mutant that raises NameError is a crash, not the bug it claims to plant (one did,
    # after a refactor removed an import its replacement used).
    text = io.StringIO()
    messages = pyflakes.reporter.Reporter(text, text)
    pyflakes.api.check(patched_source(mutant), mutant.module, messages)
    assert "undefined name" not in text.getvalue(), text.getvalue()


def test_a_snippet_that_no_longer_occurs_once_is_an_error_naming_the_mutant():
    gone = attrs.evolve(BAD_QUORUM, original="return len(self.acceptors) // 3 + 1")
    with pytest.raises(CatalogueError, match=r"mutant bad_quorum: its original snippet occurs 0 times"):
        patched_source(gone)
    twice = attrs.evolve(BAD_QUORUM, original="self.term")
    with pytest.raises(CatalogueError, match=r"mutant bad_quorum: its original snippet occurs \d+ times"):
        patched_source(twice)
    # The runner checks every entry before it starts any campaign.
    with pytest.raises(CatalogueError, match="bad_quorum"):
        run_mutants([CATALOGUE[0], gone], Plan.of([0]))


def test_a_patch_that_does_not_compile_is_an_error_naming_the_mutant():
    broken = attrs.evolve(BAD_QUORUM, replacement="return len(self.acceptors) //")
    with pytest.raises(CatalogueError, match="mutant bad_quorum: the patched proposer.py does not compile"):
        patched_source(broken)


def test_select_keeps_catalogue_order_and_refuses_unknown_names():
    assert [m.name for m in select(["donor_by_flush", "bad_quorum"])] == ["bad_quorum", "donor_by_flush"]
    assert select(None) == list(CATALOGUE)
    with pytest.raises(CatalogueError, match="unknown mutant"):
        select(["bad_quorum", "nope"])


def test_an_unknown_only_name_is_a_one_line_usage_error(capsys):
    assert main(["mutants", "--only", "nope", "--smoke"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("paxwal: error: unknown mutant(s) nope; available: ack_before_flush, ")


def _quorum_in_worker(conn):
    install(BAD_QUORUM)
    core = impl.sim.ProposerCore("p1", ("a1", "a2", "a3"), 0)  # the name the simulator uses
    conn.send((core.quorum, impl.sim.ProposerCore is not ProposerCore))


def test_install_rebinds_the_simulators_names_in_the_worker_only():
    receiver, sender = multiprocessing.get_context("fork").Pipe(duplex=False)
    process = multiprocessing.get_context("fork").Process(target=_quorum_in_worker, args=(sender,))
    process.start()
    quorum, rebound = receiver.recv()
    process.join()
    assert (quorum, rebound) == (1, True)
    # This process still has the real cores.
    assert impl.sim.ProposerCore is ProposerCore
    assert ProposerCore("p1", ("a1", "a2", "a3"), 0).quorum == 2


def test_the_smoke_set_kills_every_mutant_by_the_conformance_checker_and_the_control_by_nothing():
    plan = Plan.of(SMOKE_SEEDS)
    control, campaigns = run_mutants(CATALOGUE, plan, jobs=2)
    assert control.error is None and control.first is None and control.runs == plan.size
    assert [c.name for c in campaigns] == [m.name for m in CATALOGUE]
    survivors = [c.name for c in campaigns if c.conformance is None]
    assert not survivors, report(control, campaigns, CATALOGUE, plan)
    # Each kill names the event: <node>.ndjson:<line>: <why>.
    assert all(c.conformance.found["conformance"].split(":")[0].endswith(".ndjson") for c in campaigns)
    assert passed(control, campaigns)


def test_a_campaign_that_hangs_or_dies_is_reported_and_kills_nothing():
    hang = attrs.evolve(BAD_QUORUM, name="hang", replacement="while True:\n            pass")
    die = attrs.evolve(BAD_QUORUM, name="die", replacement="return __import__('os')._exit(3)")
    control, (hung, died) = run_mutants([hang, die], Plan.of([0]), jobs=3, timeout=3)
    assert control.first is None and control.error is None
    assert hung.conformance is None and hung.error == "timed out after 3 s during seed 0"
    assert died.conformance is None and died.error == "the worker died during seed 0"


def _campaign(name, conformance=True, first=True):
    kill = Kill("seed 0", {"conformance": "a1.ndjson:3: Vote is not enabled"})
    return Campaign(name, 1, 0.1, kill if first else None, kill if conformance else None)


def test_the_verdict_needs_a_clean_control_and_95_percent_conformance_kills():
    plan = Plan.of([0])
    control = _campaign(CONTROL, conformance=False, first=False)
    nineteen = [_campaign(f"m{i}") for i in range(19)]
    assert passed(control, nineteen + [_campaign("s", conformance=False)])  # 19/20 = 95%
    assert not passed(control, nineteen[:18] + [_campaign("s", conformance=False)] * 2)  # 90%
    assert not passed(_campaign(CONTROL), nineteen)
    text = report(control, [_campaign("s", conformance=False, first=False), *nineteen[:3]], [], plan)
    assert "SURVIVED" in text and "by the conformance checker 3/4 (75%)" in text


def test_paxwal_mutants_prints_the_table_and_keeps_the_rejected_run(capsys, tmp_path):
    code = main(["mutants", "--only", "bad_quorum", "--smoke", "--jobs", "2", "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 0, captured.out
    rows = {line.split()[0]: line for line in captured.out.splitlines() if line}
    assert "conformance" in rows["bad_quorum"] and "nothing" in rows[CONTROL]
    assert "killed 1/1 (100%), by the conformance checker 1/1 (100%)" in captured.out
    assert "[2/2]" in captured.err
    kept = tmp_path / "bad_quorum" / "seed-0"
    assert (kept / "run.json").is_file()
    # The kept directory is an ordinary run: `paxwal check` rejects it without the mutant.
    assert main(["check", str(kept)]) == 1
    assert "REJECTED at" in capsys.readouterr().out
