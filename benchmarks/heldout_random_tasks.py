"""``lrkit tune`` on random tasks no rule was designed on, against a full-run grid of each.

The built-in tasks are the development set; this draws set-ups from the class of problem
instead: a dataset that ships inside scikit-learn or lrkit (digits, wine, breast cancer, mnist1d,
diabetes regression), an MLP of random depth, width, activation and normalisation, a random
optimizer (SGD with or without momentum, Adam, AdamW, RMSprop), schedule (constant, step,
cosine, warmup-cosine, 1-cycle), batch size and run length. Each task's truth is a grid of full
runs of its own recipe (half-decade LRs over 5 decades around the optimizer's textbook default,
seeds 0-1); tune runs with seeds 0-1 at the default budget. Regret of tune's mean test metric
against the grid's best mean (negative: tune's schedule choice beat the recipe's grid), and
against the grid's best within the recipe's family at tune's own LR, are printed per task.

    python benchmarks/heldout_random_tasks.py --seed 0 --n 30 --out results/heldout-0.json
    python benchmarks/heldout_random_tasks.py --seed 0 --n 30 --out new.json \
        --truth results/heldout-0.json        # tune again on the same tasks, same grids
    python benchmarks/heldout_random_tasks.py --seed 0 --out val.json --val-oracle \
        --truth results/heldout-0.json        # the floor of choosing by validation
    python benchmarks/heldout_random_tasks.py --arch cnn --seed 10 --n 15 --out cnn-10.json
    python benchmarks/heldout_random_tasks.py --arch seq --seed 20 --n 10 --out seq-20.json

``--arch cnn`` draws small conv nets on digits' 8x8 images and MNIST-1D's signals; ``--arch
seq`` character LMs (LSTM, GRU or a small pre-LN transformer) on charlm's pydoc text, scored
in bits per character. The default (MLPs) draws the sets in ``results/heldout/random-*.json``.

Nothing here is fitted: it is a measurement of how far the built-in tasks' figures carry.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import random
import sys
import tempfile
import time
from typing import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

import lrkit
from lrkit import bench, train
from lrkit.tasks import Recipe, Task
from lrkit.tasks._data import (accuracy, seeded, split_evaluator, split_indices,
                               train_batches)

DEFAULT_LR = {"sgd": 0.1, "adam": 1e-3, "adamw": 1e-3, "rmsprop": 1e-3}


RESPLIT: int | None = None
"""Another partition of the same held-out examples into val and test (``None``: the one every
set was measured on). The train split, and so every trained model, stays the same: what moves
is which of the held-out examples tune chooses on and which score it (``heldout_fresh_seeds.py
--resplit``)."""


def _data(name: str) -> dict:
    """Standardised (train, val, test) splits as float32 / int64 (or float32 targets)."""
    return _splits(name, RESPLIT)


@functools.lru_cache(maxsize=None)
def _splits(name: str, resplit: int | None) -> dict:
    import sklearn.datasets as skd

    if name == "mnist1d":
        from lrkit.tasks import mnist1d

        d = mnist1d.load()
        return {k: (v[0].flatten(1), v[1]) for k, v in d.items()}
    loader = {"digits": skd.load_digits, "wine": skd.load_wine,
              "cancer": skd.load_breast_cancer, "diabetes": skd.load_diabetes}[name]
    x, y = loader(return_X_y=True)
    n = len(x)
    test, val = max(30, n // 4), max(30, n // 6)
    tr, va, te = split_indices(n, test=test, val=val, seed=1)
    if resplit is not None:
        pool = np.random.default_rng(resplit).permutation(np.concatenate([va, te]))
        va, te = np.sort(pool[:len(va)]), np.sort(pool[len(va):])
    mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-8
    x = torch.tensor((x - mu) / sd, dtype=torch.float32)
    if name == "diabetes":
        ym, ys = y[tr].mean(), y[tr].std()
        y = torch.tensor((y - ym) / ys, dtype=torch.float32)[:, None]
    else:
        y = torch.tensor(y, dtype=torch.int64)
    return {"train": (x[tr], y[tr]), "val": (x[va], y[va]), "test": (x[te], y[te])}


def _mlp(d_in: int, d_out: int, depth: int, width: int, act: str, norm: str,
         dropout: float) -> nn.Module:
    layers: list[nn.Module] = []
    d = d_in
    for _ in range(depth):
        layers.append(nn.Linear(d, width))
        if norm == "bn":
            layers.append(nn.BatchNorm1d(width))
        elif norm == "ln":
            layers.append(nn.LayerNorm(width))
        layers.append({"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}[act]())
        if dropout:
            layers.append(nn.Dropout(dropout))
        d = width
    layers.append(nn.Linear(d, d_out))
    return nn.Sequential(*layers)


class _ConvNet(nn.Module):
    """Conv blocks (3-wide kernels, optional BatchNorm, a 2x max-pool after each of the first
    two) on digits as 1x8x8 images or MNIST-1D as 1x40 signals, global average pooling and a
    linear head."""

    def __init__(self, image: bool, n_out: int, depth: int, width: int, act: str, norm: str,
                 dropout: float) -> None:
        super().__init__()
        conv, bn, pool = ((nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d) if image
                          else (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d))
        layers: list[nn.Module] = []
        c = 1
        for k in range(depth):
            layers.append(conv(c, width, 3, padding=1))
            if norm == "bn":
                layers.append(bn(width))
            layers.append({"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}[act]())
            if k < 2:
                layers.append(pool(2))
            c = width
        self.image = image
        self.body = nn.Sequential(*layers)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(width, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(len(x), 1, 8, 8) if self.image else x.view(len(x), 1, -1)
        h = self.body(x).flatten(2).mean(2)
        return self.head(self.drop(h))


def _recipe(cfg: dict, weight_decay: float) -> Recipe:
    """The drawn recipe: the optimizer at its textbook LR (SGD's momentum as drawn, AdamW's
    ``weight_decay``), the schedule (a warmup-cosine one warms up for a tenth of the run)."""
    opt = cfg["opt"]
    kwargs: dict = {}
    if opt == "sgd":
        kwargs["momentum"] = cfg["momentum"]
    if opt == "adamw":
        kwargs["weight_decay"] = weight_decay
    return Recipe(optimizer=opt, batch_size=cfg["batch"], steps=cfg["steps"],
                  default_lr=DEFAULT_LR[opt], optimizer_kwargs=kwargs, schedule=cfg["schedule"],
                  warmup_steps=cfg["steps"] // 10 if cfg["schedule"] == "warmup_cosine" else 0)


class _CharModel(nn.Module):
    """A character LM on the pydoc text: an LSTM or GRU (``kind``), or a pre-LN transformer of
    ``depth`` blocks (charlm's), ``width`` wide; logits over the next character."""

    def __init__(self, kind: str, depth: int, width: int, context: int) -> None:
        super().__init__()
        from lrkit.tasks.charlm import VOCAB, _Block

        self.kind = kind
        self.embed = nn.Embedding(len(VOCAB), width)
        if kind == "transformer":
            self.pos = nn.Parameter(torch.randn(context, width) * 0.02)
            self.body = nn.Sequential(*[_Block(width, 4) for _ in range(depth)])
            self.ln = nn.LayerNorm(width)
        else:
            rnn = nn.LSTM if kind == "lstm" else nn.GRU
            self.rnn = rnn(width, width, num_layers=depth, batch_first=True)
        self.head = nn.Linear(width, len(VOCAB))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx)
        if self.kind == "transformer":
            x = self.ln(self.body(x + self.pos[: idx.shape[1]]))
        else:
            x = self.rnn(x)[0]
        return self.head(x)


def _char_task(rng: random.Random, i: int) -> tuple[dict, Task]:
    """A random character LM on the pydoc text (charlm's data and splits), scored in bits per
    character on fixed val / test windows."""
    from lrkit.tasks import charlm
    from lrkit.tasks._data import next_token_cross_entropy

    opt = rng.choice(["sgd", "adam", "adamw", "adamw", "rmsprop"])
    cfg = dict(
        data="pydoc", arch="seq", opt=opt,
        momentum=rng.choice([0.0, 0.9, 0.9]) if opt == "sgd" else None,
        schedule=rng.choice(["constant", "constant", "step", "cosine", "warmup_cosine",
                             "onecycle"]),
        steps=rng.choice([150, 300, 600]), batch=rng.choice([16, 32, 64]),
        model=rng.choice(["lstm", "gru", "transformer"]), depth=rng.choice([1, 2]),
        width=rng.choice([32, 64, 128]), context=rng.choice([16, 32, 64]),
        scored="bits_per_char")
    recipe = _recipe(cfg, weight_decay=0.01)
    ctx = cfg["context"]
    build = functools.partial(_CharModel, cfg["model"], cfg["depth"], cfg["width"], ctx)

    def evaluate(m: nn.Module, split: str) -> float:
        x, y = charlm._eval_windows(split, ctx)
        was = m.training
        m.eval()
        try:
            with torch.no_grad():
                logits = m(x)
                nll = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                  y.reshape(-1))
        finally:
            m.train(was)
        return float(nll) / math.log(2.0)

    key = hashlib.sha1(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:10]
    task = Task(name=f"random{i}", version=key, description=json.dumps(cfg), recipe=recipe,
                metric="bits_per_char", higher_is_better=False,
                build_model=lambda seed: seeded(build, seed),
                batches=lambda seed: charlm._batches(seed, recipe.batch_size, ctx),
                loss=next_token_cross_entropy, evaluate=evaluate,
                train_size=(len(charlm.load()["train"]) - 1) // ctx, worst=math.inf)
    return cfg, task


def stored(sets: str, keep: Callable[[dict], bool], prefix: str = "random"
           ) -> list[tuple[str, int, int, dict]]:
    """``(set name, set seed, row, stored row)`` for the rows of the stored sets
    ``results/heldout/<prefix>-K.json`` (``sets``: comma-separated K) whose task ``keep(cfg)``
    accepts: what the analyses of the held-out sets re-run."""
    out = []
    for k in sets.split(","):
        name = f"{prefix}-{int(k)}"
        rows = json.loads((Path(__file__).parent / "results" / "heldout" / f"{name}.json")
                          .read_text())
        out += [(name, int(k), i, st) for i, st in enumerate(rows) if keep(st["cfg"])]
    return out


def pooled(fn: Callable, jobs: list, workers: int, out: Path | None = None) -> list:
    """``fn`` over ``jobs`` in ``workers`` forked processes (rows in the order they finish),
    kept as JSON in ``out`` when given: what the analyses of the held-out sets run."""
    import multiprocessing as mp

    with mp.get_context("fork").Pool(workers) as pool:
        rows = list(pool.imap_unordered(fn, jobs))
    if out is not None:
        out.write_text(json.dumps(rows))
    return rows


def task_at(seed: int, row: int, arch: str = "mlp") -> tuple[dict, Task]:
    """Row ``row`` of the set drawn with ``--seed seed`` (its tasks come in order from one RNG)."""
    rng = random.Random(seed)
    for i in range(row + 1):
        cfg, task = draw(rng, 1000 * seed + i, arch)
    return cfg, task


def draw(rng: random.Random, i: int, arch: str = "mlp") -> tuple[dict, Task]:
    """One random task and its description (``arch``: "mlp" on every dataset, "cnn" on
    digits' 8x8 images and MNIST-1D's signals, "seq": character LMs on the pydoc text)."""
    if arch == "seq":
        return _char_task(rng, i)
    if arch == "cnn":
        data = rng.choice(["digits", "digits", "mnist1d"])
    else:
        data = rng.choice(["digits", "digits", "wine", "cancer", "mnist1d", "diabetes"])
    opt = rng.choice(["sgd", "sgd", "adam", "adamw", "rmsprop"])
    cfg = dict(
        data=data, opt=opt,
        momentum=rng.choice([0.0, 0.9, 0.9]) if opt == "sgd" else None,
        schedule=rng.choice(["constant", "constant", "step", "cosine", "warmup_cosine",
                             "onecycle"]),
        steps=rng.choice([150, 300, 600]), batch=rng.choice([16, 32, 64, 128]),
        depth=rng.choice([1, 2, 3]),
        width=rng.choice([32, 128, 256] if arch == "mlp" else [8, 16, 32]),
        act=rng.choice(["relu", "relu", "tanh", "gelu"]),
        norm=rng.choice(["", "", "bn", "ln"] if arch == "mlp" else ["", "bn"]),
        dropout=rng.choice([0.0, 0.0, 0.2]),
        scored=rng.choice(["accuracy", "cross_entropy"]) if data != "diabetes" else "mse")
    if arch != "mlp":
        cfg["arch"] = arch
    d = _data(data)
    n_in = d["train"][0].shape[1]
    regression = data == "diabetes"
    n_out = 1 if regression else int(d["train"][1].max()) + 1
    recipe = _recipe(cfg, weight_decay=0.05)
    loss_fn = nn.functional.mse_loss if regression else nn.functional.cross_entropy
    if arch == "cnn":
        build = functools.partial(_ConvNet, data == "digits", n_out, cfg["depth"], cfg["width"],
                                  cfg["act"], cfg["norm"], cfg["dropout"])
    else:
        build = functools.partial(_mlp, n_in, n_out, cfg["depth"], cfg["width"], cfg["act"],
                                  cfg["norm"], cfg["dropout"])

    def loss(model: nn.Module, batch: tuple) -> torch.Tensor:
        return loss_fn(model(batch[0]), batch[1])

    if cfg["scored"] == "accuracy":
        def evaluate(m: nn.Module, split: str) -> float:
            x, y = _data(data)[split]
            return accuracy(m, x, y)
        higher, worst = True, 1.0 / n_out
    else:
        evaluate = split_evaluator(lambda: _data(data), loss_fn)
        higher, worst = False, math.inf
    key = hashlib.sha1(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:10]
    task = Task(name=f"random{i}", version=key,
                description=json.dumps(cfg), recipe=recipe, metric=cfg["scored"],
                higher_is_better=higher, build_model=lambda seed: seeded(build, seed),
                batches=train_batches(lambda: _data(data), recipe.batch_size), loss=loss,
                evaluate=evaluate, train_size=len(d["train"][0]), worst=worst)
    return cfg, task


def measure(cfg: dict, task: Task, seeds: tuple[int, ...] = (0, 1),
            truth: dict | None = None, budget: float | None = None) -> dict:
    """The grid's truth (``truth``: a row measured before for the same task) and tune's
    decisions for one task (``budget``: tune's, in full runs; ``None``: its default)."""
    sign = 1.0 if task.higher_is_better else -1.0
    default = task.recipe.default_lr
    grid = [default * 10 ** (k / 2) for k in range(-6, 5)]
    if truth is not None and truth["cfg"] == cfg and truth["grid"] == grid:
        means = list(truth["means"])
    else:
        means = [bench._mean_or_worst(task, [train.run(task, lr, seed=s,
                                                       eval_split="test").metric
                                             for s in seeds]) for lr in grid]
    b = int(np.argmax([sign * m for m in means]))
    tunes = []
    for s in seeds:
        with tempfile.TemporaryDirectory() as out:
            t = lrkit.tune(task, out=out, progress=False, seed=s, budget=budget)
        tunes.append({"family": t.family, "lr": t.lr, "metric": t.metric,
                      "cost_runs": t.cost_runs, "lr_range": list(t.lr_range)})
    tm = float(np.mean([t["metric"] for t in tunes]))
    best = means[b]
    regret = bench.regret(tm, best, higher_is_better=task.higher_is_better)
    return {"cfg": cfg, "grid": grid, "means": means, "best_lr": grid[b], "best": best,
            "at_edge": b in (0, len(grid) - 1), "tune": tunes, "tune_mean": tm,
            "regret": regret}


def measure_methods(cfg: dict, task: Task, truth: dict, names: list[str],
                    seeds: tuple[int, ...] = (0, 1)) -> dict:
    """The range test's rules (``lrkit.bench`` methods: ``lrkit``, ``lrkit-confirm``, the
    peers) on one task: each chooses per seed, a full run at its choice scores it; regret
    against the same grid as tune's."""
    best = truth["best"]
    out = {}
    for name in names:
        choose = bench._METHODS[name][1]
        picks, metrics = [], []
        for s in seeds:
            c = choose(task, s)
            picks.append(c.lr)
            metrics.append(train.run(task, c.lr, seed=s, eval_split="test").metric)
        out[name] = {"lrs": picks, "metrics": metrics,
                     "regret": bench.regret(bench._mean_or_worst(task, metrics), best,
                                            higher_is_better=task.higher_is_better)}
    return out


def measure_val_oracle(cfg: dict, task: Task, truth: dict, seeds: tuple[int, ...] = (0, 1),
                       reach: int = 2) -> dict:
    """The floor of any choice made on the validation split: the grid's full runs within
    ``reach`` points of its test-best LR scored on "val" (same seeds), the LR they rank first
    (the lower on a tie), and that LR's regret on test. Tune sees only val; where val and test
    disagree (a few hundred examples, a heavy-tailed metric), no val-based choice can do
    better than this."""
    grid, b = truth["grid"], truth["grid"].index(truth["best_lr"])
    ks = list(range(max(0, b - reach), min(len(grid), b + reach + 1)))
    pick, vals = bench.val_choice(task, [grid[k] for k in ks], seeds)
    kv = ks[pick]
    return {"cfg": cfg, "val": {str(grid[k]): v for k, v in zip(ks, vals)}, "val_lr": grid[kv],
            "best_lr": truth["best_lr"], "tune_regret": truth["regret"],
            "val_regret": bench.regret(truth["means"][kv], truth["best"],
                                       higher_is_better=task.higher_is_better)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--truth", type=Path, default=None,
                   help="a previous --out of the same --seed: its grids are reused (the truth "
                        "does not depend on tune), only tune runs again")
    p.add_argument("--methods", default=None,
                   help="instead of tune: these lrkit.bench methods (comma-separated, e.g. "
                        "lrkit,lrkit-confirm,fastai-valley) on the tasks of --truth")
    p.add_argument("--arch", choices=["mlp", "cnn", "seq"], default="mlp",
                   help="the model class drawn (mlp: the sets in results/heldout/random-*.json)")
    p.add_argument("--budget", type=float, default=None,
                   help="tune's budget in full runs (default: tune's own default)")
    p.add_argument("--scored", default=None, choices=["accuracy", "cross_entropy", "mse"],
                   help="only the tasks scored by this metric (accuracy, cross_entropy, mse); "
                        "the others are kept in --out as skipped rows, so rows stay aligned")
    p.add_argument("--val-oracle", action="store_true",
                   help="instead of tune: the grid's LRs near its best scored on val, and the "
                        "test regret of val's pick (needs --truth)")
    args = p.parse_args(argv)
    truths = json.loads(args.truth.read_text()) if args.truth else []
    if args.methods or args.val_oracle:
        return _methods_main(args, truths)
    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    rows = json.loads(args.out.read_text()) if args.out.exists() else []
    for i in range(args.n):
        cfg, task = draw(rng, 1000 * args.seed + i, args.arch)
        if i < len(rows):
            continue
        if args.scored and cfg["scored"] != args.scored:
            rows.append({"cfg": cfg, "skipped": f"scored by {cfg['scored']}"})
            args.out.write_text(json.dumps(rows, indent=1))
            continue
        t0 = time.perf_counter()
        row = measure(cfg, task, truth=truths[i] if i < len(truths) else None,
                      budget=args.budget)
        row["wall"] = time.perf_counter() - t0
        rows.append(row)
        args.out.write_text(json.dumps(rows, indent=1))
        picks = ", ".join(f"{t['family']} {t['lr']:.2g}: {t['metric']:.4g}" for t in row["tune"])
        print(f"{i:3d} {cfg['data']:8s} {cfg['opt']:7s} {cfg['schedule']:13s} "
              f"S={cfg['steps']} b={cfg['batch']} {cfg['scored']:13s} grid best "
              f"{row['best_lr']:.2g} ({row['best']:.4g}){' EDGE' if row['at_edge'] else ''}  "
              f"tune {picks}  regret {100 * row['regret']:+.1f}%  ({row['wall']:.0f} s)",
              flush=True)
    regrets = [r["regret"] for r in rows if "regret" in r]
    print(f"{len(regrets)} tasks: mean regret {100 * np.mean(regrets):+.1f}%, median "
          f"{100 * np.median(regrets):+.1f}%, within 1%: {sum(r <= 0.01 for r in regrets)}, "
          f"within 5%: {sum(r <= 0.05 for r in regrets)}")
    return 0


def _methods_main(args: argparse.Namespace, truths: list[dict]) -> int:
    names = [n for n in (args.methods or "").split(",") if n]
    if not truths:
        raise SystemExit("--methods needs --truth (the grids to score against)")
    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    rows = json.loads(args.out.read_text()) if args.out.exists() else []
    for i, truth in enumerate(truths[:args.n]):
        cfg, task = draw(rng, 1000 * args.seed + i, args.arch)
        if i < len(rows):
            continue
        if cfg != truth["cfg"]:
            raise SystemExit(f"--truth row {i} is another task (another --seed?)")
        if args.val_oracle:
            row = measure_val_oracle(cfg, task, truth)
            rows.append(row)
            args.out.write_text(json.dumps(rows, indent=1))
            print(f"{i:3d} {cfg['data']:8s} {cfg['scored']:13s} val picks {row['val_lr']:.2g}, "
                  f"test best {row['best_lr']:.2g}: regret {100 * row['val_regret']:+.1f}% "
                  f"(tune {100 * row['tune_regret']:+.1f}%)", flush=True)
            continue
        row = {"cfg": cfg, "best": truth["best"], "methods": measure_methods(cfg, task, truth,
                                                                          names)}
        rows.append(row)
        args.out.write_text(json.dumps(rows, indent=1))
        print(f"{i:3d} {cfg['data']:8s} {cfg['opt']:7s} {cfg['schedule']:13s} "
              + "  ".join(f"{n} {100 * r['regret']:+.1f}%" for n, r in row["methods"].items()),
              flush=True)
    if args.val_oracle:
        for kind in sorted({row["cfg"]["scored"] for row in rows}):
            v = [row["val_regret"] for row in rows if row["cfg"]["scored"] == kind]
            t = [row["tune_regret"] for row in rows if row["cfg"]["scored"] == kind]
            print(f"{kind}: val's pick median {100 * np.median(v):+.1f}%, within 5%: "
                  f"{sum(x <= 0.05 for x in v)} of {len(v)}; tune {100 * np.median(t):+.1f}%, "
                  f"{sum(x <= 0.05 for x in t)}")
        return 0
    for n in names:
        r = [row["methods"][n]["regret"] for row in rows]
        print(f"{n}: median {100 * np.median(r):+.1f}%, within 1%: {sum(v <= 0.01 for v in r)}, "
              f"within 5%: {sum(v <= 0.05 for v in r)} of {len(r)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
