"""Where SGD-HD / Adam-HD spend their extra time on a GPU: the hypergradient's dot product.

``python benchmarks/gpu_hd_dot.py`` on a CUDA machine (``--smoke``: tiny sizes on the CPU).
Times ways of computing ``Σ_i a_i·b_i`` over a model's gradient tensors (CUDA events, median of
repeats) and the whole HD optimizer step with each, against the base optimizer's step; prints
one JSON object per measurement.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from lrkit.optim import hd as H  # noqa: E402


def dot_cublas(a, b):
    return torch.stack([torch.dot(x.reshape(-1), y.reshape(-1)) for x, y in zip(a, b)]).sum()


def dot_mul_sum(a, b):
    return torch.stack([(x * y).sum() for x, y in zip(a, b)]).sum()


def dot_chunked(a, b, chunk=1 << 20):
    parts = []
    for x, y in zip(a, b):
        x, y = x.reshape(-1), y.reshape(-1)
        for i in range(0, x.numel(), chunk):
            parts.append(torch.dot(x[i:i + chunk], y[i:i + chunk]))
    return torch.stack(parts).sum()


def dot_matmul(a, b):
    return torch.stack([(x.reshape(1, -1) @ y.reshape(-1, 1)).reshape(()) for x, y in
                        zip(a, b)]).sum()


def dot_vecdot2d(a, b):
    out = []
    for x, y in zip(a, b):
        n = x.numel()
        k = 1024 if n % 1024 == 0 else 1
        out.append(torch.linalg.vecdot(x.reshape(-1, k), y.reshape(-1, k)).sum())
    return torch.stack(out).sum()


def dot_bmm_rows(a, b):
    out = []
    for x, y in zip(a, b):
        if x.dim() < 2:
            out.append(torch.dot(x, y))
            continue
        x2, y2 = x.reshape(x.shape[0], 1, -1), y.reshape(y.shape[0], -1, 1)
        out.append(torch.bmm(x2, y2).sum())
    return torch.stack(out).sum()


VARIANTS = {"bmm_rows": dot_bmm_rows, "cublas_dot": dot_cublas, "mul_sum": dot_mul_sum, "chunked_dot_1M": dot_chunked,
            "matmul": dot_matmul, "vecdot_rows": dot_vecdot2d}


def timed(fn, reps: int, cuda: bool) -> float:
    for _ in range(3):
        fn()
    if cuda:
        torch.cuda.synchronize()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t)
    return sorted(out)[len(out) // 2] * 1e6


def pipelined(fn, steps: int, cuda: bool) -> float:
    """Per-call time of ``steps`` calls in a row with one synchronisation at the end (a training
    loop that never calls ``.item()``): host-side waits inside ``fn`` show here."""
    fn()
    out = []
    for _ in range(5):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(steps):
            fn()
        if cuda:
            torch.cuda.synchronize()
        out.append((time.perf_counter() - t) / steps)
    return sorted(out)[2] * 1e6


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    cuda = torch.cuda.is_available() and not args.smoke
    dev = torch.device("cuda" if cuda else "cpu")
    width = 4096 if cuda else 64
    shapes = [(width, 256), (width,), (width, width), (width,), (width, width), (width,),
              (width, width), (width,), (10, width), (10,)]
    g = torch.Generator(device=dev).manual_seed(0)
    a = [torch.randn(s, generator=g, device=dev) for s in shapes]
    b = [torch.randn(s, generator=g, device=dev) for s in shapes]
    ref = sum(float((x.double() * y.double()).sum()) for x, y in zip(a, b))
    n = sum(x.numel() for x in a)
    for name, fn in VARIANTS.items():
        us = timed(lambda: fn(a, b), 20, cuda)
        us_item = timed(lambda: float(fn(a, b)), 20, cuda)
        err = abs(float(fn(a, b)) - ref) / abs(ref)
        print(json.dumps({"dot": name, "elements": n, "us": us, "us_with_item": us_item,
                          "GBps": 8 * n / us / 1e3, "rel_err": err}), flush=True)
    params = [torch.zeros(s, device=dev, requires_grad=True) for s in shapes]
    makers = {"sgd": (lambda p: torch.optim.SGD(p, lr=1e-3), lambda p: H.SGDHD(p, lr=1e-3)),
              "sgd_momentum": (lambda p: torch.optim.SGD(p, lr=1e-3, momentum=0.9),
                               lambda p: H.SGDHD(p, lr=1e-3, momentum=0.9)),
              "adam": (lambda p: torch.optim.Adam(p, lr=1e-4), lambda p: H.AdamHD(p, lr=1e-4))}
    original = H._HDOptimizer._dot
    for oname, (base, hd) in makers.items():
        opt = base(params)
        sets = [a, b]
        state = {"i": 0}

        def step(o):
            for p, gr in zip(params, sets[state["i"] % 2]):
                p.grad = gr
            state["i"] += 1
            o.step()

        print(json.dumps({"opt": oname, "variant": "base", "step_us":
                          timed(lambda: step(opt), 20, cuda),
                          "pipelined_us": pipelined(lambda: step(opt), 20, cuda)}), flush=True)
        for name, fn in VARIANTS.items():
            H._HDOptimizer._dot = staticmethod(fn)
            opt = hd(params)
            print(json.dumps({"opt": oname, "variant": name, "step_us":
                              timed(lambda: step(opt), 20, cuda),
                              "pipelined_us": pipelined(lambda: step(opt), 20, cuda)}),
                  flush=True)
        H._HDOptimizer._dot = original
    return 0


if __name__ == "__main__":
    sys.exit(main())
