"""The range test on a GPU: device, AMP, peak memory, per-step overhead, bitwise restore.

One prepared script for a CUDA machine (``python benchmarks/gpu_check.py``); on a machine
without CUDA, ``--smoke`` runs the same code on the CPU with tiny sizes (the numbers then mean
nothing). Prints one JSON object per check and writes them all to ``--out`` (JSON).

1. device: a CUDA model, a ``DataLoader`` of CPU tensors, no ``device=`` (batches follow the
   model), in fp32, AMP fp16 (GradScaler) and AMP bf16.
2. memory: peak ``torch.cuda.max_memory_allocated`` of ``find_lr`` against plain training of
   the same model with Adam (state already built), for a ~270M-parameter MLP; goal: the excess is
   at most 1% of the parameters' bytes.
3. overhead: ``find_lr``'s sweep time per step against plain steps that call ``loss.item()``
   (same model, batches and number of steps), as a ratio.
4. bitwise restore with ``torch.use_deterministic_algorithms(True)``: training after ``find_lr``
   equals training without it, bit for bit (fp32 and AMP fp16).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from lrkit.finder import find_lr  # noqa: E402

RESULTS: dict = {}


def report(check: str, **values) -> None:
    RESULTS[check] = values
    print(json.dumps({"check": check, **values}), flush=True)


def mlp(width: int, depth: int, n_in: int = 256, n_out: int = 10) -> nn.Module:
    layers: list[nn.Module] = [nn.Linear(n_in, width), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.ReLU()]
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


def loader(n: int, batch: int, seed: int = 0) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 256, generator=g)
    y = (x[:, :10] * 3).argmax(1)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch,
                                       shuffle=True, generator=torch.Generator().manual_seed(seed))


def check_device(dev: torch.device) -> None:
    for amp in (False, "fp16", "bf16"):
        torch.manual_seed(0)
        model = mlp(512, 3).to(dev)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        before = [p.detach().clone() for p in model.parameters()]
        res = find_lr(model, opt, loader(4096, 128), F.cross_entropy, num_iter=100, amp=amp)
        same = all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
        report(f"device_amp_{amp or 'fp32'}", stop=res.stop_reason, points=len(res.lrs),
               lr=res.lr, finite_start=bool(torch.isfinite(torch.tensor(res.losses[0]))),
               weights_restored=same)


def check_memory(dev: torch.device, width: int, depth: int) -> None:
    torch.manual_seed(0)
    model = mlp(width, depth).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    data = loader(2048, 64)

    def plain(steps: int) -> None:
        it = iter(data)
        for _ in range(steps):
            x, y = next(it)
            x, y = x.to(dev), y.to(dev)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            loss.item()

    plain(3)  # Adam's state exists, as in a user's run
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    plain(5)
    peak_plain = torch.cuda.max_memory_allocated() if dev.type == "cuda" else 0
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    find_lr(model, opt, data, F.cross_entropy, num_iter=20, start_lr=1e-6, end_lr=1e-3)
    peak_find = torch.cuda.max_memory_allocated() if dev.type == "cuda" else 0
    param_bytes = 4 * n_params
    excess = peak_find - peak_plain
    report("memory", params=n_params, param_bytes=param_bytes, peak_plain=peak_plain,
           peak_find_lr=peak_find, excess_bytes=excess,
           excess_fraction_of_params=excess / param_bytes,
           goal_met=excess <= 0.01 * param_bytes)


def check_overhead(dev: torch.device, steps: int) -> None:
    torch.manual_seed(0)
    model = mlp(1024, 3).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    batches = [(x, y) for x, y in loader(256 * steps, 256)]

    def plain() -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for x, y in batches[:steps]:
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            loss.item()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    def ranged() -> tuple[float, float]:
        t = time.perf_counter()
        res = find_lr(model, opt, batches, F.cross_entropy, num_iter=steps, start_lr=1e-7,
                      end_lr=1e-2, diverge_factor=1e9)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return res.wall_time, time.perf_counter() - t

    plain(), ranged()  # warm-up
    p = sorted(plain() for _ in range(5))[2]
    r = sorted(ranged() for _ in range(5))[2]
    report("overhead", steps=steps, plain_s=p, find_lr_sweep_s=r[0], find_lr_total_s=r[1],
           ratio_sweep=r[0] / p, ratio_total_with_snapshot=r[1] / p)


def check_bitwise(dev: torch.device) -> None:
    torch.use_deterministic_algorithms(True)
    try:
        for amp in (False, "fp16"):
            outs = []
            for with_find in (False, True):
                torch.manual_seed(0)
                model = mlp(512, 3).to(dev)
                opt = torch.optim.Adam(model.parameters(), lr=1e-3)
                scaler = torch.amp.GradScaler(dev.type) if amp == "fp16" and dev.type == "cuda" \
                    else None
                data = loader(2048, 128, seed=1)
                if with_find:
                    find_lr(model, opt, data, F.cross_entropy, num_iter=50, amp=amp,
                            scaler=scaler)
                torch.manual_seed(123)
                for x, y in data:
                    x, y = x.to(dev), y.to(dev)
                    opt.zero_grad(set_to_none=True)
                    with torch.autocast(dev.type, dtype=torch.float16 if dev.type == "cuda"
                                        else torch.bfloat16, enabled=bool(amp)):
                        loss = F.cross_entropy(model(x), y)
                    if scaler is not None:
                        scaler.scale(loss).backward()
                        scaler.step(opt)
                        scaler.update()
                    else:
                        loss.backward()
                        opt.step()
                outs.append([p.detach().cpu().clone() for p in model.parameters()])
            same = all(torch.equal(a, b) for a, b in zip(*outs))
            report(f"bitwise_restore_{amp or 'fp32'}", equal=same)
    finally:
        torch.use_deterministic_algorithms(False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    dev = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    report("machine", device=str(dev), torch=torch.__version__,
           name=torch.cuda.get_device_name() if dev.type == "cuda" else "cpu")
    check_device(dev)
    if dev.type == "cuda":
        check_memory(dev, 8192, 4)  # 4 x 8192^2 + ... ~ 270M parameters
    else:
        check_memory(dev, 64, 2)
    check_overhead(dev, 200 if dev.type == "cuda" else 20)
    check_bitwise(dev)
    if args.out:
        Path(args.out).write_text(json.dumps(RESULTS, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
