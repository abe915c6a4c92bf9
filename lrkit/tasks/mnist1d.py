"""``mnist1d``: a small 1-D CNN on MNIST-1D, generated locally (SGD + momentum, cosine decay).

Data: ``mnist1d.data.make_dataset(get_dataset_args())`` — the package's default generator
(seed 42: 4,000 train + 1,000 test sequences of length 40), generated on this machine, never
downloaded (``mnist1d.data.get_dataset`` may download; it is not used). The arrays are cached in
``<cache_dir>/mnist1d-v1.npz`` (``$LRKIT_CACHE`` overrides ``~/.cache/lrkit``) and in memory.
Split: the package's 1,000 test sequences; 400 val carved from its 4,000 train; 3,600 train.
Model: conv1d 5 (16) -> ReLU -> conv1d 3/2 (32) -> ReLU -> conv1d 3/2 (32) -> ReLU -> linear 320->10.
Recipe (after Greydanus 2020, "Scaling down deep learning"): SGD momentum 0.9, batch 64, cosine.
"""

from __future__ import annotations

import functools
import os
import random

import numpy as np
import torch
from torch import nn

from ._data import cache_dir, classification_task, split_indices
from .base import Recipe, Task

STEPS = 1000
_CACHE_NAME = "mnist1d-v1.npz"


def _generate() -> dict[str, np.ndarray]:
    """Run the package's generator without disturbing the global Python/NumPy RNG state."""
    from ..errors import require

    data = require("mnist1d.data", package="mnist1d", extra="tasks",
                   needed_by="the built-in task 'mnist1d'")
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        ds = data.make_dataset(data.get_dataset_args())
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {k: np.asarray(ds[k]) for k in ("x", "y", "x_test", "y_test")}


def arrays() -> dict[str, np.ndarray]:
    """MNIST-1D's arrays (x, y, x_test, y_test), from the disk cache or freshly generated."""
    path = cache_dir() / _CACHE_NAME
    if path.exists():
        try:
            with np.load(path) as f:
                return {k: f[k] for k in ("x", "y", "x_test", "y_test")}
        except (OSError, KeyError, ValueError):
            pass  # a corrupt or partial cache file: regenerate below
    data = _generate()
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    try:
        np.savez(tmp, **data)
        os.replace(tmp, path)  # atomic: concurrent workers never read a half-written file
    except OSError:
        tmp.unlink(missing_ok=True)  # a read-only cache is not an error: the data is in memory
    return data


@functools.lru_cache(maxsize=1)
def load() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The fixed (train, val, test) split as (N, 1, 40) float32 / int64 tensors."""
    a = arrays()
    x = torch.tensor(a["x"], dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(a["y"], dtype=torch.int64)
    tr, va, _ = split_indices(len(x), test=0, val=400, seed=0)
    xt = torch.tensor(a["x_test"], dtype=torch.float32).unsqueeze(1)
    yt = torch.tensor(a["y_test"], dtype=torch.int64)
    return {"train": (x[tr], y[tr]), "val": (x[va], y[va]), "test": (xt, yt)}


def _model() -> nn.Module:
    return nn.Sequential(
        nn.Conv1d(1, 16, 5, padding=2), nn.ReLU(),              # 40
        nn.Conv1d(16, 32, 3, stride=2, padding=1), nn.ReLU(),   # 20
        nn.Conv1d(32, 32, 3, stride=2, padding=1), nn.ReLU(),   # 10
        nn.Flatten(), nn.Linear(32 * 10, 10))


def make_task(steps: int = STEPS, *, name: str = "mnist1d") -> Task:
    """The ``mnist1d`` task."""
    recipe = Recipe(optimizer="sgd", batch_size=64, steps=steps, default_lr=0.1,
                    optimizer_kwargs={"momentum": 0.9}, schedule="cosine")
    return classification_task(
        name=name, version="1",
        description=f"1-D CNN on MNIST-1D (generated locally), SGD momentum 0.9 + cosine, {steps} steps",
        recipe=recipe, data=load, model=_model, classes=10)
