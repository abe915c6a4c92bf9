"""``digits-bn``: a small residual CNN with batch normalisation on the 8x8 digits (SGD, 1-cycle).

Data: the ``digits`` task's split of ``sklearn.datasets.load_digits`` (1,293 train, 144 val,
360 test; ships inside scikit-learn, no download), as 1x8x8 images with pixels in [0, 1].
Model: conv 3x3 (16) -> BN -> ReLU, a residual block of two conv 3x3 (16) + BN, a down-sampling
residual block to 32 channels at 4x4 (1x1 conv + BN on the skip), global average pool, linear
32 -> 10 (He et al. 2016; Ioffe & Szegedy 2015). Recipe: SGD, Nesterov momentum 0.9, weight
decay 5e-4, batch 64, the 1-cycle schedule (Smith 2018; PyTorch ``OneCycleLR`` defaults, peak =
the LR), ``STEPS`` steps (about 5 epochs). Metric: test accuracy.

Why this task: the class most of the range test's users train, the batch-normalised convnet
under 1-cycle with weight decay, was missing. Batch norm makes every layer before it invariant to
its weights' scale, so the effective step size depends on the LR *and* the weight norm (which
weight decay shrinks), the good band is wide and sits at high LRs, and the range-test curve falls
long and slowly (Smith 2018; van Laarhoven 2017; Li & Arora 2020). It was added after the range
test's rules were fitted, as a held-out check of them.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from ._data import classification_task
from .base import Recipe, Task
from .digits import load as _digits

STEPS = 100


@functools.lru_cache(maxsize=1)
def load() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The ``digits`` split as 1x8x8 images."""
    return {k: (x.reshape(-1, 1, 8, 8), y) for k, (x, y) in _digits().items()}


class _Block(nn.Module):
    """Two 3x3 convs with batch norm and a skip connection (1x1 conv + BN when it resamples)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + self.skip(x))


def _model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),  # 8x8
        _Block(16, 16, 1),                                                           # 8x8
        _Block(16, 32, 2),                                                           # 4x4
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def make_task(steps: int = STEPS, *, name: str = "digits-bn") -> Task:
    """The ``digits-bn`` task."""
    recipe = Recipe(optimizer="sgd", batch_size=64, steps=steps, default_lr=0.1,
                    optimizer_kwargs={"momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
                    schedule="onecycle")
    return classification_task(
        name=name, version="1",
        description=f"residual CNN with batch norm on sklearn digits (1x8x8), SGD Nesterov "
                    f"0.9, weight decay 5e-4, 1-cycle, {steps} steps",
        recipe=recipe, data=load, model=_model, classes=10)
