"""The lrkit command, end to end on real files (in-process through cli.main)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from lrkit import schedules
from lrkit.cli import main
from tests.tiny_task import make_task

TINY = "tests.tiny_task:make_task"


def loss_bug_task():
    """A user's task whose loss has a bug: a TypeError raised in the user's own code."""
    def loss(model, batch):
        return model(batch[0]).sum() + "oops"

    return dataclasses.replace(make_task(), loss=loss)


def builder_bug_task():
    """A user's task builder that raises a ValueError (as ``json.loads`` of a bad file would)."""
    raise ValueError("a bug in the user's builder")


def test_python_dash_m_lrkit_is_the_command(tmp_path):
    """``python -m lrkit`` failed ("No module named lrkit.__main__")."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "lrkit", "schedule", "list"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-len(schedules.names()):] == schedules.names()
    bad = subprocess.run([sys.executable, "-m", "lrkit", "tune", "--task", "no-such-task"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no-such-task" in bad.stderr


def test_a_closed_pipe_and_an_ascii_terminal_are_not_errors(tmp_path):
    """`lrkit tasks | head -1` printed a BrokenPipeError traceback (and `find --json x | head`
    lost the file); with PYTHONIOENCODING=ascii a finished command's λ turned into
    "lrkit: error: 'ascii' codec can't encode" in place of its result."""
    import os
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "lrkit", "find", "--task", "logreg",
                             "--no-progress", "--json", "r.json"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader has gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in err
    assert json.loads((tmp_path / "r.json").read_text())["suggestion"]["lr"] > 0
    out = subprocess.run([sys.executable, "-m", "lrkit", "safe-lr", "--task", "logreg",
                          "--no-test", "--no-progress"], cwd=tmp_path, capture_output=True,
                         env={**os.environ, "PYTHONIOENCODING": "ascii"}, timeout=120)
    assert out.returncode == 0 and b"2/\\u03bb = 0.586" in out.stdout, out.stderr


def test_paths_after_equals_signs_and_without_suffixes(tmp_path, monkeypatch, capsys):
    """`--json=~/r.json` made a folder named '~' (the shell leaves `~` after '=' alone);
    `--plot fp/noext` said "wrote fp/noext" and wrote fp/noext.png."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert main(["find", "--task", TINY, "--no-progress", "--num-iter", "30",
                 "--json=~/r.json", "--plot", "fp/noext"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "r.json").is_file() and not (tmp_path / "~").exists()
    assert (tmp_path / "fp" / "noext.png").is_file() and "wrote fp/noext.png" in out


def test_schedule_demo_and_list(tmp_path, capsys):
    out = tmp_path / "demo.png"
    assert main(["schedule", "demo", "-o", str(out), "--steps", "200"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["schedule", "list"]) == 0
    assert capsys.readouterr().out.split()[-len(schedules.names()):] == schedules.names()


def test_schedule_plot_is_a_dry_run_with_horizon_warning(tmp_path, capsys):
    spec = json.dumps({"name": "onecycle", "max_lr": 0.1, "total_steps": 100})
    out = tmp_path / "p.png"
    assert main(["schedule", "plot", "--spec", spec, "--steps", "150", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    s = schedules.onecycle(0.1, 100)
    assert f"step 0: {s(0):.4g}" in text
    assert "run past this schedule's horizon (100 steps)" in text
    assert out.exists()


def test_bad_spec_is_a_clear_error(tmp_path, capsys):
    spec = json.dumps({"name": "onecyle", "max_lr": 0.1, "total_steps": 100})
    assert main(["schedule", "plot", "--spec", spec, "--steps", "10",
                 "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'onecycle'" in err
    assert not (tmp_path / "x.png").exists()


def test_find_writes_json_and_plot(tmp_path, capsys):
    js, png = tmp_path / "r.json", tmp_path / "r.png"
    assert main(["find", "--task", TINY, "--num-iter", "40", "--json", str(js), "--plot", str(png),
                 "--no-progress"]) == 0
    data = json.loads(js.read_text())
    assert len(data["lrs"]) == data["stopped_at"] + 1 <= 40
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "suggested lr" in capsys.readouterr().out or data["suggestion"]["lr"] is None


def test_output_paths_are_checked_before_the_work(tmp_path, monkeypatch, capsys):
    """``--json missing/dir/r.json`` ran the whole range test, then raised FileNotFoundError:
    its folder is now made first; a folder in its place is refused before any step."""
    from lrkit import finder

    js = tmp_path / "new" / "dir" / "r.json"
    assert main(["find", "--task", TINY, "--num-iter", "40", "--json", str(js),
                 "--no-progress"]) == 0
    assert json.loads(js.read_text())["lrs"]
    ran = []
    monkeypatch.setattr(finder, "find_lr", lambda *a, **k: ran.append(1))
    for flag in ("--json", "--plot"):
        assert main(["find", "--task", TINY, flag, str(tmp_path), "--no-progress"]) == 2
        assert f"{flag}: {str(tmp_path)!r} is a folder" in capsys.readouterr().err
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["search", "--task", TINY, "--plot", str(blocker / "p.png")]) == 2
    assert "--plot: cannot make the folder" in capsys.readouterr().err
    assert ran == []


def test_bench_oracle_writes_json_and_png(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LRKIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "bench"
    assert main(["bench", "oracle", "--task", TINY, "--workers", "1", "--points", "13",
                 "--step-decades", "0.5", "--seeds", "3", "--out", str(out)]) == 0
    o = json.loads((out / "oracle-tiny.json").read_text())
    assert len(o["grid"]) >= 13 and len(o["seeds"]) == 3
    assert o["band"][0] <= o["best_lr"] <= o["band"][1]
    assert (out / "oracle-tiny.png").exists()
    assert "tiny: best LR" in capsys.readouterr().out


def test_bench_methods_names_an_unknown_method_before_running_the_oracle(tmp_path, monkeypatch,
                                                                        capsys):
    monkeypatch.setenv("LRKIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "bench"
    assert main(["bench", "methods", "--task", TINY, "--method", "fastai-valey",
                 "--out", str(out)]) == 2
    assert "did you mean 'fastai-valley'" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "cache").exists()  # no oracle run was spent
    # a misspelt optimizer likewise (it was refused after the oracle's whole grid)
    assert main(["bench", "methods", "--task", TINY, "--optimizers", "sgd,adamm",
                 "--out", str(out)]) == 2
    assert "optimizer" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_bench_seeds_is_a_count_checked_before_any_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LRKIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "bench"
    assert main(["bench", "oracle", "--task", TINY, "--seeds", "2", "--out", str(out)]) == 2
    assert "--seeds is the number of oracle seeds" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_unknown_task_is_a_clear_error(capsys):
    assert main(["find", "--task", "digitz", "--no-progress"]) == 2
    assert "did you mean 'digits'" in capsys.readouterr().err


def test_task_names_are_matched_case_insensitively(monkeypatch):
    """``--task DIGITS`` was an unknown task with no "did you mean"; built-in names are
    matched in any case, references and unknown names are passed on as given."""
    import lrkit.finder

    seen = []

    def fake_find(task, **kwargs):
        seen.append(task.name)
        raise KeyboardInterrupt

    monkeypatch.setattr(lrkit.finder, "find_lr", fake_find)
    assert main(["find", "--task", "DIGITS", "--no-progress"]) == 130
    assert seen == ["digits"]
    from lrkit.cli import _builtin_name

    assert [_builtin_name(v) for v in ("Digits-Small", TINY, "nope")] == [
        "digits-small", TINY, "nope"]


def test_tune_ctrl_c_hint_quotes_the_folder(tmp_path, monkeypatch, capsys):
    """The resume hint is pasted into a shell: a folder with a space is quoted."""
    import shlex

    import lrkit.tune

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(lrkit.tune, "_tune", interrupted)
    out = tmp_path / "my run"
    assert main(["tune", "--task", TINY, "--out", str(out), "--no-progress"]) == 130
    hint = capsys.readouterr().err.strip().splitlines()[-1]
    assert hint.endswith(f"lrkit tune --resume {shlex.quote(str(out))}")
    assert shlex.split(hint.split("continue with ")[1])[-1] == str(out)
    # a folder starting with '-': pasted as printed, "--resume -lead" read it as an option
    monkeypatch.chdir(tmp_path)
    assert main(["tune", "--task", TINY, "--out=-lead", "--no-progress"]) == 130
    hint = capsys.readouterr().err.strip().splitlines()[-1]
    args = shlex.split(hint.split("continue with ")[1])
    assert args == ["lrkit", "tune", "--resume=-lead"]
    from lrkit.cli import build_parser

    assert build_parser(args[1:]).parse_args(args[1:]).resume == "-lead"


def test_ctrl_c_is_one_line_that_says_how_to_go_on(tmp_path, monkeypatch, capsys):
    """Ctrl-C ends a command with exit status 130 and a line, not a traceback: search says its
    study keeps the finished trials (a rerun retries the interrupted one), the others say so."""
    import lrkit.finder
    import lrkit.search._core

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(lrkit.search._core, "search", interrupted)
    assert main(["search", "--task", "digits", "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert "interrupted: the study in sqlite:///" in err and "the same command goes on" in err
    monkeypatch.setattr(lrkit.finder, "find_lr", interrupted)
    assert main(["find", "--task", "digits"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "lrkit: interrupted" and "Traceback" not in err


def test_an_error_in_the_users_code_keeps_its_traceback(tmp_path, capsys):
    """Every ValueError/TypeError was one line ``lrkit: error: ...``, a bug in the user's own
    loss or builder too (no file, no line); now only lrkit's own checks are one line."""
    with pytest.raises(TypeError, match="unsupported operand") as info:
        main(["find", "--task", "tests.test_cli:loss_bug_task", "--num-iter", "20",
              "--no-progress"])
    assert (Path(str(info.traceback[-1].path)).name, info.traceback[-1].name) == (
        "test_cli.py", "loss")
    with pytest.raises(ValueError, match="a bug in the user's builder") as info:
        main(["tune", "--task", "tests.test_cli:builder_bug_task", "--out", str(tmp_path / "r"),
              "--no-progress"])
    assert info.traceback[-1].name == "builder_bug_task"
    # lrkit's own argument checks stay one line, exit status 2
    assert main(["tune", "--task", TINY, "--budget", "0.5", "--out", str(tmp_path / "b"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lrkit: error: budget must be > 1") and "Traceback" not in err


def test_schedule_figure_paths_and_steps_are_checked_first(tmp_path, capsys):
    """``schedule demo/plot -o missing/dir/x.png`` raised FileNotFoundError after drawing;
    ``-o noext`` said "wrote noext" but wrote noext.png; ``--steps 0`` named step_size."""
    spec = json.dumps({"name": "cosine", "lr": 0.1, "T_max": 100})
    deep = tmp_path / "no" / "such" / "dir" / "x.png"
    assert main(["schedule", "demo", "-o", str(deep), "--steps", "100"]) == 0
    assert deep.read_bytes()[:4] == b"\x89PNG"
    noext = tmp_path / "noext"
    assert main(["schedule", "plot", "--spec", spec, "--steps", "10", "-o", str(noext)]) == 0
    assert f"wrote {noext}.png" in capsys.readouterr().out
    assert (tmp_path / "noext.png").read_bytes()[:4] == b"\x89PNG" and not noext.exists()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    refused = {("demo", "-o", str(blocker / "x.png")): "--out: cannot make the folder",
               ("demo", "-o", str(tmp_path / "x.txt")): "--out: ",
               ("demo", "--steps", "3"): "--steps must be an integer >= 8, got 3",
               ("plot", "--spec", spec, "--steps", "0"): "--steps must be an integer >= 1, got 0"}
    for args, message in refused.items():
        out = [] if "-o" in args else ["-o", str(tmp_path / "s.png")]
        assert main(["schedule", *args, *out]) == 2
        assert capsys.readouterr().err.startswith(f"lrkit: error: {message}")
    assert not (tmp_path / "x.txt").exists() and not (tmp_path / "s.png").exists()


def test_schedule_overflow_is_one_line_and_long_triangular2_runs(tmp_path, capsys):
    """``exponential`` with ``gamma=2`` over 2000 steps printed an OverflowError traceback (exit
    status 1); ``cyclic(mode="triangular2")`` over 5000 steps overflowed from step 2048."""
    spec = json.dumps({"name": "exponential", "lr": 0.1, "gamma": 2.0})
    out = tmp_path / "exp.png"
    assert main(["schedule", "plot", "--spec", spec, "--steps", "2000", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == ("lrkit: error: gamma ** 1999 = 2.0 ** 1999 overflows a float at step 1999: a "
                   "gamma > 1 grows the LR without bound; end the run before this step or use "
                   "gamma <= 1\n")
    assert not out.exists()
    spec = json.dumps({"name": "cyclic", "base_lr": 0.01, "max_lr": 0.1, "step_size_up": 1,
                       "mode": "triangular2"})
    out = tmp_path / "tri2.png"
    assert main(["schedule", "plot", "--spec", spec, "--steps", "5000", "-o", str(out)]) == 0
    assert "cyclic: step 0: 0.01, step 2500: 0.01, step 4999: 0.01" in capsys.readouterr().out
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_figure_out_naming_a_folder_is_refused(tmp_path, capsys, monkeypatch):
    """``-o figs`` with a folder ``figs/`` wrote ``figs.png`` beside it: ``.png`` was added
    before the "is a folder" check."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "figs").mkdir()
    spec = json.dumps({"name": "cosine", "lr": 0.1, "T_max": 10})
    for out in ("figs", str(tmp_path / "figs"), "new/"):
        assert main(["schedule", "plot", "--spec", spec, "--steps", "10", "-o", out]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"lrkit: error: --out: {out!r} is a folder; give a file to write")
        assert err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figs"]
    assert list((tmp_path / "figs").iterdir()) == []


def test_outputs_and_counts_are_refused_before_any_work_and_leave_no_folder(tmp_path, capsys,
                                                                            monkeypatch):
    """``--json newd/`` ran the whole range test, then raised IsADirectoryError; ``safe-lr
    --steps 0`` and ``bench --method-seeds 0`` were refused after the work (the bench wrote
    NaN rows); a failed command left the folders it had made for its outputs."""
    monkeypatch.chdir(tmp_path)
    cases = [
        (["find", "--task", "logreg", "--json", "newd/"], "--json: 'newd/' is a folder"),
        (["find", "--task", "logreg", "--plot", "pd/"], "--plot: 'pd/' is a folder"),
        (["safe-lr", "--task", "logreg", "--steps", "0", "--json", "bad/s.json"],
         "--steps must be an integer >= 1, got 0"),
        (["bench", "methods", "--task", "logreg", "--method-seeds", "0", "--out", "o1"],
         "--method-seeds must be an integer >= 1, got 0"),
        (["find", "--task", "nosuchtask", "--json", "made/x.json", "--plot", "made2/p.png"],
         "unknown task 'nosuchtask'"),
        (["find", "--task", "logreg", "--num-iter", "0"], "num_iter must be >= 8"),
    ]
    for argv, want in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert want in err and err.count("\n") == 1, (argv, err)
    assert list(tmp_path.iterdir()) == []  # nothing written, no folder left
