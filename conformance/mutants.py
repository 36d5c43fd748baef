"""The spec-mutant catalogue: every bug class the protocol guards against must be refuted.

A mutant is a TLC config ``spec/mutants/<Name>.cfg`` for the model module
``spec/MCProposerAcceptor.tla``. It opens with a header and marks the lines that inject the
bug::

    \\* mutant: BadQuorum
    \\* bug: (b) quorum of n/2 instead of a majority
    \\* expect: ElectionSafety
    ...
        IsQuorum <- BadQuorum   \\* MUTATION

A mutant is *refuted* when TLC on the mutant config reports a violation of exactly the
``expect`` invariant or property, and TLC on the *control* config (the same file with every
``\\* MUTATION`` line removed, i.e. the unmodified spec on the same, possibly steered, model)
finds no error. The control guards against a model that fails for reasons unrelated to the
bug, which would make the mutant look refuted while proving nothing.

Other specs keep their catalogue in a subdirectory, ``spec/mutants/<spec>/<Name>.cfg``, and
name their model module in one more header line, ``\\* module: MCHorizons.tla`` (a file in
the spec directory); a model config ``spec/models/<name>.cfg`` may name its module the same
way (``config_module``). ``load_mutants`` reads the top-level catalogue, and the
subdirectories' after it when asked.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import attrs

from conformance.tlc import Progress, TlcResult, run_tlc

__all__ = [
    "MODEL_MODULE",
    "Mutant",
    "MutantError",
    "MutantResult",
    "check_mutant",
    "config_module",
    "control_config",
    "load_mutants",
]

# The model module every mutant config is checked against, relative to the spec directory.
MODEL_MODULE = "MCProposerAcceptor.tla"

_HEADER_KEYS = ("mutant", "bug", "expect")
# Optional: the model module, when it is not MODEL_MODULE.
_MODULE_KEY = "module"
_HEADER_LINE = re.compile(r"\\\*\s*(\w+)\s*:\s*(.*?)\s*$")
_MUTATION_LINE = re.compile(r"\\\*\s*MUTATION\s*$")


class MutantError(Exception):
    """A mutant config is malformed or its files are missing; the message names the file."""


@attrs.frozen
class Mutant:
    """One entry of the catalogue, read from its config header."""

    name: str
    bug: str
    expect: str
    cfg: Path
    # The model module its header names (a path in the spec directory); None: MODEL_MODULE.
    module: Path | None = None


@attrs.frozen
class MutantResult:
    """TLC's verdicts on a mutant and on its control."""

    mutant: Mutant
    mutant_run: TlcResult
    control_run: TlcResult

    @property
    def violated(self) -> str | None:
        """What the mutant run violated (None if nothing)."""
        return self.mutant_run.violated

    @property
    def trace_length(self) -> int:
        """States in the mutant's counterexample."""
        return len(self.mutant_run.trace)

    @property
    def refuted(self) -> bool:
        """True iff the mutant violates ``expect`` and the control passes."""
        caught = self.mutant_run.outcome in ("invariant", "property")
        return caught and self.violated == self.mutant.expect and self.control_run.outcome == "ok"

    @property
    def reason(self) -> str:
        """Why the mutant is not refuted ("" if it is)."""
        run, control = self.mutant_run, self.control_run
        if run.outcome not in ("invariant", "property"):
            return f"mutant run ended {run.outcome}" + (f": {_first_line(run.message)}" if run.message else "")
        if self.violated != self.mutant.expect:
            return f"mutant violated {self.violated}, expected {self.mutant.expect}"
        if control.outcome != "ok":
            detail = control.violated or _first_line(control.message)
            return f"control run ended {control.outcome}" + (f": {detail}" if detail else "")
        return ""


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else ""


def _read_header(lines: list[str]) -> dict[str, str]:
    """The ``\\* key: value`` lines of the leading comment block, first value per key."""
    header: dict[str, str] = {}
    for line in lines:
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("\\*"):
            break  # the header is the leading comment block only
        match = _HEADER_LINE.match(stripped)
        if match and match.group(1) in (*_HEADER_KEYS, _MODULE_KEY):
            header.setdefault(match.group(1), match.group(2))
    return header


def _module_path(spec_dir: Path, name: str, config: Path) -> Path:
    if not name.endswith(".tla") or Path(name).name != name:
        raise MutantError(f"{config}: module {name!r} is not a .tla file name in the spec directory")
    return Path(spec_dir) / name


def config_module(config: Path, spec_dir: Path) -> Path:
    """The model module a TLC config is for: the one its ``\\* module:`` header line names.

    Args:
        config: a model or mutant config.
        spec_dir: the spec directory, where the module lives.

    Returns:
        ``spec_dir / <name>`` for a header line ``\\* module: <name>``, else
        ``spec_dir / MODEL_MODULE``. Whether it exists is for the caller to check.

    Raises:
        MutantError: the header names something other than a ``.tla`` file name.
    """
    name = _read_header(Path(config).read_text().splitlines()).get(_MODULE_KEY)
    return Path(spec_dir) / MODEL_MODULE if name is None else _module_path(spec_dir, name, config)


def _read_mutant(path: Path, spec_dir: Path, nested: bool) -> Mutant:
    """Parse one mutant config's header and check that it marks a mutation."""
    lines = path.read_text().splitlines()
    header = _read_header(lines)
    if nested and not header.get(_MODULE_KEY):
        raise MutantError(f"{path}: a mutant in a subdirectory needs a header line '\\* {_MODULE_KEY}: ...'")
    for key in _HEADER_KEYS:
        if not header.get(key):
            raise MutantError(f"{path}: missing header line '\\* {key}: ...'")
    if header["mutant"] != path.stem:
        raise MutantError(f"{path}: header names mutant {header['mutant']!r} but the file is {path.stem}.cfg")
    if not any(_MUTATION_LINE.search(line) for line in lines):
        raise MutantError(f"{path}: no line ends with '\\* MUTATION', so the mutant would equal its control")
    module = _module_path(spec_dir, header[_MODULE_KEY], path) if header.get(_MODULE_KEY) else None
    return Mutant(name=header["mutant"], bug=header["bug"], expect=header["expect"], cfg=path, module=module)


def load_mutants(spec_dir: Path, *, subdirectories: bool = False) -> list[Mutant]:
    """Read every ``spec_dir/mutants/*.cfg``, sorted by name.

    Args:
        spec_dir: the spec directory (holding ``mutants/`` and the model module).
        subdirectories: also read every ``spec_dir/mutants/<spec>/*.cfg`` (other specs'
            catalogues, each config naming its module), after the top-level ones, by
            subdirectory and then by name.

    Returns:
        The mutants; empty if the directory holds no configs.

    Raises:
        MutantError: the mutants directory is missing, or a config lacks a header line
            (``mutant``, ``bug``, ``expect``, and ``module`` in a subdirectory), names another
            mutant than its file, has no ``\\* MUTATION`` line, or two configs name one mutant.
    """
    directory = Path(spec_dir) / "mutants"
    if not directory.is_dir():
        raise MutantError(f"no mutants directory at {directory}")
    mutants = [_read_mutant(path, spec_dir, nested=False) for path in sorted(directory.glob("*.cfg"))]
    if subdirectories:
        for sub in sorted(p for p in directory.iterdir() if p.is_dir()):
            mutants += [_read_mutant(path, spec_dir, nested=True) for path in sorted(sub.glob("*.cfg"))]
        seen: dict[str, Path] = {}
        for mutant in mutants:
            if mutant.name in seen:
                raise MutantError(f"{mutant.cfg}: mutant {mutant.name} is also {seen[mutant.name]}")
            seen[mutant.name] = mutant.cfg
    return mutants


def control_config(mutant: Mutant) -> str:
    """The mutant's config with every ``\\* MUTATION`` line removed: the unmodified spec.

    Args:
        mutant: the mutant.

    Returns:
        The control config's text, with a first comment line saying what it is.
    """
    kept = [line for line in mutant.cfg.read_text().splitlines() if not _MUTATION_LINE.search(line)]
    note = f"\\* control run for mutant {mutant.name}: its MUTATION lines removed"
    return "\n".join([note, *kept]) + "\n"


def check_mutant(
    mutant: Mutant,
    *,
    timeout: float | None,
    module: Path | None = None,
    workers: int = 1,
    check_deadlock: bool = True,
    on_progress: Callable[[Progress], None] | None = None,
) -> MutantResult:
    """Run TLC on a mutant and on its control; see ``MutantResult.refuted``.

    Args:
        mutant: the mutant to check.
        timeout: seconds allowed for each of the two runs (a timeout is not a refutation).
        module: the model module; default the one the mutant's header names, else
            ``MODEL_MODULE`` in the spec directory that holds the mutant's ``mutants/``
            directory.
        workers: TLC worker threads.
        check_deadlock: False passes TLC's ``-deadlock`` to both runs.
        on_progress: passed to ``run_tlc`` for both runs.

    Returns:
        Both runs' results.

    Raises:
        MutantError: the model module does not exist.
        TlcSetupError: Java or the TLC jar is missing.

    Resource handling:
        The control config is written to a hidden temporary file next to the module (so
        it sits with the spec it configures) and deleted afterwards.
    """
    if module is None:
        module = mutant.module if mutant.module is not None else mutant.cfg.parent.parent / MODEL_MODULE
    module = Path(module)
    if not module.is_file():
        raise MutantError(f"{mutant.cfg}: model module {module} does not exist")
    options = dict(timeout=timeout, workers=workers, check_deadlock=check_deadlock, on_progress=on_progress)
    mutant_run = run_tlc(module, mutant.cfg, **options)
    fd, control_path = tempfile.mkstemp(prefix=f".control-{mutant.name}-", suffix=".cfg", dir=module.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(control_config(mutant))
        control_run = run_tlc(module, Path(control_path), **options)
    finally:
        os.unlink(control_path)
    return MutantResult(mutant=mutant, mutant_run=mutant_run, control_run=control_run)
