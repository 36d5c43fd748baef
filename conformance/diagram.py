"""Sequence diagrams of a divergence window: the events just before a rejection, per node.

Theory of operation
===================

A rejection report (`conformance/replay.py`, `Divergence`) lists the events before the
rejected one in merged order; which node did what, and which message went where, is easier to
see drawn.  `layout` turns the window into columns and rows, once, and two renderers draw it:

- `text`: for the terminal (ASCII, within ~120 columns for 3-8 nodes); an excerpt of
  traces/rejected/vote-twice-in-term::

                    p1                  p2                  a1                  a2
                    |                   |                   |                   |
      p1.ndjson:5   * StartCampaign     |                   |                   |
                    |--VoteRequest p1:5-------------------->|                   |
      a1.ndjson:3   |                   |                   * Vote              |
      p2.ndjson:5   |                   * StartCampaign     |                   |
                    |                   |--VoteRequest----->|                   |
   >> a1.ndjson:4   |                   |                   X Vote              |

- `svg`: a self-contained SVG file (`paxwal check --diagram FILE`), where a message is a
  slanted arrow from its send to its receive, and each event's tooltip is its full
  description.

Rules of the drawing: one column per node that acts in the window (proposers, then
acceptors, then the network's LoseMessage events), time downwards, one row per event in
merged order, named by its file:line as in the report.  A message gets an arrow only when
both its send and its receive are in the window; a send or receive whose partner is outside
is in the event's description (the report's list), not drawn, because an arrow to nowhere
says less than the list does.  The rejected event is marked `X` and `>>`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape, quoteattr

import attrs

if TYPE_CHECKING:
    from conformance.replay import Event

__all__ = ["Arrow", "Diagram", "layout", "svg", "text"]

# The terminal width the text diagram aims for; columns shrink to fit it, down to MIN_COLUMN.
WIDTH = 120
MIN_COLUMN, MAX_COLUMN = 12, 20


@attrs.frozen
class Arrow:
    """A message sent by row `send` and received by row `recv` (indices into Diagram.rows)."""

    send: int
    recv: int
    type: str
    id: str


@attrs.frozen
class Diagram:
    """The window laid out: `nodes` are the columns, `rows` the events (the last one rejected)."""

    nodes: tuple[str, ...]
    rows: tuple[Event, ...]
    arrows: tuple[Arrow, ...]

    def column(self, row: int) -> int:
        return self.nodes.index(self.rows[row].node)

    def label(self, row: int) -> str:
        event = self.rows[row]
        return f"{Path(event.file).name}:{event.line}"


def _order(event: Event) -> int:
    # The spec's own order: proposers, acceptors, then the network (node `net`).
    state = event.data["state"]
    return 0 if "prop_phase" in state else 1 if "acc_term" in state else 2


def layout(window: Sequence[Event], rejected: Event) -> Diagram:
    """Columns, rows and arrows of the window followed by the rejected event."""
    rows = (*window, rejected)
    rank: dict[str, int] = {}
    for event in rows:
        rank.setdefault(event.node, _order(event))
    nodes = tuple(sorted(rank, key=lambda n: (rank[n], n)))
    sent: dict[str, tuple[int, str]] = {}  # message id -> (row that sent it, its type)
    arrows = []
    for index, event in enumerate(rows):
        recv = event.data["recv"]
        # A LoseMessage names the copy the network dropped: not a delivery.
        if recv in sent and event.action != "LoseMessage":
            row, kind = sent[recv]
            arrows.append(Arrow(row, index, kind, recv))
        for s in event.data["sent"]:
            sent[s["id"]] = (index, s["msg"]["type"])
    return Diagram(nodes, rows, tuple(arrows))


# ---------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------


def _arrow_line(blank: list[str], x_from: int, x_to: int, label: str) -> list[str]:
    line = list(blank)
    lo, hi = sorted((x_from, x_to))
    for x in range(lo + 1, hi):
        line[x] = "-"
    if x_to > x_from:
        line[hi - 1] = ">"
    else:
        line[lo + 1] = "<"
    room = hi - lo - 5  # keep "|-" and "->|" (or "|<-" and "-|") visible around the label
    for name in (label, label.split()[0]):
        if len(name) <= room:
            break
    name = name[: max(room, 0)]
    start = lo + 3
    line[start : start + len(name)] = name
    return line


def text(window: Sequence[Event], rejected: Event, width: int = WIDTH) -> str:
    """The window as an ASCII sequence diagram (see the module docstring)."""
    d = layout(window, rejected)
    gutter = 3 + max(len(d.label(i)) for i in range(len(d.rows))) + 2
    col = max(MIN_COLUMN, min(MAX_COLUMN, (width - gutter) // len(d.nodes)))
    xs = [gutter + i * col for i in range(len(d.nodes))]
    end = xs[-1] + col
    blank = [" "] * end
    for x in xs:
        blank[x] = "|"

    def put(line: list[str], x: int, s: str) -> None:
        line[x : x + len(s)] = s

    header = [" "] * end
    for x, node in zip(xs, d.nodes):
        put(header, x, node[: col - 1])
    out = [header, list(blank)]
    arrows = {a.recv: a for a in d.arrows}
    last = len(d.rows) - 1
    for i, event in enumerate(d.rows):
        if i in arrows:
            a = arrows[i]
            out.append(_arrow_line(blank, xs[d.column(a.send)], xs[d.column(a.recv)], f"{a.type} {a.id}"))
        line = list(blank)
        put(line, 0, (">> " if i == last else "   ") + d.label(i))
        x = xs[d.column(i)]
        # Truncated to the column so the next node's lifeline stays visible.
        put(line, x, ("X " if i == last else "* ") + event.action[: col - 3])
        out.append(line)
    legend = "(time flows down; * an event, X the rejected one, --type id--> a message sent and received in the window)"
    return "\n".join(["".join(line).rstrip() for line in out] + [legend])


# ---------------------------------------------------------------------------------------------
# SVG
# ---------------------------------------------------------------------------------------------

_COL, _ROW, _LEFT, _TOP = 150, 34, 150, 50


def svg(window: Sequence[Event], rejected: Event) -> str:
    """The window as a self-contained SVG document (see the module docstring)."""
    d = layout(window, rejected)
    xs = [_LEFT + i * _COL for i in range(len(d.nodes))]
    ys = [_TOP + 30 + i * _ROW for i in range(len(d.rows))]
    width, height = xs[-1] + _COL, ys[-1] + _ROW
    last = len(d.rows) - 1
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="monospace" font-size="12">',
        "<title>Events before the rejected one, in merged order</title>",
        '<defs><marker id="head" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" '
        'markerHeight="8" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#357"/></marker></defs>',
    ]
    for x, node in zip(xs, d.nodes):
        out.append(f'<text x="{x}" y="{_TOP}" text-anchor="middle" font-weight="bold">{escape(node)}</text>')
        out.append(f'<line x1="{x}" y1="{_TOP + 8}" x2="{x}" y2="{height - 10}" stroke="#bbb" stroke-dasharray="4 3"/>')
    for a in d.arrows:
        x1, y1, x2, y2 = xs[d.column(a.send)], ys[a.send], xs[d.column(a.recv)], ys[a.recv]
        out.append(
            f'<g class="message" data-id={quoteattr(a.id)}>'
            f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="#357" marker-end="url(#head)"/>'
            f'<text x="{(x1 + x2) / 2}" y="{(y1 + y2) / 2 - 4}" text-anchor="middle" fill="#357">'
            f"{escape(a.type)} {escape(a.id)}</text></g>"
        )
    for i, event in enumerate(d.rows):
        x, y = xs[d.column(i)], ys[i]
        bad = i == last
        colour, weight = ("#c00", "bold") if bad else ("#000", "normal")
        out.append(
            f'<g class="event{" rejected" if bad else ""}" data-node={quoteattr(event.node)} '
            f'data-file={quoteattr(Path(event.file).name)} data-line="{event.line}">'
            f"<title>{escape(d.label(i))}  {escape(event.describe())}</title>"
            f'<text x="8" y="{y + 4}" fill="{colour}">{">> " if bad else ""}{escape(d.label(i))}</text>'
            f'<circle cx="{x}" cy="{y}" r="{6 if bad else 4}" fill="{colour}"/>'
            f'<text x="{x + 10}" y="{y + 4}" fill="{colour}" font-weight="{weight}">'
            f"{escape(event.action)}{' (rejected)' if bad else ''}</text></g>"
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"
