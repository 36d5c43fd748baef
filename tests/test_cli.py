"""The `paxwal sim` and `paxwal bench` commands (impl/cli/); `paxwal tlc` is in test_tlc.py."""

from __future__ import annotations

import json

import pytest

from impl import proposer as proposer_module
from impl.cli import main


def test_sim_one_seed_prints_options_result_and_run_directory(capsys, tmp_path):
    assert main(["sim", "--seed", "3", "--steps", "800", "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("seed=3 acceptors=")
    assert "ok: " in out and "appends acknowledged" in out
    assert "trace: accepted by the spec" in out
    assert (tmp_path / "run" / "all.ndjson").stat().st_size > 0
    assert json.loads((tmp_path / "run" / "run.json").read_text())["result"]["ok"] is True


def test_sim_campaign_summarises(capsys):
    assert main(["sim", "--seeds", "0:6", "--steps", "800", "--jobs", "2"]) == 0
    captured = capsys.readouterr()
    assert "6 runs (seeds 0..5, 800 fault steps each), 0 failed" in captured.out
    assert "6/6 runs, 0 failed" in captured.err  # the progress bar's last line


@pytest.mark.trace_rejected
def test_sim_campaign_reports_the_seed_that_reproduces_a_failure(capsys, monkeypatch, tmp_path):
    """With a planted bug (BadQuorum), the campaign fails, names seeds and reruns them traced."""
    monkeypatch.setattr(proposer_module.ProposerCore, "quorum", property(lambda self: 1))
    code = main(["sim", "--seeds", "0:8", "--steps", "800", "--jobs", "1", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAILED: " in out and "reproduce: paxwal sim --seed " in out
    failed = [line.split()[1] for line in out.splitlines() if line.startswith("seed ") and "FAILED" in line]
    assert failed and all((tmp_path / f"seed-{seed}" / "run.json").exists() for seed in failed)


def test_sim_usage_errors_are_one_line(capsys):
    assert main(["sim", "--seeds", "5:2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "A < B" in err
    assert main(["sim"]) == 2  # --seed or --seeds is required


def test_bench_trace_prints_ratios_to_its_baseline(capsys):
    assert main(["bench", "trace", "--seconds", "0.3", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["benchmark"] == "trace"
    assert figures["us_per_append_stripped"] > 0
    assert figures["ratio_off_to_stripped"] > 0 and figures["ratio_on_to_stripped"] > 0


def test_bench_sim_prints_runs_per_minute(capsys):
    assert main(["bench", "sim", "--seconds", "1"]) == 0
    out = capsys.readouterr().out
    assert "runs_per_minute_tracing_off" in out and "ratio_on_to_off" in out


def test_bench_replay_prints_rates_and_ratio_to_parsing(capsys):
    assert main(["bench", "replay", "--seconds", "0.3", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["benchmark"] == "replay"
    assert figures["events_large_run"] > figures["events_small_run"] > 0
    assert figures["replay_events_per_second_large"] > 0 and figures["parse_json_loads_events_per_second"] > 0
    assert figures["ratio_replay_to_parse"] > 0 and figures["ratio_large_to_small"] > 0


def test_help_lists_the_new_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "sim" in out and "bench" in out
    assert main(["bench", "--help"]) == 0
    assert "trace:" in capsys.readouterr().out


def test_every_command_is_in_the_lazy_map_and_builds_alone() -> None:
    import argparse

    from impl.cli import COMMANDS, build_parser

    def commands(parser: argparse.ArgumentParser) -> list[str]:
        (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        return list(sub.choices)

    assert commands(build_parser()) == list(COMMANDS)
    for command in COMMANDS:
        assert command in commands(build_parser(command))
