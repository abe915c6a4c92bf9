"""lrkit's own proposal rules, as Optuna samplers: ``coarse_to_fine`` and ``auto``.

Both search one dimension, ``log10(lr)``, per schedule family, from the study's trials (so every
worker of a shared study proposes from the same evidence, and running trials are not proposed
again). Scores are sign-adjusted so that higher is better; a diverged trial is worse than any
finite one, and no LR at or above a known divergence point is proposed.

- **coarse_to_fine**, as a careful person does by hand: every decade in ``[low, high]``
  (upwards), then the neighbours of the best LR half a decade away, then a quarter, an eighth,
  a sixteenth.
- **auto**: opens with the range test's suggestion for the family and the probes of
  :data:`AUTO_PROBES` around it, then refines by successive parabolic interpolation in
  ``log10(lr)`` through the best point and its two neighbours (Brent's rule, safeguarded: the
  vertex must fall inside the bracket and at least 1/32 decade from a tried LR, else the wider
  half-gap is bisected); when the best is at an edge of what was tried it steps outwards (by the
  gap to its neighbour, between 1/8 and 1/2 decade), never past a divergence point.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Sequence

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.samplers import BaseSampler
from optuna.trial import TrialState

from ._result import told_diverged

__all__ = ["Observation", "observations", "coarse_to_fine_next", "auto_next", "PolicySampler"]

_MIN_GAP = 1.0 / 32.0  # decades: closer than this to a tried LR is "the same LR"


@dataclass(frozen=True)
class Observation:
    """One trial as the policies see it: ``x = log10(lr)``, ``score`` (higher is better)."""

    x: float
    score: float  # -inf for a diverged trial
    diverged: bool


def observations(trials: Sequence[Any], family: str | None, sign: float
                 ) -> tuple[list[Observation], list[float]]:
    """Finished observations and pending ``log10(lr)`` of one schedule family's trials."""
    done: list[Observation] = []
    pending: list[float] = []
    for t in trials:
        lr = t.params.get("lr")
        if lr is None:
            continue
        if family is not None and t.params.get("schedule", family) != family:
            continue
        x = math.log10(lr)
        if t.state in (TrialState.RUNNING, TrialState.WAITING):
            pending.append(x)
        elif t.state == TrialState.COMPLETE:
            diverged = bool(t.user_attrs.get("diverged"))
            v = t.value
            score = -math.inf if diverged or v is None or not math.isfinite(v) else sign * v
            done.append(Observation(x, score, diverged))
        elif t.state == TrialState.PRUNED:
            done.append(Observation(x, -math.inf, bool(t.user_attrs.get("diverged"))))
        elif told_diverged(t):
            # diverged with no value to tell it with yet (an objective's first trials)
            done.append(Observation(x, -math.inf, True))
    return done, pending


def divergence_bound(obs: Sequence[Observation]) -> float:
    """``log10`` of the lowest LR that diverged (``+inf`` when none did)."""
    return min((o.x for o in obs if o.diverged), default=math.inf)


def _tried(x: float, xs: Sequence[float], gap: float = _MIN_GAP) -> bool:
    return any(abs(x - y) < gap for y in xs)


def coarse_to_fine_next(obs: Sequence[Observation], pending: Sequence[float], lo: float,
                        hi: float, rng: random.Random) -> float:
    """The next ``log10(lr)`` of the coarse-to-fine rule within ``[lo, hi]`` (log10 units)."""
    bound = divergence_bound(obs)
    xs = [o.x for o in obs] + list(pending)
    decades = list(range(math.ceil(lo - 1e-9), math.floor(hi + 1e-9) + 1))
    grid = [float(d) for d in decades] if len(decades) >= 3 else [
        lo + (hi - lo) * i / 3 for i in range(4)]
    for x in grid:
        if x < bound and not _tried(x, xs):
            return x
    finite = [o for o in obs if math.isfinite(o.score)]
    if finite:
        best = max(finite, key=lambda o: o.score).x
        for delta in (0.5, 0.25, 0.125, 0.0625):
            for x in (best + delta, best - delta):
                if lo <= x <= hi and x < bound and not _tried(x, xs, delta / 2):
                    return x
    return _random_free(xs, lo, min(hi, bound), rng)


def _random_free(xs: Sequence[float], lo: float, hi: float, rng: random.Random) -> float:
    """A log-uniform point in ``[lo, hi)`` away from tried ones (best effort)."""
    if hi <= lo:
        hi = lo + 1e-6
    for _ in range(50):
        x = rng.uniform(lo, hi)
        if not _tried(x, xs):
            return x
    return rng.uniform(lo, hi)


#: the ``auto`` rule's opening probes, in decades from the range test's suggestion: the
#: suggestion itself; a quarter decade up (with annealing the best peak LR often lies a little
#: above a constant-LR suggestion); a decade down (the range test reads the *training* loss, so on
#: generalisation-limited problems, small data, the best LR on held-out data lies about a
#: decade lower: the fastai "minimum / 10" rule)
AUTO_PROBES = (0.0, 0.25, -1.0)


def auto_next(obs: Sequence[Observation], pending: Sequence[float], start: float, lo: float,
              hi: float, rng: random.Random) -> float:
    """The next ``log10(lr)`` of lrkit's ``auto`` rule (see the module docstring)."""
    bound = divergence_bound(obs)
    top = min(hi, bound - _MIN_GAP) if math.isfinite(bound) else hi
    xs = sorted([o.x for o in obs] + list(pending))

    def ok(x: float) -> bool:
        return lo <= x <= top and not _tried(x, xs)

    finite = [o for o in obs if math.isfinite(o.score)]
    if not finite and math.isfinite(bound):
        # everything finished so far diverged: go down half a decade below all that was tried
        # (not just below the bound: an objective that diverged at its start point crept down
        # 1/32 decade a trial, 5 trials in 0.12 decade, all diverged)
        below = min(xs) - 0.5
        return below if ok(below) else _random_free(xs, lo, top, rng)
    # into the range, not below the divergence bound: a start that diverged is left to the
    # probes below it and to the bracket, not crept down from 1/32 decade at a time
    start = min(max(start, lo), hi)
    for d in AUTO_PROBES:
        if ok(start + d):
            return start + d
    if not finite:  # the rest is pending: go down
        below = min(xs) - 0.5 if xs else start
        return below if ok(below) else _random_free(xs, lo, top, rng)
    best = max(finite, key=lambda o: o.score)
    left = [o for o in obs if o.x < best.x - 1e-12]
    right = [o for o in obs if o.x > best.x + 1e-12]
    ln = max(left, key=lambda o: o.x) if left else None
    rn = min(right, key=lambda o: o.x) if right else None
    if rn is None or ln is None:  # best is at an edge of what was tried: step outwards
        gap = (rn.x - best.x) if rn is not None else (best.x - ln.x) if ln is not None else 0.5
        step = min(0.5, max(0.125, gap))
        x = best.x + step if rn is None else best.x - step
        if rn is None and x >= top:
            x = (best.x + top) / 2
        if ok(x):
            return x
    if ln is not None and rn is not None:
        x = _parabola(ln, best, rn)
        if x is not None and ln.x + _MIN_GAP <= x <= rn.x - _MIN_GAP and ok(x):
            return x
        # bisect the wider side of the bracket
        sides = sorted([(best.x - ln.x, (best.x + ln.x) / 2), (rn.x - best.x, (best.x + rn.x) / 2)],
                       reverse=True)
        for _, mid in sides:
            if ok(mid):
                return mid
    # the bracket is resolved to 1/32 decade: widen the search from the best point outwards
    for delta in (0.5, 0.75, 1.0, 1.5):
        for x in (best.x + delta, best.x - delta):
            if ok(x):
                return x
    return _random_free(xs, lo, top, rng)


def _parabola(a: Observation, b: Observation, c: Observation) -> float | None:
    """Vertex of the parabola through three points with finite scores (None if not concave)."""
    if not (math.isfinite(a.score) and math.isfinite(c.score)):
        return None
    x1, x2, x3 = a.x, b.x, c.x
    y1, y2, y3 = a.score, b.score, c.score
    den = (x2 - x1) * (y2 - y3) - (x2 - x3) * (y2 - y1)
    if den == 0:
        return None
    num = (x2 - x1) ** 2 * (y2 - y3) - (x2 - x3) ** 2 * (y2 - y1)
    # concave (a maximum) iff b is at least as good as both neighbours
    if y2 < y1 or y2 < y3:
        return None
    return x2 - 0.5 * num / den


class PolicySampler(BaseSampler):
    """An Optuna sampler that proposes ``lr`` (and ``schedule``) by an lrkit rule.

    Parameters other than ``lr`` and ``schedule`` are sampled at random.

    Args:
        rule: ``"coarse_to_fine"`` or ``"auto"``.
        sign: +1 when the study maximises, -1 when it minimises.
        starts: the ``auto`` rule's starting LR per schedule family.
        seed: seeds the tie-breaking random generator.
    """

    def __init__(self, rule: str, *, sign: float, starts: dict[str, float] | None = None,
                 seed: int = 0) -> None:
        if rule not in ("coarse_to_fine", "auto"):
            raise ValueError(f"rule must be 'coarse_to_fine' or 'auto', got {rule!r}")
        self.rule = rule
        self.sign = float(sign)
        self.starts = dict(starts or {})
        self.seed = int(seed)
        self._random = optuna.samplers.RandomSampler(seed=seed)

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict:
        return {}

    def sample_relative(self, study: Any, trial: Any, search_space: dict) -> dict:
        return {}

    def _rng(self, trial: Any) -> random.Random:
        return random.Random(self.seed * 1_000_003 + trial.number)

    def sample_independent(self, study: Any, trial: Any, name: str, dist: Any) -> Any:
        trials = study.get_trials(deepcopy=False)
        trials = [t for t in trials if t.number != trial.number]
        if name == "schedule" and isinstance(dist, CategoricalDistribution):
            return self._family(trials, list(dist.choices))
        if name == "lr" and isinstance(dist, FloatDistribution) and dist.log:
            family = trial.params.get("schedule")
            obs, pending = observations(trials, family, self.sign)
            lo, hi = math.log10(dist.low), math.log10(dist.high)
            if self.rule == "coarse_to_fine":
                x = coarse_to_fine_next(obs, pending, lo, hi, self._rng(trial))
            else:
                start = self.starts.get(family or "")
                if start is None and len(self.starts) == 1:  # one family: not a parameter
                    start = next(iter(self.starts.values()))
                if start is None:
                    start = 10 ** ((lo + hi) / 2)
                x = auto_next(obs, pending, math.log10(start), lo, hi, self._rng(trial))
            return float(min(max(10 ** x, dist.low), dist.high))
        return self._random.sample_independent(study, trial, name, dist)

    def _family(self, trials: Sequence[Any], choices: list) -> Any:
        """Each family once (in order), then the family of the best trial so far."""
        counts = {c: 0 for c in choices}
        best, best_score = None, -math.inf
        for t in trials:
            c = t.params.get("schedule")
            if c in counts:
                counts[c] += 1
                if t.state == TrialState.COMPLETE and not t.user_attrs.get("diverged") \
                        and t.value is not None and math.isfinite(t.value) \
                        and self.sign * t.value > best_score:
                    best, best_score = c, self.sign * t.value
        for c in choices:
            if counts[c] == 0:
                return c
        return best if best is not None else min(choices, key=lambda c: counts[c])
