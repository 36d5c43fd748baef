"""Sequence diagrams of a divergence window (conformance/diagram.py) and `paxwal check --diagram`."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conformance.diagram import layout, svg, text
from conformance.replay import check_run, load_events
from impl.cli import main

ROOT = Path(__file__).resolve().parent.parent
# a1 votes twice in term 1; its first vote (a1:3, for p1's p1:5) and p2's request p2:5 are in
# the window, so both messages get arrows; p1, p2, a1 and a2 act in it.
RUN = ROOT / "traces" / "rejected" / "vote-twice-in-term"
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def divergence():
    result = check_run([RUN])
    assert result.verdict == "rejected"
    return result.divergence


def _columns(header: str) -> dict[str, int]:
    return {name: header.index(name) for name in header.split()}


def test_a_column_for_each_node_in_the_window(divergence):
    nodes = {e.node for e in divergence.window} | {divergence.event.node}
    assert nodes == {"p1", "p2", "a1", "a2"}
    header = text(divergence.window, divergence.event).splitlines()[0]
    assert list(_columns(header)) == ["p1", "p2", "a1", "a2"]  # proposers, then acceptors


def test_each_event_is_a_row_at_its_nodes_column(divergence):
    lines = text(divergence.window, divergence.event).splitlines()
    columns = _columns(lines[0])
    rows = [line for line in lines if ".ndjson:" in line]
    events = (*divergence.window, divergence.event)
    assert len(rows) == len(events)
    for row, event in zip(rows, events):
        assert f"{Path(event.file).name}:{event.line}" in row
        x = columns[event.node]
        assert row[x + 2 :].startswith(event.action[:10]), (row, event.describe())


def test_an_arrow_from_a_send_to_its_receive_in_the_window(divergence):
    lines = text(divergence.window, divergence.event).splitlines()
    columns = _columns(lines[0])
    arrow = next(line for line in lines if "VoteRequest p1:5" in line)
    # From p1's lifeline to a1's, pointing at a1, on the line just above a1's first Vote.
    assert arrow[columns["p1"]] == "|" and arrow[columns["a1"] - 1] == ">"
    assert set(arrow[columns["p1"] + 1 : columns["a1"] - 1]) <= set("-VoteRequst p1:5")
    below = lines[lines.index(arrow) + 1]
    assert "a1.ndjson:3" in below and below[columns["a1"] :].startswith("* Vote")
    d = layout(divergence.window, divergence.event)
    assert [(a.type, a.id) for a in d.arrows] == [("VoteRequest", i) for i in ("p1:5", "p1:6", "p2:5")]


def test_the_rejected_event_is_marked(divergence):
    lines = text(divergence.window, divergence.event).splitlines()
    columns = _columns(lines[0])
    marked = [line for line in lines if line.startswith(">>")]
    assert len(marked) == 1
    assert "a1.ndjson:4" in marked[0] and marked[0][columns["a1"] :].startswith("X Vote")
    assert sum(line.count("X ") for line in lines if ".ndjson:" in line) == 1


def test_the_text_fits_the_terminal_with_eight_nodes():
    events, _ = load_events([ROOT / "traces" / "accepted" / "sim" / "seed-5"])
    window = []
    for event in events:  # the first events that cover all eight nodes (3 proposers, 5 acceptors)
        window.append(event)
        if len({e.node for e in window if e.node != "net"}) == 8:
            break
    drawing = text(window[:-1], window[-1])
    assert len(_columns(drawing.splitlines()[0])) >= 8
    assert max(len(line) for line in drawing.splitlines()) <= 120


def test_the_report_includes_the_text_diagram(divergence):
    report = divergence.report().splitlines()
    at = report.index("  sequence diagram:")
    drawing = text(divergence.window, divergence.event, width=118).splitlines()
    assert [line[2:] for line in report[at + 1 :]] == drawing
    assert max(len(line) for line in report[at:]) <= 120


def test_the_svg_parses_and_holds_the_same_events_and_arrows(divergence):
    root = ET.fromstring(svg(divergence.window, divergence.event))
    assert root.tag == f"{SVG}svg"
    groups = [g for g in root.iter(f"{SVG}g")]
    events = [g for g in groups if g.get("class", "").startswith("event")]
    expected = (*divergence.window, divergence.event)
    assert [(g.get("data-file"), int(g.get("data-line"))) for g in events] == [
        (Path(e.file).name, e.line) for e in expected
    ]
    for g, event in zip(events, expected):
        assert event.action in "".join(g.itertext())
        assert g.find(f"{SVG}title").text.endswith(event.describe())
    assert [g.get("class") for g in events].count("event rejected") == 1
    assert events[-1].get("class") == "event rejected"
    messages = {g.get("data-id") for g in groups if g.get("class") == "message"}
    assert messages == {"p1:5", "p1:6", "p2:5"}
    columns = {t.text for t in root.findall(f"{SVG}text") if t.get("font-weight") == "bold"}
    assert columns == {"p1", "p2", "a1", "a2"}


def test_check_writes_the_diagram_and_exits_1(tmp_path, capsys):
    out = tmp_path / "window.svg"
    assert main(["check", str(RUN), "--diagram", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "sequence diagram:" in printed and str(out) in printed
    root = ET.parse(out).getroot()
    assert sum(1 for g in root.iter(f"{SVG}g") if g.get("class") == "event rejected") == 1


def test_an_accepted_run_writes_no_diagram(tmp_path):
    out = tmp_path / "window.svg"
    assert main(["check", str(ROOT / "traces" / "accepted" / "scenarios" / "election"), "--diagram", str(out)]) == 0
    assert not out.exists()
