"""The ``lrkit`` command: a thin layer over the library.

    lrkit schedule demo -o schedules.png          the schedule gallery (the default demo)
    lrkit schedule plot --spec JSON --steps N -o out.png   draw / dry-run one or more schedules
    lrkit schedule list                           the schedule families
    lrkit tasks                                   the built-in tasks
    lrkit find --task NAME [--plot P] [--json J]  the LR range test on a task
    lrkit bench oracle --task NAME ...            exhaustive LR grid (the truth)
    lrkit bench methods --task NAME ...           every method vs the oracle: regret, band, cost
    lrkit tune --task NAME                        the autopilot: LR + schedule, trained, HTML report
    lrkit compare --task NAME                     each schedule at its own best LR
    lrkit search --task NAME --storage URL ...    LR search on Optuna (one worker per command)
    lrkit monitor LOG.jsonl                       findings and a plot from a training log
    lrkit safe-lr --task NAME                     the curvature bound and a stability test
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Sequence

from .errors import LRKitError, MissingDependency, check_int

#: the fewest ``--steps`` the demo's gallery can draw (its cyclic schedule's half-cycle is 1/8)
DEMO_MIN_STEPS = 8


def _schedule_demo(out: str, steps: int) -> None:
    from . import schedules as S

    check_int("--steps", steps, minimum=DEMO_MIN_STEPS)
    gallery = [
        S.step(0.1, step_size=steps // 4, gamma=0.3),
        S.cosine(0.1, T_max=steps),
        S.onecycle(0.1, total_steps=steps),
        S.cyclic(0.01, 0.1, step_size_up=steps // 8),
        S.warmup_cosine(0.1, warmup_steps=steps // 10, total_steps=steps, min_lr=0.005),
        S.wsd(0.1, total_steps=steps, warmup_steps=steps // 10, decay_steps=steps // 5,
              decay_shape="1-sqrt"),
        S.cooldown(S.cosine_restarts(0.1, T_0=steps // 4), start=int(steps * 0.7),
                   steps=int(steps * 0.3), shape="1-sqrt"),
    ]
    labels = ["step", "cosine", "onecycle", "cyclic (triangular)", "warmup_cosine",
              "wsd (1-sqrt decay)", "cooldown(cosine_restarts) at 70%"]
    S.plot(gallery, steps, out, labels=labels, title=f"lrkit schedules over {steps} steps")
    print(f"wrote {out}: {len(gallery)} schedules over {steps} steps")


def _schedule_plot(specs: Sequence[str], steps: int, out: str) -> int:
    from . import schedules as S

    check_int("--steps", steps, minimum=1)
    scheds = [S.from_spec(s) for s in specs]
    for spec, s in zip(specs, scheds):
        h = s.horizon
        at = sorted({0, steps // 2, steps - 1})
        vals = ", ".join(f"step {t}: {s(t):.4g}" for t in at)
        print(f"{s.spec['name']}: {vals}")
        if h is not None and steps > h:
            print(f"  warning: {steps} steps run past this schedule's horizon ({h} steps); "
                  f"from step {h} on the LR stays {s(h):.4g}")
    S.plot(scheds, steps, out)
    print(f"wrote {out}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from . import bench, report

    if args.command != "oracle" and (args.method is not None or not args.optimizers):
        bench.check_methods(args.method)  # before any oracle run is spent
    optimizers = [o.strip() for o in (getattr(args, "optimizers", None) or "").split(",")
                  if o.strip()]  # (`bench oracle` has no --optimizers)
    for spec in optimizers:  # likewise (a misspelt name was refused after the oracle's grid)
        bench.parse_optimizer(spec)
    if args.seeds < 3:
        raise ValueError(f"--seeds is the number of oracle seeds (0..N-1) and must be >= 3, "
                         f"got {args.seeds}")
    for flag in ("method_seeds", "optimizer_seeds"):  # (0 ran the oracle, then wrote NaN rows)
        if getattr(args, flag, None) is not None:
            check_int(f"--{flag.replace('_', '-')}", getattr(args, flag), minimum=1)
    from .tasks.base import file_name

    out = Path(args.out)
    try:
        _make_folder(out)
    except OSError as e:  # (an existing file, a read-only parent: a traceback before)
        raise ValueError(f"--out: cannot make the folder {args.out!r} "
                         f"({e.strerror or type(e).__name__})") from None
    task_names = args.task
    oracles, tasks_by_name = {}, {}
    for name in task_names:
        o = bench.oracle(name, points=args.points, step_decades=args.step_decades,
                         seeds=list(range(args.seeds)),
                         workers=args.workers, refresh=args.refresh)
        oracles[o.task] = o
        tasks_by_name[name] = o.task
        (out / f"oracle-{file_name(o.task)}.json").write_text(json.dumps(o.to_dict(), indent=1))
        report.plot_oracle(o, out / f"oracle-{file_name(o.task)}.png")
        lo, hi = o.band
        print(f"{o.task}: best LR {o.best_lr:.3g} ({o.metric_name} {o.best_metric:.4g}), "
              f"good band [{lo:.3g}, {hi:.3g}], {len(o.grid)} LRs x {len(o.seeds)} seeds, "
              f"{o.wall_time:.0f} s")
    if args.command == "oracle":
        return 0
    if optimizers:
        rows = []
        for name in task_names:
            rows += bench.compare_optimizers(
                name, optimizers, seeds=list(range(args.optimizer_seeds)),
                own_oracle=args.optimizer_oracle, oracle_result=oracles[tasks_by_name[name]],
                workers=args.workers)
        table = bench.optimizer_table(rows, oracles)
        (out / "optimizers.json").write_text(json.dumps(
            {"machine": bench.machine(), "results": [r.to_dict() for r in rows]}, indent=1))
        (out / "optimizers.md").write_text(table + "\n")
        print(table)
        print(f"wrote {out / 'optimizers.md'}, {out / 'optimizers.json'}")
        if args.method is None:
            return 0
    results = []
    for name in task_names:
        o = oracles[tasks_by_name[name]]
        results += bench.compare(name, args.method, seeds=list(range(args.method_seeds)),
                                 workers=args.workers, oracle_result=o)
    table = bench.markdown_table(results, oracles)
    (out / "methods.json").write_text(json.dumps(
        {"machine": bench.machine(), "results": [r.to_dict() for r in results],
         "oracles": {k: v.to_dict() for k, v in oracles.items()}}, indent=1))
    (out / "methods.md").write_text(table + "\n")
    report.plot_methods(results, oracles, out / "methods.png")
    print(table)
    print(f"wrote {out / 'methods.md'}, {out / 'methods.json'}, {out / 'methods.png'}")
    return 0


#: command -> (module, help). Each module defines ``add_cli_arguments(parser)`` and
#: ``cli_main(args) -> int`` (its own sub-commands, if any, hang off ``parser``).
_COMMANDS: dict[str, tuple[str, str]] = {
    "find": ("lrkit.finder", "LR range test on a task"),
    "search": ("lrkit.search", "learning-rate search on Optuna (SQLite or PostgreSQL studies)"),
    "monitor": ("lrkit.monitor", "re-read a JSON-lines training log: findings and a plot"),
    "safe-lr": ("lrkit.curvature", "curvature-based safe LR, with a stability test"),
    "tune": ("lrkit.tune", "the autopilot: LR and schedule, trained, with an HTML report"),
    "compare": ("lrkit.compare", "train a task under each schedule at its own best LR"),
}


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``lrkit`` parser. Of the commands in ``_COMMANDS`` only the one named in ``argv``
    (default: ``sys.argv[1:]``) imports its module (Optuna, torch...): ``lrkit --help`` and the
    other commands start fast."""
    p = argparse.ArgumentParser(prog="lrkit", description="Which learning rate, and which schedule?")
    sub = p.add_subparsers(dest="area", required=True)

    sp = sub.add_parser("schedule", help="schedule gallery, plots and dry runs")
    ssub = sp.add_subparsers(dest="command", required=True)
    d = ssub.add_parser("demo", help="plot a gallery of schedules")
    d.add_argument("-o", "--out", default="schedules.png", help="figure path")
    d.add_argument("--steps", type=int, default=1000, help="steps drawn")
    pl = ssub.add_parser("plot", help="plot (and dry-run) schedules given as JSON specs")
    pl.add_argument("--spec", action="append", required=True,
                    help='JSON spec, e.g. \'{"name": "cosine", "lr": 0.1, "T_max": 100}\'; repeatable')
    pl.add_argument("--steps", type=int, required=True, help="steps drawn (the dry run's length)")
    pl.add_argument("-o", "--out", default="schedule.png", help="figure path")
    ssub.add_parser("list", help="list the schedule families")

    sub.add_parser("tasks", help="list the built-in tasks")

    args = list(sys.argv[1:] if argv is None else argv)
    wanted = next((a for a in args if not a.startswith("-")), None)
    for command, (module, help_text) in _COMMANDS.items():
        parser = sub.add_parser(command, help=help_text)
        if command == wanted:
            importlib.import_module(module).add_cli_arguments(parser)

    b = sub.add_parser("bench", help="oracle grids and method comparisons")
    bsub = b.add_subparsers(dest="command", required=True)
    for name in ("oracle", "methods"):
        c = bsub.add_parser(name)
        c.add_argument("--task", action="append", required=True, help="task name; repeatable")
        c.add_argument("--points", type=int, default=25, help="grid points (>= 13)")
        c.add_argument("--step-decades", type=float, default=0.25, help="grid spacing in decades")
        c.add_argument("--seeds", type=int, default=5,
                       help="number of oracle seeds, run as 0..N-1 (>= 3)")
        c.add_argument("--workers", type=int, default=2, help="training processes in parallel")
        c.add_argument("--refresh", action="store_true", help="ignore the oracle cache")
        c.add_argument("--out", default="bench-out", help="folder for the tables and figures")
        if name == "methods":
            c.add_argument("--method", action="append", default=None,
                           help="method name; repeatable (default: all registered)")
            c.add_argument("--method-seeds", type=int, default=5,
                           help="seeds per method (the oracle's first seeds: common random "
                                "numbers)")
            c.add_argument("--optimizers", default=None,
                           help="comma-separated optimizer specs, e.g. sgd,sgdhd,adam,adamhd,"
                                "rmsprop,adagrad,adadelta,prodigy,schedulefree (or "
                                "name:key=value, e.g. sgdhd:hypergrad=multiplicative): one "
                                "table of each at its textbook default LR vs the oracle; "
                                "without --method, the methods are skipped")
            c.add_argument("--optimizer-seeds", type=int, default=3,
                           help="seeds per optimizer (>= 3 with --optimizer-oracle)")
            c.add_argument("--optimizer-oracle", action="store_true",
                           help="also an LR grid per optimizer (13 LRs half a decade apart): "
                                "regret at its own best LR and of its default against it")
    return p


#: commands whose ``-o/--out`` is a figure (elsewhere it is a folder)
_FIGURE_OUT = ("schedule", "compare", "monitor")


def _figure_path(value: str) -> str:
    """A figure's path as matplotlib writes it: with no suffix, ``.png`` added (``-o
    out/noext`` said "wrote out/noext" and wrote out/noext.png). Called after
    :func:`_check_outputs`, which refuses a folder (``-o figs`` with a folder figs/ wrote
    figs.png beside it when the suffix came first)."""
    return value if Path(value).suffix else value.rstrip(".") + ".png"


def _check_figure_format(name: str, value: str) -> None:
    """Refuse a figure path whose suffix matplotlib cannot write (it said so after the work)."""
    from matplotlib.backend_bases import FigureCanvasBase

    known = FigureCanvasBase.get_supported_filetypes()
    suffix = Path(value).suffix[1:].lower()
    if suffix and suffix not in known:
        raise ValueError(f"--{name}: {value!r} has the suffix .{suffix}, which matplotlib "
                         f"cannot write; use .png (or one of {', '.join(sorted(known))})")


#: folders this command made for its outputs (removed again, when still empty, if it fails)
_MADE: list[Path] = []


def _make_folder(path: Path) -> None:
    """``path.mkdir(parents=True, exist_ok=True)``, noting each folder it makes in ``_MADE``."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    _MADE.extend(reversed(missing))  # outermost first


def _drop_made() -> None:
    """Remove the folders this command made that are still empty (a command that failed left
    them behind), innermost first."""
    while _MADE:
        p = _MADE.pop()
        try:
            p.rmdir()  # only when empty
        except OSError:
            pass


def _check_outputs(args: argparse.Namespace) -> None:
    """``--json``/``--plot`` (and a figure's ``--out``) destinations, before any work: their
    folders are made, and a folder given as the file or one that cannot be made is refused
    (``lrkit find --json missing/dir/r.json`` ran the whole range test, then raised
    FileNotFoundError)."""
    names = ("json", "plot") + (("out",) if args.area in _FIGURE_OUT else ())
    for name in names:
        value = getattr(args, name, None)
        if not value or not isinstance(value, str):
            continue
        path = Path(value)
        if path.is_dir() or value.endswith(("/", os.sep)):  # ("d/": Path drops the slash)
            raise ValueError(f"--{name}: {value!r} is a folder; give a file to write")
        if name != "json":
            _check_figure_format(name, value)
        try:
            _make_folder(path.parent)
        except OSError as e:
            raise ValueError(f"--{name}: cannot make the folder {str(path.parent)!r} "
                             f"({e.strerror or type(e).__name__})") from None
        if not os.access(path.parent, os.W_OK):
            raise ValueError(f"--{name}: the folder {str(path.parent)!r} is not writable")


#: the lrkit package's folder: code in it raises lrkit's own argument errors
_PACKAGE = Path(__file__).resolve().parent


def _raised_by_lrkit(e: BaseException) -> bool:
    """Whether ``e`` was raised by lrkit's own code (a check at the door: one line is enough),
    not by code lrkit called: a user's task (its builder, loss or evaluate) or a library,
    whose traceback says where. The innermost frame of its traceback tells them apart."""
    tb = e.__traceback__
    if tb is None:
        return True
    while tb.tb_next is not None:
        tb = tb.tb_next
    return _PACKAGE in Path(tb.tb_frame.f_code.co_filename).resolve().parents


def _builtin_name(value: str) -> str:
    """``--task``'s value with a built-in task name matched case-insensitively (``DIGITS`` ran
    nothing and got no "did you mean"); other values (``module:function``) as given."""
    if ":" in value:
        return value
    from . import tasks

    same = {n.lower(): n for n in tasks.names()}
    return same.get(value.lower(), value)


def _normalise_task(args: argparse.Namespace) -> None:
    """``--task`` (one value, or ``bench``'s list) with built-in names in their own case."""
    task = getattr(args, "task", None)
    if isinstance(task, str):
        args.task = _builtin_name(task)
    elif isinstance(task, list):
        args.task = [_builtin_name(t) for t in task]


def _default_figures(args: argparse.Namespace) -> None:
    """The figures a command writes by default, named before the work so that
    :func:`_check_outputs` checks them too (``lrkit safe-lr`` in a read-only folder, or
    ``lrkit monitor`` on a log there, raised PermissionError after all the work); ``~`` in a
    path given after ``=`` (which the shell leaves alone) is the home folder, as in
    ``--storage``."""
    for name in ("out", "json", "plot", "resume"):
        value = getattr(args, name, None)
        if isinstance(value, str) and value.startswith("~"):
            setattr(args, name, os.path.expanduser(value))
    if args.area == "monitor" and not args.no_plot and not args.out:
        args.out = str(Path(args.log).with_suffix(".png"))
    if args.area == "safe-lr" and not args.no_test and not args.plot:
        args.plot = "safe-lr.png"


def _plain_streams() -> None:
    """Characters the terminal's encoding lacks (λ, ×, ★ in lrkit's output; ä in a paper's
    author) are escaped, not raised: with ``PYTHONIOENCODING=ascii`` a finished tune printed
    "lrkit: error: 'ascii' codec can't encode" in place of its decision."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError):  # not a TextIOWrapper (a test's capture)
            pass


def main(argv: Sequence[str] | None = None) -> int:
    """The ``lrkit`` command: :func:`_run`, its output flushed here, where a reader that has
    gone (`lrkit tasks | head -1`) ends it quietly with 141 (a BrokenPipeError traceback at
    exit before, and `find --json r.json | head -1` could lose its file)."""
    try:
        code = _run(argv)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # (Python's own advice: no error at exit)
        return 141


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser(argv).parse_args(argv)
    _normalise_task(args)
    _plain_streams()
    try:
        _default_figures(args)
        _check_outputs(args)
        if getattr(args, "plot", None):
            args.plot = _figure_path(args.plot)
        if args.area in _FIGURE_OUT and getattr(args, "out", None):
            args.out = _figure_path(args.out)
        if args.area == "schedule":
            if args.command == "demo":
                _schedule_demo(args.out, args.steps)
                return 0
            if args.command == "list":
                from . import schedules

                print("\n".join(schedules.names()))
                return 0
            return _schedule_plot(args.spec, args.steps, args.out)
        if args.area == "tasks":
            from . import tasks

            for n in tasks.names():
                try:
                    t = tasks.get(n)
                except MissingDependency as e:  # listed all the same, with what it needs
                    print(f"{n:14s} (not available: {e})")
                    continue
                print(f"{n:14s} {t.recipe.optimizer:6s} {t.recipe.steps:5d} steps  {t.description}")
            return 0
        if args.area == "bench":
            return _bench(args)
        if args.area in _COMMANDS:
            return int(importlib.import_module(_COMMANDS[args.area][0]).cli_main(args))
    except (ValueError, TypeError) as e:
        _drop_made()
        if not _raised_by_lrkit(e):  # a bug in the user's task (or a library): where it is
            raise
        print(f"lrkit: error: {e}", file=sys.stderr)
        return 2
    except LRKitError as e:  # lrkit's own runtime errors (a storage it cannot open): one line
        _drop_made()
        print(f"lrkit: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # (tune and search say how to go on themselves)
        _drop_made()
        print("\nlrkit: interrupted", file=sys.stderr)
        return 130
    except BaseException:  # (a BrokenPipeError too: main ends it)
        _drop_made()
        raise
    _MADE.clear()
    return 0


if __name__ == "__main__":  # pragma: no cover
    warnings.simplefilter("default")
    sys.exit(main())
