"""Shared pytest options and fixtures.

Every simulator run a test makes is checked against the spec (`checked_traces`): a test
cannot produce a trace nobody replays.  A test that plants a bug on purpose says so with
`@pytest.mark.trace_rejected`, and then its traces must be rejected instead.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from conformance.replay import events_in_memory, replay
from impl.sim import Sim

# The S3 server fixture (a real `weed mini` on loopback), for the object-storage tests.
pytest_plugins = ["s3server"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--rewrite",
        action="store_true",
        default=False,
        help="regenerate scenario outputs and their traces",
    )


@pytest.fixture
def rewrite(request: pytest.FixtureRequest) -> bool:
    """Whether --rewrite was given: scenario tests then regenerate instead of comparing."""
    return bool(request.config.getoption("--rewrite"))


@pytest.fixture(autouse=True)
def checked_traces(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Replay the trace of every simulator the test created, after the test."""
    sims: list[Sim] = []
    original = Sim.__init__

    def init(self: Sim, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)
        sims.append(self)

    monkeypatch.setattr(Sim, "__init__", init)
    yield
    planted = request.node.get_closest_marker("trace_rejected") is not None
    traced = [sim for sim in sims if sim.events]
    verdicts = []
    for sim in traced:
        result = replay(events_in_memory(sim.node_events), {"cluster": {"proposers": list(sim.proposers), "acceptors": list(sim.acceptors)}})
        verdicts.append(result.verdict)
        if not planted and result.divergence is not None:
            pytest.fail(f"the test's simulator trace is not a behaviour of the spec:\n{result.divergence.report()}")
    if planted:
        assert "rejected" in verdicts, f"a planted bug left no rejected trace (verdicts: {verdicts})"
