"""``heldout_random_tasks.py`` with confirm's and tune's time-rescaling switched off.

The rescaling (:func:`lrkit.finder.overfit_step`: the short-run winner x its integrated LR to
its best val point / the full run's) was designed on the built-in tasks whose best LR is set by
overfitting (diabetes, digits-small). This measures what it does on tasks no rule was designed
on: run it with the same arguments as ``heldout_random_tasks.py`` and compare with that
script's file for the same set (same grids, same seeds)::

    python benchmarks/no_rescale.py --seed 4 --n 30 --truth results/heldout/random-4.json \\
        --out /tmp/random-4-no-rescale.json
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import heldout_random_tasks  # noqa: E402

import lrkit.finder  # noqa: E402

lrkit.finder.overfit_step = lambda *args, **kwargs: None

if __name__ == "__main__":
    raise SystemExit(heldout_random_tasks.main())
