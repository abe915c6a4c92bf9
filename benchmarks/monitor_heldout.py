"""The monitor's LR findings on held-out random tasks (MLPs, small CNNs, character LMs).

The labelled evaluation (``bench_monitor.py``) runs the built-in tasks; this runs tasks drawn
by ``heldout_random_tasks.py`` at their full-run grid's best LR x 1/100, x 1/10 and x 1
(seed 0, the monitor told the run's length, val metric every 1/20 of the run) and reports
the first LR finding of each run: ``lr_too_low`` is right at x1/100 and x1/10, any LR finding
is a false alarm at x1 (and with ``--conds ...,x10``, any finding that the LR is too high, or
``diverged``, is right at x10) ("raise the LR about 10x" at the best LR would blow many of these
runs up: x30 diverges on most), and which of its two statements ``lr_too_low`` made (evidence
``confidence``: "high" says raise about 10x, "low" that the LR may be too low).

    python benchmarks/monitor_heldout.py --out results/heldout/monitor.json \\
        random-2:0 random-2:9 cnn-10:0 seq-21:5      # <grid file under results/heldout>:<row>
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from lrkit import train
from lrkit.callbacks import MonitorCallback

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import heldout_random_tasks as heldout  # noqa: E402

FACTORS = {"x1/100": 0.01, "x1/10": 0.1, "best": 1.0, "x10": 10.0}
LABEL = {"x1/100": "low", "x1/10": "low", "best": "none", "x10": "high"}


def task_of(spec: str):
    """``(cfg, task, best_lr)`` of ``<file>:<row>`` (e.g. ``cnn-10:4``)."""
    name, row = spec.split(":")
    rows = json.loads((HERE / "results" / "heldout" / f"{name}.json").read_text())
    arch = "cnn" if name.startswith("cnn") else "seq" if name.startswith("seq") else "mlp"
    cfg, task = heldout.task_at(int(name.split("-")[1]), int(row), arch)
    return cfg, task, float(rows[int(row)]["best_lr"])


def first_lr_finding(task, lr: float) -> dict:
    """One run at ``lr`` watched by the monitor: its first LR finding and its evidence."""
    n = task.recipe.steps
    cb = MonitorCallback(total_steps=n, val_mode="max" if task.higher_is_better else "min",
                         evaluate=lambda m: task.evaluate(m, "val"), eval_every=max(1, n // 20))
    train.run(task, lr, seed=0, callbacks=[cb])
    found = sorted(cb.monitor.lr_findings, key=lambda f: f.step)
    if not found:
        return {"predicted": "none", "step": None, "evidence": {}}
    f = found[0]
    return {"predicted": "low" if f.kind == "lr_too_low" else "high",
            "step": (f.step + 1) / n, "evidence": dict(f.evidence)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tasks", nargs="+", help="<grid file under results/heldout>:<row>")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--conds", default="x1/100,x1/10,best",
                   help=f"comma-separated, of {', '.join(FACTORS)} (x10: 10x the grid's best "
                        "LR, where any finding that the LR is too high, diverged included, "
                        "is right)")
    args = p.parse_args(argv)
    conds = args.conds.split(",")
    bad = [c for c in conds if c not in FACTORS]
    if bad:
        p.error(f"--conds: unknown {bad}; choose from {list(FACTORS)}")
    torch.set_num_threads(1)
    rows = []
    for spec in args.tasks:
        cfg, task, best = task_of(spec)
        for cond in conds:
            r = first_lr_finding(task, best * FACTORS[cond])
            ok = r["predicted"] == LABEL[cond]
            rows.append({"task": spec, "cfg": cfg, "cond": cond, "ok": ok, **r})
            ev = r["evidence"]
            print(f"{spec:12s} {cond:7s} {r['predicted']:5s} {'ok' if ok else 'WRONG':5s} "
                  f"late share {ev.get('late_share', float('nan')):.2f}, "
                  f"drop {ev.get('relative_drop', float('nan')):.2f}"
                  + (f", confidence {ev['confidence']}" if "confidence" in ev else ""), flush=True)
        args.out.write_text(json.dumps(rows, indent=1))
    for cond in conds:
        got = [r["ok"] for r in rows if r["cond"] == cond]
        low = [r["evidence"].get("confidence") for r in rows
               if r["cond"] == cond and r["predicted"] == "low"]
        print(f"{cond}: {sum(got)} of {len(got)} right; lr_too_low said 'raise about 10x' on "
              f"{low.count('high')}, 'may be too low: check first' on {low.count('low')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
