"""Where the one training loop's wall time goes on a GPU, against a user's plain loop.

A user's conv net (``gpu_check._cnn``) on the GPU, fed by a CPU ``DataLoader`` with worker
processes and pinned memory (``gpu_check._mnist_loaders``), SGD with Nesterov momentum; each
variant trains ``--steps`` steps from the same weights, the variants interleaved over
``--rounds`` rounds (median wall time, synchronised). Variants:

- ``plain``: the user's loop, no host sync;
- ``plain+item``: the same with ``loss.item()`` after backward (as most tutorials log);
- ``plain+item+norm``: also the global gradient norm as a float (``get_total_norm``);
- ``fit``: ``lrkit.train.fit`` with no callback;
- ``fit+norm``: ``fit(track_grad_norm=True)``;
- ``fit+final``: what tune's final run adds: the gradient norm, the monitor and a val
  evaluation every ``steps / 25`` steps (``tune._Recorder``);
- ``(sync per tensor)``: the last two with the gradient norm as lrkit computed it before
  (a host sync per parameter tensor).

Usage: ``python benchmarks/gpu_loop_overhead.py [--steps 400] [--rounds 3] [--variants a,b]
[--smoke]``; one JSON line per variant with its median wall time and its ratio to ``plain``. An
older lrkit is measured by running a copy of this script (and ``gpu_check.py``) from beside it
(``.old/benchmarks/``, as ``gpu_session.sh`` does).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_check import _accuracy, _cnn, _mnist_loaders, plain_loop  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU")
    ap.add_argument("--variants", default=None, help="comma-separated subset (default: all)")
    a = ap.parse_args(argv)
    import lrkit.train as train
    from lrkit.monitor import Monitor
    from lrkit.tasks import from_torch
    from lrkit.tune import _Recorder

    dev = torch.device("cuda" if torch.cuda.is_available() and not a.smoke else "cpu")
    steps, width = (20, 4) if a.smoke else (a.steps, a.width)
    train_dl, val_dl, test_dl = _mnist_loaders(256, 2)
    torch.manual_seed(0)
    init = _cnn(width).to(dev).state_dict()

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def fresh():
        m = _cnn(width).to(dev)
        m.load_state_dict(init)
        return m, torch.optim.SGD(m.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def plain(item: bool, norm: bool):
        def after_backward(m, loss):
            if item:
                float(loss.item())
            if norm:
                float(torch.nn.utils.get_total_norm([p.grad for p in m.parameters()]))

        def go(m, opt):
            plain_loop(m, opt, train_dl, dev, steps,
                       after_backward=after_backward if item or norm else None)
        return go

    def fit(norm: bool, final: bool):
        def go(m, opt):
            cbs = []
            if final:
                task = from_torch(m, opt, train_dl, F.cross_entropy, val_loader=val_dl,
                                  steps=steps, metric_fn=_accuracy, higher_is_better=True)
                cbs = [_Recorder(task, max(1, steps // 25),
                                 Monitor(val_mode="max", total_steps=steps))]
            train.fit(m, opt, train_dl, num_steps=steps, loss_fn=F.cross_entropy,
                      callbacks=cbs, track_grad_norm=norm, device=dev)
        return go

    def per_tensor_sync(go):
        """``go`` with the gradient norm as lrkit computed it before 2026-11-26 (one host sync
        per parameter tensor)."""
        def patched(m, opt):
            old = train.global_grad_norm
            train.global_grad_norm = lambda ps: float(torch.linalg.vector_norm(torch.stack(
                [p.grad.detach().norm(2).float().cpu() for p in ps if p.grad is not None]), 2))
            try:
                go(m, opt)
            finally:
                train.global_grad_norm = old
        return patched

    variants = {"plain": plain(False, False), "plain+item": plain(True, False),
                "plain+item+norm": plain(True, True), "fit": fit(False, False),
                "fit+norm": fit(True, False), "fit+final": fit(True, True),
                "fit+norm (sync per tensor)": per_tensor_sync(fit(True, False)),
                "fit+final (sync per tensor)": per_tensor_sync(fit(True, True))}
    if a.variants:
        variants = {k: variants[k] for k in a.variants.split(",")}
    walls: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(a.rounds + 1):  # the first round warms up (cuDNN autotune, workers)
        for name, go in variants.items():
            m, opt = fresh()
            sync()
            t = time.perf_counter()
            go(m, opt)
            sync()
            walls[name].append(time.perf_counter() - t)
    base = statistics.median(walls["plain"][1:])
    for name, w in walls.items():
        med = statistics.median(w[1:])
        print(json.dumps({"check": "loop_overhead", "lrkit": str(Path(train.__file__).parents[1]),
                          "variant": name, "device": str(dev),
                          "steps": steps, "median_s": med, "ms_per_step": 1e3 * med / steps,
                          "ratio": med / base}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
