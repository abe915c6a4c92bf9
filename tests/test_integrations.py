"""Lightning and Hugging Face adapters, each driven by the framework's real Trainer (CPU, offline)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lrkit.monitor import Monitor

STEPS = 30


def _data(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1 * torch.randn(n, 1, generator=g)
    return x, y


class _HFReg(nn.Module):
    """A Hugging Face-style model: keyword batch in, ``{"loss", "logits"}`` out."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 1)

    def forward(self, x, labels=None):
        out = self.net(x)
        loss = nn.functional.mse_loss(out, labels) if labels is not None else None
        return {"loss": loss, "logits": out}


class _HFData(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


def _lightning_reg(pl, lr: float, seed: int | None = None):
    """A LightningModule of ``Linear(4, 1)`` under SGD at ``lr`` that records every loss its
    ``training_step`` returns (``.losses``) and logs ``val_loss``."""

    class Reg(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            if seed is not None:
                torch.manual_seed(seed)
            self.net = nn.Linear(4, 1)
            self.losses: list[float] = []

        def training_step(self, batch, batch_idx):
            loss = nn.functional.mse_loss(self.net(batch[0]), batch[1])
            self.losses.append(float(loss.detach()))
            return loss

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", nn.functional.mse_loss(self.net(batch[0]), batch[1]))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=lr)

    return Reg()


def test_lightning_trainer_feeds_every_step_and_records_findings(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from lrkit.integrations.lightning import LightningMonitor

    x, y = _data()
    ds = torch.utils.data.TensorDataset(x, y)
    train = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=False)
    val = torch.utils.data.DataLoader(ds, batch_size=64)
    torch.manual_seed(0)
    model = _lightning_reg(pl, lr=1.5)  # far above 2/L for this quadratic: the loss blows up
    cb = LightningMonitor(val_key="val_loss", verbose=False)
    trainer = pl.Trainer(max_steps=STEPS, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[cb], val_check_interval=4,
                         num_sanity_val_steps=0)
    trainer.fit(model, train, val)
    assert cb.record.steps == list(range(STEPS))  # every optimizer step reached the monitor
    assert cb.monitor.total_steps == STEPS
    kinds = [f.kind for f in cb.monitor.findings]
    assert "diverged" in kinds
    assert {f.kind for f in cb.record.raised} == set(kinds)
    # an independent replay of the losses Lightning computed gives the same diverged step
    ref = Monitor(total_steps=STEPS)
    for t, loss in enumerate(model.losses[:STEPS]):
        ref.update(t, loss, lr=1.5)
    assert ref.finding("diverged").step == cb.monitor.finding("diverged").step


class _Spy(Monitor):
    """A Monitor that keeps what the adapter fed it: ``(step, loss, lr)`` and ``(step, val)``."""

    def reset(self) -> None:
        super().reset()
        self.fed: list[tuple[int, float, float | None]] = []
        self.vals: list[tuple[int, float]] = []

    def update(self, step, loss, **kw):
        self.fed.append((step, loss, kw.get("lr")))
        return super().update(step, loss, **kw)

    def observe_val(self, step, val_metric):
        self.vals.append((step, val_metric))
        return super().observe_val(step, val_metric)


def _accumulating_fit(pl, tmp_path, k: int, epochs: int, ckpt: str | None = None):
    """Fit a LightningModule that records each training_step loss for ``epochs`` epochs of 7
    batches with ``accumulate_grad_batches=k`` (checkpointing each epoch; resumed from
    ``ckpt`` if given); return the module, the callback and the trainer."""
    from lrkit.integrations.lightning import LightningMonitor

    x, y = _data(56)
    ds = torch.utils.data.TensorDataset(x, y)
    module = _lightning_reg(pl, lr=0.05, seed=0)
    cb = LightningMonitor(_Spy(), val_key="val_loss", verbose=False)
    trainer = pl.Trainer(max_epochs=epochs, accumulate_grad_batches=k, accelerator="cpu",
                         devices=1, logger=False, default_root_dir=str(tmp_path / f"fit{epochs}"),
                         enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, callbacks=[cb])
    trainer.fit(module, torch.utils.data.DataLoader(ds, batch_size=8),
                torch.utils.data.DataLoader(ds, batch_size=56), ckpt_path=ckpt)
    return module, cb, trainer


def _window_means(losses: list[float], k: int, per_epoch: int = 7) -> list[float]:
    """Mean loss of each optimizer update: windows of k batches, restarted each epoch (whose
    last window is shorter when k does not divide its batches, as Lightning steps it)."""
    means = []
    for e in range(0, len(losses), per_epoch):
        epoch = losses[e:e + per_epoch]
        means += [sum(epoch[i:i + k]) / len(epoch[i:i + k]) for i in range(0, len(epoch), k)]
    return means


@pytest.mark.parametrize("k", [1, 3])
def test_lightning_monitor_feeds_the_mean_loss_of_each_accumulated_update(tmp_path, k):
    """With ``accumulate_grad_batches=k`` the monitor gets one record per optimizer update:
    the mean of the losses training_step returned over its micro-batches (not Lightning's
    last ``loss / k``), the 7th batch of an epoch a window of its own for k=3; a fit resumed
    from a checkpoint goes on at the restored step with the new updates only."""
    pl = pytest.importorskip("lightning.pytorch")
    per_epoch = -(-7 // k)  # 7 or 3 updates an epoch
    module, cb, trainer = _accumulating_fit(pl, tmp_path, k, epochs=1)
    assert trainer.global_step == per_epoch
    fed = cb.monitor.fed
    assert [s for s, _, _ in fed] == list(range(per_epoch)) == cb.record.steps
    assert [v for _, v, _ in fed] == pytest.approx(_window_means(module.losses, k), rel=1e-6)
    assert all(lr == 0.05 for _, _, lr in fed)
    assert cb.monitor.vals == [(per_epoch - 1, pytest.approx(
        float(trainer.callback_metrics["val_loss"])))]
    if k == 3:  # the last micro-batch's loss / k, what Lightning hands on, is far from it
        assert fed[0][1] != pytest.approx(module.losses[2] / 3, rel=0.05)

    ckpt = trainer.checkpoint_callback.best_model_path
    module2, cb2, trainer2 = _accumulating_fit(pl, tmp_path, k, epochs=3, ckpt=ckpt)
    assert trainer2.global_step == 3 * per_epoch and len(module2.losses) == 14
    fed2 = cb2.monitor.fed
    assert [s for s, _, _ in fed2] == list(range(per_epoch, 3 * per_epoch))
    assert [v for _, v, _ in fed2] == pytest.approx(_window_means(module2.losses, k), rel=1e-6)
    assert [s for s, _ in cb2.monitor.vals] == [2 * per_epoch - 1, 3 * per_epoch - 1]


def test_hf_trainer_feeds_every_step_and_records_findings(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from lrkit.integrations.hf import HFMonitor

    x, y = _data()
    torch.manual_seed(0)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=STEPS, per_device_train_batch_size=8,
        learning_rate=5.0, lr_scheduler_type="constant", logging_steps=1, report_to=[],
        use_cpu=True, save_strategy="no", disable_tqdm=True, eval_strategy="steps",
        eval_steps=10, seed=0, max_grad_norm=0.0)
    cb = HFMonitor(val_key="eval_loss", verbose=False)
    trainer = transformers.Trainer(model=_HFReg(), args=args, train_dataset=_HFData(x, y),
                                   eval_dataset=_HFData(x, y), callbacks=[cb])
    trainer.train()
    assert cb.steps_seen == STEPS
    assert cb.record.steps == list(range(STEPS))
    assert cb.monitor.total_steps == STEPS
    kinds = [f.kind for f in cb.monitor.findings]
    assert kinds and {"diverged", "lr_too_high"} & set(kinds), kinds
    assert {f.kind for f in cb.record.raised} == set(kinds)
    # the losses HF logged, replayed through a fresh monitor, give the same findings
    logged = [h for h in trainer.state.log_history if "loss" in h and "eval_loss" not in h]
    assert len(logged) == STEPS
    ref = Monitor(total_steps=STEPS)
    for h in logged:
        ref.update(h["step"] - 1, h["loss"], lr=h["learning_rate"])
    assert [(f.kind, f.step) for f in ref.lr_findings] == [
        (f.kind, f.step) for f in cb.monitor.lr_findings]


def test_the_clients_schedulers_become_the_monitors_schedule(tmp_path):
    """HF's Trainer builds a LambdaLR (linear decay here) and a LightningModule may configure
    one per step: the adapters hand it to the monitor as its ``schedule``, which gives the LR
    the client really stepped with at every step (so a plateau before the decay is not advised
    a decay)."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    pl = pytest.importorskip("lightning.pytorch")
    from lrkit.integrations.hf import HFMonitor
    from lrkit.integrations.lightning import LightningMonitor

    x, y = _data()
    torch.manual_seed(0)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=STEPS, per_device_train_batch_size=8,
        learning_rate=0.05, lr_scheduler_type="linear", warmup_steps=5, logging_steps=1,
        report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True, seed=0)
    cb = HFMonitor(verbose=False)
    trainer = transformers.Trainer(model=_HFReg(), args=args, train_dataset=_HFData(x, y),
                                   callbacks=[cb])
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert cb.monitor.schedule is not None and len(logged) == STEPS
    for h in logged:
        assert cb.monitor.schedule(h["step"] - 1) == pytest.approx(h["learning_rate"])
    # a schedule the user gave the monitor is kept; another train reads the Trainer's anew
    def mine(step):
        return 1.0

    own = HFMonitor(Monitor(schedule=mine), verbose=False)
    transformers.Trainer(model=_HFReg(), args=args, train_dataset=_HFData(x, y),
                         callbacks=[own]).train()
    assert own.monitor.schedule is mine
    first = cb.monitor.schedule
    trainer.train()
    assert cb.monitor.schedule is not first

    class LReg(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(4, 1)
            self.lrs: list[float] = []

        def training_step(self, batch, batch_idx):
            self.lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])
            return nn.functional.mse_loss(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.05)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(
                math.pi * min(s, STEPS) / STEPS)))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    torch.manual_seed(0)
    model = LReg()
    lcb = LightningMonitor(verbose=False)
    pl.Trainer(max_steps=STEPS, accelerator="cpu", devices=1, logger=False,
               enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
               callbacks=[lcb]).fit(model, torch.utils.data.DataLoader(
                   torch.utils.data.TensorDataset(x, y), batch_size=8))
    assert lcb.monitor.schedule is not None
    assert [lcb.monitor.schedule(t) for t in range(STEPS)] == pytest.approx(model.lrs[:STEPS])


def test_adapters_check_their_arguments():
    pytest.importorskip("lightning.pytorch")
    from lrkit.integrations.lightning import LightningMonitor

    with pytest.raises(TypeError, match="monitor"):
        LightningMonitor(monitor="nope")
    with pytest.raises(ValueError, match="stop_on"):
        LightningMonitor(stop_on=["exploded"])


def _lightning_setup(pl, config: str = "dict"):
    """A LightningModule (a dict-returning training_step that logs, an optimizer with two
    groups and a scheduler in ``configure_optimizers``) and a DataModule that builds its
    datasets in ``setup``."""
    x, y = _data(256)

    class Reg(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            loss = nn.functional.mse_loss(self(batch[0]), batch[1])
            self.log("train_loss", loss)
            return {"loss": loss}

        def configure_optimizers(self):
            opt = torch.optim.SGD([{"params": self.net[0].parameters(), "lr": 0.01},
                                   {"params": self.net[2].parameters()}], lr=0.1, momentum=0.9)
            sched = torch.optim.lr_scheduler.StepLR(opt, 10)
            if config == "dict":
                return {"optimizer": opt, "lr_scheduler": sched}
            if config == "lists":
                return [opt], [sched]
            return [opt, torch.optim.SGD(self.parameters(), lr=0.1)]

    class Data(pl.LightningDataModule):
        def setup(self, stage):
            self.train = torch.utils.data.TensorDataset(x[:192], y[:192])
            self.val = torch.utils.data.TensorDataset(x[192:], y[192:])

        def train_dataloader(self):
            return torch.utils.data.DataLoader(self.train, batch_size=32, shuffle=True,
                                               generator=torch.Generator().manual_seed(0))

        def val_dataloader(self):
            return torch.utils.data.DataLoader(self.val, batch_size=64)

    return Reg(), Data()


def test_from_lightning_is_from_torch_on_the_modules_training_step(tmp_path):
    """A LightningModule and its DataModule become the Task that find_lr's confirm and tune
    train: the same losses, step for step, as from_torch with the same optimizer and loaders,
    the module's weights untouched by a confirm, any of Lightning's optimizer forms read."""
    pl = pytest.importorskip("lightning.pytorch")
    from lrkit import find_lr, train
    from lrkit.integrations.lightning import from_lightning
    from lrkit.tasks import from_torch

    module, dm = _lightning_setup(pl)
    start = [p.detach().clone() for p in module.parameters()]
    task = from_lightning(module, dm, steps=60)
    dm2 = _lightning_setup(pl)[1]
    dm2.setup("fit")
    twin = from_torch(module, module.configure_optimizers()["optimizer"],
                      dm2.train_dataloader(), nn.functional.mse_loss,
                      val_loader=dm2.val_dataloader(), steps=60)
    a, b = train.run(task, 0.05, steps=20, seed=0), train.run(twin, 0.05, steps=20, seed=0)
    assert a.losses == b.losses and a.metric == b.metric  # val: training_step's loss
    assert task.recipe.default_lr == 0.01 and task.key != twin.key  # group 0's LR; its own key
    assert from_lightning(_lightning_setup(pl)[0], _lightning_setup(pl)[1], steps=60).key == \
        task.key  # the same set-up, the same key
    r = find_lr(task, confirm=True, progress=False)  # (after train.run left its own weights)
    assert r.lr is not None and r.confirm["runs"]
    assert all(torch.equal(p, q) for p, q in zip(start, module.parameters()))  # put back
    # ([optimizers], [schedulers]) reads the same; two optimizers, manual optimisation, data
    # given twice or not at all: errors that name the cause
    module, dm = _lightning_setup(pl, "lists")
    assert from_lightning(module, dm, steps=60).recipe.default_lr == 0.01
    module, dm = _lightning_setup(pl, "two")
    with pytest.raises(ValueError, match="must return one torch.optim optimizer .* got SGD, "
                                         "SGD"):
        from_lightning(module, dm, steps=60)
    module, dm = _lightning_setup(pl)
    with pytest.raises(ValueError, match="not both"):
        from_lightning(module, dm, train_dataloaders=[], steps=60)
    with pytest.raises(ValueError, match="needs validation data"):
        dm.setup("fit")
        from_lightning(module, train_dataloaders=dm.train_dataloader(), steps=60)
    with pytest.raises(TypeError, match="takes no loss_fn"):
        from_lightning(module, dm, steps=60, loss_fn=nn.functional.mse_loss)
    with pytest.raises(TypeError, match="LightningModule, got Linear"):
        from_lightning(nn.Linear(4, 1), dm, steps=60)
    module.automatic_optimization = False
    with pytest.raises(ValueError, match="manual optimisation"):
        from_lightning(module, dm, steps=60)


def test_from_lightning_says_why_a_training_step_that_reads_the_trainer_fails():
    pl = pytest.importorskip("lightning.pytorch")
    from lrkit import train
    from lrkit.integrations.lightning import from_lightning

    module, dm = _lightning_setup(pl)
    plain = type(module).training_step

    def reads_trainer(self, batch, batch_idx):
        self.trainer.global_step  # noqa: B018 - what a user's step may do
        return plain(self, batch, batch_idx)

    type(module).training_step = reads_trainer
    task = from_lightning(module, dm, steps=30)
    with pytest.raises(RuntimeError, match="reads self.trainer, but lrkit's runs call "
                                           "training_step without a Trainer"):
        train.run(task, 0.05, steps=5, seed=0)


def test_from_hf_trains_as_the_trainer_would(tmp_path):
    """A Hugging Face Trainer becomes the Task that find_lr's confirm and tune train: its
    compute_loss on its own dataloaders, its optimizer's class and weight-decay groups, its
    clipping, accumulation, schedule and warmup and run length from TrainingArguments; the
    Trainer's optimizer slot is left empty, so a later train() builds one at the new LR."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from lrkit import find_lr, train
    from lrkit.integrations.hf import from_hf
    from lrkit.tasks import from_torch

    x, y = _data(96)

    def trainer(**kw):
        torch.manual_seed(0)
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path), per_device_train_batch_size=8, report_to=[],
            use_cpu=True, save_strategy="no", disable_tqdm=True, seed=0, **kw)
        return transformers.Trainer(model=_HFReg(), args=args, train_dataset=_HFData(x[:64],
                                    y[:64]), eval_dataset=_HFData(x[64:], y[64:]))

    tr = trainer(num_train_epochs=3, gradient_accumulation_steps=2, learning_rate=0.05,
                 lr_scheduler_type="linear", warmup_steps=3, weight_decay=0.01)
    start = [p.detach().clone() for p in tr.model.parameters()]
    task = from_hf(tr)
    r = task.recipe
    # 64 examples / 8 = 8 batches, 4 optimizer steps an epoch, 3 epochs
    assert (r.steps, r.schedule, r.warmup_steps, r.accumulation_steps, r.grad_clip) == \
        (12, "linear", 3, 2, 1.0)
    assert r.default_lr == 0.05 and tr.optimizer is None
    opt = tr.create_optimizer()
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]  # HF's decay groups
    twin = from_torch(tr.model, opt, tr.get_train_dataloader(),
                      step_fn=lambda m, b: m(**b)["loss"], val_loader=tr.get_eval_dataloader(),
                      steps=12, schedule="linear", warmup_steps=3, grad_clip=1.0,
                      accumulation_steps=2)
    a, b = train.run(task, 0.05, seed=0), train.run(twin, 0.05, seed=0)
    assert a.losses == b.losses and a.metric == b.metric
    res = find_lr(task, confirm=True, progress=False)
    assert res.schedule_lr is not None
    assert all(torch.equal(p, q) for p, q in zip(start, tr.model.parameters()))
    # cosine with a warmup ratio (a float < 1); max_steps wins; unknown scheduler types refused
    t2 = from_hf(trainer(max_steps=40, lr_scheduler_type="cosine", warmup_steps=0.1,
                         max_grad_norm=0.0))
    assert (t2.recipe.steps, t2.recipe.schedule, t2.recipe.warmup_steps, t2.recipe.grad_clip) \
        == (40, "warmup_cosine", 4, None)
    with pytest.raises(ValueError, match="'polynomial' has no lrkit family"):
        from_hf(trainer(max_steps=40, lr_scheduler_type="polynomial"))
    assert from_hf(trainer(max_steps=40, lr_scheduler_type="polynomial"),
                   schedule="linear").recipe.schedule == "linear"
    with pytest.raises(TypeError, match="takes no grad_clip"):
        from_hf(tr, grad_clip=0.5)
    with pytest.raises(TypeError, match="steps must be an integer, got '10'"):
        from_hf(tr, steps="10")
    with pytest.raises(TypeError, match="must be a transformers.Trainer"):
        from_hf(object())
    several = trainer(max_steps=40)
    several.eval_dataset = {"a": several.eval_dataset, "b": several.eval_dataset}
    with pytest.raises(ValueError, match=r"holds 2 datasets \(\['a', 'b'\]\): lrkit scores"):
        from_hf(several)
    # after train() its linear schedule left lr 0: the advice was "call from_torch before
    # attaching the scheduler", a call an HF user never made
    done = trainer(max_steps=4, lr_scheduler_type="linear")
    done.train()
    with pytest.raises(ValueError, match=r"from_hf: trainer.optimizer has lr 0 in param group "
                                         r"0.*call from_hf before trainer.train\(\)"):
        from_hf(done)
    done.optimizer = done.lr_scheduler = None
    assert from_hf(done).recipe.default_lr == 5e-5  # TrainingArguments' learning_rate


def _hf_lr_trainer(tmp_path, kind: str, warmup: int, kwargs: dict | None, steps: int = 20):
    """A Trainer on the regression data with a callback recording every optimizer step's LR."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")

    class LRs(transformers.TrainerCallback):
        def __init__(self):
            self.lrs = []

        def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kw):
            self.lrs.append(optimizer.param_groups[0]["lr"])

    x, y = _data()
    torch.manual_seed(0)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=8,
        learning_rate=0.1, lr_scheduler_type=kind, warmup_steps=warmup,
        lr_scheduler_kwargs=kwargs, report_to=[], use_cpu=True, save_strategy="no",
        logging_strategy="no", disable_tqdm=True, seed=0)
    rec = LRs()
    tr = transformers.Trainer(model=_HFReg(), args=args, train_dataset=_HFData(x, y),
                              eval_dataset=_HFData(x[:16], y[:16]), callbacks=[rec])
    return tr, rec


@pytest.mark.parametrize("kind, warmup, kwargs, family, recipe_warmup", [
    ("linear", 4, None, "linear", 4),
    ("cosine", 0, None, "cosine", 0),
    ("cosine", 4, {"num_cycles": 0.5}, "warmup_cosine", 4),
    ("constant", 4, None, "constant", 0),  # get_scheduler ignores the warmup for "constant"
    ("constant_with_warmup", 4, None, "constant", 4),
    ("warmup_stable_decay", 4, {"num_decay_steps": 4, "decay_type": "1-sqrt"}, "wsd", 4),
    ("warmup_stable_decay", 4, {"num_decay_steps": 4, "decay_type": "1-sqrt",
                                "num_stable_steps": 12, "num_cycles": 3.0}, "wsd", 4),
])
def test_from_hf_runs_use_the_trainers_own_lr_at_every_step(tmp_path, kind, warmup, kwargs,
                                                            family, recipe_warmup):
    """The LR of every step of an lrkit run on from_hf(trainer) is the LR the real Trainer
    steps with (recorded in on_pre_optimizer_step of its own train())."""
    from lrkit import train
    from lrkit.integrations.hf import from_hf

    tr, rec = _hf_lr_trainer(tmp_path, kind, warmup, kwargs)
    task = from_hf(tr)
    assert (task.recipe.schedule, task.recipe.warmup_steps) == (family, recipe_warmup)
    ours = train.run(task, 0.1, seed=0).lrs
    tr.train()
    assert len(rec.lrs) == len(ours) == 20
    assert ours == pytest.approx(rec.lrs, rel=1e-9, abs=1e-12)
    assert max(rec.lrs) == pytest.approx(0.1) and (kind == "constant") == (min(rec.lrs) == 0.1)


@pytest.mark.parametrize("kind, kwargs, match", [
    # the Trainer decays over the last 8 steps (cosine by default), lrkit's wsd its last 4, 1-sqrt
    ("warmup_stable_decay", {"num_decay_steps": 8},
     r"at step 13 the Trainer's LR is 0\.96194 x learning_rate, lrkit's 'wsd' family's 1 x\. "
     r"lrkit reproduces 'warmup_stable_decay' with num_decay_steps=max\(1, steps // 5\) = 4"),
    ("warmup_stable_decay", {"num_decay_steps": 4, "decay_type": "1-sqrt", "min_lr_ratio": 0.1},
     r"at step 0 the Trainer's LR is 0\.1 x"),
    ("cosine", {"num_cycles": 1.0},
     r"'cosine' with lr_scheduler_kwargs=\{'num_cycles': 1\.0\}.* at step 5 the Trainer's LR "
     r"is 0\.96194 x.*reproduces 'cosine' with num_cycles=0\.5"),
    ("linear", {"power": 2.0}, r"\{'power': 2\.0\} do not build a 'linear' scheduler"),
    ("warmup_stable_decay", {}, r"do not build a 'warmup_stable_decay' scheduler.*num_decay_steps"),
])
def test_from_hf_refuses_a_schedule_it_would_not_reproduce(tmp_path, kind, kwargs, match):
    from lrkit.integrations.hf import from_hf

    tr, _ = _hf_lr_trainer(tmp_path, kind, 4, kwargs)
    with pytest.raises(ValueError, match=match):
        from_hf(tr)
    assert from_hf(tr, schedule="linear").recipe.schedule == "linear"  # the user's choice
