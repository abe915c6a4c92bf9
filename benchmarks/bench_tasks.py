"""Range-test suggestions per built-in task: num_iter drift of every rule, and the oracle gap.

For every task (default: all built-ins) and every ``num_iter`` in ``--num-iter`` (default 50, 100,
200, 400) it runs ``lrkit.find_lr(task, num_iter=N, seed=S)`` and records every rule's suggestion
(``res.suggestions``). The drift of a rule on a task is ``max / min`` of its suggestions over the
``num_iter`` values (``inf`` when the rule returns no LR for some ``num_iter``). With ``--val``,
tasks whose module exposes ``load()["val"]`` also get the validation-loss range test
(``val_loader=[val split]``) at the default ``num_iter``. The oracle's best LR and band come from
``benchmarks/results/oracle-<task>.json``.

    python benchmarks/bench_tasks.py --val --out benchmarks/results/tasks-num-iter.json [--task NAME]

With ``--seeds 0,1,2`` it instead runs, per task and seed, the training-loss range test (its
suggestion, the recipe-schedule LR ``suggestion.lr_for(recipe.schedule)``, confidence, reason and
every peer rule) and the validation-loss range test, at the default ``num_iter``:

    python benchmarks/bench_tasks.py --seeds 0,1,2 --task diabetes --task digits-small \
        --task charrnn --out benchmarks/results/tasks-range-tests.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import platform
import subprocess
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def _val_batches(task_name: str):
    """The task's validation split as one batch, when its module exposes ``load()["val"]``."""
    from lrkit.tasks import _BUILTIN

    module = importlib.import_module(_BUILTIN[task_name].split(":")[0])
    if task_name in ("charlm", "charrnn"):
        return [module._eval_windows("val")]
    data = module.load() if hasattr(module, "load") else None
    if isinstance(data, dict) and isinstance(data.get("val"), tuple):
        return [data["val"]]
    return None


def _spread(values: list[float | None]) -> float:
    if any(v is None or not (v > 0) for v in values):
        return math.inf
    return max(values) / min(values)


def per_seed(names: list[str], seeds: list[int], out: Path) -> None:
    """Training- and validation-loss range tests per seed (see the module docstring)."""
    import lrkit
    from lrkit import tasks

    report: dict = json.loads(out.read_text()) if out.exists() else {}
    for name in names:
        t = tasks.get(name)
        rows = []
        for seed in seeds:
            start = time.perf_counter()
            r = lrkit.find_lr(t, seed=seed)
            wall = time.perf_counter() - start
            rv = lrkit.find_lr(t, seed=seed, val_loader=_val_batches(name))
            rows.append({"seed": seed, "lr": r.lr,
                         "lr_for_recipe": r.suggestion.lr_for(t.recipe.schedule) if r.lr else None,
                         "confidence": getattr(r.suggestion, "confidence", None),
                         "reason": getattr(r.suggestion, "reason", ""),
                         "val_lr": rv.lr, "val_reason": getattr(rv.suggestion, "reason", ""),
                         "peers": {k: v.lr for k, v in r.suggestions.items()}, "wall_s": wall})
            print(name, rows[-1], flush=True)
        report[name] = rows
        out.write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {out}")


def main() -> None:
    from tqdm.auto import tqdm

    import lrkit
    from lrkit import tasks

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", action="append", help="task name (repeatable; default: all)")
    p.add_argument("--num-iter", default="50,100,200,400")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val", action="store_true", help="also the validation-loss range test")
    p.add_argument("--seeds", default=None, help="per-seed report for these seeds (e.g. 0,1,2)")
    p.add_argument("--out", default=str(RESULTS / "tasks-num-iter.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    names = args.task or tasks.names()
    if args.seeds:
        per_seed(names, [int(v) for v in args.seeds.split(",")], Path(args.out))
        return
    iters = [int(v) for v in args.num_iter.split(",")]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=Path(__file__).parent).stdout.strip()
    out: dict = {"seed": args.seed, "num_iter": iters, "commit": commit,
                 "lrkit_file": lrkit.__file__, "machine": platform.platform(),
                 "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "tasks": {}}
    if Path(args.out).exists():  # keep the other tasks of an earlier run of the same file
        out["tasks"] = json.loads(Path(args.out).read_text()).get("tasks", {})
    bar = tqdm(total=len(names) * len(iters), desc="range tests")
    for name in names:
        t = tasks.get(name)
        rows: dict[str, list[float | None]] = {}
        walls = []
        for n in iters:
            start = time.perf_counter()
            res = lrkit.find_lr(t, num_iter=n, seed=args.seed)
            walls.append(time.perf_counter() - start)
            for rule, s in res.suggestions.items():
                rows.setdefault(rule, []).append(s.lr)
            rows.setdefault("lrkit (chosen)", []).append(res.lr)
            bar.update(1)
        entry: dict = {"suggestions": rows, "spread": {k: _spread(v) for k, v in rows.items()},
                       "wall_s": walls}
        if args.val:
            val = _val_batches(name)
            if val is not None:
                res = lrkit.find_lr(t, seed=args.seed, val_loader=val)
                entry["val_range_test"] = {"lr": res.lr, "reason": getattr(res.suggestion,
                                                                           "reason", "")}
        oracle_path = RESULTS / f"oracle-{name}.json"
        if oracle_path.exists():
            o = json.loads(oracle_path.read_text())
            entry["oracle"] = {"best_lr": o["best_lr"], "band": o["band"],
                               "best_metric": o["best_metric"], "run_time": o["run_time"]}
        out["tasks"][name] = entry
        Path(args.out).write_text(json.dumps(out, indent=1, default=str))
    bar.close()
    Path(args.out).write_text(json.dumps(out, indent=1, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
