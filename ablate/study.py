"""The study runner: a StudySpec -> an Optuna study whose trials are tracked Lightning runs.

Grid studies enqueue every cell x seed that has no live trial as a WAITING Optuna trial carrying its cell key,
params and seed (user attrs, not suggested params: an edited grid must not meet Optuna's fixed categorical
value spaces); workers claim them through Optuna's atomic trial queue, so `--jobs N` never runs a cell twice.
Running a study again resumes it: trials left RUNNING by a dead process are failed (their MLflow runs too),
and every cell x seed of the file as it reads now without a COMPLETE, PRUNED, RUNNING or WAITING trial is
queued. Several `ablate run` processes may share a study: setup is serialised by a lock, and on PostgreSQL
heartbeats let a live worker fail and retry a dead machine's trial.

Trials are durable (checkpoint.py): the trial that runs a cell x seed again after its predecessor died or was
preempted continues from that one's checkpoint (recorded in its `resumed` attr), and a searched study queues a
stopped trial's params and seed again so that it is resumed too. SIGTERM and SIGUSR1 stop a study like Ctrl-C
does, after the running trial's checkpoint is written, and end it with `Preempted`.
"""
from __future__ import annotations

import gc
import multiprocessing as mp
import os
import signal
import socket
import sys
import time
from datetime import datetime, timezone

import numpy as np
import optuna
import pandas as pd
import pytorch_lightning as pl
import torch
from optuna.storages import fail_stale_trials
from optuna.trial import TrialState

from mlflow import MlflowClient

from ablate import stats, tracking, train
from ablate.cells import cell_cost, check_cells
from ablate.checkpoint import cell_checkpoint, checkpoint_root, resume_point
from ablate.distributed import broadcast_decision
from ablate.errors import AblateError, Preempted, describe, within
from ablate.interrupt import REQUEUE_EXIT_CODE, STOP_SIGNALS, check_interrupt, deferred_interrupt, stop_exception
from ablate.config import KNOB_PREFIX
from ablate.spec import (StudySpec, cell_digest, cell_key, cell_label, cell_location, constraint_excess, fingerprint,
                         fingerprint_change, grid_cells, keyed_cells, knob_applies, module_of, paper_delta, refusal,
                         run_label, trial_config)
from ablate.storage import Attr, journal_file, make_storage, resumed_trials, setup_lock

# study.sampler -> (Optuna sampler class, its settings); each worker adds its own seed
SAMPLERS = {
    "tpe": (optuna.samplers.TPESampler, dict(multivariate=True, group=True, constant_liar=True)),
    "gp": (optuna.samplers.GPSampler, {}),
    "random": (optuna.samplers.RandomSampler, {}),
    "grid": (optuna.samplers.RandomSampler, {}),  # grid trials take their cell from the queue: never sampled
}
# study.pruner -> (Optuna pruner class, its settings); hyperband's max_resource is the trial's epochs
PRUNERS = {
    "none": (optuna.pruners.NopPruner, {}),
    "median": (optuna.pruners.MedianPruner, dict(n_startup_trials=3, n_warmup_steps=1)),
    "hyperband": (optuna.pruners.HyperbandPruner, dict(min_resource=1)),
    "asha": (optuna.pruners.SuccessiveHalvingPruner, dict(min_resource=1, reduction_factor=3)),
}
TASK_ENV = "ABLATE_TASK"  # set by launch.py in a launched worker: its job array task, e.g. 'slurm 1234_0'
LIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
DONE = (TrialState.COMPLETE, TrialState.PRUNED)


class WorkerDied(Exception):
    """A worker process ended without finishing its trials (OOM killer, kill -9): not bad input."""


class FailureStreak:
    """An Optuna callback that stops a worker whose last `n` trials all failed with one and the same reason: a
    configuration every trial trips over (a bad key value only a trial finds) must not burn the whole study."""

    def __init__(self, n: int = 3):
        self.n, self.reasons = n, []

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        failed = trial.state == TrialState.FAIL and Attr.FAIL_REASON in trial.user_attrs
        self.reasons = self.reasons[-(self.n - 1):] + [trial.user_attrs[Attr.FAIL_REASON]] if failed else []
        if len(self.reasons) == self.n and len(set(self.reasons)) == 1:
            raise AblateError(f"study {study.study_name!r}: the last {self.n} trials all failed with the same error, "
                              f"so the study stops: {self.reasons[0]}")


def make_sampler(spec: StudySpec, worker: int = 0) -> optuna.samplers.BaseSampler:
    cls, settings = SAMPLERS[spec.cfg.study.sampler]
    return cls(seed=spec.cfg.study.seed_list[0] + worker, **settings)  # distinct streams: workers must not sample alike


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    cls, settings = PRUNERS[spec.cfg.study.pruner]
    if cls is optuna.pruners.HyperbandPruner:  # its resource: validations (train.val_every per epoch)
        train_cfg = trial_config(spec, {}, spec.cfg.study.seed_list[0]).train
        settings = settings | {"max_resource": train_cfg.epochs * validations_per_epoch(train_cfg.val_every)}
    return cls(**settings)


def validations_per_epoch(val_every: float) -> int:
    return max(1, round(1 / val_every))


def open_study(spec: StudySpec, storage, worker: int = 0) -> optuna.Study:
    """Load the Optuna study with this worker's sampler and the study's pruner, or create it.

    Loading first writes nothing (creating an existing study appends to a journal before it fails)."""
    directions = [optuna.study.StudyDirection[o.direction.upper()] for o in spec.cfg.study.objectives()]
    try:
        study = optuna.load_study(study_name=spec.name, storage=storage, sampler=make_sampler(spec, worker),
                                  pruner=make_pruner(spec))
    except KeyError:  # a new study (another worker may be creating it at this moment)
        return optuna.create_study(study_name=spec.name, storage=storage, sampler=make_sampler(spec, worker),
                                   pruner=make_pruner(spec), load_if_exists=True, directions=directions)
    if study.directions != directions:
        stored = ", ".join(d.name.lower() for d in study.directions)
        raise AblateError(f"{spec.path}: study.direction: study {spec.name!r} in the store optimises {stored}, "
                          f"this file {', '.join(d.name.lower() for d in directions)} (run it under a new study.name, "
                          "or with --force-new to set the old trials aside and start over)")
    return study


# ---------------------------------------------------------------- the objective

class PruningCallback(pl.Callback):
    """Report the metric to Optuna after each validation; stop the trial when the pruner says so.

    optuna-integration's callback imports the `lightning` package; ours serves `pytorch_lightning`."""

    def __init__(self, trial: optuna.Trial | None, metric: str):
        self.trial, self.metric = trial, metric

    def on_validation_end(self, trainer, module):
        if trainer.sanity_checking:
            return
        step, prune = self.step(trainer), False
        if self.trial is not None and self.metric in trainer.callback_metrics:  # rank 0: the one with the trial
            self.trial.report(float(trainer.callback_metrics[self.metric]), step)
            prune = self.trial.should_prune()
        if broadcast_decision(trainer, prune):  # on several devices every rank stops at this validation
            per_epoch = validations_per_epoch(trainer.val_check_interval if isinstance(
                trainer.val_check_interval, float) else 1.0)
            where = f"epoch {trainer.current_epoch}" if per_epoch == 1 else (
                f"validation {step % per_epoch + 1}/{per_epoch} of epoch {trainer.current_epoch}")
            raise optuna.TrialPruned(f"pruned after {where}")

    @staticmethod
    def step(trainer) -> int:
        """The pruner's step: the validation's index over the trial (the epoch, with one validation per epoch)."""
        interval = trainer.val_check_interval
        per_epoch = validations_per_epoch(interval) if isinstance(interval, float) else 1
        done = trainer.fit_loop.epoch_loop.batch_progress.current.completed / max(trainer.num_training_batches, 1)
        return trainer.current_epoch * per_epoch + max(0, min(per_epoch, round(done * per_epoch)) - 1)

    def follower(self) -> PruningCallback:
        """The callback of a multi-device trial's other ranks: no trial of their own, rank 0's decision."""
        return PruningCallback(None, self.metric)


def sample_params(trial: optuna.Trial, spec: StudySpec) -> tuple[dict, int]:
    """A searched trial's configuration: define-by-run sampling of the space (a knob only for modules taking it)."""
    params: dict = {}
    for key in sorted(spec.space, key=lambda k: k.startswith(KNOB_PREFIX)):  # the module before its knobs
        if not knob_applies(key, params, spec):
            continue
        values = spec.space[key]
        if isinstance(values, list):
            params[key] = trial.suggest_categorical(key, values)
        elif values.type == "int":
            params[key] = trial.suggest_int(key, int(values.low), int(values.high), step=int(values.step or 1),
                                            log=values.log)
        else:
            params[key] = trial.suggest_float(key, values.low, values.high, step=values.step, log=values.log)
    seeds = [0] if spec.cfg.study.on_demand else spec.cfg.study.seeds  # on demand: repeats are queued
    # a stopped trial queued again (requeue_stopped, or a repeat of seeds on demand) keeps its seed
    return params, trial.user_attrs.get(Attr.SEED, seeds[trial.number % len(seeds)])


def configuration(key: str, params: dict, seed: int) -> dict:
    """The user attrs that give a trial its configuration: cell key, params, label and seed."""
    return {Attr.CELL: key, Attr.PARAMS: params, Attr.LABEL: cell_label(params), Attr.SEED: seed}


def run_name(spec: StudySpec, trial: optuna.Trial, params: dict, seed: int) -> str:
    """What a trial's run is called in the UI: 'cbam · seed 1' in a grid, '#12 cbam r=8 k=5' in a search."""
    several = spec.cfg.study.on_demand or len(spec.cfg.study.seeds) > 1
    if spec.is_grid:
        return f"{run_label(params)} · seed {seed}"
    return f"#{trial.number} {run_label(params)}" + (f" · seed {seed}" if several else "")


def refuse_if_costly(trial: optuna.Trial, spec: StudySpec, params: dict) -> None:
    """study.constraints on a searched trial: Optuna's sampler learns the excess (trial.set_constraint), and a
    configuration over a limit is pruned before it trains, its reason recorded."""
    cost = cell_cost(spec, params)
    for name, excess in constraint_excess(spec, cost).items():
        trial.set_constraint(name, excess)
    why = refusal(spec, cost)
    if why:
        trial.set_user_attr(Attr.REFUSED, why)
        raise optuna.TrialPruned(f"refused by study.constraints: {why}")


def make_objective(spec: StudySpec, parent_run_id: str, configuration_run=None):
    """The Optuna objective; `configuration_run(key, params)` gives the run a trial's run is the child of (its
    configuration's; default: the study's parent run)."""
    objectives = spec.cfg.study.objectives()
    configuration_run = configuration_run or (lambda key, params: parent_run_id)

    def objective(trial: optuna.Trial):
        try:
            trial.set_user_attr(Attr.WORKER, worker_id())  # so a resume can tell a live trial from a dead one
            if os.environ.get(TASK_ENV):
                trial.set_user_attr(Attr.TASK, os.environ[TASK_ENV])  # `ablate status` shows which task runs it
            if spec.is_grid:
                if Attr.CELL not in trial.user_attrs:  # not from the queue: another worker took the last cell
                    trial.set_user_attr(Attr.FAIL_REASON, "no grid cell left")
                    raise optuna.TrialPruned("no grid cell left")  # no configuration: never a row of the table
                params, seed = trial.user_attrs[Attr.PARAMS], trial.user_attrs[Attr.SEED]
            else:
                params, seed = sample_params(trial, spec)
                for key, value in configuration(cell_key(spec, params), params, seed).items():
                    trial.set_user_attr(key, value)
            cfg = trial_config(spec, params, seed)
            key = trial.user_attrs.get(Attr.CELL) or cell_key(spec, params)  # (grid trials from before keys)
            if spec.cfg.study.constraints and not spec.is_grid:  # a grid's refused cells are never queued
                refuse_if_costly(trial, spec, params)
            checkpoint = cell_checkpoint(cfg, spec.name, key, seed)
            resume = resume_point(checkpoint, cfg)
            # a stopped trial's checkpoint: carry on from there (None overwrites what a heartbeat retry copied)
            trial.set_user_attr(Attr.RESUMED, resume and {"trial": resume.trial, "epoch": resume.epoch})
            if resume is not None:
                print(f"[{spec.name}] trial {trial.number} ({cell_label(params)}, seed {seed}) resumes at epoch "
                      f"{resume.epoch} from trial {resume.trial}'s checkpoint", flush=True)
            callbacks = [PruningCallback(trial, objectives[0].metric)] if len(objectives) == 1 else []
            tags = {"optuna.study": spec.name, "optuna.trial": str(trial.number), "ablate.cell": cell_label(params),
                    "ablate.seed": str(seed), tracking.ROLE_TAG: "trial"}
            result = train.run_trial(cfg, callbacks=callbacks, parent_run_id=configuration_run(key, params),
                                     tags=tags, killed_by=(optuna.TrialPruned,), checkpoint=checkpoint, resume=resume,
                                     owner={"trial": trial.number}, run_name=run_name(spec, trial, params, seed))
        except BaseException as e:  # Ctrl-C too: the trial is marked with why it stopped
            if not isinstance(e, optuna.TrialPruned):
                trial.set_user_attr(Attr.FAIL_REASON, describe(e))
            free_memory()  # an out-of-memory trial must not starve the next one
            raise
        trial.set_user_attr(Attr.RUN_ID, result.run_id)
        trial.set_user_attr(Attr.METRICS, result.metrics)
        missing = [o.metric for o in objectives if o.metric not in result.metrics]
        if missing:
            raise AblateError(f"{spec.path}: study.metric: the trial logged no {missing[0]!r}")
        values = [float(result.metrics[o.metric]) for o in objectives]
        return values[0] if len(values) == 1 else values  # maximise/minimise per study.metric

    return objective


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- setup: recovery, the grid queue, the parent run

def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


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
    query = f"attributes.status = 'RUNNING' and tags.`optuna.study` = '{study.study_name}'"
    for run in client.search_runs([experiment_id], query):
        if run.data.tags.get("optuna.trial") in finished:
            tracking.end_run(client, run.info.run_id, "FAILED", "the worker died during this trial (killed?)")


def enqueue_missing(study: optuna.Study, spec: StudySpec, cells: dict[str, dict]) -> None:
    """Queue every cell x seed of the file (`cells`: key -> params) that has no live trial yet; cells are
    matched by key, never by index."""
    have = {(t.user_attrs.get(Attr.CELL) or cell_key(spec, t.user_attrs[Attr.PARAMS]), t.user_attrs[Attr.SEED])
            for t in study.get_trials(deepcopy=False, states=LIVE)
            if Attr.PARAMS in t.user_attrs and Attr.SEED in t.user_attrs}  # studies from before keys: from params
    # seeds on demand: a seed a cell was given before (then killed) is queued again too, so that it resumes
    _, tried, _, _ = cell_samples(study, spec) if spec.cfg.study.on_demand else (None, {}, None, None)
    for seed in sorted(set(spec.cfg.study.first_seeds).union(*tried.values())):
        for key, params in cells.items():
            if (key, seed) not in have and (seed in spec.cfg.study.first_seeds or seed in tried.get(key, ())):
                study.enqueue_trial({}, user_attrs=configuration(key, params, seed), skip_if_exists=False)


def requeue_stopped(study: optuna.Study, spec: StudySpec) -> None:
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
        if cell_checkpoint(trial_config(spec, params, seed), spec.name, t.user_attrs[Attr.CELL], seed).is_file():
            study.enqueue_trial(t.params, user_attrs={Attr.SEED: seed, Attr.RETRY_OF: t.number},
                                skip_if_exists=False)


def check_comparable(study: optuna.Study, spec: StudySpec) -> None:
    """Refuse a file whose trials would not be comparable with the study's: its base config or metric changed."""
    stored = study.user_attrs.get(Attr.FINGERPRINT)
    if stored is None:  # a new study, or one from before fingerprints: this file is the reference from now on
        study.set_user_attr(Attr.FINGERPRINT, fingerprint(spec))
        return
    change = fingerprint_change(spec, stored)
    if change:
        raise AblateError(f"{spec.path}: {change} since study {spec.name!r} was first run: its trials would not be "
                          f"comparable (run it under a new study.name, or with --force-new to set the old trials "
                          f"aside and start over)")


def check_warm_start(spec: StudySpec, storage) -> None:
    """study.warm_start names a study of this storage, and this study searches (a grid has nothing to warm)."""
    earlier = spec.cfg.study.warm_start
    if earlier is None:
        return
    if spec.is_grid:
        raise AblateError(f"{spec.path}: study.warm_start: a grid runs every cell; warm_start is for sampler tpe, "
                          "random or gp")
    if earlier not in optuna.get_all_study_names(storage):
        raise AblateError(f"{spec.path}: study.warm_start: no study {earlier!r} in the storage")


def distribution(values) -> optuna.distributions.BaseDistribution:
    """The Optuna distribution sample_params draws a space key from."""
    if isinstance(values, list):
        return optuna.distributions.CategoricalDistribution(values)
    if values.type == "int":
        return optuna.distributions.IntDistribution(int(values.low), int(values.high), step=int(values.step or 1),
                                                    log=values.log)
    return optuna.distributions.FloatDistribution(values.low, values.high, step=values.step, log=values.log)


def check_search_space(study: optuna.Study, spec: StudySpec) -> None:
    """A searched study's keys must keep the kind of distribution its trials were sampled from (Optuna fails every
    later trial otherwise): other choices, a range for choices, log on or off. Keys added or dropped are fine."""
    if spec.is_grid:
        return
    recorded = {}
    for t in study.get_trials(deepcopy=False):
        recorded.update(t.distributions)
    for key in sorted(set(recorded) & set(spec.space)):
        now = distribution(spec.space[key])
        try:
            optuna.distributions.check_distribution_compatibility(recorded[key], now)
        except ValueError:
            raise AblateError(f"{spec.path}: space.{key}: study {spec.name!r} in the store samples it from "
                              f"{_domain(recorded[key])}, this file from {_domain(now)}; Optuna cannot mix them "
                              "(run it under a new study.name, or with --force-new to set the old trials aside)"
                              ) from None


def _domain(d: optuna.distributions.BaseDistribution) -> str:
    if isinstance(d, optuna.distributions.CategoricalDistribution):
        return f"choices {list(d.choices)}"
    return f"{'a log ' if d.log else 'a '}range [{d.low}, {d.high}]{f' step {d.step}' if d.step else ''}"


def set_aside(spec: StudySpec, storage) -> str | None:
    """--force-new: move an existing study to '<name>.before-<UTC time>' (its results stay readable there)."""
    if spec.name not in {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}:
        return None
    aside = f"{spec.name}.before-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    optuna.copy_study(from_study_name=spec.name, from_storage=storage, to_storage=storage, to_study_name=aside)
    optuna.delete_study(study_name=spec.name, storage=storage)
    # its stopped trials' checkpoints go with it: starting over must not resume them
    root = checkpoint_root(trial_config(spec, {}, spec.cfg.study.seed_list[0]))
    if (root / spec.name).is_dir():
        os.replace(root / spec.name, root / aside)
    return aside


def parent_run(study: optuna.Study, spec: StudySpec, client, experiment_id: str) -> str:
    """One MLflow parent run per study, kept across resumes (its id lives in the Optuna study)."""
    study.set_user_attr(Attr.STUDY_FILE, str(spec.path.resolve()))  # a moved file: the last run's path
    run_id = study.user_attrs.get(Attr.PARENT_RUN)
    if run_id:
        try:
            client.update_run(run_id, status="RUNNING")
            return run_id
        except Exception:  # noqa: BLE001 (the tracking store was reset: start a new parent)
            pass
    run_id = tracking.start_run(client, experiment_id, run_name=spec.name,
                                tags={"optuna.study": spec.name, "ablate.role": "study"})
    study.set_user_attr(Attr.PARENT_RUN, run_id)
    s = spec.cfg.study
    tracking.log_params(client, run_id, {"study.sampler": s.sampler, "study.pruner": s.pruner,
                                         "study.seeds": s.seeds, "study.metric": [o.metric for o in s.objectives()],
                                         "study.file": str(spec.path)})
    client.log_artifact(run_id, str(spec.path))
    return run_id


# ---------------------------------------------------------------- results over seeds: configuration runs, seeds on demand

def own_trials(study: optuna.Study, states=None) -> list:
    """The study's own trials: not those copied from an earlier study for its sampler (warm_start)."""
    return [t for t in study.get_trials(deepcopy=False, states=states) if Attr.WARM_FROM not in t.user_attrs]


def cell_samples(study: optuna.Study, spec: StudySpec):
    """Per configuration (cell key; a grid's cells as the file reads now): its finished objective values by seed
    (percent for accuracies; the mean of a seed's repeats), the seeds it has had a trial of, whether a trial of it is
    queued or running, and its params. Returns (samples, tried, pending, params)."""
    cells = keyed_cells(spec) if spec.is_grid else None
    scale = stats.percent(spec.cfg.study.objectives()[0].metric)
    values, tried, pending, params = {}, {}, set(), dict(cells or {})
    for t in own_trials(study):
        key, seed = t.user_attrs.get(Attr.CELL), t.user_attrs.get(Attr.SEED)
        if key is None or (cells is not None and key not in cells) or Attr.REFUSED in t.user_attrs:
            continue
        params.setdefault(key, t.user_attrs.get(Attr.PARAMS, {}))
        tried.setdefault(key, set()).add(seed)
        if t.state in (TrialState.WAITING, TrialState.RUNNING):
            pending.add(key)
        elif t.state == TrialState.COMPLETE:
            values.setdefault(key, {}).setdefault(seed, []).append(t.values[0] * scale)
    samples = {key: pd.Series({seed: np.mean(v) for seed, v in sorted(by_seed.items())}) for key, by_seed in
               values.items()}
    return samples, tried, pending, params


def baseline_cell(spec: StudySpec, samples: dict, params: dict) -> str | None:
    """What a configuration is compared with: in a grid, the first plain cell of the file (else its first);
    in a search, the best configuration by mean over seeds."""
    if not samples:
        return None
    if spec.is_grid:
        ordered = [k for k in params if k in samples]
        plain = [k for k in ordered if module_of(params[k], spec) == "none"]
        return (plain or ordered)[0]
    maximize = spec.cfg.study.objectives()[0].direction == "maximize"
    means = {k: v.mean() for k, v in samples.items()}
    return (max if maximize else min)(means, key=means.get)


class ConfigurationRuns:
    """A worker's view of the study's configuration runs (one per cell, children of the parent run, parents of the
    cell's seed runs): found or started once each, and given the result over seeds after each trial."""

    def __init__(self, spec: StudySpec, client: MlflowClient, experiment_id: str, parent: str):
        self.spec, self.client, self.experiment_id, self.parent = spec, client, experiment_id, parent
        self.ids: dict[str, str] = {}
        self.logged: dict[str, tuple] = {}  # what each run last showed: unchanged results are not logged again

    def __call__(self, key: str, params: dict, running: bool = True) -> str:
        if key not in self.ids:
            self.ids[key] = tracking.configuration_run(
                self.client, self.experiment_id, self.parent, cell_digest(key), run_label(params),
                tags={"optuna.study": self.spec.name, "ablate.cell": cell_label(params)})
        if running:
            self.client.update_run(self.ids[key], status="RUNNING")
        return self.ids[key]

    def summarise(self, study: optuna.Study) -> None:
        """Each configuration's mean, sd, n, delta against the baseline with its 95% interval and verdict (metrics
        and tags of its run; the run FINISHED while none of its trials is queued or running), and the study's
        summary on the parent run: the best configuration by mean and the trial counts."""
        spec, client = self.spec, self.client
        objective = spec.cfg.study.objectives()[0]
        scale, maximize = stats.percent(objective.metric), objective.direction == "maximize"
        samples, _, pending, params = cell_samples(study, spec)
        base = baseline_cell(spec, samples, params)
        unit = " pts" if scale == 100 else ""
        refused = study.user_attrs.get(Attr.REFUSED, {})
        for key in params:
            values = samples.get(key, pd.Series(dtype=float))
            state = (tuple(values), key in pending, base, tuple(samples.get(base, ())))
            if self.logged.get(key) == state:
                continue
            run = self(key, params[key], running=key in pending)
            metrics = {"seeds": len(values)}
            tags = {"ablate.verdict": "refused", "ablate.refused": refused[key]} if key in refused else {}
            if len(values):
                metrics |= {f"{objective.metric}/mean": values.mean() / scale}
                text = f"{values.mean():.2f}" + (f" ± {values.std():.2f}" if len(values) > 1 else "")
                tags["ablate.result"] = f"{text}{'%' if scale == 100 else ''} over {len(values)} seed(s)"
            if len(values) > 1:
                metrics[f"{objective.metric}/sd"] = values.std() / scale
            if base is not None and key == base:
                tags["ablate.verdict"] = "baseline"
            elif base is not None and len(values):
                delta, low, high = stats.delta_ci(samples[base], values)
                metrics |= {f"{objective.metric}/delta": delta / scale}
                if not np.isnan(low):
                    metrics |= {f"{objective.metric}/delta_low": low / scale,
                                f"{objective.metric}/delta_high": high / scale}
                paper = paper_delta(spec, (params[key], cell_label(params[key])),
                                    (params[base], cell_label(params[base])))
                verdict = (stats.reproduction(paper, low, high) if not np.isnan(paper) and scale == 100
                           else stats.direction(low, high, maximize))
                ci = f" [{low:+.2f}, {high:+.2f}]" if not np.isnan(low) else " (one seed: no interval)"
                tags |= {"ablate.verdict": verdict, "ablate.delta": f"{delta:+.2f}{unit}{ci} vs {run_label(params[base])}"
                         + (f"; paper {paper:+.2f}{unit}" if not np.isnan(paper) else "")}
            tracking.log_metrics(client, run, metrics, step=len(values))
            if tags:  # the description the UI shows first on the run's page
                tags["mlflow.note.content"] = "; ".join(tags[k] for k in ("ablate.result", "ablate.delta",
                                                                          "ablate.refused") if k in tags) + (
                    f" ({tags['ablate.verdict']})" if "ablate.verdict" in tags else "")
            for tag, value in tags.items():
                client.set_tag(run, tag, value)
            if key not in pending:
                client.set_terminated(run, "FINISHED")
            self.logged[key] = state
        self._summarise_study(study, samples, params, objective, scale, maximize)

    def _summarise_study(self, study, samples, params, objective, scale, maximize) -> None:
        trials = [t for t in own_trials(study) if Attr.LABEL in t.user_attrs]
        counts = {f"trials/{k}": v for k, v in trial_counts(trials).items()}
        counts["trials/refused"] += len(study.user_attrs.get(Attr.REFUSED, {}))  # a grid's cells never queued
        metrics = dict(counts)
        if samples:
            means = {k: v.mean() for k, v in samples.items()}
            best = (max if maximize else min)(means, key=means.get)
            metrics[f"best/{objective.metric}/mean"] = means[best] / scale
            self.client.set_tag(self.parent, "ablate.best_configuration", run_label(params[best]))
            self.client.set_tag(self.parent, "ablate.summary", (
                f"best {run_label(params[best])}: {means[best]:.2f}{'%' if scale == 100 else ''} mean over "
                f"{len(samples[best])} seed(s); " + ", ".join(f"{v} {k.split('/')[1]}" for k, v in counts.items())))
        tracking.log_metrics(self.client, self.parent, metrics, step=len(trials))


def add_seeds(study: optuna.Study, spec: StudySpec) -> int:
    """Seeds on demand (study.seeds: {min, max, until: decided}): queue the next seed of every configuration whose
    interval against the baseline still holds 0 (stats.next_seeds); in a search, also a finished configuration's
    repeats up to min. The caller holds the setup lock. Returns the number of trials queued."""
    policy = spec.cfg.study.on_demand
    samples, tried, pending, params = cell_samples(study, spec)
    objective = spec.cfg.study.objectives()[0]
    add = {}
    if not spec.is_grid:
        for key, values in samples.items():  # a searched configuration's first repeats: up to min seeds
            missing = set(range(policy.min)) - tried[key]
            if missing and key not in pending:
                add[key] = missing
    base = baseline_cell(spec, samples, params)
    if base is not None:
        ready = {k: v for k, v in samples.items() if len(v) >= policy.min or spec.is_grid}
        for key, seeds in stats.next_seeds(ready, tried, pending, base, policy.max,
                                           objective.direction == "maximize").items():
            add.setdefault(key, set()).update(seeds)
    if not spec.is_grid:  # within the study's budget of trials
        room = spec.cfg.study.trials - len([t for t in own_trials(study) if Attr.LABEL in t.user_attrs or
                                            t.state == TrialState.WAITING])
        add = dict(list(add.items())[:max(room, 0)])
    queued = 0
    for key, seeds in add.items():
        fixed = {k: v for k, v in params[key].items()} if not spec.is_grid else {}
        for seed in sorted(seeds):
            study.enqueue_trial(fixed, user_attrs=configuration(key, params[key], seed), skip_if_exists=False)
            queued += 1
    return queued


def warm_start(study: optuna.Study, spec: StudySpec, storage) -> int:
    """study.warm_start: the earlier study's finished trials whose params fit this study's space are added (once,
    to a new study) for the sampler to learn from; they are marked, and neither counted nor reported as ours."""
    earlier = spec.cfg.study.warm_start
    if not earlier or spec.is_grid or study.get_trials(deepcopy=False):
        return 0
    other = optuna.load_study(study_name=earlier, storage=storage)  # check_warm_start found it
    distributions = {key: distribution(values) for key, values in spec.space.items()}
    added = 0
    for t in other.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if not t.params or not all(k in distributions and fits(distributions[k], v) for k, v in t.params.items()):
            continue
        study.add_trial(optuna.trial.create_trial(
            params=t.params, distributions={k: distributions[k] for k in t.params}, values=t.values,
            user_attrs={Attr.WARM_FROM: earlier}))
        added += 1
    return added


def fits(dist: optuna.distributions.BaseDistribution, value) -> bool:
    try:
        return dist._contains(dist.to_internal_repr(value))
    except (ValueError, TypeError):  # a choice this study's space does not hold
        return False


# ---------------------------------------------------------------- workers

def wanted(spec: StudySpec) -> set[tuple[str, int]] | None:
    """A grid's cell x seed pairs as the file reads now (None for a searched study)."""
    if not spec.is_grid:
        return None
    return {(key, s) for key in keyed_cells(spec) for s in spec.cfg.study.seed_list}


def _worker(spec: StudySpec, storage_url: str | None, jobs: int, worker: int, parent_run_id: str) -> None:
    """One process's trial loop. Spawned workers get their own accelerator when there are enough."""
    if jobs > 1:
        devices = os.environ.get("ABLATE_WORKER_DEVICES")
        if devices:
            os.environ["CUDA_VISIBLE_DEVICES"] = devices.split(",")[worker]
        # share the cores: oversubscribed OpenMP threads spin-wait (10x slower steps measured on 2 cores)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // jobs))
    # a failed trial's traceback is in its run's error.txt; our progress line gives the reason
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    s = spec.cfg.study
    storage = make_storage(storage_url, jobs, s.heartbeat_interval, s.grace_period)
    study = open_study(spec, storage, worker)
    client = tracking.make_client(spec.base.get("tracking", {}).get("uri"))
    experiment_id = tracking.get_or_create_experiment(spec.name, client.tracking_uri)
    runs = ConfigurationRuns(spec, client, experiment_id, parent_run_id)
    objective = make_objective(spec, parent_run_id, runs)
    journal = journal_file(storage_url)
    heartbeats = journal is None  # RDB: other machines' dead trials get failed as we go
    pairs = wanted(spec)
    total = None if s.on_demand else len(pairs) if pairs is not None else s.trials  # on demand: as queued
    streak = FailureStreak()
    with deferred_interrupt():  # Ctrl-C stops the running trial at its next batch, or the loop before the next trial
        while True:
            check_interrupt()
            waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            if spec.is_grid and not waiting:
                if heartbeats and await_stale(study, s.heartbeat_interval):
                    end_orphaned_runs(study, client, experiment_id)
                    continue
                if s.on_demand and study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                    time.sleep(1)  # another worker's trial may still ask for more seeds
                    continue
                return
            if not spec.is_grid and not waiting and len(own_trials(study, DONE + (TrialState.RUNNING,))) >= s.trials:
                return
            study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[_progress(total, pairs), streak])
            runs.summarise(study)
            if s.on_demand:
                with setup_lock(storage, spec.name, journal):  # two workers must not queue the same seed
                    add_seeds(study, spec)
            if heartbeats:  # a stale trial failed by the heartbeat check: end its MLflow run too
                end_orphaned_runs(study, client, experiment_id)


def await_stale(study: optuna.Study, interval: int) -> bool:
    """Nothing left to claim, but trials still RUNNING (maybe on a dead machine): check their heartbeats
    every interval until one is failed and queued again (True) or none is running any more (False)."""
    while study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        check_interrupt()
        fail_stale_trials(study)  # one query; the retry callback queues a WAITING copy
        if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return True
        time.sleep(min(interval, 2))  # a live worker's trial may end any moment
    return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def _worker_process(*args) -> None:
    """A spawned worker: Ctrl-C ends it quietly with exit code 130, preemption with 75 (the trial is marked)."""
    try:
        _worker(*args)
    except AblateError as e:  # FailureStreak: its one line, as the CLI would print it
        print(f"ablate: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except Preempted:
        sys.exit(REQUEUE_EXIT_CODE)
    except KeyboardInterrupt:
        sys.exit(130)


def trial_counts(trials) -> dict[str, int]:
    """complete / pruned / failed / refused among trials with a configuration: a trial refused by study.constraints
    is not 'pruned', a stopped trial a later one resumed is not 'failed'."""
    continued = resumed_trials(trials)
    refused = {t.number for t in trials if Attr.REFUSED in t.user_attrs}
    count = {name: sum(t.state == state and t.number not in continued | refused for t in trials)
             for name, state in (("complete", TrialState.COMPLETE), ("pruned", TrialState.PRUNED),
                                 ("failed", TrialState.FAIL))}
    return count | {"refused": len(refused)}


def _progress(total: int | None, pairs: set[tuple[str, int]] | None):
    """The line printed after each trial; counts only trials with a configuration (of the file, for a grid).
    `total` None: seeds on demand, the trials queued so far."""
    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if Attr.LABEL not in trial.user_attrs:
            return  # a worker that found no grid cell left: nothing ran
        trials = [t for t in own_trials(study) if Attr.LABEL in t.user_attrs
                  and (pairs is None or (t.user_attrs.get(Attr.CELL), t.user_attrs.get(Attr.SEED)) in pairs)]
        continued = resumed_trials(trials)
        count = trial_counts(trials)
        done = count["complete"] + count["pruned"] + count["refused"]
        refused = f", {count['refused']} refused" if count["refused"] else ""
        shown = total if total is not None else len({(t.user_attrs.get(Attr.CELL), t.user_attrs.get(Attr.SEED))
                                                     for t in trials if t.number not in continued})
        best = ""
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        if len(study.directions) == 1 and complete:
            b = (max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min)(complete, key=lambda t: t.value)
            best = f" | best {b.value:.4f} (trial {b.number}: {b.user_attrs.get(Attr.LABEL, '')})"
        reason = f" ({trial.user_attrs[Attr.FAIL_REASON]})" if Attr.FAIL_REASON in trial.user_attrs else ""
        if trial.user_attrs.get(Attr.RESUMED):
            reason += f" (resumed at epoch {trial.user_attrs[Attr.RESUMED]['epoch']})"
        print(f"[{study.study_name}] trial {trial.number} {trial.state.name.lower()}{reason} | {done}/{shown} done, "
              f"{count['pruned']} pruned, {count['failed']} failed{refused}{best}", flush=True)

    return report


# ---------------------------------------------------------------- the study

def check_trainers(spec: StudySpec) -> None:
    """Lightning's checks of accelerator, devices and precision, once per distinct setting before any trial:
    `accelerator: gpu` on a machine without one is bad input, not a study whose every trial fails."""
    cells = grid_cells(spec) if spec.is_grid else [{}]
    seen = set()
    for params in cells:
        cfg = trial_config(spec, params, spec.cfg.study.seed_list[0])
        setting = (cfg.train.accelerator, str(cfg.train.devices), cfg.train.precision)
        if setting not in seen:
            seen.add(setting)
            with within(f"{spec.path}: {cell_location(params)}"), train.quiet_lightning():
                train.make_trainer(cfg.train)


def prepare_study(spec: StudySpec, *, jobs: int = 1, storage_url: str | None = None,
                  force_new: bool = False) -> tuple[optuna.Study, MlflowClient, str]:
    """Everything before the workers start: check the cells, open (or set aside and create) the study, fail what a
    dead process left running, queue what is missing, and get the parent run. Returns (study, client, parent)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    check_cells(spec)  # bad models and missing data folders fail here, before any store exists
    check_trainers(spec)
    s = spec.cfg.study
    storage = make_storage(storage_url, jobs, s.heartbeat_interval, s.grace_period)
    uri = tracking.resolve_uri(spec.base.get("tracking", {}).get("uri"))
    tracking.probe_store(uri)  # a server that does not answer: one line now, before the study is created
    journal = journal_file(storage_url)
    with setup_lock(storage, spec.name, journal):  # another `ablate run` of the same study waits here
        if force_new:
            aside = set_aside(spec, storage)
            if aside:
                print(f"[{spec.name}] --force-new: the earlier trials are now study {aside!r}", flush=True)
        check_warm_start(spec, storage)  # before open_study: a new study is written when it is opened
        study = open_study(spec, storage)
        check_comparable(study, spec)  # before anything is written to either store
        check_search_space(study, spec)
        # the MLflow store (a client creates it) and experiment are created once, before any worker starts
        client = tracking.make_client(uri)
        experiment_id = tracking.get_or_create_experiment(spec.name, uri)
        objective = spec.cfg.study.objectives()[0]
        client.set_experiment_tag(experiment_id, tracking.OBJECTIVE_TAG, f"{objective.metric} {objective.direction}")
        recover(study, storage, client, experiment_id, journal=journal is not None)
        if spec.is_grid:
            cells = keyed_cells(spec)
            refused = refused_cells(spec, cells)
            study.set_user_attr(Attr.REFUSED, refused)  # the report lists them, with why
            enqueue_missing(study, spec, {k: p for k, p in cells.items() if k not in refused})
        else:
            added = warm_start(study, spec, storage)
            if added:
                print(f"[{spec.name}] warm start: {added} finished trials of study {spec.cfg.study.warm_start!r} "
                      "inform the sampler", flush=True)
            requeue_stopped(study, spec)
        parent = parent_run(study, spec, client, experiment_id)
        runs = ConfigurationRuns(spec, client, experiment_id, parent)
        for key, params in (cells if spec.is_grid else {}).items():  # the UI shows every cell from the start
            runs(key, params, running=False)
        runs.summarise(study)
    return study, client, parent


def refused_cells(spec: StudySpec, cells: dict[str, dict]) -> dict[str, str]:
    """A grid's cells that study.constraints refuse, from their dry forwards: cell key -> why."""
    if not spec.cfg.study.constraints:
        return {}
    why = {key: refusal(spec, cell_cost(spec, params)) for key, params in cells.items()}
    return {key: reason for key, reason in why.items() if reason}


def run_study(spec: StudySpec, *, jobs: int = 1, storage_url: str | None = None,
              force_new: bool = False) -> optuna.Study:
    """Run (or resume) the study to the end; returns the Optuna study. Overrides are already in `spec`."""
    study, client, parent = prepare_study(spec, jobs=jobs, storage_url=storage_url, force_new=force_new)
    status, reason = "FINISHED", None
    try:
        if jobs == 1:
            _worker(spec, storage_url, 1, 0, parent)
        else:
            _spawn_workers(spec, storage_url, jobs, parent)
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


def _spawn_workers(spec: StudySpec, storage_url: str | None, jobs: int, parent: str) -> None:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(torch.cuda.device_count()))))
    if torch.cuda.is_available() and len(visible.split(",")) >= jobs:  # one trial per GPU
        os.environ["ABLATE_WORKER_DEVICES"] = visible
    ctx = mp.get_context("spawn")  # fresh interpreters: no forked torch/threads state
    procs = [ctx.Process(target=_worker_process, args=(spec, storage_url, jobs, w, parent)) for w in range(jobs)]
    for p in procs:
        p.start()

    got = [signal.SIGINT]  # the signal to pass on to the workers

    def stop(signum, frame):  # while we only wait, a signal may act at once
        got[0] = signum
        raise stop_exception(signum)

    # SIGINT too: a shell's background job inherits it ignored, and Python then installs no handler of its own
    previous = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:  # Ctrl-C at a terminal reaches the workers too; a kill only us
        for s in STOP_SIGNALS:
            signal.signal(s, signal.SIG_IGN)  # let them finish marking their trials
        for p in procs:
            if p.is_alive():
                os.kill(p.pid, got[0])  # the same signal: each worker checkpoints and stops its trial
        for p in procs:
            p.join()
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if any(p.exitcode == REQUEUE_EXIT_CODE for p in procs):  # a worker was preempted on its own
        raise Preempted("preempted (a worker was stopped by a signal)")
    crashed = [f"worker {w} (exit code {p.exitcode})" for w, p in enumerate(procs) if p.exitcode != 0]
    if crashed:  # finished trials are safe in the storage; the rest resume on the next run
        raise WorkerDied(f"{', '.join(crashed)} died; finished trials are kept, resume with the same command")
