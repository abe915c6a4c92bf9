"""Hypergradient optimizers (SGDHD, AdamHD) and optimizers by name.

References are independent of the code under test: hand-written scalar recursions of Baydin et
al. (2018) on a quadratic, the slow ``_reference`` twins, and PyTorch's own SGD / Adam / AdamW.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from lrkit import schedules
from lrkit.optim import SGDHD, AdamHD, default_lr, make_optimizer, names
from lrkit.optim._reference import AdamHDReference, SGDHDReference
from lrkit.torch import LRSchedule

# f(θ) = ½ Σ a_i θ_i²  ->  ∇f = a ⊙ θ
A = [1.0, 4.0]
THETA0 = [1.0, -0.5]


def _quadratic_run(opt_cls, steps: int, set_to_none: bool = True,
                   **kw) -> tuple[list[list[float]], list[float]]:
    theta = torch.tensor(THETA0, dtype=torch.float64, requires_grad=True)
    opt = opt_cls([theta], **kw)
    a = torch.tensor(A, dtype=torch.float64)
    thetas, lrs = [], []
    for _ in range(steps):
        opt.zero_grad(set_to_none=set_to_none)
        (0.5 * (a * theta**2).sum()).backward()
        opt.step()
        thetas.append(theta.detach().tolist())
        lrs.append(opt.param_groups[0]["lr"])
    return thetas, lrs


def _hand_sgdhd(steps: int, lr: float, beta: float, mu: float = 0.0, nesterov: bool = False,
                skip: tuple[int, ...] = ()) -> tuple[list[list[float]], list[float]]:
    """Baydin et al. 2018, Algorithms SGD-HD / SGDN-HD, in plain Python floats (no adaptation at
    the steps in ``skip``, 0-based)."""
    th = list(THETA0)
    alpha, prev_d, v = lr, None, None
    thetas, lrs = [], []
    for t in range(steps):
        g = [a * x for a, x in zip(A, th)]
        if prev_d is not None and t not in skip:
            alpha = alpha + beta * sum(gi * di for gi, di in zip(g, prev_d))
        if mu == 0:
            d = g
        else:
            v = list(g) if v is None else [mu * vi + gi for vi, gi in zip(v, g)]
            d = [gi + mu * vi for gi, vi in zip(g, v)] if nesterov else v
        th = [x - alpha * di for x, di in zip(th, d)]
        prev_d = list(d)
        thetas.append(th)
        lrs.append(alpha)
    return thetas, lrs


def _hand_adamhd(steps: int, lr: float, beta: float, b1: float = 0.9, b2: float = 0.999,
                 eps: float = 1e-8) -> tuple[list[list[float]], list[float]]:
    """Baydin et al. 2018, Algorithm Adam-HD, in plain Python floats."""
    th = list(THETA0)
    alpha, prev_d = lr, None
    m, v = [0.0, 0.0], [0.0, 0.0]
    thetas, lrs = [], []
    for t in range(1, steps + 1):
        g = [a * x for a, x in zip(A, th)]
        if prev_d is not None:
            alpha = alpha + beta * sum(gi * di for gi, di in zip(g, prev_d))
        m = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g)]
        v = [b2 * vi + (1 - b2) * gi * gi for vi, gi in zip(v, g)]
        d = [(mi / (1 - b1**t)) / (math.sqrt(vi / (1 - b2**t)) + eps) for mi, vi in zip(m, v)]
        th = [x - alpha * di for x, di in zip(th, d)]
        prev_d = d
        thetas.append(th)
        lrs.append(alpha)
    return thetas, lrs


@pytest.mark.parametrize("kind", ["plain", "momentum", "nesterov"])
def test_sgdhd_matches_hand_computation_on_a_quadratic(kind):
    mu = 0.0 if kind == "plain" else 0.9
    kw = dict(lr=0.05, hypergrad_lr=0.01, momentum=mu, nesterov=kind == "nesterov")
    got_th, got_lr = _quadratic_run(SGDHD, 6, **kw)
    exp_th, exp_lr = _hand_sgdhd(6, 0.05, 0.01, mu, kind == "nesterov")
    assert got_lr == pytest.approx(exp_lr, rel=1e-12)
    for g, e in zip(got_th, exp_th):
        assert g == pytest.approx(e, rel=1e-12, abs=1e-15)
    assert got_lr[1] != got_lr[0]  # the LR really moved


def test_sgdhd_first_steps_by_hand():
    # step 1: g=(1, -2), θ=(0.95, -0.4); step 2: g=(0.95, -1.6), α=0.05+0.01*(0.95+3.2)=0.0915
    th, lrs = _quadratic_run(SGDHD, 2, lr=0.05, hypergrad_lr=0.01)
    assert lrs == pytest.approx([0.05, 0.0915], rel=1e-12)
    assert th[1] == pytest.approx([0.95 - 0.0915 * 0.95, -0.4 + 0.0915 * 1.6], rel=1e-12)


def test_plain_sgdhd_keeps_the_gradient_by_reference_and_copies_once_it_is_reused():
    # zero_grad(set_to_none=True): backward hands a fresh gradient each step, so d_{t-1} = g_{t-1}
    # is kept by reference (no copy) and the trajectory is the paper's
    theta = torch.tensor(THETA0, dtype=torch.float64, requires_grad=True)
    opt = SGDHD([theta], lr=0.05, hypergrad_lr=0.01)
    for _ in range(3):
        opt.zero_grad()
        (0.5 * (torch.tensor(A, dtype=torch.float64) * theta**2).sum()).backward()
        opt.step()
    assert opt.state[theta]["hd_prev"] is theta.grad and not opt.param_groups[0]["hd_copy"]
    # set_to_none=False reuses the gradient tensor in place: the kept g_1 is overwritten by g_2,
    # so step 2 cannot adapt; from then on SGD-HD copies and every later step is the paper's
    got_th, got_lr = _quadratic_run(SGDHD, 6, set_to_none=False, lr=0.05, hypergrad_lr=0.01)
    exp_th, exp_lr = _hand_sgdhd(6, 0.05, 0.01, skip=(1,))
    assert got_lr == pytest.approx(exp_lr, rel=1e-12)
    assert got_lr[1] == 0.05 and got_lr[2] != 0.05
    for g, e in zip(got_th, exp_th):
        assert g == pytest.approx(e, rel=1e-12, abs=1e-15)
    # with weight decay g_t + λθ is a new tensor each step: kept as it is, whatever zero_grad does
    for set_to_none in (True, False):
        _, lrs = _quadratic_run(SGDHD, 6, set_to_none=set_to_none, lr=0.05, hypergrad_lr=0.01,
                                weight_decay=0.1)
        if set_to_none:
            first = lrs
    assert lrs == first and lrs[1] != 0.05


def test_snapshot_restore_of_sgdhd_is_exact_and_leaves_the_gradient_alone():
    from lrkit.train import snapshot

    def run(interrupt: bool) -> list[torch.Tensor]:
        model = _mlp()
        opt = SGDHD(model.parameters(), lr=0.05, hypergrad_lr=0.01)
        _train(opt, model, 0, 4)
        _grads(model, 4)  # a fresh gradient, not yet stepped on; hd_prev still holds g_3
        if interrupt:
            snap = snapshot(model, opt, grads=True)
            _train(opt, model, 4, 9)
            opt.step()  # the state now refers to the live .grad tensors
            snap.restore()
        opt.step()
        _train(opt, model, 5, 10)
        return [p.detach().clone() for p in model.parameters()] + [
            torch.tensor(opt.param_groups[0]["lr"])]

    assert all(torch.equal(a, b) for a, b in zip(run(False), run(True)))
    # a restore without gradients leaves the live .grad as it is
    model = _mlp()
    opt = SGDHD(model.parameters(), lr=0.05, hypergrad_lr=0.01)
    _train(opt, model, 0, 2)
    snap = snapshot(model, opt)
    _train(opt, model, 2, 4)
    grads = [p.grad.clone() for p in model.parameters()]
    snap.restore()
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))


def test_adamhd_matches_hand_computation_on_a_quadratic():
    got_th, got_lr = _quadratic_run(AdamHD, 6, lr=0.05, hypergrad_lr=0.01)
    exp_th, exp_lr = _hand_adamhd(6, 0.05, 0.01)
    assert got_lr == pytest.approx(exp_lr, rel=1e-12)
    for g, e in zip(got_th, exp_th):
        assert g == pytest.approx(e, rel=1e-11, abs=1e-15)
    assert got_lr[-1] != got_lr[0]


def _mlp() -> torch.nn.Module:
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(),
                               torch.nn.Linear(8, 3)).double()


X = torch.randn(64, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
Y = torch.randint(0, 3, (64,), generator=torch.Generator().manual_seed(1))


def _grads(model: torch.nn.Module, t: int) -> None:
    idx = torch.randint(0, 64, (16,), generator=torch.Generator().manual_seed(t))
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(X[idx]), Y[idx]).backward()


CASES = [
    (SGDHD, SGDHDReference, dict(lr=0.05)),
    (SGDHD, SGDHDReference, dict(lr=0.05, momentum=0.9, weight_decay=1e-3)),
    (SGDHD, SGDHDReference, dict(lr=0.05, momentum=0.9, nesterov=True)),
    (SGDHD, SGDHDReference, dict(lr=0.05, momentum=0.5, dampening=0.3,
                                 hypergrad="multiplicative", hypergrad_lr=0.1)),
    (SGDHD, SGDHDReference, dict(lr=0.5, hypergrad_lr=1.0, lr_bounds=(0.5, 1.5))),
    (AdamHD, AdamHDReference, dict(lr=1e-2, hypergrad_lr=1e-4, weight_decay=1e-2)),
    (AdamHD, AdamHDReference, dict(lr=1e-2, hypergrad_lr=1e-4, weight_decay=0.1,
                                   decoupled_weight_decay=True, betas=(0.8, 0.99))),
    (AdamHD, AdamHDReference, dict(lr=1e-2, hypergrad="multiplicative", hypergrad_lr=0.05)),
]


@pytest.mark.parametrize("fast, slow, kw", CASES)
def test_foreach_optimizers_agree_with_reference_twins_step_by_step(fast, slow, kw):
    model = _mlp()
    opt = fast(model.parameters(), **kw)
    ref = slow(list(model.parameters()), **kw)
    for t in range(30):
        _grads(model, t)
        ref.step([p.grad for p in model.parameters()])
        opt.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(ref.lrs[-1], rel=1e-10)
        for p, q in zip(model.parameters(), ref.params()):
            torch.testing.assert_close(p.detach(), q, rtol=1e-10, atol=1e-12)
    if "lr_bounds" in kw:  # the bounded case really hits its bound
        assert opt.param_groups[0]["hd_clipped"] > 0
        assert min(ref.lrs) >= 0.25 - 1e-12 and max(ref.lrs) <= 0.75 + 1e-12


@pytest.mark.parametrize("ours, theirs, kw", [
    (SGDHD, torch.optim.SGD, dict(lr=0.1)),
    (SGDHD, torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=1e-3)),
    (SGDHD, torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    (AdamHD, torch.optim.Adam, dict(lr=1e-2, weight_decay=1e-3)),
    (AdamHD, torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.1)),
])
def test_zero_hypergrad_lr_is_the_torch_optimizer(ours, theirs, kw):
    kw_ours = dict(kw, hypergrad_lr=0.0)
    if theirs is torch.optim.AdamW:
        kw_ours["decoupled_weight_decay"] = True
    a, b = _mlp(), _mlp()
    oa, ob = ours(a.parameters(), **kw_ours), theirs(b.parameters(), **kw)
    for t in range(20):
        _grads(a, t)
        _grads(b, t)
        oa.step()
        ob.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    assert oa.param_groups[0]["lr"] == kw["lr"]


def test_adamhd_parameters_that_join_later_keep_their_own_step_count_as_torch_adam():
    a, b = _mlp(), _mlp()
    oa = AdamHD(list(a.parameters())[:2], lr=1e-2, hypergrad_lr=0.0)
    ob = torch.optim.Adam(list(b.parameters())[:2], lr=1e-2)
    for t in range(8):
        if t == 3:  # the last layer joins the group: its bias corrections start from step 1
            oa.param_groups[0]["params"].extend(list(a.parameters())[2:])
            ob.param_groups[0]["params"].extend(list(b.parameters())[2:])
        _grads(a, t)
        _grads(b, t)
        oa.step()
        ob.step()
    assert oa.state[list(a.parameters())[2]]["step"] == 5
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cls, kw", [(SGDHD, dict(hypergrad_lr=1e-3)),
                                     (SGDHD, dict(momentum=0.9, hypergrad_lr=1e-3)),
                                     (AdamHD, dict(hypergrad_lr=1e-3)),
                                     (SGDHD, dict(hypergrad="multiplicative"))])
def test_lr_grows_when_gradients_agree_and_shrinks_when_they_oscillate(cls, kw):
    # a small LR on a quadratic: successive gradients point the same way -> the LR grows
    # (heavy-ball momentum then overshoots, and the LR comes back down: look at the first steps)
    _, lrs = _quadratic_run(cls, 15, lr=1e-3 if cls is SGDHD else 1e-2, **kw)
    assert all(b > a for a, b in zip(lrs[1:5], lrs[2:6])) and lrs[-1] > 1.2 * lrs[0]
    # curvature 4: an LR above 2/4 overshoots, the gradient flips sign each step -> it shrinks
    _, lrs = _quadratic_run(cls, 15, lr=0.6 if cls is SGDHD else 2.0, **kw)
    assert lrs[-1] < lrs[0] and lrs[1] < lrs[0]


def test_each_param_group_adapts_its_own_lr():
    slow = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    fast = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    opt = SGDHD([{"params": [slow], "lr": 1e-3}, {"params": [fast], "lr": 1.5}], hypergrad_lr=0.01)
    for _ in range(10):
        opt.zero_grad()
        (slow**2 + fast**2).sum().backward()  # curvature 2: lr 1.5 > 1 oscillates
        opt.step()
    assert opt.param_groups[0]["lr"] > 1e-3 and opt.param_groups[1]["lr"] < 1.5


def _train(opt, model, start, stop) -> list[float]:
    lrs = []
    for t in range(start, stop):
        _grads(model, t)
        opt.step()
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


@pytest.mark.parametrize("cls, kw", [(SGDHD, dict(lr=0.05, momentum=0.9, nesterov=True)),
                                     (SGDHD, dict(lr=0.05)),
                                     (AdamHD, dict(lr=1e-2, hypergrad_lr=1e-4))])
def test_resume_from_state_dict_reproduces_the_trajectory(cls, kw):
    model = _mlp()
    opt = cls(model.parameters(), **kw)
    full = _train(opt, model, 0, 20)
    final = [p.detach().clone() for p in model.parameters()]

    model2 = _mlp()
    opt2 = cls(model2.parameters(), **kw)
    first = _train(opt2, model2, 0, 10)
    buf = io.BytesIO()
    torch.save({"model": model2.state_dict(), "opt": opt2.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)  # plain data only
    model3 = _mlp()
    model3.load_state_dict(ckpt["model"])
    opt3 = cls(model3.parameters(), **kw)
    opt3.load_state_dict(ckpt["opt"])
    rest = _train(opt3, model3, 10, 20)
    assert first + rest == full
    for p, q in zip(model3.parameters(), final):
        assert torch.equal(p.detach(), q)


def test_schedule_multiplies_the_adapted_lr():
    model = _mlp()
    steps = 25
    sched_fn = schedules.family("warmup_cosine", 0.05, steps, warmup_steps=5)
    opt = SGDHD(model.parameters(), lr=0.05, momentum=0.9)
    sched = LRSchedule(opt, sched_fn)
    ref = SGDHDReference(list(model.parameters()), lr=0.05, momentum=0.9)
    g = opt.param_groups[0]
    for t in range(steps):
        factor = sched_fn(t) / 0.05
        # what a logger sees before the step is the LR the step will use: α · s(t) / lr0
        assert g["lr"] == pytest.approx(g["hd_lr"] * factor, rel=1e-12)
        _grads(model, t)
        ref.step([p.grad for p in model.parameters()], factor=factor)
        opt.step()
        sched.step()
        assert ref.lrs[-1] == pytest.approx(ref.alpha * factor, rel=1e-12)
        for p, q in zip(model.parameters(), ref.params()):
            torch.testing.assert_close(p.detach(), q, rtol=1e-10, atol=1e-12)
    assert g["hd_lr"] != 0.05  # adaptation happened under the schedule


def test_without_adaptation_the_schedule_alone_sets_the_lr():
    a, b = _mlp(), _mlp()
    spec = schedules.family("cosine", 0.1, 20)
    oa = SGDHD(a.parameters(), lr=0.1, momentum=0.9, hypergrad_lr=0.0)
    ob = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9)
    sa, sb = LRSchedule(oa, spec), LRSchedule(ob, spec)
    for t in range(20):
        assert oa.param_groups[0]["lr"] == ob.param_groups[0]["lr"]
        _grads(a, t)
        _grads(b, t)
        oa.step()
        ob.step()
        sa.step()
        sb.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_lr_bounds_hold():
    _, lrs = _quadratic_run(SGDHD, 30, lr=1e-3, hypergrad_lr=10.0, lr_bounds=(0.5, 4.0))
    assert max(lrs) == pytest.approx(4e-3) and min(lrs) >= 0.5e-3


@pytest.mark.parametrize("rule", ["additive", "multiplicative"])
@pytest.mark.parametrize("high", [1e3, math.inf])
def test_an_overflowing_hypergradient_falls_to_the_low_bound(rule, high):
    # float32 θ = 1e20: step 2's g·d = 2 x (2 x 9.98e19)^2 overflows to inf (so does the
    # multiplicative rule's norm product, inf / inf = NaN): the LR is the low bound 1e-6, never
    # inf (upper bound inf) nor 1e-3 x high, and θ stays finite: θ_t = θ_{t-1} (1 - 2 α_t)
    w = torch.nn.Parameter(torch.tensor([1e20, 1e20]))
    opt = SGDHD([w], lr=1e-3, hypergrad_lr=0.5, hypergrad=rule, lr_bounds=(1e-3, high))
    lrs, theta = [], 1e20
    for _ in range(3):
        opt.zero_grad()
        (w ** 2).sum().backward()
        opt.step()
        lrs.append(opt.param_groups[0]["lr"])
    for lr in lrs:
        theta = float(torch.tensor(theta * (1 - 2 * lr), dtype=torch.float32))
    assert lrs == [1e-3, 1e-6, 1e-6]
    assert opt.param_groups[0]["hd_clipped"] == 2
    assert w.tolist() == pytest.approx([theta, theta], rel=1e-6)
    ref = SGDHDReference([w], lr=1e-3, hypergrad_lr=0.5, lr_bounds=(1e-3, high))
    ref.prev_d = torch.tensor([math.inf, 1.0], dtype=torch.float64)
    ref.step([torch.tensor([1.0, 1.0])])
    assert ref.lrs == [1e-6]  # the reference twin clips a non-finite LR the same way


@pytest.mark.parametrize("lr", [torch.tensor(0.1), torch.tensor([0.1]), np.float32(0.1),
                                np.float64(0.1), torch.tensor(0.1, dtype=torch.float64)])
def test_tensor_and_numpy_lrs_are_taken_as_torch_sgd_takes_them(lr):
    value = float(lr.item())
    _, lrs = _quadratic_run(SGDHD, 4, lr=lr, hypergrad_lr=0.0)
    assert lrs == [value] * 4 and type(lrs[0]) is float
    got, got_lrs = _quadratic_run(SGDHD, 4, lr=lr, hypergrad_lr=0.01)
    exp, exp_lrs = _hand_sgdhd(4, value, 0.01)
    assert got_lrs == pytest.approx(exp_lrs, rel=1e-12)
    assert got[-1] == pytest.approx(exp[-1], rel=1e-12)
    theirs, _ = _quadratic_run(torch.optim.SGD, 4, lr=lr)
    ours, _ = _quadratic_run(SGDHD, 4, lr=lr, hypergrad_lr=0.0)
    assert ours[-1] == pytest.approx(theirs[-1], rel=1e-12)  # torch.optim.SGD, same lr
    adam = AdamHD([torch.nn.Parameter(torch.zeros(2))], lr=lr)
    assert adam.param_groups[0]["lr"] == value and adam.param_groups[0]["hd_lr0"] == value


def test_tensor_lrs_in_groups_and_schedule_writes():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = SGDHD([{"params": [a], "lr": torch.tensor(0.5)}, {"params": [b]}], lr=np.float32(0.25))
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.25]
    opt.param_groups[0]["lr"] = np.float32(0.25)  # a schedule writing a NumPy scalar: c = 0.5
    assert opt.param_groups[0]["hd_factor"] == 0.5 and opt.param_groups[0]["lr"] == 0.25


@pytest.mark.parametrize("lr, error", [(torch.tensor([0.1, 0.2]), TypeError),
                                       (torch.tensor(True), TypeError),
                                       (np.bool_(True), TypeError),
                                       (torch.tensor(-0.1), ValueError),
                                       (np.float32("nan"), ValueError)])
def test_bad_tensor_and_numpy_lrs_are_named(lr, error):
    with pytest.raises(error, match="^lr must be"):
        SGDHD([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def test_extra_memory_is_one_gradient_copy():
    def state_bytes(opt):
        return sum(v.numel() * v.element_size() for s in opt.state.values()
                   for v in s.values() if isinstance(v, torch.Tensor) and v.dim() > 0)

    model = _mlp()
    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    pairs = [(SGDHD(model.parameters(), lr=0.1), torch.optim.SGD(model.parameters(), lr=0.1), 1),
             (SGDHD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True),
              torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True), 1),
             (SGDHD(model.parameters(), lr=0.1, momentum=0.9),
              torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), 0),
             (AdamHD(model.parameters()), torch.optim.Adam(model.parameters()), 1)]
    for ours, theirs, copies in pairs:
        for t in range(3):
            for o in (ours, theirs):
                _grads(model, t)
                o.step()
        assert state_bytes(ours) - state_bytes(theirs) == copies * n_bytes


@pytest.mark.parametrize("cls, kw, name", [
    (SGDHD, dict(lr=-1.0), "lr"),
    (SGDHD, dict(lr=0.1, hypergrad_lr=-1e-3), "hypergrad_lr"),
    (SGDHD, dict(lr=0.1, hypergrad_lr=float("nan")), "hypergrad_lr"),
    (SGDHD, dict(lr=0.1, hypergrad="mult"), "hypergrad"),
    (SGDHD, dict(lr=0.1, hypergrad="multiplicative", hypergrad_lr=1.5), "hypergrad_lr"),
    (SGDHD, dict(lr=0.1, lr_bounds=(0.0, 10.0)), "lr_bounds[0]"),
    (SGDHD, dict(lr=0.1, lr_bounds=(0.1, 0.5)), "lr_bounds[1]"),
    (SGDHD, dict(lr=0.1, lr_bounds=3.0), "lr_bounds"),
    (SGDHD, dict(lr=0.1, momentum=1.0), "momentum"),
    (SGDHD, dict(lr=0.1, nesterov=True), "nesterov"),
    (SGDHD, dict(lr=0.1, weight_decay=-1.0), "weight_decay"),
    (AdamHD, dict(betas=(0.9, 1.0)), "betas[1]"),
    (AdamHD, dict(eps=0.0), "eps"),
    (AdamHD, dict(betas=0.9), "betas"),
])
def test_bad_hyper_parameters_are_named(cls, kw, name):
    p = torch.nn.Parameter(torch.zeros(2))
    import re

    with pytest.raises((ValueError, TypeError), match="^" + re.escape(name)):
        cls([p], **kw)


def test_bad_group_values_are_named_and_lr_writes_are_checked():
    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="momentum"):
        SGDHD([{"params": [p], "momentum": 2.0}], lr=0.1)
    opt = SGDHD([p], lr=0.1)
    with pytest.raises(ValueError, match="param_group\\['lr'\\]"):
        opt.param_groups[0]["lr"] = -0.5


def test_every_name_builds_and_trains_through_recipe_and_run():
    from lrkit import train
    from tests.tiny_task import make_task

    task = make_task(steps=10)
    for n in names():
        m = torch.nn.Linear(3, 1)
        assert isinstance(make_optimizer(n, m.parameters(), default_lr(n)), torch.optim.Optimizer)
    import dataclasses

    for n in ("sgdhd", "adamhd"):
        recipe = dataclasses.replace(task.recipe, optimizer=n)
        r = train.run(dataclasses.replace(task, recipe=recipe), 0.01, seed=0)
        assert math.isfinite(r.metric) and len(r.lrs) == 10
        assert r.lrs[-1] != r.lrs[0]  # the logged LR is the adapted one
    with pytest.raises(ValueError, match="optimizer"):
        make_optimizer("sgdh", [torch.nn.Parameter(torch.zeros(1))], 0.1)


def test_bench_optimizers_cli_gives_one_table(tmp_path, monkeypatch, capsys):
    import json

    from lrkit import bench, cli

    monkeypatch.setenv("LRKIT_CACHE", str(tmp_path / "cache"))
    assert bench.parse_optimizer("sgdhd:hypergrad=multiplicative:lr=0.5") == (
        "sgdhd", {"hypergrad": "multiplicative", "lr": 0.5})
    with pytest.raises(ValueError, match="optimizer"):
        bench.parse_optimizer("sgdd")
    with pytest.raises(ValueError, match="key=value"):
        bench.parse_optimizer("sgd:lr")
    task = "tests.tiny_task:make_task"  # a reference: worker runs rebuild the task by name
    code = cli.main(["bench", "methods", "--task", task, "--points", "13", "--step-decades",
                     "0.5", "--seeds", "3", "--workers", "1", "--optimizers",
                     "sgd,sgdhd:hypergrad=multiplicative", "--optimizer-oracle",
                     "--out", str(tmp_path / "out")])
    assert code == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| tiny |")]
    assert [r.split("|")[2].strip() for r in rows] == ["sgd", "sgdhd:hypergrad=multiplicative"]
    assert "| tiny | sgd | 0.1 |" in (tmp_path / "out" / "optimizers.md").read_text()
    # the per-optimizer oracle: its own grid (cached), and the regrets computed from it
    results = json.loads((tmp_path / "out" / "optimizers.json").read_text())["results"]
    task_oracle = bench.oracle(task, points=13, step_decades=0.5, seeds=(0, 1, 2), workers=1,
                               progress=False)
    for res in results:
        own = bench.oracle(task, optimizer=res["optimizer"], points=13, step_decades=0.5,
                           seeds=(0, 1, 2), workers=1, progress=False)
        assert own.optimizer == res["optimizer"] and 0.1 in own.grid
        assert res["own_best_lr"] == own.best_lr
        mean = sum(res["metrics"]) / 3
        assert res["default_vs_own"] == pytest.approx((mean - own.best_metric) / own.best_metric)
        assert res["regret"] == pytest.approx(task_oracle.regret(mean))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (runs on the GPU check)")
@pytest.mark.parametrize("cls, kw", [(SGDHD, {"lr": 0.01, "momentum": 0.9, "hypergrad_lr": 1e-4}),
                                     (AdamHD, {"lr": 1e-3, "hypergrad_lr": 1e-4})])
def test_cuda_trajectory_matches_the_cpu(cls, kw):
    # hypergrad_lr is set so that the LR adapts smoothly (here float32 and float64 runs on the
    # CPU agree to 1e-6): at SGD-HD's default 1e-3 this problem's LR bounces between its bounds
    # and any rounding difference changes the trajectory
    torch.manual_seed(0)
    x = torch.randn(256, 16)
    y = x @ torch.randn(16, 1)
    runs = {}
    for dev in ("cpu", "cuda"):
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(),
                                    torch.nn.Linear(32, 1)).to(dev)
        opt = cls(model.parameters(), **kw)
        xd, yd = x.to(dev), y.to(dev)
        lrs = []
        for _ in range(50):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(xd), yd).backward()
            opt.step()
            lrs.append(opt.param_groups[0]["lr"])
        runs[dev] = (lrs, [p.detach().cpu() for p in model.parameters()])
    assert runs["cuda"][0] == pytest.approx(runs["cpu"][0], rel=1e-3)
    for a, b in zip(runs["cpu"][1], runs["cuda"][1]):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-4)
