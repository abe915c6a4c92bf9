"""How often the range test's curve rule says "no clear descent" on a curve that falls.

Issue 7: the default rule must never return no LR on a curve that falls by more than 20%.

(a) Synthetic curves (``--synthetic N``): a plateau, a logistic descent of 20-90% centred
    at 1e-5..1e-1 and 0.3-2.5 decades wide, then (80% of curves) an exponential blow-up
    0.3 decades or more after the descent's centre; Gaussian noise of 0-25% of the
    descended level. 50-400 points over 1e-7..10. Only curves whose noise-free loss falls
    by >= 20% before the blow-up are counted.
(b) Real sweeps (``--real``):
    - the 35 design curves (``results/curves.json``);
    - ``find_lr`` at seeds 0-1 on the random held-out tasks of ``heldout_random_tasks.py``
      (random-0, -1, -2, cnn-10, cnn-11).
    Each abstention is listed with its raw fall: the starting level (median of the first
    10% of points) against the lowest 3-point running median before the blow-up cut.

Usage: ``python benchmarks/descent_refusals.py --synthetic 4000 --real``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def synthetic(n_curves: int, seed: int = 0) -> tuple[int, int, list[tuple]]:
    from lrkit import suggest as S

    rng = np.random.default_rng(seed)
    refused, counted, examples = 0, 0, []
    for _ in range(n_curves):
        n = int(rng.choice([50, 100, 200, 400]))
        lrs = np.logspace(-7, 1, n)
        x = np.log10(lrs)
        fall, start = rng.uniform(0.2, 0.9), rng.uniform(0.1, 5)
        centre, width = rng.uniform(-5, -1), rng.uniform(0.3, 2.5)
        clean = start * (1 - fall / (1 + np.exp(-(x - centre) / (width / 4))))
        blow = rng.uniform(centre + 0.3, 1.5)
        y = clean.copy()
        if rng.random() < 0.8:
            y = y + np.where(x > blow, start * (np.exp((x - blow) * rng.uniform(2, 8)) - 1), 0)
        actual = (clean[0] - clean[x <= blow].min()) / clean[0]
        if actual < 0.2:
            continue
        noise = rng.uniform(0, 0.25) * start * (1 - fall)
        y = np.abs(y + noise * rng.standard_normal(n))
        counted += 1
        s = S.suggest(lrs, y)
        if s.lr is None:
            refused += 1
            examples.append((n, round(float(actual), 2), round(noise / start, 3),
                             round(centre, 2), round(width, 2), round(blow, 2), s.reason[:100]))
    return refused, counted, examples


def raw_fall(losses) -> float:
    from lrkit import suggest as S

    y = np.asarray(losses, dtype=float)
    y = y[np.isfinite(y)]
    n = S._blowup(y)
    k0 = S._start_block(n)
    start = float(np.median(y[:k0]))
    tail = [float(np.median(y[max(0, i - 2):i + 1])) for i in range(k0, n)]
    return (start - min(tail)) / start if tail else 0.0


def real() -> tuple[int, list[tuple]]:
    import torch

    import lrkit
    from heldout_random_tasks import draw
    from lrkit import suggest as S

    torch.set_num_threads(1)
    rows = []
    for task, curves in json.loads((HERE / "results" / "curves.json").read_text()).items():
        for c in curves:
            s = S.suggest(np.array(c["lrs"]), np.array(c["losses"]))
            rows.append((task, c["seed"], s.lr, raw_fall(c["losses"])))
    for setseed, arch, count in ((0, "mlp", 30), (1, "mlp", 30), (10, "cnn", 15),
                                 (2, "mlp", 30), (11, "cnn", 15)):
        rng = random.Random(setseed)
        for i in range(count):
            cfg, task = draw(rng, 1000 * setseed + i, arch)
            for seed in (0, 1):
                r = lrkit.find_lr(task, seed=seed, progress=False)
                rows.append((f"{arch}-{setseed} task {i} ({cfg['data']}, {cfg['opt']})", seed,
                             r.suggestion.lr, raw_fall(r.losses)))
    return len(rows), [r for r in rows if r[2] is None]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--synthetic", type=int, default=4000)
    p.add_argument("--real", action="store_true")
    a = p.parse_args(argv)
    if a.synthetic:
        refused, counted, examples = synthetic(a.synthetic)
        print(f"synthetic: no LR on {refused} of {counted} curves that fall by >= 20% "
              "before the blow-up")
        for e in examples[:10]:
            print("  ", e)
    if a.real:
        n, none = real()
        print(f"real sweeps: no LR on {len(none)} of {n}")
        for name, seed, _, fall in none:
            print(f"  {name} seed {seed}: raw fall {100 * fall:.0f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
