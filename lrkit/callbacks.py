"""Callbacks for :func:`lrkit.train.fit` / :func:`lrkit.train.run` that watch training and act.

Watching:

- :class:`MonitorCallback` feeds a :class:`lrkit.monitor.Monitor` with every update (loss, LR,
  global gradient norm, validation metric) and can stop a diverged run; its findings are kept on
  ``callback.monitor.findings``.
- :class:`JsonlLogger` writes one JSON object per update (fields in :data:`LOG_FIELDS`, also in
  ``docs/monitor.md``); ``lrkit monitor LOG.jsonl`` re-reads it.
- :class:`TensorBoardLogger` writes ``lr``, ``loss``, ``grad_norm``, ``val_metric`` scalars and the
  findings as text through ``torch.utils.tensorboard``.

Acting (each composes with any lrkit schedule, since each only reads or scales what ``fit`` set):

- :class:`EarlyStopping` stops when the validation metric has not improved for ``patience``
  evaluations (seed 002, "Early Stopping: ... stop training when the validation performance does
  not improve for the specified patience").
- :class:`ClipGradNorm` clips the global gradient norm before each optimizer step (seed 002,
  "Gradient Clipping: set a threshold for the maximum gradient norm"), as
  ``torch.nn.utils.clip_grad_norm_``; it needs the ``Callback.on_before_step`` hook of ``fit``.
- :class:`DecayOnPlateau` multiplies the scheduled LR by the scale of a
  :class:`lrkit.torch.Plateau` rule fed with the validation metric or the smoothed training loss.
- :class:`SWA` averages the weights from a chosen step with ``torch.optim.swa_utils.AveragedModel``
  at its own constant LR (``SWALR``-style) and recomputes BatchNorm statistics at the end
  (Izmailov et al. 2018, "Averaging Weights Leads to Wider Optima and Better Generalization").
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from .errors import check_choice, check_int, check_positive
from .monitor import Finding, Monitor
from .train import Callback, FitResult, StepInfo

__all__ = [
    "LOG_FIELDS",
    "MonitorCallback",
    "JsonlLogger",
    "TensorBoardLogger",
    "EarlyStopping",
    "ClipGradNorm",
    "DecayOnPlateau",
    "SWA",
]

#: The fields of one line of a :class:`JsonlLogger` log (JSON lines: one object per line).
LOG_FIELDS: dict[str, str] = {
    "lrkit_log": "first line only: the log format version (1); with 'meta', a free-form object",
    "step": "0-based index of the optimizer update (int)",
    "loss": "mean training loss of the update (float; null when not finite)",
    "lr": "learning rate of param group 0 used for the update (float)",
    "grad_norm": "global L2 norm of the gradients before clipping (float; absent if not computed)",
    "val_metric": "validation metric measured after this update (float; only on evaluated steps)",
    "time": "seconds since the start of training (float)",
    "findings": "findings raised or updated at this step (list of Finding.to_dict(); if any)",
    "end": "last line only: {'stop_reason': ..., 'steps_done': ...}",
}


def _has_pre_step_hook() -> bool:
    """Whether this lrkit's ``fit`` calls ``Callback.on_before_step`` before the optimizer step."""
    return "on_before_step" in Callback.__dict__


def _grad_norm(model: nn.Module) -> float:
    """Global L2 norm of the model's gradients (0.0 when none), one device sync."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return 0.0
    norms = torch._foreach_norm(grads) if hasattr(torch, "_foreach_norm") else [
        g.norm() for g in grads]
    if len(norms) == 1:
        return float(norms[0])
    return float(torch.linalg.vector_norm(torch.stack([n.float() for n in norms])))


def _finite_or_none(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


class _Recorder(Callback):
    """Builds one record per update: step, loss, LR, gradient norm, validation metric, time.

    The gradient norm is ``StepInfo.grad_norm`` when ``fit`` computed it, else this callback
    computes it every ``grad_norm_every`` updates (before the optimizer step and before any
    clipping when ``fit`` has the ``on_before_step`` hook, else after the step from the same
    ``.grad`` tensors). The validation metric comes from ``fit``'s ``evaluate``/``eval_every``
    (``on_eval``) or from this callback's own ``evaluate(model)`` every ``eval_every`` updates.
    Records are emitted one update late (or at the end), so a metric reported by ``on_eval``
    after ``on_step_end`` joins its update's record.
    """

    def __init__(self, *, grad_norm_every: int | None = 1,
                 evaluate: Callable[[nn.Module], float] | None = None,
                 eval_every: int | None = None) -> None:
        if grad_norm_every is not None:
            check_int("grad_norm_every", grad_norm_every, minimum=1)
        self.grad_norm_every = grad_norm_every
        if (evaluate is None) != (eval_every is None):
            raise ValueError("pass both evaluate=callable(model) -> metric and eval_every=int, "
                             "or neither")
        if evaluate is not None and not callable(evaluate):
            raise TypeError(f"evaluate must be callable(model) -> float, got {evaluate!r}")
        if eval_every is not None:
            check_int("eval_every", eval_every, minimum=1)
        self.evaluate, self.eval_every = evaluate, eval_every
        self._pending: dict | None = None
        self._pre_norm: float | None = None
        self._t = 0
        self._start = 0.0

    # -- fit's hooks
    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self._pending = None
        self._pre_norm = None
        self._t = 0
        self._start = time.perf_counter()
        self._open(model, optimizer)

    def on_before_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        every = self.grad_norm_every
        self._pre_norm = _grad_norm(model) if every is not None and self._t % every == 0 else None

    def on_step_end(self, info: StepInfo) -> bool | str | None:
        reason = self._flush()
        gn = info.grad_norm
        if gn is None and self.grad_norm_every is not None and info.step % self.grad_norm_every == 0:
            gn = self._pre_norm if self._pre_norm is not None else _grad_norm(info.model)
        self._pre_norm = None
        self._t = info.step + 1
        rec: dict[str, Any] = {"step": info.step, "loss": info.loss, "lr": info.lr}
        if gn is not None:
            rec["grad_norm"] = gn
        if self.evaluate is not None and (info.step + 1) % self.eval_every == 0:
            model = info.model
            was_training = model.training
            model.eval()
            with torch.no_grad():
                rec["val_metric"] = float(self.evaluate(model))
            model.train(was_training)
        rec["time"] = time.perf_counter() - self._start
        self._pending = rec
        return reason or self._observe(rec)

    def on_eval(self, step: int, metric: float) -> bool | str | None:
        if self._pending is not None and self._pending["step"] == step - 1:
            self._pending["val_metric"] = float(metric)
            return self._observe_val(self._pending)
        return None

    def on_train_end(self, result: FitResult) -> None:
        self._flush()
        if result.stop_reason == "nan" and result.losses:
            # fit stops on a non-finite loss before calling on_step_end: record that update too
            t = result.steps_done - 1
            rec = {"step": t, "loss": result.losses[-1], "lr": result.lrs[-1],
                   "time": time.perf_counter() - self._start}
            self._observe(rec)
            self._pending = rec
            self._flush()
        self._close({"stop_reason": result.stop_reason, "steps_done": result.steps_done})

    # -- for subclasses
    def _flush(self) -> bool | str | None:
        rec, self._pending = self._pending, None
        if rec is not None:
            self._emit(rec)
        return None

    def _observe(self, rec: dict) -> bool | str | None:
        """A new record (without a late ``on_eval`` metric yet): react; may request a stop."""
        return None

    def _observe_val(self, rec: dict) -> bool | str | None:
        """``rec`` just got its ``val_metric`` from ``on_eval``."""
        return None

    def _open(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        pass

    def _emit(self, rec: dict) -> None:
        pass

    def _close(self, end: dict) -> None:
        pass


# ------------------------------------------------------------------------------------ logging
def _num(x: float) -> str:
    """A float as JSON: ``repr`` for finite values (round-trips exactly), ``null`` otherwise."""
    return repr(float(x)) if math.isfinite(x) else "null"


class JsonlLogger(_Recorder):
    """Write one JSON object per optimizer update to ``path`` (fields: :data:`LOG_FIELDS`).

    The first line is ``{"lrkit_log": 1, "meta": {...}}``, the last ``{"end": {...}}``; any
    JSON-lines reader (``pandas.read_json(path, lines=True)``, ``jq``) reads it, and
    :func:`lrkit.monitor.read_log` turns it back into arrays. Non-finite losses are written as
    ``null``. Lines are formatted by hand (no ``json.dumps`` per step) and written through a
    buffered file, so logging costs about a microsecond per update.

    Use it alone as a callback, or pass it to :class:`MonitorCallback` (``loggers=[...]``) to add
    the monitor's findings to the log.

    Args:
        path: the ``.jsonl`` file to write (parent folders are created; an existing file is
            replaced).
        meta: JSON-able facts about the run for the first line (task, LR, seed...).
        grad_norm_every, evaluate, eval_every: see :class:`MonitorCallback`.
    """

    def __init__(self, path: str | Path, *, meta: Mapping[str, Any] | None = None,
                 grad_norm_every: int | None = 1,
                 evaluate: Callable[[nn.Module], float] | None = None,
                 eval_every: int | None = None) -> None:
        super().__init__(grad_norm_every=grad_norm_every, evaluate=evaluate, eval_every=eval_every)
        if not isinstance(path, (str, Path)):
            raise TypeError(f"path must be a str or Path, got {type(path).__name__}")
        self.path = Path(path)
        self.meta = dict(meta or {})
        json.dumps(self.meta)  # fail at the door on a non-JSON-able meta
        self._file: Any = None

    def _open(self, model: Any = None, optimizer: Any = None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "w", encoding="utf-8", buffering=1 << 16)
        self._file.write(json.dumps({"lrkit_log": 1, "meta": self.meta}) + "\n")

    def _emit(self, rec: dict) -> None:
        parts = [f'{{"step": {rec["step"]}, "loss": {_num(rec["loss"])}, "lr": {_num(rec["lr"])}']
        gn = rec.get("grad_norm")
        if gn is not None:
            parts.append(f', "grad_norm": {_num(gn)}')
        val = rec.get("val_metric")
        if val is not None:
            parts.append(f', "val_metric": {_num(val)}')
        parts.append(f', "time": {rec["time"]!r}')
        found = rec.get("findings")
        if found:
            parts.append(', "findings": ' + json.dumps([f.to_dict() for f in found]))
        parts.append("}\n")
        self._file.write("".join(parts))

    def _close(self, end: dict) -> None:
        if self._file is not None:
            self._file.write(json.dumps({"end": end}) + "\n")
            self._file.close()
            self._file = None
