"""`paxwal demo` (`make demo`): the failover walk-through runs end to end and every check holds."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_walk_through_holds_every_check(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "impl.cli", "demo", "--dir", str(tmp_path / "demo")], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    print(result.stdout[-4000:])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    out = result.stdout
    assert "FAILED" not in out and "demo: every check held" in out
    assert re.search(r"ok: c2 is at the same LSN: ([0-9A-F]+/[0-9A-F]+) \(c1 was at \1\)", out)
    assert re.search(r"failover: \d+ ms from the kill of c1 to c2 answering its first query", out)
    assert "ok: the branch shows the older data" in out and "ok: the snapshot refuses writes" in out
    assert "ok: every timeline's traces are a behaviour of the spec" in out
    # The demo's cluster stopped: no compute, pageserver or acceptor left running.
    assert not list((tmp_path / "demo" / "pids").glob("*.pid"))


def test_the_demo_refuses_a_directory_holding_a_cluster(tmp_path: Path) -> None:
    (tmp_path / "cluster.json").write_text("{}")
    result = subprocess.run([sys.executable, "-m", "impl.cli", "demo", "--dir", str(tmp_path)], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "holds a cluster already" in result.stderr
