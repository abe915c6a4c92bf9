"""``charrnn``: a small recurrent character LM trained with SGD under cosine decay to zero.

Data: the same corpus and split as :mod:`lrkit.tasks.charlm` (Python's own ``pydoc_data.topics``
text, 96 symbols; first 85% train, next 5% val, last 10% test), read in windows of ``CONTEXT``
characters. Model: embedding 32 -> one LSTM layer of 64 (Hochreiter & Schmidhuber 1997) ->
linear to the 96 symbols. Recipe: plain SGD with momentum 0.9, batch 16 windows, cosine decay
from the peak LR to 0 over ``STEPS`` steps (Loshchilov & Hutter 2017), no warmup, no clipping.
Metric: held-out bits per character (mean cross-entropy / ln 2) over ``EVAL_WINDOWS`` fixed
windows spread evenly over the split, lower is better (``worst = inf`` for a diverged run).

Why this task: the range test sweeps a *constant* LR, but this recipe spends most of its steps
well below its peak (the mean of a cosine to zero is half the peak, and the last third of the run
is under a quarter of it). An SGD-trained recurrent net learns slowly at the LR where the constant
sweep's loss is lowest, so the best *peak* LR sits several times above where the sweep points
(the issue's "annealed schedules" case); a rule that hands the constant-LR suggestion to a cosine
recipe unchanged undershoots.
"""

from __future__ import annotations

import math
import sys
from typing import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from ._data import _device, _eval_mode, check_split, next_token_cross_entropy, seeded
from .base import Recipe, Task

STEPS = 300
CONTEXT = 24
EVAL_WINDOWS = 256


def load() -> dict[str, torch.Tensor]:
    """The encoded corpus split by position (see :func:`lrkit.tasks.charlm.load`)."""
    from .charlm import load as charlm_load

    return charlm_load()


def _batches(seed: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """charlm's epochs over non-overlapping windows, ``CONTEXT`` characters long."""
    from .charlm import _batches as windows

    return windows(seed, batch_size, CONTEXT)


def _eval_windows(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from .charlm import _eval_windows as windows

    return windows(split, CONTEXT)


class CharLSTM(nn.Module):
    """Embedding -> LSTM -> linear: logits over the next character at every position."""

    def __init__(self, vocab: int = 96, embed: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.rnn = nn.LSTM(embed, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.embed(idx))[0])


def _evaluate(model: nn.Module, split: str) -> float:
    x, y = _eval_windows(check_split(split))
    with _eval_mode(model):
        logits = model(x.to(_device(model))).float().cpu()
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    return float(nll) / math.log(2.0)


def make_task(steps: int = STEPS, *, name: str = "charrnn") -> Task:
    """The ``charrnn`` task."""
    from .charlm import VOCAB

    recipe = Recipe(optimizer="sgd", batch_size=16, steps=steps, default_lr=0.1,
                    optimizer_kwargs={"momentum": 0.9}, schedule="cosine")
    py = f"py{sys.version_info[0]}.{sys.version_info[1]}"
    return Task(
        name=name, version=f"1-{py}",
        description=f"char LSTM (embed 32, hidden 64, ctx {CONTEXT}) on pydoc topics, SGD momentum "
                    f"0.9 + cosine to 0, {steps} steps; bits/char",
        recipe=recipe, metric="bits_per_char", higher_is_better=False,
        build_model=lambda seed: seeded(lambda: CharLSTM(len(VOCAB)), seed),
        batches=lambda seed: _batches(seed, recipe.batch_size), loss=next_token_cross_entropy, evaluate=_evaluate,
        train_size=(len(load()["train"]) - 1) // CONTEXT, worst=float("inf"))
