"""``lrkit compare``: the same task trained under each schedule family, each at its own best LR.

The experiment of the seed articles (``004_...``: "learning rate schedulers with visual
comparisons on MNIST"; ``000_...``: fixed, decay, cyclical and 1-cycle policies compared), done
fairly: a schedule compared at somebody else's LR is a comparison of LRs, so every family gets a
small search of its own.

1. One range test (:func:`lrkit.find_lr`) gives each family's centre, the peak the suggestion
   hands to it (:data:`lrkit.tune.FAMILY_LR_KEY`).
2. **Small search**: full runs at ``centre x 10^(k/4)``, ``k = -2..2`` (five LRs a quarter decade
   apart), scored on the task's ``"val"`` split; the best is the family's LR.
3. One more full run per family at that LR records the training curve and the validation metric
   along the way, scored on ``"test"``: the table and the figure (training loss, validation
   metric, the schedule itself).

>>> res = compare("mnist5k", schedules=("constant", "cosine"))      # doctest: +SKIP
>>> res.table()                                                       # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .errors import check_int
from ._json import brief_repr
from ._json import finite_or_none as _clean

__all__ = ["CompareResult", "compare", "add_cli_arguments", "cli_main", "DEFAULT_SCHEDULES"]

DEFAULT_SCHEDULES = ("constant", "step", "exponential", "cosine", "cyclic", "onecycle", "wsd")
#: the small search: LR multipliers around each family's centre (quarter decades)
SEARCH = tuple(10 ** (0.25 * k) for k in (-2, -1, 0, 1, 2))


@dataclass(frozen=True)
class CompareResult:
    """Per family: the LRs searched with their val metrics, the chosen LR, and the final run's
    test metric, training losses, LRs and validation curve. ``test_label`` is what the test
    split is called: ``"val"`` for a task without held-out test data
    (:attr:`lrkit.Task.test_is_val`), whose rows' ``"test"`` is the val score."""

    task: str
    metric: str
    higher_is_better: bool
    steps: int
    rows: tuple[Mapping[str, Any], ...]
    cost_steps: int
    wall_time: float
    range_test: Mapping[str, Any] = field(default_factory=dict)
    test_label: str = "test"

    def to_dict(self) -> dict:
        return {"task": self.task, "metric": self.metric,
                "higher_is_better": self.higher_is_better, "steps": self.steps,
                "rows": [dict(r) for r in self.rows], "cost_steps": self.cost_steps,
                "wall_time": self.wall_time, "range_test": dict(self.range_test),
                "test_label": self.test_label}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CompareResult":
        def num(x: Any) -> float:
            return math.nan if x is None else float(x)

        rows = []
        for r in d["rows"]:
            r = dict(r)
            r["val"] = [num(v) for v in r["val"]]
            r["losses"] = [num(v) for v in r["losses"]]
            r["test"], r["final_loss"] = num(r["test"]), num(r["final_loss"])
            r["val_curve"] = [tuple(v) for v in r["val_curve"]]
            rows.append(r)
        return cls(task=d["task"], metric=d["metric"], higher_is_better=d["higher_is_better"],
                   steps=int(d["steps"]), rows=tuple(rows), cost_steps=int(d["cost_steps"]),
                   wall_time=float(d["wall_time"]), range_test=dict(d.get("range_test") or {}),
                   test_label=str(d.get("test_label", "test")))

    def __repr__(self) -> str:  # the best family, its LR and score, not every curve
        b = self.best()
        return brief_repr("CompareResult", task=self.task, best=b["family"], best_lr=b["lr"],
                          **{f"best_{self.test_label}_{self.metric}": b["test"]},
                          families=len(self.rows), cost_steps=self.cost_steps)

    def best(self) -> Mapping[str, Any]:
        """The row with the best test metric."""
        sign = -1.0 if self.higher_is_better else 1.0
        return min(self.rows, key=lambda r: sign * r["test"] if math.isfinite(r["test"])
                   else math.inf)

    def table(self) -> str:
        """A markdown table: family, LR, searched LRs, val and test metric, final train loss. A
        best LR at the edge of the LRs searched is marked (the best may lie beyond it)."""
        better = "higher" if self.higher_is_better else "lower"
        lines = [f"| schedule | best LR | LRs searched (val {self.metric}) | {self.test_label} "
                 f"{self.metric} ({better} is better) | final train loss (mean of last 10%) |",
                 "|---|---|---|---|---|"]
        best = self.best()["family"]
        for r in self.rows:
            tried = ", ".join(f"{lr:.2g}: {_f(v)}" for lr, v in zip(r["lrs"], r["val"]))
            name = f"**{r['family']}**" if r["family"] == best else r["family"]
            edge = " (edge of the search)" if r.get("at_edge") else ""
            lines.append(f"| {name} | {r['lr']:.3g}{edge} | {tried} | {_f(r['test'])} | "
                         f"{_f(r['final_loss'])} |")
        return "\n".join(lines)

    def plot(self, path: str | Path) -> None:
        """Three panels: training loss (smoothed), validation metric, and the LR schedules."""
        import numpy as np

        from ._figures import new_figure, smooth
        from .html import mpl_text

        fig, axes = new_figure((16, 4.8), 1, 3)
        for i, r in enumerate(self.rows):
            c = f"C{i % 10}"
            family = mpl_text(r["family"])
            lab = f"{family} (lr {r['lr']:.2g}): {self.test_label} {_f(r['test'])}"
            y = smooth(r["losses"], max(1, len(r["losses"]) // 25))
            axes[0].plot(np.arange(1, len(y) + 1), y, color=c, lw=1.6, label=lab)
            if r["val_curve"]:
                s, v = zip(*r["val_curve"])
                axes[1].plot(s, v, color=c, lw=1.6, marker="o", ms=2.5, label=family)
            axes[2].plot(np.arange(len(r["lrs_used"])), r["lrs_used"], color=c, lw=1.6,
                         label=family)
        fin = [v for r in self.rows for v in r["losses"][len(r["losses"]) // 10:]
               if math.isfinite(v)]
        axes[0].set_yscale("log")
        if fin:
            lo, hi = float(np.percentile(fin, 0.5)), float(np.percentile(fin, 99))
            if lo > 0:
                axes[0].set_ylim(lo * 0.8, hi * 1.25)
        axes[0].set(xlabel="optimizer step", ylabel="training loss (smoothed, log scale)",
                    title="training loss")
        axes[0].legend(fontsize=7)
        vals = [v for r in self.rows for _, v in r["val_curve"][len(r["val_curve"]) // 4:]
                if math.isfinite(v)]
        if vals:
            lo, hi = min(vals), max(vals)
            axes[1].set_ylim(lo - 0.1 * (hi - lo + 1e-9), hi + 0.1 * (hi - lo + 1e-9))
        metric = mpl_text(self.metric)
        axes[1].set(xlabel="optimizer step", ylabel=f"val {metric}",
                    title=f"validation {metric}")
        axes[1].legend(fontsize=7)
        axes[2].set(xlabel="optimizer step", ylabel="learning rate",
                    title="each schedule at its own best LR")
        axes[2].set_yscale("log")
        peaks = [max(r["lrs_used"]) for r in self.rows if r["lrs_used"]]
        if peaks:
            axes[2].set_ylim(min(peaks) / 100, max(peaks) * 1.5)
        axes[2].legend(fontsize=7)
        fig.suptitle(f"{mpl_text(self.task)}: {len(self.rows)} schedules, each at its own best LR "
                     f"(5-LR search on val, then a full run scored on test)")
        fig.tight_layout()
        fig.savefig(path, dpi=90)


def _f(v: Any) -> str:
    v = float(v)
    return "diverged" if not math.isfinite(v) else f"{v:.4g}"


class _ValCurve:
    """fit callback: the validation metric every ``every`` steps."""

    def __init__(self, task: Any, every: int) -> None:
        self.task, self.every = task, every
        self.curve: list[tuple[int, float]] = []

    def on_train_start(self, model: Any, optimizer: Any) -> None:
        self.curve = []

    def on_step_end(self, info: Any) -> None:
        from .train import evaluating

        if (info.step + 1) % self.every == 0:
            with evaluating(info.model):
                self.curve.append((info.step + 1, self.task.score(info.model, "val")))
        return None

    def on_eval(self, step: int, metric: float) -> None:
        return None

    def on_train_end(self, result: Any) -> None:
        pass


def compare(
    task: Any,
    *,
    schedules: Sequence[str] = DEFAULT_SCHEDULES,
    seed: int = 0,
    progress: bool = True,
) -> CompareResult:
    """Train ``task`` under each schedule family at its own best LR (see the module doc).

    Cost: one range test + ``len(schedules) x 6`` full runs.

    Raises:
        ValueError: an unknown or repeated schedule family, or a bad seed.
    """
    from . import tasks as _tasks
    from . import train
    from .finder import find_lr
    from .schedules import check_families, family
    from .tasks import Task
    from .tune import FAMILY_LR_KEY, _centres

    if isinstance(task, str):
        task = _tasks.get(task)
    if not isinstance(task, Task):
        raise _tasks.not_a_task("task", task)
    fams = check_families("schedules", schedules)
    missing = [f for f in fams if f not in FAMILY_LR_KEY]
    if missing:  # pragma: no cover - every family has a key today
        raise ValueError(f"no centre rule for schedules {missing}")
    seed = check_int("seed", seed, minimum=0)
    n = task.recipe.steps
    warm = task.recipe.warmup_steps
    t0 = time.perf_counter()
    rt = find_lr(task, seed=seed, progress=progress)
    centres, _ = _centres(rt, task, fams)
    cost = rt.cost_steps
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(fams) * (len(SEARCH) + 1), desc=f"compare {task.name}")
    rows = []
    sign = -1.0 if task.higher_is_better else 1.0
    try:
        for f in fams:
            w = 0 if f == "onecycle" else warm
            lrs = [centres[f] * m for m in SEARCH]
            vals = []
            for lr in lrs:
                r = train.run(task, family(f, lr, n, warmup_steps=w), seed=seed, eval_split="val")
                cost += r.steps_done
                vals.append(r.metric if not r.diverged else math.nan)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(f"{f} {lr:.2g}: {_f(r.metric)}")
            i = min(range(len(lrs)), key=lambda j: (sign * vals[j] if math.isfinite(vals[j])
                                                    else math.inf, j))
            curve = _ValCurve(task, max(1, n // 30))
            fin = train.run(task, family(f, lrs[i], n, warmup_steps=w), seed=seed,
                            eval_split="test", callbacks=[curve])
            cost += fin.steps_done
            if bar is not None:
                bar.update(1)
            tail = [v for v in fin.losses[-max(1, n // 10):] if math.isfinite(v)]
            rows.append({"family": f, "centre": centres[f], "lrs": lrs, "val": vals,
                         "lr": lrs[i], "test": fin.metric if not fin.diverged else math.nan,
                         "final_loss": sum(tail) / len(tail) if tail else math.nan,
                         "losses": [float(v) for v in fin.losses],
                         "lrs_used": [float(v) for v in fin.lrs], "val_curve": curve.curve,
                         "schedule": fin.schedule, "at_edge": i in (0, len(lrs) - 1)})
    finally:
        if bar is not None:
            bar.close()
    s = rt.suggestion
    return CompareResult(task=task.name, metric=task.metric,
                         higher_is_better=task.higher_is_better, steps=n, rows=tuple(rows),
                         cost_steps=int(cost), wall_time=time.perf_counter() - t0,
                         range_test={"lr": s.lr, "band": list(s.band) if s.band else None,
                                     "centres": centres}, test_label=task.test_label)


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lrkit compare``."""
    parser.add_argument("--task", required=True, help="built-in task name or module:function")
    parser.add_argument("--schedules", default=",".join(DEFAULT_SCHEDULES),
                        help="comma-separated schedule families")
    parser.add_argument("--seed", type=int, default=0, help="seed of every run")
    parser.add_argument("-o", "--out", default=None,
                        help="figure path (default compare-<task>.png)")
    parser.add_argument("--json", default=None, help="write the result to this JSON file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def cli_main(args: argparse.Namespace) -> int:
    """``lrkit compare --task NAME --schedules a,b,c``: the table and the figure."""
    fams = [s.strip() for s in args.schedules.split(",") if s.strip()]
    res = compare(args.task, schedules=fams, seed=args.seed, progress=not args.no_progress)
    from .tasks.base import file_name

    out = args.out or f"compare-{file_name(res.task)}.png"
    res.plot(out)
    print(res.table())
    b = res.best()
    print(f"best: {b['family']} at lr {b['lr']:.3g} ({res.test_label} {res.metric} "
          f"{_f(b['test'])}); "
          f"cost {res.cost_steps} steps = {res.cost_steps / res.steps:.1f} full runs, "
          f"{res.wall_time:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(_clean(res.to_dict()), indent=1))
        print(f"wrote {args.json}")
    print(f"wrote {out}")
    return 0


class _CallableModule(types.ModuleType):
    """``lrkit.compare`` is both this module and the function (see :mod:`lrkit.tune`)."""

    def __call__(self, *args: Any, **kwargs: Any) -> CompareResult:
        return compare(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
