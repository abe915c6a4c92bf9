"""The autopilot: ``lrkit.tune(task)`` picks the learning rate and the schedule, trains, reports.

Five stages, each stored as JSON in a run folder (``./lrkit-runs/<task>-<timestamp>/``) as soon as
it finishes, so an interrupted run keeps its work and ``tune(task, out=DIR)`` (``lrkit tune
--resume DIR``) goes on from there:

1. **Range test** (:func:`lrkit.find_lr`, Smith 2017): one sweep gives a constant-LR suggestion
   ``lr*`` and its good band ``[low, high]``.
2. **Candidates** from the band: for each schedule family ``f`` its centre ``c_f`` (the peak the
   suggestion hands to that family, :meth:`lrkit.suggest.Suggestion.lr_for`: ``lr*`` for constant,
   step and WSD, ``sqrt(lr* high)`` for cosine-like decays and one-cycle, ``high`` for cyclic) and
   the neighbours ``c_f 10^(+-1/4)`` (a quarter decade, the oracle grid's resolution; a decade
   when the range test gave no LR and the centre is a guess).
3. **Confirmation by successive halving** (Jamieson & Talwalkar 2016; Li et al. 2018,
   "Hyperband"), coarse to fine: rung 0 trains every family at its centre for a short horizon
   ``r0`` (a *miniature* of the full run: the schedule is rebuilt for ``r0`` steps, warmup scaled
   with it), scored on the task's ``"val"`` split; the best ``ceil(F / eta)`` families (``eta =
   3``; one when the budget is tight) go on to rung 1, where each is tried at its three LRs with
   the longer horizon ``r1 = 2 r0``. The best arm of the last rung is the choice (a winner at
   an edge walks on while it wins; when the recipe has a warmup, one more run without it
   decides whether the final run keeps it). The rung sizes come from the budget:
   ``r0 = C / (F + 2 (3 k + R))`` with ``C`` the steps left for stage 3 and ``R`` the rung-1
   runs reserved (a walk's, and the warmup check's).
4. **Final run**: the task's full ``recipe.steps`` at the chosen LR and schedule, watched by the
   monitor (when :mod:`lrkit.monitor` is installed), the validation metric recorded along the way
   and the final weights saved; scored on the ``"test"`` split.
5. **Result and report**: :class:`TuneResult` and one self-contained HTML report
   (:func:`lrkit.html.tune_report`).

Cost is counted in optimizer steps: ``cost_steps = range test + confirmations + final run``; with
the default ``budget=2.0`` it stays within two full runs.

>>> from lrkit import tasks
>>> res = tune(tasks.get("digits"), progress=False)          # doctest: +SKIP
>>> res.lr, res.schedule["name"], res.metric, res.report     # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import importlib.util
import json
import math
import os
import shlex
import sys
import time
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ._json import brief_repr
from .errors import LRKitError, check_finite, check_int, require
from .finder import (CONFIRM_CEILING, MIN_SHORT_RUN_STEPS, bracket, ceiling_stop,
                     loss_tiebreak, metric_noise, put_back, range_sentence, tiebreak_evidence,
                     tiebreak_sentence)
from .finder import separation as _separation
from .suggest import RECIPE_LR_FAMILY

__all__ = ["TuneResult", "Stage", "tune", "add_cli_arguments", "cli_main", "DEFAULT_SCHEDULES",
           "FAMILY_LR_KEY", "run_study_trial"]

#: the schedule families tried by default
DEFAULT_SCHEDULES = ("constant", "step", "cosine", "onecycle", "wsd")
#: schedule family -> the :meth:`Suggestion.lr_for` key whose LR is that family's centre (peak)
FAMILY_LR_KEY = RECIPE_LR_FAMILY
#: families whose shape already holds a warmup (no extra warmup is prepended)
_OWN_WARMUP = ("onecycle",)
#: the LR neighbours' spacing in decades (the oracle grid's and confirm mode's resolution)
SPACING = 0.25
#: successive halving's reduction factor (keep the best 1/ETA families)
ETA = 3
#: a rung-1 winner at the edge of its LRs walks on by this many decades per step (while it wins
#: and the budget lasts); the plan reserves room for WALK_RESERVE such runs
WALK = 0.5
WALK_RESERVE = 1
#: a final run that diverges is run once more at its LR / RETRY_FACTOR when the budget still
#: pays for it (the monitor's advice for divergence: "restart with the LR about 10x lower")
RETRY_FACTOR = 10.0
#: the final run multiplies its LR by 1 / CUT_FACTOR from the step its monitor finds the LR too
#: high on (the monitor's advice for ``lr_too_high``; ``callbacks.DecayOnFinding``)
CUT_FACTOR = 3.0
#: ... and when the budget left pays for less than a full run but at least this share of one,
#: the retry is that long (its schedule rebuilt for it); the kept model is then the better by
#: validation of the retry and the diverged run's best checkpoint from before its blow-up
RETRY_MIN_SHARE = 0.5
#: the safe-LR bound in the report may spend at most this share of a full run's batch gradients
#: (one Hessian-vector product over a batch counted as two): with the curvature module's
#: default of >= 256 examples and up to 30 products it cost up to 3.2 final runs of wall time on
#: the built-in tasks (an RNN's double backward ~7 steps a batch), outside tune's budget
SAFE_LR_SHARE = 0.25
#: the bound's plans, most accurate first: (Lanczos products, at least this many batches); one
#: batch is never used where more exist (Adam's second moments from one mini-batch read the
#: preconditioned curvature 13-460x too sharp on mnist5k, charlm and cancer-small)
_SAFE_LR_PLANS = ((20, 2), (15, 2), (10, 2))
#: the shortest rung-0 horizon worth running, as a fraction of a full run, and in steps
MIN_RUNG_FRACTION = 1 / 15
MIN_RUNG_STEPS = MIN_SHORT_RUN_STEPS
_FILES = {"meta": "meta.json", "range": "1-range-test.json", "candidates": "2-candidates.json",
          "halving": "3-halving.json", "final": "4-final.json", "result": "result.json",
          "weights": "final-weights.pt", "report": "report.html", "safe": "safe-lr.json",
          "lock": ".lrkit-tune.lock"}


# ----------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class Stage:
    """One stage's cost (optimizer steps, and its share of the total) and outcome."""

    name: str
    cost_steps: int
    wall_time: float
    outcome: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "cost_steps": self.cost_steps, "wall_time": self.wall_time,
                "outcome": dict(self.outcome)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Stage":
        return cls(d["name"], int(d["cost_steps"]), float(d["wall_time"]),
                   dict(d.get("outcome") or {}))


@dataclass(frozen=True)
class TuneResult:
    """What :func:`tune` returns (and writes to ``result.json`` in the run folder).

    ``lr`` is the chosen peak LR, ``schedule`` the chosen schedule's JSON spec for the full run
    (:func:`lrkit.schedules.from_spec` rebuilds it), ``metric`` the final run's metric on the
    task's ``"test"`` split, ``cost_steps`` every optimizer step spent (range test, confirmation
    runs and the final run), ``stages`` each stage's cost and outcome, ``findings`` the monitor's
    findings on the final run (plain dicts: kind, step, evidence, action), ``report`` the HTML
    report's path. ``lr_range`` is the uncertainty of ``lr``: the nearest confirmation runs
    below and above the winner that scored worse beyond the noise of its own evaluations, at
    the final run's scale (:func:`lrkit.finder.bracket`; ``None`` on an open side; without
    confirmation runs, the range test's band; after a diverged final run, ``(None, the LR that
    diverged)``), and ``uncertainty`` says it in words. ``metric_split`` names the split
    ``metric`` is on (``"val"`` for a ``from_torch`` task without a ``test_loader``).
    """

    task: str
    lr: float
    family: str
    schedule: Mapping[str, Any]
    metric: float
    metric_name: str
    higher_is_better: bool
    cost_steps: int
    full_run_steps: int
    stages: tuple[Stage, ...]
    findings: tuple[Mapping[str, Any], ...]
    report: str
    run_dir: str
    weights: str
    explanation: str = ""
    lr_range: tuple[float | None, float | None] = (None, None)
    uncertainty: str = ""
    #: the split ``metric`` is on: ``"test"``, or ``"val"`` for a task whose test split is
    #: its validation data (:attr:`lrkit.Task.test_is_val`: the data the LR was chosen on)
    metric_split: str = "test"

    def __repr__(self) -> str:  # the decision, not every stage's outcome
        return brief_repr("TuneResult", task=self.task, lr=self.lr, family=self.family,
                          metric=self.metric, metric_name=f"{self.metric_split} {self.metric_name}",
                          cost_runs=self.cost_runs, findings=[f.get("kind") for f in self.findings],
                          report=self.report)

    @property
    def cost_runs(self) -> float:
        """``cost_steps`` in full runs of the task."""
        return self.cost_steps / self.full_run_steps

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["schedule"] = dict(self.schedule)
        d["stages"] = [s.to_dict() for s in self.stages]
        d["findings"] = [dict(f) for f in self.findings]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TuneResult":
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["stages"] = tuple(Stage.from_dict(s) for s in d["stages"])
        kw["findings"] = tuple(dict(f) for f in d.get("findings") or ())
        if "lr_range" in kw:
            kw["lr_range"] = tuple(kw["lr_range"])
        return cls(**kw)


# ------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class _Arm:
    family: str
    lr: float
    centre: float
    multiplier: float
    #: the warmup check's arm: the recipe's warmup dropped (see :func:`_warmup_check`)
    no_warmup: bool = False

    @property
    def key(self) -> str:
        return f"{self.family}@{self.lr:.6g}" + ("/no-warmup" if self.no_warmup else "")


@dataclass(frozen=True)
class _Plan:
    """The budget split: range-test steps, rung horizons and how many families go on."""

    total_steps: int
    range_iters: int
    rung0: int
    rung1: int
    keep: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


#: the shortest range test (fewer than ~30 points over 8 decades cannot place a valley)
MIN_RANGE_ITERS = 30
#: the default budget, in full runs
DEFAULT_BUDGET = 2.0


def _min_budget(full: int) -> float:
    """The smallest budget (full runs, two decimals) that pays for the shortest range test and
    the final run of a ``full``-step task."""
    b = math.ceil(100 * (MIN_RANGE_ITERS + full) / full) / 100
    while math.floor(b * full) < MIN_RANGE_ITERS + full:  # float rounding
        b += 0.01
    return round(b, 2)


def _range_iters(full: int, budget: float) -> int:
    """Range-test length: a fifth of the confirmation allowance, 30..100 steps (100 is
    :func:`find_lr`'s default; fewer than ~30 points over 8 decades cannot place a valley).
    When what is left after it cannot pay for confirmation runs (see :func:`_halving_plan`),
    the range test takes the whole allowance instead (up to 100 steps): its LR goes to the final
    run unconfirmed, so it is read off the densest curve the budget buys."""
    n = int(min(100, max(MIN_RANGE_ITERS, round(0.2 * (budget - 1.0) * full))))
    if _halving_plan(full, budget, n, 1).rung1 == 0:
        return int(min(100, max(n, math.floor(budget * full) - full)))
    return n


def _halving_plan(full: int, budget: float, range_cost: int, families: int,
                  reserve: int = WALK_RESERVE) -> _Plan:
    """Rung horizons from the steps left after the range test and the final run.

    Cost of stage 3 = ``F r0 + 3 k r1`` with ``r1 = 2 r0`` (F families at rung 0; k families x 3
    LRs at rung 1), plus ``reserve`` rung-1 runs (a walk's, ``WALK_RESERVE``; the caller adds
    one for the warmup check when the recipe has a warmup). ``k = ceil(F / ETA)`` when that
    still leaves ``r0`` at least ``max(MIN_RUNG_STEPS, full * MIN_RUNG_FRACTION)`` steps, else 1
    (the caller confirms one family only when even then ``r0 < MIN_RUNG_STEPS``). One family
    has no rung 0: its three LRs get ``r1 = left / (3 + reserve)`` steps each; ``r1 = 0`` (no
    confirmation) when that is under ``MIN_RUNG_STEPS`` (runs of a few steps only say which LR
    falls fastest at first: the highest that does not blow up).
    """
    total = int(math.floor(budget * full))
    left = total - full - range_cost
    if left < 0:
        raise ValueError(f"budget={budget!r} does not cover the range test ({range_cost} steps) "
                         f"and the final run ({full} steps): raise budget")
    if families == 1:
        r1 = max(left, 0) // (3 + reserve)
        return _Plan(total_steps=total, range_iters=0, rung0=0,
                     rung1=int(r1) if r1 >= MIN_RUNG_STEPS else 0, keep=1)
    floor = max(MIN_RUNG_STEPS, int(full * MIN_RUNG_FRACTION))
    keep = min(families, max(1, math.ceil(families / ETA)))
    while True:
        r0 = left // (families + 2 * (3 * keep + reserve))
        if r0 >= floor or keep == 1:
            break
        keep -= 1
    return _Plan(total_steps=total, range_iters=0, rung0=int(r0), rung1=int(2 * r0), keep=keep)


def _recipe_family(task: Any, families: Sequence[str]) -> str:
    """The one family confirmed when the budget cannot compare schedules: the recipe's own,
    else constant (the recipe's warmup is kept: :func:`_warmup_for`), else the first of
    ``families``.

    Constant rather than the nearest annealed family for a recipe tune does not offer by
    name (warmup-cosine, linear, exponential, cyclic): a constant-LR short run is the full
    run's own start, not a compressed miniature. Measured on the four random warmup-cosine
    tasks of 150 steps (``benchmarks/results/heldout-random.md``): cosine with the warmup
    instead went +8.5% -> +30.1%, +16.3% -> +54.3%, +0.4% -> +2.0%, +14.4% -> +6.6%. Constant
    in place of the recipe's own was a wash on the 20 other 150-step random tasks (step,
    cosine, 1-cycle recipes: 6 better, 6 worse by over a point of regret)."""
    for name in (task.recipe.schedule, "constant"):
        if name in families:
            return str(name)
    return families[0]


def _warmup_for(task: Any, family: str, steps: int, no_warmup: bool = False) -> int:
    """The task's warmup, scaled to a run of ``steps`` (0 when the recipe has none, with
    ``no_warmup``, and for families whose shape warms up by itself)."""
    if no_warmup or family in _OWN_WARMUP:
        return 0
    return task.recipe.warmup_for(steps)


def _schedule(task: Any, family: str, lr: float, steps: int, no_warmup: bool = False) -> Any:
    from . import schedules

    return schedules.family(family, lr, steps,
                            warmup_steps=_warmup_for(task, family, steps, no_warmup))


def _centres(rt: Any, task: Any, families: Sequence[str]) -> tuple[dict[str, float], str]:
    """Each family's centre LR from the range test's suggestion, and where it came from. When
    the curve gave none, confirm mode's fallback (:func:`lrkit.finder._confirm_centre`): the
    peers' read of the same curve, and only then the recipe's default LR (as the peak of the
    recipe's own schedule)."""
    from .finder import _confirm_centre

    s, origin = _confirm_centre(task, rt)
    return {f: float(s.lr_for(FAMILY_LR_KEY[f])) for f in families}, origin


def _arms(centres: Mapping[str, float], family: str | None = None,
          spacing: float = SPACING) -> list[_Arm]:
    out = []
    for f, c in centres.items():
        if family is not None and f != family:
            continue
        for k in (-1, 0, 1):
            m = 10 ** (spacing * k)
            out.append(_Arm(f, c * m, c, m))
    return out


# ----------------------------------------------------------------------------- callbacks
class _StepBar:
    """fit callback: advances a stage's progress bar by one per optimizer step."""

    def __init__(self, bar: Any, label: str = "") -> None:
        self.bar, self.label = bar, label

    def on_train_start(self, model: Any, optimizer: Any) -> None:
        if self.bar is not None and self.label:
            self.bar.set_postfix_str(self.label, refresh=False)

    def on_step_end(self, info: Any) -> None:
        if self.bar is not None:
            self.bar.update(1)
        return None

    def on_eval(self, step: int, metric: float) -> None:
        return None

    def on_train_end(self, result: Any) -> None:
        pass


class _Recorder:
    """fit callback for the final run: keeps the model, records the gradient norm every step and
    the validation metric every ``every`` steps (evaluation costs no optimizer step), and feeds
    all of it to ``monitor`` (a :class:`lrkit.monitor.Monitor`) when one is given."""

    def __init__(self, task: Any, every: int, monitor: Any = None) -> None:
        self.task, self.every, self.monitor = task, every, monitor
        self.model: Any = None
        self.grad_norms: list[float] = []
        self.val: list[tuple[int, float]] = []
        self.best: tuple[int, float, dict] | None = None  # (step, val, CPU state_dict)

    def on_train_start(self, model: Any, optimizer: Any) -> None:
        self.model = model

    def on_step_end(self, info: Any) -> bool | str | None:
        from .train import _cpu_copy, evaluating, global_grad_norm

        g = info.grad_norm
        if g is None:
            g = global_grad_norm(p for grp in info.optimizer.param_groups for p in grp["params"])
        self.grad_norms.append(float(g))
        v = None
        if (info.step + 1) % self.every == 0:
            with evaluating(info.model):
                v = self.task.score(info.model, "val")
            self.val.append((info.step + 1, v))
            if math.isfinite(v) and (self.best is None or self.task.better(v, self.best[1])):
                # (a module's get_extra_state() may be any object: _cpu_copy deep-copies it)
                self.best = (info.step + 1, v, {k: _cpu_copy(t)
                                                for k, t in info.model.state_dict().items()})
        if self.monitor is not None:
            self.monitor.update(info.step, info.loss, lr=info.lr, grad_norm=float(g),
                                val_metric=v)
        return None

    def on_eval(self, step: int, metric: float) -> None:
        return None

    def on_train_end(self, result: Any) -> None:
        if self.monitor is not None and result.stop_reason == "nan" and result.losses:
            # fit stops on a non-finite loss before on_step_end: the monitor sees it here (its
            # `diverged` finding was missing from the result and the report)
            self.monitor.update(result.steps_done - 1, float(result.losses[-1]),
                                lr=float(result.lrs[-1]))


# ------------------------------------------------------------------------------ run folder
class _Folder:
    """The run folder: one JSON file per stage, written atomically; held by one process at a
    time (:meth:`hold`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock: Any = None

    def file(self, key: str) -> Path:
        return self.path / _FILES[key]

    def load(self, key: str) -> Any:
        p = self.file(key)
        if not p.exists():
            return None
        return _read_json(p)

    def save(self, key: str, data: Any) -> None:
        p = self.file(key)
        # a temporary name of this process's own (a shared one let two processes move each
        # other's half-written file into place)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(_jsonable(data), indent=1, allow_nan=False),
                           encoding="utf-8")
            os.replace(tmp, p)
        finally:
            tmp.unlink(missing_ok=True)

    def hold(self) -> None:
        """Take the folder for this process (an advisory lock, released when the process
        ends or :meth:`release` is called): a second ``tune`` on the same folder, or a
        ``--resume`` of a run still going, is refused instead of both writing its files."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no lock
            return
        f = open(self.file("lock"), "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            who = f.read().strip() or "another process"
            f.close()
            raise LRKitError(f"out: the run folder {str(self.path)!r} is in use by another "
                             f"lrkit tune ({who}): wait for it to finish, or pass another "
                             "folder") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        self._lock = f

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file drops the lock
            self._lock = None


def _how_to_go_on(p: Path) -> str:
    """What to do about a damaged run-folder file: a stage file's stages can be redone, but
    without meta.json the folder cannot be resumed at all."""
    if p.name == _FILES["meta"]:
        return "the folder cannot be resumed without it: start a new run with another --out"
    return "delete it, and the stage files numbered after it, to redo those stages on --resume"


class _MissingKey(ValueError, KeyError):
    """A key missing from a run folder's JSON file (edited by hand): a ValueError naming the
    file and the key (one line from the CLI), and still a KeyError for code that expects one."""

    __str__ = BaseException.__str__


class _FileDict(dict):
    """A dict read from the run-folder file ``path``: a missing key raises :class:`_MissingKey`
    naming the file and the key (a hand-edited file gave a bare KeyError traceback)."""

    path: Path

    def __missing__(self, key: Any) -> Any:
        raise _MissingKey(f"{str(self.path)!r} has no key {key!r} (edited by hand?): "
                          + _how_to_go_on(self.path))


def _file_dict(p: Path) -> Any:
    """``json.loads``' object hook for the file ``p``: each object a :class:`_FileDict`."""

    def hook(d: dict) -> _FileDict:
        out = _FileDict(d)
        out.path = p
        return out

    return hook


def _read_json(p: Path) -> Any:
    """A run folder's JSON file; a damaged one (edited by hand, or cut short by a full disk:
    lrkit writes them atomically) is a ValueError that names it and says how to go on, at once
    (not valid JSON) or when a missing key is read."""
    try:
        return json.loads(p.read_text(encoding="utf-8"), object_hook=_file_dict(p))
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(p)!r} is not valid JSON ({e}): " + _how_to_go_on(p)) from None


def _rebased(done: dict, path: Path) -> dict:
    """A finished run's ``result.json`` with its file paths in ``path``, the folder it was
    read from (a run folder moved or copied elsewhere still names its own report)."""
    done = _file_dict(path / _FILES["result"])({**done, "run_dir": str(path)})
    for key in ("report", "weights"):
        if done.get(key):
            done[key] = str(path / Path(done[key]).name)
    return done


def _finished(done: Mapping[str, Any] | None) -> bool:
    """Whether a (rebased) ``result.json`` is a finished run: its report and its final weights
    are there (a folder whose weights were deleted was returned as finished, naming a missing
    file; now its final run is trained again)."""
    return done is not None and all(bool(done.get(k)) and Path(done[k]).exists()
                                    for k in ("report", "weights"))


def _jsonable(x: Any) -> Any:
    """JSON has no NaN/inf: encode them as strings (as :mod:`lrkit.finder` does)."""
    if isinstance(x, float) and not math.isfinite(x):
        return "NaN" if x != x else ("Infinity" if x > 0 else "-Infinity")
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def _num(x: Any) -> float:
    return float(x.replace("Infinity", "inf")) if isinstance(x, str) else float(x)


def _default_out(task_name: str) -> Path:
    """``lrkit-runs/<task>-<UTC time>``, made here (``-2``, ``-3``, ... when a run started in
    the same second has it: made with ``exist_ok=False``, two processes never share one)."""
    from .tasks.base import file_name

    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = Path("lrkit-runs") / f"{file_name(task_name).replace('@', '_')}-{stamp}"
    path, i = base, 1
    while True:
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            i += 1
            path = base.with_name(f"{base.name}-{i}")
        except OSError as e:  # a read-only working folder: before any step
            raise ValueError(f"cannot make the run folder {str(path)!r} "
                             f"({e.strerror or type(e).__name__}); pass out= (--out) a "
                             "folder that can be written") from None


# ----------------------------------------------------------------------------------- display
class _Display:
    """Live progress: a tqdm bar per stage and a rich table of the candidates (when shown)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.console = None
        if enabled:
            try:
                from rich.console import Console

                self.console = Console(stderr=True)
            except ImportError:  # rich comes with the search extra: plain lines without it
                self.console = None

    def bar(self, total: int, desc: str) -> Any:
        if not self.enabled:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, leave=True)

    def say(self, text: str) -> None:
        if not self.enabled:
            return
        if self.console is not None:
            # soft_wrap: a line is never broken by rich (it broke the helper command that
            # users copy, at the console's width, with a newline inside)
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:  # pragma: no cover
            print(text)

    def table(self, task: Any, trials: list[dict], rung: int) -> None:
        if not self.enabled or self.console is None:
            return
        from rich.table import Table

        t = Table(title=f"candidates after rung {rung}", title_justify="left")
        for col in ("rung", "schedule", "lr", "steps", f"val {task.metric}", "kept"):
            t.add_column(col, justify="right" if col not in ("schedule",) else "left")
        for r in sorted(trials, key=lambda r: (r["rung"], r["family"], r["lr"])):
            t.add_row(str(r["rung"]), r["family"] + (", no warmup" if r.get("no_warmup") else ""),
                      f"{r['lr']:.3g}", str(r["steps"]),
                      "diverged" if r["diverged"] else f"{_num(r['metric']):.4g}",
                      "yes" if r.get("kept") else
                      "warmup dropped" if r.get("warmup_chosen") else "")
        self.console.print(t, width=max(80, self.console.width))  # (at 20 columns: blanks)


# ---------------------------------------------------------------------------------- stages
def _stage_range_test(task: Any, folder: _Folder, plan_iters: int, seed: int,
                      show: _Display) -> tuple[Any, Stage]:
    from .finder import RangeTestResult, find_lr

    saved = folder.load("range")
    if saved is not None:
        res = RangeTestResult.from_dict(saved["result"])
        show.say(f"[1/5] range test: resumed from {folder.file('range').name}")
        return res, Stage.from_dict(saved["stage"])
    show.say(f"[1/5] range test: {plan_iters} steps, LR 1e-7 .. 10")
    t0 = time.perf_counter()
    res = find_lr(task, num_iter=plan_iters, seed=seed, progress=show.enabled)
    s = res.suggestion
    outcome = {"lr": s.lr, "band": list(s.band) if s.band else None, "confidence": s.confidence,
               "reason": s.reason, "stop_reason": res.stop_reason, "steps": res.cost_steps}
    stage = Stage("range test", int(res.cost_steps), time.perf_counter() - t0, outcome)
    folder.save("range", {"result": res.to_dict(), "stage": stage.to_dict()})
    if s.lr is not None and s.band:
        show.say(f"      suggestion {s.lr:.3g}, band {s.band[0]:.3g} .. {s.band[1]:.3g} "
                 f"({s.confidence})")
    else:
        show.say(f"      no suggestion ({s.reason})")
    return res, stage


def _rank(task: Any, rec: Mapping[str, Any]) -> float:
    """A confirmation run's sort key, lower is better: its val metric signed by the task's
    direction (confirm mode's :func:`lrkit.finder._rank_key`), ``inf`` when it diverged."""
    from .finder import _rank_key

    return math.inf if rec["diverged"] else _rank_key(task, _num(rec["metric"]))


class _Trials:
    """Stage 3's trial log: every finished short run, persisted at once (resume skips it)."""

    def __init__(self, folder: _Folder, plan: _Plan, centres: Mapping[str, float],
                 study: Any) -> None:
        self.folder, self.plan, self.centres, self.study = folder, plan, centres, study
        saved = folder.load("halving") or {}
        self.trials: list[dict] = list(saved.get("trials") or [])
        self.rungs: list[dict] = list(saved.get("rungs") or [])

    def find(self, rung: int, arm: _Arm) -> dict | None:
        for r in self.trials:
            if (r["rung"] == rung and r["family"] == arm.family
                    and bool(r.get("no_warmup", False)) == arm.no_warmup
                    and math.isclose(r["lr"], arm.lr, rel_tol=1e-9)):
                return r
        return None

    def add(self, rec: dict, arm: _Arm) -> None:
        rec = dict(rec, centre=arm.centre, multiplier=arm.multiplier)
        self.trials.append(rec)
        self.save()

    def save(self) -> None:
        self.folder.save("halving", {"plan": self.plan.to_dict(), "centres": dict(self.centres),
                                     "trials": self.trials, "rungs": self.rungs})


def _train_arm(task: Any, family: str, lr: float, steps: int, rung: int, seed: int, bar: Any,
               extra: Sequence[Any] = (), no_warmup: bool = False) -> dict:
    """One confirmation run: a miniature of the full run (schedule rebuilt for ``steps``;
    ``no_warmup``: without the recipe's warmup)."""
    from . import train

    from .finder import CONFIRM_EVALS, _ValTrack

    t0 = time.perf_counter()
    sched = _schedule(task, family, lr, steps, no_warmup)
    # rung 1 keeps its val curve: the collapse rule (finder._overfits_beyond) reads it
    track = (_ValTrack(task, every=max(1, steps // CONFIRM_EVALS), steps=steps) if rung >= 1
             else None)
    out = train.run(task, sched, steps=steps, seed=seed, eval_split="val",
                    callbacks=[_StepBar(bar, f"{family} {lr:.3g}"), *extra,
                               *([track] if track is not None else [])])
    if bar is not None and out.steps_done < steps:
        bar.update(steps - out.steps_done)
    rec = {"rung": rung, "family": family, "lr": lr, "steps": steps,
           "steps_done": out.steps_done, "metric": out.metric, "diverged": out.diverged,
           "scored": out.scored, "stop_reason": out.stop_reason,
           "wall_time": time.perf_counter() - t0, "losses": [float(v) for v in out.losses],
           "lrs": [float(v) for v in out.lrs], "schedule": sched.spec, "worker": _worker(),
           "no_warmup": no_warmup, "warmup_steps": _warmup_for(task, family, steps, no_warmup)}
    if track is not None:
        rec["val_curve"] = [list(p) for p in track.curve] + [[out.steps_done, out.metric]]
    return rec


def _worker() -> str:
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def _run_rung(task: Any, arms: list[_Arm], rung: int, steps: int, log: _Trials, seed: int,
              show: _Display) -> list[dict]:
    """Every arm's record at this rung: from the local log (resume), else from the study
    (where other ``lrkit tune`` workers may have run it), else trained here."""
    todo = [a for a in arms if log.find(rung, a) is None]
    bar = show.bar(len(todo) * steps, f"[3/5] rung {rung}: {len(arms)} arms x {steps} steps")
    try:
        if log.study is None:
            for arm in todo:
                rec = _train_arm(task, arm.family, arm.lr, steps, rung, seed, bar,
                                 no_warmup=arm.no_warmup)
                log.add(rec, arm)
        elif todo:
            for arm, rec in log.study.run(todo, rung, steps, task, seed, bar, log.add):
                if log.find(rung, arm) is None:  # run by another worker
                    log.add(rec, arm)
    finally:
        if bar is not None:
            bar.close()
    return [log.find(rung, a) for a in arms]  # type: ignore[misc]


def _rung0(task: Any, families: Sequence[str], centres: dict[str, float], plan: _Plan,
           log: _Trials, seed: int, show: _Display) -> tuple[list[str], list[dict]]:
    """Rung 0: every family at its centre for ``plan.rung0`` steps; the best ``plan.keep`` by
    val go on. Returns the kept families and the runs."""
    from .train import check_scored

    arms0 = [_Arm(f, centres[f], centres[f], 1.0) for f in families]
    res0 = _run_rung(task, arms0, 0, plan.rung0, log, seed, show)
    check_scored(res0, "tune, rung 0")
    order = sorted(range(len(arms0)), key=lambda i: (_rank(task, res0[i]), i))
    kept = [arms0[i].family for i in order[:plan.keep]]
    for r in res0:
        r["kept"] = r["family"] in kept
    log.rungs = [{"rung": 0, "steps": plan.rung0, "kept": kept,
                  "rule": f"best {plan.keep} of {len(arms0)} schedules by val {task.metric}"}]
    log.save()
    show.table(task, log.trials, 0)
    return kept, res0


class _Rung1:
    """Rung 1's arms and their runs (``arms[i]`` ran as ``res[i]``; a walk appends to both),
    and how the winner is read from them."""

    def __init__(self, task: Any, arms: list[_Arm], res: list[dict]) -> None:
        self.task, self.arms, self.res = task, arms, res
        #: {winner index: val's pick} when val could not tell the winner from another run of
        #: its family and their held-out batch losses could (finder.loss_tiebreak)
        self.by_loss: dict[int, int] = {}

    def best(self) -> int:
        """The index of val's pick (an exact tie to the lower index), or the loss tiebreak's."""
        task, arms, res = self.task, self.arms, self.res
        i = min(range(len(arms)), key=lambda i: (_rank(task, res[i]), i))
        mine = [j for j, a in enumerate(arms) if a.family == arms[i].family]
        j = mine[loss_tiebreak(task, mine.index(i), [res[k] for k in mine])]
        self.by_loss.clear()
        if j != i:
            self.by_loss[j] = i
        return j

    def tied(self, i: int) -> bool:
        """Another run of arm ``i``'s family scored exactly as well (on a small val split a
        tie is common: the lower LR wins it)."""
        return i not in self.by_loss and any(
            j != i and a.family == self.arms[i].family
            and _rank(self.task, r) == _rank(self.task, self.res[i])
            for j, (a, r) in enumerate(zip(self.arms, self.res)))


def _walk(r1: _Rung1, plan: _Plan, log: _Trials, seed: int, show: _Display, *,
          ceiling: float, band_top: float | None, left: int,
          spent_before: int) -> tuple[int, int, str | None]:
    """Walk on while the winner is the lowest or highest LR of its family and the budget
    (``left`` steps, of which rung 0 spent ``spent_before``) lasts: ``WALK`` decades a step;
    upwards never past ``ceiling`` (confirm mode's: twice the range test's band top, no
    shortened step: short runs favour high LRs most where the constant-LR sweep was already
    climbing); downwards from the lowest when every run of the family diverged (as confirm
    mode does). Returns the winner's index, the walks and why an edge winner was not walked
    on (or ``None``)."""
    walks = 0
    while True:
        i_best = r1.best()
        w = r1.arms[i_best]
        mine = sorted(a.multiplier for a in r1.arms if a.family == w.family)
        # the runs this decision has read so far, not the whole log: on resume the log already
        # holds the runs that come later (a walk's, the warmup check's), and counting them
        # here would stop the walk before the run it made the first time
        if spent_before + sum(int(r["steps_done"]) for r in r1.res) + plan.rung1 > left:
            return i_best, walks, "budget"
        if all(r["diverged"] for a, r in zip(r1.arms, r1.res) if a.family == w.family):
            direction, m = -1.0, mine[0] * 10 ** -WALK
        elif (r1.res[i_best]["diverged"] or w.multiplier not in (mine[0], mine[-1])
              or r1.tied(i_best)):
            # a tie at the edge (the lower LR wins it) is no evidence that the best lies beyond
            return i_best, walks, None
        else:
            direction = -1.0 if w.multiplier == mine[0] else 1.0
            m = w.multiplier * 10 ** (direction * WALK)
        if direction > 0 and w.centre * m > ceiling:
            return i_best, walks, ceiling_stop(w.centre * m, ceiling, band_top)
        arm = _Arm(w.family, w.centre * m, w.centre, m)
        r1.arms.append(arm)
        r1.res += _run_rung(r1.task, [arm], 1, plan.rung1, log, seed, show)
        walks += 1


def _stage_halving(task: Any, folder: _Folder, rt: Any, range_stage: Stage,
                   families: Sequence[str], budget: float, seed: int, study: Any,
                   show: _Display) -> tuple[dict, Stage]:
    from .finder import window_spacing
    from .train import check_scored

    full = task.recipe.steps
    reserve = WALK_RESERVE + (task.recipe.warmup_steps > 0)  # + the warmup check's run
    plan = _halving_plan(full, budget, range_stage.cost_steps, len(families), reserve)
    if len(families) > 1 and plan.rung0 < MIN_RUNG_STEPS:
        # too few steps to compare schedules (a miniature of a few steps has no shape, and its
        # val metric has barely moved): confirm the LR of the recipe's own one only (or
        # constant's, when tune does not offer the recipe's by name)
        families = (_recipe_family(task, families),)
        plan = _halving_plan(full, budget, range_stage.cost_steps, 1, reserve)
    plan = dataclasses.replace(plan, range_iters=int(rt.settings.get("num_iter", 0)))
    centres, origin = _centres(rt, task, families)
    # a decade apart when the range test gave no LR and the centre is a guess: on random small
    # CNNs whose loss sat at chance through tune's 30-60-step sweep, the best LR lay 10-400x
    # above it, out of reach of three runs a quarter decade apart and one walk
    spacing = window_spacing(rt)
    if study is not None:
        centres, plan = study.adopt(centres, plan)
    folder.save("candidates", {"centres": centres, "spacing_decades": spacing,
                               "arms": [dataclasses.asdict(a) for a in _arms(centres,
                                                                             spacing=spacing)],
                               "band": list(rt.suggestion.band) if rt.suggestion.band else None,
                               "origin": origin, "plan": plan.to_dict()})
    if len(families) > 1:
        show.say(f"[2/5] candidates: {len(families)} schedules, each at its centre and "
                 f"x10^(+-{spacing}); rung 0 = {plan.rung0} steps, rung 1 = {plan.rung1} steps, "
                 f"{plan.keep} schedule(s) go on")
    elif plan.rung1:
        show.say(f"[2/5] candidates: {families[0]} only, at its centre and x10^(+-{spacing}); "
                 f"rung 1 = {plan.rung1} steps")
    else:
        show.say(f"[2/5] candidates: {families[0]} at the range test's LR only")
    if plan.rung1 == 0:
        res, stage = _no_confirmation(folder, plan, centres, families[0], study, show)
        s = rt.suggestion
        scale = centres[families[0]] / s.lr if s.lr and s.band else None
        lr_range = [s.band[0] * scale, s.band[1] * scale] if scale else [None, None]
        return {**res, "origin": origin, "lr_range": lr_range}, stage
    log = _Trials(folder, plan, centres, study)
    res0: list[dict] = []
    if len(families) > 1:
        kept, res0 = _rung0(task, families, centres, plan, log, seed, show)
    else:
        kept = list(families)
        log.rungs = []
    # rung 1: the kept families, each at its three LRs, twice the horizon
    arms1 = [a for f in kept for a in _arms(centres, f, spacing)]
    res1 = _run_rung(task, arms1, 1, plan.rung1, log, seed, show)
    check_scored(res1, "tune, rung 1")
    band_top = rt.suggestion.band[1] if rt.suggestion.band is not None else None
    left = plan.total_steps - full - range_stage.cost_steps
    r1 = _Rung1(task, arms1, res1)
    i_best, walks, stop = _walk(
        r1, plan, log, seed, show,
        ceiling=math.inf if band_top is None else CONFIRM_CEILING * band_top,
        band_top=band_top, left=left, spent_before=sum(int(r["steps_done"]) for r in res0))
    by_loss, tied = r1.by_loss, r1.tied
    spent = sum(int(r["steps_done"]) for r in res0 + res1)
    winner = arms1[i_best]
    for i, r in enumerate(res1):
        r["kept"] = i == i_best
    warmup = _warmup_check(task, winner, res1[i_best], plan, log, seed, show, left - spent)
    log.rungs.append({"rung": 1, "steps": plan.rung1, "kept": [winner.key], "walks": walks,
                      "rule": f"best of {len(arms1)} arms by val {task.metric}"})
    log.save()
    show.table(task, log.trials, 1)
    cost = sum(int(r["steps_done"]) for r in log.trials)
    all_div = all(r["diverged"] for r in res1)
    mine = sorted(a.multiplier for a in arms1 if a.family == winner.family)
    edge = winner.multiplier in (mine[0], mine[-1]) and not tied(i_best)
    edge_stop = stop if edge else None
    family_runs = [r for a, r in zip(arms1, res1) if a.family == winner.family]
    lr, rescaled = _time_rescaled(task, res1[i_best], family_runs, full)
    separation = _separation(task, res1[i_best], [r for r in family_runs if r is not res1[i_best]])
    tiebreak = None
    if i_best in by_loss:
        tiebreak = tiebreak_evidence(task, res1[i_best], res1[by_loss[i_best]])
    br = bracket(task, res1[i_best], family_runs)
    lr_range = [None if br[k] is None else br[k] * lr / winner.lr for k in ("below", "above")]
    lr_alike = [b * lr / winner.lr for b in br["alike"]]
    outcome = {"family": winner.family, "lr": lr, "short_run_lr": winner.lr,
               "centre": winner.centre, "metric": res1[i_best]["metric"], "kept_rung0": kept,
               "walks": walks, "all_diverged": all_div, "at_edge": edge,
               "time_rescaled": rescaled, "warmup": warmup, "separation": separation,
               "loss_tiebreak": tiebreak, "lr_range": lr_range, "lr_alike": lr_alike,
               "edge_stop": edge_stop, "plan": plan.to_dict()}
    wall = sum(float(r["wall_time"]) for r in log.trials)
    stage = Stage("confirmation (successive halving)", cost, wall, outcome)
    folder.save("halving", {"plan": plan.to_dict(), "centres": dict(centres),
                            "trials": log.trials, "rungs": log.rungs, "stage": stage.to_dict()})
    if study is not None:
        study.finish()
    return {"winner": winner, "lr": lr, "rescaled": rescaled, "trials": log.trials,
            "plan": plan, "centres": centres, "walks": walks, "at_edge": edge,
            "origin": origin, "warmup": warmup, "separation": separation,
            "loss_tiebreak": tiebreak, "lr_range": lr_range, "lr_alike": lr_alike,
            "edge_stop": edge_stop, "no_warmup": bool(warmup and warmup["dropped"]),
            "spacing": spacing}, stage


def _warmup_check(task: Any, winner: _Arm, rec: dict, plan: _Plan, log: _Trials, seed: int,
                  show: _Display, room: int) -> dict | None:
    """Whether the recipe's warmup pays, asked at the rung-1 winner: one more run of
    ``plan.rung1`` steps at the winner's LR and schedule without the warmup, same seed. The
    warmup is dropped only when that run's val metric is strictly better.

    A warmup lets a run survive a peak LR its first steps cannot take (Goyal et al. 2017; Xiong
    et al. 2020 for post-LN transformers); where the first steps take it, the warmup only
    spends part of a short run at a lower LR (charlm, 300 steps: at 0.01, test bits/char 3.02
    with the recipe's 10% warmup, 2.91 without). A warmup the recipe lacks is not tried: at the
    same LR it changes little, and a one-run comparison then flips by noise (measured on the
    ten built-in tasks without one, a 5% warmup: chosen in 5 of 30 runs, 3 worse, mnist1d
    seed 2 by 5 points of accuracy; ``benchmarks/results/tune.md``).

    ``None`` when the recipe has no warmup, the family warms up by itself (one-cycle) or the
    winner diverged; ``{"skipped": why}`` when the budget's ``room`` (steps) cannot pay for it."""
    if (task.recipe.warmup_steps <= 0 or winner.family in _OWN_WARMUP
            or rec["diverged"]):
        return None
    full = task.recipe.steps
    arm = dataclasses.replace(winner, no_warmup=True)
    base = {"recipe_warmup_steps": _warmup_for(task, winner.family, full)}
    if plan.rung1 > room:
        return {**base, "dropped": False,
                "skipped": f"the budget left {max(room, 0)} steps, a run needs {plan.rung1}"}
    other = _run_rung(task, [arm], 1, plan.rung1, log, seed, show)[0]
    dropped = _rank(task, other) < _rank(task, rec)
    other["kept"] = False
    other["warmup_chosen"] = dropped
    log.save()
    return {**base, "dropped": dropped, "metric": other["metric"],
            "diverged": other["diverged"], "winner_metric": rec["metric"]}


def _no_confirmation(folder: _Folder, plan: _Plan, centres: dict[str, float], family: str,
                     study: Any, show: _Display) -> tuple[dict, Stage]:
    """Stage 3 when the budget leaves too few steps for confirmation runs: the range test's LR
    for ``family`` goes to the final run as it is."""
    winner = _Arm(family, centres[family], centres[family], 1.0)
    show.say(f"[3/5] confirmation: skipped, the budget leaves too few steps for runs of "
             f">= {MIN_RUNG_STEPS} steps at three LRs; {family} at the range test's "
             f"{winner.lr:.3g}")
    outcome = {"family": family, "lr": winner.lr, "short_run_lr": None, "centre": winner.lr,
               "metric": None, "kept_rung0": [family], "walks": 0, "all_diverged": False,
               "at_edge": False, "time_rescaled": None, "skipped": True, "plan": plan.to_dict()}
    stage = Stage("confirmation (successive halving)", 0, 0.0, outcome)
    folder.save("halving", {"plan": plan.to_dict(), "centres": dict(centres), "trials": [],
                            "rungs": [], "stage": stage.to_dict()})
    if study is not None:
        study.finish()
    return {"winner": winner, "lr": winner.lr, "rescaled": None, "trials": [], "plan": plan,
            "centres": centres, "walks": 0, "at_edge": False, "skipped": True}, stage


def _time_rescaled(task: Any, best: dict, family_runs: list[dict],
                   full: int) -> tuple[float, str | None]:
    """The full run's LR from the rung-1 winner: scaled so that the full run integrates the same
    LR as the winner did up to its best val point, when a full run at the winner's LR would
    overfit (confirm mode's rules, :func:`lrkit.finder.overfit_step`: the run above replays the
    winner at the same integrated LR and then gets worse, or the winner's own val peaks and
    worsens), else the winner's own LR. Returns ``(lr, why or None)``."""
    from .finder import overfit_step

    runs = [dict(r, train_losses=r.get("losses", [])) for r in family_runs]
    point = overfit_step(task, dict(best, train_losses=best.get("losses", [])), runs)
    if point is None:
        return float(best["lr"]), None
    fraction, why = point
    steps = int(best["steps"])
    lr = float(best["lr"]) * fraction * steps / full
    return lr, (f"{why}: a {full}-step run at lr {best['lr']:.3g} would travel past that "
                f"point, so the final run takes lr x {fraction:.2g} x {steps}/{full} = {lr:.3g} "
                "and integrates the same LR (gradient-flow time rescaling)")


def _final_family(family: str, families: Sequence[str], halving: dict) -> str:
    """The family the final run trains with: the short runs' winner, except that a constant LR
    gets a cooldown, the WSD shape at the same peak (the LR held, then a 1-sqrt decay to 0 over
    the run's last fifth, as :func:`lrkit.schedules.family` shapes it), when WSD is among
    ``families`` and the short runs gave no sign of overfitting (no time rescaling; not when
    confirmation was skipped); the explanation says so (:data:`COOLDOWN_SENTENCE`).

    Why: a short run cannot show what a cooldown is worth, since the noise it averages away
    only matters once the run has reached its noise floor; so constant wins the short runs'
    near-ties with WSD while a cooldown at the end of a constant LR matches cosine and beats
    the constant LR it ends (Hägele et al. 2024, "Scaling Laws and Compute-Optimal Training
    Beyond Fixed Training Durations"). Measured, every built-in pick of constant against the
    same pick with the cooldown (3 seeds): digits -0.8% -> -1.5% regret, mnist1d -1.2% ->
    -3.8%, charrnn -0.5% -> -2.1%, charlm +2.8% -> +2.5%, mnist5k -0.6% -> -0.5%. Where the
    short runs saw the model overfit, the LR noise is what regularises it and annealing it away
    hurts (diabetes, 5 seeds: +0.7% -> +1.1%), so those keep the constant LR. On a separable
    log-loss task under 13 optimizers (``benchmarks/user_optimizers.py``), where a constant LR
    turns unstable late: tune's median regret +51.8% -> +23.6%. Held out: 90 random MLPs, 13
    tasks better and 9 worse (within 1% of the grid's best 37 -> 40); 10 character LMs, median
    regret -0.4% -> -2.3% (``benchmarks/RESULTS.md``, twenty-first round)."""
    if (family == "constant" and "wsd" in families and not halving.get("rescaled")
            and not halving.get("skipped")):
        return "wsd"
    return family


#: the explanation's sentence for a cooldown (:func:`_final_family`)
COOLDOWN_SENTENCE = (
    "Constant won the short runs, which end before a cooldown pays; so the final run holds "
    "that LR and decays it to 0 over its last fifth (WSD), which at the same peak matches "
    "cosine and beats the constant LR it ends (Hägele et al. 2024); the short runs saw no "
    "overfitting, which the LR's noise would be holding back.")


def _stage_final(task: Any, folder: _Folder, family: str, lr: float, seed: int,
                 show: _Display, allowance: int, no_warmup: bool = False) -> tuple[dict, Stage]:
    """The full run at ``lr`` (``no_warmup``: without the recipe's warmup, see
    :func:`_warmup_check`). When it diverges and ``allowance`` (the budget's steps left for
    this stage) still pays for at least ``RETRY_MIN_SHARE`` of another run, it runs once more
    at ``lr / RETRY_FACTOR``, as the monitor advises for divergence, for a full run or what the
    budget has left (then the better by validation of it and the first run's best checkpoint
    is kept); the first attempt is kept in ``diverged_attempt``. A run that diverges with
    nothing run after it keeps its best checkpoint from before the blow-up."""
    import torch

    from . import train
    from .callbacks import DecayOnFinding

    saved = folder.load("final")
    if saved is not None and folder.file("weights").exists():
        show.say(f"[4/5] final run: resumed from {folder.file('final').name}")
        return saved, Stage.from_dict(saved["stage"])
    if saved is not None:
        show.say(f"[4/5] final run: {folder.file('weights').name} is missing: trained again")
    full = task.recipe.steps
    every = max(1, full // 25)
    first: dict | None = None
    first_rec: _Recorder | None = None
    wall = 0.0
    steps = full
    while True:
        sched = _schedule(task, family, lr, steps, no_warmup)
        monitor = _make_monitor(task, sched)
        rec = _Recorder(task, every, monitor)
        bar = show.bar(steps, f"[4/5] final run: {family} at {lr:.3g}, {steps} steps")
        t0 = time.perf_counter()
        try:
            # the monitor's advice for lr_too_high (a 3x lower LR), taken in this run: the
            # short runs end before a separable task's shrinking gradients or Adam's growing
            # steps turn a high LR unstable (benchmarks/RESULTS.md, twenty-second round); not
            # for a climb while a warmup still raises the LR (its transient)
            peak = max(range(steps), key=lambda t: (sched(t), -t))
            cut = DecayOnFinding(monitor, factor=1 / CUT_FACTOR, start_step=peak)
            out = train.run(task, sched, steps=steps, seed=seed, eval_split="test",
                            callbacks=[rec, _StepBar(bar), cut])
        finally:
            if bar is not None:
                bar.close()
        wall += time.perf_counter() - t0
        left = allowance - out.steps_done
        if not out.diverged or first is not None or left < RETRY_MIN_SHARE * full:
            break
        steps = min(full, left)
        first = {"lr": lr, "steps_done": out.steps_done, "stop_reason": out.stop_reason,
                 "findings": _findings(monitor), "retry_steps": steps,
                 "lr_cuts": _cuts(cut)}
        first_rec = rec
        show.say(f"      the final run diverged at step {out.steps_done}: once more at "
                 f"{lr / RETRY_FACTOR:.3g} ({RETRY_FACTOR:g}x lower, the monitor's advice)"
                 + (f", for the {steps} steps the budget has left" if steps < full else ""))
        lr /= RETRY_FACTOR
    spent = out.steps_done + (first["steps_done"] if first else 0)
    findings = _findings(monitor)
    metric, kept = out.metric, None
    # a retry the budget paid only part of a run for is weighed against the diverged run's
    # best checkpoint from before its blow-up, by validation: the better of the two is kept
    from_first = (first_rec is not None and first_rec.best is not None and steps < full
                  and (out.diverged or not rec.val
                       or task.better(first_rec.best[1], _kept_val(rec))))
    src = first_rec if from_first else rec
    if (src.model is not None and src.best is not None
            and (from_first or out.diverged or _worse_beyond_noise(src.val, src.best[1]))):
        # the end worse than the best validation step beyond the metric's own noise: keep that
        # checkpoint (EarlyStopping, the monitor's action for overfitting; Keras's
        # save_best_only, Hugging Face's load_best_model_at_end), scored on "test" like the
        # end. Not only where the monitor reads a trend as overfitting: a constant LR's jitter
        # is worth choosing from too (mnist1d seed 2: val 0.915 at step 960, 0.835 at the end;
        # test 0.913 against 0.881). And a run that diverged with no budget left to run it
        # again keeps its best model from before the blow-up rather than returning a diverged
        # one (a random digits task, `benchmarks/heldout_random_tasks.py`: a 1-cycle peak that
        # 78-step runs trained at blew up at step 211 of 600, 30 steps after reaching it:
        # test accuracy 0.10, chance; its checkpoint at step 120 scores 0.90)
        src.model.load_state_dict(src.best[2])
        src.model.eval()
        with torch.no_grad():
            metric = task.score(src.model, "test")
        kept = {"step": src.best[0], "val": src.best[1], "test": metric,
                "test_at_end": out.metric, "diverged": from_first or out.diverged,
                "from_first_attempt": from_first,
                "overfitting": any(f["kind"] == "overfitting" for f in findings)}
        kept["lr_for_run_length"] = run_length_lr(lr, kept, full, _cuts(cut))
    if src.model is not None:
        torch.save(src.model.state_dict(), folder.file("weights"))
    data = {"family": family, "lr": lr, "schedule": sched.spec, "metric": metric,
            "metric_at_end": out.metric, "best_val_checkpoint": kept,
            "diverged": out.diverged, "stop_reason": out.stop_reason,
            "steps_done": out.steps_done, "losses": [float(v) for v in out.losses],
            "lrs": [float(v) for v in out.lrs], "grad_norms": rec.grad_norms,
            "val": [list(v) for v in rec.val], "findings": findings,
            "lr_cuts": _cuts(cut), "monitor": "lrkit.monitor",
            "diverged_attempt": first}
    stage = Stage("final run", int(spent), wall,
                  {"metric": metric, "metric_at_end": out.metric, "split": "test",
                   "diverged": out.diverged, "findings": len(findings),
                   "best_val_checkpoint_step": kept["step"] if kept else None,
                   "lr_for_run_length": kept["lr_for_run_length"] if kept else None,
                   "retried_from_lr": first["lr"] if first else None,
                   "lr_cuts": _cuts(cut)})
    data["stage"] = stage.to_dict()
    folder.save("final", data)
    return data, stage


def _cuts(cut: Any) -> list[dict]:
    """A :class:`~lrkit.callbacks.DecayOnFinding`'s cuts as JSON: the step, the finding's kind,
    the monitor's reading that raised it with its evidence then, the LR's multiplier from then
    on."""
    return [{"step": int(step), "kind": f.kind, "rule": f.rule, "evidence": dict(f.evidence),
             "scale": cut.factor ** (i + 1)} for i, (step, f) in enumerate(cut.cuts)]


def _kept_val(rec: _Recorder) -> float:
    """The validation value of the model a final run keeps: its best checkpoint's when the
    end is worse beyond noise (:func:`_worse_beyond_noise`), else its last evaluation's."""
    if rec.best is not None and _worse_beyond_noise(rec.val, rec.best[1]):
        return rec.best[1]
    return rec.val[-1][1]


def _worse_beyond_noise(val: Sequence[tuple[int, float]], best: float) -> bool:
    """Whether the last validation value is worse than ``best`` by more than twice the val
    metric's noise (:func:`lrkit.finder.metric_noise`): on a small val split a one-example
    wobble must not swap the model for an earlier checkpoint, and a run annealed to LR 0 ends on
    identical evaluations whose spread is 0 (seen: digits-long seed 1, val accuracy 0.979 at
    step 576, 0.972 from there to the end; tail spread 0, noise 0.004)."""
    vs = [v for _, v in val if math.isfinite(v)]
    if len(vs) < 4:
        return False
    return abs(vs[-1] - best) > 2.0 * metric_noise(vs)


# ------------------------------------------------------------ the monitor and the safe-LR bound
def _make_monitor(task: Any, schedule: Any) -> Any:
    """A :class:`lrkit.monitor.Monitor` for the final run (issue 9) that knows its schedule."""
    from .monitor import Monitor

    return Monitor(val_mode="max" if task.higher_is_better else "min",
                   total_steps=task.recipe.steps, schedule=schedule)


def _findings(monitor: Any) -> list[dict]:
    return [_jsonable(f.to_dict()) for f in monitor.findings]


def safe_lr_plan(steps: int, batch_size: int) -> tuple[int, int] | None:
    """``(iters, num_batches)`` for the report's safe-LR bound within :data:`SAFE_LR_SHARE` of a
    run of ``steps`` batch gradients (optimizer steps x accumulation steps): ``iters`` Lanczos
    products over ``num_batches`` batches, each product counted as two batch gradients, plus one
    a batch for Adam's second moments; ``None`` when even the smallest plan costs more.

    The curvature module's default (enough batches for 256 examples, at most 8 here) is kept
    while it fits; then fewer batches (never fewer than 2 where the default has more), then
    fewer products (Lanczos usually converges in 6-20). Fewer examples read a mini-batch's
    sharper curvature: the bound comes out lower (measured at 2 batches instead of 8: 0.9x on
    digits, 0.6x on charlm and mnist5k, 0.4x on charrnn)."""
    cap = SAFE_LR_SHARE * steps
    default = max(1, min(8, math.ceil(256 / max(1, batch_size))))
    for iters, least in _SAFE_LR_PLANS:
        nb = min(default, int(cap // (2 * iters + 1)))  # (+1: an Adam recipe's moments)
        if nb >= min(least, default):
            return iters, nb
    return None


def _safe_lr(task: Any, seed: int, folder: _Folder) -> dict:
    """The curvature bound at the initial weights (:func:`lrkit.curvature.safe_lr`), planned
    by :func:`safe_lr_plan`, with what it cost; kept in ``safe-lr.json``."""
    from . import curvature

    done = folder.load("safe")
    if done is not None:
        return done
    full = task.recipe.steps
    grads = full * task.recipe.accumulation_steps  # a full run's batch gradients
    plan = safe_lr_plan(grads, task.recipe.batch_size)
    if plan is None:
        d = {"skipped": (f"its smallest plan (10 Hessian-vector products over 2 batches) costs "
                         f"more than {SAFE_LR_SHARE:.0%} of this {full}-step run's batch "
                         "gradients; `lrkit safe-lr` computes it on its own")}
    else:
        iters, nb = plan
        t0 = time.perf_counter()
        try:
            res = curvature.safe_lr(task, seed=seed, num_batches=nb, iters=iters)
            # two gradients per product; Adam's second moments take one more per batch
            batches = res.eigen.batches * (2 * res.eigen.n_hvp + int(res.eigen.preconditioned))
            d = {"lr": float(res.lr), "formula": str(res.formula),
                 "reference": str(res.reference), "summary": res.summary(),
                 "examples": int(res.eigen.examples), "n_hvp": int(res.eigen.n_hvp),
                 "converged": bool(res.eigen.converged), "cost_batches": int(batches),
                 "cost_runs": batches / grads, "wall_time": time.perf_counter() - t0}
        except Exception as e:  # the bound is an extra: the report says why it is missing
            d = {"error": f"{type(e).__name__}: {e}"}
    folder.save("safe", d)
    return d


class _Heartbeat:
    """fit callback: tells the study's storage every few seconds that the trial is alive, so a
    worker that dies leaves a trial that the others mark failed and run again."""

    def __init__(self, storage: Any, trial_id: int, every: float = 5.0) -> None:
        self.storage, self.trial_id, self.every = storage, trial_id, every
        self.last = 0.0

    def on_train_start(self, model: Any, optimizer: Any) -> None:
        pass

    def on_step_end(self, info: Any) -> None:
        now = time.monotonic()
        if now - self.last >= self.every and hasattr(self.storage, "record_heartbeat"):
            self.storage.record_heartbeat(self.trial_id)
            self.last = now
        return None

    def on_eval(self, step: int, metric: float) -> None:
        return None

    def on_train_end(self, result: Any) -> None:
        pass


class _Study:
    """Stage 3 as a queue of trials in an Optuna study: the embedded SQLite file in the run folder
    by default, or a shared ``storage`` URL (``postgresql://...``) where every ``lrkit tune``
    process started with the same task, settings and storage joins the same study and works
    through the same queue, and ``lrkit search`` workers on that study help
    (:func:`run_study_trial`; ``docs/tune.md``).

    Protocol: the study's user attributes ``lrkit_tune`` (task key, full-run steps, recipe
    warmup, seed) and ``lrkit = "tune"`` mark it as tune's. Each rung's arms are enqueued once
    (``params`` lr and schedule; user attributes ``lrkit_arm`` = ``rung|family|lr|steps``,
    ``rung``, ``steps``, ``warmup_steps`` and ``seed``); a worker pops a waiting trial
    (:meth:`optuna.Study.ask`), trains it with :func:`run_study_trial` and tells the value (val
    metric; a diverged run is a failed trial), with the whole record in the user attribute
    ``lrkit_rec``. The first worker's candidates and plan are stored on the study; later workers
    adopt them. A trial whose worker stopped sending heartbeats is failed and its arm enqueued
    again. When stage 3 is decided, ``lrkit_tune_done`` is set: helpers stop.
    """

    #: a running trial's heartbeat (seconds), and how long without one before it counts as
    #: dead (its worker killed) and its arm is queued again
    HEARTBEAT, GRACE = 5, 30

    def __init__(self, storage: str, name: str, task: Any, *, seed: int,
                 poll: float = 0.5) -> None:
        import optuna

        from .search._storage import open_storage

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna, self.name, self.poll = optuna, name, poll
        self.url = storage
        self._beaten: set[int] = set()  # trials given one heartbeat here (_beat_silent)
        self._seen: dict[int, float] = {}  # when this process first saw a trial running
        # lrkit's storage set-up: SQLite transactions that wait for the lock instead of failing
        # when other processes (tune or search workers) write; no retry copies (tune re-queues
        # a dead worker's arm itself)
        self.storage = open_storage(storage, heartbeat_interval=self.HEARTBEAT,
                                    grace_period=self.GRACE, retries=0)
        self.study = optuna.create_study(storage=self.storage, study_name=name,
                                         load_if_exists=True,
                                         direction="maximize" if task.higher_is_better
                                         else "minimize")
        self.study.set_user_attr("task", task.key)
        self.study.set_user_attr("lrkit_tune", {
            "task": task.key, "task_name": task.name, "full_run_steps": task.recipe.steps,
            "warmup_steps": task.recipe.warmup_steps, "seed": seed, "metric": task.metric})
        self.study.set_user_attr("lrkit", "tune")  # last: a helper reads the others after it

    def adopt(self, centres: dict[str, float], plan: _Plan) -> tuple[dict[str, float], _Plan]:
        """The study's candidates and plan when another worker set them, else ours (stored)."""
        d = self.study.user_attrs.get("lrkit_tune_plan")
        if d is not None:
            return {k: float(v) for k, v in d["centres"].items()}, _Plan(**d["plan"])
        self.study.set_user_attr("lrkit_tune_plan", {"centres": centres,
                                                     "plan": plan.to_dict()})
        return centres, plan

    def finish(self) -> None:
        """Stage 3 is decided: helpers (``lrkit search`` on this study) may stop."""
        self.study.set_user_attr("lrkit_tune_done", True)

    def _scan(self, keys: set[str]) -> tuple[dict[str, dict], set[str], bool]:
        S = self.optuna.trial.TrialState
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", self.optuna.exceptions.ExperimentalWarning)
            self.optuna.storages.fail_stale_trials(self.study)
        self._beat_silent(keys)
        done: dict[str, dict] = {}
        pending: set[str] = set()
        waiting = False
        for t in self.study.get_trials(deepcopy=False):
            k = t.user_attrs.get("lrkit_arm")
            if k not in keys:
                continue
            if t.state in (S.COMPLETE, S.FAIL) and "lrkit_rec" in t.user_attrs:
                done.setdefault(k, dict(t.user_attrs["lrkit_rec"]))
            elif t.state in (S.WAITING, S.RUNNING):
                pending.add(k)
                waiting = waiting or t.state == S.WAITING
        return done, pending, waiting

    def _beat_silent(self, keys: set[str]) -> None:
        """Give each running trial of ``keys`` that started more than ``GRACE`` seconds ago one
        heartbeat, once per process: Optuna's ``fail_stale_trials`` skips a trial that never
        sent one (its worker killed between ``ask`` and its first beat), and a resumed run
        waited for it forever. With this beat it goes stale ``GRACE`` seconds later, unless its
        worker is alive and beating (then the beat changes nothing). Only a trial this process
        has seen running for ``GRACE + HEARTBEAT`` seconds gets it: one whose worker beat and
        died is failed as stale by then, and beating it sooner restarted its grace (a resume
        after ``kill -9`` waited 60-66 s in 7 of 10 kills, not 30)."""
        import datetime

        S = self.optuna.trial.TrialState
        now, seen_now = datetime.datetime.now(), time.monotonic()
        for t in self.study.get_trials(deepcopy=False, states=(S.RUNNING,)):
            start = t.datetime_start
            seen = self._seen.setdefault(t._trial_id, seen_now)
            if (t._trial_id not in self._beaten and t.user_attrs.get("lrkit_arm") in keys
                    and start is not None and (now - start).total_seconds() > self.GRACE
                    and seen_now - seen > self.GRACE + self.HEARTBEAT):
                self._beaten.add(t._trial_id)
                self.storage.record_heartbeat(t._trial_id)

    def run(self, arms: list[_Arm], rung: int, steps: int, task: Any, seed: int, bar: Any,
            finished: Any) -> list[tuple[_Arm, dict]]:
        """Work through the queue until every arm has a result; ``finished(rec, arm)`` is
        called for each of ``arms`` trained here, as soon as it is done."""
        by_key = {_arm_key(rung, a.family, a.lr, steps, a.no_warmup): a for a in arms}
        keys = set(by_key)
        said = False
        while True:
            done, pending, waiting = self._scan(keys)
            if keys <= set(done):
                return [(by_key[k], done[k]) for k in by_key]
            # never queued, or its worker died; in the arms' order (a set's order moved with
            # PYTHONHASHSEED: the trials, 3-halving.json and the report's figure with it)
            for k in [k for k in by_key if k not in done and k not in pending]:
                a = by_key[k]
                _enqueue_arm(self.study, task, rung, a.family, a.lr, steps, seed,
                             a.no_warmup)
                waiting = True
            if not waiting:
                # the rest is running on other workers, or on one that was killed (a resumed
                # run's own earlier process): say why the bar stands still, once
                if bar is not None and not said:
                    bar.set_postfix_str(
                        f"waiting for {len(pending)} run(s) another process started; one "
                        f"killed is taken back after {self.GRACE} s without a heartbeat",
                        refresh=True)
                    said = True
                time.sleep(self.poll)
                continue
            with warnings.catch_warnings():  # "heartbeat is meant for Study.optimize": we beat
                warnings.simplefilter("ignore", UserWarning)
                trial = self.study.ask()
            attrs = self.storage.get_trial(trial._trial_id).user_attrs
            rec = run_study_trial(self.study, trial, task, seed=seed,
                                  bar=bar if attrs.get("lrkit_arm") in keys else None)
            if rec is not None and attrs["lrkit_arm"] in keys:
                finished(rec, by_key[attrs["lrkit_arm"]])


def _arm_key(rung: int, family: str, lr: float, steps: int, no_warmup: bool = False) -> str:
    return f"{rung}|{family}|{lr:.9g}|{steps}" + ("|no-warmup" if no_warmup else "")


def _enqueue_arm(study: Any, task: Any, rung: int, family: str, lr: float, steps: int,
                 seed: int, no_warmup: bool = False) -> None:
    """Queue one confirmation run as a waiting trial that carries everything needed to train
    it (:func:`run_study_trial`)."""
    study.enqueue_trial({"lr": lr, "schedule": family}, user_attrs={
        "lrkit_arm": _arm_key(rung, family, lr, steps, no_warmup), "rung": rung, "steps": steps,
        "warmup_steps": _warmup_for(task, family, steps, no_warmup), "no_warmup": no_warmup,
        "seed": seed},
        skip_if_exists=False)


def run_study_trial(study: Any, trial: Any, task: Any, *, seed: int, bar: Any = None
                    ) -> dict | None:
    """Train one of tune's queued confirmation runs and tell the study: the worker side of the
    queue protocol (:class:`_Study`), shared by ``lrkit tune`` workers and by ``lrkit search``
    workers that help a tune study.

    ``trial`` is what :meth:`optuna.Study.ask` popped. A trial enqueued by tune carries its
    ``lr`` and ``schedule`` (fixed params) and the user attributes ``rung``, ``steps``,
    ``warmup_steps``, ``no_warmup`` and ``seed``; it is trained as a miniature of the full run,
    ``train.run(task, schedules.family(family, lr, steps, warmup_steps=w), steps=steps,
    seed=seed, eval_split="val")`` with ``w`` the recipe's warmup scaled to ``steps`` (0 with
    ``no_warmup``: the warmup check's run), and told
    its val metric (a diverged run: failed), the record in ``lrkit_rec``. Interrupted or
    crashed, the trial is failed and its arm queued again.

    Args:
        study: the tune study (an :class:`optuna.Study`).
        trial: the popped trial.
        task: the task tune runs (its warmup scaling must give the trial's ``warmup_steps``).
        seed: the seed when the trial carries none.
        bar: a tqdm bar advanced per step (or ``None``).

    Returns:
        The record (as in ``3-halving.json``), or ``None`` when ``trial`` is not one of tune's
        queued runs (it is then told failed: given back).

    Raises:
        ValueError: ``task`` is not the task the trial was queued for (its warmup differs).
    """
    import optuna

    S = optuna.trial.TrialState
    storage = study._storage
    if hasattr(storage, "record_heartbeat"):  # alive from the moment it is RUNNING (see _scan)
        storage.record_heartbeat(trial._trial_id)
    attrs = storage.get_trial(trial._trial_id).user_attrs
    if "lrkit_arm" not in attrs:  # not one of tune's queued runs: give it back
        study.tell(trial, state=S.FAIL)
        return None
    # the enqueued values come back through suggest_* (Optuna's fixed params)
    family = str(trial.suggest_categorical("schedule", list(FAMILY_LR_KEY)))
    lr = float(trial.suggest_float("lr", 1e-12, 1e6, log=True))
    rung, steps = int(attrs["rung"]), int(attrs["steps"])
    seed = int(attrs.get("seed", seed))
    no_warmup = bool(attrs.get("no_warmup", False))
    try:
        w = _warmup_for(task, family, steps, no_warmup)
        if "warmup_steps" in attrs and int(attrs["warmup_steps"]) != w:
            raise ValueError(f"task {task.key!r} scales the warmup of a {steps}-step {family} "
                             f"run to {w} steps, the study's trial to {attrs['warmup_steps']}: "
                             "pass the task lrkit tune runs")
        rec = _train_arm(task, family, lr, steps, rung, seed, bar,
                         extra=[_Heartbeat(storage, trial._trial_id)], no_warmup=no_warmup)
    except BaseException:
        # interrupted or crashed: fail it and queue the arm again for whoever goes on
        study.tell(trial, state=S.FAIL)
        _enqueue_arm(study, task, rung, family, lr, steps, seed, no_warmup)
        raise
    trial.set_user_attr("lrkit_rec", _jsonable(rec))
    value = _num(rec["metric"])
    if rec["diverged"] or not math.isfinite(value):
        study.tell(trial, state=S.FAIL)
    else:
        study.tell(trial, value)
    return rec


def _helper_command(task: Any, task_ref: str, url: str, name: str) -> str:
    """The ``lrkit search`` command that makes another process a helper of this tune study
    (the URL's password masked)."""

    from . import tasks as _tasks
    from .search._storage import mask_url

    ref = task_ref
    # a Task object passed from Python (its name stands in for the reference: one with a ':'
    # in it was printed as a module to import)
    if ref not in _tasks.names() and (":" not in ref or ref == task.name):
        ref = "package.module:function"
    return (f"lrkit search --task {shlex.quote(ref)} --storage {shlex.quote(mask_url(url))} "
            f"--study {shlex.quote(name)}")


def _open_study(storage: str | None, folder: _Folder, task: Any, seed: int) -> Any:
    if importlib.util.find_spec("optuna") is None:
        if storage is not None:
            require("optuna", package="optuna", extra="search",
                    needed_by="tune's storage= (an Optuna storage)")
        return None
    if storage is None:
        from .search._storage import sqlite_url

        return _Study(sqlite_url((folder.path / "study.db").resolve()),
                      f"tune-{folder.path.name}", task, seed=seed)
    meta = folder.load("meta") or {}
    name = (f"tune-{task.key}-s{meta.get('seed')}-b{meta.get('budget')}-"
            + "+".join(meta.get("schedules") or ()))
    return _Study(storage, name, task, seed=seed)


# -------------------------------------------------------------------------------- the call
def _explain(task: Any, rt: Any, halving: dict, final: dict, stages: Sequence[Stage],
             full: int, task_ref: str | None = None) -> str:
    s = rt.suggestion
    w = halving["winner"]
    plan: _Plan = halving["plan"]
    trials = halving["trials"]
    name = task.metric
    test = task.test_label  # "val" where the task has no held-out test data
    fmt = lambda v: "diverged" if v is None else f"{_num(v):.4g}"  # noqa: E731
    r0 = {r["family"]: r for r in trials if r["rung"] == 0}
    order = list(halving.get("centres") or r0)  # the families' order breaks ties, as in rung 0
    best0 = sorted(r0.values(), key=lambda r: (_rank(task, r), order.index(r["family"])
                                               if r["family"] in order else len(order)))
    parts = []
    if s.lr is not None and s.band:
        parts.append(f"The range test ({rt.cost_steps} steps) found the loss falling fastest "
                     f"without blowing up around {s.lr:.3g}, with a good band from "
                     f"{s.band[0]:.3g} to {s.band[1]:.3g}"
                     + (f" (low confidence: {s.reason}"
                        + ("" if halving.get("skipped") else "; the short runs below check it")
                        + ")." if s.confidence == "low" else "."))
    else:
        origin = halving.get("origin") or "the recipe's default LR"
        parts.append(f"The range test showed no clear descent ({s.reason}), so the candidates "
                     f"were centred on {origin}: {w.family} at {w.centre:.3g}.")
    ranking = ", ".join(f"{r['family']} {fmt(None if r['diverged'] else r['metric'])}"
                        for r in best0)
    left = plan.total_steps - full - rt.cost_steps
    if halving.get("skipped"):
        parts.append(f"Beyond the final run the budget has {plan.total_steps - full} steps: too "
                     f"few for a range test and confirmation runs of at least {MIN_RUNG_STEPS} "
                     f"steps at three LRs, so the range test took them and the final run uses "
                     f"its LR for {w.family} ({w.lr:.3g}) unconfirmed; a larger budget would "
                     "check it.")
    elif best0:
        parts.append(f"Short runs of {plan.rung0} steps, each schedule at the peak the band "
                     f"suggests for it, scored validation {name} as: {ranking}; "
                     f"{' and '.join(halving['rungs_kept'])} went on.")
    else:
        parts.append(f"The budget left {max(left, 0)} steps for confirmation runs: too few to "
                     f"compare schedules with runs of at least {MIN_RUNG_STEPS} steps, so only "
                     f"{w.family} was confirmed.")
    r1 = [r for r in trials if r["rung"] == 1]
    n_walks = int(halving.get("walks") or 0)
    walked = (f", walking on by half a decade {'once' if n_walks == 1 else f'{n_walks} times'} "
              "while the edge won," if n_walks else "")
    why_not = halving.get("edge_stop")
    why_not = {"budget": "the budget had no run left to look further"}.get(why_not, why_not)
    edge = ("; it is the edge of the LRs tried: the best may lie beyond"
            + (f", but {why_not}" if why_not else "") if halving.get("at_edge") else "")
    if r1:
        spacing = float(halving.get("spacing", SPACING))
        apart = {0.25: "a quarter decade", 0.5: "half a decade", 1.0: "a decade"}.get(
            spacing, f"{spacing:g} decades")
        guess = (" (the range test gave no LR: the centre is a guess)" if spacing != SPACING
                 else "")
        parts.append(f"Runs of {plan.rung1} steps at three LRs {apart} apart{guess}{walked} "
                     f"then picked {w.family} at {w.lr:.3g} (validation {name} "
                     f"{fmt(next(r['metric'] for r in r1 if r.get('kept')))}{edge}).")
    sep, tb = halving.get("separation"), halving.get("loss_tiebreak")
    if tb:
        text = tiebreak_sentence(tb, fmt)
        parts.append(f"{text[0].upper()}{text[1:]}.")
    elif sep and not sep["clear"]:
        how = ("the same" if sep["margin"] == 0 else
               f"{fmt(sep['runner_up_metric'])}, {sep['margin']:.3g} behind, within the noise "
               f"of the winner's own evaluations ({sep['noise']:.3g})")
        parts.append(f"The runner-up at {sep['runner_up_lr']:.3g} scored {how}, so the short "
                     "runs could not tell these two LRs apart; a larger budget (longer runs) "
                     "would.")
    if halving.get("rescaled"):
        parts.append(f"But {halving['rescaled']}.")
    if final.get("family", w.family) != w.family:  # the final run's cooldown
        parts.append(COOLDOWN_SENTENCE)
    parts += _explain_warmup(halving.get("warmup"), name, fmt, full)
    total = sum(st.cost_steps for st in stages)
    parts.append(f"The full {full}-step run with that schedule scored "
                 f"{fmt(final.get('metric_at_end', final['metric']))} "
                 f"{test} {name}; everything together cost {total} steps = "
                 f"{total / full:.2f} full runs.")
    if final.get("findings"):
        kinds = sorted({str(f.get('kind')) for f in final["findings"]})
        parts.append(f"The monitor flagged: {', '.join(kinds)}.")
    parts += _explain_cuts(final)
    # a model that barely trains: the monitor's "raise the LR" is not the advice to give
    parts += (_explain_no_learning(final, trials, full)
              or _explain_lr_too_low(final, halving, task, name, fmt, s.band))
    parts += _explain_final_run(final, task, task_ref, plan, f"{test} {name}", fmt, full)
    return " ".join(parts)


def _explain_cuts(final: Mapping[str, Any]) -> list[str]:
    """The final run's LR cut on the monitor's ``lr_too_high`` (raised once a run), in words,
    with the reading that raised it."""
    cuts = final.get("lr_cuts") or []
    if not cuts:
        return []
    c, lr = cuts[0], final.get("lr")
    ev = c.get("evidence") or {}
    why = {"climbed_back": "the loss climbing back from its best",
           "rose_from_start": "the loss rising above its start",
           "above_start": "the loss rising above its start",
           "stuck_grad_rise": "the loss not falling while its gradient norm rose",
           "val_undone": "the validation metric undone while the training loss stalled",
           "early_val_peak": f"the validation metric best at step {ev.get('best_step')}, early "
                             "in the run, and worse since",
           }.get(c.get("rule", ""), "one of its readings")  # (a folder from before rules)
    rerun = f" (a rerun would start near {lr * float(c['scale']):.3g})" if lr else ""
    return [f"The monitor found the LR too high at step {c['step']} ({why}), so the final run "
            f"took its advice at once: it lowered the LR {CUT_FACTOR:g}x from there{rerun}."]


#: a final run whose training loss fell by less than this share of its start (first tenth
#: against last tenth) barely trained. A deep tanh MLP with PyTorch's default initialisation
#: (20 layers, digits, no normalisation): its range test's loss falls 0.5% up to divergence,
#: tune's final run 0.1%, test accuracy at chance at every LR, and the range test's reason
#: reads its flat curve first as "already trained";
#: the slowest real learner measured (a sparse bag-of-words under SGD, ``user_sparse.py``)
#: fell 12%
NO_LEARNING_FALL = 0.05


def _explain_no_learning(final: dict, trials: Sequence[Mapping[str, Any]],
                         full: int) -> list[str]:
    """A sentence when the final run barely trained (:data:`NO_LEARNING_FALL`): then the LR
    is not what to fix first, and the flat range-test curve (\"as for a model that is already
    trained\") and tied short runs say so only indirectly."""
    from .finder import _train_fall

    losses = final.get("losses") or []
    fall = _train_fall({"train_losses": losses})
    if not math.isfinite(fall) or fall >= NO_LEARNING_FALL or final.get("diverged_attempt"):
        return []
    done = [round(float(r["metric"]), 12) for r in trials
            if not r.get("diverged") and r.get("metric") is not None]
    tied = (f" and all {len(done)} short runs that finished scored the same validation value"
            if len(done) > 1 and len(set(done)) == 1 else "")
    return [f"The final run's training loss fell by only {100 * max(fall, 0.0):.1f}% over its "
            f"{full} steps{tied}: the model barely trains at the LRs tried, as an already "
            "trained one (fine-tuning) or one that cannot train does. If it is not trained "
            "already, check the model before the LR: a deep net without normalisation or with "
            "a poor initialisation (vanishing gradients), frozen layers, labels that do not "
            "match the inputs."]


def _explain_lr_too_low(final: dict, halving: dict, task: Any, name: str, fmt: Any,
                        band: Sequence[float] | None = None) -> list[str]:
    """The monitor's ``lr_too_low`` on the final run, weighed against the confirmation runs.

    The monitor reads the training loss alone, early in the run (still falling steadily: raise
    the LR about 10x); the confirmation runs scored higher LRs of the same schedule on
    validation. Where one of them scored worse than the winner, the two disagree and the
    sentence says which evidence tune followed; where none was tried above, the range test's
    ``band`` says whether 10x lies past the LRs at which its loss still fell; else the flag is
    worth a check. Seen on 7 of 36 built-in final runs at the LR tune chose (4 of them
    one-cycle runs flagged while the schedule itself was raising the LR)."""
    if (not any(f.get("kind") == "lr_too_low" for f in final.get("findings") or ())
            or final.get("diverged_attempt") or halving.get("skipped")):
        return []
    w = halving["winner"]
    lr = float(final["lr"])
    low = next(f for f in final["findings"] if f.get("kind") == "lr_too_low")
    stuck = low.get("rule") == "not_fallen"
    reading = ("the training loss not falling significantly early in the run" if stuck else
               "the training loss still falling steadily early in the run")
    length = ("A loss still falling at a fifth of the run is often the run's length rather "
              "than a low LR." if not stuck else
              "A loss that has not fallen can also be an LR high enough to have broken the "
              "model early.")
    if halving.get("rescaled"):
        return [f"The monitor's lr_too_low ({reading}) is what the lower LR chosen above does on "
                f"purpose: at the short runs' {w.lr:.3g} the full run would overfit."]
    rung1 = [r for r in halving["trials"] if r["rung"] == 1 and r["family"] == w.family
             and not r.get("no_warmup")]
    won = [r for r in rung1 if r.get("kept")]
    above = sorted((r for r in rung1 if float(r["lr"]) > 1.01 * lr), key=lambda r: r["lr"])
    worse = [r for r in above if won and (r["diverged"] or _rank(task, r) > _rank(task, won[0]))]
    if worse:
        r = worse[0]
        seen = fmt(None if r["diverged"] else r["metric"])
        return [f"The monitor flagged lr_too_low ({reading}), but the short run at "
                f"{float(r['lr']):.3g} ({float(r['lr']) / lr:.2g}x) scored validation {name} "
                f"{seen} against {fmt(won[0]['metric'])} at {lr:.3g}: tune keeps its LR. "
                + length]
    top = max((float(r["lr"]) for r in rung1), default=lr)
    if band and 10 * lr > float(band[1]):
        return [f"The monitor flagged lr_too_low ({reading}), but 10x, "
                f"{10 * lr:.3g}, lies above the range test's band ({float(band[0]):.3g} to "
                f"{float(band[1]):.3g}), past the LRs at which its loss still fell, and no short "
                f"run tried above {top:.3g}: tune keeps its LR. " + length]
    return [f"The monitor flagged lr_too_low ({reading}), and no short run tried above "
            f"{top:.3g}: worth a check with `lrkit search` or a run at a higher LR."
            + (f" {length}" if stuck else "")]


#: a final run whose best validation step lies in this first share of the run overfit early
#: enough for its step ratio to name a better LR (held out, `results/heldout-random.md`,
#: fourteenth round: at 1/3 the grid near ``lr x step / steps`` beat the run on all 8 log-loss
#: runs that qualified, at 1/2 on 8 of 10; on accuracy and MSE runs it was a wash, 1 better,
#: 2 worse and 4 alike of 7)
EARLY_OVERFIT = 1 / 3


def run_length_lr(lr: float, kept: Mapping[str, Any], steps: int,
                  cuts: Sequence[Mapping[str, Any]] = ()) -> float | None:
    """The LR for the full run length when the final run overfit early: ``lr x step / steps``
    for a kept best-validation ``step`` in the first :data:`EARLY_OVERFIT` of the run, else
    ``None`` (also for a checkpoint from before a divergence, or from a run's jitter). Where
    the run's LR was cut (``cuts``: its ``lr_cuts``, each a ``step`` and the ``scale`` from
    the update after it on) before ``step``, the updates after a cut count at its scale.

    In the small-LR regime a run's state depends on ``lr x t`` (gradient-flow time), so a full
    run at this LR ends about where the final run peaked, by the slower path that generalises
    better at equal ``lr x t``. The plain step ratio, not the schedule's integrated LR: on the 8
    held-out log-loss runs that qualified, the grid near the step ratio's LR beat tune's on all
    8, near the integrated LR's on 7 (a cosine run: +49% -> +172%); over all 15 annealed and
    constant runs that qualified neither was the better one consistently
    (``benchmarks/early_overfit.py analyze``)."""
    step = int(kept.get("step") or 0)
    if (kept.get("diverged") or not kept.get("overfitting") or step <= 0
            or step > EARLY_OVERFIT * steps):
        return None
    done, at, scale = 0.0, 0, 1.0  # updates at full LR equivalent, up to update `at`
    for c in sorted(cuts, key=lambda c: c["step"]):
        upto = min(step, int(c["step"]) + 1)
        if upto > at:
            done, at = done + (upto - at) * scale, upto
        scale = float(c["scale"])
    return lr * (done + (step - at) * scale) / steps


def _explain_final_run(final: dict, task: Any, task_ref: str | None, plan: _Plan, name: str,
                       fmt: Any, full: int) -> list[str]:
    """The explanation's sentences on the final run's kept model: a best-validation
    checkpoint (overfitting, jitter, or from before a divergence), and a retry. ``name`` is
    the split and metric the final run is scored by ("test accuracy")."""
    parts: list[str] = []
    kept = final.get("best_val_checkpoint")
    if kept:
        scores = (f"best-validation checkpoint (step {kept['step']} of {full}): {name} "
                  f"{fmt(kept['test'])}, against {fmt(kept['test_at_end'])} at the end of the "
                  "run.")
        if kept.get("from_first_attempt"):
            first = final["diverged_attempt"]
            parts.append(f"The first full run, at {first['lr']:.3g}, diverged at step "
                         f"{first['steps_done']}; the budget left paid for a "
                         f"{first['retry_steps']}-step run {RETRY_FACTOR:g}x lower, at "
                         f"{final['lr']:.3g}, which validated worse than the first run's "
                         f"best-validation checkpoint (step {kept['step']}, {name} "
                         f"{fmt(kept['test'])}), so that checkpoint is the model kept. Run tune "
                         "with a larger budget for a full run at the lower LR.")
        elif kept.get("diverged"):
            why = ("diverged again" if final.get("diverged_attempt") else
                   "diverged and the budget left could not pay for another run")
            parts.append(f"The final run {why} (at step {final['steps_done']}), so the model "
                         f"kept is its {scores} Run tune with a larger budget, or train at a "
                         f"lower LR (about {final['lr'] / RETRY_FACTOR:.3g}, the monitor's "
                         "advice for divergence).")
        elif kept.get("overfitting", True):
            parts.append(f"As the monitor advises for overfitting, the model kept is the final "
                         f"run's {scores}")
            # overfitting beyond the val metric's noise: the decision itself is in question
            parts.append(_explain_overfitting(kept["step"], task, task_ref, plan,
                                              kept.get("lr_for_run_length")))
        else:
            parts.append("The run's validation metric ended worse than its best evaluation by "
                         "more than twice its own noise, a jitter the monitor does not read as "
                         f"overfitting; the model kept is the final run's {scores}")
    retry = final.get("diverged_attempt")
    if retry and not (kept and kept.get("from_first_attempt")):
        short = retry.get("retry_steps", full)
        again = (f", and diverged again at step {final['steps_done']}" if final.get("diverged")
                 else "")
        parts.append(f"(The first full run, at {retry['lr']:.3g}, diverged at step "
                     f"{retry['steps_done']}; as the monitor advises, it ran once more "
                     f"{RETRY_FACTOR:g}x lower, at {final['lr']:.3g}, within the budget"
                     + (f": {short} of the {full} steps, what the budget had left" if short < full
                        else "") + f"{again}.)")
    if final.get("diverged") and not kept:
        parts.append("Warning: the final run diverged; lower the LR or check the task.")
    return parts


def _explain_overfitting(best: int, task: Any, task_ref: str | None, plan: _Plan,
                         lower_lr: float | None = None) -> str:
    """What the final run's overfitting (its end worse than its best validation step ``best``
    beyond noise: the checkpoint was kept) says about the decision, and what would do better:
    the short runs end before it, so they cannot rank LRs by it; full-length runs can. Measured
    (``benchmarks/results/tune.md``): ``lrkit.search``'s auto method with a range test and 3
    full runs is within 1% on the generalisation-limited tasks where tune is not (digits with
    noisy labels, 40% / 20% flipped: tune +3.8% / +4.9%, search +0.6% / +0.4%)."""
    from . import tasks
    from .search._core import range_test_steps

    full = task.recipe.steps
    steps = range_test_steps(task) + 3 * full
    short = plan.rung1 or plan.rung0
    why = ""
    if short and best > short:
        why = (f", after the short runs' {short} steps ended, so they could not rank the LRs "
               "by it")
    how = f"`lrkit.search(task, budget={steps})`"
    # the command only for a task the CLI can load by that name (a from_torch task's version
    # is "user-...": its name is only a label)
    user = str(getattr(task, "version", "")).startswith("user-")
    if task_ref and not user and (":" in task_ref or task_ref in tasks.names()):
        how = f"`lrkit search --task {task_ref} --budget {steps}` or {how}"
    lower = "may lie lower"
    if lower_lr is not None:  # run_length_lr's
        lower = (f"is likely lower, about {lower_lr:.3g} (the LR times {best}/{full}: a "
                 f"full run there ends about where this one peaked, by the slower path)")
    return (f"The final run overfit from step {best} of {full}{why}: the best LR for the full "
            f"run {lower}. Full-length runs would check (a range test and 3 full runs, "
            f"{steps} steps: {how}).")


def _explain_warmup(check: dict | None, name: str, fmt: Any, full: int) -> list[str]:
    if not check:
        return []
    ours = f"the recipe's warmup (the first {check['recipe_warmup_steps']} of {full} steps)"
    if check.get("skipped"):
        return [f"Whether {ours} pays was not checked ({check['skipped']}): the final run "
                "keeps it."]
    mine = fmt(check["winner_metric"])
    theirs = fmt(None if check["diverged"] else check["metric"])
    if check["dropped"]:
        return [f"The same run without {ours} scored validation {name} {theirs} against "
                f"{mine} with it, so the final run has no warmup."]
    return [f"The same run without {ours} scored validation {name} {theirs} against {mine} "
            "with it, so the final run keeps it."]


def tune(
    task: Any,
    *,
    budget: float | None = None,
    schedules: Sequence[str] = DEFAULT_SCHEDULES,
    storage: str | None = None,
    out: str | os.PathLike | None = None,
    seed: int = 0,
    progress: bool = True,
) -> TuneResult:
    """Pick the learning rate and the schedule for ``task``, train it, and write a report.

    Args:
        task: a :class:`lrkit.tasks.Task`, a built-in task name or ``"package.module:function"``
            (a user's own PyTorch set-up: :func:`lrkit.tasks.from_torch`).
        budget: total cost in full runs of the task (range test + confirmations + the final
            run), default 2.0; it must pay for the final run and a range test of at least
            :data:`MIN_RANGE_ITERS` steps. For a run so short that 2.0 cannot (under 30 steps),
            the default becomes the least budget that can, and the explanation says so.
            Longer short runs pay on slow-starting models: on 60 held-out small conv nets,
            within 5% of a full grid's best on 36 at 2.0 and 46 at 3.0 (MLPs: no gain).
        schedules: the schedule families to choose from (:data:`lrkit.schedules.FAMILIES`).
        storage: an Optuna storage URL for the confirmation trials (``postgresql://...`` to
            share them with other ``lrkit tune`` workers and with ``lrkit search`` workers
            pointed at the study, whose command is printed); default: a resumed folder's own
            storage (its meta.json's; another one is refused), else an embedded SQLite study
            in the run folder.
        out: the run folder; default ``./lrkit-runs/<task>-<timestamp>/``. A folder that holds
            an earlier, unfinished (or finished) tune of the same task and settings is resumed.
        seed: the seed of every run.
        progress: show live progress (a bar per stage, a table of the candidates).

    Returns:
        :class:`TuneResult` (also in ``<out>/result.json``).

    Raises:
        ValueError: a bad argument, or a resumed folder made with other settings.
    """
    from . import tasks as _tasks
    from .tasks import Task
    from .train import _rng_state

    rng = _rng_state()  # the caller's global RNGs (every run seeds them): put back at the end
    task_ref = task if isinstance(task, str) else None
    if task_ref is not None:
        task = _tasks.get(task_ref)
    elif not isinstance(task, Task):
        raise _tasks.not_a_task("task", task)
    made = out is None  # (made here, to name it in the Ctrl-C hint)
    out = out if out is not None else _default_out(task.name)
    try:
        return _tune(task, task_ref or task.name, budget=budget, schedules=schedules,
                     storage=storage, out=out, seed=seed, progress=progress, made_out=made)
    except KeyboardInterrupt:  # (a notebook's interrupt: say where the finished stages are)
        if Path(out).is_dir():
            print(f"\ninterrupted: finished stages are kept in {out}; continue with "
                  f"lrkit.tune(task, out={str(out)!r})", file=sys.stderr)
        raise
    finally:  # the user's model as it was given (the trained weights are in res.weights)
        put_back(task, seed, rng)


#: meta.json's settings that a resumed run must share with the call that resumes it
_RESUME_KEYS = ("task_key", "budget", "schedules", "seed", "full_run_steps", "storage")


def _shown(key: str, value: Any) -> str:
    """A setting as an error message shows it (a storage URL with its password masked)."""
    if key == "storage" and isinstance(value, str):
        from .search._storage import mask_url

        return repr(mask_url(value))
    return repr(value)


def _check_same_settings(old: Mapping[str, Any], meta: Mapping[str, Any], path: Path) -> None:
    """Refuse to resume the run in ``path`` (its meta.json: ``old``) with other settings."""
    diff = [k for k in _RESUME_KEYS if old.get(k) != meta[k]]
    if diff:
        raise ValueError(f"out={str(path)!r} holds a tune with other settings ("
                         + ", ".join(f"{k}: {_shown(k, old.get(k))} != {_shown(k, meta[k])}"
                                     for k in diff)
                         + "): pass a new folder")


def _drop_unstarted(path: Path) -> None:
    """Remove a run folder this call made when it failed before any stage finished (a bad
    ``--storage``, a bug in the user's task): it held only ``meta.json`` (and an empty local
    study), which nothing can resume usefully. Not on Ctrl-C: its hint names the folder."""
    import shutil

    if not any(path / _FILES[k] == p for p in path.iterdir() for k in ("range", "result")):
        shutil.rmtree(path, ignore_errors=True)


def _default_budget(full: int) -> tuple[float, str | None]:
    """The default budget for a ``full``-step task, and why it was raised (None when it was
    not): a very short run's shortest range test costs more than :data:`DEFAULT_BUDGET` pays."""
    least = _min_budget(full)
    if DEFAULT_BUDGET >= least:
        return DEFAULT_BUDGET, None
    return least, (f"The default budget of {DEFAULT_BUDGET:g} full runs "
                   f"({math.floor(DEFAULT_BUDGET * full)} steps) cannot pay for the shortest "
                   f"range test ({MIN_RANGE_ITERS} steps) and the {full}-step final run, so this "
                   f"run's budget is {least:g} full runs.")


def _resumed_raise(old: Mapping[str, Any], full: int, budget: float,
                   by_default: bool) -> str | None:
    """The raised-default sentence of the run a resumed folder's meta.json (``old``) started:
    a resumed run passes the recorded budget on, and says what the uninterrupted run said (a
    folder made before meta.json recorded it: whether this call's budget is the default)."""
    if not old.get("budget_default", by_default):
        return None
    default, raised = _default_budget(full)
    return raised if default == budget else None


def _checked_settings(task: Any, budget: float | None, schedules: Sequence[str], seed: int,
                      storage: str | None, progress: bool
                      ) -> tuple[float, str | None, Sequence[str], int]:
    """:func:`tune`'s settings checked before any folder or run: ``(budget, why the default
    budget was raised or None, the schedule families, seed)``."""
    from .schedules import check_families

    full = task.recipe.steps
    raised = None  # why the default budget was raised, said live and in the explanation
    if budget is None:
        budget, raised = _default_budget(full)
    else:
        budget = check_finite("budget", budget)
        if budget <= 1.0:
            raise ValueError(f"budget must be > 1 (full runs, the final run included), got "
                             f"{budget!r}")
        least = _min_budget(full)
        if budget < least:
            raise ValueError(f"budget={budget!r} gives {math.floor(budget * full)} steps for a "
                             f"{full}-step task: the final run takes {full} and the range test "
                             f"at least {MIN_RANGE_ITERS}; pass budget >= {least:g}")
    families = check_families("schedules", schedules)
    for f in families:  # the recipe's warmup fits every family's shape (refused before any run)
        try:
            _schedule(task, f, 1.0, full)
        except ValueError as e:
            raise ValueError(f"schedules: {f!r} cannot take the recipe's warmup "
                             f"({task.recipe.warmup_steps} of {full} steps): {e}; drop {f!r} "
                             "from schedules or shorten the warmup") from None
    seed = check_int("seed", seed, minimum=0)
    if storage is not None and not isinstance(storage, str):
        raise TypeError(f"storage must be a URL string or None, got {type(storage).__name__}")
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be a bool, got {progress!r}")
    return budget, raised, families, seed


def _tune(task: Any, task_ref: str, *, budget: float | None, schedules: Sequence[str],
          storage: str | None, out: str | os.PathLike, seed: int,
          progress: bool, made_out: bool = False) -> TuneResult:
    """:func:`tune` after its task is resolved and its folder named (``made_out``: the caller
    made ``out`` for this run with :func:`_default_out`, so a failed start removes it as a
    folder made here)."""
    full = task.recipe.steps
    by_default = budget is None
    try:
        budget, raised, families, seed = _checked_settings(task, budget, schedules, seed,
                                                           storage, progress)
    except Exception:
        if made_out:  # the caller's folder for this run: nothing was started in it
            _drop_unstarted(Path(out))
        raise
    if storage is not None:  # a relative SQLite file, kept in meta.json, is this folder's
        from .search._storage import absolute_url

        storage = absolute_url(storage)
    path = Path(out)
    new_folder = made_out or not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # before any step is spent: a run whose stages cannot be saved
        raise ValueError(f"out: cannot make the run folder {str(path)!r} "
                         f"({e.strerror or type(e).__name__}: {e.filename or path})") from None
    folder = _Folder(path)
    try:
        folder.hold()
    except OSError as e:  # a folder that exists but cannot be written
        raise ValueError(f"out: cannot write to the run folder {str(path)!r} "
                         f"({e.strerror or type(e).__name__}: {e.filename or path})") from None
    try:
        meta = {"task": task.name, "task_ref": task_ref, "task_key": task.key,
                "budget": budget, "schedules": list(families), "seed": seed,
                "full_run_steps": task.recipe.steps, "storage": storage,
                "budget_default": by_default}
        old = folder.load("meta")
        if old is not None:
            if storage is None:  # the run's own study (a shared one: its helpers wait on it)
                storage = meta["storage"] = old.get("storage")
            _check_same_settings(old, meta, path)
            raised = _resumed_raise(old, full, budget, by_default)
        else:
            meta["started"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            folder.save("meta", meta)
        show = _Display(progress)
        done = folder.load("result")
        if done is not None:
            done = _rebased(done, path)
        if _finished(done):
            show.say(f"lrkit tune {task.name}: {path} holds a finished run")
            return TuneResult.from_dict(done)
        show.say(f"lrkit tune {task.name}: run folder {path}")
        if raised is not None:
            show.say(f"      {raised}")

        # the storage first: an unreachable server or a mistyped URL is said before the range
        # test's minutes, not after them
        try:
            study = _open_study(storage, folder, task, seed)
            rt, st_range = _stage_range_test(task, folder, _range_iters(full, budget), seed, show)
        except Exception:
            if new_folder:
                _drop_unstarted(path)
            raise
        if study is not None:
            helper = _helper_command(task, task_ref, study.url, study.name)
            line = (f"      study {study.name!r}: to help with its confirmation runs, run: "
                    f"{helper}")
            if show.enabled:
                show.say(line)
            elif storage is not None:  # a shared storage is meant for helpers: say how, always
                print(line.strip(), file=sys.stderr)
        halving, st_halving = _stage_halving(task, folder, rt, st_range, families, budget, seed,
                                             study, show)
        halving["rungs_kept"] = [r["family"] for r in halving["trials"]
                                 if r["rung"] == 0 and r.get("kept")]
        w: _Arm = halving["winner"]
        spent = st_range.cost_steps + st_halving.cost_steps
        family = _final_family(w.family, families, halving)
        final, st_final = _stage_final(task, folder, family, halving["lr"], seed, show,
                                       allowance=halving["plan"].total_steps - spent,
                                       no_warmup=halving.get("no_warmup", False))
        arms = 0 if halving.get("skipped") else 3 * len(halving["centres"])
        stages = (st_range, Stage("candidates", 0, 0.0, {"arms": arms,
                                                         "centres": halving["centres"]}),
                  st_halving, st_final)
        cost = sum(s.cost_steps for s in stages)
        explanation = _explain(task, rt, halving, final, stages, full, task_ref)
        if raised is not None:
            explanation = f"{raised} {explanation}"
        lr_range = tuple(halving.get("lr_range") or (None, None))
        if final.get("diverged_attempt"):  # the full run bounds it from above
            # (the retry's own LR when it diverged too and nothing before the blow-up is kept)
            failed = final.get("diverged") and not final.get("best_val_checkpoint")
            lr_range = (None, float(final["lr"] if failed else final["diverged_attempt"]["lr"]))
            uncertainty = range_sentence(lr_range, diverged=lr_range[1])
        elif halving.get("skipped"):
            uncertainty = ("no confirmation runs; the range test's band: "
                           + (f"{lr_range[0]:.3g} .. {lr_range[1]:.3g}" if lr_range[0] is not None
                              else "none"))
        else:
            uncertainty = range_sentence(lr_range, halving.get("lr_alike"))
        show.say("[5/5] report")
        t0 = time.perf_counter()
        safe = _safe_lr(task, seed, folder)
        from . import html

        report = html.tune_report(
            path, task={"name": task.name, "description": task.description, "metric": task.metric,
                        "higher_is_better": task.higher_is_better, "steps": full,
                        "optimizer": task.recipe.optimizer, "recipe_schedule": task.recipe.schedule,
                        "warmup_steps": task.recipe.warmup_steps, "amp": task.recipe.amp,
                        "test_label": task.test_label},
            range_test=rt.to_dict(), halving={"plan": halving["plan"].to_dict(),
                                              "centres": halving["centres"],
                                              "trials": halving["trials"]},
            final=final, stages=[s.to_dict() for s in stages], safe_lr=safe,
            explanation=explanation, monitor_available=final.get("monitor") is not None,
            uncertainty=uncertainty)
        stages = stages + (Stage("result and report", 0, time.perf_counter() - t0,
                                 {"report": str(report)}),)
        result = TuneResult(
            task=task.name, lr=float(final.get("lr", halving["lr"])), family=family,
            schedule=dict(final["schedule"]),
            metric=_num(final["metric"]), metric_name=task.metric, metric_split=task.test_label,
            higher_is_better=task.higher_is_better, cost_steps=int(cost), full_run_steps=full,
            stages=stages, findings=tuple(final.get("findings") or ()), report=str(report),
            run_dir=str(path), weights=str(folder.file("weights")), explanation=explanation,
            lr_range=lr_range, uncertainty=uncertainty)
        folder.save("result", result.to_dict())
        return result
    finally:
        folder.release()


# ------------------------------------------------------------------------------------- CLI
def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lrkit tune``."""
    parser.add_argument("--task", default=None,
                        help="built-in task name or package.module:function (a user's Task)")
    parser.add_argument("--resume", default=None, metavar="DIR",
                        help="go on from an interrupted run folder")
    parser.add_argument("--budget", type=float, default=None,
                        help="total cost in full runs (default 2.0)")
    parser.add_argument("--schedules", default=None,
                        help="comma-separated schedule families to choose from (default: "
                             + ",".join(DEFAULT_SCHEDULES) + ")")
    parser.add_argument("--storage", default=None,
                        help="Optuna storage URL for the confirmation trials (default: SQLite "
                             "in the run folder; postgresql://... to share); the study name "
                             "and the 'lrkit search' command for helper workers are printed")
    parser.add_argument("--out", default=None, help="run folder (default ./lrkit-runs/...)")
    parser.add_argument("--seed", type=int, default=None, help="seed of every run (default 0)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars or candidate tables")


def _families(value: str) -> list[str]:
    """``--schedules``' comma-separated list."""
    return [s.strip() for s in value.split(",") if s.strip()]


def _cli_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``lrkit tune``'s task, folder and settings: the options (with their defaults), or with
    ``--resume DIR`` those in DIR's meta.json, where an option given with another value than
    the run's is refused (it was dropped: ``--storage`` too, so a run on a shared study went
    on in a new local one while its helpers waited forever)."""
    given = {"budget": args.budget, "seed": args.seed, "storage": args.storage,
             "schedules": None if args.schedules is None else _families(args.schedules)}
    if args.resume is None:
        return {**given, "task_ref": args.task, "out": args.out,
                "seed": 0 if args.seed is None else args.seed,
                "schedules": (list(DEFAULT_SCHEDULES) if given["schedules"] is None
                              else given["schedules"])}
    meta = _Folder(Path(args.resume)).load("meta")
    if meta is None:
        raise ValueError(f"--resume {args.resume!r}: no {_FILES['meta']} there (not a "
                         "lrkit tune run folder)")
    if isinstance(args.storage, str):  # (as the run kept it: a relative file made absolute)
        from .search._storage import absolute_url

        given["storage"] = absolute_url(args.storage)
    for key, value in given.items():
        if value is not None and value != meta.get(key):
            raise ValueError(f"--{key} {_shown(key, value)} with --resume {args.resume!r}: "
                             f"that run was started with {key} {_shown(key, meta.get(key))} "
                             f"and goes on with it; drop --{key}, or start a new run with "
                             "another --out")
    if args.out is not None and Path(args.out).resolve() != Path(args.resume).resolve():
        raise ValueError(f"--out {args.out!r} with --resume {args.resume!r}: a resumed run "
                         "stays in its own folder; drop --out")
    return {**{k: meta.get(k) for k in given}, "task_ref": args.task or meta["task_ref"],
            "out": args.resume}


def cli_main(args: argparse.Namespace) -> int:
    """``lrkit tune --task NAME``: print the decision and the report's path."""
    import sys

    run = _cli_settings(args)
    out, task_ref = run["out"], run["task_ref"]
    if not task_ref:
        raise ValueError("--task is required (a built-in task name or package.module:function)")
    from . import tasks as _tasks

    try:
        task = _tasks.get(task_ref)
    except ValueError as e:
        if args.resume is None or args.task:
            raise
        raise ValueError(f"{e}; the run in {args.resume!r} was started from Python with a Task "
                         "object: pass --task package.module:function that builds it, or call "
                         "lrkit.tune.tune(task, out=DIR)") from None
    made = out is None  # (named here, for the Ctrl-C hint)
    out = out if out is not None else str(_default_out(task.name))
    try:
        res = _tune(task, task_ref, budget=run["budget"], schedules=run["schedules"],
                    storage=run["storage"], out=out, seed=run["seed"],
                    progress=not args.no_progress, made_out=made)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished stages are kept in {out}; continue with "
              f"lrkit tune --resume{'=' if str(out).startswith('-') else ' '}"
              f"{shlex.quote(str(out))}", file=sys.stderr)  # (-x would read as an option)
        return 130
    better = "higher" if res.higher_is_better else "lower"
    if math.isfinite(res.metric):
        print(f"decision: {res.family} schedule, peak lr {res.lr:.3g}")
    else:  # nothing trained without diverging: no LR to recommend (the why says what to do)
        print(f"decision: none; the final run ({res.family} schedule, peak lr {res.lr:.3g}) "
              f"diverged and kept no model")
    if res.uncertainty:
        print(f"  uncertainty: {res.uncertainty}")
    print(f"  schedule spec: {json.dumps(res.schedule)}")
    print(f"  {res.metric_split} {res.metric_name}: {res.metric:.4g} ({better} is better)"
          + ("; no test_loader, so this is the data the LR was chosen on (optimistic)"
             if res.metric_split == "val" else ""))
    shares = ", ".join(f"{s.name} {s.cost_steps / max(res.cost_steps, 1):.0%}"
                       for s in res.stages if s.cost_steps)
    print(f"  cost: {res.cost_steps} steps = {res.cost_runs:.2f} full runs ({shares})")
    final = next((s.outcome for s in res.stages if s.name == "final run"), {})
    if final.get("lr_for_run_length"):
        print(f"  run length: the final run overfit from step "
              f"{final['best_val_checkpoint_step']}; for this run length a peak of about "
              f"{final['lr_for_run_length']:.3g} is likely better (not run: see why)")
    for f in res.findings:
        updated = (f.get("evidence") or {}).get("updated")
        when = f"at step {f.get('step')}" + (f" (updated at step {updated})"
                                              if updated is not None else "")
        print(f"  monitor: {f.get('kind')} {when}: {f.get('action')}")
    print(f"why: {res.explanation}")
    print(f"report: {res.report}")
    return 0


class _CallableModule(types.ModuleType):
    """``lrkit.tune`` is both this module and the function: importing the module sets the
    attribute ``lrkit.tune`` to the module, so the module itself calls :func:`tune`."""

    def __call__(self, *args: Any, **kwargs: Any) -> TuneResult:
        return tune(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
