"""Branch creation time on a parent of 1k pages and on one of 100k pages: it must not grow.

A branch is metadata only (impl/timeline.py rule 5): `Repository.create_branch` writes the
child's directory and metadata file (a mkdir, an atomic write, three fsyncs) and copies no
page, so its time should not depend on the parent's size.  The parents: for each size in
`SIZES`, a repository in a temporary directory with one timeline, ``main``, of that many
4 KiB pages written as images (records of `PAGES_PER_RECORD` pages), frozen and flushed into
layer files by the default checkpoint distance as the service would, then checkpointed, so
the parent's pages are all in layer files (100k pages: 400 MiB, written before measuring,
outside the time budget).

The phase: both parents are open at once; in each round it writes one baseline file, branches
the small parent and branches the large one (each at its last LSN, under a new name; the
order rotates each round), for `seconds` (at least `MIN_ROUNDS`, at most `MAX_ROUNDS`
rounds), after one unmeasured of each.  Interleaved, the three see the same disk: fsyncs are
slower while other writers share it (another process, the writeback of the 400 MiB just
written), and measured one after the other, that showed as a growth of up to 1.7x that
creation itself does not have.  The figures are median times of one call.
``ratio_large_to_small`` is the claim: about 1.0 (the goal allows `GOAL_RATIO`, for the
noise of fsyncs on a shared disk).

Baseline: `impl.storage.write_file_atomic` of a small file (the size of a branch's
metadata) in a directory of its own: what creating any small durable file costs here.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.cluster import ms, percentile
from impl.pagewal import PAGE_SIZE, PageImage, PageRecord
from impl.storage import write_file_atomic
from impl.timeline import Repository

NAME = "branch"

SIZES = (1_000, 100_000)
PAGES_PER_RECORD = 256
MIN_ROUNDS = 5
MAX_ROUNDS = 2000
GOAL_RATIO = 1.5
TIMELINE = "main"
# A timeline's metadata file is about this long (a CBOR map of names and LSNs).
_BASELINE_FILE = bytes(160)
_COMMIT_TIME = 1_700_000_000_000_000


def build_parent(directory: Path, pages: int) -> Repository:
    """A repository in `directory` whose timeline ``main`` holds `pages` images, all in layer
    files (see the module docstring).  The caller closes it."""
    repo = Repository.open(directory)
    try:
        timeline = repo.create_timeline(TIMELINE)
        lsn = 0
        for first in range(0, pages, PAGES_PER_RECORD):
            images = tuple(
                PageImage(n, n.to_bytes(4, "big") * (PAGE_SIZE // 4))
                for n in range(first, min(pages, first + PAGES_PER_RECORD))
            )
            lsn += PAGE_SIZE * len(images)  # about the record's bytes: LSNs only need to grow
            timeline.ingest(lsn, PageRecord(PAGE_SIZE, pages, _COMMIT_TIME, images))
            if timeline.freeze_if_due(_COMMIT_TIME):
                timeline.flush()
        timeline.checkpoint()
    except BaseException:
        repo.close()
        raise
    return repo


def interleaved_times(steps: list[Callable[[int], object]], seconds: float) -> list[list[float]]:
    """Durations of each of `steps`, called in rounds (`step(i)` in round i, the order rotated
    each round so that none always runs after the same one), for `seconds`, at least
    MIN_ROUNDS and at most MAX_ROUNDS rounds.  Interleaving gives every step the same disk:
    fsyncs slow down when other writers (another process, the writeback of the files just
    written) share it, and that should not show as a difference between the steps."""
    clock = time.perf_counter
    times: list[list[float]] = [[] for _ in steps]
    stop_at = clock() + seconds
    rounds = 0
    while rounds < MAX_ROUNDS and (rounds < MIN_ROUNDS or clock() < stop_at):
        for k in range(len(steps)):
            which = (rounds + k) % len(steps)
            begin = clock()
            steps[which](rounds)
            times[which].append(clock() - begin)
        rounds += 1
    return times


def run(seconds: float = 20.0) -> dict[str, Any]:
    """Build both parents (unmeasured), then the interleaved phase of `seconds`."""
    small, large = SIZES
    repos: dict[int, Repository] = {}
    with tempfile.TemporaryDirectory(prefix="paxwal-bench-branch-") as tmp:
        root = Path(tmp)
        base_dir = root / "baseline"
        base_dir.mkdir()
        try:
            for pages in SIZES:
                repos[pages] = build_parent(root / f"parent-{pages}", pages)
            lsns = {pages: repo.timeline(TIMELINE).last_record_lsn for pages, repo in repos.items()}
            layers = {pages: repo.timeline(TIMELINE).layer_files() for pages, repo in repos.items()}

            def baseline(i: int) -> None:
                write_file_atomic(base_dir / f"file-{i}", _BASELINE_FILE)

            def brancher(pages: int) -> Callable[[int], object]:
                return lambda i: repos[pages].create_branch(f"branch-{i}", TIMELINE, lsns[pages])

            for pages in SIZES:  # one unmeasured each
                repos[pages].create_branch("warm-up", TIMELINE, lsns[pages])
            write_file_atomic(base_dir / "warm-up", _BASELINE_FILE)
            base, *branches = interleaved_times([baseline, brancher(small), brancher(large)], seconds)
        finally:
            for repo in repos.values():
                repo.close()
    times = dict(zip(SIZES, branches))
    base_p50 = percentile(base, 0.5)
    p50 = {pages: percentile(t, 0.5) for pages, t in times.items()}
    figures: dict[str, Any] = {
        "baseline_atomic_write_ms_median": ms(base_p50),
        "rounds": len(base),
    }
    for label, pages in (("small", small), ("large", large)):
        figures[f"parent_pages_{label}"] = pages
        figures[f"parent_layer_files_{label}"] = len(layers[pages])
        figures[f"parent_layer_mib_{label}"] = round(sum(info.size for info in layers[pages]) / 2**20, 1)
        figures[f"branch_ms_median_{label}"] = ms(p50[pages])
        figures[f"branch_ms_p99_{label}"] = ms(percentile(times[pages], 0.99))
        figures[f"ratio_branch_{label}_to_baseline"] = round(p50[pages] / base_p50, 3)
    ratio = p50[large] / p50[small]
    figures["ratio_large_to_small"] = round(ratio, 3)
    figures["goal_does_not_grow"] = "met" if ratio <= GOAL_RATIO else "missed"
    return figures
