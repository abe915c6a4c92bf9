"""Does tune's final LR want the short runs' horizon scaled in? A measurement on held-out tasks.

Tune's confirmation runs are ``h`` steps long (rung 1), the final run ``N``. On the held-out
test-log-loss tasks tune's LR often sits 2-12x above the grid's best (``heldout-random.md``), as
if the short runs' horizon were the cause. ``run`` re-tunes every task of the given MLP sets
(seed 0, the default budget) and trains tune's own final stage again at ``lr x (h/N)^a`` for
a = 0.5 and 1 (1: the full run integrates the winner's short-run LR x time), same family, seed
and checkpoint rule. ``analyze`` scores the three against each task's stored grid (the best
mean over seeds 0-1, test split), per metric class.

    python benchmarks/final_rescale.py run 0,1 --out results/heldout/final-rescale-01.json
    python benchmarks/final_rescale.py analyze results/heldout/final-rescale-*.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import heldout_random_tasks as H  # noqa: E402

import lrkit  # noqa: E402
from lrkit import bench  # noqa: E402
from lrkit import tune as T  # noqa: E402

ALPHAS = (0.5, 1.0)


def run(sets: list[int], out: Path) -> None:
    torch.set_num_threads(1)
    rows = json.loads(out.read_text()) if out.exists() else []
    done = {(r["set"], r["row"]) for r in rows}
    for s in sets:
        rng = random.Random(s)
        for i in range(30):
            cfg, task = H.draw(rng, 1000 * s + i, "mlp")
            if (s, i) in done:
                continue
            with tempfile.TemporaryDirectory() as d:
                res = lrkit.tune(task, out=d, progress=False, seed=0)
                plan = json.loads((Path(d) / "3-halving.json").read_text())["plan"]
            h, n = plan["rung1"], task.recipe.steps
            alts = {}
            for a in ALPHAS:
                lr = res.lr * (h / n) ** a if h else res.lr
                with tempfile.TemporaryDirectory() as d:
                    data, _ = T._stage_final(task, T._Folder(Path(d)), res.family, lr, 0,
                                             T._Display(False), 10 ** 9)
                alts[str(a)] = {"lr": lr, "metric": data["metric"]}
            rows.append({"set": s, "row": i, "cfg": cfg, "lr": res.lr, "family": res.family,
                         "metric": res.metric, "h": h, "N": n, "alts": alts})
            out.write_text(json.dumps(rows))
            print(s, i, cfg["scored"], f"{res.lr:.3g}", f"{res.metric:.4g}",
                  {a: f"{v['metric']:.4g}" for a, v in alts.items()}, flush=True)


def analyze(files: list[Path]) -> None:
    rows = [r for f in files for r in json.loads(f.read_text())]
    truth = {}
    for s in {r["set"] for r in rows}:
        for i, t in enumerate(json.loads((HERE / f"results/heldout/random-{s}.json").read_text())):
            truth[(s, i)] = t
    print("class | tasks | median regret: tune, (h/N)^0.5, (h/N)^1 | within 5% "
          "| mean (capped at +200%)")
    for cls in ("accuracy", "mse", "cross_entropy"):
        regs = []
        for r in rows:
            if r["cfg"]["scored"] != cls:
                continue
            t = truth[(r["set"], r["row"])]
            hi = cls == "accuracy"
            ms = [r["metric"]] + [r["alts"][str(a)]["metric"] for a in ALPHAS]
            regs.append([bench.regret(m, t["best"], higher_is_better=hi) for m in ms])
        med = [f"{100 * statistics.median(x[k] for x in regs):+.1f}%" for k in range(3)]
        win = [sum(x[k] < 0.05 for x in regs) for k in range(3)]
        mean = [f"{100 * statistics.mean(min(x[k], 2.0) for x in regs):+.1f}%" for k in range(3)]
        print(f"{cls} | {len(regs)} | {', '.join(med)} | {win} | {', '.join(mean)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("sets", help="comma-separated MLP set seeds, e.g. 0,1")
    r.add_argument("--out", type=Path, required=True)
    a = sub.add_parser("analyze")
    a.add_argument("files", type=Path, nargs="+")
    args = p.parse_args(argv)
    if args.cmd == "run":
        run([int(s) for s in args.sets.split(",")], args.out)
    else:
        analyze(args.files)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
