"""The monitor's ``lr_too_high`` on slow, noisy starts: false alarms, and rises it must still see.

Synthetic loss streams with log-normal batch noise (``sigma`` of the log-loss), 1,000 updates,
100 seeds each:

- *false alarms*: a healthy run, the loss falling slowly from the start (0.8 exp(-t/300) + 0.2)
  or flat through a 50-step linear warmup and then falling. Any ``lr_too_high`` is wrong.
- *rises*: the loss jumps 2.5x at its second update and stays (the labelled digits x30 run of
  seed 2), or falls for 30 updates and then climbs back 80% of the drop. ``lr_too_high`` (or
  ``diverged``) is right.

    python benchmarks/monitor_noisy_start.py

Results: ``benchmarks/results/monitor-heldout.md`` ("Fifteenth round").
"""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lrkit.monitor import Monitor  # noqa: E402

N = 1000


def curve(kind: str, t: int) -> float:
    if kind == "slow start":
        return 0.8 * math.exp(-t / 300) + 0.2
    if kind == "warmup 50":
        return 1.0 if t < 50 else 0.8 * math.exp(-(t - 50) / 300) + 0.2
    if kind == "jumps 2.5x":
        return 1.0 if t == 0 else 2.5
    if kind == "climbs back":  # falls to 0.5 by step 30, then back up 80% of the drop
        return 1.0 - 0.5 * t / 30 if t <= 30 else 0.5 + 0.4 * min(1.0, (t - 30) / 30)
    raise ValueError(kind)


def flagged(kind: str, sigma: float, seed: int) -> bool:
    rng = random.Random(seed)
    m = Monitor(total_steps=N)
    warm = 50 if kind == "warmup 50" else 0
    for t in range(N):
        lr = 0.1 * min(1.0, (t + 1) / warm) if warm else 0.1
        m.update(t, curve(kind, t) * math.exp(sigma * rng.gauss(0, 1) - sigma ** 2 / 2), lr=lr)
    return any(f.kind in ("lr_too_high", "diverged") for f in m.findings)


def main() -> None:
    sigmas = (0.05, 0.1, 0.2, 0.4)
    print("| run | right answer | " + " | ".join(f"noise {s:g}" for s in sigmas) + " |")
    print("|---|---|" + "---|" * len(sigmas))
    for kind, right in (("slow start", "no LR finding"), ("warmup 50", "no LR finding"),
                        ("jumps 2.5x", "too high"), ("climbs back", "too high")):
        counts = [sum(flagged(kind, s, seed) for seed in range(100)) for s in sigmas]
        print(f"| {kind} | {right} | " + " | ".join(f"{c}/100 flagged" for c in counts) + " |")


if __name__ == "__main__":
    main()
