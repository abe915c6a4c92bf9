"""The one training loop: fit() against a hand-written loop, callbacks, divergence, snapshots."""

from __future__ import annotations

import collections
import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from lrkit import train
from lrkit.train import Callback, DivergenceStop, fit, loader_generators, snapshot
from tests.tiny_task import CountingNet, OnceStream

torch.set_num_threads(1)


def _data(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    y = x @ torch.arange(1.0, 6.0) + 0.1 * torch.randn(n, generator=g)
    return x, y.unsqueeze(1)


def _model(seed: int = 0, bn: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Linear(5, 8)] + ([nn.BatchNorm1d(8)] if bn else []) + [nn.Tanh(), nn.Linear(8, 1)]
    return nn.Sequential(*layers)


def _batches(x: torch.Tensor, y: torch.Tensor, bs: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i:i + bs], y[i:i + bs]) for i in range(0, len(x), bs)]


def test_fit_equals_hand_written_loop_bitwise():
    x, y = _data()
    batches = _batches(x, y, 16)
    sched = lambda t: 0.05 * (0.9 ** t)  # noqa: E731

    m1 = _model()
    opt1 = torch.optim.SGD(m1.parameters(), lr=1.0, momentum=0.9)
    res = fit(m1, opt1, batches, num_steps=10, loss_fn=nn.functional.mse_loss, schedule=sched)

    m2 = _model()
    opt2 = torch.optim.SGD(m2.parameters(), lr=1.0, momentum=0.9)
    ref_losses = []
    for t in range(10):
        for g in opt2.param_groups:
            g["lr"] = sched(t)
        xb, yb = batches[t % len(batches)]
        opt2.zero_grad()
        loss = nn.functional.mse_loss(m2(xb), yb)
        loss.backward()
        opt2.step()
        ref_losses.append(loss.item())

    assert res.steps_done == 10 and res.stop_reason == "completed" and not res.diverged
    assert res.losses == ref_losses
    assert res.lrs == [sched(t) for t in range(10)]
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p, q)


def test_accumulation_matches_full_batch():
    x, y = _data(32)
    m1, m2 = _model(), _model()
    o1 = torch.optim.SGD(m1.parameters(), lr=0.1)
    o2 = torch.optim.SGD(m2.parameters(), lr=0.1)
    full = fit(m1, o1, [(x, y)], num_steps=3, loss_fn=nn.functional.mse_loss)
    halves = fit(m2, o2, _batches(x, y, 16), num_steps=3, loss_fn=nn.functional.mse_loss,
                 accumulation_steps=2)
    np.testing.assert_allclose(halves.losses, full.losses, rtol=1e-5)
    for p, q in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_grad_clip_clips_to_norm_and_records_pre_clip_norm():
    x, y = _data(16)
    m = _model()
    before = [p.detach().clone() for p in m.parameters()]
    # reference: the unclipped gradient norm
    loss = nn.functional.mse_loss(m(x), y)
    grads = torch.autograd.grad(loss, list(m.parameters()))
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item()
    assert norm > 0.5
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    res = fit(m, opt, [(x, y)], num_steps=1, loss_fn=nn.functional.mse_loss, grad_clip=0.5)
    assert res.grad_norms[0] == pytest.approx(norm, rel=1e-5)
    step = torch.linalg.vector_norm(torch.stack(
        [(p.detach() - b).norm() for p, b in zip(m.parameters(), before)])).item()
    assert step == pytest.approx(0.5, rel=1e-4)


def test_nan_loss_stops_immediately():
    x, y = _data(16)
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    calls = []

    def step_fn(model, batch):
        calls.append(1)
        loss = nn.functional.mse_loss(model(batch[0]), batch[1])
        return loss * float("nan") if len(calls) == 3 else loss

    res = fit(m, opt, [(x, y)], num_steps=10, step_fn=step_fn)
    assert res.stop_reason == "nan" and res.diverged and res.steps_done == 3
    assert math.isnan(res.losses[-1])
    assert repr(res) == (f"FitResult(steps_done=3, stop_reason='nan', last_loss=nan, evals=0, "
                         f"wall_time={res.wall_time:.4g})")


def test_divergence_stop_follows_its_formula():
    losses = [1.0, 0.8, 0.6, 0.5, 0.9, 3.0, 50.0, 500.0]
    cb = DivergenceStop(4.0, relative_to="best", beta=0.5)
    cb.on_train_start(None, None)
    avg, best, stopped_at = 0.0, math.inf, None
    for i, loss in enumerate(losses):
        avg = 0.5 * avg + 0.5 * loss
        sm = avg / (1 - 0.5 ** (i + 1))
        expect = i >= 1 and sm > 4 * best
        best = min(best, sm)
        got = cb.on_step_end(type("I", (), {"loss": loss})())
        assert (got == "diverged") == expect, i
        if expect and stopped_at is None:
            stopped_at = i
    assert stopped_at == 6


def _stops(cb: DivergenceStop, losses: list[float]) -> int | None:
    """The index of the loss at which ``cb`` says "diverged", or None."""
    cb.on_train_start(None, None)
    for i, loss in enumerate(losses):
        if cb.on_step_end(type("I", (), {"loss": loss})()) == "diverged":
            return i
    return None


def test_divergence_stop_on_losses_that_are_not_positive():
    """A loss that can be negative (a Gaussian NLL crossing zero, a constant offset) made the
    ratio rule fire at once (4 x -2 < -2). With a reference <= 0 the rule is shift-invariant:
    EMA > ref + (factor - 1) x max(initial - best, spread of the first 10 losses)."""
    descent = [1.0, 0.8, 0.6, 0.4, 0.3, 0.2, 0.15, 0.1, 0.08, 0.06, 0.05, 0.04, 0.05]
    blowup = [0.3, 2.0, 30.0, 500.0]
    for mode in ("best", "initial"):
        cb = DivergenceStop(4.0, relative_to=mode, beta=0.5)
        at = _stops(cb, descent + blowup)
        assert at is not None and at > len(descent)
        # the same curve shifted by any constant stops at the same step (here: well below 0)
        for shift in (-10.0, -0.5, -1000.0):
            shifted = [v + shift for v in descent + blowup]
            got = _stops(DivergenceStop(4.0, relative_to=mode, beta=0.5), shifted)
            assert got is not None and got > len(descent), (mode, shift, got)
        # a descent through zero (an NLL) with no blow-up never stops
        assert _stops(DivergenceStop(4.0, relative_to=mode, beta=0.5),
                      [v - 0.5 for v in descent] * 3) is None
    # by hand, EMA with beta 0 = the loss: -9, -11 (x5): initial -9, best -11, spread of the
    # first 10 = 1: scale = max(-9 - (-11), 1) = 2, limit -11 + 3 x 2 = -5 ("initial": -9 + 6)
    start = [-9.0, -11.0] * 5
    cb = DivergenceStop(4.0, relative_to="best", beta=0.0)
    assert _stops(cb, start + [-5.5]) is None and _stops(cb, start + [-4.5]) == 10
    cb = DivergenceStop(4.0, relative_to="initial", beta=0.0)
    assert _stops(cb, start + [-3.5]) is None and _stops(cb, start + [-2.5]) == 10
    # nothing is read before 10 losses give a scale
    assert _stops(cb, [-10.0, 1e6]) is None


def test_a_loss_with_a_negative_offset_gives_the_same_range_test_and_run():
    """find_lr and train.run on MSE - 10 behave as on MSE (the suggestion, where the sweep
    stops, the full run): before, the sweep stopped at step 2 and every run 'diverged'."""
    import lrkit
    from lrkit import train

    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 10, generator=g)
    y = x @ torch.randn(10, 1, generator=g)
    out = {}
    for shift in (0.0, -10.0):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1))
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)

        def loss_fn(o, t, s=shift):
            return nn.functional.mse_loss(o, t) + s

        data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:384], y[:384]),
                                           batch_size=32, shuffle=True,
                                           generator=torch.Generator().manual_seed(1))
        r = lrkit.find_lr(m, opt, data, loss_fn, progress=False)
        task = lrkit.from_torch(m, opt, data, loss_fn, steps=100, val_loader=[(x[384:], y[384:])])
        run = train.run(task, 0.003, seed=0)
        out[shift] = (r, run)
    (r0, run0), (r1, run1) = out[0.0], out[-10.0]
    assert r1.stop_reason == r0.stop_reason == "diverged" and len(r1.lrs) == len(r0.lrs) > 50
    assert r1.suggestion.lr == r0.suggestion.lr
    assert run1.stop_reason == run0.stop_reason == "completed"
    assert run1.metric == pytest.approx(run0.metric - 10.0, abs=1e-4)


@pytest.mark.parametrize("bad", [dict(factor=1.0), dict(factor=float("nan")),
                                 dict(relative_to="worst"), dict(beta=1.0)])
def test_divergence_stop_rejects_bad_arguments(bad):
    with pytest.raises((ValueError, TypeError)):
        DivergenceStop(**bad)


def test_callback_stop_reason_and_eval():
    x, y = _data(16)
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    seen = []

    class StopAt(Callback):
        def on_step_end(self, info):
            seen.append((info.step, info.lr))
            return "enough" if info.step == 4 else None

        def on_eval(self, step, metric):
            seen.append(("eval", step, metric))

    res = fit(m, opt, [(x, y)], num_steps=10, loss_fn=nn.functional.mse_loss,
              callbacks=[StopAt()], evaluate=lambda model: 42.0, eval_every=2)
    assert res.stop_reason == "enough" and res.steps_done == 5
    assert res.evals == [(2, 42.0), (4, 42.0)]
    assert ("eval", 2, 42.0) in seen and seen[0] == (0, 0.01)


def test_an_evaluate_that_returns_text_is_named_not_parsed():
    """float() would parse "0.5": every LR would score the same and a choice among them would be
    arbitrary. A NumPy scalar or a one-element tensor is a number."""
    import dataclasses

    from lrkit import tasks

    x, y = _data(16)
    m = _model()
    with pytest.raises(TypeError, match="evaluate\\(model\\)'s value must be a real number"):
        fit(m, torch.optim.SGD(m.parameters(), lr=0.01), [(x, y)], num_steps=4,
            loss_fn=nn.functional.mse_loss, evaluate=lambda model: "0.5", eval_every=2)
    res = fit(m, torch.optim.SGD(m.parameters(), lr=0.01), [(x, y)], num_steps=4,
              loss_fn=nn.functional.mse_loss, evaluate=lambda model: np.float32(0.5),
              eval_every=2)
    assert res.evals == [(2, 0.5), (4, 0.5)]
    task = dataclasses.replace(tasks.get("logreg"), evaluate=lambda model, split: "0.5")
    with pytest.raises(TypeError, match="task.evaluate\\(model, 'test'\\)'s value"):
        train.run(task, 0.1, steps=3)
    # every reader of a task's metric goes through Task.score: confirm's val tracking too
    from lrkit.finder import _ValTrack

    with pytest.raises(TypeError, match="task.evaluate\\(model, 'val'\\)'s value"):
        train.run(task, 0.1, steps=4, callbacks=[_ValTrack(task, every=2, steps=4)])
    assert dataclasses.replace(task, evaluate=lambda m, s: np.float32(0.5)).score(m, "val") == 0.5
    from lrkit.callbacks import MonitorCallback

    with pytest.raises(TypeError, match="evaluate\\(model\\)'s value must be a real number"):
        fit(m, torch.optim.SGD(m.parameters(), lr=0.01), [(x, y)], num_steps=4,
            loss_fn=nn.functional.mse_loss,
            callbacks=[MonitorCallback(evaluate=lambda model: "0.5", eval_every=2,
                                       flush_every=1)])


def _frozen_bn_model() -> nn.Module:
    """Root in train mode, its BatchNorm frozen in eval mode (fine-tuning with small batches)."""
    m = _model(bn=True)
    m.train()
    m[1].eval()
    return m


def test_fit_keeps_a_frozen_batchnorm_frozen_and_puts_modes_back():
    x, y = _data(32)
    m = _frozen_bn_model()
    stats = m[1].running_mean.clone()
    modes = []

    class Modes(Callback):
        def on_step_end(self, info):
            modes.append((info.model.training, info.model[1].training))

    def evaluate(model):  # a user's evaluate that ends in model.train(), unfreezing the BN
        model.eval()
        model.train()
        return 0.0

    fit(m, torch.optim.SGD(m.parameters(), lr=0.01), _batches(x, y, 8), num_steps=4,
        loss_fn=nn.functional.mse_loss, callbacks=[Modes()], evaluate=evaluate, eval_every=1)
    # every step (also after each evaluation) trains with the BN frozen: its statistics are
    # untouched (model.train() after an evaluation used to unfreeze it)
    assert modes == [(True, False)] * 4
    assert torch.equal(m[1].running_mean, stats)
    assert m.training and not m[1].training


def test_fit_trains_a_model_handed_over_in_eval_mode_in_train_mode_and_puts_it_back():
    x, y = _data(32)
    m = _model(bn=True).eval()
    modes = []

    class Modes(Callback):
        def on_step_end(self, info):
            modes.append(info.model[1].training)

    fit(m, torch.optim.SGD(m.parameters(), lr=0.01), _batches(x, y, 8), num_steps=3,
        loss_fn=nn.functional.mse_loss, callbacks=[Modes()])
    assert modes == [True] * 3  # batch statistics, as a training loop trains
    assert not m.training and not m[1].training
    assert int(m[1].num_batches_tracked) == 3


def test_evaluating_restores_every_submodules_own_mode():
    m = _frozen_bn_model()
    with train.evaluating(m):
        assert not m.training and not m[0].training and not torch.is_grad_enabled()
    assert m.training and not m[1].training and m[0].training


def test_bad_arguments():
    x, y = _data(8)
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="empty"):
        fit(m, opt, [], num_steps=1, loss_fn=nn.functional.mse_loss)
    with pytest.raises(ValueError, match="exactly one"):
        fit(m, opt, [(x, y)], num_steps=1)
    with pytest.raises(ValueError, match="num_steps"):
        fit(m, opt, [(x, y)], num_steps=0, loss_fn=nn.functional.mse_loss)
    with pytest.raises(TypeError, match="optimizer"):
        fit(m, "sgd", [(x, y)], num_steps=1, loss_fn=nn.functional.mse_loss)
    with pytest.raises(ValueError, match="optimizer holds none of the model's parameters"):
        fit(m, torch.optim.SGD(_model().parameters(), lr=0.1), [(x, y)], num_steps=1,
            loss_fn=nn.functional.mse_loss)
    with pytest.raises(ValueError, match="grad_clip"):
        fit(m, opt, [(x, y)], num_steps=1, loss_fn=nn.functional.mse_loss, grad_clip=-1.0)
    with pytest.raises(ValueError, match=r"ran out after 1: .* needs 6 batches"):
        fit(m, opt, iter([(x, y)]), num_steps=3, accumulation_steps=2,
            loss_fn=nn.functional.mse_loss)


def test_amp_on_cpu_runs_in_bfloat16():
    x, y = _data(16)
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    res = fit(m, opt, [(x, y)], num_steps=3, loss_fn=nn.functional.mse_loss, amp=True)
    assert res.steps_done == 3 and all(math.isfinite(v) for v in res.losses)


def _loop_state(seed: int = 0):
    x, y = _data(64)
    ds = torch.utils.data.TensorDataset(x, y)
    gen = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=True, generator=gen)
    m = _model(bn=True)
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    return loader, m, opt


def test_snapshot_restore_is_bitwise():
    loader, m, opt = _loop_state()
    fit(m, opt, loader, num_steps=5, loss_fn=nn.functional.mse_loss)
    snap = snapshot(m, opt, generators=loader_generators(loader))
    random.random(), np.random.rand()  # touch global RNGs too
    r_py, r_np, r_t = random.random(), np.random.rand(), torch.rand(1)

    first = fit(m, opt, loader, num_steps=7, loss_fn=nn.functional.mse_loss)
    after_first = [p.detach().clone() for p in m.state_dict().values()]
    # mess everything up, then restore
    fit(m, opt, loader, num_steps=9, loss_fn=nn.functional.mse_loss,
        schedule=lambda t: 1e-3 * (t + 1))
    torch.manual_seed(123)
    snap.restore()
    random.random(), np.random.rand()
    assert (random.random(), np.random.rand(), torch.rand(1)) == (r_py, r_np, r_t)
    second = fit(m, opt, loader, num_steps=7, loss_fn=nn.functional.mse_loss)
    assert second.losses == first.losses
    for a, b in zip(after_first, m.state_dict().values()):
        assert torch.equal(a, b)
    assert opt.param_groups[0]["lr"] == 0.05


def test_snapshot_holds_cpu_copies_not_aliases():
    _, m, opt = _loop_state()
    snap = snapshot(m, opt)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
    assert not torch.equal(next(iter(snap._model.values())), next(m.parameters()))
    snap.restore()
    fresh = _model(bn=True)
    for a, b in zip(m.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(TypeError, match="model"):
        snapshot("not a model")


def test_run_drops_momentum_cycling_for_an_optimizer_without_momentum():
    """A 1-cycle recipe run with Adagrad (no momentum, no betas): the LR keeps the 1-cycle shape
    and the momentum cycling is dropped (LRSchedule itself would refuse); SGD with momentum
    keeps it, and the momentum it sets follows the schedule."""
    import dataclasses

    from lrkit import schedules
    from lrkit.train import run
    from tests.tiny_task import make_task

    base = make_task(20)
    task = dataclasses.replace(base, recipe=dataclasses.replace(
        base.recipe, schedule="onecycle", optimizer_kwargs={"momentum": 0.9}))
    seen = []

    class Record(Callback):
        def on_step_end(self, info):
            seen.append((info.lr, info.optimizer.param_groups[0].get("momentum")))

    res = run(task, 0.05, seed=0, callbacks=[Record()],
              optimizer_factory=lambda p: torch.optim.Adagrad(p, lr=0.05))
    ref = schedules.family("onecycle", 0.05, 20)
    assert res.schedule["cycle_momentum"] is False
    assert [lr for lr, _ in seen] == pytest.approx([ref(t) for t in range(20)], rel=1e-12)
    assert all(m is None for _, m in seen)
    seen.clear()
    res = run(task, 0.05, seed=0, callbacks=[Record()])
    assert res.schedule["cycle_momentum"] is True
    # on_step_end runs after the scheduler has set the next step's momentum
    assert [m for _, m in seen[:-1]] == pytest.approx([ref.momentum(t + 1) for t in range(19)])
    with pytest.raises(ValueError, match="cycles momentum"):  # the adapter alone still refuses
        from lrkit.torch import LRSchedule

        LRSchedule(torch.optim.Adagrad([torch.zeros(1, requires_grad=True)], lr=0.1), ref)


def test_global_grad_norm_is_clip_grad_norms_and_does_not_overflow_in_half_precision():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(10, 50), nn.ReLU(), nn.Linear(50, 3))
    m(torch.randn(8, 10)).sum().backward()
    ps = list(m.parameters())
    assert train.global_grad_norm(ps) == float(torch.nn.utils.clip_grad_norm_(ps, 1e9))
    half = nn.Linear(1000, 100).half()
    half.weight.grad = torch.full_like(half.weight, 300.0)  # norm 94,868 > float16's 65,504
    half.bias.grad = torch.ones_like(half.bias)
    ref = math.sqrt(300.0 ** 2 * 100_000 + 100)
    assert train.global_grad_norm(half.parameters()) == pytest.approx(ref, rel=1e-4)  # float32 sums
    assert train.global_grad_norm([nn.Parameter(torch.ones(2))]) == 0.0  # no gradient yet


def _bag_model(sparse: bool) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.EmbeddingBag(50, 8, mode="mean", sparse=sparse), nn.Linear(8, 2))


def test_sparse_gradients_are_clipped_and_normed_as_their_dense_twins():
    # nn.Embedding(sparse=True): PyTorch's clip_grad_norm_ raises NotImplementedError on a
    # sparse gradient, and so did fit(grad_clip=...) and every monitored run (tune's final run)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randint(0, 50, (16, 5), generator=g), torch.randint(0, 2, (16,), generator=g))
               for _ in range(6)]
    runs = {}
    for sparse in (False, True):
        model = _bag_model(sparse)
        opt = torch.optim.SGD(model.parameters(), lr=3.0)
        runs[sparse] = (fit(model, opt, batches, num_steps=6, loss_fn=nn.functional.cross_entropy,
                            grad_clip=0.05), model)
    (dense, dm), (sp, sm) = runs[False], runs[True]
    assert sp.grad_norms == pytest.approx(dense.grad_norms, rel=1e-5)
    assert max(sp.grad_norms) > 0.05  # the clip cut
    assert sp.losses == pytest.approx(dense.losses, rel=1e-5)
    for p, q in zip(sm.parameters(), dm.parameters()):
        torch.testing.assert_close(p, q)
    # the norm of a sparse gradient with repeated rows is that of its coalesced (summed) values
    model = _bag_model(True)
    nn.functional.cross_entropy(model(torch.tensor([[3, 3, 4]])), torch.tensor([1])).backward()
    dense_grad = model[0].weight.grad.to_dense()
    want = float(torch.linalg.vector_norm(torch.cat([dense_grad.flatten(),
                                                     *[p.grad.flatten() for p in model[1].parameters()]])))
    assert train.global_grad_norm(model.parameters()) == pytest.approx(want, rel=1e-6)


def test_a_loss_cut_off_from_the_parameters_is_named_and_the_model_restored():
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [(torch.randn(8, 4), torch.randn(8, 1))]
    w0 = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="the loss does not require grad.*detach"):
        fit(model, opt, batches, num_steps=3,
            loss_fn=lambda out, y: nn.functional.mse_loss(out, y).detach())
    from lrkit import find_lr
    with pytest.raises(ValueError, match="does not require grad"):
        find_lr(model, opt, batches, lambda out, y: nn.functional.mse_loss(out, y).detach(),
                num_iter=20)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), w0))


@pytest.mark.parametrize("loss_fn, hint", [
    (lambda out, y: (nn.functional.mse_loss(out, y), {"mae": 0.0}), r"fn\(out, y\)\[0\]"),
    (lambda out, y: {"loss": nn.functional.mse_loss(out, y)}, "picks the loss out of the dict"),
    (lambda out, y: nn.functional.mse_loss(out, y, reduction="none"), r"Tensor of shape \(8, 1\); a per-example.*\.mean\(\)"),
    (lambda out, y: 1.0, "got float$"),
], ids=["tuple", "dict", "per-example", "float"])
def test_a_loss_that_is_not_a_scalar_says_what_to_pass(loss_fn, hint):
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="the loss must be a scalar tensor.*" + hint):
        fit(model, opt, [(torch.randn(8, 4), torch.randn(8, 1))], num_steps=2, loss_fn=loss_fn)


class _Counting(nn.Module):
    """A model with a non-persistent buffer that training changes (not in its state_dict)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 1)
        self.register_buffer("seen", torch.zeros(()), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.seen += x.shape[0]
        return self.lin(x)


def test_snapshot_and_find_lr_put_back_non_persistent_buffers():
    torch.manual_seed(0)
    model = _Counting()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [(torch.randn(8, 4), torch.randn(8, 1)) for _ in range(3)]
    snap = snapshot(model, opt)
    fit(model, opt, batches, num_steps=3, loss_fn=nn.functional.mse_loss)
    assert float(model.seen) == 24.0
    snap.restore()
    assert float(model.seen) == 0.0
    from lrkit import find_lr
    find_lr(model, opt, batches, nn.functional.mse_loss, num_iter=20)
    assert float(model.seen) == 0.0  # was 160: state_dict() leaves the buffer out
    # a buffer the model replaced by one of another shape is re-registered as it was
    snap = snapshot(model, opt)
    model.seen = torch.zeros(3)
    snap.restore()
    assert model.seen.shape == () and "seen" not in model.state_dict()


def test_from_torch_runs_start_with_non_persistent_buffers_reset():
    from lrkit.tasks import from_torch

    torch.manual_seed(0)
    model = _Counting()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [(torch.randn(8, 4), torch.randn(8, 1)) for _ in range(3)]
    task = from_torch(model, opt, batches, nn.functional.mse_loss, val_loader=batches[:1],
                      steps=5)
    train.run(task, 0.01, seed=0)
    assert float(task.build_model(0).seen) == 0.0


class _ClipHook(Callback):
    """A hook that clips the gradients to ``max_norm`` itself (as ClipGradNorm does) and keeps
    the norm it saw before clipping."""

    def __init__(self, max_norm: float) -> None:
        self.max_norm, self.norms = max_norm, []

    def on_before_step(self, model, optimizer):
        self.norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), self.max_norm)))


def _reference_clipped_run(clips: list[float], steps: int = 6):
    """A hand-written loop clipping with ``torch.nn.utils.clip_grad_norm_`` at each of ``clips``
    in turn: the model and the norm before the first clip at each step."""
    x, y = _data(32)
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    norms = []
    for t in range(steps):
        xb, yb = _batches(x, y, 8)[t % 4]
        opt.zero_grad(set_to_none=True)
        nn.functional.mse_loss(m(xb), yb).backward()
        norms += [float(nn.utils.clip_grad_norm_(m.parameters(), c)) for c in clips][:1]
        opt.step()
    return m, norms


def test_the_recorded_grad_norm_is_the_one_before_a_hook_clipped():
    """With fit(track_grad_norm=True) and a callback that clips in on_before_step
    (ClipGradNorm), StepInfo.grad_norm and FitResult.grad_norms were the norm it left (the
    clip value at every step), not the norm before clipping that StepInfo documents."""
    x, y = _data(32)
    for grad_clip, clips in ((None, [0.01]), (0.5, [0.01, 0.5]), (0.005, [0.01, 0.005])):
        ref, want = _reference_clipped_run(clips)
        m = _model()
        hook, seen = _ClipHook(0.01), []

        class Seen(Callback):
            def on_step_end(self, info):
                seen.append(info.grad_norm)

        res = fit(m, torch.optim.SGD(m.parameters(), lr=0.1), _batches(x, y, 8), num_steps=6,
                  loss_fn=nn.functional.mse_loss, callbacks=[hook, Seen()],
                  track_grad_norm=True, grad_clip=grad_clip)
        assert min(want) > 0.5  # every step was clipped
        assert res.grad_norms == pytest.approx(want, rel=1e-6) == seen == hook.norms
        for p, q in zip(m.parameters(), ref.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_fits_clip_after_hooks_that_only_read_reuses_the_norm_and_trains_bitwise_alike(
        monkeypatch):
    """A hook that changes no gradient (an LR scaler, a monitor) leaves fit's clip with the
    norm computed before the hooks: one norm per step, and the same training as without it."""
    x, y = _data(32)
    runs = {}
    for hooked in (False, True):
        m = _model()
        opt = torch.optim.SGD(m.parameters(), lr=0.3)

        class ReadOnly(Callback):  # reads the gradients, rewrites the LR
            def on_before_step(self, model, optimizer):
                assert all(p.grad is not None for p in model.parameters())
                optimizer.param_groups[0]["lr"] = 0.3

        runs[hooked] = (fit(m, opt, _batches(x, y, 8), num_steps=8,
                            loss_fn=nn.functional.mse_loss, grad_clip=0.5,
                            callbacks=[ReadOnly()] if hooked else []), m)
    (plain, m0), (hooked, m1) = runs[False], runs[True]
    assert hooked.grad_norms == plain.grad_norms and max(plain.grad_norms) > 0.5
    for p, q in zip(m0.parameters(), m1.parameters()):
        assert torch.equal(p, q)
    calls = []
    real_norm, real_clip = train.global_grad_norm, torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(train, "global_grad_norm", lambda ps: calls.append(1) or real_norm(ps))
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_",
                        lambda *a, **k: calls.append(1) or real_clip(*a, **k))
    m = _model()
    fit(m, torch.optim.SGD(m.parameters(), lr=0.3), _batches(x, y, 8), num_steps=8,
        loss_fn=nn.functional.mse_loss, grad_clip=0.5, track_grad_norm=True, callbacks=[ReadOnly()])
    assert len(calls) == 8  # one norm per step


def test_fits_evaluate_runs_in_eval_mode_without_grad_and_leaves_batchnorm_alone():
    """fit(evaluate=...) ran the user's function in train mode with autograd on: a BatchNorm
    normalised the validation batch by its own statistics and folded it into its running
    statistics. It now runs as a callback's own evaluate does (``train.evaluating``)."""
    x, y = _data(32)
    xv = 3 * torch.randn(16, 5, generator=torch.Generator().manual_seed(9)) + 2
    yv = torch.zeros(16, 1)
    states = []

    def evaluate(model):
        states.append((model.training, model[1].training, torch.is_grad_enabled()))
        return float(nn.functional.mse_loss(model(xv), yv))

    def go(**kw):
        m = _model(bn=True)
        res = fit(m, torch.optim.SGD(m.parameters(), lr=0.01), _batches(x, y, 8), num_steps=8,
                  loss_fn=nn.functional.mse_loss, **kw)
        return m, res

    plain, _ = go()
    m, res = go(evaluate=evaluate, eval_every=4)
    assert states == [(False, False, False)] * 2
    assert torch.equal(m[1].running_mean, plain[1].running_mean)  # validation not folded in
    assert torch.equal(m[1].running_var, plain[1].running_var)
    assert m.training and m[1].training
    # the metric is the eval-mode one: the trained model's, in eval mode, on the val batch
    with train.evaluating(plain):
        assert res.evals[-1] == (8, float(nn.functional.mse_loss(plain(xv), yv)))


def test_a_run_that_raises_gives_each_started_callback_on_train_error():
    """A run that raised never called on_train_end: a logger's file stayed open and unwritten.
    Every callback whose on_train_start ran and whose on_train_end did not gets
    on_train_error(exc) instead, then the exception propagates."""
    x, y = _data(16)
    events = []

    class Rec(Callback):
        def __init__(self, name, fail_at=None, fail_start=False, fail_error=False,
                     fail_end=False):
            self.name, self.fail_at = name, fail_at
            self.fail_start, self.fail_error, self.fail_end = fail_start, fail_error, fail_end

        def on_train_start(self, model, optimizer):
            if self.fail_start:
                raise RuntimeError(f"{self.name} cannot start")
            events.append((self.name, "start"))

        def on_step_end(self, info):
            if info.step == self.fail_at:
                raise RuntimeError("boom")

        def on_train_end(self, result):
            if self.fail_end:
                raise RuntimeError(f"{self.name} cannot end")
            events.append((self.name, "end"))

        def on_train_error(self, exc):
            events.append((self.name, "error", str(exc)))
            if self.fail_error:
                raise OSError("disk full")

    class DuckTyped:  # no on_train_error: skipped
        def on_train_start(self, model, optimizer): events.append(("duck", "start"))
        def on_step_end(self, info): return None
        def on_eval(self, step, metric): return None
        def on_train_end(self, result): events.append(("duck", "end"))

    def go(cbs):
        events.clear()
        m = _model()
        return fit(m, torch.optim.SGD(m.parameters(), lr=0.01), [(x, y)], num_steps=10,
                   loss_fn=nn.functional.mse_loss, callbacks=cbs)

    with pytest.raises(RuntimeError, match="boom") as err:
        go([Rec("a", fail_error=True), DuckTyped(), Rec("b", fail_at=3), Rec("c")])
    assert events == [("a", "start"), ("duck", "start"), ("b", "start"), ("c", "start"),
                      ("a", "error", "boom"), ("b", "error", "boom"), ("c", "error", "boom")]
    if hasattr(err.value, "add_note"):  # the hook's own failure is said under the run's error
        assert any("on_train_error raised OSError: disk full" in n for n in err.value.__notes__)
    with pytest.raises(RuntimeError, match="b cannot start"):
        go([Rec("a"), Rec("b", fail_start=True), Rec("c")])
    assert events == [("a", "start"), ("a", "error", "b cannot start")]
    with pytest.raises(RuntimeError, match="b cannot end"):  # (an SWA whose BN pass fails)
        go([Rec("a"), Rec("b", fail_end=True), Rec("c")])
    assert events[-3:] == [("a", "end"), ("b", "error", "b cannot end"),
                           ("c", "error", "b cannot end")]
    go([Rec("a"), Rec("b")])  # a completed run: on_train_end only
    assert events == [("a", "start"), ("b", "start"), ("a", "end"), ("b", "end")]


def _half_linear() -> tuple[nn.Module, list]:
    """A float16 model whose global gradient norm (90,531) exceeds float16's 65,504 while its
    loss and every gradient element are finite."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(256, 512, generator=g).abs() * 5000).half()
    torch.manual_seed(0)
    return nn.Linear(512, 1).half(), [(x, torch.zeros(256, 1).half())]


def test_clipping_float16_gradients_beyond_65504_clips_by_their_float32_norm():
    """PyTorch's clip_grad_norm_ sums float16 norms in float16: inf past 65,504, a factor of 0,
    and fit(grad_clip=...) / ClipGradNorm zeroed the step (while a no-op hook, which made fit
    reuse global_grad_norm's float32 norm, clipped). Every path now clips alike."""
    from lrkit.callbacks import ClipGradNorm

    def loss_fn(out, t):
        return (out - t).mean()

    m, batches = _half_linear()
    loss_fn(m(batches[0][0]), batches[0][1]).backward()
    grads = [p.grad.double() for p in m.parameters()]  # the reference: float64, by hand
    norm = math.sqrt(sum(float((g * g).sum()) for g in grads))
    assert 65504 < norm < 1e5 and all(bool(g.isfinite().all()) for g in grads)
    want = [p.detach().double() - 1e-3 * g / (norm + 1e-6) for p, g in zip(m.parameters(), grads)]

    class Noop(Callback):
        def on_before_step(self, model, optimizer):
            pass

    moved = {}
    for label, kw, cbs in (("grad_clip", dict(grad_clip=1.0), []),
                           ("hook", dict(grad_clip=1.0), [Noop()]),
                           ("ClipGradNorm", dict(track_grad_norm=True), [ClipGradNorm(1.0)])):
        m, batches = _half_linear()
        res = fit(m, torch.optim.SGD(m.parameters(), lr=1e-3), batches, num_steps=1,
                  loss_fn=loss_fn, callbacks=cbs, **kw)
        assert res.grad_norms == [pytest.approx(norm, rel=1e-6)], label
        if cbs and isinstance(cbs[0], ClipGradNorm):
            assert cbs[0].norms == res.grad_norms and cbs[0].clipped == 1
        for p, w in zip(m.parameters(), want):  # moved by lr x 1, to float16's rounding
            torch.testing.assert_close(p.double(), w, rtol=1e-3, atol=1e-6)
        moved[label] = [p.detach().clone() for p in m.parameters()]
    for label in ("hook", "ClipGradNorm"):
        assert all(torch.equal(p, q) for p, q in zip(moved["grad_clip"], moved[label])), label
    # a truly non-finite float16 gradient: PyTorch's clip, bitwise (norm inf, factor 0)
    for bad in (math.inf, math.nan):
        ours, ref = nn.Linear(4, 2).half(), nn.Linear(4, 2).half()
        for p, q in zip(ours.parameters(), ref.parameters()):
            p.grad = torch.ones_like(p)
            p.grad.view(-1)[0] = bad
            q.grad = p.grad.clone()
        got = train.clip_grad_norm(list(ours.parameters()), 1.0)
        expected = float(torch.nn.utils.clip_grad_norm_(list(ref.parameters()), 1.0))
        assert (math.isnan(got) and math.isnan(expected)) or got == expected
        for p, q in zip(ours.parameters(), ref.parameters()):
            assert torch.equal(p.grad.isnan(), q.grad.isnan())
            assert torch.equal(p.grad.nan_to_num(), q.grad.nan_to_num())


def test_snapshot_puts_a_tensor_lr_back_into_the_users_tensor_and_torchs_flags_back():
    """A sweep writes float LRs into the groups; the restore put back a copy of a tensor LR
    (lr=torch.tensor(0.01)), and the user's own handle on it no longer reached the optimizer.
    An attached scheduler's step wrapper sets optimizer._opt_called on the first step: the
    restore takes it away again (torch warns about a scheduler stepped first from it)."""
    x, y = _data(32)
    m = _model()
    lr = torch.tensor(0.01)
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    torch.optim.lr_scheduler.StepLR(opt, step_size=10)
    assert not hasattr(opt, "_opt_called")
    snap = snapshot(m, opt)
    fit(m, opt, _batches(x, y, 8), num_steps=4, loss_fn=nn.functional.mse_loss,
        schedule=lambda t: 0.1 * (t + 1))
    assert opt.param_groups[0]["lr"] is not lr and opt._opt_called
    snap.restore()
    assert opt.param_groups[0]["lr"] is lr and lr.item() == torch.tensor(0.01).item()
    assert not hasattr(opt, "_opt_called")
    lr.fill_(0.001)  # the user's own decay, in place, reaches the optimizer
    assert float(opt.param_groups[0]["lr"]) == float(torch.tensor(0.001))


def test_snapshot_restores_a_modules_extra_state_as_a_copy_each_time():
    x, y = _data(32)
    m = CountingNet(5, 8, nn.Tanh)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    w0 = [p.detach().clone() for p in m.parameters()]
    snap = snapshot(m, opt)
    for _ in range(2):  # restored twice: the snapshot's copy is never the model's object
        fit(m, opt, _batches(x, y, 8), num_steps=3, loss_fn=nn.functional.mse_loss)
        m.vocab.append("c")
        assert m.calls == 3
        snap.restore()
        assert m.calls == 0 and m.vocab == ["a", "b"]
        assert all(torch.equal(p, q) for p, q in zip(m.parameters(), w0))


# ------------------------------------------------------------------ batches on their device
class _BatchEncoding(collections.UserDict):
    """What a Hugging Face tokenizer returns: a UserDict (not a dict) whose ``to`` moves it
    in place."""

    def to(self, device):  # pragma: no cover - lrkit rebuilds it, the user's object untouched
        self.data = {k: v.to(device) for k, v in self.data.items()}
        return self


class _MyBatch:
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def to(self, device):
        return _MyBatch(self.x.to(device), self.y.to(device))


_Pair = collections.namedtuple("_Pair", "x y")


def test_to_device_moves_namedtuples_mappings_and_objects_with_a_to_method():
    """``_to_device`` rebuilt a namedtuple as ``NT(generator)`` (a TypeError: fit, find_lr and
    SWA's BatchNorm pass crashed on one), and handed a UserDict (``BatchEncoding``) or a
    custom batch class back unmoved. Shown on the meta device (no GPU here): CUDA takes the
    same path."""
    meta = torch.device("meta")
    x, y = torch.randn(4, 5), torch.randn(4, 1)
    moved = train._to_device(_Pair(x, y), meta)
    assert type(moved) is _Pair and moved.x.device.type == "meta" and moved.y.shape == (4, 1)
    enc = _BatchEncoding({"input_ids": x, "labels": y})
    enc.extra = "kept"
    moved = train._to_device(enc, meta)
    assert type(moved) is _BatchEncoding and moved.extra == "kept"
    assert moved["input_ids"].device.type == "meta" and moved["labels"].device.type == "meta"
    assert enc["input_ids"] is x  # the user's batch is left where it was
    od = train._to_device(collections.OrderedDict(a=x, b=[y, 3]), meta)
    assert type(od) is collections.OrderedDict and od["b"][0].device.type == "meta" \
        and od["b"][1] == 3
    assert train._to_device(_MyBatch(x, y), meta).x.device.type == "meta"
    assert train._to_device({"a": x}, meta)["a"].device.type == "meta"
    assert train._to_device("text", meta) == "text"


def test_fit_with_a_device_trains_on_namedtuple_batches_as_on_pairs():
    x, y = _data()
    pairs = _batches(x, y, 16)
    named = [_Pair(a, b) for a, b in pairs]
    m1, m2 = _model(), _model()
    r1 = fit(m1, torch.optim.SGD(m1.parameters(), lr=0.05), pairs, num_steps=6,
             loss_fn=nn.functional.mse_loss, device="cpu")
    r2 = fit(m2, torch.optim.SGD(m2.parameters(), lr=0.05), named, num_steps=6,
             loss_fn=nn.functional.mse_loss, device="cpu")
    assert r1.losses == r2.losses
    assert all(torch.equal(p, q) for p, q in zip(m1.parameters(), m2.parameters()))


def test_cpu_copy_keeps_a_namedtuple():
    state = {"pair": _Pair(torch.ones(2), [torch.zeros(1), 7])}
    copied = train._cpu_copy(state)
    assert type(copied["pair"]) is _Pair
    assert torch.equal(copied["pair"].x, state["pair"].x)
    assert copied["pair"].x is not state["pair"].x and copied["pair"].y[1] == 7


# ---------------------------------------------------------------------- epochs of a loader
def test_fit_reads_a_shuffling_loader_epoch_after_epoch_as_a_plain_loop_does():
    """At the end of each epoch ``_cycle`` called ``iter(loader)`` only to ask whether it was
    one-shot: a DataLoader then drew a seed from its generator (and started workers), and
    every later epoch was shuffled otherwise than in a plain loop over the same loader."""
    x, y = _data()
    ds = torch.utils.data.TensorDataset(x, y)

    def loader():
        return torch.utils.data.DataLoader(ds, batch_size=16, shuffle=True,
                                           generator=torch.Generator().manual_seed(1))

    seen = []

    def step_fn(model, batch):
        seen.append(batch[1].clone())
        return nn.functional.mse_loss(model(batch[0]), batch[1])

    m = _model()
    fit(m, torch.optim.SGD(m.parameters(), lr=0.01), loader(), num_steps=12, step_fn=step_fn)
    plain = loader()
    ref = [b[1] for _ in range(3) for b in plain]
    assert len(seen) == 12 and all(torch.equal(a, b) for a, b in zip(seen, ref))


def test_data_that_runs_dry_is_named_with_what_it_gave():
    x, y = _data()
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    with pytest.raises(ValueError, match=r"batches yielded 4 batches in its first epoch, then "
                                         r"none in the next: .* needs 10 batches"):
        fit(m, opt, OnceStream(_batches(x, y, 16)), num_steps=10,
            loss_fn=nn.functional.mse_loss)
    with pytest.raises(ValueError, match=r"^batches is empty: it yielded no batch"):
        fit(m, opt, OnceStream([]), num_steps=10, loss_fn=nn.functional.mse_loss)
