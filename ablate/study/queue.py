"""The trial queue and its recovery: what a dead process left RUNNING is failed (its MLflow runs too), every
cell x seed of a grid without a live trial is queued, a searched study's stopped trials are queued again to resume,
and seeds on demand queue the next seed of each configuration still undecided.

Every seed is accounted for: a cell x seed whose trial diverged (loss NaN or inf: the same again for that seed and
configuration) is an outcome and never queued again; one that crashed (an exception, out of memory, a worker that
died) is queued again on the next run, up to MAX_ATTEMPTS tries in all; one stopped by a signal (Ctrl-C, preemption)
is resumed as often as it is stopped."""
from __future__ import annotations

import os
import socket
from collections import Counter

import optuna
from optuna.trial import TrialState

from ablate import stats, tracking
from ablate.cells import cell_cost
from ablate.checkpoint import cell_checkpoint
from ablate.plan import Cell, StudyPlan
from ablate.spec import refusal
from ablate.step_cost import price_records
from ablate.storage import Attr
from ablate.study.configurations import study_results
from ablate.study.objective import configuration
from ablate.study.params import fixed_params
from ablate.study.trials import is_confirmation, own_trials
from ablate.tracking import Tag

LIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
MAX_ATTEMPTS = 2  # tries of a cell x seed that keeps crashing; a diverged one is tried once
DIVERGED, STOPPED, CRASHED = "diverged", "stopped", "crashed"  # why a trial failed, as the queue reads it


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


def failure_kind(reason: str | None) -> str:
    """Why a trial failed, from its fail_reason (objective: errors.describe of what stopped it): DIVERGED (train.py's
    DivergedError), STOPPED (Ctrl-C's KeyboardInterrupt, a preemption signal's 'preempted (SIGTERM)'), else CRASHED
    (an exception, out of memory, 'the worker died during this trial', a dead machine's heartbeat)."""
    reason = reason or ""
    if reason.startswith("DivergedError"):
        return DIVERGED
    return STOPPED if reason.startswith(("preempted", "KeyboardInterrupt")) else CRASHED


def pair(t, plan: StudyPlan) -> tuple[str, int]:
    """A trial's cell x seed (studies from before cell keys: the key from its params)."""
    return t.user_attrs.get(Attr.CELL) or plan.cell(t.user_attrs[Attr.PARAMS]).key, t.user_attrs[Attr.SEED]


def settled(trials, plan: StudyPlan) -> set[tuple[str, int]]:
    """The cell x seed pairs whose failure is their outcome: one diverged, or MAX_ATTEMPTS crashed."""
    crashes: Counter = Counter()
    out = set()
    for t in trials:
        if t.state != TrialState.FAIL or Attr.PARAMS not in t.user_attrs or Attr.SEED not in t.user_attrs:
            continue
        kind = failure_kind(t.user_attrs.get(Attr.FAIL_REASON))
        if kind == DIVERGED:
            out.add(pair(t, plan))
        elif kind == CRASHED:
            crashes[pair(t, plan)] += 1
    return out | {p for p, n in crashes.items() if n >= MAX_ATTEMPTS}


def accounted(trials, plan: StudyPlan, retry: bool = True) -> set[tuple[str, int]]:
    """The cell x seed pairs not to queue again: a live trial (done, running, queued) or a settled failure; with
    `retry` False (within a run: a crash is tried again on the next run) also any pair that crashed."""
    known = [t for t in trials if Attr.PARAMS in t.user_attrs and Attr.SEED in t.user_attrs]
    live = {pair(t, plan) for t in known if t.state in LIVE}
    crashed = set() if retry else {pair(t, plan) for t in known if t.state == TrialState.FAIL
                                   and failure_kind(t.user_attrs.get(Attr.FAIL_REASON)) == CRASHED}
    return live | crashed | settled(trials, plan)


def enqueue_missing(study: optuna.Study, plan: StudyPlan, cells: dict[str, Cell]) -> None:
    """Queue every cell x seed of the file (`cells`: key -> Cell) not yet accounted for (a live trial, or a failure
    that is its outcome); cells are matched by key, never by index."""
    first = plan.spec.cfg.study.first_seeds
    have = accounted(study.get_trials(deepcopy=False), plan)
    # seeds on demand: a seed a cell was given before (then killed) is queued again too, so that it resumes
    tried = study_results(study, plan).tried if plan.spec.cfg.study.on_demand else {}
    space = study.user_attrs.get(Attr.PARAM_SPACE, {})  # the cell's values as Optuna params, for Optuna's viewers
    for seed in sorted(set(first).union(*tried.values())):
        for key, cell in cells.items():
            if (key, seed) not in have and (seed in first or seed in tried.get(key, ())):
                study.enqueue_trial(fixed_params(cell, space, plan.cells.values()),
                                    user_attrs=configuration(cell, seed), skip_if_exists=False)


def requeue_stopped(study: optuna.Study, plan: StudyPlan) -> None:
    """A searched study's trials that stopped with a checkpoint (killed, preempted, crashed) are queued again with
    their params and seed, so that a later trial resumes them, unless their failure is their outcome (settled); a
    grid's cells are queued by enqueue_missing, a search's confirmation runs by confirmation.py."""
    trials = study.get_trials(deepcopy=False)
    # ours, or Optuna's heartbeat retry (RetryFailedTrialCallback) on a database
    retried = {n for t in trials for n in (t.user_attrs.get(Attr.RETRY_OF), t.system_attrs.get("failed_trial"))}
    done = settled(trials, plan)  # a diverged configuration x seed, or one that crashed MAX_ATTEMPTS times
    for t in trials:
        if t.state != TrialState.FAIL or t.number in retried or Attr.PARAMS not in t.user_attrs:
            continue
        if is_confirmation(t) or pair(t, plan) in done:
            continue
        params, seed = t.user_attrs[Attr.PARAMS], t.user_attrs[Attr.SEED]
        if cell_checkpoint(plan.config(params, seed), plan.name, t.user_attrs[Attr.CELL], seed).is_file():
            study.enqueue_trial(t.params, user_attrs={Attr.SEED: seed, Attr.RETRY_OF: t.number},
                                skip_if_exists=False)


def grid_prices(study: optuna.Study, plan: StudyPlan) -> dict[str, dict]:
    """Each grid cell's training-step price (step_cost.py), measured once per study under the setup lock and stored on
    it: a resumed or relaunched study keeps the numbers its report already showed; a cell added since is priced."""
    stored = dict(study.user_attrs.get(Attr.STEP_COST, {}))
    missing = [cell for key, cell in plan.cells.items() if key not in stored]
    if missing and plan.spec.cfg.study.price_steps:
        print(f"[{plan.name}] pricing the training step of {len(missing)} configurations (study.price_steps)",
              flush=True)
        stored |= price_records(plan.spec, missing)
        study.set_user_attr(Attr.STEP_COST, stored)
    return stored


def refused_cells(plan: StudyPlan) -> dict[str, str]:
    """A grid's cells that study.constraints refuse, from their dry forwards: cell key -> why."""
    if not plan.spec.cfg.study.constraints:
        return {}
    why = {key: refusal(plan.spec, plan.cost(cell, cell_cost)) for key, cell in plan.cells.items()}
    return {key: reason for key, reason in why.items() if reason}


def add_seeds(study: optuna.Study, plan: StudyPlan) -> int:
    """Seeds on demand (study.seeds: {min, max, until: decided}): queue the next seed of every configuration whose
    interval against its control (the report's `vs`: a grid's matched plain cell, a ladder's row before, the named
    baseline) still holds 0 (stats.next_seeds); in a search, a finished configuration's repeats up to min (its rows
    have no control until the confirmation stage, whose seeds study.confirm fixes). The caller holds the setup
    lock. Returns the number of trials queued."""
    spec, policy = plan.spec, plan.spec.cfg.study.on_demand
    room = spec.cfg.study.trials - len([t for t in own_trials(study) if not is_confirmation(t) and (
        Attr.LABEL in t.user_attrs or t.state == TrialState.WAITING)]) if not spec.is_grid else 0
    if not spec.is_grid and room <= 0:  # a search's budget is spent (its confirmation runs are not repeats)
        return 0
    now = study_results(study, plan)
    results, cells, tried, pending = now.comparison, now.cells, now.tried, now.pending
    samples = {key: o.samples for key, o in results.outcomes.items() if o.n}
    add: dict[str, set[int]] = {}
    if not spec.is_grid:
        for key in samples:  # a searched configuration's first repeats: up to min seeds
            missing = set(range(policy.min)) - tried[key]
            if missing and key not in pending:
                add[key] = missing
    if any(results.controls.values()):
        ready = {k: v for k, v in samples.items() if len(v) >= policy.min or spec.is_grid}
        study_cfg = spec.cfg.study
        for key, seeds in stats.next_seeds(ready, tried, pending, results.controls, policy.max, results.maximize,
                                           min_seeds=policy.min, adjust=study_cfg.adjust,
                                           margin=study_cfg.min_effect, ladder=study_cfg.ladder,
                                           verdicts={k: o.verdict for k, o in results.outcomes.items()}).items():
            add.setdefault(key, set()).update(seeds)
    if not spec.is_grid:  # within the study's budget of trials
        add = dict(list(add.items())[:room])
    queued = 0
    for key, seeds in add.items():
        fixed = dict(cells[key].params) if not spec.is_grid else fixed_params(
            cells[key], study.user_attrs.get(Attr.PARAM_SPACE, {}), plan.cells.values())
        for seed in sorted(seeds):
            study.enqueue_trial(fixed, user_attrs=configuration(cells[key], seed), skip_if_exists=False)
            queued += 1
    return queued
