"""The trial queue and its recovery: what a dead process left RUNNING is failed (its MLflow runs too), every
cell x seed of a grid without a live trial is queued, a searched study's stopped trials are queued again to resume,
and seeds on demand queue the next seed of each configuration still undecided."""
from __future__ import annotations

import os
import socket

import optuna
from optuna.trial import TrialState

from ablate import stats, tracking
from ablate.cells import cell_cost
from ablate.checkpoint import cell_checkpoint
from ablate.plan import Cell, StudyPlan
from ablate.spec import refusal
from ablate.storage import Attr
from ablate.study.configurations import study_results
from ablate.study.objective import configuration
from ablate.tracking import Tag

LIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
DONE = (TrialState.COMPLETE, TrialState.PRUNED)


def own_trials(study: optuna.Study, states=None) -> list:
    """The study's own trials: not those copied from an earlier study for its sampler (warm_start)."""
    return [t for t in study.get_trials(deepcopy=False, states=states) if Attr.WARM_FROM not in t.user_attrs]


def alive(worker: str | None) -> bool:
    """Is the process `host:pid` (a trial's worker) still running on this machine?"""
    host, _, pid = (worker or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover(study: optuna.Study, storage, client, experiment_id: str, journal: bool) -> None:
    """After a crash: fail trials nobody is running any more, and end their MLflow runs FAILED.

    A journal lives on one machine, so a RUNNING trial whose worker process is gone is dead; on a database,
    workers on other machines are judged by their heartbeats instead."""
    if journal:
        study_id = storage.get_study_id_from_name(study.study_name)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if alive(t.user_attrs.get(Attr.WORKER)):
                continue  # another `ablate run` of this study on this machine is running it
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            storage.set_trial_user_attr(trial_id, Attr.FAIL_REASON, "the worker died during this trial (killed?)")
            study.tell(t.number, state=TrialState.FAIL)
    end_orphaned_runs(study, client, experiment_id)


def end_orphaned_runs(study: optuna.Study, client, experiment_id: str) -> None:
    """MLflow runs still RUNNING whose Optuna trial is over (a dead worker's) end FAILED."""
    finished = {str(t.number) for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    query = f"attributes.status = 'RUNNING' and tags.`{Tag.STUDY}` = '{study.study_name}'"
    for run in client.search_runs([experiment_id], query):
        if run.data.tags.get(Tag.TRIAL) in finished:
            tracking.end_run(client, run.info.run_id, "FAILED", "the worker died during this trial (killed?)")


def enqueue_missing(study: optuna.Study, plan: StudyPlan, cells: dict[str, Cell]) -> None:
    """Queue every cell x seed of the file (`cells`: key -> Cell) that has no live trial yet; cells are matched by
    key, never by index."""
    first = plan.spec.cfg.study.first_seeds
    have = {(t.user_attrs.get(Attr.CELL) or plan.cell(t.user_attrs[Attr.PARAMS]).key, t.user_attrs[Attr.SEED])
            for t in study.get_trials(deepcopy=False, states=LIVE)
            if Attr.PARAMS in t.user_attrs and Attr.SEED in t.user_attrs}  # studies from before keys: from params
    # seeds on demand: a seed a cell was given before (then killed) is queued again too, so that it resumes
    tried = study_results(study, plan).tried if plan.spec.cfg.study.on_demand else {}
    for seed in sorted(set(first).union(*tried.values())):
        for key, cell in cells.items():
            if (key, seed) not in have and (seed in first or seed in tried.get(key, ())):
                study.enqueue_trial({}, user_attrs=configuration(cell, seed), skip_if_exists=False)


def requeue_stopped(study: optuna.Study, plan: StudyPlan) -> None:
    """A searched study's trials that stopped with a checkpoint (killed, preempted, crashed) are queued again with
    their params and seed, so that a later trial resumes them; a grid's cells are queued by enqueue_missing."""
    stopped = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    # ours, or Optuna's heartbeat retry (RetryFailedTrialCallback) on a database
    retried = {n for t in study.get_trials(deepcopy=False)
               for n in (t.user_attrs.get(Attr.RETRY_OF), t.system_attrs.get("failed_trial"))}
    for t in stopped:
        if t.number in retried or Attr.PARAMS not in t.user_attrs:
            continue
        params, seed = t.user_attrs[Attr.PARAMS], t.user_attrs[Attr.SEED]
        if cell_checkpoint(plan.config(params, seed), plan.name, t.user_attrs[Attr.CELL], seed).is_file():
            study.enqueue_trial(t.params, user_attrs={Attr.SEED: seed, Attr.RETRY_OF: t.number},
                                skip_if_exists=False)


def refused_cells(plan: StudyPlan) -> dict[str, str]:
    """A grid's cells that study.constraints refuse, from their dry forwards: cell key -> why."""
    if not plan.spec.cfg.study.constraints:
        return {}
    why = {key: refusal(plan.spec, plan.cost(cell, cell_cost)) for key, cell in plan.cells.items()}
    return {key: reason for key, reason in why.items() if reason}


def add_seeds(study: optuna.Study, plan: StudyPlan) -> int:
    """Seeds on demand (study.seeds: {min, max, until: decided}): queue the next seed of every configuration whose
    interval against the baseline (summary.choose_baseline, also in a ladder) still holds 0 (stats.next_seeds); in
    a search, also a finished configuration's repeats up to min. The caller holds the setup lock. Returns the
    number of trials queued."""
    spec, policy = plan.spec, plan.spec.cfg.study.on_demand
    now = study_results(study, plan)
    results, cells, tried, pending = now.comparison, now.cells, now.tried, now.pending
    samples = {key: o.samples for key, o in results.outcomes.items() if o.n}
    add: dict[str, set[int]] = {}
    if not spec.is_grid:
        for key in samples:  # a searched configuration's first repeats: up to min seeds
            missing = set(range(policy.min)) - tried[key]
            if missing and key not in pending:
                add[key] = missing
    if results.baseline is not None:
        ready = {k: v for k, v in samples.items() if len(v) >= policy.min or spec.is_grid}
        for key, seeds in stats.next_seeds(ready, tried, pending, results.baseline, policy.max,
                                           results.maximize).items():
            add.setdefault(key, set()).update(seeds)
    if not spec.is_grid:  # within the study's budget of trials
        room = spec.cfg.study.trials - len([t for t in own_trials(study) if Attr.LABEL in t.user_attrs or
                                            t.state == TrialState.WAITING])
        add = dict(list(add.items())[:max(room, 0)])
    queued = 0
    for key, seeds in add.items():
        fixed = dict(cells[key].params) if not spec.is_grid else {}
        for seed in sorted(seeds):
            study.enqueue_trial(fixed, user_attrs=configuration(cells[key], seed), skip_if_exists=False)
            queued += 1
    return queued
