"""Tests of lrkit.finder: the sweep, exact restoration (bitwise, with a real training loop), param
group ratios, accumulation, AMP, divergence/NaN stops, JSON/plot, Task and confirm mode, and a
2-process gloo DDP run whose ranks must get the same curve."""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from lrkit.finder import RangeTestResult, find_lr, sweep_lrs
from lrkit.tasks.base import Recipe, Task
from lrkit.train import run
from tests.tiny_task import OnceStream

torch.set_num_threads(1)
F = nn.functional


def _data(seed=0, n=256):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    w = torch.randn(8, 3, generator=g)
    return x, (x @ w).argmax(1)


def _setup(seed=0, *, groups=False):
    torch.manual_seed(seed)
    x, y = _data()
    ds = torch.utils.data.TensorDataset(x, y)
    loader = torch.utils.data.DataLoader(ds, batch_size=16, shuffle=True,
                                         generator=torch.Generator().manual_seed(7))
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.1),
                          nn.Linear(16, 3))
    if groups:
        opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.01},
                               {"params": model[4].parameters(), "lr": 0.1}], lr=0.1,
                              momentum=0.9)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
    return model, opt, loader, sched


def _train(model, opt, loader, sched, epochs):
    """A plain PyTorch loop (the user's), independent of lrkit."""
    model.train()
    for _ in range(epochs):
        for xb, yb in loader:
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
            sched.step()


def test_sweep_matches_the_formula():
    lrs = sweep_lrs(1e-7, 10.0, 100, "exp")
    for t in (0, 1, 50, 99):
        assert lrs[t] == pytest.approx(1e-7 * (10.0 / 1e-7) ** (t / 99), rel=1e-12)
    lin = sweep_lrs(0.01, 1.0, 11, "linear")
    np.testing.assert_allclose(lin, 0.01 + 0.099 * np.arange(11), rtol=1e-12)
    with pytest.raises(ValueError, match="end_lr"):
        sweep_lrs(1.0, 0.1, 10)
    with pytest.raises(ValueError, match="mode"):
        sweep_lrs(1e-5, 1.0, 10, "log")


def test_restores_everything_bitwise_mid_training_with_a_scheduler():
    # reference: 1 epoch, then 2 more (global RNG drives dropout; the loader has its own generator)
    ref = _setup()
    _train(*ref, epochs=1)
    ref_lrs = [g["lr"] for g in ref[1].param_groups]
    ref_sched = ref[3].state_dict()
    _train(*ref, epochs=2)
    # same, with find_lr in the middle: started mid-training (momentum buffers, scheduler, BN)
    tst = _setup()
    _train(*tst, epochs=1)
    model, opt, loader, sched = tst
    res = find_lr(model, opt, loader, F.cross_entropy, scheduler=sched, num_iter=40,
                  start_lr=1e-5, end_lr=1.0)
    assert res.cost_steps > 0
    assert [g["lr"] for g in opt.param_groups] == ref_lrs
    assert sched.state_dict() == ref_sched
    _train(*tst, epochs=2)
    for (k, a), (_, b) in zip(ref[0].state_dict().items(), tst[0].state_dict().items()):
        assert torch.equal(a, b), k  # weights and BatchNorm running stats, bitwise
    sa, sb = ref[1].state_dict()["state"], tst[1].state_dict()["state"]
    for k in sa:
        assert torch.equal(sa[k]["momentum_buffer"], sb[k]["momentum_buffer"])


def test_a_parameter_the_optimizer_steps_outside_the_model_is_restored_with_its_grad():
    """A learnable loss temperature in its own param group (not a model parameter): a real
    loop trains it first (value, .grad, momentum buffer), then find_lr, twice: once over two
    interleaved sweeps (each must start from it), once after its .grad was set to None. It
    came back as -126 with a .grad set (only model.parameters() were snapshot). The loop
    after find_lr equals the same loop without it. from_torch (confirm) still refuses it."""
    def fresh():
        model, _, loader, _ = _setup()
        temp = nn.Parameter(torch.zeros(()))
        opt = torch.optim.SGD([{"params": model.parameters()}, {"params": [temp]}], lr=0.05,
                              momentum=0.9)

        def loss_fn(out, y):
            seen.append(float(temp.detach()))
            return F.cross_entropy(out * temp.exp(), y)

        for (xb, yb), _ in zip(loader, range(3)):
            opt.zero_grad()
            loss_fn(model(xb), yb).backward()
            opt.step()
        return model, opt, loader, temp, loss_fn

    def more(model, opt, loader, loss_fn):
        for (xb, yb), _ in zip(loader, range(3)):
            opt.zero_grad()
            loss_fn(model(xb), yb).backward()
            opt.step()

    seen: list[float] = []
    ref = fresh()
    more(ref[0], ref[1], ref[2], ref[4])
    model, opt, loader, temp, loss_fn = fresh()
    value, grad = temp.detach().clone(), temp.grad.clone()
    buf = opt.state[temp]["momentum_buffer"].clone()
    assert value != 0 and grad.abs() > 0
    seen.clear()
    res = find_lr(model, opt, loader, loss_fn, num_iter=200, start_lr=1e-5, end_lr=100.0)
    sweep = res.settings["sweep_steps"]
    assert res.settings["sweeps"] == 2 and len(seen) > sweep
    # the sweeps trained it (far from where it started), and each started from it
    assert abs(seen[sweep - 1] - float(value)) > 0.1
    assert seen[0] == seen[sweep] == float(value)
    assert torch.equal(temp.detach(), value) and torch.equal(temp.grad, grad)
    assert torch.equal(opt.state[temp]["momentum_buffer"], buf)
    more(model, opt, loader, loss_fn)
    assert torch.equal(temp, ref[3]) and all(
        torch.equal(a, b) for a, b in zip(model.parameters(), ref[0].parameters()))
    temp.grad = None
    find_lr(model, opt, loader, loss_fn, num_iter=40)
    assert temp.grad is None and torch.equal(temp.detach(), ref[3].detach())
    with pytest.raises(ValueError, match=r"not model.parameters\(\) .*register such a "
                                         r"parameter on the model"):
        find_lr(model, opt, loader, loss_fn, num_iter=40, confirm=True, val_loader=loader,
                steps=100)


def test_a_one_element_loss_is_the_scalar_it_holds():
    """A loss of shape (1,) (a .reshape(1), a sum kept in a dimension) backprops in PyTorch;
    it was refused, with a hint about reduction='none'. The sweep is the scalar loss's."""
    model, opt, loader, _ = _setup()
    scalar = find_lr(model, opt, loader, F.cross_entropy, num_iter=30)
    shaped = find_lr(model, opt, loader, lambda out, y: F.cross_entropy(out, y).reshape(1),
                     num_iter=30)
    assert shaped.losses == scalar.losses and shaped.lr == scalar.lr


def test_a_group_lr_of_0_set_by_an_attached_warmup_names_the_scheduler():
    """LambdaLR(lambda s: s / 100), a warmup from 0, leaves group 0's LR at 0: the refusal
    names the scheduler as what set it (passed or only attached), and what to do."""
    model, _, loader, _ = _setup()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: s / 100)
    with pytest.raises(ValueError, match=r"got \[0\.0\]: scheduler \(LambdaLR, at step 0\) set "
                                         r"these LRs \(a warmup from 0 starts at 0\).*before "
                                         r"attaching"):
        find_lr(model, opt, loader, F.cross_entropy, num_iter=20, scheduler=sched)
    with pytest.raises(ValueError, match="an LR scheduler attached to the optimizer set"):
        find_lr(model, opt, loader, F.cross_entropy, num_iter=20)
    opt.step()  # (no grads: nothing moves)
    sched.step()  # past 0: it runs, and the scheduler is put back
    state = sched.state_dict()
    assert find_lr(model, opt, loader, F.cross_entropy, num_iter=20, scheduler=sched).lrs
    assert sched.state_dict() == state and opt.param_groups[0]["lr"] == pytest.approx(1e-5)


def test_global_rng_restored_and_no_restore_changes_the_model():
    model, opt, loader, _ = _setup()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    w = model[0].weight.detach().clone()
    find_lr(model, opt, loader, F.cross_entropy, num_iter=20)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(model[0].weight, w)
    find_lr(model, opt, loader, F.cross_entropy, num_iter=20, restore=False)
    assert not torch.equal(model[0].weight, w)


def test_param_group_ratios_are_kept():
    model, opt, loader, _ = _setup(groups=True)
    seen = []

    def step_fn(m, batch):
        seen.append([g["lr"] for g in opt.param_groups])
        return F.cross_entropy(m(batch[0]), batch[1])

    res = find_lr(model, opt, loader, step_fn=step_fn, num_iter=30, start_lr=1e-6, end_lr=1.0,
                  diverge_factor=1e9)
    seen = np.asarray(seen)
    expect = 1e-6 * (1.0 / 1e-6) ** (np.arange(len(seen)) / 29)
    np.testing.assert_allclose(seen[:, 0], expect, rtol=1e-12)
    np.testing.assert_allclose(seen[:, 1], 10 * expect, rtol=1e-12)  # ratio 0.1 / 0.01 kept
    np.testing.assert_allclose(res.lrs, expect[: len(res.lrs)], rtol=1e-12)
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.1]


def test_gradient_accumulation_consumes_micro_batches_and_averages():
    model, opt, loader, _ = _setup()
    calls = []

    def step_fn(m, batch):
        loss = F.cross_entropy(m(batch[0]), batch[1])
        calls.append(float(loss.detach()))
        return loss

    res = find_lr(model, opt, loader, step_fn=step_fn, num_iter=12, accumulation_steps=3,
                  diverge_factor=1e9, end_lr=1e-3)
    assert len(calls) == 36 and res.cost_steps == 12  # cost in optimizer steps, as runs count
    np.testing.assert_allclose(res.losses, np.mean(np.reshape(calls, (12, 3)), axis=1),
                               rtol=1e-6)


def test_cpu_amp_runs_and_gives_a_finite_curve():
    model, opt, loader, _ = _setup()
    res = find_lr(model, opt, loader, F.cross_entropy, num_iter=20, amp=True, end_lr=0.1)
    assert np.all(np.isfinite(res.losses)) and res.stop_reason == "completed"


def test_divergence_stops_early_and_suggestion_is_below_the_blow_up():
    model, opt, loader, _ = _setup()
    res = find_lr(model, opt, loader, F.cross_entropy, num_iter=100, start_lr=1e-5,
                  end_lr=1e4)  # one sweep (100 steps = SWEEP_STEPS)
    assert res.settings["sweeps"] == 1
    assert res.stop_reason in ("diverged", "nan")
    assert len(res.lrs) < 100 and res.stopped_at == len(res.lrs) - 1
    # the causal rule by hand: debiased EMA beta=0.98 exceeded 4 x its best at the last step
    if res.stop_reason == "diverged":
        m, best = 0.0, math.inf
        for t, v in enumerate(res.losses, 1):
            m = 0.98 * m + 0.02 * v
            s = m / (1 - 0.98**t)
            stop = t > 1 and s > 4 * best
            best = min(best, s)
            assert stop == (t == len(res.losses))
    if res.lr is not None:
        assert res.lr < res.lrs[-1]


def test_a_sweep_that_blows_up_at_once_says_start_lr_is_too_high():
    # the sweep starts at 1 for an SGD-momentum MLP (its LRs that train lie below ~1): it
    # diverges after about a tenth of its steps (enough for the rule to read) with no fall
    # before; the reason names start_lr, and the user's model is restored
    for num_iter in (100, 300):  # one sweep; three repeats, each read on its own
        model, opt, loader, _ = _setup()
        before = [p.detach().clone() for p in model.parameters()]
        res = find_lr(model, opt, loader, F.cross_entropy, num_iter=num_iter, start_lr=1.0,
                      end_lr=1e8)
        assert res.lr is None and res.suggestion.confidence == "none"
        assert res.stop_reason in ("diverged", "nan")
        assert 8 * res.settings["sweeps"] <= len(res.lrs) < 0.2 * num_iter
        assert "the sweep starts above the LRs that train; lower start_lr" in res.suggestion.reason
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    # a sweep from the default start that blows up late is not blamed on start_lr
    model, opt, loader, _ = _setup()
    res = find_lr(model, opt, loader, F.cross_entropy, num_iter=100, start_lr=1e-5, end_lr=1e4)
    assert "lower start_lr (a decade" not in res.suggestion.reason


def test_a_sweep_whose_loss_jumps_at_once_says_start_lr_is_too_high():
    """The curve a probe recorded (start_lr=5 on a digits MLP, 50 planned steps): 2.3 at the
    first step, then 2.3-21 at once; the divergence stop, relative to the best smoothed loss
    that the jump set high, fired only after 29 steps, past the early blow-up rule's first
    fifth, and the reason read a flat curve "as for a model that is already trained". Now it
    says the sweep starts too high. The same curve with the first loss at the level of the
    rest (a trained model, flat in noise) keeps the rule's own reading."""
    from lrkit.finder import _suggest_sweep

    losses = np.array([2.3, 3.54, 2.55, 4.5, 2.61, 2.29, 6.07, 20.78, 5.63, 4.97, 5.55, 3.4,
                       5.75, 4.51, 3.54, 5.26, 5.57, 5.92, 4.52, 8.86, 9.82, 13.35, 16.28,
                       18.35, 13.22, 15.27, 22.16, 16.32, 27.84])
    lrs = sweep_lrs(5.0, 1000.0, 50)[: losses.size]
    own = _suggest_sweep(lrs, losses, 50, "diverged")["lrkit"]
    assert own.lr is None
    assert own.reason.startswith("no clear descent and the loss rose at once: from 2.3 at the "
                                 "first step (lr 5) to a median of 4.73 over the next 10")
    assert "the sweep starts above the LRs that train; lower start_lr" in own.reason
    flat = losses.copy()
    flat[0] = float(np.median(losses[1:11]))
    assert "lower start_lr (a decade" not in _suggest_sweep(lrs, flat, 50, "diverged")[
        "lrkit"].reason


def test_nan_loss_stops_and_is_never_suggested():
    model, opt, loader, _ = _setup()
    x, y = _data()

    def step_fn(m, batch):
        loss = F.cross_entropy(m(batch[0]), batch[1])
        if opt.param_groups[0]["lr"] > 0.05:
            return loss * float("nan")
        return loss

    res = find_lr(model, opt, loader, step_fn=step_fn, num_iter=80, start_lr=1e-6, end_lr=10.0)
    assert res.stop_reason == "nan" and math.isnan(res.losses[-1])
    for s in res.suggestions.values():
        if s.lr is not None:
            assert s.lr <= 0.05 + 1e-12
    assert res.lr is None or res.lr <= 0.05


def test_json_round_trip_and_plot(tmp_path):
    model, opt, loader, _ = _setup()
    res = find_lr(model, opt, loader, F.cross_entropy, num_iter=60, start_lr=1e-5, end_lr=100.0)
    text = res.to_json(str(tmp_path / "r.json"))
    back = RangeTestResult.from_json(str(tmp_path / "r.json"))
    assert back.to_json() == text
    np.testing.assert_array_equal(back.lrs, res.lrs)
    np.testing.assert_array_equal(back.losses, res.losses)  # NaN survives (as "NaN")
    assert back.suggestion == res.suggestion and back.stop_reason == res.stop_reason
    assert set(back.suggestions) >= {"lrkit", "valley", "steepest", "lightning"}
    assert "recommended_num_iter" in back.num_iter_advice
    assert RangeTestResult.from_json(tmp_path / "r.json").to_json() == text  # a Path too
    # a notebook's `res` shows the suggestion in a line, not the 60-point curve (3,000+ chars)
    s = res.suggestion
    assert repr(res) == (f"RangeTestResult(lr={s.lr:.4g}, confidence={s.confidence!r}, band=("
                         f"{s.band[0]:.4g}, {s.band[1]:.4g}), method='lrkit', points="
                         f"{len(res.lrs)}, stop_reason={res.stop_reason!r}, cost_steps="
                         f"{res.cost_steps})")
    # each wrong input says what it is (a KeyError, a JSONDecodeError, and a FileNotFoundError
    # on the text itself before)
    with pytest.raises(ValueError, match=r"not a RangeTestResult's JSON .*'lrs'"):
        RangeTestResult.from_json('{"best_lr": 0.1, "trials": []}')  # a SearchResult's
    (tmp_path / "cut.json").write_text(text[:50])
    with pytest.raises(ValueError, match=r"cut.json' is not valid JSON"):
        RangeTestResult.from_json(str(tmp_path / "cut.json"))
    with pytest.raises(ValueError, match="neither a JSON object nor an existing file"):
        RangeTestResult.from_json(str(tmp_path / "missing.json"))
    res.plot(str(tmp_path / "r.png"))
    assert (tmp_path / "r.png").stat().st_size > 5000


def test_val_loader_curve_uses_validation_loss():
    model, opt, loader, _ = _setup()
    xv, yv = _data(seed=1, n=64)
    val = [(xv, yv)]
    res = find_lr(model, opt, loader, F.cross_entropy, num_iter=10, end_lr=1e-4, val_loader=val)
    assert res.settings["loss_kind"] == "val"
    assert len(res.losses) == 10 and res.cost_steps == 10


def test_arguments_checked():
    model, opt, loader, _ = _setup()
    with pytest.raises(ValueError, match="num_iter"):
        find_lr(model, opt, loader, F.cross_entropy, num_iter=1)
    with pytest.raises(ValueError, match=r"num_iter must be >= 8: the rules read"):
        find_lr(model, opt, loader, F.cross_entropy, num_iter=5)
    lbfgs = torch.optim.LBFGS(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match=r"optimizer is a LBFGS, whose step\(\) needs a closure"):
        find_lr(model, lbfgs, loader, F.cross_entropy)
    other, _, _, _ = _setup()  # an optimizer over another model's parameters: refused, untouched
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"optimizer holds none of the model's parameters"):
        find_lr(model, torch.optim.SGD(other.parameters(), lr=0.1), loader, F.cross_entropy)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(ValueError, match="loss_fn"):
        find_lr(model, opt, loader)
    with pytest.raises(TypeError, match="optimizer"):
        find_lr(model, None, loader, F.cross_entropy)
    with pytest.raises(ValueError, match="confirm"):
        find_lr(model, opt, loader, F.cross_entropy, confirm=True)
    with pytest.raises(ValueError, match="method"):
        find_lr(model, opt, loader, F.cross_entropy, method="valey")


# ------------------------------------------------------------------------------- Task mode
def _tiny_task(steps=60):
    x, y = _data(n=384)
    xtr, ytr, xva, yva = x[:256], y[:256], x[256:], y[256:]

    def batches(seed):
        g = torch.Generator().manual_seed(seed)
        while True:
            perm = torch.randperm(256, generator=g)
            for i in range(0, 256, 32):
                idx = perm[i:i + 32]
                yield xtr[idx], ytr[idx]

    def build(seed):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))

    def evaluate(model, split):
        with torch.no_grad():
            return float((model(xva).argmax(1) == yva).float().mean())

    return Task(name="tiny", version="1", description="test", metric="accuracy",
                higher_is_better=True, build_model=build, batches=batches,
                loss=lambda m, b: F.cross_entropy(m(b[0]), b[1]), evaluate=evaluate,
                recipe=Recipe(optimizer="sgd", batch_size=32, steps=steps, default_lr=0.1,
                              optimizer_kwargs={"momentum": 0.9}), train_size=256, worst=0.33)


def test_task_mode_and_confirm_cost():
    task = _tiny_task()
    a = find_lr(task, num_iter=50, start_lr=1e-5, end_lr=10.0)
    b = find_lr(task, num_iter=50, start_lr=1e-5, end_lr=10.0)
    assert a.losses == b.losses  # deterministic for a seed
    assert a.settings["task"] == "tiny"
    c = find_lr(task, num_iter=50, start_lr=1e-5, end_lr=10.0, confirm=True,
                confirm_candidates=3, confirm_budget=0.5)
    conf = c.confirm
    # candidates: a quarter decade apart around the curve's LR for the recipe's schedule, then
    # half-decade travel steps beyond the edge while the edge wins
    centre = a.suggestion.lr_for(task.recipe.schedule)
    cands = conf["candidates"]
    np.testing.assert_allclose(cands[:3], [centre / 10 ** 0.25, centre, centre * 10 ** 0.25],
                               rtol=1e-12)
    # (upward, never above twice the band's top)
    ceiling = max(2 * a.suggestion.band[1], centre * 10 ** 0.25)
    for k in range(3, len(cands)):
        tried = cands[:k]
        assert cands[k] == pytest.approx(min(tried) / 10 ** 0.5) or \
            cands[k] == pytest.approx(max(tried) * 10 ** 0.5)
        assert cands[k] <= ceiling * (1 + 1e-9)
    assert len(cands) <= 6  # at most one full run of confirm steps (6 x 10 = 60)
    # each trains budget / candidates of a full run (60 steps): 10 steps, scored on "val"
    assert [r["steps"] for r in conf["runs"]] == [10] * len(cands)
    for r in conf["runs"]:
        assert r["metric"] == run(task, r["lr"], steps=10, seed=0, eval_split="val").metric
    # the winner is the best val metric; the suggestion moves by winner / centre
    best = max(conf["runs"], key=lambda r: r["metric"])
    assert conf["winner"] == best["lr"]
    if len(cands) > 3:  # travel stopped because the last step was no better, or at the budget
        assert conf["runs"][-1]["metric"] <= best["metric"] or len(cands) == 6
    factor = conf["winner"] / centre
    assert c.suggestion.lr_for(task.recipe.schedule) == pytest.approx(conf["winner"])
    assert c.lr == pytest.approx(a.lr * factor)
    assert c.suggestion.band == pytest.approx((a.suggestion.band[0] * factor,
                                              a.suggestion.band[1] * factor))
    assert c.suggestion.schedules["one_cycle"]["div_factor"] == 25.0
    assert c.suggestion.method == "lrkit+confirm" and c.suggestions["lrkit"] == a.suggestion
    # what the full run leaves (>= 2 short runs) trains one longer run at the short-run winner
    long = conf["long_check"]
    room = 60 - 10 * len(cands)
    if room >= 20:
        assert long["steps"] == room and long["lr"] == best["lr"]
        assert long["metric"] == run(task, best["lr"], steps=room, seed=0,
                                     eval_split="val").metric
        assert f"one of {room} at the winner" in c.suggestion.reason
    else:
        assert long is None
    extra = 10 * len(cands) + (room if long else 0)
    assert conf["steps"] == extra <= 60
    assert conf["fraction_of_full_run"] == pytest.approx(extra / 60)
    assert c.cost_steps == a.cost_steps + extra
    assert c.suggestion.confidence in ("high", "medium")
    # its uncertainty: the nearest runs either side that scored worse beyond noise, in words
    from lrkit.finder import bracket, range_sentence

    if "overfit_fraction" not in conf:
        br = bracket(task, best, conf["runs"])
        assert conf["lr_range"] == [br["below"], br["above"]] and conf["lr_alike"] == br["alike"]
        assert range_sentence(conf["lr_range"], conf["lr_alike"]) in c.suggestion.reason
    with pytest.raises(ValueError, match="confirm_budget"):
        find_lr(task, confirm=True, confirm_budget=0.0)
    with pytest.raises(ValueError, match="confirm_candidates"):
        find_lr(task, confirm=True, confirm_candidates=1)


def test_confirm_runs_too_short_to_read_are_low_confidence_and_say_what_would_do():
    # a 30-step task: confirm_budget 0.5 over 3 candidates gives runs of round(15 / 3) = 5 steps,
    # under the 10 a run needs to say more than which LR falls fastest at first
    short = _tiny_task(steps=30)
    c = find_lr(short, num_iter=40, start_lr=1e-5, end_lr=10.0, confirm=True)
    assert {r["steps"] for r in c.confirm["runs"]} == {5}
    assert c.suggestion.confidence == "low"
    assert c.suggestion.reason.startswith(
        "runs of 5 steps only show which LR lowers the loss fastest at first "
        "(confirm_budget=1 gives runs of 10)")
    # confirm_budget 1.0: runs of 10 steps, read as usual
    c = find_lr(short, num_iter=40, start_lr=1e-5, end_lr=10.0, confirm=True, confirm_budget=1.0)
    assert {r["steps"] for r in c.confirm["runs"]} == {10}
    assert not c.suggestion.reason.startswith("runs of")
    # a 12-step task cannot pay for three runs of 10 within one full run: it says so
    c = find_lr(_tiny_task(steps=12), num_iter=40, start_lr=1e-5, end_lr=10.0, confirm=True)
    assert c.suggestion.confidence == "low"
    assert "(a 12-step run is too short for 3 confirm runs of 10)" in c.suggestion.reason


def test_confirm_without_a_suggestion_centres_on_the_recipe_default():
    # a sweep far below any useful LR is flat: no suggestion, so confirm tries LRs around the
    # recipe's default (0.1), for the recipe's schedule (cosine: its peak is the default itself)
    task = dataclasses.replace(_tiny_task(), recipe=Recipe(
        optimizer="sgd", batch_size=32, steps=60, default_lr=0.1,
        optimizer_kwargs={"momentum": 0.9}, schedule="cosine"))
    c = find_lr(task, num_iter=30, start_lr=1e-9, end_lr=1e-8, confirm=True)
    assert c.suggestions["lrkit"].lr is None
    # a decade apart: the centre is a guess
    np.testing.assert_allclose(c.confirm["candidates"][:3], [0.01, 0.1, 1.0], rtol=1e-12)
    assert c.suggestion.lr_for("cosine") == pytest.approx(c.confirm["winner"])


# -------------------------------------------------------------------------------------- DDP
_DDP_WORKER = textwrap.dedent("""
    import sys, json, torch, torch.distributed as dist
    from torch import nn
    torch.set_num_threads(1)
    rank, world, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    from lrkit.finder import find_lr
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(8, 16), nn.ReLU(),
                                                              nn.Linear(16, 3)))
    g = torch.Generator().manual_seed(100 + rank)          # each rank its own data shard
    x = torch.randn(256, 8, generator=g)
    y = (x @ torch.ones(8, 3).tril()).argmax(1)
    loader = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 256, 32)]
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    res = find_lr(model, opt, loader, nn.functional.cross_entropy, num_iter=40, start_lr=1e-4,
                  end_lr=10.0)
    local = float(nn.functional.cross_entropy(model(x[:32]), y[:32]))
    json.dump({"result": res.to_dict(), "first_local": local}, open(out, "w"))
    dist.destroy_process_group()
""")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_ranks_gloo_get_the_same_curve(tmp_path):
    import json

    script = tmp_path / "worker.py"
    script.write_text(_DDP_WORKER)
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd()] + sys.path))
    procs = [subprocess.Popen([sys.executable, str(script), str(r), "2", str(port),
                               str(tmp_path / f"r{r}.json")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for r in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()[-2000:]
    r0, r1 = (json.load(open(tmp_path / f"r{r}.json")) for r in range(2))
    assert r0["result"]["losses"] == r1["result"]["losses"]
    assert r0["result"]["suggestion"] == r1["result"]["suggestion"]
    assert r0["result"]["stop_reason"] == r1["result"]["stop_reason"]
    # the curve is the mean over ranks: it differs from either rank's local loss at step 0
    assert r0["first_local"] != r1["first_local"]
    first = r0["result"]["losses"][0]
    assert first == pytest.approx((r0["first_local"] + r1["first_local"]) / 2, rel=1e-5)


def test_plot_after_confirm_shows_the_short_runs_against_lr_times_step(tmp_path):
    """A confirm result plots a second panel: one line per short run, x = lr x step (the
    gradient-flow time in which replaying runs collapse), and where a full run at the suggested
    LR ends; it survives the JSON round trip."""
    import dataclasses

    import matplotlib

    matplotlib.use("Agg")
    model, opt, loader, _ = _setup()
    res = find_lr(model, opt, loader, F.cross_entropy, num_iter=60, start_lr=1e-5, end_lr=100.0)
    runs = [{"lr": lr, "diverged": False, "metric": 0.5,
             "val_curve": [[t, 1.0 / (1 + lr * t)] for t in (5, 10, 15, 20)]}
            for lr in (0.01, 0.0178, 0.0316)]
    confirm = {"runs": runs, "winner": 0.003, "short_run_winner": 0.0178, "full_run_steps": 120,
               "metric": "mse", "rule": "time-rescaled"}
    res = dataclasses.replace(res, confirm=confirm)
    fig = RangeTestResult.from_json(res.to_json()).plot(str(tmp_path / "c.png"))
    curve_ax, confirm_ax = fig.axes
    lines = confirm_ax.get_lines()
    xs = [list(line.get_xdata()) for line in lines[:3]]
    assert xs[1] == pytest.approx([0.0178 * t for t in (5, 10, 15, 20)])
    assert lines[1].get_linewidth() > lines[0].get_linewidth()  # the best short run in bold
    assert list(lines[3].get_xdata()) == pytest.approx([0.003 * 120] * 2)  # the full run's end
    assert confirm_ax.get_xscale() == "log" and "lr x step" in confirm_ax.get_xlabel()
    assert "mse" in confirm_ax.get_ylabel()
    assert (tmp_path / "c.png").stat().st_size > 5000
    # with an axis of the user's, only the curve is drawn there
    import matplotlib.pyplot as plt

    f2, ax = plt.subplots()
    assert res.plot(ax=ax) is f2 and len(f2.axes) == 1


def test_a_loss_that_is_nan_from_the_first_step_is_blamed_on_the_setup_not_the_lr():
    model, opt, loader, _ = _setup()
    before = [p.detach().clone() for p in model.parameters()]
    res = find_lr(model, opt, loader, lambda out, y: F.cross_entropy(out, y) * float("nan"))
    assert res.suggestion.lr is None and res.stop_reason == "nan"
    assert res.suggestion.reason.startswith("the loss was nan at the first step, at lr 1e-07")
    assert "not the learning rate" in res.suggestion.reason
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_a_hypergradient_optimizer_sweeps_at_exactly_its_lrs_and_keeps_its_adaptation():
    """SGD-HD / Adam-HD adapt their own LR: during the sweep the adaptation is off, so every
    step runs at the sweep's LR as the base rule would (what the test finds is the initial LR
    the adaptation starts from); afterwards, restored or not, the optimizer adapts again. With
    the adaptation on, SGD-HD's additive rule lifted the sweep's 1e-7 to ~1e-2 at once, the
    test blew up at its start, and tune trained digits at 1.6e-7 (test accuracy 0.10)."""
    from lrkit.optim import SGDHD, AdamHD

    for cls, kw in ((SGDHD, dict(momentum=0.9)), (AdamHD, {})):
        for restore in (True, False):
            model, _, loader, _ = _setup()
            opt = cls(model.parameters(), lr=0.01, **kw)
            beta = opt.param_groups[0]["hypergrad_lr"]
            seen = []

            def step_fn(m, batch, opt=opt):
                seen.append(opt.param_groups[0]["lr"])
                return nn.functional.cross_entropy(m(batch[0]), batch[1])

            res = find_lr(model, opt, loader, step_fn=step_fn, num_iter=30, end_lr=1.0,
                          restore=restore)
            np.testing.assert_allclose(seen[:len(res.lrs)], res.lrs, rtol=1e-12)
            np.testing.assert_allclose(res.lrs, sweep_lrs(1e-7, 1.0, 30)[:len(res.lrs)],
                                       rtol=1e-9)
            assert opt.param_groups[0]["hypergrad_lr"] == beta > 0


def test_every_optimizer_by_name_runs_the_range_test_and_tune(tmp_path):
    """Recipes naming a hypergradient, an LR-free or a schedule-free optimizer go through the
    range test and tune (schedule-free's range test stopped at once: "Optimizer was not in
    train mode"; SGD-HD's tune trained at 1.6e-7)."""
    from lrkit.tune import tune
    from tests.tiny_task import make_task

    base = make_task(60)
    for name, lr in (("sgdhd", 0.1), ("adamhd", 1e-3), ("prodigy", 1.0),
                     ("schedulefree", 2.5e-3)):
        recipe = dataclasses.replace(base.recipe, optimizer=name, default_lr=lr,
                                     optimizer_kwargs={})
        task = dataclasses.replace(base, name=f"tiny-{name}", recipe=recipe)
        rt = find_lr(task, num_iter=30)
        assert len(rt.lrs) >= 8
        if name.endswith("hd"):  # (Prodigy's multiplier may read flat on this tiny task)
            assert rt.lr is not None and rt.lr > 1e-4, (name, rt.lr)
        res = tune(task, out=tmp_path / name, progress=False, schedules=("constant",))
        assert math.isfinite(res.metric) and res.lr > 1e-4, (name, res.lr)


def _run(lr: float, metric: float, losses: list[float], val_curve: list, diverged=False) -> dict:
    return {"lr": lr, "metric": metric, "losses": losses, "val_curve": val_curve,
            "diverged": diverged}


def test_fresh_loss_only_for_runs_whose_batches_were_all_new():
    from lrkit.finder import fresh_loss
    from tests.tiny_task import make_task

    task = make_task()  # batch 32, 256 training examples: 8 steps see each example once
    losses = [3.0, 3.0, 2.0, 2.0, 1.0, 1.0, 1.0, 3.0]
    mean, se = fresh_loss(task, _run(0.1, 0.5, losses, []))
    assert mean == pytest.approx(2.0)
    assert se == pytest.approx(float(np.std([1, 3], ddof=1)) / 2 ** .5)
    assert fresh_loss(task, _run(0.1, 0.5, losses + [1.0], [])) is None  # 9 x 32 > 256
    assert fresh_loss(task, _run(0.1, 0.5, losses[:7], [])) is None      # too few to read
    two = dataclasses.replace(task, recipe=dataclasses.replace(task.recipe, accumulation_steps=2))
    assert fresh_loss(two, _run(0.1, 0.5, losses, [])) is None  # 8 steps x 2 x 32 > 256
    assert fresh_loss(dataclasses.replace(two, train_size=512), _run(0.1, 0.5, losses, [])) \
        == (mean, se)
    assert fresh_loss(task, _run(0.1, 0.5, losses, [], diverged=True)) is None
    assert fresh_loss(dataclasses.replace(task, train_size=0), _run(0.1, 0.5, losses, [])) is None


def test_loss_tiebreak_picks_the_lower_held_out_loss_only_within_val_noise():
    from lrkit.finder import loss_tiebreak
    from tests.tiny_task import make_task

    task = make_task()
    val = [[1, 0.50], [2, 0.52], [3, 0.49], [4, 0.51], [5, 0.50]]  # noise about 0.01-0.02
    slow = [2.0] * 6 + [1.50, 1.52]
    fast = [2.0] * 6 + [1.00, 1.02]
    runs = [_run(0.01, 0.50, slow, val), _run(0.1, 0.505, fast, val)]
    assert loss_tiebreak(task, 0, runs) == 1  # val within noise: the lower batch loss wins
    runs[1]["metric"] = 0.60                  # val clearly worse: val decides
    assert loss_tiebreak(task, 0, runs) == 0
    runs[1]["metric"] = 0.505
    runs[1]["losses"] = [2.0] * 6 + [1.30, 1.60]  # lower (1.45 < 1.51) but within its s.e.
    assert loss_tiebreak(task, 0, runs) == 0
    runs[1]["losses"] = fast + [1.0]            # a run that saw examples twice: no tiebreak
    assert loss_tiebreak(task, 0, runs) == 0


def test_confirm_breaks_a_val_tie_with_the_loss_on_unseen_batches():
    """Two far-apart Gaussian blobs and 5,000 training examples: every confirm run classifies
    the 50 val points perfectly (a tie that the lower LR would win), while each run's batches
    are all new to it; the run with the clearly lower batch loss wins, and the reason says so."""
    from tests.tiny_task import blobs

    model, opt, loader, val, _, accuracy = blobs(2600, 5000)
    res = find_lr(model, opt, loader, nn.CrossEntropyLoss(), val_loader=val, confirm=True,
                  steps=200, metric_fn=accuracy, higher_is_better=True, progress=False)
    runs = res.confirm["runs"]
    assert {r["metric"] for r in runs} == {1.0}  # the situation under test: a tie on val
    tb = res.confirm["loss_tiebreak"]
    assert tb is not None and tb["val_pick_lr"] == min(r["lr"] for r in runs)
    win = next(r for r in runs if r["lr"] == res.confirm["winner"])
    q = len(win["train_losses"]) // 4
    assert sum(win["train_losses"][-q:]) / q == pytest.approx(tb["loss"])
    assert tb["loss"] + 2 * math.hypot(tb["loss_se"], tb["val_pick_loss_se"]) < tb["val_pick_loss"]
    assert "the training loss on batches neither run had seen before could" in \
        res.suggestion.reason


def test_bracket_names_the_nearest_worse_runs_on_each_side():
    from lrkit.finder import bracket
    from tests.tiny_task import make_task

    task = make_task()  # mse: lower is better
    val = [[1, 0.50], [2, 0.52], [3, 0.49], [4, 0.51], [5, 0.50]]  # winner's noise ~0.02
    best = _run(0.1, 0.50, [], val)
    runs = [_run(0.01, 0.90, [], []), _run(0.03, 0.60, [], []), best,
            _run(0.2, 0.505, [], []), _run(0.3, 0.8, [], []), _run(1.0, math.inf, [], []),
            _run(3.0, 0.4, [], [], diverged=True)]
    assert bracket(task, best, runs) == {"below": 0.03, "above": 0.3, "alike": [0.1, 0.2]}
    assert bracket(task, best, [best, runs[3]]) == {"below": None, "above": None,
                                                     "alike": [0.1, 0.2]}
    assert bracket(task, best, [best, runs[-1]])["above"] == 3.0  # diverged: worse


def test_ceiling_stop_names_the_ceiling_that_bound():
    """The walk's stop sentence names the ceiling it met: twice the band top, or (confirm,
    whose first window can reach above that) the window's own top; never 'twice the band top'
    for a ceiling that is not."""
    from lrkit.finder import CONFIRM_CEILING, ceiling_stop

    at_band = ceiling_stop(0.5, CONFIRM_CEILING * 0.1, 0.1)
    assert "2x the range test's band top (0.2)" in at_band and "0.5" in at_band
    window = ceiling_stop(0.9, 0.3, 0.1)  # 0.3 > 2 x 0.1: the first window's top
    assert "band top" not in window and "first window" in window and "(0.3)" in window
    assert "first window" in ceiling_stop(0.9, 0.3, None)  # no band at all


def _exact(model, opt, loader):
    """Everything a refused call must leave alone, cloned: weights and buffers, grads, the
    optimizer's groups and state, the loader's generator."""
    import copy

    return ({k: v.clone() for k, v in model.state_dict().items()},
            [None if p.grad is None else p.grad.clone() for p in model.parameters()],
            copy.deepcopy(opt.state_dict()), loader.generator.get_state())


def _assert_exact(a, b):
    assert a[0].keys() == b[0].keys() and all(torch.equal(a[0][k], b[0][k]) for k in a[0])
    assert all((g is None and h is None) or torch.equal(g, h) for g, h in zip(a[1], b[1]))
    assert a[2]["param_groups"] == b[2]["param_groups"]
    assert a[2]["state"].keys() == b[2]["state"].keys()
    for k, st in a[2]["state"].items():
        assert all(torch.equal(v, b[2]["state"][k][n]) for n, v in st.items())
    assert torch.equal(a[3], b[3])


def test_an_optimizer_that_maximizes_is_refused_before_anything_moves():
    """SGD(maximize=True) ascends its loss_fn (a log-likelihood): the range test read that
    objective as a loss to minimise and found "no clear descent" (confirm's runs were
    stopped as diverged). Refused at the door, naming the group and what to pass."""
    model, _, loader, _ = _setup(groups=True)
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.01},
                           {"params": model[4].parameters(), "lr": 0.1, "maximize": True}],
                          lr=0.1, momentum=0.9)
    loglik = lambda out, y: -F.cross_entropy(out, y)  # noqa: E731
    x, y = next(iter(loader))
    loglik(model(x), y).backward()
    opt.step()  # momentum buffers and grads to leave alone
    before = _exact(model, opt, loader)
    for kw in ({}, dict(confirm=True, val_loader=[(x, y)], steps=60)):
        with pytest.raises(ValueError, match=r"optimizer: param group 1 has maximize=True, but "
                                             r"lrkit reads the loss as a quantity to minimise.*"
                                             r"negated objective as loss_fn.*maximize=False"):
            find_lr(model, opt, loader, loglik, num_iter=20, **kw)
        _assert_exact(before, _exact(model, opt, loader))


def test_a_tensor_lr_is_handed_back_as_the_users_own_tensor():
    """The restore put a copy of lr=torch.tensor(0.01) in the group: the user's in-place decay
    (lr.fill_, as torch's schedulers do for a tensor LR) no longer reached the optimizer."""
    model, _, loader, _ = _setup()
    lr = torch.tensor(0.01)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    find_lr(model, opt, loader, F.cross_entropy, num_iter=20)
    assert opt.param_groups[0]["lr"] is lr and lr.item() == torch.tensor(0.01).item()
    lr.fill_(0.001)
    assert float(opt.param_groups[0]["lr"]) == float(torch.tensor(0.001))


def test_find_lr_leaves_torchs_private_optimizer_flags_as_they_were():
    """An attached scheduler wraps optimizer.step to set _opt_called on the first step: the
    sweep's steps left it True, and torch no longer warned about the scheduler stepped first."""
    import warnings

    model, opt, loader, _ = _setup()
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=50)
    flags = {k: v for k, v in vars(opt).items() if isinstance(v, (bool, int, float, str))}
    find_lr(model, opt, loader, F.cross_entropy, num_iter=20, scheduler=sched)
    assert {k: v for k, v in vars(opt).items() if isinstance(v, (bool, int, float, str))} == flags
    assert not hasattr(opt, "_opt_called")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        sched.step()
    assert any("before `optimizer.step()`" in str(w.message) for w in seen)


# ------------------------------------------------------------- a from_torch task's own state
def _split_setup():
    """A model, and a training loader whose sampler draws 64 of a dataset's 256 rows (a
    train/val split of one dataset), batch 16: 4 batches per epoch."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 5, generator=g), torch.randn(256, 1, generator=g)
    ds = torch.utils.data.TensorDataset(x, y)
    train = torch.utils.data.DataLoader(ds, batch_size=16, sampler=torch.utils.data.
                                        SubsetRandomSampler(range(64), generator=g))
    val = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, range(64, 128)),
                                      batch_size=32)
    torch.manual_seed(0)
    model = nn.Linear(5, 1)
    return model, torch.optim.SGD(model.parameters(), lr=0.05), train, val


def test_fresh_loss_reads_one_epoch_of_a_loader_that_draws_part_of_its_dataset():
    """from_torch took ``len(loader.dataset)`` (256) for the examples an epoch holds (64): a
    run that saw every example twice was read as a held-out loss."""
    from lrkit.finder import fresh_loss
    from lrkit.tasks import from_torch

    model, opt, train, val = _split_setup()
    task = from_torch(model, opt, train, nn.functional.mse_loss, val_loader=val, steps=20)
    assert task.train_size == 64
    assert fresh_loss(task, _run(0.1, 0.5, [1.0] * 8, [])) is None  # 8 x 16 = 2 epochs
    assert fresh_loss(task, _run(0.1, 0.5, [1.0] * 4, [])) is None  # too few to read
    assert fresh_loss(dataclasses.replace(task, train_size=128),
                      _run(0.1, 0.5, [1.0] * 8, [])) == (1.0, 0.0)


def test_find_lr_on_a_from_torch_task_leaves_the_global_rngs_as_given():
    """find_lr(task) seeded the global RNGs for its sweep and left them there; find_lr on a
    model put them back (its snapshot). A from_torch task puts them back too."""
    import random

    from lrkit.tasks import from_torch

    model, opt, train, val = _split_setup()
    np.random.seed(3)
    random.seed(4)
    task = from_torch(model, opt, train, nn.functional.mse_loss, val_loader=val, steps=20)
    rngs = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    for confirm in (False, True):
        find_lr(task, num_iter=20, confirm=confirm, progress=False)
        assert torch.equal(torch.get_rng_state(), rngs[0])
        assert np.array_equal(np.random.get_state()[1], rngs[1]) and random.getstate() == rngs[2]


def test_a_train_loader_that_runs_dry_is_named_as_find_lr_calls_it():
    """find_lr's errors named ``batches`` (fit's argument) and called a stream that gave its
    batches in its first epoch and none in its second "empty"."""
    model, opt, train, _ = _split_setup()

    class Empty(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(())

    with pytest.raises(ValueError, match=r"^train_loader is empty: it yielded no batch"):
        find_lr(model, opt, torch.utils.data.DataLoader(Empty(), batch_size=8),
                nn.functional.mse_loss, progress=False)
    with pytest.raises(ValueError, match=r"^train_loader yielded 4 batches in its first epoch, "
                                         r"then none in the next: .* needs 100 batches"):
        find_lr(model, opt, OnceStream(list(train)), nn.functional.mse_loss, progress=False)


def test_confirm_from_another_rule_says_which():
    """``find --method valley --confirm`` printed "lrkit+confirm" and "started from the range
    test's suggestion" for a confirm that started from valley's LR."""
    from tests.tiny_task import make_task

    task = make_task()
    res = find_lr(task, method="valley", confirm=True, progress=False)
    assert res.suggestion.method == "valley+confirm"
    assert res.suggestions["valley+confirm"] is res.suggestion
    assert "started from the range test's valley rule" in res.suggestion.reason
    assert res.confirm["candidates"][1] == pytest.approx(res.suggestions["valley"].lr)
