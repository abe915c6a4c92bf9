"""Tests of lrkit.torch: LRSchedule against PyTorch's own schedulers, GradScaler skips, exact resume
in a fresh process, the Plateau rule against ReduceLROnPlateau, horizon warnings and bad input."""

from __future__ import annotations

import copy
import io
import math
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.optim import lr_scheduler as tls

from lrkit import schedules as S
from lrkit.torch import HorizonWarning, LRSchedule, Plateau, PlateauState

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15)


def _mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def _data(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1234)
    return [(torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g)) for _ in range(n)]


def _momentum(group: dict) -> float | None:
    if "betas" in group:
        return float(group["betas"][0])
    return group.get("momentum")


def _groups(model: nn.Sequential, lrs: list[float]) -> list[dict]:
    if len(lrs) == 1:
        return [{"params": list(model.parameters()), "lr": lrs[0]}]
    return [{"params": list(model[0].parameters()), "lr": lrs[0]},
            {"params": list(model[2].parameters()), "lr": lrs[1]}]


def _drive(make_torch, schedule, make_opt, steps, *, lrs=(0.1,), group_scales=None):
    """Train two identical models, one under PyTorch's scheduler, one under LRSchedule; return
    the (lr, momentum) per group used by each optimizer update, and both models."""
    m1 = _mlp(0)
    m2 = copy.deepcopy(m1)
    o1 = make_opt(_groups(m1, list(lrs)))
    o2 = make_opt(_groups(m2, [1.0] * len(lrs)))  # LRSchedule overwrites the configured lr
    s1 = make_torch(o1)
    s2 = LRSchedule(o2, schedule, group_scales=group_scales)
    rec1, rec2 = [], []
    for x, y in _data(steps):
        for model, opt, sched, rec in ((m1, o1, s1, rec1), (m2, o2, s2, rec2)):
            rec.append([(g["lr"], _momentum(g)) for g in opt.param_groups])
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            sched.step()
    return rec1, rec2, m1, m2


def _assert_same_records(rec1, rec2):
    assert len(rec1) == len(rec2)
    for t, (a, b) in enumerate(zip(rec1, rec2)):
        for (lr1, m1), (lr2, m2) in zip(a, b):
            assert _close(lr1, lr2), (t, lr1, lr2)
            if m1 is None:
                assert m2 is None or _close(m2, 0.9)  # untouched SGD momentum
            else:
                assert _close(m1, m2), (t, m1, m2)


def _sgd(groups):
    return torch.optim.SGD(groups, lr=0.1, momentum=0.9)


# ------------------------------------------------------------------ PyTorch integration
CASES = {
    "step": (lambda o: tls.StepLR(o, step_size=7, gamma=0.5), S.step(0.1, 7, gamma=0.5), 30),
    "multistep": (lambda o: tls.MultiStepLR(o, [5, 12, 13], gamma=0.3),
                  S.multistep(0.1, [5, 12, 13], gamma=0.3), 25),
    "exponential": (lambda o: tls.ExponentialLR(o, gamma=0.93), S.exponential(0.1, 0.93), 30),
    "cosine": (lambda o: tls.CosineAnnealingLR(o, T_max=25, eta_min=0.001),
               S.cosine(0.1, 25, eta_min=0.001), 25),
    "onecycle": (lambda o: tls.OneCycleLR(o, max_lr=0.1, total_steps=30),
                 S.onecycle(0.1, 30), 30),
    "onecycle_3phase_linear": (
        lambda o: tls.OneCycleLR(o, max_lr=0.2, total_steps=40, pct_start=0.25, three_phase=True,
                                 anneal_strategy="linear", base_momentum=0.8, max_momentum=0.9),
        S.onecycle(0.2, 40, pct_start=0.25, three_phase=True, anneal_strategy="linear",
                   base_momentum=0.8, max_momentum=0.9), 40),
    "cyclic": (lambda o: tls.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=4, step_size_down=6,
                                      mode="triangular2"),
               S.cyclic(0.01, 0.1, step_size_up=4, step_size_down=6, mode="triangular2"), 30),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_lr_and_momentum_sequence_equal_pytorch_scheduler(name):
    make_torch, schedule, steps = CASES[name]
    lr0 = schedule(0) if name not in ("onecycle", "onecycle_3phase_linear", "cyclic") else 0.1
    rec1, rec2, m1, m2 = _drive(make_torch, schedule, _sgd, steps, lrs=(lr0,))
    _assert_same_records(rec1, rec2)
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p1, p2, rtol=1e-6, atol=1e-7)


def test_discriminative_group_scales_equal_onecycle_with_per_group_max_lr():
    rec1, rec2, _, _ = _drive(
        lambda o: tls.OneCycleLR(o, max_lr=[0.1, 0.01], total_steps=20), S.onecycle(0.1, 20),
        _sgd, 20, lrs=(0.1, 0.01), group_scales=[1.0, 0.1])
    _assert_same_records(rec1, rec2)
    assert rec2[5][1][0] == pytest.approx(0.1 * rec2[5][0][0], rel=1e-12)


def test_discriminative_group_scales_step_lr():
    rec1, rec2, _, _ = _drive(lambda o: tls.StepLR(o, 5, gamma=0.5), S.step(0.2, 5, gamma=0.5),
                              _sgd, 12, lrs=(0.2, 0.05), group_scales=[1.0, 0.25])
    _assert_same_records(rec1, rec2)


@pytest.mark.parametrize("opt_cls", [torch.optim.Adam, torch.optim.AdamW])
def test_adam_beta1_cycles_like_onecycle(opt_cls):
    def make(groups):
        return opt_cls(groups, lr=0.01, betas=(0.9, 0.99))

    rec1, rec2, m1, m2 = _drive(lambda o: tls.OneCycleLR(o, max_lr=0.01, total_steps=20),
                                S.onecycle(0.01, 20), make, 20, lrs=(0.01,))
    _assert_same_records(rec1, rec2)
    betas = [r[0][1] for r in rec2]
    assert betas[0] == pytest.approx(0.95) and min(betas) == pytest.approx(0.85, abs=1e-3)
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p1, p2, rtol=1e-5, atol=1e-6)


def test_is_a_real_lr_scheduler_with_consistent_attributes():
    m = _mlp(0)
    opt = torch.optim.SGD(_groups(m, [1.0, 1.0]), lr=1.0, momentum=0.9)
    sched = LRSchedule(opt, S.cosine(0.1, 10), group_scales=[1.0, 0.5])
    assert isinstance(sched, tls.LRScheduler)
    # construction sets the step-0 LR at once, as PyTorch does
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.05]
    assert sched.get_last_lr() == [0.1, 0.05]
    assert sched.base_lrs == [0.1, 0.05]
    assert [g["initial_lr"] for g in opt.param_groups] == [0.1, 0.05]
    assert sched.last_epoch == 0 and sched.get_lr() == [0.1, 0.05]
    x, y = _data(1)[0]
    for _ in range(3):
        nn.functional.mse_loss(m(x), y).backward()
        opt.step()
        sched.step()
    expected = 0.05 * (1 + math.cos(math.pi * 3 / 10))
    assert sched.last_epoch == 3 == sched.updates
    assert sched.get_last_lr()[0] == pytest.approx(expected, rel=1e-12)
    assert sched.get_last_lr()[1] == pytest.approx(expected / 2, rel=1e-12)


def test_spec_dict_and_plain_callable_are_accepted():
    p = nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = LRSchedule(opt, {"name": "step", "lr": 0.3, "step_size": 2})
    assert opt.param_groups[0]["lr"] == 0.3 and sched.state_dict()["schedule"]["name"] == "step"
    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=1.0)
    sched2 = LRSchedule(opt2, lambda t: 0.5 / (t + 1))
    for _ in range(3):
        opt2.step()
        sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.5 / 4)


def test_step_twice_per_update_does_not_advance_the_clock():
    p = nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = LRSchedule(opt, S.exponential(1.0, 0.5))
    for _ in range(3):
        opt.step()
        sched.step()
        sched.step()  # e.g. accelerate stepping once per process
    assert opt.param_groups[0]["lr"] == 0.125 and sched.last_epoch == 3


def test_clock_calls_counts_step_calls_like_pytorch():
    p = nn.Parameter(torch.zeros(2))
    o1, o2 = torch.optim.SGD([p], lr=0.1), torch.optim.SGD([p], lr=0.1)
    ref = tls.StepLR(o1, step_size=2, gamma=0.5)
    sched = LRSchedule(o2, S.step(0.1, 2, gamma=0.5), clock="calls")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyTorch warns about stepping without optimizer.step()
        for _ in range(7):  # "epochs" without optimizer updates
            ref.step()
            sched.step()
            assert _close(o1.param_groups[0]["lr"], o2.param_groups[0]["lr"])


# ------------------------------------------------------------------ GradScaler
@pytest.mark.parametrize("fused", [False, True])
def test_gradscaler_skipped_steps_do_not_advance_the_schedule(fused):
    model = _mlp(0)
    opt = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9, fused=fused)
    ref_opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    ref = tls.CosineAnnealingLR(ref_opt, T_max=10)
    ref_lrs = []
    for _ in range(11):
        ref_lrs.append(ref_opt.param_groups[0]["lr"])
        ref_opt.step()
        ref.step()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    # skip the very first step too (PyTorch's own scheduler warns there), except for the fused
    # kernel: torch 2.13's fused CPU SGD leaves the momentum buffer uninitialised when it skips
    # the first step
    skip = {3, 4, 9} if fused else {0, 3, 4, 9}
    real = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sched = LRSchedule(opt, S.cosine(0.1, 10))
        for i, (x, y) in enumerate(_data(10 + len(skip))):
            used = opt.param_groups[0]["lr"]
            assert _close(used, ref_lrs[real]), (i, used, ref_lrs[real])
            before = model[0].weight.detach().clone()
            opt.zero_grad()
            scaler.scale(nn.functional.mse_loss(model(x), y)).backward()
            if i in skip:
                model[0].weight.grad[0, 0] = float("inf")
            scaler.step(opt)
            scaler.update()
            sched.step()
            stepped = not torch.equal(before, model[0].weight)
            assert stepped == (i not in skip)
            real += stepped
    assert real == 10 and sched.last_epoch == 10 and sched.updates == 10


# ------------------------------------------------------------------ exact resume, fresh process
RESUME_TOTAL, RESUME_K = 24, 10


def _resume_setup(seed: int):
    model = _mlp(seed)
    opt = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.0)
    return model, opt, S.onecycle(0.2, RESUME_TOTAL)


def _resume_train(model, opt, sched, start, stop, log):
    for x, y in _data(RESUME_TOTAL)[start:stop]:
        g = opt.param_groups[0]
        log.append((g["lr"], g["momentum"]))
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        sched.step()


def _resume_child(ckpt: str, out: str) -> None:
    """Runs in a fresh interpreter: rebuild everything from another seed, load, continue."""
    torch.set_num_threads(1)
    results = {}
    for order in ("optimizer_first", "scheduler_first"):
        # a fresh load per run: Optimizer.load_state_dict shares the loaded momentum buffers.
        # weights_only=True (the default): the scheduler state is plain data
        state = torch.load(ckpt, weights_only=True)
        model, opt, schedule = _resume_setup(seed=99)
        sched = LRSchedule(opt, schedule)
        model.load_state_dict(state["model"])
        if order == "optimizer_first":
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
        else:
            sched.load_state_dict(state["scheduler"])
            opt.load_state_dict(state["optimizer"])
        log: list = []
        _resume_train(model, opt, sched, RESUME_K, RESUME_TOTAL, log)
        results[order] = {"log": log, "weights": model.state_dict()}
    torch.save(results, out)


def test_resume_in_a_fresh_process_is_exact(tmp_path):
    model, opt, schedule = _resume_setup(seed=0)
    sched = LRSchedule(opt, schedule)
    full: list = []
    _resume_train(model, opt, sched, 0, RESUME_TOTAL, full)
    full_weights = {k: v.clone() for k, v in model.state_dict().items()}
    # momentum really cycles (0.95 -> 0.85 -> 0.95) and the LR follows PyTorch's OneCycleLR
    ref_opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0, momentum=0.9)
    ref = tls.OneCycleLR(ref_opt, max_lr=0.2, total_steps=RESUME_TOTAL)
    for lr, mom in full:
        assert _close(lr, ref_opt.param_groups[0]["lr"])
        assert _close(mom, ref_opt.param_groups[0]["momentum"])
        ref_opt.step()
        ref.step()

    model, opt, schedule = _resume_setup(seed=0)
    sched = LRSchedule(opt, schedule)
    head: list = []
    _resume_train(model, opt, sched, 0, RESUME_K, head)
    ckpt, out = tmp_path / "ckpt.pt", tmp_path / "out.pt"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict()}, ckpt)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    code = ("import sys; from tests.test_torch_adapter import _resume_child; "
            "_resume_child(sys.argv[1], sys.argv[2])")
    subprocess.run([sys.executable, "-c", code, str(ckpt), str(out)], cwd=ROOT, env=env,
                   check=True, timeout=120)
    results = torch.load(out)
    assert set(results) == {"optimizer_first", "scheduler_first"}
    for order, res in results.items():
        assert head + [tuple(e) for e in res["log"]] == full, order  # exact, not approximate
        for key, value in full_weights.items():
            assert torch.equal(res["weights"][key], value), (order, key)


def test_state_dict_is_plain_data_and_reapplies_the_lr(tmp_path):
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0, momentum=0.9)
    sched = LRSchedule(opt, S.onecycle(0.1, 10), plateau=Plateau(patience=0))
    for m in (3.0, 2.0, 2.0):
        opt.step()
        sched.step()
        sched.report(m)
    path = tmp_path / "s.pt"
    torch.save(sched.state_dict(), path)
    state = torch.load(path, weights_only=True)
    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0, momentum=0.9)
    sched2 = LRSchedule(opt2, S.onecycle(0.1, 10), plateau=Plateau(patience=0))
    sched2.load_state_dict(state)
    assert sched2.plateau_state == sched.plateau_state and sched2.plateau_state.scale == 0.1
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert opt2.param_groups[0]["momentum"] == opt.param_groups[0]["momentum"]
    assert sched2.last_epoch == 3 and sched2.get_last_lr() == sched.get_last_lr()


# ------------------------------------------------------------------ plateau
@settings(max_examples=150, deadline=None)
@given(
    metrics=st.lists(st.sampled_from([-1.0, 0.0, 0.5, 0.99, 1.0, 1.001, 2.0, math.inf, math.nan]),
                     min_size=1, max_size=30),
    mode=st.sampled_from(["min", "max"]),
    threshold_mode=st.sampled_from(["rel", "abs"]),
    threshold=st.sampled_from([0.0, 1e-4, 0.01, 0.5]),
    patience=st.integers(0, 3),
    cooldown=st.integers(0, 2),
    factor=st.sampled_from([0.1, 0.5]),
    min_scale=st.sampled_from([0.0, 0.02]),
)
def test_plateau_cut_points_match_reduce_lr_on_plateau(metrics, mode, threshold_mode, threshold,
                                                       patience, cooldown, factor, min_scale):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    ref = tls.ReduceLROnPlateau(opt, mode=mode, factor=factor, patience=patience,
                                threshold=threshold, threshold_mode=threshold_mode,
                                cooldown=cooldown, min_lr=min_scale, eps=0.0)
    rule = Plateau(mode=mode, factor=factor, patience=patience, threshold=threshold,
                   threshold_mode=threshold_mode, cooldown=cooldown, min_scale=min_scale)
    state = rule.initial()
    for m in metrics:
        ref.step(m)
        state = rule.update(state, m)
        assert state.scale == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)


# metric reports -> expected plateau scale after each report, simulated by hand for
# Plateau(mode="min", factor=0.5, patience=2, threshold=1e-4, cooldown=1):
# 5 4 3 (better) | 3 3 3 (bad 1,2,3 -> cut to 0.5, cooldown 1) | 3 (cooldown) 3 3 3 (bad 1,2,3 ->
# cut 0.25) | 2 (better) 2.5 2.5 (bad 1,2)
HAND_METRICS = [5, 4, 3, 3, 3, 3, 3, 3, 3, 3, 2, 2.5, 2.5]
HAND_SCALES = [1, 1, 1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25]


def _plateau_run(schedule, report_every, steps):
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = LRSchedule(opt, schedule,
                       plateau=Plateau(factor=0.5, patience=2, threshold=1e-4, cooldown=1))
    lrs, reports = [], iter(HAND_METRICS)
    for t in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        if (t + 1) % report_every == 0:
            sched.report(next(reports))
    return lrs


def _hand_scale(t: int, report_every: int) -> float:
    """Scale in force for update t: after floor(t / report_every) reports."""
    n = t // report_every
    return 1.0 if n == 0 else HAND_SCALES[n - 1]


def test_warmup_then_plateau_matches_hand_simulation():
    steps = 3 * len(HAND_METRICS)
    lrs = _plateau_run(S.warmup(S.constant(0.1), 5), 3, steps)
    for t, lr in enumerate(lrs):
        base = 0.1 * t / 5 if t < 5 else 0.1
        assert lr == pytest.approx(base * _hand_scale(t, 3), rel=1e-12, abs=1e-15), t


def test_cosine_with_plateau_matches_hand_simulation():
    steps = 2 * len(HAND_METRICS)
    lrs = _plateau_run(S.cosine(0.1, steps), 2, steps)
    for t, lr in enumerate(lrs):
        base = 0.05 * (1 + math.cos(math.pi * t / steps))
        assert lr == pytest.approx(base * _hand_scale(t, 2), rel=1e-12, abs=1e-15), t


def test_step_with_metric_reports_to_the_plateau_rule():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = LRSchedule(opt, S.constant(0.1), plateau=Plateau(patience=0, factor=0.5))
    opt.step()
    sched.step(1.0)
    opt.step()
    sched.step(torch.tensor(1.0))  # not better -> cut at once
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05) and sched.last_epoch == 2
    assert sched.plateau_state.reports == 2 and sched.plateau_state.cuts == 1


def test_plateau_update_is_pure():
    rule = Plateau(patience=0)
    s0 = rule.initial()
    s1 = rule.update(s0, 1.0)
    assert s0 == PlateauState(best=math.inf) and s1.best == 1.0 and s1 is not s0


# ------------------------------------------------------------------ horizon
def test_horizon_warns_once_where_onecycle_raises_and_never_crashes():
    total = 10
    ref_opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
    ref = tls.OneCycleLR(ref_opt, max_lr=0.1, total_steps=total)
    raised_at = None
    for call in range(1, 20):
        ref_opt.step()
        try:
            ref.step()
        except ValueError as exc:
            assert "Tried to step" in str(exc)
            raised_at = call
            break
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
    sched = LRSchedule(opt, S.onecycle(0.1, total))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for call in range(1, 30):
            opt.step()
            sched.step()
            horizon = [w for w in caught if issubclass(w.category, HorizonWarning)]
            assert len(horizon) == (1 if call >= raised_at else 0), call
    assert len(caught) == 1
    msg = str(caught[0].message)
    assert "horizon" in msg and "10" in msg and "holds its final value" in msg
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 / 25 / 1e4)
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.95)


def test_horizon_warning_is_catchable_with_pytest_warns():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = LRSchedule(opt, S.cosine(0.1, 3))
    for _ in range(3):
        opt.step()
        sched.step()
    opt.step()
    with pytest.warns(HorizonWarning, match="past the schedule's horizon"):
        sched.step()


# ------------------------------------------------------------------ bad input
def _opt(**kw):
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1, **kw)


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda: LRSchedule([nn.Parameter(torch.zeros(1))], S.constant(0.1)), TypeError, "optimizer"),
        (lambda: LRSchedule(_opt(), 0.1), TypeError, "schedule.*constant"),
        (lambda: LRSchedule(_opt(), "cosine"), TypeError, "schedule"),
        (lambda: LRSchedule(_opt(), {"name": "cosin", "lr": 0.1, "T_max": 3}), ValueError, "cosine"),
        (lambda: LRSchedule(_opt(), S.constant(0.1), group_scales=[1.0, 2.0]), ValueError,
         r"group_scales.*\(1\)"),
        (lambda: LRSchedule(_opt(), S.constant(0.1), group_scales=[float("nan")]), ValueError,
         r"group_scales\[0\]"),
        (lambda: LRSchedule(_opt(), S.constant(0.1), group_scales=[-1.0]), ValueError,
         r"group_scales\[0\].*> 0"),
        (lambda: LRSchedule(_opt(), S.constant(0.1), group_scales=[0.0]), ValueError,
         r"group_scales\[0\]"),
        (lambda: LRSchedule(_opt(), S.constant(0.1), group_scales=2.0), TypeError, "group_scales"),
        (lambda: LRSchedule(_opt(), S.constant(0.1), plateau="min"), TypeError, "plateau"),
        (lambda: LRSchedule(_opt(), S.constant(0.1), clock="epochs"), ValueError, "clock"),
        (lambda: LRSchedule(torch.optim.Adagrad([nn.Parameter(torch.zeros(1))]),
                            S.onecycle(0.1, 10)), ValueError, "momentum.*betas"),
        (lambda: LRSchedule(_opt(), lambda t: float("nan")), ValueError, r"schedule\(0\)"),
        (lambda: LRSchedule(_opt(), lambda t: -0.1), ValueError, r"schedule\(0\).*>= 0"),
        (lambda: Plateau(mode="mni"), ValueError, "mode.*'min'"),
        (lambda: Plateau(factor=1.0), ValueError, "factor"),
        (lambda: Plateau(factor=0.0), ValueError, "factor"),
        (lambda: Plateau(patience=-1), ValueError, "patience"),
        (lambda: Plateau(patience=1.5), TypeError, "patience"),
        (lambda: Plateau(threshold=float("nan")), ValueError, "threshold"),
        (lambda: Plateau(threshold_mode="relative"), ValueError, "threshold_mode"),
        (lambda: Plateau(cooldown=-2), ValueError, "cooldown"),
        (lambda: Plateau(min_scale=2.0), ValueError, "min_scale"),
        (lambda: Plateau(0.1), TypeError, "positional"),
        (lambda: Plateau().update(Plateau().initial(), "low"), TypeError, "metric"),
    ],
)
def test_bad_input_raises_naming_the_argument(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_misuse_after_construction_raises_clearly():
    opt = _opt(momentum=0.9)
    sched = LRSchedule(opt, S.constant(0.1))
    with pytest.raises(ValueError, match="plateau"):
        sched.report(1.0)
    with pytest.raises(TypeError, match="metric only with a plateau"):
        sched.step(3)
    with pytest.raises(ValueError, match="LRSchedule.state_dict"):
        sched.load_state_dict(tls.StepLR(_opt(), 3).state_dict())
    with_plateau = LRSchedule(_opt(), S.constant(0.1), plateau=Plateau())
    with pytest.raises(ValueError, match="plateau=None"):
        sched.load_state_dict(with_plateau.state_dict())
    opt.add_param_group({"params": [nn.Parameter(torch.zeros(1))]})
    with pytest.raises(ValueError, match="param groups"):
        sched.step()


def test_inside_sequential_lr_the_clock_restarts_at_the_milestone():
    """``SequentialLR([LinearLR warmup, LRSchedule(cosine)])`` gives torch's own
    ``SequentialLR([LinearLR, CosineAnnealingLR])`` LRs at every step (the cosine jumped from
    its step 0 at the milestone to its step 11 one update later)."""

    def lrs(second):
        p = nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
        seq = tls.SequentialLR(opt, [tls.LinearLR(opt, 0.1, 1.0, 10), second(opt)], [10])
        out = []
        for _ in range(30):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            seq.step()
        return out

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's own SequentialLR warnings
        ours = lrs(lambda o: LRSchedule(o, S.cosine(0.1, 20)))
        ref = lrs(lambda o: tls.CosineAnnealingLR(o, 20))
    assert ours == pytest.approx(ref, rel=1e-12, abs=1e-15)
    assert ours[11] == pytest.approx(0.1 * (1 + math.cos(math.pi / 20)) / 2)


# ------------------------------------------------------------------ copies, checkpoints, combos
def _copied(kind: str, obj):
    if kind == "deepcopy":
        return copy.deepcopy(obj)
    if kind == "pickle":
        return pickle.loads(pickle.dumps(obj))
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


COPIES = {  # (lrkit schedule, the torch scheduler it equals), stepped with momentum
    "step": (S.step(1.0, 1, gamma=0.5), lambda o: tls.StepLR(o, 1, gamma=0.5)),
    "onecycle": (S.onecycle(1.0, 12), lambda o: tls.OneCycleLR(o, 1.0, total_steps=12)),
}


@pytest.mark.parametrize("kind", ["deepcopy", "pickle", "torch.save"])
@pytest.mark.parametrize("name", sorted(COPIES))
@pytest.mark.parametrize("alone", [False, True], ids=["with-optimizer", "alone"])
def test_a_copy_goes_on_like_the_torch_scheduler_copied_the_same_way(kind, name, alone):
    """The clock is an optimizer step post-hook, which torch's Optimizer does not copy: after
    ``copy.deepcopy`` / ``pickle`` / ``torch.save`` the copy's LR froze. It goes on as torch's
    own scheduler copied the same way, and the original keeps its own clock."""
    schedule, make_torch = COPIES[name]

    def run(make):
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=1.0, momentum=0.9)
        sched = make(opt)
        for _ in range(3):
            opt.step()
            sched.step()
        if alone:
            sched2 = _copied(kind, sched)
            opt2 = sched2.optimizer
        else:
            opt2, sched2 = _copied(kind, (opt, sched))
        out = []
        for _ in range(5):
            opt2.step()
            sched2.step()
            g = opt2.param_groups[0]
            out.append((g["lr"], g["momentum"]))
        return out, opt, sched

    ours, opt, sched = run(lambda o: LRSchedule(o, schedule))
    ref, _, _ = run(make_torch)
    assert len(ours) == len(ref) == 5
    for (lr, m), (lr_ref, m_ref) in zip(ours, ref):
        assert _close(lr, lr_ref) and _close(m, m_ref)
    if name == "step":
        assert [lr for lr, _ in ours] == [0.0625, 0.03125, 0.015625, 0.0078125, 0.00390625]
    assert sched.updates == 3  # the copy's updates are not the original's
    opt.step()
    sched.step()
    assert sched.updates == 4 and opt.param_groups[0]["lr"] == schedule(4)


def test_late_momentum_cycling_is_refused_at_construction_and_followed_with_momentum():
    """``sequence([constant, onecycle], [3])`` has no momentum at step 0: it was accepted on
    Adagrad and raised at update 3. Refused at once; with SGD momentum follows OneCycleLR's
    from update 3."""
    s = S.sequence([S.constant(0.01), S.onecycle(0.1, 10)], [3])
    with pytest.raises(ValueError, match="cycles momentum.*Adagrad param group 0 has neither "
                                         "'momentum' nor 'betas'"):
        LRSchedule(torch.optim.Adagrad([nn.Parameter(torch.zeros(1))], lr=1.0), s)
    _, ref_m = _lr_mom(lambda o: tls.OneCycleLR(o, 0.1, total_steps=10), 10)
    lrs, moms = _lr_mom(lambda o: LRSchedule(o, s), 13)
    assert moms[:3] == [0.9, 0.9, 0.9]  # the optimizer's own until the onecycle starts
    assert moms[3] == 0.95 and all(_close(a, b) for a, b in zip(moms[3:], ref_m))
    assert lrs[:3] == [0.01] * 3


def _lr_mom(make, n):
    """(lr, momentum) of each of ``n`` updates of an SGD(momentum=0.9) under ``make(opt)``."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
    sched = make(opt)
    lrs, moms = [], []
    for _ in range(n):
        lrs.append(opt.param_groups[0]["lr"])
        moms.append(opt.param_groups[0]["momentum"])
        opt.step()
        sched.step()
    return lrs, moms


def test_clock_calls_warns_like_torch_when_stepped_before_the_optimizer():
    """With ``clock="calls"`` a ``step()`` before the first ``optimizer.step()`` skips the
    schedule's step 0, as in PyTorch, which warns; LRSchedule did not."""

    def first_lr(make, *, scheduler_first):
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = make(opt)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):
                if scheduler_first:
                    sched.step()
                    opt.step()
                else:
                    opt.step()
                    sched.step()
        told = [str(w.message) for w in caught if issubclass(w.category, UserWarning)
                and "before `optimizer.step()`" in str(w.message)]
        return opt.param_groups[0]["lr"], told

    ours = lambda o: LRSchedule(o, S.step(1.0, 1, gamma=0.5), clock="calls")  # noqa: E731
    ref = lambda o: tls.StepLR(o, 1, gamma=0.5)  # noqa: E731
    lr, told = first_lr(ours, scheduler_first=True)
    lr_ref, told_ref = first_lr(ref, scheduler_first=True)
    assert lr == lr_ref == 0.125 and len(told) == len(told_ref) == 1
    assert told[0].startswith("Detected call of `LRSchedule.step()` before `optimizer.step()` "
                              "with clock='calls'")
    assert first_lr(ours, scheduler_first=False) == (0.125, [])
    assert first_lr(lambda o: LRSchedule(o, S.step(1.0, 1, gamma=0.5)),
                    scheduler_first=True) == (0.25, [])  # clock="updates": no order to mind


def test_load_state_dict_refuses_another_clock_or_version_and_names_a_bad_last_epoch():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0, momentum=0.9)
    src = LRSchedule(opt, S.onecycle(0.5, 50), clock="calls")
    for _ in range(23):
        opt.step()
        src.step()
    sd = src.state_dict()
    dst = LRSchedule(_opt(momentum=0.9), S.onecycle(0.5, 50))
    with pytest.raises(ValueError, match=r"state_dict\['clock'\] is 'calls' but this LRSchedule "
                                         r"has clock='updates'"):
        dst.load_state_dict(sd)
    same = LRSchedule(_opt(momentum=0.9), S.onecycle(0.5, 50), clock="calls")
    with pytest.raises(ValueError, match=r"state_dict\['version'\] must be 1 .*got 999"):
        same.load_state_dict({**sd, "version": 999})
    with pytest.raises(TypeError, match=r"state_dict\['last_epoch'\] must be an integer, got None"):
        same.load_state_dict({**sd, "last_epoch": None})
    with pytest.raises(ValueError, match=r"state_dict\['last_epoch'\] must be an integer >= 0"):
        same.load_state_dict({**sd, "last_epoch": -1})
    assert same.updates == 0  # nothing was loaded
    same.load_state_dict(sd)
    assert same.updates == 23 and same.get_last_lr() == src.get_last_lr()
    # another schedule is allowed on purpose (branch a cooldown from a checkpoint)
    branch = LRSchedule(_opt(momentum=0.9), S.cooldown(S.onecycle(0.5, 50), 23, steps=10),
                        clock="calls")
    branch.load_state_dict(sd)
    assert branch.get_last_lr() == [S.onecycle(0.5, 50)(23)]


def test_load_state_dict_applies_its_own_group_scales():
    """The checkpoint's group_scales are informational: the loading LRSchedule's apply."""
    s = S.cosine(0.1, 20)
    src = LRSchedule(_groups_opt(2), s, group_scales=[1.0, 0.1])
    for _ in range(5):
        src.optimizer.step()
        src.step()
    dst = LRSchedule(_groups_opt(2), s, group_scales=[1.0, 1.0])
    dst.load_state_dict(src.state_dict())
    assert [g["lr"] for g in dst.optimizer.param_groups] == [s(5), s(5)]
    assert [g["lr"] for g in src.optimizer.param_groups] == [s(5), 0.1 * s(5)]


def _groups_opt(n):
    return torch.optim.SGD([{"params": [nn.Parameter(torch.zeros(1))]} for _ in range(n)], lr=1.0)


def test_add_param_group_then_carry_the_clock_over():
    """The refusal said "build a new LRSchedule", which restarted the schedule at step 0 (the
    warmup again at update 51); it says how to keep the position, and that works."""
    s = S.warmup(S.cosine(0.1, 100), 10)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    old = LRSchedule(opt, s)
    for _ in range(50):
        opt.step()
        old.step()
    opt.add_param_group({"params": [nn.Parameter(torch.zeros(1))], "lr": 0.01})
    opt.step()
    with pytest.raises(ValueError, match=r"build a new LRSchedule with 2 group_scales and carry "
                                         r"the clock over: .*new\.load_state_dict\(old\.state_dict"
                                         r"\(\)\)"):
        old.step()
    new = LRSchedule(opt, s, group_scales=[1.0, 0.1])
    new.load_state_dict(old.state_dict())
    cos = tls.CosineAnnealingLR(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), 100)
    ref = []
    for _ in range(43):
        ref.append(cos.optimizer.param_groups[0]["lr"])
        cos.optimizer.step()
        cos.step()
    got = []
    for _ in range(2):
        got.append([g["lr"] for g in opt.param_groups])
        opt.step()
        new.step()
    assert new.updates == 53
    assert got[0][0] == pytest.approx(ref[41], rel=1e-12) and got[1][0] == pytest.approx(ref[42])
    assert got[0][1] == pytest.approx(0.1 * ref[41], rel=1e-12)


def test_reduce_lr_on_plateau_beside_it_cuts_once_but_the_plateau_rule_compounds():
    """Documented: torch's ReduceLROnPlateau next to an LRSchedule cuts once (LRSchedule writes
    the absolute LR each step); ``plateau=Plateau(...)`` gives torch's chained cuts."""

    def used(make, *, rop):
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = make(opt)
        r = tls.ReduceLROnPlateau(opt, patience=0, factor=0.5) if rop else None
        out = []
        for _ in range(6):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
            if r is not None:
                r.step(1.0)  # never improves
            else:
                sched.report(1.0)
        return out

    ref = used(lambda o: tls.ConstantLR(o, factor=1.0, total_iters=1), rop=True)
    assert ref == [1.0, 1.0, 0.5, 0.25, 0.125, 0.0625]
    assert used(lambda o: LRSchedule(o, S.constant(1.0)), rop=True) == [1.0, 1.0] + [0.5] * 4
    ours = used(lambda o: LRSchedule(o, S.constant(1.0), plateau=Plateau(patience=0, factor=0.5)),
                rop=False)
    assert ours == [1.0, 1.0, 0.5, 0.25, 0.125, 0.0625]
