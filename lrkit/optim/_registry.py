"""Optimizers by name (no torch import here: the classes load when one is built).

``NAMES`` maps a name to ``"module:Class"`` and the pip extra that provides it;
``DEFAULT_LR`` holds each optimizer's textbook default LR (for LR-free optimizers, the
multiplier their authors recommend). :func:`lrkit.optim.make_optimizer` builds one;
:class:`lrkit.tasks.Recipe` and ``lrkit.train.run(optimizer_factory=...)`` take these names.
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
    # hypergradient descent (Baydin et al. 2018), lrkit's own
    "sgdhd": ("lrkit.optim.hd:SGDHD", None),
    "adamhd": ("lrkit.optim.hd:AdamHD", None),
    # LR-free optimizers: their ``lr`` is a multiplier of the step size they estimate
    "prodigy": ("prodigyopt:Prodigy", "peers"),
    "dadapt": ("dadaptation:DAdaptAdam", "peers"),
    "dadapt_adam": ("dadaptation:DAdaptAdam", "peers"),
    "dadapt_sgd": ("dadaptation:DAdaptSGD", "peers"),
    # schedule-free optimizers replace the decay schedule (train with a constant LR, and call
    # optimizer.train() / .eval(); lrkit.train.run does)
    "schedulefree": ("schedulefree:AdamWScheduleFree", "peers"),
    "schedulefree_adamw": ("schedulefree:AdamWScheduleFree", "peers"),
    "schedulefree_sgd": ("schedulefree:SGDScheduleFree", "peers"),
}

#: name -> textbook default LR (PyTorch's defaults for RMSprop/Adagrad/Adadelta, 0.1 for SGD
#: with momentum, 1e-3 for Adam; 1.0 for the LR-free multipliers; the schedule-free package's
#: defaults)
DEFAULT_LR: dict[str, float] = {
    "sgd": 0.1, "adam": 1e-3, "adamw": 1e-3, "rmsprop": 1e-2, "adagrad": 1e-2, "adadelta": 1.0,
    "sgdhd": 0.1, "adamhd": 1e-3,
    "prodigy": 1.0, "dadapt": 1.0, "dadapt_adam": 1.0, "dadapt_sgd": 1.0,
    "schedulefree": 0.0025, "schedulefree_adamw": 0.0025, "schedulefree_sgd": 1.0,
}

#: names whose ``lr`` is a multiplier of a step size the optimizer estimates itself
LR_FREE = ("prodigy", "dadapt", "dadapt_adam", "dadapt_sgd")
#: schedule-free names (run at a constant LR: they replace the decay)
SCHEDULE_FREE = ("schedulefree", "schedulefree_adamw", "schedulefree_sgd")


def names() -> tuple[str, ...]:
    """Every optimizer name lrkit can build."""
    return tuple(NAMES)
