"""A study from start to end: check every cell before any store exists, set the study up under its lock (open or
set aside, recover, queue, parent and configuration runs), then run the workers and end the runs."""
from __future__ import annotations

from dataclasses import dataclass

import optuna
from mlflow import MlflowClient
from optuna.trial import TrialState

from ablate import tracking, train
from ablate.cells import check_cells
from ablate.errors import AblateError, Preempted, describe, within
from ablate.plan import Cell, StudyPlan
from ablate.spec import StudySpec
from ablate.storage import Attr, journal_file, make_storage, setup_lock
from ablate.study.configurations import ConfigurationRuns, parent_run
from ablate.study.confirmation import enqueue_confirmation, search_done
from ablate.study.optuna_setup import (
    check_comparable,
    check_search_space,
    check_warm_start,
    open_study,
    set_aside,
    warm_start,
)
from ablate.study.params import param_space
from ablate.study.progress import resolve
from ablate.study.queue import enqueue_missing, grid_prices, recover, refused_cells, requeue_stopped
from ablate.study.workers import WorkerDied, _worker, spawn_workers
from ablate.tracking import Tag


def check_trainers(plan: StudyPlan) -> None:
    """Lightning's checks of accelerator, devices and precision, once per distinct setting before any trial:
    `accelerator: gpu` on a machine without one is bad input, not a study whose every trial fails."""
    cells = list(plan.cells.values()) if plan.spec.is_grid else [Cell("{}", {})]
    seen = set()
    for cell in cells:
        cfg = plan.config(cell.params, plan.first_seed)
        setting = (cfg.train.accelerator, str(cfg.train.devices), cfg.train.precision)
        if setting not in seen:
            seen.add(setting)
            with within(f"{plan.spec.path}: {cell.location}"), train.quiet_lightning():
                train.make_trainer(cfg.train)


@dataclass(frozen=True)
class PreparedStudy:
    """A study set up for its workers: the Optuna study, the MLflow client and the study's parent run."""

    study: optuna.Study
    client: MlflowClient
    parent: str


def prepare_study(spec: StudySpec | StudyPlan, *, jobs: int = 1, storage_url: str | None = None,
                  force_new: bool = False) -> PreparedStudy:
    """Everything before the workers start: check the cells, open (or set aside and create) the study, fail what a
    dead process left running, queue what is missing, and get the parent run."""
    plan = spec if isinstance(spec, StudyPlan) else StudyPlan(spec)
    spec = plan.spec
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    check_cells(spec)  # bad models and missing data folders fail here, before any store exists
    check_trainers(plan)
    s = spec.cfg.study
    # a store that cannot be used (a server that does not answer or refuses our credentials, a file that cannot be
    # made): one line now, before the journal (or a database) holds the study
    tracking.probe_store(tracking.store_uri(plan.base.tracking.uri))
    storage = make_storage(storage_url, jobs, s.heartbeat_interval, s.grace_period, s.db_outage_s)
    uri = tracking.resolve_uri(plan.base.tracking.uri)
    journal = journal_file(storage_url)
    with setup_lock(storage, spec.name, journal):  # another `ablate run` of the same study waits here
        if force_new:
            aside = set_aside(plan, storage)
            if aside:
                print(f"[{spec.name}] --force-new: the earlier trials are now study {aside!r}", flush=True)
        check_warm_start(plan, storage)  # before open_study: a new study is written when it is opened
        study = open_study(plan, storage)
        check_comparable(study, plan)  # before anything is written to either store
        check_search_space(study, plan)
        # the MLflow store (a client creates it) and experiment are created once, before any worker starts
        client = tracking.make_client(uri)
        experiment_id = tracking.get_or_create_experiment(client, spec.name)
        objective = spec.cfg.study.objectives()[0]
        client.set_experiment_tag(experiment_id, Tag.OBJECTIVE, f"{objective.metric} {objective.direction}")
        recover(study, storage, client, experiment_id, journal=journal is not None)
        if spec.is_grid:
            plan.step_prices = grid_prices(study, plan)  # before the constraints, which may limit them
            param_space(study, plan)  # before the queue: each key's kind, as the trials' Optuna params record it
            refused = refused_cells(plan)
            study.set_user_attr(Attr.REFUSED, refused)  # the report lists them, with why
            enqueue_missing(study, plan, {k: c for k, c in plan.cells.items() if k not in refused})
        else:
            added = warm_start(study, plan, storage)
            if added:
                print(f"[{spec.name}] warm start: {added} finished trials of study {spec.cfg.study.warm_start!r} "
                      "inform the sampler", flush=True)
            requeue_stopped(study, plan)
            if search_done(study, plan):  # killed or crashed confirmation runs: queued again, by the failure rule
                enqueue_confirmation(study, plan, retry=True)
        parent = parent_run(study, plan, client, experiment_id)
        runs = ConfigurationRuns(plan, client, experiment_id, parent)
        for cell in plan.cells.values():  # the UI shows every cell from the start (a search has none yet)
            runs(cell, running=False)
        runs.summarise(study)
    return PreparedStudy(study, client, parent)


def run_study(spec: StudySpec | StudyPlan, *, jobs: int = 1, storage_url: str | None = None, force_new: bool = False,
              trainer=None, progress: str = "lines") -> optuna.Study:
    """Run (or resume) the study to the end; returns the Optuna study. Overrides are already in `spec`.
    `trainer` trains one trial config (default train.run_trial; tests pass a stand-in). `progress`: auto, bar or
    lines (progress.MODES)."""
    plan = spec if isinstance(spec, StudyPlan) else StudyPlan(spec)
    shown = resolve(progress)
    prepared = prepare_study(plan, jobs=jobs, storage_url=storage_url, force_new=force_new)
    study, client, parent = prepared.study, prepared.client, prepared.parent
    status, reason = "FINISHED", None
    try:
        if jobs == 1:
            _worker(plan, storage_url, 1, 0, parent, trainer, shown)
        else:
            spawn_workers(plan, storage_url, jobs, parent, trainer, shown, study)
        if study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
            status = None  # other workers (launched tasks, other machines) are still at it: the last one ends it
    except KeyboardInterrupt as e:  # Ctrl-C, or Preempted: 'preempted (SIGTERM)'
        status, reason = "KILLED", describe(e) if isinstance(e, Preempted) else None
        raise
    except (WorkerDied, AblateError):  # AblateError: FailureStreak stopped it
        status = "FAILED"
        raise
    finally:
        if status:
            tracking.end_configuration_runs(client, parent, status)  # those whose seeds will not run now
            tracking.end_run(client, parent, status, reason)
    return study
