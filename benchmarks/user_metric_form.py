"""Is tune's decision invariant to an affine change of the metric? The user's choice of
accuracy or error rate, MSE or ``1 - MSE`` (R^2 on standardised targets), MSE in other units,
or a loss plus a constant. Each form of the task is tuned with the same seed; each line prints
every form's decision and its test metric mapped back to the original form.

    python benchmarks/user_metric_form.py digits 0,1,2
    python benchmarks/user_metric_form.py diabetes 0,1,2
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lrkit import tasks  # noqa: E402
from lrkit.tune import tune  # noqa: E402

#: task -> forms (a, b, name): the metric becomes a * metric + b
FORMS = {
    "digits": [(1, 0, "acc"), (-1, 1, "err"), (-100, 100, "err%")],
    "diabetes": [(1, 0, "mse"), (100, 0, "mse*100"), (-1, 1, "1-mse"), (1, 10, "mse+10")],
    "cancer-small": [(1, 0, "ce"), (1, 1, "ce+1"), (-1, 0, "-ce")],
    "charlm": [(1, 0, "bpc"), (0.693147, 0, "nats")],
}


def transformed(t: tasks.Task, a: float, b: float, name: str) -> tasks.Task:
    """``t`` scored by ``a * metric + b`` (the direction flips with the sign of ``a``)."""
    ev = t.evaluate

    def evaluate(m: torch.nn.Module, split: str) -> float:
        return a * ev(m, split) + b

    hib = t.higher_is_better if a > 0 else not t.higher_is_better
    return dataclasses.replace(t, name=name, evaluate=evaluate, higher_is_better=hib,
                               worst=a * t.worst + b, metric=name)


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    base, seeds = argv[0], [int(s) for s in argv[1].split(",")]
    t = tasks.get(base)
    for s in seeds:
        out = []
        for a, b, name in FORMS[base]:
            with tempfile.TemporaryDirectory() as d:
                r = tune(transformed(t, a, b, name), seed=s, out=d, progress=False)
            out.append(f"{name}: {r.family} {r.lr:.4g} -> {(r.metric - b) / a:.4f}")
        print(base, s, " | ".join(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
