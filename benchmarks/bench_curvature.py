"""Curvature benchmark: accuracy, safe LR vs the oracle, stability tests, HVP cost, batch size.

    python benchmarks/bench_curvature.py [--part accuracy cost safe batch] [--out benchmarks/results]

Parts:
- ``accuracy``: on ``logreg`` (exact L), Lanczos and power iteration against L and the closed-form
  Hessian at the starting point; HVPs used.
- ``cost``: one HVP against one training step (forward, backward, optimizer step) on the same
  batch, per task, median of repeats, in one run (ratio).
- ``safe``: per task (every ``lrkit.tasks.names()``): the safe LR at initialisation for the
  recipe's optimizer, the stability test (short constant-LR runs), the sharpness tracked along a
  full run at the oracle's best LR, next to the oracle's best LR and good band (cached oracles
  in ``benchmarks/results/oracle-<task>.json``).
- ``batch``: the oracle of ``digits`` at 4x the batch size (same epochs: 75 steps of 128), the
  best LR's move against the linear and square-root rules, and the gradient noise scale.

Writes ``curvature.json`` and ``curvature-*.png`` to ``--out``; one thread per process.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from lrkit import bench, curvature as C, tasks, train

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def digits_b128() -> tasks.Task:
    """``digits`` at 4x the batch size (128), the same epochs (75 steps)."""
    return C.batch_scaled(tasks.get("digits"), 4)


def digits_b128_s300() -> tasks.Task:
    """``digits`` at 4x the batch size (128), the same steps (300: 4x the epochs)."""
    return C.batch_scaled(tasks.get("digits"), 4, keep="steps")


def cached_oracle(name: str) -> bench.Oracle | None:
    """The oracle of ``name`` from benchmarks/results (never re-run here)."""
    path = RESULTS / f"oracle-{name}.json"
    if path.exists():
        return bench.Oracle.from_dict(json.loads(path.read_text()))
    return None


# ----------------------------------------------------------------------------------- parts
def accuracy() -> dict:
    task = tasks.get("logreg")
    model = task.build_model(0)
    batch = next(task.batches(0))
    x = batch[0]
    xt = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    z = model(x).squeeze(1).detach()
    s = torch.sigmoid(z) * (1 - torch.sigmoid(z))
    exact = float(torch.linalg.eigvalsh(xt.T @ (s[:, None] * xt) / len(x)
                                        + 0.1 * torch.eye(31, dtype=x.dtype))[-1])
    out = {"L": task.smoothness, "exact_at_init": exact, "methods": {}}
    for method in ("lanczos", "power"):
        for tol in (1e-3, 1e-6):
            t0 = time.perf_counter()
            r = C.top_eigenvalue(model, task.loss, [batch], iters=30, tol=tol, method=method)
            out["methods"][f"{method} tol={tol:g}"] = {
                "eigenvalue": r.eigenvalue, "n_hvp": r.n_hvp, "converged": r.converged,
                "rel_err_vs_L": r.eigenvalue / task.smoothness - 1,
                "rel_err_vs_exact": r.eigenvalue / exact - 1,
                "seconds": time.perf_counter() - t0}
    return out


def _interleaved(fns: dict, repeats: int) -> dict:
    """Median seconds of each callable, timed in turn within each repeat (so that load from
    other processes on a shared machine hits them alike)."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def cost(names: list[str], repeats: int = 40) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    out = {}
    for name in names:
        task = tasks.get(name)
        model = task.build_model(0)
        batch = next(task.batches(0))
        opt = task.recipe.make_optimizer(model.parameters(), task.recipe.default_lr * 1e-3)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            task.loss(model, batch).backward()
            opt.step()

        notes: list[str] = []
        with C._mode(model, "train", notes):
            auto = C._Operator(model, task.loss, [batch], hvp="auto", weight_decay=None,
                               scale=None, notes=notes)
            fd = C._Operator(model, task.loss, [batch], hvp="finite-difference",
                             weight_decay=None, scale=None, notes=notes)
            v = torch.randn(auto.n, dtype=auto.dtype)
            auto(v)  # settles the method
            t = _interleaved({"step": step, "hvp": lambda: auto(v), "hvp_fd": lambda: fd(v)},
                             repeats)
        row = {"step_ms": 1e3 * t["step"], "hvp_ms": 1e3 * t["hvp"], "hvp_fd_ms": 1e3 * t["hvp_fd"],
               "hvp_ratio": t["hvp"] / t["step"], "hvp_fd_ratio": t["hvp_fd"] / t["step"],
               "hvp_method": auto.method, "repeats": repeats}
        if auto.method == "finite-difference":  # the math kernel has double backward
            with sdpa_kernel(SDPBackend.MATH), C._mode(model, "train", notes):
                db = C._Operator(model, task.loss, [batch], hvp="double-backward",
                                 weight_decay=None, scale=None, notes=notes)
                tm = _interleaved({"step": step, "hvp": lambda: db(v)}, repeats)
            row["math_kernel"] = {"step_ms": 1e3 * tm["step"], "hvp_ms": 1e3 * tm["hvp"],
                                  "hvp_ratio": tm["hvp"] / tm["step"]}
        out[name] = row
        print(f"cost {name}: step {row['step_ms']:.2f} ms, HVP {row['hvp_ms']:.2f} ms "
              f"({row['hvp_method']}) ratio {row['hvp_ratio']:.2f}; finite-difference HVP ratio "
              f"{row['hvp_fd_ratio']:.2f}" + (f"; math kernel double backward ratio "
              f"{row['math_kernel']['hvp_ratio']:.2f}" if "math_kernel" in row else ""),
              flush=True)
    return out


def safe(names: list[str], plots: Path) -> dict:
    out = {}
    for name in names:
        task = tasks.get(name)
        t0 = time.perf_counter()
        s = C.safe_lr(task, seed=0)
        t_safe = time.perf_counter() - t0
        o = cached_oracle(name)
        factors = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0) if name != "logreg" else (
            0.5, 0.9, 1.1, 2.0, 3.0, 4.0, 6.0, 8.0, 16.0)
        t0 = time.perf_counter()
        test = C.stability_test(task, safe=s, factors=factors, progress=True)
        t_test = time.perf_counter() - t0
        test.plot(str(plots / f"curvature-stability-{name}.png"), oracle=o)
        row = {"safe": s.to_dict(), "seconds_safe": t_safe, "test": test.to_dict(),
               "seconds_test": t_test}
        for r in row["test"]["runs"]:
            r["losses"] = r["losses"][:: max(1, len(r["losses"]) // 50)]  # keep the file small
        if o is not None:
            row["oracle"] = {"best_lr": o.best_lr, "band": list(o.band), "steps": o.steps,
                             "seeds": len(o.seeds)}
            # sharpness along a full run at the oracle's best LR (preconditioned for Adam)
            fixed = C._take(task.batches(10_000), C._default_batches(task))
            tracker = C.SharpnessTracker(task.loss, fixed, every=max(1, task.recipe.steps // 6),
                                         iters=20)
            t0 = time.perf_counter()
            res = train.run(task, o.best_lr, seed=0, callbacks=[tracker], eval_split="test")
            peak = o.best_lr
            row["track"] = {**tracker.to_dict(), "peak_lr": peak, "metric": res.metric,
                            "seconds": time.perf_counter() - t0,
                            "ratio_to_peak": [lam * peak / s.constant for lam in tracker.sharpness]}
            tracker.plot(str(plots / f"curvature-sharpness-{name}.png"),
                         title=f"{name}: sharpness at the oracle's best LR {peak:.3g}")
        out[name] = row
        msg = (f"safe {name}: λ {s.eigen.eigenvalue:.4g} ({s.eigen.hvp}, {s.eigen.n_hvp} HVPs), "
               f"safe lr {s.lr:.4g}; largest converged factor {test.largest_stable_factor}")
        if o is not None:
            msg += f"; oracle best {o.best_lr:.3g} band {o.band[0]:.3g}..{o.band[1]:.3g}"
        print(msg, flush=True)
    return out


#: (base task, "bench_curvature:<factory>", what is kept) for the batch-size check
BATCH_CHECKS = [("digits", "digits_b128", "same epochs"),
                ("digits", "digits_b128_s300", "same steps"),
                ("mnist5k", "mnist5k_b256", "same epochs"),
                ("mnist1d", "mnist1d_b256", "same epochs")]


def mnist5k_b256() -> tasks.Task:
    """``mnist5k`` (Adam) at 4x the batch size (256), the same epochs (75 steps)."""
    return C.batch_scaled(tasks.get("mnist5k"), 4)


def mnist1d_b256() -> tasks.Task:
    """``mnist1d`` (SGD momentum + cosine) at 4x the batch size (256), the same epochs."""
    return C.batch_scaled(tasks.get("mnist1d"), 4)


def _noise(task: tasks.Task, lr: float) -> dict:
    """B_simple at initialisation and after a full run at ``lr`` (the recipe's schedule)."""
    ns = {}
    for when in ("init", "trained"):
        model = task.build_model(0)
        if when == "trained":
            opt = task.recipe.make_optimizer(model.parameters(), lr)
            train.fit(model, opt, task.batches(0), num_steps=task.recipe.steps, step_fn=task.loss,
                      schedule=task.recipe.make_schedule(lr))
        ns[when] = C.noise_scale(model, task.loss, task.batches(123), num_batches=64).to_dict()
        print(f"noise scale {task.name} ({when}): B_simple {ns[when]['b_simple']:.1f}", flush=True)
    return ns


def batch(workers: int) -> dict:
    sys.path.insert(0, str(HERE))  # workers rebuild the task from "bench_curvature:..."
    out: dict = {}
    noise: dict = {}
    for base_name, factory, label in BATCH_CHECKS:
        base = cached_oracle(base_name)
        bt = tasks.get(base_name)
        o = bench.oracle(f"bench_curvature:{factory}", points=25, step_decades=0.25,
                         seeds=(0, 1, 2, 3, 4), workers=workers, progress=True)
        (RESULTS / f"curvature-oracle-{o.task}.json").write_text(json.dumps(o.to_dict(), indent=1))
        b0 = bt.recipe.batch_size
        lin = C.scale_lr(base.best_lr, b0, 4 * b0)
        sq = C.scale_lr(base.best_lr, b0, 4 * b0, rule="sqrt")
        out[o.task] = {"base": base_name, "label": label, "optimizer": bt.recipe.optimizer,
                       "base_batch": b0, "base_steps": base.steps, "base_best_lr": base.best_lr,
                       "base_band": list(base.band), "base_best_metric": base.best_metric,
                       "batch": 4 * b0, "steps": o.steps, "best_lr": o.best_lr,
                       "band": list(o.band), "best_metric": o.best_metric,
                       "moved": o.best_lr / base.best_lr, "linear": lin, "sqrt": sq,
                       "linear_in_band": o.in_band(lin), "sqrt_in_band": o.in_band(sq),
                       "base_best_in_band": o.in_band(base.best_lr),
                       "grid": len(o.grid), "seeds": len(o.seeds)}
        print(f"batch {o.task}: best {o.best_lr:.3g} band {o.band[0]:.3g}..{o.band[1]:.3g} "
              f"(batch {b0}: {base.best_lr:.3g}); linear {lin:.3g}, sqrt {sq:.3g}", flush=True)
        if base_name not in noise:
            noise[base_name] = _noise(bt, base.best_lr)
    _plot_batch(out, RESULTS / "curvature-batch.png")
    return {"checks": out, "noise_scale": noise}


def _plot_batch(out: dict, path: Path) -> None:
    from lrkit._figures import new_figure

    order = [c[0] for c in BATCH_CHECKS]
    bases = sorted({r["base"] for r in out.values()}, key=order.index)
    fig, axes = new_figure((5.5 * len(bases), 4), 1, len(bases))
    for ax, name in zip(np.atleast_1d(axes), bases):
        base = cached_oracle(name)
        ax.errorbar(base.grid, base.mean, yerr=base.std, fmt="o-", ms=3,
                    label=f"batch {tasks.get(name).recipe.batch_size}, {base.steps} steps")
        rows = [(k, r) for k, r in out.items() if r["base"] == name]
        for i, (k, r) in enumerate(rows):
            o = bench.Oracle.from_dict(json.loads((RESULTS / f"curvature-oracle-{k}.json").read_text()))
            ax.errorbar(o.grid, o.mean, yerr=o.std, fmt="o-", ms=3, color=f"C{i + 1}",
                        label=f"batch {r['batch']}, {o.steps} steps")
        r = rows[0][1]
        ax.axvline(r["linear"], color="k", ls="--", label=f"linear rule {r['linear']:.3g}")
        ax.axvline(r["sqrt"], color="gray", ls="--", label=f"sqrt rule {r['sqrt']:.3g}")
        ax.set_xscale("log")
        bests = [base.best_metric] + [x["best_metric"] for _, x in rows]
        ax.set_ylim(min(bests) - 0.1, max(bests) + 0.02)  # accuracy tasks
        ax.set_xlim(base.best_lr / 100, base.best_lr * 30)
        ax.set_xlabel("learning rate")
        ax.set_ylabel(f"{base.metric_name} (mean ± std, 5 seeds)")
        ax.set_title(f"{name} ({r['optimizer']}): oracle at 4x batch")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report(data: dict) -> str:
    """Markdown tables of curvature.json (the figures of benchmarks/results/curvature.md)."""
    lines = []
    acc = data.get("accuracy")
    if acc:
        lines += ["### Accuracy on logreg (exact L = %.4f; closed-form λ_max at the start %.4f)"
                  % (acc["L"], acc["exact_at_init"]), "",
                  "| method | λ | HVPs | converged | error vs exact λ at start | vs L |",
                  "|---|---:|---:|:---:|---:|---:|"]
        for k, r in acc["methods"].items():
            lines.append(f"| {k} | {r['eigenvalue']:.5f} | {r['n_hvp']} | "
                         f"{'yes' if r['converged'] else 'no'} | {r['rel_err_vs_exact']:+.1e} | "
                         f"{r['rel_err_vs_L']:+.2%} |")
        lines.append("")
    if data.get("cost"):
        lines += ["### Cost: one HVP vs one training step on the same batch (median, interleaved)", "",
                  "| task | step ms | HVP ms | HVP method | HVP / step | finite-diff HVP / step |",
                  "|---|---:|---:|---|---:|---:|"]
        for k, r in data["cost"].items():
            extra = (f" (double backward through the math kernel: "
                     f"{r['math_kernel']['hvp_ratio']:.2f}x)" if "math_kernel" in r else "")
            lines.append(f"| {k} | {r['step_ms']:.2f} | {r['hvp_ms']:.2f} | {r['hvp_method']} | "
                         f"**{r['hvp_ratio']:.2f}x**{extra} | {r['hvp_fd_ratio']:.2f}x |")
        lines.append("")
    if data.get("safe"):
        lines += ["### Safe LR at initialisation vs the oracle", "",
                  "| task | rule | λ at init (HVPs, method) | safe lr at init | stability test: converged factors "
                  "| largest converged lr | oracle best lr | good band | best / safe "
                  "| sharpness·best_lr/c along the best run |",
                  "|---|---|---|---:|---|---:|---:|---|---:|---|"]
        for k, r in data["safe"].items():
            s, e = r["safe"], r["safe"]["eigen"]
            conv = ", ".join(f"{x['factor']:g}" for x in r["test"]["runs"] if x["converged"]) or "none"
            fail = ", ".join(f"{x['factor']:g}" for x in r["test"]["runs"] if not x["converged"])
            ok = [x["lr"] for x in r["test"]["runs"] if x["converged"]]
            top = f"{max(ok):.3g}" if ok else "-"
            row = (f"| {k} | {s['formula'].split(',')[0]} ({s['optimizer']}) | {e['eigenvalue']:.4g} "
                   f"({e['n_hvp']}, {e['hvp']}) | {s['lr']:.3g} | yes: {conv}; no: {fail or '-'} "
                   f"| {top} |")
            if "oracle" in r:
                o = r["oracle"]
                ratio = " → ".join(f"{x:.2f}" for x in r["track"]["ratio_to_peak"])
                row += (f" {o['best_lr']:.3g} | {o['band'][0]:.3g} .. {o['band'][1]:.3g} | "
                        f"{o['best_lr'] / s['lr']:.3g} | {ratio} |")
            else:
                row += " (no cached oracle) | | | |"
            lines.append(row)
        lines.append("")
    b = data.get("batch")
    if b and "checks" in b:
        lines += ["### Batch size: the oracle at 4x the batch size (25 LRs x 5 seeds each)", "",
                  "| task (optimizer) | batch, steps | best lr | good band | best metric | moved "
                  "| linear rule (in band?) | sqrt rule (in band?) | old best in band? |",
                  "|---|---|---:|---|---:|---:|---|---|---|"]
        yn = lambda v: "yes" if v else "no"  # noqa: E731
        seen = set()
        for k, r in b["checks"].items():
            if r["base"] not in seen:
                seen.add(r["base"])
                lines.append(f"| {r['base']} ({r['optimizer']}) | {r['base_batch']}, "
                             f"{r['base_steps']} (cached oracle) | {r['base_best_lr']:.3g} | "
                             f"{r['base_band'][0]:.3g} .. {r['base_band'][1]:.3g} | "
                             f"{r['base_best_metric']:.4f} | | | | |")
            lines.append(f"| {k} ({r['label']}) | {r['batch']}, {r['steps']} | {r['best_lr']:.3g} | "
                         f"{r['band'][0]:.3g} .. {r['band'][1]:.3g} | {r['best_metric']:.4f} | "
                         f"**{r['moved']:.2f}x** | {r['linear']:.3g} ({yn(r['linear_in_band'])}) | "
                         f"{r['sqrt']:.3g} ({yn(r['sqrt_in_band'])}) | {yn(r['base_best_in_band'])} |")
        lines += ["", "| task | B_simple at init | B_simple after a run at the best LR | batches |",
                  "|---|---:|---:|---|"]
        for k, ns in b["noise_scale"].items():
            i, t = ns["init"], ns["trained"]
            show = lambda r: (f"{r['b_simple']:.0f}" if math.isfinite(r["b_simple"])  # noqa: E731
                              else f"> {r['batch_big']} (‖G‖² estimate {r['grad_norm_sq']:.2g} "
                                   f"≤ 0: not resolved)")
            lines.append(f"| {k} | {show(i)} | {show(t)} | "
                         f"{i['n_batches']} batches of {i['batch_small']} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--part", nargs="+", default=["accuracy", "cost", "safe", "batch"],
                   help="accuracy cost safe batch (and report: print the tables only)")
    p.add_argument("--task", nargs="+", default=None, help="tasks (default: all built-in)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args()
    torch.set_num_threads(1)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "curvature.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    names = args.task or tasks.names()
    data["machine"] = bench.machine()
    data["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    t0 = time.perf_counter()
    if "accuracy" in args.part:
        data["accuracy"] = accuracy()
        print(json.dumps(data["accuracy"], indent=1), flush=True)
    if "cost" in args.part:
        data.setdefault("cost", {}).update(cost(names))
    if "safe" in args.part:
        data.setdefault("safe", {}).update(safe(names, out_dir))
    if "batch" in args.part:
        data["batch"] = batch(args.workers)
    path.write_text(json.dumps(data, indent=1))
    print(report(data))
    print(f"wrote {path} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
