"""``lrkit search``: run a worker on a study, or show a study.

    lrkit search --task NAME [--storage URL] [--study NAME] [--n-trials N] [--method M] ...
    lrkit search show [--storage URL] [--study NAME]

Start the same ``lrkit search`` command on as many processes and machines as you like: they
join one study and share its trials. Storage URLs are printed with their password masked.

Pointed at a study of ``lrkit tune`` (``--study tune-...``, the name and the command that tune
prints), a worker helps tune: it trains tune's queued confirmation runs exactly as tune does and
stops when tune has decided (``docs/tune.md``):

    lrkit search --task NAME --storage URL --study tune-...
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_cli_arguments", "cli_main"]


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``lrkit search`` (picked up by :mod:`lrkit.cli`)."""
    from ._core import METHODS, PRUNERS

    parser.description = ("lrkit search: run a worker on a study (start the same command on any "
                          "number of processes and machines), or show a study")
    parser.add_argument("action", nargs="?", choices=("run", "show"), default="run",
                        help="run a worker (default) or show a study")
    parser.add_argument("--task", help="built-in task name or 'package.module:function'")
    parser.add_argument("--storage", default=None,
                        help="database URL (default: sqlite file ./lrkit-runs/lrkit.db; "
                             "postgresql://user:password@host/db for many machines)")
    parser.add_argument("--study", default=None,
                        help="study name (workers sharing it cooperate; a 'tune-...' study "
                             "printed by lrkit tune: help tune with its confirmation runs)")
    parser.add_argument("--method", default="auto", choices=METHODS,
                        help="auto: starts from a range test and refines around it "
                             "(docs/search.md)")
    parser.add_argument("--n-trials", "--trials", type=int, default=None,
                        help="trials in total (all workers)")
    parser.add_argument("--budget", type=int, default=None,
                        help="optimizer steps in total (all workers, range test included)")
    parser.add_argument("--low", type=float, default=None,
                        help="lowest LR searched (default: from a range test)")
    parser.add_argument("--high", type=float, default=None,
                        help="highest LR searched (default: from a range test)")
    parser.add_argument("--pruner", default="auto", choices=PRUNERS,
                        help="stops trials that trail the others early (auto: Hyperband for "
                             "random/tpe/gp, none otherwise)")
    parser.add_argument("--cv-folds", type=int, default=None,
                        help="score each LR by k-fold cross-validation")
    parser.add_argument("--schedules", default=None,
                        help="comma-separated schedule families searched jointly with the LR")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampler and the runs")
    parser.add_argument("--heartbeat", type=int, default=10, help="heartbeat interval (s)")
    parser.add_argument("--grace", type=int, default=None,
                        help="seconds without heartbeat before a trial counts as dead")
    parser.add_argument("--fidelity", default="steps", choices=("steps", "data"),
                        help="what the pruner's rungs spend: training steps or data subsets")
    parser.add_argument("--subset", type=float, default=None,
                        help="train every trial on this fraction of the data")
    parser.add_argument("--poll", type=float, default=0.5,
                        help="seconds between looks at a study whose work runs elsewhere")
    parser.add_argument("--json", default=None, help="write the SearchResult as JSON here")
    parser.add_argument("--plot", default=None, help="write metric-vs-LR plot (PNG) here")
    parser.add_argument("--no-progress", action="store_true", help="no live table")


def cli_main(args: argparse.Namespace) -> int:
    """Run ``lrkit search`` (or ``lrkit search show``); returns the exit status."""
    from ._core import SearchOptions, search
    from ._show import show, studies
    from ._storage import check_exists, describe

    if args.action == "show":
        check_exists(args.storage)
        if args.study is None:
            names = studies(args.storage)
            print(f"studies in {describe(args.storage)}:")
            for n in names:
                print(f"  {n}")
            return 0
        result = show(args.storage, args.study)
    else:
        if not args.task:
            raise ValueError("--task is required (a built-in task name or "
                             "'package.module:function')")
        schedules = [s.strip() for s in args.schedules.split(",")] if args.schedules else None
        try:
            result = search(args.task, low=args.low, high=args.high, method=args.method,
                            n_trials=args.n_trials, budget=args.budget, pruner=args.pruner,
                            cv_folds=args.cv_folds, schedules=schedules, storage=args.storage,
                            study_name=args.study, seed=args.seed,
                            progress=not args.no_progress and sys.stderr.isatty(),
                            options=SearchOptions(heartbeat_interval=args.heartbeat,
                                                  grace_period=args.grace, subset=args.subset,
                                                  fidelity=args.fidelity, poll=args.poll))
        except KeyboardInterrupt:
            print(f"\ninterrupted: the study in {describe(args.storage)} keeps its finished "
                  "trials; the same command goes on with it", file=sys.stderr)
            return 130
    print(result.summary())
    print(result.table())
    if args.json:
        result.to_json(args.json)
        print(f"wrote {args.json}")
    if args.plot:
        result.plot(args.plot)
        print(f"wrote {args.plot}")
    return 0
