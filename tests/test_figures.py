"""lrkit's plots leave the user's matplotlib as they found it.

Until the twenty-fifth round every plot that saved a file called ``matplotlib.use("Agg")``
(``force=False`` still switches): in a notebook, ``lrkit.tune(...)`` or ``res.plot("lr.png")``
turned inline plots off for the rest of the session, and ``res.plot()`` showed its figure
twice (pyplot's figure manager and the value returned)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import pytest
import torch

import lrkit
from lrkit import schedules
from lrkit.monitor import plot_log, read_log
from tests.tiny_task import make_task

LOGS = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "monitor-logs"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def user_backend():
    """A backend of the user's that is not Agg (PDF: non-interactive, always available)."""
    before = matplotlib.get_backend()
    plt.close("all")
    matplotlib.use("pdf")
    yield "pdf"
    plt.close("all")
    matplotlib.use(before)


def _range_test():
    torch.manual_seed(0)
    x = torch.randn(256, 4)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0])
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    data = [(x[i:i + 32], y[i:i + 32, None]) for i in range(0, 256, 32)]
    return lrkit.find_lr(model, opt, data, torch.nn.functional.mse_loss, num_iter=40)


def test_saving_plots_keeps_the_backend_and_opens_no_pyplot_figure(user_backend, tmp_path):
    res = _range_test()
    res.plot(tmp_path / "lr.png")
    schedules.plot([schedules.cosine(0.1, 100)], 100, tmp_path / "s.png")
    plot_log(read_log(LOGS / "mnist1d@1" / "tune-onecycle-seed0.jsonl.gz"), tmp_path / "m.png")
    found = lrkit.search(lambda lr, report: (lr - 0.1) ** 2, low=1e-3, high=1.0, method="grid",
                         n_trials=3, storage="memory", progress=False)
    found.plot(str(tmp_path / "search.png"))
    tuned = lrkit.tune(make_task(), out=tmp_path / "run", progress=False,
                       schedules=("constant", "cosine"))
    pngs = [tmp_path / n for n in ("lr.png", "s.png", "m.png", "search.png")]
    pngs += sorted(Path(tuned.run_dir).glob("*.png"))
    assert len(pngs) >= 8 and all(p.read_bytes()[:8] == PNG for p in pngs)
    assert matplotlib.get_backend() == user_backend  # "agg" before
    assert plt.get_fignums() == []


def test_a_plot_to_show_is_made_in_the_users_backend_and_shown_once_inline(user_backend,
                                                                        monkeypatch):
    res = _range_test()
    fig = res.plot()
    assert plt.get_fignums() == [fig.number]  # a script's plt.show() shows it
    assert schedules.plot(schedules.constant(0.1), 10).number in plt.get_fignums()
    plt.close("all")
    # a notebook's inline backend: shown as the value returned, not also by pyplot at the
    # cell's end
    monkeypatch.setattr(matplotlib, "get_backend",
                        lambda: "module://matplotlib_inline.backend_inline")
    fig = res.plot()
    assert plt.get_fignums() == [] and fig.axes and fig.axes[0].get_xscale() == "log"
