"""Tune's final runs that overfit early, on held-out random tasks: what LR would have been better?

``scan`` re-tunes every task of a held-out set (``heldout_random_tasks.py``'s files, seeds 0-1,
the default budget) keeping each run's folder long enough to read the final run: its kept
best-validation step, whether the monitor called it overfitting, and the rung-1 runs.
``analyze`` sets each run whose checkpoint came in the first ``frac`` of the run against the
task's stored grid of full runs at ``lr x step / steps`` (gradient-flow time: a full run there
ends about where this one peaked), interpolated in log-LR, by the metric scored; and the same
with the schedule's integrated LR instead of the step ratio. ``rewind`` tries the cheap
alternative that needs no second run: when the monitor finds the overfitting, go back to the
best checkpoint and go on at the lower LR for the steps left.

    python benchmarks/early_overfit.py scan results/heldout/random-3.json \\
        --out results/heldout/early-overfit-3.json
    python benchmarks/early_overfit.py analyze results/heldout/early-overfit-{3,4}.json
    python benchmarks/early_overfit.py rewind results/heldout/early-overfit-4.json
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import heldout_random_tasks as H  # noqa: E402

import lrkit  # noqa: E402
from lrkit import bench, schedules, train  # noqa: E402
from lrkit.monitor import Monitor  # noqa: E402


def _seed_of(set_file: str) -> int:
    return int(Path(set_file).stem.split("-")[1])


def scan(set_file: str, out: Path, arch: str) -> None:
    torch.set_num_threads(1)
    rows = json.loads(Path(set_file).read_text())
    seed_set = _seed_of(set_file)
    rng = random.Random(seed_set)
    res = []
    for i, row in enumerate(rows):
        cfg, task = H.draw(rng, 1000 * seed_set + i, arch)
        assert cfg == row["cfg"], "another task: the file and its seed disagree"
        for s in (0, 1):
            with tempfile.TemporaryDirectory() as d:
                t = lrkit.tune(task, out=d, progress=False, seed=s)
                f = json.loads(Path(d, "4-final.json").read_text())
                h = json.loads(Path(d, "3-halving.json").read_text())
            ck = f.get("best_val_checkpoint") or {}
            res.append({"set": set_file, "row": i, "seed": s, "scored": cfg["scored"],
                        "family": t.family, "lr": t.lr, "metric": t.metric,
                        "S": task.recipe.steps, "ck_step": ck.get("step"),
                        "overfitting": ck.get("overfitting"),
                        "kinds": [x["kind"] for x in f["findings"]], "val": f.get("val"),
                        "grid": row["grid"], "means": row["means"], "best": row["best"],
                        "higher": task.higher_is_better,
                        "rung1": [(r["lr"], r["metric"], r["steps"]) for r in h["trials"]
                                  if r["rung"] == 1]})
            print(i, s, cfg["scored"], f"lr {t.lr:.3g} checkpoint {ck.get('step')}/"
                  f"{task.recipe.steps} overfitting={ck.get('overfitting')} metric "
                  f"{t.metric:.4g} grid best {row['best']:.4g}", flush=True)
        out.write_text(json.dumps(res))


def _grid_at(r: dict, lr: float) -> float:
    """The grid's mean test metric at ``lr``, linear in log-LR (clamped at the grid's ends)."""
    return float(np.interp(math.log10(lr), np.log10(r["grid"]), np.asarray(r["means"], float)))


def _regret(r: dict, v: float) -> float:
    return bench.regret(v, r["best"], higher_is_better=r["higher"])


def analyze(files: list[str]) -> None:
    rows = [x for f in files for x in json.loads(Path(f).read_text())]
    for frac in (0.15, 0.25, 1 / 3, 0.5):
        parts = []
        for kind in sorted({r["scored"] for r in rows}):
            rs = [r for r in rows if r["scored"] == kind]
            now, after, trig = [], [], []
            for r in rs:
                hit = bool(r["overfitting"]) and r["ck_step"] is not None and \
                    r["ck_step"] <= frac * r["S"]
                a = _regret(r, r["metric"])
                b = _regret(r, _grid_at(r, r["lr"] * r["ck_step"] / r["S"])) if hit else a
                now.append(a), after.append(b), trig.append(hit)
            better = sum(b < a - 0.01 for a, b in zip(now, after))
            worse = sum(b > a + 0.01 for a, b in zip(now, after))
            parts.append(f"{kind} ({len(rs)} runs): {sum(trig)} qualify, {better} better, "
                         f"{worse} worse; median {100 * np.median(now):+.1f}% -> "
                         f"{100 * np.median(after):+.1f}%")
        print(f"checkpoint in the first {frac:.2g} of the run: " + "; ".join(parts))
    print("\nthe runs that qualify at 1/3: step ratio against the schedule's integrated LR")
    for r in rows:
        if not (r["overfitting"] and r["ck_step"] is not None and r["ck_step"] <= r["S"] / 3):
            continue
        s = schedules.family(r["family"], r["lr"], r["S"])
        lrs = [s(t) for t in range(r["S"])]
        simple = r["lr"] * r["ck_step"] / r["S"]
        integ = r["lr"] * sum(lrs[:r["ck_step"]]) / sum(lrs)
        best_lr = r["grid"][int(np.argmax([(1 if r["higher"] else -1) * m for m in r["means"]]))]
        print(f"  {Path(r['set']).stem} row {r['row']:2d} seed {r['seed']} {r['scored']:13s} "
              f"{r['family']:8s} lr {r['lr']:.3g}, checkpoint {r['ck_step']}/{r['S']}: tune "
              f"{100 * _regret(r, r['metric']):+.1f}%; grid at step ratio {simple:.3g}: "
              f"{100 * _regret(r, _grid_at(r, simple)):+.1f}%, at integrated {integ:.3g}: "
              f"{100 * _regret(r, _grid_at(r, integ)):+.1f}% (grid's best LR {best_lr:.3g})")


def _rewind_run(task, family: str, lr: float, seed: int) -> tuple[float, dict]:
    """The final run at ``lr``; at the monitor's overfitting (best in the first half), back to
    the best checkpoint and on at ``lr x t_best / S`` (constant) for the steps left; test
    metric at the best validation state of the whole run."""
    S = task.recipe.steps
    every = max(1, S // 25)
    train.seed_everything(seed)
    model = task.build_model(seed)
    opt = task.recipe.make_optimizer(model.parameters(), lr)
    warm = task.recipe.warmup_steps if family in ("wsd", "warmup_cosine", "linear") else 0
    mon = Monitor(val_mode="max" if task.higher_is_better else "min", total_steps=S)
    st: dict = {"best": None, "switch": None}

    class Watch(train.Callback):
        def __init__(self, offset: int, may_switch: bool) -> None:
            self.offset, self.may_switch = offset, may_switch

        def on_step_end(self, info):
            t = self.offset + info.step + 1
            v = None
            if t % every == 0:
                with train.evaluating(info.model):
                    v = float(task.evaluate(info.model, "val"))
                if st["best"] is None or task.better(v, st["best"][1]):
                    st["best"] = (t, v, {k: x.detach().clone()
                                         for k, x in info.model.state_dict().items()})
            mon.update(t - 1, info.loss, lr=info.lr, val_metric=v)
            if (self.may_switch and v is not None and mon.finding("overfitting") is not None
                    and st["best"][0] <= S / 2):
                st["switch"] = t
                return "rewind"
            return None

    batches = task.batches(seed)
    train.fit(model, opt, batches, num_steps=S, step_fn=task.loss,
              schedule=schedules.family(family, lr, S, warmup_steps=warm),
              callbacks=[Watch(0, True)], grad_clip=task.recipe.grad_clip)
    info = {"switch": st["switch"], "t_best": st["best"][0]}
    if st["switch"] is not None:
        model.load_state_dict(st["best"][2])
        low = lr * st["best"][0] / S
        info["lower_lr"] = low
        train.fit(model, opt, batches, num_steps=S - st["switch"], step_fn=task.loss,
                  schedule=lambda t: low, callbacks=[Watch(st["switch"], False)],
                  grad_clip=task.recipe.grad_clip)
        info["t_best_after"] = st["best"][0]
    model.load_state_dict(st["best"][2])
    with train.evaluating(model):
        return float(task.evaluate(model, "test")), info


def rewind(files: list[str]) -> None:
    torch.set_num_threads(1)
    for f in files:
        for r in json.loads(Path(f).read_text()):
            if not (r["overfitting"] and r["ck_step"] is not None):
                continue
            _, task = H.task_at(_seed_of(r["set"]), r["row"])
            m, info = _rewind_run(task, r["family"], r["lr"], r["seed"])
            print(f"{Path(r['set']).stem} row {r['row']} seed {r['seed']} {r['scored']} "
                  f"{r['family']} lr {r['lr']:.3g}: tune {100 * _regret(r, r['metric']):+.1f}%"
                  f" -> rewound {100 * _regret(r, m):+.1f}%  {info}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("scan")
    a.add_argument("set_file")
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--arch", choices=["mlp", "cnn", "seq"], default="mlp")
    for name in ("analyze", "rewind"):
        sub.add_parser(name).add_argument("files", nargs="+")
    args = p.parse_args(argv)
    if args.cmd == "scan":
        scan(args.set_file, args.out, args.arch)
    elif args.cmd == "analyze":
        analyze(args.files)
    else:
        rewind(args.files)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
