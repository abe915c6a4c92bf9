"""Tests of lrkit.search on real storages (SQLite files, worker processes, gloo DDP).

References are independent of the code under test: every trial's metric is compared with a
direct ``lrkit.train.run`` at the same LR, grids with ``np.geomspace``, fold splits with a manual
partition, spreads with ``np.std``. The PostgreSQL tests are in ``test_search_postgres.py``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

import lrkit.search as S
from lrkit.errors import LRKitError
from lrkit.search import SearchResult, fold_batches, fold_task, mask_url, search
from lrkit.train import run
from tests.tiny_task import make_task

ROOT = Path(__file__).resolve().parents[1]


def bowl(lr: float, report) -> float:
    """A smooth objective with its minimum 1.0 at lr = 1e-2 (log scale)."""
    report(10, (math.log10(lr) + 2) ** 2 + 1)
    return (math.log10(lr) + 2) ** 2 + 1


def sqlite(tmp_path: Path, name: str = "s.db") -> str:
    return f"sqlite:///{tmp_path / name}"


# ------------------------------------------------------------------------------ arguments
@pytest.mark.parametrize("url, masked", [
    ("postgresql://me:s3cret@db:5432/optuna", "postgresql://me:***@db:5432/optuna"),
    ("mysql+pymysql://u:p%40ss@h/db", "mysql+pymysql://u:***@h/db"),
    ("postgresql://h/db?user=u&password=pw&x=1", "postgresql://h/db?user=u&password=***&x=1"),
    ("postgresql://user@host/db", "postgresql://user@host/db"),
    ("sqlite:////tmp/a.db", "sqlite:////tmp/a.db"),
])
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(method="bayes"), ValueError, "method must be one of"),
    (dict(low=1.0, high=0.1), ValueError, "high must be > low"),
    (dict(low=-1.0, high=0.1), ValueError, "low must be > 0"),
    (dict(n_trials=0), ValueError, "n_trials must be an integer >= 1"),
    (dict(cv_folds=1), ValueError, "cv_folds must be an integer >= 2"),
    (dict(pruner="asha"), ValueError, "pruner must be one of"),
    (dict(schedules="cosine"), TypeError, "schedules must be a non-empty list"),
    (dict(schedules=["cosine", "cosin"]), ValueError, "schedules\\[1\\] must be one of"),
    (dict(schedules=["cosine", "cosine"]), ValueError, "schedules must not repeat a family"),
    (dict(storage="nowhere"), ValueError, "storage must be a database URL"),
    (dict(storage=3), TypeError, "storage must be None"),
])
def test_bad_arguments_name_the_argument(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        search(make_task(), progress=False, **{"low": 1e-3, "high": 1.0, **kwargs})


def test_a_budget_that_cannot_pay_for_one_trial_is_refused_before_any_step() -> None:
    """``budget`` counts optimizer steps: ``--budget 3`` meant as "3 runs" used to run the range
    test and end with no trial at all; now it is refused, naming the least budget that pays."""
    from lrkit.search._core import range_test_steps

    task = make_task()
    steps, rt = task.recipe.steps, range_test_steps(task)
    with pytest.raises(ValueError, match=rf"budget=3 optimizer steps cannot pay for the range "
                                         rf"test \({rt} steps\) and one trial \({steps} steps: "
                                         rf"a full run\); pass budget >= {rt + steps}"):
        search(task, budget=3, storage="memory", progress=False)
    # random in [low, high]: no range test to pay for
    with pytest.raises(ValueError, match=rf"one trial \({steps} steps: a full run\); pass "
                                         rf"budget >= {steps} "):
        search(task, method="random", low=1e-3, high=1.0, budget=steps - 1, storage="memory",
               progress=False)
    with pytest.raises(ValueError, match=rf"x 2 folds\); pass budget >= {rt + 2 * steps}"):
        search(task, budget=rt + steps, cv_folds=2, storage="memory", progress=False)


def test_objective_needs_its_range_and_no_folds() -> None:
    with pytest.raises(ValueError, match="low and high are required"):
        search(bowl, storage="memory")
    with pytest.raises(ValueError, match="cv_folds needs a Task"):
        search(bowl, low=1e-4, high=1.0, cv_folds=3, storage="memory")
    with pytest.raises(TypeError, match="task_or_objective must be"):
        search(42, low=1e-4, high=1.0, storage="memory")
    with pytest.raises(TypeError, match=r"called as objective\(lr, report\).*add a second"):
        search(lambda lr: 1.0, low=1e-4, high=1.0, storage="memory")


def test_objective_values_numpy_and_tensors_count_strings_are_named() -> None:
    import torch

    for kind in (np.float32, torch.tensor, lambda v: np.array([v])):
        res = search(lambda lr, report: kind((math.log10(lr) + 2) ** 2), low=1e-4, high=1.0,
                     method="grid", n_trials=5, storage="memory", progress=False)
        assert res.best_lr == pytest.approx(1e-2) and res.best_metric == pytest.approx(0.0)
    with pytest.raises(TypeError, match="the objective's return value must be a real number"):
        search(lambda lr, report: "0.5", low=1e-4, high=1.0, n_trials=2, storage="memory",
               progress=False)

    def reports_text(lr: float, report) -> float:
        report(0, "0.5")
        return 1.0

    with pytest.raises(TypeError, match=r"report\(step, value\)'s value must be a real"):
        search(reports_text, low=1e-4, high=1.0, n_trials=2, storage="memory", progress=False)


def test_storage_errors_never_show_the_password(capsys) -> None:
    with pytest.raises(LRKitError) as e:
        S.open_storage("postgresql://u:topsecret@127.0.0.1:1/db")
    assert "topsecret" not in str(e.value) and "u:***@127.0.0.1:1/db" in str(e.value)
    # a short password is masked as a token, not wherever its letters occur ("p" used to turn
    # "psycopg2" and "port" into "***syco***g2" and "***ort")
    with pytest.raises(LRKitError) as e:
        S.open_storage("postgresql://u:p@127.0.0.1:1/db")
    assert "u:***@127.0.0.1:1/db" in str(e.value) and "port 1 failed" in str(e.value)
    # the CLI says it in one line (it printed a traceback)
    from lrkit import cli

    assert cli.main(["search", "--task", "digits", "--storage",
                     "postgresql://u:p@127.0.0.1:1/db"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lrkit: error: cannot open storage") and "Traceback" not in err



def test_a_file_that_is_not_a_database_is_named(tmp_path, capsys) -> None:
    junk = tmp_path / "notes.db"
    junk.write_text("not a database\n")
    with pytest.raises(LRKitError, match=r"cannot open storage sqlite:///.*notes.db: "
                                         r"DatabaseError: .*file is not a database"):
        S.open_storage(f"sqlite:///{junk}")
    from lrkit import cli

    assert cli.main(["search", "--task", "logreg", "--storage", f"sqlite:///{junk}"]) == 1
    err = capsys.readouterr().err  # it was SQLAlchemy's traceback
    assert err.startswith("lrkit: error: cannot open storage") and "Traceback" not in err
    assert junk.read_text() == "not a database\n"  # left as it was


def test_an_unknown_database_or_a_missing_driver_is_named(capsys) -> None:
    """A scheme SQLAlchemy does not know and a driver that is not installed reached the user as
    SQLAlchemy's and Optuna's tracebacks; each is now one line that names the URL (masked)."""
    with pytest.raises(ValueError, match=r"no database called 'bogus'; use 'sqlite:///"):
        S.open_storage("bogus://u:topsecret@host/db")
    with pytest.raises(ValueError, match=r"SQLAlchemy has no driver 'nosuch' for 'postgresql'"):
        S.open_storage("postgresql+nosuch://u:topsecret@127.0.0.1/db")
    if importlib.util.find_spec("oracledb") is None:  # a dialect SQLAlchemy has, its driver not
        with pytest.raises(LRKitError, match=r"its driver 'oracledb' for oracle is not "
                                             r"installed") as e:
            S.open_storage("oracle+oracledb://u:topsecret@127.0.0.1/db")
        assert "topsecret" not in str(e.value)
    from lrkit import cli

    assert cli.main(["tune", "--task", "digits", "--storage", "bogus://x",
                     "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lrkit: error: storage 'bogus://x'") and "Traceback" not in err


# ------------------------------------------------------------------------- grid on a task
def test_grid_trains_every_point_once_and_skips_above_divergence(tmp_path: Path) -> None:
    task = make_task()
    res = search(task, method="grid", low=1e-2, high=10.0, n_trials=7, storage=sqlite(tmp_path),
                 progress=False)
    lrs = np.geomspace(1e-2, 10.0, 7)
    assert [t.lr for t in res.trials] == pytest.approx(lrs, rel=1e-12)
    # the independent reference: one plain run per grid LR, scored on "val"
    ref = {t.lr: run(task, t.lr, eval_split="val") for t in res.trials if t.state != "skipped"}
    first_div = min(lr for lr, r in ref.items() if r.diverged)
    assert first_div == pytest.approx(10 ** -0.5)  # 2/L = 0.25 for this task
    for t in res.trials:
        if t.lr < first_div * 0.999:
            assert t.state == "complete" and t.metric == ref[t.lr].metric and t.steps == 40
        elif t.lr == pytest.approx(first_div):
            assert t.state == "diverged" and t.steps == ref[t.lr].steps_done < 40
        else:  # divergence is data: never trained
            assert t.state == "skipped" and t.steps == 0
    assert res.saved == 3 and res.divergence == {"constant": pytest.approx(first_div)}
    best = min((r.metric, lr) for lr, r in ref.items() if not r.diverged)
    assert res.best_lr == best[1] and res.best_metric == best[0]
    assert res.cost_steps == sum(t.steps for t in res.trials)


def test_interrupted_study_resumes_with_completed_trials_kept(tmp_path: Path) -> None:
    calls: list[float] = []

    def f(lr: float, report) -> float:
        if len(calls) == 3 and not getattr(f, "resumed", False):
            raise KeyboardInterrupt
        calls.append(lr)
        return bowl(lr, report)

    kw = dict(low=1e-4, high=1.0, method="grid", n_trials=5, storage=sqlite(tmp_path),
              study_name="resume", progress=False)
    with pytest.raises(KeyboardInterrupt):
        search(f, **kw)
    study = optuna.load_study(study_name="resume", storage=S.open_storage(sqlite(tmp_path)))
    before = {t.number: (t.params["lr"], t.value) for t in study.get_trials()
              if t.state == optuna.trial.TrialState.COMPLETE}
    assert len(before) == 3
    f.resumed = True
    res = search(f, **kw)
    assert len(calls) == 5  # 3 before, the interrupted point and the last one after
    done = {t.number: (t.lr, t.metric) for t in res.trials if t.state == "complete"}
    assert all(done[n] == v for n, v in before.items())
    assert sorted(lr for lr, _ in done.values()) == pytest.approx(np.geomspace(1e-4, 1, 5))
    failed = [t for t in res.trials if t.state == "failed"]
    assert len(failed) == 1
    assert [t.retry_of for t in res.trials if t.retry_of is not None] == [failed[0].number]
    assert res.best_lr == pytest.approx(1e-2)


def _study(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=S.open_storage(url))


def test_a_study_whose_planning_raised_is_taken_over_by_the_next_call(tmp_path: Path) -> None:
    """A range test that raised (a bug in the loss; Ctrl-C alike) left its study created but
    never planned, and the same call after the fix waited 300 s, then refused the study name.
    The failed planner now marks its claim, and the next call plans the study and runs it."""
    good = make_task()

    def broken(model: torch.nn.Module, batch: tuple) -> torch.Tensor:
        raise RuntimeError("bug in my loss")

    kw = dict(n_trials=2, storage=sqlite(tmp_path), progress=False)
    with pytest.raises(RuntimeError, match="bug in my loss"):
        search(dataclasses.replace(good, loss=broken), **kw)  # method="auto": a range test
    (summary,) = optuna.get_all_study_summaries(S.open_storage(sqlite(tmp_path)))
    attrs = _study(sqlite(tmp_path), summary.study_name).user_attrs
    assert "lrkit_spec" not in attrs and attrs["lrkit_planning"]["failed"]
    assert attrs["lrkit_planning"]["error"] == "RuntimeError: bug in my loss"
    start = time.monotonic()
    res = search(good, **kw)  # the same call, default study name: resumes that study
    assert time.monotonic() - start < 60  # no wait for a planner that is gone
    assert res.study_name == summary.study_name and res.range_test is not None
    assert len(res.trials) == 2 and all(t.state == "complete" for t in res.trials)
    for t in res.trials:  # the independent reference: a plain run at each trial's LR
        assert t.metric == run(good, t.lr, eval_split="val").metric
    fresh = search(good, n_trials=2, storage="memory", progress=False)  # never interrupted
    assert [t.lr for t in res.trials] == [t.lr for t in fresh.trials]


_SLOW_PLANNER = textwrap.dedent("""
    import dataclasses, sys, time
    from lrkit.search import SearchOptions, search
    from tests.tiny_task import make_task
    task = make_task()
    def slow(model, batch):  # a range test of ~5 s: longer than the 3 s grace period
        time.sleep(0.1)
        return task.loss(model, batch)
    search(dataclasses.replace(task, loss=slow), n_trials=1, storage=sys.argv[1],
           study_name="plan", progress=False, options=SearchOptions(heartbeat_interval=1))
""")


def _slow_planner(url: str) -> subprocess.Popen:
    """A worker process that has created study "plan" and is running its range test."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, "-c", _SLOW_PLANNER, url], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and p.poll() is None:
        try:
            if "lrkit_planning" in _study(url, "plan").user_attrs:
                return p
        except KeyError:  # not created yet
            pass
        time.sleep(0.1)
    p.kill()
    raise AssertionError(f"the planner never claimed its study: {p.communicate()[1][-2000:]!r}")


@pytest.mark.parametrize("planner", ["alive", "killed"])
def test_a_live_planner_is_waited_for_and_a_killed_one_taken_over(
        planner: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers joining a study being planned wait as long as its planner's claim beats (here
    past their 3 s grace period: the range test takes ~5 s), and take over a study whose
    planner was killed (SIGKILL: it could mark nothing) once its claim has been still for the
    grace period."""
    tests: list[int] = []
    real = S._core._range_test
    monkeypatch.setattr(S._core, "_range_test",
                        lambda task, **kw: tests.append(1) or real(task, **kw))
    url = sqlite(tmp_path)
    p = _slow_planner(url)
    if planner == "killed":
        time.sleep(1.0)
        p.kill()
        p.wait()
    try:
        res = search(make_task(), n_trials=1, storage=url, study_name="plan", progress=False,
                     options=S.SearchOptions(heartbeat_interval=1))
    finally:
        _, err = p.communicate(timeout=120)
    if planner == "alive":
        assert p.returncode == 0, err.decode()[-3000:]
        assert tests == []  # it never stole the study: one range test, the planner's
    else:
        assert tests == [1]  # it planned the study itself
    assert len(res.trials) == 1 and res.trials[0].state == "complete"
    assert res.trials[0].metric == run(make_task(), res.trials[0].lr, eval_split="val").metric


# ------------------------------------------------------------------ many local processes
_LOCAL_WORKER = textwrap.dedent("""
    import math, os, sys, time
    from lrkit.search import search
    def f(lr, report):
        time.sleep(0.05)
        with open(sys.argv[1], "a") as log:
            log.write(f"{os.getpid()} {lr!r}\\n")
        return (math.log10(lr) + 2) ** 2
    search(f, low=1e-4, high=1.0, method="grid", n_trials=12, study_name="four",
           progress=False)
""")


def test_four_processes_share_the_default_sqlite_file(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    log = tmp_path / "calls.txt"
    procs = [subprocess.Popen([sys.executable, "-c", _LOCAL_WORKER, str(log)], cwd=tmp_path,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(4)]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err.decode()[-3000:]
        assert b"database is locked" not in err
    db = tmp_path / "lrkit-runs" / "lrkit.db"  # the default storage, nothing configured
    assert db.exists()
    calls = [line.split() for line in log.read_text().splitlines()]
    lrs = sorted(float(lr) for _, lr in calls)
    assert lrs == pytest.approx(np.geomspace(1e-4, 1.0, 12), rel=1e-12)  # each point once
    res = S.show(f"sqlite:///{db}", "four")
    assert sorted(t.lr for t in res.trials) == pytest.approx(lrs) and res.best_lr == \
        pytest.approx(np.geomspace(1e-4, 1.0, 12)[np.argmin([(math.log10(v) + 2) ** 2
                                                             for v in lrs])])


# ------------------------------------------------------------------------ methods, pruning
@pytest.mark.parametrize("method", ["tpe", "gp", "coarse_to_fine", "auto"])
def test_methods_find_the_bowl(method: str) -> None:
    res = search(bowl, low=1e-5, high=1.0, method=method, n_trials=12, storage="memory",
                 seed=3, progress=False)
    assert len(res.trials) == 12 and abs(math.log10(res.best_lr) + 2) < 0.3


def test_coarse_to_fine_scans_decades_then_refines() -> None:
    res = search(bowl, low=1e-5, high=1.0, method="coarse_to_fine", n_trials=9,
                 storage="memory", progress=False)
    x = [math.log10(t.lr) for t in res.trials]
    assert x[:6] == pytest.approx([-5, -4, -3, -2, -1, 0])
    assert x[6:] == pytest.approx([-1.5, -2.5, -1.75])  # best -2: +/- half, then a quarter


def test_random_never_trains_above_a_known_divergence_point() -> None:
    def f(lr: float, report) -> float:
        return math.nan if lr > 0.05 else bowl(lr, report)

    res = search(f, low=1e-5, high=1.0, method="random", n_trials=25, storage="memory",
                 progress=False, seed=1)
    trained = [t for t in res.trials if t.state in ("complete", "diverged")]
    first = next(t for t in trained if t.state == "diverged")
    later = [t for t in trained if t.number > first.number]
    assert all(t.lr < first.lr for t in later)
    skipped = [t for t in res.trials if t.state == "skipped"]
    assert res.saved == len(skipped) > 0
    for t in skipped:  # at or above an LR that had diverged before it was drawn
        known = min(d.lr for d in trained if d.state == "diverged" and d.number < t.number)
        assert t.lr >= known and t.steps == 0


def test_an_objective_that_always_diverges_ends_at_n_trials_and_says_so() -> None:
    # a NaN before any finite result has no penalty value: the trial is told FAIL. Those
    # trials did not count towards n_trials, and the worker asked for trials forever
    def nan(lr: float, report) -> float:
        return math.nan

    res = search(nan, low=1e-6, high=1.0, n_trials=5, storage="memory", progress=False)
    assert [t.state for t in res.trials] == ["diverged"] * 5 and res.best_lr is None
    x = [math.log10(t.lr) for t in res.trials]
    assert x == pytest.approx([-3.0, -3.5, -4.0, -4.5, -5.0])  # down half a decade each time
    assert "no trial finished without diverging" in res.summary()


@pytest.mark.parametrize("method", ["auto", "coarse_to_fine"])  # lrkit's own policies
def test_a_diverged_start_with_no_value_yet_moves_the_search_down(method: str) -> None:
    # the objective diverges above 1e-4 and is best at 1e-5; auto starts at 1e-3.5 (the middle)
    def f(lr: float, report) -> float:
        return math.nan if lr > 1e-4 else (math.log10(lr) + 5) ** 2

    res = search(f, low=1e-7, high=1.0, method=method, n_trials=12, storage="memory",
                 seed=0, progress=False)
    assert abs(math.log10(res.best_lr) + 5) < 0.3
    first = min(t.lr for t in res.trials if t.state == "diverged")
    assert all(t.steps == 0 for t in res.trials if t.lr >= first and t.state == "skipped")


def test_median_pruner_stops_bad_trials() -> None:
    def f(lr: float, report) -> float:
        v = (math.log10(lr) + 2) ** 2
        for step in range(1, 11):
            report(step, v + 1.0 / step)
        return v

    res = search(f, low=1e-5, high=1.0, method="random", pruner="median", n_trials=15,
                 storage="memory", progress=False)
    pruned = [t for t in res.trials if t.state == "pruned"]
    assert pruned and all(t.steps < 10 for t in pruned)
    done = [t for t in res.trials if t.state == "complete"]
    assert min(abs(math.log10(t.lr) + 2) for t in done) <= min(
        abs(math.log10(t.lr) + 2) for t in pruned)


def test_auto_on_a_task_spends_its_budget_and_beats_a_grid() -> None:
    task = make_task()
    res = search(task, storage="memory", progress=False)
    assert res.range_test is not None and res.range_test["cost_steps"] > 0
    assert res.budget == res.range_test["cost_steps"] + 8 * 40 and "budget" in res.notes[0]
    assert res.cost_steps <= res.budget
    assert res.cost_steps == res.range_test["cost_steps"] + sum(t.steps for t in res.trials)
    grid = [run(task, float(lr), eval_split="val").metric for lr in np.geomspace(1e-3, 1, 13)]
    assert res.best_metric <= min(m for m in grid if math.isfinite(m))


# ------------------------------------------------------------------- folds and schedules
def test_fold_split_is_a_partition_and_scores_the_held_out_fold() -> None:
    task = make_task()
    folds = fold_batches(task, 3)
    it = task.batches(0)
    epoch = [next(it) for _ in range(8)]  # 256 examples / batch 32
    assert [len(f) for f in folds] == [3, 3, 2]
    assert all(torch.equal(folds[j % 3][j // 3][0], epoch[j][0]) for j in range(8))
    model = task.build_model(0)
    ft = fold_task(task, 3, 1, folds=folds)
    with torch.no_grad():
        manual = np.mean([float(torch.nn.functional.mse_loss(model(x).squeeze(1), y))
                          for x, y in (epoch[1], epoch[4], epoch[7])])
    assert ft.evaluate(model, "val") == pytest.approx(manual, rel=1e-6)
    train = next(ft.batches(0))[0]
    assert not any(torch.equal(train, b[0]) for b in (epoch[1], epoch[4], epoch[7]))


def test_cross_validated_search_records_every_fold() -> None:
    task = make_task()
    res = search(task, method="grid", low=0.01, high=0.1, n_trials=2, cv_folds=3,
                 storage="memory", progress=False)
    folds = fold_batches(task, 3)
    for t in res.trials:
        ref = [run(fold_task(task, 3, i, folds=folds), t.lr, eval_split="val").metric
               for i in range(3)]
        assert list(t.fold_metrics) == ref and t.steps == 120
        assert t.metric == pytest.approx(np.mean(ref))
        assert t.fold_std == pytest.approx(np.std(ref, ddof=1))


def _indexed_task(loader_kind: str):
    """A from_torch task over 512 rows whose column 10 is each row's index, 32 per batch."""
    from torch.nn import functional as F

    from lrkit.tasks import from_torch

    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(640, 10, generator=g), torch.arange(640.0)[:, None]], 1)
    y = torch.randint(0, 3, (640,), generator=g)

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(zip(x[:512], y[:512]))

    loader = {
        "list": [(x[i:i + 32], y[i:i + 32]) for i in range(0, 512, 32)],
        "stream": torch.utils.data.DataLoader(Stream(), batch_size=32),
        # a train/val split of one dataset: the sampler draws 200 of its 640 rows
        "sampler": torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(x, y), batch_size=20,
            sampler=torch.utils.data.SubsetRandomSampler(
                range(200), generator=torch.Generator().manual_seed(0))),
        # 210 rows, batch 20: 10 batches, the last 10 rows dropped
        "drop_last": torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(x[:210], y[:210]), batch_size=20, shuffle=True,
            drop_last=True, generator=torch.Generator().manual_seed(0)),
    }[loader_kind]

    class Linear(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.l = torch.nn.Linear(10, 3)

        def forward(self, v):
            return self.l(v[:, :10])

    model = Linear()
    return from_torch(model, torch.optim.SGD(model.parameters(), lr=0.1), loader,
                      F.cross_entropy, val_loader=[(x[512:], y[512:])], steps=20)


def _rows(batches) -> list[int]:
    return [int(r) for b in batches for r in b[0][:, 10].tolist()]


@pytest.mark.parametrize("kind, rows", [("list", 512), ("sampler", 200), ("drop_last", 200)])
def test_folds_of_a_from_torch_task_deal_exactly_one_epoch(kind: str, rows: int) -> None:
    """The folds assumed 50 batches per epoch when train_size was 0 (a list of batches) and
    read len(dataset) for a loader whose sampler draws a part of it, dealing several epochs:
    every held-out row was also a training row of another fold. drop_last dealt one batch
    too many (rows in two folds)."""
    task = _indexed_task(kind)
    folds = fold_batches(task, 5)
    dealt = [_rows(f) for f in folds]
    everything = [r for f in dealt for r in f]
    assert len(everything) == len(set(everything)) == rows  # a partition of one epoch
    from lrkit.search._core import _subset_task

    sub = _subset_task(task, 0.25)
    it = sub.batches(0)
    kept = {r for _ in range(50) for r in _rows([next(it)])}
    assert len(kept) == round(0.25 * task.batches.epoch_batches) * (32 if kind == "list" else 20)


def test_folds_and_subsets_of_data_without_an_epoch_length_are_refused() -> None:
    """A DataLoader over an IterableDataset says neither its length nor train_size: its folds
    and subsets, once 50 batches of a 16-batch epoch, are refused before any step."""
    from lrkit.search._core import _subset_task

    task = _indexed_task("stream")
    with pytest.raises(ValueError, match=r"cv_folds=5 needs the number of batches in one "
                                         r"epoch .* IterableDataset"):
        fold_batches(task, 5)
    with pytest.raises(ValueError, match=r"subset=0.25 needs the number of batches"):
        _subset_task(task, 0.25)
    with pytest.raises(ValueError, match=r"cv_folds=3 needs the number of batches"):
        search(task, method="grid", low=0.01, high=0.1, n_trials=2, cv_folds=3,
               storage="memory", progress=False)
    with pytest.raises(ValueError, match=r"fidelity='data' needs the number of batches"):
        search(task, method="grid", low=0.01, high=0.1, n_trials=2, storage="memory",
               progress=False, options=S.SearchOptions(fidelity="data"))
    with pytest.raises(ValueError, match=r"cv_folds=5 needs at least 5 batches in one epoch "
                                         r".* which has 4"):
        fold_batches(dataclasses.replace(make_task(), train_size=128), 5)


def test_search_on_a_from_torch_task_leaves_the_global_rngs_as_given() -> None:
    """Every run seeds the global RNGs: search left them at a state fixed by its seed."""
    import random

    np.random.seed(5)
    random.seed(7)
    task = _indexed_task("sampler")  # (its model seeds torch's RNG)
    rngs = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    search(task, method="grid", low=0.01, high=0.1, n_trials=2, cv_folds=2, storage="memory",
           progress=False)
    assert torch.equal(torch.get_rng_state(), rngs[0])
    assert np.array_equal(np.random.get_state()[1], rngs[1]) and random.getstate() == rngs[2]


def test_a_search_refused_for_its_budget_puts_back_what_its_folds_drew() -> None:
    """The folds are dealt (drawing from the user's loader, seeding the global RNG) before
    the budget is checked: the refusal left the sampler's generator and torch's RNG moved."""
    task = _indexed_task("sampler")
    sampler_gen = task.batches.loader.sampler.generator  # (the user's DataLoader's)
    before = (sampler_gen.get_state(), torch.get_rng_state())
    with pytest.raises(ValueError, match=r"budget=5 optimizer steps cannot pay for"):
        search(task, method="grid", low=0.01, high=0.1, n_trials=2, cv_folds=2, budget=5,
               storage="memory", progress=False)
    assert torch.equal(sampler_gen.get_state(), before[0])
    assert torch.equal(torch.get_rng_state(), before[1])


def test_fold_protocol_method_is_used() -> None:
    base = make_task()

    @dataclasses.dataclass(frozen=True)
    class Folded(type(base)):
        def with_fold(self, k: int, i: int):
            return dataclasses.replace(base, name=f"own-{i}")

    task = Folded(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)})
    assert fold_task(task, 4, 2).name == "own-2"


def test_schedule_families_are_searched_jointly() -> None:
    task = make_task()
    res = search(task, method="grid", low=0.03, high=0.1, n_trials=4,
                 schedules=["constant", "cosine"], storage="memory", progress=False)
    assert sorted((t.schedule, round(t.lr, 6)) for t in res.trials) == [
        ("constant", 0.03), ("constant", 0.1), ("cosine", 0.03), ("cosine", 0.1)]
    for t in res.trials:
        ref = dataclasses.replace(task, recipe=dataclasses.replace(task.recipe,
                                                                   schedule=t.schedule))
        assert t.metric == run(ref, t.lr, eval_split="val").metric
    best = min(res.trials, key=lambda t: t.metric)
    assert (res.best_lr, res.best_schedule) == (best.lr, best.schedule)


# ------------------------------------------------------------------ result, plot, CLI
@pytest.mark.parametrize("folds", [None, 2])
def test_a_trial_is_not_pruned_after_its_training_is_done(folds) -> None:
    """The last step's report could prune a trial that had trained to the end (and been scored
    on val): 3 of 18 trials of a TPE search, 24% of its time, thrown away. A report at the end
    of an earlier fold may still prune (it saves the folds after it)."""
    from lrkit.search._core import Pruned, _TaskRunner

    task = make_task()  # 40 steps, reported every 4
    runner = _TaskRunner(task, cv_folds=folds, options=S.SearchOptions(), seed=0)
    end = task.recipe.steps * (folds or 1)
    seen = []

    def prune_at(step):
        def reporter(at, value):
            seen.append(at)
            if at == step:
                raise Pruned

        return reporter

    out = runner(0.05, None, prune_at(end), 1.0)
    assert seen[-1] == end and not out.pruned and not out.diverged
    ref = [run(t, 0.05, seed=0, eval_split="val").metric for t in runner.tasks]
    assert out.metric == pytest.approx(sum(ref) / len(ref))
    if folds:  # the end of fold 0: pruned there, fold 1 not trained
        seen.clear()
        out = runner(0.05, None, prune_at(task.recipe.steps), 1.0)
        assert out.pruned and out.metric is None and seen[-1] == task.recipe.steps
        assert out.steps == task.recipe.steps


def test_the_default_storage_under_a_folder_named_with_url_characters(tmp_path, monkeypatch):
    """``sqlite:///<cwd>/lrkit-runs/lrkit.db`` with the folder pasted in unescaped: from a
    folder 'p?a=1' the study went to the file 'p', and `search show` looked elsewhere."""
    from lrkit.search._storage import check_exists, default_url

    here = tmp_path / "p?a=1 %20 {r}"
    here.mkdir()
    monkeypatch.chdir(here)
    search(bowl, low=1e-3, high=1.0, method="grid", n_trials=2, progress=False)
    assert (here / "lrkit-runs" / "lrkit.db").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [here.name]
    check_exists(None)  # (it raised "no database file" for a %20 in the path)
    check_exists(default_url())


def test_the_live_table_is_printed_once_in_a_notebook(monkeypatch) -> None:
    """In Jupyter rich's Live drew nothing without ipywidgets and left an empty block (with them
    too), and a finished study, rerun, drew no table: the table is printed once, at the end."""
    import rich.console

    from lrkit.search._core import _Display

    monkeypatch.setattr(rich.console, "_is_jupyter", lambda: True)
    res = search(bowl, low=1e-4, high=1.0, method="grid", n_trials=3, storage="memory",
                 progress=False)
    shown = _Display(True, "lrkit search nb (grid)")
    printed = []
    monkeypatch.setattr(shown.console, "print", printed.append)
    assert shown.console.is_jupyter and shown.live is None
    shown.update(res)
    shown.update(res)
    assert printed == []
    shown.close()
    (table,) = printed
    assert table.title == "lrkit search nb (grid)" and table.row_count == 3


def test_result_round_trips_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    res = search(bowl, low=1e-4, high=1.0, method="grid", n_trials=5, storage="memory",
                 study_name="live", progress=True)
    live = capsys.readouterr().err  # the live table of trials, as rendered last
    assert "lrkit search live (grid)" in live and live.count("complete") == 5
    assert SearchResult.from_json(res.to_json()) == res
    res.to_json(str(tmp_path / "r.json"))
    assert SearchResult.from_json(str(tmp_path / "r.json")) == res
    with pytest.raises(ValueError, match=r"not a SearchResult's JSON .*'trials'"):
        SearchResult.from_json('{"lrs": [], "losses": [], "suggestion": {}}')
    png = res.plot(str(tmp_path / "r.png"))
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| 2 | 0.01 |" in res.table()
    assert repr(res) == (f"SearchResult(study_name='live', method='grid', best_lr="
                         f"{res.best_lr:.4g}, best_schedule=None, best_metric="
                         f"{res.best_metric:.4g}, metric_name={res.metric_name!r}, trials=5, "
                         f"cost_steps={res.cost_steps})")


def test_cli_show_refuses_a_missing_sqlite_file(tmp_path: Path, monkeypatch,
                                               capsys: pytest.CaptureFixture) -> None:
    """``lrkit search show`` on a SQLite path that does not exist made an empty database
    there; now it is refused, naming the path, and nothing is created."""
    from lrkit.cli import main

    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "sub" / "nope.db"
    for extra in ([], ["--study", "s"]):
        assert main(["search", "show", "--storage", f"sqlite:///{missing}"] + extra) == 2
        assert f"no database file {str(missing)!r}" in capsys.readouterr().err
    assert main(["search", "show"]) == 2  # the default file, not there either
    assert "lrkit.db" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_cli_search_and_show(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from lrkit.cli import main

    url = sqlite(tmp_path)
    assert main(["search", "--task", "tests.tiny_task:make_task", "--storage", url, "--study",
                 "cli", "--method", "grid", "--n-trials", "4", "--low", "0.01", "--high", "0.2",
                 "--no-progress", "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "best LR" in out and out.count("| complete |") == 4
    assert main(["search", "show", "--storage", url, "--study", "cli"]) == 0
    shown = capsys.readouterr().out
    assert SearchResult.from_json(str(tmp_path / "r.json")).table() in shown
    assert main(["search", "show", "--storage", url, "--study", "nope"]) == 2
    assert "studies there: ['cli']" in capsys.readouterr().err
    # "--trials" (said for --n-trials) was read as the positional action: "argument action:
    # invalid choice: '2'"; it is an alias now, and the study grows by its count
    assert main(["search", "--task", "tests.tiny_task:make_task", "--storage", url, "--study",
                 "cli2", "--method", "grid", "--trials", "2", "--low", "0.01", "--high", "0.2",
                 "--no-progress"]) == 0
    assert capsys.readouterr().out.count("| complete |") == 2


def test_joining_with_other_settings_is_refused(tmp_path: Path) -> None:
    kw = dict(low=1e-4, high=1.0, n_trials=2, storage=sqlite(tmp_path), study_name="s",
              progress=False)
    search(bowl, method="grid", **kw)
    with pytest.raises(ValueError, match="created with method='grid'"):
        search(bowl, method="tpe", **kw)


def test_joining_as_another_task_or_objective_is_refused(tmp_path: Path) -> None:
    """Another objective or task under the same study_name got the first one's study and, its
    trials used up, returned the other's best LR as its own; now the study stores what it
    searches, and a joiner that is something else (or trains with another seed or subset) is
    refused, naming both."""
    def other(lr: float, report) -> float:  # another problem: its minimum is at 1e-4
        return (math.log10(lr) + 4) ** 2

    kw = dict(low=1e-4, high=1.0, method="random", n_trials=2, storage=sqlite(tmp_path),
              progress=False)
    search(bowl, study_name="obj", **kw)
    here = f"{__name__}.test_joining_as_another_task_or_objective_is_refused.<locals>.other"
    with pytest.raises(ValueError, match=rf"study 'obj' searches 'objective {__name__}\.bowl',"
                                         rf" this call 'objective {here}'"):
        search(other, study_name="obj", **kw)
    kw = dict(kw, method="grid", low=1e-2, high=0.2)
    search(make_task(), study_name="task", **kw)
    renamed = dataclasses.replace(make_task(), name="another-task")
    with pytest.raises(ValueError, match="study 'task' searches 'task tiny@1', this call "
                                         "'task another-task@1'"):
        search(renamed, study_name="task", **kw)
    with pytest.raises(ValueError, match="created with seed=0, this call has seed=1"):
        search(make_task(), study_name="task", seed=1, **kw)
    with pytest.raises(ValueError, match="created with subset=None, this call has subset=0.5"):
        search(make_task(), study_name="task", options=S.SearchOptions(subset=0.5), **kw)
    assert len(search(make_task(), study_name="task", **kw).trials) == 2  # the same: joins


def test_a_larger_n_trials_or_budget_extends_the_study_and_a_grid_is_fixed(
        tmp_path: Path) -> None:
    """A rerun asking for more trials returned the old ones silently; now n_trials and budget
    are the call's own totals over the study: the trials it holds are kept and the rest run."""
    kw = dict(low=1e-4, high=1.0, method="random", pruner="none", storage=sqlite(tmp_path),
              study_name="s", progress=False)
    first = search(bowl, n_trials=3, **kw)
    res = search(bowl, n_trials=5, **kw)
    assert [(t.lr, t.metric) for t in res.trials[:3]] == [(t.lr, t.metric) for t in first.trials]
    assert len(res.trials) == 5 and all(t.metric == bowl(t.lr, lambda *a: None)
                                        for t in res.trials)
    assert any("changed the study's limits: n_trials 3 -> 5" in n for n in res.notes)
    again = search(bowl, **kw)  # no limits given: the study's (now 5), nothing to run
    assert len(again.trials) == 5 and not any("limits" in n for n in again.notes)
    # budget: each trial of bowl costs the 10 steps it reports; 7 trials fit in 70
    assert len(search(bowl, budget=70, **kw).trials) == 7
    kw = dict(kw, method="grid", study_name="g")
    search(bowl, n_trials=3, **kw)
    with pytest.raises(ValueError, match=r"study 'g' is a grid of 3 points fixed when it was "
                                         r"created \(n_trials=3\), this call has n_trials=4"):
        search(bowl, n_trials=4, **kw)


# ------------------------------------------------------------------------------------ DDP
_DDP_WORKER = textwrap.dedent("""
    import json, math, sys, torch, torch.distributed as dist
    from lrkit.search import search
    rank, init, out, db = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    seen = []
    def f(lr, report):
        t = torch.tensor([lr], dtype=torch.float64)
        dist.all_reduce(t)  # a collective inside the trial, as in DDP training
        seen.append([lr, float(t) / 2])
        return (math.log10(lr) + 2) ** 2
    res = search(f, low=1e-4, high=1.0, method="random", n_trials=4, seed=rank,
                 storage=db, progress=False)
    json.dump({"seen": seen, "trials": [t.lr for t in res.trials], "best": res.best_lr},
              open(out, "w"))
    dist.destroy_process_group()
""")


def test_ddp_ranks_train_the_same_lr_in_each_trial(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    init = f"file://{tmp_path / 'init'}"
    db = sqlite(tmp_path, "ddp.db")
    procs = [subprocess.Popen([sys.executable, "-c", _DDP_WORKER, str(r), init,
                               str(tmp_path / f"r{r}.json"), db], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for r in (0, 1)]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err.decode()[-3000:]
    r0, r1 = (json.loads((tmp_path / f"r{r}.json").read_text()) for r in (0, 1))
    assert len(r0["seen"]) == 4 and r0["seen"] == r1["seen"]
    assert all(lr == mean for lr, mean in r0["seen"])  # both ranks had this LR at once
    assert r0["trials"] == r1["trials"] == [lr for lr, _ in r0["seen"]]
    assert r0["best"] == r1["best"]


def test_package_is_callable_and_bench_choice_spends_its_fixed_budget() -> None:
    import lrkit

    res = lrkit.search(bowl, low=1e-4, high=1.0, method="grid", n_trials=3, storage="memory",
                       progress=False)
    assert res.best_lr == pytest.approx(1e-2)
    task = make_task()
    lr, cost = S.bench_choice(task, 0)
    from lrkit.finder import find_lr

    rt = find_lr(task, seed=0, num_iter=S._core.range_test_steps(task))
    assert S._core.range_test_steps(task) == 50  # half of a run, but never fewer than 50
    assert cost == rt.cost_steps + S._bench.BENCH_RUNS * task.recipe.steps
    # auto's three opening probes: the suggestion, a quarter decade up, a decade down
    probes = [rt.suggestion.lr * 10**d for d in (0.0, 0.25, -1.0)]
    best = min(probes, key=lambda p: run(task, p, eval_split="val").metric)
    assert lr == pytest.approx(best, rel=1e-9)


def test_import_needs_no_torch() -> None:
    """Objective-only workers stay light: torch loads only when a task trains."""
    code = "import sys, lrkit.search; assert 'torch' not in sys.modules, 'torch imported'"
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(ROOT)),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_successive_halving_over_data_subsets() -> None:
    from lrkit.search._core import _subset_task

    task = make_task()
    storage = optuna.storages.InMemoryStorage()
    res = search(task, method="random", low=1e-3, high=0.2, n_trials=8, pruner="halving",
                 storage=storage, study_name="sh", progress=False,
                 options=S.SearchOptions(fidelity="data"))
    rung = [round(40 / 9), round(40 / 3)]  # 1/9 and 1/3 of the data and of the steps
    pruned = [t for t in res.trials if t.state == "pruned"]
    done = [t for t in res.trials if t.state == "complete"]
    assert pruned and done
    assert all(t.steps in (rung[0], sum(rung)) for t in pruned)
    assert all(t.steps == sum(rung) + 40 for t in done)
    frozen = optuna.load_study(study_name="sh", storage=storage).trials
    for t in frozen[:3]:  # each rung's report: the held-out metric of a run on the subset
        lr = t.params["lr"]
        for f, n in zip((1 / 9, 1 / 3), rung):
            if n in t.intermediate_values:
                ref = run(_subset_task(task, f), lr, steps=n, eval_split="val").metric
                assert t.intermediate_values[n] == ref


@pytest.mark.parametrize("kw, message", [
    (dict(heartbeat_interval=0), "heartbeat_interval"),
    (dict(grace_period=-1), "grace_period"),  # it took a live planner's study over at once
    (dict(grace_period=0), "grace_period"),
    (dict(poll=math.nan), "poll"),
    (dict(subset=1.5), "subset"),
    (dict(fidelity="epochs"), "fidelity"),
])
def test_search_options_are_checked_by_name(kw, message):
    with pytest.raises((TypeError, ValueError), match=message):
        S.SearchOptions(**kw)
    assert S.SearchOptions(grace_period=5).grace_period == 5


@pytest.mark.parametrize("method", ["random", "tpe"])
def test_workers_that_join_a_study_draw_their_own_lrs(method):
    """Workers started together on one study all seeded Optuna's sampler with the plan's seed
    and proposed the same first LR (3 workers trained one LR 3 times). The planner keeps the
    seed (one worker's search repeats exactly); each joiner draws its own."""
    from lrkit.search._core import _Plan, _sampler

    plan = _Plan(method=method, families=["constant"], low=1e-4, high=1.0,
                 higher_is_better=False, metric="loss", n_trials=9, budget=None, trial_cost=1,
                 cv_folds=None, seed=7, starts={}, range_test=None, grid=[], task_name="t",
                 notes=[])

    def first_lr(sampler):
        study = optuna.create_study(sampler=sampler)
        return study.ask().suggest_float("lr", 1e-4, 1.0, log=True)

    planner = [first_lr(_sampler(optuna, plan, -1.0)) for _ in range(2)]
    joiners = [first_lr(_sampler(optuna, plan, -1.0, joiner=True)) for _ in range(3)]
    assert planner[0] == planner[1]
    assert len(set(joiners + planner[:1])) == 4
