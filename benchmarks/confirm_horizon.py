"""Why confirm mode misses the overfitting tasks: the best LR of short runs vs their horizon.

For each task and seeds 0-1: 7 short runs (1/6 of the full run, the confirm horizon) at LRs a
quarter decade apart around the range test's suggestion, the val metric evaluated 10 times
along each run. For every evaluation step t, the LR whose run is best at t: if it falls with t,
short runs are biased towards high LRs (a full run trains 6x longer than they do).

    python benchmarks/confirm_horizon.py collect diabetes digits-small digits mnist5k logreg
    python benchmarks/confirm_horizon.py report

Raw data: ``results/confirm-horizon-<first task>.json``.
"""

from __future__ import annotations

import glob
import json
import sys
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def collect(names: list[str]) -> None:
    import torch

    import lrkit
    from lrkit import finder, train

    torch.set_num_threads(1)
    out: dict = {}
    for name in names:
        t = lrkit.tasks.get(name)
        n = max(1, t.recipe.steps // 6)
        out[name] = {"higher_is_better": t.higher_is_better, "N": t.recipe.steps, "n": n,
                     "seeds": []}
        for seed in range(2):
            r = lrkit.find_lr(t, seed=seed)
            c = (r.suggestion.lr_for(t.recipe.schedule) if r.lr
                 else t.recipe.default_lr)
            runs = []
            for k in range(-4, 3):
                lr = c * 10 ** (0.25 * k)
                track = finder._ValTrack(t, every=max(1, n // 10), steps=n)
                res = train.run(t, lr, steps=n, seed=seed, eval_split="val", callbacks=[track])
                runs.append({"lr": lr, "curve": track.curve + [(res.steps_done, res.metric)]})
            out[name]["seeds"].append({"centre": c, "runs": runs})
            print(name, seed, "done", file=sys.stderr, flush=True)
    (RESULTS / f"confirm-horizon-{names[0]}.json").write_text(json.dumps(out))


def report() -> None:
    for f in sorted(glob.glob(str(RESULTS / "confirm-horizon-*.json"))):
        for name, v in json.loads(Path(f).read_text()).items():
            print(f"{name} (full run {v['N']} steps, short runs {v['n']}): best LR after t steps")
            for s in v["seeds"]:
                runs = s["runs"]
                lrs = [r["lr"] for r in runs]
                cells = []
                for i in range(len(runs[0]["curve"])):
                    vals = np.array([r["curve"][i][1] for r in runs], dtype=float)
                    score = -vals if v["higher_is_better"] else vals
                    j = int(np.argmin(np.where(np.isfinite(score), score, np.inf)))
                    cells.append(f"{runs[0]['curve'][i][0]}:{lrs[j]:.2g}")
                print("  ", " ".join(cells))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "collect":
        collect(sys.argv[2:])
    else:
        report()
