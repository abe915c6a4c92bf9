"""The measuring stick: exhaustive LR grids (the oracle) and method comparisons (regret tables).

- :func:`oracle` trains a task at every LR of a log-spaced grid (several seeds, full budget each)
  and finds the best LR and the **good band**: the grid LRs whose mean metric is within ``tol``
  (1% by default) relative of the best. The grid grows until the best is not at an edge.
- :func:`compare` lets each registered method choose an LR on a task (or train LR-free), trains
  a full run at that choice for each seed, and reports **regret** (relative metric gap to the
  oracle's best), **in band** and **cost** (training steps spent choosing, as a fraction of one
  full run).

Every run goes through :func:`lrkit.train.run`; runs fan out over worker processes, each pinned
to one thread, and oracle results are cached as JSON by task name and version.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import platform
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .errors import check_int, check_positive, check_range, require

__all__ = [
    "Oracle",
    "Choice",
    "MethodResult",
    "oracle",
    "compare",
    "methods",
    "register_method",
    "regret",
    "val_choice",
    "default_cache_dir",
    "markdown_table",
    "OptimizerResult",
    "parse_optimizer",
    "optimizer_runs",
    "compare_optimizers",
    "optimizer_table",
]


def default_cache_dir() -> Path:
    """``$LRKIT_CACHE``, else ``$XDG_CACHE_HOME/lrkit``, else ``~/.cache/lrkit``, as for the
    tasks' data (an empty ``LRKIT_CACHE`` wrote the oracle cache into the working folder)."""
    from .tasks._data import cache_root

    return cache_root()


def regret(metric: float, best: float, *, higher_is_better: bool) -> float:
    """Relative gap to the best: ``(best - m)/|best|`` if higher is better, else ``(m - best)/|best|``.

    A NaN or infinitely bad metric gives ``inf``; 0 means as good as the oracle's best.
    """
    if metric != metric or math.isinf(metric):
        return math.inf
    gap = (best - metric) if higher_is_better else (metric - best)
    return gap / max(abs(best), 1e-12)


def val_choice(task: Any, lrs: Sequence[float], seeds: Sequence[int]) -> tuple[int, list[float]]:
    """What a choice made on the validation split picks among full runs at ``lrs``: each LR's
    mean ``"val"`` metric over ``seeds`` (``task.worst`` when a run gives a non-finite one),
    and the index of the one val ranks first (the lower LR on a tie). Scored on test, its
    regret is the floor of every val-based method (tune, confirm, search) where the two
    splits disagree (``benchmarks/val_floor.py``)."""
    from . import train

    lrs = [check_positive(f"lrs[{i}]", lr) for i, lr in enumerate(lrs)]
    seeds = [check_int(f"seeds[{i}]", s) for i, s in enumerate(seeds)]
    if not lrs or not seeds:
        raise ValueError(f"lrs and seeds must each hold at least one value, got {len(lrs)} LRs "
                         f"and {len(seeds)} seeds")
    sign = 1.0 if task.higher_is_better else -1.0
    val = [_mean_or_worst(task, [train.run(task, lr, seed=s, eval_split="val").metric
                                 for s in seeds]) for lr in lrs]
    best = max(range(len(lrs)), key=lambda k: (sign * val[k], -float(lrs[k])))
    return best, val


def _mean_or_worst(task: Any, metrics: Sequence[float]) -> float:
    """The mean over seeds, or ``task.worst`` when a run gave a non-finite metric (a diverged
    run scores the worst, as in the oracle's mean)."""
    return (float(np.mean(metrics)) if all(math.isfinite(v) for v in metrics)
            else float(task.worst))


# ------------------------------------------------------------------------------------- oracle
@dataclass(frozen=True)
class Oracle:
    """An exhaustive grid: metric per (LR, seed), best LR and good band."""

    task: str
    version: str
    steps: int
    higher_is_better: bool
    metric_name: str
    grid: list[float]
    seeds: list[int]
    metrics: list[list[float]]  # [lr index][seed index]
    diverged: list[list[bool]]
    tol: float
    wall_time: float
    run_time: float  # mean seconds of one full run
    optimizer: str | None = None  # an optimizer spec replacing the recipe's (None: the recipe's)

    @property
    def mean(self) -> list[float]:
        return [float(np.mean(m)) for m in self.metrics]

    @property
    def std(self) -> list[float]:
        with np.errstate(invalid="ignore"):  # all-inf rows (diverged losses) give nan
            return [float(np.std(m)) for m in self.metrics]

    @property
    def best_index(self) -> int:
        mean = np.array(self.mean)
        score = np.where(np.isfinite(mean), mean if self.higher_is_better else -mean, -np.inf)
        return int(np.argmax(score))

    @property
    def best_lr(self) -> float:
        return self.grid[self.best_index]

    @property
    def best_metric(self) -> float:
        return self.mean[self.best_index]

    @property
    def good(self) -> list[bool]:
        """Which grid LRs are within ``tol`` relative of the best mean metric."""
        best = self.best_metric
        return [regret(m, best, higher_is_better=self.higher_is_better) <= self.tol
                for m in self.mean]

    @property
    def band(self) -> tuple[float, float]:
        """The good band ``(low, high)`` around the best LR.

        Walking out from the best grid LR while grid LRs stay good, each edge lies where the mean
        metric, linearly interpolated in log10(LR) between the last good and the first bad grid
        LR, crosses the tolerance (``regret == tol``); next to a diverged (non-finite) LR the
        edge is the last good grid LR. So a band is never wider than the grid says, and a
        single good grid point still gets the part of its neighbourhood that is measured good.
        """
        good, i, mean = self.good, self.best_index, self.mean
        x = np.log10(self.grid)
        sign = 1.0 if self.higher_is_better else -1.0
        threshold = self.best_metric - sign * self.tol * max(abs(self.best_metric), 1e-12)

        def edge(direction: int) -> float:
            j = i
            while 0 <= j + direction < len(good) and good[j + direction]:
                j += direction
            k = j + direction
            if not (0 <= k < len(good)) or not math.isfinite(mean[k]):
                return float(10 ** x[j])
            frac = (mean[j] - threshold) / (mean[j] - mean[k]) if mean[j] != mean[k] else 0.0
            return float(10 ** (x[j] + frac * (x[k] - x[j])))

        return edge(-1), edge(+1)

    def in_band(self, lr: float) -> bool:
        lo, hi = self.band
        return lo * (1 - 1e-9) <= lr <= hi * (1 + 1e-9)

    def regret(self, metric: float) -> float:
        return regret(metric, self.best_metric, higher_is_better=self.higher_is_better)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(mean=self.mean, std=self.std, best_lr=self.best_lr,
                 best_metric=self.best_metric, band=list(self.band), good=self.good)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Oracle":
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in names})


def _log_grid(center: float, points: int, step_decades: float) -> list[float]:
    half = (points - 1) / 2
    return [float(center * 10 ** (step_decades * (i - half))) for i in range(points)]


def _run_one(job: tuple) -> dict:
    """Worker: one full training run (a task is re-built by name in the worker process)."""
    import torch

    from . import tasks
    from .train import run

    torch.set_num_threads(1)
    task_ref, lr, seed, steps, eval_split, method = job[:6]
    spec = job[6] if len(job) > 6 else None
    task = tasks.get(task_ref)
    kwargs: dict[str, Any] = {}
    if method is not None:
        factory, lr = _lr_free_factory(method, task)
        kwargs["optimizer_factory"] = factory
    elif spec is not None:
        factory, lr = _optimizer_factory(spec, task, lr)
        kwargs["optimizer_factory"] = factory
    try:
        r = run(task, lr, steps=steps, seed=seed, eval_split=eval_split, **kwargs)
    except Exception as e:  # noqa: BLE001
        from .optim._registry import NAMES

        name = method if method is not None else (
            parse_optimizer(spec)[0] if spec is not None else None)
        if name is None or name not in NAMES or not NAMES[name][1]:
            raise  # lrkit's and torch's own optimizers: a crash is a bug to see, not a result
        # a third-party optimizer that crashes on this task (D-Adaptation SGD divides by the
        # first step's gradient norm, taken over param groups with a non-zero LR: 0 under a
        # warmup that starts at LR 0) is a result: a failed run, with the error
        return {"lr": job[1], "seed": seed, "metric": task.worst, "diverged": True,
                "wall_time": 0.0, "error": f"{type(e).__name__}: {e}"}
    out = {"lr": job[1], "seed": seed, "metric": r.metric, "diverged": r.diverged,
           "wall_time": r.wall_time}
    if spec is not None:  # the LR trajectory of adaptive optimizers, thinned to <= 100 points
        every = max(1, len(r.lrs) // 100)
        out["lrs"] = [float(x) for x in r.lrs[::every]]
        out["final_lr"] = float(r.lrs[-1]) if r.lrs else None
    return out


def _map(jobs: list[tuple], workers: int, desc: str, progress: bool) -> list[dict]:
    """Run jobs in ``workers`` processes (in-process when 1), with a progress bar."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc=desc, disable=not progress)
    out: list[dict] = []
    try:
        if workers <= 1:
            for job in jobs:
                out.append(_run_one(job))
                bar.update(1)
        else:
            import multiprocessing as mp

            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
                for res in pool.map(_run_one, jobs):
                    out.append(res)
                    bar.update(1)
    finally:
        bar.close()
    return out


def oracle(
    task: Any,
    *,
    points: int = 25,
    step_decades: float = 0.25,
    center: float | None = None,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    tol: float = 0.01,
    max_extend: int = 6,
    workers: int = 2,
    cache_dir: str | Path | None = None,
    refresh: bool = False,
    progress: bool = True,
    optimizer: str | None = None,
) -> Oracle:
    """The exhaustive LR grid of ``task`` (a name, a ``module:function`` reference or a Task name).

    With ``optimizer`` (a spec for :func:`parse_optimizer`, e.g. ``"adam"`` or
    ``"sgdhd:hypergrad=multiplicative"``) the recipe's optimizer is replaced by that one (its
    non-LR settings carried over where they apply, see :func:`optimizer_runs`) and the grid is
    centred on its textbook default LR: the per-optimizer oracle.

    The grid holds ``points`` LRs spaced ``step_decades`` apart (log10) around ``center`` (the
    recipe's default LR by default; the default grid spans 10^±3 around it in quarter decades);
    while the best mean metric sits at an edge, the grid grows by
    two points on that side (at most ``max_extend`` times). Each LR is trained for the recipe's
    full budget with every seed. Cached in ``cache_dir/oracle/<name>@<version>.json``.
    """
    from . import tasks

    points = check_int("points", points, minimum=13)
    check_positive("step_decades", step_decades)
    seeds = [check_int("seeds[]", s, minimum=0) for s in seeds]
    if len(seeds) < 3:
        raise ValueError(f"seeds must hold at least 3 seeds, got {seeds!r}")
    check_range("tol", tol, 0.0, 1.0, high_open=True)
    workers = check_int("workers", workers, minimum=1)
    max_extend = check_int("max_extend", max_extend, minimum=0)
    if center is not None:
        check_positive("center", center)
    t = tasks.get(task) if isinstance(task, str) else task
    ref = task if isinstance(task, str) else t.name
    if optimizer is not None:
        opt_name, _ = parse_optimizer(optimizer)
        from .optim import default_lr

        c = center or default_lr(opt_name)
        tag = "-" + "".join(ch if ch.isalnum() or ch in "._=" else "_" for ch in optimizer)
    else:
        c = center or t.recipe.default_lr
        tag = ""
    from .tasks.base import file_name

    path = (Path(cache_dir or default_cache_dir()) / "oracle"
            / f"{file_name(t.key)}{tag}-c{c:g}-p{points}-d{step_decades:g}.json")
    if path.exists() and not refresh:
        cached = Oracle.from_dict(json.loads(path.read_text()))
        if cached.seeds == seeds and cached.steps == t.recipe.steps and cached.tol == tol:
            return cached
    grid = _log_grid(c, points, step_decades)
    results: dict[tuple[float, int], dict] = {}
    start = time.perf_counter()
    for _ in range(max_extend + 1):
        todo = [(ref, lr, s, None, "test", None, optimizer) for lr in grid for s in seeds
                if (lr, s) not in results]
        desc = f"oracle {t.name}" + (f" {optimizer}" if optimizer else "")
        for r in _map(todo, workers, desc, progress):
            results[(r["lr"], r["seed"])] = r
        o = _make_oracle(t, grid, seeds, results, tol, time.perf_counter() - start, optimizer)
        i = o.best_index
        factor = 10 ** step_decades
        if i == 0:
            grid = [grid[0] / factor**2, grid[0] / factor] + grid
        elif i == len(grid) - 1:
            grid = grid + [grid[-1] * factor, grid[-1] * factor**2]
        else:
            break
    try:  # a cache that cannot be written costs the next call a grid, not this one's result
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(o.to_dict(), indent=1))
        tmp.replace(path)
    except OSError as e:
        warnings.warn(f"the oracle of {t.name} is not cached: cannot write {str(path)!r} "
                      f"({e.strerror or type(e).__name__}); set LRKIT_CACHE to a writable "
                      "folder", stacklevel=2)
    return o


def _make_oracle(t: Any, grid: list[float], seeds: list[int], results: dict, tol: float,
                 wall: float, optimizer: str | None = None) -> Oracle:
    metrics = [[results[(lr, s)]["metric"] for s in seeds] for lr in grid]
    diverged = [[results[(lr, s)]["diverged"] for s in seeds] for lr in grid]
    run_time = float(np.mean([r["wall_time"] for r in results.values()]))
    return Oracle(task=t.name, version=t.version, steps=t.recipe.steps,
                  higher_is_better=t.higher_is_better, metric_name=t.metric, grid=list(grid),
                  seeds=list(seeds), metrics=metrics, diverged=diverged, tol=tol,
                  wall_time=wall, run_time=run_time, optimizer=optimizer)


# ------------------------------------------------------------------------------------ methods
@dataclass(frozen=True)
class Choice:
    """A method's choice for one seed: an LR (``None`` for LR-free methods) and its cost."""

    lr: float | None
    cost_steps: int = 0
    lr_free: str | None = None  # name of the LR-free optimizer the full run uses
    note: str = ""


#: name -> (description, chooser(task, seed) -> Choice)
_METHODS: dict[str, tuple[str, Callable[[Any, int], Choice]]] = {}
#: name -> (module, pip package, lrkit extra) of an optional package the method needs
_NEEDS: dict[str, tuple[str, str, str]] = {}


def register_method(name: str, description: str,
                    needs: tuple[str, str, str] | None = None) -> Callable:
    """Decorator registering ``chooser(task, seed) -> Choice`` under ``name`` (``needs``: the
    ``(module, pip package, lrkit extra)`` of an optional package it imports)."""

    def deco(fn: Callable[[Any, int], Choice]) -> Callable[[Any, int], Choice]:
        _METHODS[name] = (description, fn)
        if needs is not None:
            _NEEDS[name] = needs
        return fn

    return deco


def _available(name: str) -> bool:
    return name not in _NEEDS or importlib.util.find_spec(_NEEDS[name][0]) is not None


def _require_method(name: str) -> Any:
    """The optional module method ``name`` needs (its ``needs``), or a MissingDependency."""
    module, package, extra = _NEEDS[name]
    return require(module, package=package, extra=extra, needed_by=f"the {name} method")


def methods() -> dict[str, str]:
    """Registered method names and their one-line descriptions."""
    return {k: v[0] for k, v in _METHODS.items()}


@register_method("default", "the recipe's textbook default LR (0.1 SGD, 1e-3 Adam): the naive baseline")
def _default(task: Any, seed: int) -> Choice:
    return Choice(task.recipe.default_lr)


def _finder_choice(task: Any, seed: int, rule: str, **kwargs: Any) -> Choice:
    from .finder import find_lr

    res = find_lr(task, seed=seed, method=rule, **kwargs)
    # the LR for the task's recipe: lrkit's settings for its schedule family (the cosine peak on
    # an annealed recipe); a peer's rule has one number, used as its users use it
    lr = res.suggestion.lr_for(task.recipe.schedule)
    cost = int(getattr(res, "cost_steps", len(res.lrs)))
    if lr is None or not math.isfinite(lr):
        # no suggestion: a user would fall back to the recipe default
        return Choice(task.recipe.default_lr, cost, note="no suggestion; default used")
    return Choice(float(lr), cost)


# fastai's lr_find defaults: start_lr=1e-7, end_lr=10, num_it=100, stop_div at 4x best smoothed
# loss (fastai/callback/schedule.py, LRFinder); the suggestion functions read its smoothed losses.
for _rule in ("minimum", "steep", "valley", "slide"):
    register_method(f"fastai-{_rule}", f"fastai lr_find (1e-7..10, 100 it), suggest_funcs={_rule}")(
        lambda task, seed, _r=_rule: _finder_choice(task, seed, _r, start_lr=1e-7, end_lr=10.0,
                                                     num_iter=100))


@register_method("lightning", "Lightning Tuner.lr_find (1e-8..1, 100 it) and its suggestion")
def _lightning(task: Any, seed: int) -> Choice:
    # Lightning tuner/lr_finder.py defaults: min_lr=1e-8, max_lr=1, num_training=100,
    # mode="exponential", and its suggestion and smoothing (suggest.lightning: the same answer as
    # Lightning's _LRFinder.suggestion on 168 of 168 recorded curves). The sweep is lrkit's:
    # its LR grid (Lightning's skips one step: at most 1.2x apart at a step) and fastai's stop
    # rule, not Lightning's early_stop_threshold=4.0 (which compares with a first smoothed loss
    # debiased to half its value, and stopped 1-9 steps earlier on 77 of 168 curves; applied to
    # the built-in tasks' sweeps it changes no suggestion, 12 of 12).
    return _finder_choice(task, seed, "lightning", start_lr=1e-8, end_lr=1.0, num_iter=100)


@register_method("lrkit", "lrkit.find_lr default rule (100 steps)")
def _lrkit(task: Any, seed: int) -> Choice:
    return _finder_choice(task, seed, "lrkit")


@register_method("lrkit-confirm", "lrkit.find_lr(confirm=True): range test + short runs on val, "
                 "travelling window")
def _lrkit_confirm(task: Any, seed: int) -> Choice:
    return _finder_choice(task, seed, "lrkit", confirm=True)


@register_method("search-auto", "lrkit.search(method='auto'): range test + 3 full runs on val",
                 needs=("optuna", "optuna", "search"))
def _search_auto(task: Any, seed: int) -> Choice:
    from .search import bench_choice

    lr, cost = bench_choice(task, seed)
    return Choice(lr, cost)


@register_method("torch-lr-finder", "torch-lr-finder 0.2 (the real package): steepest gradient",
                 needs=("torch_lr_finder", "torch-lr-finder", "peers"))
def _torch_lr_finder(task: Any, seed: int) -> Choice:
    import torch

    peer = _require_method("torch-lr-finder")
    LRFinder, TrainDataLoaderIter = peer.LRFinder, peer.TrainDataLoaderIter
    from .train import seed_everything

    seed_everything(seed)
    model = task.build_model(seed)

    class LossModel(torch.nn.Module):
        """forward(batch) -> the task's loss, so any batch layout fits torch-lr-finder."""

        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, batch: Any) -> torch.Tensor:
            return task.loss(self.inner, batch)

    class Batches(TrainDataLoaderIter):
        def __init__(self) -> None:
            self.it = task.batches(seed)
            self.data_loader = self  # read only for auto_reset bookkeeping

        def __next__(self) -> tuple:
            return next(self.it), torch.zeros(())

        def inputs_labels_from_batch(self, batch: Any) -> tuple:  # pragma: no cover
            return batch

    wrapped = LossModel()
    opt = task.recipe.make_optimizer(wrapped.parameters(), 1e-7)
    finder = LRFinder(wrapped, opt, lambda out, _y: out, device="cpu")
    finder.range_test(Batches(), end_lr=10.0, num_iter=100, step_mode="exp", diverge_th=5)
    lrs = np.array(finder.history["lr"])
    losses = np.array(finder.history["loss"])
    # torch-lr-finder plot(suggest_lr=True): skip_start=10, skip_end=5, then
    # min_grad_idx = np.gradient(np.array(losses)).argmin() (torch_lr_finder/lr_finder.py)
    lrs_s, losses_s = lrs[10:-5], losses[10:-5]
    cost = len(lrs)
    if len(losses_s) < 2:
        return Choice(task.recipe.default_lr, cost, note="curve too short; default used")
    lr = float(lrs_s[np.gradient(losses_s).argmin()])
    return Choice(lr, cost)


def _lr_free_factory(name: str, task: Any) -> tuple[Callable, Any]:
    """Optimizer factory for an LR-free baseline, and the ``lr`` argument of its run.

    Prodigy and D-Adaptation estimate the step size themselves; their ``lr`` is a multiplier,
    run at 1.0 through the recipe's schedule shape (their authors recommend keeping the usual
    decay). Schedule-free optimizers replace the decay: they run at a constant LR.
    """
    from .schedules import constant

    sgd = task.recipe.optimizer == "sgd"
    kw = task.recipe.optimizer_kwargs
    wd = float(kw.get("weight_decay", 0.0))
    if name not in ("prodigy", "dadapt", "schedulefree"):
        raise ValueError(f"unknown LR-free optimizer {name!r}")
    mod = _require_method(name)
    if name == "prodigy":
        return (lambda p: mod.Prodigy(p, lr=1.0, weight_decay=wd)), 1.0
    if name == "dadapt":
        if sgd:
            return (lambda p: mod.DAdaptSGD(
                p, lr=1.0, momentum=float(kw.get("momentum", 0.0)), weight_decay=wd)), 1.0
        return (lambda p: mod.DAdaptAdam(p, lr=1.0, weight_decay=wd)), 1.0
    # schedulefree: the package's own defaults: AdamWScheduleFree lr=0.0025, SGDScheduleFree lr
    # needs a user value (its README uses the SGD default LR); warmup 5% of the run
    warm = max(1, task.recipe.steps // 20)
    if sgd:
        lr = task.recipe.default_lr
        return (lambda p: mod.SGDScheduleFree(
            p, lr=lr, momentum=float(kw.get("momentum", 0.9)) or 0.9,
            warmup_steps=warm, weight_decay=wd)), constant(lr)
    return (lambda p: mod.AdamWScheduleFree(
        p, lr=0.0025, warmup_steps=warm, weight_decay=wd)), constant(0.0025)


for _name, _desc, _pkg in (
        ("prodigy", "Prodigy (LR-free Adam, lr=1.0)", "prodigyopt"),
        ("dadapt", "D-Adaptation (DAdaptSGD / DAdaptAdam by recipe, lr=1.0)", "dadaptation"),
        ("schedulefree", "schedule-free SGD / AdamW at the package default LR", "schedulefree")):
    register_method(_name, _desc, needs=(_pkg, _pkg, "peers"))(
        lambda task, seed, _n=_name: Choice(None, 0, lr_free=_n))


@dataclass
class MethodResult:
    """One method on one task: its choices per seed and the full runs that followed."""

    task: str
    method: str
    lrs: list[float | None]
    metrics: list[float]
    diverged: list[bool]
    cost_steps: float
    cost_fraction: float
    regret: float
    regret_se: float  # standard error of the regret from the seeds' spread (noise floor)
    in_band: bool | None
    spread: float | None
    choose_time: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _choose(job: tuple) -> dict:
    import torch

    from . import tasks

    torch.set_num_threads(1)
    task_ref, method, seed = job
    task = tasks.get(task_ref)
    start = time.perf_counter()
    c = _METHODS[method][1](task, seed)
    return {"method": method, "seed": seed, "choice": asdict(c),
            "time": time.perf_counter() - start}


def check_methods(method_names: Iterable[str] | None) -> list[str]:
    """The method names to compare: all whose optional packages are installed when ``None``
    (the others are named in a warning). An unknown name is a ValueError; a named method whose
    package is missing is a :class:`~lrkit.errors.MissingDependency`, before any run."""
    if method_names is None:
        names = [n for n in _METHODS if _available(n)]
        skipped = [n for n in _METHODS if n not in names]
        if skipped:
            extras = sorted({_NEEDS[n][2] for n in skipped})
            warnings.warn(f"methods {skipped} skipped: their packages are not installed "
                          f"(pip install 'lrkit[{','.join(extras)}]')", stacklevel=2)
        return names
    names = list(method_names)
    for n in names:
        if n not in _METHODS:
            from .errors import closest

            hint = closest(n, _METHODS)
            raise ValueError(f"unknown method {n!r}" + (f"; did you mean {hint!r}?" if hint else "")
                             + f" (known: {sorted(_METHODS)})")
        if n in _NEEDS:
            _require_method(n)
    return names


def compare(
    task: Any,
    method_names: Iterable[str] | None = None,
    *,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    workers: int = 2,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    oracle_result: Oracle | None = None,
) -> list[MethodResult]:
    """Each method chooses (per seed), then one full run per seed at its choice; scored vs oracle."""
    from . import tasks

    t = tasks.get(task) if isinstance(task, str) else task
    ref = task if isinstance(task, str) else t.name
    names = check_methods(method_names)
    seeds = [check_int("seeds[]", s, minimum=0) for s in seeds]
    o = oracle_result or oracle(ref, seeds=seeds if len(seeds) >= 3 else (0, 1, 2, 3, 4),
                                workers=workers, cache_dir=cache_dir, progress=progress)
    choices = _map_choose([(ref, m, s) for m in names for s in seeds], workers, progress,
                          f"choose {t.name}")
    runs = []
    for c in choices:
        ch = c["choice"]
        lr = ch["lr"] if ch["lr_free"] is None else None
        runs.append((ref, lr, c["seed"], None, "test", ch["lr_free"]))
    done = _map(runs, workers, f"runs {t.name}", progress)
    out = []
    for m in names:
        mine = [(c, r) for c, r in zip(choices, done) if c["method"] == m]
        metrics = [r["metric"] for _, r in mine]
        lrs = [c["choice"]["lr"] if c["choice"]["lr_free"] is None else None for c, _ in mine]
        mean_metric = float(np.mean(metrics))
        cost = float(np.mean([c["choice"]["cost_steps"] for c, _ in mine]))
        real = [lr for lr in lrs if lr is not None]
        out.append(MethodResult(
            task=t.name, method=m, lrs=lrs, metrics=metrics,
            diverged=[r["diverged"] for _, r in mine], cost_steps=cost,
            cost_fraction=cost / t.recipe.steps, regret=o.regret(mean_metric),
            regret_se=_regret_se(metrics, o.best_metric),
            in_band=(all(o.in_band(lr) for lr in real) if real else None),
            spread=(max(real) / min(real) if real else None),
            choose_time=float(np.mean([c["time"] for c, _ in mine])),
            notes=sorted({c["choice"]["note"] for c, _ in mine if c["choice"]["note"]})))
    return out


def _regret_se(metrics: Sequence[float], best: float) -> float:
    """Standard error of the regret of the mean of ``metrics``: ``std / sqrt(n) / |best|``
    (sample std; NaN with fewer than 2 finite runs)."""
    m = np.asarray([v for v in metrics if math.isfinite(v)], dtype=float)
    if m.size < 2:
        return math.nan
    return float(np.std(m, ddof=1) / math.sqrt(m.size) / max(abs(best), 1e-12))


def _map_choose(jobs: list[tuple], workers: int, progress: bool, desc: str) -> list[dict]:
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc=desc, disable=not progress)
    out = []
    try:
        if workers <= 1:
            for j in jobs:
                out.append(_choose(j))
                bar.update(1)
        else:
            import multiprocessing as mp

            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
                for r in pool.map(_choose, jobs):
                    out.append(r)
                    bar.update(1)
    finally:
        bar.close()
    return out


# --------------------------------------------------------------------------------- optimizers
#: optimizers that take SGD's ``momentum``
_SGD_FAMILY = ("sgd", "sgdhd", "dadapt_sgd", "schedulefree_sgd")
#: optimizers whose ``weight_decay`` is decoupled (AdamW-style) with the settings used here
_DECOUPLED = ("adamw", "prodigy", "schedulefree", "schedulefree_adamw")


def parse_optimizer(spec: str) -> tuple[str, dict[str, Any]]:
    """``"name"`` or ``"name:key=value:key=value"`` -> ``(name, kwargs)``.

    Values are Python literals where they parse (``hypergrad_lr=0.02``, ``nesterov=True``) and
    strings otherwise (``hypergrad=multiplicative``). ``lr=...`` fixes the LR the bench uses
    instead of the optimizer's textbook default.

    >>> parse_optimizer("sgdhd:hypergrad=multiplicative:hypergrad_lr=0.02")
    ('sgdhd', {'hypergrad': 'multiplicative', 'hypergrad_lr': 0.02})

    Raises:
        ValueError: an unknown optimizer name or a ``key=value`` part without ``=``.
        MissingDependency: the optimizer's package is not installed.
    """
    import ast

    from .errors import check_choice
    from .optim import names, optimizer_class

    if not isinstance(spec, str) or not spec:
        raise TypeError(f"optimizer spec must be a non-empty string, got {spec!r}")
    name, *parts = spec.split(":")
    check_choice("optimizer", name, names())
    optimizer_class(name)  # its package installed (MissingDependency before any run otherwise)
    kwargs: dict[str, Any] = {}
    for part in parts:
        key, eq, raw = part.partition("=")
        if not eq or not key:
            raise ValueError(f"optimizer spec {spec!r}: expected key=value after ':', got {part!r}")
        try:
            kwargs[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            kwargs[key] = raw
    return name, kwargs


def _optimizer_kwargs(name: str, task: Any, extra: dict[str, Any]) -> dict[str, Any]:
    """The task recipe's non-LR settings translated to optimizer ``name``.

    SGD-family optimizers keep the recipe's momentum (0.9 when the recipe is not SGD); Adam-family
    ones keep its ``betas``; weight decay carries over only between decays of the same kind (L2
    <-> L2, decoupled <-> decoupled; Adam-HD and D-Adapt Adam switch to decoupled decay for an
    AdamW recipe); schedule-free optimizers warm up for 5% of the run.
    """
    import inspect

    from .optim import is_schedule_free, optimizer_class

    accepted = inspect.signature(optimizer_class(name).__init__).parameters
    rk = dict(task.recipe.optimizer_kwargs)
    kw: dict[str, Any] = {}
    recipe_decoupled = task.recipe.optimizer == "adamw"
    if name in _SGD_FAMILY and "momentum" in accepted:
        kw["momentum"] = float(rk.get("momentum", 0.0 if task.recipe.optimizer == "sgd" else 0.9))
        if name == "schedulefree_sgd" and kw["momentum"] == 0:
            kw["momentum"] = 0.9  # its averaging needs an interpolation weight in (0, 1)
    if "betas" in accepted and "betas" in rk and name not in ("rmsprop", "adagrad", "adadelta"):
        kw["betas"] = tuple(rk["betas"])
    wd = float(rk.get("weight_decay", 0.0))
    if wd and "weight_decay" in accepted:
        if recipe_decoupled and name == "adamhd":
            kw.update(weight_decay=wd, decoupled_weight_decay=True)
        elif recipe_decoupled and name in ("dadapt", "dadapt_adam"):
            kw.update(weight_decay=wd, decouple=True)
        elif recipe_decoupled == (name in _DECOUPLED):
            kw["weight_decay"] = wd
    if is_schedule_free(name):
        kw["warmup_steps"] = max(1, task.recipe.steps // 20)
    kw.update(extra)
    return kw


def _optimizer_factory(spec: str, task: Any, lr: float) -> tuple[Callable, Any]:
    """``(factory(params) -> optimizer, lr or schedule for train.run)`` for an optimizer spec.

    The run keeps the recipe's schedule shape with ``lr`` as its peak (an HD optimizer adapts
    under it, an LR-free one scales it); a schedule-free optimizer runs at a constant ``lr``.
    """
    from .optim import is_schedule_free, make_optimizer
    from .schedules import constant

    name, extra = parse_optimizer(spec)
    extra.pop("lr", None)
    kw = _optimizer_kwargs(name, task, extra)

    def factory(params: Any) -> Any:
        return make_optimizer(name, params, lr, **kw)

    return factory, (constant(lr) if is_schedule_free(name) else lr)


def optimizer_runs(
    task: Any,
    optimizer: str,
    lrs: Sequence[float],
    *,
    seeds: Sequence[int] = (0, 1, 2),
    workers: int = 2,
    progress: bool = True,
) -> list[dict]:
    """Full training runs of ``task`` with ``optimizer`` (a spec) at every LR and seed.

    Each result holds ``lr``, ``seed``, ``metric`` (test split), ``diverged``, ``wall_time``,
    ``lrs`` (the LR trajectory, <= 100 points) and ``final_lr``.
    """
    from . import tasks

    parse_optimizer(optimizer)
    ref = task if isinstance(task, str) else task.name
    tasks.get(ref)
    lrs = [check_positive("lrs[]", lr) for lr in lrs]
    seeds = [check_int("seeds[]", s, minimum=0) for s in seeds]
    workers = check_int("workers", workers, minimum=1)
    return _map(_optimizer_jobs(ref, optimizer, lrs, seeds), workers, f"{ref} {optimizer}",
                progress)


def _optimizer_jobs(ref: str, spec: str, lrs: Sequence[float], seeds: Sequence[int]
                    ) -> list[tuple]:
    """``_run_one`` jobs: full runs of task ``ref`` with optimizer ``spec`` at every LR and
    seed, scored on the test split."""
    return [(ref, lr, s, None, "test", None, spec) for lr in lrs for s in seeds]


@dataclass
class OptimizerResult:
    """One optimizer on one task at its textbook default LR (and at its own oracle's best)."""

    task: str
    optimizer: str
    lr: float
    metrics: list[float]
    diverged: list[bool]
    regret: float  # at ``lr``, against the task's oracle (the recipe's optimizer at its best LR)
    regret_se: float
    final_lr: float | None  # mean over seeds of the LR of the last update (adapted, for HD)
    own_best_lr: float | None = None
    own_regret: float | None = None  # its own oracle's best, against the task's oracle
    default_vs_own: float | None = None  # regret at ``lr`` against its own oracle's best

    def to_dict(self) -> dict:
        return asdict(self)


def compare_optimizers(
    task: Any,
    optimizers: Iterable[str],
    *,
    seeds: Sequence[int] = (0, 1, 2),
    own_oracle: bool = False,
    oracle_points: int = 13,
    oracle_step_decades: float = 0.5,
    oracle_result: Oracle | None = None,
    workers: int = 2,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> list[OptimizerResult]:
    """Every optimizer on ``task`` at its textbook default LR, scored against the task's oracle.

    ``optimizers`` are specs (:func:`parse_optimizer`): ``"sgd"``, ``"adamhd"``,
    ``"sgdhd:hypergrad=multiplicative"``, ``"adam:lr=3e-4"``. With ``own_oracle`` each optimizer
    also gets its own LR grid (``oracle_points`` LRs ``oracle_step_decades`` apart around its
    default, the ``seeds``; cached like :func:`oracle`), which answers "does this optimizer need
    LR tuning?": ``default_vs_own`` is the regret of its default LR against its own best.
    """
    from . import tasks
    from .optim import default_lr

    t = tasks.get(task) if isinstance(task, str) else task
    ref = task if isinstance(task, str) else t.name
    specs = list(optimizers)
    if not specs:
        raise ValueError("optimizers must name at least one optimizer")
    parsed = [parse_optimizer(spec) for spec in specs]
    seeds = [check_int("seeds[]", s, minimum=0) for s in seeds]
    o = oracle_result or oracle(ref, workers=workers, cache_dir=cache_dir, progress=progress)
    lrs = [check_positive(f"{spec}'s lr", float(extra.get("lr", default_lr(name))))
           for spec, (name, extra) in zip(specs, parsed)]
    # every optimizer's runs in one pool: a pool per optimizer paid its start-up (~5 s of
    # spawned workers importing torch) once per optimizer, longer than the runs of a small task
    jobs = [j for spec, lr in zip(specs, lrs) for j in _optimizer_jobs(ref, spec, [lr], seeds)]
    all_runs = _map(jobs, workers, f"{ref} optimizers", progress)
    out = []
    for k, (spec, lr) in enumerate(zip(specs, lrs)):
        runs = all_runs[k * len(seeds):(k + 1) * len(seeds)]
        metrics = [r["metric"] for r in runs]
        mean = float(np.mean(metrics))
        finals = [r["final_lr"] for r in runs if r.get("final_lr") is not None]
        res = OptimizerResult(
            task=t.name, optimizer=spec, lr=lr, metrics=metrics,
            diverged=[r["diverged"] for r in runs], regret=o.regret(mean),
            regret_se=_regret_se(metrics, o.best_metric),
            final_lr=float(np.mean(finals)) if finals else None)
        if own_oracle:
            own = oracle(ref, optimizer=spec, points=oracle_points,
                         step_decades=oracle_step_decades, seeds=seeds if len(seeds) >= 3
                         else (0, 1, 2), workers=workers, cache_dir=cache_dir, progress=progress)
            res.own_best_lr = own.best_lr
            res.own_regret = o.regret(own.best_metric)
            res.default_vs_own = own.regret(mean)
        out.append(res)
    return out


def optimizer_table(results: Sequence[OptimizerResult], oracles: dict[str, Oracle]) -> str:
    """One markdown table: each optimizer at its default LR (and its own best), vs the oracle."""
    lines = ["| task | optimizer | LR | last LR | metric | regret ± s.e. | own best LR | "
             "regret at own best | default vs own best |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        o = oracles[r.task]
        last = "—" if r.final_lr is None else f"{r.final_lr:.3g}"

        def pct(x: float | None) -> str:
            return "—" if x is None else _fmt_pct(x)

        own = "—" if r.own_best_lr is None else f"{r.own_best_lr:.3g}"
        lines.append(f"| {r.task} | {r.optimizer} | {r.lr:.3g} | {last} | "
                     f"{np.mean(r.metrics):.4g} (best {o.best_metric:.4g}) | "
                     f"{_fmt_pct(r.regret, r.regret_se)} | {own} | {pct(r.own_regret)} | "
                     f"{pct(r.default_vs_own)} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- output
def _fmt_pct(x: float, se: float | None = None) -> str:
    if math.isinf(x):
        return "diverged"
    return f"{100 * x:+.1f}%" + (f" ± {100 * se:.1f}" if se is not None and se == se else "")


def markdown_table(results: list[MethodResult], oracles: dict[str, Oracle]) -> str:
    """Per-task rows and a per-method summary (mean regret, times in band, mean cost).

    The regret column shows ``± standard error`` from the spread of the method's seeds: a
    regret smaller than about twice it is within the task's run-to-run noise."""
    lines = ["| task | method | chosen LR (per seed) | metric | regret ± s.e. | in band | cost (steps / fraction) | spread |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        o = oracles[r.task]
        lrs = ", ".join("LR-free" if lr is None else f"{lr:.2g}" for lr in r.lrs)
        band = "—" if r.in_band is None else ("yes" if r.in_band else "no")
        spread = "—" if r.spread is None else f"{r.spread:.2f}×"
        lines.append(f"| {r.task} | {r.method} | {lrs} | {np.mean(r.metrics):.4g} "
                     f"(best {o.best_metric:.4g}) | {_fmt_pct(r.regret, r.regret_se)} | {band} | "
                     f"{r.cost_steps:.0f} / {r.cost_fraction:.2f} | {spread} |")
    lines += ["", "| method | mean regret | median regret | within tol | in band | mean cost (fraction of a run) | mean spread |",
              "|---|---|---|---|---|---|---|"]
    for m in dict.fromkeys(r.method for r in results):
        rs = [r for r in results if r.method == m]
        regs = [min(r.regret, 1.0) for r in rs]  # a diverged run counts as 100% regret
        tol = oracles[rs[0].task].tol
        within = sum(r.regret <= tol for r in rs)
        inb = [r.in_band for r in rs if r.in_band is not None]
        spreads = [r.spread for r in rs if r.spread is not None]
        lines.append(f"| {m} | {_fmt_pct(float(np.mean(regs)))} | {_fmt_pct(float(np.median(regs)))} | "
                     f"{within}/{len(rs)} | {f'{sum(inb)}/{len(inb)}' if inb else '—'} | "
                     f"{np.mean([r.cost_fraction for r in rs]):.2f} | "
                     f"{f'{np.mean(spreads):.2f}×' if spreads else '—'} |")
    return "\n".join(lines)


def machine() -> str:
    """A one-line description of this machine (for result files)."""
    import torch

    return (f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"torch {torch.__version__}")
