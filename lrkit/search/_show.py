"""Read a study back: ``show(storage, study_name) -> SearchResult`` and the study list."""

from __future__ import annotations

from typing import Any

from ._result import SearchResult, result_from_study
from ._storage import describe, open_storage

__all__ = ["show", "studies"]


def show(storage: Any, study_name: str) -> SearchResult:
    """The :class:`SearchResult` of study ``study_name`` in ``storage`` (read only).

    Raises:
        ValueError: no such study (the message lists the studies there).
    """
    import optuna

    st = open_storage(storage)
    try:
        study = optuna.load_study(study_name=study_name, storage=st)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(st, include_best_trial=False)]
        raise ValueError(f"study_name {study_name!r} is not in {describe(storage)}; "
                         f"studies there: {names}") from None
    return result_from_study(study, describe(storage))


def studies(storage: Any) -> list[str]:
    """The names of the studies in ``storage``."""
    import optuna

    st = open_storage(storage)
    return [s.study_name for s in optuna.get_all_study_summaries(st, include_best_trial=False)]
