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
- :class:`DecayOnFinding` multiplies the scheduled LR by ``factor`` when a monitor raises a
  finding of ``kinds`` (default ``lr_too_high``: the monitor's advice, "lower the LR about 3x",
  taken at once instead of in the next run).
- :class:`SWA` averages the weights from a chosen step with ``torch.optim.swa_utils.AveragedModel``
  at its own constant LR (``SWALR``-style) and recomputes BatchNorm statistics at the end
  (Izmailov et al. 2018, "Averaging Weights Leads to Wider Optima and Better Generalization").
"""

from __future__ import annotations

import json
import math
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from ._json import finite_or_string
from .errors import as_real, check_choice, check_int, check_positive, require
from .monitor import Finding, Monitor
from .train import (Callback, FitResult, StepInfo, _cpu_copy, _is_extra_state, clip_grad_norm,
                    evaluating, global_grad_norm, module_modes, set_module_modes)

__all__ = [
    "LOG_FIELDS",
    "MonitorCallback",
    "JsonlLogger",
    "TensorBoardLogger",
    "EarlyStopping",
    "ClipGradNorm",
    "DecayOnPlateau",
    "DecayOnFinding",
    "SWA",
]

#: The fields of one line of a :class:`JsonlLogger` log (JSON lines: one object per line).
LOG_FIELDS: dict[str, str] = {
    "lrkit_log": "first line only: the log format version (1); with 'meta', a free-form object "
                 "(non-finite numbers in it written as the strings \"nan\", \"inf\", \"-inf\")",
    "step": "0-based index of the optimizer update (int)",
    "loss": "mean training loss of the update (float; null when not finite)",
    "lr": "learning rate of param group 0 used for the update (float)",
    "grad_norm": "global L2 norm of the gradients before clipping (float; absent if not computed; "
                 "the string \"inf\" when non-finite: a step a GradScaler skipped, or an overflow)",
    "val_metric": "validation metric measured after this update (float; only on evaluated steps)",
    "time": "seconds since the start of training (float)",
    "findings": "findings raised or updated at this step (list of Finding.to_dict(); if any)",
    "end": "last line only: {'stop_reason': ..., 'steps_done': ...}; a run that raised ends "
           "with {'stop_reason': 'error', 'steps_done': ..., 'error': '<type>: <message>'}",
}


def _has_pre_step_hook() -> bool:
    """Whether this lrkit's ``fit`` calls ``Callback.on_before_step`` before the optimizer step."""
    return "on_before_step" in Callback.__dict__


def _grad_norm(model: nn.Module) -> float:
    """Global L2 norm of the model's gradients (0.0 when none), one device sync."""
    return global_grad_norm(model.parameters())


def _check_eval(evaluate: Any, eval_every: Any, neither: str = "") -> None:
    """A callback's own validation schedule: both ``evaluate(model) -> metric`` and
    ``eval_every`` (an int >= 1), or neither (``neither`` says what happens then)."""
    if (evaluate is None) != (eval_every is None):
        raise ValueError("pass both evaluate=callable(model) -> metric and eval_every=int, "
                         f"or neither{neither}")
    if evaluate is not None and not callable(evaluate):
        raise TypeError(f"evaluate must be callable(model) -> float, got {evaluate!r}")
    if eval_every is not None:
        check_int("eval_every", eval_every, minimum=1)


class _Recorder(Callback):
    """Builds one record per update: step, loss, LR, gradient norm, validation metric, time.

    The gradient norm is ``StepInfo.grad_norm`` when ``fit`` computed it, else this callback
    computes it every ``grad_norm_every`` updates (before the optimizer step and before any
    clipping when ``fit`` has the ``on_before_step`` hook, else after the step from the same
    ``.grad`` tensors); once ``fit`` is seen to supply it (from the first update on), this
    callback computes none. The validation metric comes from this callback's own
    ``evaluate(model)`` every ``eval_every`` updates when it has one (``fit``'s ``on_eval`` is
    then ignored: one series, one metric), else from ``fit``'s ``evaluate``/``eval_every``.

    Per update the callback only appends the record to a buffer; every ``flush_every`` updates
    (and at an evaluation, a non-finite loss and the end) the buffered records are processed in a
    burst, all but the newest, which may still receive ``fit``'s ``on_eval`` metric. Processing a
    burst while the interpreter's caches are warm costs several times less than one record per
    training step (measured in ``benchmarks/bench_monitor.py``); the price is that findings (and
    ``stop_on``) come up to ``flush_every`` updates late. ``flush_every=1`` reacts at the next
    update.
    """

    def __init__(self, *, grad_norm_every: int | None = 1,
                 evaluate: Callable[[nn.Module], float] | None = None,
                 eval_every: int | None = None, flush_every: int = 16) -> None:
        if grad_norm_every is not None:
            check_int("grad_norm_every", grad_norm_every, minimum=1)
        self.grad_norm_every = grad_norm_every
        _check_eval(evaluate, eval_every)
        self.evaluate, self.eval_every = evaluate, eval_every
        self.flush_every = check_int("flush_every", flush_every, minimum=1)
        self._buf: list[dict] = []
        self._pre_norm: float | None = None
        self._fit_norms = False  # fit supplies StepInfo.grad_norm (seen at the first update)
        self._t = 0
        self._start = 0.0

    # -- fit's hooks
    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self._buf = []
        self._pre_norm = None
        self._fit_norms = False
        self._t = 0
        self._start = time.perf_counter()
        self._open(model, optimizer)

    def on_before_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        every = self.grad_norm_every
        self._pre_norm = (_grad_norm(model) if every is not None and self._t % every == 0
                          and not self._fit_norms else None)

    def on_step_end(self, info: StepInfo) -> bool | str | None:
        step = info.step
        gn = info.grad_norm
        if step == 0:
            self._fit_norms = gn is not None
        if gn is None and self.grad_norm_every is not None and step % self.grad_norm_every == 0:
            gn = self._pre_norm if self._pre_norm is not None else _grad_norm(info.model)
            self._pre_norm = None
        self._t = step + 1
        rec: dict[str, Any] = {"step": step, "loss": info.loss, "lr": info.lr}
        if gn is not None:
            rec["grad_norm"] = gn
        urgent = False
        if self.evaluate is not None and (step + 1) % self.eval_every == 0:
            with evaluating(info.model):
                rec["val_metric"] = as_real("evaluate(model)'s value", self.evaluate(info.model))
            urgent = True
        rec["time"] = time.perf_counter() - self._start
        buf = self._buf
        buf.append(rec)
        if urgent or len(buf) > self.flush_every or info.loss - info.loss != 0.0:
            return self._drain(keep_last=not urgent)
        return None

    def on_eval(self, step: int, metric: float) -> bool | str | None:
        if self.evaluate is not None:  # its own evaluate is its one source of metrics
            return None
        for rec in reversed(self._buf):
            if rec["step"] == step - 1:
                rec["val_metric"] = float(metric)
                return self._drain(keep_last=False)
        return self._observe_val({"step": step - 1, "val_metric": float(metric)})

    def on_train_end(self, result: FitResult) -> None:
        if result.stop_reason == "nan" and result.losses:
            # fit stops on a non-finite loss before calling on_step_end: record that update too
            self._buf.append({"step": result.steps_done - 1, "loss": result.losses[-1],
                              "lr": result.lrs[-1], "time": time.perf_counter() - self._start})
        self._drain(keep_last=False)
        self._close({"stop_reason": result.stop_reason, "steps_done": result.steps_done})

    def on_train_error(self, exc: BaseException) -> None:
        """The run raised: process and emit the buffered records, then close with the end
        record ``{"stop_reason": "error", "steps_done": ..., "error": "<type>: <message>"}``."""
        try:
            self._drain(keep_last=False)
        finally:
            self._close({"stop_reason": "error", "steps_done": self._t,
                         "error": f"{type(exc).__name__}: {exc}"})

    def _drain(self, *, keep_last: bool) -> bool | str | None:
        """Observe and emit the buffered records (all but the newest with ``keep_last``)."""
        buf = self._buf
        last = buf.pop() if keep_last and buf else None
        reason = None
        observe, emit = self._observe, self._emit
        for rec in buf:
            reason = observe(rec) or reason
            emit(rec)
        self._buf = [last] if last is not None else []
        return reason

    # -- for subclasses
    def _observe(self, rec: dict) -> bool | str | None:
        """A complete record, before it is emitted: react (add findings); may request a stop."""
        return None

    def _observe_val(self, rec: dict) -> bool | str | None:
        """A validation metric for an update that was already processed."""
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
    ``null``, a non-finite gradient norm as the string ``"inf"`` (``null`` would read back as
    "not computed", and the monitor treats the two differently: see
    ``Thresholds.skipped_steps``); so are non-finite numbers in ``meta`` (``"nan"``, ``"inf"``,
    ``"-inf"``): every line is strict JSON. Lines are formatted by hand (no ``json.dumps`` per
    step) and written through a buffered file, so logging costs about a microsecond per update.

    The header is on disk as soon as training starts, and the file is flushed at least every
    ``flush_secs`` seconds of training (checked as records are written, from their ``time``)
    as well as whenever its 64 KB buffer fills: a run killed outright (SIGKILL, the OOM killer)
    loses at most the last ``flush_secs`` and the records not yet processed (up to
    ``flush_every`` updates). A run that raises is closed with an ``end`` line saying
    ``"error"`` (``Callback.on_train_error``).

    Use it alone as a callback, or pass it to :class:`MonitorCallback` (``loggers=[...]``) to add
    the monitor's findings to the log.

    Args:
        path: the ``.jsonl`` file to write (parent folders are created; an existing file is
            replaced).
        meta: JSON-able facts about the run for the first line (task, LR, seed...).
        grad_norm_every, evaluate, eval_every, flush_every: see :class:`MonitorCallback`.
        flush_secs: flush the file to disk at least this often (seconds of training).
    """

    def __init__(self, path: str | Path, *, meta: Mapping[str, Any] | None = None,
                 grad_norm_every: int | None = 1,
                 evaluate: Callable[[nn.Module], float] | None = None,
                 eval_every: int | None = None, flush_every: int = 16,
                 flush_secs: float = 1.0) -> None:
        super().__init__(grad_norm_every=grad_norm_every, evaluate=evaluate, eval_every=eval_every,
                         flush_every=flush_every)
        self.flush_secs = check_positive("flush_secs", flush_secs)
        if not isinstance(path, (str, Path)):
            raise TypeError(f"path must be a str or Path, got {type(path).__name__}")
        self.path = Path(path)
        if self.path.is_dir():  # it was IsADirectoryError once training had started
            raise ValueError(f"path must be a file to write, got the folder {str(path)!r}")
        self.meta = dict(meta or {})
        self._header()  # fail at the door on a non-JSON-able meta
        self._file: Any = None
        self._flush_at = 0.0

    def _header(self) -> str:
        """The log's first line: its version and ``meta`` (non-finite numbers as strings)."""
        return json.dumps({"lrkit_log": 1, "meta": finite_or_string(self.meta)}, allow_nan=False)

    def _open(self, model: Any = None, optimizer: Any = None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "w", encoding="utf-8", buffering=1 << 16)
        self._write = self._file.write
        self._file.write(self._header() + "\n")
        self._file.flush()  # the header on disk at once, whatever happens to the run
        self._flush_at = self.flush_secs

    def _emit(self, rec: dict) -> None:
        self._write(self._line(rec))
        if rec["time"] >= self._flush_at:  # no clock read: the record's own time
            self._file.flush()
            self._flush_at = rec["time"] + self.flush_secs

    def _line(self, rec: dict) -> str:
        """One record as a JSON line."""
        loss, lr, gn = rec["loss"], rec["lr"], rec.get("grad_norm")
        n = len(rec)
        # fast path (most updates): finite numbers, no val metric, no findings
        if loss - loss == 0.0 and lr - lr == 0.0 and (
                n == 4 or (n == 5 and gn is not None and gn - gn == 0.0)):
            if gn is None:
                return (f'{{"step": {rec["step"]}, "loss": {loss!r}, "lr": {lr!r}, '
                        f'"time": {rec["time"]!r}}}\n')
            return (f'{{"step": {rec["step"]}, "loss": {loss!r}, "lr": {lr!r}, '
                    f'"grad_norm": {gn!r}, "time": {rec["time"]!r}}}\n')
        parts = [f'{{"step": {rec["step"]}, "loss": {_num(loss)}, "lr": {_num(lr)}']
        if gn is not None:  # non-finite: "inf", not null, which reads back as "not computed"
            parts.append(', "grad_norm": ' + (_num(gn) if gn - gn == 0.0 else '"inf"'))
        val = rec.get("val_metric")
        if val is not None:
            parts.append(f', "val_metric": {_num(val)}')
        parts.append(f', "time": {rec["time"]!r}')
        found = rec.get("findings")
        if found:
            parts.append(', "findings": ' + json.dumps([f.to_dict() for f in found]))
        parts.append("}\n")
        return "".join(parts)

    def _close(self, end: dict) -> None:
        if self._file is not None:
            try:
                self._file.write(json.dumps({"end": finite_or_string(end)}) + "\n")
            finally:
                self._file.close()
                self._file = None


class TensorBoardLogger(_Recorder):
    """Write ``lr``, ``loss``, ``grad_norm`` and ``val_metric`` scalars, and the findings as
    text (tag ``findings/<kind>``), through ``torch.utils.tensorboard.SummaryWriter``.

    Use it alone as a callback or in ``MonitorCallback(loggers=[...])`` (then findings are
    written too). Needs the ``tensorboard`` package (``pip install tensorboard``).
    """

    def __init__(self, log_dir: str | Path, *, grad_norm_every: int | None = 1,
                 evaluate: Callable[[nn.Module], float] | None = None,
                 eval_every: int | None = None, flush_secs: int = 30,
                 flush_every: int = 16) -> None:
        super().__init__(grad_norm_every=grad_norm_every, evaluate=evaluate, eval_every=eval_every,
                         flush_every=flush_every)
        if not isinstance(log_dir, (str, Path)):
            raise TypeError(f"log_dir must be a str or Path, got {type(log_dir).__name__}")
        self.log_dir = Path(log_dir)
        self.flush_secs = check_int("flush_secs", flush_secs, minimum=1)
        self._writer: Any = None

    def _open(self, model: Any = None, optimizer: Any = None) -> None:
        require("tensorboard", package="tensorboard", extra="monitor",
                needed_by="TensorBoardLogger")
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(self.log_dir), flush_secs=self.flush_secs)

    def _emit(self, rec: dict) -> None:
        w, t = self._writer, rec["step"]
        if math.isfinite(rec["loss"]):
            w.add_scalar("loss", rec["loss"], t)
        w.add_scalar("lr", rec["lr"], t)
        if rec.get("grad_norm") is not None and math.isfinite(rec["grad_norm"]):
            w.add_scalar("grad_norm", rec["grad_norm"], t)
        if rec.get("val_metric") is not None:
            w.add_scalar("val_metric", rec["val_metric"], t)
        for f in rec.get("findings") or ():
            w.add_text(f"findings/{f.kind}", f"{f}\n\nevidence: `{json.dumps(dict(f.evidence))}`",
                       t)

    def _close(self, end: dict) -> None:
        if self._writer is not None:
            self._writer.add_text("end", json.dumps(end))
            self._writer.close()
            self._writer = None


# ------------------------------------------------------------------------------------ monitor
class MonitorCallback(_Recorder):
    """Feed a :class:`lrkit.monitor.Monitor` from :func:`lrkit.train.fit` / :func:`lrkit.train.run`.

    Every update's loss, LR, global gradient norm (see ``grad_norm_every``) and validation metric
    go to ``monitor.update``; findings land on ``self.monitor.findings`` and in the ``loggers``
    (:class:`JsonlLogger`, :class:`TensorBoardLogger`), whose own options are then unused (this
    callback computes the record once for all of them).

    Args:
        monitor: the monitor to feed (default: ``Monitor(val_mode=..., total_steps=...)``); it is
            reset at the start of each run.
        total_steps: the planned number of updates (recommended; see :class:`Monitor`).
        val_mode: ``"min"`` or ``"max"``: whether a lower or a higher validation metric is better.
        loggers: sinks that receive every record and the findings.
        stop_on: finding kinds that stop the run (``fit``'s ``stop_reason`` becomes
            ``"monitor:<kind>"``), e.g. ``("diverged",)``; default none.
        flush_every: records are processed in bursts of this many updates (findings and stops
            come at most this late; 1 = at the next update); see ``_Recorder``.
        grad_norm_every: compute the global gradient norm every this many updates when ``fit``
            does not (None: only use ``fit``'s); it costs one pass over the gradients.
        evaluate, eval_every: measure a validation metric ``evaluate(model)`` every
            ``eval_every`` updates (in ``eval()`` mode, without gradients); then the metrics of
            ``fit(evaluate=..., eval_every=...)`` are ignored (one metric in one series, the one
            the loggers write, so a replay of the log finds what the run found); without them,
            ``fit``'s are used.

    Example:
        >>> cb = MonitorCallback(total_steps=300)          # doctest: +SKIP
        >>> lrkit.train.run(task, 3.0, callbacks=[cb])      # doctest: +SKIP
        >>> [str(f) for f in cb.monitor.findings]           # doctest: +SKIP
    """

    def __init__(self, monitor: Monitor | None = None, *, total_steps: int | None = None,
                 val_mode: str = "min", loggers: Sequence[_Recorder] = (),
                 stop_on: Iterable[str] = (), grad_norm_every: int | None = 1,
                 evaluate: Callable[[nn.Module], float] | None = None,
                 eval_every: int | None = None, flush_every: int = 16) -> None:
        super().__init__(grad_norm_every=grad_norm_every, evaluate=evaluate, eval_every=eval_every,
                         flush_every=flush_every)
        if monitor is None:
            monitor = Monitor(val_mode=val_mode, total_steps=total_steps)
        elif not isinstance(monitor, Monitor):
            raise TypeError(f"monitor must be a lrkit.monitor.Monitor, got {type(monitor).__name__}")
        elif total_steps is not None:
            monitor.total_steps = check_int("total_steps", total_steps, minimum=1)
        self.monitor = monitor
        self.loggers = list(loggers)
        for lg in self.loggers:
            if not isinstance(lg, (JsonlLogger, TensorBoardLogger)):
                raise TypeError(f"loggers must hold JsonlLogger or TensorBoardLogger objects, got "
                                f"{type(lg).__name__}")
        from .monitor import KINDS

        self.stop_on = frozenset(check_choice("stop_on[]", k, KINDS) for k in stop_on)

    def _open(self, model: Any = None, optimizer: Any = None) -> None:
        self.monitor.reset()
        for lg in self.loggers:
            if isinstance(lg, JsonlLogger):  # so `lrkit monitor LOG` replays with the same setup
                lg.meta.setdefault("val_mode", self.monitor.val_mode)
                if self.monitor.total_steps is not None:
                    lg.meta.setdefault("total_steps", self.monitor.total_steps)
                spec = getattr(self.monitor.schedule, "spec", None)  # an lrkit Schedule's
                if spec is not None:
                    lg.meta.setdefault("schedule", spec)
            lg._open(model, optimizer)

    def _react(self, rec: dict, new: list[Finding]) -> bool | str | None:
        if new:
            rec["findings"] = list(rec.get("findings") or []) + new
            for f in new:
                if f.kind in self.stop_on:
                    return f"monitor:{f.kind}"
        return None

    def _drain(self, *, keep_last: bool) -> bool | str | None:
        """Feed the buffered records to the monitor in one :meth:`Monitor.update_many` call per
        run of plain records (no gradient norm, no validation metric), then emit them."""
        buf = self._buf
        last = buf.pop() if keep_last and buf else None
        reason = None
        plain: list[dict] = []
        for rec in buf:
            if len(rec) == 4:  # step, loss, lr, time
                plain.append(rec)
                continue
            if plain:
                reason = self._observe_plain(plain) or reason
                plain = []
            reason = self._observe(rec) or reason
        if plain:
            reason = self._observe_plain(plain) or reason
        emit = self._emit
        for rec in buf:
            emit(rec)
        self._buf = [last] if last is not None else []
        return reason

    def _observe_plain(self, recs: list[dict]) -> bool | str | None:
        new = self.monitor.update_many([r["step"] for r in recs], [r["loss"] for r in recs],
                                       [r["lr"] for r in recs])
        if not new:
            return None
        by_step = {r["step"]: r for r in recs}
        reason = None
        for f in new:
            rec = by_step[f.evidence.get("updated", f.step)]
            reason = self._react(rec, [f]) or reason
        return reason

    def _observe(self, rec: dict) -> bool | str | None:
        new = self.monitor.update(rec["step"], rec["loss"], lr=rec["lr"],
                                  grad_norm=rec.get("grad_norm"), val_metric=rec.get("val_metric"))
        return self._react(rec, new) if new else None

    def _observe_val(self, rec: dict) -> bool | str | None:
        return self._react(rec, self.monitor.observe_val(rec["step"], rec["val_metric"]))

    def _emit(self, rec: dict) -> None:
        for lg in self.loggers:
            lg._emit(rec)

    def _close(self, end: dict) -> None:
        for lg in self.loggers:
            lg._close(end)


# -------------------------------------------------------------------------------------- acting
class _ValSource(Callback):
    """Validation metrics from an own ``evaluate(model)`` schedule or, without one, from
    ``fit``'s ``on_eval``: one source, never both (each evaluation would count twice); they
    reach :meth:`_metric`."""

    def __init__(self, evaluate: Callable[[nn.Module], float] | None,
                 eval_every: int | None) -> None:
        _check_eval(evaluate, eval_every,
                    " (then fit(evaluate=..., eval_every=...) supplies them)")
        self.evaluate, self.eval_every = evaluate, eval_every

    def needs_eval(self) -> bool:
        return self.evaluate is None

    def on_step_end(self, info: StepInfo) -> bool | str | None:
        if self.evaluate is not None and (info.step + 1) % self.eval_every == 0:
            with evaluating(info.model):
                metric = as_real("evaluate(model)'s value", self.evaluate(info.model))
            return self._metric(info.step + 1, metric)
        return None

    def on_eval(self, step: int, metric: float) -> bool | str | None:
        if self.evaluate is not None:  # its own evaluate is its one source
            return None
        return self._metric(step, metric)

    def _metric(self, step: int, metric: float) -> bool | str | None:
        """A validation metric measured after update ``step`` (1-based); may request a stop."""
        return None


class EarlyStopping(_ValSource):
    """Stop once the validation metric has not improved for ``patience`` evaluations in a row
    (Keras' and Lightning's ``EarlyStopping``: ``patience=1`` stops at the first evaluation
    that does not improve, as does ``patience=0``).

    An evaluation improves when ``metric < best - min_delta |best|`` (``mode="min"``;
    ``metric > best + min_delta |best|`` for ``"max"``), relative by default;
    ``delta_mode="abs"`` uses ``min_delta`` itself. ``|best|`` keeps the direction for a
    negative metric (a negative log-likelihood, an ELBO), where ``ReduceLROnPlateau``'s
    ``best (1 - min_delta)`` would call a worse value better. The metric comes from its own
    ``evaluate``/``eval_every`` or, without them, from ``fit(evaluate=..., eval_every=...)``.
    With ``restore_best`` the model's weights at the best evaluation are put back at the end of
    training (kept in CPU memory; not when the run raises). The stop reason is
    ``"early_stop"``.
    """

    def __init__(self, *, patience: int = 5, mode: str = "min", min_delta: float = 0.0,
                 delta_mode: str = "rel", restore_best: bool = False,
                 evaluate: Callable[[nn.Module], float] | None = None,
                 eval_every: int | None = None) -> None:
        super().__init__(evaluate, eval_every)
        self.patience = check_int("patience", patience, minimum=0)
        self.mode = check_choice("mode", mode, ("min", "max"))
        self.min_delta = check_positive("min_delta", min_delta, allow_zero=True)
        self.delta_mode = check_choice("delta_mode", delta_mode, ("rel", "abs"))
        self.restore_best = bool(restore_best)
        self.reset()

    def reset(self) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_step = -1
        self.bad = 0
        self.stopped_step: int | None = None
        self._best_state: dict | None = None
        self._model: nn.Module | None = None

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.reset()
        self._model = model

    def _improves(self, metric: float) -> bool:
        """Whether ``metric`` beats ``self.best`` by more than ``min_delta`` (a NaN never
        does; the first finite metric always does)."""
        best = self.best
        if not math.isfinite(best):
            return metric < best if self.mode == "min" else metric > best
        margin = self.min_delta * (abs(best) if self.delta_mode == "rel" else 1.0)
        return metric < best - margin if self.mode == "min" else metric > best + margin

    def _metric(self, step: int, metric: float) -> bool | str | None:
        if self._improves(metric):
            self.best, self.best_step, self.bad = metric, step, 0
            if self.restore_best and self._model is not None:
                # (a get_extra_state() object deep-copied, tensors cloned to CPU)
                self._best_state = _cpu_copy(self._model.state_dict())
            return None
        self.bad += 1
        if self.bad >= self.patience:
            self.stopped_step = step
            return "early_stop"
        return None

    def on_train_end(self, result: FitResult) -> None:
        if self.restore_best and self._best_state is not None and self._model is not None:
            self._model.load_state_dict(self._best_state)


def _require_hook(name: str) -> None:
    if not _has_pre_step_hook():
        raise RuntimeError(f"{name} needs lrkit.train.Callback.on_before_step (fit calls it after "
                           "backward, before optimizer.step()); this lrkit's fit has no such hook")


class ClipGradNorm(Callback):
    """Clip the global gradient norm to ``max_norm`` before each optimizer step
    (``torch.nn.utils.clip_grad_norm_``: ``g <- g min(1, max_norm / (||g|| + 1e-6))``).

    Runs in ``fit``'s ``on_before_step`` hook (after backward and AMP unscaling). Put a
    :class:`MonitorCallback` before it in the list to monitor the unclipped norm.
    ``norms`` holds each step's norm before clipping; ``clipped`` counts the steps it cut.
    """

    def __init__(self, max_norm: float, *, norm_type: float = 2.0) -> None:
        self.max_norm = check_positive("max_norm", max_norm)
        self.norm_type = check_positive("norm_type", norm_type)
        self.norms: list[float] = []
        self.clipped = 0
        self._params: list[torch.Tensor] = []

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        _require_hook("ClipGradNorm")
        self._params = [p for g in optimizer.param_groups for p in g["params"]]
        self.norms, self.clipped = [], 0

    def on_before_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if self.norm_type == 2.0:  # sparse gradients too
            norm = clip_grad_norm(self._params, self.max_norm)
        else:
            norm = float(torch.nn.utils.clip_grad_norm_(self._params, self.max_norm,
                                                         norm_type=self.norm_type))
        self.norms.append(norm)
        self.clipped += norm > self.max_norm


class _Scaling:
    """What the LR scalers of one optimizer share: each group's LR as the schedule (or the
    user) last set it (``base``), the LR last written over it (``written``), and the scalers in
    the order ``fit`` started them (``members``), so that each scaler's transform applies once
    whatever the others do."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.base = [float(g["lr"]) for g in optimizer.param_groups]
        self.written: list[float | None] = [None] * len(optimizer.param_groups)
        self.members: list[_LRScaler] = []
        self.applied = False


#: an optimizer's shared :class:`_Scaling` (weakly keyed: it goes with the optimizer)
_SCALING: "weakref.WeakKeyDictionary[torch.optim.Optimizer, _Scaling]" = \
    weakref.WeakKeyDictionary()


class _LRScaler(Callback):
    """Multiply (or replace) the LR the schedule set, once per step, whatever the schedule.

    ``fit`` sets the LR at the start of a step (a callable schedule) or after the optimizer step
    (an :class:`lrkit.torch.LRSchedule`); without a schedule the LR just stays. A scaler
    rewrites each group's LR in ``on_step_end`` (for the next step) and ``on_before_step`` (for
    this step), and treats a group LR other than the one last written over it as the
    schedule's fresh value, so a scale is applied exactly once per step and composes with any
    schedule. Scalers on one optimizer share that record and write the composition of their
    transforms, in the order ``fit`` started them (``DecayOnPlateau`` and ``DecayOnFinding``
    together: the product of their scales; each alone read the other's write as a fresh
    schedule value and scaled it again, so the LR without a schedule fell as a power of the
    steps).
    """

    def _start(self, optimizer: torch.optim.Optimizer) -> None:
        shared = _SCALING.get(optimizer)
        if shared is None or shared.applied or self in shared.members:  # a new fit
            shared = _SCALING[optimizer] = _Scaling(optimizer)
        shared.members.append(self)
        self._opt, self._shared = optimizer, shared

    def _target(self, i: int, base: float) -> float | None:
        return None

    def _apply(self) -> None:
        shared = self._shared
        shared.applied = True
        for i, g in enumerate(self._opt.param_groups):
            # by identity, not value: a schedule's decay can land on the very value a scale
            # wrote (step(0.1, gamma=0.1) at 0.01 where DecayOnPlateau(factor=0.1) had cut to
            # it), and read as "unchanged" the decay was lost for the rest of the run; every
            # schedule write is a new float object, and an LR nothing rewrote is this one
            if shared.written[i] is None or g["lr"] is not shared.written[i]:
                shared.base[i] = float(g["lr"])
            lr = shared.base[i]
            for m in shared.members:
                new = m._target(i, lr)
                lr = lr if new is None else new
            g["lr"] = lr
            shared.written[i] = lr

    def on_before_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self._apply()


class DecayOnPlateau(_LRScaler, _ValSource):
    """Decay the LR when a metric stops improving: the scheduled LR times the scale of a
    :class:`lrkit.torch.Plateau` rule (ReduceLROnPlateau's rule, reused), so it composes with any
    lrkit schedule.

    ``source="val"`` feeds the rule the validation metric (from ``fit``'s ``on_eval`` or
    ``evaluate``/``eval_every``); ``source="loss"`` feeds it the mean training loss of every
    ``every`` updates. ``scale`` is the current multiplier; ``cuts`` lists the steps of each cut.
    """

    def __init__(self, rule: Any = None, *, source: str = "val", every: int = 50,
                 evaluate: Callable[[nn.Module], float] | None = None,
                 eval_every: int | None = None) -> None:
        _ValSource.__init__(self, evaluate, eval_every)
        from .torch import Plateau

        if rule is None:
            rule = Plateau(mode="min", factor=0.1, patience=2)
        if not isinstance(rule, Plateau):
            raise TypeError(f"rule must be a lrkit.torch.Plateau, got {type(rule).__name__}")
        self.rule = rule
        self.source = check_choice("source", source, ("val", "loss"))
        self.every = check_int("every", every, minimum=1)
        self.state = rule.initial()
        self.cuts: list[int] = []

    @property
    def scale(self) -> float:
        return self.state.scale

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self._start(optimizer)
        self.state = self.rule.initial()
        self.cuts = []
        self._sum, self._n = 0.0, 0

    def _target(self, i: int, base: float) -> float | None:
        return base * self.state.scale

    def needs_eval(self) -> bool:
        return self.source == "val" and self.evaluate is None

    def _report(self, step: int, metric: float) -> None:
        before = self.state.scale
        self.state = self.rule.update(self.state, metric)
        if self.state.scale < before:
            self.cuts.append(step)

    def on_step_end(self, info: StepInfo) -> bool | str | None:
        if self.source == "loss":
            self._sum += info.loss
            self._n += 1
            if self._n == self.every:
                self._report(info.step + 1, self._sum / self._n)
                self._sum, self._n = 0.0, 0
        reason = _ValSource.on_step_end(self, info)
        self._apply()
        return reason

    def _metric(self, step: int, metric: float) -> bool | str | None:
        if self.source == "val":
            self._report(step, metric)
            self._apply()
        return None


class DecayOnFinding(_LRScaler):
    """Multiply the scheduled LR by ``factor`` when ``monitor`` raises a finding of one of
    ``kinds``, for the rest of the run (composes with any lrkit schedule).

    The default acts on ``lr_too_high`` (any of the monitor's readings,
    :data:`lrkit.monitor.RULES`: the smoothed loss climbing back from its best, the validation
    metric undone while the training loss stalls, or its best early in the run and worse since)
    with the monitor's advice for a climbing loss, a 3x lower LR, taken in the same run rather
    than the next. Put it after the callback that feeds the monitor (:class:`MonitorCallback`,
    whose findings come at most ``flush_every`` updates late). The monitor raises each kind
    once (and then only updates it), so each kind cuts at most once; a finding raised before
    ``start_step`` never does (pass the step where a warmup ends: a climb while the schedule
    still raises the LR is the warmup's transient, the loss spiking and recovering as the LR
    first passes the curvature's limit, Lewkowycz et al. 2020, not the peak's verdict).
    ``scale`` is the current multiplier and ``cuts`` the ``(step, finding)`` of each cut: the
    step the cut was made at and the :class:`~lrkit.monitor.Finding` as it was then (its
    ``rule`` names the reading that raised it).

    Measured (``benchmarks/RESULTS.md``, twenty-second round): in ``lrkit tune``'s final run on
    a separable task under 13 torch optimizers it cut 8 runs' regret against the grid's best
    (mean +29.2% -> +17.6%) and left the other 5 unchanged.

    Example:
        >>> mon = MonitorCallback(total_steps=300)                      # doctest: +SKIP
        >>> lrkit.train.run(task, 0.1, callbacks=[mon, DecayOnFinding(mon.monitor)])  # doctest: +SKIP
    """

    def __init__(self, monitor: Monitor, *, kinds: Iterable[str] = ("lr_too_high",),
                 factor: float = 1 / 3, start_step: int = 0) -> None:
        if not isinstance(monitor, Monitor):
            raise TypeError(f"monitor must be a lrkit.monitor.Monitor (MonitorCallback's "
                            f".monitor), got {type(monitor).__name__}")
        from .monitor import KINDS

        if isinstance(kinds, str) or not isinstance(kinds, Iterable):
            raise TypeError(f"kinds must be a sequence of finding kinds, got {kinds!r}")
        self.kinds = frozenset(check_choice("kinds[]", k, KINDS) for k in kinds)
        if not self.kinds:
            raise ValueError("kinds must name at least one finding kind")
        factor = check_positive("factor", factor)
        if factor >= 1.0:
            raise ValueError(f"factor must be in (0, 1) (the LR is multiplied by it), got "
                             f"{factor!r}")
        self.monitor, self.factor = monitor, factor
        self.start_step = check_int("start_step", start_step, minimum=0)
        self.scale = 1.0
        self.cuts: list[tuple[int, Finding]] = []
        self._seen: set[str] = set()

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self._start(optimizer)
        self.scale = 1.0
        self.cuts = []
        self._seen = {f.kind for f in self.monitor.findings}

    def _target(self, i: int, base: float) -> float | None:
        return base * self.scale

    def on_step_end(self, info: StepInfo) -> bool | str | None:
        found = self.monitor.findings
        self._seen &= {f.kind for f in found}  # (the monitor was reset after this started)
        for f in found:
            if f.kind in self.kinds and f.kind not in self._seen:
                self._seen.add(f.kind)
                if f.step >= self.start_step:
                    self.scale *= self.factor
                    self.cuts.append((info.step, f))
        self._apply()
        return None


class SWA(_LRScaler):
    """Stochastic weight averaging from ``start_step`` at its own LR (Izmailov et al. 2018).

    From update ``start_step`` on, every group's LR is ``swa_lr`` (after ``anneal_steps`` of
    cosine annealing from the scheduled LR, as ``torch.optim.swa_utils.SWALR``), and every
    ``avg_every`` updates the weights join a ``torch.optim.swa_utils.AveragedModel`` (equal-weight
    running mean). At the end of training the statistics of the BatchNorm layers that train are
    recomputed for the average over ``bn_batches`` (needed when one does), as
    ``torch.optim.swa_utils.update_bn`` does, with the model in the modes ``fit`` trains it in:
    a BatchNorm layer frozen in eval mode (fine-tuning) keeps its statistics (torch's
    ``update_bn`` resets every one). With ``swap=True`` the averaged weights are then copied
    into the model (so :func:`lrkit.train.run` scores the average); a module's extra state
    (``get_extra_state()``) stays the model's own. ``averaged`` is the ``AveragedModel``. A
    run that raises swaps nothing in (the model keeps its last weights).

    The BatchNorm pass feeds the model ``batch[0]`` of a list or tuple batch (or the batch, a
    tensor), as ``update_bn``; for other batches (dicts) pass ``forward(model, batch)``, which
    runs the model on one batch (``fit``'s ``step_fn`` does: its loss is ignored). Dict batches
    in a list or tuple ``bn_batches`` without ``forward`` are refused when training starts.
    """

    def __init__(self, start_step: int, swa_lr: float, *, anneal_steps: int = 0,
                 avg_every: int = 1, bn_batches: Iterable | None = None,
                 forward: Callable[[nn.Module, Any], Any] | None = None,
                 swap: bool = True) -> None:
        self.start_step = check_int("start_step", start_step, minimum=0)
        self.swa_lr = check_positive("swa_lr", swa_lr)
        self.anneal_steps = check_int("anneal_steps", anneal_steps, minimum=0)
        self.avg_every = check_int("avg_every", avg_every, minimum=1)
        if bn_batches is not None and not hasattr(bn_batches, "__iter__"):
            raise TypeError(f"bn_batches must be an iterable of batches, got "
                            f"{type(bn_batches).__name__}")
        if forward is not None and not callable(forward):
            raise TypeError(f"forward must be callable(model, batch), got {forward!r}")
        self.bn_batches, self.forward = bn_batches, forward
        self.swap = bool(swap)
        self.averaged: Any = None
        self.n_averaged = 0

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        from torch.optim.swa_utils import AveragedModel

        # the modes fit trains in (lrkit.train.training_modes, not yet applied here): a model
        # in eval mode is switched to train(), else every submodule keeps its own flag
        modes = module_modes(model) if model.training else {n: True for n in module_modes(model)}
        self._bn = [n for n, m in model.named_modules()
                    if isinstance(m, nn.modules.batchnorm._BatchNorm) and modes[n]]
        if self._bn:
            self._check_bn_batches()
        self._start(optimizer)
        self._model = model
        self._modes = modes
        self._t = 0
        self._anneal_from: dict[int, float] = {}
        self.averaged = AveragedModel(model)
        self.n_averaged = 0

    def _check_bn_batches(self) -> None:
        """Refuse, before training, ``bn_batches`` that the BatchNorm pass cannot feed."""
        if self.bn_batches is None:
            raise ValueError(f"the model has BatchNorm layers that train ({self._bn[0]!r}): "
                             "pass bn_batches=<training batches> so SWA can recompute their "
                             "statistics for the averaged weights")
        if self.forward is not None or not isinstance(self.bn_batches, (list, tuple)):
            return  # (a DataLoader is not drawn from here: that would change its next epoch)
        for batch in self.bn_batches[:1]:
            _bn_input(batch)

    def _target(self, i: int, base: float) -> float | None:
        k = self._t - self.start_step  # updates into the SWA phase (the one about to run)
        if k < 0:
            return None
        lr0 = self._anneal_from.setdefault(i, base)  # the LR as the SWA phase began
        if self.anneal_steps and k < self.anneal_steps:
            # SWALR's cosine: alpha = (1 - cos(pi t / T)) / 2, lr = swa_lr alpha + lr0 (1 - alpha)
            alpha = (1 - math.cos(math.pi * (k + 1) / self.anneal_steps)) / 2
            return self.swa_lr * alpha + lr0 * (1 - alpha)
        return self.swa_lr

    def on_step_end(self, info: StepInfo) -> bool | str | None:
        k = info.step - self.start_step
        if k >= 0 and k % self.avg_every == 0:
            self.averaged.update_parameters(info.model)
            self.n_averaged += 1
        self._t = info.step + 1
        self._apply()
        return None

    def on_train_end(self, result: FitResult) -> None:
        if self.n_averaged == 0:
            return
        if self._bn:
            self._update_bn()
        if self.swap:
            live = self._model.state_dict()
            self._model.load_state_dict({k: live[k] if _is_extra_state(k) else v
                                         for k, v in self.averaged.module.state_dict().items()})

    @torch.no_grad()
    def _update_bn(self) -> None:
        """``torch.optim.swa_utils.update_bn`` over ``bn_batches`` for the averaged weights,
        for the BatchNorm layers that train only: their statistics reset and recomputed as a
        cumulative mean (momentum ``None``), the average in the modes ``fit`` trains in; each
        batch (its model input without ``forward``) moved to the weights' device, and fed to
        the model through ``forward`` when given."""
        from .train import _to_device

        module = self.averaged.module
        dev = next(self._model.parameters()).device
        bns = [module.get_submodule(n) for n in self._bn]
        momenta = [bn.momentum for bn in bns]
        was = module_modes(module)
        set_module_modes(module, self._modes)
        try:
            for bn in bns:
                bn.reset_running_stats()
                bn.momentum = None
            for b in self.bn_batches:
                if self.forward is None:
                    module(_to_device(_bn_input(b), dev))
                else:
                    self.forward(module, _to_device(b, dev))
        finally:
            for bn, m in zip(bns, momenta):
                bn.momentum = m
            set_module_modes(module, was)


def _bn_input(batch: Any) -> Any:
    """The model input of a batch as ``torch.optim.swa_utils.update_bn`` takes it (``batch[0]``
    of a list or tuple, a tensor itself); a TypeError naming ``forward`` for any other."""
    if isinstance(batch, (list, tuple)) and batch:
        return batch[0]
    if isinstance(batch, torch.Tensor):
        return batch
    raise TypeError(f"bn_batches holds {type(batch).__name__} batches, and SWA's BatchNorm pass "
                    "(torch's update_bn) feeds the model batch[0] of a list or tuple, or a "
                    "tensor: pass SWA(..., forward=callable(model, batch)) that runs the model "
                    "on one (fit's step_fn will do)")
