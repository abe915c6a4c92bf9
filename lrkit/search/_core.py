"""``lrkit.search``: the search loop every worker runs against a shared Optuna study."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import math
import secrets
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..errors import (DivergedError, as_real, check_choice, check_int, check_positive, check_range,
                      require)
from ._result import SearchResult, result_from_study, told_diverged
from ._storage import describe, open_storage

__all__ = ["search", "METHODS", "PRUNERS", "Pruned", "SearchOptions"]

METHODS = ("auto", "grid", "random", "coarse_to_fine", "tpe", "gp")
PRUNERS = ("auto", "none", "median", "halving", "hyperband")
#: schedule family of a recipe -> the Suggestion.lr_for family whose LR it starts from
_SUGGEST_FAMILY = {"constant": "constant", "cyclic": "cyclical", "onecycle": "one_cycle",
                   "cosine": "cosine", "warmup_cosine": "warmup_cosine", "linear": "cosine",
                   "step": "cosine", "exponential": "cosine", "wsd": "cosine"}
_DEFAULT_RUNS = 8  # full runs in the budget `auto` picks when given neither n_trials nor budget
_OBJECTIVE_TRIALS = 20


def _optuna() -> Any:
    return require("optuna", package="optuna", extra="search", needed_by="lrkit.search")


class Pruned(Exception):
    """Raised by ``report(step, value)`` inside an objective when the trial should stop."""


@dataclass(frozen=True)
class SearchOptions:
    """Settings of the workers and their storage that rarely change (the defaults hold for a
    few local processes; see ``docs/search.md`` for 100 workers).

    Args:
        heartbeat_interval: seconds between a running trial's heartbeats.
        grace_period: seconds without heartbeat before a trial counts as dead (3x interval).
        retries: times a dead trial is run again.
        report_every: optimizer steps between two reports to the pruner (default: steps / 10).
        subset: train every trial on this fraction of the first epoch's batches ("start on a
            subset"); ``None`` for all data.
        fidelity: what a pruner's rungs spend (tasks): ``"steps"`` (the run's own training steps;
            the smoothed training loss is reported every ``report_every`` steps) or ``"data"``
            (successive halving over data subsets: before its full run, a trial trains from
            scratch on the first 1/9 and then 1/3 of the data for 1/9 and 1/3 of the steps, and
            each rung's held-out metric is reported; the pruner stops it at a rung).
        poll: seconds a worker waits between looks at a study whose last trials run elsewhere.
        pool_size: connection pool per worker on a database server.
    """

    heartbeat_interval: int = 10
    grace_period: int | None = None
    retries: int = 1
    report_every: int | None = None
    subset: float | None = None
    poll: float = 0.5
    pool_size: int = 2
    fidelity: str = "steps"

    def __post_init__(self) -> None:
        check_int("heartbeat_interval", self.heartbeat_interval, minimum=1)
        if self.grace_period is not None:  # (a negative one took a live planner's study over)
            check_int("grace_period", self.grace_period, minimum=1)
        check_int("retries", self.retries, minimum=0)
        if self.report_every is not None:
            check_int("report_every", self.report_every, minimum=1)
        if self.subset is not None:
            check_range("subset", self.subset, 0.0, 1.0, low_open=True)
        check_positive("poll", self.poll)
        check_choice("fidelity", self.fidelity, ("steps", "data"))


# --------------------------------------------------------------------------------- the plan
@dataclass
class _Plan:
    """Everything one worker needs, derived from the arguments (and the study, if it exists)."""

    method: str
    families: list[str]
    low: float
    high: float
    higher_is_better: bool
    metric: str
    n_trials: int | None
    budget: int | None
    trial_cost: int
    cv_folds: int | None
    seed: int
    starts: dict[str, float]
    range_test: dict | None
    grid: list[tuple[str, float]]
    task_name: str
    notes: list[str]
    identity: str = ""
    subset: float | None = None
    #: notes for this call's result only (not stored in the study)
    call_notes: list[str] = dataclasses.field(default_factory=list)

    def spec(self) -> dict:
        return {"method": self.method, "families": self.families, "low": self.low,
                "high": self.high, "higher_is_better": self.higher_is_better,
                "metric": self.metric, "n_trials": self.n_trials, "budget": self.budget,
                "trial_cost": self.trial_cost, "cv_folds": self.cv_folds, "seed": self.seed,
                "starts": self.starts, "task": self.task_name, "notes": self.notes,
                "grid": [[f, lr] for f, lr in self.grid], "identity": self.identity,
                "subset": self.subset}


@dataclass(frozen=True)
class _Asked:
    """What one ``search`` call asks of its study: the settings a joining worker must share
    with the study's plan, and the trial limits it works to (``None``: the study's)."""

    method: str
    families: list
    low: float | None
    high: float | None
    n_trials: int | None
    budget: int | None
    cv_folds: int | None
    seed: int
    subset: float | None
    identity: str
    task_name: str


def _identity(task: Any) -> str:
    """What a study searches, as stored in it and compared when a worker joins:
    ``"task name@version"`` for a Task, ``"objective module.qualname"`` for a callable."""
    from ..tasks import Task

    if isinstance(task, Task):
        return f"task {task.key}"
    fn = task
    while isinstance(fn, functools.partial):
        fn = fn.func
    module = getattr(fn, "__module__", None) or type(fn).__module__
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"objective {module}.{qualname}"


def _check_args(method: str, pruner: str, low: Any, high: Any, n_trials: Any, budget: Any,
                cv_folds: Any, schedules: Any, seed: Any, study_name: Any) -> list[str] | None:
    check_choice("method", method, METHODS)
    check_choice("pruner", pruner, PRUNERS)
    if low is not None:
        check_positive("low", low)
    if high is not None:
        check_positive("high", high)
    if low is not None and high is not None and not high > low:
        raise ValueError(f"high must be > low ({low!r}), got {high!r}")
    if n_trials is not None:
        check_int("n_trials", n_trials, minimum=1)
    if budget is not None:
        check_int("budget", budget, minimum=1)
    if cv_folds is not None:
        check_int("cv_folds", cv_folds, minimum=2)
    check_int("seed", seed, minimum=0)
    if study_name is not None and (not isinstance(study_name, str) or not study_name):
        raise ValueError(f"study_name must be a non-empty string, got {study_name!r}")
    if schedules is None:
        return None
    from ..schedules import check_families

    if isinstance(schedules, str) or not isinstance(schedules, Sequence) or not schedules:
        raise TypeError(f"schedules must be a non-empty list of schedule family names, got "
                        f"{schedules!r}")
    return list(check_families("schedules", schedules))  # names the entry: schedules[1]


def _default_name(task_name: str, method: str, args: dict) -> str:
    digest = hashlib.sha1(json.dumps(args, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{task_name}-{method}-{digest}"


# ---------------------------------------------------------------------------- trial runners
def _report_callback(reporter: Callable[[int, float], None], every: int, offset: int,
                     sign: float, last: int | None = None) -> Any:
    """A :class:`lrkit.train.Callback` reporting the smoothed training loss to an Optuna trial
    every ``every`` steps (times ``sign``: the study's direction, so pruners compare reported
    values the way the study compares metrics) and stopping the run when the trial is pruned,
    except at step ``last`` (the trial's final one): its training is done, and pruning it there
    threw its scored result away (3 of 18 trials of a TPE search, 24% of its time).
    (Built here so that ``import lrkit.search`` needs no torch: objective workers stay light.)"""
    from ..train import Callback

    class Report(Callback):
        def __init__(self) -> None:
            self.avg, self.n = 0.0, 0

        def on_step_end(self, info: Any) -> str | None:
            self.n += 1
            self.avg = 0.9 * self.avg + 0.1 * info.loss
            if (info.step + 1) % every == 0:
                smoothed = self.avg / (1 - 0.9**self.n)
                try:
                    reporter(offset + info.step + 1, sign * smoothed)
                except Pruned:
                    return None if info.step + 1 == last else "pruned"
            return None

    return Report()


@dataclass
class _Outcome:
    metric: float | None
    steps: int
    diverged: bool
    pruned: bool
    folds: list[float]
    first_loss: float | None = None


def _subset_task(task: Any, fraction: float, arg: str = "subset") -> Any:
    """``task`` training on the first ``fraction`` of its first epoch's batches, cycled (the
    epoch: :func:`~lrkit.search._folds.epoch_batches`, refused by ``arg`` when unknown)."""
    from ._folds import _shuffled_cycle, epoch_batches

    bs = max(1, task.recipe.batch_size)
    n = max(1, round(fraction * epoch_batches(task, f"{arg}={fraction:g}")))
    it = task.batches(0)
    kept = [next(it) for _ in range(n)]
    return dataclasses.replace(task, name=f"{task.name}-subset{fraction:g}",
                               batches=lambda seed: _shuffled_cycle(kept, seed),
                               train_size=n * bs)


class _TaskRunner:
    """Trains a task at one LR through :func:`lrkit.train.run` (per fold with CV)."""

    def __init__(self, task: Any, *, cv_folds: int | None, options: SearchOptions,
                 seed: int) -> None:
        from ._folds import epoch_batches, fold_batches, fold_task

        self.base = task  # what the range test runs on (every DDP rank alike)
        self.task = _subset_task(task, options.subset) if options.subset else task
        self.seed = seed
        self.steps = task.recipe.steps
        self.every = options.report_every or max(1, self.steps // 10)
        self.fidelity = options.fidelity
        if cv_folds:
            parts = None if callable(getattr(task, "with_fold", None)) else fold_batches(
                self.task, cv_folds)
            self.tasks = [fold_task(self.task, cv_folds, i, folds=parts) for i in range(cv_folds)]
            self.metric = self.tasks[0].metric
            self.higher_is_better = self.tasks[0].higher_is_better
        else:
            self.tasks = [self.task]
            self.metric, self.higher_is_better = task.metric, task.higher_is_better
        self.worst = self.tasks[0].worst
        if self.fidelity == "data":  # its rungs are subsets of an epoch: refused before a trial
            epoch_batches(self.tasks[0], "fidelity='data'")

    @property
    def cost(self) -> int:
        return self.steps * len(self.tasks)

    def __call__(self, lr: float, schedule: str | None, reporter: Callable[[int, float], None],
                 sign: float) -> _Outcome:
        from ..train import run

        folds: list[float] = []
        spent, first = 0, None
        for i, t in enumerate(self.tasks):
            if schedule is not None and schedule != t.recipe.schedule:
                t = dataclasses.replace(t, recipe=dataclasses.replace(t.recipe, schedule=schedule))
            if self.fidelity == "data":
                rungs = self._rungs(t, lr, reporter, i * self.steps)
                spent += rungs.steps
                if rungs.pruned or rungs.diverged:
                    return _Outcome(None, spent, rungs.diverged, rungs.pruned, folds, first)
                cbs: list = []
            else:
                cbs = [_report_callback(reporter, self.every, i * self.steps, -sign,  # a loss
                                        self.steps if i == len(self.tasks) - 1 else None)]
            r = run(t, lr, seed=self.seed, callbacks=cbs, eval_split="val")
            spent += r.steps_done
            if first is None and r.losses:
                first = r.losses[0]
            if r.stop_reason == "pruned":
                return _Outcome(None, spent, False, True, folds, first)
            if r.diverged or r.metric is None or not math.isfinite(r.metric):
                return _Outcome(None, spent, True, False, folds, first)
            folds.append(float(r.metric))
        return _Outcome(sum(folds) / len(folds), spent, False, False, folds, first)


    #: data fractions (and step fractions) of the rungs before a full run, fidelity="data"
    RUNGS = (1 / 9, 1 / 3)

    def _rungs(self, task: Any, lr: float, reporter: Callable[[int, float], None],
               offset: int) -> _Outcome:
        """Successive halving over data subsets: train from scratch on a growing subset (and
        as many fewer steps), report each rung's held-out metric at step ``fraction * steps``."""
        from ..train import run

        spent = 0
        for f in self.RUNGS:
            n = max(1, round(f * self.steps))
            r = run(_subset_task(task, f, "fidelity='data'"), lr, steps=n, seed=self.seed,
                    eval_split="val")
            spent += r.steps_done
            if r.diverged or not math.isfinite(r.metric):
                return _Outcome(None, spent, True, False, [])
            try:
                reporter(offset + n, r.metric)
            except Pruned:
                return _Outcome(None, spent, False, True, [])
        return _Outcome(None, spent, False, False, [])


class _ObjectiveRunner:
    """Calls a user objective ``f(lr, report)`` (``schedule=`` too when searching schedules)."""

    def __init__(self, fn: Callable, *, higher_is_better: bool) -> None:
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):  # a builtin without one: found out at the first call
            sig = None
        if sig is not None:
            try:
                sig.bind(1.0, lambda step, value: None)
            except TypeError:
                raise TypeError(f"the objective is called as objective(lr, report), and "
                                f"{getattr(fn, '__name__', 'it')}{sig} cannot take that: add "
                                "a second parameter (report(step, value) feeds pruning; it may "
                                "go unused)") from None
        self.fn = fn
        self.metric = getattr(fn, "__name__", "objective")
        self.higher_is_better = higher_is_better
        self.worst = math.nan
        self.cost = 1

    def __call__(self, lr: float, schedule: str | None, reporter: Callable[[int, float], None],
                 sign: float) -> _Outcome:
        last = [0]

        def report(step: int, value: float) -> None:
            step = check_int("step", step, minimum=0)
            last[0] = max(last[0], step)
            reporter(step, as_real("report(step, value)'s value", value))

        try:
            value = self.fn(lr, report) if schedule is None else self.fn(lr, report,
                                                                         schedule=schedule)
        except Pruned:
            return _Outcome(None, max(1, last[0]), False, True, [])
        except DivergedError:
            return _Outcome(None, max(1, last[0]), True, False, [])
        value = as_real("the objective's return value", value)
        if not math.isfinite(value):
            return _Outcome(None, max(1, last[0]), True, False, [])
        return _Outcome(float(value), max(1, last[0]), False, False, [float(value)])


# ------------------------------------------------------------------------------- DDP support
def _ddp() -> tuple[int, int]:
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return 0, 1
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _bcast(obj: Any = None) -> Any:
    """Rank 0's ``obj`` on every rank (``torch.distributed.broadcast_object_list``)."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ----------------------------------------------------------------------------- the display
class _Display:
    """A live table of the study's trials (rich), refreshed after each trial. In a notebook
    (where rich's ``Live`` drew nothing without ipywidgets, and left an empty block either
    way) the table is printed once, at the end."""

    def __init__(self, enabled: bool, title: str) -> None:
        self.enabled, self.live, self.table, self.console = enabled, None, None, None
        self.title = title
        if enabled:
            from rich.console import Console
            from rich.live import Live

            self.console = Console(stderr=True)
            if not self.console.is_jupyter:
                self.live = Live(console=self.console, refresh_per_second=2, transient=False)
                self.live.start()

    def update(self, result: SearchResult) -> None:
        if not self.enabled:
            return
        from rich.table import Table

        table = Table(title=self.title, caption=result.summary().splitlines()[1]
                      if result.trials else None)
        for col in ("#", "lr", "schedule", result.metric_name, "steps", "state"):
            table.add_column(col, justify="right" if col not in ("schedule", "state") else "left")
        for t in result.trials[-25:]:
            best = t.lr == result.best_lr and t.metric == result.best_metric and t.lr is not None
            table.add_row(str(t.number), "—" if t.lr is None else f"{t.lr:.3g}",
                          t.schedule or "—", "—" if t.metric is None else f"{t.metric:.4g}",
                          str(t.steps), t.state + (" ★" if best else ""))
        self.table = table
        if self.live is not None:
            self.live.update(table, refresh=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
        elif self.table is not None:
            self.console.print(self.table)


class _Heartbeat:
    """Records a running trial's heartbeat every ``interval`` seconds in a thread."""

    def __init__(self, storage: Any, trial: Any) -> None:
        self.storage, self.trial_id = storage, trial._trial_id
        interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
        self.interval = interval
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def __enter__(self) -> "_Heartbeat":
        if self.interval:
            self.storage.record_heartbeat(self.trial_id)
            self.thread = threading.Thread(target=self._beat, daemon=True)
            self.thread.start()
        return self

    def _beat(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:  # noqa: BLE001 - a missed beat only risks a retry
                pass

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()


# ------------------------------------------------------------------------------- the search
def _runner_for(task: Any, *, cv_folds: int | None, options: SearchOptions, seed: int,
                low: float | None, high: float | None, direction: str | None
                ) -> tuple[Any, Any, str]:
    """:func:`search`'s task (a name looked up), the runner of its trials and its name: a
    :class:`_TaskRunner` for a Task, an :class:`_ObjectiveRunner` for a callable objective
    (which needs ``low`` and ``high`` and takes ``direction``); what does not fit either is
    refused by name."""
    from ..tasks import Task

    if isinstance(task, str):
        from .. import tasks as _tasks

        task = _tasks.get(task)
    if isinstance(task, Task):
        if direction is not None:
            raise ValueError("direction is for objectives; a task knows whether its metric is "
                             "higher-is-better")
        return task, _TaskRunner(task, cv_folds=cv_folds, options=options, seed=seed), task.name
    if not callable(task):
        raise TypeError(f"task_or_objective must be a lrkit Task, a task name or a callable "
                        f"f(lr, report) -> metric, got {type(task).__name__}")
    if cv_folds is not None:
        raise ValueError("cv_folds needs a Task (an objective does its own validation)")
    if options.subset is not None:
        raise ValueError("options.subset needs a Task")
    if low is None or high is None:
        raise ValueError("low and high are required with an objective (there is no task "
                         "to run a range test on)")
    d = check_choice("direction", direction or "minimize", ("minimize", "maximize"))
    return (task, _ObjectiveRunner(task, higher_is_better=d == "maximize"),
            getattr(task, "__name__", "objective"))


def search(
    task_or_objective: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    method: str = "auto",
    n_trials: int | None = None,
    budget: int | None = None,
    pruner: str = "auto",
    cv_folds: int | None = None,
    schedules: Sequence[str] | None = None,
    storage: Any = None,
    study_name: str | None = None,
    seed: int = 0,
    progress: bool = True,
    direction: str | None = None,
    range_test: Any = None,
    options: SearchOptions | None = None,
) -> SearchResult:
    """Search the learning rate (and optionally the schedule family) of a task on Optuna.

    Every worker process that calls ``search`` with the same ``storage`` and ``study_name``
    joins the same study; trials are shared, never repeated by ``grid``, and a trial whose
    worker died (no heartbeat for ``options.grace_period`` s) is marked failed and run again
    once. ``n_trials`` and ``budget`` are totals over all workers.

    Args:
        task_or_objective: a :class:`lrkit.tasks.Task` (each trial is one
            :func:`lrkit.train.run` at the trial's peak LR, scored on the task's ``"val"``
            split), or an objective ``f(lr, report) -> metric`` where ``report(step, value)``
            feeds pruning (it raises :class:`Pruned` when the trial should stop); with
            ``schedules`` it is called as ``f(lr, report, schedule=name)``. A NaN/inf
            result or :class:`lrkit.errors.DivergedError` means "diverged".
        low, high: the LR range, searched in log space. Default (tasks): a band of 1.5 decades
            on each side of the range test's suggestion.
        method: ``"grid"`` (log-spaced points, in increasing order), ``"random"``
            (log-uniform), ``"coarse_to_fine"`` (decades, then refine around the best),
            ``"tpe"`` / ``"gp"`` (Optuna's TPE and Gaussian-process samplers) or ``"auto"``
            (starts from the range test's suggestion, brackets it, refines by parabolic
            interpolation in log-LR; see :mod:`lrkit.search._policy`).
        n_trials: the number of trials (``grid``: its points). ``budget``: the total optimizer
            steps of all trials and the range test; a trial starts only if it fits. With
            neither: a task gets ``range test + 8 full runs`` (the grid: quarter-decade points),
            an objective 20 trials; ``notes`` says which.
        pruner: ``"auto"`` (Optuna's Hyperband over training steps for random/tpe/gp, none
            for grid/coarse_to_fine/auto), ``"none"``, ``"median"``, ``"halving"``,
            ``"hyperband"``. Divergence always stops a trial at once.
        cv_folds: k-fold cross-validation per LR (see :mod:`lrkit.search._folds`): the metric
            is the mean over folds, and the table keeps every fold's value and their spread.
        schedules: schedule families (:data:`lrkit.schedules.FAMILIES`) searched jointly with
            the peak LR.
        storage: ``None`` (``./lrkit-runs/lrkit.db``, SQLite), a database URL (e.g.
            ``postgresql://user:password@host/db``), ``"memory"``, or an Optuna storage.
        study_name: the study to create or join (default: derived from the task, method and
            settings, so the same call resumes the same study). A joiner must search the same
            task (``name@version``) or objective (``module.qualname``) with the same settings,
            else ``ValueError``; its ``n_trials``/``budget`` (totals over the study) may grow
            a study, except a grid's. A study whose planning raised or whose planner died is
            taken over by the next call.
        seed: seeds the samplers, the range test and every trial's training run.
        progress: show a live table of the study's trials.
        direction: for an objective, ``"minimize"`` (default) or ``"maximize"``.
        range_test: a :class:`lrkit.finder.RangeTestResult` to start ``auto`` from instead of
            running one (its ``cost_steps`` still count).
        options: worker and storage settings (:class:`SearchOptions`).

    Returns:
        :class:`SearchResult` (the whole study, as every worker sees it at the end).

    Example:
        >>> from lrkit import search  # doctest: +SKIP
        >>> res = search("digits", method="grid", n_trials=9, storage="memory")  # doctest: +SKIP
        >>> res.best_lr, res.trials[0].state  # doctest: +SKIP
    """
    optuna = _optuna()
    from ..tasks import Task
    from ..train import _rng_state

    rng = _rng_state()  # the caller's global RNGs (put back at the end)
    options = options or SearchOptions()
    if not isinstance(options, SearchOptions):
        raise TypeError(f"options must be a SearchOptions, got {type(options).__name__}")
    families = _check_args(method, pruner, low, high, n_trials, budget, cv_folds, schedules,
                           seed, study_name)
    from ..finder import put_back  # (lazily: finder imports torch)

    try:  # the folds and a subset draw the task's batches: a refusal puts them back
        task, runner, task_name = _runner_for(task_or_objective, cv_folds=cv_folds,
                                              options=options, seed=seed, low=low, high=high,
                                              direction=direction)
        if budget is not None:  # one that cannot pay for a single trial is refused before a step
            rt_steps = (range_test_steps(task) if isinstance(task, Task) and range_test is None
                        and (method == "auto" or low is None or high is None) else 0)
            if budget < rt_steps + runner.cost:
                raise ValueError(
                    f"budget={budget} optimizer steps cannot pay for "
                    + (f"the range test ({rt_steps} steps) and " if rt_steps else "")
                    + f"one trial ({runner.cost} steps: a full run"
                    + (f" x {cv_folds} folds" if cv_folds else "") + "); pass budget >= "
                    f"{rt_steps + runner.cost} (it counts optimizer steps, not runs), or "
                    "n_trials")
    except BaseException:
        put_back(task_or_objective, seed, rng)
        raise
    rank, world = _ddp()

    if rank > 0:
        try:
            return _follow(runner)
        finally:
            put_back(task, seed, rng)
    fams = families or ([task.recipe.schedule] if isinstance(task, Task) else [None])
    name = study_name or _default_name(task_name, method, dict(
        low=low, high=high, n=n_trials, budget=budget, cv=cv_folds, sched=families, seed=seed,
        pruner=pruner, subset=options.subset))
    st = open_storage(storage, heartbeat_interval=options.heartbeat_interval,
                      grace_period=options.grace_period, retries=options.retries,
                      pool_size=options.pool_size)
    where = describe(storage if isinstance(storage, str) or storage is None else st)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    display = None
    result: SearchResult | None = None
    try:
        helped = _tune_study(optuna, st, name, explicit=study_name is not None, where=where,
                             poll=options.poll)
        if helped is not None:  # lrkit tune's study: work through its queue of short runs
            _check_helper_args(name, task, method=method, pruner=pruner, low=low, high=high,
                               n_trials=n_trials, budget=budget, cv_folds=cv_folds,
                               schedules=families, range_test=range_test, options=options)
            display = _Display(bool(progress), f"lrkit search {name} (helping lrkit tune) on "
                                               f"{where}")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # heartbeat outside optimize
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                result = _help_tune(optuna, helped, task, options, display, where)
            return result
        sign = 1.0 if runner.higher_is_better else -1.0
        asked = _Asked(method=method, families=fams, low=low, high=high, n_trials=n_trials,
                       budget=budget, cv_folds=cv_folds, seed=seed, subset=options.subset,
                       identity=_identity(task), task_name=task_name)
        study, plan, planned = _open_study(optuna, st, name, runner,
                                           task if isinstance(task, Task) else None, asked,
                                           range_test, options, world)
        study.sampler = _sampler(optuna, plan, sign, joiner=not planned)
        study.pruner = _pruner(optuna, pruner, plan, runner, world)
        display = _Display(bool(progress), f"lrkit search {name} ({method}) on {where}")
        with warnings.catch_warnings():
            # lrkit runs the heartbeat itself around ask/tell (what Study.optimize does)
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            _work(optuna, study, plan, runner, sign, options, display, where)
        result = result_from_study(study, where, notes=plan.call_notes)
        display.update(result)  # (a finished study ran no trial to draw it)
    finally:
        if display is not None:
            display.close()
        optuna.logging.set_verbosity(verbosity)
        if world > 1:  # the followers return rank 0's result (or stop when it failed)
            _bcast(("stop", result.to_dict() if result is not None else None))
        put_back(task, seed, rng)
    return result


# ------------------------------------------------------------------ helping lrkit tune
#: seconds a helper waits for ``lrkit tune`` to create the study it was pointed at
_TUNE_WAIT = 1800.0
#: seconds a helper goes on polling a tune study where nothing waits or runs (tune stopped)
_TUNE_IDLE = 120.0


def _tune_study(optuna: Any, st: Any, name: str, *, explicit: bool, where: str,
                poll: float) -> Any:
    """The study ``name`` when it is ``lrkit tune``'s (user attribute ``lrkit == "tune"``), else
    ``None``. A name given explicitly that starts with ``tune-`` (tune's names) is waited for
    when the study does not exist yet: helpers may start before tune reaches its stage 3."""
    deadline = time.monotonic() + _TUNE_WAIT
    said = False
    while True:
        try:
            study = optuna.load_study(study_name=name, storage=st)
        except KeyError:
            study = None
        if study is not None:
            attrs = study.user_attrs
            if attrs.get("lrkit") == "tune":
                return study
            if not (explicit and name.startswith("tune-")) or "lrkit_spec" in attrs or \
                    _PLANNING in attrs:
                return None  # a search study (or one being planned by a search worker)
        elif not (explicit and name.startswith("tune-")):
            return None
        if time.monotonic() > deadline:
            raise RuntimeError(f"study {name!r} did not appear on {where} within "
                               f"{_TUNE_WAIT:.0f} s: start lrkit tune with that storage (names "
                               "starting with 'tune-' are lrkit tune's studies)")
        if not said:
            import sys

            print(f"lrkit search: waiting for lrkit tune to open study {name!r} on {where} "
                  "(names starting with 'tune-' are lrkit tune's)", file=sys.stderr, flush=True)
            said = True
        time.sleep(poll)


def _check_helper_args(name: str, task: Any, **given: Any) -> None:
    """A helper trains what tune queued: search settings have no meaning there."""
    from ..tasks import Task

    if not isinstance(task, Task):
        raise ValueError(f"study {name!r} is lrkit tune's: pass the task tune runs "
                         f"(task_or_objective), not an objective")
    options = given.pop("options")
    defaults = {"method": "auto", "pruner": "auto"}
    bad = [k for k, v in given.items() if v is not None and v != defaults.get(k)]
    if options.subset is not None:
        bad.append("options.subset")
    if options.fidelity != "steps":
        bad.append("options.fidelity")
    if bad:
        raise ValueError(f"study {name!r} is lrkit tune's: its trials carry their own LR, "
                         f"schedule and length; drop {', '.join(bad)}")


def _help_tune(optuna: Any, study: Any, task: Any, options: SearchOptions, display: _Display,
               where: str) -> SearchResult:
    """Work as a helper of a ``lrkit tune`` study: pop its queued confirmation runs and train
    each exactly as tune does (:func:`lrkit.tune.run_study_trial`: a miniature of the full run
    at the trial's LR, schedule family and length, scored on ``"val"``), until tune marks its
    stage 3 decided (or nothing has waited or run for ``_TUNE_IDLE`` seconds)."""
    from optuna.trial import TrialState as S

    from ..tune import run_study_trial

    info = study.user_attrs.get("lrkit_tune") or {}
    mine = {"task": task.key, "full_run_steps": task.recipe.steps,
            "warmup_steps": task.recipe.warmup_steps}
    diff = [f"{k}: {info.get(k)!r} != {v!r}" for k, v in mine.items() if info.get(k) != v]
    if diff:
        raise ValueError(f"task {task.name!r} is not the task of lrkit tune's study "
                         f"{study.study_name!r} ({'; '.join(diff)}): pass the same --task")
    seed = int(info.get("seed", 0))
    trained: list[int] = []
    idle_since: float | None = None
    while True:
        optuna.storages.fail_stale_trials(study)
        live = study.get_trials(deepcopy=False, states=(S.WAITING, S.RUNNING))
        if any(t.state == S.WAITING and "lrkit_arm" in t.user_attrs for t in live):
            trial = study.ask()
            if run_study_trial(study, trial, task, seed=seed) is not None:
                trained.append(trial.number)
                if display.enabled:
                    display.update(result_from_study(study, where))
            idle_since = None
            continue
        if study.user_attrs.get("lrkit_tune_done"):
            note = "lrkit tune has decided its confirmation stage"
            break
        if any(t.state == S.RUNNING for t in live):
            idle_since = None
        elif idle_since is None:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since > _TUNE_IDLE:
            note = f"nothing queued or running for {_TUNE_IDLE:.0f} s (lrkit tune stopped?)"
            break
        time.sleep(options.poll)
    res = result_from_study(study, where, notes=(
        f"helped lrkit tune: this worker trained {len(trained)} of its confirmation runs"
        + (f" (trials {', '.join(map(str, trained))})" if trained else "") + f"; {note}",))
    return dataclasses.replace(res, method="tune", metric_name=task.metric)


def _follow(runner: Any) -> SearchResult:
    """A non-zero DDP rank: train whatever rank 0 asks, then return its result."""
    while True:
        cmd, arg = _bcast()
        if cmd == "stop":
            if arg is None:
                raise RuntimeError("rank 0's search failed (see its error)")
            return SearchResult.from_dict(arg)
        if cmd == "range_test":
            _range_test(runner.base, **arg)
        elif cmd == "trial":
            runner(arg["lr"], arg["schedule"], lambda step, value: None, arg["sign"])


def range_test_steps(task: Any) -> int:
    """Steps of the range test a search runs on ``task``: the finder's default 100, but at most
    half a full run, and never fewer than 50."""
    return max(50, min(100, task.recipe.steps // 2))


def _range_test(task: Any, *, seed: int) -> Any:
    from ..finder import find_lr

    return find_lr(task, seed=seed, num_iter=range_test_steps(task))


#: user attribute of a study being planned: {"owner", "beat", "every"} while its planner lives,
#: {"owner", "failed": True, "error"} once its planning raised (Ctrl-C included)
_PLANNING = "lrkit_planning"
#: seconds a worker taking a study over waits before it looks whether its claim held
_SETTLE = 2.0


class _Lease:
    """A worker's claim to plan a study, kept in its ``lrkit_planning`` attribute.

    While it plans, a thread renews the claim's ``beat`` every ``every`` seconds; if planning
    raises (a bug in the loss, Ctrl-C), the claim is marked failed so that the next call takes
    the study over at once. Waiting workers judge a claim by whether it changes, on their own
    clock: no two machines' clocks are compared.
    """

    def __init__(self, study: Any, every: float) -> None:
        self.study, self.every = study, every
        self.owner = uuid.uuid4().hex
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def claim(self) -> None:
        self.study.set_user_attr(_PLANNING, {"owner": self.owner, "beat": time.time(),
                                             "every": self.every})

    def held(self) -> bool:
        return (self.study.user_attrs.get(_PLANNING) or {}).get("owner") == self.owner

    def _beat(self) -> None:
        while not self.stop.wait(self.every):
            try:
                if not self.held():
                    return  # taken over (this worker stalled past the grace period)
                self.claim()
            except Exception:  # noqa: BLE001 - a missed beat only risks a takeover
                pass

    def __enter__(self) -> "_Lease":
        self.thread = threading.Thread(target=self._beat, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, kind: Any, error: Any, tb: Any) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
        if error is not None:
            self.fail(error)

    def fail(self, error: BaseException) -> None:
        """Mark the claim failed (if still this worker's): the next caller takes over at once."""
        try:
            if self.held():
                self.study.set_user_attr(_PLANNING, {
                    "owner": self.owner, "failed": True,
                    "error": f"{type(error).__name__}: {error}"[:300]})
        except Exception:  # noqa: BLE001 - the planning error matters more; the claim
            pass  # then goes stale and is taken over after the grace period


def _await_plan(study: Any, options: SearchOptions) -> _Lease | None:
    """Wait until the study is planned (``None``), or take it over and return this worker's
    lease when its planner failed (marked so) or fell silent: its claim unchanged for 3 of its
    beat intervals (and at least this worker's grace period), e.g. a planner killed by SIGKILL.

    Several waiters may take over at once: each writes its claim, waits ``_SETTLE`` s and plans
    only if its claim is still the one stored (the last writer wins; the others wait on it).
    """
    seen: Any = ...
    since = time.monotonic()
    own_grace = options.grace_period or 3 * options.heartbeat_interval
    while True:
        attrs = study.user_attrs
        if attrs.get("lrkit_ready"):
            return None
        claim = attrs.get(_PLANNING) or {}
        if claim != seen:
            seen, since = claim, time.monotonic()
        grace = max(own_grace, 3 * float(claim.get("every", 0)))
        if claim.get("failed") or time.monotonic() - since > grace:
            lease = _Lease(study, options.heartbeat_interval)
            lease.claim()
            try:
                time.sleep(_SETTLE)
                won = lease.held() and not study.user_attrs.get("lrkit_ready")
            except BaseException as e:  # Ctrl-C while settling: leave no live-looking claim
                lease.fail(e)
                raise
            if won:
                return lease
            seen, since = ..., time.monotonic()  # another worker's claim won: wait on it
        time.sleep(options.poll)


def _create_or_load(optuna: Any, st: Any, name: str, direction: str,
                    options: SearchOptions) -> tuple[Any, _Lease | None]:
    """The study and, when this worker must plan it, its lease: the creator plans (creating a
    study is atomic: exactly one worker succeeds); a joiner waits for the plan, or takes the
    study over when its planner failed or died (:func:`_await_plan`)."""
    try:
        study = optuna.create_study(storage=st, study_name=name, direction=direction,
                                    load_if_exists=False)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=st)
        if study.direction.name.lower() != direction:
            raise ValueError(f"study {name!r} {study.direction.name.lower()}s; this search "
                             f"would {direction}") from None
        return study, _await_plan(study, options)
    lease = _Lease(study, options.heartbeat_interval)
    lease.claim()
    return study, lease


def _open_study(optuna: Any, st: Any, name: str, runner: Any, task: Any, asked: _Asked,
                range_test: Any, options: SearchOptions, world: int
                ) -> tuple[Any, _Plan, bool]:
    """Create the study (and plan it) or join it (and check it was planned the same way); the
    last item says whether this worker planned it."""
    direction = "maximize" if runner.higher_is_better else "minimize"
    study, lease = _create_or_load(optuna, st, name, direction, options)
    while lease is not None:  # this worker plans (nothing of the study is published yet)
        with lease:
            plan = _make_plan(runner, task, asked.method, asked.families, asked.low,
                              asked.high, asked.n_trials, asked.budget, asked.cv_folds,
                              asked.seed, range_test, world)
            plan.identity, plan.subset = asked.identity, asked.subset
            if lease.held():
                _publish(study, plan)
                return study, plan, True
        lease = _await_plan(study, options)  # taken over while this worker stalled
    return study, _joined_plan(study, name, asked), False


def _publish(study: Any, plan: _Plan) -> None:
    """Write the plan into the study (spec, range test, the grid's queue), then mark it ready.
    Points a planner killed mid-way had queued are voided first, so none is run twice."""
    from optuna.trial import TrialState as S

    storage = study._storage
    for t in study.get_trials(deepcopy=False, states=(S.WAITING,)):
        storage.set_trial_user_attr(t._trial_id, "lrkit_void", True)
        storage.set_trial_state_values(t._trial_id, S.FAIL)
    study.set_user_attr("lrkit_spec", plan.spec())
    if plan.range_test is not None:
        study.set_user_attr("lrkit_range_test", plan.range_test)
    for fam, lr in plan.grid:
        study.enqueue_trial({"lr": lr, "schedule": fam} if fam is not None else {"lr": lr})
    study.set_user_attr("lrkit_ready", True)


def _check_join(name: str, spec: dict, asked: _Asked) -> None:
    """Refuse, naming the difference, a call that would join a study planned for another task
    or objective, or with other settings (method, families, folds, range, subset, seed)."""
    theirs = spec.get("identity")
    if theirs is None:  # a study written before identities were stored: its task's name
        theirs, mine = spec["task"], asked.task_name
    else:
        mine = asked.identity
    if theirs != mine:
        raise ValueError(f"study {name!r} searches {theirs!r}, this call {mine!r}: pass the "
                         f"same task or objective, or another study_name")
    given = {"method": asked.method, "families": asked.families, "cv_folds": asked.cv_folds,
             "low": asked.low, "high": asked.high}
    strict = {"subset": asked.subset}  # None is a setting here ("all data"), not "unsaid"
    if asked.identity.startswith("task "):  # trials train with it (an objective ignores it)
        strict["seed"] = asked.seed
    for key, value in {**given, **strict}.items():
        if key not in spec or (value is None and key in given):
            continue
        if spec[key] != value and not (_is_real(value) and _is_real(spec[key])
                                       and math.isclose(value, spec[key], rel_tol=1e-9)):
            raise ValueError(f"study {name!r} was created with {key}={spec[key]!r}, this call "
                             f"has {key}={value!r}: use the same settings or another study_name")


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _joined_limits(name: str, spec: dict, asked: _Asked) -> tuple[int | None, int | None,
                                                                  list[str]]:
    """The trial limits of a call joining a study, and a note when they changed: the call's
    own when it gives any (totals over the study: a larger ``n_trials`` or ``budget`` runs the
    trials beyond the study's), else the study's. A grid's points are fixed: other limits are
    refused."""
    if asked.n_trials is None and asked.budget is None:
        return spec["n_trials"], spec["budget"], []
    if spec["method"] == "grid":
        for key in ("n_trials", "budget"):
            value = getattr(asked, key)
            if value is not None and value != spec[key]:
                raise ValueError(
                    f"study {name!r} is a grid of {len(spec['grid'])} points fixed when it was "
                    f"created ({key}={spec[key]!r}), this call has {key}={value!r}: a grid "
                    f"cannot grow; use another study_name for another grid")
        return spec["n_trials"], spec["budget"], []
    if (asked.n_trials, asked.budget) == (spec["n_trials"], spec["budget"]):
        return asked.n_trials, asked.budget, []
    changes = [f"{key} {spec[key]} -> {value}" for key, value in
               (("n_trials", asked.n_trials), ("budget", asked.budget)) if spec[key] != value]
    note = (f"this call changed the study's limits: {', '.join(changes)} (totals over the "
            f"study: the trials it already held count towards them)")
    return asked.n_trials, asked.budget, [note]


def _joined_plan(study: Any, name: str, asked: _Asked) -> _Plan:
    """The plan stored in the study, checked against this call, with this call's limits (which
    the study then records, for ``search show`` and later calls that give none)."""
    spec = study.user_attrs["lrkit_spec"]
    _check_join(name, spec, asked)
    n_trials, budget, notes = _joined_limits(name, spec, asked)
    if notes:
        study.set_user_attr("lrkit_spec", {**spec, "n_trials": n_trials, "budget": budget})
    return _Plan(method=spec["method"], families=spec["families"], low=spec["low"],
                 high=spec["high"], higher_is_better=spec["higher_is_better"],
                 metric=spec["metric"], n_trials=n_trials, budget=budget,
                 trial_cost=spec["trial_cost"], cv_folds=spec["cv_folds"], seed=spec["seed"],
                 starts=spec["starts"], range_test=study.user_attrs.get("lrkit_range_test"),
                 grid=[(f, lr) for f, lr in spec["grid"]], task_name=spec["task"],
                 notes=spec["notes"], identity=spec.get("identity", ""),
                 subset=spec.get("subset"), call_notes=notes)


def _make_plan(runner: Any, task: Any, method: str, fams: list, low: float | None,
               high: float | None, n_trials: int | None, budget: int | None,
               cv_folds: int | None, seed: int, range_test: Any, world: int) -> _Plan:
    notes: list[str] = []
    rt: dict | None = None
    starts: dict[str, float] = {}
    need_rt = task is not None and (method == "auto" or low is None or high is None)
    if need_rt:
        res = range_test
        if res is None:
            if world > 1:
                _bcast(("range_test", {"seed": seed}))
            res = _range_test(task, seed=seed)
        sug = res.suggestion
        lr0 = sug.lr if sug.lr is not None else task.recipe.default_lr
        for f in fams:
            v = sug.lr_for(_SUGGEST_FAMILY.get(f, "constant")) if sug.lr is not None else None
            starts[f or ""] = float(v if v is not None else lr0)
        rt = {"lr": sug.lr, "band": list(sug.band) if sug.band else None,
              "cost_steps": int(getattr(res, "cost_steps", 0) or len(res.lrs)),
              "starts": starts, "confidence": sug.confidence}
        if sug.lr is None:
            notes.append(f"the range test found no clear descent; started from the recipe's "
                         f"default LR {lr0:g}")
        if low is None:
            low = min(starts.values()) / 10**1.5
        if high is None:
            high = max(starts.values()) * 10**1.5
    elif method == "auto" and range_test is not None:
        sug = range_test.suggestion
        rt = {"lr": sug.lr, "band": list(sug.band) if sug.band else None,
              "cost_steps": int(getattr(range_test, "cost_steps", 0)), "starts": {}}
        for f in fams:
            starts[f or ""] = float(sug.lr_for(_SUGGEST_FAMILY.get(f, "constant"))
                                    if f is not None and sug.lr is not None
                                    else (sug.lr or math.sqrt(low * high)))
        rt["starts"] = starts
    elif method == "auto":
        notes.append("auto without a range test (objective): started at the middle of "
                     "[low, high] in log space")
    assert low is not None and high is not None
    if task is not None and method != "auto":
        for f in fams:
            starts.setdefault(f or "", math.sqrt(low * high))
    rt_cost = rt["cost_steps"] if rt else 0
    cost = runner.cost
    grid: list[tuple[str, float]] = []
    if method == "grid":
        if n_trials is not None:
            per_family = max(1, n_trials // len(fams))
        elif budget is not None:
            per_family = max(2, (budget - rt_cost) // (cost * len(fams)))
        else:
            per_family = int(round(math.log10(high / low) / 0.25)) + 1
            notes.append(f"grid: {per_family} points a quarter decade apart per family")
        for f in fams:
            for j in range(per_family):
                lr = low * (high / low) ** (j / (per_family - 1)) if per_family > 1 else low
                grid.append((f, float(lr)))
        n_trials = len(grid)
    elif n_trials is None and budget is None:
        if task is not None:
            budget = rt_cost + _DEFAULT_RUNS * cost
            notes.append(f"budget: {budget} optimizer steps (the range test's {rt_cost} + "
                         f"{_DEFAULT_RUNS} runs of {cost})")
        else:
            n_trials = _OBJECTIVE_TRIALS
            notes.append(f"n_trials: {n_trials} (objective, no budget given)")
    return _Plan(method=method, families=fams, low=float(low), high=float(high),
                 higher_is_better=runner.higher_is_better, metric=runner.metric,
                 n_trials=n_trials, budget=budget, trial_cost=cost, cv_folds=cv_folds,
                 seed=seed, starts=starts, range_test=rt, grid=grid,
                 task_name=getattr(task, "name", runner.metric), notes=notes)


def _sampler(optuna: Any, plan: _Plan, sign: float, *, joiner: bool = False) -> Any:
    """The study's sampler in this worker. Optuna's random, TPE and GP samplers draw from their
    own seeded generator, so workers seeded alike proposed the same first LRs (3 workers
    trained one LR 3 times): the worker that planned the study keeps ``plan.seed`` (a search of
    one worker repeats exactly, if it is not interrupted), a joiner draws its own (a resumed
    search too: it cannot be told from a joiner, so its later LRs are another draw). lrkit's
    policies seed each trial by its number, which differs across workers."""
    from ._policy import PolicySampler

    seed = secrets.randbelow(2**31) if joiner else plan.seed
    if plan.method == "random" or plan.method == "grid":
        return optuna.samplers.RandomSampler(seed=seed)
    if plan.method == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if plan.method == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    return PolicySampler(plan.method, sign=sign, starts=plan.starts, seed=plan.seed)


def _pruner(optuna: Any, name: str, plan: _Plan, runner: Any, world: int) -> Any:
    if world > 1 or name == "none" or (name == "auto" and plan.method in
                                       ("grid", "coarse_to_fine", "auto")):
        return optuna.pruners.NopPruner()
    steps = getattr(runner, "steps", None)  # None: an objective, whose steps are its own
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3,
                                           n_warmup_steps=steps // 5 if steps else 0)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=max(1, steps // 9) if steps else "auto", reduction_factor=3)
    return optuna.pruners.HyperbandPruner(
        min_resource=max(1, steps // 9) if steps else 1,
        max_resource=steps * (plan.cv_folds or 1) if steps else "auto", reduction_factor=3)


# ----------------------------------------------------------------------------- the worker
def _limits_reached(trials: Sequence[Any], plan: _Plan, states: Any) -> bool:
    live = [t for t in trials if not t.user_attrs.get("lrkit_void")]
    if plan.budget is not None and len(live) >= 4 * (plan.budget // plan.trial_cost + 1) + 10:
        return True  # a guard: trials skipped above a divergence point cost nothing
    if plan.n_trials is not None:
        # a diverged trial told as FAIL (no value to give it yet: an objective that returned
        # NaN before any finite result) counts too, or an objective that always diverges
        # would be asked for trials forever
        counted = sum(t.state in (states.COMPLETE, states.PRUNED, states.RUNNING,
                                  states.WAITING) or told_diverged(t) for t in live)
        if counted >= plan.n_trials:
            return True
    if plan.budget is not None:
        spent = (plan.range_test or {}).get("cost_steps", 0) + sum(
            int(t.user_attrs.get("steps", 0)) for t in live)
        # an objective's cost is what it reports: expect the largest seen so far
        cost = max([plan.trial_cost] + [int(t.user_attrs.get("steps", 0)) for t in live])
        running = sum(t.state == states.RUNNING for t in live) * cost
        if spent + running + cost > plan.budget:
            return True
    return False


def _penalty(trials: Sequence[Any], runner: Any, sign: float, out: _Outcome,
             states: Any) -> float | None:
    """The value a diverged trial is told with: the task's ``worst`` when finite, else the
    worst finite metric measured so far, else the run's first training loss."""
    if runner.worst is not None and math.isfinite(runner.worst):
        return float(runner.worst)
    vals = [t.value for t in trials if t.state == states.COMPLETE and t.value is not None
            and math.isfinite(t.value) and not t.user_attrs.get("diverged")]
    if vals:
        return min(vals) if sign > 0 else max(vals)
    if out.first_loss is not None and math.isfinite(out.first_loss):
        return float(out.first_loss)
    return None


def _work(optuna: Any, study: Any, plan: _Plan, runner: Any, sign: float,
          options: SearchOptions, display: _Display, where: str) -> None:
    from optuna.trial import TrialState as S

    storage = study._storage
    rank, world = _ddp()
    families = plan.families
    while True:
        optuna.storages.fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        waiting = any(t.state == S.WAITING for t in trials)
        running = any(t.state == S.RUNNING for t in trials)
        if not waiting:
            if plan.method == "grid" or _limits_reached(trials, plan, S):
                if running and getattr(storage, "get_heartbeat_interval", lambda: None)():
                    time.sleep(options.poll)  # a running trial may die and come back to us
                    continue
                break
        trial = study.ask()
        if plan.method == "grid" and "fixed_params" not in storage.get_trial(
                trial._trial_id).system_attrs:
            # another worker popped the last queued point between our look and our ask
            trial.set_user_attr("lrkit_void", True)
            study.tell(trial, state=S.PRUNED)
            continue
        with _Heartbeat(storage, trial):
            try:
                _run_trial(study, trial, trials, plan, runner, sign, families, world)
            except BaseException:
                # interrupted (Ctrl-C) or crashed: the trial is failed now, and its point goes
                # back to the queue so that the resumed study (or another worker) runs it
                _fail_and_requeue(study, trial, storage, S)
                raise
        if display.enabled:
            display.update(result_from_study(study, where))


def _fail_and_requeue(study: Any, trial: Any, storage: Any, S: Any) -> None:
    try:
        frozen = storage.get_trial(trial._trial_id)
        if frozen.state != S.RUNNING:
            return
        study.tell(trial, state=S.FAIL)
        if frozen.params and frozen.user_attrs.get("retry_of") is None:
            study.enqueue_trial(dict(frozen.params), user_attrs={"retry_of": trial.number})
    except Exception:  # noqa: BLE001 - the original error matters more; the heartbeat
        pass  # will fail the trial later if this could not


def _run_trial(study: Any, trial: Any, trials: Sequence[Any], plan: _Plan, runner: Any,
               sign: float, families: list, world: int) -> None:
    """Suggest, skip (above a divergence point) or train, and tell. ``trials`` is the study as
    the worker saw it just before asking (its divergence points and penalty values)."""
    from optuna.trial import TrialState as S

    if len(families) > 1:
        family = trial.suggest_categorical("schedule", families)
    else:
        family = families[0]
        if family is not None:
            trial.set_user_attr("schedule", family)
    lr = trial.suggest_float("lr", plan.low, plan.high, log=True)
    diverged_at = min((t.params["lr"] for t in trials
                       if (t.state == S.COMPLETE or told_diverged(t))
                       and t.user_attrs.get("diverged") and not t.user_attrs.get("skipped")
                       and t.params.get("schedule", t.user_attrs.get("schedule")) == family
                       and "lr" in t.params), default=math.inf)
    if lr >= diverged_at * (1 - 1e-12):
        # divergence is data: an LR at or above one that diverged is not worth a run
        value = _penalty(trials, runner, sign, _Outcome(None, 0, True, False, []), S)
        trial.set_user_attr("skipped", True)
        trial.set_user_attr("diverged", True)
        trial.set_user_attr("diverged_at", diverged_at)
        trial.set_user_attr("steps", 0)
        if value is None:
            study.tell(trial, state=S.FAIL)
        else:
            study.tell(trial, value)
        return

    def reporter(step: int, value: float) -> None:
        trial.report(value, step)
        if trial.should_prune():
            raise Pruned

    if world > 1:
        _bcast(("trial", {"lr": lr, "schedule": family, "sign": sign}))
    start = time.perf_counter()
    out = runner(lr, family if len(families) > 1 or family is not None else None, reporter, sign)
    trial.set_user_attr("steps", int(out.steps))
    trial.set_user_attr("seconds", time.perf_counter() - start)
    if out.folds:
        trial.set_user_attr("fold_metrics", out.folds)
        if len(out.folds) > 1:
            m = sum(out.folds) / len(out.folds)
            trial.set_user_attr("fold_std", math.sqrt(sum((v - m) ** 2 for v in out.folds)
                                                      / (len(out.folds) - 1)))
    if out.pruned:
        study.tell(trial, state=S.PRUNED)
        return
    if out.diverged:
        trial.set_user_attr("diverged", True)
        value = _penalty(trials, runner, sign, out, S)
        if value is None:
            study.tell(trial, state=S.FAIL)
        else:
            study.tell(trial, value)
        return
    trial.set_user_attr("metric", out.metric)
    study.tell(trial, out.metric)
