"""The result of a search: its trials as a table, the best LR and schedule, JSON, a plot."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from .._json import finite_or_none as _clean
from .._json import brief_repr, read_object

__all__ = ["TrialRecord", "SearchResult", "result_from_study"]

@dataclass(frozen=True)
class TrialRecord:
    """One row of :attr:`SearchResult.trials`.

    ``state`` is ``"complete"``, ``"diverged"`` (trained and blew up, scored as the penalty),
    ``"skipped"`` (at or above a known divergence point: not trained, 0 steps), ``"pruned"``,
    ``"failed"`` (e.g. its worker died; see ``retried_as``), ``"running"`` or ``"waiting"``.
    ``metric`` is the held-out metric (the mean over folds with cross-validation; ``None``
    when not measured), ``steps`` the optimizer steps it spent (all folds).
    """

    number: int
    lr: float | None
    schedule: str | None
    metric: float | None
    steps: int
    state: str
    fold_metrics: tuple[float, ...] = ()
    fold_std: float | None = None
    retry_of: int | None = None
    seconds: float | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fold_metrics"] = list(self.fold_metrics)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrialRecord":
        d = dict(d)
        d["fold_metrics"] = tuple(d.get("fold_metrics") or ())
        return cls(**d)


def _fmt(v: float | None, spec: str = ".4g") -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


@dataclass(frozen=True)
class SearchResult:
    """What :func:`lrkit.search` returns.

    ``best_lr``/``best_schedule``/``best_metric`` come from the best completed, non-diverged
    trial (``None`` when there is none); ``trials`` is the table of every trial of the study;
    ``cost_steps`` counts every optimizer step spent: the range test's and all trials' (all
    workers). ``divergence`` maps each schedule family to the lowest LR seen to diverge;
    ``saved`` counts the trials that were not trained because they lay at or above one.
    """

    study_name: str
    storage: str  # masked
    method: str
    metric_name: str
    higher_is_better: bool
    best_lr: float | None
    best_schedule: str | None
    best_metric: float | None
    trials: tuple[TrialRecord, ...]
    cost_steps: int
    budget: int | None
    range_test: dict | None = None
    divergence: dict = field(default_factory=dict)
    saved: int = 0
    notes: tuple[str, ...] = ()

    # ------------------------------------------------------------------ views
    def table(self) -> str:
        """The trials as a Markdown table."""
        lines = ["| # | lr | schedule | metric | ± (folds) | steps | state |",
                 "|---|---|---|---|---|---|---|"]
        for t in self.trials:
            retry = f" (retry of #{t.retry_of})" if t.retry_of is not None else ""
            lines.append(f"| {t.number} | {_fmt(t.lr, '.3g')} | {t.schedule or '—'} | "
                         f"{_fmt(t.metric)} | {_fmt(t.fold_std, '.2g')} | {t.steps} | "
                         f"{t.state}{retry} |")
        return "\n".join(lines)

    def __repr__(self) -> str:  # the best trial and the counts, not every trial (summary())
        return brief_repr("SearchResult", study_name=self.study_name, method=self.method,
                          best_lr=self.best_lr, best_schedule=self.best_schedule,
                          best_metric=self.best_metric, metric_name=self.metric_name,
                          trials=len(self.trials), cost_steps=self.cost_steps)

    def summary(self) -> str:
        """A few lines for people: the best LR and schedule, cost, divergence, notes."""
        done = sum(t.state == "complete" for t in self.trials)
        out = [f"study {self.study_name!r} on {self.storage} ({self.method}): "
               f"{len(self.trials)} trials, {done} completed, {self.saved} skipped above "
               f"a divergence point, {self.cost_steps} optimizer steps"
               + (f" of a {self.budget}-step budget" if self.budget else "")]
        if self.best_lr is not None:
            sched = f" with schedule {self.best_schedule}" if self.best_schedule else ""
            out.append(f"best LR {self.best_lr:.4g}{sched}: {self.metric_name} "
                       f"{self.best_metric:.4g}")
        elif self.divergence and not any(t.state in ("running", "waiting")
                                         for t in self.trials):
            lowest = min(self.divergence.values())
            out.append(f"no trial finished without diverging (the lowest LR tried that "
                       f"diverged: {lowest:.3g}): lower the range's low end, or check the "
                       "model and data at a tiny LR")
        else:
            out.append("no completed trial yet")
        for fam, lr in sorted(self.divergence.items()):
            out.append(f"diverged at LR {lr:.3g}" + (f" ({fam})" if fam else ""))
        out.extend(self.notes)
        return "\n".join(out)

    def plot(self, path: str, *, title: str | None = None) -> str:
        """Metric against LR (log scale): completed trials per schedule, diverged (▲ at the
        top) and pruned (×) trials marked, the best starred, divergence points dashed."""
        from .._figures import new_figure

        fig, ax = new_figure((7, 4.2))
        fams = sorted({t.schedule or "" for t in self.trials if t.lr is not None})
        finite = [t.metric for t in self.trials
                  if t.state == "complete" and t.metric is not None and math.isfinite(t.metric)]
        top, low = (max(finite), min(finite)) if finite else (1.0, 0.0)
        pad = 0.05 * ((top - low) or 1.0)
        mark_y = low - pad if self.higher_is_better else top + pad  # at the "bad" edge
        for fam in fams:
            rows = sorted((t for t in self.trials if (t.schedule or "") == fam
                           and t.state == "complete" and t.metric is not None
                           and math.isfinite(t.metric)), key=lambda t: t.lr)
            if rows:
                ax.errorbar([t.lr for t in rows], [t.metric for t in rows],
                            yerr=[t.fold_std or 0.0 for t in rows], marker="o", ms=4,
                            capsize=2, label=fam or "completed")
        for state, marker, color, label in (("diverged", "^", "tab:red", "diverged"),
                                            ("skipped", "^", "lightcoral",
                                             "skipped (above a divergence point)"),
                                            ("pruned", "x", "grey", "pruned")):
            rows = [t for t in self.trials if t.state == state and t.lr is not None]
            if rows:
                ys = [t.metric if state == "pruned" and t.metric is not None else mark_y
                      for t in rows]
                ax.scatter([t.lr for t in rows], ys, marker=marker, color=color, label=label,
                           zorder=3)
        for fam, lr in self.divergence.items():
            ax.axvline(lr, color="tab:red", ls="--", lw=0.8)
        if self.best_lr is not None and self.best_metric is not None:
            ax.scatter([self.best_lr], [self.best_metric], marker="*", s=160, color="gold",
                       edgecolor="k", zorder=4, label=f"best {self.best_lr:.3g}")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (peak)")
        ax.set_ylabel(self.metric_name + (" (higher is better)" if self.higher_is_better
                                          else " (lower is better)"))
        ax.set_title(title or f"{self.study_name}: {self.method}, {len(self.trials)} trials")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        return path

    # ------------------------------------------------------------------- JSON
    def to_dict(self) -> dict:
        d = asdict(self)
        d["trials"] = [t.to_dict() for t in self.trials]
        d["notes"] = list(self.notes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SearchResult":
        d = dict(d)
        d["trials"] = tuple(TrialRecord.from_dict(t) for t in d["trials"])
        d["notes"] = tuple(d.get("notes") or ())
        return cls(**d)

    def to_json(self, path: str | None = None) -> str:
        """JSON text (also written to ``path`` when given). Non-finite floats become null."""
        text = json.dumps(_clean(self.to_dict()), indent=1)
        if path is not None:
            with open(path, "w") as f:
                f.write(text)
        return text

    @classmethod
    def from_json(cls, text_or_path: str) -> "SearchResult":
        """Read :meth:`to_json`'s text, or a file holding it."""
        return cls.from_dict(read_object(text_or_path, "SearchResult", ("trials", "best_lr")))


def told_diverged(t: Any) -> bool:
    """A trial lrkit told as FAIL because it diverged before any finite value could penalise it
    (an objective's first NaN: ``_core._penalty``), not one that crashed or was interrupted
    (those go back to the queue)."""
    from optuna.trial import TrialState

    return t.state == TrialState.FAIL and bool(t.user_attrs.get("diverged"))


def record_of(t: Any) -> TrialRecord:
    """A :class:`TrialRecord` from an Optuna ``FrozenTrial`` written by lrkit."""
    from optuna.trial import TrialState

    ua = t.user_attrs
    if t.state == TrialState.COMPLETE or told_diverged(t):
        # FAIL + diverged: told without a value (no finite result to penalise it with yet)
        state = "skipped" if ua.get("skipped") else "diverged" if ua.get("diverged") else "complete"
    else:
        state = {TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
                 TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}[t.state]
    metric = ua.get("metric")
    if metric is None and state == "complete":
        metric = t.value
    seconds = None
    if t.datetime_start is not None and t.datetime_complete is not None:
        seconds = (t.datetime_complete - t.datetime_start).total_seconds()
    lr = t.params.get("lr", (t.system_attrs.get("fixed_params") or {}).get("lr"))
    return TrialRecord(number=t.number, lr=lr, schedule=t.params.get("schedule", ua.get("schedule")),
                       metric=metric, steps=int(ua.get("steps", 0)), state=state,
                       fold_metrics=tuple(ua.get("fold_metrics") or ()),
                       fold_std=ua.get("fold_std"),
                       retry_of=t.system_attrs.get("failed_trial", ua.get("retry_of")),
                       seconds=seconds)


def result_from_study(study: Any, storage_name: str, *, notes: Sequence[str] = ()
                      ) -> SearchResult:
    """Build a :class:`SearchResult` from any study lrkit wrote (used by ``search show``)."""
    spec = study.user_attrs.get("lrkit_spec", {})
    higher = bool(spec.get("higher_is_better",
                           study.direction.name == "MAXIMIZE"))
    rows = tuple(record_of(t) for t in study.get_trials(deepcopy=False)
                 if not t.user_attrs.get("lrkit_void"))
    sign = 1.0 if higher else -1.0
    best: TrialRecord | None = None
    for r in rows:
        if r.state == "complete" and r.metric is not None and math.isfinite(r.metric):
            if best is None or sign * r.metric > sign * best.metric:  # type: ignore[operator]
                best = r
    divergence: dict[str, float] = {}
    for r in rows:
        if r.state == "diverged" and r.lr is not None:
            key = r.schedule or ""
            divergence[key] = min(divergence.get(key, math.inf), r.lr)
    rt = study.user_attrs.get("lrkit_range_test")
    cost = sum(r.steps for r in rows) + int(rt["cost_steps"] if rt else 0)
    return SearchResult(
        study_name=study.study_name, storage=storage_name, method=spec.get("method", "?"),
        metric_name=spec.get("metric", "value"), higher_is_better=higher,
        best_lr=best.lr if best else None, best_schedule=best.schedule if best else None,
        best_metric=best.metric if best else None, trials=rows, cost_steps=cost,
        budget=spec.get("budget"), range_test=rt, divergence=divergence,
        saved=sum(r.state == "skipped" for r in rows),
        notes=tuple(spec.get("notes", ())) + tuple(notes))
