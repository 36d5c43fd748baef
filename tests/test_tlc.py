"""Tests of conformance/tlc.py, conformance/mutants.py and the `paxwal tlc` commands.

Most tests parse TLC outputs recorded from the toy specs in tests/data/tlc/ (re-record with
tests/data/tlc/record.py); the ones marked ``tlc`` run Java and take a few seconds each.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conformance.mutants import (
    Mutant,
    MutantError,
    MutantResult,
    check_mutant,
    control_config,
    load_mutants,
)
from conformance.tlc import (
    ModelValue,
    Progress,
    Record,
    TlcResult,
    TlcSetupError,
    Unparsed,
    config_properties,
    find_jar,
    find_java,
    format_value,
    parse_output,
    parse_value,
    run_tlc,
)
from impl.cli import main

DATA = Path(__file__).parent / "data" / "tlc"
RECORDINGS = json.loads((DATA / "recordings.json").read_text())


def recorded(name: str) -> TlcResult:
    return parse_output((DATA / f"{name}.out").read_text(), RECORDINGS[name]["exit_code"])


def actions(result: TlcResult) -> list[str]:
    return [state.action for state in result.trace]


# ---------------------------------------------------------------------------------------
# parse_output on recordings
# ---------------------------------------------------------------------------------------


def test_recorded_exit_codes_are_tlc_2_15s():
    expected = {
        "counter_ok": 0,
        "assumption": 10,
        "counter_deadlock": 11,
        "rich_invariant": 12,
        "values_initial": 12,
        "action_property": 13,
        "temporal_stuttering": 13,
        "refinement_action": 13,
        "eval_error": 75,
        "parse_error": 150,
        "unknown_operator": 150,
        "counter_undefined": 151,
    }
    assert {name: RECORDINGS[name]["exit_code"] for name in expected} == expected


def test_ok_counts():
    result = recorded("counter_ok")
    assert (result.outcome, result.violated, result.message) == ("ok", None, "")
    assert (result.distinct_states, result.generated_states, result.depth) == (6, 6, 6)
    assert result.trace == ()
    assert 0 < result.seconds < 10


def test_deadlock_trace():
    result = recorded("counter_deadlock")
    assert result.outcome == "deadlock"
    assert result.message == "Deadlock reached."
    assert actions(result) == ["Initial predicate"] + ["Next"] * 5
    assert [s.values["x"] for s in result.trace] == [0, 1, 2, 3, 4, 5]
    assert [s.number for s in result.trace] == [1, 2, 3, 4, 5, 6]


def test_invariant_violation_with_rich_values():
    result = recorded("rich_invariant")
    assert (result.outcome, result.violated) == ("invariant", "SmallLog")
    assert result.message == "Invariant SmallLog is violated."
    assert (result.distinct_states, result.generated_states, result.depth) == (8, 8, 4)
    assert actions(result) == ["Initial predicate", "Send", "Send", "Send"]
    first, last = result.trace[0].values, result.trace[-1].values
    assert first == {
        "step": 0,
        "msgs": frozenset(),
        "log": (),
        "votes": Record({ModelValue("a1"): 0, ModelValue("a2"): 0}),
        "note": 'hello "world"',
        "neg": -1,
    }
    assert last["neg"] == -4 and last["note"] == "step with spaces"
    assert len(last["msgs"]) == 3  # printed over three lines
    assert Record(type="vote", from_=1) != Record(type="vote")
    message = Record(
        type="vote", bal=2, acks=frozenset({ModelValue("a1")}), hist=(2, -2), **{"from": ModelValue("a1")}
    )
    assert message in last["msgs"]
    assert last["log"][2] == Record(term=2, val=ModelValue("v1"))


def test_invariant_violated_by_initial_state():
    result = recorded("values_initial")
    assert (result.outcome, result.violated) == ("invariant", "Bad")
    assert result.message == "Invariant Bad is violated by the initial state"
    assert len(result.trace) == 1 and result.trace[0].action == "Initial predicate"
    v = result.trace[0].values
    a1, a2 = ModelValue("a1"), ModelValue("a2")
    assert v["iv"] == frozenset({1, 2, 3})  # printed as 1..3
    assert v["fseq"] == (10, 20, 30)  # a function on 1..3 prints as a sequence
    assert v["rec"] == Record(a="a", b="b")  # a function on strings prints as a record
    assert v["tup"] == Record({(1, 2): 1, (3, 4): 3})
    assert v["emptyf"] == ()  # printed as "<< >>"
    assert v["nested"] == Record({a1: Record({a1: frozenset({(a1, a1)})}), a2: Record({a1: frozenset({(a2, a1)})})})
    assert v["ss"] == frozenset({frozenset(), frozenset({1}), frozenset({1, 2})})
    assert v["str"] == "tab\there\nnew \\ back"
    assert v["sub"] == frozenset({frozenset(), frozenset({1}), frozenset({2}), frozenset({1, 2})})
    assert v["fnset"] == frozenset({(True,)})
    assert v["negdom"] == Record({-2: -2, -1: -1, 0: 0})
    assert v["big"] == (2**30, -(2**30))
    assert v["bools"] == frozenset({True, False})
    assert v["strdom"] == Record(x=Record(y=1))
    assert v["sym"] == frozenset({a1, a2})
    assert not any(isinstance(value, Unparsed) for value in v.values())


def test_action_property_violation():
    result = recorded("action_property")
    assert (result.outcome, result.violated) == ("property", "NeverDecreases")
    assert actions(result) == ["Initial predicate", "Up", "Up", "Up", "Reset"]
    assert result.trace[-1].values == {"x": 0}


def test_refinement_violations_name_what_tlc_names():
    action = recorded("refinement_action")
    assert action.outcome == "property"
    # TLC names the conjunct [][ANext]_n by its location, not the configured property.
    assert action.violated == "line 7, col 19 to line 7, col 29 of module AbsLog"
    initial = recorded("refinement_initial")
    assert (initial.outcome, initial.violated) == ("property", "AInit")
    assert [s.values for s in initial.trace] == [{"x": 0}]


def test_temporal_violation_with_stuttering():
    result = recorded("temporal_stuttering")
    assert (result.outcome, result.violated) == ("property", None)
    assert result.message == "Temporal properties were violated."
    assert actions(result) == ["Initial predicate", "Next", "Next", "Stuttering"]
    assert result.trace[-1].values == result.trace[-2].values
    assert result.depth == 4  # from the last progress report: no depth message here


def test_temporal_violation_with_lasso():
    result = recorded("temporal_lasso")
    assert result.outcome == "property"
    last = result.trace[-1]
    assert (last.number, last.action, last.loops_to) == (5, "Next", 1)
    assert last.values == result.trace[0].values == {"x": 0}


def test_parse_error_message_is_sanys_error():
    result = recorded("parse_error")
    assert result.outcome == "parse_error"
    first = result.message.splitlines()[0]
    assert first == '***Parse Error*** Encountered "====" at line 8, column 1 and token "/\\\\"'
    assert "Residual stack trace" not in result.message and "Junction" not in result.message
    assert "ParseError.tla" in result.message


def test_semantic_error_message():
    result = recorded("unknown_operator")
    assert result.outcome == "parse_error"
    assert result.message == "line 6, col 18 to line 6, col 26 of module UnknownOp: Unknown operator: `Increment'."


def test_evaluation_error_keeps_trace_and_positions():
    result = recorded("eval_error")
    assert result.outcome == "error" and result.violated is None
    assert "Attempted to apply tuple" in result.message and "out of domain" in result.message
    assert "Line 6, column 24 to line 6, column 36 in EvalError" in result.message
    assert "TLC threw an unexpected exception" not in result.message
    assert [s.values for s in result.trace] == [{"x": (1, 2)}]


def test_assumption_and_config_errors():
    assumption = recorded("assumption")
    assert assumption.outcome == "error"
    assert assumption.message == "Assumption line 5, col 8 to line 5, col 12 of module Assume is false."
    undefined = recorded("counter_undefined")
    assert undefined.outcome == "error" and "NoSuchInvariant" in undefined.message


def test_simulation_output():
    result = recorded("rich_simulate")
    assert (result.outcome, result.violated) == ("invariant", "SmallLog")
    assert result.distinct_states is None  # simulation keeps no distinct-state count
    assert result.generated_states > 0
    assert actions(result)[0] == "Initial predicate" and len(result.trace) == 4


def test_nested_messages_and_missing_output():
    text = (
        "@!@!@STARTMSG 1000:1 @!@!@\n"
        "TLC threw an unexpected exception.\n"
        "The exception was a tlc2.tool.ConfigFileException\n"
        ": @!@!@STARTMSG 5006:0 @!@!@\n"
        "TLC found an error in the configuration file at line 3\n"
        "@!@!@ENDMSG 5006 @!@!@\n"
        "@!@!@ENDMSG 1000 @!@!@\n"
    )
    result = parse_output(text, 255)
    assert result.outcome == "error"
    assert result.message == (
        "The exception was a tlc2.tool.ConfigFileException: TLC found an error in the configuration file at line 3"
    )
    crashed = parse_output("Error: Could not find or load main class tlc2.TLC\n", 1)
    assert crashed.outcome == "error" and "could not find or load" in crashed.message.lower()
    # Killed while printing: an unterminated message still counts.
    cut = parse_output("@!@!@STARTMSG 2110:1 @!@!@\nInvariant Inv is violated.\n", -9)
    assert (cut.outcome, cut.violated) == ("invariant", "Inv")


def test_config_properties():
    cfg = "\\* PROPERTY Fake\nSPECIFICATION Spec\nPROPERTIES\n  Refinement (* old: Other *)\n  Live\nINVARIANT TypeOK\n"
    assert config_properties(cfg) == ["Refinement", "Live"]


# ---------------------------------------------------------------------------------------
# parse_value
# ---------------------------------------------------------------------------------------

A1, A2 = ModelValue("a1"), ModelValue("a2")


@pytest.mark.parametrize(
    "text, value",
    [
        ("-17", -17),
        ("TRUE", True),
        ("<<>>", ()),
        ("<< >>", ()),
        ("{}", frozenset()),
        ("{ }", frozenset()),
        ('"a \\"quoted\\" \\\\ word"', 'a "quoted" \\ word'),
        ('"  spaces  "', "  spaces  "),
        ("a1", A1),
        ("-2..1", frozenset({-2, -1, 0, 1})),
        (
            "{[a |-> {[b |-> <<1, -1>>]}], [a |-> {}]}",
            frozenset({Record(a=frozenset({Record(b=(1, -1))})), Record(a=frozenset())}),
        ),
        ("(a1 :> <<>> @@ a2 :> (1 :> a1))", Record({A1: (), A2: Record({1: A1})})),
        ("(<<a1, 1>> :> TRUE)", Record({(A1, 1): True})),
        ("{\n  <<1,\n 2>> ,\n\t<<3, 4>>\n}", frozenset({(1, 2), (3, 4)})),
        ('[x |-> "", y |-> FALSE]', Record(x="", y=False)),
    ],
)
def test_parse_value(text, value):
    assert parse_value(text) == value


def test_parsed_types_are_distinct():
    assert parse_value("a1") != "a1"  # a model value is not a string
    assert parse_value('"a1"') == "a1"
    assert type(parse_value("TRUE")) is bool and type(parse_value("1")) is int
    record = parse_value("[b |-> 2, a |-> 1]")
    assert record == parse_value("[a |-> 1, b |-> 2]")
    assert hash(record) == hash(parse_value("[a |-> 1, b |-> 2]"))
    assert record["a"] == 1 and list(record) == ["b", "a"] and len(record) == 2
    with pytest.raises(AttributeError):
        record.x = 1


@pytest.mark.parametrize("text", ["", "<<1, 2", "{1 2}", "[a 1]", '"open', "(a1 :> 1", "<<1>> junk", "@", '"\\q"'])
def test_parse_value_rejects_bad_input(text):
    with pytest.raises(ValueError, match="position"):
        parse_value(text)


# A test-only printer, independent of format_value: it writes TLC's syntax with a chosen
# separator after commas, so the round trip also covers line breaks inside values.
def tlc_print(value, sep):
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'
    if isinstance(value, ModelValue):
        return value.name
    if isinstance(value, tuple):
        return "<<" + ("," + sep).join(tlc_print(v, sep) for v in value) + ">>"
    if isinstance(value, frozenset):
        return "{" + ("," + sep).join(tlc_print(v, sep) for v in value) + "}"
    if all(isinstance(k, str) and re.fullmatch(r"[a-z][a-z0-9_]*", k) for k in value):
        return "[" + ("," + sep).join(f"{k} |-> {tlc_print(v, sep)}" for k, v in value.items()) + "]"
    return "(" + (sep + "@@ ").join(f"{tlc_print(k, sep)} :> {tlc_print(v, sep)}" for k, v in value.items()) + ")"


identifiers = st.from_regex(r"[a-z][a-z0-9_]{0,5}", fullmatch=True)  # lower case: never TRUE/FALSE
model_values = identifiers.map(ModelValue)
scalars = st.one_of(
    st.integers(-(2**31), 2**31 - 1),
    st.booleans(),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=8),
    model_values,
)
keys = st.one_of(model_values, st.integers(-5, 5), st.text(max_size=4))
tlc_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(tuple),
        st.frozensets(inner, max_size=4),
        st.dictionaries(identifiers, inner, min_size=1, max_size=3).map(Record),
        # An empty function prints as <<>>, so it would come back as a tuple.
        st.dictionaries(keys, inner, min_size=1, max_size=3).map(Record),
    ),
    max_leaves=12,
)


@given(tlc_values, st.sampled_from([" ", "", "\n    ", "\t"]))
def test_parse_value_round_trip(value, sep):
    assert parse_value(tlc_print(value, sep)) == value


@given(tlc_values)
def test_format_value_round_trip(value):
    assert parse_value(format_value(value)) == value


# ---------------------------------------------------------------------------------------
# Running TLC
# ---------------------------------------------------------------------------------------


@pytest.fixture
def tlc_ready():
    try:
        find_java()
        find_jar()
    except TlcSetupError as exc:
        pytest.skip(str(exc))


def java_pid(result: TlcResult) -> int:
    return int(re.search(r"\[pid: (\d+)\]", result.output).group(1))


def test_jar_is_the_pinned_one():
    try:
        jar = find_jar()
    except TlcSetupError as exc:
        pytest.skip(str(exc))
    assert jar.name == "tla2tools.jar" and jar.is_file()


@pytest.mark.tlc
def test_run_ok_with_progress(tlc_ready):
    seen: list[Progress] = []
    result = run_tlc(DATA / "Counter.tla", DATA / "Counter.cfg", check_deadlock=False, on_progress=seen.append)
    assert (result.outcome, result.distinct_states, result.depth, result.exit_code) == ("ok", 6, 6, 0)
    assert seen and all(isinstance(p, Progress) for p in seen)
    assert seen[-1].distinct == 6 and seen[-1].generated == 6


@pytest.mark.tlc
def test_run_invariant_violation(tlc_ready):
    result = run_tlc(DATA / "Rich.tla", DATA / "Rich.cfg")
    assert (result.outcome, result.violated, result.exit_code) == ("invariant", "SmallLog", 12)
    assert actions(result) == ["Initial predicate", "Send", "Send", "Send"]


@pytest.mark.tlc
def test_run_names_the_single_configured_property(tlc_ready):
    result = run_tlc(DATA / "Refine.tla", DATA / "Refine_lasso.cfg")
    assert (result.outcome, result.violated) == ("property", "EventuallyFive")


@pytest.mark.tlc
def test_simulation_timeout_is_ok_and_kills_java(tlc_ready):
    started = time.monotonic()
    result = run_tlc(
        DATA / "Endless.tla", DATA / "Endless.cfg", simulate=(50, 1), timeout=3, check_deadlock=False
    )
    assert time.monotonic() - started < 15
    assert result.outcome == "ok" and result.message == ""
    with pytest.raises(ProcessLookupError):
        os.kill(java_pid(result), 0)


@pytest.mark.tlc
def test_model_checking_timeout_is_an_error(tlc_ready):
    result = run_tlc(DATA / "Endless.tla", DATA / "Endless.cfg", timeout=2)
    assert (result.outcome, result.message) == ("error", "timed out after 2 s")
    with pytest.raises(ProcessLookupError):
        os.kill(java_pid(result), 0)


def test_simulation_needs_a_timeout():
    with pytest.raises(ValueError, match="timeout"):
        run_tlc(DATA / "Endless.tla", DATA / "Endless.cfg", simulate=(10, 1))


# ---------------------------------------------------------------------------------------
# Mutants
# ---------------------------------------------------------------------------------------

HEADER = "\\* mutant: {name}\n\\* bug: (b) quorum of n/2\n\\* expect: ElectionSafety\n"
BODY = (
    "CONSTANTS\n    N = 3\n    IsQuorum <- BadQuorum   \\* MUTATION\n"
    "INIT Init\nNEXT Next \\*   MUTATION  \nINVARIANT ElectionSafety\n"
)


def write_mutant(spec: Path, name: str, text: str) -> Path:
    (spec / "mutants").mkdir(parents=True, exist_ok=True)
    path = spec / "mutants" / f"{name}.cfg"
    path.write_text(text)
    return path


def test_load_mutants_reads_headers(tmp_path):
    write_mutant(tmp_path, "BadQuorum", HEADER.format(name="BadQuorum") + BODY)
    write_mutant(tmp_path, "Another", "\n" + HEADER.format(name="Another") + "\\* more notes\n" + BODY)
    mutants = load_mutants(tmp_path)
    assert [m.name for m in mutants] == ["Another", "BadQuorum"]
    cfg = tmp_path / "mutants" / "BadQuorum.cfg"
    assert mutants[1] == Mutant("BadQuorum", "(b) quorum of n/2", "ElectionSafety", cfg)


def test_control_config_drops_mutation_lines(tmp_path):
    write_mutant(tmp_path, "BadQuorum", HEADER.format(name="BadQuorum") + BODY)
    control = control_config(load_mutants(tmp_path)[0])
    assert "\\* MUTATION" not in control and "<- BadQuorum" not in control and "NEXT" not in control
    assert "    N = 3\nINIT Init\nINVARIANT ElectionSafety\n" in control
    assert control.startswith("\\* control run for mutant BadQuorum")


@pytest.mark.parametrize(
    "text, error",
    [
        (HEADER.format(name="M").replace("\\* expect: ElectionSafety\n", "") + BODY, "missing header line '.. expect"),
        (HEADER.format(name="M").replace("bug:", "bug :").replace("(b) quorum of n/2", "") + BODY, "'\\\\\\* bug"),
        ("INIT Init\n" + HEADER.format(name="M") + BODY, "'\\\\\\* mutant"),  # header after the first line
        (HEADER.format(name="Other") + BODY, "header names mutant 'Other'"),
        (HEADER.format(name="M") + "INIT Init\n", "no line ends with"),
    ],
)
def test_load_mutants_errors_name_the_file(tmp_path, text, error):
    path = write_mutant(tmp_path, "M", text)
    with pytest.raises(MutantError, match=error) as info:
        load_mutants(tmp_path)
    assert str(path) in str(info.value)


def test_load_mutants_without_directory(tmp_path):
    with pytest.raises(MutantError, match="no mutants directory"):
        load_mutants(tmp_path)


def fake_result(outcome: str, violated: str | None = None, trace_length: int = 0) -> TlcResult:
    return TlcResult(outcome, violated, "", None, None, None, 1.0, 0, (None,) * trace_length, "")


@pytest.mark.parametrize(
    "mutant_run, control_run, refuted, reason",
    [
        (fake_result("invariant", "ElectionSafety", 5), fake_result("ok"), True, ""),
        (fake_result("invariant", "TypeOK", 2), fake_result("ok"), False, "violated TypeOK, expected ElectionSafety"),
        (fake_result("invariant", "ElectionSafety", 5), fake_result("deadlock"), False, "control run ended deadlock"),
        (fake_result("ok"), fake_result("ok"), False, "mutant run ended ok"),
        (fake_result("deadlock"), fake_result("ok"), False, "mutant run ended deadlock"),
    ],
)
def test_mutant_verdict(mutant_run, control_run, refuted, reason):
    mutant = Mutant("BadQuorum", "bug", "ElectionSafety", Path("BadQuorum.cfg"))
    result = MutantResult(mutant, mutant_run, control_run)
    assert result.refuted is refuted
    assert reason in result.reason and (result.reason == "") is refuted


@pytest.fixture
def spec_copy(tmp_path):
    return Path(shutil.copytree(DATA / "spec", tmp_path / "spec"))


@pytest.mark.tlc
def test_check_mutant_runs_mutant_and_control(tlc_ready, spec_copy):
    (mutant,) = load_mutants(spec_copy)
    before = sorted(p.name for p in spec_copy.iterdir())
    result = check_mutant(mutant, timeout=60, check_deadlock=False)
    assert result.refuted, result.reason
    assert result.violated == "ElectionSafety" and result.trace_length >= 3
    assert result.control_run.outcome == "ok"
    assert sorted(p.name for p in spec_copy.iterdir()) == before  # the control file is gone


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------


def test_cli_help(capsys):
    assert main(["--help"]) == 0
    assert "tlc" in capsys.readouterr().out
    assert main(["tlc", "check", "--help"]) == 0
    assert "--model" in capsys.readouterr().out
    assert main(["tlc", "mutants", "--help"]) == 0
    assert "--only" in capsys.readouterr().out


def test_cli_unknown_model_lists_models(capsys, spec_copy):
    assert main(["--spec-dir", str(spec_copy), "tlc", "check", "--model", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "unknown model 'nope'" in err and "broken, ci" in err


def test_cli_spec_dir_from_environment(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("PAXWAL_SPEC_DIR", str(tmp_path / "missing"))
    assert main(["tlc", "check"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing does not exist" in err


def test_cli_usage_errors_are_one_line(capsys):
    assert main(["tlc", "check", "--workers", "many"]) == 2
    assert main(["tlc"]) == 2
    assert main(["tlc", "mutants", "--only", "Nope", "--spec-dir", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 3 and all(line.startswith("paxwal: error: ") for line in err.splitlines())


def test_cli_unknown_mutant(capsys, spec_copy):
    assert main(["--spec-dir", str(spec_copy), "tlc", "mutants", "--only", "Nope"]) == 2
    assert "unknown mutant(s) Nope; available: BadQuorum" in capsys.readouterr().err


@pytest.mark.tlc
def test_cli_check_ok_and_violation(tlc_ready, capsys, spec_copy):
    assert main(["--spec-dir", str(spec_copy), "tlc", "check"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"outcome\s+ok", out) and re.search(r"distinct states\s+41", out)
    assert main(["--spec-dir", str(spec_copy), "tlc", "check", "--model", "broken"]) == 1
    out = capsys.readouterr().out
    assert "invariant violated: ElectionSafety" in out
    assert "Initial predicate" in out and "Elect" in out and "leader = <<TRUE, TRUE>>" in out


@pytest.mark.tlc
def test_cli_mutants_table(tlc_ready, capsys, spec_copy):
    assert main(["--spec-dir", str(spec_copy), "tlc", "mutants", "--timeout", "60"]) == 0
    captured = capsys.readouterr()
    assert "[1/1] BadQuorum" in captured.err
    header, row = captured.out.splitlines()[:2]
    assert header.split()[:4] == ["mutant", "bug", "expected", "violated"]
    assert row.startswith("BadQuorum") and row.endswith("refuted") and "NOT" not in row


def test_result_outcome_is_validated():
    with pytest.raises(ValueError):
        attrs.evolve(fake_result("ok"), outcome="bogus")
