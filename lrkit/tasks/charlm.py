"""``charlm``: a tiny character-level transformer on Python's own documentation (AdamW + warmup).

Data: the text of ``pydoc_data.topics`` (the help topics that ship with every CPython; ~460 KB of
English prose and code), topics joined in sorted order. Characters outside printable ASCII and
newline map to ``"?"``, so the vocabulary is fixed (96 symbols) across Python versions; the text
itself differs a little between Python minor versions, so the task version names it.
Split by position: first 85% train, next 5% val, last 10% test.
Model: GPT-style decoder, 2 pre-LN blocks, d_model 64, 4 heads, MLP 256, context 64, learned
positions. Recipe: AdamW (betas 0.9, 0.99, weight decay 0.01), batch 32 windows, linear warmup
then cosine decay (Loshchilov & Hutter 2019; Vaswani et al. 2017).
Metric: held-out bits per character (mean cross-entropy / ln 2) on fixed windows, lower is better.
"""

from __future__ import annotations

import functools
import math
import sys
from typing import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from ._data import _eval_mode, check_split, next_token_cross_entropy, seeded
from .base import Recipe, Task

STEPS = 300
CONTEXT = 64
VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))  # 96 symbols
EVAL_WINDOWS = 256


def text() -> str:
    """The corpus: ``pydoc_data.topics.topics`` values joined in sorted-key order."""
    from pydoc_data.topics import topics

    return "\n".join(topics[k] for k in sorted(topics))


@functools.lru_cache(maxsize=1)
def load() -> dict[str, torch.Tensor]:
    """The encoded corpus split by position into train / val / test int64 tensors."""
    index = {c: i for i, c in enumerate(VOCAB)}
    unknown = index["?"]
    ids = torch.tensor([index.get(c, unknown) for c in text()], dtype=torch.int64)
    n = len(ids)
    a, b = int(0.85 * n), int(0.90 * n)
    return {"train": ids[:a], "val": ids[a:b], "test": ids[b:]}


def _windows(ids: torch.Tensor, starts: torch.Tensor, context: int = CONTEXT
             ) -> tuple[torch.Tensor, torch.Tensor]:
    offs = starts.unsqueeze(1) + torch.arange(context + 1)
    w = ids[offs]
    return w[:, :-1], w[:, 1:]


def _batches(seed: int, batch_size: int, context: int = CONTEXT
             ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Epochs over non-overlapping windows: each epoch draws a random phase in [0, context) and
    a random order of the windows (seeded); incomplete batches at an epoch's end are dropped."""
    ids = load()["train"]
    g = torch.Generator().manual_seed(int(seed))
    while True:
        phase = int(torch.randint(context, (1,), generator=g))
        count = (len(ids) - 1 - phase) // context
        starts = phase + context * torch.randperm(count, generator=g)
        for i in range(0, count - batch_size + 1, batch_size):
            yield _windows(ids, starts[i:i + batch_size], context)


@functools.lru_cache(maxsize=4)
def _eval_windows(split: str, context: int = CONTEXT) -> tuple[torch.Tensor, torch.Tensor]:
    """``EVAL_WINDOWS`` fixed windows of ``context`` characters spread evenly over the split."""
    ids = load()[split]
    last = len(ids) - context - 1
    starts = torch.linspace(0, last, EVAL_WINDOWS).round().to(torch.int64)
    return _windows(ids, starts, context)


class _Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2)
                   for z in self.qkv(self.ln1(x)).split(c, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.ln2(x))


class CharTransformer(nn.Module):
    """A GPT-style decoder over characters: tokens -> logits over the next character."""

    def __init__(self, vocab: int = len(VOCAB), d: int = 64, layers: int = 2, heads: int = 4,
                 context: int = CONTEXT) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(context, d) * 0.02)
        self.blocks = nn.Sequential(*[_Block(d, heads) for _ in range(layers)])
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos[: idx.shape[1]]
        return self.head(self.ln(self.blocks(x)))


def _evaluate(model: nn.Module, split: str) -> float:
    x, y = _eval_windows(check_split(split))
    p = next(model.parameters())
    with _eval_mode(model):
        total = 0.0
        for i in range(0, len(x), 64):
            logits = model(x[i:i + 64].to(p.device)).float()
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                           y[i:i + 64].to(p.device).reshape(-1),
                                           reduction="sum"))
    return total / y.numel() / math.log(2.0)


def make_task(steps: int = STEPS, *, name: str = "charlm") -> Task:
    """The ``charlm`` task."""
    recipe = Recipe(optimizer="adamw", batch_size=16, steps=steps, default_lr=1e-3,
                    optimizer_kwargs={"betas": (0.9, 0.99), "weight_decay": 0.01},
                    schedule="warmup_cosine", warmup_steps=max(1, steps // 10))
    py = f"py{sys.version_info[0]}.{sys.version_info[1]}"
    return Task(
        name=name, version=f"1-{py}",
        description=f"2-layer char transformer (d 64, ctx 64) on pydoc topics, AdamW + warmup-cosine, "
                    f"{steps} steps; bits/char",
        recipe=recipe, metric="bits_per_char", higher_is_better=False,
        build_model=lambda seed: seeded(CharTransformer, seed),
        batches=lambda seed: _batches(seed, recipe.batch_size), loss=next_token_cross_entropy, evaluate=_evaluate,
        train_size=(len(load()["train"]) - 1) // CONTEXT, worst=float("inf"))
