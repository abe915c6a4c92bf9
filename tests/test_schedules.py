"""Tests of lrkit.schedules against independent references.

PyTorch families are stepped side by side with ``torch.optim.lr_scheduler`` (plain loop, dummy
SGD, LR read from ``param_groups[0]['lr']`` before ``optimizer.step()``); the other families are
checked against reference formulas written here from their sources (Hugging Face transformers
``optimization.py``, Keras ``InverseTimeDecay``, the WSD papers).
"""

from __future__ import annotations

import doctest
import json
import math
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch.optim import lr_scheduler as tls

import lrkit.schedules as S

REL = 1e-9
torch.set_num_threads(1)
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

lrs_ = st.floats(1e-4, 10.0)
frac = st.floats(0.0, 1.0)


def torch_run(make, n: int, lr: float = 1.0, *, betas: bool = False, closed: list | None = None):
    """Step a PyTorch scheduler n times; LR (and momentum) of each step, read before opt.step().

    With ``closed`` (a list), also collect PyTorch's own closed form ``_get_closed_form_lr`` at
    each step: its chained (recursive) ``get_lr`` accumulates float error, which can leave an
    exact 0 as -3e-17 (LinearLR with end_factor=0), beyond any relative tolerance.
    """
    p = torch.nn.Parameter(torch.zeros(1))
    opt = (
        torch.optim.Adam([p], lr=lr)
        if betas
        else torch.optim.SGD([p], lr=lr, momentum=0.9)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sch = make(opt)
        lrs, moms = [], []
        for _ in range(n):
            g = opt.param_groups[0]
            lrs.append(g["lr"])
            if closed is not None:
                closed.append(sch._get_closed_form_lr()[0])
            moms.append(g["betas"][0] if betas else g["momentum"])
            opt.step()
            sch.step()
    return lrs, moms


def assert_close(ours, ref, *, what="lr", closed=None):
    """Equal to 1e-9 relative on every step; where PyTorch's chained form has drifted, to its
    closed form (``closed``) instead. Where the exact value is 0 (a decay to zero), PyTorch's
    floating-point residue (~1e-17 of the peak) is accepted up to 1e-15 of the sequence's peak."""
    assert len(ours) == len(ref)
    floor = 1e-15 * max((abs(v) for v in ref), default=0.0) or 1e-300
    for t, (a, b) in enumerate(zip(ours, ref)):
        if closed is not None and a != pytest.approx(b, rel=REL, abs=floor):
            b = closed[t]
        assert a == pytest.approx(b, rel=REL, abs=floor), f"{what} differs at step {t}: {a!r} vs {b!r}"


def values(s, n):
    return [s(t) for t in range(n)]


# ------------------------------------------------------------------------------------------
# PyTorch conformance
# ------------------------------------------------------------------------------------------


@FAST
@given(lr=lrs_, step_size=st.integers(1, 40), gamma=st.floats(0.05, 2.0), n=st.integers(1, 250))
def test_step_matches_torch(lr, step_size, gamma, n):
    closed: list = []
    ref, _ = torch_run(lambda o: tls.StepLR(o, step_size, gamma=gamma), n, lr, closed=closed)
    assert_close(values(S.step(lr, step_size, gamma=gamma), n), ref, closed=closed)


@FAST
@given(
    lr=lrs_,
    milestones=st.lists(st.integers(1, 250), max_size=6, unique=True).map(sorted),
    gamma=st.floats(0.05, 2.0),
    n=st.integers(1, 260),
)
def test_multistep_matches_torch(lr, milestones, gamma, n):
    closed: list = []
    ref, _ = torch_run(lambda o: tls.MultiStepLR(o, milestones, gamma=gamma), n, lr, closed=closed)
    assert_close(values(S.multistep(lr, milestones, gamma=gamma), n), ref, closed=closed)


@FAST
@given(lr=lrs_, gamma=st.floats(0.9, 1.05), n=st.integers(1, 300))
def test_exponential_matches_torch(lr, gamma, n):
    closed: list = []
    ref, _ = torch_run(lambda o: tls.ExponentialLR(o, gamma), n, lr, closed=closed)
    assert_close(values(S.exponential(lr, gamma), n), ref, closed=closed)


@FAST
@given(
    lr=lrs_,
    start_factor=st.floats(0.01, 1.0),
    end_factor=frac,
    total_iters=st.integers(1, 100),
    n=st.integers(1, 150),
)
def test_linear_matches_torch(lr, start_factor, end_factor, total_iters, n):
    make = lambda o: tls.LinearLR(o, start_factor, end_factor, total_iters)  # noqa: E731
    closed: list = []
    ref, _ = torch_run(make, n, lr, closed=closed)
    s = S.linear(lr, start_factor=start_factor, end_factor=end_factor, total_iters=total_iters)
    # LinearLR's chained form can end at -3e-17 instead of 0 (end_factor=0): closed form there
    assert_close(values(s, n), ref, closed=closed)


def test_linear_defaults_are_pytorchs():
    ref, _ = torch_run(lambda o: tls.LinearLR(o), 10, 0.3)
    assert_close(values(S.linear(0.3), 10), ref)


@FAST
@given(lr=lrs_, total_iters=st.integers(1, 100), power=st.floats(0.1, 5.0), n=st.integers(1, 150))
def test_polynomial_matches_torch(lr, total_iters, power, n):
    closed: list = []
    ref, _ = torch_run(lambda o: tls.PolynomialLR(o, total_iters, power), n, lr, closed=closed)
    assert_close(values(S.polynomial(lr, total_iters=total_iters, power=power), n), ref, closed=closed)


@FAST
@given(lr=lrs_, T_max=st.integers(1, 250), eta=frac)
def test_cosine_matches_torch_up_to_T_max(lr, T_max, eta):
    eta_min = eta * lr
    closed: list = []
    make = lambda o: tls.CosineAnnealingLR(o, T_max, eta_min=eta_min)  # noqa: E731
    ref, _ = torch_run(make, T_max + 1, lr, closed=closed)
    s = S.cosine(lr, T_max, eta_min=eta_min)
    # compared with PyTorch's stepped (chained) values; should they drift past 1e-9, with
    # PyTorch's closed form; and always with the formula written out here
    assert_close(values(s, T_max + 1), ref, closed=closed)
    formula = [eta_min + (lr - eta_min) * (1 + math.cos(math.pi * t / T_max)) / 2 for t in range(T_max + 1)]
    assert_close(values(s, T_max + 1), formula)


def test_cosine_holds_eta_min_after_T_max_unlike_pytorch():
    ref, _ = torch_run(lambda o: tls.CosineAnnealingLR(o, 10, eta_min=0.01), 15, 1.0)
    s = S.cosine(1.0, 10, eta_min=0.01)
    assert [s(t) for t in range(10, 40)] == [0.01] * 30
    assert ref[14] > 0.02  # PyTorch's curve rises again after T_max
    assert s.horizon == 10


@FAST
@given(lr=lrs_, T_0=st.integers(1, 30), T_mult=st.integers(1, 3), eta=frac, n=st.integers(1, 300))
def test_cosine_restarts_matches_torch(lr, T_0, T_mult, eta, n):
    eta_min = eta * lr
    make = lambda o: tls.CosineAnnealingWarmRestarts(o, T_0, T_mult=T_mult, eta_min=eta_min)  # noqa: E731
    ref, _ = torch_run(make, n, lr)
    s = S.cosine_restarts(lr, T_0, T_mult=T_mult, eta_min=eta_min)
    assert_close(values(s, n), ref)
    assert s.horizon is None


@FAST
@given(
    base_lr=st.floats(0.0, 1.0),
    extra=st.floats(1e-4, 5.0),
    up=st.integers(1, 40),
    down=st.one_of(st.none(), st.integers(0, 40)),
    mode=st.sampled_from(["triangular", "triangular2", "exp_range"]),
    gamma=st.floats(0.9, 1.0),
    cycle_momentum=st.booleans(),
    base_m=st.floats(0.5, 0.9),
    dm=st.floats(0.0, 0.09),
    n=st.integers(1, 300),
)
def test_cyclic_matches_torch_lr_and_momentum(
    base_lr, extra, up, down, mode, gamma, cycle_momentum, base_m, dm, n
):
    max_lr = base_lr + extra
    kw = dict(
        step_size_up=up,
        step_size_down=down,
        mode=mode,
        gamma=gamma,
        cycle_momentum=cycle_momentum,
        base_momentum=base_m,
        max_momentum=base_m + dm,
    )
    ref, ref_m = torch_run(lambda o: tls.CyclicLR(o, base_lr, max_lr, **kw), n, base_lr or 1.0)
    s = S.cyclic(base_lr, max_lr, **kw)
    assert_close(values(s, n), ref)
    if cycle_momentum:
        assert_close([s.momentum(t) for t in range(n)], ref_m, what="momentum")
    else:
        assert s.momentum(0) is None


def test_cyclic_momentum_drives_adam_beta1_like_pytorch():
    make = lambda o: tls.CyclicLR(o, 0.01, 0.1, step_size_up=7, step_size_down=3)  # noqa: E731
    ref, ref_m = torch_run(make, 40, 0.01, betas=True)
    s = S.cyclic(0.01, 0.1, step_size_up=7, step_size_down=3)
    assert_close(values(s, 40), ref)
    assert_close([s.momentum(t) for t in range(40)], ref_m, what="beta1")


@settings(max_examples=60, deadline=None)
@given(
    max_lr=lrs_,
    total_steps=st.integers(1, 250),
    pct_start=st.floats(0.01, 0.99),
    anneal=st.sampled_from(["cos", "linear"]),
    div_factor=st.floats(1.0, 100.0),
    final_div_factor=st.floats(1.0, 1e5),
    three_phase=st.booleans(),
    cycle_momentum=st.booleans(),
    base_m=st.floats(0.5, 0.9),
    dm=st.floats(0.0, 0.09),
)
def test_onecycle_matches_torch_lr_and_momentum(
    max_lr, total_steps, pct_start, anneal, div_factor, final_div_factor, three_phase,
    cycle_momentum, base_m, dm,
):
    # PyTorch divides by zero at step 0 when pct_start * total_steps == 1 (documented difference)
    assume(float(pct_start * total_steps) - 1 != 0.0)
    kw = dict(
        pct_start=pct_start,
        anneal_strategy=anneal,
        div_factor=div_factor,
        final_div_factor=final_div_factor,
        three_phase=three_phase,
        cycle_momentum=cycle_momentum,
        base_momentum=base_m,
        max_momentum=base_m + dm,
    )
    ref, ref_m = torch_run(lambda o: tls.OneCycleLR(o, max_lr, total_steps=total_steps, **kw), total_steps)
    s = S.onecycle(max_lr, total_steps, **kw)
    assert_close(values(s, total_steps), ref)
    if cycle_momentum:
        assert_close([s.momentum(t) for t in range(total_steps)], ref_m, what="momentum")
    else:
        assert s.momentum(0) is None
    assert s.horizon == total_steps
    # past the horizon the minimum (and final momentum) is held; PyTorch raises instead
    low = max_lr / div_factor / final_div_factor
    assert s(total_steps) == pytest.approx(low, rel=REL)
    assert s(10 * total_steps + 7) == s(total_steps)


def test_onecycle_defaults_are_pytorchs():
    ref, ref_m = torch_run(lambda o: tls.OneCycleLR(o, 0.5, total_steps=100), 100)
    s = S.onecycle(0.5, 100)
    assert_close(values(s, 100), ref)
    assert_close([s.momentum(t) for t in range(100)], ref_m, what="momentum")


def test_onecycle_single_warmup_step_starts_at_initial_lr():
    # pct_start * total_steps == 1: PyTorch raises ZeroDivisionError at step 0
    s = S.onecycle(1.0, 10, pct_start=0.1)
    assert s(0) == pytest.approx(1.0 / 25, rel=1e-12)
    assert s(1) < 1.0 and s(9) == pytest.approx(1.0 / 25 / 1e4)


def test_sequence_matches_torch_sequentiallr_until_horizon():
    make = lambda o: tls.SequentialLR(  # noqa: E731
        o, [tls.LinearLR(o, start_factor=0.1, total_iters=5), tls.CosineAnnealingLR(o, 20)], [5]
    )
    ref, _ = torch_run(make, 26, 0.3)
    s = S.sequence([S.linear(0.3, start_factor=0.1, total_iters=5), S.cosine(0.3, 20)], [5])
    assert_close(values(s, 26), ref)
    assert s.horizon == 25


# ------------------------------------------------------------------------------------------
# families PyTorch lacks: reference formulas from their sources
# ------------------------------------------------------------------------------------------


def hf_linear(t, W, T):  # transformers _get_linear_schedule_with_warmup_lr_lambda
    if t < W:
        return float(t) / float(max(1, W))
    return max(0.0, float(T - t) / float(max(1, T - W)))


def hf_cosine(t, W, T, num_cycles, min_lr_rate):  # _get_cosine_schedule_with_warmup_lr_lambda
    if t < W:
        return float(t) / float(max(1, W))
    progress = float(t - W) / float(max(1, T - W))
    factor = 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress))
    factor = factor * (1 - min_lr_rate) + min_lr_rate
    return max(0, factor)


def hf_inverse_sqrt(t, W, timescale):  # _get_inverse_sqrt_schedule_lr_lambda
    if timescale is None:
        timescale = W or 10_000
    if t < W:
        return float(t) / float(max(1, W))
    shift = timescale - W
    return 1.0 / math.sqrt((t + shift) / timescale)


@FAST
@given(lr=lrs_, W=st.integers(0, 50), extra=st.integers(1, 200))
def test_warmup_linear_matches_hf(lr, W, extra):
    T = W + extra
    s = S.warmup_linear(lr, warmup_steps=W, total_steps=T)
    assert_close(values(s, T + 20), [lr * hf_linear(t, W, T) for t in range(T + 20)])
    assert s.horizon == T and (W == 0 or s(0) == 0.0)


@FAST
@given(
    lr=lrs_,
    W=st.integers(0, 50),
    extra=st.integers(1, 200),
    cycles=st.sampled_from([0.5, 0.25, 1.0, 1.5]),
    floor_=frac,
)
def test_warmup_cosine_matches_hf(lr, W, extra, cycles, floor_):
    T = W + extra
    min_lr = floor_ * lr
    s = S.warmup_cosine(lr, warmup_steps=W, total_steps=T, num_cycles=cycles, min_lr=min_lr)
    ref = [lr * hf_cosine(t, W, T, cycles, min_lr / lr) for t in range(T + 1)]
    for t, (a, b) in enumerate(zip(values(s, T + 1), ref)):
        assert a == pytest.approx(b, rel=REL, abs=1e-12 * lr), t
    # held after total_steps (HF's curve would rise again)
    assert s(T + 5) == s(T) and s.horizon == T


@FAST
@given(lr=lrs_, W=st.integers(0, 50), timescale=st.one_of(st.none(), st.integers(1, 100)))
def test_inverse_sqrt_matches_hf(lr, W, timescale):
    s = S.inverse_sqrt(lr, warmup_steps=W, timescale=timescale)
    assert_close(values(s, 300), [lr * hf_inverse_sqrt(t, W, timescale) for t in range(300)])
    assert s.horizon is None


def test_inverse_sqrt_is_fairseq_after_warmup():
    s = S.inverse_sqrt(1.0, warmup_steps=16)
    for t in (16, 64, 400):
        assert s(t) == pytest.approx(math.sqrt(16) / math.sqrt(t), rel=REL)


@FAST
@given(lr=lrs_, decay_steps=st.floats(0.5, 100), rate=st.floats(0, 5), staircase=st.booleans())
def test_inverse_time_matches_keras_formula(lr, decay_steps, rate, staircase):
    s = S.inverse_time(lr, decay_steps=decay_steps, decay_rate=rate, staircase=staircase)
    for t in range(200):
        p = math.floor(t / decay_steps) if staircase else t / decay_steps
        assert s(t) == pytest.approx(lr / (1 + rate * p), rel=REL)


@FAST
@given(
    lr=lrs_,
    W=st.integers(0, 30),
    stable=st.integers(0, 50),
    D=st.integers(1, 60),
    shape=st.sampled_from(["linear", "cosine", "1-sqrt"]),
    final=frac,
)
def test_wsd_matches_formula(lr, W, stable, D, shape, final):
    T = W + stable + D
    final_lr = final * lr
    s = S.wsd(lr, total_steps=T, warmup_steps=W, decay_steps=D, decay_shape=shape, final_lr=final_lr)
    shapes = {
        "linear": lambda p: 1 - p,
        "cosine": lambda p: (1 + math.cos(math.pi * p)) / 2,
        "1-sqrt": lambda p: 1 - math.sqrt(p),
    }
    for t in range(T + 10):
        if t < W:
            ref = lr * t / W
        elif t < T - D:
            ref = lr
        else:
            ref = final_lr + (lr - final_lr) * shapes[shape](min(t - (T - D), D) / D)
        assert s(t) == pytest.approx(ref, rel=REL, abs=1e-12 * lr), t
    assert s(T) == final_lr and s.horizon == T


def test_wsd_boundaries():
    s = S.wsd(1.0, total_steps=100, warmup_steps=10, decay_steps=20, decay_shape="1-sqrt", final_lr=0.1)
    assert s(0) == 0.0 and s(9) == 0.9 and s(10) == 1.0 and s(80) == 1.0
    assert s(85) == pytest.approx(0.1 + 0.9 * (1 - math.sqrt(0.25)))
    assert s(100) == 0.1 == s(1000)


def test_piecewise_constant_and_linear():
    pts = [[0, 1.0], [10, 0.5], [20, 0.1]]
    c = S.piecewise(pts)
    assert [c(t) for t in (0, 9, 10, 19, 20, 500)] == [1.0, 1.0, 0.5, 0.5, 0.1, 0.1]
    li = S.piecewise(pts, interpolation="linear")
    assert li(5) == pytest.approx(0.75) and li(15) == pytest.approx(0.3)
    assert li(10) == 0.5 and li(99) == 0.1


# ------------------------------------------------------------------------------------------
# combinators
# ------------------------------------------------------------------------------------------


@FAST
@given(
    lr=lrs_,
    n=st.integers(1, 30),
    start_factor=st.floats(0.01, 1.0),
    shape=st.sampled_from(["linear", "cosine", "exponential"]),
    T=st.integers(1, 100),
)
def test_warmup_combinator(lr, n, start_factor, shape, T):
    inner = S.cosine(lr, T)
    s = S.warmup(inner, n, start_factor=start_factor, shape=shape)
    f = {
        "linear": lambda p: start_factor + (1 - start_factor) * p,
        "cosine": lambda p: start_factor + (1 - start_factor) * (1 - math.cos(math.pi * p)) / 2,
        "exponential": lambda p: start_factor * (1 / start_factor) ** p,
    }[shape]
    for t in range(n):
        assert s(t) == pytest.approx(lr * f(t / n), rel=REL)
    for t in range(n, n + T + 3):
        assert s(t) == inner(t - n)
    assert s(0) == pytest.approx(lr * start_factor, rel=REL)
    assert s.horizon == n + T


def test_warmup_default_starts_at_zero_and_forwards_momentum():
    inner = S.onecycle(1.0, 50)
    s = S.warmup(inner, 5)
    assert s(0) == 0.0 and s(5) == inner(0)
    assert s.momentum(0) == inner.momentum(0) and s.momentum(17) == inner.momentum(12)
    assert S.warmup(S.constant(0.1), 3).momentum(1) is None


def test_sequence_restarts_each_part_and_forwards_momentum():
    a, b, c = S.constant(1.0), S.exponential(0.5, 0.9), S.cyclic(0.1, 1.0, step_size_up=4)
    s = S.sequence([a, b, c], [10, 20])
    assert [s(t) for t in range(10)] == [1.0] * 10
    assert [s(t) for t in range(10, 20)] == [b(t) for t in range(10)]
    assert [s(t) for t in range(20, 40)] == [c(t) for t in range(20)]
    assert s.momentum(5) is None and s.momentum(25) == c.momentum(5)
    assert s.horizon is None


def test_scale_and_floor():
    inner = S.cosine(1.0, 10)
    sc = S.scale(inner, 0.5)
    assert [sc(t) for t in range(12)] == [0.5 * inner(t) for t in range(12)]
    fl = S.floor(inner, 0.2)
    assert [fl(t) for t in range(12)] == [max(0.2, inner(t)) for t in range(12)]
    assert sc.horizon == fl.horizon == 10


@pytest.mark.parametrize("shape", ["linear", "cosine", "1-sqrt"])
def test_cooldown_is_continuous_and_reaches_final(shape):
    inner = S.cosine_restarts(1.0, 37)
    start, n, final = 50, 20, 0.01
    s = S.cooldown(inner, start, steps=n, shape=shape, final=final)
    assert [s(t) for t in range(start + 1)] == [inner(t) for t in range(start + 1)]
    f = {"linear": lambda p: 1 - p, "cosine": lambda p: (1 + math.cos(math.pi * p)) / 2,
         "1-sqrt": lambda p: 1 - math.sqrt(p)}[shape]
    for t in range(start, start + n + 5):
        p = min(1.0, (t - start) / n)
        assert s(t) == pytest.approx(final + (inner(start) - final) * f(p), rel=REL)
    assert s(start + n) == final == s(10_000)
    assert s.horizon == start + n


def test_cooldown_freezes_momentum_at_start():
    inner = S.cyclic(0.1, 1.0, step_size_up=5)
    s = S.cooldown(inner, 7, steps=10)
    assert s.momentum(3) == inner.momentum(3)
    assert s.momentum(30) == inner.momentum(7)


# ------------------------------------------------------------------------------------------
# specs, equality, pickling, names
# ------------------------------------------------------------------------------------------

EXAMPLES = [
    S.constant(0.1),
    S.step(0.1, 30),
    S.multistep(0.1, [30, 60], gamma=0.2),
    S.exponential(0.1, 0.99),
    S.linear(0.1),
    S.polynomial(0.1, total_iters=100, power=2.0),
    S.cosine(0.1, 1000, eta_min=1e-4),
    S.cosine_restarts(0.1, 10, T_mult=2),
    S.cyclic(1e-3, 1e-2, step_size_up=100, mode="exp_range", gamma=0.999),
    S.onecycle(0.1, 1000, three_phase=True, anneal_strategy="linear"),
    S.warmup_linear(0.1, warmup_steps=10, total_steps=100),
    S.warmup_cosine(0.1, warmup_steps=10, total_steps=100, min_lr=1e-3),
    S.inverse_sqrt(0.1, warmup_steps=100),
    S.inverse_time(0.1, decay_steps=10, decay_rate=0.5, staircase=True),
    S.wsd(0.1, total_steps=1000, warmup_steps=100, decay_steps=200, decay_shape="1-sqrt"),
    S.piecewise([[0, 0.1], [100, 0.01]], interpolation="linear"),
    S.warmup(S.cosine(0.1, 100), 10, start_factor=0.1, shape="cosine"),
    S.sequence([S.linear(0.1, total_iters=10), S.cosine(0.1, 90)], [10]),
    S.scale(S.onecycle(1.0, 100), 0.5),
    S.floor(S.exponential(0.1, 0.9), 1e-4),
    S.cooldown(S.warmup(S.constant(0.1), 10), 500, steps=100, shape="cosine", final=1e-3),
]


def test_examples_cover_every_name():
    assert sorted({s.name for s in EXAMPLES}) == sorted(S.names())
    assert len(S.names()) == len(set(S.names())) == 21


@pytest.mark.parametrize("s", EXAMPLES, ids=lambda s: s.name)
def test_spec_round_trip_pickle_and_hash(s):
    spec = json.loads(json.dumps(s.spec))
    assert spec["name"] == s.name
    back = S.from_spec(spec)
    assert back == s and hash(back) == hash(s) and back.spec == s.spec
    assert S.from_spec(json.dumps(s.spec)) == s
    p = pickle.loads(pickle.dumps(s))
    assert p == s and values(p, 50) == values(s, 50)
    assert [p.momentum(t) for t in range(50)] == [s.momentum(t) for t in range(50)]
    assert isinstance(s(0), float)


def test_combinators_nest_child_specs():
    s = S.warmup(S.cosine(0.1, 100), 10)
    assert s.spec == {
        "name": "warmup",
        "schedule": {"name": "cosine", "lr": 0.1, "T_max": 100, "eta_min": 0.0},
        "steps": 10,
        "start_factor": 0.0,
        "shape": "linear",
    }
    built = S.from_spec({"name": "sequence", "schedules": [{"name": "constant", "lr": 1.0},
                                                          {"name": "constant", "lr": 0.5}],
                         "milestones": [4]})
    assert built(3) == 1.0 and built(4) == 0.5


def test_immutable_and_value_semantics():
    s = S.cosine(0.1, 10)
    with pytest.raises(AttributeError):
        s.lr = 1.0
    with pytest.raises(AttributeError):
        s.new_attr = 1
    assert s == S.cosine(0.1, 10, eta_min=0) and s != S.cosine(0.1, 11)
    assert len({s, S.cosine(0.1, 10), S.constant(0.1)}) == 2
    spec = s.spec
    spec["lr"] = 5.0
    assert s.spec["lr"] == 0.1


def test_step_argument_is_checked():
    s = S.constant(0.1)
    with pytest.raises(ValueError, match="step"):
        s(-1)
    with pytest.raises(TypeError, match="step"):
        s(1.5)
    with pytest.raises(ValueError, match="step"):
        s.momentum(-3)


def test_horizons():
    assert S.onecycle(0.1, 77).horizon == 77
    assert S.warmup(S.wsd(0.1, total_steps=50, warmup_steps=0, decay_steps=5), 3).horizon == 53
    assert S.warmup(S.constant(0.1), 3).horizon is None
    for s in (S.constant(0.1), S.step(0.1, 3), S.linear(0.1), S.cyclic(0.1, 1.0), S.inverse_sqrt(0.1, warmup_steps=3)):
        assert s.horizon is None


def test_doctests():
    result = doctest.testmod(S, verbose=False)
    assert result.attempted > 5 and result.failed == 0


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------

BAD = [
    (lambda: S.constant(0.0), ValueError, "lr"),
    (lambda: S.constant(-1e-3), ValueError, "lr"),
    (lambda: S.constant(float("nan")), ValueError, "lr"),
    (lambda: S.constant(float("inf")), ValueError, "lr"),
    (lambda: S.constant("0.1"), TypeError, "lr"),
    (lambda: S.constant(True), TypeError, "lr"),
    (lambda: S.step(0.1, 0), ValueError, "step_size"),
    (lambda: S.step(0.1, 2.0), TypeError, "step_size"),
    (lambda: S.step(0.1, 10, gamma=0.0), ValueError, "gamma"),
    (lambda: S.step(0.1, 10, gamma=-0.5), ValueError, "gamma"),
    (lambda: S.multistep(0.1, [30, 10]), ValueError, "milestones"),
    (lambda: S.multistep(0.1, [10, 10]), ValueError, "milestones"),
    (lambda: S.multistep(0.1, [0, 10]), ValueError, "milestones"),
    (lambda: S.multistep(0.1, 10), TypeError, "milestones"),
    (lambda: S.multistep(0.1, [10], gamma=0), ValueError, "gamma"),
    (lambda: S.exponential(0.1, 0.0), ValueError, "gamma"),
    (lambda: S.exponential(0.1, float("nan")), ValueError, "gamma"),
    (lambda: S.linear(0.1, start_factor=0.0), ValueError, "start_factor"),
    (lambda: S.linear(0.1, end_factor=1.5), ValueError, "end_factor"),
    (lambda: S.linear(0.1, total_iters=0), ValueError, "total_iters"),
    (lambda: S.polynomial(0.1, power=0), ValueError, "power"),
    (lambda: S.cosine(0.1, 0), ValueError, "T_max"),
    (lambda: S.cosine(0.1, 10, eta_min=0.2), ValueError, "eta_min"),
    (lambda: S.cosine(0.1, 10, eta_min=-0.01), ValueError, "eta_min"),
    (lambda: S.cosine_restarts(0.1, 10, T_mult=0), ValueError, "T_mult"),
    (lambda: S.cyclic(0.1, 0.01), ValueError, "max_lr"),
    (lambda: S.cyclic(0.01, 0.1, mode="triangle"), ValueError, "mode"),
    (lambda: S.cyclic(0.01, 0.1, gamma=0.0), ValueError, "gamma"),
    (lambda: S.cyclic(0.01, 0.1, step_size_up=0), ValueError, "step_size_up"),
    (lambda: S.cyclic(0.01, 0.1, base_momentum=0.95, max_momentum=0.9), ValueError, "base_momentum"),
    (lambda: S.cyclic(0.01, 0.1, cycle_momentum=1), TypeError, "cycle_momentum"),
    (lambda: S.onecycle(0.1, 0), ValueError, "total_steps"),
    (lambda: S.onecycle(0.1, 100, pct_start=0.0), ValueError, "pct_start"),
    (lambda: S.onecycle(0.1, 100, pct_start=1.0), ValueError, "pct_start"),
    (lambda: S.onecycle(0.1, 100, pct_start=float("nan")), ValueError, "pct_start"),
    (lambda: S.onecycle(0.0, 100), ValueError, "max_lr"),
    (lambda: S.onecycle(0.1, 100, anneal_strategy="cosine"), ValueError, "anneal_strategy"),
    (lambda: S.onecycle(0.1, 100, div_factor=0), ValueError, "div_factor"),
    (lambda: S.onecycle(0.1, 100, three_phase="yes"), TypeError, "three_phase"),
    (lambda: S.warmup_linear(0.1, warmup_steps=10, total_steps=10), ValueError, "warmup_steps"),
    (lambda: S.warmup_linear(0.1, warmup_steps=0, total_steps=0), ValueError, "total_steps"),
    (lambda: S.warmup_cosine(0.1, warmup_steps=1, total_steps=10, min_lr=0.5), ValueError, "min_lr"),
    (lambda: S.warmup_cosine(0.1, warmup_steps=-1, total_steps=10), ValueError, "warmup_steps"),
    (lambda: S.inverse_sqrt(0.1, warmup_steps=10, timescale=0), ValueError, "timescale"),
    (lambda: S.inverse_time(0.1, decay_steps=0, decay_rate=0.5), ValueError, "decay_steps"),
    (lambda: S.wsd(0.1, total_steps=100, warmup_steps=50, decay_steps=60), ValueError, "decay_steps"),
    (lambda: S.wsd(0.1, total_steps=100, warmup_steps=5, decay_steps=0), ValueError, "decay_steps"),
    (lambda: S.wsd(0.1, total_steps=100, warmup_steps=5, decay_steps=10, decay_shape="sqrt"), ValueError, "decay_shape"),
    (lambda: S.piecewise([[5, 0.1]]), ValueError, "step 0"),
    (lambda: S.piecewise([[0, 0.1], [10, 0.2], [5, 0.3]]), ValueError, "increasing"),
    (lambda: S.piecewise([]), ValueError, "points"),
    (lambda: S.piecewise([[0, 0.0]]), ValueError, "lr > 0"),
    (lambda: S.piecewise([[0, 0.1, 3]]), TypeError, "points"),
    (lambda: S.warmup(S.constant(0.1), 0), ValueError, "steps"),
    (lambda: S.warmup(S.constant(0.1), 5, shape="exponential"), ValueError, "start_factor"),
    (lambda: S.warmup(S.constant(0.1), 5, start_factor=1.5), ValueError, "start_factor"),
    (lambda: S.warmup(0.1, 5), TypeError, "schedule"),
    (lambda: S.warmup(S.warmup_linear(0.1, warmup_steps=5, total_steps=9), 5), ValueError, "schedule"),
    (lambda: S.sequence([S.constant(0.1), S.constant(0.2)], [5, 6]), ValueError, "milestones"),
    (lambda: S.sequence([S.constant(0.1), S.constant(0.2), S.constant(0.3)], [8, 4]), ValueError, "milestones"),
    (lambda: S.sequence([S.constant(0.1)], []), ValueError, "schedules"),
    (lambda: S.scale(S.constant(0.1), 0), ValueError, "factor"),
    (lambda: S.floor(S.constant(0.1), -1.0), ValueError, "min_lr"),
    (lambda: S.cooldown(S.constant(0.1), 10, steps=0), ValueError, "steps"),
    (lambda: S.cooldown(S.constant(0.1), 10, steps=5, final=0.2), ValueError, "final"),
    (lambda: S.cooldown(S.constant(0.1), -1, steps=5), ValueError, "start"),
    (lambda: S.cooldown(S.constant(0.1), 10, steps=5, shape="exp"), ValueError, "shape"),
    # from_spec
    (lambda: S.from_spec({"name": "cosin", "lr": 0.1, "T_max": 5}), ValueError, "did you mean 'cosine'"),
    (lambda: S.from_spec({"name": "onecylce", "max_lr": 0.1}), ValueError, "did you mean 'onecycle'"),
    (lambda: S.from_spec({"lr": 0.1}), ValueError, "name"),
    (lambda: S.from_spec({"name": 3}), TypeError, "name"),
    (lambda: S.from_spec({"name": "cosine", "lr": 0.1, "T_max": 5, "eta_mn": 0}), ValueError, "eta_mn"),
    (lambda: S.from_spec({"name": "cosine", "lr": 0.1}), ValueError, "T_max"),
    (lambda: S.from_spec({"name": "cosine", "lr": "0.1", "T_max": 5}), TypeError, "lr"),
    (lambda: S.from_spec({"name": "cosine", "lr": 0.1, "T_max": 5.0}), TypeError, "T_max"),
    (lambda: S.from_spec('{"name": "cosine", "lr": NaN, "T_max": 5}'), ValueError, "lr"),
    (lambda: S.from_spec("{not json"), ValueError, "JSON"),
    (lambda: S.from_spec([1, 2]), TypeError, "spec"),
    (lambda: S.from_spec({"name": "warmup", "schedule": {"name": "cosine", "lr": -1, "T_max": 3},
                          "steps": 3}), ValueError, "lr"),
]


@pytest.mark.parametrize("make,exc,words", BAD, ids=[f"{i}-{w}" for i, (_, _, w) in enumerate(BAD)])
def test_bad_input_is_rejected_with_a_message_naming_it(make, exc, words):
    with pytest.raises(exc, match=words.replace("(", r"\(")):
        make()


# ------------------------------------------------------------------------------------------
# plotting and layering
# ------------------------------------------------------------------------------------------


def test_plot_writes_a_png_with_momentum_and_horizons(tmp_path):
    out = tmp_path / "s.png"
    path = S.plot(
        [S.onecycle(0.1, 200), {"name": "cosine", "lr": 0.05, "T_max": 150}, S.constant(1e-4)],
        250,
        out,
        labels=["1cycle", "cosine", "constant"],
        title="demo",
    )
    assert path == str(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    single = S.plot(S.warmup_linear(0.1, warmup_steps=5, total_steps=50), 40, tmp_path / "one.png")
    assert Path(single).stat().st_size > 1000
    with pytest.raises(ValueError, match="labels"):
        S.plot([S.constant(0.1)], 10, tmp_path / "x.png", labels=["a", "b"])
    with pytest.raises(ValueError, match="steps"):
        S.plot(S.constant(0.1), 0, tmp_path / "x.png")


def test_import_without_torch_numpy_or_matplotlib():
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "import lrkit.schedules as S\n"
        "assert S.cosine(0.1, 10)(10) == 0.0\n"
        "bad = [m for m in ('torch', 'numpy', 'matplotlib') if sys.modules.get(m) is not None]\n"
        "assert not bad, bad\n"
    )
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_check_families_names_the_argument_and_the_entry():
    """The check tune and compare share for their ``schedules`` argument."""
    assert S.check_families("schedules", ["cosine", "wsd"]) == ("cosine", "wsd")
    for bad in ("cosine", [], None, {"cosine"}):
        with pytest.raises(ValueError, match="schedules must be a non-empty sequence"):
            S.check_families("schedules", bad)
    with pytest.raises(ValueError, match=r"schedules\[1\]"):
        S.check_families("schedules", ("cosine", "bogus"))
    with pytest.raises(ValueError, match="schedules must not repeat a family"):
        S.check_families("schedules", ("wsd", "wsd"))


def test_family_refuses_a_warmup_as_long_as_the_run():
    # it was clamped to steps - 1 without a word: a schedule of another shape than asked for
    assert S.family("cosine", 0.1, 10, warmup_steps=9)(9) == pytest.approx(0.1)
    for name in ("cosine", "wsd", "warmup_cosine", "constant"):
        with pytest.raises(ValueError, match=r"warmup_steps must be < steps \(10\), got 10"):
            S.family(name, 0.1, 10, warmup_steps=10)
    from lrkit.tasks import Recipe
    with pytest.raises(ValueError, match=r"warmup_steps must be < steps \(50\), got 60"):
        Recipe(optimizer="sgd", batch_size=8, steps=50, warmup_steps=60, default_lr=0.1,
               schedule="warmup_cosine")


def test_numpy_scalars_are_numbers_and_bools_are_not():
    """An LR read from a config array (``np.float32(3e-4)``) was refused as "not a real
    number"; it is the number it holds (as the monitor and ``as_real`` already took it)."""
    import numpy as np

    s = S.cosine(np.float32(3e-4), np.int64(100))
    assert s(0) == pytest.approx(3e-4, rel=1e-6) and s.horizon == 100
    assert S.exponential(0.1, np.float64(0.5))(2) == pytest.approx(0.025)
    with pytest.raises(TypeError, match="lr must be a real number"):
        S.cosine(True, 100)


@pytest.mark.parametrize("make", [lambda: S.exponential(0.1, 2.0),
                                  lambda: S.step(0.1, 1, gamma=2.0)])
def test_a_growing_schedule_that_overflows_says_so(make):
    """``gamma > 1`` (a growth schedule, as torch allows) is exact while it fits a float and
    says why past it (it was a bare "Numerical result out of range" from ``LRSchedule.step()``,
    then an OverflowError that the CLI printed as a traceback): a ValueError naming gamma and
    the step."""
    s = make()
    assert s(10) == pytest.approx(0.1 * 2.0**10)
    with pytest.raises(ValueError, match=r"gamma \*\* 2000 = 2.0 \*\* 2000 overflows a float at "
                                         r"step 2000: a gamma > 1"):
        s(2000)


def test_triangular2_holds_base_lr_where_torch_overflows():
    """``1 / 2.0 ** (cycle - 1)`` raised a bare OverflowError from cycle 1025 (as PyTorch's
    CyclicLR does); ``0.5 ** (cycle - 1)`` gives the same values before and underflows to 0
    after, so the LR stays at base_lr."""
    n = 2047  # 2-step cycles: step 2048 starts cycle 1025, where PyTorch overflows
    kw = dict(step_size_up=1, mode="triangular2")
    ref, ref_m = torch_run(lambda o: tls.CyclicLR(o, 0.01, 0.1, **kw), n, 0.01)
    s = S.cyclic(0.01, 0.1, **kw)
    assert_close(values(s, n), ref)
    assert_close([s.momentum(t) for t in range(n)], ref_m, what="momentum")
    assert ref[1] == 0.1 and ref[3] == pytest.approx(0.055)  # the peaks halve: 0.01 + 0.09 / 2
    with pytest.raises(OverflowError):
        torch_run(lambda o: tls.CyclicLR(o, 0.01, 0.1, **kw), n + 2, 0.01)
    assert [s(t) for t in (2048, 2049, 2151, 2152, 10**6 + 1)] == [0.01] * 5
    assert [s.momentum(t) for t in (2049, 2151, 10**6 + 1)] == [0.9] * 3


LATE = [
    S.sequence([S.constant(0.01), S.onecycle(0.1, 10)], [3]),
    S.sequence([S.onecycle(0.1, 10), S.constant(0.01)], [4]),
    S.sequence([S.constant(0.01), S.constant(0.02), S.cyclic(0.01, 0.1, step_size_up=2)], [2, 5]),
    S.warmup(S.sequence([S.constant(0.1), S.onecycle(0.1, 10)], [4]), 3),
    S.scale(S.sequence([S.constant(0.1), S.onecycle(0.1, 10)], [6]), 0.5),
    S.floor(S.sequence([S.constant(0.1), S.onecycle(0.1, 10)], [6]), 0.001),
    S.cooldown(S.sequence([S.constant(0.1), S.onecycle(0.1, 10)], [6]), 4, steps=5),
    S.cooldown(S.sequence([S.constant(0.1), S.onecycle(0.1, 10)], [6]), 6, steps=5),
    S.sequence([S.constant(0.1), S.sequence([S.constant(0.1), S.onecycle(0.1, 10)], [5])], [4]),
    S.onecycle(0.1, 10, cycle_momentum=False),
    S.cosine(0.1, 10),
]


@pytest.mark.parametrize("s", LATE, ids=range(len(LATE)))
def test_momentum_cycling_is_found_at_any_step_from_the_structure(s):
    """Whether any step cycles momentum was read from step 0 only: the adapter accepted
    ``sequence([constant, onecycle])`` on Adagrad and crashed at the onecycle's first step, and
    plot drew no momentum panel. The structure answers it; here against every step."""
    for n in range(1, 25):
        assert s._mom_within(n) == any(s.momentum(t) is not None for t in range(n)), n
    assert s._mom_within(None) == any(s.momentum(t) is not None for t in range(200))
    assert LATE[0]._mom_within(3) is False and LATE[0]._mom_within(4) is True
    assert LATE[6]._mom_within(None) is False and LATE[7]._mom_within(None) is True


def test_plot_draws_the_momentum_panel_when_momentum_starts_late(tmp_path):
    from matplotlib.image import imread

    def height(s, n):
        return imread(S.plot(s, n, tmp_path / "x.png")).shape[0]

    late = S.sequence([S.constant(0.004), S.onecycle(0.1, 100)], [20])
    assert height(S.onecycle(0.1, 100), 100) == 715  # 6.5 in x 110 dpi: LR and momentum
    assert height(late, 120) == 715  # (it was 495: no momentum panel)
    assert height(late, 20) == height(S.constant(0.1), 20) == 495  # 4.5 in: LR only


def test_piecewise_accepts_numpy_points():
    """``multistep`` took NumPy milestones, ``piecewise`` refused NumPy points."""
    import numpy as np

    want = S.piecewise([[0, 1.0], [5, 2.0]])
    for points in (np.array([[0, 1], [5, 2]]), [np.array([0, 1]), np.array([5, 2])],
                   ((np.int64(0), np.float32(1.0)), (5, 2.0))):
        s = S.piecewise(points)
        assert s == want and [s(t) for t in (0, 4, 5, 9)] == [1.0, 1.0, 2.0, 2.0]
        assert json.loads(json.dumps(s.spec)) == {
            "name": "piecewise", "points": [[0, 1.0], [5, 2.0]], "interpolation": "constant"}
    with pytest.raises(TypeError, match=r"points\[0\]\[0\] \(step\) must be an integer"):
        S.piecewise(np.array([[0, 0.1], [5, 0.01]]))  # a float array's steps are floats
    for bad in (np.array([0, 1]), [np.array([0, 1, 2])], [{0, 1}]):
        with pytest.raises(TypeError, match=r"points\[0\] must be a \[step, lr\] pair"):
            S.piecewise(bad)


def test_family_refuses_a_warmup_its_shape_cannot_fit():
    """``family("wsd", 0.1, 10, warmup_steps=9)`` shortened the warmup to 8 without a word;
    ``family("onecycle", 0.1, 10, warmup_steps=9)`` ran a 2-step cycle over an 11-step horizon."""
    with pytest.raises(ValueError, match=r"warmup_steps must be <= 8 for family 'wsd' over 10 "
                                         r"steps \(it decays over the last 2\), got 9"):
        S.family("wsd", 0.1, 10, warmup_steps=9)
    s = S.family("wsd", 0.1, 10, warmup_steps=8)
    assert s == S.wsd(0.1, total_steps=10, warmup_steps=8, decay_steps=2, decay_shape="1-sqrt")
    assert s(1) == 0.1 / 8 and s(8) == 0.1
    for name in ("cyclic", "onecycle"):
        with pytest.raises(ValueError, match=rf"family '{name}' needs 2 steps after the warmup to "
                                             r"reach its peak: warmup_steps must be <= steps - 2 "
                                             r"\(8\), got warmup_steps=9 and steps=10"):
            S.family(name, 0.1, 10, warmup_steps=9)
        with pytest.raises(ValueError, match=r"steps must be >= 2, got warmup_steps=0 and steps=1"):
            S.family(name, 0.1, 1)
    s = S.family("onecycle", 0.1, 10, warmup_steps=8)
    assert s == S.warmup(S.onecycle(0.1, 2), 8) and s.horizon == 10
    s = S.family("onecycle", 0.1, 14, warmup_steps=4)  # onecycle(0.1, 10) peaks at its step 2
    assert s.horizon == 14 and max(s(t) for t in range(14)) == s(6) == 0.1
    assert S.family("cyclic", 0.1, 10, warmup_steps=8)(9) == 0.1  # up 1 step: the peak
    for name in S.FAMILIES:  # whatever family accepts fits the run
        for n in range(1, 30):
            for w in range(n):
                try:
                    s = S.family(name, 0.1, n, warmup_steps=w)
                except ValueError:
                    continue
                assert s.horizon is None or s.horizon == n, (name, n, w)
