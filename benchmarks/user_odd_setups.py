"""``lrkit tune`` and ``find_lr`` tried the way users would on odd set-ups, through ``from_torch``.

Each probe builds a user's own model, optimizer and loaders, runs ``lrkit.tune`` (seed 0), checks
that the user's model is left as it was, and prints the truth: full runs of the same task at
0.1x, 0.3x, 1x, 3x and 10x tune's LR (seed 0, test split).

    python benchmarks/user_odd_setups.py short      # a 20-step run: the default budget, confirm
    python benchmarks/user_odd_setups.py hf         # dict batches, step_fn, 2 AdamW groups, BN
    python benchmarks/user_odd_setups.py workers    # DataLoader workers, one killed mid-sweep
    python benchmarks/user_odd_setups.py bigscale   # Adam on unnormalised regression targets
    python benchmarks/user_odd_setups.py tinylr     # a tanh net initialised 30x too large
    python benchmarks/user_odd_setups.py offset     # MSE - 10: a loss that is negative
    python benchmarks/user_odd_setups.py nll        # a Gaussian NLL, which crosses zero
    python benchmarks/user_odd_setups.py clients    # a LightningModule, a tiny BERT (transformers)
    python benchmarks/user_odd_setups.py plumbing   # param groups, frozen weights, LBFGS, a
                                                    # generator, a compiled model, a tensor LR...

Results: ``benchmarks/results/tune.md`` ("Tried like a user: odd set-ups").
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import lrkit
from lrkit import train


def _synthetic(kind: str) -> tuple[nn.Module, torch.optim.Optimizer, lrkit.Task]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 10, generator=g)
    w = torch.randn(10, 1, generator=g)
    torch.manual_seed(0)
    loss_fn: nn.Module = nn.CrossEntropyLoss()
    y = (x @ w > 0).long().squeeze(1)
    if kind == "bigscale":  # MSE of order 1e6: the best Adam LR lies far above its default
        y = (x @ w) * 1000 + 5000
        model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        steps, loss_fn = 300, nn.MSELoss()
    elif kind == "tinylr":  # saturated tanh units: the sweep falls all the way to LR 10
        model = nn.Sequential(nn.Linear(10, 64), nn.Tanh(), nn.Linear(64, 2))
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(30)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        steps = 200
    elif kind == "offset":  # a loss with a constant offset: negative from the first step
        y = x @ w
        model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        steps = 300

        def loss_fn(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return nn.functional.mse_loss(out, target) - 10.0
    elif kind == "nll":  # mean and variance heads: the Gaussian NLL falls through zero
        y = (x @ w) * 0.3 + 0.05 * torch.randn(600, 1, generator=g)
        model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 2))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        steps, nll = 400, nn.GaussianNLLLoss()

        def loss_fn(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return nll(out[:, :1], target, nn.functional.softplus(out[:, 1:]) + 1e-4)
    elif kind == "short":  # a run of 20 steps
        model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        steps = 20
    else:
        raise ValueError(kind)
    tr = DataLoader(TensorDataset(x[:400], y[:400]), batch_size=32, shuffle=True,
                    generator=torch.Generator().manual_seed(1))
    va = DataLoader(TensorDataset(x[400:500], y[400:500]), batch_size=100)
    te = DataLoader(TensorDataset(x[500:], y[500:]), batch_size=100)
    return model, opt, lrkit.from_torch(model, opt, tr, loss_fn, val_loader=va, test_loader=te,
                                        steps=steps, name=kind)


class _Dict(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.x[i], "labels": self.y[i]}


class _HFLike(nn.Module):
    """A Hugging Face-style model: keyword inputs, a dict out with the loss when given labels."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.ln = nn.Embedding(50, 32), nn.LayerNorm(32)
        self.drop, self.bn, self.head = nn.Dropout(0.1), nn.BatchNorm1d(32), nn.Linear(32, 2)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        logits = self.head(self.bn(self.drop(self.ln(self.emb(input_ids).mean(1)))))
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


def _accuracy(model: nn.Module, loader) -> float:
    hit = n = 0
    for b in loader:
        hit += int((model(b["input_ids"])["logits"].argmax(1) == b["labels"]).sum())
        n += len(b["labels"])
    return hit / n


def _hf() -> tuple[nn.Module, torch.optim.Optimizer, lrkit.Task]:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 50, (800, 12), generator=g)
    y = ((x < 25).sum(1) > 6).long()
    torch.manual_seed(0)
    model = _HFLike()
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": no_decay, "weight_decay": 0.0}], lr=5e-4)
    tl = DataLoader(_Dict(x[:600], y[:600]), batch_size=32, shuffle=True,
                    generator=torch.Generator().manual_seed(1))
    task = lrkit.from_torch(model, opt, tl, step_fn=lambda m, b: m(**b)["loss"],
                            val_loader=DataLoader(_Dict(x[600:700], y[600:700]), batch_size=50),
                            test_loader=DataLoader(_Dict(x[700:], y[700:]), batch_size=100),
                            metric_fn=_accuracy, higher_is_better=True, steps=300,
                            schedule="cosine", warmup_steps=30, name="hf-like")
    return model, opt, task


def probe(kind: str) -> None:
    model, opt, task = _hf() if kind == "hf" else _synthetic(kind)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    groups = [(g["lr"], g.get("weight_decay")) for g in opt.param_groups]
    with tempfile.TemporaryDirectory() as d:
        r = lrkit.tune(task, out=os.path.join(d, "run"), progress=False)
    same = all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    same_groups = groups == [(g["lr"], g.get("weight_decay")) for g in opt.param_groups]
    print(f"== {kind}: {r.family} at {r.lr:.3g}, test {task.metric} {r.metric:.4g}, "
          f"{r.cost_runs:.2f} runs; model untouched: {same}, optimizer groups: {same_groups}")
    print(r.explanation)
    for m in (0.1, 0.3, 1.0, 3.0, 10.0):
        lr = r.lr * m
        print(f"   full run at {lr:.3g}: {train.run(task, lr, seed=0, eval_split='test').metric:.4g}")
    if kind == "short":
        model.load_state_dict(before)
        c = lrkit.find_lr(task, confirm=True, progress=False)
        print(f"confirm: {c.suggestion.lr:.3g} ({c.suggestion.confidence}): "
              f"{c.suggestion.reason}")


class _Crashing(Dataset):
    """A dataset whose worker process is killed when it reaches item ``die_at``."""

    def __init__(self, n: int, die_at: int | None = None) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 10, generator=g)
        self.y = (self.x[:, 0] > 0).long()
        self.die_at = die_at

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if i == self.die_at and torch.utils.data.get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        return self.x[i], self.y[i]


def workers() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def untouched() -> bool:
        return all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    tl = DataLoader(_Crashing(512), batch_size=32, shuffle=True, num_workers=2)
    vl = DataLoader(_Crashing(128), batch_size=64, num_workers=2)
    r = lrkit.find_lr(model, opt, tl, nn.CrossEntropyLoss(), num_iter=60, progress=False)
    print(f"range test with 2 workers: {r.suggestion.lr:.3g}; model untouched: {untouched()}")
    r = lrkit.find_lr(model, opt, tl, nn.CrossEntropyLoss(), val_loader=vl, confirm=True,
                      steps=200, num_iter=60, progress=False)
    print(f"confirm with 2 workers: {r.suggestion.lr:.3g}; model untouched: {untouched()}")
    bad = DataLoader(_Crashing(512, die_at=300), batch_size=32, num_workers=2)
    try:
        lrkit.find_lr(model, opt, bad, nn.CrossEntropyLoss(), num_iter=60, progress=False)
    except (RuntimeError, ConnectionResetError) as e:  # (which one: a race in torch's loader)
        print(f"a worker killed mid-sweep: {str(e).strip()[:90]}")
    print(f"model untouched: {untouched()}; optimizer state empty: {len(opt.state) == 0}")


def clients() -> None:
    """The real clients: a LightningModule through its own ``training_step``, then a
    ``Trainer.fit`` at the LR found; a tiny BERT from ``transformers`` (built from a config, no
    download) through ``find_lr(confirm=True)`` and ``tune``, against full runs."""
    import lightning.pytorch as pl
    from transformers import BertConfig, BertForSequenceClassification

    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 10, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    tl = DataLoader(TensorDataset(x[:384], y[:384]), batch_size=32, shuffle=True,
                    generator=torch.Generator().manual_seed(1))
    vl = DataLoader(TensorDataset(x[384:], y[384:]), batch_size=128)

    class Module(pl.LightningModule):
        def __init__(self, lr: float = 0.1) -> None:
            super().__init__()
            self.lr = lr
            self.net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch, i):  # noqa: ANN001, ANN201
            loss = nn.functional.cross_entropy(self(batch[0]), batch[1])
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)

    torch.manual_seed(0)
    lm = Module()
    r = lrkit.find_lr(lm, lm.configure_optimizers(), tl, step_fn=lambda m, b: m.training_step(b, 0),
                      val_loader=vl, confirm=True, steps=200, progress=False)
    fitted = Module(r.suggestion.lr)
    fitted.load_state_dict(lm.state_dict())
    trainer = pl.Trainer(max_steps=200, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(fitted, tl)
    print(f"LightningModule: confirm {r.suggestion.lr:.3g} ({r.suggestion.confidence}); "
          f"Trainer.fit there: train loss {float(trainer.callback_metrics['train_loss']):.4f}")

    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, num_labels=2, max_position_embeddings=16)
    torch.manual_seed(0)
    bert = BertForSequenceClassification(cfg)
    ids = torch.randint(0, 50, (512, 12), generator=g)
    labels = ((ids < 25).sum(1) > 6).long()

    class Tokens(_Dict):
        def __getitem__(self, i: int) -> dict:
            return {**super().__getitem__(i), "attention_mask": torch.ones_like(self.x[i])}

    btl = DataLoader(Tokens(ids[:384], labels[:384]), batch_size=32, shuffle=True,
                     generator=torch.Generator().manual_seed(1))
    bvl = DataLoader(Tokens(ids[384:], labels[384:]), batch_size=64)
    opt = torch.optim.AdamW(bert.parameters(), lr=5e-5)
    step = lambda m, b: m(**b).loss  # noqa: E731
    r = lrkit.find_lr(bert, opt, btl, step_fn=step, val_loader=bvl, confirm=True, steps=300,
                      schedule="cosine", progress=False)
    task = lrkit.from_torch(bert, opt, btl, step_fn=step, val_loader=bvl, steps=300,
                            schedule="cosine", warmup_steps=30, name="tiny-bert")
    with tempfile.TemporaryDirectory() as d:
        res = lrkit.tune(task, out=os.path.join(d, "run"), progress=False)
    print(f"tiny BERT: confirm {r.suggestion.lr:.3g} ({r.suggestion.confidence}); tune "
          f"{res.family} {res.lr:.3g}, val loss {res.metric:.4f}")
    for lr in (1e-4, 3e-4, r.suggestion.lr, 1e-3, 3e-3, 1e-2):
        print(f"   full run (warmup-cosine) at {lr:.3g}: "
              f"{train.run(task, lr, seed=0, eval_split='test').metric:.4f}")


def plumbing() -> None:
    """``find_lr`` on the optimizers, loaders and models users bring: each prints what came back
    (the suggestion and whether everything was put back) or the error it was refused with."""
    import copy

    torch.manual_seed(0)
    x, w = torch.randn(512, 10), torch.randn(10, 3)
    y = (x @ w).argmax(1)
    ce = nn.CrossEntropyLoss()

    def loader(n: int = 512, bs: int = 32) -> DataLoader:
        return DataLoader(TensorDataset(x[:n], y[:n]), batch_size=bs, shuffle=True)

    def mlp() -> nn.Sequential:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 3))

    def same(a: dict, b: dict) -> bool:
        return all(torch.equal(u, v) for u, v in zip(a.values(), b.values()))

    def find(m: nn.Module, opt: torch.optim.Optimizer, data=None, **kw) -> tuple:
        before = copy.deepcopy(m.state_dict())
        r = lrkit.find_lr(m, opt, loader() if data is None else data, ce, **kw)
        return f"{r.suggestion.lr:.3g}", r.suggestion.confidence, same(before, m.state_dict())

    def groups():
        m = mlp()
        opt = torch.optim.SGD([{"params": m[0].parameters(), "lr": 0.01},
                               {"params": m[2].parameters(), "lr": 0.1}], momentum=0.9)
        return find(m, opt) + ([g["lr"] for g in opt.param_groups],)

    def frozen():
        m = mlp()
        m[0].weight.requires_grad_(False)
        return find(m, torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1))

    def fused_adam():
        m = mlp()
        opt = torch.optim.Adam(m.parameters(), lr=1e-3, fused=True, amsgrad=True,
                               weight_decay=1e-4)
        ce(m(x[:32]), y[:32]).backward()
        opt.step()
        opt.zero_grad()
        state = copy.deepcopy(opt.state_dict()["state"])
        out = find(m, opt)
        after = opt.state_dict()["state"]
        return out + (all(torch.equal(state[k][n], after[k][n]) for k in state
                          for n in state[k]),)

    def tensor_lr():
        m = mlp()
        opt = torch.optim.Adam(m.parameters(), lr=torch.tensor(1e-3))
        return find(m, opt) + (opt.param_groups[0]["lr"],)

    def user_scheduler():
        m = mlp()
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.StepLR(opt, 5, 0.5)
        for _ in range(7):
            opt.step()
            sched.step()
        state, lr = copy.deepcopy(sched.state_dict()), opt.param_groups[0]["lr"]
        out = find(m, opt, scheduler=sched)
        return out + (sched.state_dict() == state, opt.param_groups[0]["lr"] == lr)

    def eval_mode():
        m = nn.Sequential(nn.Linear(10, 64), nn.Dropout(0.5), nn.ReLU(), nn.Linear(64, 3)).eval()
        return find(m, torch.optim.SGD(m.parameters(), lr=0.1)) + (m.training,)

    def short_loader():
        m = mlp()
        return find(m, torch.optim.SGD(m.parameters(), lr=0.1), loader(64), num_iter=100)

    def compiled():
        m = torch.compile(mlp())
        return find(m, torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9))

    def lbfgs():
        m = mlp()
        return find(m, torch.optim.LBFGS(m.parameters()))

    def generator():
        m = mlp()
        gen = ((x[i:i + 32], y[i:i + 32]) for i in range(0, 320, 32))
        return find(m, torch.optim.SGD(m.parameters(), lr=0.1), gen)

    def no_reduction():
        m = mlp()
        before = copy.deepcopy(m.state_dict())
        try:
            lrkit.find_lr(m, torch.optim.SGD(m.parameters(), lr=0.1), loader(),
                          nn.CrossEntropyLoss(reduction="none"))
        finally:
            print(f"    (weights restored after the error: {same(before, m.state_dict())})")

    def other_model():
        m = mlp()
        return find(m, torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1))

    for fn in (groups, frozen, fused_adam, tensor_lr, user_scheduler, eval_mode, short_loader,
               compiled, lbfgs, generator, no_reduction, other_model):
        try:
            print(f"[{fn.__name__}] (lr, confidence, weights restored, ...): {fn()}", flush=True)
        except Exception as e:  # the refusals are part of what is probed
            print(f"[{fn.__name__}] refused: {type(e).__name__}: {e}", flush=True)


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    for kind in argv or ["short", "hf", "workers"]:
        {"workers": workers, "clients": clients, "plumbing": plumbing}.get(
            kind, lambda: probe(kind))()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
