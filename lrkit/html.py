"""The autopilot's report: one self-contained HTML file, plus its plots as PNGs beside it.

``tune_report(folder, ...)`` only *draws* what :func:`lrkit.tune` computed ("compute, then draw"):
it takes plain JSON-able data (the run folder's stage files), renders five matplotlib figures
(Agg backend) to PNG files in ``folder`` and embeds the same bytes as base64 ``data:`` URIs in
``report.html``, so the page needs no network and no other file. Every string that comes from the
user or the task (names, descriptions, reasons, findings) is HTML-escaped.

Figures:

1. ``range-test.png``: the range-test curve with its good band, the suggestion, each schedule's
   centre, the chosen peak LR and (when known) the curvature's safe-LR bound.
2. ``candidates.png``: every confirmation run's training loss, per rung, and the halving
   decisions (each arm's validation metric; the arms that went on are filled).
3. ``time.png``: the chosen family's rung-1 runs, val metric against integrated LR, and the
   integrated LR the final run reaches (the time-rescaling evidence; only when the rung-1 runs
   carry val curves).
4. ``schedule.png``: the chosen schedule over the full run (and the safe-LR bound).
5. ``final.png``: the final run's training loss and validation metric, with the monitor's
   findings marked at their steps.
"""

from __future__ import annotations

import base64
import html as _html
import io
import math
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ._figures import new_figure, smooth

__all__ = ["tune_report", "escape", "figure_png", "smooth"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1000px;color:#222;line-height:1.45;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
.decision{background:#f3f8f3;border-left:4px solid #2a7;padding:.6em 1em;margin:1em 0}
.why{background:#f7f7fb;border-left:4px solid #57a;padding:.6em 1em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right} th{background:#f0f0f0}
td.l,th.l{text-align:left} tr.kept td{font-weight:600;background:#eef7ee}
img{max-width:100%;height:auto;border:1px solid #eee} .muted{color:#777}
"""


def escape(value: Any) -> str:
    """``str(value)`` with ``& < > " '`` escaped (every user-provided string goes through it)."""
    return _html.escape(str(value), quote=True)


def mpl_text(value: Any) -> str:
    """``value`` as literal matplotlib text: every ``$`` escaped (``\\$``), so that a user's
    task, metric or schedule name never parses as mathtext (``"loss $\\frac{a}$"`` crashed the
    report after all the training; ``"cost $US$"`` drew "US" in italics)."""
    return str(value).replace("$", r"\$")


def prose(text: str) -> str:
    """``text`` escaped, with its `backquoted` spans (commands in the explanation) set as code.
    The spans are found after escaping, so nothing in them can open a tag."""
    return re.sub(r"`([^`<>]+)`", r"<code>\1</code>", escape(text))


def _rule(finding: Mapping[str, Any]) -> str:
    """The monitor's reading that raised ``finding`` (``Finding.rule``), as a muted suffix for
    its kind; ``""`` for a finding without one."""
    rule = finding.get("rule")
    return f" <span class=muted>({escape(rule)})</span>" if rule else ""


def _num(x: Any) -> float:
    if x is None:
        return float("nan")
    return float(x.replace("Infinity", "inf")) if isinstance(x, str) else float(x)


def figure_png(fig: Any, path: Path) -> bytes:
    """Save ``fig`` as PNG to ``path`` and return the bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    data = buf.getvalue()
    Path(path).write_bytes(data)
    return data


# ------------------------------------------------------------------------------------ figures
def _fig_range_test(rt: Mapping[str, Any], centres: Mapping[str, float], chosen: float,
                    family: str, safe: float | None) -> Any:
    from .finder import RangeTestResult

    res = RangeTestResult.from_dict(rt)
    fig, ax = new_figure((8, 4.4))
    res.plot(ax=ax, peers=False)
    ylo, yhi = ax.get_ylim()
    for i, (f, c) in enumerate(sorted(centres.items(), key=lambda kv: kv[1])):
        ax.plot([c], [ylo + 0.04 * (yhi - ylo)], marker="^", ls="", color=f"C{(i + 4) % 10}",
                label=f"centre {mpl_text(f)}: {c:.3g}")
    ax.axvline(chosen, color="k", lw=2, ls="--",
               label=f"chosen peak ({mpl_text(family)}): {chosen:.3g}")
    if safe is not None and math.isfinite(safe):
        ax.axvline(safe, color="C1", lw=1.5, ls=":", label=f"safe-LR bound: {safe:.3g}")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def _arm_label(t: Mapping[str, Any]) -> str:
    """A confirmation run's schedule; the warmup check's run says it has no warmup."""
    if not t.get("no_warmup"):
        return str(t["family"])
    return f"{t['family']}, no warmup" + (" (chosen)" if t.get("warmup_chosen") else "")


def _fig_candidates(trials: Sequence[Mapping[str, Any]], metric: str, higher: bool) -> Any:
    metric = mpl_text(metric)
    if not trials:
        fig, ax = new_figure((10, 2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no confirmation runs: the budget left too few steps for them\n"
                "(the final run takes the range test's LR)", ha="center", va="center")
        return fig
    rungs = sorted({int(t["rung"]) for t in trials})
    fig, axes = new_figure((10, 7), 2, max(1, len(rungs)), squeeze=False)
    families = sorted({t["family"] for t in trials})
    colour = {f: f"C{i % 10}" for i, f in enumerate(families)}
    for j, rung in enumerate(rungs):
        ax = axes[0][j]
        ts = [t for t in trials if int(t["rung"]) == rung]
        for t in ts:
            y = smooth(t["losses"], max(1, len(t["losses"]) // 10))
            ls = "-" if t.get("kept") else "--"
            ax.plot(np.arange(1, len(y) + 1), y, color=colour[t["family"]], ls=ls,
                    lw=2 if t.get("kept") else 1,
                    label=f"{mpl_text(_arm_label(t))} {t['lr']:.3g}")
        ax.set_title(f"rung {rung}: training loss ({ts[0]['steps']} steps)" if ts else "")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (smoothed)")
        finite = [v for t in ts for v in t["losses"] if math.isfinite(_num(v))]
        if finite:
            lo, hi = float(np.percentile(finite, 1)), float(np.percentile(finite, 99))
            ax.set_ylim(lo - 0.05 * (hi - lo + 1e-12), hi + 0.05 * (hi - lo + 1e-12))
        ax.legend(fontsize=6, ncol=2)
        bx = axes[1][j]
        labels, vals, kept, cols = [], [], [], []
        for t in ts:
            labels.append(f"{mpl_text(_arm_label(t))}\n{t['lr']:.3g}".replace(", ", "\n"))
            vals.append(np.nan if t["diverged"] else _num(t["metric"]))
            kept.append(bool(t.get("kept") or t.get("warmup_chosen")))
            cols.append(colour[t["family"]])
        x = np.arange(len(ts))
        fin = [v for v in vals if math.isfinite(v)]
        base = (min(fin) if higher else max(fin)) if fin else 0.0
        span = (max(fin) - min(fin)) if len(fin) > 1 else (abs(base) * 0.05 or 1.0)
        floor = (min(fin) - 0.3 * span) if fin else 0.0
        heights = [(v - floor) if math.isfinite(v) else 0.0 for v in vals]
        bars = bx.bar(x, heights, bottom=floor, color=[c if k else "white" for c, k in
                                                       zip(cols, kept)],
                      edgecolor=cols, hatch=None, lw=1.5)
        for b, v, k in zip(bars, vals, kept):
            txt = "diverged" if not math.isfinite(v) else f"{v:.4g}"
            bx.text(b.get_x() + b.get_width() / 2, (floor if not math.isfinite(v) else v),
                    txt + (" *" if k else ""), ha="center", va="bottom", fontsize=7)
        bx.set_xticks(x)
        bx.set_xticklabels(labels, fontsize=7)
        bx.set_ylabel(f"val {metric} ({'higher' if higher else 'lower'} is better)")
        bx.set_title(f"rung {rung}: halving decision (filled, * = went on / chosen)", fontsize=9)
    fig.tight_layout()
    return fig


def _fig_time(trials: Sequence[Mapping[str, Any]], final: Mapping[str, Any], metric: str,
              full: int) -> Any:
    """The chosen family's rung-1 runs: val metric against integrated LR, and where the final
    run's LR takes a full run (``lrkit.finder.plot_confirm``); ``None`` without val curves."""
    from .finder import plot_confirm

    chosen = [t for t in trials if int(t["rung"]) == 1 and t.get("kept")]
    if not chosen:
        return None
    runs = [t for t in trials if int(t["rung"]) == 1 and t["family"] == chosen[0]["family"]
            and t.get("val_curve") and not t.get("no_warmup")]
    if not runs:
        return None
    metric = mpl_text(metric)
    fig, ax = new_figure((7, 4.2))
    plot_confirm({"runs": runs, "short_run_winner": float(chosen[0]["lr"]),
                  "winner": float(final["lr"]), "full_run_steps": full, "metric": metric}, ax)
    ax.set_title(f"rung 1 ({mpl_text(chosen[0]['family'])}): val {metric} against integrated LR",
                 fontsize=9)
    fig.tight_layout()
    return fig


def _fig_schedule(final: Mapping[str, Any], safe: float | None) -> Any:
    fig, ax = new_figure((8, 3.2))
    lrs = [_num(v) for v in final["lrs"]]
    ax.plot(np.arange(len(lrs)), lrs, color="C3", lw=2,
            label=f"{mpl_text(final['family'])} (peak {final['lr']:.3g})")
    top = max([v for v in lrs if math.isfinite(v)] or [1.0])
    for i, c in enumerate(final.get("lr_cuts") or []):
        ax.axvline(float(c["step"]), color="C3", ls="--", lw=1.0,
                   label=("LR lowered on the monitor's finding" if i == 0 else None))
        ax.annotate(f"x{_num(c['scale']):.2g} ({c['kind']})", (float(c["step"]), top),
                    fontsize=7, color="C3", rotation=90, va="top", ha="right")
    if safe is not None and math.isfinite(safe):
        if safe <= 3 * top:
            ax.axhline(safe, color="C1", ls=":", label=f"safe-LR bound {safe:.3g}")
        else:
            ax.plot([], [], color="C1", ls=":",
                    label=f"safe-LR bound {safe:.3g} (off scale: {safe / top:.3g}x the peak)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.set_title("the chosen schedule over the full run")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _fig_final(final: Mapping[str, Any], metric: str, findings: Sequence[Mapping[str, Any]]
               ) -> Any:
    metric = mpl_text(metric)
    fig, ax = new_figure((8, 4.2))
    losses = [_num(v) for v in final["losses"]]
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, color="0.8", lw=0.7, label="training loss")
    ax.plot(steps, smooth(losses, max(1, len(losses) // 30)), color="C0", lw=2,
            label="training loss (smoothed)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    fin = [v for v in losses if math.isfinite(v)]
    if fin:
        lo, hi = float(np.percentile(fin, 0.5)), float(np.percentile(fin, 99.5))
        ax.set_ylim(lo - 0.05 * (hi - lo + 1e-12), hi + 0.1 * (hi - lo + 1e-12))
    handles, labels = ax.get_legend_handles_labels()
    if final.get("val"):
        a2 = ax.twinx()
        vs = [v[0] for v in final["val"]]
        vm = [_num(v[1]) for v in final["val"]]
        (h,) = a2.plot(vs, vm, color="C2", marker="o", ms=3, lw=1.5, label=f"val {metric}")
        a2.set_ylabel(f"val {metric}")
        handles.append(h)
        labels.append(f"val {metric}")
    for i, f in enumerate(findings):
        step = f.get("step")
        if step is None:
            continue
        h = ax.axvline(float(step), color="C3", ls="--", lw=1.2)
        ax.annotate(str(f.get("kind")), (float(step), ax.get_ylim()[1]), fontsize=7,
                    color="C3", rotation=90, va="top", ha="right")
        if i == 0:
            handles.append(h)
            labels.append("monitor finding")
    ax.legend(handles, labels, fontsize=8, loc="upper right")
    ax.set_title(f"final run: {mpl_text(final['family'])} at {final['lr']:.3g}")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------- the page
def _img(data: bytes, alt: str) -> str:
    b64 = base64.b64encode(data).decode("ascii")
    return f'<p><img alt="{escape(alt)}" src="data:image/png;base64,{b64}"></p>'


def _fmt(v: Any, digits: int = 4) -> str:
    x = _num(v)
    return "diverged" if not math.isfinite(x) else f"{x:.{digits}g}"


def tune_report(
    folder: str | Path,
    *,
    task: Mapping[str, Any],
    range_test: Mapping[str, Any],
    halving: Mapping[str, Any],
    final: Mapping[str, Any],
    stages: Sequence[Mapping[str, Any]],
    safe_lr: Mapping[str, Any] | None,
    explanation: str,
    monitor_available: bool,
    uncertainty: str = "",
) -> Path:
    """Write ``report.html`` and its PNGs to ``folder``; return the report's path.

    Args:
        folder: the run folder (created if missing).
        task: ``name, description, metric, higher_is_better, steps, optimizer,
            recipe_schedule, warmup_steps`` (and ``amp`` when the runs trained under it).
        range_test: :meth:`lrkit.finder.RangeTestResult.to_dict`.
        halving: ``plan``, ``centres`` (family -> LR) and ``trials`` (each: rung, family, lr,
            steps, metric, diverged, kept, losses).
        final: the final run (family, lr, schedule, metric, losses, lrs, val, findings).
        stages: each stage's ``name, cost_steps, wall_time``.
        safe_lr: the curvature bound (``{"lr": ...}``, with its cost), ``{"error": ...}``,
            ``{"skipped": why}``, or ``None`` (not computed).
        explanation: the plain-words paragraph.
        monitor_available: whether the monitor watched the final run.
        uncertainty: the chosen LR's uncertainty in words (:func:`lrkit.finder.range_sentence`).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    metric, higher = str(task["metric"]), bool(task["higher_is_better"])
    safe = None
    if safe_lr and "lr" in safe_lr:
        safe = _num(safe_lr["lr"])
    findings = list(final.get("findings") or [])
    figs = [
        ("range-test.png", "range test curve with band and chosen LR",
         _fig_range_test(range_test, halving["centres"], float(final["lr"]), final["family"],
                         safe)),
        ("candidates.png", "confirmation runs and halving decisions",
         _fig_candidates(halving["trials"], metric, higher)),
        ("schedule.png", "the chosen schedule", _fig_schedule(final, safe)),
        ("final.png", "final training curves with monitor findings",
         _fig_final(final, metric, findings)),
    ]
    time_fig = _fig_time(halving["trials"], final, metric, int(task["steps"]))
    if time_fig is not None:
        figs.insert(2, ("time.png", "rung-1 runs against their integrated LR", time_fig))
    imgs = {name: (alt, figure_png(fig, folder / name)) for name, alt, fig in figs}

    total = sum(int(s["cost_steps"]) for s in stages) or 1
    full = int(task["steps"])
    rows_stages = "".join(
        f"<tr><td class=l>{escape(s['name'])}</td><td>{int(s['cost_steps'])}</td>"
        f"<td>{int(s['cost_steps']) / full:.2f}</td><td>{int(s['cost_steps']) / total:.0%}</td>"
        f"<td>{float(s['wall_time']):.1f}</td></tr>" for s in stages)
    chosen = [t for t in halving["trials"] if t.get("kept") and int(t["rung"]) == 1]
    final_lr = final.get("lr")
    rescaled_html = ""
    if chosen and final_lr is not None and not math.isclose(float(final_lr),
                                                             float(chosen[0]["lr"]),
                                                             rel_tol=1e-9):
        rescaled_html = (
            f"<p>The final run does not use the chosen short run's lr "
            f"{float(chosen[0]['lr']):.3g} but {float(final_lr):.3g}: that run would overfit "
            "over the full horizon, so its LR is time-rescaled to integrate the same LR as the "
            "short run up to its best point (see <i>Why</i>).</p>")
    rows_trials = "".join(
        f"<tr class=\"{'kept' if t.get('kept') else ''}\"><td>{int(t['rung'])}</td>"
        f"<td class=l>{escape(_arm_label(t))}</td><td>{float(t['lr']):.3g}</td>"
        f"<td>{int(t['steps'])}</td>"
        f"<td>{'diverged' if t['diverged'] else _fmt(t['metric'])}</td>"
        f"<td>{'yes' if t.get('kept') else ''}</td></tr>"
        for t in sorted(halving["trials"], key=lambda t: (t["rung"], t["family"], t["lr"])))
    trials_html = (
        f"<table><tr><th>rung</th><th class=l>schedule</th><th>lr</th><th>steps</th>"
        f"<th>val {escape(metric)}</th><th>went on</th></tr>{rows_trials}</table>"
        if rows_trials else
        "<p>No confirmation runs: the budget left too few steps for them, and the final run "
        "takes the range test's LR (see <i>Why</i>).</p>")
    if findings:
        rows_f = "".join(
            f"<tr><td class=l>{escape(f.get('kind'))}{_rule(f)}</td>"
            f"<td>{escape(f.get('step'))}</td>"
            f"<td class=l>{escape(f.get('evidence'))}</td>"
            f"<td class=l>{escape(f.get('action'))}</td></tr>" for f in findings)
        findings_html = ("<table><tr><th class=l>finding</th><th>step</th>"
                         "<th class=l>evidence</th><th class=l>action</th></tr>"
                         f"{rows_f}</table>")
        cuts = final.get("lr_cuts") or []
        if cuts:
            acted = ", ".join(f"{escape(c['kind'])} at step {escape(c['step'])}" for c in cuts)
            scale = _num(cuts[-1]["scale"])
            findings_html += (f"<p>The final run acted on {acted}: from there its LR was the "
                              f"schedule's x{scale:.3g} (the monitor's advice, taken at "
                              "once).</p>")
    elif monitor_available:
        findings_html = "<p>The monitor watched the final run and found nothing to flag.</p>"
    else:
        findings_html = ("<p class=muted>The monitor (<code>lrkit.monitor</code>) is not "
                         "installed in this version: no findings were computed.</p>")
    if safe is not None and math.isfinite(safe):
        cost = ""
        if "cost_batches" in safe_lr:
            cost = (f" Estimated on {int(safe_lr['examples'])} examples with "
                    f"{int(safe_lr['n_hvp'])} Hessian-vector products"
                    f"{'' if safe_lr.get('converged', True) else ' (not converged)'}: "
                    f"{int(safe_lr['cost_batches'])} batch gradients, "
                    f"{float(safe_lr['cost_runs']):.2f} of a full run, "
                    f"{float(safe_lr.get('wall_time', 0.0)):.2g} s, outside the budget (fewer "
                    "examples read a sharper curvature: the bound reads low).")
        safe_html = (f"<p>Curvature bound at the initial weights: the safe LR is "
                     f"<b>{safe:.3g}</b> (the chosen peak is {float(final['lr']) / safe:.2g}x "
                     f"it): {escape(safe_lr.get('formula', ''))}. A local bound: where the "
                     f"curvature falls during training the best LR can lie above it.{cost}</p>")
    elif safe_lr and "error" in safe_lr:
        safe_html = f"<p class=muted>Safe-LR bound unavailable: {escape(safe_lr['error'])}</p>"
    elif safe_lr and "skipped" in safe_lr:
        safe_html = (f"<p class=muted>Safe-LR bound not computed: "
                     f"{prose(safe_lr['skipped'])}.</p>")
    else:
        safe_html = "<p class=muted>Safe-LR bound not computed.</p>"
    s = range_test.get("suggestion") or {}
    band = s.get("band")
    band_txt = f"{band[0]:.3g} .. {band[1]:.3g}" if band else "none"
    # no LR from the curve is an abstention, not a divergence (what _fmt says for a missing number)
    sug_txt = ("No suggestion" if s.get("lr") is None else f"Suggestion {_fmt(s.get('lr'), 3)}")
    sched_json = escape(_json(final["schedule"]))
    split = task.get("test_label", "test")  # "val": no held-out test data (from_torch)
    amp = task.get("amp") or False
    amp_txt = "" if amp is False else f", mixed precision {escape('fp16' if amp is True else amp)}"
    body = f"""
<h1>lrkit tune: {escape(task['name'])}</h1>
<p class=muted>{escape(task.get('description', ''))}. Recipe: {escape(task.get('optimizer'))},
{full} steps, recipe schedule {escape(task.get('recipe_schedule'))}
(warmup {int(task.get('warmup_steps') or 0)} steps){amp_txt}.</p>
<div class=decision><b>Decision:</b> {escape(final['family'])} schedule with peak learning rate
<b>{float(final['lr']):.3g}</b>. Final run: {escape(split)} {escape(metric)}
<b>{_fmt(final['metric'])}</b>
({'higher' if higher else 'lower'} is better). Total cost {total} steps =
{total / full:.2f} full runs.{f"<br>Uncertainty: {escape(uncertainty)}." if uncertainty else ""}
<br><span class=muted>schedule spec: <code>{sched_json}</code>
</span></div>
<h2>Why</h2>
<p class=why>{prose(explanation)}</p>
<h2>Cost of each stage</h2>
<table><tr><th class=l>stage</th><th>steps</th><th>full runs</th><th>share</th>
<th>wall (s)</th></tr>{rows_stages}</table>
<h2>1. Range test</h2>
<p>{sug_txt} ({escape(s.get('confidence'))}: {escape(s.get('reason'))}),
good band {band_txt}.</p>
{_img(*imgs['range-test.png'][::-1])}
{safe_html}
<h2>2-3. Candidates and successive halving</h2>
{trials_html}
{rescaled_html}
{_img(*imgs['candidates.png'][::-1])}
{_img(*imgs['time.png'][::-1]) if 'time.png' in imgs else ''}
<h2>The chosen schedule</h2>
{_img(*imgs['schedule.png'][::-1])}
<h2>4. Final run</h2>
{_img(*imgs['final.png'][::-1])}
{findings_html}
"""
    page = ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            f"<title>lrkit tune: {escape(task['name'])}</title><style>{_CSS}</style></head>"
            f"<body>{body}</body></html>\n")
    path = folder / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj, sort_keys=True)
