"""The `checked_traces` fixture (tests/conftest.py) fails a test whose simulator trace the spec
rejects, and a `trace_rejected` test whose traces are all accepted."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = (Path(__file__).parent / "conftest.py").read_text()

RUN = """
import pytest

{marker}
def test_run():
    from impl.sim import Sim, SimOptions
    sim = Sim(SimOptions.from_seed(3, 300))
    sim.run()
    {edit}
"""

# Forget one acceptor's promise in its first Vote event: the logged state then differs from
# the spec's successor.
FORGET = """first = next(e for e in sim.node_events["a1"] if e["action"] == "Vote")
    first["state"]["acc_term"] = 0"""


@pytest.mark.parametrize(
    ("marker", "edit", "outcome"),
    [
        ("", "pass", "ok"),
        ("", FORGET, "error"),
        ("@pytest.mark.trace_rejected", FORGET, "ok"),
        ("@pytest.mark.trace_rejected", "pass", "error"),
    ],
    ids=["accepted", "rejected", "planted-rejected", "planted-accepted"],
)
def test_every_simulator_trace_is_replayed(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, marker: str, edit: str, outcome: str
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))  # the conftest's own imports
    pytester.makeconftest(CONFTEST)
    pytester.makeini("[pytest]\nmarkers =\n    trace_rejected: planted bug\n")
    pytester.makepyfile(RUN.format(marker=marker, edit=edit))
    # A subprocess: in this process, this test's own checked_traces would see the inner sim.
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    # The check runs after the test body, so a failing check is an error in teardown.
    result.assert_outcomes(passed=1, errors=0 if outcome == "ok" else 1)
    if marker == "" and edit != "pass":
        result.stdout.fnmatch_lines(["*not a behaviour of the spec*", "*REJECTED at a1.ndjson:*"])
    if marker and edit == "pass":
        result.stdout.fnmatch_lines(["*a planted bug left no rejected trace*"])
