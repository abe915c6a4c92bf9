"""lrkit.search on a real PostgreSQL server: many workers, a SIGKILLed worker, credentials.

The server is a throw-away cluster (``tests/_postgres.py``): Debian's ``postgresql`` package is
installed when missing, the cluster lives in a temp directory, listens on 127.0.0.1 only and is
deleted afterwards. The test is skipped (with the reason) only where that cannot be done.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import optuna
import pytest

from lrkit.search import open_storage, search
from tests._postgres import PostgresUnavailable, postgres_server

ROOT = Path(__file__).resolve().parents[1]
GRID = dict(low=1e-3, high=0.2, method="grid", n_trials=9)


@pytest.fixture(scope="module")
def pg_url():
    try:
        with postgres_server() as url:
            yield url
    except PostgresUnavailable as e:
        pytest.skip(f"no PostgreSQL here: {e}")


def objective(lr: float, report) -> float:
    """A real trial: the tiny regression task trained by lrkit.train.run, scored on val."""
    from lrkit.train import run
    from tests.tiny_task import make_task

    return run(make_task(), lr, eval_split="val").metric


_WORKER = textwrap.dedent("""
    import os, sys, time
    from lrkit.search import SearchOptions, search
    from tests.test_search_postgres import GRID, objective
    url, log = sys.argv[1], sys.argv[2]
    def slow(lr, report):
        with open(log, "a") as f:
            f.write(f"start {os.getpid()} {lr!r}\\n")
        time.sleep(1.0)  # long enough to be killed in the middle
        value = objective(lr, report)
        with open(log, "a") as f:
            f.write(f"done {os.getpid()} {lr!r}\\n")
        return value
    slow.__name__ = "objective"
    search(slow, storage=url, study_name="kill", progress=False,
           options=SearchOptions(heartbeat_interval=1, grace_period=3), **GRID)
""")


def _events(log: Path) -> list[tuple[str, int, float]]:
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        kind, pid, lr = line.split()
        out.append((kind, int(pid), float(lr)))
    return out


def test_three_workers_one_killed_mid_trial(pg_url: str, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    """3 workers start at the same moment on an EMPTY database (Optuna's schema creation
    races there), one is SIGKILLed in the middle of a trial; the others finish the grid."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    log = tmp_path / "events.txt"
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, pg_url, str(log)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]
    deadline = time.monotonic() + 150
    victim = None
    while victim is None and time.monotonic() < deadline:
        # once some trial is done, kill a worker in the middle of its current trial
        events = _events(log)
        if any(kind == "done" for kind, *_ in events):
            for p in procs:
                mine = [e for e in events if e[1] == p.pid]
                if mine and mine[-1][0] == "start" and p.poll() is None:
                    victim = p
                    break
        time.sleep(0.05)
    if victim is None:
        pytest.fail("no worker was ever caught in the middle of a trial")
    os.kill(victim.pid, signal.SIGKILL)
    killed_lr = [e for e in _events(log) if e[1] == victim.pid][-1][2]
    done_before = {lr for kind, _, lr in _events(log) if kind == "done"}
    victim.wait()
    for p in procs:
        if p is victim:
            continue
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err.decode()[-3000:]
        assert b"UniqueViolation" not in err and b"Traceback" not in err

    st = open_storage(pg_url)
    trials = optuna.load_study(study_name="kill", storage=st).get_trials()
    S = optuna.trial.TrialState
    complete = [t for t in trials if t.state == S.COMPLETE]
    failed = [t for t in trials if t.state == S.FAIL]
    grid = np.geomspace(GRID["low"], GRID["high"], GRID["n_trials"])
    # every grid point completed exactly once, none lost, none run twice
    assert sorted(t.params["lr"] for t in complete) == pytest.approx(grid, rel=1e-12)
    assert done_before <= {t.params["lr"] for t in complete}
    # the killed trial was marked failed by the heartbeat and retried once, elsewhere
    assert [t.params["lr"] for t in failed] == [killed_lr]
    retry = [t for t in complete if t.system_attrs.get("failed_trial") == failed[0].number]
    assert len(retry) == 1 and retry[0].params["lr"] == killed_lr
    assert not any(e[1] == victim.pid and e[0] == "done" and e[2] == killed_lr
                   for e in _events(log))
    # the same grid, one worker, in-process: same best LR
    single = search(objective, storage=pg_url, study_name="single", progress=False, **GRID)
    best = min(complete, key=lambda t: t.value)
    assert single.best_lr == best.params["lr"] and single.best_metric == best.value

    # credentials: the CLI shows the study with the password masked
    from lrkit.cli import main

    password = pg_url.split(":")[2].split("@")[0]
    assert main(["search", "show", "--storage", pg_url, "--study", "kill"]) == 0
    out = capsys.readouterr()
    assert password not in out.out + out.err and "lrkit:***@127.0.0.1" in out.out
    assert out.out.count("| failed") == 1 and "(retry of #" in out.out
