"""Every docstring example in lrkit runs and prints what it says (STYLE.md rule 7: "a short
example that runs in the tests"). Until the twenty-fifth round only ``schedules`` and
``curvature`` ran theirs, and ``monitor``'s module example printed six lists it did not show."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

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
