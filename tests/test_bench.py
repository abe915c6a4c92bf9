"""The benchmark harness: regret, the oracle grid and its band, method comparison."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lrkit import bench
from lrkit.bench import Oracle, regret

TINY = "tests.tiny_task:make_task"


def test_regret_formula():
    assert regret(0.95, 1.0, higher_is_better=True) == pytest.approx(0.05)
    assert regret(1.0, 1.0, higher_is_better=True) == 0.0
    assert regret(0.22, 0.2, higher_is_better=False) == pytest.approx(0.1)
    assert regret(float("nan"), 0.2, higher_is_better=False) == math.inf
    assert regret(float("inf"), 0.2, higher_is_better=False) == math.inf


def _oracle(mean: list[float], higher: bool = True) -> Oracle:
    grid = [10.0 ** (i / 2 - 3) for i in range(len(mean))]
    return Oracle(task="t", version="1", steps=10, higher_is_better=higher, metric_name="m",
                  grid=grid, seeds=[0, 1, 2], metrics=[[m] * 3 for m in mean],
                  diverged=[[False] * 3 for _ in mean], tol=0.01, wall_time=0.0, run_time=0.0)


def test_band_is_the_contiguous_good_run_around_the_best():
    # good (within 1% of 0.90): indices 3, 4, 5 and 8 — 8 is not contiguous with the best
    o = _oracle([0.1, 0.5, 0.8, 0.895, 0.90, 0.892, 0.85, 0.7, 0.899, 0.1])
    assert o.best_index == 4 and o.best_lr == pytest.approx(10 ** -1)
    assert o.good == [False, False, False, True, True, True, False, False, True, False]
    # edges: where the log-LR interpolation of the mean crosses 0.90 * 0.99 = 0.891
    lo, hi = o.band
    x = np.log10(o.grid)
    assert np.log10(lo) == pytest.approx(x[2] + (0.891 - 0.8) / (0.895 - 0.8) * (x[3] - x[2]))
    assert np.log10(hi) == pytest.approx(x[5] + (0.892 - 0.891) / (0.892 - 0.85) * (x[6] - x[5]))
    assert o.in_band(0.1) and o.in_band(10 ** -1.5) and not o.in_band(0.5)
    assert not o.in_band(10 ** -1.55)  # just past the left crossing
    back = Oracle.from_dict(json.loads(json.dumps(o.to_dict())))
    assert back == o and back.band == o.band


def test_lower_is_better_and_nan_never_best():
    o = _oracle([5.0, 1.0, 0.5, 0.504, float("nan"), float("inf")], higher=False)
    assert o.best_index == 2
    assert o.good == [False, False, True, True, False, False]
    # the right neighbour of the last good LR diverged (nan): the edge stops at the grid point
    assert o.band[1] == pytest.approx(o.grid[3])


def test_oracle_on_a_real_task_extends_the_grid_and_caches(tmp_path):
    # centred far too low: the best LR is at the top edge until the grid grows
    o = bench.oracle(TINY, center=1e-4, seeds=(0, 1, 2), workers=1, cache_dir=tmp_path,
                     progress=False)
    assert 0 < o.best_index < len(o.grid) - 1
    assert len(o.grid) > 25
    assert np.all(np.diff(np.log10(o.grid)) == pytest.approx(0.25))
    mean = np.array(o.mean)
    assert mean[0] > 5 * o.best_metric  # far too low is clearly worse
    assert any(any(d) for d in o.diverged)  # far too high diverges (GD on least squares)
    # cached: a second call returns the same object without training
    again = bench.oracle(TINY, center=1e-4, seeds=(0, 1, 2), workers=1, cache_dir=tmp_path,
                         progress=False)
    assert again == o
    assert len(list((tmp_path / "oracle").glob("tiny@1-*.json"))) == 1


def test_compare_scores_methods_against_the_oracle(tmp_path):
    o = bench.oracle(TINY, seeds=(0, 1, 2), workers=2, cache_dir=tmp_path, progress=False)

    @bench.register_method("test-best", "picks the oracle's best LR")
    def _best(task, seed):
        return bench.Choice(o.best_lr, cost_steps=20)

    try:
        res = bench.compare(TINY, ["default", "test-best"], seeds=(0, 1, 2), workers=1,
                            oracle_result=o, progress=False)
    finally:
        bench._METHODS.pop("test-best")
    by = {r.method: r for r in res}
    assert by["test-best"].regret == pytest.approx(0.0, abs=1e-12)
    assert by["test-best"].in_band and by["test-best"].cost_fraction == pytest.approx(0.5)
    assert by["default"].lrs == [0.1, 0.1, 0.1] and by["default"].cost_steps == 0
    assert by["default"].regret == pytest.approx(o.regret(o.mean[o.grid.index(0.1)]))
    # the regret's standard error is the seeds' sample std / sqrt(n) / |best|
    m = np.array(by["default"].metrics)
    assert by["default"].regret_se == pytest.approx(m.std(ddof=1) / math.sqrt(3) / o.best_metric)
    table = bench.markdown_table(res, {"tiny": o})
    assert "| tiny | test-best |" in table and "+0.0% ± " in table


def test_a_task_name_is_a_safe_file_name_in_the_cache(tmp_path, monkeypatch):
    """A user's task name went into the oracle cache's path as it was: '../esc' wrote outside
    the cache, 'a/b c:é' made `bench oracle` fail after its grid; an empty LRKIT_CACHE wrote
    the cache into the working folder."""
    from lrkit.tasks.base import file_name

    assert file_name("a/b c:é") == "a_b_c_é" and file_name("../esc") == ".._esc"
    assert len(file_name("é" * 300).encode()) <= 100 and file_name("") == "task"
    (tmp_path / "esc_mod.py").write_text(
        "import dataclasses\nfrom tests.tiny_task import make_task\n\n"
        "def make():\n    return dataclasses.replace(make_task(), name='../esc')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    bench.oracle("esc_mod:make", points=13, seeds=(0, 1, 2), workers=1,
                 cache_dir=tmp_path / "c", progress=False)
    written = [p for p in tmp_path.rglob("*.json")]
    assert [p.parent for p in written] == [tmp_path / "c" / "oracle"]
    monkeypatch.setenv("LRKIT_CACHE", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert bench.default_cache_dir() == tmp_path / "xdg" / "lrkit"


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="points"):
        bench.oracle(TINY, points=5, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="seeds"):
        bench.oracle(TINY, seeds=(0,), cache_dir=tmp_path)
    # an UnboundLocalError after no run, and a grid of negative LRs, before
    with pytest.raises(ValueError, match="max_extend must be an integer >= 0, got -1"):
        bench.oracle(TINY, max_extend=-1, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="center"):
        bench.oracle(TINY, center=-0.1, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="did you mean 'default'"):
        bench.compare(TINY, ["defualt"], cache_dir=tmp_path)


def test_a_third_party_optimizer_that_crashes_is_a_failed_run_not_a_crashed_bench():
    """D-Adaptation SGD divides by its first step's gradient norm, summed over param groups with
    a non-zero LR: under charlm's warmup (LR 0 at step 0) that is a ZeroDivisionError. The bench
    records a failed run with the error; a crash in lrkit's own code still raises."""
    pytest.importorskip("dadaptation")
    from lrkit import bench

    r = bench._run_one(("charlm", 1.0, 0, 5, "val", None, "dadapt_sgd"))
    assert r["diverged"] and r["metric"] == float("inf")
    assert r["error"].startswith("ZeroDivisionError")
    with pytest.raises(ValueError, match="lr"):
        bench._run_one(("charlm", -1.0, 0, 5, "val", None, None))


def test_val_choice_is_the_best_mean_val_metric_of_full_runs_lower_lr_on_a_tie():
    """bench.val_choice: full runs at each LR scored on "val" (mean over seeds), the index val
    ranks first; an LR that diverges scores the task's worst; a tie goes to the lower LR."""
    import dataclasses

    from lrkit import train
    from tests.tiny_task import make_task

    task = make_task()
    lrs = [0.01, 0.1, 30.0]
    pick, val = bench.val_choice(task, lrs, seeds=(0, 1))
    direct = [np.mean([train.run(task, lr, seed=s, eval_split="val").metric for s in (0, 1)])
              for lr in lrs[:2]]
    assert val[:2] == pytest.approx(direct, rel=1e-12) and val[2] == task.worst  # diverged
    assert pick == int(np.argmin(val)) and pick != 2
    flat = dataclasses.replace(task, evaluate=lambda model, split: 0.5)
    assert bench.val_choice(flat, [0.1, 0.01], seeds=(0,)) == (1, [0.5, 0.5])
    for lrs, seeds, match in (([], (0,), "at least one value, got 0 LRs"),
                              ([0.1], (), "at least one value, got 1 LRs and 0 seeds"),
                              ([0.1, float("nan")], (0,), r"lrs\[1\]"),
                              ([-0.1], (0,), r"lrs\[0\] must be > 0")):
        with pytest.raises(ValueError, match=match):
            bench.val_choice(task, lrs, seeds)
    with pytest.raises(TypeError, match=r"seeds\[0\] must be an integer"):
        bench.val_choice(task, [0.1], (0.5,))
