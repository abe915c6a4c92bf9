"""What the report's safe-LR bound costs in tune, before and after ``tune.safe_lr_plan``.

For each built-in task: the curvature module's default plan (enough batches for 256 examples, at
most 8; up to 30 Lanczos products) against tune's plan within ``SAFE_LR_SHARE`` of a run, each
timed on one thread, in batch gradients (a product counts two, Adam's moments one a batch), full
runs, seconds and the final run's wall time from a tune run folder
(``/tmp/tb/<task>-0/result.json``, as ``bench_tune.py --out /tmp/tb/a.json`` leaves them).

    python benchmarks/safe_lr_cost.py
"""
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402
torch.set_num_threads(1)
from lrkit import curvature, tasks  # noqa: E402
from lrkit import tune as T  # noqa: E402
curvature.safe_lr(tasks.get("logreg"), seed=0)  # warm-up
for name in ["digits","digits-long","mnist5k","mnist1d","charlm","charrnn","digits-bn","diabetes","cancer-small","logreg","digits-small","digits-noisy"]:
    t = tasks.get(name)
    nb0 = max(1, min(8, math.ceil(256 / max(1, t.recipe.batch_size))))
    t0 = time.perf_counter()
    old = curvature.safe_lr(t, seed=0, num_batches=nb0)
    w_old = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        new = T._safe_lr(t, 0, T._Folder(Path(d)))
    try:
        r = json.load(open(f"/tmp/tb/{name}-0/result.json"))
        fin = [s for s in r["stages"] if s["name"] == "final run"][0]["wall_time"]
    except OSError:
        fin = float("nan")
    old_cost = old.eigen.batches * (2 * old.eigen.n_hvp + int(old.eigen.preconditioned))
    if "lr" in new:
        print(f"{name:13s} before: {old.lr:.4g} ({old_cost} batch grads = {old_cost/t.recipe.steps:.2f} runs, {w_old:.2f} s = {w_old/fin:.2f} final-run walls) | now: {new['lr']:.4g} ({new['cost_batches']} = {new['cost_runs']:.2f} runs, {new['wall_time']:.2f} s = {new['wall_time']/fin:.2f}) ratio {new['lr']/old.lr:.2f}", flush=True)
    else:
        print(f"{name:13s} before: {old.lr:.4g} ({old_cost} batch grads = {old_cost/t.recipe.steps:.2f} runs, {w_old:.2f} s = {w_old/fin:.2f}) | now: {new}", flush=True)
