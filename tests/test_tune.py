"""Tests for the autopilot (lrkit.tune) and its HTML report (lrkit.html), on real training runs.

References are independent of the code under test: the chosen schedule replayed from its JSON
spec by ``train.run``, the saved weights re-evaluated, the halving decision recomputed from the
stored trials, the rung sizes from the budget formula by hand, and PNG signatures.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import os
import re
import time
from pathlib import Path

import pytest
import torch

from lrkit import schedules, train
from lrkit import tune as tune_mod
from lrkit.finder import CONFIRM_GUESS_SPACING, RangeTestResult, range_sentence
from lrkit.html import prose, smooth
from lrkit.monitor import RULES
from lrkit.tasks import from_torch
from lrkit.tune import TuneResult, tune
from tests.tiny_task import blobs, dead_relu_regression, make_task

STEPS = 200


def tiny_task():
    """The test task: tests/tiny_task.py's regression at 200 steps (the CLI loads it by name)."""
    return make_task(STEPS)


@pytest.fixture(scope="module")
def task():
    return tiny_task()


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('shared') / 'study.db'}"


@pytest.fixture(scope="module")
def done(task, tmp_path_factory, storage):
    out = tmp_path_factory.mktemp("tune") / "run"
    return tune(task, out=out, progress=False, storage=storage), out



def _count_train_runs(monkeypatch) -> list:
    """Patch ``train.run`` to record each call's ``steps``; returns the list it fills."""
    calls: list = []
    orig = train.run

    def counting_run(*a, **k):
        calls.append(k.get("steps"))
        return orig(*a, **k)

    monkeypatch.setattr(train, "run", counting_run)
    return calls

def test_budget_plan_by_hand():
    # 300-step task, budget 2, range test of 57 steps: 243 steps left. Stage 3 costs
    # F r0 + (3 k + 1) r1 with r1 = 2 r0 (one walk run reserved): k = 2 -> 243 // 19 = 12 < the
    # floor max(10, 300 / 15) = 20, so k = 1 -> r0 = 243 // 13 = 18, r1 = 36
    p = tune_mod._halving_plan(300, 2.0, 57, 5)
    assert (p.rung0, p.rung1, p.keep, p.total_steps) == (18, 36, 1, 600)
    assert 57 + 5 * p.rung0 + (3 * p.keep + 1) * p.rung1 + 300 <= 600
    # a recipe with a warmup reserves one more rung-1 run (the warmup check): 243 // 15 = 16
    p = tune_mod._halving_plan(300, 2.0, 57, 5, reserve=2)
    assert (p.rung0, p.rung1, p.keep) == (16, 32, 1)
    assert 57 + 5 * p.rung0 + (3 * p.keep + 2) * p.rung1 + 300 <= 600
    assert tune_mod._halving_plan(300, 2.0, 57, 1, reserve=2).rung1 == 243 // 5
    # 2400 steps, 100-step range test: 2300 // 19 = 121 < 160 -> k = 1, r0 = 2300 // 13 = 176;
    # budget 3 leaves 4700: 4700 // 19 = 247 >= 160 -> k = 2
    p = tune_mod._halving_plan(2400, 2.0, 100, 5)
    assert (p.keep, p.rung0) == (1, 176)
    p = tune_mod._halving_plan(2400, 3.0, 100, 5)
    assert (p.keep, p.rung0, p.rung1) == (2, 247, 494)
    assert tune_mod._range_iters(300, 2.0) == 60 and tune_mod._range_iters(2400, 2.0) == 100
    assert tune_mod._range_iters(100, 2.0) == 30
    # 60 steps: with a 30-step range test no confirmation fits (see below), so the range test
    # takes the whole allowance of 60 steps
    assert tune_mod._range_iters(60, 2.0) == 60 and tune_mod._range_iters(80, 2.0) == 30
    with pytest.raises(ValueError, match="budget=1.05 does not cover the range test"):
        tune_mod._halving_plan(300, 1.05, 60, 5)
    # a short run: 80 steps, budget 2, range test of 30: 50 // 13 = 3 steps of rung 0 (rung-1
    # runs of 6), under 10 steps, so stage 3 confirms one family, without rung 0:
    # 50 // (3 + 1) = 12-step runs (100 steps: 70 // 13 = 5-step rung 0, also one family)
    assert tune_mod._halving_plan(80, 2.0, 30, 5).rung1 == 6
    assert tune_mod._halving_plan(100, 2.0, 30, 5).rung0 == 5
    p = tune_mod._halving_plan(80, 2.0, 30, 1)
    assert (p.rung0, p.rung1, p.keep) == (0, 12, 1)
    # 60 steps: 30 // 4 = 7 < 10 steps: no confirmation runs at all
    assert tune_mod._halving_plan(60, 2.0, 30, 1).rung1 == 0


def test_result_matches_independent_replay(task, done):
    res, out = done
    assert isinstance(res, TuneResult)
    assert repr(res) == (f"TuneResult(task={res.task!r}, lr={res.lr:.4g}, family={res.family!r}, "
                         f"metric={res.metric:.4g}, metric_name='test {task.metric}', cost_runs="
                         f"{res.cost_runs:.4g}, findings={[f['kind'] for f in res.findings]}, "
                         f"report={res.report!r})")
    # the final run is what train.run gives for the chosen schedule replayed from its spec
    final = json.loads((out / "4-final.json").read_text())
    replay = train.run(task, schedules.from_spec(res.schedule), seed=0, eval_split="test")
    assert final["metric_at_end"] == pytest.approx(replay.metric, rel=1e-6)
    kept = final["best_val_checkpoint"]
    vals = [v for _, v in final["val"]]
    tail = vals[-max(3, len(vals) // 4):]
    spread = (sum((v - sum(tail) / len(tail)) ** 2 for v in tail) / len(tail)) ** 0.5
    d2 = sorted(abs(vals[i] - 2 * vals[i - 1] + vals[i - 2]) for i in range(2, len(vals)))
    mid = len(d2) // 2
    noise = (d2[mid] if len(d2) % 2 else (d2[mid - 1] + d2[mid]) / 2) / 1.652
    noisy = abs(vals[-1] - min(vals)) <= 2 * max(spread, noise)
    assert (kept is None) == noisy  # kept where the end is worse beyond noise, flagged or not
    if kept is None:
        assert res.metric == final["metric_at_end"]
    else:  # the best-val checkpoint is kept; replay up to it
        assert kept["overfitting"] == any(f["kind"] == "overfitting" for f in res.findings)
        val = dict((s, v) for s, v in final["val"])
        assert kept["val"] == min(val.values()) == val[kept["step"]]  # lower MSE is better

        class StopAt(train.Callback):
            def on_step_end(self, info):
                return "stop" if info.step + 1 == kept["step"] else None

        part = train.run(task, schedules.from_spec(res.schedule), seed=0, eval_split="test",
                         callbacks=[StopAt()])
        assert part.steps_done == kept["step"]
        assert res.metric == pytest.approx(part.metric, rel=1e-6)
    assert res.schedule["name"] == schedules.family(res.family, res.lr, STEPS).spec["name"]
    # the saved weights score the same on the test split
    model = task.build_model(0)
    model.load_state_dict(torch.load(res.weights))
    model.eval()
    assert task.evaluate(model, "test") == pytest.approx(res.metric, rel=1e-6)
    # the chosen LR beats the recipe's default LR at full length (linear regression, 200 steps)
    default = train.run(task, task.recipe.default_lr, seed=0, eval_split="test").metric
    assert res.metric <= default * 1.05


def test_cost_accounting_and_budget(task, done):
    res, out = done
    rt = json.loads((out / "1-range-test.json").read_text())
    halving = json.loads((out / "3-halving.json").read_text())
    final = json.loads((out / "4-final.json").read_text())
    spent = (rt["result"]["cost_steps"] + sum(t["steps_done"] for t in halving["trials"])
             + final["steps_done"])
    assert res.cost_steps == spent
    assert res.cost_steps <= 2 * STEPS
    assert final["steps_done"] == STEPS
    assert sum(s.cost_steps for s in res.stages) == res.cost_steps
    assert res.cost_runs == pytest.approx(spent / STEPS)


def test_the_safe_lr_bound_is_planned_within_its_share_and_its_cost_reported(done):
    plan = tune_mod.safe_lr_plan
    share = tune_mod.SAFE_LR_SHARE
    assert plan(10_000, 32) == (20, 8)  # a long run: the curvature module's 256 examples
    assert plan(300, 32) == (15, 2)  # digits: fewer batches and products
    assert plan(100, 64) is None  # digits-bn: even 10 products over 2 batches cost too much
    assert plan(100, 569) == (10, 1)  # full batch: one batch is all there is
    for steps in (40, 100, 200, 300, 600, 1000, 5000):
        for bs in (1, 16, 32, 64, 256, 1000):
            p = plan(steps, bs)
            if p is not None:
                iters, nb = p
                assert nb * (2 * iters + 1) <= share * steps and nb >= 1
    res, out = done
    bound = json.loads((out / "safe-lr.json").read_text())
    assert bound["cost_batches"] <= share * STEPS
    assert bound["cost_runs"] == pytest.approx(bound["cost_batches"] / STEPS)
    page = (out / "report.html").read_text()
    assert f"{bound['cost_batches']} batch gradients, {bound['cost_runs']:.2f} of a full run" in page
    # too short a run for the bound: the report says so, the command set as code
    short = tune(make_task(40), out=out.parent / "short", progress=False)
    skipped = json.loads((out.parent / "short" / "safe-lr.json").read_text())
    assert "costs more than 25% of this 40-step run" in skipped["skipped"]
    assert "<code>lrkit safe-lr</code>" in Path(short.report).read_text()


def test_halving_decision_recomputed(task, done):
    res, out = done
    h = json.loads((out / "3-halving.json").read_text())
    plan = h["plan"]
    r0 = [t for t in h["trials"] if t["rung"] == 0]
    r1 = [t for t in h["trials"] if t["rung"] == 1]
    assert len(r0) == len(tune_mod.DEFAULT_SCHEDULES)
    assert {t["steps"] for t in r0} == {plan["rung0"]} and {t["steps"] for t in r1} == {
        plan["rung1"]}
    # lower MSE is better; the kept families are the best of rung 0
    key = lambda t: math.inf if t["diverged"] else tune_mod._num(t["metric"])  # noqa: E731
    best0 = sorted(r0, key=key)[: plan["keep"]]
    assert {t["family"] for t in best0} == {t["family"] for t in r0 if t["kept"]}
    # rung 1 holds each kept family at its centre and a quarter decade either side, then
    # walks by half decades from the edge that won
    steps = [round(4 * math.log10(t["lr"] / t["centre"]), 9) for t in r1]
    assert sorted(steps[:3]) == [-1, 0, 1]
    walk = steps[3:]
    for a, b in zip([0.0] + walk, walk):  # each walk run is half a decade past the last edge
        assert abs(b) in (3, abs(a) + 2) and (a == 0 or a * b > 0)
    win = min(r1, key=key)
    assert (win["family"], win["lr"]) == (res.family, pytest.approx(res.lr))
    # how clearly it won: the margin to its family's runner-up against the noise of its own
    # val evaluations: the larger of the spread (population standard deviation) of the last
    # quarter (>= 3) and the median |second difference| / 1.652
    sep = h["stage"]["outcome"]["separation"]
    second = min((t for t in r1 if t is not win and t["family"] == win["family"]), key=key)
    vals = [v for _, v in win["val_curve"]]
    tail = vals[-max(3, len(vals) // 4):]
    spread = (sum((v - sum(tail) / len(tail)) ** 2 for v in tail) / len(tail)) ** 0.5
    d2 = sorted(abs(vals[i] - 2 * vals[i - 1] + vals[i - 2]) for i in range(2, len(vals)))
    mid = len(d2) // 2
    noise = max(spread, (d2[mid] if len(d2) % 2 else (d2[mid - 1] + d2[mid]) / 2) / 1.652)
    assert sep["runner_up_lr"] == pytest.approx(second["lr"])
    assert sep["margin"] == pytest.approx(abs(win["metric"] - second["metric"]))
    assert sep["noise"] == pytest.approx(noise)
    assert sep["clear"] == (sep["margin"] > noise)
    assert ("could not tell these two LRs apart" in res.explanation) == (not sep["clear"])
    # a range test of low confidence says so, and why
    sug = json.loads((out / "1-range-test.json").read_text())["result"]["suggestion"]
    assert (f"(low confidence: {sug['reason']}" in res.explanation) == (
        sug["confidence"] == "low")
    # a winner left at an edge says why the walk stopped there: the budget, or the ceiling
    out = h["stage"]["outcome"]
    if out["at_edge"]:
        assert out["edge_stop"] == "budget" or "pass the ceiling" in out["edge_stop"]
        assert "the best may lie beyond, but " in res.explanation
    else:
        assert out["edge_stop"] is None and "the best may lie beyond" not in res.explanation
    # one stored short run re-trained from its spec gives the stored val metric
    again = train.run(task, schedules.from_spec(win["schedule"]), steps=win["steps"], seed=0,
                      eval_split="val")
    assert again.metric == pytest.approx(tune_mod._num(win["metric"]), rel=1e-6)


def test_report_is_self_contained_and_complete(done):
    res, out = done
    page = (out / "report.html").read_text()
    assert res.report == str(out / "report.html")
    assert "http://" not in page and "https://" not in page and "<script" not in page
    srcs = re.findall(r'src="([^"]+)"', page)
    assert len(srcs) == 5 and all(s.startswith("data:image/png;base64,") for s in srcs)
    for name, src in zip(("range-test.png", "candidates.png", "time.png", "schedule.png",
                          "final.png"), srcs):
        data = base64.b64decode(src.split(",", 1)[1])
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / name).read_bytes() == data
    assert prose(res.explanation) in page
    assert f"{res.lr:.3g}" in page and res.family in page


def test_the_explanation_sets_commands_as_code_and_escapes_everything_else():
    """Backquoted spans become <code> after escaping: a span cannot open a tag, and a user's
    task name with markup in it stays text."""
    assert prose("run `lrkit search --task a<b>` now") == \
        "run <code>lrkit search --task a&lt;b&gt;</code> now"
    assert prose("`<script>alert(1)</script>`") == \
        "<code>&lt;script&gt;alert(1)&lt;/script&gt;</code>"
    assert prose("one ` alone & <i>") == "one ` alone &amp; &lt;i&gt;"


def test_interrupt_keeps_finished_work_and_resume_goes_on(task, done, tmp_path, monkeypatch):
    out = tmp_path / "interrupted"
    count = {"n": 0}

    def loss(model, batch):
        count["n"] += 1
        if count["n"] == 75:  # in rung 0 (range test: 40 steps, then runs of 14)
            raise KeyboardInterrupt
        return task.loss(model, batch)

    broken = dataclasses.replace(task, loss=loss)
    with pytest.raises(KeyboardInterrupt):
        tune(broken, out=out, progress=False)
    assert (out / "1-range-test.json").exists()
    kept = json.loads((out / "3-halving.json").read_text())["trials"]
    assert 1 <= len(kept) < len(tune_mod.DEFAULT_SCHEDULES)
    assert not (out / "result.json").exists()
    calls = _count_train_runs(monkeypatch)
    res = tune(task, out=out, progress=False)
    monkeypatch.undo()
    trials = json.loads((out / "3-halving.json").read_text())["trials"]
    # only the missing short runs and the final run were trained; the decision is the one of
    # the uninterrupted run
    assert len(calls) == len(trials) - len(kept) + 1
    first, _ = done
    assert (res.family, res.lr, res.cost_steps) == (first.family, first.lr, first.cost_steps)
    assert res.metric == pytest.approx(first.metric, rel=1e-9)
    fields = ("rung", "family", "lr", "steps", "metric", "wall_time")
    assert [{k: t[k] for k in fields} for t in trials[: len(kept)]] == [
        {k: t[k] for k in fields} for t in kept]  # kept as they were, not re-run
    assert json.loads((out / "result.json").read_text())["metric"] == pytest.approx(res.metric)


def test_user_model_through_from_torch(tmp_path, monkeypatch):
    torch.manual_seed(0)
    x = torch.randn(256, 6)
    y = (x @ torch.randn(6, 1)).squeeze(1) + 0.1 * torch.randn(256)
    data = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 192, 32)]
    val = [(x[192:], y[192:])]
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)  # a user's too-low LR

    def loss_fn(out, target):
        return torch.nn.functional.mse_loss(out.squeeze(1), target)

    w0 = [p.detach().clone() for p in model.parameters()]
    t = from_torch(model, opt, data, loss_fn, val_loader=val, steps=150, name="my <model>")
    # without the safe-LR bound (curvature evaluates at the initial weights, so it would reset
    # the model on its own)
    monkeypatch.setattr(tune_mod, "_safe_lr", lambda task, seed, folder: None)
    res = tune(t, out=tmp_path / "user", progress=False, schedules=("constant", "cosine"))
    monkeypatch.undo()
    assert res.cost_steps <= 300 and res.family in ("constant", "cosine")
    # the user's model is handed back as it was given; the trained weights are in res.weights
    # and score res.metric
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), w0))
    model.load_state_dict(torch.load(res.weights))
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), w0))
    assert t.evaluate(model, "test") == pytest.approx(res.metric, rel=1e-6)
    # without a test_loader that score is on the val data the LR was chosen on: said so
    assert t.test_is_val and res.metric_split == "val" and "val loss" in res.explanation
    assert "test loss" not in res.explanation + (tmp_path / "user" / "report.html").read_text()
    assert TuneResult.from_dict(res.to_dict()).metric_split == "val"
    # ... and after an interruption in the final run (Ctrl-C)
    calls = []

    class Interrupt(train.Callback):
        def on_step_end(self, info):
            calls.append(info.step)
            if len(calls) == 20:
                raise KeyboardInterrupt

    real_run = train.run
    monkeypatch.setattr(train, "run", lambda *a, **kw: real_run(
        *a, **{**kw, "callbacks": [*kw.get("callbacks", []), Interrupt()]}))
    with pytest.raises(KeyboardInterrupt):
        tune(t, out=tmp_path / "interrupted", progress=False, schedules=("constant", "cosine"))
    monkeypatch.undo()
    assert calls and all(torch.equal(p, q) for p, q in zip(model.parameters(), w0))
    first = train.run(t, t.recipe.default_lr, seed=0, eval_split="test").metric
    assert res.metric < 0.5 * first  # the tuned run beats the user's own LR on its val loss
    page = (tmp_path / "user" / "report.html").read_text()
    assert "my &lt;model&gt;" in page and "my <model>" not in page
    # another set-up under the same name is another task: its folder is not "resumed"
    other = from_torch(model, opt, data, loss_fn, val_loader=val, steps=100, name="my <model>")
    with pytest.raises(ValueError, match="holds a tune with other settings.*task_key"):
        tune(other, out=tmp_path / "user", progress=False)
    absolute = from_torch(model, opt, data, lambda out, target: (out.squeeze(1) - target).abs()
                          .mean(), val_loader=val, steps=150, name="my <model>")
    with pytest.raises(ValueError, match="task_key"):
        tune(absolute, out=tmp_path / "user", progress=False, schedules=("constant", "cosine"))
    # a metric_fn that never gives a finite value: an error at the first rung, not a choice
    broken = from_torch(model, opt, data, loss_fn, val_loader=val, steps=150,
                        metric_fn=lambda m, loader: float("nan"))
    with pytest.raises(ValueError, match=r"tune, rung 0: none of 2 runs scored a finite"):
        tune(broken, out=tmp_path / "broken", progress=False, schedules=("constant", "cosine"))


def test_a_diverged_final_run_runs_once_more_ten_times_lower_within_the_budget(tmp_path):
    """The monitor's advice for divergence, applied by tune itself while the budget pays: the
    tiny regression diverges at 1.0 (step 2) and trains at 0.1; with less than a full run left,
    the diverged run stands and the explanation warns."""
    task = make_task(200)
    show = tune_mod._Display(False)
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    data, stage = tune_mod._stage_final(task, tune_mod._Folder(tmp_path / "a"), "constant", 1.0,
                                        0, show, allowance=250)
    first = data["diverged_attempt"]
    assert first["lr"] == 1.0 and first["steps_done"] == 2 and first["stop_reason"] == "diverged"
    assert data["lr"] == pytest.approx(0.1) and not data["diverged"]
    ref = train.run(task, 0.1, seed=0, eval_split="test")
    assert data["metric_at_end"] == pytest.approx(ref.metric, rel=1e-9)
    assert stage.cost_steps == 202 and stage.outcome["retried_from_lr"] == 1.0
    # the budget left pays for 148 of the 200 steps (at least RETRY_MIN_SHARE of a run): the
    # retry runs that long, its schedule rebuilt for it
    data, stage = tune_mod._stage_final(task, tune_mod._Folder(tmp_path / "b"), "constant", 1.0,
                                        0, show, allowance=150)
    assert data["diverged_attempt"]["retry_steps"] == 148 and not data["diverged"]
    ref = train.run(task, 0.1, steps=148, seed=0, eval_split="test")
    assert data["metric_at_end"] == pytest.approx(ref.metric, rel=1e-9)
    assert stage.cost_steps == 150
    (tmp_path / "c").mkdir()
    data, stage = tune_mod._stage_final(task, tune_mod._Folder(tmp_path / "c"), "constant", 1.0,
                                        0, show, allowance=101)  # 99 steps left: under half
    assert data["diverged"] and data["diverged_attempt"] is None and stage.cost_steps == 2


def test_a_final_run_that_diverges_late_keeps_its_best_model_from_before(tmp_path):
    """A 1-cycle at a peak the short runs survived can blow up late in the full run, when the
    LR has stayed near its peak; with no budget left to run it again, tune keeps the run's best
    validation checkpoint from before the blow-up instead of handing back a diverged model,
    and says so. Here the tiny regression trains while the 1-cycle warms up to its peak of 0.5
    and diverges on the way (step 58); the kept model is exactly the run stopped at its best
    validation step."""
    task = make_task(200)
    folder = tune_mod._Folder(tmp_path)
    data, stage = tune_mod._stage_final(task, folder, "onecycle", 0.5, 0,
                                        tune_mod._Display(False), allowance=150)
    kept = data["best_val_checkpoint"]
    assert data["diverged"] and data["diverged_attempt"] is None
    assert math.isinf(data["metric_at_end"]) and kept["diverged"]
    assert 0 < kept["step"] < data["steps_done"] < 200
    sched = tune_mod._schedule(task, "onecycle", 0.5, 200, False)
    ref = train.run(task, sched, steps=kept["step"], seed=0, eval_split="test")
    assert data["metric"] == kept["test"] == pytest.approx(ref.metric, rel=1e-6)
    assert stage.outcome["best_val_checkpoint_step"] == kept["step"]
    weights = torch.load(folder.file("weights"))
    model = task.build_model(0)
    model.load_state_dict(weights)
    assert task.evaluate(model, "test") == pytest.approx(kept["test"], rel=1e-6)
    text = " ".join(tune_mod._explain_final_run(data, task, None, None, "mse",
                                                lambda v: f"{v:.4g}", 200))
    assert "diverged and the budget left could not pay for another run (at step 58)" in text
    assert "Warning" not in text


def test_a_shortened_retry_is_weighed_against_the_diverged_runs_checkpoint(tmp_path,
                                                                           monkeypatch):
    """With the budget for only part of a run left, the retry runs that long; the model kept is
    the better by validation of it and the diverged run's best checkpoint. At LR / 10 the
    retry wins; at LR / 10,000 (barely training in 142 steps) the checkpoint does, and the
    explanation says why."""
    task = make_task(200)
    show = tune_mod._Display(False)
    (tmp_path / "a").mkdir()
    data, _ = tune_mod._stage_final(task, tune_mod._Folder(tmp_path / "a"), "onecycle", 0.5, 0,
                                    show, allowance=200)
    assert data["diverged_attempt"]["retry_steps"] == 142 and not data["diverged"]
    assert data["best_val_checkpoint"] is None and data["lr"] == pytest.approx(0.05)
    monkeypatch.setattr(tune_mod, "RETRY_FACTOR", 1e4)
    folder = tune_mod._Folder(tmp_path / "b")
    (tmp_path / "b").mkdir()
    data, stage = tune_mod._stage_final(task, folder, "onecycle", 0.5, 0, show, allowance=200)
    kept = data["best_val_checkpoint"]
    assert kept["from_first_attempt"] and kept["step"] == 48
    assert kept["val"] < data["val"][-1][1]  # the checkpoint validates better than the retry
    sched = tune_mod._schedule(task, "onecycle", 0.5, 200, False)
    ref = train.run(task, sched, steps=48, seed=0, eval_split="test")
    assert data["metric"] == pytest.approx(ref.metric, rel=1e-6)
    assert stage.cost_steps == 58 + 142
    model = task.build_model(0)
    model.load_state_dict(torch.load(folder.file("weights")))
    assert task.evaluate(model, "test") == pytest.approx(ref.metric, rel=1e-6)
    text = " ".join(tune_mod._explain_final_run(data, task, None, None, "mse",
                                                lambda v: f"{v:.4g}", 200))
    assert "diverged at step 58" in text and "142-step run" in text
    assert "validated worse than the first run's best-validation checkpoint (step 48" in text


def test_rung_one_walks_down_when_every_run_diverges(tmp_path, monkeypatch):
    """Candidates centred far too high (a range test that gave no usable point and a recipe LR
    that diverges, as on a pretrained model fine-tuned with SGD at 0.1): every rung-1 run
    diverges, and stage 3 walks down by half decades, as confirm mode does, instead of handing
    a diverged LR to the final run."""
    real = tune_mod._centres

    def too_high(rt, task, families):
        centres, _ = real(rt, task, families)
        return {f: 30.0 for f in centres}, "a centre far too high (test)"

    monkeypatch.setattr(tune_mod, "_centres", too_high)
    res = tune(make_task(200), out=tmp_path / "w", progress=False, schedules=("constant",))
    log = json.loads((tmp_path / "w" / "3-halving.json").read_text())
    lrs = [(t["lr"], t["diverged"]) for t in log["trials"]]
    assert all(d for lr, d in lrs if lr > 0.3) and any(not d for _, d in lrs)
    assert res.lr < 0.3 and math.isfinite(res.metric) and res.cost_steps <= 400
    assert log["rungs"][-1]["walks"] >= 4  # 30 -> 9.5 -> 3 -> 0.95 -> 0.3 (all diverge) -> ...


def test_short_runs_confirm_one_schedule_or_none_and_say_so(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(96, 4)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0]) + 0.1 * torch.randn(96)
    data = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    val = [(x[64:], y[64:])]
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))

    def loss_fn(out, target):
        return torch.nn.functional.mse_loss(out.squeeze(1), target)

    def user_task(steps):
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        return from_torch(model, opt, data, loss_fn, val_loader=val, steps=steps)

    # 80 steps: the 50 steps left would give rung-1 runs of 6 steps; only the recipe's
    # schedule (constant) is confirmed, at three LRs of 12 steps (no rung 0)
    res = tune(user_task(80), out=tmp_path / "a", progress=False)
    log = json.loads((tmp_path / "a" / "3-halving.json").read_text())
    assert res.family == "constant" and log["plan"]["rung0"] == 0
    assert {t["rung"] for t in log["trials"]} == {1} and log["trials"][0]["steps"] == 12
    assert "only constant was confirmed" in res.explanation and res.cost_steps <= 160
    # 100 steps: rung 0 would be 70 // 13 = 5 steps, too short to compare schedule shapes:
    # one family too, at three LRs of 70 // 4 = 17 steps
    res = tune(user_task(100), out=tmp_path / "c", progress=False)
    log = json.loads((tmp_path / "c" / "3-halving.json").read_text())
    assert log["plan"]["rung0"] == 0 and {t["steps"] for t in log["trials"]} == {17}
    # the one family is the recipe's own, else constant with the recipe's warmup (a prefix
    # of the full run, not a miniature), else the first offered: a warmup-cosine recipe of
    # 100 steps confirms constant at 70 // (3 + 2) = 14-step runs (one more run is kept for
    # the warmup check), each warming up for 10 * 14 / 100 = 1 step
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    warm = from_torch(model, opt, data, loss_fn, val_loader=val, steps=100,
                      schedule="warmup_cosine", warmup_steps=10)
    res = tune(warm, out=tmp_path / "w", progress=False, schedules=("cosine", "constant"))
    log = json.loads((tmp_path / "w" / "3-halving.json").read_text())
    assert log["plan"]["rung0"] == 0 and {t["family"] for t in log["trials"]} == {"constant"}
    assert {t["steps"] for t in log["trials"]} == {14} and res.family == "constant"
    kept = [t["schedule"] for t in log["trials"] if t["kept"]]
    assert [(s["name"], s["steps"], s["schedule"]["name"]) for s in kept] == [("warmup", 1,
                                                                             "constant")]
    assert "only constant was confirmed" in res.explanation
    assert [tune_mod._recipe_family(warm, f) for f in
            (("step", "warmup_cosine"), ("onecycle", "cosine"))] == ["warmup_cosine", "onecycle"]
    # 60 steps: a 30-step range test would leave 30, too few for runs of >= 10 steps at three
    # LRs: no confirmation, the range test takes all 60 spare steps, and the final run takes its
    # LR for the recipe's schedule as it is
    res = tune(user_task(60), out=tmp_path / "b", progress=False)
    rt = json.loads((tmp_path / "b" / "1-range-test.json").read_text())
    log = json.loads((tmp_path / "b" / "3-halving.json").read_text())
    assert log["trials"] == [] and res.stages[2].cost_steps == 0
    assert res.lr == pytest.approx(RangeTestResult.from_dict(rt["result"]).suggestion.lr)
    assert "unconfirmed" in res.explanation and res.cost_steps == rt["stage"]["cost_steps"] + 60
    assert rt["result"]["settings"]["num_iter"] == 60
    assert "unconfirmed" in (tmp_path / "b" / "report.html").read_text()
    band = RangeTestResult.from_dict(rt["result"]).suggestion.band  # its uncertainty: the band
    assert res.lr_range == pytest.approx(band)
    assert res.uncertainty == (f"no confirmation runs; the range test's band: {band[0]:.3g} .. "
                               f"{band[1]:.3g}")


    # 20 steps: two runs (40 steps) cannot pay for a 30-step range test and the final run.
    # The default budget becomes the least that can, 50 / 20 = 2.5, and the explanation says
    # so; an explicit budget that cannot is refused with the least one that can
    res = tune(user_task(20), out=tmp_path / "d", progress=False)
    assert res.cost_steps == 50 and res.cost_runs == pytest.approx(2.5)
    assert res.explanation.startswith("The default budget of 2 full runs (40 steps) cannot pay")
    assert "budget is 2.5 full runs" in res.explanation
    # resumed (the CLI passes the recorded budget on as if given): the same explanation, as
    # meta.json says the budget was the default (the sentence was missing on resume)
    assert json.loads((tmp_path / "d" / "meta.json").read_text())["budget_default"] is True
    for name in ("result.json", "report.html"):
        (tmp_path / "d" / name).unlink()
    again = tune(user_task(20), budget=2.5, out=tmp_path / "d", progress=False)
    assert again.explanation == res.explanation
    assert "budget is 2.5 full runs" in (tmp_path / "d" / "report.html").read_text()
    # an explicit 2.5 says nothing of a default, started or resumed
    assert tune_mod._resumed_raise({"budget_default": False}, 20, 2.5, True) is None
    with pytest.raises(ValueError, match=r"budget=2\.0 gives 40 steps .* pass budget >= 2\.5"):
        tune(user_task(20), budget=2.0, out=tmp_path / "e", progress=False)
    assert not (tmp_path / "e").exists()  # refused before anything was written
    # the least budget by hand: (30 + full) / full, rounded up to 0.01 and paying in steps
    assert [tune_mod._min_budget(n) for n in (20, 7, 300, 30)] == [2.5, 5.29, 1.1, 2.0]
def test_the_monitors_lr_too_low_is_weighed_against_the_confirmation_runs():
    """tune's final run at the LR it chose can still get the monitor's lr_too_low (the
    training loss falling steadily at a fifth of the run): the explanation says what the
    confirmation runs and the range test showed above that LR, and which evidence tune kept."""
    task = make_task()  # mse, lower is better
    fmt = lambda v: "diverged" if v is None else f"{v:.4g}"  # noqa: E731
    flag = {"kind": "lr_too_low", "step": 8, "action": "raise the LR about 10x"}
    win = tune_mod._Arm("constant", 0.1, 0.1, 1.0)

    def trial(lr, metric, kept=False, diverged=False):
        return {"rung": 1, "family": "constant", "lr": lr, "metric": metric, "kept": kept,
                "diverged": diverged}

    final = {"lr": 0.1, "findings": [flag]}
    halving = {"winner": win, "trials": [trial(0.056, 0.30), trial(0.1, 0.20, kept=True),
                                         trial(0.178, 0.25)]}
    out = " ".join(tune_mod._explain_lr_too_low(final, halving, task, "mse", fmt))
    assert "the short run at 0.178 (1.8x) scored validation mse 0.25 against 0.2 at 0.1" in out
    assert out.startswith("The monitor flagged lr_too_low (the training loss still falling "
                          "steadily early in the run), but")
    assert "tune keeps its LR" in out
    # the run above diverged: that is worse too
    halving["trials"][2] = trial(0.178, float("nan"), diverged=True)
    assert "scored validation mse diverged" in " ".join(
        tune_mod._explain_lr_too_low(final, halving, task, "mse", fmt))
    # nothing tried above: the range test's band decides, else it is worth a check
    halving["trials"] = halving["trials"][:2]
    out = " ".join(tune_mod._explain_lr_too_low(final, halving, task, "mse", fmt, (0.02, 0.08)))
    assert "10x, 1, lies above the range test's band (0.02 to 0.08)" in out
    out = " ".join(tune_mod._explain_lr_too_low(final, halving, task, "mse", fmt, (0.02, 2.0)))
    assert "no short run tried above 0.1: worth a check" in out
    # a final LR lowered on purpose (time rescaling) says so; no flag, no sentence
    out = tune_mod._explain_lr_too_low(final, dict(halving, rescaled="overfits"), task, "mse",
                                       fmt)
    assert "does on purpose: at the short runs' 0.1 the full run would overfit" in out[0]
    assert tune_mod._explain_lr_too_low({"lr": 0.1, "findings": []}, halving, task, "mse",
                                        fmt) == []
    # a loss that has not fallen at all is said so (it was "still falling steadily"), with
    # the other reading of a stuck loss
    stuck = dict(flag, rule="not_fallen")
    out = " ".join(tune_mod._explain_lr_too_low({"lr": 0.1, "findings": [stuck]}, halving,
                                                task, "mse", fmt, (0.02, 2.0)))
    assert "(the training loss not falling significantly early in the run)" in out
    assert "still falling" not in out and "broken the model early" in out


def test_shared_study_lets_a_second_worker_skip_the_trials(task, done, storage, tmp_path,
                                                           monkeypatch):
    import optuna

    res, out = done
    log = json.loads((out / "3-halving.json").read_text())["trials"]
    study_name = optuna.get_all_study_names(storage)
    assert len(study_name) == 1
    study = optuna.load_study(study_name=study_name[0], storage=storage)
    recs = {(t.params["schedule"], round(t.params["lr"], 12), t.user_attrs["steps"]): t
            for t in study.trials if "lrkit_rec" in t.user_attrs}
    assert len(recs) == len(log)
    for r in log:  # every local record is the study's trial, value = val metric
        t = recs[(r["family"], round(r["lr"], 12), r["steps"])]
        if r["diverged"]:
            assert t.state == optuna.trial.TrialState.FAIL
        else:
            assert t.value == pytest.approx(tune_mod._num(r["metric"]))
    # a second worker on the same storage (another folder): the trials are there already, so
    # it trains only its final run and reaches the same decision
    calls = _count_train_runs(monkeypatch)
    again = tune(task, out=tmp_path / "worker2", progress=False, storage=storage)
    monkeypatch.undo()
    assert calls == [STEPS]
    assert (again.family, again.lr) == (res.family, res.lr)
    assert again.metric == pytest.approx(res.metric, rel=1e-9)


def test_bad_arguments(task, tmp_path, done):
    import lrkit
    import lrkit.tune as module

    assert lrkit.tune is module and module.tune is tune  # the module is callable: lrkit.tune(...)
    with pytest.raises(ValueError, match="budget must be > 1"):
        lrkit.tune(task, budget=0.5, out=tmp_path / "z", progress=False)
    with pytest.raises(ValueError, match="budget must be > 1"):
        tune(task, budget=1.0, out=tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="budget must be > 1"):  # not "> 0": the real bound
        tune(task, budget=-1, out=tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="budget must be a finite number"):
        tune(task, budget=float("nan"), out=tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="schedules"):
        tune(task, schedules=("cosine", "bogus"), out=tmp_path / "b", progress=False)
    with pytest.raises(ValueError, match="repeat"):
        tune(task, schedules=("cosine", "cosine"), out=tmp_path / "c", progress=False)
    with pytest.raises(TypeError, match="task must be"):
        tune(42, out=tmp_path / "d", progress=False)
    with pytest.raises(TypeError, match=r"got Linear: for your own model, build one with "
                                        r"lrkit.tasks.from_torch\(model, optimizer"):
        tune(torch.nn.Linear(2, 2), out=tmp_path / "d", progress=False)
    with pytest.raises(ValueError, match="unknown task"):
        tune("digitz", out=tmp_path / "e", progress=False)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ValueError, match=r"out: cannot make the run folder .*a-file/run"):
        tune(task, out=blocker / "run", progress=False)  # a file where a folder must go
    _, out = done
    with pytest.raises(ValueError, match="other settings.*budget"):
        tune(task, budget=3.0, out=out, progress=False)


def test_cli_prints_decision_and_report(done, capsys):
    from lrkit import cli

    res, out = done
    # --resume reads the settings from the folder; a finished run is returned as it is
    assert cli.main(["tune", "--resume", str(out), "--no-progress"]) == 2
    assert "started from Python with a Task object" in capsys.readouterr().err
    rc = cli.main(["tune", "--resume", str(out), "--task", "tests.test_tune:tiny_task",
                   "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0
    assert f"decision: {res.family} schedule, peak lr {res.lr:.3g}" in text
    h = next(st for st in res.stages if st.name.startswith("confirmation")).outcome
    assert res.uncertainty == range_sentence(res.lr_range, h.get("lr_alike"))
    assert f"uncertainty: {res.uncertainty}" in text
    assert f"report: {out / 'report.html'}" in text
    assert f"{res.cost_steps} steps" in text
    assert "run length:" not in text  # the final run did not overfit early
    assert cli.main(["tune", "--resume", str(out.parent / "nothing")]) == 2
    assert cli.main(["tune", "--no-progress"]) == 2  # neither --task nor --resume


def test_resume_goes_on_with_the_runs_storage_and_refuses_other_settings(
        task, done, storage, tmp_path, monkeypatch, capsys):
    """``--resume`` dropped the run's ``--storage`` (it went on in a new local study.db, and
    helpers on the shared study waited forever) and ignored ``--seed``, ``--schedules`` and
    ``--out``: each is now the run's own, and another value is refused, as ``--budget`` is."""
    import shutil

    from lrkit import cli

    res, out = done  # started on the shared ``storage``
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for name in ("result.json", "report.html"):
        (copy / name).unlink()
    ref = ["--task", "tests.test_tune:tiny_task", "--no-progress"]
    refused = {"--storage": "postgresql://me:s3cret@nohost/db", "--seed": "1",
               "--schedules": "cosine", "--budget": "3", "--out": str(tmp_path / "elsewhere")}
    for flag, value in refused.items():
        assert cli.main(["tune", "--resume", str(copy), flag, value] + ref) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"lrkit: error: {flag} ") and "--resume" in err, err
    assert cli.main(["tune", "--resume", str(copy), "--storage", refused["--storage"]]
                    + ref) == 2
    err = capsys.readouterr().err
    assert "me:***@nohost" in err and "s3cret" not in err and repr(storage) in err
    assert not (tmp_path / "elsewhere").exists()
    opened = []
    real = tune_mod._open_study
    monkeypatch.setattr(tune_mod, "_open_study",
                        lambda url, *a: opened.append(url) or real(url, *a))
    same = ["--seed", "0", "--schedules", ",".join(tune_mod.DEFAULT_SCHEDULES),
            "--out", str(copy)]
    assert cli.main(["tune", "--resume", str(copy)] + same + ref) == 0
    assert opened == [storage] and not (copy / "study.db").exists()
    assert f"decision: {res.family} schedule, peak lr {res.lr:.3g}" in capsys.readouterr().out
    # from Python too: the folder's storage by default, another one refused
    (copy / "result.json").unlink()
    with pytest.raises(ValueError, match=r"other settings \(storage: "):
        tune(task, out=copy, progress=False, storage=f"sqlite:///{tmp_path / 'other.db'}")
    assert tune(task, out=copy, progress=False).lr == res.lr
    assert opened == [storage, storage]


def test_a_relative_storage_is_the_same_file_when_resumed_from_elsewhere(tmp_path, monkeypatch,
                                                                         capsys):
    """``--storage sqlite:///st dir/s.db`` was kept as given: resumed from another folder it
    opened a new, empty study there (and the helper command printed the relative URL)."""
    from lrkit import cli

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    first = tune(tiny_task(), out="run", storage="sqlite:///st dir/s.db", progress=False,
                 schedules=("constant", "cosine"))
    kept = json.loads((tmp_path / "a" / "run" / "meta.json").read_text())["storage"]
    assert kept == f"sqlite:///{tmp_path / 'a' / 'st dir' / 's.db'}"
    for name in ("result.json", "report.html", "4-final.json"):
        (tmp_path / "a" / "run" / name).unlink()
    monkeypatch.chdir(tmp_path / "b")
    assert cli.main(["tune", "--resume", "../a/run", "--storage", "sqlite:///../a/st dir/s.db",
                     "--task", "tests.test_tune:tiny_task", "--no-progress"]) == 0
    assert f"peak lr {first.lr:.3g}" in capsys.readouterr().out
    assert list((tmp_path / "b").iterdir()) == []


def test_a_copied_or_damaged_run_folder_on_resume(task, done, tmp_path, capsys):
    import shutil

    from lrkit import cli

    res, out = done
    # a finished run folder copied elsewhere names its own report and weights, not the
    # original's (it named the original's while that one existed)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    again = tune(task, out=copy, progress=False)
    assert (again.report, again.weights, again.run_dir) == (
        str(copy / "report.html"), str(copy / "final-weights.pt"), str(copy))
    assert (again.lr, again.metric, again.cost_steps) == (res.lr, res.metric, res.cost_steps)
    # a damaged stage file is named, with what to do (it was a bare JSONDecodeError)
    halving = copy / "3-halving.json"
    halving.write_text(halving.read_text()[:100])
    (copy / "result.json").unlink()
    with pytest.raises(ValueError, match=r"3-halving.json' is not valid JSON .*delete it"):
        tune(task, out=copy, progress=False)
    # a stage file missing a key (edited by hand) is one line naming the file and the key
    saved = json.loads((copy / "1-range-test.json").read_text())
    (copy / "1-range-test.json").write_text(json.dumps({"result": saved["result"]}))
    with pytest.raises(ValueError, match=r"1-range-test.json' has no key 'stage' .*delete it"):
        tune(task, out=copy, progress=False)
    meta = json.loads((copy / "meta.json").read_text())
    del meta["task_ref"]
    (copy / "meta.json").write_text(json.dumps(meta))
    assert cli.main(["tune", "--resume", str(copy), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "meta.json' has no key 'task_ref'" in err and "Traceback" not in err
    # a damaged meta.json cannot be redone: the folder cannot be resumed without it
    (copy / "meta.json").write_text("{")
    assert cli.main(["tune", "--resume", str(copy), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "meta.json' is not valid JSON" in err and "delete it" not in err
    assert "cannot be resumed without it: start a new run with another --out" in err


def test_a_finished_folder_without_its_weights_trains_the_final_run_again(task, done, tmp_path,
                                                                         monkeypatch):
    """A finished folder whose final-weights.pt was deleted counted as finished (report.html
    was there): resume returned a result naming weights that did not exist."""
    import shutil

    res, out = done
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "final-weights.pt").unlink()
    calls = _count_train_runs(monkeypatch)
    again = tune(task, out=copy, progress=False)
    assert calls == [STEPS]  # the final run only: every other stage is read back
    assert again.weights == str(copy / "final-weights.pt") and Path(again.weights).exists()
    assert (again.family, again.lr, again.cost_steps) == (res.family, res.lr, res.cost_steps)
    assert again.metric == pytest.approx(res.metric, rel=1e-9)
    model = task.build_model(0)
    model.load_state_dict(torch.load(again.weights))
    assert task.score(model, "test") == pytest.approx(again.metric, rel=1e-6)


def test_cli_prints_the_run_length_lr_of_an_early_overfit(done, capsys, monkeypatch):
    from lrkit import cli

    res, out = done
    early = {"lr_for_run_length": 0.0123, "best_val_checkpoint_step": 40}
    hinted = dataclasses.replace(res, stages=tuple(
        dataclasses.replace(st, outcome={**st.outcome, **early}) if st.name == "final run"
        else st for st in res.stages))
    monkeypatch.setattr(tune_mod, "_tune", lambda *args, **kwargs: hinted)
    assert cli.main(["tune", "--resume", str(out), "--task", "tests.test_tune:tiny_task",
                     "--no-progress"]) == 0
    assert ("  run length: the final run overfit from step 40; for this run length a peak of "
            "about 0.0123 is likely better (not run: see why)") in capsys.readouterr().out


def test_smooth_against_hand_average():
    y = [1.0, 2.0, 3.0, 10.0, float("nan"), 6.0]
    s = smooth(y, 3)
    assert s.tolist() == pytest.approx([1.5, 2.0, 5.0, 6.5, 8.0, 6.0])


def test_compare_each_schedule_at_its_own_best_lr(task, tmp_path):
    from lrkit.compare import SEARCH, CompareResult, compare

    res = compare(task, schedules=("constant", "cosine"), progress=False)
    assert [r["family"] for r in res.rows] == ["constant", "cosine"]
    for r in res.rows:
        # five LRs a quarter decade apart around the family's centre; the best val MSE wins
        assert r["lrs"] == pytest.approx([r["centre"] * m for m in SEARCH])
        finite = [(v, i) for i, v in enumerate(r["val"]) if math.isfinite(v)]
        assert r["lr"] == pytest.approx(r["lrs"][min(finite)[1]])
        replay = train.run(task, schedules.from_spec(r["schedule"]), seed=0, eval_split="test")
        assert r["test"] == pytest.approx(replay.metric, rel=1e-6)
        every = STEPS // 30  # the validation metric every 6 steps
        assert len(r["losses"]) == STEPS and [s for s, _ in r["val_curve"]] == list(
            range(every, STEPS + 1, every))
    assert res.best()["test"] == min(r["test"] for r in res.rows)
    b = res.best()
    assert repr(res) == (f"CompareResult(task={task.name!r}, best={b['family']!r}, best_lr="
                         f"{b['lr']:.4g}, best_test_{task.metric}={b['test']:.4g}, families=2, "
                         f"cost_steps={res.cost_steps})")
    assert res.table().count("\n") == 3 and f"| test {task.metric} (" in res.table()
    for r, line in zip(res.rows, res.table().splitlines()[2:]):  # a best LR at an edge said
        assert r["at_edge"] == (r["lr"] in (r["lrs"][0], r["lrs"][-1]))
        assert ("(edge of the search)" in line) == r["at_edge"]
    again = CompareResult.from_dict(json.loads(json.dumps(res.to_dict())))
    again.plot(tmp_path / "cmp.png")
    assert (tmp_path / "cmp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="schedules"):
        compare(task, schedules=("cosine", "nope"), progress=False)


def _saved_texts(monkeypatch) -> list[str]:
    """Patch ``Figure.savefig`` to record every text of each figure saved; returns the list."""
    from matplotlib.figure import Figure
    from matplotlib.text import Text

    texts: list[str] = []
    real = Figure.savefig

    def savefig(fig, *args, **kwargs):
        texts.extend(t.get_text() for t in fig.findobj(Text) if t.get_text())
        return real(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return texts


def test_dollars_in_a_users_names_are_drawn_as_written(tmp_path, monkeypatch):
    """A metric named ``loss $\\frac{a}$ x`` crashed tune's report after all the training
    (matplotlib's mathtext could not parse it) and ``lrkit compare``'s plot; a valid span was
    drawn as math. Every ``$`` of a user's name is now escaped in the plots."""
    from matplotlib import cbook

    from lrkit.compare import compare

    metric = r"loss $\frac{a}$ x"
    named = dataclasses.replace(tiny_task(), name="cost $US$", metric=metric)
    texts = _saved_texts(monkeypatch)
    res = tune(named, out=tmp_path / "run", progress=False)
    assert Path(res.report).exists() and (tmp_path / "run" / "result.json").exists()
    cmp = compare(named, schedules=("constant", "cosine"), progress=False)
    cmp.plot(tmp_path / "cmp.png")
    drawn = [t for t in texts if "frac" in t or "$US" in t]  # (log axes' ticks are math)
    assert drawn and not any(cbook.is_math_text(t) for t in drawn)  # drawn as plain text...
    shown = [t.replace(r"\$", "$") for t in drawn]  # ...which shows each \$ as $
    assert any(metric in t for t in shown) and any(t.startswith("cost $US$: ") for t in shown)


def test_the_final_lr_is_time_rescaled_when_the_run_above_replays_the_winner_and_overfits():
    """Rung-1 records (tune's own keys: ``losses``, ``val_curve``) on a val curve that depends
    on lr x t only and is best at lr x t = 1: the winner's LR would overfit a full run 8x as
    long, so the final LR is the winner's x rung1 / full; a still-falling curve keeps it."""
    import numpy as np

    from lrkit.tune import _time_rescaled

    class T:
        higher_is_better, metric = False, "mse"

    def rec(lr, u):
        curve = [[t, float(u(lr * t))] for t in range(10, 101, 10)]
        return {"lr": lr, "metric": curve[-1][1], "diverged": False, "val_curve": curve,
                "losses": list(np.linspace(1.0, 0.2, 100)), "steps": 100}

    def overfits(tau):
        return 0.5 + 0.4 * np.log10(tau) ** 2

    runs = [rec(lr, overfits) for lr in (0.0056, 0.01, 0.0178)]
    lr, why = _time_rescaled(T(), runs[1], runs, full=800)
    assert lr == pytest.approx(0.01 * 100 / 800) and "gradient-flow time rescaling" in why

    def falling(tau):
        return 1.0 / (1.0 + 3 * tau)

    runs = [rec(lr, falling) for lr in (0.0056, 0.01, 0.0178)]
    assert _time_rescaled(T(), runs[2], runs, full=800) == (0.0178, None)
    # records without val curves (a run folder from an older lrkit): the winner stands
    old = [{k: v for k, v in r.items() if k != "val_curve"} for r in runs]
    assert _time_rescaled(T(), old[1], old, full=800) == (0.01, None)
    # records read back from the run folder or the study (JSON: non-finite values are strings
    # or null): a diverged run among them, or every run diverged, reads as "nothing to rescale"
    runs = [rec(lr, overfits) for lr in (0.0056, 0.01, 0.0178)]
    runs[2] = dict(runs[2], diverged=True, metric="Infinity",
                   val_curve=[[10, 0.9], [20, "NaN"], [100, None]])
    assert _time_rescaled(T(), runs[1], runs, full=800) == (0.01, None)
    dead = [dict(r, diverged=True, metric="NaN", val_curve=[[100, "Infinity"]]) for r in runs]
    assert _time_rescaled(T(), dead[0], dead, full=800) == (0.0056, None)


def test_tune_on_an_overfitting_task_time_rescales_the_final_lr_and_the_report_says_so(tmp_path):
    """diabetes, seed 0: rung 1 picks 0.0044 (78-step runs); the run above replays it and gets
    no better, so the 600-step final run takes 0.0044 x 78/600 = 5.7e-4, inside the oracle's
    band [5.5e-4, 1.9e-3] (benchmarks/results/oracle-diabetes.json); the report's halving
    section says why the final LR is not the chosen short run's."""
    import lrkit
    from lrkit.tune import tune

    res = tune(lrkit.tasks.get("diabetes"), seed=0, out=str(tmp_path / "run"), progress=False)
    halving = json.loads((tmp_path / "run" / "3-halving.json").read_text())
    kept = [t for t in halving["trials"] if t["rung"] == 1 and t.get("kept")][0]
    assert res.lr < kept["lr"] / 3
    assert 5.0e-4 < res.lr < 1.9e-3
    page = (tmp_path / "run" / "report.html").read_text()
    assert "time-rescaled" in page and f"{res.lr:.3g}" in page
    # the evidence drawn: the chosen family's rung-1 runs against their integrated LR
    assert (tmp_path / "run" / "time.png").stat().st_size > 5000
    assert "rung-1 runs against their integrated LR" in page


def test_a_frozen_annealed_tail_is_no_evidence_against_the_end():
    """A run annealed to LR 0 ends on identical evaluations (tail spread 0): the end must still
    be worse than the best beyond the metric's second-difference noise (digits-long seed 1:
    0.979 at step 576, 0.972 at the end; noise 0.004), while a clear fall is kept."""
    noisy = [0.90, 0.95, 0.93, 0.97, 0.95, 0.979, 0.96, 0.975, 0.972, 0.972, 0.972, 0.972]
    val = list(enumerate(noisy))
    assert not tune_mod._worse_beyond_noise(val, max(noisy))
    fallen = noisy[:8] + [0.90, 0.90, 0.90, 0.90]
    assert tune_mod._worse_beyond_noise(list(enumerate(fallen)), max(fallen))


def test_a_checkpoint_kept_without_overfitting_is_explained_as_jitter(task, tmp_path,
                                                                      monkeypatch):
    """The best-validation checkpoint is kept wherever the end is worse beyond noise, also
    where the monitor reads no trend (a constant LR's jitter: mnist1d seed 2, test 0.913 with
    it, 0.881 without). Forced here on the tiny regression: the model kept is the checkpoint
    (its saved weights score the reported metric), and the explanation says why without
    claiming overfitting or pointing to full-length runs."""
    monkeypatch.setattr(tune_mod, "_worse_beyond_noise", lambda val, best: True)
    res = tune(task, out=tmp_path / "run", progress=False)
    final = json.loads((tmp_path / "run" / "4-final.json").read_text())
    kept = final["best_val_checkpoint"]
    assert kept is not None and not kept["overfitting"]
    assert res.metric == kept["test"] and final["metric_at_end"] == kept["test_at_end"]
    model = task.build_model(0)
    model.load_state_dict(torch.load(res.weights))
    model.eval()
    assert task.evaluate(model, "test") == pytest.approx(res.metric, rel=1e-6)
    why = json.loads((tmp_path / "run" / "result.json").read_text())["explanation"]
    assert "more than twice its own noise, a jitter the monitor does not read as overfitting" in why
    assert f"best-validation checkpoint (step {kept['step']} of {STEPS})" in why
    assert "overfit from step" not in why and "Full-length runs" not in why


def test_a_final_run_that_overfits_after_the_short_runs_points_to_full_length_runs():
    """When the final run overfit beyond noise (its best-validation checkpoint was kept: on a
    noise-level peak, as digits' at step 167, nothing is said), that step against the short runs'
    horizon: past it, the short runs could not see it; the advice names the search that would
    (a range test of search's own length and 3 full runs), as a command for a task the CLI can
    load and as a call for any."""
    from lrkit.search._core import range_test_steps

    task = make_task(200)
    plan = tune_mod._Plan(total_steps=400, range_iters=40, rung0=15, rung1=30, keep=1)
    steps = range_test_steps(task) + 3 * 200
    text = tune_mod._explain_overfitting(90, task, "tests.test_tune:tiny_task", plan)
    assert text == ("The final run overfit from step 90 of 200, after the short runs' 30 steps "
                    "ended, so they could not rank the LRs by it: the best LR for the full run "
                    "may lie lower. Full-length runs would check (a range test and 3 full runs, "
                    f"{steps} steps: `lrkit search --task tests.test_tune:tiny_task --budget "
                    f"{steps}` or `lrkit.search(task, budget={steps})`).")
    # within the short runs' horizon they could have seen it: no such claim; a from_torch task
    # (no name the CLI can load) gets the call only
    text = tune_mod._explain_overfitting(20, task, "torch", plan)
    assert "could not rank" not in text and "lrkit search --task" not in text
    assert text.endswith(f"{steps} steps: `lrkit.search(task, budget={steps})`).")
    # a from_torch task named like a built-in one is not that task: no command
    user = dataclasses.replace(task, name="digits", version="user-0123")
    text = tune_mod._explain_overfitting(20, user, "digits", plan)
    assert text.startswith("The final run overfit from step 20 of 200: ")
    assert "lrkit search --task" not in text


def test_an_early_overfit_names_the_lr_for_the_run_length():
    """A final run that peaked on validation in its first third and then overfit names
    ``lr x step / steps`` (gradient-flow time): a full run there ends where this one peaked.
    Not for a later peak, a jitter or a checkpoint from before a divergence."""
    kept = {"step": 72, "overfitting": True, "diverged": False}
    assert tune_mod.run_length_lr(0.0113, kept, 600) == pytest.approx(0.0113 * 72 / 600)
    assert tune_mod.run_length_lr(0.0113, {**kept, "step": 201}, 600) is None
    assert tune_mod.run_length_lr(0.0113, {**kept, "overfitting": False}, 600) is None
    assert tune_mod.run_length_lr(0.0113, {**kept, "diverged": True}, 600) is None
    # a cut at step 40 (updates 41 on at a third): 41 updates at 0.0113, 31 at a third of it
    cut = [{"step": 40, "scale": 1 / 3}]
    assert tune_mod.run_length_lr(0.0113, kept, 600, cut) == pytest.approx(
        0.0113 * (41 + 31 / 3) / 600)
    assert tune_mod.run_length_lr(0.0113, kept, 600, [{"step": 80, "scale": 1 / 3}]) == \
        pytest.approx(0.0113 * 72 / 600)  # a cut after the checkpoint changes nothing
    assert tune_mod.run_length_lr(0.0113, kept, 600, cut + [{"step": 50, "scale": 1 / 9}]) == \
        pytest.approx(0.0113 * (41 + 10 / 3 + 21 / 9) / 600)
    task = make_task(200)
    plan = tune_mod._Plan(total_steps=400, range_iters=40, rung0=15, rung1=30, keep=1)
    text = tune_mod._explain_overfitting(40, task, "torch", plan, 0.02)
    assert text.startswith("The final run overfit from step 40 of 200, after the short runs' "
                           "30 steps ended, so they could not rank the LRs by it: the best LR "
                           "for the full run is likely lower, about 0.02 (the LR times 40/200")


def test_without_a_suggestion_tune_centres_where_confirm_would():
    """When the range test abstains on a curve that did fall (here 12%, in noise), tune's
    candidates start from the peers' read of the same curve (fastai's valley), as confirm mode
    does, not from the recipe's textbook LR; a flat curve still falls back to the recipe's."""
    import numpy as np

    from lrkit.finder import _build_result

    rng = np.random.default_rng(2)
    lrs = np.logspace(-6, 1, 100)
    x = np.log10(lrs)
    y = (1.0 - 0.12 / (1 + np.exp(-(x + 3) * 3)) + np.where(x > 0, 5 * x ** 3, 0)
         + rng.normal(0, 0.06, 100))
    rt = _build_result(lrs, y, "completed", method="lrkit", num_iter=100, cost=100, wall=0.0,
                       settings={}, train_size=None, batch_size=None)
    assert rt.suggestion.lr is None and rt.suggestions["valley"].lr is not None  # the premise
    task = make_task(200)
    centres, origin = tune_mod._centres(rt, task, ("constant", "cosine"))
    assert origin == "fastai's valley rule on the same curve"
    assert centres["constant"] == pytest.approx(rt.suggestions["valley"].lr)
    flat = _build_result(lrs, 1.0 + rng.normal(0, 0.01, 100), "completed", method="lrkit",
                         num_iter=100, cost=100, wall=0.0, settings={}, train_size=None,
                         batch_size=None)
    centres, origin = tune_mod._centres(flat, task, ("constant",))
    assert origin.startswith("the recipe's default LR")
    assert centres["constant"] == pytest.approx(task.recipe.default_lr)


def test_a_guessed_centre_spreads_its_candidates_a_decade_apart(tmp_path):
    """When the range test gives no LR, the candidates' centre is a guess (the peers' read of
    the curve, else the recipe's default), and its three rung-1 LRs are a decade apart instead
    of a quarter decade. A model whose hidden units are dead (zero weights, negative bias)
    fitting a zero-mean target: no suggestion from the range test."""
    model, x, y = dead_relu_regression(96)
    data = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    task = from_torch(model, torch.optim.SGD(model.parameters(), lr=0.01), data,
                      torch.nn.functional.mse_loss, val_loader=[(x[64:], y[64:])], steps=200)
    res = tune(task, out=tmp_path / "g", progress=False, schedules=("constant",))
    rt = json.loads((tmp_path / "g" / "1-range-test.json").read_text())
    assert rt["stage"]["outcome"]["lr"] is None  # the premise: no suggestion
    cand = json.loads((tmp_path / "g" / "2-candidates.json").read_text())
    assert cand["spacing_decades"] == CONFIRM_GUESS_SPACING == 1.0
    c = cand["centres"]["constant"]
    h = json.loads((tmp_path / "g" / "3-halving.json").read_text())
    first = [t["lr"] for t in h["trials"] if t["rung"] == 1][:3]
    assert sorted(first) == pytest.approx([c / 10, c, 10 * c])
    assert "three LRs a decade apart (the range test gave no LR" in res.explanation
    html = (tmp_path / "g" / "report.html").read_text()
    assert "<p>No suggestion (none: " in html and "Suggestion diverged" not in html


def test_the_recipe_warmup_is_dropped_only_when_a_run_without_it_scores_better(tmp_path, done):
    """The warmup check: one more rung-1 run at the winner's LR and schedule without the
    recipe's warmup; the final run drops the warmup exactly when that run's val metric is
    strictly better. A recipe without a warmup gets no such run."""
    base = make_task(STEPS)
    # half the run warming up: on a least-squares problem (fixed curvature, nothing for a warmup
    # to protect) that only slows the run down, so the run without it must win
    task = dataclasses.replace(base, recipe=dataclasses.replace(base.recipe, warmup_steps=100))
    res = tune(task, out=tmp_path / "w", progress=False, schedules=("constant", "cosine"))
    h = json.loads((tmp_path / "w" / "3-halving.json").read_text())
    check = h["stage"]["outcome"]["warmup"]
    win = next(t for t in h["trials"] if t["rung"] == 1 and t["kept"])
    bare = [t for t in h["trials"] if t.get("no_warmup")]
    assert len(bare) == 1 and check is not None and "skipped" not in check
    assert h["plan"] == dataclasses.asdict(tune_mod._halving_plan(
        STEPS, 2.0, json.loads((tmp_path / "w" / "1-range-test.json").read_text())[
            "result"]["cost_steps"], 2, reserve=2)) | {"range_iters": h["plan"]["range_iters"]}
    (bare,) = bare
    assert (bare["rung"], bare["family"], bare["steps"]) == (1, win["family"], win["steps"])
    assert bare["lr"] == pytest.approx(win["lr"])
    # the winner's miniature warms up over half its steps, the check's run not at all
    assert win["schedule"]["name"] == "warmup"
    assert win["schedule"]["steps"] == round(100 * win["steps"] / STEPS)
    assert bare["schedule"]["name"] != "warmup" and bare["warmup_steps"] == 0
    # both stored val metrics replay from their specs, and the decision is their comparison
    for t in (win, bare):
        again = train.run(task, schedules.from_spec(t["schedule"]), steps=t["steps"], seed=0,
                          eval_split="val")
        assert again.metric == pytest.approx(t["metric"], rel=1e-6)
    assert check["dropped"] == (bare["metric"] < win["metric"])
    assert check["dropped"]  # a lower val MSE without the warmup, as on a quadratic it must be
    assert bare["metric"] < 0.9 * win["metric"]
    # the final run has no warmup, its spec replays to the result's metric, and the cost counts
    # the extra run
    assert res.schedule == schedules.family(res.family, res.lr, STEPS).spec
    assert res.family == win["family"]
    replay = train.run(task, schedules.from_spec(res.schedule), seed=0, eval_split="test")
    final = json.loads((tmp_path / "w" / "4-final.json").read_text())
    assert final["metric_at_end"] == pytest.approx(replay.metric, rel=1e-6)
    rt = json.loads((tmp_path / "w" / "1-range-test.json").read_text())
    assert res.cost_steps == (rt["result"]["cost_steps"] + sum(
        t["steps_done"] for t in h["trials"]) + final["steps_done"])
    assert res.cost_steps <= 2 * STEPS
    assert "without the recipe's warmup (the first 100 of 200 steps)" in res.explanation
    assert "so the final run has no warmup" in res.explanation
    # the report's table names the check's run
    assert "no warmup (chosen)" in (tmp_path / "w" / "report.html").read_text()
    # a recipe without a warmup: no check, no extra run
    res0, out0 = done
    h0 = json.loads((out0 / "3-halving.json").read_text())
    assert h0["stage"]["outcome"]["warmup"] is None
    assert not any(t.get("no_warmup") for t in h0["trials"])


def test_resume_after_the_confirmation_stage_keeps_its_walk(tmp_path, monkeypatch):
    """Ctrl-C in the final run, then resume: stage 3 is re-read from its log and must reach the
    same decision. A walk's budget test counted every run in the log, the walk's own included,
    so on resume the walk stopped before that run and another LR won (seen on cancer-small)."""
    real = tune_mod._centres

    def too_low(rt, task, families):  # the top edge wins and rung 1 walks up
        centres, origin = real(rt, task, families)
        return {f: c / 30 for f, c in centres.items()}, origin

    monkeypatch.setattr(tune_mod, "_centres", too_low)
    out = tmp_path / "w"
    first = tune(make_task(STEPS), out=out, progress=False, schedules=("constant",))
    h = json.loads((out / "3-halving.json").read_text())
    assert h["rungs"][-1]["walks"] >= 1  # the situation under test
    for name in ("4-final.json", "result.json", "final-weights.pt", "report.html"):
        (out / name).unlink()  # interrupted in the final run
    calls = _count_train_runs(monkeypatch)
    again = tune(make_task(STEPS), out=out, progress=False, schedules=("constant",))
    assert calls == [STEPS]  # the final run only
    h2 = json.loads((out / "3-halving.json").read_text())
    assert h2["stage"]["outcome"] == h["stage"]["outcome"]
    assert (again.lr, again.family, again.cost_steps) == (first.lr, first.family,
                                                          first.cost_steps)
    assert again.metric == pytest.approx(first.metric, rel=1e-9)


def _tune_blobs(per_class: int, n_train: int, tmp_path: Path) -> tuple:
    """tune (constant only) on :func:`tests.tiny_task.blobs`: the result, the halving log
    and its rung-1 runs."""
    model, opt, loader, val, test, accuracy = blobs(per_class, n_train)
    task = from_torch(model, opt, loader, torch.nn.CrossEntropyLoss(), val_loader=val,
                      test_loader=test, steps=STEPS, metric_fn=accuracy, higher_is_better=True,
                      name="blobs")
    res = tune(task, out=tmp_path / "w", progress=False, schedules=("constant",))
    h = json.loads((tmp_path / "w" / "3-halving.json").read_text())
    return res, h, [t for t in h["trials"] if t["rung"] == 1]


def test_a_tie_at_the_edge_of_rung_one_is_not_walked_on(tmp_path):
    """Two far-apart Gaussian blobs: every short run classifies the val split perfectly, so
    all rung-1 runs tie. The lower LR wins a tie, which puts the winner at the lower edge, but
    a tie is no evidence that the best lies beyond: no walk, no "edge" in the explanation."""
    res, h, r1 = _tune_blobs(200, 300, tmp_path)
    assert len(r1) == 3 and {t["metric"] for t in r1} == {1.0}  # the situation under test
    assert h["rungs"][-1]["walks"] == 0
    win = next(t for t in r1 if t["kept"])
    assert win["lr"] == min(t["lr"] for t in r1)  # the lower LR wins a tie
    assert h["stage"]["outcome"]["at_edge"] is False
    assert "the best may lie beyond" not in res.explanation
    assert "scored the same, so the short runs could not tell" in res.explanation


def test_a_val_tie_is_broken_by_the_loss_on_batches_no_run_had_seen(tmp_path):
    """The blobs of the test above, with 5,000 training examples: every rung-1 run still
    classifies the val split perfectly (a tie), but each run's batches are all new to it, so
    their losses are a held-out estimate over far more examples than the val split. The run
    whose loss is lower beyond two standard errors wins, and the explanation says why."""
    res, h, r1 = _tune_blobs(2600, 5000, tmp_path)
    assert {t["metric"] for t in r1} == {1.0}  # the situation under test: a tie on val
    assert all(t["steps"] * 32 <= 5000 for t in r1)  # every batch new to the run
    tb = h["stage"]["outcome"]["loss_tiebreak"]
    assert tb is not None
    win = next(t for t in r1 if t["kept"])
    assert win["lr"] > tb["val_pick_lr"] == min(t["lr"] for t in r1[:3])

    def tail_loss(t):
        q = len(t["losses"]) // 4
        return sum(t["losses"][-q:]) / q

    assert tail_loss(win) == pytest.approx(tb["loss"])
    assert tb["loss"] + 2 * math.hypot(tb["loss_se"], tb["val_pick_loss_se"]) < tb["val_pick_loss"]
    assert min(r1, key=tail_loss) is win or h["rungs"][-1]["walks"] > 0
    assert "the training loss on batches neither run had seen before could" in res.explanation


def test_the_lr_range_and_its_sentence(tmp_path):
    """``TuneResult.lr_range`` is the bracket of the rung-1 runs of the winner's family, at the
    final run's scale, survives ``to_dict`` / ``from_dict``, and reads in words."""
    from lrkit.finder import bracket

    task = make_task(steps=STEPS)
    res = tune(task, out=tmp_path / "w", progress=False, schedules=("constant",))
    h = json.loads((tmp_path / "w" / "3-halving.json").read_text())
    runs = [t for t in h["trials"] if t["rung"] == 1 and not t.get("no_warmup")]
    win = next(t for t in runs if t["kept"])
    br = bracket(task, win, runs)
    scale = h["stage"]["outcome"]["lr"] / win["lr"]
    assert list(res.lr_range) == [None if br[k] is None else pytest.approx(br[k] * scale)
                                  for k in ("below", "above")]
    assert TuneResult.from_dict(json.loads(json.dumps(res.to_dict()))).lr_range == res.lr_range
    assert range_sentence((0.1, 0.3), [0.15, 0.2]) == (
        "by the short runs, the best peak lr lies between 0.1 and 0.3 (worse beyond noise at "
        "both; runs from 0.15 to 0.2 scored alike)")
    assert range_sentence((None, 0.3)) == (
        "by the short runs, the best peak lr lies below 0.3 (worse beyond noise there, none "
        "below)")
    assert range_sentence((0.1, None), [0.2, 0.2]) == (
        "by the short runs, the best peak lr lies above 0.1 (worse beyond noise there, none "
        "above)")
    assert range_sentence((None, None), [0.1, 0.3]) == (
        "the short runs from 0.1 to 0.3 scored alike within noise and none was worse: they do "
        "not bound the best")
    assert range_sentence((None, 2.0), diverged=2.0) == (
        "the best peak lr lies below 2, where the full run diverged")
    assert f"Uncertainty: {res.uncertainty}." in Path(res.report).read_text()


def test_after_a_diverged_final_run_the_uncertainty_is_the_lr_that_diverged(tmp_path,
                                                                           monkeypatch):
    """Whatever the short runs said, a final run that diverged bounds the LR from above: the
    tiny regression diverges at 1.0, where the rung-1 winner is sent here."""
    monkeypatch.setattr(tune_mod, "_time_rescaled", lambda *a: (1.0, None))
    res = tune(make_task(STEPS), out=tmp_path / "w", progress=False, schedules=("constant",))
    final = next(st for st in res.stages if st.name == "final run")
    assert final.outcome["retried_from_lr"] == 1.0 and res.lr == pytest.approx(0.1)
    assert res.lr_range == (None, 1.0)
    assert res.uncertainty == "the best peak lr lies below 1, where the full run diverged"
    assert f"Uncertainty: {res.uncertainty}." in Path(res.report).read_text()


def test_an_unreachable_storage_is_said_before_the_range_test(tmp_path, capsys):
    """``lrkit tune --storage postgresql://...`` with no server there ran the whole range test
    and then failed on the storage; it now fails first, in one line that names the URL with
    its password masked, and the run folder it made is removed (it held only meta.json, and a
    resume may not change the storage: a new run with the right URL starts afresh)."""
    from lrkit import cli

    out = tmp_path / "run"
    rc = cli.main(["tune", "--task", "tests.test_tune:tiny_task", "--out", str(out),
                   "--storage", "postgresql://u:secret@127.0.0.1:1/db", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("lrkit: error: cannot open storage")
    assert "secret" not in err and "Traceback" not in err
    assert not out.exists()
    # a folder given that exists already is left as it was (only its meta.json is new)
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert cli.main(["tune", "--task", "tests.test_tune:tiny_task", "--out", str(out),
                     "--storage", "postgresql://u:secret@127.0.0.1:1/db", "--no-progress"]) == 1
    assert (out / "notes.txt").read_text() == "mine"
    assert not (out / tune_mod._FILES["range"]).exists()


def test_a_default_run_folder_is_removed_after_a_failed_start(tmp_path, monkeypatch, capsys):
    """Without ``--out`` the command line makes the default folder itself (to name it in the
    Ctrl-C hint): once that folder was made at once, a failed start left it behind."""
    from lrkit import cli

    monkeypatch.chdir(tmp_path)
    assert cli.main(["tune", "--task", "tests.test_tune:tiny_task", "--storage",
                     "postgresql://u:secret@127.0.0.1:1/db", "--no-progress"]) == 1
    assert capsys.readouterr().err.startswith("lrkit: error: cannot open storage")
    assert list((tmp_path / "lrkit-runs").iterdir()) == []
    # a setting refused before any run (the folder was left, empty, until the 25th round),
    # from the command line and from Python (which now makes its default folder first too)
    assert cli.main(["tune", "--task", "tests.test_tune:tiny_task", "--budget", "-1"]) == 2
    assert "budget must be > 1" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"schedules\[0\] must be one of"):
        tune(tiny_task(), schedules=("nope",), progress=False)
    assert list((tmp_path / "lrkit-runs").iterdir()) == []


def test_a_run_folder_named_with_url_characters_keeps_its_study(tmp_path, monkeypatch):
    """The study's SQLite URL pasted the folder in unescaped: with a '?' the database went to
    the file named by what came before it (two runs shared it and the second crashed), a '%20'
    was decoded into another folder, and '{x}' crashed Optuna's URL template."""
    monkeypatch.chdir(tmp_path)
    out = Path("c?1 w%20x {x}") / "run"
    res = tune(tiny_task(), out=out, progress=False, schedules=("constant", "cosine"))
    assert (out / "study.db").is_file() and res.run_dir == str(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c?1 w%20x {x}"]


def test_the_helper_command_is_printed_on_one_line(tmp_path, monkeypatch, capsys):
    """rich broke tune's lines at the console's width: the helper command a user copies came
    out in three pieces (the first alone ran ``lrkit search`` without --task)."""
    monkeypatch.setenv("COLUMNS", "60")
    tune(tiny_task(), out=tmp_path / "run", progress=True, schedules=("constant", "cosine"))
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "to help with" in x]
    assert "run: lrkit search --task " in line and " --storage sqlite:///" in line
    assert line.endswith("--study tune-run") and len(line) > 60


def test_a_working_folder_without_room_for_lrkit_runs_is_one_error(tmp_path, monkeypatch):
    """A read-only working folder (here: 'lrkit-runs' is a file) gave a PermissionError
    traceback from the default run folder's mkdir; a 245-character task name was "File name
    too long"."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lrkit-runs").write_text("")
    with pytest.raises(ValueError, match=r"cannot make the run folder .*pass out= \(--out\)"):
        tune(tiny_task(), progress=False)
    (tmp_path / "lrkit-runs").unlink()
    path = tune_mod._default_out("L" * 245)
    assert path.parent.name == "lrkit-runs" and path.name.startswith("L" * 100 + "-")


def test_a_runs_files_do_not_depend_on_the_hash_seed(tmp_path):
    """A rung's missing runs were queued in a set's order: the trials' order in
    3-halving.json (and the report's figure) moved with PYTHONHASHSEED."""
    import os
    import subprocess
    import sys

    halving = []
    for seed in ("1", "2"):
        out = tmp_path / f"run{seed}"
        subprocess.run([sys.executable, "-m", "lrkit", "tune", "--task",
                        "tests.test_tune:tiny_task", "--out", str(out), "--no-progress"],
                       cwd=Path(__file__).resolve().parent.parent, check=True, timeout=300,
                       capture_output=True, env={**os.environ, "PYTHONHASHSEED": seed})
        trials = json.loads((out / "3-halving.json").read_text())["trials"]
        halving.append([(t["rung"], t["family"], t["lr"]) for t in trials])
    assert halving[0] == halving[1] and len(halving[0]) >= 6


def test_the_helper_command_of_a_python_task_named_with_a_colon_is_a_template():
    """A Task object's name stands in for its reference: one with a ':' ('a/b c:é') was
    printed as a module to import (`cannot import module 'a/b c'`)."""
    task = dataclasses.replace(tiny_task(), name="a/b c:é")
    url, name = "sqlite:////tmp/s.db", "tune-x"
    assert "--task package.module:function " in tune_mod._helper_command(task, task.name, url,
                                                                          name)
    for ref in ("digits", "mypkg.tasks:make"):  # a built-in name and a module reference stay
        assert f"--task {ref} " in tune_mod._helper_command(task, ref, url, name)


def test_an_interrupted_tune_from_python_says_where_its_finished_stages_are(
        tmp_path, monkeypatch, capsys):
    """A notebook's interrupt of ``lrkit.tune(task)``: the CLI named the folder to resume,
    Python said nothing, and rerunning the cell started over in a new folder."""
    monkeypatch.chdir(tmp_path)

    class Interrupt(train.Callback):
        def on_step_end(self, info):
            if info.step == 5:
                raise KeyboardInterrupt

    real_run = train.run
    monkeypatch.setattr(train, "run", lambda *a, **kw: real_run(
        *a, **{**kw, "callbacks": [*kw.get("callbacks", []), Interrupt()]}))
    with pytest.raises(KeyboardInterrupt):
        tune(tiny_task(), progress=False, schedules=("constant", "cosine"))
    monkeypatch.setattr(train, "run", real_run)
    (out,) = (tmp_path / "lrkit-runs").iterdir()
    out = out.relative_to(tmp_path)
    assert capsys.readouterr().err.strip() == (
        f"interrupted: finished stages are kept in {out}; continue with "
        f"lrkit.tune(task, out={str(out)!r})")
    ranged = out / tune_mod._FILES["range"]
    stamp = ranged.stat().st_mtime_ns
    res = tune(tiny_task(), progress=False, schedules=("constant", "cosine"), out=str(out))
    assert res.run_dir == str(out) and ranged.stat().st_mtime_ns == stamp  # resumed there
    assert len(list((tmp_path / "lrkit-runs").iterdir())) == 1


@pytest.mark.parametrize("beat", [True, False, "late"],
                         ids=["after-a-beat", "before-any-beat", "beat-after-grace"])
def test_a_run_left_running_by_a_killed_process_is_said_and_taken_back(tmp_path, monkeypatch,
                                                                        beat):
    """``lrkit tune --resume`` after a ``kill -9`` finds the killed process's confirmation run
    still "running" in its study: it waited out the heartbeat's grace (30 s) with its progress
    bar at 1 step, an ETA of an hour and no word. The bar now says what it waits for and for
    how long; the run is then taken back and trained here, once. Killed between ``ask`` and
    its first heartbeat, the run was never taken back (Optuna's stale-trial check skips a trial
    without heartbeats): the resumed run waited forever."""
    monkeypatch.setattr(tune_mod._Study, "HEARTBEAT", 1)
    monkeypatch.setattr(tune_mod._Study, "GRACE", 2)
    task = tiny_task()
    study = tune_mod._Study(f"sqlite:///{tmp_path / 'study.db'}", "t", task, seed=0, poll=0.05)
    arm = tune_mod._Arm("constant", 0.01, 0.01, 1.0)
    tune_mod._enqueue_arm(study.study, task, 1, arm.family, arm.lr, 20, 0)
    with pytest.warns(UserWarning, match="Heartbeat"):  # Optuna's: we beat by hand
        trial = study.study.ask()  # a worker pops the run, (beats once and) is killed
    if beat == "late":  # a run older than the grace whose worker beat just before it died:
        time.sleep(2.2)  # the resumed process gave it another beat (restarting its grace)
    if beat:
        study.storage.record_heartbeat(trial._trial_id)

    class Bar:
        def __init__(self):
            self.said, self.steps = [], 0

        def set_postfix_str(self, text, refresh=True):
            self.said.append(text)

        def update(self, n=1):
            self.steps += n

    bar, trained = Bar(), []
    got = study.run([arm], 1, 20, task, 0, bar, lambda rec, a: trained.append(a))
    assert any(t.startswith("waiting for 1 run(s) another process started") and "2 s" in t
               for t in bar.said)
    assert trained == [arm] and bar.steps == 20
    assert got[0][1]["steps_done"] == 20 and math.isfinite(got[0][1]["metric"])
    states = sorted(t.state.name for t in study.study.get_trials(deepcopy=False))
    assert states == ["COMPLETE", "FAIL"]  # the dead one failed, its arm trained again
    # only a run that never beat gets this process's beat
    assert study._beaten == (set() if beat else {trial._trial_id})


RUNG1_NEAR_CHANCE = [  # (lr, val accuracy every 3 steps, training losses) of 30-step runs
    (0.0003857,
     [0.1325, 0.1325, 0.135, 0.15, 0.1575, 0.155, 0.1525, 0.1525, 0.1525, 0.1475],
     [2.447, 2.542, 2.344, 2.221, 2.26, 2.262, 2.362, 2.219, 2.253, 2.132, 2.301, 2.311, 2.272,
      2.329, 2.249, 2.163, 2.197, 2.284, 2.199, 2.167, 2.257, 2.35, 2.412, 2.264, 2.5, 2.245, 2.31,
      2.2, 2.194, 2.308]),
    (3.857e-05,
     [0.13, 0.135, 0.135, 0.1475, 0.1425, 0.145, 0.145, 0.1525, 0.1425, 0.15],
     [2.447, 2.544, 2.347, 2.22, 2.267, 2.262, 2.379, 2.222, 2.273, 2.134, 2.311, 2.336, 2.283,
      2.355, 2.26, 2.185, 2.19, 2.315, 2.232, 2.194, 2.273, 2.381, 2.415, 2.311, 2.555, 2.266,
      2.327, 2.206, 2.22, 2.365]),
    (0.003857,
     [0.1325, 0.17, 0.1925, 0.22, 0.215, 0.21, 0.215, 0.21, 0.2125, 0.2125],
     [2.447, 2.527, 2.315, 2.227, 2.193, 2.262, 2.199, 2.201, 2.079, 2.131, 2.242, 2.127, 2.217,
      2.144, 2.209, 2.061, 2.335, 2.098, 2.013, 2.035, 2.177, 2.156, 2.454, 1.977, 2.14, 2.144,
      2.226, 2.196, 2.048, 1.92]),
    (0.0122,
     [0.19, 0.215, 0.225, 0.23, 0.2025, 0.195, 0.2, 0.2075, 0.205, 0.2],
     [2.447, 2.49, 2.249, 2.254, 2.065, 2.299, 1.924, 2.249, 1.863, 2.21, 2.276, 2.025, 2.201,
      1.937, 2.204, 2.187, 2.603, 2.055, 1.986, 2.115, 2.115, 1.992, 2.512, 1.878, 1.987, 2.077,
      2.149, 2.131, 2.005, 1.616]),
]


def test_a_winner_still_near_chance_is_not_time_rescaled():
    """A random held-out task (``heldout_random_tasks.py --seed 6``, row 0: an MLP on MNIST-1D
    under SGD with a step schedule, 150 steps; tune seed 1). Tune's 30-step runs all ended
    near chance (val accuracy 0.15-0.21, ten classes; training loss 2.45 -> 1.9-2.3). The run
    above the winner matched it at the same ``lr x t`` and then "got no better", so the final
    LR was cut 5x, to 7.7e-4: test accuracy 0.219, where the grid's best is 0.36 at 0.32. A
    winner whose training loss has fallen by under ``MIN_TRAIN_FALL`` (30%; here 15%) is still
    near its start: its val plateau is no optimum in ``lr x t``, and its LR stands. Every
    rescale on the built-in tasks came after a fall of 45% or more (``design_overfit.py``)."""
    import lrkit.finder
    from lrkit.tune import _time_rescaled

    class T:
        higher_is_better, metric = True, "accuracy"

    def rec(lr, vals, losses):
        lrs = [lr] * 15 + [lr * 0.1] * 7 + [lr * 0.01] * 8  # the step family's miniature
        return {"lr": lr, "metric": vals[-1], "diverged": False, "steps": 30, "lrs": lrs,
                "val_curve": [[3 * (i + 1), v] for i, v in enumerate(vals)], "losses": losses}

    runs = [rec(*r) for r in RUNG1_NEAR_CHANCE]
    best = max(runs, key=lambda r: r["metric"])
    assert best["lr"] == 0.003857 and lrkit.finder._train_fall(
        dict(best, train_losses=best["losses"])) == pytest.approx(0.15, abs=0.01)
    assert _time_rescaled(T(), best, runs, full=150) == (0.003857, None)
    lrkit_min = lrkit.finder.MIN_TRAIN_FALL
    try:  # without the guard the run above's plateau cut it to the rung's share of the run
        lrkit.finder.MIN_TRAIN_FALL = 0.0
        lr, why = _time_rescaled(T(), best, runs, full=150)
        assert lr == pytest.approx(0.003857 * 30 / 150) and "gets no better" in why
    finally:
        lrkit.finder.MIN_TRAIN_FALL = lrkit_min


def test_a_model_that_cannot_train_is_named_in_the_explanation(tmp_path, monkeypatch):
    # dead ReLUs on a zero-mean target: no LR moves the loss; the range test reads the flat
    # curve "as for a model that is already trained", the short runs tie, and the monitor's
    # lr_too_low says to raise the LR; the explanation says the model barely trains
    monkeypatch.setattr(tune_mod, "_safe_lr", lambda task, seed, folder: None)
    model, x, y = dead_relu_regression(256)
    data = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 192, 32)]
    t = from_torch(model, torch.optim.SGD(model.parameters(), lr=0.01), data,
                   torch.nn.functional.mse_loss, val_loader=[(x[192:], y[192:])], steps=80)
    res = tune(t, out=tmp_path / "dead", progress=False, schedules=("constant", "cosine"))
    m = re.search(r"The final run's training loss fell by only (-?[\d.]+)% over its 80 steps",
                  res.explanation)
    assert m and float(m.group(1)) < 100 * tune_mod.NO_LEARNING_FALL
    assert "check the model before the LR" in res.explanation
    assert "at a higher LR" not in res.explanation  # the monitor's lr_too_low advice is not given
    # a model that trains gets no such sentence
    torch.manual_seed(0)
    live = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    t2 = from_torch(live, torch.optim.SGD(live.parameters(), lr=0.01), data,
                    torch.nn.functional.mse_loss, val_loader=[(x[192:], y[192:])], steps=80)
    res2 = tune(t2, out=tmp_path / "live", progress=False, schedules=("constant", "cosine"))
    assert "barely trains" not in res2.explanation


@pytest.mark.filterwarnings("ignore:Sparse invariant checks:UserWarning")  # torch's Adagrad
def test_tune_trains_a_model_with_sparse_gradients(tmp_path):
    # nn.EmbeddingBag(sparse=True): the final run's monitor (gradient norm), its clipping and
    # the safe-LR bound all raised on sparse gradients before (benchmarks/user_sparse.py)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 40, (320, 6), generator=g)
    y = (x < 20).sum(1).gt(3).long()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.EmbeddingBag(40, 8, mode="mean", sparse=True),
                                torch.nn.Linear(8, 2))
    data = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 256, 32)]
    t = from_torch(model, torch.optim.Adagrad(model.parameters(), lr=0.05), data,
                   torch.nn.functional.cross_entropy, val_loader=[(x[256:], y[256:])],
                   steps=300, grad_clip=1.0)
    res = tune(t, out=tmp_path / "sparse", progress=False, schedules=("constant", "cosine"))
    assert math.isfinite(res.metric) and res.cost_steps <= 600
    safe = json.loads((tmp_path / "sparse" / "safe-lr.json").read_text())
    assert "error" not in safe, safe
    assert safe["lr"] > 0


def test_a_constant_winner_trains_with_a_cooldown_unless_the_short_runs_saw_overfitting(tmp_path):
    """Constant wins the short runs (which end before a cooldown pays); the final run holds its
    LR and decays over the last fifth (WSD at the same peak), where WSD is offered and no time
    rescaling said the model overfits. The result, its schedule and the saved run say so."""
    ff = tune_mod._final_family
    for family, offered, halving, want in (
            ("constant", ("constant", "wsd"), {}, "wsd"),
            ("constant", ("constant", "cosine"), {}, "constant"),  # WSD not offered
            ("constant", ("constant", "wsd"), {"rescaled": "overfits"}, "constant"),
            ("constant", ("constant", "wsd"), {"skipped": True}, "constant"),
            ("cosine", ("cosine", "wsd"), {}, "cosine")):
        before = dict(halving)
        assert ff(family, offered, halving) == want
        assert halving == before  # a pure choice: the explanation reads it from the final run
    res = tune(make_task(STEPS), out=tmp_path / "c", progress=False, schedules=("constant", "wsd"))
    halving = json.loads((tmp_path / "c" / "3-halving.json").read_text())["stage"]["outcome"]
    assert halving["family"] == "constant" and not halving["time_rescaled"]
    assert res.family == "wsd"
    assert res.schedule == schedules.family("wsd", res.lr, STEPS).spec
    final = json.loads((tmp_path / "c" / "4-final.json").read_text())
    assert final["family"] == "wsd" and final["lrs"][-1] < 0.1 * final["lrs"][0]
    assert final["lrs"][int(0.79 * STEPS)] == pytest.approx(res.lr)  # held until the last fifth
    assert tune_mod.COOLDOWN_SENTENCE in res.explanation
    assert "decays it to 0 over its last fifth (WSD)" in res.explanation
    # only constant offered: kept as it is
    res = tune(make_task(STEPS), out=tmp_path / "k", progress=False, schedules=("constant",))
    assert res.family == "constant" and "cooldown" not in res.explanation


def _separable(optimizer):
    """A separable three-class task (``benchmarks/user_optimizers.py``): 800 points, an MLP
    10-64-3, batch 32, 300 steps, scored by test log-loss. Its gradients shrink as it
    separates, and a high LR that short runs rank first turns unstable late."""
    from torch.nn import functional as F
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1200, 10, generator=g)
    y = (x @ torch.randn(10, 3, generator=g)).argmax(1)

    def loader(sl, bs, shuffle):
        return DataLoader(TensorDataset(x[sl], y[sl]), batch_size=bs, shuffle=shuffle,
                          generator=torch.Generator().manual_seed(0))

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 64), torch.nn.ReLU(), torch.nn.Linear(64, 3))
    return from_torch(model, optimizer(model.parameters()), loader(slice(0, 800), 32, True),
                      F.cross_entropy, val_loader=loader(slice(800, 1000), 200, False),
                      test_loader=loader(slice(1000, 1200), 200, False), steps=300, name="sep")


def test_the_final_run_lowers_its_lr_when_the_monitor_finds_it_too_high(tmp_path):
    """Adam on a separable task: the short runs rank 0.024 first, and at full length its loss
    climbs back from step ~95 (Adam's steps grow as the gradients shrink). The final run takes
    the monitor's advice at once, a 3x lower LR from the finding on: test log-loss 0.085
    against 0.112 for the same run without the cut (the grid's best, 0.076 at 0.0056)."""
    torch.set_num_threads(1)
    task = _separable(lambda p: torch.optim.Adam(p, lr=1e-3))
    res = tune(task, seed=2, out=tmp_path / "run", progress=False)
    final = json.loads((tmp_path / "run" / "4-final.json").read_text())
    assert [c["kind"] for c in final["lr_cuts"]] == ["lr_too_high"]
    s = final["lr_cuts"][0]["step"]
    assert any(f["kind"] == "lr_too_high" and f["step"] == s for f in final["findings"])
    sched = schedules.from_spec(res.schedule)
    for k, lr in enumerate(final["lrs"]):
        assert lr == pytest.approx(sched(k) * (1 / 3 if k > s else 1.0), rel=1e-12, abs=1e-15)
    plain = train.run(task, sched, steps=300, seed=2, eval_split="test")
    assert res.metric < 0.9 * plain.metric
    cut = final["lr_cuts"][0]
    assert cut["rule"] == "early_val_peak"  # the reading that raised it, with its evidence
    best = cut["evidence"]
    assert (f"The monitor found the LR too high at step {s} (the validation metric best at step "
            f"{best['best_step']}, early in the run, and worse since), so the final run took its "
            f"advice at once: it lowered the LR 3x from there" in res.explanation)
    stage = next(st for st in res.stages if st.name == "final run")
    assert stage.outcome["lr_cuts"] == final["lr_cuts"]
    page = Path(res.report).read_text()
    assert (f"The final run acted on lr_too_high at step {s}: from there its LR was the "
            "schedule's x0.333" in page)
    rules = [f["rule"] for f in final["findings"]]  # each finding's row names its reading
    assert all(f"<span class=muted>({r})</span>" in page for r in rules) and rules


def test_the_cut_is_explained_by_the_reading_that_raised_it():
    def said(rule, evidence=None):
        cut = {"step": 80, "kind": "lr_too_high", "rule": rule, "evidence": evidence or {},
               "scale": 1 / 3}
        # the final findings hold the finding as refreshed later, by another reading: the
        # cut's own record is what names why it was made
        final = {"lr": 0.3, "lr_cuts": [cut], "findings": [
            {"kind": "lr_too_high", "step": 80, "rule": "above_start", "evidence": {}}]}
        return tune_mod._explain_cuts(final)[0]

    assert "(the loss climbing back from its best)" in said("climbed_back")
    assert "(the loss rising above its start)" in said("rose_from_start")
    assert ("(the validation metric best at step 20, early in the run, and worse since)"
            in said("early_val_peak", {"best_step": 20, "factor": 15.0}))
    assert ("(the validation metric undone while the training loss stalled)"
            in said("val_undone"))
    assert "(the loss not falling while its gradient norm rose)" in said("stuck_grad_rise")
    assert "lowered the LR 3x from there (a rerun would start near 0.1)." in said("climbed_back")
    # every lr_too_high reading the monitor has is said in words
    assert not [r for r in RULES["lr_too_high"] if "(one of its readings)" in said(r)]
    assert "(one of its readings)" in said("")  # a run folder from before rules
    assert tune_mod._explain_cuts({"lr": 0.3, "lr_cuts": []}) == []


def test_a_warmup_a_family_cannot_fit_is_refused_before_any_run(tmp_path):
    # 36 of 40 steps of warmup: WSD's decay (its last 8 steps) does not fit behind it; it was
    # shortened without a word (lrkit.schedules.family), and is now refused at the door
    base = make_task()
    task = dataclasses.replace(base, recipe=dataclasses.replace(base.recipe, warmup_steps=36))
    with pytest.raises(ValueError, match=r"schedules: 'wsd' cannot take the recipe's warmup "
                       r"\(36 of 40 steps\): warmup_steps must be <= 32"):
        tune(task, out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    # without WSD the same recipe is fine
    res = tune(task, schedules=("constant", "cosine"), out=tmp_path / "run2",
                     progress=False)
    assert res.family in ("constant", "cosine")


def test_a_run_folder_is_held_by_one_tune_at_a_time(tmp_path, monkeypatch):
    """Two ``tune`` processes on one folder (the same ``--out``, or ``--resume`` of a run still
    going) both trained and wrote its files, and their saves crashed each other on a shared
    temporary name. The second is now refused by name; the folder is free again after a run,
    an error or a Ctrl-C; no temporary file is left."""
    from lrkit.errors import LRKitError

    out = tmp_path / "run"
    out.mkdir()
    other = tune_mod._Folder(out)
    other.hold()  # another tune holds it
    with pytest.raises(LRKitError, match=rf"out: the run folder '{re.escape(str(out))}' is in "
                       rf"use by another lrkit tune \(pid {os.getpid()}\)"):
        tune(tiny_task(), out=out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == [".lrkit-tune.lock"]  # nothing written
    other.release()

    def boom(*a, **k):
        raise RuntimeError("a bug in the user's task")

    with monkeypatch.context() as m:
        m.setattr(tune_mod, "_stage_halving", boom)
        with pytest.raises(RuntimeError, match="a bug"):
            tune(tiny_task(), out=out, progress=False)
    res = tune(tiny_task(), out=out, progress=False)  # free again: resumed in this process
    assert math.isfinite(res.metric)
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_default_run_folders_started_in_one_second_are_two(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stamp = tune_mod._dt.datetime.now(tune_mod._dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    (tmp_path / "lrkit-runs" / f"tiny-{stamp}").mkdir(parents=True)  # made by another process
    got = [tune_mod._default_out("tiny") for _ in range(2)]
    assert len(set(got)) == 2 and all(p.is_dir() for p in got)  # made here, one each


def test_a_run_folder_that_cannot_be_written_is_one_clear_error(tmp_path, monkeypatch):
    out = tmp_path / "ro"
    out.mkdir()

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self.file("lock")))

    monkeypatch.setattr(tune_mod._Folder, "hold", denied)
    with pytest.raises(ValueError, match=r"out: cannot write to the run folder .*ro' "
                       r"\(Permission denied: .*\.lrkit-tune\.lock\)"):
        tune(tiny_task(), out=out, progress=False)


class _NaNAfter(torch.nn.Module):
    """A linear model whose output turns NaN after ``n`` training forwards of a run (the
    counter is a buffer: every run starts it from 0)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.lin, self.n = torch.nn.Linear(4, 1), n
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        out = self.lin(x)
        if self.training:
            self.calls += 1
            if int(self.calls) > self.n:
                out = out * float("nan")
        return out


def test_a_final_run_that_turns_nan_is_flagged_diverged(tmp_path):
    """fit stops on a non-finite loss before its callbacks' on_step_end, so the final run's
    monitor never saw it: findings held only ``plateau`` and the report marked nothing."""
    from tests.tiny_task import X, Y

    torch.manual_seed(0)
    model = _NaNAfter(150)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    train_b = [(X[i:i + 32], Y[i:i + 32, None]) for i in range(0, 192, 32)]
    task = from_torch(model, opt, train_b, torch.nn.functional.mse_loss,
                      val_loader=[(X[192:], Y[192:, None])], steps=200)
    res = tune(task, out=tmp_path / "run", progress=False)
    kinds = [f["kind"] for f in res.findings]
    assert "diverged" in kinds
    final = json.loads((tmp_path / "run" / "4-final.json").read_text())
    assert final["stop_reason"] == "nan" and final["steps_done"] == 151
    # kept: the best checkpoint from before the blow-up; the decision stands
    assert math.isfinite(res.metric)
