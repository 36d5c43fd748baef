"""Tests of the SQL chaos run: the workload's history and its check (impl/sqlload.py), and the
chaos runner on SQL computes (impl/chaos.py `run_sql_chaos`) through `paxwal chaos --sql`.

The check is tested on made-up histories and tables first, each kind of violation on its
own, so a smoke run that passes is known to have been able to fail.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from impl.sqlload import NO_OUTCOME, Tables, _History, pad, read_sql_history, transaction_sql, verify_sql
from impl.sql import split_statements

REPO = Path(__file__).resolve().parent.parent


def row(key: str, table: str) -> tuple[str, int, str]:
    client, _, seq = key.rpartition("/")
    return client, int(seq), pad(table, key)


def tables(keys_a: list[str], keys_b: list[str] | None = None, counts: dict[str, int] | None = None) -> Tables:
    keys_b = keys_a if keys_b is None else keys_b
    if counts is None:
        counts = {}
        for key in keys_a:
            client = key.rpartition("/")[0]
            counts[client] = counts.get(client, 0) + 1
    return Tables({k: row(k, "a") for k in keys_a}, {k: row(k, "b") for k in keys_b}, counts, "0/0", 1)


def history(*ops: tuple[str, str] | tuple[str, str, str]) -> list[dict[str, object]]:
    """(op, key) for invoke and ack, (fail, key, sqlstate) for an unknown failure."""
    out: list[dict[str, object]] = []
    for op in ops:
        if op[0] == "fail":
            out.append({"op": "fail", "key": op[1], "definite": False, "sqlstate": op[2]})
        else:
            out.append({"op": op[0], "key": op[1]})
    return out


# A history of five transactions of client w/0: 0 and 1 acked, 2 failed (08006), 3 failed
# (57P01), 4 invoked when the workload was killed.
HISTORY = history(
    ("invoke", "w/0/0"), ("ack", "w/0/0"), ("invoke", "w/0/1"), ("ack", "w/0/1"), ("invoke", "w/0/2"),
    ("fail", "w/0/2", "08006"), ("invoke", "w/0/3"), ("fail", "w/0/3", "57P01"), ("invoke", "w/0/4"),
)


def test_a_history_whose_acked_transactions_are_whole_passes_and_unknowns_count_both_ways() -> None:
    verdict = verify_sql(HISTORY, tables(["w/0/0", "w/0/1", "w/0/2", "w/0/4"]))
    assert verdict.ok and verdict.acked == 2 and verdict.invoked == 5 and verdict.rows == 4
    assert verdict.unknown == {"08006": [1, 0], "57P01": [0, 1], NO_OUTCOME: [1, 0]}
    assert (verdict.unknown_present, verdict.unknown_absent) == (2, 1)


@pytest.mark.parametrize(
    ("present_a", "present_b", "counts", "violation", "keys"),
    [
        (["w/0/0"], None, None, "lost", ["w/0/1"]),  # an acked transaction missing from both tables
        (["w/0/0", "w/0/1", "w/0/2"], ["w/0/0", "w/0/1"], None, "half_applied", ["w/0/2"]),  # a only
        (["w/0/0", "w/0/1"], ["w/0/0", "w/0/1", "w/0/4"], None, "half_applied", ["w/0/4"]),  # b only
        (["w/0/0", "w/0/1", "w/0/9"], None, None, "phantom", ["w/0/9"]),  # never invoked
        (["w/0/0", "w/0/1"], None, {"w/0": 3}, "counters_off", [("w/0", 3, 2)]),  # a doubled update
        (["w/0/0", "w/0/1"], None, {"w/0": 1}, "counters_off", [("w/0", 1, 2)]),  # a lost update
    ],
)
def test_each_violation_is_found(present_a: list[str], present_b: list[str] | None, counts: dict[str, int] | None,
                                 violation: str, keys: list[object]) -> None:
    verdict = verify_sql(HISTORY, tables(present_a, present_b, counts))
    assert not verdict.ok
    assert getattr(verdict, violation) == keys
    others = {"lost", "half_applied", "phantom", "corrupt", "counters_off"} - {violation}
    assert all(not getattr(verdict, other) for other in others), verdict


def test_a_row_not_as_written_is_corrupt() -> None:
    read = tables(["w/0/0", "w/0/1"])
    read.b["w/0/1"] = ("w/0", 1, pad("b", "w/0/1")[:-1] + "x")
    verdict = verify_sql(HISTORY, read)
    assert verdict.corrupt == ["w/0/1"] and not verdict.ok


def test_an_outcome_without_its_invoke_is_a_broken_history() -> None:
    with pytest.raises(Exception, match="before its invoke"):
        verify_sql(history(("ack", "w/0/0")), tables([]))


def test_a_restarted_workload_ends_the_torn_line_of_the_killed_one(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    first = _History(path)
    first.write("invoke", "w/0/0")
    first.close()
    with open(path, "a") as file:
        file.write('{"op": "ack", "key": "w/0/')  # killed mid-line
    second = _History(path)
    second.write("invoke", "v/0/0")
    second.close()
    assert [op["key"] for op in read_sql_history(path)] == ["w/0/0", "v/0/0"]


def test_transactions_alternate_an_explicit_block_and_an_implicit_one() -> None:
    explicit, implicit = transaction_sql("w/0", 1), transaction_sql("w/0", 2)
    assert [s.split()[0] for s in split_statements(explicit)] == ["BEGIN;", "INSERT", "INSERT", "INSERT", "SELECT", "COMMIT;"]
    assert [s.split()[0] for s in split_statements(implicit)] == ["INSERT", "INSERT", "INSERT", "SELECT"]
    assert f"'{pad('a', 'w/0/2')}'" in implicit and f"'{pad('b', 'w/0/2')}'" in implicit
    assert len({len(pad("a", f"w/0/{n}")) for n in range(20)}) > 5  # rows of varying size


# ---------------------------------------------------------------------------------------------
# The smoke run (`make soak` runs the long one)
# ---------------------------------------------------------------------------------------------

SQL_CHAOS_SMOKE_SECONDS = 35


def test_sql_chaos_smoke_loses_no_acknowledged_transaction_and_its_traces_are_accepted(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "impl.cli", "chaos", "--sql", "--seconds", str(SQL_CHAOS_SMOKE_SECONDS), "--seed", "1",
         "--dir", str(tmp_path / "chaos")],
        cwd=REPO, capture_output=True, text=True, timeout=SQL_CHAOS_SMOKE_SECONDS + 240)
    print(result.stdout[-4000:])
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    out = result.stdout
    for line in ("lost 0 (must be 0)", "half-applied 0 (must be 0)", "phantom 0 (must be 0)", "corrupt 0 (must be 0)",
                 "counters off 0 (must be 0)", "traces: accepted", "chaos: PASSED"):
        assert line in out
    faults = out.split("faults: ")[1].split(";")[0]
    assert "kill_compute" in faults or "takeover" in faults, faults
    acked = re.search(r"transactions acknowledged ([\d,]+), lost", out)
    assert acked is not None and int(acked.group(1).replace(",", "")) > 0
    started = re.search(r"computes started (\d+)", out)
    assert started is not None and int(started.group(1)) >= 3  # c1, at least one replacement, the reader
