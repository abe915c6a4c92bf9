"""Confirm on a held-out set with ``finder.overfit_step`` instrumented: for every time-rescale
it makes, the val rise that triggered it against the val noise of the run it read.

    python benchmarks/rescale_firings.py 3 /tmp/g3.json   # set 3 (results/heldout/random-3.json)

Joined with ``random-K-confirm.json`` / ``random-K-confirm-no-rescale.json`` (the same picks
with the rescale off) it says whether a noise gate on the rise would keep the rescales that
help and drop those that hurt (``results/heldout-random.md``, fourteenth round: it would not).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import heldout_random_tasks as H  # noqa: E402

import lrkit.finder as F  # noqa: E402
from lrkit import bench  # noqa: E402

_ORIGINAL = F.overfit_step
_LOG: list[dict] = []


def _recorded(task, best, runs):
    res = _ORIGINAL(task, best, runs)
    if res is None:
        return None
    curve_w = F._finite_points(best.get("val_curve", []))
    vw = [v for _, v in curve_w]
    rec = {"fraction": res[0], "lr": best["lr"],
           "noise_w": F.metric_noise(vw) if len(vw) >= 4 else None}
    if F._overfits_beyond(task, best, runs) is not None:  # the run above replays it
        b = min((r for r in runs if r["lr"] > best["lr"] and not r["diverged"]),
                key=lambda r: r["lr"])
        cb = F._finite_points(b.get("val_curve", []))
        keyed = [(t, F._rank_key(task, v)) for t, v in cb]
        t_match = F._step_at(b, F._tau(best)(curve_w[-1][0]), cb[-1][0])
        matched = float(np.interp(t_match, [t for t, _ in keyed], [v for _, v in keyed]))
        tail = [v for t, v in keyed if t > t_match][-F.COLLAPSE_TAIL:]
        rec.update(kind="beyond", rise=(float(np.median(tail)) if tail else keyed[-1][1])
                   - matched, noise=F.metric_noise([v for _, v in cb]) if len(cb) >= 4 else None)
    else:  # the winner's own peak
        rk = [F._rank_key(task, v) for v in vw]
        rec.update(kind="own", rise=rk[-1] - min(rk), noise=rec["noise_w"])
    _LOG.append(rec)
    return res


def main() -> int:
    seed_set, out = int(sys.argv[1]), Path(sys.argv[2])
    torch.set_num_threads(1)  # as heldout_random_tasks.py: the same picks as its files
    F.overfit_step = _recorded
    rows = json.loads((HERE / "results" / "heldout" / f"random-{seed_set}.json").read_text())
    rng = random.Random(seed_set)
    res = []
    for i in range(len(rows)):
        cfg, task = H.draw(rng, 1000 * seed_set + i, "mlp")
        for s in (0, 1):
            _LOG.clear()
            c = bench._METHODS["lrkit-confirm"][1](task, s)
            res.append({"row": i, "seed": s, "scored": cfg["scored"], "lr": c.lr,
                        "fired": list(_LOG)})
    out.write_text(json.dumps(res))
    print(f"{sum(1 for r in res if r['fired'])} of {len(res)} confirm picks time-rescaled")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
