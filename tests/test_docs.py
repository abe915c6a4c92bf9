"""Every docstring example in lrkit runs and prints what it says (STYLE.md rule 7: "a short
example that runs in the tests"). Until the twenty-fifth round only ``schedules`` and
``curvature`` ran theirs, and ``monitor``'s module example printed six lists it did not show."""

from __future__ import annotations

import argparse
import doctest
import importlib
import importlib.util
import pkgutil
from pathlib import Path

import pytest

import lrkit

MODULES = sorted(m.name for m in pkgutil.walk_packages(lrkit.__path__, "lrkit.")
)


def test_every_module_is_collected() -> None:
    assert {"lrkit.finder", "lrkit.monitor", "lrkit.schedules", "lrkit.search._core",
            "lrkit.integrations.hf", "lrkit.optim.hd"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # an example that writes a file writes it here
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS,
                             report=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"


def _commands() -> dict[str, argparse.ArgumentParser]:
    """Every ``lrkit`` command's parser, by its name ("find", "bench methods", ...): each
    command's module fills in its own options only when it is the command run."""
    from lrkit.cli import build_parser

    found: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, name: str, top: str) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs and name:
            found[name] = parser
        for s in subs:
            for child, p in s.choices.items():
                if not name and child != top:
                    continue
                walk(p, f"{name} {child}".strip(), top)

    for top in ("schedule", "tasks", "find", "search", "monitor", "safe-lr", "tune", "compare",
                "bench"):
        walk(build_parser([top]), "", top)
    return found


def cli_reference() -> str:
    """docs/cli.md's text: each command's ``--help`` (``python -c "from tests.test_docs import
    cli_reference; print(cli_reference())" > docs/cli.md`` rewrites it)."""
    import os

    os.environ["COLUMNS"] = "100"  # argparse's wrapping width
    out = ["# The `lrkit` command line", "",
           "Every command's `--help`, as printed (`lrkit COMMAND --help`; `python -m lrkit` is "
           "the same command). The guides say when to use each: README.md, docs/tune.md, "
           "docs/search.md, docs/monitor.md, docs/curvature.md, docs/schedules.md.", ""]
    for name, parser in _commands().items():
        parser.prog = f"lrkit {name}"
        out += [f"## `lrkit {name}`", "", "```text", parser.format_help().rstrip(), "```", ""]
    return "\n".join(out)


def test_every_command_line_option_is_documented() -> None:
    """docs/cli.md names every option of every command (a flag only `--help` knew, e.g.
    `find --start-lr` or `search --heartbeat`, was in no document)."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "cli.md").read_text()
    commands = _commands()
    assert len(commands) >= 12
    for name, parser in commands.items():
        assert f"## `lrkit {name}`" in text, name
        section = text.split(f"## `lrkit {name}`", 1)[1].split("\n## ", 1)[0]
        for action in parser._actions:
            for flag in action.option_strings:
                assert flag in section, f"lrkit {name} {flag} is not in docs/cli.md"


def _submodule(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # (a parent that is a module, not a package)
        return False


def test_every_benchmark_script_imports_names_that_exist() -> None:
    """The benchmark scripts run on demand, not in the tests: a name lrkit dropped broke one
    after its hour of training (``bench_curvature.py --part batch``: ``report._pyplot``, in
    the twenty-fifth round). Every ``from lrkit... import name`` in them resolves."""
    import ast

    bench = Path(__file__).resolve().parent.parent / "benchmarks"
    checked = 0
    for script in sorted(bench.glob("*.py")):
        for node in ast.walk(ast.parse(script.read_text(), str(script))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "lrkit":
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name) or _submodule(
                        f"{node.module}.{alias.name}"), \
                        f"{script.name}: from {node.module} import {alias.name}"
                    checked += 1
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "lrkit":
                        importlib.import_module(alias.name)
                        checked += 1
    assert checked > 100
