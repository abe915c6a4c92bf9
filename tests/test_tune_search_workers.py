"""``lrkit search`` workers helping ``lrkit tune``: a real SQLite file shared by two processes.

A ``lrkit search --task ... --storage sqlite:///... --study tune-...`` process (the console
script, as a user runs it) is started with ``tune``; it joins tune's study, trains some of tune's
queued confirmation runs, and stops by itself when tune has decided. References are independent
of the code under test: each run the helper trained is replayed here with ``schedules.family``
and ``train.run``, tune's own ``train.run`` calls are counted, and the halving decision is
recomputed from the records.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lrkit import schedules, train
from lrkit.tune import DEFAULT_SCHEDULES, tune
from tests.tiny_task import make_task

STEPS = 200
REF = "tests.test_tune_search_workers:tiny_task"
ROOT = Path(__file__).resolve().parents[1]


def tiny_task():
    """The test task: tests/tiny_task.py's regression at 200 steps (loaded by name by both
    processes)."""
    return make_task(STEPS)


def _popped(url: str, name: str) -> int:
    """How many of the study's trials a worker has taken (running or finished)."""
    import optuna

    try:
        study = optuna.load_study(study_name=name, storage=url)
    except KeyError:
        return 0
    S = optuna.trial.TrialState
    return sum(t.state == S.RUNNING or "lrkit_rec" in t.user_attrs
               for t in study.get_trials(deepcopy=False))


def _lrkit() -> list[str]:
    exe = Path(sys.executable).with_name("lrkit")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("lrkit")
    return [found] if found else [sys.executable, "-m", "lrkit.cli"]


@pytest.fixture(scope="module")
def helped(tmp_path_factory):
    """tune with a shared SQLite storage, and one ``lrkit search`` helper process."""
    tmp = tmp_path_factory.mktemp("helped")
    url = f"sqlite:///{tmp / 'shared.db'}"
    task = tiny_task()
    # tune's shared study name: task key, seed, budget and schedules (docs/tune.md)
    name = f"tune-{task.key}-s0-b2.0-" + "+".join(DEFAULT_SCHEDULES)
    args = ["search", "--task", REF, "--storage", url, "--study", name]
    proc = subprocess.Popen(_lrkit() + args + ["--poll", "0.05", "--no-progress"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        calls: list[int] = []
        orig = train.run

        def gated_run(*a, **k):
            # tune's first confirmation run waits until the helper has taken a queued run too
            # (tune holds one): a linear model trains in milliseconds, so without this gate
            # the tune process could drain the queue before the helper's interpreter is up
            if k.get("steps") != STEPS and not calls:
                deadline = time.monotonic() + 60
                while _popped(url, name) < 2 and time.monotonic() < deadline:
                    time.sleep(0.05)
            calls.extend([k.get("steps")] if k.get("steps") != STEPS else [])
            return orig(*a, **k)

        train.run = gated_run
        said = io.StringIO()
        try:
            with contextlib.redirect_stderr(said):  # tune's line for helpers
                res = tune(REF, out=tmp / "run", storage=url, progress=False)
        finally:
            train.run = orig
        out, _ = proc.communicate(timeout=60)  # it stops by itself once tune has decided
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(5)
    return {"res": res, "out": tmp / "run", "url": url, "name": name, "args": args,
            "proc": proc, "stdout": out, "stderr": "".join(err), "calls": calls,
            "tune_said": said.getvalue()}


def test_search_worker_trains_part_of_tunes_queue_and_tune_uses_it(helped):
    proc, res = helped["proc"], helped["res"]
    assert proc.returncode == 0, helped["stderr"][-3000:]
    host = socket.gethostname()
    trials = json.loads((helped["out"] / "3-halving.json").read_text())["trials"]
    by_helper = [r for r in trials if r["worker"] == f"{host}:{proc.pid}"]
    by_tune = [r for r in trials if r["worker"] == f"{host}:{os.getpid()}"]
    assert by_helper and by_tune and len(by_helper) + len(by_tune) == len(trials)
    # the helper says how many it trained, and tune trained only the others itself: every
    # confirmation run it did not train came from the helper through the study
    assert f"this worker trained {len(by_helper)} of its confirmation runs" in helped["stdout"]
    assert sorted(helped["calls"]) == sorted(r["steps"] for r in by_tune)
    plain = make_task(STEPS)
    for r in by_helper:  # exactly what tune trains: a miniature of the full run, scored on val
        sched = schedules.family(r["family"], r["lr"], r["steps"], warmup_steps=0)
        ref = train.run(plain, sched, steps=r["steps"], seed=0, eval_split="val")
        assert r["schedule"] == sched.spec
        assert r["steps_done"] == ref.steps_done and r["diverged"] == ref.diverged
        if not ref.diverged:
            assert r["metric"] == pytest.approx(ref.metric, rel=1e-6, abs=1e-12)
        assert r["lrs"] == pytest.approx([float(v) for v in ref.lrs], rel=1e-12)
    # tune's decision, recomputed from all the records (the helper's among them)
    def score(r):
        return math.inf if r["diverged"] else float(r["metric"])

    rung0 = [r for r in trials if r["rung"] == 0]
    assert len(rung0) == len(DEFAULT_SCHEDULES)
    # ties (a short WSD miniature can equal the constant run) go to the earlier family, as in
    # tune
    best0 = min(rung0, key=lambda r: (score(r), DEFAULT_SCHEDULES.index(r["family"])))["family"]
    rung1 = [r for r in trials if r["rung"] == 1]
    assert {r["family"] for r in rung1} == {best0}
    win = min(rung1, key=lambda r: (score(r), r["multiplier"]))
    # ... time-rescaled from the rung-1 val curves, the helper's (through the study) included
    assert all(len(r["val_curve"]) >= 2 for r in rung1)
    from lrkit.tune import _time_rescaled

    lr, _ = _time_rescaled(make_task(STEPS), win, rung1, STEPS)
    assert (res.family, res.lr) == (win["family"], pytest.approx(lr, rel=1e-12))


def test_tune_prints_the_helper_command_and_the_study_holds_the_helpers_values(helped):
    import optuna

    # tune (shared storage, no progress) printed on stderr the exact command the helper ran
    line = next(ln for ln in helped["tune_said"].splitlines() if "lrkit search" in ln)
    assert repr(helped["name"]) in line
    assert shlex.split(line[line.index("lrkit search"):]) == ["lrkit"] + helped["args"]
    study = optuna.load_study(study_name=helped["name"], storage=helped["url"])
    assert study.user_attrs["lrkit"] == "tune" and study.user_attrs["lrkit_tune_done"]
    host = socket.gethostname()
    mine = [t for t in study.trials
            if t.user_attrs.get("lrkit_rec", {}).get("worker") == f"{host}:"
            f"{helped['proc'].pid}"]
    assert mine
    for t in mine:
        rec = t.user_attrs["lrkit_rec"]
        assert t.params == {"lr": rec["lr"], "schedule": rec["family"]}
        assert t.user_attrs["steps"] == rec["steps"] and t.user_attrs["seed"] == 0
        if not rec["diverged"]:
            assert t.value == pytest.approx(rec["metric"], rel=1e-12)


def test_helper_on_a_decided_study_stops_at_once_and_checks_its_task(helped):
    from lrkit import search

    url, name = helped["url"], helped["name"]
    t0 = time.perf_counter()
    again = search(tiny_task(), storage=url, study_name=name, progress=False)
    assert time.perf_counter() - t0 < 5
    assert "this worker trained 0 of its confirmation runs" in again.summary()
    assert again.method == "tune" and again.metric_name == "mse"
    trials = json.loads((helped["out"] / "3-halving.json").read_text())["trials"]
    done = [r["metric"] for r in trials if not r["diverged"]]
    assert again.best_metric == pytest.approx(min(done), rel=1e-12)
    with pytest.raises(ValueError, match="not the task of lrkit tune's study"):
        search(make_task(40), storage=url, study_name=name, progress=False)
    with pytest.raises(ValueError, match="drop method, n_trials"):
        search(tiny_task(), storage=url, study_name=name, method="grid", n_trials=3,
               progress=False)


def test_helper_started_before_tune_waits_for_its_study(tmp_path, capfd):
    from lrkit import search
    from lrkit.search import SearchOptions
    from lrkit.tune import _Study

    url = f"sqlite:///{tmp_path / 'late.db'}"
    got: list = []
    worker = threading.Thread(target=lambda: got.append(search(
        tiny_task(), storage=url, study_name="tune-late", progress=False,
        options=SearchOptions(poll=0.05))))
    worker.start()
    deadline = time.monotonic() + 30
    while "waiting for lrkit tune" not in capfd.readouterr().err:
        assert time.monotonic() < deadline and worker.is_alive()
        time.sleep(0.05)
    study = _Study(url, "tune-late", tiny_task(), seed=0)  # tune reaches its stage 3 ...
    study.finish()  # ... and decides (nothing queued)
    worker.join(30)
    assert not worker.is_alive() and len(got) == 1
    assert got[0].trials == () and "trained 0 of its confirmation runs" in got[0].summary()
