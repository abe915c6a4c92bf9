"""Benchmark of the training monitor: the labelled evaluation, a leave-one-task-out check, overhead.

Three parts, each cached or cheap:

``collect``  trains every built-in task (``lrkit.tasks.names()``) through ``lrkit.train.run`` at
             the oracle's best LR (``benchmarks/results/oracle-<task>.json``, else
             ``lrkit.bench.oracle``) times 1/100, 1, 30 and 100, for 3 seeds, and records each
             run's per-step loss, LR and global gradient norm, and the validation metric 20 times
             per run, with :class:`lrkit.callbacks.JsonlLogger` (the documented JSON-lines log).
             Logs are cached under ``benchmarks/results/monitor-logs/<task>@<version>/`` and only
             missing runs are trained.
``evaluate`` replays every log through :class:`lrkit.monitor.Monitor` (the monitor is a pure
             function of the updates it sees, so a replay gives exactly the findings of the live
             run; ``tests/test_callbacks.py`` checks that), prints the confusion matrix and the
             first-correct-finding step as a fraction of the run, runs the leave-one-task-out
             check of the fitted thresholds, and writes ``benchmarks/results/monitor.md`` and
             ``monitor.png``.
``overhead`` times ``fit`` on the smallest built-in task (logreg) with and without
             ``MonitorCallback`` + ``JsonlLogger``, interleaved, in one process.

Usage: ``python benchmarks/bench_monitor.py [collect|evaluate|overhead|all]``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
LOGS = RESULTS / "monitor-logs"
FACTORS = {"x1/100": 0.01, "best": 1.0, "x30": 30.0, "x100": 100.0}
#: near the best LR: reported on their own (is "raise the LR about 10x" right at x1/10, wrong at
#: x1/3?), not part of the labelled matrix or the threshold fit
NEAR = {"x1/10": 0.1, "x1/3": 1 / 3}
SEEDS = (0, 1, 2)
EVALS_PER_RUN = 20


def best_lr(name: str) -> float:
    """The oracle's best LR: the shipped result file, else ``lrkit.bench.oracle`` (cached)."""
    path = RESULTS / f"oracle-{name}.json"
    if path.exists():
        return float(json.loads(path.read_text())["best_lr"])
    from lrkit import bench

    return float(bench.oracle(name, progress=False).best_lr)


def log_path(task, condition: str, seed: int) -> Path:
    tag = condition.replace("/", "_")
    return LOGS / task.key / f"{tag}-seed{seed}.jsonl.gz"


def collect(names: list[str] | None = None) -> None:
    """Train and log every missing (task, condition, seed) run."""
    from tqdm.auto import tqdm

    from lrkit import tasks, train
    from lrkit.callbacks import JsonlLogger

    torch.set_num_threads(1)
    names = names or tasks.names()
    todo = []
    for name in names:
        task = tasks.get(name)
        lr0 = best_lr(name)
        for cond, f in {**FACTORS, **NEAR}.items():
            for seed in SEEDS:
                if not log_path(task, cond, seed).exists():
                    todo.append((task, cond, lr0 * f, seed))
    for task, cond, lr, seed in tqdm(todo, desc="monitor runs"):
        path = log_path(task, cond, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix("")  # the plain .jsonl, compressed when the run is done
        steps = task.recipe.steps
        every = max(1, steps // EVALS_PER_RUN)
        logger = JsonlLogger(tmp, evaluate=lambda m, t=task: t.evaluate(m, "val"),
                             eval_every=every,
                             meta={"task": task.key, "condition": cond, "lr": lr, "seed": seed,
                                   "steps": steps, "higher_is_better": task.higher_is_better,
                                   "metric": task.metric, "schedule": task.recipe.schedule})
        train.run(task, lr, seed=seed, callbacks=[logger])
        with open(tmp, "rb") as src, gzip.open(path.with_suffix(".tmp"), "wb") as dst:
            dst.write(src.read())
        path.with_suffix(".tmp").replace(path)
        tmp.unlink()


# ---------------------------------------------------------------------------------- evaluate
LABEL = {"x1/100": "low", "best": "none", "x30": "high", "x100": "high"}
HIGH = ("diverged", "lr_too_high")


def load_logs(names: list[str] | None = None, conditions: Any = None) -> list:
    from lrkit import tasks
    from lrkit.monitor import read_log

    names = names or tasks.names()
    logs = []
    for name in names:
        task = tasks.get(name)
        for cond in conditions or FACTORS:
            for seed in SEEDS:
                path = log_path(task, cond, seed)
                if path.exists():
                    logs.append((name, cond, seed, read_log(path)))
    return logs


def _replay(log, **thresholds):
    """The monitor after replaying ``log`` (its val direction and run length from the log)."""
    from lrkit.monitor import Monitor, replay

    return replay(log, Monitor(val_mode="max" if log.meta["higher_is_better"] else "min",
                               total_steps=int(log.meta["steps"]), **thresholds))


def judge(log, **thresholds) -> dict:
    """Replay one log; the first LR finding's label, the first correct step as a fraction."""
    n = int(log.meta["steps"])
    m = _replay(log, **thresholds)
    lr_found = sorted(m.lr_findings, key=lambda f: f.step)
    first = lr_found[0] if lr_found else None
    predicted = "none" if first is None else ("low" if first.kind == "lr_too_low" else "high")
    truth = LABEL[log.meta["condition"]]
    if truth == "high":
        hits = [f.step for f in lr_found if f.kind in HIGH]
    elif truth == "low":
        hits = [f.step for f in lr_found if f.kind == "lr_too_low"]
    else:
        hits = []
    correct = (not lr_found) if truth == "none" else (bool(hits) and predicted == truth)
    return {"truth": truth, "predicted": predicted, "correct": correct,
            "first_correct": (min(hits) + 1) / n if hits else None,
            "kinds": [f.kind for f in m.findings],
            "confidence": None if first is None else first.evidence.get("confidence")}


def score(logs, **thresholds) -> tuple[int, float]:
    """(errors, mean first-correct fraction) of a threshold setting on ``logs``."""
    errors, fracs = 0, []
    for *_, log in logs:
        j = judge(log, **thresholds)
        errors += not j["correct"]
        if j["first_correct"] is not None:
            fracs.append(j["first_correct"])
    return errors, sum(fracs) / max(len(fracs), 1)


#: the thresholds fitted on the logs (each candidate grid is small and centred on the default)
GRID = {"min_fraction": (0.1, 0.15, 0.2, 0.25), "low_share": (0.4, 0.5, 0.6),
        "slow_drop": (0.3, 0.4, 0.5)}


def fit_thresholds(logs) -> dict:
    """The grid point with the fewest errors, then the earliest mean first-correct step, then the
    one nearest the grid's centre."""
    import itertools

    best = None
    keys = list(GRID)
    for values in itertools.product(*(GRID[k] for k in keys)):
        th = dict(zip(keys, values))
        err, frac = score(logs, **th)
        centre = sum(abs(GRID[k].index(v) - (len(GRID[k]) - 1) / 2) for k, v in th.items())
        key = (err, round(frac, 3), centre)
        if best is None or key < best[0]:
            best = (key, th)
    return best[1]


def evaluate(names: list[str] | None = None) -> None:
    from lrkit.monitor import Thresholds

    logs = load_logs(names)
    task_names = sorted({n for n, *_ in logs}, key=lambda n: [x[0] for x in logs].index(n))
    rows = []
    for name, cond, seed, log in logs:
        rows.append((name, cond, seed, judge(log)))
    conds = list(FACTORS)
    lines = ["# Monitor: labelled evaluation, leave-one-task-out check, overhead", "",
             "Produced by `python benchmarks/bench_monitor.py` (collect, evaluate, overhead) on "
             f"{time.strftime('%Y-%m-%d')} (CPU, `torch.set_num_threads(1)`, shared 2-core "
             f"machine). Logs: `benchmarks/results/monitor-logs/` (one JSON-lines file per run).",
             "", f"Tasks: {', '.join(task_names)}; LR = the oracle's best x 1/100, 1, 30, 100; "
             f"seeds {list(SEEDS)}; default thresholds `{Thresholds().to_dict()}`; "
             "`total_steps` given (the recipe's), validation metric every 1/20 of the run.", "",
             "## Confusion matrix (first LR finding of each run)", "",
             "| condition | runs | -> too high (diverged / lr_too_high) | -> too low (lr_too_low: "
             "'raise about 10x' / 'may be too low') | -> no LR finding | correct |",
             "|---|---|---|---|---|---|"]
    for c in conds:
        js = [j for _, cc, _, j in rows if cc == c]
        cnt = Counter(j["predicted"] for j in js)
        sure = Counter(j["confidence"] for j in js if j["predicted"] == "low")
        ok = sum(j["correct"] for j in js)
        lines.append(f"| {c} ({LABEL[c]}) | {len(js)} | {cnt['high']} | {cnt['low']} "
                     f"({sure['high']} / {sure['low']}) | {cnt['none']} | {ok}/{len(js)} |")
    total_ok = sum(j["correct"] for *_, j in rows)
    lines += ["", f"**{total_ok}/{len(rows)} runs correct.** Other findings raised (count of runs):", "",
              "| condition | " + " | ".join(k for k in ("plateau", "overfitting",
                                                          "exploding_gradients",
                                                          "vanishing_gradients")) + " |",
              "|---|---|---|---|---|"]
    for c in conds:
        js = [j for _, cc, _, j in rows if cc == c]
        lines.append(f"| {c} | " + " | ".join(str(sum(k in j["kinds"] for j in js)) for k in (
            "plateau", "overfitting", "exploding_gradients", "vanishing_gradients")) + " |")
    lines += ["", OVERFIT_NOTE, "", "`overfit_z` set by reasoning (3 standard errors); runs "
              "with `overfitting` at each value, by condition (errors on the labelled LR "
              "findings in brackets):", "", "| `overfit_z` | " + " | ".join(conds) + " |",
              "|---|" + "---|" * len(conds)]
    for z in (0.0, 2.0, 3.0, 4.0):
        cells = []
        for c in conds:
            logs_c = [x for x in logs if x[1] == c]
            n = sum(_replay(log, overfit_z=z).finding("overfitting") is not None
                    for *_, log in logs_c)
            cells.append(f"{n} ({score(logs_c, overfit_z=z)[0]})")
        lines.append(f"| {z:g} | " + " | ".join(cells) + " |")
    lines += ["", "## First correct finding, as a fraction of the run (max over 3 seeds)", "",
              "| task | " + " | ".join(c for c in conds if c != "best") + " |",
              "|---|---|---|---|"]
    worst = 0.0
    for name in task_names:
        cells = []
        for c in conds:
            if c == "best":
                continue
            fr = [j["first_correct"] for n, cc, _, j in rows if n == name and cc == c]
            if any(f is None for f in fr) or not fr:
                cells.append("missed")
            else:
                worst = max(worst, max(fr))
                cells.append(f"{max(fr):.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Latest first-correct finding over all flagged runs: {worst:.2f} of the run "
              "(goal: within 0.30).", ""]
    # leave-one-task-out
    lines += ["## Leave-one-task-out check of the fitted thresholds", "",
              f"Grid: `{GRID}`. For each task, the thresholds are fitted on the other tasks "
              "(fewest errors, then earliest mean first-correct step) and scored on the held-out "
              "task.", "", "| held-out task | fitted on the others | errors on held-out | "
              "held-out runs | mean first-correct |", "|---|---|---|---|---|"]
    fitted_all = fit_thresholds(logs)
    loto_err = 0
    for name in task_names:
        train_logs = [x for x in logs if x[0] != name]
        test_logs = [x for x in logs if x[0] == name]
        th = fit_thresholds(train_logs)
        err, frac = score(test_logs, **th)
        loto_err += err
        lines.append(f"| {name} | `{th}` | {err} | {len(test_logs)} | {frac:.2f} |")
    lines += ["", f"Held-out errors in total: **{loto_err}/{len(logs)}**. Fitted on all tasks: "
              f"`{fitted_all}` (the defaults are `{ {k: getattr(Thresholds(), k) for k in GRID} }`).",
              ""]
    lines += ["## Sensitivity of the thresholds set by reasoning (all tasks, errors / runs)", "",
              "| threshold | values -> errors |", "|---|---|"]
    for key, values in (("z", (3.0, 4.0, 5.0)), ("rise_share", (0.3, 0.5, 0.7)),
                        ("diverge_factor", (2.0, 3.0, 4.0)), ("overfit_early", (0.1, 0.15, 0.25))):
        cells = ", ".join(f"{v:g} -> {score(logs, **{key: v})[0]}" for v in values)
        lines.append(f"| `{key}` | {cells} |")
    lines.append("")
    lines += near_best(names)
    (RESULTS / "monitor-eval.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot_eval(rows, logs)


def near_best(names: list[str] | None = None) -> list[str]:
    """How often ``lr_too_low`` fires at x1/10 of the best LR (its advice, "raise the LR about
    10x", is right) and at x1/3 (the advice would overshoot), per task (seeds flagged / runs)."""
    logs = load_logs(names, NEAR)
    if not logs:
        return []
    lines = ["## Near the best LR (not in the labels above)", "",
             "`lr_too_low` advises raising the LR about 10x: right at x1/10 of the best, an "
             "overshoot at x1/3. Runs flagged (first flag as a fraction of the run):", "",
             "| task | " + " | ".join(NEAR) + " |", "|---|" + "---|" * len(NEAR)]
    tasks_ = list(dict.fromkeys(n for n, *_ in logs))
    total = {c: [0, 0] for c in NEAR}
    said = {c: Counter() for c in NEAR}
    for name in tasks_:
        cells = []
        for c in NEAR:
            fracs = []
            for n, cc, _, log in logs:
                if n != name or cc != c:
                    continue
                low = [f for f in _replay(log).findings if f.kind == "lr_too_low"]
                said[c].update(f.evidence.get("confidence") for f in low)
                fracs.append((min(f.step for f in low) + 1) / int(log.meta["steps"])
                             if low else None)
            hit = [f for f in fracs if f is not None]
            total[c][0] += len(hit)
            total[c][1] += len(fracs)
            cells.append(f"{len(hit)}/{len(fracs)}" + (f" ({max(hit):.2f})" if hit else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| all | " + " | ".join(f"{a}/{b}" for a, b in total.values()) + " |")
    lines += ["", "Of the flags, 'raise about 10x' / 'may be too low: check first': "
              + ", ".join(f"{c} {said[c]['high']} / {said[c]['low']}" for c in NEAR) + "."]
    return lines + ["", NEAR_NOTE, ""]


#: what the overfitting column showed before the rule's noise gate (measured once)
OVERFIT_NOTE = """\
`overfitting` at the best LR is a false alarm except on diabetes, whose best LR overfits late
in the run. Before the rule compared the val metric with its own noise (`overfit_z`,
2026-11-26) it fired in 3 of the 24 best-LR runs: digits seeds 0 and 2 as well, on dips of
one to five examples of 144 (best 0.972, then 0.944-0.958); the README's main job printed the
same false alarm. Now 1/24: diabetes seed 2, whose val loss rises steadily from 0.489 (step
329) to 0.509, flagged at step 539 instead of 509. Every LR finding above is unchanged. With
the gate `lr_too_low` no longer hid behind a raised `overfitting` on diabetes at x100 (seed 0,
val loss 0.57 at step 29, then 0.58-0.95 with no trend), so it now also waits while the val
metric has not improved for `overfit_patience` evaluations: raising the LR is no advice then."""

#: what the near-best table showed under the noise estimate used before (measured once)
NEAR_NOTE = """\
With the first-difference noise estimate used before (2026-11-26, 05:50 UTC), x1/3 was flagged in
6/21 runs: logreg's three as well. Its full-batch loss falls fast in the first block and then
flattens. First differences counted that fall as noise, so the drop looked insignificant and the
rule read "has not fallen significantly". The second-difference estimate fixed it. Every other
figure on this page (the 84 labelled runs of the seven design tasks, the first-correct
fractions, leave-one-task-out, sensitivity) is identical under both estimators.

**digits-bn (held out, 2026-11-26):** a batch-normalised CNN under 1-cycle, its 12 labelled runs
collected after every rule was fixed. First evaluation: 10/12; at the best LR two seeds got
`overfitting` and `lr_too_high`: val accuracy 0.64 at step 14, 0.50 at step 29, while the 1-cycle
LR climbed to its peak (and the running statistics lagged), 0.99 at the end. The val rules now
wait while the LR is above its value at the best evaluation: 12/12, and the 84 design runs
unchanged. Its near-best runs: x1/10 (0.056, inside the wide band) and x1/3 (0.19) are flagged
`lr_too_low` on 3/3 seeds, the first right in spirit (the best is 0.56), the second a false
positive of the same kind as diabetes's below.

- **The same false positive in tune:** in `bench_tune`'s final runs (`results/tune.md`),
  `lr_too_low` also fired on logreg at 0.7x its best LR. It no longer does: 3 seeds, only
  `plateau`, and the same decisions and metrics. It still fires on diabetes seed 0 and
  digits-small seed 1. There tune chose a low LR on purpose: the best LR of those tasks is set
  by overfitting, which a training-loss rule cannot see.
- x1/10 is caught in 11/21 runs. The rule is tuned for the clear case (x1/100, 21/21), so it
  does not always see an LR 10x too low.
- **Left alone:** diabetes at x1/3 is still flagged. Its relative drop at 20% of the run is
  0.39-0.40, just under `slow_drop` (0.4). A user's sigmoid-shaped curve (slow start, then a
  fast drop) can also look "still falling steadily" at 20% of the run. Telling it from a
  too-low LR would need a new rule and new labels. Not done."""


def plot_eval(rows, logs) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lrkit.monitor import plot_log

    names = sorted({n for n, *_ in logs}, key=lambda n: [x[0] for x in logs].index(n))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    colors = {"x1/100": "tab:blue", "x30": "tab:orange", "x100": "tab:red"}
    for k, c in enumerate(c for c in FACTORS if c != "best"):
        xs = [names.index(n) + 0.2 * (k - 1) for n, cc, _, j in rows
              if cc == c and j["first_correct"] is not None]
        ys = [j["first_correct"] for n, cc, _, j in rows if cc == c and j["first_correct"] is not None]
        ax.scatter(xs, ys, color=colors[c], label=c, s=18)
    ax.axhline(0.3, color="gray", ls="--", lw=1, label="goal 0.30")
    ax.set_xticks(range(len(names)), names, rotation=20)
    ax.set_ylabel("first correct finding\n(fraction of run)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "monitor.png", dpi=110)
    plt.close(fig)
    from lrkit.monitor import Monitor, replay

    example = [log for n, c, s, log in logs if n == names[0] and s == 0 and c in ("x1/100", "x30")]
    for log in example:
        tag = log.meta["condition"].replace("/", "_")
        m = replay(log, Monitor(val_mode="max" if log.meta["higher_is_better"] else "min",
                                total_steps=int(log.meta["steps"])))
        plot_log(log, RESULTS / f"monitor-{names[0]}-{tag}.png", findings=m.findings)


# ---------------------------------------------------------------------------------- overhead
def overhead(repeats: int = 60) -> None:
    """Per-step cost of ``fit`` on logreg with and without MonitorCallback + JsonlLogger.

    Three loops, interleaved ``repeats`` times in one process (order rotated each round): plain
    ``fit``; ``fit`` with ``MonitorCallback(loggers=[JsonlLogger])`` fed loss and LR
    (``grad_norm_every=None``); the same with the global gradient norm every update. Each run is
    timed in process CPU time (``time.process_time``), at the recipe's horizon (100 steps, so
    one-off costs such as opening the log count) and at 1000 steps. The ratio is the median over
    rounds of the ratio within a round (runs adjacent in time share the machine's load). Also:
    the callback's own time inside ``fit`` (its hooks timed in place), and alone (its
    ``on_step_end`` on ready ``StepInfo`` objects).
    """
    import statistics
    import tempfile

    from lrkit import tasks
    from lrkit.callbacks import JsonlLogger, MonitorCallback
    from lrkit.train import Callback, StepInfo, fit

    torch.set_num_threads(1)
    task = tasks.get("logreg")
    lr = best_lr("logreg")
    tmp = Path(tempfile.mkdtemp())

    class Timed(Callback):
        """Times the wrapped callback's hooks in process CPU time."""

        def __init__(self, inner: Callback) -> None:
            self.inner, self.spent = inner, 0.0

        def on_train_start(self, model, optimizer):
            self.inner.on_train_start(model, optimizer)

        def on_step_end(self, info):
            t0 = time.process_time()
            out = self.inner.on_step_end(info)
            self.spent += time.process_time() - t0
            return out

        def on_train_end(self, result):
            t0 = time.process_time()
            self.inner.on_train_end(result)
            self.spent += time.process_time() - t0

    def once(kind: str, steps: int) -> float:
        model = task.build_model(0)
        opt = task.recipe.make_optimizer(model.parameters(), lr)
        cbs: list = []
        if kind != "plain":
            every = 1 if kind == "grad" else None
            cb = MonitorCallback(total_steps=steps, grad_norm_every=every,
                                 loggers=[JsonlLogger(tmp / f"{kind}.jsonl")])
            cbs = [Timed(cb)] if kind == "timed" else [cb]
        t0 = time.process_time()
        fit(model, opt, task.batches(0), num_steps=steps, step_fn=task.loss, callbacks=cbs)
        if kind == "timed":
            return cbs[0].spent / steps
        return (time.process_time() - t0) / steps

    kinds = ["plain", "monitor", "grad", "timed"]
    rows = []
    for steps, reps in ((task.recipe.steps, repeats), (1000, max(5, repeats // 4))):
        times: dict[str, list[float]] = {k: [] for k in kinds}
        for k in kinds:
            once(k, steps)  # warm-up
        for r in range(reps):
            order = kinds[r % 4:] + kinds[:r % 4]
            for k in order:
                times[k].append(once(k, steps))
        med = {k: statistics.median(v) for k, v in times.items()}
        ratio = {k: statistics.median(a / b for a, b in zip(times[k], times["plain"]))
                 for k in ("monitor", "grad")}
        rows.append((steps, reps, med, ratio))
    model = task.build_model(0)
    opt = task.recipe.make_optimizer(model.parameters(), lr)
    n = 20000
    cb = MonitorCallback(total_steps=n, grad_norm_every=None,
                         loggers=[JsonlLogger(tmp / "alone.jsonl")])
    cb.on_train_start(model, opt)
    infos = [StepInfo(t, 0.7 * (1 + 1 / (t + 1)), lr, None, model, opt) for t in range(n)]
    t0 = time.process_time()
    for info in infos:
        cb.on_step_end(info)
    alone = (time.process_time() - t0) / n
    lines = ["", "## Overhead", "",
             "`fit` on logreg (the smallest built-in task: full-batch GD on 569 examples), "
             "process CPU time per step, runs interleaved in one process; ratio = median over "
             "rounds of the within-round ratio:", "",
             "| steps per run | rounds | plain `fit` us/step | + MonitorCallback + JsonlLogger "
             "(loss, LR) us/step | ratio | + gradient norm every step | ratio | the callback's "
             "own hooks inside `fit`, us/step |",
             "|---|---|---|---|---|---|---|---|"]
    for steps, reps, med, ratio in rows:
        lines.append(f"| {steps} | {reps} | {med['plain'] * 1e6:.1f} | "
                     f"{med['monitor'] * 1e6:.1f} | {ratio['monitor']:.3f} | "
                     f"{med['grad'] * 1e6:.1f} | {ratio['grad']:.3f} | "
                     f"{med['timed'] * 1e6:.1f} ({med['timed'] / med['plain']:.3f} of a step) |")
    import os

    lines += ["", f"The callback alone (monitor + JSON line, no gradient norm, on ready "
              f"`StepInfo` objects): {alone * 1e6:.2f} us per update = "
              f"{alone / rows[0][2]['plain']:.3f} of a plain logreg step. Load average at the "
              f"end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.", ""]
    text = "\n".join(lines)
    (RESULTS / "monitor-overhead.md").write_text(text + "\n")
    print(text)

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", nargs="?", default="all", choices=["collect", "evaluate", "overhead", "all"])
    p.add_argument("--tasks", nargs="*", default=None)
    a = p.parse_args(argv)
    if a.part in ("collect", "all"):
        collect(a.tasks)
    if a.part in ("evaluate", "all"):  # noqa
        evaluate(a.tasks)
    if a.part in ("overhead", "all"):
        overhead()
    parts = [RESULTS / "monitor-eval.md", RESULTS / "monitor-overhead.md"]
    if all(p.exists() for p in parts):  # the combined report
        text = "".join(p.read_text() for p in parts)
        (RESULTS / "monitor.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
