"""Callbacks on lrkit's real loop: monitor, logs, early stopping, clipping, plateau decay, SWA."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from lrkit import tasks, train
from lrkit.callbacks import (LOG_FIELDS, SWA, ClipGradNorm, DecayOnFinding, DecayOnPlateau,
                             EarlyStopping, JsonlLogger, MonitorCallback, TensorBoardLogger, _has_pre_step_hook)
from lrkit.monitor import Monitor, read_log, replay
from lrkit.torch import Plateau
from tests.tiny_task import CountingNet

needs_hook = pytest.mark.skipif(not _has_pre_step_hook(),
                                reason="lrkit.train.fit has no on_before_step hook yet")


def _linear(seed: int = 0, n: int = 64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-1.0], [2.0]])
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, n, 16)]
    torch.manual_seed(seed)
    return nn.Linear(3, 1), batches


def test_monitor_callback_on_real_runs_matches_replay_of_its_log(tmp_path):
    task = tasks.get("digits")
    steps = task.recipe.steps
    results = {}
    for name, lr in (("low", 0.0018), ("high", 17.8)):
        path = tmp_path / f"{name}.jsonl"
        cb = MonitorCallback(total_steps=steps, val_mode="max",
                             loggers=[JsonlLogger(path, meta={"steps": steps})])
        train.run(task, lr, seed=0, callbacks=[cb])
        results[name] = cb.monitor
        # the log carries the same findings, and a replay of it finds them again
        log = read_log(path)
        assert [f.to_dict() for f in log.findings] == [f.to_dict() for f in cb.monitor.findings]
        again = replay(log, Monitor(val_mode="max", total_steps=steps))
        assert [f.to_dict() for f in again.findings] == [f.to_dict() for f in cb.monitor.findings]
    assert results["low"].lr_findings[0].kind == "lr_too_low"
    assert results["high"].lr_findings[0].kind in ("diverged", "lr_too_high")


def test_a_log_cut_short_by_a_killed_run_is_read_up_to_its_last_whole_line(tmp_path, capsys):
    """A run killed while its logger wrote a line leaves a log whose last line is cut short
    (plain), or a gzip stream that ends early. ``read_log`` and ``lrkit monitor`` refused the
    whole log ("not a JSON object"), the one a user most wants to read; the whole lines are now
    read, the cut line is named and skipped, and a damaged line elsewhere is still an error."""
    import gzip

    from lrkit import cli

    task = tasks.get("logreg")
    full = tmp_path / "run.jsonl"
    cb = MonitorCallback(total_steps=task.recipe.steps, loggers=[JsonlLogger(full)])
    train.run(task, 1.0, seed=0, callbacks=[cb])
    whole = read_log(full)
    lines = full.read_bytes().split(b"\n")
    cut = b"\n".join(lines[:60]) + b"\n" + lines[60][: len(lines[60]) // 2]
    for suffix in (".jsonl", ".jsonl.gz"):
        path = tmp_path / f"cut{suffix}"
        # gzip: the stream itself ends early (its last 12 bytes, the trailer and some data, lost)
        path.write_bytes(gzip.compress(cut)[:-12] if suffix.endswith(".gz") else cut)
        log = read_log(path)
        n = len(log)
        assert 50 <= n <= 59 and log.cut_short in (60, 61)  # the header line, then steps
        assert list(log.step) == list(whole.step[:n]) and np.array_equal(log.loss,
                                                                          whole.loss[:n])
        assert cli.main(["monitor", str(path), "--no-plot"]) == 0
        assert "is cut short (the run stopped while writing it): skipped" in (
            capsys.readouterr().out)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 0, "loss": 1.0}\n{"step": 1, "loss": 0.9\n{"step": 2, "loss": 0.8}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not a JSON object"):
        read_log(bad)


def test_a_run_under_a_known_schedule_replays_with_it(tmp_path, capsys):
    """Given the run's schedule (digits under WSD), the live monitor reads the stable phase's
    plateau as the schedule's to fix; the log's meta carries the schedule's spec, and a replay
    of the log gives the same findings, action included."""
    from lrkit import schedules

    task = tasks.get("digits")
    steps = task.recipe.steps
    wsd = schedules.family("wsd", 0.18, steps)
    path = tmp_path / "wsd.jsonl"
    cb = MonitorCallback(Monitor(val_mode="max", total_steps=steps, schedule=wsd),
                         loggers=[JsonlLogger(path)])
    train.run(task, wsd, seed=0, callbacks=[cb])
    plateau = cb.monitor.finding("plateau")
    assert plateau is not None and "nothing to change" in plateau.action
    log = read_log(path)
    assert log.meta["schedule"] == wsd.spec
    assert [f.to_dict() for f in replay(log).findings] == [
        f.to_dict() for f in cb.monitor.findings]
    from lrkit import cli  # ... and `lrkit monitor LOG` replays with it too

    assert cli.main(["monitor", str(path), "--json", "--no-plot"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == [f.to_dict() for f in cb.monitor.findings]


def test_jsonl_fields_grad_norm_and_nan(tmp_path):
    model, batches = _linear()
    path = tmp_path / "log.jsonl"
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    out = train.fit(model, opt, batches, num_steps=6, loss_fn=nn.functional.mse_loss,
                    callbacks=[JsonlLogger(path, meta={"who": "test"})], track_grad_norm=True)
    lines = [json.loads(s) for s in path.read_text().splitlines()]
    assert lines[0] == {"lrkit_log": 1, "meta": {"who": "test"}}
    assert lines[-1] == {"end": {"stop_reason": "completed", "steps_done": 6}}
    steps = lines[1:-1]
    assert [r["step"] for r in steps] == list(range(6))
    assert {k for r in steps for k in r} <= set(LOG_FIELDS)
    assert [r["loss"] for r in steps] == out.losses
    assert [r["grad_norm"] for r in steps] == pytest.approx(out.grad_norms, rel=1e-6)
    with pytest.raises(ValueError, match="path must be a file to write, got the folder"):
        JsonlLogger(path.parent)  # was IsADirectoryError once the run had started
    # without fit's norm, the logger computes it: for MSE on a linear model, by hand
    model, batches = _linear()
    w0 = model.weight.detach().clone(), model.bias.detach().clone()
    train.fit(model, torch.optim.SGD(model.parameters(), lr=0.01), batches, num_steps=1,
              loss_fn=nn.functional.mse_loss, callbacks=[JsonlLogger(path)])
    x, y = batches[0]
    r = x @ w0[0].T + w0[1] - y
    gw, gb = 2 * (r * x).mean(0), 2 * r.mean()
    expected = math.sqrt(float((gw ** 2).sum() + gb ** 2))
    assert json.loads(path.read_text().splitlines()[1])["grad_norm"] == pytest.approx(expected,
                                                                                     rel=1e-5)
    # a non-finite loss is logged as null and the monitor calls it diverged
    model, batches = _linear()
    cb = MonitorCallback(loggers=[JsonlLogger(path)])
    bad = [(x * 1e30, y) for x, y in batches]
    out = train.fit(model, torch.optim.SGD(model.parameters(), lr=1e10), bad, num_steps=5,
                    loss_fn=nn.functional.mse_loss, callbacks=[cb])
    assert out.stop_reason == "nan"
    assert cb.monitor.finding("diverged") is not None
    assert read_log(path).findings[0].kind == "diverged"


def test_tensorboard_scalars_and_findings(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model, batches = _linear()
    cb = MonitorCallback(loggers=[TensorBoardLogger(tmp_path / "tb")], stop_on=("diverged",),
                         flush_every=1)
    out = train.fit(model, torch.optim.SGD(model.parameters(), lr=3.0), batches, num_steps=40,
                    loss_fn=nn.functional.mse_loss, callbacks=[cb])
    assert out.stop_reason == "monitor:diverged"
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"loss", "lr", "grad_norm"} <= set(tags["scalars"])
    assert len(acc.Scalars("loss")) == out.steps_done
    assert [e.value for e in acc.Scalars("loss")] == pytest.approx(out.losses, rel=1e-6)
    assert "findings/diverged/text_summary" in tags["tensors"]


def test_early_stopping_patience_and_restore():
    metrics = iter([1.0, 0.8, 0.85, 0.7, 0.75, 0.76, 0.77, 0.78])
    model, batches = _linear()
    snapshots = []
    es = EarlyStopping(patience=2, restore_best=True,
                       evaluate=lambda m: (snapshots.append(m.weight.detach().clone()),
                                           next(metrics))[1], eval_every=2)
    out = train.fit(model, torch.optim.SGD(model.parameters(), lr=0.01), batches, num_steps=100,
                    loss_fn=nn.functional.mse_loss, callbacks=[es])
    # best 0.7 at the 4th evaluation (step 8), after one that did not improve (the count
    # starts again); evaluations 5, 6 do not improve -> stop at 12
    assert out.stop_reason == "early_stop" and out.steps_done == 12
    assert (es.best, es.best_step) == (0.7, 8)
    assert torch.equal(model.weight.detach(), snapshots[3])
    with pytest.raises(ValueError, match="eval_every"):
        EarlyStopping(evaluate=lambda m: 0.0)


def test_a_callback_that_needs_a_val_metric_no_one_supplies_is_refused():
    """EarlyStopping() and DecayOnPlateau() with no evaluate of their own, in a fit without
    evaluate/eval_every (or in train.run, which passes none), never saw a metric: the run went
    to its end without a word. fit(evaluate=...) without eval_every never called it either."""
    model, batches = _linear()
    w = model.weight.detach().clone()

    def go(**kw):
        return train.fit(model, torch.optim.SGD(model.parameters(), lr=0.01), batches,
                         num_steps=20, loss_fn=nn.functional.mse_loss, **kw)

    for cb in (EarlyStopping(), DecayOnPlateau()):
        with pytest.raises(ValueError, match=f"{type(cb).__name__} acts on a validation metric"):
            go(callbacks=[cb])
        assert torch.equal(model.weight.detach(), w)  # refused before any step
    with pytest.raises(ValueError, match="evaluate needs eval_every"):
        go(evaluate=lambda m: 0.0)
    with pytest.raises(ValueError, match="EarlyStopping acts on a validation metric"):
        train.run(tasks.get("logreg"), 0.5, steps=5, callbacks=[EarlyStopping()])
    # supplied by fit, by the callback itself, or not needed (the training loss as the source)
    metrics = iter([1.0, 0.9, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8])
    out = go(callbacks=[EarlyStopping(patience=1)], evaluate=lambda m: next(metrics),
             eval_every=2)
    assert out.stop_reason == "early_stop" and out.steps_done == 6
    go(callbacks=[EarlyStopping(evaluate=lambda m: 0.0, eval_every=5)])
    go(callbacks=[DecayOnPlateau(source="loss", every=5)])


@needs_hook
def test_clip_callback_equals_fits_own_clipping():
    ref, batches = _linear()
    train.fit(ref, torch.optim.SGD(ref.parameters(), lr=0.1), batches, num_steps=8,
              loss_fn=nn.functional.mse_loss, grad_clip=0.5)
    model, batches = _linear()
    clip = ClipGradNorm(0.5)
    train.fit(model, torch.optim.SGD(model.parameters(), lr=0.1), batches, num_steps=8,
              loss_fn=nn.functional.mse_loss, callbacks=[clip])
    assert torch.equal(model.weight, ref.weight) and torch.equal(model.bias, ref.bias)
    assert len(clip.norms) == 8 and clip.clipped >= 1


def test_decay_on_plateau_reuses_plateau_and_composes_with_a_schedule():
    from lrkit import schedules

    model, batches = _linear()
    sched = schedules.family("cosine", 0.1, 20)
    seen = []

    class Spy(train.Callback):
        def on_step_end(self, info):
            seen.append(info.lr)

    dec = DecayOnPlateau(Plateau(patience=0, factor=0.5), source="loss", every=1)
    train.fit(model, torch.optim.SGD(model.parameters(), lr=0.1), batches, num_steps=20,
              loss_fn=lambda out, y: (out * 0).sum() + 1.0, schedule=sched,
              callbacks=[dec, Spy()])
    # a constant loss never improves after the first report: the scale halves every step
    for t in range(20):
        expected = sched(t) * 0.5 ** max(0, t - 1)
        assert seen[t] == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert dec.cuts == list(range(2, 21))
    with pytest.raises(TypeError, match="Plateau"):
        DecayOnPlateau(rule="plateau")


@pytest.mark.parametrize("family", [None, "cosine"])
def test_two_lr_scalers_compose_as_the_product_of_their_scales(family):
    """DecayOnPlateau and DecayOnFinding on one run: each step's LR is the schedule's (or the
    optimizer's, without one) times both scales in force. Each used to read the other's write
    as a fresh schedule value and scale it again: without a schedule the LR fell 0.1 -> 1e-57
    in 120 steps."""
    from lrkit import schedules

    model, batches = _linear()
    sched = schedules.family(family, 0.1, 120) if family else None
    rng = np.random.default_rng(0)  # falls, then climbs back: lr_too_high after step 50
    path = np.concatenate([np.linspace(2.0, 0.5, 50), np.linspace(0.5, 1.8, 70)])
    path = path * (1 + 0.01 * rng.standard_normal(path.size))
    t = iter(range(10**6))
    mon = MonitorCallback(total_steps=120, flush_every=1)
    plateau = DecayOnPlateau(Plateau(patience=3, factor=0.5), source="loss", every=10)
    cut = DecayOnFinding(mon.monitor)
    seen, scales = [], [1.0]

    class Spy(train.Callback):
        def on_step_end(self, info):
            seen.append(info.lr)
            scales.append(plateau.scale * cut.scale)  # in force from the next step

    train.fit(model, torch.optim.SGD(model.parameters(), lr=0.1), batches, num_steps=120,
              loss_fn=lambda out, y: (out * 0).sum() + float(path[next(t)]), schedule=sched,
              callbacks=[mon, plateau, cut, Spy()])
    assert plateau.cuts and cut.cuts  # both acted
    for k in range(120):
        base = sched(k) if sched else 0.1
        assert seen[k] == pytest.approx(base * scales[k], rel=1e-12, abs=1e-15), k
    assert seen[-1] == pytest.approx((sched(119) if sched else 0.1) * plateau.scale / 3)


@pytest.mark.parametrize("callable_schedule", [False, True])
def test_a_schedule_decay_onto_the_value_a_scale_wrote_is_not_lost(callable_schedule):
    """step(0.1, 30, gamma=0.1) with DecayOnPlateau(factor=0.1) cutting at step 20: at step 30
    the schedule's 0.01 is the very value the cut wrote, and read as "unchanged" it was lost
    (0.01 to the end instead of 0.001)."""
    from lrkit import schedules

    model, batches = _linear()
    s = schedules.step(0.1, 30, gamma=0.1)
    vals = iter([1.0, 2.0, 0.5, 0.4])  # one cut, at the evaluation after step 19
    dec = DecayOnPlateau(Plateau(factor=0.1, patience=0), evaluate=lambda m: next(vals),
                         eval_every=10)
    res = train.fit(model, torch.optim.SGD(model.parameters(), lr=0.1), batches, num_steps=40,
                    loss_fn=nn.functional.mse_loss,
                    schedule=(lambda t: s(t)) if callable_schedule else s, callbacks=[dec])
    assert dec.cuts == [20]
    for t in range(40):
        assert res.lrs[t] == pytest.approx(s(t) * (0.1 if t >= 20 else 1.0), rel=1e-12), t


def test_decay_on_finding_cuts_the_lr_from_the_step_the_monitor_finds_it_too_high():
    from lrkit import schedules

    model, batches = _linear()
    sched = schedules.family("cosine", 0.1, 120)
    # the recorded loss falls from 2 to 0.5 over 50 steps, then climbs back: the monitor's
    # lr_too_high (the smoothed loss climbing back from its best beyond its noise)
    rng = np.random.default_rng(0)
    path = np.concatenate([np.linspace(2.0, 0.5, 50), np.linspace(0.5, 1.8, 70)])
    path = path * (1 + 0.01 * rng.standard_normal(path.size))
    t = iter(range(10**6))
    seen = []

    class Spy(train.Callback):
        def on_step_end(self, info):
            seen.append(info.lr)

    mon = MonitorCallback(total_steps=120, flush_every=1)
    cut = DecayOnFinding(mon.monitor)
    train.fit(model, torch.optim.SGD(model.parameters(), lr=0.1), batches, num_steps=120,
              loss_fn=lambda out, y: (out * 0).sum() + float(path[next(t)]), schedule=sched,
              callbacks=[mon, cut, Spy()])
    too_high = [f.step for f in mon.monitor.findings if f.kind == "lr_too_high"]
    assert len(too_high) == 1 and 50 < too_high[0] < 120
    (s, f), = cut.cuts
    assert f.kind == "lr_too_high" and f.step == too_high[0] and cut.scale == pytest.approx(1 / 3)
    assert f.rule == "climbed_back" and f.evidence["climbed_back"] > 0.5  # (the path climbs)
    # every step up to the finding at the schedule's LR, every one after it at a third of it
    for k in range(120):
        expected = sched(k) * (1 / 3 if k > s else 1.0)
        assert seen[k] == pytest.approx(expected, rel=1e-12, abs=1e-15)
    # a second run starts again at the schedule's LR (the monitor is reset by its callback)
    t = iter(range(10**6))
    seen.clear()
    train.fit(model, torch.optim.SGD(model.parameters(), lr=0.1), batches, num_steps=40,
              loss_fn=lambda out, y: (out * 0).sum() + float(path[next(t)]), schedule=sched,
              callbacks=[mon, cut, Spy()])
    assert cut.cuts == [] and seen == [pytest.approx(sched(k)) for k in range(40)]
    # a finding raised before start_step (a warmup's end) never cuts, then or later
    t = iter(range(10**6))
    seen.clear()
    late = DecayOnFinding(mon.monitor, start_step=too_high[0] + 1)
    train.fit(model, torch.optim.SGD(model.parameters(), lr=0.1), batches, num_steps=120,
              loss_fn=lambda out, y: (out * 0).sum() + float(path[next(t)]), schedule=sched,
              callbacks=[mon, late, Spy()])
    assert [f.step for f in mon.monitor.findings if f.kind == "lr_too_high"] == too_high
    assert late.cuts == [] and seen == [pytest.approx(sched(k)) for k in range(120)]
    with pytest.raises(TypeError, match="lrkit.monitor.Monitor"):
        DecayOnFinding(mon)
    with pytest.raises(ValueError, match=r"kinds\[\] must be one of"):
        DecayOnFinding(mon.monitor, kinds=("too_high",))
    with pytest.raises(TypeError, match="kinds must be a sequence"):
        DecayOnFinding(mon.monitor, kinds="lr_too_high")
    with pytest.raises(TypeError, match="kinds must be a sequence of finding kinds, got None"):
        DecayOnFinding(mon.monitor, kinds=None)
    with pytest.raises(ValueError, match="kinds must name at least one"):
        DecayOnFinding(mon.monitor, kinds=[])
    with pytest.raises(ValueError, match="factor must be a finite number"):
        DecayOnFinding(mon.monitor, factor=float("nan"))
    with pytest.raises(ValueError, match="start_step must be an integer >= 0"):
        DecayOnFinding(mon.monitor, start_step=-1)
    with pytest.raises(ValueError, match=r"factor must be in \(0, 1\)"):
        DecayOnFinding(mon.monitor, factor=3.0)


def test_swa_average_lr_and_batchnorm(tmp_path):
    model, batches = _linear()
    weights = []

    class Spy(train.Callback):
        def on_step_end(self, info):
            weights.append((info.step, info.lr, info.model.weight.detach().clone()))

    swa = SWA(start_step=5, swa_lr=0.003, swap=False)
    train.fit(model, torch.optim.SGD(model.parameters(), lr=0.05), batches, num_steps=12,
              loss_fn=nn.functional.mse_loss, callbacks=[swa, Spy()])
    assert swa.n_averaged == 7
    mean = torch.stack([w for t, _, w in weights if t >= 5]).mean(0)
    assert torch.allclose(swa.averaged.module.weight, mean, atol=1e-7)
    assert [lr for t, lr, _ in weights] == [0.05] * 5 + [0.003] * 7  # SWA LR from step 5 on
    # BatchNorm: statistics recomputed over bn_batches for the averaged weights
    torch.manual_seed(0)
    bn_model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3, momentum=0.5))
    with pytest.raises(ValueError, match="bn_batches"):
        train.fit(bn_model, torch.optim.SGD(bn_model.parameters(), lr=0.01), batches,
                  num_steps=2, loss_fn=lambda o, y: o.pow(2).mean(), callbacks=[SWA(0, 0.01)])
    swa = SWA(0, 0.01, bn_batches=batches)
    train.fit(bn_model, torch.optim.SGD(bn_model.parameters(), lr=0.01), batches, num_steps=4,
              loss_fn=lambda o, y: o.pow(2).mean(), callbacks=[swa])
    with torch.no_grad():
        h = torch.cat([bn_model[0](b[0]) for b in batches])
    assert torch.allclose(bn_model[1].running_mean, h.mean(0), atol=1e-5)


def test_val_metric_from_fits_evaluate_reaches_monitor_log_and_cli(tmp_path, capsys):
    from lrkit import cli

    model, batches = _linear()
    vals = iter([1.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1])
    path = tmp_path / "v.jsonl"
    cb = MonitorCallback(total_steps=40, loggers=[JsonlLogger(path)])
    train.fit(model, torch.optim.SGD(model.parameters(), lr=0.05), batches, num_steps=40,
              loss_fn=nn.functional.mse_loss, callbacks=[cb], evaluate=lambda m: next(vals),
              eval_every=5)
    log = read_log(path)
    measured = [(int(s), v) for s, v in zip(log.step, log.val_metric) if v == v]
    assert measured == [(4, 1.0), (9, 0.5), (14, 0.6), (19, 0.7), (24, 0.8), (29, 0.9),
                        (34, 1.0), (39, 1.1)]
    f = cb.monitor.finding("overfitting")
    assert f is not None and f.evidence["best_step"] == 9 and f.step == 24
    assert log.meta == {"val_mode": "min", "total_steps": 40}
    assert cli.main(["monitor", str(path), "--no-plot"]) == 0
    assert "[overfitting @ step 24]" in capsys.readouterr().out


@needs_hook
def test_decay_on_plateau_with_a_plain_callable_schedule():
    # fit sets a callable schedule's LR at the start of each step: the scale must still apply
    # exactly once per step (through on_before_step)
    model, batches = _linear()
    seen = []

    class Spy(train.Callback):
        def on_before_step(self, model, optimizer):
            seen.append(optimizer.param_groups[0]["lr"])

    dec = DecayOnPlateau(Plateau(patience=0, factor=0.5), source="loss", every=1)
    out = train.fit(model, torch.optim.SGD(model.parameters(), lr=0.1), batches, num_steps=10,
                    loss_fn=lambda out, y: (out * 0).sum() + 1.0,
                    schedule=lambda t: 0.1 / (t + 1), callbacks=[dec, Spy()])
    assert seen == pytest.approx([0.1 / (t + 1) * 0.5 ** max(0, t - 1) for t in range(10)],
                                 rel=1e-12)
    # ... and the LR recorded for each step (FitResult.lrs, StepInfo.lr, what the monitor
    # reads) is the one the step used, not the schedule's before the scale
    assert out.lrs == seen


def test_callbacks_that_evaluate_keep_a_frozen_batchnorm_frozen():
    """EarlyStopping (and MonitorCallback) evaluate in eval mode and then put back every
    submodule's own flag, not ``model.train(was)``, which unfroze a BatchNorm kept in eval
    mode for fine-tuning."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 1))
    model[1].eval()
    stats = model[1].running_mean.clone()
    seen = []

    def step_fn(m, batch):
        seen.append((m.training, m[1].training))
        return nn.functional.mse_loss(m(batch[0]), batch[1])

    cbs = [EarlyStopping(patience=100, evaluate=lambda m: 0.0, eval_every=2),
           MonitorCallback(evaluate=lambda m: 0.0, eval_every=3)]
    train.fit(model, torch.optim.SGD(model.parameters(), lr=0.01),
              [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)], num_steps=12,
              step_fn=step_fn, callbacks=cbs)
    assert seen == [(True, False)] * 12
    assert torch.equal(model[1].running_mean, stats)


def test_a_grad_scalers_skipped_steps_are_not_exploding_gradients(tmp_path):
    """A real ``torch.amp.GradScaler`` (on the CPU): a scale too large for the loss overflows,
    the scaler skips those steps and halves the scale until the scaled loss fits (9 steps
    here), then trains. The monitor called the skipped steps exploding gradients ("lower the
    LR about 10x") on every run; it now waits for a streak no scaler makes."""
    x = torch.randn(512, 10, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long()
    batches = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 512, 64)]
    for k, skipped in ((1e3, 9), (1e7, 23)):  # the loss x k: the scale needs more halvings
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
        monitor = Monitor(total_steps=200)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 127)
        path = tmp_path / f"amp-{k:g}.jsonl"
        out = train.fit(model, torch.optim.SGD(model.parameters(), lr=0.1 / k), batches,
                        num_steps=200, loss_fn=lambda o, t: k * nn.functional.cross_entropy(o, t),
                        scaler=scaler, callbacks=[MonitorCallback(monitor,
                                                                  loggers=[JsonlLogger(path)])],
                        track_grad_norm=True)
        # the log keeps "non-finite" apart from "not computed" (null): its replay is the run
        log = read_log(path)
        assert np.isinf(log.grad_norm[:skipped]).all()
        assert ([(f.kind, f.step) for f in replay(log, Monitor(total_steps=200)).findings]
                == [(f.kind, f.step) for f in monitor.findings])
        bad = [i for i, g in enumerate(out.grad_norms) if not math.isfinite(g)]
        assert bad == list(range(skipped))
        assert out.losses[-1] < 0.3 * k  # it trained once the scale fit
        kinds = {f.kind for f in monitor.findings}
        assert "lr_too_high" not in kinds
        # 23 in a row is past any scaler's settling (17 halvings from 2^16): said, from step 0
        assert ("exploding_gradients" in kinds) == (skipped > 17)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (runs on the GPU check)")
def test_a_cuda_float16_run_under_the_default_grad_scaler_is_not_flagged():
    """As a user runs mixed precision: a CUDA model, float16 autocast, PyTorch's default
    ``GradScaler`` (scale 2^16). A loss large enough that the first scales overflow float16
    makes the scaler skip steps while it settles; the monitor stays quiet about them, and the
    skipped steps are exactly those with a non-finite gradient norm."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 32, generator=g)
    y = (x[:, :4].sum(1) > 0).long()
    batches = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 1024, 64)]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 2)).cuda()
    k = 1e3  # the scaled loss k * 2^16 * CE overflows float16's 65504 for the first steps
    monitor = Monitor(total_steps=300)
    out = train.fit(model, torch.optim.SGD(model.parameters(), lr=0.1 / k), batches,
                    num_steps=300, loss_fn=lambda o, t: k * nn.functional.cross_entropy(o.float(), t),
                    amp="fp16", callbacks=[MonitorCallback(monitor)], track_grad_norm=True)
    bad = [i for i, v in enumerate(out.grad_norms) if not math.isfinite(v)]
    assert 0 < len(bad) <= 17 and bad == list(range(len(bad)))  # the scaler's settling
    assert out.losses[-1] < 0.5 * out.losses[len(bad)]  # then it trained
    assert monitor.findings == []


def test_monitor_and_clip_callbacks_take_sparse_gradients():
    torch.manual_seed(0)
    model = nn.Sequential(nn.EmbeddingBag(50, 8, mode="mean", sparse=True), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randint(0, 50, (16, 5), generator=g), torch.randint(0, 2, (16,), generator=g))
               for _ in range(8)]
    clip, mon = ClipGradNorm(0.01), MonitorCallback(total_steps=8, grad_norm_every=1)
    res = train.fit(model, opt, batches, num_steps=8, loss_fn=nn.functional.cross_entropy,
              callbacks=[mon, clip])
    assert res.steps_done == 8 and len(clip.norms) == 8 and clip.clipped == 8
    assert all(n > 0.01 for n in clip.norms)


def _fit(callbacks, *, steps=100, lr=0.01, **kw):
    model, batches = _linear()
    out = train.fit(model, torch.optim.SGD(model.parameters(), lr=lr), batches, num_steps=steps,
                    loss_fn=nn.functional.mse_loss, callbacks=callbacks, **kw)
    return out, model


@pytest.mark.parametrize("patience", [0, 1, 2, 3])
def test_early_stopping_stops_after_patience_evaluations_without_improvement(patience):
    """As documented and as Keras and Lightning count: patience=1 stops at the first evaluation
    that does not improve (it took two), patience=3 at the third (0 behaves as 1)."""
    metrics = iter([1.0, 0.5] + [0.9] * 20)
    es = EarlyStopping(patience=patience)
    out, _ = _fit([es], evaluate=lambda m: next(metrics), eval_every=5)
    bad = max(patience, 1)
    assert out.stop_reason == "early_stop" and len(out.evals) == 2 + bad
    assert out.steps_done == es.stopped_step == 5 * (2 + bad)
    assert (es.best, es.best_step, es.bad) == (0.5, 10, bad)


def test_early_stopping_min_delta_keeps_its_direction_for_negative_metrics():
    """The relative margin is min_delta x |best|: for a negative best, best x (1 - min_delta)
    lies above best, and every worse value (-2.0, -1.95, -1.9...) counted as an improvement."""
    worse = [-2.0, -1.95, -1.9, -1.85, -1.8, -1.7]
    for mode, values in (("min", worse), ("max", [-v for v in worse])):
        metrics = iter(values)
        es = EarlyStopping(patience=2, mode=mode, min_delta=0.05)
        out, _ = _fit([es], steps=60, evaluate=lambda m: next(metrics), eval_every=5)
        assert (out.stop_reason, out.steps_done) == ("early_stop", 15)
        assert (es.best, es.best_step) == (values[0], 5)
    # improvements by more than 5% of |best| = 0.1 count, smaller ones do not, in both modes
    cases = {("min", "rel"): [-2.0, -2.05, -2.2, -2.25, -2.2], ("max", "rel"): [-2.0, -1.95, -1.8],
             ("min", "abs"): [-2.0, -2.04, -2.06], ("max", "abs"): [3.0, 3.04, 3.06, 3.1]}
    for (mode, delta_mode), values in cases.items():
        es = EarlyStopping(patience=100, mode=mode, min_delta=0.05, delta_mode=delta_mode)
        sign = 1.0 if mode == "min" else -1.0
        best, want = math.inf, []
        for v in values:  # the rule by hand: beat best by min_delta x |best| (or min_delta)
            margin = 0.05 * (abs(best) if delta_mode == "rel" and math.isfinite(best) else 1.0)
            if sign * v < sign * best - margin or not math.isfinite(best):
                best = v
            want.append(best)
        got = []
        for step, v in enumerate(values, 1):
            es._metric(step, v)
            got.append(es.best)
        assert got == want, (mode, delta_mode)
    # a positive metric is compared as before (ReduceLROnPlateau's best x (1 - min_delta))
    es = EarlyStopping(min_delta=0.05)
    es._metric(1, 1.0)
    es._metric(2, 0.96)
    es._metric(3, 0.94)
    assert (es.best, es.best_step) == (0.94, 3)
    with pytest.raises(ValueError, match="min_delta must be >= 0"):
        EarlyStopping(min_delta=-0.1)
    with pytest.raises(ValueError, match="delta_mode"):
        EarlyStopping(delta_mode="relative")


def test_a_callbacks_own_evaluate_is_its_only_metric():
    """A callback with its own evaluate also took fit(evaluate=...)'s metric at the same step:
    EarlyStopping counted each evaluation twice (patience=3 stopped at step 30, not 40),
    MonitorCallback mixed two metrics into one series that its log did not hold, and
    DecayOnPlateau's rule got two reports per evaluation."""
    es = EarlyStopping(patience=3, evaluate=lambda m: 0.7, eval_every=10)
    out, _ = _fit([es], evaluate=lambda m: 0.7, eval_every=10)
    assert out.steps_done == 40 and es.best_step == 10 and es.bad == 3

    class Spy(Monitor):
        def reset(self):
            super().reset()
            self.vals = []

        def update(self, step, loss, **kw):
            if kw.get("val_metric") is not None:
                self.vals.append((step, kw["val_metric"]))
            return super().update(step, loss, **kw)

        def observe_val(self, step, value):
            self.vals.append((step, value))
            return super().observe_val(step, value)

    dec = DecayOnPlateau(Plateau(patience=100), evaluate=lambda m: 0.5, eval_every=10)
    mon = MonitorCallback(Spy(total_steps=40), evaluate=lambda m: 0.5, eval_every=10)
    out, _ = _fit([mon, dec], steps=40, evaluate=lambda m: 0.9, eval_every=10)
    assert mon.monitor.vals == [(9, 0.5), (19, 0.5), (29, 0.5), (39, 0.5)]
    assert out.evals == [(10, 0.9), (20, 0.9), (30, 0.9), (40, 0.9)]  # fit's, for the rest
    assert (dec.state.best, dec.state.num_bad) == (0.5, 3)  # four reports of 0.5, not eight


def test_the_logged_grad_norm_is_the_unclipped_one_with_fits_tracked_norm(tmp_path):
    """The docs' setup (MonitorCallback before ClipGradNorm) with fit(track_grad_norm=True):
    the monitor, the log and fit's grad_norms all held the clipped value, 0.01 at every step."""
    path = tmp_path / "clip.jsonl"
    clip = ClipGradNorm(0.01)
    mon = MonitorCallback(total_steps=6, flush_every=1, loggers=[JsonlLogger(path)])
    out, _ = _fit([mon, clip], steps=6, track_grad_norm=True)
    assert min(clip.norms) > 0.01 and clip.clipped == 6
    assert out.grad_norms == clip.norms
    assert list(read_log(path).grad_norm) == clip.norms


class _Boom(train.Callback):
    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, info):
        if info.step == self.at:
            raise RuntimeError("boom")


def test_a_jsonl_log_of_a_run_that_raises_is_whole_and_closed(tmp_path):
    """A callback raising at step 30 left a 0-byte log (its header still in the buffer) and an
    open file. The log now holds every update up to the error and an end line saying so."""
    path = tmp_path / "boom.jsonl"
    log = JsonlLogger(path, evaluate=lambda m: 0.25, eval_every=10)
    with pytest.raises(RuntimeError, match="boom"):
        _fit([log, _Boom(30)])
    assert log._file is None  # closed
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [d["step"] for d in lines[1:-1]] == list(range(31))
    assert lines[-1] == {"end": {"stop_reason": "error", "steps_done": 31,
                                 "error": "RuntimeError: boom"}}
    assert read_log(path).val_metric[[9, 19, 29]].tolist() == [0.25] * 3
    # in a MonitorCallback the loggers are closed too
    path2 = tmp_path / "boom-mon.jsonl"
    with pytest.raises(RuntimeError, match="boom"):
        _fit([MonitorCallback(total_steps=100, loggers=[JsonlLogger(path2)]), _Boom(5)])
    assert json.loads(path2.read_text().splitlines()[-1])["end"]["stop_reason"] == "error"


def test_a_jsonl_log_is_on_disk_within_flush_secs(tmp_path):
    """A killed run (SIGKILL) left only what the 64 KB buffer had flushed: the header and 560 of
    1000 updates. The header is written at once, and the file flushed every flush_secs of
    training; what the file holds is read from disk while the run goes on."""
    on_disk = {}

    class Peek(train.Callback):
        def __init__(self, path):
            self.path = path

        def on_train_start(self, model, optimizer):
            on_disk["start"] = self.path.read_text().splitlines()

        def on_step_end(self, info):
            if info.step == 20:
                on_disk[20] = self.path.read_text().splitlines()

    for secs in (1e-9, 3600.0):
        path = tmp_path / f"flush-{secs}.jsonl"
        _fit([JsonlLogger(path, flush_every=1, flush_secs=secs), Peek(path)], steps=30)
        assert json.loads(on_disk["start"][0])["lrkit_log"] == 1
        # flush_every=1 keeps the newest record for a metric to come: steps 0..19 are emitted
        n = len(on_disk[20]) - 1
        assert n == (20 if secs < 1 else 0), secs
    with pytest.raises(ValueError, match="flush_secs must be > 0"):
        JsonlLogger(tmp_path / "x.jsonl", flush_secs=0)


def test_jsonl_meta_with_non_finite_numbers_is_strict_json(tmp_path):
    """meta={"lr": nan} wrote a bare NaN into the header, which strict JSON readers refuse."""
    path = tmp_path / "meta.jsonl"
    meta = {"lr": float("nan"), "range": [float("-inf"), 1.0, float("inf")], "task": "x"}
    _fit([JsonlLogger(path, meta=meta)], steps=2)

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    header = json.loads(path.read_text().splitlines()[0], parse_constant=refuse)
    assert header["meta"] == {"lr": "nan", "range": ["-inf", 1.0, "inf"], "task": "x"}
    assert read_log(path).meta["lr"] == "nan"
    with pytest.raises(TypeError):
        JsonlLogger(path, meta={"model": nn.Linear(1, 1)})


def _bn_dicts():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-1.0], [2.0]])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
    return model, [{"x": x[i:i + 16], "y": y[i:i + 16]} for i in range(0, 64, 16)]


def test_swa_with_dict_batches_is_refused_before_training_or_runs_through_forward():
    """update_bn feeds the model batch[0]: dict batches crashed it after the whole run, and the
    model kept its last iterate. They are refused before any step, or fed through forward."""
    from torch.optim.swa_utils import update_bn

    def step_fn(m, b):
        return nn.functional.mse_loss(m(b["x"]), b["y"])

    model, batches = _bn_dicts()
    w = model[0].weight.detach().clone()
    with pytest.raises(TypeError, match="bn_batches holds dict batches.*forward="):
        train.fit(model, torch.optim.SGD(model.parameters(), lr=0.05), batches, num_steps=40,
                  step_fn=step_fn, callbacks=[SWA(10, 0.01, bn_batches=batches)])
    assert torch.equal(model[0].weight, w)  # refused before any step
    swa = SWA(10, 0.01, bn_batches=batches, forward=step_fn)
    train.fit(model, torch.optim.SGD(model.parameters(), lr=0.05), batches, num_steps=40,
              step_fn=step_fn, callbacks=[swa])
    # reference: torch's update_bn over the same inputs as (x, y) pairs, on a copy of the average
    import copy

    ref = copy.deepcopy(swa.averaged.module)
    update_bn([(b["x"], b["y"]) for b in batches], ref)
    for name, t in ref.state_dict().items():
        assert torch.equal(model.state_dict()[name], t), name
    with pytest.raises(TypeError, match="forward must be callable"):
        SWA(1, 0.1, forward="x")


def test_swa_and_restore_best_leave_the_model_alone_when_the_run_raises():
    """A run that raises is not finished: SWA swaps nothing in and EarlyStopping restores
    nothing (the model keeps the weights it had when the error came)."""
    for cb in (SWA(2, 0.01), EarlyStopping(patience=100, restore_best=True,
                                             evaluate=lambda m: 0.5, eval_every=2)):
        seen = {}

        class Keep(train.Callback):
            def on_step_end(self, info):
                seen["w"] = info.model.weight.detach().clone()

        with pytest.raises(RuntimeError, match="boom"):
            _fit([cb, Keep(), _Boom(10)])
        model = cb._model
        assert torch.equal(model.weight, seen["w"]), type(cb).__name__


def test_restore_best_and_swa_take_a_modules_extra_state():
    """get_extra_state puts a non-tensor in the state_dict: EarlyStopping(restore_best) crashed
    on its .detach(), and SWA's swap put back the extra state the run started with."""
    _, batches = _linear()
    m = CountingNet(3)
    metrics = iter([1.0, 0.5, 0.7, 0.8, 0.9])
    seen = {}

    class Spy(train.Callback):
        def on_step_end(self, info):
            seen[info.step + 1] = [p.detach().clone() for p in info.model.parameters()]

    es = EarlyStopping(patience=3, restore_best=True, evaluate=lambda mm: next(metrics),
                       eval_every=2)
    out = train.fit(m, torch.optim.SGD(m.parameters(), lr=0.05), batches, num_steps=20,
                    loss_fn=nn.functional.mse_loss, callbacks=[Spy(), es])
    assert out.stop_reason == "early_stop" and es.best_step == 4 and m.calls == 4
    assert all(torch.equal(p, q) for p, q in zip(m.parameters(), seen[4]))

    m = CountingNet(3)
    swa = SWA(10, 0.01)
    train.fit(m, torch.optim.SGD(m.parameters(), lr=0.05), batches, num_steps=30,
              loss_fn=nn.functional.mse_loss, callbacks=[swa])
    assert m.calls == 30  # the live model's, not the average's copy from step 0
    assert torch.equal(m.net.weight, swa.averaged.module.net.weight)


def _frozen_and_training_bn(seed: int = 0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 4),
                      nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 1))
    with torch.no_grad():  # "pretrained" statistics, frozen for fine-tuning
        m[1].running_mean.fill_(0.5)
        m[1].running_var.fill_(2.0)
    m[1].eval()
    return m


def test_swa_recomputes_only_the_batchnorm_layers_that_train():
    """torch's update_bn resets every BatchNorm: SWA overwrote the statistics of a layer the
    user keeps frozen in eval mode, and demanded bn_batches when every one is frozen."""
    _, batches = _linear()
    loss = lambda o, y: nn.functional.mse_loss(o, y)  # noqa: E731
    # every BatchNorm frozen: nothing to recompute, no bn_batches needed, statistics untouched
    m = _frozen_and_training_bn()
    m[4].eval()
    frozen = {k: v.clone() for k, v in m.state_dict().items() if "running" in k or "tracked" in k}
    train.fit(m, torch.optim.SGD(m.parameters(), lr=0.05), batches, num_steps=8, loss_fn=loss,
              callbacks=[SWA(2, 0.01)])
    assert all(torch.equal(m.state_dict()[k], v) for k, v in frozen.items())
    assert not m[1].training and not m[4].training

    m = _frozen_and_training_bn()
    before = {k: v.clone() for k, v in m[1].named_buffers()}  # its statistics
    with pytest.raises(ValueError, match="BatchNorm layers that train.*'4'.*bn_batches"):
        train.fit(m, torch.optim.SGD(m.parameters(), lr=0.05), batches, num_steps=8,
                  loss_fn=loss, callbacks=[SWA(2, 0.01)])
    swa = SWA(2, 0.01, bn_batches=batches)
    train.fit(m, torch.optim.SGD(m.parameters(), lr=0.05), batches, num_steps=8, loss_fn=loss,
              callbacks=[swa])
    assert all(torch.equal(dict(m[1].named_buffers())[k], v) for k, v in before.items())
    assert not m[1].training and m[4].training
    # the training layer's: a cumulative mean over bn_batches of its inputs under the average,
    # with the frozen layer normalising by its own statistics
    with torch.no_grad():
        m.eval()
        feats = [m[3](m[2](m[1](m[0](x)))) for x, _ in batches]
    assert torch.allclose(m[4].running_mean, torch.cat(feats).mean(0), atol=1e-6)
    assert torch.allclose(m[4].running_var, torch.stack([f.var(0) for f in feats]).mean(0),
                          atol=1e-6)
    assert int(m[4].num_batches_tracked) == len(batches)
