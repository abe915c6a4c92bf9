"""Watch a training run and say what is wrong with its learning rate, and what to do.

``Monitor.update(step, loss, lr=..., grad_norm=..., val_metric=...)`` is called once per optimizer
update; ``monitor.findings`` lists frozen :class:`Finding` records, each raised once and then
updated in place (same ``kind`` and first ``step``, fresher ``evidence``). This module imports no
torch (numpy only, and only in :func:`read_log` and the CLI), so it serves any framework: lrkit's
own loop (:class:`lrkit.callbacks.MonitorCallback`), Lightning and Hugging Face
(:mod:`lrkit.integrations`), or a log re-read by ``lrkit monitor LOG.jsonl``.

The rules (thresholds are the fields of :class:`Thresholds`; all are scale-free, so they carry
from task to task: ratios of losses and gradient norms, and the *shape* of the loss curve against
"gradient-flow time" ``tau = sum of the LRs so far``, which makes the shape independent of the LR's
size and of warmup or decay):

========================  ===================================================================
kind                      rule (seed advice it implements)
========================  ===================================================================
``diverged``              a non-finite loss, or the smoothed loss above ``diverge_factor`` x the
                          first loss (seed 002: "too high ... oscillations or divergence";
                          seed 003: "some learning rates will cause your loss to diverge")
``lr_too_high``           the smoothed loss climbs back ``rise_share`` of the way from its best
                          to its first value (and by more than ``start_margin`` of it and ``z``
                          noise units of the difference), or rises above the first loss by
                          ``z`` noise units of that one sample or to ``rise_factor`` x it, or
                          after ``min_fraction`` of the run its level is still above the
                          first loss, or it has not fallen significantly while the gradient
                          norm rose ``stuck_grad_rise`` x (the weights knocked away), or the
                          val metric, best early, got worse beyond its noise while the training
                          loss did not fall (seed 002: "overshoot the minimum, leading to
                          oscillations"; seed 003: the loss "starts to get worse ... ragged")
``lr_too_low``            after ``min_fraction`` of the run: the loss falls but its curve has
                          not bent (at least ``low_share`` of the drop so far came in the second
                          half of ``tau``; a good LR front-loads its progress), or it bent a
                          little (``slow_share``) but lost less than ``slow_drop`` of its start
                          (and a straight line only while under ``low_max_drop``), or it has
                          not fallen significantly at all (drop under ``z`` standard
                          errors of the step-to-step noise; "check first" rather than "raise
                          10x" when it is no lower than its start: a too-high LR that broke
                          the model looks the same) (seed 002: "too low ... converge
                          very slowly"; seed 000: "if the loss function decreases slowly ... the
                          learning rate could be too low"); not read once the LR has annealed
                          below ``anneal_share`` of its peak (the noise floor falls with it),
                          nor after ``low_until`` of a run of known length. It says "raise
                          about 10x" under ``low_sure_drop``; past it, that the LR *may* be
                          low (best-LR runs of slow models sit there too): check first
``plateau``               the early drop is significant but the second half of ``tau`` brought no
                          significant further drop (seed 000: "decreases rapidly at the beginning
                          and then plateaus"; seed 002: "decay on plateau"). The seed reads this
                          as "LR too high"; it is the SGD noise floor of a good constant LR, and
                          the right action is to decay, not to restart lower.
``vanishing_gradients``   the smoothed gradient norm below ``vanish_factor`` x its starting
                          value while the loss has not dropped below ``1 - vanish_progress`` of
                          its start (seed 002: "Observe Gradients ... vanishing")
``exploding_gradients``   the smoothed gradient norm above ``explode_factor`` x its starting
                          value, or a non-finite norm on ``skipped_steps`` updates in a row
                          (fewer are a mixed-precision GradScaler skipping steps, by design)
                          (seed 002: "Gradient Clipping ... to prevent exploding
                          gradients")
``overfitting``           ``overfit_patience`` evaluations since the best one worse than it by
                          ``overfit_tolerance`` (relative), the mean of the last
                          ``overfit_patience`` evaluations worse than the best such mean by
                          more than ``overfit_z`` standard errors of the val metric's own noise
                          (a one-example wobble on a small val split is not overfitting), while
                          the training loss kept falling
                          (seed 002: "Monitor the training and validation loss to detect
                          overfitting"; "Early Stopping"). If the best evaluation came in the
                          first ``overfit_early`` of the run and the metric is ``overfit_gap``
                          worse, ``lr_too_high`` is raised (even within the noise: a metric
                          that jumps that much is the LR's noise): on a small-data task the LR
                          fits the noise long before the run ends (seed 000: the LR "may also
                          lead to overfitting"). Both wait while the LR is above its value at
                          the best evaluation (a warmup, a 1-cycle's rising half): a worse
                          metric then is the schedule's transient
========================  ===================================================================

The loss-shape rules assume a loss bounded below near zero (cross-entropy, MSE, bits); a
negative loss disables the ratio rules of ``diverged`` and ``lr_too_high`` (the shape rules
still run), and ``diverged`` then reads the rise above the first loss in units of the loss's
own scale instead (:func:`offset_rise_limit`, the training loop's rule). The monitor works
without a validation metric (only ``overfitting`` needs one).

Cost: O(1) Python arithmetic per update (two EMAs and a block sum); the shape rules run at block
ends (every ``block`` updates, then every ~2% of the blocks so far) on prefix sums with a binary
search, O(log n) each, so O(1) amortised; a raised finding is refreshed at most every n/10
updates (a ``plateau`` under a known ``schedule`` then scans the steps left for its decay: O(1)
amortised too, as the refreshes are at most ~10 per run); a val metric costs O(64) (the noise of
its last 64 evaluations).

>>> m = Monitor()
>>> for t in range(50):
...     new = m.update(t, 1.0 if t < 20 else 1e6, lr=0.1)  # the findings raised at this update
>>> [f.kind for f in m.findings]
['diverged']
"""

from __future__ import annotations

import argparse
import array
import bisect
import dataclasses
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ._json import finite_or_string as _json_num
from .errors import as_real, check_choice, check_int, check_positive, check_range, closest

__all__ = [
    "KINDS",
    "LR_KINDS",
    "RULES",
    "Finding",
    "Thresholds",
    "Monitor",
    "Log",
    "read_log",
    "replay",
    "add_cli_arguments",
    "cli_main",
]

#: the documented set of finding kinds
KINDS: tuple[str, ...] = ("diverged", "lr_too_high", "lr_too_low", "plateau",
                          "vanishing_gradients", "exploding_gradients", "overfitting")
#: the kinds whose action is "restart with another LR" (the labelled evaluation scores these)
LR_KINDS: frozenset[str] = frozenset({"diverged", "lr_too_high", "lr_too_low"})
#: the readings that raise each kind (``Finding.rule``), in words; a kind refreshed by another
#: reading takes that one's name with its evidence
RULES: Mapping[str, Mapping[str, str]] = {
    "diverged": {
        "non_finite": "the loss became NaN or infinite",
        "loss_ratio": "the smoothed loss rose to diverge_factor x its first value",
        "offset_rise": "a loss that goes negative rose (diverge_factor - 1) x its own scale "
                       "above its first value",
    },
    "lr_too_high": {
        "climbed_back": "the smoothed loss climbed back rise_share of the way from its best "
                        "to its start",
        "rose_from_start": "the smoothed loss rose above its start with no fall beyond its "
                           "noise before",
        "above_start": "at min_fraction of the run, the loss curve's end level is above its "
                       "first loss",
        "stuck_grad_rise": "the loss has not fallen significantly while the gradient norm rose "
                           "stuck_grad_rise x its start",
        "val_undone": "the val metric peaked early and got worse while the training loss did "
                      "not fall",
        "early_val_peak": "the val metric peaked in the first overfit_early of the run and is "
                          "overfit_gap worse (even within its noise)",
    },
    "lr_too_low": {
        "still_falling": "at min_fraction of the run, the loss curve has not bent and has "
                         "lost little",
        "not_fallen": "at min_fraction of the run, the loss has not fallen significantly",
    },
    "plateau": {
        "stalled": "a significant early drop and none since",
    },
    "vanishing_gradients": {
        "grad_fall": "the gradient norm fell vanish_factor x its start while the loss has not "
                     "moved",
    },
    "exploding_gradients": {
        "grad_growth": "the gradient norm grew explode_factor x its start",
        "non_finite_grad": "the gradient norm was non-finite on skipped_steps updates in a row",
    },
    "overfitting": {
        "val_peak": "the val metric is worse than its best beyond its noise while the training "
                    "loss kept falling",
    },
}

#: the first losses whose spread sets the scale of a loss that is not positive
NOISE_STEPS = 10


@dataclass
class FirstSpread:
    """The spread (population standard deviation) of a run's first :data:`NOISE_STEPS` losses,
    computed once, when the last of them arrives (``value`` is ``None`` until then)."""

    losses: list[float] = field(default_factory=list)
    value: float | None = None

    def add(self, loss: float) -> None:
        if self.value is None:
            self.losses.append(float(loss))
            if len(self.losses) == NOISE_STEPS:
                self.value = statistics.pstdev(self.losses)


def offset_rise_limit(ref: float, initial: float, best: float, spread: float | None,
                      factor: float) -> float:
    """The divergence threshold of a loss not bounded below by 0 (a Gaussian negative
    log-likelihood, a loss with a constant offset), where ``factor x ref`` means nothing
    (``4 x (-2)`` lies below every loss near ``-2``; fastai/fastai#962): ``ref + (factor - 1) D``
    with ``D = max(initial - best, spread)``, the descent so far or the spread of the first
    :data:`NOISE_STEPS` losses (:class:`FirstSpread`), the loss's own scale whatever its offset.
    ``inf`` while ``spread`` is ``None`` (too few losses yet), or when ``D`` is 0.
    Shift-invariant. Shared by :class:`lrkit.train.DivergenceStop` and :class:`Monitor`'s
    ``diverged``."""
    if spread is None:
        return math.inf
    scale = max(initial - best, spread)
    return ref + (factor - 1.0) * scale if scale > 0 else math.inf


@dataclass(frozen=True)
class Finding:
    """One diagnosis.

    Attributes:
        kind: one of :data:`KINDS`.
        step: the update at which the finding was first raised (it keeps this step when updated).
        evidence: the steps and numbers that triggered it (``"updated"``: the last update step).
        action: one plain sentence saying what to do, with a factor where one applies.
        rule: the reading of :data:`RULES` that raised it (or last refreshed it, with its
            evidence); ``""`` for a finding not made by :class:`Monitor` (an older log's).
    """

    kind: str
    step: int
    evidence: Mapping[str, Any] = field(default_factory=dict)
    action: str = ""
    rule: str = ""

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, KINDS)
        check_int("step", self.step, minimum=0)
        if self.rule:
            check_choice("rule", self.rule, tuple(RULES[self.kind]))
        object.__setattr__(self, "evidence", dict(self.evidence))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: a non-finite number in the evidence becomes its string (``"nan"``,
        ``"inf"``), as the log's losses do (a bare ``NaN`` is not JSON; jq refuses it)."""
        evidence = {k: _json_num(v) if isinstance(v, float) else v
                    for k, v in self.evidence.items()}
        return {"kind": self.kind, "step": self.step, "evidence": evidence,
                "action": self.action, "rule": self.rule}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Finding":
        return cls(kind=data["kind"], step=int(data["step"]), evidence=dict(data["evidence"]),
                   action=str(data["action"]), rule=str(data.get("rule", "")))

    def __str__(self) -> str:
        return f"[{self.kind} @ step {self.step}] {self.action}"


@dataclass(frozen=True)
class Thresholds:
    """The monitor's thresholds (every one scale-free; defaults fitted in
    ``benchmarks/bench_monitor.py`` with a leave-one-task-out check, see
    ``benchmarks/results/monitor.md``).

    Attributes:
        block: updates per block; shape rules run at block ends on block means.
        min_steps: updates before the shape rules (``lr_too_low``, ``plateau``, the "still above
            its start" part of ``lr_too_high``) may fire.
        min_fraction: with ``total_steps`` known, the shape rules also wait for this fraction of
            the run (a good LR bends the loss curve within a small fraction of a run that was
            sized for it; a too-low one has not bent by then).
        fallback_steps: without ``total_steps``, the shape rules wait this many updates.
        ema: smoothing of the loss and gradient-norm EMAs (``m = ema m + (1 - ema) x``).
        diverge_factor: ``diverged`` when the smoothed loss exceeds this multiple of the first
            loss.
        rise_share: ``lr_too_high`` when the smoothed loss climbs back this share of the way
            from its best to its first value (``ema - best > rise_share (first - best)``).
        rise_factor: ... or, before any drop, rises to this multiple of the first loss
            whatever the noise estimate (see ``Monitor._climbs``).
        start_margin: ``lr_too_high`` when, after ``min_steps``, the latest loss level is above
            ``(1 + start_margin)`` x the starting level.
        low_share: ``lr_too_low`` when the second half of ``tau`` holds at least this share of
            the loss drop so far (0.5 = a straight line, 0 = all the progress came early).
        slow_share, slow_drop: ``lr_too_low`` also when the late share is at least
            ``slow_share`` and the loss has lost less than ``slow_drop`` of its starting level
            (a curve that bends a little but has gone nowhere).
        low_max_drop: ... and the straight-line reading (``low_share``) only while the loss has
            lost less than this share of its starting level. A training-limited model at its
            largest stable LR still falls steadily at a fifth of its run, having lost a third
            or more; a 10x too-low LR has not. Set (with ``slow_drop`` 0.3, fitted at 0.4 on
            the built-in labels, where 0.3 and 0.4 score the same) on random held-out tasks at
            their grid's best LR (``benchmarks/results/monitor-heldout.md``): false "raise the LR
            about 10x" on 16 of 28 -> 10, x1/10 caught 20 -> 18, x1/100 26 of 28 either way;
            the built-in labels 96/96 either way.
        low_sure_drop: a falling-loss ``lr_too_low`` says "raise the LR about 10x" (evidence
            ``confidence: "high"``) only while the loss has lost less than this share of its
            start; beyond it, where a training-limited model at its best LR looks the same, it
            says the LR *may* be too low and to check with a range test first
            (``confidence: "low"``). On held-out random tasks (``monitor-heldout.md``) the
            findings under 0.25 were right on 32 of 33 (x1/10 and x1/100 runs, 1 best-LR run),
            those over it on 12 of 21 (9 best-LR runs): 0.2 splits them alike, 0.3 makes 4
            best-LR runs "sure".
        anneal_share: ``lr_too_low`` is not read once the LR (the last block's mean) has
            annealed below this share of its peak so far: a decaying LR's loss falls late
            because the noise floor falls with it, which a constant too-low LR's does not.
        low_until: with ``total_steps`` known, ``lr_too_low`` is read only up to this fraction
            of the run: a too-low LR shows by ``min_fraction`` (every labelled one did, at 0.2),
            and a loss still falling steadily later is a run that needs more steps, not a 10x
            higher LR (charlm at its best constant LR was told so at step 279 of 300).
        z: significance of a drop, in standard errors of the window means (noise estimated from
            successive differences, ``var = mean((l_t - l_{t-1})^2) / 2``).
        plateau_steps: updates before ``plateau`` may fire.
        explode_factor, vanish_factor, vanish_progress: the gradient rules (see module doc).
        skipped_steps: consecutive updates with a non-finite gradient norm (and a finite loss)
            before ``exploding_gradients`` says so. Mixed precision makes them on purpose:
            ``torch.amp.GradScaler`` starts at a scale of 2^16, skips every step whose scaled
            gradients overflow and halves the scale, so the first few steps of a healthy fp16
            run (and one step after each later growth of the scale) have an infinite norm.
            After 17 halvings the scale is below 1 and an overflow is the gradient's own.
            Without a scaler, the step with the non-finite gradient makes the weights, and
            the next loss, non-finite: ``diverged`` says so at once.
        stuck_grad_rise: a loss that has not fallen significantly by the shape rules' first
            reading is ``lr_too_high``, not ``lr_too_low``, when the smoothed gradient norm
            has meanwhile risen to this multiple of its first block's mean: an LR that knocks
            the weights away from where they learn (a small net at 10x its best LR, its loss
            at ln(10) for the whole run) makes the gradient norm jump, and one too low to
            move the model leaves it where it was. On 29 held-out tasks
            (``benchmarks/results/monitor-heldout.md``, sixteenth round) the stuck runs at
            x1/100 of their best LR peaked at 0.96-1.08x, those at x10 at 0.88-7.5x; any value
            from 1.1 to 2.7 splits them alike. Without gradient norms the rule is off.
        overfit_tolerance, overfit_patience: the ``overfitting`` rule (``overfit_patience``
            evaluations since the best one that are worse than it beyond the tolerance).
        overfit_z: ... and the mean of the last ``overfit_patience`` evaluations is worse than
            the best mean of that many consecutive ones by more than ``overfit_z`` standard
            errors of a difference of two such means. The val metric's noise ``s`` comes from
            the median absolute second difference of the last 64 evaluations
            (``s = median|v_t - 2 v_(t-1) + v_(t-2)| / 1.652``, exact for white noise and blind
            to a linear trend); the error of the difference is ``s sqrt(2 / overfit_patience)``.
        overfit_early, overfit_gap: with ``total_steps`` known, overfitting whose best validation
            step lies in the first ``overfit_early`` of the run and whose metric is now
            ``overfit_gap`` (relative) worse also raises ``lr_too_high``: the LR fits the noise
            long before the run ends (a generalisation-limited task).
    """

    block: int = 5
    min_steps: int = 20
    min_fraction: float = 0.2
    fallback_steps: int = 200
    ema: float = 0.9
    diverge_factor: float = 3.0
    rise_share: float = 0.5
    rise_factor: float = 2.0
    start_margin: float = 0.05
    low_share: float = 0.5
    slow_share: float = 0.25
    slow_drop: float = 0.3
    low_max_drop: float = 0.5
    low_sure_drop: float = 0.25
    anneal_share: float = 0.7
    low_until: float = 0.5
    z: float = 4.0
    plateau_steps: int = 100
    explode_factor: float = 100.0
    skipped_steps: int = 17
    stuck_grad_rise: float = 2.0
    vanish_factor: float = 1e-3
    vanish_progress: float = 0.1
    overfit_tolerance: float = 0.02
    overfit_patience: int = 3
    overfit_z: float = 3.0
    overfit_early: float = 0.15
    overfit_gap: float = 0.1

    def __post_init__(self) -> None:
        check_int("block", self.block, minimum=1)
        check_int("min_steps", self.min_steps, minimum=1)
        check_int("fallback_steps", self.fallback_steps, minimum=1)
        check_range("min_fraction", self.min_fraction, 0.0, 1.0)
        check_range("rise_share", self.rise_share, 0.0, 1.0, low_open=True)
        check_range("slow_share", self.slow_share, 0.0, 1.0, low_open=True)
        check_range("slow_drop", self.slow_drop, 0.0, 1.0, low_open=True)
        check_range("low_max_drop", self.low_max_drop, 0.0, 1.0, low_open=True)
        check_range("low_sure_drop", self.low_sure_drop, 0.0, 1.0, low_open=True)
        check_range("anneal_share", self.anneal_share, 0.0, 1.0)
        check_range("low_until", self.low_until, 0.0, 1.0, low_open=True)
        check_int("plateau_steps", self.plateau_steps, minimum=1)
        check_int("skipped_steps", self.skipped_steps, minimum=1)
        check_int("overfit_patience", self.overfit_patience, minimum=1)
        check_range("ema", self.ema, 0.0, 1.0, high_open=True)
        for name in ("diverge_factor", "explode_factor", "rise_factor", "stuck_grad_rise"):
            if check_positive(name, getattr(self, name)) <= 1.0:
                raise ValueError(f"{name} must be > 1, got {getattr(self, name)!r}")
        check_positive("start_margin", self.start_margin, allow_zero=True)
        check_range("low_share", self.low_share, 0.0, 1.0, low_open=True)
        check_positive("z", self.z)
        check_range("vanish_factor", self.vanish_factor, 0.0, 1.0, low_open=True, high_open=True)
        check_range("vanish_progress", self.vanish_progress, 0.0, 1.0, high_open=True)
        check_positive("overfit_tolerance", self.overfit_tolerance, allow_zero=True)
        check_positive("overfit_z", self.overfit_z, allow_zero=True)
        check_range("overfit_early", self.overfit_early, 0.0, 1.0)
        check_positive("overfit_gap", self.overfit_gap)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_THRESHOLD_NAMES = tuple(f.name for f in dataclasses.fields(Thresholds))


class Monitor:
    """Diagnose learning-rate trouble from the stream of updates (see the module doc for rules).

    Args:
        val_mode: ``"min"`` if a lower validation metric is better (a loss), ``"max"`` otherwise
            (accuracy).
        total_steps: the planned number of updates, if known (recommended: the shape rules then
            judge at ``min_fraction`` of the run instead of after ``fallback_steps``).
        thresholds: a :class:`Thresholds`; keyword overrides of its fields may be given instead
            (``Monitor(z=3.0, low_share=0.3)``).
        schedule: the run's LR as a function of the step (an :class:`lrkit.schedules.Schedule`
            or any callable), if known, with ``total_steps``. A ``plateau`` before a decay the
            schedule already holds (the LR 10x lower later in the run: WSD's stable phase,
            cosine's first half) then says the schedule's decay is the remedy instead of
            advising one.

    Example:
        >>> m = Monitor(val_mode="max")
        >>> m.update(0, 2.3, lr=0.1, grad_norm=1.0)
        []
    """

    def __init__(self, *, val_mode: str = "min", total_steps: int | None = None,
                 thresholds: Thresholds | None = None,
                 schedule: Callable[[int], float] | None = None, **overrides: Any) -> None:
        self.val_mode = check_choice("val_mode", val_mode, ("min", "max"))
        if schedule is not None and not callable(schedule):
            raise TypeError(f"schedule must be a callable step -> LR (an lrkit Schedule), got "
                            f"{type(schedule).__name__}")
        self.schedule = schedule
        self.total_steps = None if total_steps is None else check_int("total_steps", total_steps,
                                                                      minimum=1)
        for key in overrides:
            if key not in _THRESHOLD_NAMES:
                hint = closest(key, _THRESHOLD_NAMES)
                raise TypeError(f"unknown threshold {key!r}" + (f"; did you mean {hint!r}?" if hint
                                                                 else "")
                                + f" (thresholds are {list(_THRESHOLD_NAMES)})")
        if thresholds is not None and not isinstance(thresholds, Thresholds):
            raise TypeError(f"thresholds must be a Thresholds, got {type(thresholds).__name__}")
        base = thresholds or Thresholds()
        self.thresholds = dataclasses.replace(base, **overrides) if overrides else base
        self.reset()

    # ------------------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget everything seen (a new run)."""
        self._found: dict[str, Finding] = {}
        self._new: list[Finding] = []
        self._n = 0
        self._last_step = -1
        self._tau = 0.0
        self._first: float | None = None
        self._ema = 0.0
        self._bias = 1.0  # beta^n
        self._beta = self.thresholds.ema
        self._block = self.thresholds.block
        # standard deviation of the EMA of white noise of unit variance
        self._ema_sd = math.sqrt((1.0 - self._beta) / (1.0 + self._beta))
        self._ema_best = math.inf
        self._best_step = 0
        self._best_n = 1  # updates averaged into the best smoothed loss (its noise: _ema_sd_at)
        self._prev: float | None = None
        self._prev_d: float | None = None  # the last successive difference
        self._sq_diff = 0.0  # sum of squared second differences (noise estimate)
        self._n_diff = 0
        self._neg = False
        self._spread = FirstSpread()  # of the first losses (offset_rise_limit)
        self._max_lr = 0.0
        self._lr_now: float | None = None  # the LR of the last update (when given)
        # blocks: cumulative tau at each block end; prefix sums of loss and count (machine
        # numbers: 6.6 bytes an update, where lists of Python numbers took 29.4, 294 MB over
        # a 10M-update run)
        self._b_sum = 0.0
        self._b_n = 0
        self._tau_end = array.array("d", [0.0])
        self._cum_loss = array.array("d", [0.0])
        self._cum_n = array.array("q", [0])
        self._step_end = array.array("q", [-1])
        self._next_check = 0
        # gradient norms
        self._g_ema = 0.0
        self._g_n = 0
        self._skip_sum, self._skip_n = 0.0, 0  # losses of updates skipped before the first
        self._g_bad = 0  # consecutive non-finite gradient norms, since this step:
        self._g_bad_since = 0
        self._g_ref: float | None = None
        self._g_peak, self._g_peak_step = 0.0, 0  # the highest smoothed norm since the ref
        self._g_first: list[float] = []
        # validation
        self._val_best: float | None = None
        self._val_best_step = -1
        self._val_bad = 0
        self._val_lr_at_best: float | None = None
        self._val_loss_at_best = math.inf
        self._val_best_n = 0  # updates made when the best validation metric was measured
        self._val_step = -1  # the step of the last validation metric observed
        self._vals: list[float] = []  # the last VAL_NOISE_WINDOW finite val metrics, signed
        self._val_best_mean = math.inf  # the best (lowest signed) mean of patience evaluations

    @property
    def findings(self) -> list[Finding]:
        """The findings so far, in the order they were first raised (each kind at most once)."""
        return list(self._found.values())

    def finding(self, kind: str) -> Finding | None:
        """The finding of ``kind`` if raised, else None."""
        check_choice("kind", kind, KINDS)
        return self._found.get(kind)

    @property
    def lr_findings(self) -> list[Finding]:
        """Findings that ask for another LR (:data:`LR_KINDS`)."""
        return [f for f in self._found.values() if f.kind in LR_KINDS]

    # ----------------------------------------------------------------------------- update
    def update(self, step: int, loss: float, *, lr: float | None = None,
               grad_norm: float | None = None, val_metric: float | None = None) -> list[Finding]:
        """Record one optimizer update; return the findings raised or updated by it.

        Args:
            step: the 0-based update index (strictly increasing).
            loss: the update's training loss (a non-finite value raises ``diverged``).
            lr: the LR used (group 0); without it every update counts as ``tau += 1``.
            grad_norm: the global gradient norm before clipping, if known.
            val_metric: a validation metric measured after this update, if any.
        """
        if step.__class__ is not int:
            step = check_int("step", step, minimum=0)
        if step <= self._last_step:
            raise ValueError(f"step must increase, got {step!r} after {self._last_step}")
        self._new = new = []
        if loss.__class__ is not float:
            loss = as_real("loss", loss)
        if lr is not None and lr.__class__ is not float:
            lr = as_real("lr", lr)
        if lr is not None and not 0.0 <= lr < math.inf:
            raise ValueError(f"lr must be finite and >= 0 (the LR this update used), got {lr!r}")
        if grad_norm is not None and grad_norm.__class__ is not float:
            grad_norm = as_real("grad_norm", grad_norm)
        if val_metric is not None and val_metric.__class__ is not float:
            val_metric = as_real("val_metric", val_metric)
        self._last_step = step
        if loss - loss != 0.0:  # NaN or +-inf
            self._raise("diverged", "non_finite", step,
                        {"loss": _json_num(loss), "first_loss": self._first},
                        "The loss became non-finite: restart from an earlier checkpoint with the "
                        "LR about 10x lower, or add warmup and gradient clipping.")
            return new
        if (grad_norm is not None and grad_norm - grad_norm != 0.0 and self._n == 0
                and val_metric is None):
            # a mixed-precision step the GradScaler skipped before any update was made: the
            # weights are the initial ones, so the loss is one more sample of the starting
            # loss (averaged into it), not a step of the curve (a first batch that happened
            # to be easy, then a flat start while the scale settled, read as a climb)
            self._skip_sum += loss
            self._skip_n += 1
            self._first = self._skip_sum / self._skip_n
            self._grad(step, grad_norm, self._first)
            return new
        self._n += 1
        if lr is not None:
            self._tau += lr
            self._lr_now = lr
            if lr > self._max_lr:
                self._max_lr = lr
        else:
            self._tau += 1.0
        first = self._first
        if first is None:
            self._first = first = loss
        if loss < 0:
            self._neg = True
        if self._spread.value is None:
            self._spread.add(loss)
        # loss EMA, debiased like Adam's moments: m_n / (1 - beta^n)
        beta = self._beta
        self._bias *= beta
        self._ema = ema = beta * self._ema + (1.0 - beta) * loss
        smooth = ema / (1.0 - self._bias)
        best = self._ema_best
        # a best needs a block of updates behind it: the smoothed loss of the first few is
        # nearly one batch's loss, and an easy first batch made a slow start look like a climb
        # back (lr_too_high on 20-52 of 100 synthetic runs with 5-40% batch noise,
        # benchmarks/monitor_noisy_start.py)
        if smooth < best and self._n >= self._block:
            self._ema_best = best = smooth
            self._best_step = step
            self._best_n = self._n
        prev = self._prev
        if prev is not None:
            d = loss - prev
            if self._prev_d is not None:
                e = d - self._prev_d
                self._sq_diff += e * e
                self._n_diff += 1
            self._prev_d = d
        self._prev = loss
        self._loss_rules(step, smooth, first, best)
        if grad_norm is not None:
            self._grad(step, grad_norm, smooth)
        if val_metric is not None:
            self._val_step = step
            self._val(step, val_metric, smooth)
        # blocks
        self._b_sum += loss
        self._b_n += 1
        if self._b_n >= self._block:
            self._close_block(step)
        return new

    def _loss_rules(self, step: int, smooth: float, first: float, best: float) -> None:
        """The training-loss rules on the debiased EMA ``smooth``: ``diverged`` (a rise to
        ``diverge_factor`` x the first loss, or, for a loss that goes negative, that many times
        its own scale above it) and ``lr_too_high`` (a climb back from its best)."""
        if self._neg:  # the ratio rules mean nothing: the shift-invariant rise only
            th = self.thresholds
            limit = offset_rise_limit(first, first, best, self._spread.value, th.diverge_factor)
            if smooth > limit and self._due("diverged", step):
                scale = (limit - first) / (th.diverge_factor - 1.0)
                self._raise("diverged", "offset_rise", step,
                            {"smoothed_loss": smooth, "first_loss": first, "scale": scale,
                             "rise": (smooth - first) / scale},
                            f"The loss rose {(smooth - first) / scale:.3g}x its own scale above "
                            "its first value (a loss that goes negative: the rise, not the "
                            "ratio): restart with the LR about 10x lower, or add warmup and "
                            "gradient clipping.")
        else:
            th = self.thresholds
            if smooth > th.diverge_factor * first:
                if self._due("diverged", step):
                    self._raise("diverged", "loss_ratio", step,
                                {"smoothed_loss": smooth, "first_loss": first,
                                 "ratio": smooth / first},
                                f"The loss rose to {smooth / first:.3g}x its first value: "
                                "restart with the LR about 10x lower, or add warmup and "
                                "gradient clipping.")
            elif (smooth - (best if best < first else first) > th.start_margin * first
                  and self._climbs(step, smooth, first, best)  # (the cheap margin test first:
                                                               # this runs on every update)
                  and self._due("lr_too_high", step)):
                drop = first - best
                if drop > th.z * self._noise() * self._ema_sd_at(self._best_n):
                    share = (smooth - best) / drop
                    rule, evidence, said = "climbed_back", {"climbed_back": share}, (
                        f"The loss climbed back {share:.0%} of the way from its best (step "
                        f"{self._best_step}) to its start")
                else:  # it never fell beyond its noise: a share of no drop means nothing
                    rise = (smooth - first) / abs(first)
                    rule, evidence, said = "rose_from_start", {"rise": rise}, (
                        f"The loss rose {rise:.0%} above its start with no fall beyond its "
                        "noise before")
                self._raise("lr_too_high", rule, step,
                            {"smoothed_loss": smooth, "best_loss": best,
                             "best_step": self._best_step, "first_loss": first, **evidence},
                            f"{said}: lower the LR about 3x, or add "
                            f"{_warmup(self._best_step)} warmup steps.")

    def update_many(self, steps: Sequence[int], losses: Sequence[float],
                    lrs: Sequence[float | None] | None = None) -> list[Finding]:
        """``update(steps[i], losses[i], lr=lrs[i])`` for each ``i``, faster: the common update
        (finite loss, no rule near firing, no block end) runs on local variables; anything else
        goes through :meth:`update`. The result is identical to the loop (tested); returns all
        findings raised or refreshed.

        Callbacks that buffer updates (``lrkit.callbacks``) use it for records without a gradient
        norm or validation metric.
        """
        if len(steps) != len(losses) or (lrs is not None and len(lrs) != len(steps)):
            raise ValueError(f"steps, losses and lrs must have the same length, got {len(steps)}, "
                             f"{len(losses)} and {None if lrs is None else len(lrs)}")
        out: list[Finding] = []
        th = self.thresholds
        beta, block = self._beta, self._block
        dfac, margin = th.diverge_factor, th.start_margin
        i, n_items = 0, len(steps)
        while i < n_items:
            # load the state into locals
            last_step, n, tau, max_lr = self._last_step, self._n, self._tau, self._max_lr
            lr_now = self._lr_now
            first, bias, ema = self._first, self._bias, self._ema
            best, best_step, best_n, prev = (self._ema_best, self._best_step, self._best_n,
                                             self._prev)
            sq, nd, bsum, bn = self._sq_diff, self._n_diff, self._b_sum, self._b_n
            prev_d = self._prev_d
            slow = (first is None or self._neg or prev is None or prev_d is None
                    or self._spread.value is None)  # (its first losses: update)
            while i < n_items and not slow:
                step, loss = steps[i], losses[i]
                lr = None if lrs is None else lrs[i]
                if (lr.__class__ is not float or step.__class__ is not int or step <= last_step
                        or loss.__class__ is not float or loss - loss != 0.0 or loss < 0.0
                        or bn + 1 >= block):
                    break
                b2 = bias * beta
                e2 = beta * ema + (1.0 - beta) * loss
                smooth = e2 / (1.0 - b2)
                if smooth > dfac * first or smooth - min(best, smooth, first) > margin * first:
                    break  # a rule may fire: the full update decides
                bias, ema = b2, e2
                if smooth < best and n + 1 >= block:
                    best, best_step, best_n = smooth, step, n + 1
                d = loss - prev
                e = d - prev_d
                sq += e * e
                nd += 1
                prev, prev_d = loss, d
                tau += lr
                lr_now = lr
                if lr > max_lr:
                    max_lr = lr
                bsum += loss
                bn += 1
                n += 1
                last_step = step
                i += 1
            # store the locals back
            self._last_step, self._n, self._tau, self._max_lr = last_step, n, tau, max_lr
            self._lr_now = lr_now
            self._bias, self._ema, self._ema_best, self._best_step = bias, ema, best, best_step
            self._best_n = best_n
            self._prev, self._sq_diff, self._n_diff, self._b_sum, self._b_n = prev, sq, nd, bsum, bn
            self._prev_d = prev_d
            if i < n_items:  # the slow path for this one
                out.extend(self.update(steps[i], losses[i],
                                       lr=None if lrs is None else lrs[i]))
                i += 1
        self._new = out
        return out

    def observe_val(self, step: int, val_metric: float) -> list[Finding]:
        """Record a validation metric measured after update ``step`` (when it arrives apart
        from the update, as with Hugging Face's ``on_evaluate``)."""
        self._new = []
        step = check_int("step", step, minimum=0)
        if step < self._val_step:
            raise ValueError(f"step must not go back, got {step!r} after a validation metric "
                             f"at step {self._val_step}")
        val_metric = as_real("val_metric", val_metric)
        self._val_step = step
        smooth = self._ema / (1.0 - self._bias) if self._bias < 1.0 else math.inf
        self._val(step, val_metric, smooth)
        return self._new

    # ------------------------------------------------------------------------------ rules
    def _due(self, kind: str, step: int) -> bool:
        """Whether ``kind`` may be raised or updated now: a raised finding is refreshed at most
        every ``max(block, n / 10)`` updates, which keeps the per-update cost O(1)."""
        old = self._found.get(kind)
        if old is None:
            return True
        last = old.evidence.get("updated", old.step)
        return step - last >= max(self.thresholds.block, self._n // 10)

    def _raise(self, kind: str, rule: str, step: int, evidence: dict, action: str) -> None:
        old = self._found.get(kind)
        if old is None:
            f = Finding(kind, step, evidence, action, rule)
        else:
            f = Finding(kind, old.step, {**evidence, "updated": step}, action, rule)
        self._found[kind] = f
        self._new.append(f)

    def _climbs(self, step: int, smooth: float, first: float, best: float) -> bool:
        """``lr_too_high``'s climb: the smoothed loss above its best by ``rise_share`` of the
        drop to it plus ``z`` noise units of the difference (the best's own noise included:
        after a block of updates its EMA is still twice as noisy as later), or above the first
        loss by ``z`` noise units of that single sample, or ``rise_factor`` x it whatever the
        noise (a loss that jumps at once inflates the noise estimate with its own jumps); each
        by more than ``start_margin`` of the first loss."""
        th = self.thresholds
        if self._n_diff < th.block:
            return False
        margin = th.start_margin * first
        sd = self._noise() * th.z
        now = self._ema_sd_at(self._n)
        if (step - self._best_step >= th.block and smooth - best > margin
                and smooth - best > th.rise_share * (first - best)
                + sd * math.hypot(now, self._ema_sd_at(self._best_n))):
            return True
        sd_first = 1.0 / math.sqrt(max(self._skip_n, 1))  # the first loss: one sample, or the
        return (smooth - first > margin                    # mean of a GradScaler's skips
                and (smooth - first > sd * math.hypot(now, sd_first)
                     or smooth > th.rise_factor * first))

    def _ema_sd_at(self, n: int) -> float:
        """The standard deviation of the debiased loss EMA after ``n`` updates, in units of one
        loss's noise: ``sqrt((1 - b) / (1 + b) (1 + b^n) / (1 - b^n))`` (1 for one update,
        ``_ema_sd`` in the limit): whether the best smoothed loss lies below the first loss
        beyond noise (the loss fell before it climbed back)."""
        b = self._beta
        n = max(int(n), 1)
        return self._ema_sd * math.sqrt((1.0 + b ** n) / (1.0 - b ** n))

    def _noise(self) -> float:
        return math.sqrt(self._sq_diff / (6 * self._n_diff)) if self._n_diff else 0.0

    def _window(self, lo: float, hi: float) -> tuple[float, int]:
        """Mean loss and count over the closed blocks whose end tau lies in ``(lo, hi]``
        (at least the one block ending at or after ``lo``)."""
        i = bisect.bisect_right(self._tau_end, lo)
        j = bisect.bisect_right(self._tau_end, hi) - 1
        i = min(i, len(self._tau_end) - 1)
        if j < i:
            j = i
        n = self._cum_n[j] - self._cum_n[i - 1]
        return (self._cum_loss[j] - self._cum_loss[i - 1]) / n, n

    def shape(self) -> dict[str, float] | None:
        """The loss-curve shape statistics at the last block end (None before two blocks).

        ``start``, ``middle``, ``end``: mean loss over the first tenth, the middle tenth and the
        last tenth of ``tau`` (each at least one block); ``drop = start - end``; ``late_share =
        (middle - end) / drop``; ``se``: standard error of ``drop`` from the successive-difference
        noise estimate.
        """
        if len(self._tau_end) < 3:
            return None
        tau = self._tau_end[-1]
        a, na = self._window(0.0, 0.1 * tau)
        m, nm = self._window(0.45 * tau, 0.55 * tau)
        e, ne = self._window(0.9 * tau, tau)
        sigma = self._noise()
        drop = a - e
        return {"start": a, "middle": m, "end": e, "drop": drop,
                "late_share": (m - e) / drop if drop != 0 else math.nan,
                "se": sigma * math.sqrt(1.0 / na + 1.0 / ne),
                "se_late": sigma * math.sqrt(1.0 / nm + 1.0 / ne),
                "se_early": sigma * math.sqrt(1.0 / na + 1.0 / nm),
                "se_bend": sigma * math.sqrt(1.0 / na + 4.0 / nm + 1.0 / ne),
                "noise": sigma, "n_end": ne}

    def _close_block(self, step: int) -> None:
        th = self.thresholds
        self._tau_end.append(self._tau)
        self._cum_loss.append(self._cum_loss[-1] + self._b_sum)
        self._cum_n.append(self._cum_n[-1] + self._b_n)
        self._step_end.append(step)
        self._b_sum, self._b_n = 0.0, 0
        if self._n < th.min_steps:
            return
        if self.total_steps is None:
            if self._n < th.fallback_steps:
                return
        elif self._n < th.min_fraction * self.total_steps:
            return
        # the shape rules run at every block end early on, then every ~2% of the blocks so far
        nb = len(self._tau_end) - 1
        if nb < self._next_check:
            return
        self._next_check = nb + max(1, nb // 50)
        if not (self._due("lr_too_high", step) or self._due("lr_too_low", step)
                or self._due("plateau", step)):
            return
        s = self.shape()
        if s is None:
            return
        drop, se = s["drop"], s["se"]
        ev = {k: round(v, 6) for k, v in s.items()}
        ev["steps"] = self._n
        first = self._first
        # once diverged, its own finding gives the advice (10x lower, restart): this rule's
        # "about 3x, or N warmup steps" on a loss 1e9x its start would contradict it
        if (not self._neg and "diverged" not in self._found and self._due("lr_too_high", step)
                and s["end"] > (1.0 + th.start_margin) * first
                and s["end"] - first > th.z * s["noise"] / math.sqrt(s["n_end"])):
            self._raise("lr_too_high", "above_start", step, ev,
                        f"The loss is {s['end'] / first:.3g}x its first value after "
                        f"{self._n} updates: lower the LR about 3x, or add "
                        f"{_warmup(self._n)} warmup steps.")
        share = s["late_share"]
        rel = drop / s["start"] if s["start"] > 0 else math.nan
        ev["relative_drop"] = round(rel, 6)
        # a run that already overfits (or blew up) has not had too small an LR; nor has one
        # whose val metric has stopped improving, even within its noise (raising the LR is no
        # advice then: diabetes at 100x its best LR, training loss still falling steadily as
        # the model memorises, val loss 0.57 at step 29 and 0.58-0.95 after)
        high = (any(k in self._found for k in ("lr_too_high", "diverged", "overfitting"))
                or self._val_bad >= th.overfit_patience)
        # nor has one whose schedule has annealed the LR (below anneal_share of its peak): its
        # loss falls late because the noise floor falls with the LR (tune's one-cycle final run
        # on mnist1d at its chosen 0.259, test accuracy 0.947, was told "raise the LR about
        # 10x" at step 579 of 1000, the LR by then at 0.65 of its peak)
        # the last block's mean LR as a share of the peak so far (1 when no LR is given)
        lr_share = ((self._tau_end[-1] - self._tau_end[-2]) / (th.block * self._max_lr)
                    if self._max_lr > 0 else 1.0)
        annealed = lr_share < th.anneal_share
        late = self.total_steps is not None and step + 1 > th.low_until * self.total_steps
        low_due = self._due("lr_too_low", step) and not annealed and not late
        if low_due and not high and drop > th.z * se and (
                (share >= th.low_share and rel < th.low_max_drop)
                or (share >= th.slow_share and rel < th.slow_drop)):
            seen = (f"The loss is still falling steadily ({share:.0%} of its drop came in the "
                    f"second half, {rel:.0%} below its start)")
            if self._g_ref:  # the gradient norm's peak since the first block, x its level there
                ev["grad_rise"] = round(self._g_peak / self._g_ref, 3)
            if rel < th.low_sure_drop:
                ev["confidence"] = "high"
                self._raise("lr_too_low", "still_falling", step, ev,
                            f"{seen}: raise the LR about 10x, or run `lrkit find` to pick one.")
            else:  # where best-LR runs of training-limited models sit too
                ev["confidence"] = "low"
                self._raise("lr_too_low", "still_falling", step, ev,
                            f"{seen}: the LR may be too low, but a model at its best LR that "
                            f"needs every step of the run looks the same. Check with `lrkit "
                            f"find` (or a short run at 3x) before raising it.")
        elif low_due and not high and drop <= th.z * se:
            self._not_fallen(step, ev, drop, rel)
        # and the curve bent beyond noise (the second half's drop below the first's by z
        # standard errors of start - 2 middle + end): a straight line whose late drop is not
        # significant on its own has not stopped, it is too noisy to read, and lr_too_low reads
        # it as "still falling"; both were raised at once, "raise the LR 10x" and "decay it
        # 10x", on 3-5 of 5 seeds of an MLP under SGD at a tenth of its best LR, and on 7 of 10
        # noisy straight lines
        if (self._n >= th.plateau_steps and self._due("plateau", step)
                and s["start"] - s["middle"] > th.z * s["se_early"]
                and s["middle"] - s["end"] < th.z * s["se_late"]
                and s["start"] - 2.0 * s["middle"] + s["end"] > th.z * s["se_bend"]):
            decayed = lr_share < 0.1
            planned = None if decayed else self._planned_decay(step)
            if decayed:
                action = ("The loss has stopped improving and the LR has already decayed 10x: "
                          "stop early (EarlyStopping) and keep the best checkpoint.")
            elif planned is not None:
                ev["planned_decay_step"] = planned
                action = (f"The loss has stopped improving at this LR; the schedule decays it "
                          f"10x by step {planned} (of {self.total_steps}), which is the remedy: "
                          "nothing to change.")
            else:
                action = ("The loss has stopped improving: decay the LR 10x (DecayOnPlateau), "
                          "or stop early.")
            self._raise("plateau", "stalled", step, ev, action)

    def _not_fallen(self, step: int, ev: dict, drop: float, rel: float) -> None:
        """The loss has not fallen significantly by a shape reading: which way the LR is off.

        Too low leaves the gradient norm where it was and the loss a little lower; too high
        (seen at 10x the best LR on 10 of 29 held-out tasks, which were all told "raise the LR
        about 10x") makes the gradient norm jump (``stuck_grad_rise``) and leaves the loss no
        lower than at its start, or jumping too much for its drop to mean anything."""
        th = self.thresholds
        n = self._n
        g_rise = self._g_peak / self._g_ref if self._g_ref else 0.0
        where = f"{rel:.1%} below its start" if rel >= 0 else f"{-rel:.1%} above its start"
        if g_rise >= th.stuck_grad_rise:
            if self._due("lr_too_high", step):
                ev["grad_rise"] = round(g_rise, 3)
                self._raise("lr_too_high", "stuck_grad_rise", step, ev,
                            f"The loss has not fallen significantly in {n} updates ({where}) "
                            f"while its gradient norm rose to {g_rise:.2g}x its start (step "
                            f"{self._g_peak_step}): an LR that knocks the weights away from "
                            "where they learn looks like this (one too low to move them "
                            "leaves the gradient norm where it was). Lower the LR about 10x, "
                            f"or add {_warmup(self._g_peak_step)} warmup steps.")
        elif drop <= 0.0 or rel >= th.low_sure_drop:
            ev["confidence"] = "low"
            why = ("no lower than at its start" if drop <= 0.0 else
                   "a drop that its own noise hides")
            self._raise("lr_too_low", "not_fallen", step, ev,
                        f"The loss has not fallen significantly in {n} updates ({where}: "
                        f"{why}): an LR too low to move the model looks like this, and so "
                        "does one high enough to have broken it early. Check with `lrkit "
                        "find` (a range test) before changing it, and that the model trains "
                        "at all.")
        else:
            ev["confidence"] = "high"
            self._raise("lr_too_low", "not_fallen", step, ev,
                        f"The loss has not fallen significantly in {n} updates ({where}): "
                        "raise the LR about 10x, or check that the model trains at all.")

    def _planned_decay(self, step: int) -> int | None:
        """The first step after ``step`` at which the known schedule's LR is 10x below its
        value at ``step``, or ``None`` (no schedule, no total, or no such decay)."""
        if self.schedule is None or self.total_steps is None:
            return None
        now = float(self.schedule(step))
        if not (now > 0 and math.isfinite(now)):
            return None
        for s in range(step + 1, self.total_steps):
            if float(self.schedule(s)) <= 0.1 * now:
                return s
        return None

    def _grad(self, step: int, g: float, smooth: float) -> None:
        th = self.thresholds
        if not math.isfinite(g):
            # a mixed-precision step the GradScaler skipped, until it persists (see
            # Thresholds.skipped_steps)
            if self._g_bad == 0:
                self._g_bad_since = step
            self._g_bad += 1
            if self._g_bad == th.skipped_steps:
                self._raise("exploding_gradients", "non_finite_grad", self._g_bad_since,
                            {"grad_norm": _json_num(g), "non_finite_steps": self._g_bad},
                            f"The gradient norm was non-finite on {self._g_bad} updates in a "
                            "row (more than a GradScaler's skipped steps): clip it "
                            "(ClipGradNorm) and lower the LR about 10x.")
            return
        self._g_bad = 0
        if self._g_ref is None:
            self._g_first.append(g)
            if len(self._g_first) >= th.block:
                self._g_ref = sum(self._g_first) / len(self._g_first)
        self._g_n += 1
        self._g_ema = th.ema * self._g_ema + (1.0 - th.ema) * g
        gs = self._g_ema / (1.0 - th.ema ** self._g_n)
        ref = self._g_ref
        if ref is None or ref <= 0:
            return
        if gs > self._g_peak:
            self._g_peak, self._g_peak_step = gs, step
        if gs > th.explode_factor * ref and self._due("exploding_gradients", step):
            self._raise("exploding_gradients", "grad_growth", step,
                        {"grad_norm": gs, "initial_grad_norm": ref, "ratio": gs / ref},
                        f"The gradient norm grew {gs / ref:.3g}x: clip it at about "
                        f"{2 * ref:.3g} (ClipGradNorm), or lower the LR about 3x.")
        elif (gs < th.vanish_factor * ref and self._first is not None and not self._neg
              and self._due("vanishing_gradients", step)
              and smooth > (1.0 - th.vanish_progress) * self._first):
            self._raise("vanishing_gradients", "grad_fall", step,
                        {"grad_norm": gs, "initial_grad_norm": ref, "ratio": gs / ref,
                         "smoothed_loss": smooth, "first_loss": self._first},
                        f"The gradient norm fell to {gs / ref:.2g}x its start while the loss "
                        "has not moved: fix the signal path (normalisation, residual "
                        "connections, initialisation); a larger LR will not help.")

    def _val(self, step: int, v: float, smooth: float) -> None:
        th = self.thresholds
        if not math.isfinite(v):
            return
        k = th.overfit_patience
        self._vals.append(v if self.val_mode == "min" else -v)  # signed: lower is better
        del self._vals[:-VAL_NOISE_WINDOW]
        mean_k = sum(self._vals[-k:]) / k if len(self._vals) >= k else math.inf
        self._val_best_mean = min(self._val_best_mean, mean_k)
        best = self._val_best
        better = best is None or (v < best if self.val_mode == "min" else v > best)
        if better:
            self._val_best, self._val_best_step, self._val_bad = v, step, 0
            self._val_loss_at_best = smooth
            self._val_best_n = self._n
            self._val_lr_at_best = self._lr_now
            return
        gap = (v - best) if self.val_mode == "min" else (best - v)
        if gap > th.overfit_tolerance * max(abs(best), 1e-12):
            self._val_bad += 1  # evaluations since the best that are worse beyond tolerance
        # while the LR is above its value at the best evaluation (a warmup, the rising half of
        # a 1-cycle or a cyclic schedule), a worse validation metric is the LR's transient, not
        # yet overfitting: judge once the LR is back down (digits-bn under 1-cycle: val
        # accuracy 0.64 at step 14 and 0.50 at step 29 as the LR climbed to its peak, 0.99 at
        # the end)
        rising = (self._lr_now is not None and self._val_lr_at_best is not None
                  and self._lr_now > self._val_lr_at_best)
        if self._val_bad < th.overfit_patience or rising:
            return
        # an early best (in the first overfit_early of the run) and a metric now overfit_gap
        # worse: the LR, not the run's length, is what to change
        rel = gap / max(abs(best), 1e-12)
        early = (self.total_steps is not None
                 and self._val_best_step < th.overfit_early * self.total_steps
                 and rel > th.overfit_gap)
        # the training loss at the best evaluation: the first loss where that came before any
        # update (a user's evaluation of the untrained model; it was "inf", so every later
        # loss read as falling: "overfitting ... while the training loss kept falling" on a
        # run whose loss never fell, and "lower the LR about 3e+02x")
        at_best = self._val_loss_at_best if self._val_best_n else self._first
        if at_best is None:
            return
        if smooth >= at_best:
            # worse while the training loss has not fallen since: not memorising (that is
            # overfitting) but an LR that undid what the model had learned. Seen: a small CNN
            # under SGD at 10x its best LR (`heldout_random_tasks.py --arch cnn --seed 15`, row
            # 14), val accuracy 0.23 at step 12 and 0.09-0.11 (chance) for the rest of its 300
            # steps, its training loss at ln(10) throughout: it had no finding at all, since
            # the low-LR reading is rightly silent once the val metric has got worse, and the
            # overfitting readings asked for a falling training loss
            if early and self._val_beyond_noise(mean_k):
                self._raise("lr_too_high", "val_undone", step,
                            {"best_val": best, "best_step": self._val_best_step, "val": v,
                             "worse_by": rel, "train_loss": smooth,
                             "train_loss_at_best": at_best},
                            f"The validation metric peaked at step {self._val_best_step} "
                            f"({self._val_best_step / self.total_steps:.0%} of the run) and is "
                            f"{rel:.0%} worse now, while the training loss has not fallen "
                            "since: the LR is undoing what the model learned (not memorising). "
                            f"Lower the LR about 10x, or add {_warmup(self._val_best_step)} "
                            "warmup steps.")
            return
        if self._val_beyond_noise(mean_k):
            self._raise("overfitting", "val_peak", step,
                        {"best_val": best, "best_step": self._val_best_step, "val": v,
                         "train_loss": smooth, "train_loss_at_best": at_best},
                        f"The validation metric peaked at step {self._val_best_step} while "
                        "the training loss kept falling: stop there (EarlyStopping), or add "
                        "regularisation such as weight decay.")
        # with the training loss falling, an early peak reads as an LR too high for the run
        # length even where the gap is within the metric's noise: a val metric that jumps that
        # much between evaluations is itself the LR's noise (diabetes at 100x its best LR: val
        # loss 0.57 at step 29, then 0.58-0.95)
        if early and self._val_best_n:  # (best before any update: no time to rescale)
            # by gradient-flow time (lr x t) a run at lr x best_step / total_steps ends about
            # where this one peaked (held out: the grid near that LR beat such runs on every
            # log-loss task, `benchmarks/results/heldout-random.md`, fourteenth round)
            factor = self.total_steps / max(self._val_best_step, 1)
            self._raise("lr_too_high", "early_val_peak", step,
                        {"best_val": best, "best_step": self._val_best_step, "val": v,
                         "worse_by": rel, "total_steps": self.total_steps,
                         "factor": round(factor, 3)},
                        f"The validation metric peaked at step {self._val_best_step} "
                        f"({self._val_best_step / self.total_steps:.0%} of the run) and is "
                        f"{rel:.0%} worse now: lower the LR about {factor:.2g}x for this run "
                        f"length (a run at that LR ends about where this one peaked), or stop "
                        f"at step {self._val_best_step}.")

    def _val_beyond_noise(self, mean_k: float) -> bool:
        """Whether the mean of the last ``overfit_patience`` val evaluations (signed, lower is
        better) is worse than the best such mean beyond ``overfit_z`` standard errors of the
        val metric's noise (seen: ``lrkit tune --task digits`` flagged "overfitting" on a val
        accuracy that dipped by one example of 144 from its best at step 167, and by three
        at step 83 in a run whose accuracy then rose 0.90 -> 0.96)."""
        th = self.thresholds
        margin = th.overfit_z * val_noise(self._vals) * math.sqrt(2.0 / th.overfit_patience)
        return mean_k - self._val_best_mean > margin


#: evaluations the val metric's noise estimate looks back on (keeps an evaluation O(1))
VAL_NOISE_WINDOW = 64


def val_noise(values: Sequence[float]) -> float:
    """The evaluation-to-evaluation noise (a standard deviation) of a val metric's series:
    ``median |v_t - 2 v_(t-1) + v_(t-2)| / 1.652``, exact for white noise (the second difference
    of white noise has standard deviation ``sqrt(6) s``, and ``0.6745 sqrt(6) = 1.652``), blind
    to a linear trend, and robust to the few points where the curve bends. 0 for fewer than
    three values. Also what ``lrkit.tune`` asks a best-validation checkpoint to beat: a run
    annealed to LR 0 ends on identical evaluations, so the spread of its tail says nothing."""
    d2 = [abs(values[i] - 2 * values[i - 1] + values[i - 2]) for i in range(2, len(values))]
    return statistics.median(d2) / 1.652 if d2 else 0.0


def _warmup(steps: int) -> int:
    """A warmup length to suggest: twice the steps to the trouble, rounded to 2 significant
    digits (at least 10)."""
    n = max(10, 2 * int(steps))
    digits = max(0, len(str(n)) - 2)
    return int(round(n, -digits))


# ------------------------------------------------------------------------------------- logs
@dataclass
class Log:
    """A JSON-lines training log read back (see ``lrkit.callbacks.LOG_FIELDS``).

    Arrays are numpy arrays over the logged updates; ``grad_norm`` and ``val_metric`` hold NaN
    where a line had none; ``findings`` are the last version of each finding written in the log.
    ``restarts`` lists ``(step, superseded)`` for each place where the steps went back (a run
    resumed from a checkpoint and appended to the same log): the resumed records replace the
    ``superseded`` earlier ones from that step on. ``cut_short`` is the number of the last line
    when the file ended in the middle of it (a run killed while writing), which was skipped.
    """

    meta: dict
    step: Any
    loss: Any
    lr: Any
    grad_norm: Any
    val_metric: Any
    findings: list[Finding]
    end: dict | None
    restarts: list[tuple[int, int]] = field(default_factory=list)
    cut_short: int | None = None

    def __len__(self) -> int:
        return len(self.step)


def read_log(path: str | Path) -> Log:
    """Read a log written by :class:`lrkit.callbacks.JsonlLogger` (or any JSON-lines file with
    ``step`` and ``loss`` per line; other fields optional; ``.gz`` files are decompressed).
    A last line cut short (the file, or the gzip stream, ends inside it: the run was killed
    while writing) is skipped and named in ``Log.cut_short``; a damaged line anywhere else is a
    ValueError that names it."""
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"path must be an existing JSON-lines log file, got {str(path)!r}")
    meta: dict = {}
    end = None
    # columns, not a dict per line: a 1e6-line log took 7x its size in memory as dicts
    steps = array.array("q")
    cols = {k: array.array("d") for k in ("loss", "lr", "grad_norm", "val_metric")}
    noted: list[tuple[int, list]] = []  # (row, its findings) for the rows that carry some
    restarts: list[tuple[int, int]] = []
    import gzip

    opener = gzip.open if p.suffix == ".gz" else open
    cut_short = None
    i = 0
    with opener(p, "rt", encoding="utf-8") as fh:
        try:
            for i, raw in enumerate(fh, 1):
                line = raw.strip()
                if not line:
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    if not raw.endswith("\n"):  # only the last line can lack its newline:
                        cut_short = i            # cut short by a killed writer, skipped
                        break
                    raise ValueError(f"{p}:{i}: not a JSON object ({e.msg})") from None
                if not isinstance(obj, dict):
                    raise ValueError(f"{p}:{i}: expected a JSON object per line, got {obj!r}")
                if "lrkit_log" in obj:
                    meta = dict(obj.get("meta") or {})
                elif "end" in obj:
                    end = obj["end"]
                else:
                    if "step" not in obj or "loss" not in obj:
                        raise ValueError(f"{p}:{i}: a step line needs 'step' and 'loss', got "
                                         f"{sorted(obj)}")
                    step = int(obj["step"])
                    if steps and step <= steps[-1]:  # a resumed run: it replaces those records
                        keep = bisect.bisect_left(steps, step)
                        restarts.append((step, len(steps) - keep))
                        del steps[keep:]
                        for c in cols.values():
                            del c[keep:]
                        noted = [(j, f) for j, f in noted if j < keep]
                        end = None
                    if obj.get("findings"):
                        noted.append((len(steps), obj["findings"]))
                    steps.append(step)
                    for k, c in cols.items():
                        v = obj.get(k)
                        c.append(math.nan if v is None else float(v))
        except EOFError:  # a gzip stream that ends early: the log so far, its cut line lost
            cut_short = i + 1
    found: dict[str, Finding] = {}
    for _, fds in noted:
        for fd in fds:
            found[fd["kind"]] = Finding.from_dict(fd)
    arr = {k: np.frombuffer(c, dtype=float).copy() for k, c in cols.items()}
    return Log(meta=meta, step=np.frombuffer(steps, dtype=np.int64).astype(int),
               loss=arr["loss"], lr=arr["lr"], grad_norm=arr["grad_norm"],
               val_metric=arr["val_metric"], findings=list(found.values()), end=end,
               restarts=restarts, cut_short=cut_short)


def _meta_schedule(meta: Mapping[str, Any]) -> Any:
    """The schedule a log's meta names (an lrkit Schedule's spec), or ``None``."""
    if not isinstance(meta.get("schedule"), Mapping):
        return None
    from .schedules import from_spec  # (pure Python: the module stays torch-free)

    return from_spec(meta["schedule"])


def replay(log: Log, monitor: Monitor | None = None) -> Monitor:
    """Feed a read-back log to ``monitor`` (a fresh default one if None) and return it.

    The monitor is a pure function of the updates it sees (and of the schedule the log's meta
    names, which :class:`lrkit.callbacks.MonitorCallback` writes for an lrkit Schedule), so this
    gives exactly the findings of the live run (the NaN in ``loss`` of a non-finite update
    included)."""
    meta = log.meta
    m = monitor if monitor is not None else Monitor(
        val_mode=meta.get("val_mode") or ("max" if meta.get("higher_is_better") else "min"),
        total_steps=meta.get("total_steps", meta.get("steps")), schedule=_meta_schedule(meta))
    if not isinstance(m, Monitor):
        raise TypeError(f"monitor must be a Monitor, got {type(m).__name__}")
    steps = log.step.tolist()
    losses = log.loss.tolist()
    lrs = log.lr.tolist()
    gns = log.grad_norm.tolist()
    vals = log.val_metric.tolist()
    for t, l, lr, g, v in zip(steps, losses, lrs, gns, vals):
        m.update(t, l, lr=None if lr != lr else lr, grad_norm=None if g != g else g,
                 val_metric=None if v != v else v)
    return m


# ------------------------------------------------------------------------------- plot & CLI
_KIND_COLORS = {"diverged": "tab:red", "lr_too_high": "tab:orange", "lr_too_low": "tab:blue",
                "plateau": "tab:gray", "vanishing_gradients": "tab:purple",
                "exploding_gradients": "tab:brown", "overfitting": "tab:green"}


def plot_log(log: Log, path: str | Path, *, findings: list[Finding] | None = None,
             title: str | None = None) -> Path:
    """Plot loss, LR and gradient norm (and the validation metric) of a log against the step,
    with a vertical line per finding (its first step), and save it to ``path`` (PNG)."""
    import numpy as np

    from ._figures import new_figure, smooth

    if not isinstance(log, Log):
        raise TypeError(f"log must be a Log (from read_log), got {type(log).__name__}")
    found = log.findings if findings is None else findings
    has_g = bool(np.isfinite(log.grad_norm).any())
    has_v = bool(np.isfinite(log.val_metric).any())
    n = 2 + has_g
    fig, axes = new_figure((7, 2.0 * n + 0.6), n, 1, sharex=True)
    ax = axes[0]
    finite = np.isfinite(log.loss)
    # a long run's per-step values are a band: the raw values pale, their moving average on
    # top (a 100,000-step log drew a solid block)
    window = max(1, int(finite.sum()) // 200)

    def trace(a: Any, keep: Any, y: Any, pale: str, color: str, label: str | None) -> None:
        if window == 1:
            a.plot(log.step[keep], y[keep], lw=0.8, color=color, label=label)
            return
        a.plot(log.step[keep], y[keep], lw=0.6, color=pale, label=label)
        a.plot(log.step[keep], smooth(y[keep], window), lw=1.2, color=color,
               label=f"moving average ({window} steps)" if label else None)

    trace(ax, finite, log.loss, "0.7", "k", "train loss")
    pos = log.loss[finite]
    pos = pos[pos > 0]  # (a few exact zeros kept a 100,000-step log on a linear scale)
    if pos.size >= 0.99 * finite.sum() and pos.size and pos.max() / pos.min() > 20:
        ax.set_yscale("log")
    ax.set_ylabel("loss")
    if has_v:
        vm = np.isfinite(log.val_metric)
        ax2 = ax.twinx()
        ax2.plot(log.step[vm], log.val_metric[vm], "o-", ms=3, lw=0.8, color="tab:green",
                 label="val metric")
        ax2.set_ylabel("val metric", color="tab:green")
    axes[1].plot(log.step, log.lr, lw=1, color="tab:blue")
    axes[1].set_ylabel("LR")
    if has_g:
        trace(axes[2], np.isfinite(log.grad_norm), log.grad_norm, "rosybrown", "tab:brown",
              None)
        axes[2].set_yscale("log")
        axes[2].set_ylabel("grad norm")
    for f in found:
        c = _KIND_COLORS.get(f.kind, "k")
        for a in axes:
            a.axvline(f.step, color=c, ls="--", lw=1)
        axes[0].annotate(f.kind, (f.step, 1.0), xycoords=("data", "axes fraction"), color=c,
                         fontsize=8, rotation=90, va="top", ha="right")
    axes[-1].set_xlabel("step")
    axes[0].set_title(title or " ".join(f"{k}={v}" for k, v in log.meta.items()
                                        if k in ("task", "condition", "lr", "seed")), fontsize=9)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``lrkit monitor LOG.jsonl``."""
    parser.add_argument("log", help="a JSON-lines log written by lrkit.callbacks.JsonlLogger")
    parser.add_argument("-o", "--out", default=None,
                        help="PNG plot of loss, LR and grad norm with the findings marked "
                             "(default: LOG with .png)")
    parser.add_argument("--no-plot", action="store_true", help="only print the findings")
    parser.add_argument("--total-steps", type=int, default=None,
                        help="planned updates of the run (default: the log's meta "
                             "'total_steps' or 'steps')")
    parser.add_argument("--val-mode", choices=("min", "max"), default=None,
                        help="whether a lower or higher validation metric is better (default: "
                             "the log's meta 'val_mode', or 'higher_is_better', else min)")
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    parser.add_argument("--threshold", action="append", default=[], metavar="NAME=VALUE",
                        help="override a Thresholds field, e.g. --threshold z=3 (repeatable)")


def cli_main(args: argparse.Namespace) -> int:
    """Re-read a log, replay it through a fresh :class:`Monitor`, print the findings and plot."""
    log = read_log(args.log)
    overrides: dict[str, Any] = {}
    for item in args.threshold:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--threshold must be NAME=VALUE, got {item!r}")
        field_type = {f.name: f.type for f in dataclasses.fields(Thresholds)}.get(key, "float")
        try:
            overrides[key] = int(value) if field_type == "int" else float(value)
        except ValueError:
            want = "an integer" if field_type == "int" else "a number"
            raise ValueError(f"--threshold {key}: expected {want}, got {value!r}") from None
    meta = log.meta
    total = args.total_steps if args.total_steps is not None else meta.get(
        "total_steps", meta.get("steps"))
    mode = args.val_mode or meta.get("val_mode") or (
        "max" if meta.get("higher_is_better") else "min")
    m = replay(log, Monitor(val_mode=mode, total_steps=total, schedule=_meta_schedule(meta),
                            **overrides))
    found = m.findings
    if args.json:
        print(json.dumps([f.to_dict() for f in found], indent=1))
    else:
        print(f"{args.log}: {len(log)} updates"
              + (f", stop reason {log.end.get('stop_reason')}" if log.end else ""))
        for step, superseded in log.restarts:
            print(f"  resumed at step {step}: its records replace {superseded} earlier ones")
        if log.cut_short is not None:
            print(f"  line {log.cut_short} is cut short (the run stopped while writing it): "
                  "skipped")
        if not found:
            print("no findings")
        for f in found:
            print(f"- {f}")
    if not args.no_plot:
        out = Path(args.out) if args.out else Path(args.log).with_suffix(".png")
        plot_log(log, out, findings=found)
        if not args.json:
            print(f"plot: {out}")
    return 0
