"""Optimizers by name (no torch import here: the classes load when one is built).

``NAMES`` maps a name to ``"module:Class"`` and the keyword that carries the learning rate.
:func:`lrkit.optim.make_optimizer` builds one; :class:`lrkit.tasks.Recipe` and
``lrkit.train.run(optimizer_factory=...)`` take these names.
"""

from __future__ import annotations

#: name -> (import path "module:Class", pip extra that provides it or None)
NAMES: dict[str, tuple[str, str | None]] = {
    "sgd": ("torch.optim:SGD", None),
    "adam": ("torch.optim:Adam", None),
    "adamw": ("torch.optim:AdamW", None),
    "rmsprop": ("torch.optim:RMSprop", None),
    "adagrad": ("torch.optim:Adagrad", None),
    "adadelta": ("torch.optim:Adadelta", None),
}


def names() -> tuple[str, ...]:
    """Every optimizer name lrkit can build."""
    return tuple(NAMES)
