"""``lrkit tune``'s warmup check tried on a model of the class that is said to need a warmup.

A post-LN transformer (Xiong et al. 2020, "On Layer Normalization in the Transformer
Architecture": post-LN needs a warmup) of 4 layers on charlm's data, AdamW with betas (0.9,
0.999), weight decay 0.01, charlm's recipe otherwise (300 steps, batch 16, warmup-cosine with
a 30-step warmup). Prints

1. a full-run grid of the recipe's schedule with and without its warmup (3 peak LRs x 2 seeds,
   test bits/char);
2. per seed, ``tune``'s decision (LR, schedule, whether the warmup check dropped the warmup,
   the two check runs' val bits/char) and its test metric;
3. per seed, the final run at tune's LR and schedule with the warmup put back, paired (same
   seed): what the warmup check's decision was worth.

    python benchmarks/user_postln.py            # ~4 min on 2 cores
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lrkit import schedules, tasks, train  # noqa: E402
from lrkit.tasks import charlm  # noqa: E402
from lrkit.tune import tune  # noqa: E402

GRID = (0.0056, 0.01, 0.0178)
SEEDS = (0, 1, 2)


class PostLNBlock(charlm._Block):
    """charlm's block with the normalisation moved after each residual add:
    ``x = LN(x + attn(x)); x = LN(x + mlp(x))`` (the original transformer's order)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2)
                   for z in self.qkv(x).split(c, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = self.ln1(x + self.proj(y.transpose(1, 2).reshape(b, t, c)))
        return self.ln2(x + self.mlp(x))


class PostLN(charlm.CharTransformer):
    def __init__(self, layers: int = 4) -> None:
        super().__init__(layers=layers)
        self.blocks = nn.Sequential(*[PostLNBlock(64, 4) for _ in range(layers)])
        self.ln = nn.Identity()  # post-LN blocks end in a LayerNorm already


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return PostLN()


def make_task() -> tasks.Task:
    t = tasks.get("charlm")
    recipe = dataclasses.replace(t.recipe, optimizer_kwargs={"betas": (0.9, 0.999),
                                                             "weight_decay": 0.01})
    return dataclasses.replace(t, name="charlm-postln", recipe=recipe, build_model=_model,
                               description="4-layer post-LN char transformer, AdamW (0.9, "
                                           "0.999) + warmup-cosine, 300 steps")


def main() -> None:
    torch.set_num_threads(1)
    task = make_task()
    full, warm = task.recipe.steps, task.recipe.warmup_steps
    print(f"1. full-run grid, cosine peak LR, test bits/char (seeds 0-1): warmup {warm} / none")
    for lr in GRID:
        cells = []
        for w in (warm, 0):
            ms = [train.run(task, schedules.family("cosine", lr, full, warmup_steps=w), seed=s,
                            eval_split="test").metric for s in (0, 1)]
            cells.append(f"{sum(ms) / len(ms):.3f} ({', '.join(f'{m:.3f}' for m in ms)})")
        print(f"   lr {lr:g}: {cells[0]} / {cells[1]}")
    print("2-3. tune per seed; the final run with the warmup put back (paired)")
    for s in SEEDS:
        with tempfile.TemporaryDirectory() as d:
            res = tune(task, seed=s, out=Path(d) / "run", progress=False)
            h = json.loads((Path(d) / "run" / "3-halving.json").read_text())
        check = h["stage"]["outcome"].get("warmup") or {}
        back = train.run(task, schedules.family(res.family, res.lr, full, warmup_steps=warm),
                         seed=s, eval_split="test").metric
        print(f"   seed {s}: {res.family} {res.lr:.3g}, warmup dropped: {check.get('dropped')} "
              f"(check runs: val {check.get('metric', float('nan')):.3f} without, "
              f"{check.get('winner_metric', float('nan')):.3f} with); test {res.metric:.3f}; "
              f"with the warmup put back {back:.3f}; cost {res.cost_runs:.2f} runs")


if __name__ == "__main__":
    main()
