"""A search's confirmation stage (study.confirm): once its own trials are done, its top configurations by mean and
the control named in advance (study.baseline) are trained again to the end on fresh seeds, never pruned, so that
the table's means, deltas and verdicts are not those of the runs that chose the winners.

The top are ranked by the mean of the first objective over each configuration's COMPLETE search trials (ties: the
one reached first); the baseline is not among them (it is confirmed anyway). Fresh seeds are the ones after every
seed the search may use: max(study.seed_list) + 1, + 2, ... Each run is a WAITING trial carrying its configuration,
seed and Attr.STAGE 'confirm'; queueing is idempotent (a re-run queues only the cell x seed not yet accounted for),
so it survives kills and any number of workers, and the caller holds the setup lock."""
from __future__ import annotations

import statistics

import optuna
from optuna.trial import TrialState

from ablate.plan import Cell, StudyPlan
from ablate.spec import baseline_params
from ablate.storage import Attr
from ablate.study.objective import configuration
from ablate.study.queue import accounted
from ablate.study.trials import CONFIRM, is_confirmation, own_trials, search_trials


def confirms(plan: StudyPlan) -> bool:
    """Does this study end with a confirmation stage: a search whose study.confirm top is not 0."""
    return not plan.spec.is_grid and plan.spec.cfg.study.confirmation.top > 0


def confirmation_seeds(plan: StudyPlan) -> list[int]:
    """Seeds the search never used: the ones after every seed it may run."""
    s = plan.spec.cfg.study
    first = max(s.seed_list) + 1
    return list(range(first, first + s.confirmation.seeds))


def baseline_cell(plan: StudyPlan) -> Cell:
    """The search's control: study.baseline's key=value pairs on the base config (default the plain backbone)."""
    return plan.cell(baseline_params(plan.spec))


def top_configurations(study: optuna.Study, plan: StudyPlan) -> list[Cell]:
    """The study.confirm top configurations other than the baseline, best mean of the first objective first
    (a multi-objective search is ranked by its first), over their COMPLETE search trials; ties: reached first."""
    objective = plan.spec.cfg.study.objectives()[0]
    values: dict[str, list[float]] = {}
    cells: dict[str, Cell] = {}
    for t in sorted(search_trials(study, (TrialState.COMPLETE,)), key=lambda t: t.number):
        key = t.user_attrs[Attr.CELL]
        values.setdefault(key, []).append(t.values[0])
        cells.setdefault(key, Cell.from_attrs(key, t.user_attrs[Attr.PARAMS], t.user_attrs[Attr.LABEL]))
    sign = -1 if objective.direction == "maximize" else 1
    order = list(values)  # first reached first: a stable sort keeps it among equal means
    ranked = sorted(order, key=lambda key: sign * statistics.fmean(values[key]))
    control = baseline_cell(plan).key
    return [cells[key] for key in ranked if key != control][:plan.spec.cfg.study.confirmation.top]


def confirmation_cells(study: optuna.Study, plan: StudyPlan) -> list[Cell]:
    """What the stage confirms: the baseline, then the top configurations."""
    return [baseline_cell(plan), *top_configurations(study, plan)]


def search_done(study: optuna.Study, plan: StudyPlan) -> bool:
    """Are the search's own trials over: its budget spent, none running or queued?"""
    return not search_trials(study, (TrialState.RUNNING, TrialState.WAITING)) and len(
        search_trials(study)) >= plan.spec.cfg.study.trials


def enqueue_confirmation(study: optuna.Study, plan: StudyPlan, retry: bool = False) -> int:
    """Queue every confirmation cell x seed not yet accounted for (a live trial, or a failure that is its outcome:
    queue.settled; `retry` False, within a run: or a crash, tried again on the next run). Call once the search's
    own trials are done. Returns the number queued."""
    if not confirms(plan):
        return 0
    have = accounted([t for t in own_trials(study) if is_confirmation(t)], plan, retry)
    queued = 0
    for seed in confirmation_seeds(plan):
        for cell in confirmation_cells(study, plan):
            if (cell.key, seed) not in have:
                study.enqueue_trial({}, user_attrs=configuration(cell, seed) | {Attr.STAGE: CONFIRM},
                                    skip_if_exists=False)
                queued += 1
    return queued
