"""Per-step cost of ``lrkit.torch.LRSchedule.step()`` vs PyTorch's own scheduler of the same family.

Run: ``python benchmarks/bench_scheduler.py [--steps N] [--repeats R] [--groups 1 100]``.

For each family and param-group count, an SGD optimizer (momentum, as the cycling families need)
holds one small parameter per group *without* a gradient, so ``optimizer.step()`` is a cheap real
update (it runs the step hooks and advances lrkit's update clock). Each iteration calls
``optimizer.step()`` untimed, then times ``scheduler.step()`` alone with ``time.perf_counter``;
the figure is the mean per step of one run of ``--steps`` steps, and the median over
``--repeats`` runs, PyTorch and lrkit interleaved so drift hits both. A second table times the
optimizer step itself with each scheduler attached (lrkit adds a post-step hook to count updates).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch.optim import lr_scheduler as tls

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lrkit import schedules as S  # noqa: E402
from lrkit.torch import LRSchedule  # noqa: E402

LR = 0.1


def _families(n: int) -> dict[str, tuple[Callable, Callable]]:
    """family -> (PyTorch scheduler factory, lrkit schedule); horizons cover ``n`` steps."""
    total = n + 2
    return {
        "step": (lambda o: tls.StepLR(o, step_size=30, gamma=0.5), S.step(LR, 30, gamma=0.5)),
        "exponential": (lambda o: tls.ExponentialLR(o, gamma=0.999), S.exponential(LR, 0.999)),
        "cosine": (lambda o: tls.CosineAnnealingLR(o, T_max=total), S.cosine(LR, total)),
        "onecycle": (
            lambda o: tls.OneCycleLR(o, max_lr=LR, total_steps=total),
            S.onecycle(LR, total),
        ),
        "cyclic": (
            lambda o: tls.CyclicLR(o, base_lr=LR / 10, max_lr=LR, step_size_up=50),
            S.cyclic(LR / 10, LR, step_size_up=50),
        ),
    }


def _optimizer(groups: int) -> torch.optim.Optimizer:
    params = [{"params": [torch.nn.Parameter(torch.zeros(1))]} for _ in range(groups)]
    return torch.optim.SGD(params, lr=LR, momentum=0.9)


def _time_sched(make: Callable, groups: int, steps: int) -> tuple[float, float]:
    """(us per scheduler.step(), us per optimizer.step()) over one run of ``steps`` steps."""
    opt = _optimizer(groups)
    sched = make(opt)
    clock = time.perf_counter
    t_sched = t_opt = 0.0
    for _ in range(steps):
        t0 = clock()
        opt.step()
        t1 = clock()
        sched.step()
        t2 = clock()
        t_opt += t1 - t0
        t_sched += t2 - t1
    return 1e6 * t_sched / steps, 1e6 * t_opt / steps


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--groups", type=int, nargs="+", default=[1, 100])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    rows = []
    for groups in args.groups:
        for name, (make_torch, schedule) in _families(args.steps).items():
            make_ours = lambda o, s=schedule: LRSchedule(o, s)  # noqa: E731
            _time_sched(make_torch, groups, 50)  # warm up both
            _time_sched(make_ours, groups, 50)
            ts, to, os_, oo = [], [], [], []
            for _ in range(args.repeats):
                a, b = _time_sched(make_torch, groups, args.steps)
                ts.append(a), to.append(b)
                a, b = _time_sched(make_ours, groups, args.steps)
                os_.append(a), oo.append(b)
            rows.append((name, groups, statistics.median(ts), statistics.median(os_),
                         statistics.median(to), statistics.median(oo)))

    print(f"torch {torch.__version__}, {args.steps} steps x {args.repeats} repeats (median), "
          "1 thread; microseconds per step")
    head = (f"{'family':<12}{'groups':>7}{'torch sched':>13}{'lrkit sched':>13}{'ratio':>8}"
            f"{'torch opt':>11}{'lrkit opt':>11}{'ratio':>8}")
    print(head)
    print("-" * len(head))
    for name, groups, t_s, o_s, t_o, o_o in rows:
        print(f"{name:<12}{groups:>7}{t_s:>13.2f}{o_s:>13.2f}{o_s / t_s:>8.2f}"
              f"{t_o:>11.2f}{o_o:>11.2f}{o_o / t_o:>8.2f}")
    print("ratio = lrkit / torch (< 1: lrkit faster). 'opt' = optimizer.step() with that scheduler "
          "attached (lrkit counts updates in a post-step hook).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
